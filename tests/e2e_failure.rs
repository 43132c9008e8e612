//! What Envoy 1.40 does when our Wasm VM traps mid-traffic, per failure policy, and that the
//! shipped policy (`failure_policy: FAIL_RELOAD` on both filters) keeps traffic flowing without
//! ever handing an exchange frame to an application.
//!
//! The trap comes from a TEST-ONLY build of the module (cargo feature `test-trap`,
//! `make build-test-trap`, `target/test-trap/…`): it traps when a connection's downstream bytes
//! contain its marker. The shipped module must not contain the marker (checked here).
//!
//! Topology: the shipped templates (plaintext): app → client sidecar → server sidecar (detect
//! chain) → echo backend, one worker each (so one VM per sidecar serves every connection). The
//! trap fires in the client sidecar (marker sent by the app through it) or in the server sidecar
//! (marker sent by a plaintext client straight to it).

mod hostile;
mod mesh;
mod support;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hostile::{metric_sum, CLOSED, MAGIC, OPENED};
use mesh::{
    CLIENT_METADATA, CLIENT_NODE_ID, ENDPOINT_WORKLOAD, SERVER_METADATA, SERVER_NODE_ID,
    SERVICE_HOST, SERVICE_NAME, SERVICE_NAMESPACE, SERVICE_PORT,
};
use support::{free_port, make_mtls_certs, manifest_dir, render, Backend, Envoy, TempDir};

/// The marker of `src/wasm/test_trap.rs`.
const TRAP_MARKER: &[u8] = b"ISTIO_TCP_TELEMETRY_TEST_TRAP";
/// What the shipped templates say on every Wasm filter (two lines); replaced by the policy
/// under test.
const SHIPPED_POLICY: &str = "failure_policy: FAIL_RELOAD";
const SHIPPED_BACKOFF: &str =
    "reload_config: { backoff: { base_interval: 0.1s, max_interval: 10s } }";

/// The test-only trapping module: `$WASM_TRAP_MODULE`, else what `make build-test-trap` builds.
fn trap_module() -> PathBuf {
    let path = std::env::var_os("WASM_TRAP_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir().join("target/test-trap/wasm32-wasip1/release/istio_tcp_telemetry.wasm")
        });
    assert!(
        path.is_file(),
        "test-trap module not found at {}: run `make build-test-trap`",
        path.display()
    );
    path
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_shipped_module_has_no_trap_trigger_and_the_test_build_has() {
    let shipped = fs::read(support::wasm_module()).expect("shipped module");
    assert!(
        !contains(&shipped, TRAP_MARKER),
        "the shipped module contains the test-trap marker: built with --features test-trap?"
    );
    let trap = fs::read(trap_module()).expect("test-trap module");
    assert!(
        contains(&trap, TRAP_MARKER),
        "the test build lacks the marker"
    );
}

#[test]
fn every_shipped_configuration_reloads_a_failed_vm() {
    let files = [
        "envoy/sidecar-client.yaml",
        "envoy/sidecar-client-mtls.yaml",
        "envoy/sidecar-server.yaml",
        "envoy/passthrough.yaml",
        "examples/istio/envoyfilter-tcp-telemetry.yaml",
        "examples/istio/envoyfilter-tcp-telemetry-remote.yaml",
    ];
    for file in files {
        let text = fs::read_to_string(manifest_dir().join(file)).expect(file);
        let filters = text.matches("root_id:").count();
        let policies = text.matches(SHIPPED_POLICY).count();
        let backoffs = text.matches(SHIPPED_BACKOFF).count();
        assert!(filters > 0, "{file}: no Wasm filter");
        assert_eq!(
            policies, filters,
            "{file}: every Wasm filter needs {SHIPPED_POLICY}"
        );
        assert_eq!(
            backoffs, filters,
            "{file}: every Wasm filter needs {SHIPPED_BACKOFF}"
        );
        assert!(!text.contains("fail_open"), "{file}: fail_open");
    }
    for file in [
        "examples/istio/wasmplugin-tcp-telemetry.yaml",
        "examples/istio/wasmplugin-tcp-telemetry-oci.yaml",
    ] {
        let text = fs::read_to_string(manifest_dir().join(file)).expect(file);
        let lines = |want: &str| text.lines().filter(|l| l.trim() == want).count();
        assert_eq!(
            lines("failStrategy: FAIL_RELOAD"),
            lines("kind: WasmPlugin"),
            "{file}: every WasmPlugin needs failStrategy: FAIL_RELOAD"
        );
    }
}

