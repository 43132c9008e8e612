//! One connection's reporting machine, as Istio's stats filter reports it:
//! - `opened` once the peer is known (exchange done, or decidedly absent) or at close;
//! - byte deltas on each report once opened (each tick of `tcp_reporting_duration`), and at close;
//! - `closed` at close, after the last deltas;
//! - the open-connections gauge +1 with `opened` and −1 at close, only for a connection opened
//!   before its close (one opened only at close never touches it), so it is exact at any time;
//! - its lifetime at close, when the glue gives the host's clock.
//!
//! Opened and closed are reported with the same label set, computed once when opened is emitted
//! (istio/istio#33574 is what happens otherwise): a [`Report`] says when the labels are needed.
//! Byte counts are application bytes: the glue feeds only what the stats filter sees on the
//! application side of the exchange filter.
//!
//! The machine also owns the peer-polling policy: whether the glue should look at filter state
//! now (a host read) is its decision, asked through a closure only when it matters.

use super::plan::ValueKind;

/// Stop asking about the peer on data callbacks after this many; ticks and close still ask.
/// Keeps a stats-only deployment (no exchange filter) off the property path.
pub const PEER_CHECKS_ON_DATA: u8 = 8;

/// When a report happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// A data callback (bytes were added just before).
    Data,
    /// A tick of the worker's root.
    Tick,
    /// The connection is done (`on_log`); the host's clock in nanoseconds, 0 when not read.
    Close { now_nanos: u64 },
}

/// One metric update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emission {
    Opened,
    Closed,
    BytesSent(u64),
    BytesReceived(u64),
    /// The open-connections gauge: +1 or −1.
    Open(i64),
    /// The lifetime in milliseconds.
    Lifetime(u64),
}

impl Emission {
    /// Which metric values move, and by how much (gauges may go down).
    pub fn value(self) -> (ValueKind, i64) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        match self {
            Emission::Opened => (ValueKind::ConnectionsOpened, 1),
            Emission::Closed => (ValueKind::ConnectionsClosed, 1),
            Emission::BytesSent(v) => (ValueKind::BytesSent, n(v)),
            Emission::BytesReceived(v) => (ValueKind::BytesReceived, n(v)),
            Emission::Open(delta) => (ValueKind::ConnectionsOpen, delta),
            Emission::Lifetime(ms) => (ValueKind::ConnectionDuration, n(ms)),
        }
    }
}

/// What one step asks of the glue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Compute the connection's series now (before applying `emissions`): `opened` is in them.
    pub labels_needed: bool,
    /// Opened only at close: the gauge is not touched, so its series need not exist.
    pub opened_at_close: bool,
    pub emissions: Vec<Emission>,
}

#[derive(Debug, Default, Clone)]
pub struct ConnectionStats {
    received: u64,
    sent: u64,
    reported_received: u64,
    reported_sent: u64,
    opened: bool,
    /// Opened was emitted before close: the gauge went up and goes down at close.
    counted_open: bool,
    closed: bool,
    peer_checks: u8,
    /// The host's clock at creation (0: not read).
    started_nanos: u64,
}

impl ConnectionStats {
    /// A connection created at `started_nanos` on the host's clock (0 when not read).
    pub fn started_at(started_nanos: u64) -> Self {
        ConnectionStats {
            started_nanos,
            ..Default::default()
        }
    }

    /// Bytes read from the downstream side.
    pub fn add_received(&mut self, bytes: usize) {
        self.received = self.received.saturating_add(bytes as u64);
    }

    /// Bytes written to the downstream side.
    pub fn add_sent(&mut self, bytes: usize) {
        self.sent = self.sent.saturating_add(bytes as u64);
    }

