//! Two fake sidecars back to back, as Istio's TCP metrics task deploys them: the client's
//! outbound listener (`istio_tcp_stats` → `istio_metadata_exchange` → tcp_proxy) sends to the
//! server's inbound listener (`istio_metadata_exchange` → `istio_tcp_stats` → tcp_proxy), which
//! sends to the backend. Bytes flow both ways through both chains.
//!
//! ```ignore
//! let mut mesh = MeshBuilder::new().build()?;
//! let mut link = mesh.connect();
//! mesh.client_sends(&mut link, b"world\n", false);
//! mesh.backend_sends(&mut link, b"hello world\n", false);
//! mesh.close(&mut link);
//! ```

#![forbid(unsafe_code)]

use istio_tcp_telemetry::{EXCHANGE_ROOT_ID, STATS_ROOT_ID, TELEMETRY_ROOT_ID};

use crate::fake_envoy::{ConnectionId, Direction, FakeEnvoy, ListenerId};
use crate::metadata::{self as node, Workload};

/// The default topology: ratings-v2 → mongodb-v1 over mutual TLS, both filters on both sides.
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    pub client: Workload,
    pub server: Workload,
    /// Exchange configurations (`None`: no exchange filter on that side).
    pub client_exchange: Option<String>,
    pub server_exchange: Option<String>,
    /// Stats configurations (`None`: no stats filter on that side).
    pub client_stats: Option<String>,
    pub server_stats: Option<String>,
    /// Certificates on the sidecar-to-sidecar hop.
    pub mtls: bool,
    /// The client's endpoint carries `tlsMode: istio`.
    pub mesh_endpoint: bool,
    /// One `istio_tcp_telemetry` filter per side where both parts are configured, instead of
    /// the two separate filters.
    pub combined: bool,
}

