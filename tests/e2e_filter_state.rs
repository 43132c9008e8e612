//! What other filters read from the exchange's filter state, end to end in real Envoy.
//!
//! - The peer keys (`wasm.downstream_peer`, `wasm.upstream_peer`) are declared as typed
//!   `google.protobuf.Struct` values (Envoy's `declare_property`), so the shipped access logs
//!   read one field with CEL: `%CEL(filter_state['wasm.downstream_peer'].workload)%`.
//! - A connection that closes before anything decided its peer is `peer_not_found`, so access
//!   logs agree with the stats (which count it with an `unknown` peer).

mod mesh;
mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use mesh::{request_reply, Mesh, MeshOptions, CLIENT_NODE_ID, SERVER_NODE_ID};
use support::{prefix_server, wait_for_lines};

const WAIT: Duration = Duration::from_secs(10);

fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let lines = wait_for_lines(path, n, WAIT);
    assert!(lines.len() >= n, "{}: {lines:?}", path.display());
    lines
}

fn access_logs_read_the_peer_workload_with_cel() {
    let backend = prefix_server(b"hello ");
    for mtls in [false, true] {
        let opts = MeshOptions {
            mtls,
            ..Default::default()
        };
        let mesh = Mesh::start("fs-cel", backend.port(), &opts);
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n"
        );
        let client = &lines(&mesh.client_access_log, 1)[0];
        assert!(
            client.contains(&format!("peer_id={SERVER_NODE_ID} "))
                && client.ends_with(" peer_workload=mongodb-v1"),
            "mtls {mtls}: {client}"
        );
        let server = &lines(&mesh.server_access_log, 1)[0];
        assert!(
            server.contains(&format!("peer_id={CLIENT_NODE_ID} "))
                && server.ends_with(" peer_workload=ratings-v2"),
            "mtls {mtls}: {server}"
        );
    }
}

fn a_connection_closed_before_the_peer_is_known_is_peer_not_found() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        mtls: true,
        ..Default::default()
    };
    let mesh = Mesh::start("fs-empty", backend.port(), &opts);
    // Connect and close without a byte: the client sidecar connects (mTLS) to the server
    // sidecar, nothing flows either way.
    for _ in 0..2 {
        let mut conn = TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        conn.shutdown(std::net::Shutdown::Both).unwrap();
        let _ = conn.read(&mut [0u8; 16]);
    }
    for line in lines(&mesh.client_access_log, 2) {
        assert!(
            line.starts_with("peer_id=- not_found=true "),
            "client: {line}"
        );
    }
    for line in lines(&mesh.server_access_log, 2) {
        assert!(
            line.starts_with("peer_id=- not_found=true "),
            "server: {line}"
        );
    }
    // The stats count them with an unknown peer: the access logs now say the same.
    mesh.client
        .wait_for_counter("tcp.outbound.downstream_cx_total", 2, WAIT);
}

testkit::both_filters!(
    access_logs_read_the_peer_workload_with_cel,
    a_connection_closed_before_the_peer_is_known_is_peer_not_found,
);
