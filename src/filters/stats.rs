//! The TCP stats filter (`root_id: istio_tcp_stats`) over any [`Host`].
//!
//! Each stream counts the bytes it sees (it sits on the application side of the exchange
//! filter, so frames are never counted) into its [`ConnectionStats`] machine, which says when to
//! report and when the labels are needed: when the peer becomes known, on every tick of its
//! worker's root, and at close. At close it also gathers how the connection ended
//! ([`CloseFacts`]) when a metric asks for it. This file only reads properties and moves
//! handles; the decisions are in [`crate::logic::stats`], the filter-state contract in
//! [`crate::logic::peer`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::host::{Action, Counter, Gauge, Histogram, Host, PeerType};
use crate::host_log;
use crate::logic::handover::PeerDecision;
use crate::logic::peer::PeerSlot;
use crate::logic::stats::close::{self, CloseFacts, CloseOrder};
use crate::logic::stats::inputs::{self, paths, LabelInputs};
use crate::logic::stats::response_flags;
use crate::logic::stats::series::Handles;
use crate::logic::stats::{
    ConnectionStats, Emission, MetricType, Moment, Reporter, SeriesBook, StatsConfig, ValueKind,
    FOLDED_SERIES_METRIC,
};
use crate::logic::workload::WorkloadMetadata;

use super::node;

/// A defined stat of the kind its value goes to.
#[derive(Debug, Clone, Copy)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// Per-VM state shared by a root and its streams.
struct Shared {
    config: StatsConfig,
    /// Read once per root: node metadata is the bootstrap's, fixed for the Envoy's life.
    local: WorkloadMetadata,
    book: RefCell<SeriesBook<Metric>>,
    folded: Option<Counter>,
    /// Some metric is resolved at close: keep each connection's label inputs until then.
    close_metrics: bool,
    /// Some metric needs the lifetime: read the host's clock at creation and close.
    clock: bool,
}

/// One live connection.
struct Connection {
    stats: ConnectionStats,
    /// Handles for each value, fixed when opened is emitted.
    handles: Handles<Metric>,
    reporter: Option<Reporter>,
    order: CloseOrder,
    /// The properties the labels came from, kept only for metrics resolved at close.
    inputs: Option<LabelInputs>,
    peer: PeerSource,
}

/// Where a connection learns its peer.
enum PeerSource {
    /// The exchange filter's filter state, polled (the separate `istio_tcp_stats` filter).
    FilterState,
    /// Handed over in memory by the combined filter; `None` until the exchange decides.
    HandedOver(Option<PeerDecision>),
}

/// The live connections of one worker by context id: each stream's own entry, and what the
/// root's tick walks.
type LiveConnections = Rc<RefCell<BTreeMap<u32, Connection>>>;

pub struct StatsRoot<H: Host> {
    host: H,
    shared: Rc<Shared>,
    live: LiveConnections,
}

impl<H: Host + Clone> StatsRoot<H> {
    pub fn configure(host: H, config: &[u8]) -> Result<Self, String> {
        let config = StatsConfig::parse(config).map_err(|e| e.to_string())?;
        Self::with_config(host, config)
    }

    /// A root for a parsed configuration (the combined filter parses its own).
    pub fn with_config(host: H, config: StatsConfig) -> Result<Self, String> {
        host.set_tick_period(config.tcp_reporting_duration)
            .map_err(|e| format!("setting the reporting tick failed: {e}"))?;
        let folded = host.define_counter(FOLDED_SERIES_METRIC).ok();
        host_log!(
            &host,
            Info,
            "tcp stats configured: reporting every {:?}",
            config.tcp_reporting_duration
        );
        Ok(StatsRoot {
            shared: Rc::new(Shared {
                book: RefCell::new(SeriesBook::new(config.max_series_per_metric)),
                local: node::local_workload(&host),
                close_metrics: config.plan.has_close_metrics(),
                clock: config.plan.needs_clock(),
                config,
                folded,
            }),
            live: Rc::new(RefCell::new(BTreeMap::new())),
            host,
        })
    }

    /// A tick: report every live connection of this worker.
    pub fn on_tick(&mut self) {
        let mut live = self.live.borrow_mut();
        for (context_id, connection) in live.iter_mut() {
            // Property reads below must see that stream's connection.
            if self.host.set_effective_context(*context_id).is_err() {
                continue;
            }
            step(&self.host, &self.shared, connection, Moment::Tick);
        }
    }

    pub fn create_stream(&self, context_id: u32) -> StatsStream<H> {
        self.stream(context_id, PeerSource::FilterState, self.host.clone())
    }

    /// A stream whose peer the combined filter hands over ([`StatsStream::hand_over`]), its
    /// host calls through `host` (the combined filter's per-connection host).
    pub fn create_handed_stream(&self, context_id: u32, host: H) -> StatsStream<H> {
        self.stream(context_id, PeerSource::HandedOver(None), host)
    }

