//! The TCP stats filter end to end in real Envoy: client sidecar (reporter=source) → server
//! sidecar (reporter=destination) → backend, read back from `/stats/prometheus` as whole series.

mod mesh;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use mesh::{parse_prometheus, request_reply, Mesh, MeshOptions, Sample};
use support::{prefix_server, TempDir, CLIENT_SPIFFE, SERVER_SPIFFE};

const WAIT: Duration = Duration::from_secs(15);

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Istio's labels for ratings-v2 → mongodb-v1 as `reporter` sees them.
fn expected(reporter: &str, mtls: bool) -> BTreeMap<String, String> {
    labels(&expected_in_order(reporter, mtls))
}

/// The same labels in the order Istio's series list them (tools that compare series as text
/// depend on it).
fn expected_in_order(reporter: &str, mtls: bool) -> Vec<(&'static str, &str)> {
    let (src_principal, dst_principal, policy) = match (reporter, mtls) {
        ("source", true) => (CLIENT_SPIFFE, SERVER_SPIFFE, "unknown"),
        ("source", false) => ("unknown", "unknown", "unknown"),
        (_, true) => (CLIENT_SPIFFE, SERVER_SPIFFE, "mutual_tls"),
        (_, false) => ("unknown", "unknown", "none"),
    };
    testkit::bookinfo::istio_labels(reporter, src_principal, dst_principal, policy)
}

/// One whole `/stats/prometheus` line, as Istio prints it.
fn istio_line(metric: &str, reporter: &str, mtls: bool, value: u64) -> String {
    let labels: Vec<String> = expected_in_order(reporter, mtls)
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{metric}{{{}}} {value}", labels.join(","))
}

fn samples(envoy: &support::Envoy, metric: &str) -> Vec<Sample> {
    parse_prometheus(&envoy.prometheus())
        .into_iter()
        .filter(|s| s.name == metric)
        .collect()
}

/// Waits until `metric` has exactly one series and it reaches `value`; returns it.
fn wait_series(envoy: &support::Envoy, metric: &str, value: f64) -> Sample {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = samples(envoy, metric);
        if found.len() == 1 && found[0].value == value {
            return found.into_iter().next().expect("one series");
        }
        if Instant::now() > deadline {
            panic!("{metric}: wanted one series at {value}, got {found:#?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Istio's own TCP metrics test: 10 connections send `world\n`, receive `hello world\n`.
fn ten_hello_worlds(mtls: bool) {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        mtls,
        ..Default::default()
    };
    let mesh = Mesh::start(
        if mtls { "stats-mtls" } else { "stats-plain" },
        backend.port(),
        &opts,
    );
    for _ in 0..10 {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n"
        );
    }
    for (envoy, reporter) in [(&mesh.client, "source"), (mesh.server(), "destination")] {
        let want = expected(reporter, mtls);
        for (metric, value) in [
            (OPENED, 10.0),
            (CLOSED, 10.0),
            (RECEIVED, 60.0),
            (SENT, 120.0),
        ] {
            let sample = wait_series(envoy, metric, value);
            assert_eq!(sample.labels, want, "{reporter} {metric}: every label");
            // The whole line as text: label order is part of Istio's output.
            let line = istio_line(metric, reporter, mtls, value as u64);
            let text = envoy.prometheus();
            assert!(
                text.lines().any(|l| l == line),
                "{reporter}: wanted the line\n{line}\nin\n{text}"
            );
        }
    }
    // Cross-check with Envoy's own tcp_proxy counters: the client's downstream is the app; the
    // server's upstream is the backend (its downstream also carried the exchange frames).
    let client = &mesh.client;
    assert_eq!(
        client.counter("tcp.outbound.downstream_cx_rx_bytes_total"),
        Some(60)
    );
    assert_eq!(
        client.counter("tcp.outbound.downstream_cx_tx_bytes_total"),
        Some(120)
    );
    let server = mesh.server();
    assert_eq!(
        server.counter("cluster.inbound|27017||.upstream_cx_tx_bytes_total"),
        Some(60)
    );
    assert_eq!(
        server.counter("cluster.inbound|27017||.upstream_cx_rx_bytes_total"),
        Some(120)
    );
}

fn istio_tcp_metrics_plaintext_both_reporters() {
    ten_hello_worlds(false);
}

fn istio_tcp_metrics_mtls_both_reporters() {
    ten_hello_worlds(true);
}

fn promtool_accepts_the_output() {
    let backend = prefix_server(b"hello ");
    let mesh = Mesh::start("stats-promtool", backend.port(), &MeshOptions::default());
    request_reply(mesh.client_port, b"world\n", 12);
    wait_series(mesh.server(), CLOSED, 1.0);
    let dir = TempDir::new("promtool");
    for (name, envoy) in [("client", &mesh.client), ("server", mesh.server())] {
        let text = envoy.prometheus();
        let file = dir.path().join(format!("{name}.prom"));
        std::fs::write(&file, &text).expect("write metrics");
        let out = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).expect("metrics file"))
            .output()
            .expect("promtool is installed by `make tools`");
        // promtool lints help texts Envoy does not write; only errors fail it (exit 1 with
        // "error" lines). Lint warnings alone exit 3.
        let report = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !report.contains("error while linting") && out.status.code() != Some(1),
            "{name}: promtool check metrics: {report}"
        );
        assert!(
            text.contains("istio_tcp_connections_opened_total{"),
            "{name}"
        );
    }
}

