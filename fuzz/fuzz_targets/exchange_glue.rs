//! The shipped glue (`filters::Dispatch` for both filters) in the fake Envoy of `testkit`, on
//! one sidecar whose chain holds the stats filter and the exchange filter in their real order
//! (client: stats → exchange; server: exchange → stats), or the combined filter
//! `istio_tcp_telemetry` alone (bit 7 of the cap byte), driven by an arbitrary sequence of
//! connection events in both directions. The invariants are the same for both.
//!
//! Input: `[role, cap, frame choice, events…]`. Events: an incoming chunk of arbitrary bytes,
//! the next piece of a real frame (so fragmented valid frames are reached), a whole frame plus
//! application bytes, an empty callback, an outgoing chunk, end of stream on either side, the
//! client's gate (the endpoint's `tlsMode`, fixed before the first data callback: from an
//! explicit gate event if one came first, else from a bit of the role byte), a tick, a close.
//!
//! Invariants checked after every event:
//! - Envoy never loses a byte (nothing paused at end of stream);
//! - incoming: delivered + held = received minus exactly one prefix, and that prefix is
//!   removed iff the received bytes start with a whole frame (magic, length under the cap, all
//!   of its payload; in detect mode also a payload that parses as a protobuf `Any`) while the
//!   exchange was reading; then the peer is in filter state. Held bytes are only ever a frame
//!   prefix, and none are held once the stream ended;
//! - outgoing: delivered = received, or our frame + received, and the frame goes only where the
//!   role allows it (detect: only after the peer's frame; expect: not once the client's bytes
//!   showed no magic);
//! - at most one peer outcome in filter state, at most one gate count; bounded holding;
//! - after close: the stats filter reported one connection, opened and closed, and exactly the
//!   application bytes of each direction (never a frame byte).

#![no_main]

mod common;

use common::Bytes;
use istio_tcp_telemetry::logic::exchange::config::{ClientGate, Role};
use istio_tcp_telemetry::logic::exchange::frame::{encode_frame, HEADER_LEN, MAGIC_BYTES};
use istio_tcp_telemetry::logic::workload::WorkloadMetadata;
use istio_tcp_telemetry::{EXCHANGE_ROOT_ID, STATS_ROOT_ID, TELEMETRY_ROOT_ID};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_types::Any;
use testkit::fake_envoy::{Direction, FakeEnvoy};
use testkit::metadata as node;

const GOLDEN: [&[u8]; 4] = [
    include_bytes!("../../tests/fixtures/golden/modern_ratings.bin"),
    include_bytes!("../../tests/fixtures/golden/modern_mongodb_empty_id.bin"),
    include_bytes!("../../tests/fixtures/golden/legacy_1_9.bin"),
    include_bytes!("../../tests/fixtures/golden/unicode.bin"),
];

const NODE_ID: &str = "sidecar~fuzz";

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
    // Bit 7 is the client gate's answer (see below), not part of the role.
    match (b & 0x7F) % 6 {
        0 => Role::Client(ClientGate::TlsModeIstio),
        1 => Role::Client(ClientGate::Always),
        2 => Role::Client(ClientGate::Never),
        3 => Role::ServerExpect,
        4 => Role::ServerDetect,
        _ => Role::Client(ClientGate::IstioMtls),
    }
}