// ---- topology --------------------------------------------------------------------------------

/// An echo backend that remembers whether an exchange frame's magic ever reached it.
fn echo_watching_magic(seen: Arc<AtomicBool>) -> Backend {
    Backend::spawn(move |mut conn| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return conn.shutdown(std::net::Shutdown::Write);
            }
            if contains(&buf[..n], &MAGIC) {
                seen.store(true, Ordering::SeqCst);
            }
            conn.write_all(&buf[..n])?;
        }
    })
}

struct Pair {
    client: Envoy,
    server: Envoy,
    client_port: u16,
    server_port: u16,
    _dir: TempDir,
}

/// Both sidecars from the shipped plaintext templates with the trapping module, the shipped
/// failure policy replaced by the lines of `policy` (`""` = no policy field: Envoy's default).
/// The server's plaintext chain runs in `expect` mode, so it always answers with its frame: a
/// client sidecar without its exchange filter would hand that frame to the application.
fn start_pair(name: &str, policy: &str, backend_port: u16) -> Pair {
    let dir = TempDir::new(name);
    let wasm = trap_module().display().to_string();
    // The mTLS chain is not used here, but the template loads its certificates.
    let certs = make_mtls_certs(&dir.path().join("certs"));
    let log = |f: &str| dir.file(f);
    let service = |p: &mut Vec<(&str, String)>| {
        p.extend([
            ("SERVICE_HOST", SERVICE_HOST.to_string()),
            ("SERVICE_NAME", SERVICE_NAME.to_string()),
            ("SERVICE_NAMESPACE", SERVICE_NAMESPACE.to_string()),
            ("SERVICE_PORT", SERVICE_PORT.to_string()),
        ])
    };
    // The shipped two lines become the lines of `policy`, same indentation.
    let patch = |yaml: String| -> String {
        assert!(yaml.contains(SHIPPED_POLICY) && yaml.contains(SHIPPED_BACKOFF));
        yaml.lines()
            .flat_map(|l| {
                let indent = &l[..l.len() - l.trim_start().len()];
                match l.trim() {
                    SHIPPED_POLICY => policy.lines().map(|p| format!("{indent}{p}\n")).collect(),
                    SHIPPED_BACKOFF => Vec::new(),
                    _ => vec![format!("{l}\n")],
                }
            })
            .collect()
    };
    let mut p = vec![
        ("ADMIN_PORT", "0".to_string()),
        ("LISTENER_PORT", free_port().to_string()),
        ("NODE_ID", SERVER_NODE_ID.to_string()),
        ("NODE_METADATA", SERVER_METADATA.to_string()),
        ("WASM_PATH", wasm.clone()),
        ("STATS_CONFIG", "{}".to_string()),
        ("EXCHANGE_CONFIG_MTLS", r#"{"side":"server"}"#.to_string()),
        (
            "EXCHANGE_CONFIG_PLAIN",
            r#"{"side":"server","server_mode":"expect"}"#.to_string(),
        ),
        ("BACKEND_PORT", backend_port.to_string()),
        ("CERT_CHAIN", certs.server_cert.display().to_string()),
        ("PRIVATE_KEY", certs.server_key.display().to_string()),
        ("CA_CERT", certs.ca_cert.display().to_string()),
        ("ACCESS_LOG", log("server-access.log")),
    ];
    service(&mut p);
    let server = Envoy::start(
        &format!("{name}-server"),
        &patch(render("sidecar-server.yaml", &p)),
        1,
    );
    let server_port = server.listener_port("inbound");
    let mut p = vec![
        ("ADMIN_PORT", "0".to_string()),
        ("LISTENER_PORT", free_port().to_string()),
        ("NODE_ID", CLIENT_NODE_ID.to_string()),
        ("NODE_METADATA", CLIENT_METADATA.to_string()),
        ("WASM_PATH", wasm),
        ("STATS_CONFIG", "{}".to_string()),
        ("EXCHANGE_CONFIG", r#"{"side":"client"}"#.to_string()),
        ("UPSTREAM_PORT", server_port.to_string()),
        ("TLS_MODE", "istio".to_string()),
        ("ENDPOINT_WORKLOAD", ENDPOINT_WORKLOAD.to_string()),
        ("ACCESS_LOG", log("client-access.log")),
    ];
    service(&mut p);
    let client = Envoy::start(
        &format!("{name}-client"),
        &patch(render("sidecar-client.yaml", &p)),
        1,
    );
    let client_port = client.listener_port("outbound");
    Pair {
        client,
        server,
        client_port,
        server_port,
        _dir: dir,
    }
}

// ---- observing one connection ----------------------------------------------------------------

/// What one request/echo exchange gave the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The echo, byte for byte.
    Echoed,
    /// Bytes came back that hold an exchange frame's magic: a frame reached the application.
    FrameToApp,
    /// Other bytes than the echo.
    Altered,
    /// Closed (EOF or reset) before the echo.
    Closed,
    /// Nothing within the timeout.
    Stalled,
}

/// Writes `data` on `conn` and reads until the echo's length came back (or EOF, an error, or
/// 3 s).
fn exchange(conn: &mut TcpStream, data: &[u8]) -> Outcome {
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    if conn.write_all(data).is_err() {
        return Outcome::Closed;
    }
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    while back.len() < data.len() {
        match conn.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                closed = !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
                break;
            }
        }
    }
    if contains(&back, &MAGIC) {
        Outcome::FrameToApp
    } else if back == data {
        Outcome::Echoed
    } else if back.is_empty() && closed {
        Outcome::Closed
    } else if back.is_empty() {
        Outcome::Stalled
    } else {
        Outcome::Altered
    }
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect")
}

