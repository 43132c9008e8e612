//! Root dispatch by `root_id` and configuration errors, through the shipped glue in the fake
//! Envoy (in real Envoy: `envoy --mode validate` in `envoy_templates.rs` and
//! `istio_manifests.rs`).

use istio_tcp_telemetry::host::LogLevel;
use istio_tcp_telemetry::{EXCHANGE_ROOT_ID, STATS_ROOT_ID, TELEMETRY_ROOT_ID};
use testkit::fake_envoy::{Direction, FakeEnvoy};

fn envoy() -> FakeEnvoy {
    FakeEnvoy::new("sidecar~test", None)
}

#[test]
fn each_root_id_becomes_its_filter() {
    let mut e = envoy();
    let l = e
        .add_listener(&[
            (STATS_ROOT_ID, r#"{"tcp_reporting_duration": "2s"}"#),
            (
                EXCHANGE_ROOT_ID,
                r#"{"side": "client", "stat_prefix": "mx"}"#,
            ),
        ])
        .unwrap();
    assert_eq!(
        e.tick_periods(),
        vec![Some(std::time::Duration::from_secs(2)), None],
        "only the stats root ticks"
    );
    assert!(e.counter("envoy_mx.metadata_added").is_some());
    assert!(e.counter("istio_tcp_stats_series_folded_total").is_some());
    let c = e.connect(l, &[]);
    e.downstream(c, b"abc", false);
    assert_eq!(e.take_delivered(c, Direction::Downstream), b"abc");
    assert_eq!(e.logged(LogLevel::Info, "metadata exchange configured"), 1);
    assert_eq!(e.logged(LogLevel::Info, "tcp stats configured"), 1);
}

#[test]
fn the_combined_root_is_both_filters_in_one_context() {
    let mut e = envoy();
    let l = e
        .add_listener(&[(
            TELEMETRY_ROOT_ID,
            r#"{"exchange": {"side": "client", "stat_prefix": "mx"},
                "stats": {"tcp_reporting_duration": "2s"}}"#,
        )])
        .unwrap();
    assert_eq!(
        e.tick_periods(),
        vec![Some(std::time::Duration::from_secs(2))]
    );
    assert!(e.counter("envoy_mx.metadata_added").is_some());
    assert!(e.counter("istio_tcp_stats_series_folded_total").is_some());
    let c = e.connect(l, &[]);
    e.downstream(c, b"abc", false);
    assert_eq!(e.take_delivered(c, Direction::Downstream), b"abc");
    e.close(c);
    let opened = e.series("istio_tcp_connections_opened_total");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].0["reporter"], "source", "reporter from the side");
    assert_eq!(e.series("istio_tcp_received_bytes_total")[0].1, 3);
    let callbacks = e.calls();
    assert_eq!(
        callbacks[&("on_context_create", "callback".to_string())],
        1,
        "one context per connection"
    );
}

#[test]
fn an_unknown_root_id_is_refused() {
    let err = envoy().add_listener(&[("istio_stats", "{}")]).unwrap_err();
    assert!(err.contains("unknown root_id \"istio_stats\""), "{err}");
}

#[test]
fn bad_configurations_are_refused_naming_the_field() {
    for (root, config, field) in [
        (EXCHANGE_ROOT_ID, r#"{"side": "middle"}"#, "side"),
        (
            EXCHANGE_ROOT_ID,
            r#"{"side": "client", "max_frame_bytes": 1}"#,
            "max_frame_bytes",
        ),
        (
            EXCHANGE_ROOT_ID,
            r#"{"side": "client", "sidee": 1}"#,
            "sidee",
        ),
        (EXCHANGE_ROOT_ID, "", "side"),
        (
            STATS_ROOT_ID,
            r#"{"tcp_reporting_duration": "500ms"}"#,
            "tcp_reporting_duration",
        ),
        (
            STATS_ROOT_ID,
            r#"{"metrics": [{"name": "nope"}]}"#,
            "metrics",
        ),
        (STATS_ROOT_ID, "not json", "configuration: expected"),
        (TELEMETRY_ROOT_ID, "{}", "exchange: missing"),
        (
            TELEMETRY_ROOT_ID,
            r#"{"exchange": {"side": "middle"}}"#,
            "exchange.side: ",
        ),
        (
            TELEMETRY_ROOT_ID,
            r#"{"exchange": {"side": "client"}, "stats": {"metrics": [{"name": "nope"}]}}"#,
            "stats.metrics",
        ),
        (
            TELEMETRY_ROOT_ID,
            r#"{"exchange": {"side": "client"}, "stats": {"reporter": "destination"}}"#,
            "stats.reporter: ",
        ),
        (
            TELEMETRY_ROOT_ID,
            r#"{"exchange": {"side": "client"}, "stat": {}}"#,
            "unknown field `stat`",
        ),
    ] {
        let mut e = envoy();
        let err = e.add_listener(&[(root, config)]).unwrap_err();
        assert!(
            err.starts_with("invalid configuration") && err.contains(field),
            "{root} {config}: {err}"
        );
        assert_eq!(e.logged(LogLevel::Error, "invalid configuration"), 1);
    }
}

#[test]
fn unreadable_node_metadata_is_logged_and_ignored() {
    let mut e = FakeEnvoy::new("sidecar~x", Some(vec![0xFF, 0xFF]));
    e.add_listener(&[(EXCHANGE_ROOT_ID, r#"{"side": "server"}"#)])
        .unwrap();
    assert_eq!(e.logged(LogLevel::Warn, "not a pairs blob"), 1);
}

#[test]
fn on_an_istio_gateway_both_filters_stay_inert() {
    let gateway =
        "router~10.0.0.9~istio-eastwestgateway-5c-x.istio-system~istio-system.svc.cluster.local";
    let mut e = FakeEnvoy::new(gateway, None);
    let l = e
        .add_listener(&[
            (STATS_ROOT_ID, "{}"),
            (
                EXCHANGE_ROOT_ID,
                r#"{"side": "client", "client_gate": "always"}"#,
            ),
        ])
        .unwrap();
    assert_eq!(e.logged(LogLevel::Warn, "is an Istio gateway"), 2);
    let c = e.connect(l, &[]);
    e.downstream(c, b"\x16\x03\x01 a ClientHello", false);
    assert_eq!(
        e.take_delivered(c, Direction::Downstream),
        b"\x16\x03\x01 a ClientHello",
        "no frame in front of a passed-through TLS handshake"
    );
    e.upstream(c, b"reply", false);
    e.tick();
    e.close(c);
    assert!(e.series("istio_tcp_connections_opened_total").is_empty());
    assert_eq!(e.filter_state(c, "wasm.peer_not_found"), None);
    // A bad configuration is still refused there.
    let mut e = FakeEnvoy::new(gateway, None);
    assert!(e.add_listener(&[(STATS_ROOT_ID, "nope")]).is_err());
}
