//! `make bench`: what the two Wasm filters cost, side by side against plain Envoy, in one run.
//!
//! Two copies of the same topology run at once on loopback, each with the same Envoy binary and
//! `--concurrency 2`:
//!
//! ```text
//! load generator ──▶ client sidecar (outbound) ──▶ server sidecar (inbound) ──▶ backend
//! ```
//! - **A**: `envoy/sidecar-client.yaml` and `envoy/sidecar-server.yaml` with every
//!   `envoy.filters.network.wasm` entry removed at render time (tcp_proxy only, same listeners,
//!   tls_inspector, access logs, clusters and stats_tags);
//! - **B**: the same templates as shipped: `istio_tcp_stats` + `istio_metadata_exchange` on both
//!   sidecars (plaintext; the server's plaintext chain in detect mode, as the tests' mesh).
//!
//! Every measurement runs A then B, several pairs per workload, and reports medians, the
//! min–max spread and the B/A ratio of each pair (interleaving is what keeps ratios fair on a
//! noisy machine). Workloads: bulk throughput (1 and 4 streams, both directions), short
//! connections (connect, 64 B request/response, close), 64 B request/response on persistent
//! connections (requests/s, p50/p99), memory per live exchanged connection (1k, 5k, 10k held
//! open), and the module's size and idle memory. The table goes to the terminal and to
//! `docs/BENCHMARKS.md` (between the `bench:begin`/`bench:end` markers).
//!
//! The backend runs in a child process (this binary again, `TCP_BENCH_ROLE=backend`) so that
//! neither process needs more file descriptors than the hard limit allows.
//!
//! Knobs (environment): `BENCH_PAIRS` (pairs per workload, default 5), `BENCH_SECONDS` (seconds
//! per throughput measurement, default 2.5), `BENCH_CONNS` (memory levels, default
//! `1000,5000,10000`), `BENCH_WORKLOADS` (default `memory,bulk,short,rr`), `BENCH_OUT` (markdown file, default `docs/BENCHMARKS.md`; `-` for none).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    free_port, manifest_dir, stats_tags, wasm_module, yaml_single_quoted, Envoy, TempDir,
    MONGODB_ENDPOINT_WORKLOAD, MONGODB_NODE_ID, MONGODB_NODE_METADATA, RATINGS_NODE_ID,
    RATINGS_NODE_METADATA, SERVICE_HOST, SERVICE_NAME, SERVICE_NAMESPACE, SERVICE_PORT,
};

/// Request and response size of the request/response workloads.
const MSG: usize = 64;
/// Write/read chunk of the bulk workloads.
const CHUNK: usize = 256 * 1024;
/// Warm-up before each timed window.
const WARMUP: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Small system helpers (std only; the C library is linked anyway)

mod sys {
    use std::os::raw::c_int;

    /// `struct rlimit` (rlim_t is 64 bits on Linux).
    #[repr(C)]
    struct RLimit {
        cur: u64,
        max: u64,
    }

    extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
    }

    const RLIMIT_NOFILE: c_int = 7;

    /// Raises the soft open-files limit to the hard one (children inherit it); the hard limit.
    pub fn raise_nofile() -> u64 {
        let mut l = RLimit { cur: 0, max: 0 };
        // SAFETY: plain syscalls on a local struct.
        unsafe {
            if getrlimit(RLIMIT_NOFILE, &mut l) != 0 {
                return 1024;
            }
            l.cur = l.max;
            setrlimit(RLIMIT_NOFILE, &l);
        }
        l.max
    }
}

fn elapsed_tag(start: Instant) -> String {
    let s = start.elapsed().as_secs();
    format!("[{:02}:{:02}]", s / 60, s % 60)
}

macro_rules! progress {
    ($start:expr, $($arg:tt)*) => {{
        println!("{} {}", elapsed_tag($start), format!($($arg)*));
        let _ = io::stdout().flush();
    }};
}

// ---------------------------------------------------------------------------------------------
// Backend (child process)

/// The backend's protocol: the first byte of a connection says what it wants.
/// `S` sink (read to EOF), `G` generate (write until the peer goes away), `E` echo (the byte is
/// part of the first message), `H` hold (echo one 64-byte message, then keep the connection open
/// without a thread), `D` drop every held connection and answer their count (8 bytes LE).
fn backend_main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    println!("{}", listener.local_addr().unwrap().port());
    let _ = io::stdout().flush();
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..48 {
        let rx = Arc::clone(&rx);
        let held = Arc::clone(&held);
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || loop {
                let conn = match rx.lock().unwrap().recv() {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let _ = serve(conn, &held);
            })
            .expect("backend worker");
    }
    // Exits with the parent: stdin closes when the bench ends or dies.
    thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    for conn in listener.incoming().flatten() {
        let _ = tx.send(conn);
    }
}

