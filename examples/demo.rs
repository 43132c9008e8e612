//! `make run`: Istio's TCP telemetry between two real Envoy sidecars, on loopback.
//!
//! ```text
//! demo client ──▶ client sidecar (ratings-v2) ══mTLS══▶ server sidecar (mongodb-v1) ──▶ "mongodb"
//!                 istio_tcp_telemetry (client side)     istio_tcp_telemetry (server)   prefix server
//! ```
//! Both sidecars run the shipped `envoy/` templates: the combined filter, exchange and stats in
//! one Wasm context per connection.
//! The backend answers every request with "hello " + request. The demo sends `world\n` on
//! several connections, then prints each sidecar's Istio TCP metrics (or, while there are none,
//! the metadata-exchange counters) and access logs, and last a short table per sidecar: source →
//! destination, connections opened, closed and open now, bytes sent and received. Without `--once` it then keeps both Envoys
//! running for you to explore their admin pages, until Ctrl-C.
//!
//! Needs the Wasm module (`make build`, or `WASM_MODULE`), Envoy (`make envoy`, or `ENVOY_BIN`)
//! and `openssl`. Usage: `cargo run --release --example demo -- [--once] [--plaintext]
//! [--connections N] [--concurrency N]`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use testkit::backend::{prefix_server, Backend};
use testkit::client::request_until;
use testkit::envoy::Envoy;
use testkit::files::{envoy_bin, free_port, wait_for_lines, wasm_module};
use testkit::mesh::{parse_prometheus, Mesh, MeshOptions};
use testkit::prometheus::Prometheus;
use testkit::summary;

