//! The workload metadata model: what one side of a connection knows about a workload.
//!
//! It reads three sources and writes two shapes:
//! - in: an exchange frame's `x-envoy-peer-metadata` Struct, in the Istio 1.24+ shape (NAME,
//!   NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, IDENTITY, OWNER, REGION, AVAILABILITY_ZONE and a small
//!   LABELS) or the 1.8–1.23 shape (the whole node metadata: full LABELS, OWNER,
//!   PLATFORM_METADATA, APP_CONTAINERS, MESH_ID, ISTIO_VERSION, …);
//! - in: the local node's `xds.node.metadata`, pairs-encoded ([`crate::logic::pairs`]);
//! - in: an endpoint's `istio.workload` string `workload;namespace;canonical;revision;cluster`;
//! - out: the 1.24+ exchange shape we send ([`WorkloadMetadata::to_exchange_struct`]);
//! - out: the filter-state Struct other filters read, with Istio's field names
//!   ([`WorkloadMetadata::to_peer_struct`], read back by [`WorkloadMetadata::from_peer_struct`]).

use std::collections::BTreeMap;

use prost_types::{value::Kind, ListValue, Struct, Value};

use super::pairs::NodeValue;

// Node metadata fields (Istio's names).
pub const NAME: &str = "NAME";
pub const NAMESPACE: &str = "NAMESPACE";
pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
pub const CLUSTER_ID: &str = "CLUSTER_ID";
pub const IDENTITY: &str = "IDENTITY";
pub const OWNER: &str = "OWNER";
pub const REGION: &str = "REGION";
pub const AVAILABILITY_ZONE: &str = "AVAILABILITY_ZONE";
pub const LABELS: &str = "LABELS";
pub const MESH_ID: &str = "MESH_ID";
pub const ISTIO_VERSION: &str = "ISTIO_VERSION";
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
pub const PLATFORM_METADATA: &str = "PLATFORM_METADATA";
pub const APP_CONTAINERS: &str = "APP_CONTAINERS";
pub const INSTANCE_IPS: &str = "INSTANCE_IPS";

// Labels with a meaning.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";
pub const APP_LABEL: &str = "app";
pub const APP_QUALIFIED_LABEL: &str = "app.kubernetes.io/name";
pub const VERSION_LABEL: &str = "version";
pub const VERSION_QUALIFIED_LABEL: &str = "app.kubernetes.io/version";

const OWNER_PREFIX: &str = "kubernetes://apis/apps/v1/namespaces/";

/// The kind of object that owns a workload, as Istio derives it from OWNER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkloadType {
    #[default]
    Unknown,
    Pod,
    Deployment,
    Job,
    CronJob,
}

impl WorkloadType {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            WorkloadType::Unknown => None,
            WorkloadType::Pod => Some("pod"),
            WorkloadType::Deployment => Some("deployment"),
            WorkloadType::Job => Some("job"),
            WorkloadType::CronJob => Some("cronjob"),
        }
    }

    pub fn from_suffix(suffix: &str) -> Self {
        match suffix {
            "pod" => WorkloadType::Pod,
            "deployment" => WorkloadType::Deployment,
            "job" => WorkloadType::Job,
            "cronjob" => WorkloadType::CronJob,
            _ => WorkloadType::Unknown,
        }
    }

    /// `…/namespaces/<ns>/deployments/<workload>` → Deployment, as Istio's `parseOwner`.
    pub fn from_owner(owner: &str, workload: &str) -> Self {
        let Some(rest) = owner.strip_suffix(workload) else {
            return WorkloadType::Unknown;
        };
        let Some(kind_path) = rest.strip_suffix("s/") else {
            return WorkloadType::Unknown;
        };
        let kind = kind_path.rsplit('/').next().unwrap_or_default();
        WorkloadType::from_suffix(kind)
    }
}

/// One workload's metadata. Empty strings mean "not known".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadMetadata {
    /// Pod (instance) name: NAME.
    pub instance_name: String,
    pub namespace: String,
    pub workload_name: String,
    pub cluster_id: String,
    /// SPIFFE identity: IDENTITY.
    pub identity: String,
    pub owner: String,
    pub workload_type: WorkloadType,
    pub region: String,
    pub zone: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub app_name: String,
    pub app_version: String,
    /// Every label received or configured, including the four above.
    pub labels: BTreeMap<String, String>,
    // Fields only the 1.8–1.23 shape carries; kept so nothing a peer sent is silently dropped.
    pub mesh_id: String,
    pub istio_version: String,
    pub service_account: String,
    pub platform_metadata: BTreeMap<String, String>,
    pub app_containers: Vec<String>,
    pub instance_ips: Vec<String>,
}