fn serve(mut conn: TcpStream, held: &Mutex<Vec<TcpStream>>) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut first = [0u8; 1];
    conn.read_exact(&mut first)?;
    match first[0] {
        b'S' => {
            let mut buf = vec![0u8; CHUNK];
            while conn.read(&mut buf)? > 0 {}
            Ok(())
        }
        b'G' => {
            let buf = vec![0x5Au8; CHUNK];
            loop {
                conn.write_all(&buf)?;
            }
        }
        b'H' => {
            let mut msg = [0u8; MSG];
            msg[0] = first[0];
            conn.read_exact(&mut msg[1..])?;
            conn.write_all(&msg)?;
            held.lock().unwrap().push(conn);
            Ok(())
        }
        b'D' => {
            let dropped = std::mem::take(&mut *held.lock().unwrap());
            let n = dropped.len() as u64;
            drop(dropped);
            conn.write_all(&n.to_le_bytes())
        }
        _ => {
            conn.write_all(&first)?;
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                conn.write_all(&buf[..n])?;
            }
        }
    }
}

struct BackendProcess {
    child: Child,
    port: u16,
}

impl BackendProcess {
    fn start() -> BackendProcess {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env("TCP_BENCH_ROLE", "backend")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the backend process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("backend port");
        let port = line.trim().parse().expect("backend port number");
        BackendProcess { child, port }
    }