fn long_lived_connection_reports_before_close() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        client_stats: r#"{"tcp_reporting_duration":"1s"}"#.into(),
        server_stats: r#"{"tcp_reporting_duration":"1s"}"#.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("stats-long-lived", backend.port(), &opts);
    let mut conn = TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0u8; 12];
    for _ in 0..3 {
        conn.write_all(b"world\n").unwrap();
        conn.read_exact(&mut reply).unwrap();
    }
    // Still open: opened and the byte counts are there, peer-labelled; closed is not.
    for (envoy, reporter) in [(&mesh.client, "source"), (mesh.server(), "destination")] {
        let sent = wait_series(envoy, SENT, 36.0);
        assert_eq!(
            sent.labels["destination_workload"], "mongodb-v1",
            "{reporter}"
        );
        assert_eq!(sent.labels["source_workload"], "ratings-v2", "{reporter}");
        wait_series(envoy, RECEIVED, 18.0);
        wait_series(envoy, OPENED, 1.0);
        assert!(
            samples(envoy, CLOSED).iter().all(|s| s.value == 0.0),
            "{reporter}"
        );
    }
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    wait_series(&mesh.client, CLOSED, 1.0);
    wait_series(mesh.server(), CLOSED, 1.0);
}

fn user_defined_metric_like_mixer() {
    // The Mixer-era MongoDB metric: istio_mongo_received_bytes with destination_version, source_service,
    // source_version, for traffic to the mongodb service.
    let definition = r#"{"definitions":[{"name":"istio_mongo_received_bytes","value":"bytes_received","dimensions":{"destination_version":"destination_version","source_service":"source_canonical_service","source_version":"source_version"},"match":{"destination_service_name":"mongodb"}}]}"#;
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        client_stats: definition.into(),
        server_stats: definition.into(),
        extra_stats_tags: vec!["source_service"],
        ..Default::default()
    };
    let mesh = Mesh::start("stats-mixer", backend.port(), &opts);
    for _ in 0..3 {
        request_reply(mesh.client_port, b"world\n", 12);
    }
    for envoy in [&mesh.client, mesh.server()] {
        let sample = wait_series(envoy, "istio_mongo_received_bytes", 18.0);
        assert_eq!(
            sample.labels,
            labels(&[
                ("destination_version", "v1"),
                ("source_service", "ratings-v2"),
                ("source_version", "v2"),
            ])
        );
    }
}

fn cardinality_cap_folds_extra_series() {
    // One series per metric allowed: the mesh client's connection is admitted; a plain client
    // straight to the server sidecar (unknown source) folds into the overflow series.
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        server_stats: r#"{"max_series_per_metric":1}"#.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("stats-cardinality", backend.port(), &opts);
    request_reply(mesh.client_port, b"world\n", 12);
    let server = mesh.server();
    wait_series(server, CLOSED, 1.0);
    request_reply(mesh.server_port, b"plain\n", 12);
    let deadline = Instant::now() + WAIT;
    loop {
        let closed = samples(server, CLOSED);
        let overflow = closed
            .iter()
            .find(|s| s.labels.get("overflow").map(String::as_str) == Some("true"));
        if overflow.is_some_and(|s| s.value == 1.0) {
            assert_eq!(
                closed.len(),
                2,
                "the admitted series and the overflow: {closed:#?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no overflow series: {closed:#?}");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server
            .counter("wasmcustom.istio_tcp_stats_series_folded_total")
            .unwrap_or(0)
            >= 1
    );
}

fn reporting_duration_below_a_second_is_refused() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        client_stats: r#"{"tcp_reporting_duration":"500ms"}"#.into(),
        without_server_sidecar: true,
        ..Default::default()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Mesh::start("stats-bad-config", backend.port(), &opts)
    }));
    let Err(err) = result else {
        panic!("Envoy must refuse a reporting duration under 1 s")
    };
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("tcp_reporting_duration"),
        "names the field: {msg}"
    );
}

testkit::both_filters!(
    istio_tcp_metrics_plaintext_both_reporters,
    istio_tcp_metrics_mtls_both_reporters,
    promtool_accepts_the_output,
    long_lived_connection_reports_before_close,
    user_defined_metric_like_mixer,
    cardinality_cap_folds_extra_series,
    reporting_duration_below_a_second_is_refused,
);
