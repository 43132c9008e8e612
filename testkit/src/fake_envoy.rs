//! A fake Envoy: one sidecar's worker, running the shipped filters (`filters::Dispatch`) in
//! listener chains through a native [`Host`] that behaves as Envoy 1.40 was measured to
//! (docs/ENVOY-NOTES.md; each rule below is re-measured by an end-to-end test there):
//!
//! - **buffers**: each direction of a connection has one buffer, as Envoy's connection buffers.
//!   A chunk is appended to it, then the chain is walked with the whole buffer: read
//!   (downstream) data in filter order, write (upstream) data in reverse order. A filter that
//!   returns `Pause` stops the walk and the bytes stay; the next chunk walks the chain again
//!   from the first filter with the accumulated buffer (6 → 12 → 18 bytes). When every filter
//!   continues, the buffer is passed on whole. `set_buffer` accepts prepend `(0, 0)`, drop a
//!   prefix `(0, n < size)` with an optional prepend, replace all `(0, >= size)` and append
//!   `(>= size, 0)`; a start inside the buffer, or a call outside a data callback, is
//!   BadArgument;
//! - **pausing at end of stream** loses the held bytes and closes the connection;
//! - **properties**: the upstream's (`upstream.*`, `xds.upstream_host_metadata`,
//!   `xds.cluster_name`, `xds.cluster_metadata`) and the TLS ones (`connection.mtls`,
//!   `connection.uri_san_*`, `connection.tls_version`) exist only from the first data callback
//!   on (before it, NotFound, and `connection.mtls` reads false);
//! - **filter state**: `set_property([key])` is stored as `wasm.<key>`, read back by any filter
//!   of the connection with `[key]` or `["filter_state", "wasm.<key>"]`;
//! - **metrics**: one stat per name, shared by every root (counters, gauges that go up and
//!   down but never below zero, histograms keeping every recorded value); **ticks**: each root
//!   with a tick period, with the root as effective context until it calls
//!   `set_effective_context`;
//! - **close**: `on_downstream_data(0, eos)` → `on_upstream_data(0, eos)` (each only if that
//!   direction had not ended) → `on_downstream_close(Remote)` (the client closed) → `on_log`,
//!   each in filter order → contexts dropped; a test ends the backend's direction first with
//!   `upstream(id, b"", true)`, and changes a property mid-connection with
//!   `set_connection_property` (Envoy's `response.flags` at close);
//! - **foreign functions**: `declare_property` (a name declared twice is BadArgument); a clock
//!   that moves only when a test says so;
//! - **accounting**: every VM callback the fake makes and every host call a filter makes are
//!   counted, by callback ([`FakeEnvoy::calls`]): the host-call budget of docs/BENCHMARKS.md is
//!   pinned as counts by a native test.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use istio_tcp_telemetry::filters::{Dispatch, Stream};
use istio_tcp_telemetry::host::{
    Action, Buffer, Counter, Gauge, Histogram, Host, HostError, LogLevel, PeerType,
};

/// Which direction a chunk travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (downstream) towards the backend: read filters, in order.
    Downstream,
    /// From the backend back to the client: write filters, in reverse order.
    Upstream,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Downstream => 0,
            Direction::Upstream => 1,
        }
    }
}

/// Properties that exist only once the upstream is chosen and the TLS handshake is done, i.e.
/// from the first data callback on.
fn is_late_property(path: &str) -> bool {
    path.starts_with("upstream.")
        || matches!(
            path,
            "xds.upstream_host_metadata"
                | "xds.cluster_name"
                | "xds.cluster_metadata"
                | "connection.mtls"
                | "connection.tls_version"
                | "connection.uri_san_peer_certificate"
                | "connection.uri_san_local_certificate"
        )
}

