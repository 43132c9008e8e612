//! Glue for the TCP stats filter (`root_id: istio_tcp_stats`).
//!
//! Each stream counts the bytes it sees (it sits on the application side of the exchange filter,
//! so frames are never counted) and asks for a report when the peer becomes known, on every
//! tick of its worker's root, and at close. Labels are computed once, from properties read on
//! the connection, when `opened` is emitted; the pure parts live in [`crate::logic::stats`] and
//! [`crate::logic::report`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;

use crate::logic::endpoint;
use crate::logic::report::{ConnectionReport, Emission};
use crate::logic::stats::response_flags;
use crate::logic::stats::{
    ConnectionFacts, Reporter, Series, SeriesLimiter, StatsConfig, ValueKind, FOLDED_SERIES_METRIC,
};
use crate::logic::workload::WorkloadMetadata;

use super::exchange::keys;
use super::host;
use super::node;

/// Stop polling filter state for the peer on data callbacks after this many; ticks and close
/// still check. Keeps a stats-only deployment (no exchange filter) off the property path.
const PEER_POLLS_ON_DATA: u8 = 8;

/// Distinct label inputs whose counter ids are remembered (see [`Shared::series_cache`]).
const SERIES_CACHE_ENTRIES: usize = 1024;

/// Counter ids for each value of one connection's series.
type SeriesIds = Vec<(ValueKind, u32)>;

/// Per-VM state shared by a root and its streams.
struct Shared {
    config: StatsConfig,
    local: WorkloadMetadata,
    metric_ids: RefCell<HashMap<String, u32>>,
    limiter: RefCell<SeriesLimiter>,
    folded_id: Option<u32>,
    /// Counter ids by the raw properties the labels come from: connections between the same
    /// workloads skip decoding, 23 labels, four ~700-byte stat names and the counter lookups.
    /// Emptied when full; only entries where every series got its own counter are kept, so the
    /// cardinality cap behaves exactly as without it.
    series_cache: RefCell<HashMap<Vec<u8>, SeriesIds>>,
}

/// One live connection, shared between its stream context and the root that ticks it.
struct Connection {
    report: ConnectionReport,
    /// Counter ids for each value, fixed when opened is emitted.
    series: Vec<(ValueKind, u32)>,
    reporter: Option<Reporter>,
    peer_polls: u8,
}

type Registry = Rc<RefCell<HashMap<u32, Rc<RefCell<Connection>>>>>;

pub struct StatsRoot {
    shared: Rc<Shared>,
    live: Registry,
}

impl StatsRoot {
    pub fn configure(config: &[u8]) -> Result<Self, String> {
        let config = StatsConfig::parse(config).map_err(|e| e.to_string())?;
        host::set_tick_period(config.tcp_reporting_duration)
            .map_err(|e| format!("setting the reporting tick failed: {e}"))?;
        let folded_id = host::define_counter(FOLDED_SERIES_METRIC).ok();
        log::info!(
            "tcp stats configured: reporting every {:?}",
            config.tcp_reporting_duration
        );
        Ok(StatsRoot {
            shared: Rc::new(Shared {
                limiter: RefCell::new(SeriesLimiter::new(config.max_series_per_metric)),
                config,
                local: node::local_workload(),
                metric_ids: RefCell::new(HashMap::new()),
                folded_id,
                series_cache: RefCell::new(HashMap::new()),
            }),
            live: Rc::new(RefCell::new(HashMap::new())),
        })
    }

    /// A tick: report every live connection of this worker.
    pub fn on_tick(&mut self) {
        let live: Vec<(u32, Rc<RefCell<Connection>>)> = self
            .live
            .borrow()
            .iter()
            .map(|(id, c)| (*id, Rc::clone(c)))
            .collect();
        for (context_id, connection) in live {
            // Property reads below must see that stream's connection.
            if host::set_effective_context(context_id).is_err() {
                continue;
            }
            let mut connection = connection.borrow_mut();
            let known = connection.report.is_opened() || peer_decided(&mut connection);
            report(&self.shared, &mut connection, known, false);
        }
    }

    pub fn create_stream(&self, context_id: u32) -> Box<dyn StreamContext> {
        let connection = Rc::new(RefCell::new(Connection {
            report: ConnectionReport::default(),
            series: Vec::new(),
            reporter: self.shared.config.reporter,
            peer_polls: 0,
        }));
        self.live
            .borrow_mut()
            .insert(context_id, Rc::clone(&connection));
        Box::new(StatsStream {
            context_id,
            shared: Rc::clone(&self.shared),
            live: Rc::clone(&self.live),
            connection,
        })
    }
}

