//! The Prometheus files in `examples/prometheus/` pass `promtool`, and the Grafana dashboard asks
//! only for queries that are recording rules, so the two cannot drift apart.
//!
//! Fails (never skips) when `promtool` is missing (`make tools` installs Debian's `prometheus`).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use support::{manifest_dir, TempDir};

const RULES: &str = "examples/prometheus/recording-rules.yaml";
const CONFIG: &str = "examples/prometheus/prometheus.yml";
const DASHBOARD: &str = "examples/grafana/istio-tcp-dashboard.json";

/// Runs `promtool check <what> <file>`; `Err` holds its output.
fn promtool_check(what: &str, file: &Path) -> Result<String, String> {
    let out = Command::new("promtool")
        .args(["check", what])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run promtool (install it: `make tools`): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Every string under a key `expr`, anywhere in `v`, whitespace-trimmed.
fn exprs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => {
                        out.insert(s.trim().to_string());
                    }
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

fn dashboard_exprs(text: &str) -> BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let mut out = BTreeSet::new();
    exprs(&dashboard, &mut out);
    out
}

fn rule_exprs(text: &str) -> BTreeSet<String> {
    let rules = Value::deserialize(serde_yaml::Deserializer::from_str(text))
        .expect("the rules file is YAML");
    let mut out = BTreeSet::new();
    exprs(&rules, &mut out);
    out
}

/// The dashboard's queries that are not recording rules.
fn missing_rules(dashboard: &str, rules: &str) -> Vec<String> {
    let rules = rule_exprs(rules);
    dashboard_exprs(dashboard)
        .into_iter()
        .filter(|e| !rules.contains(e))
        .collect()
}

fn read(rel: &str) -> String {
    fs::read_to_string(manifest_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn promtool_accepts_the_recording_rules() {
    let out = promtool_check("rules", &manifest_dir().join(RULES))
        .unwrap_or_else(|e| panic!("promtool check rules {RULES}:\n{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_accepts_the_scrape_config() {
    // Also checks the rule files it names (recording-rules.yaml, next to it).
    let out = promtool_check("config", &manifest_dir().join(CONFIG))
        .unwrap_or_else(|e| panic!("promtool check config {CONFIG}:\n{e}"));
    assert!(out.contains("1 rule files found"), "{out}");
    let config = read(CONFIG);
    for target in ["localhost:15000", "localhost:15001", "/stats/prometheus"] {
        assert!(config.contains(target), "{CONFIG} lacks {target}");
    }
}

#[test]
fn promtool_refuses_a_broken_rule() {
    // Negative: the check above can fail. An unbalanced parenthesis in one expr.
    let dir = TempDir::new("broken-rules");
    let broken = read(RULES).replacen("[1m]))", "[1m])", 1);
    let file = dir.path().join("recording-rules.yaml");
    fs::write(&file, broken).unwrap();
    let err = promtool_check("rules", &file).expect_err("a broken expr must fail");
    assert!(
        err.contains("FAILED") || err.contains("parse error"),
        "{err}"
    );
}

#[test]
fn every_dashboard_query_is_a_recording_rule() {
    let (dashboard, rules) = (read(DASHBOARD), read(RULES));
    let queries = dashboard_exprs(&dashboard);
    assert!(
        queries.len() >= 4,
        "the dashboard has {} queries",
        queries.len()
    );
    for needed in [
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        // Open connections by source → destination, from the gauge.
        "istio_tcp_connections_open{",
        // Connection lifetime p50/p99.
        "histogram_quantile(0.5, sum by (le, source_workload, destination_workload) (rate(istio_tcp_connection_duration_milliseconds_bucket",
        "histogram_quantile(0.99, sum by (le, source_workload, destination_workload) (rate(istio_tcp_connection_duration_milliseconds_bucket",
        // Failed connections.
        "response_flags=~\".*(UF|UH|UO|NC).*\"",
    ] {
        assert!(
            queries.iter().any(|q| q.contains(needed)),
            "no dashboard query on {needed}"
        );
    }
    let missing = missing_rules(&dashboard, &rules);
    assert!(
        missing.is_empty(),
        "dashboard queries without a recording rule in {RULES}: {missing:#?}"
    );
}

#[test]
fn a_drifted_dashboard_query_is_caught() {
    // Negative: change one dashboard query and the comparison must report it.
    let drifted = read(DASHBOARD).replacen("[1m]", "[5m]", 1);
    let missing = missing_rules(&drifted, &read(RULES));
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert!(missing[0].contains("[5m]"));
}

#[test]
fn the_dashboard_has_a_prometheus_datasource_variable() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a datasource variable of type prometheus");
    let name = ds["name"].as_str().unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"],
            format!("${{{name}}}"),
            "panel {} does not use ${{{name}}}",
            panel["title"]
        );
    }
}