fn exchange_config(role: Role, cap: u32) -> String {
    let mode = match role {
        Role::Client(ClientGate::TlsModeIstio) => r#""side": "client""#,
        Role::Client(ClientGate::Always) => r#""side": "client", "client_gate": "always""#,
        Role::Client(ClientGate::Never) => r#""side": "client", "client_gate": "never""#,
        Role::Client(ClientGate::IstioMtls) => r#""side": "client", "client_gate": "istio_mtls""#,
        Role::ServerExpect => r#""side": "server""#,
        Role::ServerDetect => r#""side": "server", "server_mode": "detect""#,
    };
    format!(r#"{{{mode}, "max_frame_bytes": {cap}}}"#)
}

/// One sidecar and what went in and out of its connection, per direction.
struct Sidecar {
    envoy: FakeEnvoy,
    listener: usize,
    connection: Option<u32>,
    client: bool,
    incoming: Flow,
    outgoing: Flow,
    closed: bool,
}

#[derive(Default)]
struct Flow {
    received: Vec<u8>,
    delivered: Vec<u8>,
    ended: bool,
    max_held: usize,
}

impl Sidecar {
    fn new(role: Role, cap: u32, combined: bool) -> Self {
        let client = matches!(role, Role::Client(_));
        let exchange = exchange_config(role, cap);
        let telemetry = format!(r#"{{"exchange": {exchange}, "stats": {{}}}}"#);
        let chain: Vec<(&str, &str)> = if combined {
            vec![(TELEMETRY_ROOT_ID, telemetry.as_str())]
        } else if client {
            vec![(STATS_ROOT_ID, "{}"), (EXCHANGE_ROOT_ID, exchange.as_str())]
        } else {
            vec![(EXCHANGE_ROOT_ID, exchange.as_str()), (STATS_ROOT_ID, "{}")]
        };
        let mut envoy = FakeEnvoy::new(NODE_ID, None);
        let listener = envoy.add_listener(&chain).expect("valid configs");
        Sidecar {
            envoy,
            listener,
            connection: None,
            client,
            incoming: Flow::default(),
            outgoing: Flow::default(),
            closed: false,
        }
    }

    fn incoming_direction(&self) -> Direction {
        if self.client {
            Direction::Upstream
        } else {
            Direction::Downstream
        }
    }

    fn outgoing_direction(&self) -> Direction {
        if self.client {
            Direction::Downstream
        } else {
            Direction::Upstream
        }
    }

    /// The connection, accepted with its endpoint's metadata and, for a mesh peer, mutual TLS
    /// to a SPIFFE identity upstream (what the client's gates read).
    fn connect(&mut self, mesh_endpoint: bool) -> u32 {
        if let Some(c) = self.connection {
            return c;
        }
        let direction = if self.client {
            node::OUTBOUND
        } else {
            node::INBOUND
        };
        let mut properties = vec![
            ("xds.listener_direction", node::u64_property(direction)),
            (
                "xds.upstream_host_metadata",
                node::endpoint_metadata(mesh_endpoint, None),
            ),
        ];
        if mesh_endpoint {
            properties.extend([
                ("upstream.tls_version", b"TLSv1.3".to_vec()),
                (
                    "upstream.uri_san_peer_certificate",
                    b"spiffe://cluster.local/ns/default/sa/fuzz".to_vec(),
                ),
            ]);
        }
        let c = self.envoy.connect(self.listener, &properties);
        self.connection = Some(c);
        c
    }

    fn send(&mut self, incoming: bool, chunk: &[u8], end_of_stream: bool) {
        let Some(c) = self.connection else { return };
        let direction = if incoming {
            self.incoming_direction()
        } else {
            self.outgoing_direction()
        };
        let flow = if incoming {
            &mut self.incoming
        } else {
            &mut self.outgoing
        };
        if flow.ended || self.closed {
            return;
        }
        flow.received.extend_from_slice(chunk);
        flow.ended = end_of_stream;
        match direction {
            Direction::Downstream => self.envoy.downstream(c, chunk, end_of_stream),
            Direction::Upstream => self.envoy.upstream(c, chunk, end_of_stream),
        }
        self.collect();
    }

    fn collect(&mut self) {
        let Some(c) = self.connection else { return };
        let (incoming, outgoing) = (self.incoming_direction(), self.outgoing_direction());
        for (flow, direction) in [
            (&mut self.incoming, incoming),
            (&mut self.outgoing, outgoing),
        ] {
            let passed = self.envoy.take_delivered(c, direction);
            flow.delivered.extend_from_slice(&passed);
            flow.max_held = flow.max_held.max(self.envoy.held(c, direction));
        }
    }

    fn close(&mut self) {
        if let (Some(c), false) = (self.connection, self.closed) {
            self.envoy.close(c);
            self.closed = true;
            self.incoming.ended = true;
            self.outgoing.ended = true;
            self.collect();
        }
    }

    fn state(&self, key: &str) -> bool {
        self.connection
            .is_some_and(|c| self.envoy.filter_state(c, &format!("wasm.{key}")).is_some())
    }

    fn count(&self, name: &str) -> u64 {
        self.envoy
            .counter(&format!("envoy_metadata_exchange.{name}"))
            .unwrap_or(0)
    }

    /// Sum of every series of a stats metric.
    fn stat(&self, metric: &str) -> u64 {
        self.envoy.series(metric).iter().map(|(_, v)| v).sum()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes { data };
    let role_byte = input.u8();
    let role = role_of(role_byte);
    let cap_byte = input.u8();
    let cap: u32 = [256, 512, 1024, 64 * 1024][usize::from(cap_byte % 4)];
    let combined = cap_byte & 0x80 != 0;
    let peer = peer_stream(input.u8());
    let our_frame = encode_frame(
        &WorkloadMetadata::default().to_exchange_struct(&[]),
        NODE_ID,
    );
    let mut sidecar = Sidecar::new(role, cap, combined);
    let mut gate: Option<bool> = None;
    let mut peer_at = 0;
    let mut biggest_chunk = 0;
    // The exchange reads the peer's bytes from the start of the stream (not gate-closed).
    let reads = |gate: Option<bool>| match role {
        Role::Client(ClientGate::Never) => false,
        Role::Client(ClientGate::TlsModeIstio | ClientGate::IstioMtls) => gate == Some(true),
        _ => true,
    };

    for _ in 0..200 {
        if input.is_empty() {
            break;
        }
        let op = input.u8() % 10;
        let data_event = matches!(op, 0..=4 | 6 | 7);
        if data_event && sidecar.connection.is_none() {
            let mesh = gate.unwrap_or(role_byte & 0x80 != 0);
            gate = Some(mesh);
            sidecar.connect(mesh);
        }
        match op {
            0 | 6 => {
                let len = if op == 6 { 0 } else { usize::from(input.u8()) };
                let chunk = input.take(len).to_vec();
                biggest_chunk = biggest_chunk.max(chunk.len());
                sidecar.send(true, &chunk, false);
            }
            1 => {
                let len = usize::from(input.u8() % 64) + 1;
                let end = (peer_at + len).min(peer.len());
                let chunk = peer[peer_at..end].to_vec();
                peer_at = end;
                biggest_chunk = biggest_chunk.max(chunk.len());
                sidecar.send(true, &chunk, false);
            }
            7 => {
                biggest_chunk = biggest_chunk.max(peer.len());
                sidecar.send(true, &peer, false);
            }
            2 => {
                let len = usize::from(input.u8());
                let chunk = input.take(len).to_vec();
                sidecar.send(false, &chunk, false);
            }
            3 => {
                let len = usize::from(input.u8() % 16);
                let chunk = input.take(len).to_vec();
                biggest_chunk = biggest_chunk.max(chunk.len());
                sidecar.send(true, &chunk, true);
            }
            4 => sidecar.send(false, &[], true),
            5 if sidecar.connection.is_none() => {
                // The endpoint the connection will go to: decided before the first callback.
                gate = Some(input.u8() & 1 == 1);
            }
            8 => sidecar.envoy.tick(),
            9 => sidecar.close(),
            _ => {}
        }
        check(&sidecar, role, cap, reads(gate), &our_frame, biggest_chunk);
    }
    sidecar.close();
    check(&sidecar, role, cap, reads(gate), &our_frame, biggest_chunk);
    check_stats(&sidecar);
});

fn check(s: &Sidecar, role: Role, cap: u32, reads: bool, our_frame: &[u8], chunk: usize) {
    let Some(c) = s.connection else { return };
    assert_eq!(s.envoy.lost(c), 0, "bytes lost: paused at end of stream");
    // ---- incoming
    let received = &s.incoming.received;
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
    let held = s.envoy.held_bytes(c, s.incoming_direction());
    let mut seen = s.incoming.delivered.clone();
    seen.extend_from_slice(&held);
    assert_eq!(
        seen,
        received[strip..],
        "incoming: exactly one prefix of {strip} bytes removed"
    );
    if whole_frame.is_some() {
        assert!(held.is_empty(), "a whole frame is never held");
    }
    if !held.is_empty() {
        assert!(reads, "held without reading");
        assert!(s.incoming.delivered.is_empty(), "held after delivering");
        assert!(!s.incoming.ended, "held at end of stream");
        let magic = received.len().min(4);
        assert_eq!(
            received[..magic],
            MAGIC_BYTES[..magic],
            "only a frame prefix is held"
        );
    }
    assert!(
        s.incoming.max_held <= HEADER_LEN + cap as usize + chunk,
        "held {} bytes",
        s.incoming.max_held
    );

    // ---- outcomes
    let (peer_key, id_key) = if s.client {
        ("upstream_peer", "upstream_peer_id")
    } else {
        ("downstream_peer", "downstream_peer_id")
    };
    let found = s.state(peer_key);
    let not_found = s.state("peer_not_found");
    assert!(!(found && not_found), "one peer outcome at most");
    assert_eq!(
        found,
        removed.is_some_and(|len| !frame_malformed(received, len)),
        "the peer is found iff a usable frame was removed"
    );
    if s.state(id_key) {
        assert!(found, "an id without a peer");
    }
    let gate_counts = s.count("alpn_protocol_found") + s.count("alpn_protocol_not_found");
    assert!(gate_counts <= 1, "gate counted twice");

    // ---- outgoing
    let sent = s.count("metadata_added");
    assert!(sent <= 1);
    assert!(
        s.envoy.held(c, s.outgoing_direction()) == 0,
        "outgoing bytes are never held"
    );
    let expected: Vec<u8> = if sent == 1 {
        [our_frame, &s.outgoing.received[..]].concat()
    } else {
        s.outgoing.received.clone()
    };
    assert_eq!(
        s.outgoing.delivered, expected,
        "outgoing: frame prefix at most"
    );
    if sent == 1 {
        match role {
            Role::Client(ClientGate::Never) => panic!("sent with gate never"),
            Role::Client(_) => assert!(reads, "sent through a closed gate"),
            Role::ServerDetect => assert!(found, "detect answered a non-peer"),
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
            s.outgoing.received.is_empty(),
            "an open gate sends on the first outgoing bytes"
        );
    }
}

/// A whole frame whose payload is not a usable `Any { Struct }` (removed, but no peer).
fn frame_malformed(received: &[u8], frame_len: usize) -> bool {
    istio_tcp_telemetry::logic::exchange::frame::parse_payload(&received[HEADER_LEN..frame_len])
        .is_err()
}

/// The stats filter, beside the exchange, saw exactly the application bytes.
fn check_stats(s: &Sidecar) {
    if s.connection.is_none() {
        return;
    }
    let (app_in, app_out) = (&s.incoming.delivered, &s.outgoing.received);
    // received = read from downstream; sent = written to downstream.
    let (received, sent) = if s.client {
        (app_out.len(), app_in.len())
    } else {
        (app_in.len(), app_out.len())
    };
    assert_eq!(s.stat("istio_tcp_connections_opened_total"), 1);
    assert_eq!(s.stat("istio_tcp_connections_closed_total"), 1);
    assert_eq!(s.stat("istio_tcp_received_bytes_total"), received as u64);
    assert_eq!(s.stat("istio_tcp_sent_bytes_total"), sent as u64);
}
