//! Tests for [`super::istio_labels`] and the attribute vocabulary, against istio_stats.cc.

use super::*;
use crate::logic::stats::test_fixtures::*;

fn value<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no label {name}"))
}

fn pairs(labels: &Labels) -> Vec<(&str, &str)> {
    labels.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[test]
fn server_labels_in_istio_order() {
    let labels = istio_labels(&server_facts());
    assert_eq!(
        pairs(&labels),
        vec![
            ("reporter", "destination"),
            ("source_workload", "ratings-v2"),
            ("source_canonical_service", "ratings"),
            ("source_canonical_revision", "v2"),
            ("source_workload_namespace", "default"),
            ("source_principal", RATINGS_SAN),
            ("source_app", "ratings"),
            ("source_version", "v2"),
            ("source_cluster", "Kubernetes"),
            ("destination_workload", "mongodb-v1"),
            ("destination_workload_namespace", "default"),
            ("destination_principal", MONGODB_SAN),
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
            ("connection_security_policy", "mutual_tls"),
        ]
    );
    let names: Vec<&str> = labels.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, STANDARD_LABELS);
}

#[test]
fn client_labels_in_istio_order() {
    let labels = istio_labels(&client_facts());
    assert_eq!(
        pairs(&labels),
        vec![
            ("reporter", "source"),
            ("source_workload", "ratings-v2"),
            ("source_canonical_service", "ratings"),
            ("source_canonical_revision", "v2"),
            ("source_workload_namespace", "default"),
            ("source_principal", RATINGS_SAN),
            ("source_app", "ratings"),
            ("source_version", "v2"),
            ("source_cluster", "Kubernetes"),
            ("destination_workload", "mongodb-v1"),
            ("destination_workload_namespace", "default"),
            ("destination_principal", MONGODB_SAN),
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
            ("connection_security_policy", "unknown"),
        ]
    );
}

#[test]
fn server_without_peer_uses_istio_defaults_and_keeps_local_as_is() {
    let mut f = server_facts();
    f.peer = None;
    f.peer_principal.clear();
    f.local_principal.clear();
    f.service = None;
    f.local.app_name.clear();
    f.local.cluster_id.clear();
    let l = istio_labels(&f);
    for name in [
        SOURCE_WORKLOAD,
        SOURCE_CANONICAL_SERVICE,
        SOURCE_WORKLOAD_NAMESPACE,
        SOURCE_PRINCIPAL,
        SOURCE_APP,
        SOURCE_VERSION,
        SOURCE_CLUSTER,
        DESTINATION_PRINCIPAL,
    ] {
        assert_eq!(value(&l, name), "unknown", "{name}");
    }
    assert_eq!(value(&l, SOURCE_CANONICAL_REVISION), "latest");
    // Local fields are not defaulted: empty stays empty.
    assert_eq!(value(&l, DESTINATION_APP), "");
    assert_eq!(value(&l, DESTINATION_CLUSTER), "");
    // No service: the local canonical name stands in.
    assert_eq!(value(&l, DESTINATION_SERVICE), "mongodb");
    assert_eq!(value(&l, DESTINATION_SERVICE_NAME), "mongodb");
    assert_eq!(value(&l, CONNECTION_SECURITY_POLICY), "none");
}

#[test]
fn peer_with_empty_fields_is_defaulted_field_by_field() {
    let mut f = server_facts();
    if let Some(p) = f.peer.as_mut() {
        p.workload_name.clear();
        p.canonical_revision.clear();
    }
    let l = istio_labels(&f);
    assert_eq!(value(&l, SOURCE_WORKLOAD), "unknown");
    assert_eq!(value(&l, SOURCE_CANONICAL_REVISION), "latest");
    assert_eq!(value(&l, SOURCE_APP), "ratings");
}

