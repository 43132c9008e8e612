//! Transition tests for [`super::Exchange`], through a minimal model of how a caller applies
//! verdicts (`sim` below). The shipped glue is tested through the fake Envoy in `testkit`.

use prost_types::Struct;

use super::super::config::{ClientGate, Role};
use super::super::frame::{encode_frame, HEADER_LEN, MAGIC_BYTES};
use super::*;
use crate::logic::workload::{string_value, NAMESPACE, WORKLOAD_NAME};
use sim::SimConnection;

const CAP: u32 = 64 * 1024;

fn frame_of(workload: &str) -> Vec<u8> {
    let mut md = Struct::default();
    md.fields
        .insert(WORKLOAD_NAME.into(), string_value(workload));
    md.fields.insert(NAMESPACE.into(), string_value("default"));
    encode_frame(&md, &format!("sidecar~{workload}"))
}

fn sim(role: Role) -> SimConnection {
    SimConnection::new(Exchange::new(role, CAP), frame_of("me"))
}

fn client(mesh: bool) -> SimConnection {
    let mut s = sim(Role::Client(ClientGate::TlsModeIstio));
    assert!(s.exchange.needs_endpoint_gate());
    s.decide_gate(mesh, CAP);
    s
}

fn with_app(frame: &[u8], app: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v.extend_from_slice(app);
    v
}

fn found_workload(s: &SimConnection) -> Option<String> {
    s.events.iter().find_map(|e| match e {
        Event::PeerFound(f) => Some(
            crate::logic::workload::WorkloadMetadata::from_exchange_struct(&f.metadata)
                .workload_name,
        ),
        _ => None,
    })
}

#[test]
fn client_first_exchange_on_a_mesh_endpoint() {
    let mut c = client(true);
    c.outgoing(b"world\n", false);
    assert_eq!(c.outgoing.delivered, with_app(&frame_of("me"), b"world\n"));
    c.incoming(&with_app(&frame_of("server"), b"hello world\n"), false);
    assert_eq!(c.incoming.delivered, b"hello world\n");
    assert_eq!(found_workload(&c).as_deref(), Some("server"));
    assert_eq!(c.count(Counter::AlpnProtocolFound), 1);
    assert_eq!(c.count(Counter::MetadataAdded), 1);
    assert!(c.exchange.is_settled());
    // Later bytes are untouched.
    c.outgoing(b"again", false);
    assert!(c.outgoing.delivered.ends_with(b"world\nagain"));
    assert_eq!(c.count(Counter::MetadataAdded), 1);
}

#[test]
fn client_gate_closed_touches_nothing() {
    let mut c = client(false);
    c.outgoing(b"PING\r\n", false);
    let server_bytes = with_app(&frame_of("server"), b"+PONG\r\n");
    c.incoming(&server_bytes, false);
    assert_eq!(c.outgoing.delivered, b"PING\r\n");
    assert_eq!(c.incoming.delivered, server_bytes);
    assert_eq!(c.count(Counter::AlpnProtocolNotFound), 1);
    assert!(c
        .events
        .contains(&Event::PeerNotFound(NotFound::GateClosed)));
    assert!(c.exchange.is_settled());
}

#[test]
fn client_gate_always_and_never_need_no_endpoint() {
    let mut always = sim(Role::Client(ClientGate::Always));
    assert!(!always.exchange.needs_endpoint_gate());
    assert_eq!(always.count(Counter::AlpnProtocolFound), 1);
    always.outgoing(b"x", false);
    assert!(always.outgoing.delivered.starts_with(&MAGIC_BYTES));
    let mut never = sim(Role::Client(ClientGate::Never));
    never.outgoing(b"x", false);
    assert_eq!(never.outgoing.delivered, b"x");
    assert!(never.peer_not_found());
    assert!(never.exchange.is_settled());
}

#[test]
fn client_accepts_server_frame_before_sending_its_own() {
    let mut c = client(true);
    c.incoming(&with_app(&frame_of("redis"), b"greeting\r\n"), false);
    assert_eq!(c.incoming.delivered, b"greeting\r\n");
    assert_eq!(found_workload(&c).as_deref(), Some("redis"));
    assert!(!c.exchange.is_settled(), "our frame is still to be sent");
    c.outgoing(b"AUTH x\r\n", false);
    assert_eq!(
        c.outgoing.delivered,
        with_app(&frame_of("me"), b"AUTH x\r\n")
    );
    assert!(c.exchange.is_settled());
}

