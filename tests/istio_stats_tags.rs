//! The Istio stats settings `examples/istio/README.md` gives, in an Envoy whose `stats_config`
//! is Istio's own (tests/istio/bootstrap_stats.rs, from Istio's bootstrap template): the README's
//! `extraStatTags` give clean `istio_tcp_*` metrics; a missing tag shows in the name; Istio's
//! unanchored `cache`, `component`, `tag`, `wasm_filter` regexes add stray labels when a label
//! value contains those words (measured here); a `bootstrapOverride` (Envoy `--config-yaml`,
//! merged into Istio's bootstrap) carrying `envoy/stats-tags.yaml` works without `extraStatTags`.
//!
//! Fails (never skips) when Envoy or the module is missing.

mod istio;
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use istio::bootstrap_stats::istio_stats_config;
use istio::*;
use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Tests: the README's Istio stats settings

/// Every `extraStatTags` list and `inclusionPrefixes` list in the README's YAML blocks, including
/// those inside a `proxy.istio.io/config` annotation and the comma-separated
/// `sidecar.istio.io/extraStatTags` / `statsInclusionPrefixes` annotations.
fn readme_stats_settings() -> (Vec<BTreeSet<String>>, BTreeSet<String>) {
    fn walk(v: &Value, tags: &mut Vec<BTreeSet<String>>, prefixes: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    let list = |x: &Value| -> BTreeSet<String> {
                        match x {
                            Value::Array(a) => a
                                .iter()
                                .filter_map(|s| s.as_str().map(String::from))
                                .collect(),
                            Value::String(s) => s
                                .split(',')
                                .map(|t| t.trim().to_string())
                                .filter(|t| !t.is_empty())
                                .collect(),
                            _ => BTreeSet::new(),
                        }
                    };
                    match k.as_str() {
                        "extraStatTags" | "sidecar.istio.io/extraStatTags" => tags.push(list(x)),
                        "inclusionPrefixes" | "sidecar.istio.io/statsInclusionPrefixes" => {
                            prefixes.extend(list(x))
                        }
                        "proxy.istio.io/config" => {
                            let inner = parse_yaml_docs(x.as_str().unwrap_or_default())
                                .expect("proxy.istio.io/config is YAML");
                            for d in &inner {
                                walk(d, tags, prefixes);
                            }
                        }
                        _ => walk(x, tags, prefixes),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, tags, prefixes)),
            _ => {}
        }
    }
    let readme =
        fs::read_to_string(istio_dir().join("README.md")).expect("examples/istio/README.md");
    let (mut tags, mut prefixes) = (Vec::new(), BTreeSet::new());
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("unterminated ```yaml block");
        let block = &body[..end];
        if block.contains("extraStatTags") || block.contains("nclusionPrefixes") {
            let docs = parse_yaml_docs(block)
                .unwrap_or_else(|e| panic!("README yaml block does not parse: {e}\n{block}"));
            docs.iter().for_each(|d| walk(d, &mut tags, &mut prefixes));
        }
        rest = &body[end + 3..];
    }
    (tags, prefixes)
}