struct StatsStream {
    context_id: u32,
    shared: Rc<Shared>,
    live: Registry,
    connection: Rc<RefCell<Connection>>,
}

impl Context for StatsStream {}

impl StreamContext for StatsStream {
    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        let mut connection = self.connection.borrow_mut();
        connection.report.add_received(data_size);
        self.maybe_open(&mut connection);
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        let mut connection = self.connection.borrow_mut();
        connection.report.add_sent(data_size);
        self.maybe_open(&mut connection);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.live.borrow_mut().remove(&self.context_id);
        let mut connection = self.connection.borrow_mut();
        let known = connection.report.is_opened() || peer_decided(&mut connection);
        report(&self.shared, &mut connection, known, true);
    }
}

impl StatsStream {
    /// Emit `opened` as soon as the exchange has decided, polling only the first few callbacks.
    fn maybe_open(&self, connection: &mut Connection) {
        if connection.report.is_opened() || connection.peer_polls >= PEER_POLLS_ON_DATA {
            return;
        }
        connection.peer_polls += 1;
        if peer_decided(connection) {
            report(&self.shared, connection, true, false);
        }
    }
}

fn reporter_of(connection: &mut Connection) -> Reporter {
    *connection.reporter.get_or_insert_with(|| {
        // xds.listener_direction: 1 inbound, 2 outbound (8 bytes LE).
        let direction = host::get_property(&["xds", "listener_direction"])
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes);
        match direction {
            Some(2) => Reporter::Source,
            _ => Reporter::Destination,
        }
    })
}

fn peer_keys(reporter: Reporter) -> (&'static str, &'static str) {
    match reporter {
        Reporter::Destination => (keys::DOWNSTREAM_PEER, keys::DOWNSTREAM_PEER_ID),
        Reporter::Source => (keys::UPSTREAM_PEER, keys::UPSTREAM_PEER_ID),
    }
}

fn has_state(key: &str) -> bool {
    matches!(host::get_property(&[key]), Ok(Some(_)))
}

/// Has the exchange filter decided about the peer (found, or decidedly absent)?
fn peer_decided(connection: &mut Connection) -> bool {
    let (peer, id) = peer_keys(reporter_of(connection));
    has_state(peer) || has_state(id) || has_state(keys::PEER_NOT_FOUND)
}

fn report(shared: &Shared, connection: &mut Connection, peer_known: bool, end: bool) {
    for emission in connection.report.report(peer_known, end) {
        if emission == Emission::Opened {
            connection.series = series_of(shared, reporter_of(connection));
        }
        let (kind, amount) = match emission {
            Emission::Opened => (ValueKind::ConnectionsOpened, 1),
            Emission::Closed => (ValueKind::ConnectionsClosed, 1),
            Emission::BytesSent(n) => (ValueKind::BytesSent, n),
            Emission::BytesReceived(n) => (ValueKind::BytesReceived, n),
        };
        for (value, id) in &connection.series {
            if *value == kind {
                if let Err(e) = host::increment_counter(*id, amount) {
                    log::debug!("incrementing a tcp metric failed: {e}");
                }
            }
        }
    }
}

/// The counter ids of a connection: from the cache when its label inputs were seen before.
fn series_of(shared: &Shared, reporter: Reporter) -> SeriesIds {
    let inputs = LabelInputs::read(reporter);
    let key = inputs.key();
    if let Some(ids) = shared.series_cache.borrow().get(&key) {
        return ids.clone();
    }
    let (facts, cacheable) = inputs.into_facts(shared);
    let (ids, all_own) = counters_for(shared, shared.config.plan.series(&facts));
    if cacheable && all_own {
        let mut cache = shared.series_cache.borrow_mut();
        if cache.len() >= SERIES_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, ids.clone());
    }
    ids
}

/// Admits each series past the cardinality cap and finds (or defines) its counter; true when
/// every series got its own counter (none folded, none failed).
fn counters_for(shared: &Shared, series: Vec<Series>) -> (Vec<(ValueKind, u32)>, bool) {
    let mut ids = Vec::with_capacity(series.len());
    let mut all_own = true;
    let mut limiter = shared.limiter.borrow_mut();
    let mut metric_ids = shared.metric_ids.borrow_mut();
    for Series {
        metric,
        value,
        stat_name,
    } in series
    {
        let folded_before = limiter.folded();
        let admitted = limiter.admit(&metric, stat_name);
        all_own &= !admitted.is_folded();
        let name = admitted.into_stat_name();
        if limiter.folded() > folded_before {
            if let Some(id) = shared.folded_id {
                let _ = host::increment_counter(id, limiter.folded() - folded_before);
            }
        }
        let id = match metric_ids.get(name.as_str()) {
            Some(id) => *id,
            None => match host::define_counter(&name) {
                Ok(id) => {
                    metric_ids.insert(name.clone(), id);
                    id
                }
                Err(e) => {
                    log::warn!("defining metric {name} failed: {e}");
                    all_own = false;
                    continue;
                }
            },
        };
        ids.push((value, id));
    }
    (ids, all_own)
}