/// Counts of outcomes, printed like `Echoed×10`.
fn tally(outcomes: &[Outcome]) -> String {
    let mut sorted = outcomes.to_vec();
    sorted.sort();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let n = sorted[i..].iter().take_while(|o| **o == sorted[i]).count();
        parts.push(format!("{:?}×{n}", sorted[i]));
        i += n;
    }
    parts.join(" ")
}

/// The non-zero `wasm.*` VM and reload stats (not the module's own `wasmcustom.*` metrics).
fn wasm_stats(envoy: &Envoy) -> Vec<String> {
    envoy
        .stats()
        .lines()
        .filter(|l| l.starts_with("wasm.") && !l.ends_with(": 0"))
        .map(String::from)
        .collect()
}

/// One measured run: a trap in `side` under `policy`.
#[derive(Debug)]
struct Observation {
    policy: String,
    side: &'static str,
    trap_conn: Outcome,
    live_after: Vec<Outcome>,
    new_after: Vec<Outcome>,
    frame_reached_backend: bool,
    opened_before: f64,
    opened_after: f64,
    closed_after: f64,
    stats: Vec<String>,
    log: Vec<String>,
}

const LIVE: usize = 3;
const NEW: usize = 10;

fn observe(policy: &str, side: &'static str) -> Observation {
    let seen = Arc::new(AtomicBool::new(false));
    let backend = echo_watching_magic(seen.clone());
    let name = format!("failure-{side}-{}", policy.replace([':', ' '], "_"));
    let pair = start_pair(&name, policy, backend.port());
    let data = |i: usize| format!("request {i} from the application\n").into_bytes();

    // Live connections through both sidecars, one echo each before the trap.
    let mut live: Vec<TcpStream> = (0..LIVE).map(|_| connect(pair.client_port)).collect();
    for (i, conn) in live.iter_mut().enumerate() {
        assert_eq!(
            exchange(conn, &data(i)),
            Outcome::Echoed,
            "{name}: before the trap"
        );
    }
    let target = if side == "client" {
        &pair.client
    } else {
        &pair.server
    };
    let opened_before = metric_sum(target, OPENED);

    // The trap: the app's marker through the client sidecar, or a plaintext client's to the
    // server sidecar.
    let mut trap = connect(if side == "client" {
        pair.client_port
    } else {
        pair.server_port
    });
    let trap_conn = exchange(&mut trap, &[b"xx ", TRAP_MARKER, b"\n"].concat());
    let panicked = target.wait_for_log("panicked", Duration::from_secs(5));
    assert!(panicked, "{name}: the VM did not trap:\n{}", target.log());
    thread::sleep(Duration::from_millis(500));

    let live_after: Vec<Outcome> = live
        .iter_mut()
        .enumerate()
        .map(|(i, c)| exchange(c, &data(100 + i)))
        .collect();
    let new_after: Vec<Outcome> = (0..NEW)
        .map(|i| {
            let mut c = connect(pair.client_port);
            let o = exchange(&mut c, &data(200 + i));
            let _ = c.shutdown(std::net::Shutdown::Write);
            o
        })
        .collect();
    thread::sleep(Duration::from_millis(1500)); // one stats flush and the log's batch
    let opened_after = metric_sum(target, OPENED);
    let closed_after = metric_sum(target, CLOSED);
    let log = target
        .log()
        .lines()
        .filter(|l| {
            ["panicked", "failed", "reload", "RuntimeError", "backoff"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(|l| l.chars().take(220).collect())
        .collect();
    Observation {
        policy: if policy.is_empty() {
            "(unset)".into()
        } else {
            policy.into()
        },
        side,
        trap_conn,
        live_after,
        new_after,
        frame_reached_backend: seen.load(Ordering::SeqCst),
        opened_before,
        opened_after,
        closed_after,
        stats: wasm_stats(target),
        log,
    }
}

const SHIPPED: &str = "failure_policy: FAIL_RELOAD\nreload_config: { backoff: { base_interval: 0.1s, max_interval: 10s } }";

/// Every policy Envoy 1.40's `PluginConfig` takes, with a trap in each sidecar, printed as the
/// table of the README ("Operating it"); what decides the shipped policy is asserted.
#[test]
fn each_failure_policy_measured_after_a_trap() {
    let policies = [
        "",
        "fail_open: true",
        "failure_policy: FAIL_CLOSED",
        "failure_policy: FAIL_OPEN",
        "failure_policy: FAIL_RELOAD",
        SHIPPED,
    ];
    println!(
        "| policy | trap in | trap conn | live conns | new conns | frame to backend | opened |"
    );
    for side in ["client", "server"] {
        for policy in policies {
            let o = observe(policy, side);
            println!(
                "| {} | {} | {:?} | {} | {} | {} | {} → {} |",
                o.policy.replace('\n', " + "),
                o.side,
                o.trap_conn,
                tally(&o.live_after),
                tally(&o.new_after),
                o.frame_reached_backend,
                o.opened_before,
                o.opened_after
            );
            println!("    stats: {}", o.stats.join(", "));
            for l in o.log.iter().take(4) {
                println!("    log: {l}");
            }
            let leaked = o.frame_reached_backend || o.new_after.contains(&Outcome::FrameToApp);
            let fail_open = policy.contains("fail_open") || policy.contains("FAIL_OPEN");
            let what = format!("{} / trap in {side}", o.policy);
            // A trap never goes unnoticed in the log.
            assert!(!o.log.is_empty(), "{what}: no log line");
            if fail_open && side == "server" {
                // The exchange filter is bypassed: the client's frame reaches the backend.
                assert!(leaked, "{what}: fail-open without a leaked frame?");
            }
            if !fail_open {
                assert!(!leaked, "{what}: a frame reached an application");
                // Live connections on the failed VM are closed, under every non-fail-open policy.
                assert!(
                    o.live_after.iter().all(|x| *x == Outcome::Closed),
                    "{what}: live"
                );
            }
            if policy == SHIPPED {
                assert!(
                    o.new_after.iter().all(|x| *x == Outcome::Echoed),
                    "{what}: new"
                );
                assert_eq!(
                    o.opened_after,
                    o.opened_before + NEW as f64,
                    "{what}: counting again"
                );
                // The closes of the connections the failed VM held are lost with it.
                assert_eq!(
                    o.closed_after,
                    o.opened_after - LIVE as f64,
                    "{what}: closed"
                );
            }
            if policy.is_empty() || policy.contains("FAIL_CLOSED") {
                assert!(
                    o.new_after.iter().all(|x| *x == Outcome::Closed),
                    "{what}: new"
                );
            }
        }
    }
}

/// The shipped policy end to end: a trap in each sidecar, then 100 connections, all correct,
/// both reporters counting them, and the alert signal in `/stats/prometheus`.
///
/// With the two separate roots: the alert stats it reads are named after those filters
/// (`istio.metadata_exchange`); the combined filter's reload is checked by
/// `every_shipped_configuration_reloads_a_failed_vm` on the shipped templates.
#[test]
fn after_a_trap_the_shipped_policy_serves_100_connections_and_shows_the_reload() {
    testkit::render::Filters::Separate
        .run(run_after_a_trap_the_shipped_policy_serves_100_connections_and_shows_the_reload);
}

fn run_after_a_trap_the_shipped_policy_serves_100_connections_and_shows_the_reload() {
    let seen = Arc::new(AtomicBool::new(false));
    let backend = echo_watching_magic(seen.clone());
    let pair = start_pair("failure-shipped", SHIPPED, backend.port());
    let data = |i: usize| format!("connection {i} after the trap\n").into_bytes();
    let mut expected_opened = [0.0, 0.0];
    // The two filters reload independently: a connection closed because one filter was still in
    // its backoff may have had the other (the stats filter), which then counts it.
    let mut backoff_slack = [0.0, 0.0];

    // Traffic before, then a trap in the client sidecar, then one in the server sidecar.
    for (round, side) in ["client", "server"].into_iter().enumerate() {
        let mut c = connect(pair.client_port);
        assert_eq!(
            exchange(&mut c, &data(round)),
            Outcome::Echoed,
            "before the {side} trap"
        );
        drop(c);
        expected_opened[0] += 1.0;
        expected_opened[1] += 1.0;
        let target = if side == "client" {
            &pair.client
        } else {
            &pair.server
        };
        let port = if side == "client" {
            pair.client_port
        } else {
            pair.server_port
        };
        let mut trap = connect(port);
        let _ = exchange(&mut trap, &[b"xx ", TRAP_MARKER, b"\n"].concat());
        let trapped = Instant::now();
        assert!(
            target.wait_for_log("panicked", Duration::from_secs(5)),
            "{side}: no trap"
        );
        // Within the reload backoff (base 0.1 s) new connections are closed, never passed
        // unfiltered: measure that window, then expect every connection to be served.
        let mut closed = 0;
        loop {
            let mut c = connect(pair.client_port);
            match exchange(&mut c, &data(900 + closed)) {
                Outcome::Echoed => break,
                Outcome::Closed => closed += 1,
                other => panic!("{side} trap: {other:?} during the reload backoff"),
            }
            assert!(
                trapped.elapsed() < Duration::from_secs(15),
                "{side}: no reload"
            );
            thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{side} trap: {closed} connection(s) closed in the reload backoff, first served after {:?}",
            trapped.elapsed()
        );
        expected_opened[0] += 1.0;
        expected_opened[1] += 1.0;
        if side == "server" {
            // Closed by the server sidecar in its backoff: the client sidecar counted them.
            expected_opened[0] += closed as f64;
        }
        backoff_slack[if side == "client" { 0 } else { 1 }] += closed as f64;
        // The trapping connection's close is lost with its VM; the trap counts nowhere.
        for i in 0..100 {
            let mut c = connect(pair.client_port);
            let o = exchange(&mut c, &data(1000 * (round + 1) + i));
            assert_eq!(o, Outcome::Echoed, "{side} trap: connection {i} after it");
            let _ = c.shutdown(std::net::Shutdown::Write);
        }
        expected_opened[0] += 100.0;
        expected_opened[1] += 100.0;
    }
    assert!(
        !seen.load(Ordering::SeqCst),
        "an exchange frame reached the backend"
    );

    // Counters move again: both reporters counted every connection but the trapping ones (and
    // those closed in a backoff).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = [
            metric_sum(&pair.client, OPENED),
            metric_sum(&pair.server, OPENED),
        ];
        let fits = (0..2).all(|i| {
            got[i] >= expected_opened[i] && got[i] <= expected_opened[i] + backoff_slack[i]
        });
        if fits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "opened: {got:?}, wanted {expected_opened:?} (+ up to {backoff_slack:?})"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // The alert signal: each filter's reload counter, in Prometheus's output.
    for (side, envoy) in [("client", &pair.client), ("server", &pair.server)] {
        let prom = envoy.prometheus();
        for filter in ["istio_metadata_exchange", "istio_tcp_stats"] {
            let name = format!("envoy_wasm_{filter}_vm_reload_success");
            let line = prom
                .lines()
                .find(|l| l.starts_with(&name))
                .unwrap_or_else(|| panic!("{side}: no {name} in /stats/prometheus"));
            println!("{side}: {line}");
            assert!(line.ends_with(" 1"), "{side}: {line}");
        }
        let log = envoy.log();
        assert!(log.contains("Function: proxy_on_downstream_data failed: Uncaught RuntimeError"));
    }
}
