//! The Istio manifests in `examples/istio/` hold configurations that Envoy and the module accept,
//! in the filter order the module needs.
//!
//! Every `examples/istio/*.yaml` is read with a real YAML parser (serde_yaml). From each
//! EnvoyFilter `NETWORK_FILTER` patch, and from each WasmPlugin (rebuilt the way istiod turns one
//! into an Envoy filter), comes the Wasm filter Istio would put into a sidecar's chain. Its module
//! path is pointed at the built module and it runs through `envoy --mode validate`, alone and as
//! the whole chain the manifest builds. `--mode validate` loads the module and runs its
//! `on_configure` (measured: a bad configuration fails validation with the module's own message,
//! see `validation_runs_the_modules_on_configure`), so the configurations are checked by the module
//! itself. A remote (`http_uri`) module is not fetched by `--mode validate`: the remote manifest is
//! therefore also run in a real Envoy against a local HTTP server, with the right and a wrong
//! sha256. Last, the Istio stats settings the README gives are tried in an Envoy whose
//! `stats_config` is built the way Istio's bootstrap template builds it.
//!
//! Fails (never skips) when Envoy or the module is missing.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use support::*;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
/// Where the manifests (and the README's userVolume annotations) put the module in a sidecar.
const MOUNTED_MODULE: &str = "/var/local/lib/wasm-filters/istio_tcp_telemetry.wasm";
const EXCHANGE: &str = "istio_metadata_exchange";
const STATS: &str = "istio_tcp_stats";
const EXPECTED_FILES: [&str; 4] = [
    "envoyfilter-tcp-telemetry.yaml",
    "envoyfilter-tcp-telemetry-remote.yaml",
    "wasmplugin-tcp-telemetry.yaml",
    "wasmplugin-tcp-telemetry-oci.yaml",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    /// SIDECAR_INBOUND / WasmPlugin mode SERVER.
    Inbound,
    /// SIDECAR_OUTBOUND / WasmPlugin mode CLIENT.
    Outbound,
}

impl Direction {
    fn traffic_direction(self) -> &'static str {
        match self {
            Direction::Inbound => "INBOUND",
            Direction::Outbound => "OUTBOUND",
        }
    }

    /// The root ids of the chain, in order, that the module needs (README "Filter order").
    fn required_order(self) -> [&'static str; 2] {
        match self {
            Direction::Inbound => [EXCHANGE, STATS],
            Direction::Outbound => [STATS, EXCHANGE],
        }
    }
}

/// One manifest file: its name and its YAML documents.
struct Manifest {
    file: String,
    docs: Vec<Value>,
}

/// A chain Istio would build from one manifest for one direction: the Wasm filters in order
/// (each `{name, typed_config}`), plus the clusters the manifest adds.
#[derive(Debug, Clone)]
struct Chain {
    origin: String,
    direction: Direction,
    filters: Vec<Value>,
    clusters: Vec<Value>,
}

// ---------------------------------------------------------------------------------------------
// Reading the manifests

fn istio_dir() -> std::path::PathBuf {
    manifest_dir().join("examples/istio")
}

/// Every `examples/istio/*.yaml`, parsed, in name order.
fn manifests() -> Vec<Manifest> {
    let mut files: Vec<String> = fs::read_dir(istio_dir())
        .expect("examples/istio")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    files.sort();
    for f in EXPECTED_FILES {
        assert!(
            files.iter().any(|x| x == f),
            "examples/istio/{f} is missing"
        );
    }
    files
        .into_iter()
        .map(|file| {
            let text = fs::read_to_string(istio_dir().join(&file)).unwrap();
            Manifest {
                docs: parse_yaml_docs(&text).unwrap_or_else(|e| panic!("{file}: {e}")),
                file,
            }
        })
        .collect()
}

