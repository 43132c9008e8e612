//! What an Envoy hot restart does to the counts already reported (Envoy 1.40, measured).
//!
//! The harness runs Envoy with `--disable-hot-restart`, so this test starts its two epochs
//! itself: epoch 0 with `--use-dynamic-base-id --base-id-path`, epoch 1 with that `--base-id` and
//! `--restart-epoch 1`, the same config and the same fixed listener port (the child takes the
//! parent's listening socket). The server sidecar's bootstrap gets `stats_flush_interval: 60s`,
//! so that neither process flushes (latches) its counters during the test and the result does
//! not depend on timing; see docs/THREAT-MODEL.md for what the default 5 s interval changes.
//!
//! What Envoy's hot restart does with counters (`HotRestartingParent::exportStatsToChild`,
//! `StatMerger`): the child asks the parent for its counters' *increments since the parent's
//! last stats flush* at start-up and at each of its own flushes, and adds them to counters of
//! the same name, created in a temporary scope. When the parent terminates
//! (`--parent-shutdown-time-s`) that scope is dropped. Measured here for our `wasmcustom` stats:
//! - a series the child's Wasm also reports before the parent ends keeps the parent's counts
//!   and continues from them;
//! - a series only the parent had disappears from the child's `/stats` when the parent ends;
//! - what the parent reports after the child's last fetch (here: the close of a connection that
//!   was live across the restart) is lost.

mod hostile;
mod mesh;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hostile::{send_pause_close, CLOSED, OPENED, RECEIVED, SENT};
use mesh::{parse_prometheus, request_reply};
use support::{
    echo_server, free_port, http_get, make_mtls_certs, render, yaml_single_quoted, TempDir,
};

const WAIT: Duration = Duration::from_secs(15);

/// One Envoy process of a hot-restart family. SIGTERM, then SIGKILL, on drop.
struct Epoch {
    child: Child,
    admin_port: u16,
    log: PathBuf,
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(op: i32, a2: u64, a3: u64, a4: u64, a5: u64) -> i32;
}

