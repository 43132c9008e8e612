//! A model of how Envoy applies an [`Exchange`]'s verdicts to one connection, used by unit tests
//! and fuzz targets to check the byte invariants without a host.
//!
//! It follows the measured behaviour in ENVOY-NOTES.md: a paused chunk stays in the buffer and
//! the next callback sees it with the new bytes appended; strip drops a prefix; prepend inserts
//! before the buffer; a non-paused buffer is passed on whole.

use super::exchange::{Event, Exchange, Verdict};

#[derive(Debug, Default)]
pub struct SimDirection {
    /// Bytes Envoy holds for the filter (paused) in this direction.
    pub held: Vec<u8>,
    /// Bytes passed on to the next filter.
    pub delivered: Vec<u8>,
    /// Every byte that arrived.
    pub received: Vec<u8>,
    pub ended: bool,
}

#[derive(Debug)]
pub struct SimConnection {
    pub exchange: Exchange,
    pub our_frame: Vec<u8>,
    pub incoming: SimDirection,
    pub outgoing: SimDirection,
    pub events: Vec<Event>,
    /// Most bytes ever held at once in the incoming direction.
    pub max_held: usize,
}

impl SimConnection {
    pub fn new(exchange: Exchange, our_frame: Vec<u8>) -> Self {
        let mut sim = SimConnection {
            exchange,
            our_frame,
            incoming: SimDirection::default(),
            outgoing: SimDirection::default(),
            events: Vec::new(),
            max_held: 0,
        };
        let start = sim.exchange.start();
        sim.events.extend(start);
        sim
    }

    /// The client's gate, as the glue decides it from endpoint metadata.
    pub fn decide_gate(&mut self, mesh_endpoint: bool, cap: u32) {
        let events = self.exchange.decide_gate(mesh_endpoint, cap);
        self.events.extend(events);
    }

    /// A chunk from the peer.
    pub fn incoming(&mut self, chunk: &[u8], end_of_stream: bool) {
        assert!(!self.incoming.ended, "data after end of stream");
        self.incoming.received.extend_from_slice(chunk);
        self.incoming.held.extend_from_slice(chunk);
        self.incoming.ended = end_of_stream;
        let already = self.exchange.held_incoming().min(self.incoming.held.len());
        let new = self.incoming.held[already..].to_vec();
        let verdict = self.exchange.on_incoming(&new, end_of_stream);
        self.max_held = self.max_held.max(self.incoming.held.len());
        apply(
            &mut self.incoming,
            &self.our_frame,
            verdict,
            &mut self.events,
            end_of_stream,
        );
    }

    /// A chunk towards the peer.
    pub fn outgoing(&mut self, chunk: &[u8], end_of_stream: bool) {
        self.outgoing.received.extend_from_slice(chunk);
        self.outgoing.held.extend_from_slice(chunk);
        self.outgoing.ended = end_of_stream;
        let verdict = self.exchange.on_outgoing(self.outgoing.held.len());
        apply(
            &mut self.outgoing,
            &self.our_frame,
            verdict,
            &mut self.events,
            end_of_stream,
        );
    }

    pub fn peer_found(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::PeerFound(_)))
    }

    pub fn peer_not_found(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::PeerNotFound(_)))
    }

    pub fn count(&self, counter: super::exchange::Counter) -> usize {
        self.events
            .iter()
            .filter(|e| **e == Event::Count(counter))
            .count()
    }
}

fn apply(
    dir: &mut SimDirection,
    frame: &[u8],
    verdict: Verdict,
    events: &mut Vec<Event>,
    end_of_stream: bool,
) {
    assert!(
        !(verdict.pause && end_of_stream),
        "paused at end of stream: Envoy would drop the held bytes"
    );
    assert!(verdict.strip <= dir.held.len(), "strip past the buffer");
    dir.held.drain(..verdict.strip);
    if verdict.prepend_frame {
        dir.held.splice(0..0, frame.iter().copied());
    }
    events.extend(verdict.events);
    if !verdict.pause {
        dir.delivered.append(&mut dir.held);
    }
}