impl Default for MeshBuilder {
    fn default() -> Self {
        MeshBuilder {
            client: Workload::ratings(),
            server: Workload::mongodb(),
            client_exchange: Some(r#"{"side": "client"}"#.into()),
            server_exchange: Some(r#"{"side": "server"}"#.into()),
            client_stats: Some("{}".into()),
            server_stats: Some("{}".into()),
            mtls: true,
            mesh_endpoint: true,
            combined: false,
        }
    }
}

impl MeshBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn client_exchange(mut self, config: Option<&str>) -> Self {
        self.client_exchange = config.map(str::to_string);
        self
    }

    pub fn server_exchange(mut self, config: Option<&str>) -> Self {
        self.server_exchange = config.map(str::to_string);
        self
    }

    pub fn client_stats(mut self, config: Option<&str>) -> Self {
        self.client_stats = config.map(str::to_string);
        self
    }

    pub fn server_stats(mut self, config: Option<&str>) -> Self {
        self.server_stats = config.map(str::to_string);
        self
    }

    pub fn mtls(mut self, mtls: bool) -> Self {
        self.mtls = mtls;
        self
    }

    pub fn combined(mut self, combined: bool) -> Self {
        self.combined = combined;
        self
    }

    pub fn mesh_endpoint(mut self, mesh: bool) -> Self {
        self.mesh_endpoint = mesh;
        self
    }

    /// Both sidecars, configured (an error is the refusing filter's log line).
    pub fn build(self) -> Result<Mesh, String> {
        let mut client = FakeEnvoy::new(&self.client.node_id(), Some(self.client.node_metadata()));
        let mut server = FakeEnvoy::new(&self.server.node_id(), Some(self.server.node_metadata()));
        let client_combined = self.combined_config(&self.client_exchange, &self.client_stats);
        let server_combined = self.combined_config(&self.server_exchange, &self.server_stats);
        let client_chain: Vec<(&str, &str)> = [
            client_combined.as_deref().map(|c| (TELEMETRY_ROOT_ID, c)),
            self.client_stats
                .as_deref()
                .filter(|_| client_combined.is_none())
                .map(|c| (STATS_ROOT_ID, c)),
            self.client_exchange
                .as_deref()
                .filter(|_| client_combined.is_none())
                .map(|c| (EXCHANGE_ROOT_ID, c)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let server_chain: Vec<(&str, &str)> = [
            server_combined.as_deref().map(|c| (TELEMETRY_ROOT_ID, c)),
            self.server_exchange
                .as_deref()
                .filter(|_| server_combined.is_none())
                .map(|c| (EXCHANGE_ROOT_ID, c)),
            self.server_stats
                .as_deref()
                .filter(|_| server_combined.is_none())
                .map(|c| (STATS_ROOT_ID, c)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let client_listener = client.add_listener(&client_chain)?;
        let server_listener = server.add_listener(&server_chain)?;
        Ok(Mesh {
            client,
            server,
            client_listener,
            server_listener,
            topology: self,
        })
    }
}

impl MeshBuilder {
    /// The combined filter's configuration for a side, when it runs there.
    fn combined_config(&self, exchange: &Option<String>, stats: &Option<String>) -> Option<String> {
        match (self.combined, exchange, stats) {
            (true, Some(exchange), Some(stats)) => {
                let stats = if stats.trim().is_empty() { "{}" } else { stats };
                Some(format!(r#"{{"exchange": {exchange}, "stats": {stats}}}"#))
            }
            _ => None,
        }
    }
}

/// A built mesh (see the module docs).
pub struct Mesh {
    pub client: FakeEnvoy,
    pub server: FakeEnvoy,
    pub client_listener: ListenerId,
    pub server_listener: ListenerId,
    pub topology: MeshBuilder,
}

/// One connection through both sidecars, and what each end received.
#[derive(Debug, Default)]
pub struct Link {
    pub client: ConnectionId,
    pub server: ConnectionId,
    /// Bytes the client application received.
    pub app_received: Vec<u8>,
    /// Bytes the backend received.
    pub backend_received: Vec<u8>,
}

/// The Istio outbound cluster of the server's service.
pub const CLUSTER: &str = "outbound|27017||mongodb.default.svc.cluster.local";

impl Mesh {
    pub fn connect(&mut self) -> Link {
        let t = &self.topology;
        let mut client_props = vec![
            ("xds.listener_direction", node::u64_property(node::OUTBOUND)),
            (
                "xds.upstream_host_metadata",
                node::endpoint_metadata(t.mesh_endpoint, Some(&t.server)),
            ),
            ("xds.cluster_name", CLUSTER.as_bytes().to_vec()),
            (
                "xds.cluster_metadata",
                node::cluster_metadata(
                    "mongodb.default.svc.cluster.local",
                    "mongodb",
                    &t.server.namespace,
                ),
            ),
            ("connection.mtls", vec![0]),
        ];
        let mut server_props = vec![
            ("xds.listener_direction", node::u64_property(node::INBOUND)),
            ("xds.cluster_name", b"inbound|27017||".to_vec()),
            (
                "xds.cluster_metadata",
                node::cluster_metadata(
                    "mongodb.default.svc.cluster.local",
                    "mongodb",
                    &t.server.namespace,
                ),
            ),
            ("connection.mtls", vec![u8::from(t.mtls)]),
        ];
        if t.mtls {
            client_props.extend([
                ("upstream.tls_version", b"TLSv1.3".to_vec()),
                (
                    "upstream.uri_san_peer_certificate",
                    t.server.spiffe().into_bytes(),
                ),
                (
                    "upstream.uri_san_local_certificate",
                    t.client.spiffe().into_bytes(),
                ),
            ]);
            server_props.extend([
                (
                    "connection.uri_san_peer_certificate",
                    t.client.spiffe().into_bytes(),
                ),
                (
                    "connection.uri_san_local_certificate",
                    t.server.spiffe().into_bytes(),
                ),
            ]);
        }
        Link {
            client: self.client.connect(self.client_listener, &client_props),
            server: self.server.connect(self.server_listener, &server_props),
            ..Default::default()
        }
    }

    /// The client application writes (`end_of_stream`: then half-closes).
    pub fn client_sends(&mut self, link: &mut Link, bytes: &[u8], end_of_stream: bool) {
        self.client.downstream(link.client, bytes, end_of_stream);
        let wire = self
            .client
            .take_delivered(link.client, Direction::Downstream);
        let eos = self.client.ended(link.client, Direction::Downstream)
            && self.client.held(link.client, Direction::Downstream) == 0
            && self.client.lost(link.client) == 0;
        if !wire.is_empty() || eos {
            self.server.downstream(link.server, &wire, eos);
        }
        if self.client.lost(link.client) > 0 {
            self.server.close(link.server);
        }
        let backend = self
            .server
            .take_delivered(link.server, Direction::Downstream);
        link.backend_received.extend_from_slice(&backend);
    }

    /// The backend writes (`end_of_stream`: then half-closes).
    pub fn backend_sends(&mut self, link: &mut Link, bytes: &[u8], end_of_stream: bool) {
        self.server.upstream(link.server, bytes, end_of_stream);
        let wire = self.server.take_delivered(link.server, Direction::Upstream);
        let eos = self.server.ended(link.server, Direction::Upstream)
            && self.server.held(link.server, Direction::Upstream) == 0
            && self.server.lost(link.server) == 0;
        if !wire.is_empty() || eos {
            self.client.upstream(link.client, &wire, eos);
        }
        if self.server.lost(link.server) > 0 {
            self.client.close(link.client);
        }
        let app = self.client.take_delivered(link.client, Direction::Upstream);
        link.app_received.extend_from_slice(&app);
    }

    /// The client closes: its sidecar closes, then the server's (each in Envoy's close order).
    pub fn close(&mut self, link: &mut Link) {
        self.client_sends(link, &[], true);
        self.backend_sends(link, &[], true);
        self.client.close(link.client);
        self.server.close(link.server);
    }

    /// One tick on both sidecars.
    pub fn tick(&mut self) {
        self.client.tick();
        self.server.tick();
    }
}
