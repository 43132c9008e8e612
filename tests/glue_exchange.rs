//! The shipped exchange glue (`filters::exchange`), natively, through the fake Envoy: both
//! sides, incoming and outgoing, with both filters in each chain. The same paths in real Envoy
//! are `e2e_exchange.rs`, `e2e_trust.rs` and `e2e_adversarial.rs`.

use istio_tcp_telemetry::host::LogLevel;
use istio_tcp_telemetry::logic::exchange::frame::{
    encode_frame, HEADER_LEN, MAGIC_BYTES, STRUCT_TYPE_URL,
};
use istio_tcp_telemetry::logic::peer;
use istio_tcp_telemetry::EXCHANGE_ROOT_ID;
use prost_types::Struct;
use testkit::fake_envoy::{Direction, FakeEnvoy};
use testkit::fake_mesh::{Link, Mesh, MeshBuilder};
use testkit::metadata::{self as node, Workload};

const GOLDEN_RATINGS: &[u8] = include_bytes!("fixtures/golden/modern_ratings.bin");

fn counter(envoy: &FakeEnvoy, name: &str) -> u64 {
    envoy
        .counter(&format!("envoy_metadata_exchange.{name}"))
        .unwrap_or_else(|| panic!("counter {name} not defined"))
}

fn peer_workload(envoy: &FakeEnvoy, link: u32, key: &str) -> Option<String> {
    let bytes = envoy.filter_state(link, &format!("wasm.{key}"));
    peer::read_peer(bytes.as_deref()).map(|p| p.workload_name)
}

fn request_response(mesh: &mut Mesh) -> Link {
    let mut link = mesh.connect();
    mesh.client_sends(&mut link, b"world\n", false);
    mesh.backend_sends(&mut link, b"hello world\n", false);
    link
}

#[test]
fn client_first_both_sides_learn_and_no_application_byte_changes() {
    client_first_both_sides_learn_and_no_application_byte_changes_in(false);
    client_first_both_sides_learn_and_no_application_byte_changes_in(true);
}

fn client_first_both_sides_learn_and_no_application_byte_changes_in(combined: bool) {
    let mut mesh = MeshBuilder::new().combined(combined).build().unwrap();
    let mut link = request_response(&mut mesh);
    assert_eq!(
        link.backend_received, b"world\n",
        "the client's frame is stripped"
    );
    assert_eq!(
        link.app_received, b"hello world\n",
        "the server's frame is stripped"
    );
    assert_eq!(
        peer_workload(&mesh.server, link.server, peer::DOWNSTREAM_PEER).as_deref(),
        Some("ratings-v2")
    );
    assert_eq!(
        peer_workload(&mesh.client, link.client, peer::UPSTREAM_PEER).as_deref(),
        Some("mongodb-v1")
    );
    assert_eq!(
        mesh.server
            .filter_state(link.server, "wasm.downstream_peer_id")
            .unwrap(),
        Workload::ratings().node_id().into_bytes()
    );
    for envoy in [&mesh.client, &mesh.server] {
        assert_eq!(counter(envoy, "alpn_protocol_found"), 1);
        assert_eq!(counter(envoy, "metadata_added"), 1);
        assert_eq!(counter(envoy, "header_not_found"), 0);
    }
    // Later bytes are untouched.
    mesh.client_sends(&mut link, b"again", false);
    mesh.backend_sends(&mut link, b"more", false);
    assert_eq!(link.backend_received, b"world\nagain");
    assert_eq!(link.app_received, b"hello world\nmore");
    mesh.close(&mut link);
    assert_eq!(
        mesh.client.lost(link.client) + mesh.server.lost(link.server),
        0
    );
}

#[test]
fn server_first_protocol_in_expect_mode() {
    server_first_protocol_in_expect_mode_in(false);
    server_first_protocol_in_expect_mode_in(true);
}

fn server_first_protocol_in_expect_mode_in(combined: bool) {
    let mut mesh = MeshBuilder::new().combined(combined).build().unwrap();
    let mut link = mesh.connect();
    // The backend greets first: the server's frame rides on the greeting.
    mesh.backend_sends(&mut link, b"220 ready\r\n", false);
    assert_eq!(link.app_received, b"220 ready\r\n");
    assert_eq!(
        peer_workload(&mesh.client, link.client, peer::UPSTREAM_PEER).as_deref(),
        Some("mongodb-v1")
    );
    assert_eq!(
        peer_workload(&mesh.server, link.server, peer::DOWNSTREAM_PEER),
        None
    );
    mesh.client_sends(&mut link, b"HELO\r\n", false);
    assert_eq!(link.backend_received, b"HELO\r\n");
    assert_eq!(
        peer_workload(&mesh.server, link.server, peer::DOWNSTREAM_PEER).as_deref(),
        Some("ratings-v2")
    );
}