/// The tag names of `envoy/stats-tags.yaml`: the labels the module encodes into stat names.
fn module_labels() -> BTreeSet<String> {
    let doc = &parse_yaml_docs(&stats_tags()).unwrap()[0];
    doc["stats_config"]["stats_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag_name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs the mounted-file EnvoyFilter's inbound chain with `stats_config`, makes one connection
/// and returns the `istio_tcp_*` lines of `/stats/prometheus`.
fn istio_tcp_lines(name: &str, stats_config: Value) -> Vec<String> {
    istio_tcp_lines_with(name, stats_config, None, None)
}

/// [`istio_tcp_lines`] with the node's `LABELS` and `WORKLOAD_NAME` replaced, and a
/// `--config-yaml` override (what Istio's `sidecar.istio.io/bootstrapOverride` becomes).
fn istio_tcp_lines_with(
    name: &str,
    stats_config: Value,
    node: Option<(&str, Value)>,
    config_yaml: Option<&str>,
) -> Vec<String> {
    let chain = all_chains()
        .into_iter()
        .find(|c| c.origin.starts_with(EXPECTED_FILES[0]) && c.direction == Direction::Inbound)
        .unwrap();
    let backend = echo_server();
    let mut cfg = bootstrap(&chain.filters, chain.direction, &[], backend.port());
    cfg["stats_config"] = stats_config;
    if let Some((workload, labels)) = node {
        cfg["node"]["metadata"]["WORKLOAD_NAME"] = json!(workload);
        cfg["node"]["metadata"]["LABELS"] = labels;
    }
    let mut builder = Envoy::builder(name, &serde_json::to_string_pretty(&cfg).unwrap());
    if let Some(extra) = config_yaml {
        builder = builder.args(["--config-yaml", extra]);
    }
    let envoy = builder.start();
    let port = envoy.listener_port("manifest");
    assert_eq!(client_roundtrip(port, b"ping"), b"ping".to_vec());
    // Metrics are reported at close; give Envoy a moment to see it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = envoy
            .prometheus()
            .lines()
            .filter(|l| l.contains("istio_tcp_connections_closed_total"))
            .map(String::from)
            .collect();
        if !lines.is_empty() || std::time::Instant::now() > deadline {
            return envoy
                .prometheus()
                .lines()
                .filter(|l| l.contains("istio_tcp_") && !l.starts_with('#'))
                .map(String::from)
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readme_stats_settings_give_clean_istio_metrics() {
    let (tag_lists, prefixes) = readme_stats_settings();
    assert!(!tag_lists.is_empty(), "the README gives no extraStatTags");
    let labels = module_labels();
    for tags in &tag_lists {
        let missing: Vec<_> = labels.difference(tags).collect();
        assert!(
            missing.is_empty(),
            "a README extraStatTags list lacks {missing:?}"
        );
    }
    let tags: Vec<String> = tag_lists[0].iter().cloned().collect();
    let extra: Vec<String> = prefixes.iter().cloned().collect();

    let lines = istio_tcp_lines("istio-stats", istio_stats_config(&tags, &extra));
    let opened = lines
        .iter()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap_or_else(|| panic!("no clean istio_tcp_connections_opened_total in:\n{lines:#?}"));
    assert!(opened.contains(r#"reporter="destination""#), "{opened}");
    for l in &lines {
        assert!(
            !l.contains("=.=") && !l.contains("___"),
            "label left in the name: {l}"
        );
    }

    // Negative: with one tag missing, that label stays in the metric name.
    let fewer: Vec<String> = tags
        .iter()
        .filter(|t| *t != "destination_cluster")
        .cloned()
        .collect();
    let lines = istio_tcp_lines(
        "istio-stats-missing-tag",
        istio_stats_config(&fewer, &extra),
    );
    assert!(
        lines.iter().any(|l| l.contains("destination_cluster___")),
        "a missing tag must show in the name: {lines:#?}"
    );
    // Without any inclusion prefix of ours the metrics still pass Istio's matcher: pilot-agent
    // always adds `wasm`, a prefix of `wasmcustom.`.
    let none: [&str; 0] = [];
    let lines = istio_tcp_lines(
        "istio-stats-no-prefix",
        istio_stats_config(&tags, &none[..]),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")),
        "{lines:#?}"
    );
}

/// Node labels whose values hold the words Istio's unanchored tag regexes look for.
fn tricky_node() -> (&'static str, Value) {
    (
        "session-cache.v1",
        json!({
            "app": "component.store",
            "version": "v1.wasm_filter.x",
            "service.istio.io/canonical-name": "mongodb",
            "service.istio.io/canonical-revision": "tag.v1",
        }),
    )
}

/// The extra labels (beyond the module's) on the `istio_tcp_connections_opened_total` line.
fn stray_labels(lines: &[String]) -> BTreeSet<String> {
    let known = module_labels();
    let opened = lines
        .iter()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap_or_else(|| panic!("no istio_tcp_connections_opened_total:\n{lines:#?}"));
    let inner = &opened[opened.find('{').unwrap() + 1..opened.rfind('}').unwrap()];
    inner
        .split("\",")
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, _)| k.to_string())
        .filter(|k| !known.contains(k))
        .collect()
}

#[test]
fn istios_unanchored_tag_regexes_add_stray_labels_to_tricky_values() {
    let tags: Vec<String> = module_labels().into_iter().collect();
    let prefixes = ["wasmcustom".to_string()];
    let lines = istio_tcp_lines_with(
        "istio-stats-tricky",
        istio_stats_config(&tags, &prefixes),
        Some(tricky_node()),
        None,
    );
    let stray = stray_labels(&lines);
    for l in ["cache", "component", "tag", "wasm_filter"] {
        assert!(stray.contains(l), "no stray {l}: {stray:?}\n{lines:#?}");
    }
    // The module's own labels keep their values.
    let opened = lines
        .iter()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap();
    assert!(
        opened.contains(r#"destination_workload="session-cache.v1""#),
        "{opened}"
    );
    assert!(
        opened.contains(r#"destination_app="component.store""#),
        "{opened}"
    );

    // The same values with envoy/stats-tags.yaml alone: no stray label.
    let ours = &parse_yaml_docs(&stats_tags()).unwrap()[0]["stats_config"];
    let lines = istio_tcp_lines_with(
        "plain-stats-tricky",
        ours.clone(),
        Some(tricky_node()),
        None,
    );
    assert!(stray_labels(&lines).is_empty(), "{lines:#?}");
}

#[test]
fn a_bootstrap_override_with_our_stats_tags_works_without_extra_stat_tags() {
    // Istio's bootstrap with no extraStatTags, plus the override pilot-agent passes to Envoy as
    // --config-yaml (custom_bootstrap.json from the sidecar.istio.io/bootstrapOverride
    // ConfigMap): its stats_tags are appended to Istio's (repeated fields merge).
    let none: [&str; 0] = [];
    let ours = &parse_yaml_docs(&stats_tags()).unwrap()[0]["stats_config"];
    let overlay = json!({ "stats_config": { "stats_tags": ours["stats_tags"] } });
    let dir = TempDir::new("bootstrap-override");
    let path = dir.path().join("custom_bootstrap.json");
    fs::write(&path, serde_json::to_string_pretty(&overlay).unwrap()).unwrap();
    let lines = istio_tcp_lines_with(
        "istio-stats-override",
        istio_stats_config(&none[..], &none[..]),
        None,
        Some(&serde_json::to_string(&overlay).unwrap()),
    );
    assert!(stray_labels(&lines).is_empty(), "{lines:#?}");
    for l in &lines {
        assert!(
            !l.contains("=.=") && !l.contains("___"),
            "label left in the name: {l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains(r#"reporter="destination""#)),
        "{lines:#?}"
    );
    // Negative: without the override the labels stay in the names.
    let lines = istio_tcp_lines(
        "istio-stats-no-override",
        istio_stats_config(&none[..], &none[..]),
    );
    assert!(lines.iter().any(|l| l.contains("___")), "{lines:#?}");
}
