//! Envoy configs shaped like the listeners and clusters istiod generates for a sidecar (read from
//! istio/istio 1.24–1.29, `pilot/pkg/networking/core`), so that patches are tried where Istio
//! would apply them:
//!
//! - inbound, PERMISSIVE, a port with an explicit TCP-class protocol (`listener_inbound.go`,
//!   `filterchain_options.go`'s `inboundPermissiveTCPFilterChainMatchWithMxcOptions`): a
//!   `tls_inspector`, and three chains matched on the destination port: mutual TLS selected by
//!   the ALPNs `[istio, istio-peer-exchange, istio-http/1.0, istio-http/1.1, istio-h2]`
//!   (terminated here), plain TLS (passed through), plaintext;
//! - outbound, a TCP service port (`networkfilter.go`): one chain;
//! - both chains end as `buildNetworkFiltersStack` ends them: `[mongo_proxy, tcp_proxy]` for a
//!   `mongo` port, `[mysql_proxy, tcp_proxy]` for `mysql` (PILOT_ENABLE_MONGO_FILTER and
//!   PILOT_ENABLE_MYSQL_FILTER, `features/xds.go`; mongo on by default), else `[tcp_proxy]`,
//!   with Istio's own exchange and TCP stats off (what the README asks for).

use serde_json::{json, Value};

use super::with_built_module;
use crate::support::MtlsCerts;

/// `allIstioMtlsALPNs` in `listener.go`.
pub const ISTIO_MTLS_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// The protocol of a Service port, as far as the filter stack goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    Tcp,
    Mongo,
    MySql,
}

impl PortProtocol {
    /// The filter istiod puts before tcp_proxy (`buildMongoFilter` / `buildMySQLFilter`).
    pub fn filter(self, stat_prefix: &str) -> Option<Value> {
        let (name, ty) = match self {
            PortProtocol::Tcp => return None,
            PortProtocol::Mongo => (
                "envoy.filters.network.mongo_proxy",
                "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy",
            ),
            PortProtocol::MySql => (
                "envoy.filters.network.mysql_proxy",
                "type.googleapis.com/envoy.extensions.filters.network.mysql_proxy.v3.MySQLProxy",
            ),
        };
        Some(json!({ "name": name, "typed_config": { "@type": ty, "stat_prefix": stat_prefix } }))
    }

    /// Envoy's stat prefix of that filter's own stats (`mongo.` / `mysql.`).
    pub fn stats_root(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp.",
            PortProtocol::Mongo => "mongo.",
            PortProtocol::MySql => "mysql.",
        }
    }
}

/// `[protocol filter, tcp_proxy → cluster]`, as `buildNetworkFiltersStack` makes it.
pub fn network_filter_stack(protocol: PortProtocol, cluster: &str) -> Vec<Value> {
    let mut filters: Vec<Value> = protocol.filter(cluster).into_iter().collect();
    filters.push(json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster,
            "cluster": cluster,
        },
    }));
    filters
}

/// The three inbound filter chains of a PERMISSIVE TCP-class port `port`, each holding
/// `filters(i)` (the Wasm filters' module paths pointed at the built module).
pub fn inbound_listener(
    port: u16,
    certs: &MtlsCerts,
    filters: impl Fn(usize) -> Vec<Value>,
) -> Value {
    let dp = json!(port);
    let chain = |i: usize, name: &str, m: Value, tls: Option<Value>| {
        let mut c = json!({
            "name": name,
            "filter_chain_match": m,
            "filters": filters(i).iter().map(with_built_module).collect::<Vec<_>>(),
        });
        if let Some(t) = tls {
            c["transport_socket"] = t;
        }
        c
    };
    let downstream_tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                // BuildInboundTLS (security/authn/utils): ALPNHttp once Istio's exchange is off.
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{
                    "certificate_chain": { "filename": certs.server_cert },
                    "private_key": { "filename": certs.server_key },
                }],
                "validation_context": { "trusted_ca": { "filename": certs.ca_cert } },
            },
        },
    });
    json!({
        "name": "virtualInbound",
        "traffic_direction": "INBOUND",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }],
        "listener_filters_timeout": "0s",
        "continue_on_listener_filters_timeout": true,
        "filter_chains": [
            chain(0, &format!("0.0.0.0_{port}_mtls"), json!({
                "destination_port": dp, "transport_protocol": "tls",
                "application_protocols": ISTIO_MTLS_ALPNS }), Some(downstream_tls)),
            chain(1, &format!("0.0.0.0_{port}_tls"), json!({
                "destination_port": dp, "transport_protocol": "tls" }), None),
            chain(2, &format!("0.0.0.0_{port}"), json!({
                "destination_port": dp, "transport_protocol": "raw_buffer" }), None),
        ],
    })
}

/// An outbound listener on 127.0.0.1:`port` with one chain of `filters`.
pub fn outbound_listener(port: u16, filters: &[Value]) -> Value {
    json!({
        "name": format!("0.0.0.0_{port}"),
        "traffic_direction": "OUTBOUND",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": filters.iter().map(with_built_module).collect::<Vec<_>>() }],
    })
}

/// A static cluster `name` → 127.0.0.1:`port`; `istio_endpoint` adds the endpoint metadata
/// istiod writes for a sidecar endpoint (`tlsMode: istio`, `istio.workload`), `tls` the
/// ISTIO_MUTUAL transport socket with ALPN `[istio]` (Istio's exchange off: `cluster_tls.go`
/// offers `istio-peer-exchange` only while PILOT_ENABLE_METADATA_EXCHANGE is on).
pub fn cluster(
    name: &str,
    port: u16,
    istio_endpoint: Option<&str>,
    tls: Option<&MtlsCerts>,
) -> Value {
    let mut endpoint = json!({ "endpoint": { "address": { "socket_address": {
        "address": "127.0.0.1", "port_value": port } } } });
    if let Some(workload) = istio_endpoint {
        endpoint["metadata"] = json!({ "filter_metadata": {
            "envoy.transport_socket_match": { "tlsMode": "istio" },
            "istio": { "workload": workload },
        }});
    }
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [endpoint] }] },
    });
    if let Some(certs) = tls {
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": name,
                "common_tls_context": {
                    "alpn_protocols": ["istio"],
                    "tls_certificates": [{
                        "certificate_chain": { "filename": certs.client_cert },
                        "private_key": { "filename": certs.client_key },
                    }],
                    "validation_context": { "trusted_ca": { "filename": certs.ca_cert } },
                },
            },
        });
    }
    c
}

/// A bootstrap for node `node_id` with `metadata`, admin on a free port, and the resources.
pub fn sidecar_bootstrap(
    node_id: &str,
    metadata: &str,
    listeners: Vec<Value>,
    clusters: Vec<Value>,
) -> Value {
    json!({
        "node": {
            "id": node_id,
            "cluster": "istio-shapes",
            "metadata": serde_json::from_str::<Value>(metadata).unwrap(),
        },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": { "listeners": listeners, "clusters": clusters },
    })
}
