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
//! sha256. The patches are also applied, as istiod applies them, to the chains istiod builds
//! for mongo, mysql, TCP and HTTP ports (placement); every resource must be scoped to labelled
//! sidecars; a gateway node (`router~`) must leave bytes alone; VMs per proxy are counted.
//! (The stats settings are in `istio_stats_tags.rs`, Mongo/MySQL traffic in
//! `istio_protocol_ports.rs`, the rollout check in `istio_rollout_check.rs`.)
//!
//! Fails (never skips) when Envoy or the module is missing.

mod istio;
mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use istio::*;
use serde_json::{json, Value};
use support::*;

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
    // Negative: the same chains with their two filters swapped must be refused; a combined
    // filter whose side does not fit the direction too.
    for mut chain in all_chains() {
        if chain.filters.len() == 2 {
            chain.filters.reverse();
            let err = check_chain(&chain).expect_err(&chain.origin);
            assert!(err.contains("order"), "{}: {err}", chain.origin);
        } else {
            let wrong = match chain.direction {
                Direction::Inbound => "client",
                Direction::Outbound => "server",
            };
            let value = "/typed_config/config/configuration/value";
            let text = chain.filters[0].pointer(value).unwrap().as_str().unwrap();
            let mut json: Value = serde_json::from_str(text).unwrap();
            json["exchange"]["side"] = json!(wrong);
            *chain.filters[0].pointer_mut(value).unwrap() = json!(json.to_string());
            let err = check_chain(&chain).expect_err(&chain.origin);
            assert!(err.contains("exchange side"), "{}: {err}", chain.origin);
        }
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
    // VMs: the two filters share vm_id and code, so one base VM plus one per worker (1 here),
    // the remote code as for a local file.
    assert_eq!(
        envoy.counter("wasm.envoy.wasm.runtime.v8.active"),
        Some(vms_of_chain(EXPECTED_FILES[0], Direction::Outbound)),
        "remote code shares VMs like a mounted file"
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
// Tests: placement in Istio's chains, scope, gateways

/// The label the shipped resources select on; gateways never carry it.
const SCOPE_LABEL: (&str, &str) = ("istio-tcp-telemetry", "enabled");

fn root_ids(chain: &[Value]) -> Vec<String> {
    chain
        .iter()
        .map(|f| {
            f["typed_config"]["config"]["root_id"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| f["name"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

#[test]
fn envoyfilters_put_the_inbound_exchange_ahead_of_mongo_and_mysql_proxy() {
    use istio::shapes::{network_filter_stack, PortProtocol};
    let hcm = json!({ "name": "envoy.filters.network.http_connection_manager" });
    for m in manifests() {
        if !m.docs.iter().any(|d| d["kind"] == "EnvoyFilter") {
            continue;
        }
        for (proto, pf) in [
            (
                PortProtocol::Mongo,
                Some("envoy.filters.network.mongo_proxy"),
            ),
            (
                PortProtocol::MySql,
                Some("envoy.filters.network.mysql_proxy"),
            ),
            (PortProtocol::Tcp, None),
        ] {
            let mut inbound = vec![network_filter_stack(proto, "inbound|27017||")];
            apply_envoyfilters(&m, "SIDECAR_INBOUND", &mut inbound).unwrap();
            let mut outbound = vec![network_filter_stack(proto, "outbound|27017||mongodb")];
            apply_envoyfilters(&m, "SIDECAR_OUTBOUND", &mut outbound).unwrap();
            let mut want_in = vec![EXCHANGE.to_string()];
            let mut want_out = Vec::new();
            if let Some(pf) = pf {
                want_in.push(pf.to_string());
                want_out.push(pf.to_string());
            }
            want_in.extend([STATS.to_string(), TCP_PROXY.to_string()]);
            want_out.extend([TELEMETRY.to_string(), TCP_PROXY.to_string()]);
            assert_eq!(
                root_ids(&inbound[0]),
                want_in,
                "{} inbound {proto:?}",
                m.file
            );
            assert_eq!(
                root_ids(&outbound[0]),
                want_out,
                "{} outbound {proto:?}",
                m.file
            );
        }
        // An HTTP chain: INSERT_FIRST puts the exchange (detect mode) in front of the HCM, the
        // stats filter (INSERT_BEFORE tcp_proxy) stays away; outbound HTTP gets nothing.
        let mut http = vec![vec![hcm.clone()]];
        apply_envoyfilters(&m, "SIDECAR_INBOUND", &mut http).unwrap();
        assert_eq!(
            root_ids(&http[0]),
            [EXCHANGE, "envoy.filters.network.http_connection_manager"],
            "{}",
            m.file
        );
        let mut http = vec![vec![hcm.clone()]];
        apply_envoyfilters(&m, "SIDECAR_OUTBOUND", &mut http).unwrap();
        assert_eq!(http[0].len(), 1, "{}", m.file);
    }
}

#[test]
fn every_resource_is_scoped_to_labelled_sidecars() {
    let selects = |labels: &Value| labels[SCOPE_LABEL.0] == SCOPE_LABEL.1;
    // Labels of Istio's gateway deployments (ingress, egress, east-west) and of a workload
    // without the module.
    let unselected = [
        json!({ "istio": "ingressgateway", "app": "istio-ingressgateway" }),
        json!({ "istio": "egressgateway", "app": "istio-egressgateway" }),
        json!({ "istio": "eastwestgateway", "topology.istio.io/network": "network2" }),
        json!({ "app": "reviews", "version": "v1" }),
    ];
    let mut seen = 0;
    for m in manifests() {
        for doc in &m.docs {
            let name = format!("{} {}", m.file, doc["metadata"]["name"]);
            let labels = match doc["kind"].as_str() {
                Some("EnvoyFilter") => &doc["spec"]["workloadSelector"]["labels"],
                Some("WasmPlugin") => {
                    let matches = doc["spec"]["match"].as_array().expect(&name);
                    for x in matches {
                        let ports = x["ports"].as_array().map(Vec::len).unwrap_or(0);
                        assert!(ports > 0, "{name}: match without ports reaches HTTP chains");
                        assert!(x["mode"] == "SERVER" || x["mode"] == "CLIENT", "{name}");
                    }
                    &doc["spec"]["selector"]["matchLabels"]
                }
                other => panic!("{name}: unexpected kind {other:?}"),
            };
            assert!(selects(labels), "{name}: not scoped by {SCOPE_LABEL:?}");
            for pod in &unselected {
                let all = labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| pod[k] == *v);
                assert!(!all, "{name} selects {pod}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 8, "{seen} resources");
}

/// The WasmPlugin client chain (what an unscoped root-namespace plugin would put on a gateway)
/// in an Envoy whose node id is `node_id`, in front of a recording backend; returns what the
/// backend received for `payload` and the Envoy log.
fn client_chain_on_node(node_id: &str, payload: &[u8]) -> (Vec<u8>, String) {
    use istio::shapes;
    use std::sync::{Arc, Mutex};
    let chain = all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(EXPECTED_FILES[2]) && c.direction == Direction::Outbound)
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    let backend = Backend::spawn(move |mut conn| {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return conn.shutdown(std::net::Shutdown::Write);
            }
            got2.lock().unwrap().extend_from_slice(&buf[..n]);
            conn.write_all(&buf[..n])?;
        }
    });
    // The gate opened (`always`: the backend here is plaintext, where `istio_mtls` stays shut),
    // so that only the gateway rule can keep the frame back.
    let mut filters: Vec<Value> = chain.filters.iter().map(gate_always).collect();
    filters.extend(shapes::network_filter_stack(
        shapes::PortProtocol::Tcp,
        "outbound|27017||mongodb.default.svc.cluster.local",
    ));
    let port = free_port();
    let cfg = shapes::sidecar_bootstrap(
        node_id,
        RATINGS_NODE_METADATA,
        vec![shapes::outbound_listener(port, &filters)],
        vec![shapes::cluster(
            "outbound|27017||mongodb.default.svc.cluster.local",
            backend.port(),
            Some(MONGODB_ENDPOINT_WORKLOAD),
            None,
        )],
    );
    let envoy = Envoy::start(
        "gateway-node",
        &serde_json::to_string_pretty(&cfg).unwrap(),
        1,
    );
    let echoed = request_until(port, payload, payload);
    assert!(echoed.ends_with(payload), "{echoed:?}");
    let received = got.lock().unwrap().clone();
    // Envoy writes its log file every 100 ms (and worker VMs configure after the listener is
    // up): on a gateway node, wait for every filter's line before the log is read.
    if node_id.starts_with("router~") {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while envoy.log().matches(GATEWAY_LINE).count() < chain_len()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    (received, envoy.log())
}

/// What each filter logs at configure time on an Istio gateway node.
const GATEWAY_LINE: &str = "is an Istio gateway (router~)";

/// Filters in the WasmPlugin client chain.
fn chain_len() -> usize {
    all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(EXPECTED_FILES[2]) && c.direction == Direction::Outbound)
        .map_or(0, |c| c.filters.len())
}

/// The filter with its exchange's `client_gate` set to `always` (separate or combined root).
fn gate_always(f: &Value) -> Value {
    let mut f = f.clone();
    let value = "/typed_config/config/configuration/value";
    let mut json: Value =
        serde_json::from_str(f.pointer(value).unwrap().as_str().unwrap()).unwrap();
    let root_id = f["typed_config"]["config"]["root_id"].clone();
    let exchange = if root_id == TELEMETRY {
        Some(&mut json["exchange"])
    } else if root_id == EXCHANGE {
        Some(&mut json)
    } else {
        None
    };
    if let Some(exchange) = exchange {
        exchange["client_gate"] = json!("always");
    }
    *f.pointer_mut(value).unwrap() = json!(json.to_string());
    f
}

#[test]
fn on_a_gateway_node_the_module_passes_bytes_and_sends_no_frame() {
    let payload = b"ingress gateway to mongodb";
    let gateway =
        "router~10.0.0.9~istio-ingressgateway-7d9f-x.istio-system~istio-system.svc.cluster.local";
    let (received, log) = client_chain_on_node(gateway, payload);
    assert_eq!(
        received,
        payload.to_vec(),
        "a gateway must not send a frame"
    );
    assert!(
        log.matches(GATEWAY_LINE).count() >= chain_len(),
        "every filter logs that it stays inert:\n{log}"
    );
    // Negative: the same chain on a sidecar node sends its frame ahead of the bytes.
    let (received, _) = client_chain_on_node(RATINGS_NODE_ID, payload);
    assert_eq!(&received[..4], &[0x3D, 0x23, 0x04, 0x67], "{received:?}");
    assert!(received.ends_with(payload));
}

/// Live V8 VMs of an Envoy (concurrency 1) running `file`'s chain for `direction`.
fn vms_of_chain(file: &str, direction: Direction) -> u64 {
    let chain = all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(file) && c.direction == direction)
        .unwrap();
    let backend = echo_server();
    let cfg = bootstrap(&chain.filters, direction, &[], backend.port());
    let envoy = Envoy::start("vms", &serde_json::to_string_pretty(&cfg).unwrap(), 1);
    let port = envoy.listener_port("manifest");
    assert_eq!(client_roundtrip(port, b"ping"), b"ping".to_vec());
    envoy.counter("wasm.envoy.wasm.runtime.v8.active").unwrap()
}

#[test]
fn envoyfilter_filters_share_their_vms_and_each_wasmplugin_has_its_own() {
    // EnvoyFilter: one vm_id, one code, so the filters of a chain share the VMs. WasmPlugin:
    // istiod gives each plugin its own ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION and no vm_id.
    // Measured: Envoy 1.39 and later key VMs on those variables too (one VM set per plugin);
    // 1.36 to 1.38 do not (the plugins share one set). Inbound has two plugins; outbound one
    // (the combined root), so there the two variants run the same number of VMs.
    let shared = vms_of_chain(EXPECTED_FILES[0], Direction::Inbound);
    let per_plugin = vms_of_chain(EXPECTED_FILES[2], Direction::Inbound);
    let factor = if envoy_version() >= (1, 39, 0) { 2 } else { 1 };
    assert_eq!(
        vms_of_chain(EXPECTED_FILES[2], Direction::Outbound),
        vms_of_chain(EXPECTED_FILES[0], Direction::Outbound),
        "one combined plugin outbound: one VM set, as the EnvoyFilter's"
    );
    assert_eq!(
        per_plugin,
        factor * shared,
        "Envoy {:?}: shared {shared}, per plugin {per_plugin}",
        envoy_version()
    );
}
