//! The exchange state machine, through `exchange_sim`'s model of Envoy's buffers, driven by an
//! arbitrary sequence of connection events.
//!
//! Input: `[role, cap, frame choice, events…]`. Events: an incoming chunk of arbitrary bytes,
//! the next piece of a real frame (so fragmented valid frames are reached), a whole frame plus
//! application bytes, an empty callback, an outgoing chunk, end of stream on either side, and
//! the client's gate decision. The client gate is decided before the first data callback, as
//! the glue does (`ExchangeStream::start`): from an explicit gate event if one came first, else
//! from a bit of the role byte.
//!
//! Invariants checked after every event (besides the sim's own: never pause at end of stream,
//! never strip past the buffer):
//! - incoming: delivered + held = received minus exactly one prefix, and that prefix is
//!   removed iff the received bytes start with a whole frame (magic, length under the cap, all
//!   of its payload; in detect mode also a payload that parses as a protobuf `Any`) while the
//!   exchange was reading; then `PeerFound` carries its length. Held
//!   bytes are only ever a frame prefix, and none are held once the stream ended or the
//!   exchange settled;
//! - outgoing: delivered = received, or our frame + received, and the frame goes only where the
//!   role allows it (detect: only after the peer's frame; expect: not once the client's bytes
//!   showed no magic);
//! - at most one peer outcome, at most one gate count; bounded holding.

#![no_main]

mod common;

use common::Bytes;
use istio_tcp_telemetry::logic::exchange::{Counter, Event, Exchange};
use istio_tcp_telemetry::logic::exchange_config::{ClientGate, Role};
use istio_tcp_telemetry::logic::exchange_sim::SimConnection;
use istio_tcp_telemetry::logic::frame::{encode_frame, HEADER_LEN, MAGIC_BYTES};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_types::{Any, Struct};

const GOLDEN: [&[u8]; 4] = [
    include_bytes!("../../tests/fixtures/golden/modern_ratings.bin"),
    include_bytes!("../../tests/fixtures/golden/modern_mongodb_empty_id.bin"),
    include_bytes!("../../tests/fixtures/golden/legacy_1_9.bin"),
    include_bytes!("../../tests/fixtures/golden/unicode.bin"),
];

/// The peer's stream for "next piece of a frame" events: a golden frame, a frame whose `Any`
/// holds the wrong type, or one whose payload is garbage; then application bytes.
fn peer_stream(choice: u8) -> Vec<u8> {
    let mut stream = match choice % 6 {
        n @ 0..=3 => GOLDEN[usize::from(n)].to_vec(),
        4 => {
            let any = Any {
                type_url: "type.googleapis.com/google.protobuf.Duration".into(),
                value: vec![8, 1],
            }
            .encode_to_vec();
            [&MAGIC_BYTES[..], &(any.len() as u32).to_be_bytes(), &any].concat()
        }
        _ => [&MAGIC_BYTES[..], &20u32.to_be_bytes(), &[0xFF; 20]].concat(),
    };
    stream.extend_from_slice(b"application bytes after the frame");
    stream
}

fn role_of(b: u8) -> Role {
    match b % 5 {
        0 => Role::Client(ClientGate::TlsModeIstio),
        1 => Role::Client(ClientGate::Always),
        2 => Role::Client(ClientGate::Never),
        3 => Role::ServerExpect,
        _ => Role::ServerDetect,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes { data };
    let role_byte = input.u8();
    let role = role_of(role_byte);
    let cap: u32 = [256, 512, 1024, 64 * 1024][usize::from(input.u8() % 4)];
    let peer = peer_stream(input.u8());
    let our_frame = encode_frame(&Struct::default(), "sidecar~fuzz");
    let mut sim = SimConnection::new(Exchange::new(role, cap), our_frame.clone());
    let mut gate: Option<bool> = None;
    let mut started = false;
    let mut peer_at = 0;
    let mut biggest_chunk = 0;
    // The exchange reads the peer's bytes from the start of the stream (not gate-closed).
    let reads = |gate: Option<bool>| match role {
        Role::Client(ClientGate::Never) => false,
        Role::Client(ClientGate::TlsModeIstio) => gate == Some(true),
        _ => true,
    };

    for _ in 0..200 {
        if input.is_empty() {
            break;
        }
        let op = input.u8() % 8;
        let data_event = op != 5;
        if data_event && !started {
            started = true;
            if sim.exchange.needs_endpoint_gate() {
                let mesh = gate.unwrap_or(role_byte & 0x80 != 0);
                gate = Some(mesh);
                sim.decide_gate(mesh, cap);
            }
        }
        match op {
            0 | 6 if !sim.incoming.ended => {
                let len = if op == 6 { 0 } else { usize::from(input.u8()) };
                let chunk = input.take(len).to_vec();
                biggest_chunk = biggest_chunk.max(chunk.len());
                sim.incoming(&chunk, false);
            }
            1 if !sim.incoming.ended => {
                let len = usize::from(input.u8() % 64) + 1;
                let end = (peer_at + len).min(peer.len());
                let chunk = peer[peer_at..end].to_vec();
                peer_at = end;
                biggest_chunk = biggest_chunk.max(chunk.len());
                sim.incoming(&chunk, false);
            }
            7 if !sim.incoming.ended => {
                biggest_chunk = biggest_chunk.max(peer.len());
                sim.incoming(&peer, false);
            }
            2 if !sim.outgoing.ended => {
                let len = usize::from(input.u8());
                let chunk = input.take(len).to_vec();
                sim.outgoing(&chunk, false);
            }
            3 if !sim.incoming.ended => {
                let len = usize::from(input.u8() % 16);
                let chunk = input.take(len).to_vec();
                biggest_chunk = biggest_chunk.max(chunk.len());
                sim.incoming(&chunk, true);
            }
            4 if !sim.outgoing.ended => sim.outgoing(&[], true),
            5 if !started => {
                // The glue decides on the first data callback; record the decision for it.
                gate = Some(input.u8() & 1 == 1);
            }
            _ => {}
        }
        check(&sim, role, cap, reads(gate), &our_frame, biggest_chunk);
    }
});