impl Epoch {
    fn start(dir: &Path, epoch: u32, base_id: Option<u32>) -> Epoch {
        let file = |f: String| dir.join(f);
        let admin_file = file(format!("admin-{epoch}"));
        let log = file(format!("envoy-{epoch}.log"));
        let mut cmd = Command::new(support::envoy_bin());
        cmd.arg("-c")
            .arg(dir.join("envoy.yaml"))
            .args(["--concurrency", "1", "-l", "info"])
            .args(["--restart-epoch", &epoch.to_string()])
            .args(["--drain-time-s", "1", "--parent-shutdown-time-s", "4"])
            .arg("--log-path")
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(file(format!("stderr-{epoch}"))).unwrap());
        match base_id {
            None => cmd
                .arg("--use-dynamic-base-id")
                .arg("--base-id-path")
                .arg(dir.join("base-id")),
            Some(id) => cmd.args(["--base-id", &id.to_string()]),
        };
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            // SIGTERM when the test thread ends, so a killed run leaves no Envoy behind.
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(|| {
                    prctl(1, 15, 0, 0, 0);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut epoch_process = Epoch {
            child,
            admin_port: 0,
            log,
        };
        loop {
            assert!(
                Instant::now() < deadline,
                "epoch {epoch} not ready:\n{}",
                fs::read_to_string(&epoch_process.log).unwrap_or_default()
            );
            if let Ok(Some(status)) = epoch_process.child.try_wait() {
                panic!(
                    "epoch {epoch} exited ({status}):\n{}",
                    fs::read_to_string(dir.join(format!("stderr-{epoch}"))).unwrap_or_default()
                );
            }
            let port = fs::read_to_string(&admin_file)
                .ok()
                .and_then(|t| t.trim().rsplit(':').next()?.parse().ok());
            if let Some(port) = port {
                epoch_process.admin_port = port;
                if ready(port) {
                    return epoch_process;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// `metric` by its `source_workload` label.
    fn by_workload(&self, metric: &str) -> BTreeMap<String, f64> {
        let (_, text) = http_get(self.admin_port, "/stats/prometheus");
        parse_prometheus(&text)
            .into_iter()
            .filter(|s| s.name == metric)
            .map(|s| (s.labels["source_workload"].clone(), s.value))
            .collect()
    }

    /// The four metrics, by source workload: `(metric, workload) -> value`.
    fn snapshot(&self) -> BTreeMap<(&'static str, String), f64> {
        let mut out = BTreeMap::new();
        for metric in [OPENED, CLOSED, RECEIVED, SENT] {
            for (workload, value) in self.by_workload(metric) {
                out.insert((metric, workload), value);
            }
        }
        out
    }

    fn counter(&self, name: &str) -> Option<u64> {
        support::parse_stat(&http_get(self.admin_port, "/stats").1, name)
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        if !self.exited() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { kill(self.child.id() as i32, 15) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.exited() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("{}", fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// `GET /ready` answers 200 (false on any error: the admin may not listen yet).
fn ready(port: u16) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut reply = String::new();
    conn.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .is_ok()
        && conn.read_to_string(&mut reply).is_ok()
        && reply.split_whitespace().nth(1) == Some("200")
}

/// Polls `f` until it returns true.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn hot_restart_keeps_counts_only_for_series_the_child_reports() {
    let backend = echo_server();
    let dir = TempDir::new("reload-hot-restart");
    let certs = make_mtls_certs(&dir.path().join("certs"));
    let port = free_port();
    let s = |p: &Path| p.display().to_string();
    let params = vec![
        ("ADMIN_PORT", "0".to_string()),
        ("LISTENER_PORT", port.to_string()),
        ("NODE_ID", mesh::SERVER_NODE_ID.to_string()),
        ("NODE_METADATA", mesh::SERVER_METADATA.to_string()),
        ("WASM_PATH", s(&support::wasm_module())),
        (
            "STATS_CONFIG",
            r#"{"tcp_reporting_duration":"1s"}"#.to_string(),
        ),
        (
            "EXCHANGE_CONFIG_MTLS",
            yaml_single_quoted(r#"{"side":"server"}"#),
        ),
        (
            "EXCHANGE_CONFIG_PLAIN",
            yaml_single_quoted(r#"{"side":"server","server_mode":"detect"}"#),
        ),
        ("SERVICE_HOST", "mongodb.default.svc.cluster.local".into()),
        ("SERVICE_NAME", "mongodb".into()),
        ("SERVICE_NAMESPACE", "default".into()),
        ("SERVICE_PORT", "27017".into()),
        ("BACKEND_PORT", backend.port().to_string()),
        ("CERT_CHAIN", s(&certs.server_cert)),
        ("PRIVATE_KEY", s(&certs.server_key)),
        ("CA_CERT", s(&certs.ca_cert)),
        ("ACCESS_LOG", dir.file("access.log")),
    ];
    let yaml = format!(
        "stats_flush_interval: 60s\n{}",
        render("sidecar-server.yaml", &params)
    );
    fs::write(dir.path().join("envoy.yaml"), yaml).unwrap();

    // Epoch 0: four plain clients ("unknown"), one mesh client ("ratings-v2"), and one
    // connection that stays open across the restart.
    let mut parent = Epoch::start(dir.path(), 0, None);
    for _ in 0..4 {
        assert_eq!(request_reply(port, b"before", 6), b"before");
    }
    let golden =
        fs::read(support::manifest_dir().join("tests/fixtures/golden/modern_ratings.bin")).unwrap();
    let back = send_pause_close(
        port,
        &[&golden[..], b"x"].concat(),
        Duration::from_millis(200),
    );
    assert!(back.ends_with(b"x"));
    let mut live = TcpStream::connect(("127.0.0.1", port)).unwrap();
    live.set_read_timeout(Some(WAIT)).unwrap();
    live.write_all(b"live").unwrap();
    let mut echo = [0u8; 4];
    live.read_exact(&mut echo).unwrap();
    // The live connection's 4 bytes each way are reported by the 1 s tick.
    let unknown = |m: &'static str| (m, "unknown".to_string());
    let ratings = |m: &'static str| (m, "ratings-v2".to_string());
    let expected_parent = BTreeMap::from([
        (unknown(OPENED), 5.0),
        (unknown(CLOSED), 4.0),
        (unknown(RECEIVED), 28.0),
        (unknown(SENT), 28.0),
        (ratings(OPENED), 1.0),
        (ratings(CLOSED), 1.0),
        (ratings(RECEIVED), 1.0),
        (ratings(SENT), 1.0),
    ]);
    wait_until("the parent's counts", || {
        parent.snapshot() == expected_parent
    });

    // Epoch 1: at start-up it merges what the parent counted (nothing was flushed yet).
    let base_id: u32 = fs::read_to_string(dir.path().join("base-id"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let child = Epoch::start(dir.path(), 1, Some(base_id));
    wait_until("the merged counts", || child.snapshot() == expected_parent);

    // New connections land on the child, in the "unknown" series the parent also had.
    for _ in 0..2 {
        assert_eq!(request_reply(port, b"after!", 6), b"after!");
    }
    // The live connection, still served by the parent, closes now.
    live.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).unwrap();
    wait_until("the parent to exit", || parent.exited());

    let after = child.snapshot();
    eprintln!(
        "parent before the restart: {expected_parent:?}\nchild after the parent exit: {after:?}"
    );
    let expected_child = BTreeMap::from([
        // 5 + 2 opened; 4 + 2 closed: the live connection's close happened in the parent after
        // the child's only fetch, and is lost.
        (unknown(OPENED), 7.0),
        (unknown(CLOSED), 6.0),
        (unknown(RECEIVED), 40.0),
        (unknown(SENT), 40.0),
        // The "ratings-v2" series, which only the parent reported, is gone.
    ]);
    assert_eq!(after, expected_child, "what survives a hot restart");
    // The exchange's own counters, which every VM defines at start-up, keep the parent's counts.
    assert_eq!(
        child.counter("wasmcustom.envoy_metadata_exchange.alpn_protocol_found"),
        Some(1)
    );
    assert_eq!(
        child.counter("wasmcustom.envoy_metadata_exchange.alpn_protocol_not_found"),
        Some(7)
    );
    drop(child);
    // Epoch 0 unlinks a stale region at start; remove ours so nothing is left in /dev/shm.
    let _ = fs::remove_file(format!("/dev/shm/envoy_shared_memory_{}", base_id * 10));
}

testkit::both_filters!(hot_restart_keeps_counts_only_for_series_the_child_reports,);