struct Args {
    once: bool,
    plaintext: bool,
    redis: bool,
    prometheus: bool,
    connections: usize,
    concurrency: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        once: false,
        plaintext: false,
        redis: false,
        prometheus: false,
        connections: 10,
        concurrency: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |what: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{what} needs a number")))
        };
        match a.as_str() {
            "--once" => args.once = true,
            "--plaintext" => args.plaintext = true,
            "--redis" => args.redis = true,
            "--prometheus" => args.prometheus = true,
            "--connections" => args.connections = number("--connections") as usize,
            "--concurrency" => args.concurrency = number("--concurrency") as u32,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

fn usage(error: &str) -> ! {
    if !error.is_empty() {
        eprintln!("demo: {error}");
    }
    eprintln!(
        "usage: demo [--once] [--plaintext] [--redis] [--prometheus] [--connections N] [--concurrency N]\n\
         \x20 --once           exit after printing the results (default: wait for Ctrl-C)\n\
         \x20 --plaintext      client sidecar without TLS (server uses its plaintext-detect chain)\n\
         \x20 --redis          the database is a real redis-server (Debian's), sent PING\n\
         \x20 --prometheus     also run Prometheus on both sidecars and print its query results\n\
         \x20 --connections N  connections to send (default 10)\n\
         \x20 --concurrency N  worker threads of each Envoy (default 1)"
    );
    std::process::exit(if error.is_empty() { 0 } else { 2 });
}

/// Prints `[n/total] text`; the total is known from the arguments before the first step.
struct Steps {
    total: u32,
}

impl Steps {
    fn new(args: &Args) -> Self {
        Steps {
            total: if args.prometheus { 6 } else { 5 },
        }
    }

    fn print(&self, n: u32, text: &str) {
        println!("[{n}/{}] {text}", self.total);
    }
}

/// The database behind the server sidecar: the built-in one ("hello " + request) or a real
/// Redis answering PING.
enum Database {
    BuiltIn(Backend),
    Redis(RedisServer),
}

impl Database {
    fn port(&self) -> u16 {
        match self {
            Database::BuiltIn(b) => b.port(),
            Database::Redis(r) => r.port,
        }
    }

    /// (request, what the reply ends with)
    fn request(&self) -> (&'static [u8], &'static [u8]) {
        match self {
            Database::BuiltIn(_) => (b"world\n", b"\n"),
            Database::Redis(_) => (b"PING\r\n", b"\r\n"),
        }
    }
}

/// `redis-server` on a free loopback port, without persistence; killed on drop.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (run `make tools`): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisServer { child, port }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let args = parse_args();
    // The release profile aborts on panic, so no destructor runs: say where the files are.
    // (The Envoys still stop: they get SIGTERM when the demo dies, see `die_with_parent`.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!(
            "demo failed; configs and Envoy logs are kept under {}",
            std::env::temp_dir()
                .join("istio-tcp-telemetry-tests")
                .display()
        );
    }));
    println!("Envoy:       {}", envoy_bin().display());
    println!("Wasm module: {}", wasm_module().display());

    println!(
        "Istio's TCP metrics task on loopback: Bookinfo's ratings-v2 -> mongodb-v1 through two sidecars"
    );
    let steps = Steps::new(&args);
    steps.print(
        1,
        "starting: certificates (openssl), backend, server sidecar (mongodb-v1), \
         client sidecar (ratings-v2)",
    );
    let started = Instant::now();
    let backend = if args.redis {
        Database::Redis(RedisServer::start())
    } else {
        Database::BuiltIn(prefix_server(b"hello "))
    };
    let mesh = Mesh::start(
        "demo",
        backend.port(),
        &MeshOptions {
            mtls: !args.plaintext,
            concurrency: args.concurrency,
            // Started from a terminal, Envoy then gets Ctrl-C along with the demo.
            own_process_group: false,
            ..MeshOptions::default()
        },
    );
    let server = mesh.server();
    println!(
        "      backend 127.0.0.1:{}; server sidecar 127.0.0.1:{} (admin {}); \
         client sidecar 127.0.0.1:{} (admin {}); up in {:?}",
        backend.port(),
        mesh.server_port,
        server.admin_port(),
        mesh.client_port,
        mesh.client.admin_port(),
        started.elapsed()
    );

    let how = if args.plaintext {
        "plaintext"
    } else {
        "mutual TLS"
    };
    steps.print(
        2,
        &format!(
            "sending {} connections of {:?} through the client sidecar ({how})",
            args.connections,
            String::from_utf8_lossy(backend.request().0)
        ),
    );
    let (request, reply_end) = backend.request();
    for i in 1..=args.connections {
        // Request, then read the reply line: the client never half-closes first (see
        // `request_until`), like a typical database client.
        let reply = request_until(mesh.client_port, request, reply_end);
        println!(
            "      connection {i}: sent {:?}, got {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&reply)
        );
    }

    steps.print(3, "access logs (one line per connection)");
    for (who, log) in [
        ("client", &mesh.client_access_log),
        ("server", &mesh.server_access_log),
    ] {
        for line in wait_for_lines(log, args.connections, Duration::from_secs(5)) {
            println!("      {who}: {line}");
        }
    }

    steps.print(4, "metrics");
    for (who, envoy) in [("client sidecar", &mesh.client), ("server sidecar", server)] {
        print_metrics(who, envoy);
    }

    let prometheus = args.prometheus.then(|| {
        steps.print(
            5,
            "Prometheus (Debian's) scrapes both sidecars with examples/prometheus/prometheus.yml; \
             querying its HTTP API as Graph > Execute in its web page does",
        );
        let prometheus = Prometheus::start(mesh.client.admin_port(), server.admin_port());
        for metric in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
        ] {
            println!("      {metric}:");
            for (labels, value) in prometheus.wait_for(metric, 2, Duration::from_secs(30)) {
                let labels: Vec<String> = labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != "__name__")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!("        {metric}{{{}}} {value}", labels.join(","));
            }
        }
        prometheus
    });

    steps.print(
        if args.prometheus { 6 } else { 5 },
        "summary (the lines above, summed per reporter and source → destination)",
    );
    for (who, envoy) in [("client sidecar", &mesh.client), ("server sidecar", server)] {
        let rows = summary::rows(&parse_prometheus(&envoy.prometheus()));
        println!("      {who}:");
        print!("{}", summary::table(&rows, "        "));
    }

    if args.once {
        return;
    }
    println!(
        "\nBoth Envoys keep running; the demo client connects to 127.0.0.1:{}.\n\
         \x20 client sidecar admin: http://127.0.0.1:{}/  (stats: /stats/prometheus)\n\
         \x20 server sidecar admin: http://127.0.0.1:{}/\n\
         \x20 files: {} (certificates, access logs), {} and {} (configs, Envoy logs)\n\
         Press Ctrl-C to stop.",
        mesh.client_port,
        mesh.client.admin_port(),
        server.admin_port(),
        mesh.dir.path().display(),
        mesh.client.dir().display(),
        server.dir().display(),
    );
    if let Some(prometheus) = &prometheus {
        println!("  Prometheus: http://127.0.0.1:{}/graph", prometheus.port());
    }
    wait_for_ctrl_c();
    println!("\nstopping the Envoys");
}

/// Prints the `istio_tcp_*` lines of `/stats/prometheus`; while the module reports none yet,
/// the metadata-exchange counters of `/stats` instead.
fn print_metrics(who: &str, envoy: &Envoy) {
    // Metrics may be reported at connection close or on a timer: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let istio = loop {
        let lines: Vec<String> = envoy
            .prometheus()
            .lines()
            .filter(|l| l.starts_with("istio_tcp_"))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !istio.is_empty() {
        println!("      {who} /stats/prometheus:");
        istio.iter().for_each(|l| println!("        {l}"));
        return;
    }
    println!("      {who}: no istio_tcp_ metrics yet; metadata exchange counters from /stats:");
    let stats = envoy.stats();
    let exchange: Vec<&str> = stats
        .lines()
        .filter(|l| l.contains("metadata_exchange"))
        .collect();
    if exchange.is_empty() {
        println!("        (none)");
    }
    exchange.iter().for_each(|l| println!("        {l}"));
}

/// Blocks until SIGINT (Ctrl-C) or SIGTERM, then returns so that the Envoys and temporary files
/// are cleaned up by their destructors. The handler only sets a flag (async-signal-safe).
fn wait_for_ctrl_c() {
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_signal: std::os::raw::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    extern "C" {
        fn signal(
            signum: std::os::raw::c_int,
            handler: extern "C" fn(std::os::raw::c_int),
        ) -> usize;
    }
    const SIGINT: std::os::raw::c_int = 2;
    const SIGTERM: std::os::raw::c_int = 15;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}
