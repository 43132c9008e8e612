//! The metadata-exchange filter over any [`Host`]: maps Envoy's downstream/upstream callbacks
//! to the exchange's outgoing/incoming directions, applies verdicts to the buffers, and
//! publishes the peer in filter state through the [`peer`] contract.

use std::cell::RefCell;
use std::rc::Rc;

use crate::host::{Action, Buffer, Counter, Host, HostError};
use crate::host_log;
use crate::logic::endpoint;
use crate::logic::exchange::config::{ClientGate, ExchangeConfig, Role, Side};
use crate::logic::exchange::frame::{encode_frame, PeerFrame};
use crate::logic::exchange::memo::PayloadMemo;
use crate::logic::exchange::{self as machine, Event, Exchange, NotFound, Verdict};
use crate::logic::handover::{PeerDecision, PublishMemo};
use crate::logic::log_limit::{WarnLimiter, WARN_INTERVAL_NANOS};
use crate::logic::peer::{self, PeerSlot};

use super::node;

/// Per-VM state shared by a root and its streams.
struct Shared {
    config: ExchangeConfig,
    /// Encoded once per root: the node's id and metadata come from the bootstrap and cannot
    /// change under a running Envoy; a new filter configuration (xDS) is a new root.
    our_frame: Vec<u8>,
    counters: [Option<Counter>; machine::Counter::ALL.len()],
    /// Payloads this worker decoded lately (owned here, lent to each connection's decoder).
    memo: RefCell<PayloadMemo>,
    /// Peers this worker published lately: converted and encoded once per distinct peer.
    published: RefCell<PublishMemo>,
    /// A peer can cause a "no peer metadata" case on every connection: warn once a minute.
    warnings: RefCell<WarnLimiter>,
}

impl Shared {
    /// A warning a network peer can cause: at most one per interval on this worker, the rest at
    /// debug level (the counters count every case).
    fn warn_limited(&self, host: &impl Host, message: std::fmt::Arguments) {
        let allowed = self
            .warnings
            .borrow_mut()
            .allow(host.now_nanos(), WARN_INTERVAL_NANOS);
        match allowed {
            Some(0) => host_log!(host, Warn, "{message}"),
            Some(suppressed) => host_log!(
                host,
                Warn,
                "{message} (and {suppressed} similar since the last warning, logged at debug)"
            ),
            None => host_log!(host, Debug, "{message}"),
        }
    }
}

pub struct ExchangeRoot<H: Host> {
    host: H,
    shared: Rc<Shared>,
}

impl<H: Host + Clone> ExchangeRoot<H> {
    pub fn configure(host: H, config: &[u8]) -> Result<Self, String> {
        let config = ExchangeConfig::parse(config).map_err(|e| e.to_string())?;
        Ok(Self::with_config(host, config))
    }

    /// A root for a parsed configuration (the combined filter parses its own).
    pub fn with_config(host: H, config: ExchangeConfig) -> Self {
        let local = node::local_workload(&host);
        let our_frame = encode_frame(
            &local.to_exchange_struct(&config.additional_labels),
            &node::node_id(&host),
        );
        let mut counters = [None; machine::Counter::ALL.len()];
        for (slot, counter) in counters.iter_mut().zip(machine::Counter::ALL) {
            let name = counter.stat_name(&config.stat_prefix);
            *slot = host
                .define_counter(&name)
                .map_err(|e| host_log!(&host, Warn, "defining counter {name} failed: {e}"))
                .ok();
        }
        declare_peer_property(&host, config.side);
        host_log!(
            &host,
            Info,
            "metadata exchange configured: {:?}, frame {} bytes, local workload {:?}",
            config.role,
            our_frame.len(),
            local.workload_name
        );
        ExchangeRoot {
            host,
            shared: Rc::new(Shared {
                published: RefCell::new(PublishMemo::new(PeerSlot::of_side(config.side))),
                config,
                our_frame,
                counters,
                memo: RefCell::new(PayloadMemo::default()),
                warnings: RefCell::new(WarnLimiter::default()),
            }),
        }
    }

    pub fn create_stream(&self) -> ExchangeStream<H> {
        self.create_stream_on(self.host.clone())
    }

    /// A stream whose host calls go through `host` (the combined filter's per-connection host).
    pub fn create_stream_on(&self, host: H) -> ExchangeStream<H> {
        let config = &self.shared.config;
        ExchangeStream {
            host,
            exchange: Exchange::new(config.role, config.max_frame_bytes),
            shared: Rc::clone(&self.shared),
            started: false,
            decision: None,
        }
    }
}

