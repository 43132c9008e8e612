//! Configuration updates under live connections, with listeners from a file-based LDS (Envoy
//! watches the directory; every update is an atomic rename), on both sidecars (Envoy 1.40).
//!
//! The shipped plaintext templates are rendered and their listener moved into `lds.yaml`
//! (`dynamic_resources.lds_config.path_config_source` with `watched_directory`). With
//! [`HELD`] connections open through both sidecars and exchanging bytes between every step:
//! 1. the stats configuration changes on both sidecars (reporting period, a metric override);
//! 2. the exchange configuration changes on both;
//! 3. both filters are removed (client sidecar first, then the server: the other order would
//!    let the client's frame reach the backend while the server has no exchange filter), and
//!    re-added (server first, then client).
//!
//! Each step is an in-place filter-chain update: Envoy keeps the held connections on their old
//! chains (draining them for `--drain-time-s`, 600 s by default) and builds new connections on
//! the new chains. Checked: every byte of old and new connections comes back unaltered, no held
//! connection is cut, no VM trapped, and at the end, when everything is closed, both
//! reporters' four metrics equal exactly what the connections that had the filters moved (old
//! connections are still reported, at their close, by their old configuration). A second test
//! lets Envoy's drain (`--drain-time-s 3`) close the old connections: still counted exactly.

mod hostile;
mod mesh;
mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use hostile::{wait_sums, Rng, CLOSED, OPENED, RECEIVED, SENT};
use mesh::{
    CLIENT_METADATA, CLIENT_NODE_ID, ENDPOINT_WORKLOAD, SERVER_METADATA, SERVER_NODE_ID,
    SERVICE_HOST, SERVICE_NAME, SERVICE_NAMESPACE, SERVICE_PORT,
};
use serde_json::{json, Value};
use support::{echo_server, free_port, make_mtls_certs, render, Backend, Envoy, TempDir};

/// Connections held open through every update.
const HELD: usize = 200;
/// New connections after each step.
const NEW: usize = 20;
const WAIT: Duration = Duration::from_secs(20);
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// One sidecar whose listener comes from `<dir>/lds.yaml`.
struct Sidecar {
    envoy: Envoy,
    dir: TempDir,
    listener: Value,
    updates: u64,
}

impl Sidecar {
    /// Moves the listener of `bootstrap_yaml` (a rendered template) into an LDS file and
    /// starts Envoy on the rest.
    fn start(name: &str, bootstrap_yaml: &str, args: &[&str]) -> Sidecar {
        let dir = TempDir::new(&format!("{name}-lds"));
        let mut bootstrap: Value = serde_yaml::from_str(bootstrap_yaml).expect("template YAML");
        let listener = bootstrap["static_resources"]["listeners"][0].take();
        bootstrap["static_resources"]
            .as_object_mut()
            .expect("static_resources")
            .remove("listeners");
        bootstrap["dynamic_resources"] = json!({
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": dir.file("lds.yaml"),
                    "watched_directory": { "path": dir.path() }
                }
            }
        });
        write_lds(dir.path(), &listener);
        let envoy = Envoy::builder(name, &serde_json::to_string_pretty(&bootstrap).unwrap())
            .concurrency(2)
            .args(args.iter().copied())
            .start();
        let mut sidecar = Sidecar {
            envoy,
            dir,
            listener,
            updates: 0,
        };
        sidecar.wait_updates();
        sidecar
    }

    fn port(&self) -> u16 {
        let name = self.listener["name"].as_str().expect("listener name");
        self.envoy.listener_port(name)
    }

    /// Applies `change` to every Wasm filter's config, writes the LDS file (atomic rename) and
    /// waits until Envoy has taken it.
    fn update(&mut self, change: impl Fn(&mut Vec<Value>)) {
        for chain in self.listener["filter_chains"]
            .as_array_mut()
            .expect("chains")
        {
            let filters = chain["filters"].as_array_mut().expect("filters");
            change(filters);
        }
        write_lds(self.dir.path(), &self.listener);
        self.wait_updates();
    }

    /// Waits until `listener_manager.lds.update_success` counts one more update.
    fn wait_updates(&mut self) {
        self.updates += 1;
        self.envoy
            .wait_for_counter("listener_manager.lds.update_success", self.updates, WAIT);
        // The new chains are built on the workers right after; give them a moment.
        thread::sleep(Duration::from_millis(300));
    }
}