#[test]
fn one_byte_fragments_both_directions() {
    let mut c = client(true);
    let from_server = with_app(&frame_of("server"), b"hello world\n");
    for (i, b) in from_server.iter().enumerate() {
        c.incoming(std::slice::from_ref(b), false);
        assert!(
            c.max_held <= frame_of("server").len(),
            "held more than a frame at {i}"
        );
    }
    assert_eq!(c.incoming.delivered, b"hello world\n");
    assert!(c.peer_found());

    let mut s = sim(Role::ServerExpect);
    let from_client = with_app(&frame_of("client"), b"world\n");
    for b in &from_client {
        s.incoming(std::slice::from_ref(b), false);
    }
    assert_eq!(s.incoming.delivered, b"world\n");
    assert_eq!(found_workload(&s).as_deref(), Some("client"));
}

#[test]
fn server_expect_answers_on_the_first_bytes_back() {
    let mut s = sim(Role::ServerExpect);
    assert_eq!(s.count(Counter::AlpnProtocolFound), 1);
    s.incoming(&with_app(&frame_of("client"), b"world\n"), false);
    s.outgoing(b"hello world\n", false);
    assert_eq!(
        s.outgoing.delivered,
        with_app(&frame_of("me"), b"hello world\n")
    );
    assert!(s.exchange.is_settled());
}

#[test]
fn server_expect_with_a_server_first_backend() {
    let mut s = sim(Role::ServerExpect);
    s.outgoing(b"220 ready\r\n", false);
    assert_eq!(
        s.outgoing.delivered,
        with_app(&frame_of("me"), b"220 ready\r\n")
    );
    s.incoming(&with_app(&frame_of("client"), b"HELO\r\n"), false);
    assert_eq!(s.incoming.delivered, b"HELO\r\n");
    assert!(s.peer_found());
}

#[test]
fn server_expect_without_a_frame_passes_bytes_and_warns() {
    let mut s = sim(Role::ServerExpect);
    s.incoming(b"GET / HTTP/1.1\r\n", false);
    assert_eq!(s.incoming.delivered, b"GET / HTTP/1.1\r\n");
    assert_eq!(s.count(Counter::InitialHeaderNotFound), 1);
    assert!(NotFound::NotAFrame.is_warning(Role::ServerExpect));
    assert!(s.peer_not_found());
}

#[test]
fn detect_mode_leaves_plain_clients_alone() {
    let mut s = sim(Role::ServerDetect);
    assert_eq!(s.count(Counter::AlpnProtocolFound), 0);
    s.incoming(b"*1\r\n$4\r\nPING\r\n", false);
    s.outgoing(b"+PONG\r\n", false);
    assert_eq!(s.incoming.delivered, b"*1\r\n$4\r\nPING\r\n");
    assert_eq!(s.outgoing.delivered, b"+PONG\r\n");
    assert_eq!(s.count(Counter::AlpnProtocolNotFound), 1);
    assert_eq!(s.count(Counter::MetadataAdded), 0);
    assert!(!NotFound::NotAFrame.is_warning(Role::ServerDetect));
    assert!(s.exchange.is_settled());
}

#[test]
fn detect_mode_answers_a_mesh_client() {
    let mut s = sim(Role::ServerDetect);
    s.incoming(&with_app(&frame_of("client"), b"world\n"), false);
    assert_eq!(s.incoming.delivered, b"world\n");
    assert_eq!(s.count(Counter::AlpnProtocolFound), 1);
    s.outgoing(b"hello world\n", false);
    assert_eq!(
        s.outgoing.delivered,
        with_app(&frame_of("me"), b"hello world\n")
    );
}

