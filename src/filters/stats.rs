//! The TCP stats filter (`root_id: istio_tcp_stats`) over any [`Host`].
//!
//! Each stream counts the bytes it sees (it sits on the application side of the exchange
//! filter, so frames are never counted) into its [`ConnectionStats`] machine, which says when to
//! report and when the labels are needed: when the peer becomes known, on every tick of its
//! worker's root, and at close. This file only reads properties and increments handles; the
//! decisions are in [`crate::logic::stats`], the filter-state contract in [`crate::logic::peer`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::host::{Action, Counter, Host};
use crate::host_log;
use crate::logic::peer::PeerSlot;
use crate::logic::stats::inputs::{self, paths, LabelInputs};
use crate::logic::stats::series::Handles;
use crate::logic::stats::{
    ConnectionStats, Moment, Reporter, SeriesBook, StatsConfig, FOLDED_SERIES_METRIC,
};
use crate::logic::workload::WorkloadMetadata;

use super::node;

/// Per-VM state shared by a root and its streams.
struct Shared {
    config: StatsConfig,
    local: WorkloadMetadata,
    book: RefCell<SeriesBook<Counter>>,
    folded: Option<Counter>,
}

/// One live connection.
struct Connection {
    stats: ConnectionStats,
    /// Counter handles for each value, fixed when opened is emitted.
    handles: Handles<Counter>,
    reporter: Option<Reporter>,
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
        self.live.borrow_mut().insert(
            context_id,
            Connection {
                stats: ConnectionStats::default(),
                handles: Vec::new(),
                reporter: self.shared.config.reporter,
            },
        );
        StatsStream {
            host: self.host.clone(),
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
    pub fn on_downstream_data(&mut self, data_size: usize) -> Action {
        self.on_data(|stats| stats.add_received(data_size))
    }

    pub fn on_upstream_data(&mut self, data_size: usize) -> Action {
        self.on_data(|stats| stats.add_sent(data_size))
    }

    fn on_data(&mut self, count: impl FnOnce(&mut ConnectionStats)) -> Action {
        let mut live = self.live.borrow_mut();
        if let Some(connection) = live.get_mut(&self.context_id) {
            count(&mut connection.stats);
            step(&self.host, &self.shared, connection, Moment::Data);
        }
        Action::Continue
    }

    pub fn on_log(&mut self) {
        let connection = self.live.borrow_mut().remove(&self.context_id);
        if let Some(mut connection) = connection {
            step(&self.host, &self.shared, &mut connection, Moment::Close);
        }
    }
}

/// One step of the connection's machine, applied.
fn step(host: &impl Host, shared: &Shared, connection: &mut Connection, moment: Moment) {
    let Connection {
        stats,
        handles,
        reporter,
    } = connection;
    let report = stats.step(moment, || {
        peer_decided(host, reporter_or_read(reporter, host))
    });
    if report.labels_needed {
        *handles = handles_of(host, shared, reporter_or_read(reporter, host));
    }
    for emission in report.emissions {
        let (kind, amount) = emission.value();
        for (value, handle) in handles.iter() {
            if *value == kind {
                if let Err(e) = host.increment(*handle, amount) {
                    host_log!(host, Debug, "incrementing a tcp metric failed: {e}");
                }
            }
        }
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

/// The counter handles of a connection: from the cache when its label inputs were seen before.
fn handles_of(host: &impl Host, shared: &Shared, reporter: Reporter) -> Handles<Counter> {
    let inputs = read_inputs(host, reporter);
    let key = inputs.key();
    if let Some(handles) = shared.book.borrow().cached(&key) {
        return handles;
    }
    let (facts, cacheable) = inputs.into_facts(&shared.local, || upstream_host(host));
    let series = shared.config.plan.series(&facts);
    let resolved = shared
        .book
        .borrow_mut()
        .resolve(key, cacheable, series, |name| {
            host.define_counter(name).ok()
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
fn read_inputs(host: &impl Host, reporter: Reporter) -> LabelInputs {
    let read = |path: &[&str]| host.property(path).ok().flatten();
    let peer = read(&[PeerSlot::of_reporter(reporter).peer_key()]);
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