/// All documents of a (multi-document) YAML text, as JSON values; empty documents dropped.
fn parse_yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let doc = Value::deserialize(de).map_err(|e| e.to_string())?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The chains of every EnvoyFilter in `m`: `INSERT_BEFORE tcp_proxy` patches applied in order to
/// a chain that holds only tcp_proxy, per context, exactly as Istio applies them.
fn envoyfilter_chains(m: &Manifest) -> Result<Vec<Chain>, String> {
    let mut inbound = vec![json!({ "name": TCP_PROXY })];
    let mut outbound = inbound.clone();
    let mut clusters = Vec::new();
    for doc in m.docs.iter().filter(|d| d["kind"] == "EnvoyFilter") {
        let name = str_at(doc, "/metadata/name").unwrap_or("?");
        if doc["apiVersion"] != "networking.istio.io/v1alpha3" {
            return Err(format!("{name}: apiVersion {}", doc["apiVersion"]));
        }
        let patches = doc["spec"]["configPatches"]
            .as_array()
            .ok_or(format!("{name}: no spec.configPatches"))?;
        for (i, p) in patches.iter().enumerate() {
            let at = format!("{name}: configPatches[{i}]");
            let op = str_at(p, "/patch/operation").unwrap_or_default();
            match str_at(p, "/applyTo").unwrap_or_default() {
                "CLUSTER" if op == "ADD" => clusters.push(p["patch"]["value"].clone()),
                "NETWORK_FILTER" => {
                    let chain = match str_at(p, "/match/context") {
                        Some("SIDECAR_INBOUND") => &mut inbound,
                        Some("SIDECAR_OUTBOUND") => &mut outbound,
                        other => return Err(format!("{at}: context {other:?}")),
                    };
                    let anchor = str_at(p, "/match/listener/filterChain/filter/name");
                    if op != "INSERT_BEFORE" || anchor != Some(TCP_PROXY) {
                        return Err(format!(
                            "{at}: {op} {anchor:?}, not INSERT_BEFORE {TCP_PROXY}"
                        ));
                    }
                    let pos = chain.iter().position(|f| f["name"] == TCP_PROXY).unwrap();
                    chain.insert(pos, p["patch"]["value"].clone());
                }
                other => return Err(format!("{at}: unexpected patch {other} {op}")),
            }
        }
    }
    let mut out = Vec::new();
    for (direction, mut filters) in [
        (Direction::Inbound, inbound),
        (Direction::Outbound, outbound),
    ] {
        filters.retain(|f| f["name"] != TCP_PROXY);
        if !filters.is_empty() {
            out.push(Chain {
                origin: format!("{} {direction:?}", m.file),
                direction,
                filters,
                clusters: clusters.clone(),
            });
        }
    }
    Ok(out)
}

