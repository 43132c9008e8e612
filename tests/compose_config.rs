//! `examples/docker-compose.yaml` is a valid Compose file whose sidecars would start: every file it
//! mounts exists (or is the built module), and `examples/docker/render-and-run.sh` renders each
//! sidecar's envoy/ template from that service's `environment` with no placeholder left, into a
//! config that passes `envoy --mode validate` with the real module.
//!
//! There is no Docker engine here: `docker-compose config` only parses and resolves the file.
//! Fails (never skips) when `docker-compose`, `bash`, `openssl`, Envoy or the module is missing.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;
use support::*;

const COMPOSE: &str = "examples/docker-compose.yaml";
const RENDER: &str = "examples/docker/render-and-run.sh";
const BUILT_MODULE: &str = "target/wasm32-wasip1/release/istio_tcp_telemetry.wasm";

/// `docker-compose -f examples/docker-compose.yaml config`: the resolved file (absolute paths).
fn compose_config() -> Value {
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(manifest_dir().join(COMPOSE))
        .arg("config")
        .output()
        .unwrap_or_else(|e| panic!("run docker-compose (install it: `make tools`): {e}"));
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Value::deserialize(serde_yaml::Deserializer::from_str(&text)).expect("config output is YAML")
}

/// One volume of a service: host source (absolute path, or a named volume) and container target.
#[derive(Debug)]
struct Mount {
    source: String,
    target: String,
}

impl Mount {
    fn is_bind(&self) -> bool {
        self.source.starts_with('/')
    }
}

fn mounts(service: &Value) -> Vec<Mount> {
    let Some(list) = service["volumes"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|v| match v {
            // Short syntax, as docker-compose 1.x prints it: SOURCE:TARGET[:MODE].
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!(parts.len() >= 2, "volume {s:?}");
                Mount {
                    source: parts[0].to_string(),
                    target: parts[1].to_string(),
                }
            }
            // Long syntax (docker compose v2).
            Value::Object(m) => Mount {
                source: m["source"].as_str().unwrap().to_string(),
                target: m["target"].as_str().unwrap().to_string(),
            },
            other => panic!("volume {other}"),
        })
        .collect()
}

/// Whether `host` is where the built module is expected (it need not exist yet).
fn is_built_module(host: &str) -> bool {
    host.ends_with(BUILT_MODULE)
}

/// Runs the render script with `bash`, with exactly `env` (plus PATH) in its environment.
fn run_script(args: &[&str], env: &BTreeMap<String, String>) -> Output {
    Command::new("bash")
        .arg(manifest_dir().join(RENDER))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("run bash")
}

/// The services whose command is `render-and-run.sh run TEMPLATE OUTPUT …`.
fn rendering_services(config: &Value) -> Vec<(String, Value)> {
    config["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| {
            s["entrypoint"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|x| x.as_str().is_some_and(|x| x.ends_with("render-and-run.sh")))
            }) && s["command"][0] == "run"
        })
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

/// A container path mapped to the host through `mounts`: bind mounts to their source, named
/// volumes to `named/<volume>`.
fn to_host(container_path: &str, mounts: &[Mount], named: &Path) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|m| {
            container_path == m.target || container_path.starts_with(&format!("{}/", m.target))
        })
        .max_by_key(|m| m.target.len())
        .map(|m| {
            let rest = container_path[m.target.len()..].trim_start_matches('/');
            let base = if m.is_bind() {
                PathBuf::from(&m.source)
            } else {
                named.join(&m.source)
            };
            if rest.is_empty() {
                base
            } else {
                base.join(rest)
            }
        })
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let config = compose_config();
    let services = config["services"].as_object().expect("services");
    for name in [
        "redis",
        "redis-sidecar",
        "ratings-sidecar",
        "ratings-v2",
        "prometheus",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
}

