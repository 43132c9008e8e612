//! `examples/istio/check-server-filter.py`, the rollout check, against a real Envoy's
//! `/config_dump`: an Istio-shaped inbound listener (tests/istio/shapes.rs) for a `mongo` port
//! with the shipped inbound EnvoyFilter applied passes; the same listener without it, with the
//! exchange behind mongo_proxy, or with Istio's own exchange still on fails. The WasmPlugin path
//! is run with the filters delivered by ECDS (from a file), as istiod delivers them, and the
//! script also reads the listener list `istioctl proxy-config listener -o json` prints.
//!
//! Fails (never skips) when Envoy, python3 or the module is missing.

mod istio;
mod support;

use std::fs;
use std::process::Command;

use istio::shapes::{self, PortProtocol};
use istio::*;
use serde_json::{json, Value};
use support::*;

fn script() -> std::path::PathBuf {
    istio_dir().join("check-server-filter.py")
}

/// Runs the script on `doc` (written to a file); exit code and stdout.
fn check(dir: &TempDir, name: &str, doc: &Value) -> (i32, String) {
    let path = dir.path().join(format!("{name}.json"));
    fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg("--file")
        .arg(&path)
        .output()
        .expect("run python3 (make tools)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The `/config_dump` of an Envoy running the Istio-shaped inbound listener of a mongo port whose
/// chains hold `filters`.
fn config_dump(dir: &TempDir, name: &str, filters: Vec<Value>) -> Value {
    let certs = make_mtls_certs(dir.path());
    let port = free_port();
    let cfg = shapes::sidecar_bootstrap(
        MONGODB_NODE_ID,
        MONGODB_NODE_METADATA,
        vec![shapes::inbound_listener(port, &certs, |_| filters.clone())],
        vec![shapes::cluster("inbound|27017||", free_port(), None, None)],
    );
    let envoy = Envoy::start(name, &serde_json::to_string_pretty(&cfg).unwrap(), 1);
    serde_json::from_str(&envoy.admin("/config_dump?include_eds")).expect("config_dump is JSON")
}

fn shipped_inbound() -> Vec<Value> {
    let m = manifests()
        .into_iter()
        .find(|m| m.file == EXPECTED_FILES[0])
        .unwrap();
    let mut chains = vec![shapes::network_filter_stack(
        PortProtocol::Mongo,
        "inbound|27017||",
    )];
    apply_envoyfilters(&m, "SIDECAR_INBOUND", &mut chains).unwrap();
    chains.remove(0)
}

/// The listeners of a config_dump as the list `istioctl proxy-config listener -o json` prints.
fn listener_list(dump: &Value) -> Value {
    let mut out = Vec::new();
    for c in dump["configs"].as_array().unwrap() {
        for l in c["static_listeners"].as_array().into_iter().flatten() {
            out.push(l["listener"].clone());
        }
    }
    Value::Array(out)
}

#[test]
fn the_rollout_check_passes_only_proxies_running_the_server_exchange_first() {
    let dir = TempDir::new("rollout-check");

    let with = config_dump(&dir, "rollout-with", shipped_inbound());
    let (code, out) = check(&dir, "with", &with);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 inbound TCP chain(s)"), "{out}");
    let (code, out) = check(&dir, "with-list", &listener_list(&with));
    assert_eq!(code, 0, "{out}");

    let without = config_dump(
        &dir,
        "rollout-without",
        shapes::network_filter_stack(PortProtocol::Mongo, "inbound|27017||"),
    );
    let (code, out) = check(&dir, "without", &without);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no server-side"), "{out}");

    // The exchange behind mongo_proxy (the old INSERT_BEFORE tcp_proxy).
    let mut late = shipped_inbound();
    let ex = late.remove(0);
    late.insert(2, ex);
    let old = config_dump(&dir, "rollout-late", late);
    let (code, out) = check(&dir, "late", &old);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("comes after"), "{out}");

    // Istio's own exchange still on: the dump with mongo_proxy renamed as istiod names its
    // exchange (stock Envoy has no istio.metadata_exchange to run).
    let text = serde_json::to_string(&with).unwrap().replace(
        "\"envoy.filters.network.mongo_proxy\"",
        "\"istio.metadata_exchange\"",
    );
    let (code, out) = check(&dir, "istio-mx", &serde_json::from_str(&text).unwrap());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Istio's own"), "{out}");

    // Not a dump at all.
    let (code, _) = check(&dir, "garbage", &json!({ "hello": 1 }));
    assert_eq!(code, 2);
}

#[test]
fn the_rollout_check_reads_wasmplugin_filters_delivered_by_ecds() {
    let dir = TempDir::new("rollout-ecds");
    let chain = all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(EXPECTED_FILES[2]) && c.direction == Direction::Inbound)
        .unwrap();
    // Each plugin's filter as istiod sends it: a name and a config_discovery; the config itself
    // arrives by ECDS (here from a file, which Envoy watches like an xDS source).
    let mut filters = Vec::new();
    for f in &chain.filters {
        let name = f["name"].as_str().unwrap();
        let file = dir.path().join(format!("{}.json", filters.len()));
        let resource = json!({ "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": with_built_module(f)["typed_config"],
        }]});
        fs::write(&file, serde_json::to_string(&resource).unwrap()).unwrap();
        filters.push(json!({
            "name": name,
            "config_discovery": {
                "config_source": { "path_config_source": { "path": file } },
                "type_urls": [WASM_TYPE],
            },
        }));
    }
    filters.extend(shapes::network_filter_stack(
        PortProtocol::Mongo,
        "inbound|27017||",
    ));
    let dump = config_dump(&dir, "rollout-ecds", filters);
    let (code, out) = check(&dir, "ecds", &dump);
    assert_eq!(code, 0, "{out}");
    assert!(
        serde_json::to_string(&dump)
            .unwrap()
            .contains("EcdsConfigDump"),
        "the dump holds the ECDS configs"
    );
    let (code, out) = check(&dir, "ecds-list", &listener_list(&dump));
    assert_eq!(code, 0, "{out}");
    // Istio 1.24 and 1.25 name the ECDS resources extenstions.istio.io/wasmplugin/… (sic).
    let text = serde_json::to_string(&listener_list(&dump))
        .unwrap()
        .replace(
            "extensions.istio.io/wasmplugin/",
            "extenstions.istio.io/wasmplugin/",
        );
    let (code, out) = check(&dir, "ecds-1.24", &serde_json::from_str(&text).unwrap());
    assert_eq!(code, 0, "{out}");
    // Negative: a listener list whose ECDS filter is someone else's plugin.
    let text = text.replace("istio-tcp-telemetry-inbound-exchange", "other-plugin");
    let (code, out) = check(&dir, "ecds-other", &serde_json::from_str(&text).unwrap());
    assert_eq!(code, 1, "{out}");
}