/// A connection as Envoy holds it.
#[derive(Debug, Default)]
struct ConnectionState {
    properties: BTreeMap<String, Vec<u8>>,
    filter_state: BTreeMap<String, Vec<u8>>,
    data_seen: bool,
    /// The connection buffer of each direction (what the current callback sees).
    buffers: [Vec<u8>; 2],
    /// Bytes passed on: to the upstream (backend) and to the downstream (client).
    delivered: [Vec<u8>; 2],
    ended: [bool; 2],
    /// Bytes dropped because a filter paused at end of stream.
    lost: usize,
    /// The close sequence has started / ended.
    closing: bool,
    closed: bool,
    /// A data callback of this direction is running (the buffer may be edited).
    in_callback: Option<usize>,
}

#[derive(Debug)]
struct Metric {
    name: String,
    value: u64,
    /// A gauge's value (gauges may go down; Envoy's never below 0, checked here).
    gauge: i64,
    records: Vec<u64>,
}

#[derive(Debug)]
struct RootState {
    root_id: String,
    config: Vec<u8>,
    tick: Option<Duration>,
}

/// What every host handle of one fake Envoy shares.
#[derive(Debug)]
struct World {
    node_id: String,
    node_metadata: Option<Vec<u8>>,
    log_level: LogLevel,
    logs: Vec<(LogLevel, String)>,
    metrics: Vec<Metric>,
    roots: Vec<RootState>,
    connections: BTreeMap<u32, ConnectionState>,
    /// Stream context id → connection id.
    contexts: BTreeMap<u32, u32>,
    /// The context host calls act on; `None` for a root.
    effective: Option<u32>,
    /// Host calls made to fail (InternalFailure), by name (see [`FakeEnvoy::fail`]).
    failing: Vec<HostCall>,
    /// The wall clock the host reports, in nanoseconds (see [`FakeEnvoy::advance`]).
    now_nanos: u64,
    /// Keys declared typed through the `declare_property` foreign function, with their schema.
    declared: BTreeMap<String, Vec<u8>>,
    /// The VM callback running now (`on_configure`, `on_downstream_data`, …).
    callback: &'static str,
    /// (callback, call) → how many times: the callback itself under `"callback"`, each host
    /// call under its proxy-wasm name with the property path or buffer when it has one.
    calls: BTreeMap<(&'static str, String), u64>,
}

/// Host calls whose failure a test can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCall {
    Property,
    SetProperty,
    Buffer,
    SetBuffer,
    DefineMetric,
    Increment,
    SetTickPeriod,
    SetEffectiveContext,
    ForeignFunction,
}

impl World {
    fn connection(&self) -> Option<&ConnectionState> {
        let context = self.effective?;
        self.connections.get(self.contexts.get(&context)?)
    }

    fn connection_mut(&mut self) -> Option<&mut ConnectionState> {
        let context = self.effective?;
        let id = *self.contexts.get(&context)?;
        self.connections.get_mut(&id)
    }
}

/// The [`Host`] a fake Envoy gives one root and its streams.
#[derive(Debug, Clone)]
pub struct FakeHost {
    world: Rc<RefCell<World>>,
    root: usize,
}

impl FakeHost {
    fn count(&self, call: impl Into<String>) {
        let mut world = self.world.borrow_mut();
        let key = (world.callback, call.into());
        *world.calls.entry(key).or_default() += 1;
    }

    fn check(&self, call: HostCall) -> Result<(), HostError> {
        if self.world.borrow().failing.contains(&call) {
            Err(HostError::INTERNAL_FAILURE)
        } else {
            Ok(())
        }
    }
}