/// `resources: [listener]` to `<dir>/lds.yaml` via a temporary file and a rename, so Envoy never
/// reads half a file.
fn write_lds(dir: &Path, listener: &Value) {
    let mut resource = listener.clone();
    resource["@type"] = json!(LISTENER_TYPE);
    let text = serde_json::to_string_pretty(&json!({ "resources": [resource] })).unwrap();
    let tmp = dir.join(".lds.yaml.tmp");
    fs::write(&tmp, text).expect("write LDS");
    fs::rename(&tmp, dir.join("lds.yaml")).expect("rename LDS");
}

fn is_wasm(f: &Value, root_id: &str) -> bool {
    f["typed_config"]["config"]["root_id"] == root_id
}

/// Sets the JSON `configuration` of every filter with `root_id`.
fn set_config(filters: &mut [Value], root_id: &str, config: &str) {
    for f in filters.iter_mut().filter(|f| is_wasm(f, root_id)) {
        f["typed_config"]["config"]["configuration"]["value"] = json!(config);
    }
}

/// An open connection through both sidecars and what it moved.
struct Held {
    conn: TcpStream,
    bytes: usize,
}

fn round(conn: &mut TcpStream, rng: &mut Rng, what: &str) -> usize {
    let len = 64 + rng.below(1024);
    let mut data = rng.bytes(len);
    data[0] = b'a'; // never the magic's first byte
    conn.write_all(&data)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    let mut back = vec![0u8; len];
    conn.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{what}: read: {e} (cut?)"));
    assert!(back == data, "{what}: bytes altered");
    len
}

fn connect(port: u16) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c
}

fn close(held: Held, what: &str) -> usize {
    let Held { mut conn, bytes } = held;
    conn.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("{what}: EOF: {e}"));
    assert!(rest.is_empty(), "{what}: bytes after the echo");
    bytes
}

fn assert_no_trap(envoy: &Envoy, what: &str) {
    let log = envoy.log();
    for bad in ["panicked", "RuntimeError", "Function: proxy_"] {
        assert!(!log.contains(bad), "{what}: log contains {bad:?}");
    }
    let stats = envoy.stats();
    for l in stats.lines().filter(|l| l.contains(".vm_reload")) {
        assert!(l.ends_with(": 0"), "{what}: {l}");
    }
}

