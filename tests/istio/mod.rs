//! What istiod would do with the manifests in `examples/istio/`, for the tests: reading them,
//! applying EnvoyFilter patches the way `pilot/pkg/networking/core/envoyfilter/listener_patch.go`
//! does, turning WasmPlugins into the filters istiod builds, and Envoy configs around the result.
//! Include with `mod support; mod istio;`.

#![allow(dead_code)]

use std::fs;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::support::*;

pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
pub const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
/// Where the manifests (and the README's userVolume annotations) put the module in a sidecar.
pub const MOUNTED_MODULE: &str = "/var/local/lib/wasm-filters/istio_tcp_telemetry.wasm";
pub const EXCHANGE: &str = "istio_metadata_exchange";
pub const STATS: &str = "istio_tcp_stats";
pub const TELEMETRY: &str = "istio_tcp_telemetry";
pub const EXPECTED_FILES: [&str; 4] = [
    "envoyfilter-tcp-telemetry.yaml",
    "envoyfilter-tcp-telemetry-remote.yaml",
    "wasmplugin-tcp-telemetry.yaml",
    "wasmplugin-tcp-telemetry-oci.yaml",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// SIDECAR_INBOUND / WasmPlugin mode SERVER.
    Inbound,
    /// SIDECAR_OUTBOUND / WasmPlugin mode CLIENT.
    Outbound,
}

impl Direction {
    pub fn traffic_direction(self) -> &'static str {
        match self {
            Direction::Inbound => "INBOUND",
            Direction::Outbound => "OUTBOUND",
        }
    }

    /// The root ids of the chain, in order, that the module needs (README "Filter order").
    pub fn required_order(self) -> [&'static str; 2] {
        match self {
            Direction::Inbound => [EXCHANGE, STATS],
            Direction::Outbound => [STATS, EXCHANGE],
        }
    }
}

/// One manifest file: its name and its YAML documents.
pub struct Manifest {
    pub file: String,
    pub docs: Vec<Value>,
}

/// A chain Istio would build from one manifest for one direction: the Wasm filters in order
/// (each `{name, typed_config}`), plus the clusters the manifest adds.
#[derive(Debug, Clone)]
pub struct Chain {
    pub origin: String,
    pub direction: Direction,
    pub filters: Vec<Value>,
    pub clusters: Vec<Value>,
}

// ---------------------------------------------------------------------------------------------
// Reading the manifests

pub fn istio_dir() -> std::path::PathBuf {
    manifest_dir().join("examples/istio")
}

/// Every `examples/istio/*.yaml`, parsed, in name order.
pub fn manifests() -> Vec<Manifest> {
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
pub fn parse_yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let doc = Value::deserialize(de).map_err(|e| e.to_string())?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The patch operations the applier below knows; the shipped manifests may use only these.
const NETWORK_FILTER_OPS: [&str; 4] = ["INSERT_FIRST", "INSERT_BEFORE", "INSERT_AFTER", "ADD"];

/// Applies every `NETWORK_FILTER` patch for `context` (`SIDECAR_INBOUND`/`SIDECAR_OUTBOUND`) of
/// every EnvoyFilter in `m`, in order, to each filter list in `chains` (one per filter chain of a
/// listener), as istiod's `patchNetworkFilters` (envoyfilter/listener_patch.go) does:
/// `INSERT_FIRST` and `ADD` apply to every chain whatever `filterChain.filter.name` says;
/// `INSERT_BEFORE`/`INSERT_AFTER` with a filter name go next to the first filter of that name and
/// skip chains without one (without a name: first / last). Returns the CLUSTER ADD values.
pub fn apply_envoyfilters(
    m: &Manifest,
    context: &str,
    chains: &mut [Vec<Value>],
) -> Result<Vec<Value>, String> {
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
                    let ctx = str_at(p, "/match/context").unwrap_or_default();
                    if ctx != "SIDECAR_INBOUND" && ctx != "SIDECAR_OUTBOUND" {
                        return Err(format!("{at}: context {ctx:?} (not a sidecar context)"));
                    }
                    if !NETWORK_FILTER_OPS.contains(&op) {
                        return Err(format!("{at}: operation {op} not modelled here"));
                    }
                    if ctx != context {
                        continue;
                    }
                    let anchor = str_at(p, "/match/listener/filterChain/filter/name");
                    let value = p["patch"]["value"].clone();
                    for chain in chains.iter_mut() {
                        let at_anchor = anchor.map(|a| chain.iter().position(|f| f["name"] == a));
                        match (op, at_anchor) {
                            ("INSERT_FIRST", _) | ("INSERT_BEFORE", None) => {
                                chain.insert(0, value.clone())
                            }
                            ("ADD", _) | ("INSERT_AFTER", None) => chain.push(value.clone()),
                            ("INSERT_BEFORE", Some(Some(pos))) => chain.insert(pos, value.clone()),
                            ("INSERT_AFTER", Some(Some(pos))) => {
                                chain.insert(pos + 1, value.clone())
                            }
                            _ => {} // the named filter is not in this chain
                        }
                    }
                }
                other => return Err(format!("{at}: unexpected patch {other} {op}")),
            }
        }
    }
    Ok(clusters)
}