    /// Closes every held connection; how many there were.
    fn drop_held(&self) -> u64 {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("backend control");
        c.write_all(b"D").unwrap();
        let mut n = [0u8; 8];
        c.read_exact(&mut n).unwrap();
        u64::from_le_bytes(n)
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Topology

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// tcp_proxy only.
    A,
    /// exchange + stats on both sidecars.
    B,
}

/// Removes every list item whose block holds an `envoy.filters.network.wasm` filter (the wasm
/// filter entries of a `filters:` list), keeping everything else byte for byte.
fn strip_wasm_filters(template: &str) -> String {
    let lines: Vec<&str> = template.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = String::with_capacity(template.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with("- ") {
            let item_indent = indent(line);
            let mut end = i + 1;
            while end < lines.len() {
                let l = lines[end];
                let blank_or_comment = l.trim().is_empty() || l.trim_start().starts_with('#');
                if !blank_or_comment && indent(l) <= item_indent {
                    break;
                }
                end += 1;
            }
            let block = &lines[i..end];
            let is_wasm_filter = block
                .iter()
                .any(|l| l.contains("type.googleapis.com/envoy.extensions.filters.network.wasm"));
            let holds_other_items = block[1..]
                .iter()
                .any(|l| l.trim_start().starts_with("- ") && indent(l) > item_indent);
            if is_wasm_filter && !holds_other_items {
                i = end;
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
}

/// Fills `{{NAME}}` placeholders (comment lines dropped first, as `support::render` does).
/// Parameters the text does not use are allowed (the stripped templates lack the Wasm ones).
fn render_text(text: &str, params: &[(&str, String)]) -> String {
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| [l, "\n"])
        .collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("unterminated placeholder");
        let name = &after[..end];
        let value = params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no value for {{{{{name}}}}}"));
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

struct Sidecars {
    variant: Variant,
    client: Envoy,
    server: Envoy,
    client_port: u16,
    _dir: TempDir,
}

/// Envoy's default circuit breakers cap a cluster at 1024 connections; Istio's sidecars lift
/// them (`max_connections: 4294967295`, …) and so does the bench, for both variants alike, so
/// that 10k connections can be held.
fn lift_circuit_breakers(template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 512);
    for line in template.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start() == "connect_timeout: 5s" {
            let pad = &line[..line.len() - line.trim_start().len()];
            for l in [
                "circuit_breakers:",
                "  thresholds:",
                "  - max_connections: 4294967295",
                "    max_pending_requests: 4294967295",
                "    max_requests: 4294967295",
            ] {
                out.push_str(pad);
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// The bench's copy of a shipped template: circuit breakers lifted; for A, no Wasm filters.
fn template(name: &str, variant: Variant) -> String {
    let path = manifest_dir().join("envoy").join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = lift_circuit_breakers(&text);
    assert!(
        text.contains("max_connections: 4294967295"),
        "{name}: no cluster found"
    );
    match variant {
        Variant::A => strip_wasm_filters(&text),
        Variant::B => text,
    }
}

impl Sidecars {
    fn start(variant: Variant, backend_port: u16) -> Sidecars {
        let name = format!("bench-{variant:?}").to_lowercase();
        let dir = TempDir::new(&name);
        let wasm = wasm_module().display().to_string();
        let common = [
            ("STATS_TAGS", stats_tags()),
            ("SERVICE_HOST", SERVICE_HOST.to_string()),
            ("SERVICE_NAME", SERVICE_NAME.to_string()),
            ("SERVICE_NAMESPACE", SERVICE_NAMESPACE.to_string()),
            ("SERVICE_PORT", SERVICE_PORT.to_string()),
            ("ADMIN_PORT", "0".to_string()),
            ("WASM_PATH", wasm),
            ("STATS_CONFIG", yaml_single_quoted("{}")),
        ];
        // Certificates are only read by the (unused) mTLS chain; any readable PEM paths do.
        let certs = support::make_mtls_certs(&dir.path().join("certs"));
        let path = |p: &PathBuf| p.display().to_string();
        let mut server_params = vec![
            ("LISTENER_PORT", free_port().to_string()),
            ("NODE_ID", MONGODB_NODE_ID.to_string()),
            ("NODE_METADATA", MONGODB_NODE_METADATA.to_string()),
            (
                "EXCHANGE_CONFIG_MTLS",
                yaml_single_quoted(r#"{"side":"server","server_mode":"expect"}"#),
            ),
            (
                "EXCHANGE_CONFIG_PLAIN",
                yaml_single_quoted(r#"{"side":"server","server_mode":"detect"}"#),
            ),
            ("BACKEND_PORT", backend_port.to_string()),
            ("CERT_CHAIN", path(&certs.server_cert)),
            ("PRIVATE_KEY", path(&certs.server_key)),
            ("CA_CERT", path(&certs.ca_cert)),
            ("ACCESS_LOG", dir.file("server-access.log")),
        ];
        server_params.extend(common.iter().cloned());
        let server_yaml = render_text(&template("sidecar-server.yaml", variant), &server_params);
        fs::write(dir.path().join("server.yaml"), &server_yaml).unwrap();
        let server = start_envoy(&format!("{name}-server"), &server_yaml);
        let server_port = server.listener_port("inbound");

        let mut client_params = vec![
            ("LISTENER_PORT", free_port().to_string()),
            ("NODE_ID", RATINGS_NODE_ID.to_string()),
            ("NODE_METADATA", RATINGS_NODE_METADATA.to_string()),
            (
                "EXCHANGE_CONFIG",
                yaml_single_quoted(r#"{"side":"client"}"#),
            ),
            ("UPSTREAM_PORT", server_port.to_string()),
            ("TLS_MODE", "istio".to_string()),
            ("ENDPOINT_WORKLOAD", MONGODB_ENDPOINT_WORKLOAD.to_string()),
            ("ACCESS_LOG", dir.file("client-access.log")),
        ];
        client_params.extend(common.iter().cloned());
        let client_yaml = render_text(&template("sidecar-client.yaml", variant), &client_params);
        fs::write(dir.path().join("client.yaml"), &client_yaml).unwrap();
        let client = start_envoy(&format!("{name}-client"), &client_yaml);
        let client_port = client.listener_port("outbound");
        let wasm_filters = client_yaml.matches("wasm.v3.Wasm").count()
            + server_yaml.matches("wasm.v3.Wasm").count();
        match variant {
            Variant::A => assert_eq!(wasm_filters, 0, "variant A must have no Wasm filter"),
            Variant::B => assert_eq!(wasm_filters, 6, "variant B: 2 client + 4 server filters"),
        }
        Sidecars {
            variant,
            client,
            server,
            client_port,
            _dir: dir,
        }
    }

    fn envoys(&self) -> [(&'static str, &Envoy); 2] {
        [("client", &self.client), ("server", &self.server)]
    }
}

fn start_envoy(name: &str, yaml: &str) -> Envoy {
    Envoy::builder(name, yaml)
        .concurrency(2)
        .log_level("warning")
        .start()
}

/// Envoy's heap in use (`/memory` allocated) and the process's resident set.
#[derive(Clone, Copy, Default)]
struct Mem {
    allocated: f64,
    rss: f64,
}

fn memory(envoy: &Envoy) -> Mem {
    let body = envoy.admin("/memory");
    let allocated = body
        .split("\"allocated\"")
        .nth(1)
        .and_then(|rest| {
            rest.chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(f64::NAN);
    let status = fs::read_to_string(format!("/proc/{}/status", envoy.pid())).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0);
    Mem { allocated, rss }
}

/// CPU time (user + system) an Envoy has used so far, in µs.
fn cpu_us(envoy: &Envoy) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{}/stat", envoy.pid())).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks * 1e6 / 100.0 // USER_HZ is 100 on Linux
}

fn sidecars_cpu_us(s: &Sidecars) -> f64 {
    cpu_us(&s.client) + cpu_us(&s.server)
}

/// Sum of the listeners' `downstream_cx_active` (0 once every proxied connection is gone).
fn active_connections(envoy: &Envoy) -> u64 {
    envoy
        .admin("/stats?filter=downstream_cx_active")
        .lines()
        .filter(|l| l.starts_with("listener.") && !l.starts_with("listener.admin"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

fn wait_idle(s: &Sidecars) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if active_connections(&s.client) == 0 && active_connections(&s.server) == 0 {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Load generators

fn connect(port: u16) -> io::Result<TcpStream> {
    let c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(c)
}

fn request(first: u8) -> [u8; MSG] {
    let mut msg = [b'x'; MSG];
    msg[0] = first;
    msg
}

/// Bulk transfer for `secs` after the warm-up: MB/s (10^6 bytes) summed over `streams`, and
/// every byte moved (warm-up included).
fn bulk(port: u16, streams: usize, upload: bool, secs: Duration) -> (f64, u64) {
    let counted = Arc::new(AtomicU64::new(0));
    let moved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (from, to) = (start + WARMUP, start + WARMUP + secs);
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            let counted = Arc::clone(&counted);
            let moved = Arc::clone(&moved);
            thread::spawn(move || {
                let mut c = connect(port).expect("connect");
                let mut buf = vec![0xA5u8; CHUNK];
                let mut mine = 0u64;
                let mut all = 0u64;
                c.write_all(if upload { b"S" } else { b"G" }).unwrap();
                loop {
                    let n = if upload {
                        c.write(&buf)
                    } else {
                        c.read(&mut buf)
                    };
                    let n = match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    all += n as u64;
                    let now = Instant::now();
                    if now >= to {
                        break;
                    }
                    if now >= from {
                        mine += n as u64;
                    }
                }
                counted.fetch_add(mine, Ordering::Relaxed);
                moved.fetch_add(all, Ordering::Relaxed);
                let _ = c.shutdown(Shutdown::Both);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (
        counted.load(Ordering::Relaxed) as f64 / secs.as_secs_f64() / 1e6,
        moved.load(Ordering::Relaxed),
    )
}

struct Rate {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Latencies (µs) of the operations finished inside the window, from every thread.
fn window_run(
    threads: usize,
    secs: Duration,
    op: impl Fn(&mut Option<TcpStream>) -> io::Result<()> + Send + Sync + 'static,
) -> Rate {
    let op = Arc::new(op);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (from, to) = (start + WARMUP, start + WARMUP + secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let op = Arc::clone(&op);
            let errors = Arc::clone(&errors);
            thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut conn = None;
                loop {
                    let t = Instant::now();
                    if t >= to {
                        break;
                    }
                    match op(&mut conn) {
                        Ok(()) => {
                            let done = Instant::now();
                            if t >= from && done <= to {
                                lat.push((done - t).as_secs_f64() * 1e6);
                            }
                        }
                        Err(_) => {
                            conn = None;
                            errors.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    Rate {
        per_sec: lat.len() as f64 / secs.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Connect, 64-byte request, 64-byte response, close (no half-close before the reply).
fn short_connections(port: u16, threads: usize, secs: Duration) -> Rate {
    window_run(threads, secs, move |_| {
        let mut c = connect(port)?;
        c.write_all(&request(b'E'))?;
        let mut reply = [0u8; MSG];
        c.read_exact(&mut reply)?;
        Ok(())
    })
}

/// 64-byte request/response on `conns` persistent connections.
fn request_response(port: u16, conns: usize, secs: Duration) -> Rate {
    window_run(conns, secs, move |conn| {
        if conn.is_none() {
            let c = connect(port)?;
            *conn = Some(c);
        }
        let c = conn.as_mut().unwrap();
        c.write_all(&request(b'E'))?;
        let mut reply = [0u8; MSG];
        c.read_exact(&mut reply)
    })
}

/// Opens `n` connections that each exchange one 64-byte message and then stay open.
fn hold_connections(port: u16, n: usize) -> io::Result<Vec<TcpStream>> {
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let count = n / threads + usize::from(t < n % threads);
            thread::spawn(move || -> io::Result<Vec<TcpStream>> {
                let mut held = Vec::with_capacity(count);
                for _ in 0..count {
                    let opened = (|| -> io::Result<TcpStream> {
                        let mut c = connect(port)?;
                        c.write_all(&request(b'H'))?;
                        let mut reply = [0u8; MSG];
                        c.read_exact(&mut reply)?;
                        Ok(c)
                    })();
                    match opened {
                        Ok(c) => held.push(c),
                        Err(e) => {
                            eprintln!("connection {} of this thread: {e}", held.len());
                            return Err(e);
                        }
                    }
                }
                Ok(held)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut first_error = None;
    for h in handles {
        match h.join().unwrap() {
            Ok(v) => all.extend(v),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(io::Error::new(
            e.kind(),
            format!("{e} (about {} of {n} connections were open)", all.len()),
        )),
        None => Ok(all),
    }
}

// ---------------------------------------------------------------------------------------------
// Results

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

#[derive(Clone, Copy)]
enum Target {
    /// B/A at least this (higher is better).
    RatioAtLeast(f64),
    /// B/A at most this (lower is better).
    RatioAtMost(f64),
    /// B−A at most this.
    DeltaAtMost(f64),
    /// B at most this.
    ValueAtMost(f64),
    /// No target; show B−A rather than B/A.
    Delta,
    None,
}

/// One row of the table: pairs of (A, B) measurements.
struct Row {
    figure: String,
    unit: &'static str,
    a: Vec<f64>,
    b: Vec<f64>,
    target: Target,
    note: String,
}

impl Row {
    fn new(figure: impl Into<String>, unit: &'static str, target: Target) -> Row {
        Row {
            figure: figure.into(),
            unit,
            a: Vec::new(),
            b: Vec::new(),
            target,
            note: String::new(),
        }
    }

    fn ratios(&self) -> Vec<f64> {
        self.a.iter().zip(&self.b).map(|(a, b)| b / a).collect()
    }

    fn holds(&self) -> Option<bool> {
        let r = median(&self.ratios());
        let d = median(&self.b) - median(&self.a);
        match self.target {
            Target::RatioAtLeast(t) => Some(r >= t),
            Target::RatioAtMost(t) => Some(r <= t),
            Target::DeltaAtMost(t) => Some(d <= t),
            Target::ValueAtMost(t) => Some(median(&self.b) <= t),
            Target::Delta | Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        let verdict = match self.holds() {
            Some(true) => " ✅",
            Some(false) => " ❌",
            None => "",
        };
        let t = match self.target {
            Target::RatioAtLeast(t) => format!("B/A ≥ {t:.2}"),
            Target::RatioAtMost(t) => format!("B/A ≤ {t:.2}"),
            Target::DeltaAtMost(t) => format!("B−A ≤ {}", num(t)),
            Target::ValueAtMost(t) => format!("≤ {}", num(t)),
            Target::Delta | Target::None => "—".to_string(),
        };
        format!("{t}{verdict}")
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_string();
    }
    let a = x.abs();
    if a >= 10_000.0 {
        let s = format!("{:.0}", x);
        // thousands separators
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn spread(v: &[f64]) -> String {
    if v.len() < 2 {
        return num(median(v));
    }
    let (lo, hi) = min_max(v);
    format!("{} ({}–{})", num(median(v)), num(lo), num(hi))
}

fn ratio_spread(v: &[f64]) -> String {
    if v.is_empty() || v.iter().all(|x| !x.is_finite()) {
        return "—".to_string();
    }
    if v.len() < 2 {
        return format!("{:.3}", median(v));
    }
    let (lo, hi) = min_max(v);
    format!("{:.3} ({:.3}–{:.3})", median(v), lo, hi)
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| figure | unit | A: tcp_proxy only | B: + exchange + stats | B/A per pair | target |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---|\n");
    for r in rows {
        let ratio = match r.target {
            Target::ValueAtMost(_) => "—".to_string(),
            Target::DeltaAtMost(_) | Target::Delta => {
                format!("B−A = {}", num(median(&r.b) - median(&r.a)))
            }
            _ => ratio_spread(&r.ratios()),
        };
        let figure = if r.note.is_empty() {
            r.figure.clone()
        } else {
            format!("{} ({})", r.figure, r.note)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            figure,
            r.unit,
            spread(&r.a),
            spread(&r.b),
            ratio,
            r.target_text()
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The machine

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let envoy = Command::new(support::envoy_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let envoy = envoy
        .split("version:")
        .nth(1)
        .map(str::trim)
        .map(|v| match v.split('/').nth(1) {
            Some(release) => format!("{release} (`{v}`)"),
            None => v.to_string(),
        })
        .unwrap_or(envoy);
    format!(
        "- CPU: {cpu}, {cores} cores (nproc), {:.0} GiB memory, Linux {}\n\
         - Envoy: {envoy}, runtime `envoy.wasm.runtime.v8`, `--concurrency 2` for every sidecar\n",
        mem_kb / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces the text between the bench markers of `path` (or writes a new file).
fn write_markdown(path: &Path, section: &str) {
    const BEGIN: &str = "<!-- bench:begin (written by `make bench`; edits inside are lost) -->";
    const END: &str = "<!-- bench:end -->";
    let old = fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}{END}");
    let new = match (old.find("<!-- bench:begin"), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &old[..b], block, &old[e + END.len()..])
        }
        _ if old.is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    fs::write(path, new).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// Main

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var("TCP_BENCH_ROLE").as_deref() == Ok("backend") {
        backend_main();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: only run
    // when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("tcp_bench: run with `make bench` (or `cargo bench --bench tcp_bench`)");
        return;
    }
    let start = Instant::now();
    let pairs: usize = env_or("BENCH_PAIRS", 5).max(1);
    let secs = Duration::from_secs_f64(env_or("BENCH_SECONDS", 2.5f64).max(0.5));
    let hard_limit = sys::raise_nofile();
    // Each proxied connection costs an Envoy two descriptors (downstream and upstream).
    let max_conns = ((hard_limit.saturating_sub(200)) / 2 / 100 * 100) as usize;
    let levels: Vec<usize> = std::env::var("BENCH_CONNS")
        .unwrap_or_else(|_| "1000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let workloads =
        std::env::var("BENCH_WORKLOADS").unwrap_or_else(|_| "memory,bulk,short,rr".into());
    let run = |w: &str| workloads.split(',').any(|x| x.trim() == w);
    let out_path = std::env::var("BENCH_OUT").unwrap_or_else(|_| "docs/BENCHMARKS.md".into());
    let command =
        std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "cargo bench --bench tcp_bench".into());
    let module = wasm_module();
    let module_size = fs::metadata(&module).map_or(0, |m| m.len());
    let load_before = loadavg();

    progress!(start, "tcp_bench: {pairs} pairs per workload, {secs:?} windows; module {} ({} bytes); load {load_before}", module.display(), module_size);
    let backend = BackendProcess::start();
    progress!(start, "backend process on port {}", backend.port);
    let a = Sidecars::start(Variant::A, backend.port);
    progress!(start, "A (tcp_proxy only) ready: client :{}", a.client_port);
    let b = Sidecars::start(Variant::B, backend.port);
    progress!(
        start,
        "B (exchange + stats) ready: client :{}",
        b.client_port
    );
    let both = [&a, &b];

    let mut rows: Vec<Row> = Vec::new();

    // 5. Module size and idle memory (first: before any traffic).
    thread::sleep(Duration::from_secs(1));
    let mut size_row = Row::new("module size", "KiB", Target::ValueAtMost(250.0));
    size_row.a.push(f64::NAN); // no module in A
    size_row.b.push(module_size as f64 / 1024.0);
    rows.push(size_row);
    for who in 0..2 {
        let name = ["client", "server"][who];
        let mut alloc = Row::new(
            format!("idle {name} sidecar, heap allocated"),
            "KiB",
            Target::None,
        );
        let mut rss = Row::new(format!("idle {name} sidecar, RSS"), "KiB", Target::None);
        for s in both {
            let m = memory(s.envoys()[who].1);
            let (ra, rr) = match s.variant {
                Variant::A => (&mut alloc.a, &mut rss.a),
                Variant::B => (&mut alloc.b, &mut rss.b),
            };
            ra.push(m.allocated / 1024.0);
            rr.push(m.rss / 1024.0);
        }
        alloc.target = Target::Delta;
        rss.target = Target::Delta;
        rows.push(alloc);
        rows.push(rss);
    }
    progress!(start, "idle memory read");

    // 4. Memory per live, exchanged connection.
    for &level in levels.iter().filter(|_| run("memory")) {
        let n = level.min(max_conns);
        let mut per_conn = [
            Row::new(
                format!(
                    "memory per live connection, {} held, client sidecar",
                    num(n as f64)
                ),
                "B/conn",
                Target::DeltaAtMost(1024.0),
            ),
            Row::new(
                format!(
                    "memory per live connection, {} held, server sidecar",
                    num(n as f64)
                ),
                "B/conn",
                Target::DeltaAtMost(1024.0),
            ),
        ];
        if n < level {
            for r in &mut per_conn {
                r.note = format!("{level} asked; the fd hard limit {hard_limit} allows {n}");
            }
        }
        for s in both {
            wait_idle(s);
            let before: Vec<Mem> = s.envoys().iter().map(|(_, e)| memory(e)).collect();
            let held = match hold_connections(s.client_port, n) {
                Ok(h) => h,
                Err(e) => panic!("holding {n} connections through {:?}: {e}", s.variant),
            };
            thread::sleep(Duration::from_millis(700));
            let after: Vec<Mem> = s.envoys().iter().map(|(_, e)| memory(e)).collect();
            for who in 0..2 {
                let per = (after[who].allocated - before[who].allocated) / n as f64;
                match s.variant {
                    Variant::A => per_conn[who].a.push(per),
                    Variant::B => per_conn[who].b.push(per),
                }
            }
            let rss_per: Vec<String> = (0..2)
                .map(|w| num((after[w].rss - before[w].rss) / n as f64))
                .collect();
            drop(held);
            let dropped = backend.drop_held();
            progress!(
                start,
                "memory {:?}: {n} connections held (backend held {dropped}); allocated/conn client {} server {}, RSS/conn client {} server {}",
                s.variant,
                num((after[0].allocated - before[0].allocated) / n as f64),
                num((after[1].allocated - before[1].allocated) / n as f64),
                rss_per[0],
                rss_per[1]
            );
            wait_idle(s);
        }
        rows.extend(per_conn);
    }

    // 1. Bulk throughput.
    let bulk_cases = if run("bulk") {
        vec![(1, true), (1, false), (4, true), (4, false)]
    } else {
        vec![]
    };
    for (streams, upload) in bulk_cases {
        let dir = if upload {
            "upload (client → backend)"
        } else {
            "download (backend → client)"
        };
        let mut row = Row::new(
            format!(
                "bulk, {streams} stream{}, {dir}",
                if streams > 1 { "s" } else { "" }
            ),
            "MB/s",
            Target::RatioAtLeast(0.97),
        );
        let mut cpu = Row::new(
            format!(
                "bulk, {streams}×{}: Envoy CPU per MB (both sidecars)",
                if upload { "up" } else { "down" }
            ),
            "µs/MB",
            Target::None,
        );
        for i in 0..pairs {
            for s in both {
                wait_idle(s);
                let cpu0 = sidecars_cpu_us(s);
                let (v, moved) = bulk(s.client_port, streams, upload, secs);
                let per_mb = (sidecars_cpu_us(s) - cpu0) / (moved as f64 / 1e6);
                match s.variant {
                    Variant::A => {
                        row.a.push(v);
                        cpu.a.push(per_mb);
                    }
                    Variant::B => {
                        row.b.push(v);
                        cpu.b.push(per_mb);
                    }
                }
            }
            progress!(
                start,
                "bulk {streams}×{} pair {}/{pairs}: A {} B {} MB/s",
                if upload { "up" } else { "down" },
                i + 1,
                num(row.a[i]),
                num(row.b[i])
            );
        }
        rows.push(row);
        rows.push(cpu);
    }

    // 2. Short connections.
    if run("short") {
        let threads = 4;
        let mut rate = Row::new(
            format!("short connections ({threads} clients): connect, 64 B request/response, close"),
            "conn/s",
            Target::RatioAtLeast(0.92),
        );
        let mut p50 = Row::new("short connections: p50 connection time", "µs", Target::None);
        let mut cpu = Row::new(
            "short connections: Envoy CPU per connection (both sidecars)",
            "µs",
            Target::None,
        );
        let mut errors = 0;
        for i in 0..pairs {
            for s in both {
                wait_idle(s);
                let cpu0 = sidecars_cpu_us(s);
                let r = short_connections(s.client_port, threads, secs);
                // Connections of the warm-up and the window both cost CPU: divide by all.
                let per_conn =
                    (sidecars_cpu_us(s) - cpu0) / (r.per_sec * (secs + WARMUP).as_secs_f64());
                errors += r.errors;
                match s.variant {
                    Variant::A => {
                        rate.a.push(r.per_sec);
                        p50.a.push(r.p50_us);
                        cpu.a.push(per_conn);
                    }
                    Variant::B => {
                        rate.b.push(r.per_sec);
                        p50.b.push(r.p50_us);
                        cpu.b.push(per_conn);
                    }
                }
            }
            progress!(
                start,
                "short connections pair {}/{pairs}: A {} B {} conn/s",
                i + 1,
                num(rate.a[i]),
                num(rate.b[i])
            );
        }
        if errors > 0 {
            rate.note = format!("{errors} failed attempts");
        }
        rows.push(rate);
        rows.push(p50);
        rows.push(cpu);
    }

    // 3. Request/response on persistent connections.
    let rr_cases: &[usize] = if run("rr") { &[1, 8] } else { &[] };
    for &conns in rr_cases {
        let mut rps = Row::new(
            format!(
                "request/response 64 B, {conns} persistent connection{}",
                if conns > 1 { "s" } else { "" }
            ),
            "req/s",
            Target::None,
        );
        let mut p50 = Row::new(
            format!("request/response, {conns} conn: p50 latency"),
            "µs",
            if conns == 1 {
                Target::RatioAtMost(1.05)
            } else {
                Target::None
            },
        );
        let mut p99 = Row::new(
            format!("request/response, {conns} conn: p99 latency"),
            "µs",
            Target::None,
        );
        let mut cpu = Row::new(
            format!("request/response, {conns} conn: Envoy CPU per request (both sidecars)"),
            "µs",
            Target::None,
        );
        for i in 0..pairs {
            for s in both {
                wait_idle(s);
                let cpu0 = sidecars_cpu_us(s);
                let r = request_response(s.client_port, conns, secs);
                let per_req =
                    (sidecars_cpu_us(s) - cpu0) / (r.per_sec * (secs + WARMUP).as_secs_f64());
                let (x, y, z, c) = match s.variant {
                    Variant::A => (&mut rps.a, &mut p50.a, &mut p99.a, &mut cpu.a),
                    Variant::B => (&mut rps.b, &mut p50.b, &mut p99.b, &mut cpu.b),
                };
                x.push(r.per_sec);
                y.push(r.p50_us);
                z.push(r.p99_us);
                c.push(per_req);
            }
            progress!(
                start,
                "request/response {conns} conn pair {}/{pairs}: A {} B {} req/s, p50 A {} B {} µs",
                i + 1,
                num(rps.a[i]),
                num(rps.b[i]),
                num(p50.a[i]),
                num(p50.b[i])
            );
        }
        rows.push(rps);
        rows.push(p50);
        rows.push(p99);
        rows.push(cpu);
    }

    // Sanity: B really exchanged metadata and counted connections.
    let found = b
        .server
        .counter("wasmcustom.envoy_metadata_exchange.alpn_protocol_found")
        .unwrap_or(0);
    let added = b
        .client
        .counter("wasmcustom.envoy_metadata_exchange.metadata_added")
        .unwrap_or(0);
    let a_stats = a.server.stats();
    assert!(
        !a_stats.contains("wasmcustom.envoy_metadata_exchange"),
        "variant A must not run the exchange"
    );
    progress!(
        start,
        "B sanity: server saw {found} exchange frames, client sent {added}"
    );
    if found == 0 || added == 0 {
        eprintln!("WARNING: variant B did not exchange metadata (is this the real module?)");
    }

    let load_after = loadavg();
    let table = table(&rows);
    let verdicts: Vec<String> = rows
        .iter()
        .filter_map(|r| r.holds().map(|h| (r, h)))
        .map(|(r, h)| format!("{}: {}", r.figure, if h { "holds" } else { "MISSED" }))
        .collect();
    let mut section = String::new();
    let _ = writeln!(section, "## Results\n");
    let _ = writeln!(section, "Command: `{command}` ({} pairs per workload, {:.1} s windows after {} ms warm-up; finished in {} s).\n", pairs, secs.as_secs_f64(), WARMUP.as_millis(), start.elapsed().as_secs());
    section.push_str(&machine());
    let _ = writeln!(
        section,
        "- Module: `{}`, {} bytes",
        module.file_name().unwrap_or_default().to_string_lossy(),
        module_size
    );
    let _ = writeln!(
        section,
        "- Load average (1/5/15 min) before: {load_before}; after: {load_after}"
    );
    let _ = writeln!(section, "- Same backend (a separate process) for both; A and B run side by side, each measurement A then B. Medians, (min–max) over the pairs; `B/A per pair` is the median of the pairs' ratios.\n");
    section.push_str(&table);
    section.push('\n');
    println!("\n{section}");
    for v in &verdicts {
        println!("  {v}");
    }
    if out_path != "-" {
        let path = manifest_dir().join(&out_path);
        write_markdown(&path, &section);
        progress!(start, "table written to {}", path.display());
    }
}
