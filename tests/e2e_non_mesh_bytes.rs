//! No byte of a peer that does not speak the exchange is ever altered, and such peers cannot
//! flood the log: end to end in real Envoy.
//!
//! - Detect mode removes only a provable frame: a valid header whose payload is not a protobuf
//!   `Any` passes untouched, header included (`peer_not_found`).
//! - Expect mode never answers a client whose first bytes showed no frame (a TLS client that
//!   offers ALPN `istio-peer-exchange` but runs no exchange filter).
//! - The mTLS client template offers `istio-peer-exchange` only when it will send a frame: with
//!   `client_gate: never` it offers `istio`, served over mTLS on the server's detect chain.
//! - The mTLS client template offers the ALPN only on its mutual-TLS match: a `tlsMode`
//!   `disabled` endpoint is reached in plaintext, on the server's detect chain.
//! - Whatever a non-mesh client (detect chain) or a non-mesh server (client side) sends, at most
//!   one warning per minute; the counters count every case.

mod hostile;
mod mesh;
mod support;

use std::time::Duration;

use hostile::{frame_with_payload, header, send_pause_close};
use mesh::{request_reply, Mesh, MeshOptions};
use support::{echo_server, prefix_server, wait_for_lines, Envoy};

const WAIT: Duration = Duration::from_secs(10);
const PAUSE: Duration = Duration::from_millis(200);

fn mx(envoy: &Envoy, counter: &str) -> u64 {
    envoy
        .counter(&format!("wasmcustom.envoy_metadata_exchange.{counter}"))
        .unwrap_or(0)
}

/// Once `total` "no peer metadata" lines (any level: the sidecars log at debug here) are in
/// the log, how many of them are warnings.
fn peer_warnings(envoy: &Envoy, total: usize) -> usize {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let log = envoy.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("no peer metadata"))
            .collect();
        if lines.len() >= total {
            return lines.iter().filter(|l| l.contains("[warning]")).count();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{total} 'no peer metadata' lines: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn detect_mode_passes_a_lookalike_frame_untouched() {
    let backend = echo_server();
    let mesh = Mesh::start("nm-lookalike", backend.port(), &MeshOptions::default());
    // A valid header, then 4 bytes that are not a protobuf message (field 31, wire type 7).
    let mut bytes = frame_with_payload(&[0xFF; 4]);
    bytes.extend_from_slice(b"application");
    let back = send_pause_close(mesh.server_port, &bytes, PAUSE);
    assert_eq!(
        back, bytes,
        "every byte back, header included, and no frame"
    );
    let server = mesh.server();
    assert_eq!(mx(server, "alpn_protocol_not_found"), 1);
    assert_eq!(mx(server, "alpn_protocol_found"), 0);
    let line = &wait_for_lines(&mesh.server_access_log, 1, WAIT)[0];
    assert!(line.starts_with("peer_id=- not_found=true "), "{line}");
}

/// The shipped client template with `client_gate: never` offers only ALPN `istio` (see
/// [`client_gate_never_offers_only_istio_and_is_served_on_the_mtls_detect_chain`]); a
/// hand-made client that still offers `istio-peer-exchange` without an exchange filter is what
/// this puts in front of the server's expect chain.
fn offer_exchange_alpn_anyway(client_yaml: &str) -> String {
    let (never, both) = (
        r#"alpn_protocols: ["istio"]"#,
        r#"alpn_protocols: ["istio-peer-exchange", "istio"]"#,
    );
    assert!(client_yaml.contains(never), "{client_yaml}");
    client_yaml.replace(never, both)
}

fn expect_mode_does_not_answer_a_client_that_sent_no_frame() {
    // The client sidecar offers ALPN istio-peer-exchange but sends no frame.
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        mtls: true,
        client_exchange: r#"{"side":"client","client_gate":"never"}"#.into(),
        client_yaml_patch: Some(offer_exchange_alpn_anyway),
        ..Default::default()
    };
    let mesh = Mesh::start("nm-expect-silent", backend.port(), &opts);
    for _ in 0..3 {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n",
            "the application gets no frame"
        );
    }
    let server = mesh.server();
    server.wait_for_counter("tcp.inbound_mtls.downstream_cx_total", 3, WAIT);
    assert_eq!(mx(server, "metadata_added"), 0);
    assert_eq!(mx(server, "initial_header_not_found"), 3);
}

