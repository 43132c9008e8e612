//! One root type for the whole module: `on_configure` reads `plugin_root_id` and becomes the
//! combined filter, the exchange filter or the stats filter. proxy-wasm's Rust SDK registers a
//! single root factory, so the choice by `root_id` is made here; the streams it creates are of
//! the chosen filter.

use crate::host::{Action, Buffer, Host, PeerType};
use crate::host_log;
use crate::logic::gateway_node::is_gateway_node;
use crate::{EXCHANGE_ROOT_ID, STATS_ROOT_ID, TELEMETRY_ROOT_ID};

use super::connection_host::ConnectionHost;
use super::exchange::{ExchangeRoot, ExchangeStream};
use super::node;
use super::stats::{StatsRoot, StatsStream};
use super::telemetry::{TelemetryRoot, TelemetryStream};

/// Every filter runs over [`ConnectionHost`] (the separate ones without its per-connection
/// cache): one instantiation of the filters' code in the module, not one per host type.
type On<H> = ConnectionHost<H>;

enum Filter<H: Host> {
    Unconfigured,
    Exchange(ExchangeRoot<On<H>>),
    Stats(StatsRoot<On<H>>),
    Telemetry(TelemetryRoot<H>),
    /// Configured on an Istio gateway (`router~` node): every stream passes untouched.
    InertOnGateway,
}

/// A plugin's root context.
pub struct Dispatch<H: Host> {
    host: H,
    filter: Filter<H>,
}

/// A connection's stream context, of the filter its root became.
pub enum Stream<H: Host> {
    /// Leaves every byte alone (a root whose configuration failed, or on a gateway).
    PassThrough,
    Exchange(ExchangeStream<On<H>>),
    Stats(StatsStream<On<H>>),
    Telemetry(TelemetryStream<H>),
}

impl<H: Host + Clone> Dispatch<H> {
    pub fn new(host: H) -> Self {
        Dispatch {
            host,
            filter: Filter::Unconfigured,
        }
    }

    /// Returns false (Envoy then rejects the filter configuration) with one error log line.
    pub fn on_configure(&mut self, config_size: usize) -> bool {
        match self.configure(config_size) {
            Ok(()) => true,
            Err(e) => {
                host_log!(&self.host, Error, "invalid configuration: {e}");
                false
            }
        }
    }

    fn configure(&mut self, config_size: usize) -> Result<(), String> {
        let root_id = self
            .host
            .property_string(&["plugin_root_id"])
            .unwrap_or_default();
        let config = self
            .host
            .buffer(Buffer::PluginConfiguration, 0, config_size)
            .map_err(|e| format!("reading the plugin configuration failed: {e}"))?;
        let host = ConnectionHost::for_root(self.host.clone());
        self.filter = match root_id.as_str() {
            EXCHANGE_ROOT_ID => Filter::Exchange(ExchangeRoot::configure(host, &config)?),
            STATS_ROOT_ID => Filter::Stats(StatsRoot::configure(host, &config)?),
            TELEMETRY_ROOT_ID => Filter::Telemetry(TelemetryRoot::configure(host, &config)?),
            other => {
                return Err(format!(
                    "unknown root_id {other:?}: use {TELEMETRY_ROOT_ID:?}, {EXCHANGE_ROOT_ID:?} \
                     or {STATS_ROOT_ID:?}"
                ))
            }
        };
        // The configuration is checked first (a bad one is still refused on a gateway).
        let node_id = node::node_id(&self.host);
        if is_gateway_node(&node_id) {
            host_log!(
                &self.host,
                Warn,
                "{root_id}: node {node_id:?} is an Istio gateway (router~): this filter stays \
                 inert, passing every byte untouched and reporting nothing; scope the resource \
                 to sidecars"
            );
            self.filter = Filter::InertOnGateway;
        }
        Ok(())
    }

    pub fn on_tick(&mut self) {
        match &mut self.filter {
            Filter::Stats(stats) => stats.on_tick(),
            Filter::Telemetry(telemetry) => telemetry.on_tick(),
            Filter::Exchange(_) | Filter::Unconfigured | Filter::InertOnGateway => {}
        }
    }

    pub fn create_stream(&self, context_id: u32) -> Stream<H> {
        match &self.filter {
            Filter::Exchange(root) => Stream::Exchange(root.create_stream()),
            Filter::Stats(root) => Stream::Stats(root.create_stream(context_id)),
            Filter::Telemetry(root) => Stream::Telemetry(root.create_stream(context_id)),
            Filter::Unconfigured | Filter::InertOnGateway => Stream::PassThrough,
        }
    }
}

impl<H: Host> Stream<H> {
    pub fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        match self {
            Stream::PassThrough => Action::Continue,
            Stream::Exchange(s) => s.on_downstream_data(data_size, end_of_stream),
            Stream::Stats(s) => s.on_downstream_data(data_size, end_of_stream),
            Stream::Telemetry(s) => s.on_downstream_data(data_size, end_of_stream),
        }
    }

    pub fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        match self {
            Stream::PassThrough => Action::Continue,
            Stream::Exchange(s) => s.on_upstream_data(data_size, end_of_stream),
            Stream::Stats(s) => s.on_upstream_data(data_size, end_of_stream),
            Stream::Telemetry(s) => s.on_upstream_data(data_size, end_of_stream),
        }
    }

    /// The downstream connection closed (Envoy's close event, not a half-close); `peer`: who
    /// closed it.
    pub fn on_downstream_close(&mut self, peer: PeerType) {
        match self {
            Stream::Exchange(s) => s.on_downstream_close(),
            Stream::Stats(s) => s.on_close(true, peer),
            Stream::Telemetry(s) => s.on_downstream_close(peer),
            Stream::PassThrough => {}
        }
    }

    /// The upstream connection closed.
    pub fn on_upstream_close(&mut self, peer: PeerType) {
        match self {
            Stream::Stats(s) => s.on_close(false, peer),
            Stream::Telemetry(s) => s.on_upstream_close(peer),
            Stream::Exchange(_) | Stream::PassThrough => {}
        }
    }

    /// The connection is done (after both closes).
    pub fn on_log(&mut self) {
        match self {
            Stream::Stats(s) => s.on_log(),
            Stream::Telemetry(s) => s.on_log(),
            Stream::Exchange(_) | Stream::PassThrough => {}
        }
    }
}
