//! When one connection's TCP metrics are emitted, as Istio's stats filter does it:
//! - `opened` once the peer is known (exchange done, or decidedly absent) or at close;
//! - byte deltas on each report once opened (each tick of `tcp_reporting_duration`), and at close;
//! - `closed` at close, after the last deltas.
//!
//! Opened and closed are reported with the same label set, computed once when opened is emitted
//! (istio/istio#33574 is what happens otherwise). Byte counts are application bytes: the glue
//! feeds only what the stats filter sees on the application side of the exchange filter.

/// One metric update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emission {
    Opened,
    Closed,
    BytesSent(u64),
    BytesReceived(u64),
}

#[derive(Debug, Default, Clone)]
pub struct ConnectionReport {
    received: u64,
    sent: u64,
    reported_received: u64,
    reported_sent: u64,
    opened: bool,
    closed: bool,
}

impl ConnectionReport {
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

    /// A report: on a tick, when the peer became known, or at close (`end`). Emits nothing
    /// while the peer is unknown and the connection lives, and nothing after close.
    pub fn report(&mut self, peer_known: bool, end: bool) -> Vec<Emission> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        if !self.opened && (peer_known || end) {
            self.opened = true;
            out.push(Emission::Opened);
        }
        if self.opened {
            let sent = self.sent - self.reported_sent;
            let received = self.received - self.reported_received;
            if sent > 0 {
                out.push(Emission::BytesSent(sent));
            }
            if received > 0 {
                out.push(Emission::BytesReceived(received));
            }
            self.reported_sent = self.sent;
            self.reported_received = self.received;
        }
        if end {
            self.closed = true;
            out.push(Emission::Closed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Emission::*;
    use super::*;

    #[test]
    fn waits_for_the_peer_then_reports_deltas() {
        let mut r = ConnectionReport::default();
        r.add_received(6);
        assert_eq!(r.report(false, false), vec![]);
        r.add_sent(12);
        assert_eq!(
            r.report(true, false),
            vec![Opened, BytesSent(12), BytesReceived(6)]
        );
        assert_eq!(r.report(true, false), vec![], "no empty deltas");
        r.add_received(4);
        assert_eq!(r.report(true, false), vec![BytesReceived(4)]);
        r.add_sent(1);
        assert_eq!(r.report(true, true), vec![BytesSent(1), Closed]);
        assert_eq!(r.report(true, true), vec![], "nothing after close");
    }

    #[test]
    fn close_without_a_peer_reports_everything_once() {
        let mut r = ConnectionReport::default();
        r.add_received(60);
        r.add_sent(120);
        assert_eq!(
            r.report(false, true),
            vec![Opened, BytesSent(120), BytesReceived(60), Closed]
        );
        assert!(r.is_opened() && r.is_closed());
    }

    #[test]
    fn totals_equal_what_was_counted() {
        let mut r = ConnectionReport::default();
        let (mut sent, mut received) = (0, 0);
        for i in 0..100usize {
            r.add_sent(i);
            r.add_received(2 * i);
            for e in r.report(i > 10, i == 99) {
                match e {
                    BytesSent(n) => sent += n,
                    BytesReceived(n) => received += n,
                    _ => {}
                }
            }
        }
        assert_eq!((sent, received), (4950, 9900));
    }
}
