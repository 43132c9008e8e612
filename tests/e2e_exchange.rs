//! The metadata exchange end to end in real Envoy: client sidecar → server sidecar → backend.
//! Every test checks the application bytes both ways, what each side learned (through the
//! access log, i.e. another filter reading the filter state), and the counters.

mod mesh;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use mesh::{request_reply, Mesh, MeshOptions, CLIENT_NODE_ID, SERVER_NODE_ID};
use support::{
    client_roundtrip, echo_server, greeting_server, prefix_server, wait_for_lines, Backend, Envoy,
    HalfClose,
};

const WAIT: Duration = Duration::from_secs(10);
const MAGIC: [u8; 4] = [0x3D, 0x23, 0x04, 0x67];

fn golden(name: &str) -> Vec<u8> {
    let path = support::manifest_dir().join(format!("tests/fixtures/golden/{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mx(envoy: &Envoy, counter: &str) -> u64 {
    envoy
        .counter(&format!("wasmcustom.envoy_metadata_exchange.{counter}"))
        .unwrap_or(0)
}

/// The access log lines, once `n` are there.
fn access_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let lines = wait_for_lines(path, n, WAIT);
    assert!(lines.len() >= n, "{}: {lines:?}", path.display());
    lines
}

fn hello_world_roundtrips(mesh: &Mesh, n: usize) {
    for _ in 0..n {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n"
        );
    }
}

fn plaintext_client_first_both_sides_learn() {
    let backend = prefix_server(b"hello ");
    let mesh = Mesh::start("mx-plain", backend.port(), &MeshOptions::default());
    hello_world_roundtrips(&mesh, 3);
    for line in access_lines(&mesh.client_access_log, 3) {
        assert!(
            line.starts_with(&format!("peer_id={SERVER_NODE_ID} not_found=-")),
            "{line}"
        );
    }
    for line in access_lines(&mesh.server_access_log, 3) {
        assert!(
            line.starts_with(&format!("peer_id={CLIENT_NODE_ID} not_found=-")),
            "{line}"
        );
    }
    let server = mesh.server();
    assert_eq!(mx(&mesh.client, "alpn_protocol_found"), 3);
    assert_eq!(mx(&mesh.client, "metadata_added"), 3);
    assert_eq!(
        mx(server, "alpn_protocol_found"),
        3,
        "detect mode saw the magic"
    );
    assert_eq!(mx(server, "metadata_added"), 3);
    assert_eq!(
        mx(server, "initial_header_not_found") + mx(server, "header_not_found"),
        0
    );
    // Prometheus names are Istio's (`envoy_metadata_exchange_*`), so its dashboards work.
    for (envoy, found) in [(&mesh.client, 3), (server, 3)] {
        let text = envoy.prometheus();
        let line = format!("envoy_metadata_exchange_alpn_protocol_found{{}} {found}");
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        assert!(
            text.contains("# TYPE envoy_metadata_exchange_metadata_added counter"),
            "{text}"
        );
    }
}

fn mtls_with_alpn_selects_the_exchange_chain() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        mtls: true,
        ..Default::default()
    };
    let mesh = Mesh::start("mx-mtls", backend.port(), &opts);
    hello_world_roundtrips(&mesh, 4);
    let server = mesh.server();
    server.wait_for_counter("tcp.inbound_mtls.downstream_cx_total", 4, WAIT);
    assert_eq!(
        server.counter("tcp.inbound_plaintext.downstream_cx_total"),
        Some(0)
    );
    for line in access_lines(&mesh.server_access_log, 4) {
        assert!(
            line.contains(&format!("peer_id={CLIENT_NODE_ID}")),
            "{line}"
        );
    }
    for line in access_lines(&mesh.client_access_log, 4) {
        assert!(
            line.contains(&format!("peer_id={SERVER_NODE_ID}")),
            "{line}"
        );
    }
    assert_eq!(mx(server, "metadata_added"), 4);
}

fn server_first_backend_in_expect_mode() {
    let backend = greeting_server(b"220 mongodb ready\r\n");
    let opts = MeshOptions {
        mtls: true,
        ..Default::default()
    };
    let mesh = Mesh::start("mx-server-first", backend.port(), &opts);
    for _ in 0..3 {
        let mut conn = TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut greeting = [0u8; 19];
        conn.read_exact(&mut greeting).unwrap();
        assert_eq!(
            &greeting, b"220 mongodb ready\r\n",
            "greeting arrives clean"
        );
        conn.write_all(b"PING\r\n").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"PING\r\n", "echo after the greeting");
    }
    for line in access_lines(&mesh.client_access_log, 3) {
        assert!(
            line.contains(&format!("peer_id={SERVER_NODE_ID}")),
            "{line}"
        );
    }
    for line in access_lines(&mesh.server_access_log, 3) {
        assert!(
            line.contains(&format!("peer_id={CLIENT_NODE_ID}")),
            "{line}"
        );
    }
}