    fn stream(&self, context_id: u32, peer: PeerSource, host: H) -> StatsStream<H> {
        let started = if self.shared.clock {
            self.host.now_nanos()
        } else {
            0
        };
        self.live.borrow_mut().insert(
            context_id,
            Connection {
                stats: ConnectionStats::started_at(started),
                handles: Vec::new(),
                reporter: self.shared.config.reporter,
                order: CloseOrder::default(),
                inputs: None,
                peer,
            },
        );
        StatsStream {
            host,
            context_id,
            shared: Rc::clone(&self.shared),
            live: Rc::clone(&self.live),
        }
    }
}

pub struct StatsStream<H: Host> {
    host: H,
    context_id: u32,
    shared: Rc<Shared>,
    live: LiveConnections,
}

impl<H: Host> StatsStream<H> {
    pub fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.on_data(end_of_stream.then_some(true), |stats| {
            stats.add_received(data_size)
        })
    }

    pub fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.on_data(end_of_stream.then_some(false), |stats| {
            stats.add_sent(data_size)
        })
    }

    /// The exchange's decision, from the combined filter (ignored by a filter-state stream).
    pub fn hand_over(&self, decision: PeerDecision) {
        if let Some(connection) = self.live.borrow_mut().get_mut(&self.context_id) {
            if let PeerSource::HandedOver(slot) = &mut connection.peer {
                *slot = Some(decision);
            }
        }
    }

    /// `ended`: this callback ends the downstream (`Some(true)`) or upstream direction.
    fn on_data(&mut self, ended: Option<bool>, count: impl FnOnce(&mut ConnectionStats)) -> Action {
        let mut live = self.live.borrow_mut();
        if let Some(connection) = live.get_mut(&self.context_id) {
            if let Some(downstream) = ended {
                connection.order.end_of_stream(downstream);
            }
            count(&mut connection.stats);
            step(&self.host, &self.shared, connection, Moment::Data);
        }
        Action::Continue
    }

    /// The downstream (`true`) or upstream connection closed.
    pub fn on_close(&mut self, downstream: bool, peer: PeerType) {
        if let Some(connection) = self.live.borrow_mut().get_mut(&self.context_id) {
            connection
                .order
                .closed(downstream, peer == PeerType::Remote);
        }
    }

    pub fn on_log(&mut self) {
        let connection = self.live.borrow_mut().remove(&self.context_id);
        if let Some(mut connection) = connection {
            let now_nanos = if self.shared.clock {
                self.host.now_nanos()
            } else {
                0
            };
            step(
                &self.host,
                &self.shared,
                &mut connection,
                Moment::Close { now_nanos },
            );
        }
    }
}

/// One step of the connection's machine, applied.
fn step(host: &impl Host, shared: &Shared, connection: &mut Connection, moment: Moment) {
    let Connection {
        stats,
        handles,
        reporter,
        order,
        inputs,
        peer,
    } = connection;
    let report = stats.step(moment, || match peer {
        PeerSource::FilterState => peer_decided(host, reporter_or_read(reporter, host)),
        PeerSource::HandedOver(decision) => decision.is_some(),
    });
    if report.labels_needed {
        let gauge = !report.opened_at_close;
        let reporter = reporter_or_read(reporter, host);
        (*handles, *inputs) = handles_of(host, shared, reporter, peer, gauge);
    }
    let kept = match moment {
        Moment::Close { .. } => inputs.take(),
        _ => None,
    };
    if let Some(inputs) = kept {
        let lifetime = report.emissions.iter().find_map(|e| match e {
            Emission::Lifetime(ms) => Some(*ms),
            _ => None,
        });
        let close = close_facts(host, order, lifetime);
        handles.extend(close_handles(host, shared, inputs, &close));
    }
    for emission in report.emissions {
        let (kind, amount) = emission.value();
        for (value, handle) in handles.iter() {
            if *value == kind {
                apply(host, *handle, amount);
            }
        }
    }
}

fn apply(host: &impl Host, handle: Metric, amount: i64) {
    let result = match handle {
        Metric::Counter(c) => host.increment(c, u64::try_from(amount).unwrap_or(0)),
        Metric::Gauge(g) => host.add(g, amount),
        Metric::Histogram(h) => host.record(h, u64::try_from(amount).unwrap_or(0)),
    };
    if let Err(e) = result {
        host_log!(host, Debug, "updating a tcp metric failed: {e}");
    }
}

/// How the connection ended, read at close.
fn close_facts(host: &impl Host, order: &CloseOrder, lifetime_ms: Option<u64>) -> CloseFacts {
    let flags = host
        .property(paths::RESPONSE_FLAGS)
        .ok()
        .flatten()
        .map_or(0, |b| response_flags::from_property(&b));
    let details = host.property_string(paths::TERMINATION_DETAILS);
    let failure = host.property_string(paths::TRANSPORT_FAILURE_REASON);
    CloseFacts {
        closed_by: order.closed_by(),
        flags: response_flags::short_string(flags),
        termination_details: close::termination_details(details.as_deref(), failure.as_deref()),
        duration_ms: lifetime_ms,
    }
}

