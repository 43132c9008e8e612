//! Glue for the metadata-exchange filter: maps Envoy's downstream/upstream callbacks to the
//! exchange's outgoing/incoming directions, applies verdicts to the buffers, and publishes the
//! peer in filter state.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;

use crate::logic::endpoint;
use crate::logic::exchange::{Counter, Event, Exchange, NotFound, Verdict};
use crate::logic::exchange_config::{ClientGate, ExchangeConfig, PeerTrust, Role, Side};
use crate::logic::frame::{encode_frame, PeerFrame};
use crate::logic::log_limit::{WarnLimiter, WARN_INTERVAL_NANOS};
use crate::logic::peer_property;
use crate::logic::workload::WorkloadMetadata;

use super::host::{self, Buffer};
use super::node;

/// Filter-state keys (stored by Envoy as `wasm.<key>`), as Istio names them.
pub mod keys {
    pub const DOWNSTREAM_PEER: &str = "downstream_peer";
    pub const DOWNSTREAM_PEER_ID: &str = "downstream_peer_id";
    pub const UPSTREAM_PEER: &str = "upstream_peer";
    pub const UPSTREAM_PEER_ID: &str = "upstream_peer_id";
    pub const PEER_NOT_FOUND: &str = "peer_not_found";
}

struct Shared {
    config: ExchangeConfig,
    our_frame: Vec<u8>,
    counters: [Option<u32>; Counter::ALL.len()],
    /// A peer can cause a "no peer metadata" case on every connection: warn once a minute.
    warnings: RefCell<WarnLimiter>,
}

impl Shared {
    /// A warning a network peer can cause: at most one per interval on this worker, the rest at
    /// debug level (the counters count every case).
    fn warn_limited(&self, message: std::fmt::Arguments) {
        let allowed = self
            .warnings
            .borrow_mut()
            .allow(host::now_nanos(), WARN_INTERVAL_NANOS);
        match allowed {
            Some(0) => log::warn!("{message}"),
            Some(suppressed) => log::warn!(
                "{message} (and {suppressed} similar since the last warning, logged at debug)"
            ),
            None => log::debug!("{message}"),
        }
    }
}

pub struct ExchangeRoot {
    shared: Rc<Shared>,
}

impl ExchangeRoot {
    pub fn configure(config: &[u8]) -> Result<Self, String> {
        let config = ExchangeConfig::parse(config).map_err(|e| e.to_string())?;
        let local = node::local_workload();
        let our_frame = encode_frame(
            &local.to_exchange_struct(&config.additional_labels),
            &node::node_id(),
        );
        let mut counters = [None; Counter::ALL.len()];
        for (slot, counter) in counters.iter_mut().zip(Counter::ALL) {
            let name = counter.stat_name(&config.stat_prefix);
            *slot = host::define_counter(&name)
                .map_err(|e| log::warn!("defining counter {name} failed: {e}"))
                .ok();
        }
        declare_peer_property(config.side);
        log::info!(
            "metadata exchange configured: {:?}, frame {} bytes, local workload {:?}",
            config.role,
            our_frame.len(),
            local.workload_name
        );
        Ok(ExchangeRoot {
            shared: Rc::new(Shared {
                config,
                our_frame,
                counters,
                warnings: RefCell::new(WarnLimiter::default()),
            }),
        })
    }

    pub fn create_stream(&self, _context_id: u32) -> Box<dyn StreamContext> {
        let config = &self.shared.config;
        Box::new(ExchangeStream {
            exchange: Exchange::new(config.role, config.max_frame_bytes),
            shared: Rc::clone(&self.shared),
            started: false,
        })
    }
}

struct ExchangeStream {
    shared: Rc<Shared>,
    exchange: Exchange,
    started: bool,
}

impl Context for ExchangeStream {}

impl StreamContext for ExchangeStream {
    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        match self.shared.config.side {
            Side::Client => self.outgoing(Buffer::Downstream, data_size),
            Side::Server => self.incoming(Buffer::Downstream, data_size, end_of_stream),
        }
    }

    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        match self.shared.config.side {
            Side::Client => self.incoming(Buffer::Upstream, data_size, end_of_stream),
            Side::Server => self.outgoing(Buffer::Upstream, data_size),
        }
    }

    /// The connection closed (Envoy's close event, not a half-close). `on_upstream_close` is not
    /// used: Envoy calls it on the upstream's end of stream, after which the client may still
    /// send its frame, which must then still be stripped.
    fn on_downstream_close(&mut self, _peer_type: proxy_wasm::types::PeerType) {
        self.close();
    }
}