/// Sends `bytes` one byte per write, with Nagle off and a pause so each lands in its own read.
fn trickle(conn: &mut TcpStream, bytes: &[u8]) {
    conn.set_nodelay(true).unwrap();
    for b in bytes {
        conn.write_all(std::slice::from_ref(b)).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
}

fn one_byte_fragments_in_both_directions() {
    // Client → server sidecar: an independently encoded frame (Python protobuf), one byte per
    // read, then the application bytes, also one per read.
    let backend = echo_server();
    let mesh = Mesh::start("mx-fragments", backend.port(), &MeshOptions::default());
    let frame = golden("modern_ratings");
    let mut conn = TcpStream::connect(("127.0.0.1", mesh.server_port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    trickle(&mut conn, &frame);
    trickle(&mut conn, b"application bytes");
    conn.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    assert!(back.starts_with(&MAGIC), "server answered with its frame");
    assert!(back.ends_with(b"application bytes"), "{back:?}");
    let lines = access_lines(&mesh.server_access_log, 1);
    assert!(
        lines[0]
            .contains("peer_id=sidecar~10.0.0.7~ratings-v2-5b9f.default~default.svc.cluster.local"),
        "{lines:?}"
    );

    // Fake mesh server → client sidecar: the server's frame and its reply, one byte per read.
    let server_frame = golden("modern_mongodb_empty_id");
    let fake_server = Backend::spawn(move |mut conn: TcpStream| {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        // Read the client's frame + "ping" (frame length from the header).
        while got.len() < 8
            || got.len() < 8 + u32::from_be_bytes([got[4], got[5], got[6], got[7]]) as usize + 4
        {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let mut reply = server_frame.clone();
        reply.extend_from_slice(b"pong");
        conn.set_nodelay(true)?;
        for b in &reply {
            conn.write_all(std::slice::from_ref(b))?;
            thread::sleep(Duration::from_millis(1));
        }
        conn.shutdown(Shutdown::Write)
    });
    let opts = MeshOptions {
        without_server_sidecar: true,
        ..Default::default()
    };
    let mesh = Mesh::start("mx-fragments-up", fake_server.port(), &opts);
    let reply = client_roundtrip(mesh.client_port, b"ping");
    assert_eq!(reply, b"pong", "server frame stripped, reply intact");
    let lines = access_lines(&mesh.client_access_log, 1);
    assert!(
        lines[0].starts_with("peer_id=- not_found=-"),
        "no id in that frame: {lines:?}"
    );
    assert_eq!(mx(&mesh.client, "header_not_found"), 0);
}

fn non_mesh_client_to_detect_server_is_untouched() {
    let backend = echo_server();
    let mesh = Mesh::start(
        "mx-non-mesh-client",
        backend.port(),
        &MeshOptions::default(),
    );
    let payload = b"*1\r\n$4\r\nPING\r\n".to_vec();
    let back = request_reply(mesh.server_port, &payload, payload.len());
    assert_eq!(back, payload, "no frame sent, no byte changed");
    let lines = access_lines(&mesh.server_access_log, 1);
    assert!(
        lines[0].starts_with("peer_id=- not_found=true"),
        "{lines:?}"
    );
    assert_eq!(mx(mesh.server(), "alpn_protocol_not_found"), 1);
    assert_eq!(mx(mesh.server(), "metadata_added"), 0);
}

fn mesh_client_to_non_mesh_server_sends_nothing() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        tls_mode: "disabled",
        without_server_sidecar: true,
        ..Default::default()
    };
    let mesh = Mesh::start("mx-non-mesh-server", backend.port(), &opts);
    hello_world_roundtrips(&mesh, 2);
    for line in access_lines(&mesh.client_access_log, 2) {
        assert!(line.starts_with("peer_id=- not_found=true"), "{line}");
    }
    assert_eq!(mx(&mesh.client, "alpn_protocol_not_found"), 2);
    assert_eq!(mx(&mesh.client, "metadata_added"), 0);
}

fn hostile_frames_neither_hang_nor_trap() {
    let backend = echo_server();
    let opts = MeshOptions {
        // The plaintext chain in expect mode: every connection must carry a frame.
        server_exchange_plain: r#"{"side":"server","server_mode":"expect"}"#.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("mx-hostile", backend.port(), &opts);
    let server = mesh.server();
    let header = |len: u32| [&MAGIC[..], &len.to_be_bytes()].concat();

    // Garbage payload after a valid header: the whole frame is removed, the rest delivered.
    let mut bytes = header(16);
    bytes.extend_from_slice(&[0xFF; 16]);
    bytes.extend_from_slice(b"app");
    let back = send_pause_close(mesh.server_port, &bytes);
    assert_eq!(
        after_server_frame(&back),
        b"app",
        "frame removed, application bytes kept"
    );

    // Oversized length: nothing is buffered, every byte passes.
    let mut bytes = header(u32::MAX);
    bytes.extend_from_slice(b"data");
    let back = send_pause_close(mesh.server_port, &bytes);
    assert_eq!(after_server_frame(&back), bytes, "every byte passes");

    // Truncated frame, then close: the held bytes are delivered at end of stream, no hang.
    let mut bytes = header(100);
    bytes.extend_from_slice(&[1; 10]);
    let back = send_pause_close(mesh.server_port, &bytes);
    assert_eq!(
        after_server_frame(&back),
        bytes,
        "held bytes delivered unchanged"
    );

    // Not a frame at all: the client runs no exchange, so it is sent no frame either.
    let back = send_pause_close(mesh.server_port, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(back, b"GET / HTTP/1.0\r\n\r\n");

    assert_eq!(mx(server, "header_not_found"), 3);
    assert_eq!(mx(server, "initial_header_not_found"), 1);
    let lines = access_lines(&mesh.server_access_log, 4);
    assert!(
        lines.iter().all(|l| l.contains("not_found=true")),
        "{lines:?}"
    );
    // The VM is alive: a real exchange still works afterwards.
    hello_world_roundtrips_echo(&mesh);
    assert!(!server.log().contains("panicked"), "a panic in the module");
}

/// Writes `bytes`, waits until the server's filter chain holds them (past the listener's
/// tls_inspector), half-closes and reads everything back.
fn send_pause_close(port: u16, bytes: &[u8]) -> Vec<u8> {
    support::exchange(
        port,
        bytes,
        HalfClose::AfterPause(Duration::from_millis(200)),
    )
    .expect("reply before the timeout: no hang")
}

/// The bytes after the server sidecar's own frame (expect mode answers a client whose first
/// bytes were the magic).
fn after_server_frame(back: &[u8]) -> &[u8] {
    assert!(
        back.starts_with(&MAGIC),
        "the server answers with its frame: {back:?}"
    );
    let len = u32::from_be_bytes([back[4], back[5], back[6], back[7]]) as usize;
    &back[8 + len..]
}

fn hello_world_roundtrips_echo(mesh: &Mesh) {
    assert_eq!(
        request_reply(mesh.client_port, b"still alive", 11),
        b"still alive"
    );
}

fn many_connections_on_two_workers_all_exchange() {
    let backend = echo_server();
    let opts = MeshOptions {
        concurrency: 2,
        ..Default::default()
    };
    let mesh = Mesh::start("mx-concurrency", backend.port(), &opts);
    let port = mesh.client_port;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..25 {
                    let payload = format!("thread {t} connection {i}\n").into_bytes();
                    assert_eq!(request_reply(port, &payload, payload.len()), payload);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let server = mesh.server();
    mesh.client.wait_for_counter(
        "wasmcustom.envoy_metadata_exchange.alpn_protocol_found",
        200,
        WAIT,
    );
    server.wait_for_counter(
        "wasmcustom.envoy_metadata_exchange.metadata_added",
        200,
        WAIT,
    );
    assert_eq!(mx(&mesh.client, "metadata_added"), 200);
    let lines = access_lines(&mesh.server_access_log, 200);
    assert!(
        lines.iter().all(|l| l.contains(CLIENT_NODE_ID)),
        "{lines:?}"
    );
    let lines = access_lines(&mesh.client_access_log, 200);
    assert!(
        lines.iter().all(|l| l.contains(SERVER_NODE_ID)),
        "{lines:?}"
    );
}

fn bad_configuration_is_refused_by_envoy() {
    let backend = echo_server();
    let opts = MeshOptions {
        client_exchange: r#"{"side":"client","max_frame_bytes":"huge"}"#.into(),
        without_server_sidecar: true,
        ..Default::default()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Mesh::start("mx-bad-config", backend.port(), &opts)
    }));
    let Err(err) = result else {
        panic!("Envoy must refuse the configuration")
    };
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("max_frame_bytes"),
        "the error names the field: {msg}"
    );
}

testkit::both_filters!(
    plaintext_client_first_both_sides_learn,
    mtls_with_alpn_selects_the_exchange_chain,
    server_first_backend_in_expect_mode,
    one_byte_fragments_in_both_directions,
    non_mesh_client_to_detect_server_is_untouched,
    mesh_client_to_non_mesh_server_sends_nothing,
    hostile_frames_neither_hang_nor_trap,
    many_connections_on_two_workers_all_exchange,
    bad_configuration_is_refused_by_envoy,
);
