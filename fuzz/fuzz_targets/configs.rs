//! Both filters' JSON configurations, on arbitrary bytes and on JSON assembled from the fields
//! and values the parsers know (so the fuzzer reaches validation, not just the JSON syntax).
//!
//! Invariants: no panic; an accepted config is within its documented bounds; every series an
//! accepted stats config produces has a well-formed stat name whose label names are unique and
//! none a suffix of another (the rule that keeps Envoy's tag extraction exact). The shipped
//! dispatch (`on_configure` in the test kit's fake Envoy) accepts exactly what the parser
//! accepts, refuses the rest with an error log, and a configured filter passes a connection's
//! bytes.

#![no_main]

mod common;

use std::time::Duration;

use common::Bytes;
use istio_tcp_telemetry::logic::exchange::config::{
    ExchangeConfig, Role, Side, MAX_FRAME_CAP, MIN_FRAME_CAP,
};
use istio_tcp_telemetry::logic::stats::config::{
    MAX_REPORTING_DURATION, MAX_SERIES_LIMIT, MIN_REPORTING_DURATION,
};
use istio_tcp_telemetry::logic::stats::stat_name::{LABEL_TERMINATOR, NAME_VALUE_SEPARATOR};
use istio_tcp_telemetry::logic::stats::StatsConfig;
use istio_tcp_telemetry::logic::workload::WorkloadMetadata;
use istio_tcp_telemetry::{EXCHANGE_ROOT_ID, STATS_ROOT_ID};
use libfuzzer_sys::fuzz_target;
use testkit::fake_envoy::FakeEnvoy;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes { data };
    let json = match input.u8() % 3 {
        0 => input.data.to_vec(),
        1 => exchange_json(&mut input).into_bytes(),
        _ => stats_json(&mut input).into_bytes(),
    };
    check_exchange(&json);
    check_stats(&json);
    check_dispatch(&json);
});

fn check_dispatch(json: &[u8]) {
    // Envoy hands the configuration over as a StringValue: UTF-8.
    let Ok(text) = std::str::from_utf8(json) else {
        return;
    };
    for (root, accepted) in [
        (EXCHANGE_ROOT_ID, ExchangeConfig::parse(json).is_ok()),
        (STATS_ROOT_ID, StatsConfig::parse(json).is_ok()),
    ] {
        let mut envoy = FakeEnvoy::new("sidecar~fuzz", None);
        match envoy.add_listener(&[(root, text)]) {
            Ok(listener) => {
                assert!(
                    accepted,
                    "{root} configured with a config its parser refuses"
                );
                let c = envoy.connect(listener, &[]);
                envoy.downstream(c, b"x", false);
                envoy.upstream(c, b"y", false);
                envoy.close(c);
                assert_eq!(envoy.lost(c), 0);
            }
            Err(e) => {
                assert!(!accepted, "{root} refused a config its parser accepts: {e}");
                assert!(e.starts_with("invalid configuration"), "{e}");
            }
        }
    }
}

