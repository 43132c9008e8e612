//! Transition tests for [`super::Exchange`], through the Envoy buffer model in `exchange_sim`.

use prost_types::Struct;

use super::*;
use crate::logic::exchange_config::{ClientGate, Role};
use crate::logic::exchange_sim::SimConnection;
use crate::logic::frame::{encode_frame, HEADER_LEN, MAGIC_BYTES};
use crate::logic::workload::{string_value, NAMESPACE, WORKLOAD_NAME};

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