#[test]
fn a_frame_in_one_byte_pieces_is_held_then_stripped() {
    let mut server = FakeEnvoy::new("sidecar~server", Some(Workload::mongodb().node_metadata()));
    let listener = server
        .add_listener(&[(EXCHANGE_ROOT_ID, r#"{"side": "server"}"#)])
        .unwrap();
    let c = server.connect(listener, &[]);
    for (i, byte) in GOLDEN_RATINGS.iter().enumerate() {
        server.downstream(c, std::slice::from_ref(byte), false);
        if i + 1 < GOLDEN_RATINGS.len() {
            assert_eq!(
                server.held(c, Direction::Downstream),
                i + 1,
                "held while undecided"
            );
            assert!(server.take_delivered(c, Direction::Downstream).is_empty());
        }
    }
    assert_eq!(server.held(c, Direction::Downstream), 0);
    server.downstream(c, b"PING\r\n", false);
    assert_eq!(server.take_delivered(c, Direction::Downstream), b"PING\r\n");
    assert!(server.filter_state(c, "wasm.downstream_peer").is_some());
    assert_eq!(
        server.counter("envoy_metadata_exchange.alpn_protocol_found"),
        Some(1)
    );
}

#[test]
fn gate_closed_for_a_non_mesh_endpoint() {
    gate_closed_for_a_non_mesh_endpoint_in(false);
    gate_closed_for_a_non_mesh_endpoint_in(true);
}

fn gate_closed_for_a_non_mesh_endpoint_in(combined: bool) {
    // A non-mesh endpoint: the server side has no exchange filter.
    let mut mesh = MeshBuilder::new()
        .combined(combined)
        .mesh_endpoint(false)
        .server_exchange(None)
        .build()
        .unwrap();
    let link = request_response(&mut mesh);
    assert_eq!(link.backend_received, b"world\n");
    assert_eq!(link.app_received, b"hello world\n");
    assert_eq!(counter(&mesh.client, "alpn_protocol_not_found"), 1);
    assert_eq!(counter(&mesh.client, "metadata_added"), 0);
    assert_eq!(
        mesh.client.filter_state(link.client, "wasm.peer_not_found"),
        Some(b"true".to_vec())
    );
}

#[test]
fn expect_mode_without_a_frame_counts_logs_and_passes_bytes() {
    let mut server = FakeEnvoy::new("sidecar~server", None);
    let listener = server
        .add_listener(&[(EXCHANGE_ROOT_ID, r#"{"side": "server"}"#)])
        .unwrap();
    let c = server.connect(listener, &[]);
    server.downstream(c, b"GET / HTTP/1.1\r\n", false);
    assert_eq!(
        server.take_delivered(c, Direction::Downstream),
        b"GET / HTTP/1.1\r\n"
    );
    assert_eq!(
        server.counter("envoy_metadata_exchange.initial_header_not_found"),
        Some(1)
    );
    assert_eq!(server.logged(LogLevel::Warn, "no peer metadata"), 1);
    // A client whose first bytes were not the magic runs no exchange: it is sent nothing.
    server.upstream(c, b"HTTP/1.1 200\r\n", false);
    assert_eq!(
        server.take_delivered(c, Direction::Upstream),
        b"HTTP/1.1 200\r\n"
    );
    assert_eq!(
        server.counter("envoy_metadata_exchange.metadata_added"),
        Some(0)
    );
}

#[test]
fn detect_mode_leaves_a_plaintext_client_alone() {
    detect_mode_leaves_a_plaintext_client_alone_in(false);
    detect_mode_leaves_a_plaintext_client_alone_in(true);
}

fn detect_mode_leaves_a_plaintext_client_alone_in(combined: bool) {
    let mut mesh = MeshBuilder::new()
        .combined(combined)
        .client_exchange(None)
        .server_exchange(Some(r#"{"side": "server", "server_mode": "detect"}"#))
        .mtls(false)
        .build()
        .unwrap();
    let link = request_response(&mut mesh);
    assert_eq!(link.backend_received, b"world\n");
    assert_eq!(
        link.app_received, b"hello world\n",
        "nothing sent to a non-peer"
    );
    assert_eq!(counter(&mesh.server, "alpn_protocol_not_found"), 1);
    assert_eq!(counter(&mesh.server, "metadata_added"), 0);
    assert_eq!(
        mesh.server.logged(LogLevel::Warn, "no peer metadata"),
        0,
        "debug only"
    );
}

#[test]
fn a_stream_ending_mid_frame_is_delivered_never_lost() {
    let mut server = FakeEnvoy::new("sidecar~server", None);
    let listener = server
        .add_listener(&[(EXCHANGE_ROOT_ID, r#"{"side": "server"}"#)])
        .unwrap();
    let c = server.connect(listener, &[]);
    let half = &GOLDEN_RATINGS[..HEADER_LEN + 3];
    server.downstream(c, half, false);
    assert_eq!(server.held(c, Direction::Downstream), half.len());
    server.downstream(c, b"", true);
    assert_eq!(server.lost(c), 0, "never paused at end of stream");
    assert_eq!(server.take_delivered(c, Direction::Downstream), half);
    assert_eq!(
        server.counter("envoy_metadata_exchange.header_not_found"),
        Some(1)
    );
    assert_eq!(
        server.filter_state(c, "wasm.peer_not_found"),
        Some(b"true".to_vec())
    );
}

#[test]
fn too_large_and_malformed_frames() {
    let mut server = FakeEnvoy::new("sidecar~server", None);
    let listener = server
        .add_listener(&[(
            EXCHANGE_ROOT_ID,
            r#"{"side": "server", "max_frame_bytes": 256}"#,
        )])
        .unwrap();
    // Too large: passes through untouched.
    let c = server.connect(listener, &[]);
    let big = [&MAGIC_BYTES[..], &1000u32.to_be_bytes(), b"rest"].concat();
    server.downstream(c, &big, false);
    assert_eq!(server.take_delivered(c, Direction::Downstream), big);
    // A whole frame with a valid header but a garbage payload: removed (provably a frame).
    let c = server.connect(listener, &[]);
    let garbage = [&MAGIC_BYTES[..], &4u32.to_be_bytes(), &[0xFF; 4], b"app"].concat();
    server.downstream(c, &garbage, false);
    assert_eq!(server.take_delivered(c, Direction::Downstream), b"app");
    assert_eq!(
        server.counter("envoy_metadata_exchange.header_not_found"),
        Some(2)
    );
}

#[test]
fn mtls_only_ignores_a_plaintext_peer() {
    mtls_only_ignores_a_plaintext_peer_in(false);
    mtls_only_ignores_a_plaintext_peer_in(true);
}

fn mtls_only_ignores_a_plaintext_peer_in(combined: bool) {
    let mut mesh = MeshBuilder::new()
        .combined(combined)
        .server_exchange(Some(r#"{"side": "server", "trust": "mtls_only"}"#))
        .mtls(false)
        .build()
        .unwrap();
    let link = request_response(&mut mesh);
    assert_eq!(link.backend_received, b"world\n", "frame stripped anyway");
    assert_eq!(
        peer_workload(&mesh.server, link.server, peer::DOWNSTREAM_PEER),
        None
    );
    assert_eq!(
        mesh.server.filter_state(link.server, "wasm.peer_not_found"),
        Some(b"true".to_vec())
    );
    assert_eq!(mesh.server.logged(LogLevel::Warn, "mtls_only"), 1);
    // Over mutual TLS the same peer is accepted.
    let mut mesh = MeshBuilder::new()
        .combined(combined)
        .server_exchange(Some(r#"{"side": "server", "trust": "mtls_only"}"#))
        .build()
        .unwrap();
    let link = request_response(&mut mesh);
    assert_eq!(
        peer_workload(&mesh.server, link.server, peer::DOWNSTREAM_PEER).as_deref(),
        Some("ratings-v2")
    );
}

#[test]
fn our_frame_is_the_nodes_metadata() {
    let mut client = FakeEnvoy::new("sidecar~c", Some(Workload::ratings().node_metadata()));
    let listener = client
        .add_listener(&[(
            EXCHANGE_ROOT_ID,
            r#"{"side": "client", "client_gate": "always"}"#,
        )])
        .unwrap();
    let c = client.connect(listener, &[]);
    client.downstream(c, b"x", false);
    let wire = client.take_delivered(c, Direction::Downstream);
    assert_eq!(&wire[..4], MAGIC_BYTES);
    assert_eq!(wire.last(), Some(&b'x'));
    // A node without metadata still sends a (nearly empty) frame with its id.
    let mut bare = FakeEnvoy::new("sidecar~bare", None);
    let listener = bare
        .add_listener(&[(
            EXCHANGE_ROOT_ID,
            r#"{"side": "client", "client_gate": "always"}"#,
        )])
        .unwrap();
    let c = bare.connect(
        listener,
        &[(
            "xds.upstream_host_metadata",
            node::endpoint_metadata(true, None),
        )],
    );
    bare.downstream(c, b"x", false);
    let mut expected = encode_frame(&testkit_empty_exchange_struct(), "sidecar~bare");
    expected.push(b'x');
    assert_eq!(bare.take_delivered(c, Direction::Downstream), expected);
}

fn testkit_empty_exchange_struct() -> Struct {
    istio_tcp_telemetry::logic::workload::WorkloadMetadata::default().to_exchange_struct(&[])
}

#[test]
fn a_connection_closed_before_any_decision_is_peer_not_found() {
    let mut server = FakeEnvoy::new("sidecar~server", None);
    let listener = server
        .add_listener(&[(EXCHANGE_ROOT_ID, r#"{"side": "server"}"#)])
        .unwrap();
    let c = server.connect(listener, &[]);
    server.close(c);
    assert_eq!(
        server.filter_state(c, "wasm.peer_not_found"),
        Some(b"true".to_vec()),
        "written on close, before the access log"
    );
    assert_eq!(server.logged(LogLevel::Warn, "no peer metadata"), 0);
}

#[test]
fn the_peer_key_is_declared_a_typed_struct() {
    the_peer_key_is_declared_a_typed_struct_in(false);
    the_peer_key_is_declared_a_typed_struct_in(true);
}

fn the_peer_key_is_declared_a_typed_struct_in(combined: bool) {
    let mesh = MeshBuilder::new().combined(combined).build().unwrap();
    let schema = STRUCT_TYPE_URL.as_bytes().to_vec();
    assert_eq!(
        mesh.server.declared(peer::DOWNSTREAM_PEER),
        Some(schema.clone())
    );
    assert_eq!(mesh.client.declared(peer::UPSTREAM_PEER), Some(schema));
    assert_eq!(mesh.server.declared(peer::UPSTREAM_PEER), None);
}

#[test]
fn client_gate_istio_mtls_follows_the_upstream_connection() {
    client_gate_istio_mtls_follows_the_upstream_connection_in(false);
    client_gate_istio_mtls_follows_the_upstream_connection_in(true);
}

fn client_gate_istio_mtls_follows_the_upstream_connection_in(combined: bool) {
    let gate = Some(r#"{"side": "client", "client_gate": "istio_mtls"}"#);
    let mut mesh = MeshBuilder::new()
        .combined(combined)
        .client_exchange(gate)
        .build()
        .unwrap();
    let link = request_response(&mut mesh);
    assert_eq!(
        counter(&mesh.client, "metadata_added"),
        1,
        "TLS to a SPIFFE identity"
    );
    assert_eq!(link.app_received, b"hello world\n");
    // A mesh-labelled endpoint reached over plaintext gets nothing.
    let mut mesh = MeshBuilder::new()
        .combined(combined)
        .client_exchange(gate)
        .server_exchange(None)
        .mtls(false)
        .build()
        .unwrap();
    let link = request_response(&mut mesh);
    assert_eq!(counter(&mesh.client, "metadata_added"), 0);
    assert_eq!(counter(&mesh.client, "alpn_protocol_not_found"), 1);
    assert_eq!(link.backend_received, b"world\n");
}

#[test]
fn warnings_a_peer_can_cause_are_rate_limited() {
    let mut server = FakeEnvoy::new("sidecar~server", None);
    let listener = server
        .add_listener(&[(EXCHANGE_ROOT_ID, r#"{"side": "server"}"#)])
        .unwrap();
    for _ in 0..3 {
        let c = server.connect(listener, &[]);
        server.downstream(c, b"not a frame", false);
    }
    assert_eq!(server.logged(LogLevel::Warn, "no peer metadata"), 1);
    assert_eq!(server.logged(LogLevel::Debug, "no peer metadata"), 3);
    server.advance(std::time::Duration::from_secs(61));
    let c = server.connect(listener, &[]);
    server.downstream(c, b"still not", false);
    assert_eq!(server.logged(LogLevel::Warn, "and 2 similar"), 1);
    assert_eq!(
        server.counter("envoy_metadata_exchange.initial_header_not_found"),
        Some(4),
        "every case counted"
    );
}