/// Both sidecars from the shipped plaintext templates, listeners by LDS, stats every 1 s, in
/// front of an echo backend; `args` go to both Envoys. Returns (server, client, backend, dir).
fn start_mesh(name: &str, args: &[&str]) -> (Sidecar, Sidecar, Backend, TempDir) {
    let backend = echo_server();
    let dir = TempDir::new(name);
    let certs = make_mtls_certs(&dir.path().join("certs"));
    let wasm = support::wasm_module().display().to_string();
    let service = [
        ("SERVICE_HOST", SERVICE_HOST.to_string()),
        ("SERVICE_NAME", SERVICE_NAME.to_string()),
        ("SERVICE_NAMESPACE", SERVICE_NAMESPACE.to_string()),
        ("SERVICE_PORT", SERVICE_PORT.to_string()),
    ];
    let stats0 = r#"{"tcp_reporting_duration":"1s"}"#;
    let mut p = vec![
        ("ADMIN_PORT", "0".to_string()),
        ("LISTENER_PORT", free_port().to_string()),
        ("NODE_ID", SERVER_NODE_ID.to_string()),
        ("NODE_METADATA", SERVER_METADATA.to_string()),
        ("WASM_PATH", wasm.clone()),
        ("STATS_CONFIG", stats0.to_string()),
        ("EXCHANGE_CONFIG_MTLS", r#"{"side":"server"}"#.to_string()),
        (
            "EXCHANGE_CONFIG_PLAIN",
            r#"{"side":"server","server_mode":"detect"}"#.to_string(),
        ),
        ("BACKEND_PORT", backend.port().to_string()),
        ("CERT_CHAIN", certs.server_cert.display().to_string()),
        ("PRIVATE_KEY", certs.server_key.display().to_string()),
        ("CA_CERT", certs.ca_cert.display().to_string()),
        ("ACCESS_LOG", dir.file("server-access.log")),
    ];
    p.extend(service.iter().cloned());
    let server = Sidecar::start(
        &format!("{name}-server"),
        &render("sidecar-server.yaml", &p),
        args,
    );
    let mut p = vec![
        ("ADMIN_PORT", "0".to_string()),
        ("LISTENER_PORT", free_port().to_string()),
        ("NODE_ID", CLIENT_NODE_ID.to_string()),
        ("NODE_METADATA", CLIENT_METADATA.to_string()),
        ("WASM_PATH", wasm),
        ("STATS_CONFIG", stats0.to_string()),
        ("EXCHANGE_CONFIG", r#"{"side":"client"}"#.to_string()),
        ("UPSTREAM_PORT", server.port().to_string()),
        ("TLS_MODE", "istio".to_string()),
        ("ENDPOINT_WORKLOAD", ENDPOINT_WORKLOAD.to_string()),
        ("ACCESS_LOG", dir.file("client-access.log")),
    ];
    p.extend(service.iter().cloned());
    let client = Sidecar::start(
        &format!("{name}-client"),
        &render("sidecar-client.yaml", &p),
        args,
    );
    (server, client, backend, dir)
}

/// With the two separate roots: the updates below edit each filter's configuration by its
/// `root_id` (the combined root's one configuration is covered by the other suites).
#[test]
fn config_updates_under_200_live_connections_lose_and_alter_nothing() {
    testkit::render::Filters::Separate
        .run(run_config_updates_under_200_live_connections_lose_and_alter_nothing);
}

fn run_config_updates_under_200_live_connections_lose_and_alter_nothing() {
    let (mut server, mut client, _backend, _dir) = start_mesh("lds-update", &[]);
    let port = client.port();
    let mut rng = Rng::new(hostile::seed());

    // What the connections that had the stats filter moved: (connections, bytes each way).
    let mut counted = (0usize, 0usize);
    let mut held: Vec<Held> = (0..HELD)
        .map(|i| {
            let mut conn = connect(port);
            let bytes = round(&mut conn, &mut rng, &format!("held {i}"));
            Held { conn, bytes }
        })
        .collect();
    counted.0 += HELD;

    // Every held connection exchanges a round; NEW fresh connections do one round each and
    // stay open until the end (so they too outlive later updates).
    let mut fresh: Vec<(Held, bool)> = Vec::new();
    let exercise = |step: &str,
                    held: &mut Vec<Held>,
                    fresh: &mut Vec<(Held, bool)>,
                    rng: &mut Rng,
                    filtered: bool| {
        for (i, h) in held.iter_mut().enumerate() {
            h.bytes += round(&mut h.conn, rng, &format!("{step}: held {i}"));
        }
        for (i, (h, _)) in fresh.iter_mut().enumerate() {
            h.bytes += round(&mut h.conn, rng, &format!("{step}: earlier new {i}"));
        }
        for i in 0..NEW {
            let mut conn = connect(port);
            let bytes = round(&mut conn, rng, &format!("{step}: new {i}"));
            fresh.push((Held { conn, bytes }, filtered));
        }
        thread::sleep(Duration::from_millis(1500)); // a periodic report or two
        println!(
            "{step}: {HELD} held + {} new connections all echo",
            fresh.len()
        );
    };
    exercise("start", &mut held, &mut fresh, &mut rng, true);

    // 1. Stats configuration: another period and an override dropping a label.
    let stats1 = r#"{"tcp_reporting_duration":"2s","metrics":[{"name":"","tags_to_remove":["source_version"]}]}"#;
    for side in [&mut server, &mut client] {
        side.update(|f| set_config(f, "istio_tcp_stats", stats1));
    }
    exercise("stats config", &mut held, &mut fresh, &mut rng, true);

    // 2. Exchange configuration.
    server.update(|f| {
        for v in f
            .iter_mut()
            .filter(|f| is_wasm(f, "istio_metadata_exchange"))
        {
            let cfg = v["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap()
                .replace('}', r#","max_frame_bytes":32768}"#);
            v["typed_config"]["config"]["configuration"]["value"] = json!(cfg);
        }
    });
    client.update(|f| {
        set_config(
            f,
            "istio_metadata_exchange",
            r#"{"side":"client","max_frame_bytes":32768,"stat_prefix":"mx_v2"}"#,
        )
    });
    exercise("exchange config", &mut held, &mut fresh, &mut rng, true);
    // The new connections ran the new exchange configuration (its counters' new prefix).
    let added = client
        .envoy
        .counter("wasmcustom.envoy_mx_v2.metadata_added");
    assert_eq!(
        added,
        Some(NEW as u64),
        "new exchange config on new connections"
    );
    assert!(client
        .envoy
        .log()
        .contains("tcp stats configured: reporting every 2s"));

    // 3. Remove both filters (client first), then re-add them (server first).
    let client_filters = client.listener["filter_chains"].clone();
    let server_filters = server.listener["filter_chains"].clone();
    let strip = |f: &mut Vec<Value>| f.retain(|f| f["typed_config"]["config"]["root_id"].is_null());
    client.update(strip);
    server.update(strip);
    exercise("filters removed", &mut held, &mut fresh, &mut rng, false);
    server.listener["filter_chains"] = server_filters;
    server.update(|_| {});
    client.listener["filter_chains"] = client_filters;
    client.update(|_| {});
    exercise("filters re-added", &mut held, &mut fresh, &mut rng, true);

    for (envoy, what) in [(&client.envoy, "client"), (&server.envoy, "server")] {
        assert_no_trap(envoy, what);
        let stats = envoy.stats();
        println!(
            "{what}: in-place updates {:?}, filter chains draining {:?}",
            support::parse_stat(&stats, "listener_manager.listener_in_place_updated"),
            support::parse_stat(&stats, "listener_manager.total_filter_chains_draining")
        );
    }

    // Close everything; the connections made while the filters were there must all be counted.
    let mut moved = 0;
    for (i, h) in held.into_iter().enumerate() {
        moved += close(h, &format!("closing held {i}"));
    }
    counted.1 += moved;
    for (i, (h, filtered)) in fresh.into_iter().enumerate() {
        let bytes = close(h, &format!("closing new {i}"));
        if filtered {
            counted.0 += 1;
            counted.1 += bytes;
        }
    }
    let (conns, bytes) = (counted.0 as f64, counted.1 as f64);
    println!("counted connections {conns}, bytes each way {bytes}");
    for (envoy, what) in [(&client.envoy, "client"), (&server.envoy, "server")] {
        wait_sums(
            envoy,
            what,
            &[
                (OPENED, conns),
                (CLOSED, conns),
                (RECEIVED, bytes),
                (SENT, bytes),
            ],
            WAIT,
        );
        assert_no_trap(envoy, what);
    }
    // Both configurations' series are there: the override dropped source_version from the
    // series of connections opened after step 1.
    let prom = client.envoy.prometheus();
    let opened: Vec<_> = mesh::parse_prometheus(&prom)
        .into_iter()
        .filter(|s| s.name == OPENED)
        .collect();
    assert!(opened
        .iter()
        .any(|s| s.labels.contains_key("source_version")));
    assert!(opened
        .iter()
        .any(|s| s.labels.get("source_version").is_none_or(|v| v.is_empty())));
}

/// Envoy's own drain: with `--drain-time-s 3`, connections still open on a replaced filter chain
/// are closed by Envoy when the drain ends, and their counts are reported at that close by the
/// old configuration.
/// With the two separate roots: the updates below edit each filter's configuration by its
/// `root_id` (the combined root's one configuration is covered by the other suites).
#[test]
fn connections_closed_by_envoys_drain_are_still_counted() {
    testkit::render::Filters::Separate
        .run(run_connections_closed_by_envoys_drain_are_still_counted);
}

fn run_connections_closed_by_envoys_drain_are_still_counted() {
    const DRAINED: usize = 50;
    let (mut server, mut client, _backend, _dir) =
        start_mesh("lds-drain", &["--drain-time-s", "3"]);
    let port = client.port();
    let mut rng = Rng::new(hostile::seed());
    let mut held: Vec<Held> = (0..DRAINED)
        .map(|i| {
            let mut conn = connect(port);
            let bytes = round(&mut conn, &mut rng, &format!("drained {i}"));
            Held { conn, bytes }
        })
        .collect();
    let stats1 = r#"{"tcp_reporting_duration":"2s"}"#;
    for side in [&mut server, &mut client] {
        side.update(|f| set_config(f, "istio_tcp_stats", stats1));
    }
    let updated = Instant::now();
    for (i, h) in held.iter_mut().enumerate() {
        h.bytes += round(
            &mut h.conn,
            &mut rng,
            &format!("drained {i} after the update"),
        );
    }
    // Nothing more is sent: each connection must end by Envoy's hand (EOF or reset).
    let mut bytes = 0;
    let mut ended = Vec::new();
    for (i, h) in held.into_iter().enumerate() {
        let Held { mut conn, bytes: b } = h;
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {}
            other => panic!("drained {i}: not closed by the drain: {other:?}"),
        }
        ended.push(updated.elapsed());
        bytes += b;
    }
    println!(
        "{DRAINED} connections closed by Envoy's drain, {:?} to {:?} after the update",
        ended.iter().min().unwrap(),
        ended.iter().max().unwrap()
    );
    let (conns, bytes) = (DRAINED as f64, bytes as f64);
    for (envoy, what) in [(&client.envoy, "client"), (&server.envoy, "server")] {
        wait_sums(
            envoy,
            what,
            &[
                (OPENED, conns),
                (CLOSED, conns),
                (RECEIVED, bytes),
                (SENT, bytes),
            ],
            WAIT,
        );
        assert_no_trap(envoy, what);
    }
}
