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
    testkit::bookinfo::istio_labels(reporter, &client, &server, policy)
        .into_iter()
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
    istios_tcp_metrics_task_ten_connections_both_reporters_in(false);
    istios_tcp_metrics_task_ten_connections_both_reporters_in(true);
}

fn istios_tcp_metrics_task_ten_connections_both_reporters_in(combined: bool) {
    let mut mesh = MeshBuilder::new().combined(combined).build().unwrap();
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
    opened_when_the_peer_is_known_bytes_on_ticks_and_at_close_in(false);
    opened_when_the_peer_is_known_bytes_on_ticks_and_at_close_in(true);
}

fn opened_when_the_peer_is_known_bytes_on_ticks_and_at_close_in(combined: bool) {
    let mut mesh = MeshBuilder::new().combined(combined).build().unwrap();
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
    stats_without_the_exchange_labels_the_client_from_the_endpoint_in(false);
    stats_without_the_exchange_labels_the_client_from_the_endpoint_in(true);
}

fn stats_without_the_exchange_labels_the_client_from_the_endpoint_in(combined: bool) {
    let mut mesh = MeshBuilder::new()
        .combined(combined)
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
    the_mixer_era_mongodb_metric_in(false);
    the_mixer_era_mongodb_metric_in(true);
}

fn the_mixer_era_mongodb_metric_in(combined: bool) {
    let definition = r#"{"definitions": [{"name": "istio_mongo_received_bytes",
        "value": "bytes_received",
        "dimensions": {"destination_version": "destination_version",
                       "source_service": "source_canonical_service",
                       "source_version": "source_version"},
        "match": {"destination_service_name": "mongodb"}}]}"#;
    let mut mesh = MeshBuilder::new()
        .combined(combined)
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
    repeat_peers_hit_the_series_cache_with_the_same_counts_in(false);
    repeat_peers_hit_the_series_cache_with_the_same_counts_in(true);
}

fn repeat_peers_hit_the_series_cache_with_the_same_counts_in(combined: bool) {
    let mut mesh = MeshBuilder::new().combined(combined).build().unwrap();
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

const OPEN: &str = "istio_tcp_connections_open";
const DURATION: &str = "istio_tcp_connection_duration_milliseconds";

/// The one gauge series of `metric`, with its value.
fn gauge(envoy: &FakeEnvoy) -> i64 {
    let series = envoy.gauge_series(OPEN);
    assert_eq!(series.len(), 1, "{series:?}");
    series[0].1
}

#[test]
fn the_open_connections_gauge_follows_opened_and_close() {
    let mut mesh = MeshBuilder::new().build().unwrap();
    let mut links: Vec<Link> = (0..3).map(|_| exchange(&mut mesh)).collect();
    for envoy in [&mesh.client, &mesh.server] {
        assert_eq!(gauge(envoy), 3);
        let (labels, _) = &envoy.gauge_series(OPEN)[0];
        let reporter = labels["reporter"].clone();
        assert_eq!(*labels, expected(&reporter), "the counters' 23 labels");
    }
    for link in links.iter_mut().take(2) {
        mesh.close(link);
    }
    assert_eq!((gauge(&mesh.client), gauge(&mesh.server)), (1, 1));
    mesh.close(&mut links[2]);
    assert_eq!((gauge(&mesh.client), gauge(&mesh.server)), (0, 0));
    assert_eq!(one(&mesh.server, CLOSED).1, 3);
}

#[test]
fn a_connection_opened_only_at_close_never_touches_the_gauge() {
    // No exchange filter: the server never learns the peer, so opened comes at close.
    let mut mesh = MeshBuilder::new()
        .client_exchange(None)
        .server_exchange(None)
        .build()
        .unwrap();
    let mut link = exchange(&mut mesh);
    mesh.close(&mut link);
    assert_eq!(one(&mesh.server, OPENED).1, 1);
    assert!(
        mesh.server.gauge_series(OPEN).is_empty(),
        "not even defined: {:?}",
        mesh.server.gauge_series(OPEN)
    );
}

#[test]
fn lifetimes_go_to_the_histogram_only_when_enabled() {
    let on = r#"{"connection_duration": true}"#;
    let mut mesh = MeshBuilder::new().server_stats(Some(on)).build().unwrap();
    let mut link = exchange(&mut mesh);
    mesh.server.advance(std::time::Duration::from_millis(2500));
    mesh.close(&mut link);
    let series = mesh.server.histogram_series(DURATION);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].0, expected("destination"));
    assert_eq!(series[0].1, vec![2500]);
    assert!(
        mesh.client.histogram_series(DURATION).is_empty(),
        "off by default"
    );
}

#[test]
fn tags_to_remove_and_dimensions_work_on_the_histogram() {
    let config = r#"{"connection_duration": true,
        "metrics": [{"name": "tcp_connection_duration_milliseconds",
                     "tags_to_remove": ["source_principal", "destination_principal"],
                     "dimensions": {"closed_by": "closed_by"}}]}"#;
    let mut mesh = MeshBuilder::new()
        .server_stats(Some(config))
        .build()
        .unwrap();
    let mut link = exchange(&mut mesh);
    mesh.server.advance(std::time::Duration::from_millis(40));
    mesh.close(&mut link);
    let series = mesh.server.histogram_series(DURATION);
    assert_eq!(series.len(), 1, "{series:?}");
    let mut want = expected("destination");
    want.remove("source_principal");
    want.remove("destination_principal");
    want.insert("closed_by".into(), "downstream".into());
    assert_eq!(series[0].0, want);
    assert_eq!(series[0].1, vec![40]);
    assert_eq!(
        one(&mesh.server, CLOSED).0,
        expected("destination"),
        "the counters keep every label"
    );
}