#[test]
fn every_mounted_file_exists_or_is_the_built_module() {
    let config = compose_config();
    let declared: Vec<String> = config["volumes"]
        .as_object()
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    let mut binds = 0;
    for (name, service) in config["services"].as_object().unwrap() {
        for m in mounts(service) {
            if m.is_bind() {
                binds += 1;
                assert!(
                    Path::new(&m.source).exists() || is_built_module(&m.source),
                    "service {name}: mounts {}, which does not exist",
                    m.source
                );
            } else {
                assert!(
                    declared.contains(&m.source),
                    "service {name}: named volume {} is not declared",
                    m.source
                );
            }
        }
        if let Some(ctx) = service["build"]["context"].as_str() {
            assert!(
                Path::new(ctx).join("Dockerfile").is_file(),
                "service {name}: no Dockerfile in {ctx}"
            );
        }
    }
    assert!(binds >= 4, "only {binds} bind mounts");
}

#[test]
fn each_sidecar_renders_its_template_into_a_valid_envoy_config() {
    let config = compose_config();
    let services = rendering_services(&config);
    assert_eq!(services.len(), 2, "two sidecars render a template");
    let dir = TempDir::new("compose-render");
    // Named volumes live here; `certs` is filled the way the compose `certs` service fills it.
    let named = dir.path().join("named");
    let out = run_script(
        &["certs", &named.join("certs").display().to_string()],
        &BTreeMap::new(),
    );
    assert!(
        out.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ] {
        assert!(named.join("certs").join(f).is_file(), "certs made no {f}");
    }

    for (name, service) in services {
        let mounts = mounts(&service);
        let command: Vec<&str> = service["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let template = to_host(command[1], &mounts, &named)
            .unwrap_or_else(|| panic!("{name}: template {} is not mounted", command[1]));
        assert!(
            template.is_file(),
            "{name}: {} is not a file",
            template.display()
        );
        // Render a temporary copy of the template's directory, as the test must not write there.
        let copy = dir.path().join(&name);
        fs::create_dir_all(&copy).unwrap();
        for entry in fs::read_dir(template.parent().unwrap()).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
        // The service's environment, with container paths mapped to this machine.
        let mut env = BTreeMap::new();
        for (k, v) in service["environment"].as_object().expect("environment") {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {k} is not a string"));
            let host = to_host(v, &mounts, &named).map(|p| p.display().to_string());
            let v = match host {
                Some(h) if is_built_module(&h) => wasm_module().display().to_string(),
                Some(h) => {
                    assert!(
                        Path::new(&h).exists(),
                        "{name}: {k}={v} → {h} does not exist"
                    );
                    h
                }
                None => v.to_string(),
            };
            env.insert(k.clone(), v);
        }
        let rendered = dir.path().join(format!("{name}.yaml"));
        let template_copy = copy.join(template.file_name().unwrap());
        let args = |t: &Path| {
            vec![
                "render".to_string(),
                t.display().to_string(),
                rendered.display().to_string(),
            ]
        };
        let a = args(&template_copy);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = run_script(&a, &env);
        assert!(
            out.status.success(),
            "{name}: render failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = fs::read_to_string(&rendered).unwrap();
        assert!(!yaml.contains("{{"), "{name}: placeholder left:\n{yaml}");
        if let Err(e) = validate_config(&name, &yaml) {
            panic!("{name}: rendered config is not valid:\n{e}\n{yaml}");
        }

        // The client's ALPN: derived from EXCHANGE_CONFIG as support::render derives it, and
        // without istio-peer-exchange when client_gate never promises no frame.
        if fs::read_to_string(&template_copy)
            .unwrap()
            .contains("{{UPSTREAM_ALPN}}")
        {
            let exchange = env["EXCHANGE_CONFIG"].clone();
            let alpn = |yaml: &str| format!("alpn_protocols: {}", upstream_alpn(yaml));
            assert!(yaml.contains(&alpn(&exchange)), "{name}: ALPN\n{yaml}");
            assert!(yaml.contains(r#"alpn_protocols: ["istio-peer-exchange", "istio"]"#));
            let mut never = env.clone();
            never.insert(
                "EXCHANGE_CONFIG".into(),
                r#"{"side": "client", "client_gate": "never"}"#.into(),
            );
            let out = run_script(&a, &never);
            assert!(
                out.status.success(),
                "{name}: render with client_gate never"
            );
            let yaml = fs::read_to_string(&rendered).unwrap();
            assert!(
                yaml.contains(r#"alpn_protocols: ["istio"]"#)
                    && !yaml.contains("istio-peer-exchange"),
                "{name}: client_gate never still offers istio-peer-exchange:\n{yaml}"
            );
            validate_config(&name, &yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
        }

        // Negative 1: without one of its variables the script refuses, naming it.
        let mut fewer = env.clone();
        fewer.remove("NODE_ID");
        let out = run_script(&a, &fewer);
        assert!(!out.status.success(), "{name}: rendered without NODE_ID");
        assert!(String::from_utf8_lossy(&out.stderr).contains("NODE_ID"));
        // Negative 2: a malformed placeholder is a leftover.
        let mut text = fs::read_to_string(&template_copy).unwrap();
        text.push_str("extra: {{ NOT A PLACEHOLDER }}\n");
        fs::write(&template_copy, text).unwrap();
        let out = run_script(&a, &env);
        assert!(
            !out.status.success(),
            "{name}: a leftover '{{{{' went unnoticed"
        );
    }
}

#[test]
fn the_module_is_a_long_syntax_bind_that_never_creates_a_directory() {
    // Short syntax (`SOURCE:TARGET`) is a Docker "bind", which creates a missing source as an
    // empty directory; long syntax is a "mount", which fails when the source is missing.
    let config = compose_config();
    let mut seen = 0;
    for (name, service) in config["services"].as_object().unwrap() {
        for v in service["volumes"].as_array().into_iter().flatten() {
            let text = serde_json::to_string(v).unwrap();
            if !text.contains("istio_tcp_telemetry.wasm") {
                continue;
            }
            seen += 1;
            assert!(
                v.is_object() && v["type"] == "bind",
                "service {name}: the module is mounted with the short syntax: {v}"
            );
            assert_eq!(v["read_only"], true, "service {name}");
            assert!(is_built_module(v["source"].as_str().unwrap()), "{v}");
        }
    }
    assert!(seen >= 2, "the sidecars mount the module ({seen})");
}

/// The URI SAN of a PEM certificate (`openssl x509 -ext subjectAltName`).
fn uri_san(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()
        .expect("run openssl (make tools)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split([',', '\n'])
        .find_map(|p| p.trim().strip_prefix("URI:").map(String::from))
        .unwrap_or_else(|| panic!("no URI SAN in {}: {text}", cert.display()))
}

#[test]
fn each_workload_certificate_names_that_workloads_namespace_and_account() {
    // The `certs` service's environment, as compose passes it, makes the certificates; each
    // sidecar's certificate must carry its own workload's identity (namespace from its node
    // metadata, a service account named after its `app` label), or the principal labels lie.
    let config = compose_config();
    let services = config["services"].as_object().unwrap();
    let mut env = BTreeMap::new();
    for (k, v) in services["certs"]["environment"]
        .as_object()
        .into_iter()
        .flatten()
    {
        env.insert(k.clone(), v.as_str().unwrap().to_string());
    }
    let dir = TempDir::new("compose-sans");
    let certs = dir.path().join("certs");
    let out = run_script(&["certs", &certs.display().to_string()], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut checked = 0;
    for (name, s) in rendering_services(&config) {
        let Some(chain) = s["environment"]["CERT_CHAIN"].as_str() else {
            continue;
        };
        let file = Path::new(chain).file_name().unwrap();
        let metadata: Value =
            serde_json::from_str(s["environment"]["NODE_METADATA"].as_str().unwrap()).unwrap();
        let (ns, app) = (
            metadata["NAMESPACE"].as_str().unwrap(),
            metadata["LABELS"]["app"].as_str().unwrap(),
        );
        let san = uri_san(&certs.join(file));
        let prefix = format!("spiffe://cluster.local/ns/{ns}/sa/");
        let account = san
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{name}: SAN {san} is not in namespace {ns}"));
        assert!(
            account.contains(app),
            "{name}: SAN {san} names another workload's account (app {app})"
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "both sidecars have a certificate");
}