fn check_exchange(json: &[u8]) {
    let Ok(c) = ExchangeConfig::parse(json) else {
        return;
    };
    assert!((MIN_FRAME_CAP..=MAX_FRAME_CAP).contains(&c.max_frame_bytes));
    assert!(!c.stat_prefix.is_empty());
    assert!(c
        .stat_prefix
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.'));
    assert!(c.additional_labels.iter().all(|l| !l.is_empty()));
    assert_eq!(c.side == Side::Client, matches!(c.role, Role::Client(_)));
}

fn check_stats(json: &[u8]) {
    let Ok(c) = StatsConfig::parse(json) else {
        return;
    };
    assert!(c.tcp_reporting_duration >= MIN_REPORTING_DURATION);
    assert!(c.tcp_reporting_duration <= MAX_REPORTING_DURATION);
    assert!(c.tcp_reporting_duration >= Duration::from_secs(1));
    assert!((1..=MAX_SERIES_LIMIT as usize).contains(&c.max_series_per_metric));
    let mut peer = WorkloadMetadata {
        workload_name: "x;.;reporter=.=forged".into(),
        ..Default::default()
    };
    peer.labels.insert("team".into(), "=.=;.;".into());
    common::check_series(&c.plan, &peer, "spiffe://td/ns/default/sa/x", false);
    let facts = istio_tcp_telemetry::logic::stats::ConnectionFacts {
        reporter: istio_tcp_telemetry::logic::stats::Reporter::Destination,
        local: WorkloadMetadata::default(),
        peer: Some(peer),
        peer_principal: String::new(),
        local_principal: String::new(),
        cluster_name: String::new(),
        service: None,
        response_flags: "-".into(),
    };
    // Close attributes reach only metrics emitted at close, and never forge a label either.
    let close = istio_tcp_telemetry::logic::stats::CloseFacts {
        closed_by: istio_tcp_telemetry::logic::stats::ClosedBy::Upstream,
        flags: "UF,URX".into(),
        termination_details: "x;.;reporter=.=forged".into(),
        duration_ms: Some(1),
    };
    let at_close = c.plan.close_series(&facts, &close);
    assert!(at_close.iter().all(|s| s.value.is_close_time()));
    if !c.plan.has_close_metrics() {
        assert!(at_close.is_empty());
    }
    for series in c.plan.series(&facts).into_iter().chain(at_close) {
        assert!(
            !series.stat_name.contains("reporter=.=forged"),
            "{}",
            series.stat_name
        );
        let names: Vec<&str> = series
            .stat_name
            .split(LABEL_TERMINATOR)
            .filter_map(|p| p.split_once(NAME_VALUE_SEPARATOR).map(|(n, _)| n))
            .collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b, "label {a} twice in {}", series.stat_name);
                assert!(
                    !a.ends_with(b) && !b.ends_with(a),
                    "{a} / {b}: one ends with the other in {}",
                    series.stat_name
                );
            }
        }
    }
}

// ---- JSON assembled from known fields and interesting values -------------------------------

fn pick<'a>(input: &mut Bytes, from: &[&'a str]) -> &'a str {
    from[usize::from(input.u8()) % from.len()]
}

const EXCHANGE_FIELDS: &[&str] = &[
    "side",
    "server_mode",
    "client_gate",
    "max_frame_bytes",
    "additional_labels",
    "stat_prefix",
    "trust",
    "bogus",
];
const STRINGS: &[&str] = &[
    "\"client\"",
    "\"server\"",
    "\"expect\"",
    "\"detect\"",
    "\"tls_mode_istio\"",
    "\"always\"",
    "\"never\"",
    "\"any\"",
    "\"mtls_only\"",
    "\"\"",
    "\"a b\"",
    "\"metadata_exchange\"",
    "\"x.y_z\"",
    "\"\\u0000\"",
    "\"é\"",
];
const NUMBERS: &[&str] = &[
    "0",
    "255",
    "256",
    "65536",
    "1048576",
    "1048577",
    "-1",
    "1e3",
    "4294967296",
    "1.5",
    "null",
    "true",
    "[]",
    "{}",
];
const DURATIONS: &[&str] = &[
    "\"15s\"",
    "\"1s\"",
    "\"999ms\"",
    "\"1000ms\"",
    "\"0.5s\"",
    "\"1.5m\"",
    "\"86400s\"",
    "\"86401s\"",
    "\"1440m\"",
    "1",
    "0.999",
    "1e308",
    "-1",
    "\"s\"",
    "\".s\"",
    "\"1..0s\"",
    "\"NaNs\"",
    "\"infs\"",
    "\"1e3s\"",
    "\"+1s\"",
    "86400",
    "86400.5",
    "\"24h\"",
];
const METRIC_NAMES: &[&str] = &[
    "",
    "tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "tcp_connections_open",
    "istio_tcp_connection_duration_milliseconds",
    "my_metric",
    "istio_my_metric",
    "bogus",
    "istio_tcp_stats_series_folded_total",
    "9bad",
    "a-b",
];
const LABELS: &[&str] = &[
    "team",
    "version",
    "source_version",
    "app",
    "reporter",
    "overflow",
    "a-b",
    "_x",
    "source_service",
    "destination_app",
    "zz",
    "source_workload",
    "name",
    "closed_by",
    "close_flags",
    "flags",
];
const ATTRIBUTES: &[&str] = &[
    "source_workload",
    "destination_labels.team",
    "source_labels.",
    "source_labels.app",
    "listener_direction",
    "upstream_cluster",
    "bogus",
    "source_instance",
    "reporter",
    "destination_workload_type",
    "response_flags",
    "closed_by",
    "close_flags",
    "termination_details",
    "duration_class",
];
const VALUES: &[&str] = &[
    "bytes_sent",
    "bytes_received",
    "connections_opened",
    "connections_closed",
    "connections_open",
    "connection_duration",
    "requests",
];