/// One connection through the mesh, opened on its first bytes, ended 90 s later with Envoy's
/// `flags` set after it opened; the backend closes first when `backend_first`.
fn close_with_flags(server_stats: &str, flags: u64, backend_first: bool) -> FakeEnvoy {
    let mut mesh = MeshBuilder::new()
        .server_stats(Some(server_stats))
        .build()
        .unwrap();
    let mut link = exchange(&mut mesh);
    mesh.server.advance(std::time::Duration::from_secs(90));
    mesh.server
        .set_connection_property(link.server, "response.flags", node::u64_property(flags));
    if backend_first {
        mesh.backend_sends(&mut link, b"", true);
    }
    mesh.close(&mut link);
    mesh.server
}

#[test]
fn close_attributes_label_metrics_emitted_at_close() {
    let config = r#"{"metrics": [{"name": "tcp_connections_closed_total",
        "dimensions": {"close_flags": "close_flags", "closed_by": "closed_by",
                       "duration_class": "duration_class"}}],
        "definitions": [{"name": "istio_tcp_connections_failed_total",
            "value": "connections_closed",
            "dimensions": {"destination_service_name": "destination_service_name",
                           "close_flags": "close_flags"},
            "match": {"close_flags": ["UF", "UF,URX", "UH", "UO", "NC"]}}]}"#;
    let uf = 1 << 5;
    let server = close_with_flags(config, uf, true);
    let (labels, closed) = one(&server, CLOSED);
    assert_eq!(closed, 1);
    assert_eq!(
        labels["response_flags"], "-",
        "Istio's label: frozen at open"
    );
    assert_eq!(labels["close_flags"], "UF");
    assert_eq!(labels["closed_by"], "upstream");
    assert_eq!(labels["duration_class"], "minutes");
    let (labels, failed) = one(&server, "istio_tcp_connections_failed_total");
    assert_eq!(failed, 1);
    assert_eq!(labels["close_flags"], "UF");
    // No upstream failure: counted as closed, not as failed.
    let dc = 1 << 14;
    let server = close_with_flags(config, dc, false);
    let (labels, _) = one(&server, CLOSED);
    assert_eq!(
        (labels["close_flags"].as_str(), labels["closed_by"].as_str()),
        ("DC", "downstream")
    );
    assert!(server
        .series("istio_tcp_connections_failed_total")
        .is_empty());
}

#[test]
fn close_attributes_elsewhere_are_refused_naming_the_field() {
    for (config, field) in [
        (
            r#"{"metrics": [{"name": "", "dimensions": {"close_flags": "close_flags"}}]}"#,
            "metrics[0].dimensions.close_flags",
        ),
        (
            r#"{"definitions": [{"name": "b", "value": "bytes_sent",
                "match": {"closed_by": "upstream"}}]}"#,
            "definitions[0].match.closed_by",
        ),
        (
            r#"{"metrics": [{"name": "tcp_connections_open",
                "dimensions": {"lifetime": "duration_class"}}]}"#,
            "metrics[0].dimensions.lifetime",
        ),
    ] {
        let mut server = FakeEnvoy::new("sidecar~s", None);
        let err = server
            .add_listener(&[(STATS_ROOT_ID, config)])
            .expect_err(config);
        assert!(err.contains(field), "{field}: {err}");
        assert!(err.contains("known only at close"), "{err}");
    }
}

#[test]
fn repeat_endings_hit_the_close_series_cache_with_the_same_counts() {
    let config = r#"{"connection_duration": true,
        "metrics": [{"name": "tcp_connections_closed_total",
                     "dimensions": {"closed_by": "closed_by", "lifetime": "duration_class"}}]}"#;
    let mut mesh = MeshBuilder::new()
        .server_stats(Some(config))
        .build()
        .unwrap();
    let end = |mesh: &mut Mesh, backend_first: bool| {
        let mut link = exchange(mesh);
        if backend_first {
            mesh.backend_sends(&mut link, b"", true);
        }
        mesh.close(&mut link);
    };
    end(&mut mesh, false);
    let defined = mesh.server.counters().len();
    end(&mut mesh, false);
    end(&mut mesh, false);
    assert_eq!(mesh.server.counters().len(), defined, "no new stat");
    let (labels, closed) = one(&mesh.server, CLOSED);
    assert_eq!((labels["closed_by"].as_str(), closed), ("downstream", 3));
    assert_eq!(labels["lifetime"], "subsecond");
    // Another way of ending is another series.
    end(&mut mesh, true);
    let mut series = mesh.server.series(CLOSED);
    series.sort_by(|a, b| a.0["closed_by"].cmp(&b.0["closed_by"]));
    let got: Vec<(&str, u64)> = series
        .iter()
        .map(|(l, v)| (l["closed_by"].as_str(), *v))
        .collect();
    assert_eq!(got, [("downstream", 3), ("upstream", 1)]);
    assert_eq!(one(&mesh.server, OPENED).1, 4);
    let lifetimes = mesh.server.histogram_series(DURATION);
    assert_eq!(lifetimes[0].1.len(), 4);
}