impl Host for FakeHost {
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        self.count(format!("get_property {}", path.join(".")));
        if path != ["plugin_root_id"] {
            self.check(HostCall::Property)?;
        }
        let world = self.world.borrow();
        match path {
            ["plugin_root_id"] => {
                return Ok(world.roots.get(self.root).map(|r| r.root_id.clone().into()))
            }
            ["xds", "node", "id"] => return Ok(Some(world.node_id.clone().into())),
            ["xds", "node", "metadata"] => return Ok(world.node_metadata.clone()),
            // Envoy 1.40 has no `node` property.
            ["node", ..] => return Ok(None),
            _ => {}
        }
        let Some(connection) = world.connection() else {
            return Ok(None);
        };
        match path {
            [key] => Ok(connection.filter_state.get(&format!("wasm.{key}")).cloned()),
            ["filter_state", key] => Ok(connection.filter_state.get(*key).cloned()),
            _ => {
                let joined = path.join(".");
                if is_late_property(&joined) && !connection.data_seen {
                    return Ok((joined == "connection.mtls").then(|| vec![0]));
                }
                Ok(connection.properties.get(&joined).cloned())
            }
        }
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        self.count(format!("set_property {}", path.join(".")));
        self.check(HostCall::SetProperty)?;
        let mut world = self.world.borrow_mut();
        let connection = world.connection_mut().ok_or(HostError::NOT_FOUND)?;
        connection
            .filter_state
            .insert(format!("wasm.{}", path.join(".")), value.to_vec());
        Ok(())
    }

    fn buffer(&self, buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
        self.count(format!("get_buffer {buffer:?}"));
        if buffer != Buffer::PluginConfiguration {
            self.check(HostCall::Buffer)?;
        }
        let world = self.world.borrow();
        let bytes: &[u8] = match buffer {
            Buffer::PluginConfiguration => match world.roots.get(self.root) {
                Some(root) => &root.config,
                None => return Err(HostError::NOT_FOUND),
            },
            Buffer::Downstream | Buffer::Upstream => {
                let connection = world.connection().ok_or(HostError::NOT_FOUND)?;
                let index = if buffer == Buffer::Downstream { 0 } else { 1 };
                &connection.buffers[index]
            }
        };
        if start > bytes.len() {
            return Err(HostError::BAD_ARGUMENT);
        }
        let end = start.saturating_add(max).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    fn set_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        len: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        self.count(format!("set_buffer {buffer:?}"));
        self.check(HostCall::SetBuffer)?;
        let index = match buffer {
            Buffer::Downstream => 0,
            Buffer::Upstream => 1,
            Buffer::PluginConfiguration => return Err(HostError::BAD_ARGUMENT),
        };
        let mut world = self.world.borrow_mut();
        let connection = world.connection_mut().ok_or(HostError::BAD_ARGUMENT)?;
        if connection.in_callback != Some(index) {
            // e.g. from on_new_connection or a root: Envoy has no buffer to edit.
            return Err(HostError::BAD_ARGUMENT);
        }
        let bytes = &mut connection.buffers[index];
        let size = bytes.len();
        match (start, len) {
            (0, n) if n >= size => *bytes = value.to_vec(),
            (0, n) => {
                bytes.drain(..n);
                bytes.splice(0..0, value.iter().copied());
            }
            (s, 0) if s >= size => bytes.extend_from_slice(value),
            _ => return Err(HostError::BAD_ARGUMENT),
        }
        Ok(())
    }

    fn define_counter(&self, name: &str) -> Result<Counter, HostError> {
        self.define(name).map(Counter)
    }

    fn increment(&self, counter: Counter, by: u64) -> Result<(), HostError> {
        self.count("increment_metric");
        self.check(HostCall::Increment)?;
        let mut world = self.world.borrow_mut();
        let metric = world
            .metrics
            .get_mut(counter.0 as usize)
            .ok_or(HostError::NOT_FOUND)?;
        metric.value = metric.value.saturating_add(by);
        Ok(())
    }

    fn define_gauge(&self, name: &str) -> Result<Gauge, HostError> {
        self.define(name).map(Gauge)
    }

    fn add(&self, gauge: Gauge, by: i64) -> Result<(), HostError> {
        self.count("add_metric");
        self.check(HostCall::Increment)?;
        let mut world = self.world.borrow_mut();
        let metric = world
            .metrics
            .get_mut(gauge.0 as usize)
            .ok_or(HostError::NOT_FOUND)?;
        metric.gauge = metric.gauge.saturating_add(by);
        assert!(metric.gauge >= 0, "gauge {} went below 0", metric.name);
        Ok(())
    }

    fn define_histogram(&self, name: &str) -> Result<Histogram, HostError> {
        self.define(name).map(Histogram)
    }

    fn record(&self, histogram: Histogram, value: u64) -> Result<(), HostError> {
        self.count("record_metric");
        let mut world = self.world.borrow_mut();
        let metric = world
            .metrics
            .get_mut(histogram.0 as usize)
            .ok_or(HostError::NOT_FOUND)?;
        metric.records.push(value);
        Ok(())
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.count("set_tick_period");
        self.check(HostCall::SetTickPeriod)?;
        let mut world = self.world.borrow_mut();
        let root = world.roots.get_mut(self.root).ok_or(HostError::NOT_FOUND)?;
        root.tick = Some(period);
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.count("set_effective_context");
        self.check(HostCall::SetEffectiveContext)?;
        let mut world = self.world.borrow_mut();
        if !world.contexts.contains_key(&context_id) {
            return Err(HostError::BAD_ARGUMENT);
        }
        world.effective = Some(context_id);
        Ok(())
    }

    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, HostError> {
        self.count(format!("call_foreign_function {name}"));
        self.check(HostCall::ForeignFunction)?;
        match name {
            // Envoy 1.40's `declare_property`: DeclarePropertyArguments {name = 1, …, schema = 4};
            // a second declaration of a name is BadArgument.
            "declare_property" => {
                let (name, schema) = declared_property(arguments).ok_or(HostError::BAD_ARGUMENT)?;
                let mut world = self.world.borrow_mut();
                if world.declared.contains_key(&name) {
                    return Err(HostError::BAD_ARGUMENT);
                }
                world.declared.insert(name, schema);
                Ok(None)
            }
            _ => Err(HostError::NOT_FOUND),
        }
    }

    fn now_nanos(&self) -> u64 {
        self.count("get_current_time");
        self.world.borrow().now_nanos
    }

    fn log_level(&self) -> LogLevel {
        self.world.borrow().log_level
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.count("log");
        self.world
            .borrow_mut()
            .logs
            .push((level, message.to_string()));
    }
}

