//! Mongo and MySQL ports in Istio: the shipped EnvoyFilters applied to the chains istiod builds
//! for a `mongo`/`mysql` port (`[mongo_proxy, tcp_proxy]`, `[mysql_proxy, tcp_proxy]`, behind a
//! tls_inspector with ALPN-selected chains; see `tests/istio/shapes.rs`), with Envoy's real
//! `mongo_proxy` and `mysql_proxy`, and real Mongo (OP_QUERY, OP_REPLY, OP_MSG) and MySQL
//! (handshake, OK, COM_QUERY) bytes between a client sidecar and a server sidecar.
//!
//! What must hold: the application bytes arrive exactly, both ways, and mongo_proxy's own stats
//! on both sidecars are those of the same conversation without our filters, while our exchange
//! really ran (a frame was sent and stripped). `mysql_proxy` is an Envoy contrib extension that
//! stock Envoy builds (and so these tests) lack: the MySQL conversation (server speaks first)
//! runs through the Istio-shaped TCP chain; the `[mysql_proxy, tcp_proxy]` order is checked in
//! `tests/istio_manifests.rs`. The inbound exchange
//! placed right before tcp_proxy (the old manifests' INSERT_BEFORE, behind mongo_proxy) is run
//! too and must break mongo_proxy's stats, so the comparison can fail.
//!
//! Fails (never skips) when Envoy or the module is missing.

mod istio;
mod support;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use istio::shapes::{self, PortProtocol};
use istio::*;
use serde_json::{json, Value};
use support::*;

/// Where our filters are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Istio's chains without our filters (the reference).
    None,
    /// The shipped `envoyfilter-tcp-telemetry.yaml` applied to Istio's chains.
    Shipped,
    /// The inbound exchange right before tcp_proxy, behind the protocol filter (the old order).
    ExchangeBeforeTcpProxy,
}

struct Outcome {
    backend_got: Vec<u8>,
    client_got: Vec<u8>,
    /// The protocol filter's counters (`mongo.*` / `mysql.*`) of the server and client sidecars.
    server_stats: BTreeMap<String, u64>,
    client_stats: BTreeMap<String, u64>,
    /// `metadata_added` on the client, `alpn_protocol_found` on the server.
    frames: (u64, u64),
}

/// The counters under `root` + `stat_prefix` + `.`, keyed by the rest of their name.
fn counters(envoy: &Envoy, root: &str, stat_prefix: &str) -> BTreeMap<String, u64> {
    let head = format!("{root}{stat_prefix}.");
    envoy
        .stats()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.strip_prefix(&head)?.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn shipped() -> Manifest {
    manifests()
        .into_iter()
        .find(|m| m.file == EXPECTED_FILES[0])
        .unwrap()
}

/// The inbound chains of `protocol`'s port with our filters placed as `placement` says.
fn inbound_filters(protocol: PortProtocol, cluster: &str, placement: Placement) -> Vec<Value> {
    let mut chains = vec![shapes::network_filter_stack(protocol, cluster)];
    if placement != Placement::None {
        apply_envoyfilters(&shipped(), "SIDECAR_INBOUND", &mut chains).unwrap();
    }
    let mut chain = chains.remove(0);
    if placement == Placement::ExchangeBeforeTcpProxy {
        let ex = chain
            .iter()
            .position(|f| f["typed_config"]["config"]["root_id"] == EXCHANGE)
            .unwrap();
        let f = chain.remove(ex);
        let tcp = chain.iter().position(|f| f["name"] == TCP_PROXY).unwrap();
        chain.insert(tcp, f);
    }
    chain
}

fn outbound_filters(protocol: PortProtocol, cluster: &str, placement: Placement) -> Vec<Value> {
    let mut chains = vec![shapes::network_filter_stack(protocol, cluster)];
    if placement != Placement::None {
        apply_envoyfilters(&shipped(), "SIDECAR_OUTBOUND", &mut chains).unwrap();
    }
    chains.remove(0)
}

/// Client sidecar (ratings-v2) → server sidecar (mongodb-v1) → `backend`, Istio-shaped; the
/// client app runs `conversation` over one connection.
fn run(
    name: &str,
    protocol: PortProtocol,
    placement: Placement,
    mtls: bool,
    backend: &Backend,
    conversation: impl Fn(&mut TcpStream) -> io::Result<Vec<u8>>,
) -> Outcome {
    let dir = TempDir::new(name);
    let certs = make_mtls_certs(dir.path());
    let port = free_port();
    let inbound_cluster = format!("inbound|{port}||");
    let outbound_cluster = format!("outbound|{port}||{SERVICE_HOST}");

    let inbound = inbound_filters(protocol, &inbound_cluster, placement);
    // Order on the inbound chain: the exchange (if any) is ahead of the protocol filter.
    let server_cfg = shapes::sidecar_bootstrap(
        MONGODB_NODE_ID,
        MONGODB_NODE_METADATA,
        vec![shapes::inbound_listener(port, &certs, |_| inbound.clone())],
        vec![shapes::cluster(
            &inbound_cluster,
            backend.port(),
            None,
            None,
        )],
    );
    let server = Envoy::start(
        &format!("{name}-server"),
        &serde_json::to_string_pretty(&server_cfg).unwrap(),
        1,
    );

    let client_port = free_port();
    let client_cfg = shapes::sidecar_bootstrap(
        RATINGS_NODE_ID,
        RATINGS_NODE_METADATA,
        vec![shapes::outbound_listener(
            client_port,
            &outbound_filters(protocol, &outbound_cluster, placement),
        )],
        vec![shapes::cluster(
            &outbound_cluster,
            port,
            Some(MONGODB_ENDPOINT_WORKLOAD),
            mtls.then_some(&certs),
        )],
    );
    let client = Envoy::start(
        &format!("{name}-client"),
        &serde_json::to_string_pretty(&client_cfg).unwrap(),
        1,
    );

    let mut conn = TcpStream::connect(("127.0.0.1", client_port)).unwrap();
    conn.set_read_timeout(Some(ROUNDTRIP_TIMEOUT)).unwrap();
    let client_got = conversation(&mut conn).unwrap_or_else(|e| panic!("{name}: {e}"));
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "{name}: unexpected trailing bytes {rest:?}"
    );
    drop(conn);

    let tcp_closed = format!("cluster.{inbound_cluster}.upstream_cx_destroy");
    server.wait_for_counter(&tcp_closed, 1, Duration::from_secs(10));
    let frames = (
        client
            .counter("wasmcustom.envoy_metadata_exchange.metadata_added")
            .unwrap_or(0),
        server
            .counter("wasmcustom.envoy_metadata_exchange.alpn_protocol_found")
            .unwrap_or(0),
    );
    let root = protocol.stats_root();
    Outcome {
        backend_got: Vec::new(),
        client_got,
        server_stats: counters(&server, root, &inbound_cluster),
        client_stats: counters(&client, root, &outbound_cluster),
        frames,
    }
}