#[test]
fn client_without_peer_uses_istio_defaults() {
    let mut f = client_facts();
    f.peer = None;
    f.peer_principal.clear();
    f.local_principal.clear();
    f.service = None;
    let l = istio_labels(&f);
    for name in [
        SOURCE_PRINCIPAL,
        DESTINATION_WORKLOAD,
        DESTINATION_WORKLOAD_NAMESPACE,
        DESTINATION_PRINCIPAL,
        DESTINATION_APP,
        DESTINATION_VERSION,
        DESTINATION_SERVICE,
        DESTINATION_CANONICAL_SERVICE,
        DESTINATION_SERVICE_NAME,
        DESTINATION_SERVICE_NAMESPACE,
        DESTINATION_CLUSTER,
        CONNECTION_SECURITY_POLICY,
    ] {
        assert_eq!(value(&l, name), "unknown", "{name}");
    }
    assert_eq!(value(&l, DESTINATION_CANONICAL_REVISION), "latest");
    assert_eq!(value(&l, SOURCE_WORKLOAD), "ratings-v2");
}

#[test]
fn san_namespace_takes_precedence() {
    let ns = |san: &str, peer_ns: &str| {
        let mut f = client_facts();
        f.peer_principal = san.into();
        if let Some(p) = f.peer.as_mut() {
            p.namespace = peer_ns.into();
        }
        let l = istio_labels(&f);
        assert_eq!(
            value(&l, DESTINATION_WORKLOAD_NAMESPACE),
            value(&l, DESTINATION_SERVICE_NAMESPACE)
        );
        value(&l, DESTINATION_WORKLOAD_NAMESPACE).to_string()
    };
    assert_eq!(ns("spiffe://td/ns/prod/sa/db", "default"), "prod");
    assert_eq!(ns("spiffe://td/ns/prod", "default"), "prod");
    assert_eq!(ns("spiffe://td/sa/db", "default"), "default");
    assert_eq!(ns("spiffe://td/ns//sa/db", "default"), "default");
    assert_eq!(ns("", "default"), "default");
    assert_eq!(ns("", ""), "unknown");
    let mut f = server_facts();
    f.peer_principal = "spiffe://td/ns/prod/sa/ratings".into();
    assert_eq!(value(&istio_labels(&f), SOURCE_WORKLOAD_NAMESPACE), "prod");
    f.peer = None;
    assert_eq!(value(&istio_labels(&f), SOURCE_WORKLOAD_NAMESPACE), "prod");
}

#[test]
fn passthrough_and_blackhole_clusters_name_the_service() {
    for cluster in ["BlackHoleCluster", "PassthroughCluster"] {
        let mut f = client_facts();
        f.cluster_name = cluster.into();
        let l = istio_labels(&f);
        assert_eq!(value(&l, DESTINATION_SERVICE_NAME), cluster);
        assert_eq!(value(&l, DESTINATION_SERVICE), "unknown");
    }
    for cluster in [
        "InboundPassthroughCluster",
        "InboundPassthroughClusterIpv4",
        "InboundPassthroughClusterIpv6",
    ] {
        let mut f = server_facts();
        f.cluster_name = cluster.into();
        let l = istio_labels(&f);
        assert_eq!(value(&l, DESTINATION_SERVICE_NAME), cluster);
        assert_eq!(value(&l, DESTINATION_SERVICE), "mongodb");
    }
}

#[test]
fn service_name_falls_back_to_the_host_label() {
    let mut f = client_facts();
    if let Some(s) = f.service.as_mut() {
        s.name.clear();
        s.host = "reviews.bookinfo.svc.cluster.local".into();
    }
    let l = istio_labels(&f);
    assert_eq!(value(&l, DESTINATION_SERVICE_NAME), "reviews");
    assert_eq!(
        value(&l, DESTINATION_SERVICE),
        "reviews.bookinfo.svc.cluster.local"
    );
}

