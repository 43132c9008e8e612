//! Hostile input, faults and load, end to end in real Envoy: nothing lost, nothing altered, no
//! trap.
//!
//! - Random fragmentation: many connections (`ADVERSARIAL_CONNECTIONS`, default 300 per
//!   transport) through client sidecar → server sidecar → backend, plaintext and mTLS, two
//!   workers each, eight client threads; random payloads in random pieces with small random
//!   delays; half the connections meet a server-first backend. Every byte is checked at both
//!   ends, then the four metrics of both reporters must add up to exactly what was sent.
//!   `ADVERSARIAL_SEED` replays a run (the seed is printed).
//! - Hostile peers, to the server sidecar (plaintext chain in expect mode) and to a client
//!   sidecar from a fake mesh server: garbage after the magic, a 4 GiB length, the wrong `Any`
//!   type, a `Struct` nested as deep as the cap allows and one 10^4 deep, 1 MiB of labels, half a
//!   frame then a stall, a close mid-frame, a reset mid-frame. Afterwards Envoy is up, no VM
//!   trapped, and heap use is back near where it was.

mod hostile;
mod mesh;
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hostile::{
    after_frame, allocated, assert_unharmed, claimed_frame, deep_struct_frames, header,
    huge_labels_frame, reset, send_pause_close, vm_health, wait_sums, wrong_type_frame, Fnv, Rng,
    CAP, CLOSED, OPENED, RECEIVED, SENT,
};
use mesh::{request_reply, Mesh, MeshOptions};
use support::{echo_server, Backend};

const WAIT: Duration = Duration::from_secs(20);
/// What the server-first backend writes before anything else (its first byte is never the
/// first byte of a payload, so the client can tell which backend it met).
const GREETING: &[u8] = b"220 fake-mongodb ready\r\n";
/// Largest payload of one connection, and largest piece it is written in.
const MAX_PAYLOAD: usize = 16 * 1024;
const MAX_PIECE: usize = 2048;
/// Past the server sidecar's tls_inspector before a half-close (see `send_pause_close`).
const PAUSE: Duration = Duration::from_millis(200);

// ---- random fragmentation ---------------------------------------------------------------------

/// Echoes every byte; on every other connection (by accept order) first writes [`GREETING`].
/// Records the digest and length of what each connection received.
fn mixed_backend(received: Arc<Mutex<Vec<(u64, usize)>>>) -> Backend {
    let accepted = Arc::new(AtomicUsize::new(0));
    Backend::spawn(move |mut conn| {
        if accepted.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            conn.write_all(GREETING)?;
        }
        let (mut digest, mut len) = (Fnv::new(), 0);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            len += n;
            conn.write_all(&buf[..n])?;
        }
        received.lock().unwrap().push((digest.0, len));
        conn.shutdown(Shutdown::Write)
    })
}

/// What one connection did.
struct Outcome {
    sent: usize,
    greeted: bool,
    digest: u64,
}

/// One application connection: a random payload in random pieces, then the whole echo (after
/// the greeting, if the backend sent one), then a half-close and EOF.
fn one_connection(port: u16, rng: &mut Rng) -> Result<Outcome, String> {
    let len = 1 + rng.below(MAX_PAYLOAD);
    let mut payload = rng.bytes(len);
    payload[0] = b'a' + payload[0] % 26;
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut at = 0;
    while at < len {
        let piece = (1 + rng.below(MAX_PIECE)).min(len - at);
        conn.write_all(&payload[at..at + piece])
            .map_err(|e| format!("write at {at}: {e}"))?;
        at += piece;
        if rng.below(3) == 0 {
            thread::sleep(Duration::from_micros(rng.below(2000) as u64));
        }
    }
    // Payloads are far below the socket buffers, so reading after writing cannot deadlock.
    let mut first = [0u8; 1];
    conn.read_exact(&mut first)
        .map_err(|e| format!("first reply byte: {e}"))?;
    let greeted = first[0] == GREETING[0];
    let expected: Vec<u8> = if greeted {
        [GREETING, &payload].concat()
    } else {
        payload.clone()
    };
    let mut reply = vec![0u8; expected.len()];
    reply[0] = first[0];
    conn.read_exact(&mut reply[1..])
        .map_err(|e| format!("reply of {} bytes: {e}", expected.len()))?;
    if reply != expected {
        let at = reply.iter().zip(&expected).position(|(a, b)| a != b);
        return Err(format!(
            "reply differs at byte {at:?} of {}",
            expected.len()
        ));
    }
    conn.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .map_err(|e| format!("EOF: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the echo", rest.len()));
    }
    Ok(Outcome {
        sent: len,
        greeted,
        digest: Fnv::of(&payload),
    })
}