    /// True once `opened` was emitted (the label set is fixed from then on).
    pub fn is_opened(&self) -> bool {
        self.opened
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// One step at `moment`. `peer_decided` (a host read) is called only when the answer can
    /// change what is emitted: before `opened`, on the first [`PEER_CHECKS_ON_DATA`] data
    /// callbacks and on every tick and close.
    pub fn step(&mut self, moment: Moment, peer_decided: impl FnOnce() -> bool) -> Report {
        if self.closed {
            return Report::default();
        }
        let ask = !self.opened
            && match moment {
                Moment::Data => {
                    let ask = self.peer_checks < PEER_CHECKS_ON_DATA;
                    self.peer_checks = self.peer_checks.saturating_add(1);
                    ask
                }
                Moment::Tick | Moment::Close { .. } => true,
            };
        let known = self.opened || (ask && peer_decided());
        match moment {
            // Data only ever opens: deltas wait for the tick.
            Moment::Data if !known || self.opened => Report::default(),
            Moment::Close { now_nanos } => self.report(known, Some(now_nanos)),
            _ => self.report(known, None),
        }
    }

    /// `end`: the clock at close.
    fn report(&mut self, peer_known: bool, end: Option<u64>) -> Report {
        let mut out = Report::default();
        if !self.opened && (peer_known || end.is_some()) {
            self.opened = true;
            out.labels_needed = true;
            out.emissions.push(Emission::Opened);
            if end.is_none() {
                self.counted_open = true;
                out.emissions.push(Emission::Open(1));
            } else {
                out.opened_at_close = true;
            }
        }
        if self.opened {
            let sent = self.sent - self.reported_sent;
            let received = self.received - self.reported_received;
            if sent > 0 {
                out.emissions.push(Emission::BytesSent(sent));
            }
            if received > 0 {
                out.emissions.push(Emission::BytesReceived(received));
            }
            self.reported_sent = self.sent;
            self.reported_received = self.received;
        }
        if let Some(now_nanos) = end {
            self.closed = true;
            out.emissions.push(Emission::Closed);
            if self.counted_open {
                out.emissions.push(Emission::Open(-1));
            }
            if self.started_nanos > 0 && now_nanos >= self.started_nanos {
                out.emissions.push(Emission::Lifetime(
                    (now_nanos - self.started_nanos) / 1_000_000,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Emission::*;
    use super::*;

    fn emissions(r: Report) -> Vec<Emission> {
        r.emissions
    }

    #[test]
    fn waits_for_the_peer_then_reports_deltas_on_ticks() {
        let mut c = ConnectionStats::default();
        c.add_received(6);
        assert_eq!(c.step(Moment::Data, || false), Report::default());
        assert_eq!(c.step(Moment::Tick, || false), Report::default());
        c.add_sent(12);
        let r = c.step(Moment::Data, || true);
        assert!(r.labels_needed);
        assert_eq!(
            r.emissions,
            vec![Opened, Open(1), BytesSent(12), BytesReceived(6)]
        );
        assert_eq!(emissions(c.step(Moment::Tick, || panic!())), vec![]);
        c.add_received(4);
        assert_eq!(
            c.step(Moment::Data, || panic!("no peer check once opened")),
            Report::default(),
            "data does not report deltas"
        );
        let r = c.step(Moment::Tick, || panic!());
        assert!(!r.labels_needed);
        assert_eq!(r.emissions, vec![BytesReceived(4)]);
        c.add_sent(1);
        assert_eq!(
            emissions(c.step(Moment::Close { now_nanos: 0 }, || panic!())),
            vec![BytesSent(1), Closed, Open(-1)]
        );
        assert_eq!(
            c.step(Moment::Close { now_nanos: 0 }, || true),
            Report::default()
        );
        assert_eq!(c.step(Moment::Tick, || true), Report::default());
    }

    #[test]
    fn close_without_a_peer_reports_everything_once() {
        let mut c = ConnectionStats::default();
        c.add_received(60);
        c.add_sent(120);
        let r = c.step(Moment::Close { now_nanos: 0 }, || false);
        assert!(r.labels_needed && r.opened_at_close);
        assert_eq!(
            r.emissions,
            vec![Opened, BytesSent(120), BytesReceived(60), Closed],
            "opened only at close: the gauge is not touched"
        );
        assert!(c.is_opened() && c.is_closed());
    }

    #[test]
    fn the_gauge_moves_only_for_connections_opened_before_close() {
        let mut gauge = 0;
        let mut run = |c: &mut ConnectionStats, moment: Moment, known: bool| {
            for e in c.step(moment, || known).emissions {
                if let (ValueKind::ConnectionsOpen, d) = e.value() {
                    gauge += d;
                }
            }
        };
        let mut a = ConnectionStats::default();
        let mut b = ConnectionStats::default();
        run(&mut a, Moment::Data, true);
        run(&mut b, Moment::Tick, false);
        run(&mut a, Moment::Tick, true);
        run(&mut b, Moment::Close { now_nanos: 0 }, false);
        run(&mut b, Moment::Close { now_nanos: 0 }, false);
        assert_eq!(gauge, 1, "b closed before it was opened: never counted");
        let r = a.step(Moment::Close { now_nanos: 0 }, || true);
        assert!(r.emissions.contains(&Open(-1)));
        let r = ConnectionStats::default().step(Moment::Close { now_nanos: 0 }, || true);
        assert!(!r.emissions.iter().any(|e| matches!(e, Open(_))));
    }

    #[test]
    fn lifetime_at_close_only_with_a_clock() {
        let mut c = ConnectionStats::started_at(5_000_000_000);
        c.step(Moment::Data, || true);
        let r = c.step(
            Moment::Close {
                now_nanos: 7_500_000_000,
            },
            || true,
        );
        assert!(r.emissions.contains(&Lifetime(2500)), "{r:?}");
        let mut c = ConnectionStats::started_at(5_000_000_000);
        let r = c.step(Moment::Close { now_nanos: 0 }, || true);
        assert!(!r.emissions.iter().any(|e| matches!(e, Lifetime(_))));
        let mut c = ConnectionStats::default();
        let r = c.step(Moment::Close { now_nanos: 9 }, || true);
        assert!(!r.emissions.iter().any(|e| matches!(e, Lifetime(_))));
    }

    #[test]
    fn data_callbacks_stop_asking_after_a_few() {
        let mut c = ConnectionStats::default();
        let mut asked = 0;
        for _ in 0..20 {
            c.add_received(1);
            c.step(Moment::Data, || {
                asked += 1;
                false
            });
        }
        assert_eq!(asked, usize::from(PEER_CHECKS_ON_DATA));
        let mut tick_asked = false;
        c.step(Moment::Tick, || {
            tick_asked = true;
            true
        });
        assert!(tick_asked && c.is_opened());
    }

    #[test]
    fn totals_equal_what_was_counted() {
        let mut c = ConnectionStats::default();
        let (mut sent, mut received) = (0, 0);
        for i in 0..100usize {
            c.add_sent(i);
            c.add_received(2 * i);
            let moment = match i {
                99 => Moment::Close { now_nanos: 0 },
                _ if i % 3 == 0 => Moment::Tick,
                _ => Moment::Data,
            };
            for e in c.step(moment, || i > 10).emissions {
                match e.value() {
                    (ValueKind::BytesSent, n) => sent += n,
                    (ValueKind::BytesReceived, n) => received += n,
                    _ => {}
                }
            }
        }
        assert_eq!((sent, received), (4950, 9900));
    }
}