/// The connection's properties the labels are derived from, as the host returned them.
struct LabelInputs {
    reporter: Reporter,
    /// The peer's Struct from the exchange filter's filter state.
    peer: Option<Vec<u8>>,
    /// Client only, when there is no peer in filter state: the endpoint's metadata.
    upstream_host: Option<Vec<u8>>,
    peer_principal: String,
    local_principal: String,
    cluster_name: String,
    cluster_metadata: Option<Vec<u8>>,
    flags: u64,
}

impl LabelInputs {
    fn read(reporter: Reporter) -> Self {
        let (peer_key, _) = peer_keys(reporter);
        let peer = host::get_property(&[peer_key]).ok().flatten();
        let upstream_host = if peer.is_none() && reporter == Reporter::Source {
            upstream_host_metadata_bytes()
        } else {
            None
        };
        let tls = match reporter {
            Reporter::Destination => "connection",
            Reporter::Source => "upstream",
        };
        let san = |which: &str| host::get_property_string(&[tls, which]).unwrap_or_default();
        LabelInputs {
            reporter,
            peer,
            upstream_host,
            peer_principal: san("uri_san_peer_certificate"),
            local_principal: san("uri_san_local_certificate"),
            cluster_metadata: host::get_property(&["xds", "cluster_metadata"])
                .ok()
                .flatten(),
            flags: host::get_property(&["response", "flags"])
                .ok()
                .flatten()
                .map(|b| response_flags::from_property(&b))
                .unwrap_or(0),
            cluster_name: host::get_property_string(&["xds", "cluster_name"]).unwrap_or_default(),
        }
    }

    /// Every input, length-prefixed, so that different inputs never make the same key.
    fn key(&self) -> Vec<u8> {
        let parts: [Option<&[u8]>; 6] = [
            self.peer.as_deref(),
            self.upstream_host.as_deref(),
            Some(self.peer_principal.as_bytes()),
            Some(self.local_principal.as_bytes()),
            Some(self.cluster_name.as_bytes()),
            self.cluster_metadata.as_deref(),
        ];
        let mut key =
            Vec::with_capacity(64 + parts.iter().flatten().map(|p| p.len()).sum::<usize>());
        key.push(self.reporter as u8);
        key.extend_from_slice(&self.flags.to_le_bytes());
        for part in parts {
            match part {
                Some(p) => {
                    key.extend_from_slice(&(p.len() as u32).to_le_bytes());
                    key.extend_from_slice(p);
                }
                None => key.extend_from_slice(&u32::MAX.to_le_bytes()),
            }
        }
        key
    }

    /// Everything the labels are derived from; false when the facts depend on a property the
    /// key does not hold (a peer Struct that does not decode, on the client, falls back to
    /// the endpoint's metadata, read only then).
    fn into_facts(self, shared: &Shared) -> (ConnectionFacts, bool) {
        let mut cacheable = true;
        let mut peer = self
            .peer
            .as_deref()
            .and_then(|bytes| prost::Message::decode(bytes).ok())
            .map(|s: prost_types::Struct| WorkloadMetadata::from_peer_struct(&s));
        if peer.is_none() && self.reporter == Reporter::Source {
            let upstream_host = match self.peer {
                None => self.upstream_host,
                Some(_) => {
                    cacheable = false;
                    upstream_host_metadata_bytes()
                }
            };
            peer = upstream_host
                .as_deref()
                .and_then(endpoint::decode_metadata)
                .as_ref()
                .and_then(endpoint::istio_workload)
                .and_then(WorkloadMetadata::from_endpoint_encoding);
        }
        let service = self
            .cluster_metadata
            .as_deref()
            .and_then(endpoint::decode_metadata)
            .and_then(|md| endpoint::istio_service(&md));
        let facts = ConnectionFacts {
            reporter: self.reporter,
            local: shared.local.clone(),
            peer,
            peer_principal: self.peer_principal,
            local_principal: self.local_principal,
            cluster_name: self.cluster_name,
            service,
            response_flags: response_flags::short_string(self.flags),
        };
        (facts, cacheable)
    }
}

fn upstream_host_metadata_bytes() -> Option<Vec<u8>> {
    host::get_property(&["xds", "upstream_host_metadata"])
        .ok()
        .flatten()
}