fn check(sim: &SimConnection, role: Role, cap: u32, reads: bool, our_frame: &[u8], chunk: usize) {
    let received = &sim.incoming.received;
    // ---- incoming
    let whole_frame = (reads && received.len() >= HEADER_LEN && received[..4] == MAGIC_BYTES)
        .then(|| u32::from_be_bytes([received[4], received[5], received[6], received[7]]))
        .filter(|d| *d <= cap)
        .map(|d| HEADER_LEN + d as usize)
        .filter(|len| received.len() >= *len);
    // Detect mode removes only a provable frame: its payload must be a protobuf `Any`.
    let provable = |len: &usize| {
        role != Role::ServerDetect || Any::decode(&received[HEADER_LEN..*len]).is_ok()
    };
    let removed = whole_frame.filter(provable);
    let strip = removed.unwrap_or(0);
    let mut seen = sim.incoming.delivered.clone();
    seen.extend_from_slice(&sim.incoming.held);
    assert_eq!(
        seen,
        received[strip..],
        "incoming: exactly one prefix of {strip} bytes removed"
    );
    if whole_frame.is_some() {
        assert!(sim.incoming.held.is_empty(), "a whole frame is never held");
    }
    if !sim.incoming.held.is_empty() {
        assert!(reads, "held without reading");
        assert!(sim.incoming.delivered.is_empty(), "held after delivering");
        assert!(!sim.incoming.ended, "held at end of stream");
        assert!(!sim.exchange.is_settled(), "held after settling");
        let magic = received.len().min(4);
        assert_eq!(
            received[..magic],
            MAGIC_BYTES[..magic],
            "only a frame prefix is held"
        );
    }
    assert!(
        sim.max_held <= HEADER_LEN + cap as usize + chunk,
        "held {} bytes",
        sim.max_held
    );
    assert!(sim.exchange.held_incoming() <= HEADER_LEN + cap as usize);

    // ---- outcomes
    let found: Vec<usize> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PeerFound(f) => Some(f.frame_len),
            _ => None,
        })
        .collect();
    let not_found = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::PeerNotFound(_)))
        .count();
    assert!(
        found.len() + not_found <= 1,
        "one peer outcome at most: {:?}",
        sim.events
    );
    if let Some(len) = found.first() {
        assert_eq!(
            Some(*len),
            removed,
            "PeerFound's frame is what was stripped"
        );
    }
    let gate_counts =
        sim.count(Counter::AlpnProtocolFound) + sim.count(Counter::AlpnProtocolNotFound);
    assert!(gate_counts <= 1, "gate counted twice: {:?}", sim.events);

    // ---- outgoing
    let sent = sim.count(Counter::MetadataAdded);
    assert!(sent <= 1);
    assert!(
        sim.outgoing.held.is_empty(),
        "outgoing bytes are never held"
    );
    let expected: Vec<u8> = if sent == 1 {
        [our_frame, &sim.outgoing.received[..]].concat()
    } else {
        sim.outgoing.received.clone()
    };
    assert_eq!(
        sim.outgoing.delivered, expected,
        "outgoing: frame prefix at most"
    );
    if sent == 1 {
        match role {
            Role::Client(ClientGate::Never) => panic!("sent with gate never"),
            Role::Client(_) => assert!(reads, "sent through a closed gate"),
            Role::ServerDetect => assert_eq!(found.len(), 1, "detect answered a non-peer"),
            Role::ServerExpect => {}
        }
    } else if reads
        && !matches!(role, Role::ServerDetect)
        && (role != Role::ServerExpect
            || received.is_empty()
            || (received.len() >= 4 && received[..4] == MAGIC_BYTES))
    {
        // Expect mode stays silent once the client's first bytes were not the magic.
        assert!(
            sim.outgoing.received.is_empty(),
            "an open gate sends on the first outgoing bytes"
        );
    }
}
