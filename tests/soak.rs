//! A soak: mixed traffic through both sidecars for `SOAK_SECONDS` (60 in `make test`, 1200 in
//! `make soak`), sampling memory every `SOAK_SAMPLE_SECONDS` (10, resp. 30).
//!
//! Traffic (client sidecar → server sidecar over mutual TLS → echo backend, both filters on both
//! sidecars, `tcp_reporting_duration` 1 s, two workers each):
//! - short connections (request, echo, close), two threads;
//! - [`LONG_LIVED`] connections open for the whole run, each exchanging a chunk every second;
//! - bulk: a 2 MiB round trip every 5 s;
//! - peer churn: plaintext clients straight to the server sidecar (detect chain) claiming one of
//!   [`PEERS`] workloads in a valid frame, each a new series of the destination reporter, within
//!   the cardinality cap ([`MAX_SERIES`]);
//! - hostile clients to the same chain: random bytes, a frame of the wrong type (removed), a
//!   valid header around bytes that are no protobuf and a length over the cap (both passed
//!   untouched), a reset after the echo.
//!
//! Every byte coming back is checked. At the end the four metrics of both reporters must equal
//! what the clients moved, exactly; no VM trapped; nothing folded. Memory: each Envoy's RSS
//! (`/proc/<pid>/status`), tcmalloc's `allocated` (`/memory`) and the size of the Wasm VMs'
//! linear memories (read from V8's guarded reservations in `/proc/<pid>/maps`: Envoy exports no
//! stat for it). After a warm-up (a quarter of the run, at least one sample
//! period) the least-squares slope of each must be at most 1 % of its mean per 10 minutes; the
//! gate applies when at least 5 minutes of samples follow the warm-up (shorter runs report the
//! slopes and are checked for bytes, counters and traps only). Samples go to `SOAK_SAMPLES`
//! (CSV) when set; `make soak` writes `docs/soak/samples.csv` and the plot.

mod hostile;
mod mesh;
mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hostile::{
    allocated, assert_unharmed, claimed_frame, frame_with_payload, header, reset, vm_health,
    wait_sums, wrong_type_frame, Rng, CAP, CLOSED, MAGIC, OPENED, RECEIVED, SENT,
};
use mesh::{parse_prometheus, Mesh, MeshOptions};
use support::{echo_server, Envoy};

/// Connections held open for the whole run.
const LONG_LIVED: usize = 20;
/// Distinct workloads the churn clients claim.
const PEERS: usize = 20;
/// `max_series_per_metric` of both stats filters: room for the mesh, the peers and the
/// hostile clients' label sets, so nothing folds.
const MAX_SERIES: usize = 100;
const WAIT: Duration = Duration::from_secs(30);

/// What the clients moved, per reporter: connections, bytes to the backend, bytes back.
#[derive(Default)]
struct Tally {
    conns: AtomicU64,
    to_backend: AtomicU64,
    from_backend: AtomicU64,
}

impl Tally {
    fn add(&self, to: usize, from: usize) {
        self.conns.fetch_add(1, Ordering::SeqCst);
        self.to_backend.fetch_add(to as u64, Ordering::SeqCst);
        self.from_backend.fetch_add(from as u64, Ordering::SeqCst);
    }

    fn get(&self) -> (f64, f64, f64) {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst) as f64;
        (g(&self.conns), g(&self.to_backend), g(&self.from_backend))
    }
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn connect(port: u16) -> TcpStream {
    let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    conn
}

/// Writes `data` from a second thread (bulk cannot deadlock against the echo) and reads back
/// exactly `expect.len()` bytes, which must equal `expect`.
fn write_and_expect(conn: &mut TcpStream, data: &[u8], expect: &[u8], what: &str) {
    let mut writer = conn.try_clone().expect("clone");
    let data = data.to_vec();
    let w = thread::spawn(move || writer.write_all(&data));
    let mut back = vec![0u8; expect.len()];
    conn.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{what}: reading {} bytes: {e}", expect.len()));
    w.join().expect("writer").expect("write");
    assert!(back == expect, "{what}: bytes altered");
}

/// Half-closes and expects EOF with nothing more.
fn finish(mut conn: TcpStream, what: &str) {
    conn.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("{what}: EOF: {e}"));
    assert!(
        rest.is_empty(),
        "{what}: {} bytes after the echo",
        rest.len()
    );
}