#[test]
fn detect_mode_server_first_learns_the_client_but_cannot_answer() {
    let mut s = sim(Role::ServerDetect);
    s.outgoing(b"greeting\r\n", false);
    assert_eq!(s.outgoing.delivered, b"greeting\r\n");
    s.incoming(&with_app(&frame_of("client"), b"cmd\r\n"), false);
    assert_eq!(s.incoming.delivered, b"cmd\r\n");
    assert!(s.peer_found());
    s.outgoing(b"reply\r\n", false);
    assert_eq!(s.outgoing.delivered, b"greeting\r\nreply\r\n");
    assert_eq!(s.count(Counter::MetadataAdded), 0);
}

#[test]
fn oversized_length_passes_through() {
    let mut c = client(true);
    let mut bytes = MAGIC_BYTES.to_vec();
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    bytes.extend_from_slice(b"rest");
    c.incoming(&bytes, false);
    assert_eq!(c.incoming.delivered, bytes);
    assert_eq!(c.count(Counter::HeaderNotFound), 1);
    assert!(c.events.iter().any(|e| matches!(
        e,
        Event::PeerNotFound(NotFound::TooLarge { declared: u32::MAX })
    )));
}

#[test]
fn malformed_frame_is_stripped_and_counted() {
    let mut s = sim(Role::ServerExpect);
    let mut bytes = MAGIC_BYTES.to_vec();
    bytes.extend_from_slice(&4u32.to_be_bytes());
    bytes.extend_from_slice(&[0xFF; 4]);
    bytes.extend_from_slice(b"app");
    s.incoming(&bytes, false);
    assert_eq!(s.incoming.delivered, b"app");
    assert_eq!(s.count(Counter::HeaderNotFound), 1);
    assert!(s.peer_not_found());
}

#[test]
fn end_of_stream_mid_header_delivers_what_was_held() {
    let mut s = sim(Role::ServerExpect);
    s.incoming(&MAGIC_BYTES[..3], false);
    assert!(s.incoming.delivered.is_empty(), "held while undecided");
    assert!(s.exchange.is_mid_frame());
    s.incoming(&[], true);
    assert_eq!(s.incoming.delivered, &MAGIC_BYTES[..3]);
    assert_eq!(s.count(Counter::InitialHeaderNotFound), 1);
}

#[test]
fn end_of_stream_mid_payload_delivers_what_was_held() {
    let mut c = client(true);
    let frame = frame_of("server");
    c.incoming(&frame[..HEADER_LEN + 3], false);
    c.incoming(&frame[HEADER_LEN + 3..HEADER_LEN + 5], true);
    assert_eq!(c.incoming.delivered, &frame[..HEADER_LEN + 5]);
    assert_eq!(c.count(Counter::HeaderNotFound), 1);
    assert!(c.events.iter().any(|e| matches!(
        e,
        Event::PeerNotFound(NotFound::Truncated { bytes }) if *bytes == HEADER_LEN + 5
    )));
}

#[test]
fn close_without_bytes_says_nothing() {
    let mut s = sim(Role::ServerExpect);
    s.incoming(&[], true);
    assert!(!s.peer_found() && !s.peer_not_found());
    assert_eq!(s.count(Counter::InitialHeaderNotFound), 0);
}

#[test]
fn detect_mode_truncated_magic_is_not_a_mesh_peer() {
    let mut s = sim(Role::ServerDetect);
    s.incoming(&MAGIC_BYTES[..2], true);
    assert_eq!(s.incoming.delivered, &MAGIC_BYTES[..2]);
    assert_eq!(s.count(Counter::AlpnProtocolNotFound), 1);
}

#[test]
fn abandon_stops_reading_and_sending() {
    let mut s = sim(Role::ServerExpect);
    s.incoming(&MAGIC_BYTES, false);
    let events = s.exchange.abandon();
    assert!(events.contains(&Event::Count(Counter::HeaderNotFound)));
    assert!(s.exchange.is_settled());
    assert_eq!(s.exchange.held_incoming(), 0);
}

#[test]
fn empty_outgoing_chunks_do_not_carry_the_frame() {
    let mut s = sim(Role::ServerExpect);
    s.outgoing(b"", true);
    assert!(s.outgoing.delivered.is_empty());
    assert_eq!(s.count(Counter::MetadataAdded), 0);
}

#[test]
fn counter_stat_names_get_envoys_prefix_like_a_native_stat() {
    assert_eq!(
        Counter::AlpnProtocolFound.stat_name("metadata_exchange"),
        "envoy_metadata_exchange.alpn_protocol_found"
    );
    assert_eq!(
        Counter::MetadataAdded.stat_name("mx.outbound"),
        "envoy_mx.outbound.metadata_added"
    );
}