// ---------------------------------------------------------------------------------------------
// Mongo wire protocol (https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/)

/// A BSON document of (name, value) with int32, string and boolean values.
fn bson(fields: &[(&str, Value)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in fields {
        let tag: u8 = match v {
            Value::Bool(_) => 0x08,
            Value::String(_) => 0x02,
            _ => 0x10,
        };
        body.push(tag);
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        match v {
            Value::Bool(b) => body.push(u8::from(*b)),
            Value::String(s) => {
                body.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
                body.extend_from_slice(s.as_bytes());
                body.push(0);
            }
            n => body.extend_from_slice(&(n.as_i64().unwrap() as i32).to_le_bytes()),
        }
    }
    body.push(0);
    let mut doc = ((body.len() + 4) as i32).to_le_bytes().to_vec();
    doc.extend(body);
    doc
}

/// A message: the 16-byte header (length, requestID, responseTo, opCode) and `body`.
fn mongo_message(request_id: i32, response_to: i32, op_code: i32, body: &[u8]) -> Vec<u8> {
    let mut m = ((16 + body.len()) as i32).to_le_bytes().to_vec();
    for x in [request_id, response_to, op_code] {
        m.extend_from_slice(&x.to_le_bytes());
    }
    m.extend_from_slice(body);
    m
}

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;

/// OP_QUERY of `query` on `collection` (`admin.$cmd` for a command).
fn op_query(request_id: i32, collection: &str, query: &[u8]) -> Vec<u8> {
    let mut b = 0i32.to_le_bytes().to_vec(); // flags
    b.extend_from_slice(collection.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i32.to_le_bytes()); // numberToSkip
    b.extend_from_slice(&(-1i32).to_le_bytes()); // numberToReturn
    b.extend_from_slice(query);
    mongo_message(request_id, 0, OP_QUERY, &b)
}

fn op_reply(request_id: i32, response_to: i32, doc: &[u8]) -> Vec<u8> {
    let mut b = 0i32.to_le_bytes().to_vec(); // responseFlags
    b.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    b.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    b.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    b.extend_from_slice(doc);
    mongo_message(request_id, response_to, OP_REPLY, &b)
}

/// OP_MSG with flagBits 0 and one kind-0 section.
fn op_msg(request_id: i32, response_to: i32, doc: &[u8]) -> Vec<u8> {
    let mut b = 0u32.to_le_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(doc);
    mongo_message(request_id, response_to, OP_MSG, &b)
}

/// Reads one length-prefixed message (Mongo: LE i32 total length).
fn read_mongo(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let n = i32::from_le_bytes(len) as usize;
    if !(16..=1 << 20).contains(&n) {
        return Err(io::Error::other(format!("mongo message length {n}")));
    }
    let mut m = len.to_vec();
    m.resize(n, 0);
    conn.read_exact(&mut m[4..])?;
    Ok(m)
}

/// The conversation: isMaster and a find on `test.ratings` (OP_QUERY → OP_REPLY), then ping
/// (OP_MSG → OP_MSG). Envoy's mongo_proxy does not decode OP_MSG (measured: one
/// `decoding_error`, after which it stops sniffing the connection), so OP_MSG comes last.
fn mongo_requests() -> [Vec<u8>; 3] {
    [
        op_query(1, "admin.$cmd", &bson(&[("isMaster", json!(1))])),
        op_query(2, "test.ratings", &bson(&[("rating", json!(5))])),
        op_msg(3, 0, &bson(&[("ping", json!(1)), ("$db", json!("admin"))])),
    ]
}

fn mongo_replies() -> [Vec<u8>; 3] {
    [
        op_reply(
            101,
            1,
            &bson(&[
                ("ismaster", json!(true)),
                ("maxWireVersion", json!(17)),
                ("ok", json!(1)),
            ]),
        ),
        op_reply(
            102,
            2,
            &bson(&[("rating", json!(5)), ("reviewer", json!("r1"))]),
        ),
        op_msg(103, 3, &bson(&[("ok", json!(1))])),
    ]
}

/// A Mongo server: answers each request of [`mongo_requests`] with its reply, records what it
/// received.
fn mongo_backend(got: Arc<Mutex<Vec<u8>>>) -> Backend {
    Backend::spawn(move |mut conn| {
        for reply in mongo_replies() {
            let m = read_mongo(&mut conn)?;
            got.lock().unwrap().extend_from_slice(&m);
            conn.write_all(&reply)?;
        }
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)?;
        got.lock().unwrap().extend_from_slice(&rest);
        conn.shutdown(Shutdown::Write)
    })
}

