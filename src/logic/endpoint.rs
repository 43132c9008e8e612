//! Reading Envoy `Metadata` (serialized `envoy.config.core.v3.Metadata`, as the properties
//! `xds.upstream_host_metadata` and `xds.cluster_metadata` return it) for what Istio puts there:
//! - endpoint `envoy.transport_socket_match.tlsMode` (`istio` marks a mesh endpoint),
//! - endpoint `istio.workload` (`workload;namespace;canonical;revision;cluster`),
//! - cluster `istio.services[0]` (`host`, `name`, `namespace`).

use prost::Message;
use prost_types::{value::Kind, Struct};

use crate::proto::envoy_core::Metadata;

pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
pub const TLS_MODE: &str = "tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";
pub const ISTIO: &str = "istio";
pub const WORKLOAD: &str = "workload";
pub const SERVICES: &str = "services";

/// Decodes serialized Metadata; `None` for bytes that are not a Metadata message.
pub fn decode_metadata(bytes: &[u8]) -> Option<Metadata> {
    Metadata::decode(bytes).ok()
}

fn filter_struct<'a>(md: &'a Metadata, filter: &str) -> Option<&'a Struct> {
    md.filter_metadata.get(filter)
}

fn string_field<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match &s.fields.get(key)?.kind {
        Some(Kind::StringValue(v)) => Some(v),
        _ => None,
    }
}

/// True when the endpoint carries `tlsMode: istio`: Istio would negotiate
/// `istio-peer-exchange` with it.
pub fn is_mesh_endpoint(md: &Metadata) -> bool {
    filter_struct(md, TRANSPORT_SOCKET_MATCH)
        .and_then(|s| string_field(s, TLS_MODE))
        .is_some_and(|mode| mode == TLS_MODE_ISTIO)
}

/// The `istio_mtls` client gate: the upstream connection is TLS (`upstream.tls_version` is set)
/// and the server's certificate has a SPIFFE URI SAN (`upstream.uri_san_peer_certificate`), as
/// every Istio workload certificate has.
pub fn is_istio_mtls(tls_version: Option<&str>, peer_uri_san: Option<&str>) -> bool {
    tls_version.is_some_and(|v| !v.is_empty())
        && peer_uri_san.is_some_and(|san| san.starts_with("spiffe://"))
}

/// The endpoint's `istio.workload` string, if any.
pub fn istio_workload(md: &Metadata) -> Option<&str> {
    filter_struct(md, ISTIO).and_then(|s| string_field(s, WORKLOAD))
}

/// A cluster's first `istio.services` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceRef {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

pub fn istio_service(md: &Metadata) -> Option<ServiceRef> {
    let services = filter_struct(md, ISTIO)?.fields.get(SERVICES)?;
    let Some(Kind::ListValue(list)) = &services.kind else {
        return None;
    };
    let Some(Kind::StructValue(first)) = &list.values.first()?.kind else {
        return None;
    };
    let field = |k: &str| string_field(first, k).unwrap_or_default().to_string();
    Some(ServiceRef {
        host: field("host"),
        name: field("name"),
        namespace: field("namespace"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_mtls_needs_tls_and_a_spiffe_peer() {
        let san = Some("spiffe://cluster.local/ns/default/sa/mongodb");
        assert!(is_istio_mtls(Some("TLSv1.3"), san));
        assert!(!is_istio_mtls(None, san));
        assert!(!is_istio_mtls(Some(""), san));
        assert!(!is_istio_mtls(Some("TLSv1.3"), None));
        assert!(!is_istio_mtls(Some("TLSv1.3"), Some("https://example.com")));
    }
    use crate::logic::workload::{string_value, struct_value};
    use prost_types::{ListValue, Value};

    fn metadata() -> Metadata {
        let mut tsm = Struct::default();
        tsm.fields.insert(TLS_MODE.into(), string_value("istio"));
        let mut service = Struct::default();
        service.fields.insert(
            "host".into(),
            string_value("mongodb.default.svc.cluster.local"),
        );
        service
            .fields
            .insert("name".into(), string_value("mongodb"));
        service
            .fields
            .insert("namespace".into(), string_value("default"));
        let mut istio = Struct::default();
        istio.fields.insert(
            WORKLOAD.into(),
            string_value("mongodb-v1;default;mongodb;v1;Kubernetes"),
        );
        istio.fields.insert(
            SERVICES.into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![struct_value(service)],
                })),
            },
        );
        let mut md = Metadata::default();
        md.filter_metadata
            .insert(TRANSPORT_SOCKET_MATCH.into(), tsm);
        md.filter_metadata.insert(ISTIO.into(), istio);
        md
    }

    #[test]
    fn reads_what_istio_puts_in_metadata() {
        let md = decode_metadata(&metadata().encode_to_vec()).unwrap();
        assert!(is_mesh_endpoint(&md));
        assert_eq!(
            istio_workload(&md),
            Some("mongodb-v1;default;mongodb;v1;Kubernetes")
        );
        let svc = istio_service(&md).unwrap();
        assert_eq!(svc.name, "mongodb");
        assert_eq!(svc.host, "mongodb.default.svc.cluster.local");
    }

    #[test]
    fn anything_else_is_not_a_mesh_endpoint() {
        assert!(!is_mesh_endpoint(&Metadata::default()));
        let mut md = metadata();
        md.filter_metadata
            .get_mut(TRANSPORT_SOCKET_MATCH)
            .unwrap()
            .fields
            .insert(TLS_MODE.into(), string_value("disabled"));
        assert!(!is_mesh_endpoint(&md));
        assert!(decode_metadata(&[0xFF, 0xFF, 0xFF]).is_none());
        assert!(istio_service(&Metadata::default()).is_none());
    }
}