/// A VM callback starts: host calls from now on are counted under it.
fn enter(world: &Rc<RefCell<World>>, callback: &'static str) {
    let mut world = world.borrow_mut();
    world.callback = callback;
    *world
        .calls
        .entry((callback, "callback".into()))
        .or_default() += 1;
}

/// Fields 1 (name) and 4 (schema) of a `DeclarePropertyArguments` message.
fn declared_property(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Args {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(bytes = "vec", tag = "4")]
        schema: Vec<u8>,
    }
    let args = <Args as prost::Message>::decode(bytes).ok()?;
    Some((args.name, args.schema))
}

impl FakeHost {
    fn define(&self, name: &str) -> Result<u32, HostError> {
        self.count("define_metric");
        self.check(HostCall::DefineMetric)?;
        let mut world = self.world.borrow_mut();
        if let Some(i) = world.metrics.iter().position(|m| m.name == name) {
            return Ok(i as u32);
        }
        world.metrics.push(Metric {
            name: name.to_string(),
            value: 0,
            gauge: 0,
            records: Vec::new(),
        });
        Ok(world.metrics.len() as u32 - 1)
    }
}

/// A listener: its filter chain's roots, in chain order (before `tcp_proxy`).
pub type ListenerId = usize;
/// A downstream connection accepted on a listener.
pub type ConnectionId = u32;

/// A stream context as the fake Envoy calls it: the shipped filters' [`Stream`], or, to test
/// the fake itself, any other (see [`FakeEnvoy::add_test_listener`]).
pub trait StreamFilter {
    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action;
    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action;
    /// `peer`: who closed the downstream connection.
    fn on_downstream_close(&mut self, _peer: PeerType) {}
    fn on_log(&mut self) {}
}