impl WorkloadMetadata {
    /// Reads an exchange frame's metadata Struct, in either Istio shape.
    pub fn from_exchange_struct(metadata: &Struct) -> Self {
        let mut w = WorkloadMetadata::default();
        for (key, value) in &metadata.fields {
            let text = || string_of(value).to_string();
            match key.as_str() {
                NAME => w.instance_name = text(),
                NAMESPACE => w.namespace = text(),
                WORKLOAD_NAME => w.workload_name = text(),
                CLUSTER_ID => w.cluster_id = text(),
                IDENTITY => w.identity = text(),
                OWNER => w.owner = text(),
                REGION => w.region = text(),
                AVAILABILITY_ZONE => w.zone = text(),
                MESH_ID => w.mesh_id = text(),
                ISTIO_VERSION => w.istio_version = text(),
                SERVICE_ACCOUNT => w.service_account = text(),
                LABELS => w.labels = string_map_of(value),
                PLATFORM_METADATA => w.platform_metadata = string_map_of(value),
                APP_CONTAINERS => w.app_containers = string_list_of(value),
                INSTANCE_IPS => w.instance_ips = string_list_of(value),
                _ => {}
            }
        }
        w.derive_from_labels_and_owner();
        w
    }

    /// Reads the local node's metadata from the pairs tree of `xds.node.metadata`.
    pub fn from_node_metadata(node: &NodeValue) -> Self {
        let text = |key: &str| node.get_str(key).unwrap_or_default().to_string();
        let map = |key: &str| -> BTreeMap<String, String> {
            node.get(key)
                .and_then(NodeValue::as_map)
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let list = |key: &str| -> Vec<String> {
            match node.get(key) {
                Some(v @ NodeValue::Map(_)) => v
                    .as_list()
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                Some(v) => split_list(v.as_str().unwrap_or_default()),
                None => Vec::new(),
            }
        };
        let mut w = WorkloadMetadata {
            instance_name: text(NAME),
            namespace: text(NAMESPACE),
            workload_name: text(WORKLOAD_NAME),
            cluster_id: text(CLUSTER_ID),
            identity: text(IDENTITY),
            owner: text(OWNER),
            region: text(REGION),
            zone: text(AVAILABILITY_ZONE),
            mesh_id: text(MESH_ID),
            istio_version: text(ISTIO_VERSION),
            service_account: text(SERVICE_ACCOUNT),
            labels: map(LABELS),
            platform_metadata: map(PLATFORM_METADATA),
            app_containers: list(APP_CONTAINERS),
            instance_ips: list(INSTANCE_IPS),
            ..Default::default()
        };
        w.derive_from_labels_and_owner();
        w
    }

    /// Reads an endpoint's `istio.workload` metadata:
    /// `workload;namespace;canonical-name;canonical-revision;cluster` (Istio needs all five parts).
    pub fn from_endpoint_encoding(encoded: &str) -> Option<Self> {
        let parts: Vec<&str> = encoded.split(';').collect();
        if parts.len() < 5 {
            return None;
        }
        Some(WorkloadMetadata {
            workload_name: parts[0].to_string(),
            namespace: parts[1].to_string(),
            canonical_name: parts[2].to_string(),
            canonical_revision: parts[3].to_string(),
            cluster_id: parts[4].to_string(),
            ..Default::default()
        })
    }

    fn derive_from_labels_and_owner(&mut self) {
        let label = |k: &str| self.labels.get(k).cloned().unwrap_or_default();
        self.canonical_name = label(CANONICAL_NAME_LABEL);
        self.canonical_revision = label(CANONICAL_REVISION_LABEL);
        self.app_name = first_non_empty(label(APP_QUALIFIED_LABEL), label(APP_LABEL));
        self.app_version = first_non_empty(label(VERSION_QUALIFIED_LABEL), label(VERSION_LABEL));
        self.workload_type = WorkloadType::from_owner(&self.owner, &self.workload_name);
    }

    /// OWNER as Istio writes it: from the type and workload when the type is known, else as given.
    pub fn owner_uri(&self) -> String {
        match self.workload_type.as_str() {
            Some(kind) => format!(
                "{OWNER_PREFIX}{}/{kind}s/{}",
                self.namespace, self.workload_name
            ),
            None => self.owner.clone(),
        }
    }

    /// The Istio 1.24+ exchange shape. LABELS holds the canonical name and revision, app and
    /// version, plus the `additional_labels` this node carries.
    pub fn to_exchange_struct(&self, additional_labels: &[String]) -> Struct {
        let mut s = Struct::default();
        put(&mut s, NAME, &self.instance_name);
        put(&mut s, NAMESPACE, &self.namespace);
        put(&mut s, WORKLOAD_NAME, &self.workload_name);
        put(&mut s, CLUSTER_ID, &self.cluster_id);
        put(&mut s, IDENTITY, &self.identity);
        let mut labels = Struct::default();
        put(&mut labels, CANONICAL_NAME_LABEL, &self.canonical_name);
        put(
            &mut labels,
            CANONICAL_REVISION_LABEL,
            &self.canonical_revision,
        );
        put(&mut labels, APP_LABEL, &self.app_name);
        put(&mut labels, VERSION_LABEL, &self.app_version);
        for key in additional_labels {
            if let Some(v) = self.labels.get(key) {
                put(&mut labels, key, v);
            }
        }
        s.fields.insert(LABELS.to_string(), struct_value(labels));
        put(&mut s, OWNER, &self.owner_uri());
        put(&mut s, REGION, &self.region);
        put(&mut s, AVAILABILITY_ZONE, &self.zone);
        s
    }

    /// The filter-state Struct for `downstream_peer` / `upstream_peer`, with the field names of
    /// Istio's `WorkloadMetadataObject` (empty values left out).
    pub fn to_peer_struct(&self) -> Struct {
        let mut s = Struct::default();
        if let Some(kind) = self.workload_type.as_str() {
            put(&mut s, peer_field::TYPE, kind);
        }
        put(&mut s, peer_field::WORKLOAD, &self.workload_name);
        put(&mut s, peer_field::NAME, &self.instance_name);
        put(&mut s, peer_field::CLUSTER, &self.cluster_id);
        put(&mut s, peer_field::NAMESPACE, &self.namespace);
        put(&mut s, peer_field::SERVICE, &self.canonical_name);
        put(&mut s, peer_field::REVISION, &self.canonical_revision);
        put(&mut s, peer_field::APP, &self.app_name);
        put(&mut s, peer_field::VERSION, &self.app_version);
        put(&mut s, peer_field::IDENTITY, &self.identity);
        put(&mut s, peer_field::REGION, &self.region);
        put(&mut s, peer_field::ZONE, &self.zone);
        if !self.labels.is_empty() {
            let mut labels = Struct::default();
            for (k, v) in &self.labels {
                put(&mut labels, k, v);
            }
            s.fields
                .insert(peer_field::LABELS.to_string(), struct_value(labels));
        }
        s
    }

    /// Reads back what [`WorkloadMetadata::to_peer_struct`] wrote.
    pub fn from_peer_struct(s: &Struct) -> Self {
        let text = |k: &str| {
            s.fields
                .get(k)
                .map(string_of)
                .unwrap_or_default()
                .to_string()
        };
        WorkloadMetadata {
            workload_type: WorkloadType::from_suffix(&text(peer_field::TYPE)),
            workload_name: text(peer_field::WORKLOAD),
            instance_name: text(peer_field::NAME),
            cluster_id: text(peer_field::CLUSTER),
            namespace: text(peer_field::NAMESPACE),
            canonical_name: text(peer_field::SERVICE),
            canonical_revision: text(peer_field::REVISION),
            app_name: text(peer_field::APP),
            app_version: text(peer_field::VERSION),
            identity: text(peer_field::IDENTITY),
            region: text(peer_field::REGION),
            zone: text(peer_field::ZONE),
            labels: s
                .fields
                .get(peer_field::LABELS)
                .map(string_map_of)
                .unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// Field names of the peer Struct in filter state (Istio's `WorkloadMetadataObject` tokens).
pub mod peer_field {
    pub const TYPE: &str = "type";
    pub const WORKLOAD: &str = "workload";
    pub const NAME: &str = "name";
    pub const CLUSTER: &str = "cluster";
    pub const NAMESPACE: &str = "namespace";
    pub const SERVICE: &str = "service";
    pub const REVISION: &str = "revision";
    pub const APP: &str = "app";
    pub const VERSION: &str = "version";
    pub const IDENTITY: &str = "identity";
    pub const REGION: &str = "region";
    pub const ZONE: &str = "availability_zone";
    pub const LABELS: &str = "labels";
}

fn first_non_empty(a: String, b: String) -> String {
    if a.is_empty() {
        b
    } else {
        a
    }
}

fn put(s: &mut Struct, key: &str, value: &str) {
    if !value.is_empty() {
        s.fields.insert(key.to_string(), string_value(value));
    }
}

pub fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

pub fn struct_value(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}

/// A Value as text: strings as they are, anything else empty (as Istio's `string_value()`).
fn string_of(value: &Value) -> &str {
    match &value.kind {
        Some(Kind::StringValue(s)) => s,
        _ => "",
    }
}

fn string_map_of(value: &Value) -> BTreeMap<String, String> {
    match &value.kind {
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(text)) => Some((k.clone(), text.clone())),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Old peers send APP_CONTAINERS / INSTANCE_IPS as a list or as one comma-separated string.
fn string_list_of(value: &Value) -> Vec<String> {
    match &value.kind {
        Some(Kind::ListValue(ListValue { values })) => values
            .iter()
            .map(|v| string_of(v).to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Kind::StringValue(s)) => split_list(s),
        _ => Vec::new(),
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::pairs::{decode_tree, encode_pairs};

    fn labels(pairs: &[(&str, &str)]) -> Value {
        let mut s = Struct::default();
        for (k, v) in pairs {
            put(&mut s, k, v);
        }
        struct_value(s)
    }

    fn modern_peer() -> Struct {
        let mut s = Struct::default();
        put(&mut s, NAME, "mongodb-v1-7d9f8");
        put(&mut s, NAMESPACE, "default");
        put(&mut s, WORKLOAD_NAME, "mongodb-v1");
        put(&mut s, CLUSTER_ID, "Kubernetes");
        put(
            &mut s,
            IDENTITY,
            "spiffe://cluster.local/ns/default/sa/bookinfo-mongodb",
        );
        put(
            &mut s,
            OWNER,
            "kubernetes://apis/apps/v1/namespaces/default/deployments/mongodb-v1",
        );
        s.fields.insert(
            LABELS.into(),
            labels(&[
                (CANONICAL_NAME_LABEL, "mongodb"),
                (CANONICAL_REVISION_LABEL, "v1"),
                (APP_LABEL, "mongodb"),
                (VERSION_LABEL, "v1"),
            ]),
        );
        s
    }

    #[test]
    fn reads_the_modern_shape() {
        let w = WorkloadMetadata::from_exchange_struct(&modern_peer());
        assert_eq!(w.workload_name, "mongodb-v1");
        assert_eq!(w.canonical_name, "mongodb");
        assert_eq!(w.canonical_revision, "v1");
        assert_eq!(w.app_version, "v1");
        assert_eq!(w.workload_type, WorkloadType::Deployment);
        assert_eq!(
            w.identity,
            "spiffe://cluster.local/ns/default/sa/bookinfo-mongodb"
        );
    }

    #[test]
    fn modern_shape_round_trips() {
        let w = WorkloadMetadata::from_exchange_struct(&modern_peer());
        assert_eq!(w.to_exchange_struct(&[]), modern_peer());
    }

    #[test]
    fn reads_the_old_shape() {
        let mut s = Struct::default();
        put(&mut s, NAME, "ratings-v2-5b9f");
        put(&mut s, NAMESPACE, "default");
        put(&mut s, WORKLOAD_NAME, "ratings-v2");
        put(&mut s, MESH_ID, "cluster.local");
        put(&mut s, ISTIO_VERSION, "1.9.0");
        put(&mut s, APP_CONTAINERS, "ratings,istio-proxy");
        s.fields.insert(
            INSTANCE_IPS.into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![string_value("10.0.0.7")],
                })),
            },
        );
        s.fields.insert(
            LABELS.into(),
            labels(&[
                ("app.kubernetes.io/name", "ratings"),
                (APP_LABEL, "ignored-when-qualified-is-set"),
                (VERSION_LABEL, "v2"),
                ("pod-template-hash", "5b9f"),
            ]),
        );
        s.fields
            .insert(PLATFORM_METADATA.into(), labels(&[("gcp_project", "p1")]));
        let w = WorkloadMetadata::from_exchange_struct(&s);
        assert_eq!(w.app_name, "ratings");
        assert_eq!(w.app_version, "v2");
        assert_eq!(w.canonical_name, "");
        assert_eq!(w.app_containers, vec!["ratings", "istio-proxy"]);
        assert_eq!(w.instance_ips, vec!["10.0.0.7"]);
        assert_eq!(w.platform_metadata["gcp_project"], "p1");
        assert_eq!(w.labels["pod-template-hash"], "5b9f");
        assert_eq!(w.mesh_id, "cluster.local");
    }

    #[test]
    fn reads_node_metadata_pairs() {
        let lbls = encode_pairs(&[
            (CANONICAL_NAME_LABEL, "ratings"),
            (CANONICAL_REVISION_LABEL, "v2"),
            ("app", "ratings"),
            ("version", "v2"),
            ("team", "db"),
        ]);
        let containers = encode_pairs(&[("ratings", ""), ("istio-proxy", "")]);
        let blob = encode_pairs::<&[u8], &[u8]>(&[
            (b"NAME", b"ratings-v2-abc"),
            (b"NAMESPACE", b"default"),
            (b"WORKLOAD_NAME", b"ratings-v2"),
            (
                b"OWNER",
                b"kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v2",
            ),
            (b"LABELS", &lbls),
            (b"APP_CONTAINERS", &containers),
            (b"STATUS_PORT", &15020f64.to_le_bytes()),
        ]);
        let w = WorkloadMetadata::from_node_metadata(&decode_tree(&blob).unwrap());
        assert_eq!(w.canonical_name, "ratings");
        assert_eq!(w.app_version, "v2");
        assert_eq!(w.workload_type, WorkloadType::Deployment);
        assert_eq!(w.app_containers, vec!["ratings", "istio-proxy"]);
        let sent = w.to_exchange_struct(&["team".to_string(), "absent".to_string()]);
        let Some(Kind::StructValue(sent_labels)) = &sent.fields[LABELS].kind else {
            panic!("LABELS is not a struct")
        };
        assert_eq!(sent_labels.fields.len(), 5, "four well-known + team");
    }

    #[test]
    fn peer_struct_round_trips() {
        let w = WorkloadMetadata::from_exchange_struct(&modern_peer());
        let back = WorkloadMetadata::from_peer_struct(&w.to_peer_struct());
        assert_eq!(back.workload_name, w.workload_name);
        assert_eq!(back.canonical_revision, w.canonical_revision);
        assert_eq!(back.workload_type, WorkloadType::Deployment);
        assert_eq!(back.identity, w.identity);
        assert_eq!(back.labels, w.labels);
    }

    #[test]
    fn endpoint_encoding_needs_five_parts() {
        let w =
            WorkloadMetadata::from_endpoint_encoding("mongodb-v1;default;mongodb;v1;Kubernetes")
                .unwrap();
        assert_eq!(w.workload_name, "mongodb-v1");
        assert_eq!(w.cluster_id, "Kubernetes");
        assert!(WorkloadMetadata::from_endpoint_encoding("a;b;c").is_none());
    }

    #[test]
    fn owner_parsing_matches_istio() {
        let t = |o: &str, w: &str| WorkloadType::from_owner(o, w);
        assert_eq!(
            t(
                "kubernetes://apis/batch/v1/namespaces/ns/cronjobs/nightly",
                "nightly"
            ),
            WorkloadType::CronJob
        );
        assert_eq!(
            t("kubernetes://apis/v1/namespaces/ns/pods/p", "p"),
            WorkloadType::Pod
        );
        assert_eq!(t("", "p"), WorkloadType::Unknown);
        assert_eq!(t("short", "much-longer-name"), WorkloadType::Unknown);
    }
}
