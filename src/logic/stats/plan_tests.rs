//! Tests for [`super::MetricPlan`]: the standard series, the Mixer-era MongoDB definition, overrides, and
//! stat-name safety.

use super::*;
use crate::logic::stats::config::StatsConfig;
use crate::logic::stats::labels::Reporter;
use crate::logic::stats::test_fixtures::*;

fn plan(json: &str) -> MetricPlan {
    match StatsConfig::parse(json.as_bytes()) {
        Ok(c) => c.plan,
        Err(e) => panic!("{e}"),
    }
}

/// The `definitions` array of [`MIXER_MONGO`].
fn definitions() -> &'static str {
    MIXER_MONGO
        .strip_prefix(r#"{"definitions": "#)
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or("[]")
}

fn find<'a>(series: &'a [Series], metric: &str) -> Option<&'a Series> {
    series.iter().find(|s| s.metric == metric)
}

fn names(series: &[Series]) -> Vec<&str> {
    series.iter().map(|s| s.metric.as_str()).collect()
}

fn label_names(stat_name: &str) -> Vec<&str> {
    stat_name
        .split(";.;")
        .filter_map(|part| part.split_once("=.=").map(|(n, _)| n))
        .collect()
}

const MIXER_MONGO: &str = r#"{"definitions": [{
    "name": "istio_mongo_received_bytes", "type": "counter", "value": "bytes_received",
    "dimensions": {"destination_version": "destination_version",
                   "source_service": "source_canonical_service",
                   "source_version": "source_version"},
    "match": {"destination_service_name": "mongodb"}}]}"#;

#[test]
fn standard_plan_reports_istios_four_metrics_and_the_gauge() {
    let series = MetricPlan::standard().series(&server_facts());
    assert_eq!(
        names(&series),
        vec![
            TCP_CONNECTIONS_OPENED_TOTAL,
            TCP_CONNECTIONS_CLOSED_TOTAL,
            TCP_SENT_BYTES_TOTAL,
            TCP_RECEIVED_BYTES_TOTAL,
            TCP_CONNECTIONS_OPEN
        ]
    );
    let values: Vec<ValueKind> = series.iter().map(|s| s.value).collect();
    assert_eq!(
        values,
        vec![
            ValueKind::ConnectionsOpened,
            ValueKind::ConnectionsClosed,
            ValueKind::BytesSent,
            ValueKind::BytesReceived,
            ValueKind::ConnectionsOpen
        ]
    );
    assert_eq!(
        label_names(&series[4].stat_name),
        STANDARD_LABELS,
        "the gauge has the counters' labels"
    );
    let opened = &series[0].stat_name;
    assert!(opened.starts_with(
        "reporter=.=destination;.;source_workload=.=ratings-v2;.;source_canonical_service=.=ratings;.;"
    ));
    assert!(opened.ends_with(
        "request_protocol=.=tcp;.;response_flags=.=-;.;connection_security_policy=.=mutual_tls;.;\
         istio_tcp_connections_opened_total"
    ));
    assert_eq!(label_names(opened), STANDARD_LABELS);
    assert_eq!(tag(opened, "source_principal"), Some(RATINGS_SAN));
    assert_eq!(
        tag(opened, "destination_service"),
        Some("mongodb.default.svc.cluster.local")
    );
    assert_eq!(MetricPlan::default(), MetricPlan::standard());
}

#[test]
fn mixer_mongo_definition_for_a_mongodb_destination() {
    let p = plan(MIXER_MONGO);
    for facts in [server_facts(), client_facts()] {
        let series = p.series(&facts);
        assert_eq!(series.len(), 6);
        let mongo = find(&series, "istio_mongo_received_bytes").expect("the Mixer-era series");
        assert_eq!(mongo.value, ValueKind::BytesReceived);
        assert_eq!(
            mongo.stat_name,
            "destination_version=.=v1;.;source_service=.=ratings;.;source_version=.=v2;.;\
             istio_mongo_received_bytes"
        );
    }
}

#[test]
fn mixer_mongo_definition_skips_other_destinations() {
    let p = plan(MIXER_MONGO);
    let mut f = client_facts();
    f.peer = None;
    f.cluster_name = "outbound|9080||reviews.default.svc.cluster.local".into();
    f.service = Some(crate::logic::endpoint::ServiceRef {
        host: "reviews.default.svc.cluster.local".into(),
        name: "reviews".into(),
        namespace: "default".into(),
    });
    let series = p.series(&f);
    assert_eq!(series.len(), 5);
    assert!(find(&series, "istio_mongo_received_bytes").is_none());
    // No service at all on the client: `unknown`, which is not `mongodb` either.
    f.service = None;
    assert!(find(&p.series(&f), "istio_mongo_received_bytes").is_none());
}

#[test]
fn drop_by_short_full_and_empty_name() {
    let p = plan(
        r#"{"metrics": [{"name": "tcp_sent_bytes_total", "drop": true},
                                 {"name": "istio_tcp_connections_closed_total", "drop": true}]}"#,
    );
    assert_eq!(
        names(&p.series(&server_facts())),
        vec![
            TCP_CONNECTIONS_OPENED_TOTAL,
            TCP_RECEIVED_BYTES_TOTAL,
            TCP_CONNECTIONS_OPEN
        ]
    );
    assert_eq!(
        p.reported_metrics(),
        vec![
            TCP_CONNECTIONS_OPENED_TOTAL,
            TCP_RECEIVED_BYTES_TOTAL,
            TCP_CONNECTIONS_OPEN
        ]
    );
    let only_mixer = format!(
        r#"{{"definitions": {}, "metrics": [{{"name": "", "drop": true}}]}}"#,
        definitions()
    );
    assert_eq!(
        names(&plan(&only_mixer).series(&server_facts())),
        vec!["istio_mongo_received_bytes"]
    );
}