/// A valid header whose payload is not a protobuf `Any` (a field tag with wire type 7).
fn lookalike_frame() -> Vec<u8> {
    let mut bytes = MAGIC_BYTES.to_vec();
    bytes.extend_from_slice(&4u32.to_be_bytes());
    bytes.extend_from_slice(&[0xFF; 4]);
    bytes
}

#[test]
fn detect_mode_passes_a_lookalike_frame_untouched() {
    let mut s = sim(Role::ServerDetect);
    let bytes = with_app(&lookalike_frame(), b"app");
    s.incoming(&bytes, false);
    assert_eq!(s.incoming.delivered, bytes, "header included");
    assert_eq!(s.count(Counter::AlpnProtocolNotFound), 1);
    assert_eq!(s.count(Counter::AlpnProtocolFound), 0);
    assert!(s.events.iter().any(|e| matches!(
        e,
        Event::PeerNotFound(NotFound::Lookalike { frame_len: 12 })
    )));
    s.outgoing(b"reply", false);
    assert_eq!(s.outgoing.delivered, b"reply", "no answer");
    assert!(!NotFound::Lookalike { frame_len: 12 }.is_warning(Role::ServerDetect));
}

#[test]
fn detect_mode_still_strips_an_any_of_the_wrong_type() {
    let mut s = sim(Role::ServerDetect);
    let any = prost_types::Any {
        type_url: "type.googleapis.com/google.protobuf.Empty".into(),
        value: Vec::new(),
    };
    let payload = prost::Message::encode_to_vec(&any);
    let mut bytes = MAGIC_BYTES.to_vec();
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&payload);
    s.incoming(&with_app(&bytes, b"app"), false);
    assert_eq!(s.incoming.delivered, b"app");
    assert_eq!(s.count(Counter::HeaderNotFound), 1);
}

#[test]
fn expect_mode_does_not_answer_a_client_that_sent_no_frame() {
    let mut s = sim(Role::ServerExpect);
    s.incoming(b"PING\r\n", false);
    s.outgoing(b"+PONG\r\n", false);
    assert_eq!(s.outgoing.delivered, b"+PONG\r\n");
    assert_eq!(s.count(Counter::MetadataAdded), 0);
}

#[test]
fn expect_mode_answers_a_client_whose_frame_was_unusable() {
    let mut s = sim(Role::ServerExpect);
    s.incoming(&with_app(&lookalike_frame(), b"app"), false);
    assert_eq!(s.incoming.delivered, b"app", "expect mode keeps stripping");
    s.outgoing(b"reply", false);
    assert_eq!(s.count(Counter::MetadataAdded), 1);
}

#[test]
fn close_before_the_peer_is_known_is_peer_not_found() {
    for role in [
        Role::ServerExpect,
        Role::ServerDetect,
        Role::Client(ClientGate::TlsModeIstio),
    ] {
        let mut s = sim(role);
        let events = s.exchange.on_close();
        assert_eq!(
            events,
            vec![Event::PeerNotFound(NotFound::ClosedUndecided)],
            "{role:?}"
        );
        assert!(s.exchange.on_close().is_empty(), "once");
        assert!(s.exchange.is_settled());
    }
    let mut decided = sim(Role::ServerDetect);
    decided.incoming(b"plain", false);
    assert!(decided.exchange.on_close().is_empty());
}

/// Applies verdicts the way Envoy 1.40 treats a buffer (docs/ENVOY-NOTES.md): a paused chunk
/// stays and the next callback sees it with the new bytes appended; strip drops a prefix;
/// prepend inserts before it; a buffer not paused is passed on whole.
mod sim {
    use crate::logic::exchange::memo::PayloadMemo;
    use crate::logic::exchange::{Counter, Event, Exchange, Verdict};

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
        memo: PayloadMemo,
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
                memo: PayloadMemo::default(),
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
            let verdict = self
                .exchange
                .on_incoming(&new, end_of_stream, &mut self.memo);
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

        pub fn count(&self, counter: Counter) -> usize {
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
}