/// The chains of every EnvoyFilter in `m`: its patches applied to a chain that holds only
/// tcp_proxy, per context, then tcp_proxy dropped (the Wasm filters in order).
pub fn envoyfilter_chains(m: &Manifest) -> Result<Vec<Chain>, String> {
    let mut out = Vec::new();
    for (direction, context) in [
        (Direction::Inbound, "SIDECAR_INBOUND"),
        (Direction::Outbound, "SIDECAR_OUTBOUND"),
    ] {
        let mut chains = vec![vec![json!({ "name": TCP_PROXY })]];
        let clusters = apply_envoyfilters(m, context, &mut chains)?;
        let mut filters = chains.remove(0);
        filters.retain(|f| f["name"] != TCP_PROXY);
        if !filters.is_empty() {
            out.push(Chain {
                origin: format!("{} {direction:?}", m.file),
                direction,
                filters,
                clusters,
            });
        }
    }
    Ok(out)
}

/// The chains of every WasmPlugin in `m`, each plugin turned into the Envoy filter istiod makes
/// of it (`pilot/pkg/model/extensions.go`: name `<ns>.<name>`, `root_id` = pluginName, V8,
/// pluginConfig as JSON in a StringValue, no vm_id), placed the way istiod places network
/// plugins: by phase (AUTHN, AUTHZ, STATS, then none), within a phase by descending priority.
pub fn wasmplugin_chains(m: &Manifest) -> Result<Vec<Chain>, String> {
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
                // Each WasmPlugin object has its own resourceVersion (extensions.go).
                "environment_variables": {
                    "key_values": {
                        "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": (plugins.len() + 1).to_string()
                    }
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
pub fn all_chains() -> Vec<Chain> {
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
pub fn filter_config(f: &Value) -> Result<(String, Value), String> {
    let name = f["name"].as_str().unwrap_or("?");
    let tc = &f["typed_config"];
    if tc["@type"] != WASM_TYPE {
        return Err(format!("{name}: @type {}", tc["@type"]));
    }
    let c = &tc["config"];
    let root_id = c["root_id"].as_str().unwrap_or_default().to_string();
    if root_id != EXCHANGE && root_id != STATS && root_id != TELEMETRY {
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

/// Order and direction: the root ids in the order the module needs (the two filters, or the
/// combined one alone), the exchange's `side` and the stats `reporter` matching the listener
/// direction (in the combined filter's `exchange` and `stats` parts).
pub fn check_chain(chain: &Chain) -> Result<(), String> {
    let mut order = Vec::new();
    for f in &chain.filters {
        let (root_id, json) = filter_config(f)?;
        let parts = if root_id == TELEMETRY {
            vec![
                (EXCHANGE, json["exchange"].clone()),
                (STATS, json["stats"].clone()),
            ]
        } else {
            vec![(root_id.as_str(), json.clone())]
        };
        for (part, json) in parts {
            check_direction(chain.direction, part, &json)?;
        }
        order.push(root_id);
    }
    let combined = order.len() == 1 && order[0] == TELEMETRY;
    if !combined && order != chain.direction.required_order() {
        return Err(format!(
            "order {order:?}, the module needs {:?} or [{TELEMETRY:?}]",
            chain.direction.required_order()
        ));
    }
    Ok(())
}

/// The exchange's `side` or the stats' `reporter` against the listener direction.
fn check_direction(direction: Direction, root_id: &str, json: &Value) -> Result<(), String> {
    let (side, reporter) = match direction {
        Direction::Inbound => ("server", "destination"),
        Direction::Outbound => ("client", "source"),
    };
    if root_id == EXCHANGE && json["side"] != side {
        return Err(format!("exchange side {} on {direction:?}", json["side"]));
    }
    if root_id == STATS && !json["reporter"].is_null() && json["reporter"] != reporter {
        return Err(format!("reporter {} on {direction:?}", json["reporter"]));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Envoy configs

/// The filter with its mounted module path replaced by the built module (remote code is kept).
pub fn with_built_module(f: &Value) -> Value {
    let mut f = f.clone();
    if let Some(path) = f.pointer_mut("/typed_config/config/vm_config/code/local/filename") {
        assert_eq!(path, MOUNTED_MODULE);
        *path = json!(wasm_module().display().to_string());
    }
    f
}

/// A bootstrap with one listener whose chain is `filters` then tcp_proxy → a static cluster on
/// 127.0.0.1:`backend_port`, plus `clusters`. Ports 0; JSON, which is valid YAML.
pub fn bootstrap(
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

pub fn validate(name: &str, config: &Value) -> Result<(), String> {
    validate_config(name, &serde_json::to_string_pretty(config).unwrap())
}
pub mod bootstrap_stats;
pub mod shapes;

/// The (major, minor, patch) of the Envoy under test (`envoy --version`).
pub fn envoy_version() -> (u32, u32, u32) {
    let out = std::process::Command::new(envoy_bin())
        .arg("--version")
        .output()
        .expect("run envoy --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split('/')
        .find(|p| p.split('.').count() == 3 && p.split('.').all(|n| n.parse::<u32>().is_ok()))
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let n: Vec<u32> = v.split('.').map(|x| x.parse().unwrap()).collect();
    (n[0], n[1], n[2])
}
