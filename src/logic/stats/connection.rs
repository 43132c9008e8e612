//! One connection's reporting machine, as Istio's stats filter reports it:
//! - `opened` once the peer is known (exchange done, or decidedly absent) or at close;
//! - byte deltas on each report once opened (each tick of `tcp_reporting_duration`), and at close;
//! - `closed` at close, after the last deltas.
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
    /// The connection is done (`on_log`).
    Close,
}

/// One metric update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emission {
    Opened,
    Closed,
    BytesSent(u64),
    BytesReceived(u64),
}

impl Emission {
    /// Which metric values move, and by how much.
    pub fn value(self) -> (ValueKind, u64) {
        match self {
            Emission::Opened => (ValueKind::ConnectionsOpened, 1),
            Emission::Closed => (ValueKind::ConnectionsClosed, 1),
            Emission::BytesSent(n) => (ValueKind::BytesSent, n),
            Emission::BytesReceived(n) => (ValueKind::BytesReceived, n),
        }
    }
}

/// What one step asks of the glue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Compute the connection's series now (before applying `emissions`): `opened` is in them.
    pub labels_needed: bool,
    pub emissions: Vec<Emission>,
}

#[derive(Debug, Default, Clone)]
pub struct ConnectionStats {
    received: u64,
    sent: u64,
    reported_received: u64,
    reported_sent: u64,
    opened: bool,
    closed: bool,
    peer_checks: u8,
}

impl ConnectionStats {
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
                Moment::Tick | Moment::Close => true,
            };
        let known = self.opened || (ask && peer_decided());
        match moment {
            // Data only ever opens: deltas wait for the tick.
            Moment::Data if !known || self.opened => Report::default(),
            _ => self.report(known, moment == Moment::Close),
        }
    }

    fn report(&mut self, peer_known: bool, end: bool) -> Report {
        let mut out = Report::default();
        if !self.opened && (peer_known || end) {
            self.opened = true;
            out.labels_needed = true;
            out.emissions.push(Emission::Opened);
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
        if end {
            self.closed = true;
            out.emissions.push(Emission::Closed);
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
        assert_eq!(r.emissions, vec![Opened, BytesSent(12), BytesReceived(6)]);
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
            emissions(c.step(Moment::Close, || panic!())),
            vec![BytesSent(1), Closed]
        );
        assert_eq!(c.step(Moment::Close, || true), Report::default());
        assert_eq!(c.step(Moment::Tick, || true), Report::default());
    }

    #[test]
    fn close_without_a_peer_reports_everything_once() {
        let mut c = ConnectionStats::default();
        c.add_received(60);
        c.add_sent(120);
        let r = c.step(Moment::Close, || false);
        assert!(r.labels_needed);
        assert_eq!(
            r.emissions,
            vec![Opened, BytesSent(120), BytesReceived(60), Closed]
        );
        assert!(c.is_opened() && c.is_closed());
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
                99 => Moment::Close,
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
