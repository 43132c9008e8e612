//! One root context type for the whole module: `on_configure` reads `plugin_root_id` and
//! becomes the exchange filter or the stats filter. proxy-wasm's Rust SDK registers a single
//! root factory, so the choice by `root_id` is made here.

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::ContextType;

use super::exchange::ExchangeRoot;
use super::host;
use super::node;
use super::stats::StatsRoot;
use crate::logic::gateway_node::is_gateway_node;
use crate::{EXCHANGE_ROOT_ID, STATS_ROOT_ID};

enum Filter {
    Unconfigured,
    Exchange(ExchangeRoot),
    Stats(StatsRoot),
    /// Configured on an Istio gateway (`router~` node): every stream passes untouched.
    InertOnGateway,
}

pub struct DispatchRoot {
    filter: Filter,
}

impl DispatchRoot {
    pub fn new() -> Self {
        DispatchRoot {
            filter: Filter::Unconfigured,
        }
    }

    fn configure(&mut self, config_size: usize) -> Result<(), String> {
        let root_id = host::get_property_string(&["plugin_root_id"]).unwrap_or_default();
        let config = host::get_buffer(host::Buffer::PluginConfiguration, 0, config_size)
            .map_err(|e| format!("reading the plugin configuration failed: {e}"))?;
        self.filter = match root_id.as_str() {
            EXCHANGE_ROOT_ID => Filter::Exchange(ExchangeRoot::configure(&config)?),
            STATS_ROOT_ID => Filter::Stats(StatsRoot::configure(&config)?),
            other => {
                return Err(format!(
                    "unknown root_id {other:?}: use {EXCHANGE_ROOT_ID:?} or {STATS_ROOT_ID:?}"
                ))
            }
        };
        // The configuration is checked first (a bad one is still refused on a gateway).
        let node_id = node::node_id();
        if is_gateway_node(&node_id) {
            log::warn!(
                "{root_id}: node {node_id:?} is an Istio gateway (router~): this filter stays \
                 inert, passing every byte untouched and reporting nothing; scope the resource \
                 to sidecars"
            );
            self.filter = Filter::InertOnGateway;
        }
        Ok(())
    }
}

impl Context for DispatchRoot {}

/// A stream that leaves every byte alone (a root whose configuration failed, or on a gateway).
struct PassThrough;

impl Context for PassThrough {}
impl StreamContext for PassThrough {}

impl RootContext for DispatchRoot {
    fn on_configure(&mut self, config_size: usize) -> bool {
        if let Some(level) = host::log_level() {
            proxy_wasm::set_log_level(level);
        }
        match self.configure(config_size) {
            Ok(()) => true,
            Err(e) => {
                // Returning false makes Envoy reject the filter configuration.
                log::error!("invalid configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Filter::Stats(stats) = &mut self.filter {
            stats.on_tick();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        let stream = match &self.filter {
            Filter::Exchange(root) => root.create_stream(context_id),
            Filter::Stats(root) => root.create_stream(context_id),
            // The SDK panics on None; a context that touches nothing is the safe answer.
            Filter::Unconfigured | Filter::InertOnGateway => Box::new(PassThrough),
        };
        #[cfg(feature = "test-trap")]
        let stream = Box::new(super::test_trap::TrapTrigger(stream));
        Some(stream)
    }
}