/// `client_gate: never` sends no frame, so the shipped mTLS client template offers only ALPN
/// `istio`: the server serves it over mutual TLS on its detect chain (as Istio's inbound mTLS
/// chain serves `istio`), never on the expect chain, and no byte is added or lost either way.
fn client_gate_never_offers_only_istio_and_is_served_on_the_mtls_detect_chain() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    let backend = support::Backend::spawn(move |mut conn: TcpStream| {
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            conn.write_all(&[b"hello ", &buf[..n]].concat())?;
        }
        seen.lock().unwrap().push(got);
        Ok(())
    });
    let opts = MeshOptions {
        mtls: true,
        client_exchange: r#"{"side":"client","client_gate":"never"}"#.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("nm-never-alpn", backend.port(), &opts);
    assert!(
        mesh.client_config.contains(r#"alpn_protocols: ["istio"]"#),
        "the client offers only istio"
    );
    for _ in 0..3 {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n",
            "the application gets exactly the backend's bytes"
        );
    }
    let server = mesh.server();
    server.wait_for_counter("tcp.inbound_mtls_detect.downstream_cx_total", 3, WAIT);
    assert_eq!(
        server.counter("tcp.inbound_mtls.downstream_cx_total"),
        Some(0),
        "the expect chain never sees a client that offers no istio-peer-exchange"
    );
    assert_eq!(
        server.counter("tcp.inbound_plaintext.downstream_cx_total"),
        Some(0)
    );
    assert_eq!(
        server.counter("listener.inbound.ssl.handshake"),
        Some(3),
        "mutual TLS"
    );
    assert_eq!(mx(server, "metadata_added"), 0);
    assert_eq!(mx(server, "alpn_protocol_not_found"), 3, "detect mode ran");
    let deadline = std::time::Instant::now() + WAIT;
    while received.lock().unwrap().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "backend: {received:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        *received.lock().unwrap(),
        vec![b"world\n".to_vec(); 3],
        "the backend receives exactly the application's bytes"
    );
}

fn mtls_template_offers_no_alpn_to_a_tls_mode_disabled_endpoint() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        mtls: true,
        tls_mode: "disabled",
        ..Default::default()
    };
    let mesh = Mesh::start("nm-tls-disabled", backend.port(), &opts);
    for _ in 0..2 {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n"
        );
    }
    let server = mesh.server();
    server.wait_for_counter("tcp.inbound_plaintext.downstream_cx_total", 2, WAIT);
    assert_eq!(
        server.counter("tcp.inbound_mtls.downstream_cx_total"),
        Some(0)
    );
    assert_eq!(mx(server, "metadata_added"), 0);
}

fn untrusted_peers_cannot_flood_the_log() {
    // Non-mesh clients on the detect chain: over-cap lengths, truncated frames, lookalikes.
    let backend = echo_server();
    let opts = MeshOptions {
        log_level: Some("debug"),
        ..Default::default()
    };
    let mesh = Mesh::start("nm-flood", backend.port(), &opts);
    let mut truncated = header(100);
    truncated.extend_from_slice(&[7; 10]);
    let streams = [
        [header(u32::MAX), b"data".to_vec()].concat(),
        truncated,
        frame_with_payload(&[0xFF; 4]),
    ];
    for _ in 0..4 {
        for bytes in &streams {
            assert_eq!(&send_pause_close(mesh.server_port, bytes, PAUSE), bytes);
        }
    }
    let server = mesh.server();
    assert_eq!(
        mx(server, "alpn_protocol_not_found") + mx(server, "alpn_protocol_found"),
        12
    );
    assert_eq!(peer_warnings(server, 12), 0, "warnings on the detect chain");

    // A client sidecar that sends its frame to a server that is not a mesh peer.
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        without_server_sidecar: true,
        client_exchange: r#"{"side":"client","client_gate":"always"}"#.into(),
        log_level: Some("debug"),
        ..Default::default()
    };
    let mesh = Mesh::start("nm-flood-client", backend.port(), &opts);
    for _ in 0..10 {
        let reply = request_reply(mesh.client_port, b"world\n", 6);
        assert!(reply.starts_with(b"hello "), "{reply:?}");
    }
    assert_eq!(mx(&mesh.client, "initial_header_not_found"), 10);
    assert_eq!(
        peer_warnings(&mesh.client, 10),
        1,
        "one warning, the rest at debug"
    );
}

