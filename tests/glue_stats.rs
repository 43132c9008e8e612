//! The shipped stats glue (`filters::stats`), natively, through the fake Envoy: open, tick and
//! close, with and without the exchange filter beside it. The same in real Envoy is
//! `e2e_stats.rs` (whose label expectations these mirror).

use std::collections::BTreeMap;

use istio_tcp_telemetry::STATS_ROOT_ID;
use testkit::fake_envoy::FakeEnvoy;
use testkit::fake_mesh::{Link, Mesh, MeshBuilder};
use testkit::metadata::{self as node, Workload};

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";

/// Istio's labels for ratings-v2 → mongodb-v1 over mutual TLS as `reporter` sees them.
fn expected(reporter: &str) -> BTreeMap<String, String> {
    let (client, server) = (Workload::ratings().spiffe(), Workload::mongodb().spiffe());
    let policy = if reporter == "source" {
        "unknown"
    } else {
        "mutual_tls"
    };
    [
        ("reporter", reporter),
        ("source_workload", "ratings-v2"),
        ("source_canonical_service", "ratings-v2"),
        ("source_canonical_revision", "v2"),
        ("source_workload_namespace", "default"),
        ("source_principal", &client),
        ("source_app", "ratings"),
        ("source_version", "v2"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "mongodb-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", &server),
        ("destination_app", "mongodb"),
        ("destination_version", "v1"),
        ("destination_service", "mongodb.default.svc.cluster.local"),
        ("destination_canonical_service", "mongodb"),
        ("destination_canonical_revision", "v1"),
        ("destination_service_name", "mongodb"),
        ("destination_service_namespace", "default"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", policy),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The one series of `metric` on `envoy`, with its value.
fn one(envoy: &FakeEnvoy, metric: &str) -> (BTreeMap<String, String>, u64) {
    let mut series = envoy.series(metric);
    assert_eq!(series.len(), 1, "{metric}: {series:?}");
    series.remove(0)
}

fn exchange(mesh: &mut Mesh) -> Link {
    let mut link = mesh.connect();
    mesh.client_sends(&mut link, b"world\n", false);
    mesh.backend_sends(&mut link, b"hello world\n", false);
    link
}

#[test]
fn istios_tcp_metrics_task_ten_connections_both_reporters() {
    let mut mesh = MeshBuilder::new().build().unwrap();
    for _ in 0..10 {
        let mut link = exchange(&mut mesh);
        mesh.close(&mut link);
    }
    for (envoy, reporter) in [(&mesh.client, "source"), (&mesh.server, "destination")] {
        for (metric, value) in [(OPENED, 10), (CLOSED, 10), (RECEIVED, 60), (SENT, 120)] {
            let (labels, got) = one(envoy, metric);
            assert_eq!(labels, expected(reporter), "{reporter} {metric}");
            assert_eq!(got, value, "{reporter} {metric}");
        }
    }
}

#[test]
fn opened_when_the_peer_is_known_bytes_on_ticks_and_at_close() {
    let mut mesh = MeshBuilder::new().build().unwrap();
    assert!(mesh
        .server
        .tick_periods()
        .contains(&Some(std::time::Duration::from_secs(15))));
    let mut link = mesh.connect();
    mesh.tick();
    assert!(
        mesh.server.series(OPENED).is_empty(),
        "no peer yet, no data"
    );
    mesh.client_sends(&mut link, b"world\n", false);
    // The server learned the client from its first bytes: opened at once, with the bytes so
    // far; later bytes wait for a tick.
    assert_eq!(one(&mesh.server, OPENED).1, 1);
    assert_eq!(one(&mesh.server, RECEIVED).1, 6);
    assert!(
        mesh.client.series(OPENED).is_empty(),
        "client: server not known yet"
    );
    mesh.client_sends(&mut link, b"more\n", false);
    assert_eq!(one(&mesh.server, RECEIVED).1, 6);
    mesh.tick();
    assert_eq!(one(&mesh.server, RECEIVED).1, 11);
    mesh.backend_sends(&mut link, b"hello world\n", false);
    assert_eq!(one(&mesh.client, OPENED).1, 1);
    assert_eq!(
        one(&mesh.server, SENT).1,
        0,
        "defined at open, counted on a tick"
    );
    mesh.tick();
    assert_eq!(one(&mesh.server, SENT).1, 12);
    assert_eq!(one(&mesh.client, RECEIVED).1, 11);
    assert_eq!(one(&mesh.client, SENT).1, 12);
    mesh.client_sends(&mut link, b"bye", false);
    mesh.close(&mut link);
    assert_eq!(one(&mesh.server, RECEIVED).1, 14, "the rest at close");
    assert_eq!(one(&mesh.server, CLOSED).1, 1);
    assert_eq!(one(&mesh.client, CLOSED).1, 1);
    mesh.tick();
    assert_eq!(one(&mesh.server, RECEIVED).1, 14, "nothing after close");
}

#[test]
fn stats_without_the_exchange_labels_the_client_from_the_endpoint() {
    let mut mesh = MeshBuilder::new()
        .client_exchange(None)
        .server_exchange(None)
        .build()
        .unwrap();
    let mut link = exchange(&mut mesh);
    mesh.tick();
    assert!(
        mesh.client.series(OPENED).is_empty(),
        "the peer is never decided"
    );
    mesh.close(&mut link);
    let (labels, opened) = one(&mesh.client, OPENED);
    assert_eq!(opened, 1);
    assert_eq!(
        labels["destination_workload"], "mongodb-v1",
        "istio.workload"
    );
    assert_eq!(labels["destination_canonical_service"], "mongodb");
    let (labels, _) = one(&mesh.server, OPENED);
    assert_eq!(labels["source_workload"], "unknown");
    assert_eq!(labels["source_principal"], Workload::ratings().spiffe());
    assert_eq!(one(&mesh.server, RECEIVED).1, 6);
}

#[test]
fn the_mixer_era_mongodb_metric() {
    let definition = r#"{"definitions": [{"name": "istio_mongo_received_bytes",
        "value": "bytes_received",
        "dimensions": {"destination_version": "destination_version",
                       "source_service": "source_canonical_service",
                       "source_version": "source_version"},
        "match": {"destination_service_name": "mongodb"}}]}"#;
    let mut mesh = MeshBuilder::new()
        .server_stats(Some(definition))
        .build()
        .unwrap();
    for _ in 0..2 {
        let mut link = exchange(&mut mesh);
        mesh.close(&mut link);
    }
    let (labels, value) = one(&mesh.server, "istio_mongo_received_bytes");
    assert_eq!(value, 12);
    let want: BTreeMap<String, String> = [
        ("destination_version", "v1"),
        ("source_service", "ratings-v2"),
        ("source_version", "v2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(labels, want);
}

#[test]
fn series_over_the_cap_fold_and_are_counted() {
    let mut server = FakeEnvoy::new("sidecar~s", Some(Workload::mongodb().node_metadata()));
    let listener = server
        .add_listener(&[(STATS_ROOT_ID, r#"{"max_series_per_metric": 1}"#)])
        .unwrap();
    for peer in ["a", "b", "c"] {
        let c = server.connect(
            listener,
            &[
                ("xds.listener_direction", node::u64_property(node::INBOUND)),
                (
                    "connection.uri_san_peer_certificate",
                    format!("spiffe://cluster.local/ns/{peer}/sa/x").into_bytes(),
                ),
            ],
        );
        server.downstream(c, b"x", false);
        server.close(c);
    }
    let opened = server.series(OPENED);
    assert_eq!(
        opened.len(),
        2,
        "one own series and the overflow: {opened:?}"
    );
    let overflow = opened
        .iter()
        .find(|(l, _)| l.get("overflow").map(String::as_str) == Some("true"))
        .expect("overflow series");
    assert_eq!(overflow.1, 2);
    // Two label sets folded for each of the four metrics.
    assert_eq!(
        server.counter("istio_tcp_stats_series_folded_total"),
        Some(8)
    );
}

#[test]
fn repeat_peers_hit_the_series_cache_with_the_same_counts() {
    let mut mesh = MeshBuilder::new().build().unwrap();
    for _ in 0..3 {
        let mut link = exchange(&mut mesh);
        mesh.close(&mut link);
    }
    let defined = mesh.server.counters().len();
    let mut link = exchange(&mut mesh);
    mesh.close(&mut link);
    assert_eq!(mesh.server.counters().len(), defined, "no new stat");
    assert_eq!(one(&mesh.server, OPENED).1, 4);
}