impl StreamFilter for Stream<FakeHost> {
    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        Stream::on_downstream_data(self, data_size, end_of_stream)
    }

    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        Stream::on_upstream_data(self, data_size, end_of_stream)
    }

    fn on_downstream_close(&mut self, peer: PeerType) {
        Stream::on_downstream_close(self, peer)
    }

    fn on_log(&mut self) {
        Stream::on_log(self)
    }
}

/// Makes a test filter's stream, given the host of its context.
pub type MakeStream = Box<dyn Fn(FakeHost) -> Box<dyn StreamFilter>>;

enum Filter {
    /// A shipped root (`filters::Dispatch`), configured.
    Shipped(Dispatch<FakeHost>),
    /// A test filter (no root).
    Test(MakeStream),
}

struct Listener {
    filters: Vec<Filter>,
}

struct Connection {
    listener: ListenerId,
    /// (context id, stream) per filter, in chain order.
    streams: Vec<(u32, Box<dyn StreamFilter>)>,
}

/// One sidecar's worker (see the module docs).
pub struct FakeEnvoy {
    world: Rc<RefCell<World>>,
    listeners: Vec<Listener>,
    connections: BTreeMap<ConnectionId, Connection>,
    next_id: u32,
}

impl FakeEnvoy {
    /// An Envoy whose node has this id and `xds.node.metadata` (pairs-encoded, see
    /// [`crate::metadata`]; `None`: the property is absent).
    pub fn new(node_id: &str, node_metadata: Option<Vec<u8>>) -> Self {
        FakeEnvoy {
            world: Rc::new(RefCell::new(World {
                node_id: node_id.to_string(),
                node_metadata,
                log_level: LogLevel::Debug,
                logs: Vec::new(),
                metrics: Vec::new(),
                roots: Vec::new(),
                connections: BTreeMap::new(),
                contexts: BTreeMap::new(),
                effective: None,
                failing: Vec::new(),
                now_nanos: 1_000_000_000,
                declared: BTreeMap::new(),
                callback: "none",
                calls: BTreeMap::new(),
            })),
            listeners: Vec::new(),
            connections: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// From now on, `call` fails with InternalFailure (as a host may fail any call).
    pub fn fail(&mut self, call: HostCall) {
        self.world.borrow_mut().failing.push(call);
    }

    /// Moves the host's clock forward.
    pub fn advance(&mut self, by: Duration) {
        let mut world = self.world.borrow_mut();
        world.now_nanos = world.now_nanos.saturating_add(by.as_nanos() as u64);
    }

    /// The schema a key was declared with through `declare_property`, if it was.
    pub fn declared(&self, key: &str) -> Option<Vec<u8>> {
        self.world.borrow().declared.get(key).cloned()
    }

    /// Every host call succeeds again.
    pub fn heal(&mut self) {
        self.world.borrow_mut().failing.clear();
    }

    /// The level below which the filters do not log (Debug by default).
    pub fn set_log_level(&mut self, level: LogLevel) {
        self.world.borrow_mut().log_level = level;
    }

    /// A listener whose chain holds these filters, `(root_id, configuration)` in order, each
    /// configured as Envoy does (`on_configure`); a refused configuration is an error with the
    /// filter's log line, as Envoy refuses the listener.
    pub fn add_listener(&mut self, chain: &[(&str, &str)]) -> Result<ListenerId, String> {
        let mut roots = Vec::new();
        for (root_id, config) in chain {
            let root = {
                let mut world = self.world.borrow_mut();
                world.roots.push(RootState {
                    root_id: root_id.to_string(),
                    config: config.as_bytes().to_vec(),
                    tick: None,
                });
                world.effective = None;
                world.roots.len() - 1
            };
            let host = FakeHost {
                world: Rc::clone(&self.world),
                root,
            };
            let mut dispatch = Dispatch::new(host);
            self.enter("on_configure");
            if !dispatch.on_configure(config.len()) {
                let world = self.world.borrow();
                let why = world
                    .logs
                    .iter()
                    .rev()
                    .find(|(level, _)| *level >= LogLevel::Error)
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                return Err(why);
            }
            roots.push(dispatch);
        }
        self.listeners.push(Listener {
            filters: roots.into_iter().map(Filter::Shipped).collect(),
        });
        Ok(self.listeners.len() - 1)
    }

    /// A listener whose chain holds test filters (to check the fake's own rules with a filter
    /// that does what the shipped ones never do, e.g. pause at end of stream).
    pub fn add_test_listener(&mut self, chain: Vec<MakeStream>) -> ListenerId {
        self.listeners.push(Listener {
            filters: chain.into_iter().map(Filter::Test).collect(),
        });
        self.listeners.len() - 1
    }

    /// A connection accepted on `listener`, with these properties (`("xds.cluster_name",
    /// bytes)`; see [`crate::metadata`] for the encodings). One stream context per filter.
    pub fn connect(
        &mut self,
        listener: ListenerId,
        properties: &[(&str, Vec<u8>)],
    ) -> ConnectionId {
        let id = self.take_id();
        let mut streams = Vec::new();
        for filter in &self.listeners[listener].filters {
            let context = self.next_id;
            self.next_id += 1;
            self.world.borrow_mut().contexts.insert(context, id);
            self.enter("on_context_create");
            let stream: Box<dyn StreamFilter> = match filter {
                Filter::Shipped(root) => Box::new(root.create_stream(context)),
                Filter::Test(make) => make(FakeHost {
                    world: Rc::clone(&self.world),
                    root: usize::MAX,
                }),
            };
            streams.push((context, stream));
        }
        let state = ConnectionState {
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        };
        self.world.borrow_mut().connections.insert(id, state);
        self.connections
            .insert(id, Connection { listener, streams });
        id
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sets (or changes) a property of a live connection, as Envoy's stream info changes during
    /// a connection (`response.flags` set by a failure, termination details at close).
    pub fn set_connection_property(&mut self, connection: ConnectionId, key: &str, value: Vec<u8>) {
        if let Some(state) = self.world.borrow_mut().connections.get_mut(&connection) {
            state.properties.insert(key.to_string(), value);
        }
    }

    /// Bytes from the client (`end_of_stream`: it half-closed).
    pub fn downstream(&mut self, connection: ConnectionId, bytes: &[u8], end_of_stream: bool) {
        self.data(connection, Direction::Downstream, bytes, end_of_stream);
    }

    /// Bytes from the backend.
    pub fn upstream(&mut self, connection: ConnectionId, bytes: &[u8], end_of_stream: bool) {
        self.data(connection, Direction::Upstream, bytes, end_of_stream);
    }

    fn data(&mut self, id: ConnectionId, direction: Direction, bytes: &[u8], eos: bool) {
        let d = direction.index();
        {
            let mut world = self.world.borrow_mut();
            let Some(state) = world.connections.get_mut(&id) else {
                return;
            };
            if state.closed || state.ended[d] {
                return;
            }
            state.buffers[d].extend_from_slice(bytes);
            state.ended[d] = eos;
            state.data_seen = true;
        }
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let order: Vec<usize> = match direction {
            Direction::Downstream => (0..connection.streams.len()).collect(),
            Direction::Upstream => (0..connection.streams.len()).rev().collect(),
        };
        for i in order {
            let (context, stream) = &mut connection.streams[i];
            let size = {
                let mut world = self.world.borrow_mut();
                world.effective = Some(*context);
                let Some(state) = world.connections.get_mut(&id) else {
                    return;
                };
                state.in_callback = Some(d);
                state.buffers[d].len()
            };
            let action = match direction {
                Direction::Downstream => {
                    enter(&self.world, "on_downstream_data");
                    stream.on_downstream_data(size, eos)
                }
                Direction::Upstream => {
                    enter(&self.world, "on_upstream_data");
                    stream.on_upstream_data(size, eos)
                }
            };
            let mut world = self.world.borrow_mut();
            let Some(state) = world.connections.get_mut(&id) else {
                return;
            };
            state.in_callback = None;
            if action == Action::Pause {
                if eos {
                    // Measured: the held bytes are lost and Envoy closes the connection.
                    state.lost += state.buffers[d].len();
                    state.buffers[d].clear();
                    drop(world);
                    self.close(id);
                }
                return;
            }
        }
        let mut world = self.world.borrow_mut();
        if let Some(state) = world.connections.get_mut(&id) {
            let passed = std::mem::take(&mut state.buffers[d]);
            state.delivered[d].extend_from_slice(&passed);
        }
    }

    /// Closes the connection the way Envoy 1.40 does when the client closes first (see the
    /// module docs); afterwards its contexts are gone (delivered bytes stay readable).
    pub fn close(&mut self, id: ConnectionId) {
        {
            let mut world = self.world.borrow_mut();
            let Some(state) = world.connections.get_mut(&id) else {
                return;
            };
            if state.closing || state.closed {
                return;
            }
            state.closing = true;
        }
        for direction in [Direction::Downstream, Direction::Upstream] {
            self.data(id, direction, &[], true);
        }
        if let Some(state) = self.world.borrow_mut().connections.get_mut(&id) {
            state.closed = true;
        }
        if let Some(mut connection) = self.connections.remove(&id) {
            for (context, stream) in &mut connection.streams {
                self.world.borrow_mut().effective = Some(*context);
                // The client closed: its connection's peer is remote.
                enter(&self.world, "on_downstream_close");
                stream.on_downstream_close(PeerType::Remote);
            }
            for (context, stream) in &mut connection.streams {
                self.world.borrow_mut().effective = Some(*context);
                enter(&self.world, "on_log");
                stream.on_log();
            }
            for _ in &connection.streams {
                enter(&self.world, "on_done");
                enter(&self.world, "on_delete");
            }
            let mut world = self.world.borrow_mut();
            for (context, _) in &connection.streams {
                world.contexts.remove(context);
            }
            world.effective = None;
        }
    }

    /// One tick of every root that asked for one (as if each period had elapsed).
    pub fn tick(&mut self) {
        for listener in &mut self.listeners {
            for filter in listener.filters.iter_mut() {
                if let Filter::Shipped(root) = filter {
                    self.world.borrow_mut().effective = None;
                    enter(&self.world, "on_tick");
                    root.on_tick();
                }
            }
        }
    }

    fn enter(&self, callback: &'static str) {
        enter(&self.world, callback);
    }

    /// Every VM callback (`(callback, "callback")`) and host call (`(callback, "get_property
    /// xds.cluster_name")`, …) since the last [`FakeEnvoy::reset_calls`], with counts.
    pub fn calls(&self) -> BTreeMap<(&'static str, String), u64> {
        self.world.borrow().calls.clone()
    }

    pub fn reset_calls(&mut self) {
        self.world.borrow_mut().calls.clear();
    }

    /// The tick period each root asked for, in listener and chain order.
    pub fn tick_periods(&self) -> Vec<Option<Duration>> {
        self.world.borrow().roots.iter().map(|r| r.tick).collect()
    }

    /// Takes the bytes passed on so far in `direction` (to the backend for `Downstream`, to
    /// the client for `Upstream`).
    pub fn take_delivered(&mut self, id: ConnectionId, direction: Direction) -> Vec<u8> {
        let mut world = self.world.borrow_mut();
        world
            .connections
            .get_mut(&id)
            .map(|s| std::mem::take(&mut s.delivered[direction.index()]))
            .unwrap_or_default()
    }

    /// Bytes Envoy holds for a paused filter in `direction`.
    pub fn held(&self, id: ConnectionId, direction: Direction) -> usize {
        self.world
            .borrow()
            .connections
            .get(&id)
            .map_or(0, |s| s.buffers[direction.index()].len())
    }

    /// The bytes Envoy holds for a paused filter in `direction`.
    pub fn held_bytes(&self, id: ConnectionId, direction: Direction) -> Vec<u8> {
        self.world
            .borrow()
            .connections
            .get(&id)
            .map(|s| s.buffers[direction.index()].clone())
            .unwrap_or_default()
    }

    /// Whether `direction` has ended (end of stream passed on) — or was cut by a close.
    pub fn ended(&self, id: ConnectionId, direction: Direction) -> bool {
        self.world
            .borrow()
            .connections
            .get(&id)
            .is_some_and(|s| s.ended[direction.index()])
    }

    /// Bytes lost to a pause at end of stream.
    pub fn lost(&self, id: ConnectionId) -> usize {
        self.world
            .borrow()
            .connections
            .get(&id)
            .map_or(0, |s| s.lost)
    }

    pub fn is_closed(&self, id: ConnectionId) -> bool {
        self.world
            .borrow()
            .connections
            .get(&id)
            .is_none_or(|s| s.closed)
    }

    /// Filter state under its Envoy name (`wasm.downstream_peer`), as an access log reads it.
    pub fn filter_state(&self, id: ConnectionId, name: &str) -> Option<Vec<u8>> {
        self.world
            .borrow()
            .connections
            .get(&id)
            .and_then(|s| s.filter_state.get(name).cloned())
    }

    /// A counter's value by stat name (`None`: never defined).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let world = self.world.borrow();
        world
            .metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Every defined stat with its value, in definition order.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let world = self.world.borrow();
        world
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    /// Every series of gauge `metric` with its labels and value.
    pub fn gauge_series(&self, metric: &str) -> Vec<(BTreeMap<String, String>, i64)> {
        let world = self.world.borrow();
        let all: Vec<(String, i64)> = world
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.gauge))
            .collect();
        series_of(all, metric)
    }

    /// Every series of histogram `metric` with its labels and recorded values, in order.
    pub fn histogram_series(&self, metric: &str) -> Vec<(BTreeMap<String, String>, Vec<u64>)> {
        let world = self.world.borrow();
        let all: Vec<(String, Vec<u64>)> = world
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.records.clone()))
            .collect();
        series_of(all, metric)
    }

    /// Every series of `metric` (stat names `label=.=value;.;…;.;metric`) with its labels, as
    /// the bootstrap's `stats_tags` extract them, and its value.
    pub fn series(&self, metric: &str) -> Vec<(BTreeMap<String, String>, u64)> {
        series_of(self.counters(), metric)
    }

    /// Every log line, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.world.borrow().logs.clone()
    }

    /// Log lines at `level` or above that contain `text`.
    pub fn logged(&self, level: LogLevel, text: &str) -> usize {
        self.world
            .borrow()
            .logs
            .iter()
            .filter(|(l, m)| *l >= level && m.contains(text))
            .count()
    }

    /// A host handle acting on `connection` (as a stream would), for checks of the fake itself.
    pub fn host_of(&self, connection: ConnectionId) -> FakeHost {
        let context = self
            .connections
            .get(&connection)
            .and_then(|c| c.streams.first().map(|(ctx, _)| *ctx));
        self.world.borrow_mut().effective = context;
        FakeHost {
            world: Rc::clone(&self.world),
            root: 0,
        }
    }

    /// The listener a connection was accepted on.
    pub fn listener_of(&self, connection: ConnectionId) -> Option<ListenerId> {
        self.connections.get(&connection).map(|c| c.listener)
    }
}

/// The series of `metric` among `(stat name, value)` pairs, labels extracted as the bootstrap's
/// `stats_tags` do.
fn series_of<V>(all: Vec<(String, V)>, metric: &str) -> Vec<(BTreeMap<String, String>, V)> {
    let suffix = format!(";.;{metric}");
    all.into_iter()
        .filter(|(name, _)| name.ends_with(&suffix) || name == metric)
        .map(|(name, value)| {
            let labels = name
                .strip_suffix(&suffix)
                .unwrap_or_default()
                .split(";.;")
                .filter_map(|part| part.split_once("=.="))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (labels, value)
        })
        .collect()
}
