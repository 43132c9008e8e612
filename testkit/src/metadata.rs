//! Node, endpoint and cluster metadata in the encodings Envoy 1.40 hands to Wasm: the node's
//! `xds.node.metadata` as a pairs blob (nested maps as nested blobs), endpoint and cluster
//! metadata as serialized `envoy.config.core.v3.Metadata`, numbers as 8 bytes little-endian.

#![forbid(unsafe_code)]

use istio_tcp_telemetry::logic::endpoint::{
    ISTIO, SERVICES, TLS_MODE, TRANSPORT_SOCKET_MATCH, WORKLOAD,
};
use istio_tcp_telemetry::logic::pairs::encode_pairs;
use istio_tcp_telemetry::logic::workload::{string_value, struct_value};
use istio_tcp_telemetry::proto::envoy_core::Metadata;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// A Kubernetes workload as Istio describes it in node metadata.
#[derive(Debug, Clone)]
pub struct Workload {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    /// `service.istio.io/canonical-name`.
    pub canonical: String,
    pub cluster: String,
    /// The service account, for SPIFFE principals.
    pub service_account: String,
}

impl Workload {
    /// Workload `workload` (e.g. `ratings-v2`) of app `app`, canonical service `canonical`,
    /// version `version`, in `default`.
    pub fn new(workload: &str, app: &str, canonical: &str, version: &str) -> Self {
        Workload {
            workload: workload.into(),
            namespace: "default".into(),
            app: app.into(),
            version: version.into(),
            canonical: canonical.into(),
            cluster: "Kubernetes".into(),
            service_account: format!("bookinfo-{app}"),
        }
    }

    /// Bookinfo's ratings-v2, the client of Istio's TCP metrics task.
    pub fn ratings() -> Self {
        Workload::new("ratings-v2", "ratings", "ratings-v2", "v2")
    }

    /// The MongoDB of Istio's TCP metrics task.
    pub fn mongodb() -> Self {
        Workload::new("mongodb-v1", "mongodb", "mongodb", "v1")
    }

    pub fn node_id(&self) -> String {
        format!(
            "sidecar~10.0.0.1~{}-7d9f8.{}~{}.svc.cluster.local",
            self.workload, self.namespace, self.namespace
        )
    }

    pub fn spiffe(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// `xds.node.metadata`, pairs-encoded.
    pub fn node_metadata(&self) -> Vec<u8> {
        let labels = encode_pairs(&[
            ("app", self.app.as_str()),
            ("version", self.version.as_str()),
            ("service.istio.io/canonical-name", self.canonical.as_str()),
            ("service.istio.io/canonical-revision", self.version.as_str()),
        ]);
        let name = format!("{}-7d9f8", self.workload);
        let owner = format!(
            "kubernetes://apis/apps/v1/namespaces/{}/deployments/{}",
            self.namespace, self.workload
        );
        encode_pairs::<&[u8], &[u8]>(&[
            (b"NAME", name.as_bytes()),
            (b"NAMESPACE", self.namespace.as_bytes()),
            (b"WORKLOAD_NAME", self.workload.as_bytes()),
            (b"CLUSTER_ID", self.cluster.as_bytes()),
            (b"OWNER", owner.as_bytes()),
            (b"LABELS", &labels),
        ])
    }

    /// The endpoint's `istio.workload` encoding.
    pub fn endpoint_encoding(&self) -> String {
        format!(
            "{};{};{};{};{}",
            self.workload, self.namespace, self.canonical, self.version, self.cluster
        )
    }
}

/// `xds.upstream_host_metadata` of an endpoint: `tlsMode: istio` when it is a mesh endpoint,
/// and its `istio.workload` when given.
pub fn endpoint_metadata(mesh: bool, workload: Option<&Workload>) -> Vec<u8> {
    let mut md = Metadata::default();
    let mut tsm = Struct::default();
    let mode = if mesh { "istio" } else { "disabled" };
    tsm.fields.insert(TLS_MODE.into(), string_value(mode));
    md.filter_metadata
        .insert(TRANSPORT_SOCKET_MATCH.into(), tsm);
    if let Some(w) = workload {
        let mut istio = Struct::default();
        istio
            .fields
            .insert(WORKLOAD.into(), string_value(&w.endpoint_encoding()));
        md.filter_metadata.insert(ISTIO.into(), istio);
    }
    md.encode_to_vec()
}

/// `xds.cluster_metadata` of a cluster for `service` (`istio.services[0]`).
pub fn cluster_metadata(host: &str, name: &str, namespace: &str) -> Vec<u8> {
    let mut service = Struct::default();
    for (k, v) in [("host", host), ("name", name), ("namespace", namespace)] {
        service.fields.insert(k.into(), string_value(v));
    }
    let mut istio = Struct::default();
    istio.fields.insert(
        SERVICES.into(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![struct_value(service)],
            })),
        },
    );
    let mut md = Metadata::default();
    md.filter_metadata.insert(ISTIO.into(), istio);
    md.encode_to_vec()
}

/// A number property (`xds.listener_direction`, `response.flags`).
pub fn u64_property(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// `xds.listener_direction` values.
pub const INBOUND: u64 = 1;
pub const OUTBOUND: u64 = 2;