fn mongo_conversation(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    for req in mongo_requests() {
        conn.write_all(&req)?;
        got.extend(read_mongo(conn)?);
    }
    Ok(got)
}

fn run_mongo(name: &str, placement: Placement, mtls: bool) -> Outcome {
    let got = Arc::new(Mutex::new(Vec::new()));
    let backend = mongo_backend(got.clone());
    let mut out = run(
        name,
        PortProtocol::Mongo,
        placement,
        mtls,
        &backend,
        mongo_conversation,
    );
    out.backend_got = got.lock().unwrap().clone();
    out
}

#[test]
fn mongo_port_bytes_exact_and_mongo_proxy_stats_as_without_our_filters() {
    let requests: Vec<u8> = mongo_requests().concat();
    let replies: Vec<u8> = mongo_replies().concat();
    for mtls in [false, true] {
        let reference = run_mongo(&format!("mongo-ref-{mtls}"), Placement::None, mtls);
        assert_eq!(reference.backend_got, requests);
        assert_eq!(reference.client_got, replies);
        for (side, stats) in [
            ("server", &reference.server_stats),
            ("client", &reference.client_stats),
        ] {
            let op = |k: &str| stats.get(k).copied();
            assert_eq!(op("op_query"), Some(2), "{side}: {stats:#?}");
            assert_eq!(op("op_reply"), Some(2), "{side}: {stats:#?}");
            assert_eq!(op("decoding_error"), Some(1), "{side} (OP_MSG): {stats:#?}");
        }

        let ours = run_mongo(&format!("mongo-shipped-{mtls}"), Placement::Shipped, mtls);
        // The shipped client gate (istio_mtls) sends only over mutual TLS to a SPIFFE identity,
        // as Istio offers istio-peer-exchange only there: plaintext carries no frame.
        let frames = if mtls { (1, 1) } else { (0, 0) };
        assert_eq!(ours.frames, frames, "mtls {mtls}: exchange frames");
        assert_eq!(ours.backend_got, requests, "mtls {mtls}");
        assert_eq!(ours.client_got, replies, "mtls {mtls}");
        assert_eq!(
            ours.server_stats, reference.server_stats,
            "server, mtls {mtls}"
        );
        assert_eq!(
            ours.client_stats, reference.client_stats,
            "client, mtls {mtls}"
        );
    }

    // Negative: the exchange behind mongo_proxy (the old INSERT_BEFORE tcp_proxy) feeds it the
    // frame; the bytes still arrive, but mongo_proxy's stats no longer match. Over mutual TLS,
    // where the shipped client gate sends a frame.
    let reference = run_mongo("mongo-ref-old", Placement::None, true);
    let old = run_mongo("mongo-old-order", Placement::ExchangeBeforeTcpProxy, true);
    assert_eq!(old.backend_got, requests);
    assert_ne!(
        old.server_stats, reference.server_stats,
        "mongo_proxy behind the frame must see different bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// MySQL client/server protocol (server speaks first)

/// A packet: 3-byte LE length, sequence id, payload.
fn mysql_packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut p = n.to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(payload);
    p
}

const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x80000;

/// Protocol::HandshakeV10 from a 8.0 server, mysql_native_password.
fn mysql_greeting() -> Vec<u8> {
    let caps: u32 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | 0xF7FF;
    let mut p = vec![10u8];
    p.extend_from_slice(b"8.0.36\0");
    p.extend_from_slice(&7u32.to_le_bytes()); // connection id
    p.extend_from_slice(b"abcdefgh\0"); // auth-plugin-data-part-1 + filler
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(0xff); // utf8mb4_0900_ai_ci
    p.extend_from_slice(&2u16.to_le_bytes()); // SERVER_STATUS_AUTOCOMMIT
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21); // auth plugin data length
    p.extend_from_slice(&[0u8; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0"); // auth-plugin-data-part-2
    p.extend_from_slice(b"mysql_native_password\0");
    mysql_packet(0, &p)
}

/// Protocol::HandshakeResponse41 for user `ratings`.
fn mysql_handshake_response() -> Vec<u8> {
    let caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(16u32 << 20).to_le_bytes()); // max packet size
    p.push(0xff);
    p.extend_from_slice(&[0u8; 23]);
    p.extend_from_slice(b"ratings\0");
    p.push(20);
    p.extend_from_slice(&[0x5a; 20]); // auth response
    p.extend_from_slice(b"mysql_native_password\0");
    mysql_packet(1, &p)
}

fn mysql_ok(seq: u8) -> Vec<u8> {
    mysql_packet(seq, &[0x00, 0, 0, 0x02, 0x00, 0, 0])
}

fn mysql_query() -> Vec<u8> {
    mysql_packet(0, b"\x03SELECT rating FROM ratings WHERE id = 1")
}

fn read_mysql(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    conn.read_exact(&mut h)?;
    let n = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = h.to_vec();
    p.resize(4 + n, 0);
    conn.read_exact(&mut p[4..])?;
    Ok(p)
}

fn mysql_backend(got: Arc<Mutex<Vec<u8>>>) -> Backend {
    Backend::spawn(move |mut conn| {
        conn.write_all(&mysql_greeting())?;
        for reply in [mysql_ok(2), mysql_ok(1)] {
            let p = read_mysql(&mut conn)?;
            got.lock().unwrap().extend_from_slice(&p);
            conn.write_all(&reply)?;
        }
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)?;
        got.lock().unwrap().extend_from_slice(&rest);
        conn.shutdown(Shutdown::Write)
    })
}