/// The chains of every WasmPlugin in `m`, each plugin turned into the Envoy filter istiod makes
/// of it (`pilot/pkg/model/extensions.go`: name `<ns>.<name>`, `root_id` = pluginName, V8,
/// pluginConfig as JSON in a StringValue, no vm_id), placed the way istiod places network
/// plugins: by phase (AUTHN, AUTHZ, STATS, then none), within a phase by descending priority.
fn wasmplugin_chains(m: &Manifest) -> Result<Vec<Chain>, String> {
    let mut plugins = Vec::new();
    for doc in m.docs.iter().filter(|d| d["kind"] == "WasmPlugin") {
        let name = str_at(doc, "/metadata/name").unwrap_or("?").to_string();
        let ns = str_at(doc, "/metadata/namespace").unwrap_or("default");
        let spec = &doc["spec"];
        if doc["apiVersion"] != "extensions.istio.io/v1alpha1" {
            return Err(format!("{name}: apiVersion {}", doc["apiVersion"]));
        }
        if spec["type"] != "NETWORK" {
            return Err(format!("{name}: type {} (an HTTP plugin)", spec["type"]));
        }
        let phase = match spec["phase"].as_str() {
            Some("AUTHN") => 0,
            Some("AUTHZ") => 1,
            Some("STATS") => 2,
            None | Some("UNSPECIFIED_PHASE") => 3,
            Some(other) => return Err(format!("{name}: phase {other}")),
        };
        let priority = spec["priority"].as_i64().unwrap_or(i64::from(i32::MIN));
        let modes: Vec<&str> = match spec["match"].as_array() {
            None => vec!["CLIENT_AND_SERVER"],
            Some(ms) => ms
                .iter()
                .map(|x| x["mode"].as_str().unwrap_or("CLIENT_AND_SERVER"))
                .collect(),
        };
        let url = spec["url"].as_str().ok_or(format!("{name}: no url"))?;
        let filename = if let Some(path) = url.strip_prefix("file://") {
            path.to_string()
        } else {
            // oci:// and http(s)://: istio-agent downloads the module and hands Envoy a local file.
            MOUNTED_MODULE.to_string()
        };
        let plugin_config = serde_json::to_string(&spec["pluginConfig"]).unwrap();
        let mut config = json!({
            "name": format!("{ns}.{name}"),
            "root_id": spec["pluginName"],
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": filename } },
                "environment_variables": {
                    "key_values": { "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1" }
                }
            },
            "configuration": { "@type": STRING_VALUE_TYPE, "value": plugin_config },
        });
        match spec["failStrategy"].as_str() {
            Some("FAIL_OPEN") => config["failure_policy"] = json!("FAIL_OPEN"),
            // istiod 1.25+ (proxies 1.25+); older proxies only get `fail_open`.
            Some("FAIL_RELOAD") => config["failure_policy"] = json!("FAIL_RELOAD"),
            Some("FAIL_CLOSE") | None => config["failure_policy"] = json!("FAIL_CLOSED"),
            Some(other) => return Err(format!("{name}: failStrategy {other}")),
        }
        let filter = json!({
            "name": format!("extensions.istio.io/wasmplugin/{ns}.{name}"),
            "typed_config": { "@type": WASM_TYPE, "config": config },
        });
        plugins.push((phase, -priority, modes, filter));
    }
    // Stable: equal phase and priority keep the file's (creation) order, as istiod does.
    plugins.sort_by_key(|(phase, neg_priority, ..)| (*phase, *neg_priority));
    let mut out = Vec::new();
    for (direction, mode) in [
        (Direction::Inbound, "SERVER"),
        (Direction::Outbound, "CLIENT"),
    ] {
        let filters: Vec<Value> = plugins
            .iter()
            .filter(|(_, _, modes, _)| {
                modes
                    .iter()
                    .any(|m| *m == mode || *m == "CLIENT_AND_SERVER")
            })
            .map(|(.., f)| f.clone())
            .collect();
        if !filters.is_empty() {
            out.push(Chain {
                origin: format!("{} {direction:?}", m.file),
                direction,
                filters,
                clusters: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// Every chain of every manifest (EnvoyFilters and WasmPlugins).
fn all_chains() -> Vec<Chain> {
    let mut chains = Vec::new();
    for m in manifests() {
        let before = chains.len();
        chains.extend(envoyfilter_chains(&m).unwrap_or_else(|e| panic!("{}: {e}", m.file)));
        chains.extend(wasmplugin_chains(&m).unwrap_or_else(|e| panic!("{}: {e}", m.file)));
        assert!(chains.len() > before, "{}: no Wasm filter found", m.file);
    }
    chains
}

// ---------------------------------------------------------------------------------------------
// Checking a chain without Envoy

/// The filter's `root_id` and its `configuration` parsed as JSON, after checking the fields
/// every filter must have.
fn filter_config(f: &Value) -> Result<(String, Value), String> {
    let name = f["name"].as_str().unwrap_or("?");
    let tc = &f["typed_config"];
    if tc["@type"] != WASM_TYPE {
        return Err(format!("{name}: @type {}", tc["@type"]));
    }
    let c = &tc["config"];
    let root_id = c["root_id"].as_str().unwrap_or_default().to_string();
    if root_id != EXCHANGE && root_id != STATS {
        return Err(format!("{name}: root_id {root_id:?}"));
    }
    if c["vm_config"]["runtime"] != "envoy.wasm.runtime.v8" {
        return Err(format!("{name}: runtime {}", c["vm_config"]["runtime"]));
    }
    let code = &c["vm_config"]["code"];
    let local = code.pointer("/local/filename").and_then(Value::as_str);
    let remote = code.pointer("/remote/http_uri/uri").and_then(Value::as_str);
    match (local, remote) {
        (Some(MOUNTED_MODULE), None) | (None, Some(_)) => {}
        other => {
            return Err(format!(
                "{name}: code {other:?}, not {MOUNTED_MODULE} or remote"
            ))
        }
    }
    if c["configuration"]["@type"] != STRING_VALUE_TYPE {
        return Err(format!("{name}: configuration @type"));
    }
    let text = c["configuration"]["value"].as_str().unwrap_or_default();
    let json: Value = serde_json::from_str(text)
        .map_err(|e| format!("{name}: configuration is not JSON ({e}): {text}"))?;
    if !json.is_object() {
        return Err(format!(
            "{name}: configuration is not a JSON object: {text}"
        ));
    }
    Ok((root_id, json))
}

/// Order and direction: the root ids in the order the module needs, the exchange's `side` and
/// the stats `reporter` matching the listener direction.
fn check_chain(chain: &Chain) -> Result<(), String> {
    let mut order = Vec::new();
    for f in &chain.filters {
        let (root_id, json) = filter_config(f)?;
        let (side, reporter) = match chain.direction {
            Direction::Inbound => ("server", "destination"),
            Direction::Outbound => ("client", "source"),
        };
        if root_id == EXCHANGE && json["side"] != side {
            return Err(format!(
                "exchange side {} on {:?}",
                json["side"], chain.direction
            ));
        }
        if root_id == STATS && !json["reporter"].is_null() && json["reporter"] != reporter {
            return Err(format!(
                "reporter {} on {:?}",
                json["reporter"], chain.direction
            ));
        }
        order.push(root_id);
    }
    if order != chain.direction.required_order() {
        return Err(format!(
            "order {order:?}, the module needs {:?}",
            chain.direction.required_order()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Envoy configs

/// The filter with its mounted module path replaced by the built module (remote code is kept).
fn with_built_module(f: &Value) -> Value {
    let mut f = f.clone();
    if let Some(path) = f.pointer_mut("/typed_config/config/vm_config/code/local/filename") {
        assert_eq!(path, MOUNTED_MODULE);
        *path = json!(wasm_module().display().to_string());
    }
    f
}

/// A bootstrap with one listener whose chain is `filters` then tcp_proxy → a static cluster on
/// 127.0.0.1:`backend_port`, plus `clusters`. Ports 0; JSON, which is valid YAML.
fn bootstrap(
    filters: &[Value],
    direction: Direction,
    clusters: &[Value],
    backend_port: u16,
) -> Value {
    let mut chain: Vec<Value> = filters.iter().map(with_built_module).collect();
    chain.push(json!({
        "name": TCP_PROXY,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "manifest",
            "cluster": "backend",
        },
    }));
    let mut all_clusters = vec![json!({
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": backend_port } } } }] }],
        },
    })];
    all_clusters.extend(clusters.iter().cloned());
    json!({
        "node": {
            "id": RATINGS_NODE_ID,
            "cluster": "istio-manifests",
            "metadata": serde_json::from_str::<Value>(RATINGS_NODE_METADATA).unwrap(),
        },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [{
                "name": "manifest",
                "traffic_direction": direction.traffic_direction(),
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": chain }],
            }],
            "clusters": all_clusters,
        },
    })
}

fn validate(name: &str, config: &Value) -> Result<(), String> {
    validate_config(name, &serde_json::to_string_pretty(config).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Tests: the manifests as files

#[test]
fn manifests_parse_and_their_chains_have_the_modules_order() {
    let chains = all_chains();
    // envoyfilter (in, out), envoyfilter-remote (in, out), wasmplugin (in, out), wasmplugin-oci
    // (in, out).
    assert_eq!(
        chains.len(),
        8,
        "{:?}",
        chains.iter().map(|c| &c.origin).collect::<Vec<_>>()
    );
    for chain in &chains {
        if let Err(e) = check_chain(chain) {
            panic!("{}: {e}", chain.origin);
        }
    }
}

#[test]
fn the_order_check_catches_a_swapped_chain() {
    // Negative: the same chains with their two filters swapped must be refused.
    for mut chain in all_chains() {
        chain.filters.reverse();
        let err = check_chain(&chain).expect_err(&chain.origin);
        assert!(err.contains("order"), "{}: {err}", chain.origin);
    }
    // And a WasmPlugin without `type: NETWORK` (an HTTP plugin) is refused.
    let text = fs::read_to_string(istio_dir().join("wasmplugin-tcp-telemetry.yaml")).unwrap();
    let m = Manifest {
        file: "mutated".into(),
        docs: parse_yaml_docs(&text.replacen("\n  type: NETWORK\n", "\n  type: HTTP\n", 1))
            .unwrap(),
    };
    assert!(wasmplugin_chains(&m).unwrap_err().contains("HTTP"));
}

#[test]
fn the_remote_manifest_matches_the_local_one() {
    // Same filters, configurations and order; only the code source (and the added cluster) differ.
    let strip = |chains: Vec<Chain>| -> Vec<(Direction, Vec<Value>)> {
        chains
            .into_iter()
            .map(|c| {
                let filters = c
                    .filters
                    .iter()
                    .map(|f| {
                        let mut f = f.clone();
                        f["typed_config"]["config"]["vm_config"]["code"] = Value::Null;
                        f
                    })
                    .collect();
                (c.direction, filters)
            })
            .collect()
    };
    let ms = manifests();
    let get = |file: &str| ms.iter().find(|m| m.file == file).unwrap();
    let local = envoyfilter_chains(get(EXPECTED_FILES[0])).unwrap();
    let remote = envoyfilter_chains(get(EXPECTED_FILES[1])).unwrap();
    assert!(
        remote.iter().all(|c| c.clusters.len() == 1),
        "remote: one CLUSTER ADD"
    );
    for c in &remote {
        for f in &c.filters {
            let code = &f["typed_config"]["config"]["vm_config"]["code"]["remote"];
            assert_eq!(
                code["http_uri"]["cluster"], c.clusters[0]["name"],
                "{}",
                c.origin
            );
            assert!(code["sha256"].is_string(), "{}: sha256", c.origin);
        }
    }
    assert_eq!(strip(local), strip(remote));
}

// ---------------------------------------------------------------------------------------------
// Tests: Envoy and the module accept them

#[test]
fn every_filter_alone_passes_envoy_validate() {
    for chain in all_chains() {
        for f in &chain.filters {
            let cfg = bootstrap(std::slice::from_ref(f), chain.direction, &chain.clusters, 9);
            let name = format!("{} {}", chain.origin, f["name"].as_str().unwrap());
            if let Err(e) = validate(&name, &cfg) {
                panic!("{name}: envoy --mode validate failed:\n{e}\n{cfg:#}");
            }
        }
    }
}

#[test]
fn every_chain_passes_envoy_validate() {
    for chain in all_chains() {
        let cfg = bootstrap(&chain.filters, chain.direction, &chain.clusters, 9);
        if let Err(e) = validate(&chain.origin, &cfg) {
            panic!(
                "{}: envoy --mode validate failed:\n{e}\n{cfg:#}",
                chain.origin
            );
        }
    }
}

#[test]
fn validation_runs_the_modules_on_configure() {
    // Negative checks on the first inbound chain of the mounted-file EnvoyFilter.
    let chain = all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(EXPECTED_FILES[0]) && c.direction == Direction::Inbound)
        .unwrap();
    let good = bootstrap(&chain.filters, chain.direction, &[], 9);
    validate("mutation-none", &good).expect("the unmodified chain is valid");

    // A wrong @type: Envoy's own config check.
    let mut bad_type = good.clone();
    let f0 = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
    bad_type.pointer_mut(f0).unwrap()["@type"] = json!(format!("{WASM_TYPE}X"));
    let err = validate("mutation-type", &bad_type).expect_err("a wrong @type must fail");
    assert!(err.contains("WasmX"), "{err}");

    // A configuration only the module can refuse: validation fails with the module's message,
    // so `--mode validate` ran on_configure.
    let mut bad_side = good.clone();
    bad_side.pointer_mut(f0).unwrap()["config"]["configuration"]["value"] =
        json!(r#"{"side":"sideways"}"#);
    let err = validate("mutation-side", &bad_side).expect_err("side sideways must fail");
    assert!(
        err.contains("invalid configuration") && err.contains("sideways"),
        "expected the module's on_configure error:\n{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: the remote manifest in a real Envoy

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `body`.
fn http_file_server(body: Vec<u8>) -> Backend {
    let body = std::sync::Arc::new(body);
    Backend::spawn(move |conn| {
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 && line != "\r\n" {
            line.clear();
        }
        let mut conn = conn;
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/wasm\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )?;
        conn.write_all(&body)
    })
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The remote manifest's outbound chain, fetching from `server` with checksum `sha256`.
fn remote_outbound_config(server: &Backend, sha256: &str, backend_port: u16) -> Value {
    let chain = all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(EXPECTED_FILES[1]) && c.direction == Direction::Outbound)
        .unwrap();
    // The manifest's cluster, pointed at the local server, in plaintext.
    let mut cluster = chain.clusters[0].clone();
    let name = cluster["name"].clone();
    cluster["type"] = json!("STATIC");
    cluster.as_object_mut().unwrap().remove("transport_socket");
    cluster.as_object_mut().unwrap().remove("dns_lookup_family");
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
        json!({ "socket_address": { "address": "127.0.0.1", "port_value": server.port() } });
    let filters: Vec<Value> = chain
        .filters
        .iter()
        .map(|f| {
            let mut f = f.clone();
            let remote = &mut f["typed_config"]["config"]["vm_config"]["code"]["remote"];
            assert_eq!(remote["http_uri"]["cluster"], name);
            remote["http_uri"]["uri"] = json!(format!(
                "http://127.0.0.1:{}/istio_tcp_telemetry.wasm",
                server.port()
            ));
            remote["sha256"] = json!(sha256);
            f
        })
        .collect();
    bootstrap(&filters, Direction::Outbound, &[cluster], backend_port)
}

#[test]
fn the_remote_module_is_fetched_checked_and_run_by_a_real_envoy() {
    let module = wasm_module();
    let server = http_file_server(fs::read(&module).unwrap());
    let backend = echo_server();
    let payload = b"ratings-v2 says hello to mongodb";

    let good = remote_outbound_config(&server, &sha256_hex(&module), backend.port());
    let envoy = Envoy::start(
        "remote-good",
        &serde_json::to_string_pretty(&good).unwrap(),
        1,
    );
    let port = envoy.listener_port("manifest");
    assert_eq!(client_roundtrip(port, payload), payload.to_vec());
    assert!(server.accepted() >= 1, "the module was not fetched");
    assert!(
        envoy.wait_for_log("tcp stats configured", Duration::from_secs(5)),
        "the stats filter did not run on_configure:\n{}",
        envoy.log()
    );
    drop(envoy);

    // Negative: a wrong sha256. Envoy still reports ready, but the filters never load and the
    // chain, failing closed, does not carry the connection.
    let bad = remote_outbound_config(&server, &"0".repeat(64), backend.port());
    let envoy = Envoy::start(
        "remote-bad-sha",
        &serde_json::to_string_pretty(&bad).unwrap(),
        1,
    );
    let port = envoy.listener_port("manifest");
    let got = try_client_roundtrip(port, payload);
    assert!(
        !matches!(&got, Ok(bytes) if bytes == payload),
        "a module with a wrong sha256 must not run"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: the README's Istio stats settings

/// Every `extraStatTags` list and `inclusionPrefixes` list in the README's YAML blocks, including
/// those inside a `proxy.istio.io/config` annotation and the comma-separated
/// `sidecar.istio.io/extraStatTags` / `statsInclusionPrefixes` annotations.
fn readme_stats_settings() -> (Vec<BTreeSet<String>>, BTreeSet<String>) {
    fn walk(v: &Value, tags: &mut Vec<BTreeSet<String>>, prefixes: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    let list = |x: &Value| -> BTreeSet<String> {
                        match x {
                            Value::Array(a) => a
                                .iter()
                                .filter_map(|s| s.as_str().map(String::from))
                                .collect(),
                            Value::String(s) => s
                                .split(',')
                                .map(|t| t.trim().to_string())
                                .filter(|t| !t.is_empty())
                                .collect(),
                            _ => BTreeSet::new(),
                        }
                    };
                    match k.as_str() {
                        "extraStatTags" | "sidecar.istio.io/extraStatTags" => tags.push(list(x)),
                        "inclusionPrefixes" | "sidecar.istio.io/statsInclusionPrefixes" => {
                            prefixes.extend(list(x))
                        }
                        "proxy.istio.io/config" => {
                            let inner = parse_yaml_docs(x.as_str().unwrap_or_default())
                                .expect("proxy.istio.io/config is YAML");
                            for d in &inner {
                                walk(d, tags, prefixes);
                            }
                        }
                        _ => walk(x, tags, prefixes),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, tags, prefixes)),
            _ => {}
        }
    }
    let readme =
        fs::read_to_string(istio_dir().join("README.md")).expect("examples/istio/README.md");
    let (mut tags, mut prefixes) = (Vec::new(), BTreeSet::new());
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("unterminated ```yaml block");
        let block = &body[..end];
        if block.contains("extraStatTags") || block.contains("nclusionPrefixes") {
            let docs = parse_yaml_docs(block)
                .unwrap_or_else(|e| panic!("README yaml block does not parse: {e}\n{block}"));
            docs.iter().for_each(|d| walk(d, &mut tags, &mut prefixes));
        }
        rest = &body[end + 3..];
    }
    (tags, prefixes)
}

/// The tag names of `envoy/stats-tags.yaml`: the labels the module encodes into stat names.
fn module_labels() -> BTreeSet<String> {
    let doc = &parse_yaml_docs(&stats_tags()).unwrap()[0];
    doc["stats_config"]["stats_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag_name"].as_str().unwrap().to_string())
        .collect()
}

/// `stats_config` as Istio's bootstrap template (tools/packaging/common/envoy_bootstrap.json)
/// writes it: a few fixed extractors, one `(TAG=\.=(.*?);\.;)` per extraStatTags entry, and a
/// stats matcher keeping `reporter=`, `component`, `istio`, pilot-agent's required prefixes
/// (`cluster_manager`, `listener_manager`, `server`, `cluster.xds-grpc`, `wasm` in the sources
/// checked) and the configured inclusion prefixes.
fn istio_like_stats_config(tags: &BTreeSet<String>, extra_prefixes: &[String]) -> Value {
    let mut stats_tags = vec![
        json!({ "tag_name": "cluster_name",
                "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)" }),
        json!({ "tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$" }),
    ];
    for t in tags {
        stats_tags.push(json!({ "tag_name": t, "regex": format!(r"({t}=\.=(.*?);\.;)") }));
    }
    for (name, regex) in [
        ("cache", r"(cache\.(.+?)\.)"),
        ("component", r"(component\.(.+?)\.)"),
        ("tag", r"(tag\.(.+?);\.)"),
        ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ] {
        stats_tags.push(json!({ "tag_name": name, "regex": regex }));
    }
    let mut prefixes: Vec<String> = ["reporter=", "component", "istio"]
        .into_iter()
        .map(String::from)
        .collect();
    prefixes.extend(extra_prefixes.iter().cloned());
    let patterns: Vec<Value> = prefixes.iter().map(|p| json!({ "prefix": p })).collect();
    json!({
        "use_all_default_tags": false,
        "stats_tags": stats_tags,
        "stats_matcher": { "inclusion_list": { "patterns": patterns } },
    })
}

/// Runs the mounted-file EnvoyFilter's inbound chain with `stats_config`, makes one connection
/// and returns the `istio_tcp_*` lines of `/stats/prometheus`.
fn istio_tcp_lines(name: &str, stats_config: Value) -> Vec<String> {
    let chain = all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(EXPECTED_FILES[0]) && c.direction == Direction::Inbound)
        .unwrap();
    let backend = echo_server();
    let mut cfg = bootstrap(&chain.filters, chain.direction, &[], backend.port());
    cfg["stats_config"] = stats_config;
    let envoy = Envoy::start(name, &serde_json::to_string_pretty(&cfg).unwrap(), 1);
    let port = envoy.listener_port("manifest");
    assert_eq!(client_roundtrip(port, b"ping"), b"ping".to_vec());
    // Metrics are reported at close; give Envoy a moment to see it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = envoy
            .prometheus()
            .lines()
            .filter(|l| l.contains("istio_tcp_connections_closed_total"))
            .map(String::from)
            .collect();
        if !lines.is_empty() || std::time::Instant::now() > deadline {
            return envoy
                .prometheus()
                .lines()
                .filter(|l| l.contains("istio_tcp_") && !l.starts_with('#'))
                .map(String::from)
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readme_stats_settings_give_clean_istio_metrics() {
    let (tag_lists, prefixes) = readme_stats_settings();
    assert!(!tag_lists.is_empty(), "the README gives no extraStatTags");
    let labels = module_labels();
    for tags in &tag_lists {
        let missing: Vec<_> = labels.difference(tags).collect();
        assert!(
            missing.is_empty(),
            "a README extraStatTags list lacks {missing:?}"
        );
    }
    let required = [
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
    ];
    let mut extra: Vec<String> = required.into_iter().map(String::from).collect();
    extra.extend(prefixes.iter().cloned());

    let lines = istio_tcp_lines(
        "istio-stats",
        istio_like_stats_config(&tag_lists[0], &extra),
    );
    let opened = lines
        .iter()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap_or_else(|| panic!("no clean istio_tcp_connections_opened_total in:\n{lines:#?}"));
    assert!(opened.contains(r#"reporter="destination""#), "{opened}");
    for l in &lines {
        assert!(
            !l.contains("=.=") && !l.contains("___"),
            "label left in the name: {l}"
        );
    }

    // Negative: with one tag missing, that label stays in the metric name.
    let mut fewer = tag_lists[0].clone();
    fewer.remove("destination_cluster");
    let lines = istio_tcp_lines(
        "istio-stats-missing-tag",
        istio_like_stats_config(&fewer, &extra),
    );
    assert!(
        lines.iter().any(|l| l.contains("destination_cluster___")),
        "a missing tag must show in the name: {lines:#?}"
    );
    // Negative: a stats matcher that keeps neither `wasm` nor `wasmcustom` drops the metrics.
    let lines = istio_tcp_lines(
        "istio-stats-no-prefix",
        istio_like_stats_config(&labels, &[]),
    );
    assert!(lines.is_empty(), "{lines:#?}");
}