/// The configured reporter, else the listener's direction (read once).
fn reporter_or_read(reporter: &mut Option<Reporter>, host: &impl Host) -> Reporter {
    *reporter.get_or_insert_with(|| {
        let direction = host.property(paths::LISTENER_DIRECTION).ok().flatten();
        inputs::reporter_of_direction(direction.as_deref())
    })
}

/// Has the exchange filter decided about the peer (found, or decidedly absent)?
fn peer_decided(host: &impl Host, reporter: Reporter) -> bool {
    PeerSlot::of_reporter(reporter)
        .decision_keys()
        .iter()
        .any(|key| matches!(host.property(&[key]), Ok(Some(_))))
}

/// The handles of a connection (from the cache when its label inputs were seen before), and
/// its label inputs when metrics resolved at close need them. Without `gauge` (a connection
/// opened only at close) the gauge's series is not defined, and the result not cached.
fn handles_of(
    host: &impl Host,
    shared: &Shared,
    reporter: Reporter,
    peer: &PeerSource,
    gauge: bool,
) -> (Handles<Metric>, Option<LabelInputs>) {
    let inputs = read_inputs(host, reporter, peer);
    let kept = shared.close_metrics.then(|| inputs.clone());
    let key = inputs.key();
    if let Some(handles) = shared.book.borrow().cached(&key) {
        return (handles, kept);
    }
    let (facts, cacheable) = inputs.into_facts(&shared.local, || upstream_host(host));
    let mut series = shared.config.plan.series(&facts);
    if !gauge {
        series.retain(|s| s.value != ValueKind::ConnectionsOpen);
    }
    let handles = resolve(host, shared, key, cacheable && gauge, series);
    (handles, kept)
}

/// The handles of the metrics resolved at close: cached by the label inputs and the close
/// attributes' values, so repeat peers ending the same way skip the labels and stat names.
fn close_handles(
    host: &impl Host,
    shared: &Shared,
    inputs: LabelInputs,
    close: &CloseFacts,
) -> Handles<Metric> {
    let key = close.cache_key(&inputs.key());
    if let Some(handles) = shared.book.borrow().cached(&key) {
        return handles;
    }
    let (facts, cacheable) = inputs.into_facts(&shared.local, || upstream_host(host));
    let series = shared.config.plan.close_series(&facts, close);
    resolve(host, shared, key, cacheable, series)
}

/// Series → handles through the book (cap, cache), defining each stat as its value's kind.
fn resolve(
    host: &impl Host,
    shared: &Shared,
    key: Vec<u8>,
    cacheable: bool,
    series: Vec<crate::logic::stats::Series>,
) -> Handles<Metric> {
    let resolved =
        shared
            .book
            .borrow_mut()
            .resolve(key, cacheable, series, |name, value: ValueKind| {
                match value.metric_type() {
                    MetricType::Counter => host.define_counter(name).map(Metric::Counter),
                    MetricType::Gauge => host.define_gauge(name).map(Metric::Gauge),
                    MetricType::Histogram => host.define_histogram(name).map(Metric::Histogram),
                }
                .ok()
            });
    for name in &resolved.failed {
        host_log!(host, Warn, "defining metric {name} failed");
    }
    if resolved.newly_folded > 0 {
        if let Some(folded) = shared.folded {
            let _ = host.increment(folded, resolved.newly_folded);
        }
    }
    resolved.handles
}

/// The properties the labels come from, as the host returns them.
fn read_inputs(host: &impl Host, reporter: Reporter, source: &PeerSource) -> LabelInputs {
    let read = |path: &[&str]| host.property(path).ok().flatten();
    let (peer, handed_peer) = match source {
        PeerSource::FilterState => (read(&[PeerSlot::of_reporter(reporter).peer_key()]), None),
        PeerSource::HandedOver(Some(PeerDecision::Found(p))) => {
            (p.peer_bytes().map(<[u8]>::to_vec), Some(Rc::clone(p)))
        }
        PeerSource::HandedOver(_) => (None, None),
    };
    let upstream_host = if inputs::wants_upstream_host(reporter, peer.as_deref()) {
        upstream_host(host)
    } else {
        None
    };
    let tls = paths::tls_prefix(reporter);
    let san = |which: &str| host.property_string(&[tls, which]).unwrap_or_default();
    LabelInputs {
        reporter: Some(reporter),
        peer,
        handed_peer,
        upstream_host,
        peer_principal: san(paths::PEER_SAN),
        local_principal: san(paths::LOCAL_SAN),
        cluster_metadata: read(paths::CLUSTER_METADATA),
        flags: read(paths::RESPONSE_FLAGS),
        cluster_name: host
            .property_string(paths::CLUSTER_NAME)
            .unwrap_or_default(),
    }
}

fn upstream_host(host: &impl Host) -> Option<Vec<u8>> {
    host.property(paths::UPSTREAM_HOST_METADATA).ok().flatten()
}