#[test]
fn tags_to_remove_for_one_or_all() {
    let p = plan(
        r#"{"metrics": [{"name": "tcp_received_bytes_total",
                                  "tags_to_remove": ["source_principal", "destination_principal"]},
                                 {"tags_to_remove": ["response_flags"]}]}"#,
    );
    let series = p.series(&server_facts());
    for s in &series {
        assert_eq!(tag(&s.stat_name, "response_flags"), None, "{}", s.metric);
        let has_principal = tag(&s.stat_name, "source_principal").is_some();
        assert_eq!(has_principal, s.metric != TCP_RECEIVED_BYTES_TOTAL);
    }
    assert_eq!(label_names(&series[3].stat_name).len(), 20);
}

#[test]
fn dimensions_replace_in_place_or_append() {
    let p = plan(
        r#"{"metrics": [{"name": "tcp_connections_opened_total",
        "dimensions": {"source_app": "source_labels.team", "zz_team": "destination_labels.team",
                       "aa_kind": "destination_workload_type"}}]}"#,
    );
    let series = p.series(&server_facts());
    let opened = &series[0].stat_name;
    let labels = label_names(opened);
    assert_eq!(labels.len(), 25);
    assert_eq!(labels[6], "source_app");
    assert_eq!(tag(opened, "source_app"), Some("reviews"));
    // Added labels come after the standard ones, in name order (as Istio sorts them).
    assert_eq!(&labels[23..], ["aa_kind", "zz_team"]);
    assert_eq!(tag(opened, "zz_team"), Some("db"));
    assert_eq!(tag(opened, "aa_kind"), Some("deployment"));
    assert_eq!(label_names(&series[1].stat_name), STANDARD_LABELS);
}

#[test]
fn empty_name_dimensions_reach_definitions_and_named_overrides_reach_one() {
    let with = |metrics: &str| {
        let json = format!(
            r#"{{"definitions": {}, "metrics": {metrics}}}"#,
            definitions()
        );
        plan(&json).series(&server_facts())
    };
    let series = with(r#"[{"dimensions": {"mesh_dir": "listener_direction"}}]"#);
    for s in &series {
        assert_eq!(
            tag(&s.stat_name, "mesh_dir"),
            Some("inbound"),
            "{}",
            s.metric
        );
    }
    let series = with(
        r#"[{"name": "istio_mongo_received_bytes", "dimensions": {"source_version": "source_app"},
             "tags_to_remove": ["destination_version"]}]"#,
    );
    let mongo = find(&series, "istio_mongo_received_bytes").expect("the Mixer-era series");
    assert_eq!(
        mongo.stat_name,
        "source_service=.=ratings;.;source_version=.=ratings;.;istio_mongo_received_bytes"
    );
    assert_eq!(tag(&series[0].stat_name, "source_version"), Some("v2"));
    let series = with(r#"[{"name": "istio_mongo_received_bytes", "drop": true}]"#);
    assert_eq!(series.len(), 5);
}

#[test]
fn missing_attributes_are_unknown() {
    let p = plan(r#"{"metrics": [{"dimensions": {"team": "destination_labels.nope"}}]}"#);
    let series = p.series(&client_facts());
    assert_eq!(tag(&series[0].stat_name, "team"), Some("unknown"));
}

#[test]
fn peer_values_cannot_forge_labels() {
    let mut f = server_facts();
    f.peer_principal = "x;.;reporter=.=source;.;".into();
    if let Some(p) = f.peer.as_mut() {
        p.workload_name = "w;.;destination_workload=.=forged".into();
        p.app_name = "ünïcode app\n".into();
        p.app_version = "v".repeat(10_000);
    }
    for s in MetricPlan::standard().series(&f) {
        assert_eq!(label_names(&s.stat_name), STANDARD_LABELS);
        assert_eq!(s.stat_name.matches("reporter=.=").count(), 1);
        assert_eq!(tag(&s.stat_name, "reporter"), Some("destination"));
        assert_eq!(
            tag(&s.stat_name, "destination_workload"),
            Some("mongodb-v1")
        );
        assert_eq!(tag(&s.stat_name, "source_app"), Some("_n_code_app_"));
        assert_eq!(tag(&s.stat_name, "source_version").map(str::len), Some(256));
    }
}

#[test]
fn client_reporter_series() {
    let series = MetricPlan::standard().series(&client_facts());
    assert_eq!(
        tag(&series[0].stat_name, "reporter"),
        Some(Reporter::Source.as_str())
    );
    assert_eq!(
        tag(&series[0].stat_name, "connection_security_policy"),
        Some("unknown")
    );
}

#[test]
fn standard_metric_names() {
    assert_eq!(
        standard_metric("tcp_sent_bytes_total"),
        Some(TCP_SENT_BYTES_TOTAL)
    );
    assert_eq!(
        standard_metric(TCP_SENT_BYTES_TOTAL),
        Some(TCP_SENT_BYTES_TOTAL)
    );
    assert_eq!(standard_metric("requests_total"), None);
    assert_eq!(standard_metric(""), None);
}