fn random_fragmentation(mtls: bool) {
    let name = if mtls {
        "adv-frag-mtls"
    } else {
        "adv-frag-plain"
    };
    let connections: usize = std::env::var("ADVERSARIAL_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed = hostile::seed();
    eprintln!("{name}: {connections} connections, ADVERSARIAL_SEED={seed}");
    let received = Arc::new(Mutex::new(Vec::new()));
    let backend = mixed_backend(Arc::clone(&received));
    let opts = MeshOptions {
        mtls,
        concurrency: 2,
        ..Default::default()
    };
    let mesh = Mesh::start(name, backend.port(), &opts);
    let client_health = vm_health(&mesh.client);
    let server_health = vm_health(mesh.server());

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let port = mesh.client_port;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let next = Arc::clone(&next);
            thread::spawn(move || {
                let mut outcomes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= connections {
                        return outcomes;
                    }
                    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                    match one_connection(port, &mut rng) {
                        Ok(o) => outcomes.push(o),
                        Err(e) => panic!("connection {i} (seed {seed}): {e}"),
                    }
                }
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("client thread"))
        .collect();
    eprintln!("{name}: traffic took {:?}", started.elapsed());
    assert_eq!(outcomes.len(), connections);

    // The backend saw exactly the payloads (as a multiset: connections interleave).
    let deadline = Instant::now() + WAIT;
    while received.lock().unwrap().len() < connections && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let mut at_backend = received.lock().unwrap().clone();
    let mut at_client: Vec<(u64, usize)> = outcomes.iter().map(|o| (o.digest, o.sent)).collect();
    at_backend.sort_unstable();
    at_client.sort_unstable();
    assert!(
        at_backend == at_client,
        "the backend received other bytes than were sent"
    );

    let sent: usize = outcomes.iter().map(|o| o.sent).sum();
    let greeted = outcomes.iter().filter(|o| o.greeted).count();
    assert!(
        connections < 2 || (greeted > 0 && greeted < connections),
        "both kinds of backend met"
    );
    let n = connections as f64;
    let want = [
        (OPENED, n),
        (CLOSED, n),
        (RECEIVED, sent as f64),
        (SENT, (sent + greeted * GREETING.len()) as f64),
    ];
    wait_sums(&mesh.client, "reporter=source", &want, WAIT);
    wait_sums(mesh.server(), "reporter=destination", &want, WAIT);
    assert_unharmed(&mesh.client, "client sidecar", &client_health);
    assert_unharmed(mesh.server(), "server sidecar", &server_health);
}

fn random_fragmentation_plaintext_counts_every_byte() {
    random_fragmentation(false);
}

fn random_fragmentation_mtls_counts_every_byte() {
    random_fragmentation(true);
}

// ---- hostile peers ----------------------------------------------------------------------------

/// The hostile byte streams, each with what must come out of the exchange filter: the same
/// bytes (not a usable frame: passed through) or only what follows the frame (a whole frame
/// with a valid header: removed even though it is unusable).
struct Hostile {
    name: &'static str,
    bytes: Vec<u8>,
    stripped: bool,
}

fn hostile_streams() -> Vec<Hostile> {
    let tail = b"application bytes".to_vec();
    let with_tail = |frame: Vec<u8>| [frame, tail.clone()].concat();
    let (deep_fits, depth, deep_over) = deep_struct_frames(CAP);
    eprintln!(
        "deep Struct: {depth} levels in {} bytes; 10^4 levels in {} bytes",
        deep_fits.len(),
        deep_over.len()
    );
    let labels = huge_labels_frame(1024 * 1024);
    assert!(labels.len() > 1024 * 1024);
    vec![
        Hostile {
            name: "magic then garbage",
            bytes: with_tail([&hostile::MAGIC[..], &[0xAB; 60]].concat()),
            stripped: false,
        },
        Hostile {
            name: "4 GiB length",
            bytes: with_tail(header(u32::MAX)),
            stripped: false,
        },
        Hostile {
            name: "Any of the wrong type",
            bytes: with_tail(wrong_type_frame()),
            stripped: true,
        },
        Hostile {
            name: "Struct nested to the cap",
            bytes: with_tail(deep_fits),
            stripped: true,
        },
        Hostile {
            name: "Struct nested 10^4 deep",
            bytes: with_tail(deep_over),
            stripped: false,
        },
        Hostile {
            name: "1 MiB of labels",
            bytes: with_tail(labels),
            stripped: false,
        },
    ]
}

/// What the application side must receive for `h`.
fn expected(h: &Hostile) -> &[u8] {
    if h.stripped {
        b"application bytes"
    } else {
        &h.bytes
    }
}

fn hostile_clients_to_the_server_sidecar() {
    let backend = echo_server();
    let opts = MeshOptions {
        // Every plaintext connection must carry a frame: the strictest reading of the bytes.
        server_exchange_plain: r#"{"side":"server","server_mode":"expect"}"#.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("adv-hostile-server", backend.port(), &opts);
    let server = mesh.server();
    let port = mesh.server_port;
    // Warm up (VMs, first series) before the baselines.
    assert_eq!(request_reply(mesh.client_port, b"warm", 4), b"warm");
    let health = vm_health(server);
    let heap_before = allocated(server);

    for h in hostile_streams() {
        let back = send_pause_close(port, &h.bytes, PAUSE);
        assert!(
            after_frame(&back) == expected(&h),
            "{}: bytes altered",
            h.name
        );
    }

    // Half a frame, then a stall: only that connection is held; others keep working.
    let frame = claimed_frame(&[("WORKLOAD_NAME", "stalled")], "sidecar~stalled");
    let half = &frame[..frame.len() / 2];
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled.write_all(half).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let held = stalled.read(&mut byte);
    assert!(
        matches!(&held, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the half frame is held, nothing comes back: {held:?}"
    );
    for i in 0..3 {
        let msg = format!("parallel {i}");
        assert_eq!(
            request_reply(mesh.client_port, msg.as_bytes(), msg.len()),
            msg.as_bytes(),
            "a parallel connection works while one is stalled"
        );
    }
    stalled.shutdown(Shutdown::Write).unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    let mut back = Vec::new();
    stalled.read_to_end(&mut back).unwrap();
    assert_eq!(after_frame(&back), half, "held bytes delivered at close");

    // A close mid-frame (after the listener filter), and a reset mid-frame.
    let back = send_pause_close(port, &frame[..frame.len() / 3], PAUSE);
    assert_eq!(after_frame(&back), &frame[..frame.len() / 3]);
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(&frame[..frame.len() / 3]).unwrap();
    thread::sleep(PAUSE);
    reset(conn);

    // 6 streams + stall + close + reset + 1 warm-up + 3 parallel connections, all closed.
    // header_not_found: every hostile stream but the reset (which never reaches end of stream).
    let mx = "wasmcustom.envoy_metadata_exchange.";
    server.wait_for_counter(&format!("{mx}header_not_found"), 8, WAIT);
    wait_sums(server, "server", &[(OPENED, 13.0), (CLOSED, 13.0)], WAIT);
    assert_unharmed(server, "server sidecar", &health);
    let heap_after = allocated(server);
    eprintln!("server heap: {heap_before} -> {heap_after} bytes");
    assert!(
        heap_after < heap_before + 8 * 1024 * 1024,
        "heap grew from {heap_before} to {heap_after}"
    );
}

/// Scenario ids the application sends (after the client sidecar's frame) to the fake server.
const NORMAL: u8 = 0;
const STALL: u8 = 100;
const CLOSE_MID: u8 = 101;
const RESET_MID: u8 = 102;

/// A fake mesh server: reads the client sidecar's frame and the scenario id, then answers with
/// a real frame and "pong" (NORMAL), hostile stream `id - 1`, or a partial frame followed by a
/// stall (released by one more byte from the application), a close, or a reset.
fn fake_mesh_server(streams: Vec<Vec<u8>>, frame: Vec<u8>) -> Backend {
    Backend::spawn(move |mut conn| {
        let mut head = [0u8; 8];
        conn.read_exact(&mut head)?;
        assert_eq!(
            head[..4],
            hostile::MAGIC,
            "the client sidecar sent its frame"
        );
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let mut rest = vec![0u8; len + 1];
        conn.read_exact(&mut rest)?;
        let part = &frame[..frame.len() / 3];
        match rest[len] {
            NORMAL => conn.write_all(&[&frame[..], b"pong"].concat())?,
            STALL => {
                conn.write_all(&frame[..frame.len() / 2])?;
                let mut go = [0u8; 1];
                conn.read_exact(&mut go)?;
            }
            CLOSE_MID => conn.write_all(part)?,
            RESET_MID => {
                conn.write_all(part)?;
                thread::sleep(PAUSE);
                reset(conn);
                return Ok(());
            }
            id => conn.write_all(&streams[usize::from(id) - 1])?,
        }
        conn.shutdown(Shutdown::Write)?;
        let _ = conn.read_to_end(&mut Vec::new());
        Ok(())
    })
}

/// Connects to the client sidecar and asks the fake server for scenario `id`.
fn ask(port: u16, id: u8) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(&[id]).unwrap();
    conn
}

fn read_all(mut conn: TcpStream) -> Vec<u8> {
    let mut back = Vec::new();
    conn.read_to_end(&mut back).expect("EOF before the timeout");
    back
}

fn hostile_mesh_server_to_the_client_sidecar() {
    let streams = hostile_streams();
    let frame = claimed_frame(&[("WORKLOAD_NAME", "fake-server")], "sidecar~fake");
    let backend = fake_mesh_server(
        streams.iter().map(|h| h.bytes.clone()).collect(),
        frame.clone(),
    );
    let opts = MeshOptions {
        without_server_sidecar: true,
        ..Default::default()
    };
    let mesh = Mesh::start("adv-hostile-client", backend.port(), &opts);
    let client = &mesh.client;
    let port = mesh.client_port;
    assert_eq!(read_all(ask(port, NORMAL)), b"pong");
    let health = vm_health(client);
    let heap_before = allocated(client);

    for (i, h) in streams.iter().enumerate() {
        let back = read_all(ask(port, i as u8 + 1));
        assert!(back == expected(h), "{}: bytes altered", h.name);
    }

    let mut stalled = ask(port, STALL);
    stalled
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let held = stalled.read(&mut byte);
    assert!(
        matches!(&held, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the half frame is held: {held:?}"
    );
    assert_eq!(read_all(ask(port, NORMAL)), b"pong", "others keep working");
    stalled.write_all(b"g").unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        read_all(stalled),
        &frame[..frame.len() / 2],
        "held bytes delivered"
    );

    assert_eq!(read_all(ask(port, CLOSE_MID)), &frame[..frame.len() / 3]);
    // A reset upstream ends the connection (its held bytes die with it); it must not hang.
    let mut conn = ask(port, RESET_MID);
    let _ = conn.read_to_end(&mut Vec::new());

    let mx = "wasmcustom.envoy_metadata_exchange.";
    client.wait_for_counter(&format!("{mx}header_not_found"), 8, WAIT);
    wait_sums(client, "client", &[(OPENED, 11.0), (CLOSED, 11.0)], WAIT);
    assert_unharmed(client, "client sidecar", &health);
    let heap_after = allocated(client);
    eprintln!("client heap: {heap_before} -> {heap_after} bytes");
    assert!(
        heap_after < heap_before + 8 * 1024 * 1024,
        "heap grew from {heap_before} to {heap_after}"
    );
}

testkit::both_filters!(
    random_fragmentation_plaintext_counts_every_byte,
    random_fragmentation_mtls_counts_every_byte,
    hostile_clients_to_the_server_sidecar,
    hostile_mesh_server_to_the_client_sidecar,
);