/// Reads the server sidecar's exchange frame (header and payload) off `conn`.
fn read_frame(conn: &mut TcpStream, what: &str) {
    let mut head = [0u8; 8];
    conn.read_exact(&mut head)
        .unwrap_or_else(|e| panic!("{what}: frame header: {e}"));
    assert_eq!(head[..4], MAGIC, "{what}: the server's frame comes first");
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload)
        .unwrap_or_else(|e| panic!("{what}: frame payload: {e}"));
}

/// Application bytes that never start with the magic's first byte.
fn app_bytes(rng: &mut Rng, min: usize, spread: usize) -> Vec<u8> {
    let len = min + rng.below(spread);
    let mut b = rng.bytes(len.max(8));
    b[0] = b'a' + (b[0] % 26);
    b
}

/// One memory sample of one Envoy: RSS, tcmalloc allocated, Wasm linear memory (bytes).
type Memory = (u64, u64, u64);
/// Seconds since the start, then the client's and the server's [`Memory`].
type Row = (f64, [Memory; 2]);

fn memory(envoy: &Envoy) -> Memory {
    let pid = envoy.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    (rss_kib * 1024, allocated(envoy), wasm_memory(pid))
}

/// The Wasm VMs' linear memory: V8 reserves 8 GiB (plus guard pages) per linear memory and
/// makes its first `memory.size` pages read-write, which splits the reservation into a `rw-p`
/// mapping directly followed by a `---p` one of 4 GiB or more. The sum of those `rw-p` parts is
/// the size every VM's memory has grown to (Envoy exports no stat for it).
fn wasm_memory(pid: u32) -> u64 {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let ranges: Vec<(u64, u64, bool)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (lo, hi) = f.next()?.split_once('-')?;
            let perms = f.next()?;
            let lo = u64::from_str_radix(lo, 16).ok()?;
            let hi = u64::from_str_radix(hi, 16).ok()?;
            Some((lo, hi, perms.starts_with("rw")))
        })
        .collect();
    ranges
        .windows(2)
        .filter(|w| w[0].2 && w[0].1 == w[1].0 && !w[1].2 && w[1].1 - w[1].0 >= 4 << 30)
        .map(|w| w[0].1 - w[0].0)
        .sum()
}

