//! Istio's label derivation for the TCP metrics, and the attribute vocabulary that operator
//! overrides and user-defined metrics may use.
//!
//! [`istio_labels`] reproduces `populatePeerInfo` / `populateFlagsAndConnectionSecurity` of
//! istio/proxy's `istio_stats.cc` for the sidecar reporters: the same 23 labels, in the same
//! order, with the same defaults (`unknown` for a missing peer field, `latest` for a missing
//! peer revision, local fields as they are). [`attribute`] answers the names a config may use
//! in `dimensions` and `match`; [`is_known_attribute`] is what config validation checks them
//! against.

use serde::Deserialize;

use crate::logic::endpoint::ServiceRef;
use crate::logic::workload::WorkloadMetadata;

/// Which side of the connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// Outbound listener (client sidecar): label value `source`.
    Source,
    /// Inbound listener (server sidecar): label value `destination`.
    Destination,
}

impl Reporter {
    /// The `reporter` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Everything the labels of one connection are derived from; the glue gathers it from host
/// properties and filter state.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionFacts {
    pub reporter: Reporter,
    /// This node.
    pub local: WorkloadMetadata,
    /// From the exchange (or, on the client, the endpoint's `istio.workload` fallback: the
    /// caller resolves that).
    pub peer: Option<WorkloadMetadata>,
    /// URI SAN of the peer certificate ("" if none).
    pub peer_principal: String,
    /// URI SAN of our certificate ("" if none).
    pub local_principal: String,
    /// Upstream cluster name.
    pub cluster_name: String,
    /// Cluster metadata `istio.services[0]`.
    pub service: Option<ServiceRef>,
    /// Envoy's short form ([`super::response_flags::short_string`]), `-` when none.
    pub response_flags: String,
}

