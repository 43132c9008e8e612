//! The combined filter (`root_id: istio_tcp_telemetry`): the exchange and the stats of a
//! connection in one stream context, at one chain position before `tcp_proxy`.
//!
//! Envoy pays for every Wasm context per connection (two cost ~2.3 KiB and a set of VM calls per
//! callback, docs/BENCHMARKS.md); here one context runs both. The exchange goes first on every
//! callback and the stats counts only the application bytes it passed on (its own frame and the
//! peer's are never counted, as with the stats filter on the application side of the exchange
//! filter). The peer is handed over in memory the moment the exchange decides: no filter-state
//! polling and no Struct decode. Filter state is still written, for other filters and access
//! logs, encoded once per distinct peer by the exchange root's memo.

use crate::host::{Action, Host, PeerType};
use crate::logic::telemetry::TelemetryConfig;

use super::connection_host::ConnectionHost;
use super::exchange::{ExchangeRoot, ExchangeStream};
use super::stats::{StatsRoot, StatsStream};

pub struct TelemetryRoot<H: Host> {
    host: ConnectionHost<H>,
    exchange: ExchangeRoot<ConnectionHost<H>>,
    stats: StatsRoot<ConnectionHost<H>>,
}

impl<H: Host + Clone> TelemetryRoot<H> {
    /// `host`: a root's (no cache); each connection gets its own from it.
    pub fn configure(host: ConnectionHost<H>, config: &[u8]) -> Result<Self, String> {
        let config = TelemetryConfig::parse(config).map_err(|e| e.to_string())?;
        Ok(TelemetryRoot {
            exchange: ExchangeRoot::with_config(host.clone(), config.exchange),
            stats: StatsRoot::with_config(host.clone(), config.stats)?,
            host,
        })
    }

    pub fn on_tick(&mut self) {
        self.stats.on_tick();
    }

    pub fn create_stream(&self, context_id: u32) -> TelemetryStream<H> {
        let host = self.host.for_connection();
        TelemetryStream {
            exchange: self.exchange.create_stream_on(host.clone()),
            stats: self.stats.create_handed_stream(context_id, host.clone()),
            host,
        }
    }
}

pub struct TelemetryStream<H: Host> {
    /// Shared by both halves: reads both need are made once per connection.
    host: ConnectionHost<H>,
    exchange: ExchangeStream<ConnectionHost<H>>,
    stats: StatsStream<ConnectionHost<H>>,
}

impl<H: Host> TelemetryStream<H> {
    pub fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.host.data_callback();
        let passed = self.exchange.downstream(data_size, end_of_stream);
        self.hand_over();
        if passed.action == Action::Continue {
            self.stats
                .on_downstream_data(passed.app_bytes, end_of_stream);
        }
        passed.action
    }

    pub fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.host.data_callback();
        let passed = self.exchange.upstream(data_size, end_of_stream);
        self.hand_over();
        if passed.action == Action::Continue {
            self.stats.on_upstream_data(passed.app_bytes, end_of_stream);
        }
        passed.action
    }

    /// The connection closed: a peer still undecided becomes `peer_not_found` (the exchange's
    /// rule), handed to the stats before their close report.
    pub fn on_downstream_close(&mut self, peer: PeerType) {
        self.exchange.on_downstream_close();
        self.hand_over();
        self.stats.on_close(true, peer);
    }

    /// The upstream connection closed (who closed it, for the stats' close attributes).
    pub fn on_upstream_close(&mut self, peer: PeerType) {
        self.stats.on_close(false, peer);
    }

    pub fn on_log(&mut self) {
        self.hand_over();
        self.stats.on_log();
    }

    fn hand_over(&mut self) {
        if let Some(decision) = self.exchange.take_decision() {
            self.stats.hand_over(decision);
        }
    }
}