/// Envoy's behaviour, documented in the README: on a listener with `tls_inspector` (needed to
/// choose the ALPN chain), a plaintext client whose first write is shorter than 5 bytes waits
/// for `listener_filters_timeout` (1 s in `envoy/sidecar-server.yaml`) before a chain is chosen;
/// Envoy counts it in `listener.<stat_prefix>.downstream_pre_cx_timeout`. 5 bytes or more do not.
fn short_first_write_waits_for_the_listener_filter_timeout() {
    use std::io::{Read, Write};
    let backend = echo_server();
    let mesh = Mesh::start("nm-short-write", backend.port(), &MeshOptions::default());
    let server = mesh.server();
    let timeouts = || {
        server
            .counter("listener.inbound.downstream_pre_cx_timeout")
            .unwrap_or(0)
    };
    let echo = |bytes: &[u8]| {
        let start = std::time::Instant::now();
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", mesh.server_port)).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.write_all(bytes).unwrap();
        let mut back = vec![0u8; bytes.len()];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, bytes);
        start.elapsed()
    };
    let long = echo(b"PING\r\n");
    assert_eq!(timeouts(), 0, "6 bytes: the inspector decides at once");
    let short = echo(b"PI\n");
    assert_eq!(
        timeouts(),
        1,
        "3 bytes: the listener-filter timeout chose the chain"
    );
    println!("first echo after a 6-byte write: {long:?}; after a 3-byte write: {short:?}");
}

/// A backend that greets and half-closes before the client spoke: the peer is not decided by
/// that (only the connection's close decides it), so the client's frame that follows is still
/// removed and the backend receives only the application's bytes.
fn a_backend_half_close_does_not_stop_frame_stripping() {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    let backend = support::Backend::spawn(move |mut conn: TcpStream| {
        conn.write_all(b"bye\n")?;
        conn.shutdown(Shutdown::Write)?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        seen.lock().unwrap().push(got);
        Ok(())
    });
    let mesh = Mesh::start("nm-half-close", backend.port(), &MeshOptions::default());
    let mut conn = TcpStream::connect(("127.0.0.1", mesh.server_port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut greeting = Vec::new();
    conn.read_to_end(&mut greeting).unwrap();
    assert_eq!(
        greeting, b"bye\n",
        "the greeting and the backend's end of stream"
    );
    let frame = hostile::claimed_frame(&[("WORKLOAD_NAME", "ratings-v2")], "client-id");
    conn.write_all(&[&frame[..], b"app"].concat()).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while received.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "backend got nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(*received.lock().unwrap(), vec![b"app".to_vec()]);
    let line = &wait_for_lines(&mesh.server_access_log, 1, WAIT)[0];
    assert!(line.starts_with("peer_id=client-id not_found=- "), "{line}");
}

testkit::both_filters!(
    detect_mode_passes_a_lookalike_frame_untouched,
    expect_mode_does_not_answer_a_client_that_sent_no_frame,
    client_gate_never_offers_only_istio_and_is_served_on_the_mtls_detect_chain,
    mtls_template_offers_no_alpn_to_a_tls_mode_disabled_endpoint,
    untrusted_peers_cannot_flood_the_log,
    short_first_write_waits_for_the_listener_filter_timeout,
    a_backend_half_close_does_not_stop_frame_stripping,
);
