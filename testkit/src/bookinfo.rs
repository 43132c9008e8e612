//! Bookinfo's ratings-v2 → mongodb, as Istio's TCP metrics task deploys it: node metadata,
//! ids and the service, for the real mesh and the demo.

#![forbid(unsafe_code)]

/// Node metadata of the client workload (Bookinfo's ratings-v2), as Istio's agent sets it.
pub const RATINGS_NODE_METADATA: &str = r#"{"NAME": "ratings-v2-5d7c8b9f4-x2k9p", "NAMESPACE": "default", "WORKLOAD_NAME": "ratings-v2", "CLUSTER_ID": "Kubernetes", "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v2", "LABELS": {"app": "ratings", "version": "v2", "service.istio.io/canonical-name": "ratings-v2", "service.istio.io/canonical-revision": "v2"}}"#;
/// Node id of the client sidecar.
pub const RATINGS_NODE_ID: &str =
    "sidecar~10.44.0.11~ratings-v2-5d7c8b9f4-x2k9p.default~default.svc.cluster.local";
/// Node metadata of the server workload (Bookinfo's mongodb-v1).
pub const MONGODB_NODE_METADATA: &str = r#"{"NAME": "mongodb-v1-6b8f9c7d5-q7w4e", "NAMESPACE": "default", "WORKLOAD_NAME": "mongodb-v1", "CLUSTER_ID": "Kubernetes", "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/mongodb-v1", "LABELS": {"app": "mongodb", "version": "v1", "service.istio.io/canonical-name": "mongodb", "service.istio.io/canonical-revision": "v1"}}"#;
/// Node id of the server sidecar.
pub const MONGODB_NODE_ID: &str =
    "sidecar~10.44.0.12~mongodb-v1-6b8f9c7d5-q7w4e.default~default.svc.cluster.local";
/// The service the client calls.
pub const SERVICE_HOST: &str = "mongodb.default.svc.cluster.local";
pub const SERVICE_NAME: &str = "mongodb";
pub const SERVICE_NAMESPACE: &str = "default";
pub const SERVICE_PORT: u16 = 27017;
/// The client's view of the server endpoint (`istio.workload` endpoint metadata).
pub const MONGODB_ENDPOINT_WORKLOAD: &str = "mongodb-v1;default;mongodb;v1;Kubernetes";

/// Istio's 23 labels for ratings-v2 → mongodb-v1, in the order Istio's series list them (tools
/// that compare series as text depend on it), with the values that depend on the reporter and
/// the transport passed in.
pub fn istio_labels<'a>(
    reporter: &'a str,
    source_principal: &'a str,
    destination_principal: &'a str,
    connection_security_policy: &'a str,
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("reporter", reporter),
        ("source_workload", "ratings-v2"),
        ("source_canonical_service", "ratings-v2"),
        ("source_canonical_revision", "v2"),
        ("source_workload_namespace", "default"),
        ("source_principal", source_principal),
        ("source_app", "ratings"),
        ("source_version", "v2"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "mongodb-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", destination_principal),
        ("destination_app", "mongodb"),
        ("destination_version", "v1"),
        ("destination_service", SERVICE_HOST),
        ("destination_canonical_service", "mongodb"),
        ("destination_canonical_revision", "v1"),
        ("destination_service_name", SERVICE_NAME),
        ("destination_service_namespace", SERVICE_NAMESPACE),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", connection_security_policy),
    ]
}
