//! `stats_config` as Istio's bootstrap template writes it (istio/istio
//! `tools/packaging/common/envoy_bootstrap.json`, 1.24–1.29; the delimited-stats variant that
//! 1.24 makes optional and 1.26 the only one): Istio's tag regexes in the template's order, with
//! one `(TAG=\.=(.*?);\.;)` per `extraStatTags` entry between `mongo_prefix` and `cache`, and the
//! stats matcher `reporter=`, the inclusion prefixes (pilot-agent always adds `cluster_manager`,
//! `listener_manager`, `server`, `cluster.xds-grpc`, `wasm`: `pkg/bootstrap/config.go`),
//! `component`, `istio`.

use serde_json::{json, Value};

/// Prefixes pilot-agent always adds to the inclusion list (`requiredEnvoyStatsMatcherInclusionPrefixes`).
pub const REQUIRED_PREFIXES: [&str; 5] = [
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-grpc",
    "wasm",
];

/// Istio's regexes before the extraStatTags.
const HEAD: [(&str, &str); 9] = [
    ("cluster_name", r"^cluster(\.(.+);)"),
    (
        "http_conn_manager_prefix",
        r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)",
    ),
    ("thread_name", r"^server(\.(.+))\.watchdog"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    (
        "http_conn_manager_listener_prefix",
        r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    ),
    (
        "listener_address",
        r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    ),
    (
        "mongo_prefix",
        r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$",
    ),
];

/// Istio's regexes after the extraStatTags: unanchored, so they apply to every stat name.
pub const UNANCHORED: [(&str, &str); 7] = [
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
];

/// Istio's `stats_config` for these `extraStatTags` and inclusion prefixes (the required ones
/// are added here).
pub fn istio_stats_config<S: AsRef<str>, P: AsRef<str>>(
    extra_stat_tags: &[S],
    inclusion_prefixes: &[P],
) -> Value {
    let entry = |name: &str, regex: &str| json!({ "tag_name": name, "regex": regex });
    let mut tags: Vec<Value> = HEAD.iter().map(|(n, r)| entry(n, r)).collect();
    for t in extra_stat_tags {
        let t = t.as_ref();
        tags.push(entry(t, &format!(r"({t}=\.=(.*?);\.;)")));
    }
    tags.extend(UNANCHORED.iter().map(|(n, r)| entry(n, r)));
    let mut patterns = vec![json!({ "prefix": "reporter=" })];
    for p in inclusion_prefixes
        .iter()
        .map(AsRef::as_ref)
        .chain(REQUIRED_PREFIXES)
    {
        patterns.push(json!({ "prefix": p }));
    }
    patterns.push(json!({ "prefix": "component" }));
    patterns.push(json!({ "prefix": "istio" }));
    json!({
        "use_all_default_tags": false,
        "stats_tags": tags,
        "stats_matcher": { "inclusion_list": { "patterns": patterns } },
    })
}