pub struct ExchangeStream<H: Host> {
    host: H,
    shared: Rc<Shared>,
    exchange: Exchange,
    started: bool,
    /// The decision about the peer, once made, until the combined filter takes it.
    decision: Option<PeerDecision>,
}

/// What a data callback did: the action, and how many application bytes it passed on (the
/// buffer without the peer's frame and without ours; 0 while paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    pub action: Action,
    pub app_bytes: usize,
}

impl<H: Host> ExchangeStream<H> {
    pub fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.downstream(data_size, end_of_stream).action
    }

    pub fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.upstream(data_size, end_of_stream).action
    }

    pub fn downstream(&mut self, data_size: usize, end_of_stream: bool) -> Passed {
        match self.shared.config.side {
            Side::Client => self.outgoing(Buffer::Downstream, data_size),
            Side::Server => self.incoming(Buffer::Downstream, data_size, end_of_stream),
        }
    }

    pub fn upstream(&mut self, data_size: usize, end_of_stream: bool) -> Passed {
        match self.shared.config.side {
            Side::Client => self.incoming(Buffer::Upstream, data_size, end_of_stream),
            Side::Server => self.outgoing(Buffer::Upstream, data_size),
        }
    }

    /// The decision about the peer made since the last call (at most one per connection).
    pub fn take_decision(&mut self) -> Option<PeerDecision> {
        self.decision.take()
    }

    /// The connection closed (Envoy's close event, not a half-close): a peer still undecided is
    /// `peer_not_found` (before tcp_proxy's access log runs, so the log agrees with the stats'
    /// `unknown` peer). Not on the upstream's end of stream: the client may still send its
    /// frame after it, which must then still be stripped.
    pub fn on_downstream_close(&mut self) {
        let events = self.exchange.on_close();
        self.apply_events(events);
    }

    /// On the first data callback (properties such as the upstream host exist only by then).
    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let mut events = self.exchange.start();
        if self.exchange.needs_endpoint_gate() {
            let mesh = match self.exchange.role() {
                Role::Client(ClientGate::IstioMtls) => self.upstream_is_istio_mtls(),
                _ => self.upstream_is_mesh_endpoint(),
            };
            events.extend(
                self.exchange
                    .decide_gate(mesh, self.shared.config.max_frame_bytes),
            );
        }
        self.apply_events(events);
    }

    fn outgoing(&mut self, buffer: Buffer, data_size: usize) -> Passed {
        let passed = Passed {
            action: Action::Continue,
            app_bytes: data_size,
        };
        if self.exchange.is_settled() {
            return passed;
        }
        self.start();
        let verdict = self.exchange.on_outgoing(data_size);
        if verdict.prepend_frame {
            if let Err(e) = self.host.set_buffer(buffer, 0, 0, &self.shared.our_frame) {
                host_log!(
                    &self.host,
                    Error,
                    "prepending our exchange frame failed: {e}; peer will not learn us"
                );
            }
        }
        self.apply_events(verdict.events);
        passed
    }

    fn incoming(&mut self, buffer: Buffer, data_size: usize, end_of_stream: bool) -> Passed {
        let all = Passed {
            action: Action::Continue,
            app_bytes: data_size,
        };
        if self.exchange.is_settled() {
            return all;
        }
        self.start();
        let held = self.exchange.held_incoming();
        let new_bytes = match data_size.checked_sub(held) {
            Some(0) => Ok(Vec::new()),
            Some(new) => self.host.buffer(buffer, held, new),
            None => Err(HostError::BAD_ARGUMENT),
        };
        let Ok(new_bytes) = new_bytes else {
            host_log!(
                &self.host,
                Error,
                "reading {data_size} incoming bytes (holding {held}) failed; giving up"
            );
            let events = self.exchange.abandon();
            self.apply_events(events);
            return all;
        };
        let Verdict {
            strip,
            pause,
            events,
            ..
        } = {
            let mut memo = self.shared.memo.borrow_mut();
            self.exchange
                .on_incoming(&new_bytes, end_of_stream, &mut memo)
        };
        if strip > 0 {
            if let Err(e) = self.host.set_buffer(buffer, 0, strip, &[]) {
                host_log!(
                    &self.host,
                    Error,
                    "stripping the {strip}-byte peer frame failed: {e}"
                );
            }
        }
        self.apply_events(events);
        if pause {
            Passed {
                action: Action::Pause,
                app_bytes: 0,
            }
        } else {
            Passed {
                action: Action::Continue,
                app_bytes: data_size.saturating_sub(strip),
            }
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

    fn count(&self, counter: machine::Counter) {
        let slot = machine::Counter::ALL.iter().position(|c| *c == counter);
        if let Some(handle) = slot.and_then(|i| self.shared.counters[i]) {
            if let Err(e) = self.host.increment(handle, 1) {
                host_log!(
                    &self.host,
                    Debug,
                    "incrementing {} failed: {e}",
                    counter.name()
                );
            }
        }
    }

    fn publish_peer(&mut self, frame: PeerFrame) {
        let config = &self.shared.config;
        let mtls = || {
            let property = self.host.property(&["connection", "mtls"]).ok().flatten();
            peer::is_mutual_tls(property.as_deref())
        };
        if !peer::trusted(config.side, config.trust, mtls) {
            self.shared.warn_limited(
                &self.host,
                format_args!(
                    "ignoring peer metadata on a connection without mutual TLS (trust: mtls_only)"
                ),
            );
            self.write(&peer::not_found());
            self.decision = Some(PeerDecision::NotFound);
            return;
        }
        let published = self
            .shared
            .published
            .borrow_mut()
            .publish(&frame.metadata, frame.id.as_deref());
        host_log!(
            &self.host,
            Debug,
            "peer found: workload {:?} namespace {:?}",
            published.metadata.workload_name,
            published.metadata.namespace
        );
        self.write(&published.writes);
        self.decision = Some(PeerDecision::Found(published));
    }

    fn publish_not_found(&mut self, why: &NotFound) {
        if why.is_warning(self.shared.config.role) {
            self.shared
                .warn_limited(&self.host, format_args!("no peer metadata: {why}"));
        } else {
            host_log!(&self.host, Debug, "no peer metadata: {why}");
        }
        self.write(&peer::not_found());
        self.decision = Some(PeerDecision::NotFound);
    }

    fn write(&self, writes: &[peer::Write]) {
        for (key, value) in writes {
            if let Err(e) = self.host.set_property(&[key], value) {
                host_log!(&self.host, Error, "setting filter state {key} failed: {e}");
            }
        }
    }

    /// Client gate `istio_mtls`: is the upstream connection TLS to a SPIFFE identity? Read on
    /// the first data callback: tcp_proxy reads the downstream only once the upstream is
    /// connected, and a TLS upstream counts as connected after its handshake (tested for
    /// client-first and server-first protocols).
    fn upstream_is_istio_mtls(&self) -> bool {
        let tls_version = self.host.property_string(&["upstream", "tls_version"]);
        let peer_san = self
            .host
            .property_string(&["upstream", "uri_san_peer_certificate"]);
        let mtls = endpoint::is_istio_mtls(tls_version.as_deref(), peer_san.as_deref());
        host_log!(
            &self.host,
            Debug,
            "client gate istio_mtls: tls {tls_version:?}, peer {peer_san:?} -> {mtls}"
        );
        mtls
    }

    /// Client gate: does the chosen upstream endpoint carry `tlsMode: istio`?
    fn upstream_is_mesh_endpoint(&self) -> bool {
        match self.host.property(&["xds", "upstream_host_metadata"]) {
            Ok(Some(bytes)) => endpoint::decode_metadata(&bytes)
                .map(|md| endpoint::is_mesh_endpoint(&md))
                .unwrap_or_else(|| {
                    host_log!(
                        &self.host,
                        Warn,
                        "upstream host metadata did not decode; treating as non-mesh"
                    );
                    false
                }),
            Ok(None) => false,
            Err(e) => {
                host_log!(
                    &self.host,
                    Warn,
                    "reading upstream host metadata failed: {e}; treating as non-mesh"
                );
                false
            }
        }
    }
}

/// Declares the peer key this side sets as a typed `google.protobuf.Struct` (see
/// [`peer::declare_struct`]). A host without `declare_property` still stores the same bytes.
fn declare_peer_property(host: &impl Host, side: Side) {
    let key = PeerSlot::of_side(side).peer_key();
    let args = peer::declare_struct(key);
    // A second `on_configure` of the same root finds the key declared (BadArgument): fine.
    if let Err(e) = host.call_foreign_function(peer::DECLARE_PROPERTY, &args) {
        host_log!(
            host,
            Debug,
            "declare_property({key}) failed: {e}; it stays an untyped value"
        );
    }
}