fn mysql_conversation(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut got = read_mysql(conn)?;
    conn.write_all(&mysql_handshake_response())?;
    got.extend(read_mysql(conn)?);
    conn.write_all(&mysql_query())?;
    got.extend(read_mysql(conn)?);
    Ok(got)
}

fn run_mysql(name: &str, placement: Placement, mtls: bool) -> Outcome {
    let got = Arc::new(Mutex::new(Vec::new()));
    let backend = mysql_backend(got.clone());
    // mysql_proxy is an Envoy contrib extension: stock Envoy (and so this test) has none. Istio's
    // [mysql_proxy, tcp_proxy] order is checked without Envoy in tests/istio_manifests.rs.
    let mut out = run(
        name,
        PortProtocol::Tcp,
        placement,
        mtls,
        &backend,
        mysql_conversation,
    );
    out.backend_got = got.lock().unwrap().clone();
    out
}

#[test]
fn mysql_port_server_first_bytes_exact_through_istio_shaped_sidecars() {
    let requests = [mysql_handshake_response(), mysql_query()].concat();
    let replies = [mysql_greeting(), mysql_ok(2), mysql_ok(1)].concat();
    // mTLS only: over plaintext the inbound tls_inspector waits for the client's first bytes
    // while the client waits for the greeting (Istio: server-first protocols need mTLS).
    let mtls = true;
    let reference = run_mysql(&format!("mysql-ref-{mtls}"), Placement::None, mtls);
    assert_eq!(reference.backend_got, requests);
    assert_eq!(reference.client_got, replies);

    let ours = run_mysql(&format!("mysql-shipped-{mtls}"), Placement::Shipped, mtls);
    assert_eq!(ours.frames, (1, 1), "mtls {mtls}: the exchange did not run");
    assert_eq!(ours.backend_got, requests, "mtls {mtls}");
    assert_eq!(ours.client_got, replies, "mtls {mtls}");
}