/// Least-squares slope of `ys` over `ts` (seconds), as a fraction of the mean per 10 minutes.
fn slope_per_10min(ts: &[f64], ys: &[f64]) -> f64 {
    let n = ts.len() as f64;
    let (mt, my) = (ts.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = ts.iter().zip(ys).map(|(t, y)| (t - mt) * (y - my)).sum();
    let var: f64 = ts.iter().map(|t| (t - mt).powi(2)).sum();
    if var == 0.0 || my == 0.0 {
        return 0.0;
    }
    cov / var * 600.0 / my
}

#[test]
fn soak_mixed_traffic_keeps_memory_flat_and_counts_exact() {
    let seconds = env_secs("SOAK_SECONDS", 60);
    let period = env_secs("SOAK_SAMPLE_SECONDS", if seconds >= 600 { 30 } else { 10 });
    let seed = hostile::seed();
    println!("soak: {seconds} s, samples every {period} s, seed {seed}");

    let backend = echo_server();
    let stats =
        format!(r#"{{"tcp_reporting_duration":"1s","max_series_per_metric":{MAX_SERIES}}}"#);
    let mesh = Mesh::start(
        "soak",
        backend.port(),
        &MeshOptions {
            mtls: true,
            client_stats: stats.clone(),
            server_stats: stats,
            concurrency: 2,
            ..MeshOptions::default()
        },
    );
    let server = mesh.server();
    let health = (vm_health(&mesh.client), vm_health(server));

    let stop = Arc::new(AtomicBool::new(false));
    let mesh_tally = Arc::new(Tally::default()); // both reporters
    let direct_tally = Arc::new(Tally::default()); // destination reporter only
    let mut workers = Vec::new();
    let spawn = |workers: &mut Vec<thread::JoinHandle<()>>,
                 name: &'static str,
                 n: u64,
                 f: fn(u16, u16, &mut Rng, &Tally, &Tally)| {
        let (stop, mt, dt) = (stop.clone(), mesh_tally.clone(), direct_tally.clone());
        let (cp, sp) = (mesh.client_port, mesh.server_port);
        workers.push(
            thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let mut rng = Rng::new(seed ^ n);
                    while !stop.load(Ordering::SeqCst) {
                        f(cp, sp, &mut rng, &mt, &dt);
                    }
                })
                .expect("spawn"),
        );
    };

    // Short connections through both sidecars.
    fn short(client_port: u16, _: u16, rng: &mut Rng, mesh: &Tally, _: &Tally) {
        let data = app_bytes(rng, 1, 4096);
        let mut conn = connect(client_port);
        write_and_expect(&mut conn, &data, &data, "short");
        finish(conn, "short");
        mesh.add(data.len(), data.len());
        thread::sleep(Duration::from_millis(30));
    }
    spawn(&mut workers, "short-1", 1, short);
    spawn(&mut workers, "short-2", 2, short);

    // Bulk: 2 MiB each way, every 5 s.
    fn bulk(client_port: u16, _: u16, rng: &mut Rng, mesh: &Tally, _: &Tally) {
        let data = app_bytes(rng, 2 << 20, 1);
        let mut conn = connect(client_port);
        write_and_expect(&mut conn, &data, &data, "bulk");
        finish(conn, "bulk");
        mesh.add(data.len(), data.len());
        thread::sleep(Duration::from_secs(5));
    }
    spawn(&mut workers, "bulk", 3, bulk);

    // Peer churn: plaintext, straight to the server sidecar, claiming one of PEERS workloads.
    fn churn(_: u16, server_port: u16, rng: &mut Rng, _: &Tally, direct: &Tally) {
        let peer = format!("soak-peer-{}", rng.below(PEERS));
        let frame = claimed_frame(
            &[("WORKLOAD_NAME", &peer), ("NAMESPACE", "soak")],
            &format!("sidecar~{peer}"),
        );
        let data = app_bytes(rng, 16, 1024);
        let mut conn = connect(server_port);
        conn.write_all(&frame).expect("frame");
        // The server answers our frame with its own, ahead of the echo.
        let mut writer = conn.try_clone().expect("clone");
        let d = data.clone();
        let w = thread::spawn(move || writer.write_all(&d));
        read_frame(&mut conn, "churn");
        let mut back = vec![0u8; data.len()];
        conn.read_exact(&mut back).expect("churn echo");
        w.join().expect("writer").expect("write");
        assert!(back == data, "churn: bytes altered");
        finish(conn, "churn");
        direct.add(data.len(), data.len());
        thread::sleep(Duration::from_millis(200));
    }
    spawn(&mut workers, "churn", 4, churn);

    // Hostile clients to the same chain.
    fn hostile_client(_: u16, server_port: u16, rng: &mut Rng, _: &Tally, direct: &Tally) {
        let data = app_bytes(rng, 16, 2048);
        let kind = rng.below(5);
        // (sent, what reaches the backend and comes back)
        let (sent, echoed) = match kind {
            // Not a frame: passes untouched.
            0 => (data.clone(), data.clone()),
            // A provable frame (a valid `Any`) of the wrong type: removed, the rest passes.
            1 => ([wrong_type_frame(), data.clone()].concat(), data.clone()),
            // A length over the cap: not a frame we hold, everything passes.
            2 => {
                let len = CAP as u32 + 1 + rng.below(1000) as u32;
                let bytes = [header(len), data.clone()].concat();
                (bytes.clone(), bytes)
            }
            // A valid header around bytes that are no protobuf (wire type 7): no proof of a
            // frame on a detect chain, everything passes, header included.
            3 => {
                let garbage_len = 1 + rng.below(200);
                let garbage = [vec![0x07], rng.bytes(garbage_len)].concat();
                let bytes = [frame_with_payload(&garbage), data.clone()].concat();
                (bytes.clone(), bytes)
            }
            // Plain bytes, then a reset once the echo is back.
            _ => (data.clone(), data.clone()),
        };
        let mut conn = connect(server_port);
        write_and_expect(&mut conn, &sent, &echoed, "hostile");
        if kind == 4 {
            reset(conn);
        } else {
            finish(conn, "hostile");
        }
        direct.add(echoed.len(), echoed.len());
        thread::sleep(Duration::from_millis(300));
    }
    spawn(&mut workers, "hostile", 5, hostile_client);

    // Long-lived connections: a chunk each every second.
    let long = {
        let (stop, mt, cp) = (stop.clone(), mesh_tally.clone(), mesh.client_port);
        thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 6);
            let mut conns: Vec<(TcpStream, usize)> =
                (0..LONG_LIVED).map(|_| (connect(cp), 0)).collect();
            while !stop.load(Ordering::SeqCst) {
                for (conn, moved) in conns.iter_mut() {
                    let data = app_bytes(&mut rng, 64, 512);
                    write_and_expect(conn, &data, &data, "long-lived");
                    *moved += data.len();
                }
                thread::sleep(Duration::from_secs(1));
            }
            for (conn, moved) in conns {
                finish(conn, "long-lived");
                mt.add(moved, moved);
            }
        })
    };

    // Sampling.
    let start = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let sample = |rows: &mut Vec<_>| {
        let t = start.elapsed().as_secs_f64();
        let row = [memory(&mesh.client), memory(server)];
        println!(
            "soak: t={t:>6.0}s client rss={} alloc={} wasm={} | server rss={} alloc={} wasm={}",
            row[0].0, row[0].1, row[0].2, row[1].0, row[1].1, row[1].2
        );
        rows.push((t, row));
    };
    sample(&mut rows);
    while start.elapsed() < Duration::from_secs(seconds) {
        let next = Duration::from_secs(period * rows.len() as u64);
        thread::sleep(next.saturating_sub(start.elapsed()));
        assert!(
            !workers.iter().any(|w| w.is_finished()),
            "a traffic thread failed"
        );
        sample(&mut rows);
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("traffic thread (see its panic above)");
    }
    long.join().expect("long-lived thread");

    if let Ok(path) = std::env::var("SOAK_SAMPLES") {
        let mut csv = String::from(
            "seconds,client_rss,client_allocated,client_wasm,server_rss,server_allocated,server_wasm\n",
        );
        for (t, r) in &rows {
            csv.push_str(&format!(
                "{t:.0},{},{},{},{},{},{}\n",
                r[0].0, r[0].1, r[0].2, r[1].0, r[1].1, r[1].2
            ));
        }
        fs::write(&path, csv).unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    // Counters: exactly what the clients moved.
    let (m_conns, m_to, m_from) = mesh_tally.get();
    let (d_conns, d_to, d_from) = direct_tally.get();
    println!(
        "soak: mesh {m_conns} connections ({m_to} B each way), direct {d_conns} ({d_to} B to, {d_from} B from)"
    );
    wait_sums(
        &mesh.client,
        "client (source)",
        &[
            (OPENED, m_conns),
            (CLOSED, m_conns),
            (RECEIVED, m_to),
            (SENT, m_from),
        ],
        WAIT,
    );
    wait_sums(
        server,
        "server (destination)",
        &[
            (OPENED, m_conns + d_conns),
            (CLOSED, m_conns + d_conns),
            (RECEIVED, m_to + d_to),
            (SENT, m_from + d_from),
        ],
        WAIT,
    );
    for envoy in [&mesh.client, server] {
        let folded: f64 = parse_prometheus(&envoy.prometheus())
            .iter()
            .filter(|s| s.name == "istio_tcp_stats_series_folded_total")
            .map(|s| s.value)
            .sum();
        assert_eq!(folded, 0.0, "no series folded within the cap");
    }
    let peers = parse_prometheus(&server.prometheus())
        .iter()
        .filter(|s| s.name == OPENED)
        .filter(|s| {
            s.labels
                .get("source_workload")
                .is_some_and(|w| w.starts_with("soak-peer-"))
        })
        .count();
    assert!(
        peers > 1 && peers <= PEERS,
        "churn made {peers} peer series"
    );
    assert_unharmed(&mesh.client, "client after the soak", &health.0);
    assert_unharmed(server, "server after the soak", &health.1);

    // Memory slope after the warm-up.
    let warm = (seconds as f64 / 4.0).max(period as f64);
    let after: Vec<&Row> = rows.iter().filter(|(t, _)| *t >= warm).collect();
    let window = after.last().map(|l| l.0).unwrap_or(0.0) - warm;
    let gate = window >= 300.0;
    let ts: Vec<f64> = after.iter().map(|r| r.0).collect();
    let mut failures = Vec::new();
    for (side, i) in [("client", 0), ("server", 1)] {
        for (what, pick) in [("rss", 0usize), ("allocated", 1), ("wasm", 2)] {
            let ys: Vec<f64> = after
                .iter()
                .map(|r| {
                    let m = r.1[i];
                    [m.0, m.1, m.2][pick] as f64
                })
                .collect();
            if ys.len() < 2 {
                continue;
            }
            let slope = slope_per_10min(&ts, &ys) * 100.0;
            println!("soak: {side} {what}: slope {slope:+.3} % per 10 min after {warm:.0} s");
            if gate && slope > 1.0 {
                failures.push(format!("{side} {what}: {slope:+.3} % per 10 min"));
            }
        }
    }
    if !gate {
        println!("soak: {window:.0} s after the warm-up: slope gate needs 300 s (make soak)");
    }
    assert!(failures.is_empty(), "memory grows: {failures:?}");
}
