//! The client gate `istio_mtls`: send the frame when the upstream connection is TLS to a SPIFFE
//! identity, whatever the endpoint's labels say, end to end in real Envoy.
//!
//! - Headless services (ORIGINAL_DST clusters: StatefulSet databases) have no endpoint metadata:
//!   over mutual TLS both sides still exchange and label each other.
//! - An endpoint labelled `tlsMode: istio` but reached in plaintext (auto-mTLS off, a
//!   MESH_EXTERNAL entry carrying the label) is sent nothing: its bytes arrive untouched.
//! - `upstream.tls_version` and `upstream.uri_san_peer_certificate` are readable on the first
//!   data callback of an outbound tcp_proxy chain, for client-first and server-first protocols.

mod mesh;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use mesh::{request_reply, Mesh, MeshOptions, CLIENT_NODE_ID, SERVER_NODE_ID};
use support::{greeting_server, prefix_server, wait_for_lines, Backend, Envoy};

const WAIT: Duration = Duration::from_secs(10);
const ISTIO_MTLS: &str = r#"{"side":"client","client_gate":"istio_mtls"}"#;

fn mx(envoy: &Envoy, counter: &str) -> u64 {
    envoy
        .counter(&format!("wasmcustom.envoy_metadata_exchange.{counter}"))
        .unwrap_or(0)
}

fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let lines = wait_for_lines(path, n, WAIT);
    assert!(lines.len() >= n, "{}: {lines:?}", path.display());
    lines
}

/// The mTLS client template turned into a headless-service cluster, as istiod generates for a
/// StatefulSet with a DestinationRule ISTIO_MUTUAL: ORIGINAL_DST, no endpoints, no metadata, one
/// TLS transport socket. The original destination (the server sidecar) is given through
/// Envoy's `envoy.network.transport_socket.original_dst_address` filter state, as iptables
/// would give it in a pod.
fn original_dst(yaml: &str) -> String {
    let (head, assignment) = yaml
        .split_once("    load_assignment:\n")
        .expect("the template's cluster ends with its load_assignment");
    let port = assignment
        .split("port_value: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("endpoint port");
    let set_dst = format!(
        r#"      - name: envoy.filters.network.set_filter_state
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config
          on_new_connection:
          - object_key: envoy.network.transport_socket.original_dst_address
            format_string:
              text_format_source: {{ inline_string: "127.0.0.1:{port}" }}
"#
    );
    // Ahead of the first Wasm filter: the combined one, or the stats filter of the two.
    let first = [
        "      - name: istio.tcp_telemetry\n",
        "      - name: istio.tcp_stats\n",
    ]
    .into_iter()
    .find(|line| head.contains(line))
    .expect("a Wasm filter in the client chain");
    head.replacen(first, &format!("{set_dst}{first}"), 1)
        .replacen(
            "    type: STATIC\n",
            "    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n",
            1,
        )
        .replacen("      match: { tlsMode: istio }\n", "      match: {}\n", 1)
}

fn original_dst_cluster_over_mtls_exchanges_and_labels_both_sides() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        mtls: true,
        client_exchange: ISTIO_MTLS.into(),
        client_yaml_patch: Some(original_dst),
        ..Default::default()
    };
    let mesh = Mesh::start("gate-original-dst", backend.port(), &opts);
    for _ in 0..3 {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n"
        );
    }
    assert!(
        mesh.client.stats().contains("cluster.outbound|27017||mongodb.default.svc.cluster.local.original_dst_host_invalid: 0"),
        "the ORIGINAL_DST cluster picked its host"
    );
    for line in lines(&mesh.client_access_log, 3) {
        assert!(
            line.starts_with(&format!("peer_id={SERVER_NODE_ID} not_found=- ")),
            "{line}"
        );
    }
    for line in lines(&mesh.server_access_log, 3) {
        assert!(
            line.starts_with(&format!("peer_id={CLIENT_NODE_ID} not_found=- ")),
            "{line}"
        );
    }
    assert_eq!(mx(&mesh.client, "metadata_added"), 3);
    // Both reporters label the other workload.
    let opened = |envoy: &Envoy, label: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let text = envoy.prometheus();
            if text.lines().any(|l| {
                l.starts_with("istio_tcp_connections_closed_total{")
                    && l.contains(label)
                    && l.ends_with("} 3")
            }) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{label}: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    opened(&mesh.client, r#"destination_workload="mongodb-v1""#);
    opened(mesh.server(), r#"source_workload="ratings-v2""#);
}

fn istio_mtls_gate_with_a_server_first_protocol() {
    let backend = greeting_server(b"220 mongodb ready\r\n");
    let opts = MeshOptions {
        mtls: true,
        client_exchange: ISTIO_MTLS.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("gate-server-first", backend.port(), &opts);
    for _ in 0..2 {
        let mut conn = TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut greeting = [0u8; 19];
        conn.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"220 mongodb ready\r\n");
        conn.write_all(b"PING\r\n").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"PING\r\n");
    }
    for line in lines(&mesh.client_access_log, 2) {
        assert!(
            line.contains(&format!("peer_id={SERVER_NODE_ID} ")),
            "{line}"
        );
    }
    for line in lines(&mesh.server_access_log, 2) {
        assert!(
            line.contains(&format!("peer_id={CLIENT_NODE_ID} ")),
            "{line}"
        );
    }
}

fn tls_mode_istio_endpoint_reached_in_plaintext_gets_untouched_bytes() {
    // The plaintext client template, endpoint labelled tlsMode: istio, straight to a backend
    // that strips nothing (no server sidecar): it must receive exactly the application bytes.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    let backend = Backend::spawn(move |mut conn: TcpStream| {
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        seen.lock().unwrap().push(buf[..n].to_vec());
        conn.write_all(b"hello ")?;
        conn.write_all(&buf[..n])?;
        Ok(())
    });
    let opts = MeshOptions {
        tls_mode: "istio",
        without_server_sidecar: true,
        client_exchange: ISTIO_MTLS.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("gate-plaintext-label", backend.port(), &opts);
    for _ in 0..2 {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n"
        );
    }
    assert_eq!(*received.lock().unwrap(), vec![b"world\n".to_vec(); 2]);
    assert_eq!(mx(&mesh.client, "metadata_added"), 0);
    assert_eq!(mx(&mesh.client, "alpn_protocol_not_found"), 2);
}

testkit::both_filters!(
    original_dst_cluster_over_mtls_exchanges_and_labels_both_sides,
    istio_mtls_gate_with_a_server_first_protocol,
    tls_mode_istio_endpoint_reached_in_plaintext_gets_untouched_bytes,
);
