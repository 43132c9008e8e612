//! Tests for [`super::StatsConfig`]: defaults, accepted forms, and that every rejection names
//! its field.

use super::*;

fn parse(json: &str) -> StatsConfig {
    match StatsConfig::parse(json.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("{json}: {e}"),
    }
}

fn err(json: &str) -> String {
    match StatsConfig::parse(json.as_bytes()) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => e.0,
    }
}

#[track_caller]
fn rejects(json: &str, field: &str) {
    let e = err(json);
    assert!(e.starts_with(&format!("{field}: ")), "{json}\n  gave: {e}");
}

#[test]
fn defaults() {
    for json in ["", "  ", "{}"] {
        assert_eq!(parse(json), StatsConfig::default());
    }
    let c = StatsConfig::default();
    assert_eq!(c.tcp_reporting_duration, Duration::from_secs(15));
    assert_eq!(c.reporter, None);
    assert_eq!(c.max_series_per_metric, 1000);
    assert_eq!(c.plan, MetricPlan::standard());
}

#[test]
fn reporting_duration_forms() {
    let d =
        |v: &str| parse(&format!(r#"{{"tcp_reporting_duration": {v}}}"#)).tcp_reporting_duration;
    assert_eq!(d(r#""15s""#), Duration::from_secs(15));
    assert_eq!(d(r#""1.5s""#), Duration::from_millis(1500));
    assert_eq!(d(r#""2500ms""#), Duration::from_millis(2500));
    assert_eq!(d(r#""2m""#), Duration::from_secs(120));
    assert_eq!(d("30"), Duration::from_secs(30));
    assert_eq!(d("1.25"), Duration::from_millis(1250));
    assert_eq!(
        d(r#""24h""#.replace("24h", "1440m").as_str()),
        MAX_REPORTING_DURATION
    );
    assert_eq!(d("null"), DEFAULT_REPORTING_DURATION);
}

#[test]
fn reporting_duration_errors() {
    for v in [
        r#""500ms""#,
        r#""0s""#,
        "0.5",
        "-5",
        r#""""#,
        r#""s""#,
        r#""15""#,
        r#""15h""#,
        r#""1e3s""#,
        r#""1.2.3s""#,
        r#"" 15s""#,
        r#""-15s""#,
        r#""inf s""#,
        r#""1441m""#,
        "1e300",
        "true",
        "[15]",
    ] {
        rejects(
            &format!(r#"{{"tcp_reporting_duration": {v}}}"#),
            "tcp_reporting_duration",
        );
    }
    assert!(err(r#"{"tcp_reporting_duration": "500ms"}"#).contains("below the minimum of 1s"));
}

#[test]
fn reporter_and_series_cap() {
    assert_eq!(
        parse(r#"{"reporter": "source"}"#).reporter,
        Some(Reporter::Source)
    );
    assert_eq!(
        parse(r#"{"reporter": "destination"}"#).reporter,
        Some(Reporter::Destination)
    );
    rejects(r#"{"reporter": "gateway"}"#, "reporter");
    assert_eq!(
        parse(r#"{"max_series_per_metric": 1}"#).max_series_per_metric,
        1
    );
    assert_eq!(
        parse(r#"{"max_series_per_metric": 100000}"#).max_series_per_metric,
        100_000
    );
    for v in ["0", "100001", "-1", "1.5", r#""10""#] {
        rejects(
            &format!(r#"{{"max_series_per_metric": {v}}}"#),
            "max_series_per_metric",
        );
    }
}

#[test]
fn structural_errors_name_the_field() {
    rejects(r#"{"colour": 1}"#, "colour");
    rejects(r#"{"metrics": {}}"#, "metrics");
    rejects(r#"{"metrics": [{"nmae": "x"}]}"#, "metrics[0].nmae");
    rejects(r#"{"metrics": [{}, {"drop": "yes"}]}"#, "metrics[1].drop");
    rejects(
        r#"{"metrics": [{"tags_to_remove": "source_app"}]}"#,
        "metrics[0].tags_to_remove",
    );
    rejects(
        r#"{"metrics": [{"dimensions": {"a": 1}}]}"#,
        "metrics[0].dimensions.a",
    );
    rejects(
        r#"{"definitions": [{"name": "m", "value": "bytes", "extra": 1}]}"#,
        "definitions[0].value",
    );
    rejects(
        r#"{"definitions": [{"name": "m", "value": "bytes_sent", "extra": 1}]}"#,
        "definitions[0].extra",
    );
    rejects(
        r#"{"definitions": [{"name": "m", "value": "bytes_sent", "type": "gauge"}]}"#,
        "definitions[0].type",
    );
    assert!(err(r#"{"definitions": [{"name": "m"}]}"#)
        .starts_with("definitions[0]: missing field `value`"));
    assert!(err("not json").starts_with("configuration: "));
    assert!(
        err(r#"{"definitions": [{"name": "m", "value": "bytes"}]}"#).contains("unknown variant")
    );
}

#[test]
fn definition_errors_name_the_field() {
    let def = |body: &str| {
        format!(r#"{{"definitions": [{{"name": "ok", "value": "bytes_sent"}}, {body}]}}"#)
    };
    rejects(
        &def(r#"{"name": "", "value": "bytes_sent"}"#),
        "definitions[1].name",
    );
    rejects(
        &def(r#"{"name": "a-b", "value": "bytes_sent"}"#),
        "definitions[1].name",
    );
    rejects(
        &def(r#"{"name": "ok", "value": "bytes_sent"}"#),
        "definitions[1].name",
    );
    for standard in [
        "istio_tcp_sent_bytes_total",
        "tcp_sent_bytes_total",
        FOLDED_SERIES_METRIC,
    ] {
        rejects(
            &def(&format!(
                r#"{{"name": "{standard}", "value": "bytes_sent"}}"#
            )),
            "definitions[1].name",
        );
    }
    rejects(
        &def(r#"{"name": "m", "value": "bytes_sent", "dimensions": {"x": "bar"}}"#),
        "definitions[1].dimensions.x",
    );
    assert!(err(&def(
        r#"{"name": "m", "value": "bytes_sent", "dimensions": {"x": "bar"}}"#
    ))
    .contains(r#"unknown attribute "bar""#));
    rejects(
        &def(r#"{"name": "m", "value": "bytes_sent", "dimensions": {"9x": "source_app"}}"#),
        "definitions[1].dimensions.9x",
    );
    rejects(
        &def(r#"{"name": "m", "value": "bytes_sent", "match": {"nope": "v"}}"#),
        "definitions[1].match.nope",
    );
}

#[test]
fn override_errors_name_the_field() {
    rejects(
        r#"{"metrics": [{}, {"name": "requests_total"}]}"#,
        "metrics[1].name",
    );
    rejects(
        r#"{"metrics": [{"tags_to_remove": ["source_app", "team"]}]}"#,
        "metrics[0].tags_to_remove[1]",
    );
    rejects(
        r#"{"metrics": [{}, {"dimensions": {"foo": "bar"}}]}"#,
        "metrics[1].dimensions.foo",
    );
    assert!(err(r#"{"metrics": [{}, {"dimensions": {"foo": "bar"}}]}"#)
        .ends_with(r#"unknown attribute "bar""#));
    rejects(
        r#"{"metrics": [{"dimensions": {"a.b": "source_app"}}]}"#,
        "metrics[0].dimensions.a.b",
    );
    rejects(
        r#"{"metrics": [{"dimensions": {"x": ""}}]}"#,
        "metrics[0].dimensions.x",
    );
}

#[test]
fn label_names_that_would_break_tag_extraction_are_rejected() {
    // `version` is a suffix of `source_version`: its tag regex would cut into that label.
    rejects(
        r#"{"metrics": [{"dimensions": {"version": "source_app"}}]}"#,
        "metrics[0].dimensions.version",
    );
    rejects(
        r#"{"metrics": [{"dimensions": {"my_reporter": "source_app"}}]}"#,
        "metrics[0].dimensions.my_reporter",
    );
    rejects(
        r#"{"metrics": [{"dimensions": {"overflow": "source_app"}}]}"#,
        "metrics[0].dimensions.overflow",
    );
    // Between user labels too, across entries.
    rejects(
        r#"{"metrics": [{"dimensions": {"team": "source_app"}},
                        {"dimensions": {"dbteam": "source_app"}}]}"#,
        "metrics[1].dimensions.dbteam",
    );
    // The same name twice is fine.
    parse(
        r#"{"metrics": [{"dimensions": {"team": "source_app"}},
                        {"name": "tcp_sent_bytes_total", "dimensions": {"team": "destination_app"}}]}"#,
    );
}

#[test]
fn standard_labels_do_not_clash_with_each_other() {
    let mut names = LabelNames(Vec::new());
    for label in STANDARD_LABELS {
        assert_eq!(names.admit(label), Ok(()), "{label}");
    }
}

#[test]
fn a_full_config_parses() {
    let c = parse(
        r#"{
        "tcp_reporting_duration": "5s",
        "reporter": "destination",
        "max_series_per_metric": 50,
        "definitions": [{"name": "istio_mongo_received_bytes", "value": "bytes_received",
                         "dimensions": {"source_service": "source_canonical_service"},
                         "match": {"destination_service_name": "mongodb"}}],
        "metrics": [{"name": "tcp_sent_bytes_total", "drop": true},
                    {"name": "", "tags_to_remove": ["source_principal"],
                     "dimensions": {"team": "destination_labels.team"}},
                    {"name": "istio_mongo_received_bytes",
                     "dimensions": {"peer_kind": "source_workload_type"}}]
    }"#,
    );
    assert_eq!(c.tcp_reporting_duration, Duration::from_secs(5));
    assert_eq!(c.reporter, Some(Reporter::Destination));
    assert_eq!(c.max_series_per_metric, 50);
    assert_eq!(
        c.plan.reported_metrics(),
        vec![
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "istio_tcp_received_bytes_total",
            "istio_tcp_connections_open",
            "istio_mongo_received_bytes"
        ]
    );
}

#[test]
fn arbitrary_input_is_rejected_or_accepted_never_panics() {
    const PIECES: [&str; 16] = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"metrics\"",
        "\"definitions\"",
        "\"name\"",
        "\"\"",
        "\"dimensions\"",
        "\"tcp_reporting_duration\"",
        "1e999",
        "-0",
        "\"\\ud800\"",
        "null",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let len = next() % 24;
        let json: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let _ = StatsConfig::parse(json.as_bytes());
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = StatsConfig::parse(&bytes);
    }
}

#[test]
fn the_lifetime_histogram_is_off_by_default() {
    use crate::logic::stats::plan::{TCP_CONNECTIONS_OPEN, TCP_CONNECTION_DURATION};
    let off = parse("{}").plan;
    assert!(off.reported_metrics().contains(&TCP_CONNECTIONS_OPEN));
    assert!(!off.reported_metrics().contains(&TCP_CONNECTION_DURATION));
    assert!(!off.needs_clock() && !off.has_close_metrics());
    let on = parse(r#"{"connection_duration": true}"#).plan;
    assert!(on.reported_metrics().contains(&TCP_CONNECTION_DURATION));
    assert!(on.needs_clock() && !on.has_close_metrics());
    let dropped = parse(
        r#"{"connection_duration": true,
            "metrics": [{"name": "tcp_connection_duration_milliseconds", "drop": true}]}"#,
    );
    assert!(!dropped.plan.needs_clock());
    rejects(r#"{"connection_duration": "yes"}"#, "connection_duration");
}

#[test]
fn close_attributes_only_on_metrics_emitted_at_close() {
    let ok = parse(
        r#"{"connection_duration": true,
            "metrics": [{"name": "tcp_connections_closed_total",
                         "dimensions": {"closed_by": "closed_by"}},
                        {"name": "tcp_connection_duration_milliseconds",
                         "tags_to_remove": ["source_principal"],
                         "dimensions": {"close_flags": "close_flags"}}],
            "definitions": [{"name": "failed", "value": "connections_closed",
                             "match": {"close_flags": ["UF", "UF,URX"]}},
                            {"name": "lifetimes", "type": "histogram",
                             "value": "connection_duration",
                             "dimensions": {"duration_class": "duration_class"}}]}"#,
    );
    assert!(ok.plan.has_close_metrics() && ok.plan.needs_clock());
    rejects(
        r#"{"metrics": [{"dimensions": {"closed_by": "closed_by"}}]}"#,
        "metrics[0].dimensions.closed_by",
    );
    rejects(
        r#"{"metrics": [{"name": "tcp_received_bytes_total",
                         "dimensions": {"f": "termination_details"}}]}"#,
        "metrics[0].dimensions.f",
    );
    rejects(
        r#"{"definitions": [{"name": "x", "value": "connections_opened",
                             "dimensions": {"closed_by": "closed_by"}}]}"#,
        "definitions[0].dimensions.closed_by",
    );
    // Dropping the metrics reported before close makes `""` acceptable.
    parse(
        r#"{"metrics": [{"name": "tcp_connections_opened_total", "drop": true},
                        {"name": "tcp_sent_bytes_total", "drop": true},
                        {"name": "tcp_received_bytes_total", "drop": true},
                        {"name": "tcp_connections_open", "drop": true},
                        {"dimensions": {"closed_by": "closed_by"}}]}"#,
    );
}

#[test]
fn definition_types_follow_their_values_and_match_lists() {
    rejects(
        r#"{"definitions": [{"name": "x", "type": "gauge", "value": "bytes_sent"}]}"#,
        "definitions[0].type",
    );
    rejects(
        r#"{"definitions": [{"name": "x", "value": "connection_duration"}]}"#,
        "definitions[0].type",
    );
    parse(r#"{"definitions": [{"name": "x", "type": "gauge", "value": "connections_open"}]}"#);
    rejects(
        r#"{"definitions": [{"name": "x", "value": "bytes_sent", "match": {"source_app": []}}]}"#,
        "definitions[0].match.source_app",
    );
    rejects(
        r#"{"definitions": [{"name": "x", "value": "bytes_sent", "match": {"source_app": [1]}}]}"#,
        "definitions[0].match.source_app",
    );
    assert!(
        err(r#"{"definitions": [{"name": "x", "value": "bytes_sent", "match": {"a": 2}}]}"#)
            .contains("expected a string or a list of strings")
    );
}