fn exchange_json(input: &mut Bytes) -> String {
    let mut out = String::from("{");
    for i in 0..input.u8() % 8 {
        if i > 0 {
            out.push(',');
        }
        let field = pick(input, EXCHANGE_FIELDS);
        let value = match field {
            "max_frame_bytes" => pick(input, NUMBERS).to_string(),
            "additional_labels" => string_list(input, STRINGS),
            _ => pick(input, STRINGS).to_string(),
        };
        out.push_str(&format!("\"{field}\":{value}"));
    }
    out.push('}');
    out
}

fn stats_json(input: &mut Bytes) -> String {
    let mut fields = Vec::new();
    for _ in 0..input.u8() % 6 {
        let field = match input.u8() % 7 {
            0 => format!("\"tcp_reporting_duration\":{}", pick(input, DURATIONS)),
            1 => format!(
                "\"reporter\":{}",
                pick(input, &["\"source\"", "\"destination\"", "\"x\"", "1"])
            ),
            2 => format!(
                "\"max_series_per_metric\":{}",
                pick(
                    input,
                    &[
                        "0",
                        "1",
                        "100000",
                        "100001",
                        "18446744073709551615",
                        "-1",
                        "2.5"
                    ]
                )
            ),
            3 => format!("\"metrics\":[{}]", objects(input, override_json)),
            4 => format!("\"definitions\":[{}]", objects(input, definition_json)),
            5 => format!(
                "\"connection_duration\":{}",
                pick(input, &["true", "false", "1"])
            ),
            _ => "\"bogus\":1".to_string(),
        };
        fields.push(field);
    }
    format!("{{{}}}", fields.join(","))
}

fn objects(input: &mut Bytes, one: fn(&mut Bytes) -> String) -> String {
    let n = input.u8() % 4;
    (0..n).map(|_| one(input)).collect::<Vec<_>>().join(",")
}

fn override_json(input: &mut Bytes) -> String {
    let mut fields = vec![format!("\"name\":\"{}\"", pick(input, METRIC_NAMES))];
    if input.u8().is_multiple_of(4) {
        fields.push("\"drop\":true".into());
    }
    if input.u8().is_multiple_of(2) {
        let tags: Vec<String> = (0..input.u8() % 3)
            .map(|_| {
                format!(
                    "\"{}\"",
                    pick(
                        input,
                        &["source_app", "reporter", "bogus", "destination_version"]
                    )
                )
            })
            .collect();
        fields.push(format!("\"tags_to_remove\":[{}]", tags.join(",")));
    }
    fields.push(format!("\"dimensions\":{}", dimensions(input)));
    format!("{{{}}}", fields.join(","))
}

fn definition_json(input: &mut Bytes) -> String {
    let mut fields = vec![
        format!("\"name\":\"{}\"", pick(input, METRIC_NAMES)),
        format!("\"value\":\"{}\"", pick(input, VALUES)),
        format!("\"dimensions\":{}", dimensions(input)),
    ];
    if input.u8().is_multiple_of(2) {
        fields.push(format!(
            "\"match\":{{\"{}\":{}}}",
            pick(input, ATTRIBUTES),
            pick(input, &["\"mongodb\"", "[\"UF\",\"UF,URX\"]", "[]", "[1]", "2"])
        ));
    }
    if input.u8().is_multiple_of(4) {
        fields.push(format!(
            "\"type\":\"{}\"",
            pick(input, &["counter", "gauge", "histogram", "summary"])
        ));
    }
    format!("{{{}}}", fields.join(","))
}

fn dimensions(input: &mut Bytes) -> String {
    let pairs: Vec<String> = (0..input.u8() % 4)
        .map(|_| {
            format!(
                "\"{}\":\"{}\"",
                pick(input, LABELS),
                pick(input, ATTRIBUTES)
            )
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn string_list(input: &mut Bytes, from: &[&str]) -> String {
    let items: Vec<&str> = (0..input.u8() % 4).map(|_| pick(input, from)).collect();
    format!("[{}]", items.join(","))
}