/// Label name → value, in Istio's order.
pub type Labels = Vec<(&'static str, String)>;

pub const REPORTER: &str = "reporter";
pub const SOURCE_WORKLOAD: &str = "source_workload";
pub const SOURCE_CANONICAL_SERVICE: &str = "source_canonical_service";
pub const SOURCE_CANONICAL_REVISION: &str = "source_canonical_revision";
pub const SOURCE_WORKLOAD_NAMESPACE: &str = "source_workload_namespace";
pub const SOURCE_PRINCIPAL: &str = "source_principal";
pub const SOURCE_APP: &str = "source_app";
pub const SOURCE_VERSION: &str = "source_version";
pub const SOURCE_CLUSTER: &str = "source_cluster";
pub const DESTINATION_WORKLOAD: &str = "destination_workload";
pub const DESTINATION_WORKLOAD_NAMESPACE: &str = "destination_workload_namespace";
pub const DESTINATION_PRINCIPAL: &str = "destination_principal";
pub const DESTINATION_APP: &str = "destination_app";
pub const DESTINATION_VERSION: &str = "destination_version";
pub const DESTINATION_SERVICE: &str = "destination_service";
pub const DESTINATION_CANONICAL_SERVICE: &str = "destination_canonical_service";
pub const DESTINATION_CANONICAL_REVISION: &str = "destination_canonical_revision";
pub const DESTINATION_SERVICE_NAME: &str = "destination_service_name";
pub const DESTINATION_SERVICE_NAMESPACE: &str = "destination_service_namespace";
pub const DESTINATION_CLUSTER: &str = "destination_cluster";
pub const REQUEST_PROTOCOL: &str = "request_protocol";
pub const RESPONSE_FLAGS: &str = "response_flags";
pub const CONNECTION_SECURITY_POLICY: &str = "connection_security_policy";

/// The standard labels in the order [`istio_labels`] produces them.
pub const STANDARD_LABELS: [&str; 23] = [
    REPORTER,
    SOURCE_WORKLOAD,
    SOURCE_CANONICAL_SERVICE,
    SOURCE_CANONICAL_REVISION,
    SOURCE_WORKLOAD_NAMESPACE,
    SOURCE_PRINCIPAL,
    SOURCE_APP,
    SOURCE_VERSION,
    SOURCE_CLUSTER,
    DESTINATION_WORKLOAD,
    DESTINATION_WORKLOAD_NAMESPACE,
    DESTINATION_PRINCIPAL,
    DESTINATION_APP,
    DESTINATION_VERSION,
    DESTINATION_SERVICE,
    DESTINATION_CANONICAL_SERVICE,
    DESTINATION_CANONICAL_REVISION,
    DESTINATION_SERVICE_NAME,
    DESTINATION_SERVICE_NAMESPACE,
    DESTINATION_CLUSTER,
    REQUEST_PROTOCOL,
    RESPONSE_FLAGS,
    CONNECTION_SECURITY_POLICY,
];

pub const UNKNOWN: &str = "unknown";
pub const LATEST: &str = "latest";

/// Clusters whose name Istio reports as the destination service name.
const PASSTHROUGH_CLUSTERS: [&str; 5] = [
    "BlackHoleCluster",
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
];

// Attributes beyond the standard labels.
pub const LISTENER_DIRECTION: &str = "listener_direction";
pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
pub const SOURCE_WORKLOAD_TYPE: &str = "source_workload_type";
pub const DESTINATION_WORKLOAD_TYPE: &str = "destination_workload_type";
pub const SOURCE_INSTANCE: &str = "source_instance";
pub const DESTINATION_INSTANCE: &str = "destination_instance";
pub const SOURCE_LABELS_PREFIX: &str = "source_labels.";
pub const DESTINATION_LABELS_PREFIX: &str = "destination_labels.";

/// True for the 23 standard label names.
pub fn is_standard_label(name: &str) -> bool {
    STANDARD_LABELS.contains(&name)
}

/// `<DOMAIN>/ns/<NAMESPACE>/sa/<SA>` → NAMESPACE, as Istio's `getNamespace`.
fn san_namespace(principal: &str) -> Option<&str> {
    const KEY: &str = "/ns/";
    let start = principal.find(KEY)? + KEY.len();
    let rest = principal.get(start..)?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The peer's namespace: from its SAN when it has one, else from its metadata, else "".
fn peer_namespace(f: &ConnectionFacts) -> &str {
    match san_namespace(&f.peer_principal) {
        Some(ns) if !ns.is_empty() => ns,
        _ => f.peer.as_ref().map_or("", |p| p.namespace.as_str()),
    }
}

/// (service_host, service_host_name) from the cluster, as Istio derives them for TCP.
fn service_names(f: &ConnectionFacts) -> (&str, &str) {
    if PASSTHROUGH_CLUSTERS.contains(&f.cluster_name.as_str()) {
        return ("", &f.cluster_name);
    }
    let Some(service) = &f.service else {
        return ("", "");
    };
    let host = service.host.as_str();
    let name = if service.name.is_empty() {
        host.split('.').next().unwrap_or(host)
    } else {
        service.name.as_str()
    };
    (host, name)
}

/// `value` unless empty, else `default`.
fn or(value: &str, default: &str) -> String {
    if value.is_empty() { default } else { value }.to_string()
}

/// A peer field, `default` when there is no peer or the field is empty.
fn peer_or(
    peer: Option<&WorkloadMetadata>,
    field: fn(&WorkloadMetadata) -> &str,
    d: &str,
) -> String {
    or(peer.map_or("", field), d)
}

fn workload(w: &WorkloadMetadata) -> &str {
    &w.workload_name
}
fn canonical_name(w: &WorkloadMetadata) -> &str {
    &w.canonical_name
}
fn canonical_revision(w: &WorkloadMetadata) -> &str {
    &w.canonical_revision
}
fn app(w: &WorkloadMetadata) -> &str {
    &w.app_name
}
fn version(w: &WorkloadMetadata) -> &str {
    &w.app_version
}
fn cluster(w: &WorkloadMetadata) -> &str {
    &w.cluster_id
}

/// The 23 Istio labels of a connection, in [`STANDARD_LABELS`] order.
pub fn istio_labels(f: &ConnectionFacts) -> Labels {
    let peer = f.peer.as_ref();
    let local = &f.local;
    let peer_ns = peer_namespace(f);
    let (service_host, service_host_name) = service_names(f);
    let flags = or(&f.response_flags, "-");
    match f.reporter {
        Reporter::Destination => {
            let mutual = !f.peer_principal.is_empty() && !f.local_principal.is_empty();
            vec![
                (REPORTER, f.reporter.as_str().to_string()),
                (SOURCE_WORKLOAD, peer_or(peer, workload, UNKNOWN)),
                (
                    SOURCE_CANONICAL_SERVICE,
                    peer_or(peer, canonical_name, UNKNOWN),
                ),
                (
                    SOURCE_CANONICAL_REVISION,
                    peer_or(peer, canonical_revision, LATEST),
                ),
                (SOURCE_WORKLOAD_NAMESPACE, or(peer_ns, UNKNOWN)),
                (SOURCE_PRINCIPAL, or(&f.peer_principal, UNKNOWN)),
                (SOURCE_APP, peer_or(peer, app, UNKNOWN)),
                (SOURCE_VERSION, peer_or(peer, version, UNKNOWN)),
                (SOURCE_CLUSTER, peer_or(peer, cluster, UNKNOWN)),
                (DESTINATION_WORKLOAD, local.workload_name.clone()),
                (DESTINATION_WORKLOAD_NAMESPACE, local.namespace.clone()),
                (DESTINATION_PRINCIPAL, or(&f.local_principal, UNKNOWN)),
                (DESTINATION_APP, local.app_name.clone()),
                (DESTINATION_VERSION, local.app_version.clone()),
                (DESTINATION_SERVICE, or(service_host, &local.canonical_name)),
                (DESTINATION_CANONICAL_SERVICE, local.canonical_name.clone()),
                (
                    DESTINATION_CANONICAL_REVISION,
                    local.canonical_revision.clone(),
                ),
                (
                    DESTINATION_SERVICE_NAME,
                    or(service_host_name, &local.canonical_name),
                ),
                (DESTINATION_SERVICE_NAMESPACE, local.namespace.clone()),
                (DESTINATION_CLUSTER, local.cluster_id.clone()),
                (REQUEST_PROTOCOL, "tcp".to_string()),
                (RESPONSE_FLAGS, flags),
                (
                    CONNECTION_SECURITY_POLICY,
                    if mutual { "mutual_tls" } else { "none" }.to_string(),
                ),
            ]
        }
        Reporter::Source => vec![
            (REPORTER, f.reporter.as_str().to_string()),
            (SOURCE_WORKLOAD, local.workload_name.clone()),
            (SOURCE_CANONICAL_SERVICE, local.canonical_name.clone()),
            (SOURCE_CANONICAL_REVISION, local.canonical_revision.clone()),
            (SOURCE_WORKLOAD_NAMESPACE, local.namespace.clone()),
            (SOURCE_PRINCIPAL, or(&f.local_principal, UNKNOWN)),
            (SOURCE_APP, local.app_name.clone()),
            (SOURCE_VERSION, local.app_version.clone()),
            (SOURCE_CLUSTER, local.cluster_id.clone()),
            (DESTINATION_WORKLOAD, peer_or(peer, workload, UNKNOWN)),
            (DESTINATION_WORKLOAD_NAMESPACE, or(peer_ns, UNKNOWN)),
            (DESTINATION_PRINCIPAL, or(&f.peer_principal, UNKNOWN)),
            (DESTINATION_APP, peer_or(peer, app, UNKNOWN)),
            (DESTINATION_VERSION, peer_or(peer, version, UNKNOWN)),
            (DESTINATION_SERVICE, or(service_host, UNKNOWN)),
            (
                DESTINATION_CANONICAL_SERVICE,
                peer_or(peer, canonical_name, UNKNOWN),
            ),
            (
                DESTINATION_CANONICAL_REVISION,
                peer_or(peer, canonical_revision, LATEST),
            ),
            (DESTINATION_SERVICE_NAME, or(service_host_name, UNKNOWN)),
            (DESTINATION_SERVICE_NAMESPACE, or(peer_ns, UNKNOWN)),
            (DESTINATION_CLUSTER, peer_or(peer, cluster, UNKNOWN)),
            (REQUEST_PROTOCOL, "tcp".to_string()),
            (RESPONSE_FLAGS, flags),
            (CONNECTION_SECURITY_POLICY, UNKNOWN.to_string()),
        ],
    }
}

/// (source, destination) workloads: the peer is the source on the server, the destination on
/// the client.
fn sides(f: &ConnectionFacts) -> (Option<&WorkloadMetadata>, Option<&WorkloadMetadata>) {
    match f.reporter {
        Reporter::Destination => (f.peer.as_ref(), Some(&f.local)),
        Reporter::Source => (Some(&f.local), f.peer.as_ref()),
    }
}

/// The value of attribute `name` for a connection, `None` for a name outside the vocabulary.
///
/// Standard label names give their value in `labels` (normally [`istio_labels`] of `f`; computed
/// here when absent). The other attributes give `unknown` when the value is missing or empty:
/// `source_labels.<key>` / `destination_labels.<key>`, `source_workload_type` /
/// `destination_workload_type` (`deployment`, `pod`, `job`, `cronjob`), `source_instance` /
/// `destination_instance` (pod name), `listener_direction` (`inbound` / `outbound`) and
/// `upstream_cluster`.
pub fn attribute(f: &ConnectionFacts, labels: &Labels, name: &str) -> Option<String> {
    if is_standard_label(name) {
        if let Some((_, v)) = labels.iter().find(|(n, _)| *n == name) {
            return Some(v.clone());
        }
        return istio_labels(f)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v);
    }
    let (source, destination) = sides(f);
    let text = |s: Option<&str>| or(s.unwrap_or_default(), UNKNOWN);
    if let Some(key) = name.strip_prefix(SOURCE_LABELS_PREFIX) {
        return (!key.is_empty())
            .then(|| text(source.and_then(|w| w.labels.get(key)).map(String::as_str)));
    }
    if let Some(key) = name.strip_prefix(DESTINATION_LABELS_PREFIX) {
        return (!key.is_empty()).then(|| {
            text(
                destination
                    .and_then(|w| w.labels.get(key))
                    .map(String::as_str),
            )
        });
    }
    let kind = |w: Option<&WorkloadMetadata>| text(w.and_then(|w| w.workload_type.as_str()));
    let instance = |w: Option<&WorkloadMetadata>| text(w.map(|w| w.instance_name.as_str()));
    Some(match name {
        LISTENER_DIRECTION => match f.reporter {
            Reporter::Destination => "inbound".to_string(),
            Reporter::Source => "outbound".to_string(),
        },
        UPSTREAM_CLUSTER => text(Some(&f.cluster_name)),
        SOURCE_WORKLOAD_TYPE => kind(source),
        DESTINATION_WORKLOAD_TYPE => kind(destination),
        SOURCE_INSTANCE => instance(source),
        DESTINATION_INSTANCE => instance(destination),
        _ => return None,
    })
}

/// True when [`attribute`] knows `name` (the `*_labels.<key>` forms accept any non-empty key).
pub fn is_known_attribute(name: &str) -> bool {
    if is_standard_label(name) {
        return true;
    }
    if let Some(key) = name
        .strip_prefix(SOURCE_LABELS_PREFIX)
        .or_else(|| name.strip_prefix(DESTINATION_LABELS_PREFIX))
    {
        return !key.is_empty();
    }
    matches!(
        name,
        LISTENER_DIRECTION
            | UPSTREAM_CLUSTER
            | SOURCE_WORKLOAD_TYPE
            | DESTINATION_WORKLOAD_TYPE
            | SOURCE_INSTANCE
            | DESTINATION_INSTANCE
    )
}

#[cfg(test)]
#[path = "labels_tests.rs"]
mod tests;
