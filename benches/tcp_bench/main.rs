//! `make bench`: what our Wasm filters cost, side by side against plain Envoy and against a Wasm
//! filter that does nothing, in one run.
//!
//! Copies of the same topology run at once on loopback, each with the same Envoy binary and
//! `--concurrency 2`:
//!
//! ```text
//! load generator ──▶ client sidecar (outbound) ──▶ server sidecar (inbound) ──▶ backend
//! ```
//! - **A**: `envoy/sidecar-client.yaml` and `envoy/sidecar-server.yaml` with every
//!   `envoy.filters.network.wasm` entry removed at render time (tcp_proxy only, same listeners,
//!   tls_inspector, access logs, clusters and stats_tags);
//! - **F**: the floor: the same templates with the do-nothing proxy-wasm filter
//!   (`benches/noop_filter`) where ours is (one filter per chain, same runtime);
//! - **B**: the same templates as shipped: `istio_tcp_telemetry` (exchange + stats in one
//!   context) on both sidecars (plaintext; the server's plaintext chain in detect mode, as the
//!   tests' mesh);
//! - **S**: the two separate filters (`istio_tcp_stats` + `istio_metadata_exchange`), measured
//!   once, on the short-connection workload and idle;
//! - **O**: B with everything beyond Istio's four counters off (the open-connections gauge
//!   dropped; the lifetime histogram and close attributes are off by default), on the
//!   short-connection workload: what those additions cost a user who turns them off.
//!
//! Every measurement runs A, F, B (and S) in turn, several rounds per workload, and reports
//! medians, the min–max spread and the B/A and B/F ratios of each round (interleaving is what
//! keeps ratios fair on a noisy machine). Workloads: bulk throughput (1 and 4 streams, both directions), short
//! connections (connect, 64 B request/response, close), 64 B request/response on persistent
//! connections (requests/s, p50/p99), memory per live exchanged connection (1k, 5k, 10k held
//! open), and the module's size and idle memory. The table goes to the terminal and to
//! `docs/BENCHMARKS.md` (between the `bench:begin`/`bench:end` markers).
//!
//! Layout: [`sidecars`] (the two topologies, on the test kit's mesh), [`backend`], [`load`]
//! (the shared load generator), one module per workload in [`workloads`], [`report`].
//!
//! The backend runs in a child process (this binary again, `TCP_BENCH_ROLE=backend`) so that
//! neither process needs more file descriptors than the hard limit allows.
//!
//! Knobs (environment): `BENCH_PAIRS` (pairs per workload, default 5), `BENCH_SECONDS` (seconds
//! per throughput measurement, default 2.5), `BENCH_CONNS` (memory levels, default
//! `1000,5000,10000`), `BENCH_WORKLOADS` (default `memory,bulk,short,rr`), `BENCH_OUT` (markdown file, default `docs/BENCHMARKS.md`; `-` for none).

mod backend;
mod load;
mod report;
mod sidecars;
mod workloads;

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use backend::BackendProcess;
use load::WARMUP;
use report::{loadavg, machine, table, write_markdown, Row};
use sidecars::{Sidecars, Variant};
use testkit::files::{manifest_dir, wasm_module};

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

/// A workload: measures A, F and B in rounds and adds its rows.
type Workload = fn(&Ctx, &mut Vec<Row>);

/// What every workload needs.
pub struct Ctx<'a> {
    pub start: Instant,
    pub pairs: usize,
    pub secs: Duration,
    /// A, F, B: measured in this order in every round.
    pub variants: [&'a Sidecars; 3],
    /// S: the separate roots, measured after B where a workload says so.
    pub separate: &'a Sidecars,
    /// O: B with everything beyond Istio's four counters off, measured after S where a
    /// workload says so.
    pub extras_off: &'a Sidecars,
    pub backend: &'a BackendProcess,
    pub hard_limit: u64,
    /// Connections one topology can hold within the file-descriptor limit.
    pub max_conns: usize,
    /// `BENCH_CONNS`.
    pub levels: Vec<usize>,
    pub module_size: u64,
    /// The do-nothing module's size.
    pub noop_size: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var("TCP_BENCH_ROLE").as_deref() == Ok("backend") {
        backend::main();
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
    let chosen = std::env::var("BENCH_WORKLOADS").unwrap_or_else(|_| "memory,bulk,short,rr".into());
    let run = |w: &str| chosen.split(',').any(|x| x.trim() == w);
    let out_path = std::env::var("BENCH_OUT").unwrap_or_else(|_| "docs/BENCHMARKS.md".into());
    let command =
        std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "cargo bench --bench tcp_bench".into());
    let module = wasm_module();
    let module_size = fs::metadata(&module).map_or(0, |m| m.len());
    let noop_size = fs::metadata(sidecars::noop_module()).map_or(0, |m| m.len());
    let load_before = loadavg();

    progress!(start, "tcp_bench: {pairs} pairs per workload, {secs:?} windows; module {} ({} bytes); load {load_before}", module.display(), module_size);
    let backend = BackendProcess::start();
    progress!(start, "backend process on port {}", backend.port);
    let a = Sidecars::start(Variant::A, backend.port);
    progress!(
        start,
        "A (tcp_proxy only) ready: client :{}",
        a.client_port()
    );
    let f = Sidecars::start(Variant::F, backend.port);
    progress!(
        start,
        "F (do-nothing Wasm filter) ready: client :{}",
        f.client_port()
    );
    let b = Sidecars::start(Variant::B, backend.port);
    progress!(
        start,
        "B (istio_tcp_telemetry) ready: client :{}",
        b.client_port()
    );
    let sep = Sidecars::start(Variant::S, backend.port);
    progress!(
        start,
        "S (istio_metadata_exchange + istio_tcp_stats) ready: client :{}",
        sep.client_port()
    );
    let off = Sidecars::start(Variant::O, backend.port);
    progress!(
        start,
        "O (istio_tcp_telemetry, only Istio's four counters) ready: client :{}",
        off.client_port()
    );
    let ctx = Ctx {
        start,
        pairs,
        secs,
        variants: [&a, &f, &b],
        separate: &sep,
        extras_off: &off,
        backend: &backend,
        hard_limit,
        max_conns,
        levels,
        module_size,
        noop_size,
    };

    let mut rows: Vec<Row> = Vec::new();
    // Idle first: before any traffic.
    workloads::idle::run(&ctx, &mut rows);
    let all: [(&str, Workload); 4] = [
        ("memory", workloads::memory::run),
        ("bulk", workloads::bulk::run),
        ("short", workloads::short::run),
        ("rr", workloads::rr::run),
    ];
    for (name, workload) in all {
        if run(name) {
            workload(&ctx, &mut rows);
        }
    }

    // Sanity: B really exchanged metadata and counted connections.
    let found = b
        .server()
        .counter("wasmcustom.envoy_metadata_exchange.alpn_protocol_found")
        .unwrap_or(0);
    let added = b
        .client()
        .counter("wasmcustom.envoy_metadata_exchange.metadata_added")
        .unwrap_or(0);
    for floor in [&a, &f] {
        assert!(
            !floor
                .server()
                .stats()
                .contains("wasmcustom.envoy_metadata_exchange"),
            "variants A and F must not run the exchange"
        );
    }
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
    let _ = writeln!(section, "- Same backend (a separate process) for all; A, F, B (and S) run side by side, each round A, F, B, S in turn. Medians, (min–max) over the rounds; `B/A per pair` and `B/F per pair` are the medians of each round's ratios.\n");
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