#[test]
fn security_policy() {
    let policy =
        |f: &ConnectionFacts| value(&istio_labels(f), CONNECTION_SECURITY_POLICY).to_string();
    let mut f = server_facts();
    assert_eq!(policy(&f), "mutual_tls");
    f.local_principal.clear();
    assert_eq!(policy(&f), "none");
    let mut f = server_facts();
    f.peer_principal.clear();
    assert_eq!(policy(&f), "none");
    assert_eq!(policy(&client_facts()), "unknown");
}

#[test]
fn response_flags_pass_through() {
    let mut f = server_facts();
    f.response_flags = "UF,URX".into();
    assert_eq!(value(&istio_labels(&f), RESPONSE_FLAGS), "UF,URX");
    f.response_flags.clear();
    assert_eq!(value(&istio_labels(&f), RESPONSE_FLAGS), "-");
}

#[test]
fn attribute_vocabulary() {
    for f in [server_facts(), client_facts()] {
        let labels = istio_labels(&f);
        let a = |name: &str| attribute(&f, &labels, name);
        for (name, v) in &labels {
            assert_eq!(a(name).as_deref(), Some(v.as_str()), "{name}");
        }
        // Sides swap with the reporter; the workloads' roles do not.
        assert_eq!(a("source_labels.team").as_deref(), Some("reviews"));
        assert_eq!(a("destination_labels.team").as_deref(), Some("db"));
        assert_eq!(a("destination_labels.absent").as_deref(), Some("unknown"));
        assert_eq!(a("source_workload_type").as_deref(), Some("deployment"));
        assert_eq!(a("source_instance").as_deref(), Some("ratings-v2-7d9f8"));
        assert_eq!(
            a("destination_instance").as_deref(),
            Some("mongodb-v1-7d9f8")
        );
        assert_eq!(
            a("upstream_cluster").as_deref(),
            Some(f.cluster_name.as_str())
        );
        assert_eq!(a("nonsense"), None);
        assert_eq!(a("source_labels."), None);
        assert_eq!(a(""), None);
    }
    let f = server_facts();
    assert_eq!(
        attribute(&f, &Vec::new(), "listener_direction").as_deref(),
        Some("inbound")
    );
    assert_eq!(
        attribute(&client_facts(), &Vec::new(), "listener_direction").as_deref(),
        Some("outbound")
    );
    // Labels not computed by the caller are computed on demand.
    assert_eq!(
        attribute(&f, &Vec::new(), "source_app").as_deref(),
        Some("ratings")
    );
}

#[test]
fn attributes_of_a_missing_peer_are_unknown() {
    let mut f = server_facts();
    f.peer = None;
    f.local.workload_type = crate::logic::workload::WorkloadType::Unknown;
    let labels = istio_labels(&f);
    let a = |name: &str| attribute(&f, &labels, name);
    assert_eq!(a("source_labels.team").as_deref(), Some("unknown"));
    assert_eq!(a("source_workload_type").as_deref(), Some("unknown"));
    assert_eq!(a("source_instance").as_deref(), Some("unknown"));
    assert_eq!(a("destination_workload_type").as_deref(), Some("unknown"));
    f.cluster_name.clear();
    assert_eq!(
        attribute(&f, &labels, "upstream_cluster").as_deref(),
        Some("unknown")
    );
}

#[test]
fn known_attributes() {
    for name in STANDARD_LABELS {
        assert!(is_known_attribute(name), "{name}");
    }
    for name in [
        "source_labels.app",
        "destination_labels.service.istio.io/canonical-name",
        "listener_direction",
        "upstream_cluster",
        "source_workload_type",
        "destination_workload_type",
        "source_instance",
        "destination_instance",
    ] {
        assert!(is_known_attribute(name), "{name}");
    }
    for name in [
        "",
        "source_labels.",
        "destination_labels.",
        "source",
        "request.host",
    ] {
        assert!(!is_known_attribute(name), "{name}");
    }
}

#[test]
fn reporter_values() {
    assert_eq!(Reporter::Source.as_str(), "source");
    assert_eq!(Reporter::Destination.as_str(), "destination");
}