impl ExchangeStream {
    /// On the first data callback (properties such as the upstream host exist only by then).
    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let mut events = self.exchange.start();
        if self.exchange.needs_endpoint_gate() {
            let mesh = match self.exchange.role() {
                Role::Client(ClientGate::IstioMtls) => upstream_is_istio_mtls(),
                _ => upstream_is_mesh_endpoint(),
            };
            events.extend(
                self.exchange
                    .decide_gate(mesh, self.shared.config.max_frame_bytes),
            );
        }
        self.apply_events(events);
    }

    /// The connection closed: a peer still undecided is `peer_not_found` (before tcp_proxy's
    /// access log runs, so the log agrees with the stats' `unknown` peer).
    fn close(&mut self) {
        let events = self.exchange.on_close();
        self.apply_events(events);
    }

    fn outgoing(&mut self, buffer: Buffer, data_size: usize) -> Action {
        if self.exchange.is_settled() {
            return Action::Continue;
        }
        self.start();
        let verdict = self.exchange.on_outgoing(data_size);
        if verdict.prepend_frame {
            if let Err(e) = host::set_buffer(buffer, 0, 0, &self.shared.our_frame) {
                log::error!("prepending our exchange frame failed: {e}; peer will not learn us");
            }
        }
        self.apply_events(verdict.events);
        Action::Continue
    }

    fn incoming(&mut self, buffer: Buffer, data_size: usize, end_of_stream: bool) -> Action {
        if self.exchange.is_settled() {
            return Action::Continue;
        }
        self.start();
        let held = self.exchange.held_incoming();
        let new_bytes = match data_size.checked_sub(held) {
            Some(0) => Ok(Vec::new()),
            Some(new) => host::get_buffer(buffer, held, new),
            None => Err(host::HostError(0)),
        };
        let Ok(new_bytes) = new_bytes else {
            log::error!("reading {data_size} incoming bytes (holding {held}) failed; giving up");
            let events = self.exchange.abandon();
            self.apply_events(events);
            return Action::Continue;
        };
        let Verdict {
            strip,
            pause,
            events,
            ..
        } = self.exchange.on_incoming(&new_bytes, end_of_stream);
        if strip > 0 {
            if let Err(e) = host::set_buffer(buffer, 0, strip, &[]) {
                log::error!("stripping the {strip}-byte peer frame failed: {e}");
            }
        }
        self.apply_events(events);
        if pause {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn apply_events(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::Count(counter) => self.count(counter),
                Event::PeerFound(frame) => self.publish_peer(frame),
                Event::PeerNotFound(why) => self.publish_not_found(&why),
            }
        }
    }

    fn count(&self, counter: Counter) {
        let slot = Counter::ALL.iter().position(|c| *c == counter);
        if let Some(id) = slot.and_then(|i| self.shared.counters[i]) {
            if let Err(e) = host::increment_counter(id, 1) {
                log::debug!("incrementing {} failed: {e}", counter.name());
            }
        }
    }

    fn publish_peer(&mut self, frame: PeerFrame) {
        let config = &self.shared.config;
        if config.side == Side::Server
            && config.trust == PeerTrust::MtlsOnly
            && !connection_is_mtls()
        {
            self.shared.warn_limited(format_args!(
                "ignoring peer metadata on a connection without mutual TLS (trust: mtls_only)"
            ));
            self.set_state(keys::PEER_NOT_FOUND, b"true");
            return;
        }
        let peer = WorkloadMetadata::from_exchange_struct(&frame.metadata);
        log::debug!(
            "peer found: workload {:?} namespace {:?}",
            peer.workload_name,
            peer.namespace
        );
        let (peer_key, id_key) = match config.side {
            Side::Server => (keys::DOWNSTREAM_PEER, keys::DOWNSTREAM_PEER_ID),
            Side::Client => (keys::UPSTREAM_PEER, keys::UPSTREAM_PEER_ID),
        };
        self.set_state(peer_key, &peer.to_peer_struct().encode_to_vec());
        if let Some(id) = frame.id {
            self.set_state(id_key, id.as_bytes());
        }
    }

    fn publish_not_found(&self, why: &NotFound) {
        if why.is_warning(self.shared.config.role) {
            self.shared
                .warn_limited(format_args!("no peer metadata: {why}"));
        } else {
            log::debug!("no peer metadata: {why}");
        }
        self.set_state(keys::PEER_NOT_FOUND, b"true");
    }

    fn set_state(&self, key: &str, value: &[u8]) {
        if let Err(e) = host::set_property(&[key], value) {
            log::error!("setting filter state {key} failed: {e}");
        }
    }
}

/// Client gate: does the chosen upstream endpoint carry `tlsMode: istio`?
fn upstream_is_mesh_endpoint() -> bool {
    match host::get_property(&["xds", "upstream_host_metadata"]) {
        Ok(Some(bytes)) => endpoint::decode_metadata(&bytes)
            .map(|md| endpoint::is_mesh_endpoint(&md))
            .unwrap_or_else(|| {
                log::warn!("upstream host metadata did not decode; treating as non-mesh");
                false
            }),
        Ok(None) => false,
        Err(e) => {
            log::warn!("reading upstream host metadata failed: {e}; treating as non-mesh");
            false
        }
    }
}

/// Client gate `istio_mtls`: is the upstream connection TLS to a SPIFFE identity? Read on the
/// first data callback: tcp_proxy reads the downstream only once the upstream is connected,
/// and a TLS upstream counts as connected after its handshake (tested for client-first and
/// server-first protocols).
fn upstream_is_istio_mtls() -> bool {
    let tls_version = host::get_property_string(&["upstream", "tls_version"]);
    let peer_san = host::get_property_string(&["upstream", "uri_san_peer_certificate"]);
    let mtls = endpoint::is_istio_mtls(tls_version.as_deref(), peer_san.as_deref());
    log::debug!("client gate istio_mtls: tls {tls_version:?}, peer {peer_san:?} -> {mtls}");
    mtls
}

/// Declares the peer key we set as a typed `google.protobuf.Struct` (see
/// `logic::peer_property`). A host without `declare_property` still stores the same bytes.
fn declare_peer_property(side: Side) {
    let key = match side {
        Side::Server => keys::DOWNSTREAM_PEER,
        Side::Client => keys::UPSTREAM_PEER,
    };
    let args = peer_property::declare_struct(key);
    // A second `on_configure` of the same root finds the key declared (BadArgument): fine.
    if let Err(e) = host::call_foreign_function(peer_property::DECLARE_PROPERTY, &args) {
        log::debug!("declare_property({key}) failed: {e}; it stays an untyped value");
    }
}

/// `connection.mtls`: one byte, read after the TLS handshake (first data callback).
fn connection_is_mtls() -> bool {
    matches!(host::get_property(&["connection", "mtls"]), Ok(Some(b)) if b.first() == Some(&1))
}
