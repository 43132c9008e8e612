//! The module as an OCI image (`make oci`, `oci/build-image.sh`): reproducible, in the format
//! Istio's Wasm image fetcher takes, through a real registry (Debian's `docker-registry` on
//! loopback) and back by digest, and pinned by the right digest in the OCI WasmPlugin example.
//!
//! Push with `skopeo copy` (Debian's skopeo); pull back with a second client: the registry's
//! HTTP API spoken here directly (manifest by digest, then the layer blob), as istio-agent's
//! fetcher does, then `plugin.wasm` extracted from the last layer as the fetcher does.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use support::{free_port, manifest_dir, wasm_module, TempDir};

const REPO: &str = "istio-tcp-telemetry";
const TAG: &str = "0.1.0";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const EXAMPLE: &str = "examples/istio/wasmplugin-tcp-telemetry-oci.yaml";
const FILE_EXAMPLE: &str = "examples/istio/wasmplugin-tcp-telemetry.yaml";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install it: `make tools`)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `oci/build-image.sh <module> <out> <TAG>`; returns the manifest digest (`sha256:…`).
fn build_image(module: &Path, out: &Path) -> String {
    let script = manifest_dir().join("oci/build-image.sh");
    run(Command::new(script).arg(module).arg(out).arg(TAG))
        .trim()
        .to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// Every file under `dir`, relative path → bytes, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
                out.push((rel, fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_image_is_reproducible_and_follows_the_module() {
    let dir = TempDir::new("oci-repro");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let digest_a = build_image(&wasm_module(), &a);
    let digest_b = build_image(&wasm_module(), &b);
    assert_eq!(digest_a, digest_b, "same module, same manifest digest");
    assert_eq!(tree(&a), tree(&b), "same module, same layout byte for byte");

    // One byte more in the module: another image.
    let changed = dir.path().join("changed.wasm");
    let mut bytes = fs::read(wasm_module()).expect("module");
    bytes.push(0);
    fs::write(&changed, &bytes).expect("write");
    let digest_c = build_image(&changed, &dir.path().join("c"));
    assert_ne!(digest_a, digest_c);
    // The manifest digest is not the module's sha256 (what WasmPlugin must not be given).
    assert_ne!(
        digest_a.trim_start_matches("sha256:"),
        sha256_hex(&fs::read(wasm_module()).unwrap())
    );
}

// ---- a real registry -------------------------------------------------------------------------

/// Debian's `docker-registry` (the CNCF distribution registry) on 127.0.0.1, storing in a
/// temporary directory, without TLS or auth. Killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = TempDir::new("oci-registry");
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(fs::File::create(dir.path().join("registry.log")).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (install it: `make tools`)");
        let mut registry = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited: {status}");
            }
            if get(port, "/v2/", "*/*").is_ok_and(|r| r.status == 200) {
                return registry;
            }
            assert!(Instant::now() < deadline, "docker-registry not up");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

/// A plain HTTP/1.1 GET (the registry answers with Content-Length), body as bytes.
fn get(port: u16, path: &str, accept: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn the_image_goes_through_a_real_registry_and_comes_back_by_digest() {
    let dir = TempDir::new("oci-push-pull");
    let layout = dir.path().join("layout");
    let digest = build_image(&wasm_module(), &layout);
    let registry = Registry::start();
    let port = registry.port;

    // Push with skopeo, keeping the manifest's bytes (and so its digest).
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{TAG}", layout.display()),
        &format!("docker://127.0.0.1:{port}/{REPO}:{TAG}"),
    ]));

    // The registry names the tag by the same manifest digest.
    let by_tag = get(port, &format!("/v2/{REPO}/manifests/{TAG}"), OCI_MANIFEST).expect("GET");
    assert_eq!(by_tag.status, 200, "{}", by_tag.headers);
    assert_eq!(
        header(&by_tag, "Docker-Content-Digest"),
        Some(digest.as_str())
    );

    // Pull by digest, with the registry API: the manifest, then the last layer.
    let manifest = get(
        port,
        &format!("/v2/{REPO}/manifests/{digest}"),
        OCI_MANIFEST,
    )
    .expect("GET");
    assert_eq!(manifest.status, 200, "{}", manifest.headers);
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest.body)), digest);
    let json: Value = serde_json::from_slice(&manifest.body).expect("manifest JSON");
    let layers = json["layers"].as_array().expect("layers");
    let last = layers.last().expect("a layer");
    // What istio-agent requires of an OCI (non-Docker) image's last layer.
    assert_eq!(last["mediaType"], OCI_LAYER);
    let layer_digest = last["digest"].as_str().expect("layer digest");
    let blob = get(port, &format!("/v2/{REPO}/blobs/{layer_digest}"), "*/*").expect("GET");
    assert_eq!(blob.status, 200, "{}", blob.headers);
    assert_eq!(format!("sha256:{}", sha256_hex(&blob.body)), layer_digest);

    // plugin.wasm out of the tar+gzip layer is the module, byte for byte.
    let layer = dir.path().join("layer.tar.gz");
    fs::write(&layer, &blob.body).expect("write layer");
    let out = dir.path().join("extracted");
    fs::create_dir_all(&out).expect("mkdir");
    let listing = run(Command::new("tar").arg("-tzf").arg(&layer));
    assert_eq!(
        listing.trim(),
        "plugin.wasm",
        "the layer holds plugin.wasm only"
    );
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&out));
    let extracted = fs::read(out.join("plugin.wasm")).expect("plugin.wasm");
    let module = fs::read(wasm_module()).expect("module");
    assert_eq!(sha256_hex(&extracted), sha256_hex(&module));

    // And skopeo, by digest, agrees on what the registry holds.
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{port}/{REPO}@{digest}"),
    ]));
    let inspect: Value = serde_json::from_str(&inspect).expect("skopeo inspect JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
}

// ---- the WasmPlugin example ------------------------------------------------------------------

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = fs::read_to_string(manifest_dir().join(path)).expect(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn the_oci_example_pins_this_builds_manifest_digest() {
    let dir = TempDir::new("oci-example");
    let digest = build_image(&wasm_module(), &dir.path().join("layout"));
    let hex = digest.trim_start_matches("sha256:");
    let oci = yaml_docs(EXAMPLE);
    let file = yaml_docs(FILE_EXAMPLE);
    assert_eq!(
        oci.len(),
        file.len(),
        "{EXAMPLE}: one plugin per plugin of {FILE_EXAMPLE}"
    );
    for (o, f) in oci.iter().zip(&file) {
        let name = o["metadata"]["name"].as_str().unwrap_or("?");
        let spec = &o["spec"];
        let url = spec["url"].as_str().unwrap_or_default();
        assert!(url.starts_with("oci://"), "{name}: url {url}");
        assert!(
            url.ends_with(&format!(":{TAG}")),
            "{name}: url {url} not tag {TAG}"
        );
        assert_eq!(
            spec["sha256"].as_str(),
            Some(hex),
            "{name}: sha256 must be this build's image MANIFEST digest: run `make oci` and commit {EXAMPLE}"
        );
        assert_eq!(spec["imagePullPolicy"], "IfNotPresent", "{name}");
        // Otherwise the same plugin as the file:// example.
        let mut same = o.clone();
        for key in ["url", "sha256", "imagePullPolicy"] {
            same["spec"].as_object_mut().unwrap().remove(key);
        }
        let mut want = f.clone();
        want["spec"].as_object_mut().unwrap().remove("url");
        assert_eq!(
            same, want,
            "{name}: differs from {FILE_EXAMPLE} beyond url/sha256/pull policy"
        );
    }
}
