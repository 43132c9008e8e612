//! Beyond Istio's four counters, in real Envoy: the open-connections gauge (exact while
//! connections are held, across two workers and past the cardinality cap), the lifetime
//! histogram (buckets for known lifetimes, promtool, `histogram_quantile` through a real
//! Prometheus) and the close attributes (a refused upstream, a client reset, a backend close,
//! an idle timeout); with all of it off, no new series.

mod hostile;
mod mesh;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use mesh::prometheus::Prometheus;
use mesh::{parse_prometheus, request_reply, Mesh, MeshOptions, Sample};
use support::{free_port, prefix_server, Backend, Envoy, TempDir};

const WAIT: Duration = Duration::from_secs(20);
const OPEN: &str = "istio_tcp_connections_open";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const DURATION: &str = "istio_tcp_connection_duration_milliseconds";
const ENDED: &str = "istio_tcp_connections_ended_total";

fn samples(envoy: &Envoy, metric: &str) -> Vec<Sample> {
    parse_prometheus(&envoy.prometheus())
        .into_iter()
        .filter(|s| s.name == metric)
        .collect()
}

/// Polls until `check` accepts the samples of `metric`; panics with them after [`WAIT`].
fn wait_samples(envoy: &Envoy, metric: &str, what: &str, check: impl Fn(&[Sample]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = samples(envoy, metric);
        if check(&found) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric}: {what}; got {found:#?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `metric` has exactly one series, at `value`.
fn wait_one(envoy: &Envoy, metric: &str, value: f64) {
    wait_samples(envoy, metric, &format!("one series at {value}"), |s| {
        s.len() == 1 && s[0].value == value
    });
}

/// A connection through the mesh that has exchanged one request and reply and stays open.
fn hold(port: u16) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(b"world\n").unwrap();
    let mut reply = [0u8; 12];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"hello world\n");
    conn
}

/// Closes a held connection the polite way (half-close, read to EOF).
fn finish(mut conn: TcpStream) {
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}

fn two_workers() -> MeshOptions {
    MeshOptions {
        concurrency: 2,
        ..Default::default()
    }
}

/// Active connections of each of the two workers (`listener.<prefix>.worker_N.…`).
fn per_worker_active(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.stats();
    (0..2)
        .map(|w| {
            stats
                .lines()
                .filter(|l| {
                    l.starts_with("listener.")
                        && !l.starts_with("listener.admin.")
                        && l.contains(&format!(".worker_{w}.downstream_cx_active:"))
                })
                .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
                .sum()
        })
        .collect()
}

#[test]
fn open_connections_gauge_is_exact_across_two_workers() {
    let backend = prefix_server(b"hello ");
    let mesh = Mesh::start("lifecycle-gauge", backend.port(), &two_workers());
    const N: usize = 8;
    let mut held: Vec<TcpStream> = (0..N).map(|_| hold(mesh.client_port)).collect();
    for (envoy, reporter) in [(&mesh.client, "source"), (mesh.server(), "destination")] {
        wait_one(envoy, OPEN, N as f64);
        let gauge = &samples(envoy, OPEN)[0];
        assert_eq!(gauge.labels["reporter"], reporter);
        assert_eq!(gauge.labels["source_workload"], "ratings-v2");
        assert_eq!(gauge.labels["destination_workload"], "mongodb-v1");
        assert_eq!(gauge.labels.len(), 23, "Istio's 23 labels");
        // Envoy's own per-worker count of the same connections (which worker took which is
        // the kernel's choice; the gauge is the sum either way).
        let per_worker = per_worker_active(envoy);
        eprintln!("{reporter}: {OPEN} = {N} with {N} held; per-worker active {per_worker:?}");
        assert_eq!(per_worker.iter().sum::<u64>(), N as u64, "{reporter}");
    }
    const K: usize = 5;
    for conn in held.drain(..K) {
        finish(conn);
    }
    for envoy in [&mesh.client, mesh.server()] {
        wait_one(envoy, OPEN, (N - K) as f64);
        wait_one(envoy, CLOSED, K as f64);
    }
    eprintln!("after closing {K}: {OPEN} = {} on both", N - K);
    for conn in held {
        finish(conn);
    }
    for envoy in [&mesh.client, mesh.server()] {
        wait_one(envoy, OPEN, 0.0);
        wait_one(envoy, CLOSED, N as f64);
    }
}

#[test]
fn the_gauge_folds_past_the_cap_and_stays_exact_in_sum() {
    // One series per metric on the server: the mesh client's connections own it; plain clients
    // straight to the server sidecar (an unknown source) fold into the overflow series. One
    // worker: the cap is kept per worker (each VM has its own), so with two the split between
    // own and overflow series would depend on which worker took which connection.
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        server_stats: r#"{"max_series_per_metric":1}"#.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("lifecycle-gauge-cap", backend.port(), &opts);
    let server = mesh.server();
    let mesh_conns: Vec<TcpStream> = (0..2).map(|_| hold(mesh.client_port)).collect();
    wait_one(server, OPEN, 2.0);
    let plain: Vec<TcpStream> = (0..3).map(|_| hold(mesh.server_port)).collect();
    let split = |s: &[Sample]| {
        let overflow = s
            .iter()
            .filter(|x| x.labels.get("overflow").map(String::as_str) == Some("true"))
            .map(|x| x.value)
            .sum::<f64>();
        let own = s
            .iter()
            .filter(|x| !x.labels.contains_key("overflow"))
            .map(|x| x.value)
            .sum::<f64>();
        (s.len(), own, overflow)
    };
    wait_samples(server, OPEN, "own 2, overflow 3", |s| {
        split(s) == (2, 2.0, 3.0)
    });
    eprintln!("cap 1: {OPEN} own series 2, overflow series 3");
    for conn in plain {
        finish(conn);
    }
    wait_samples(server, OPEN, "own 2, overflow 0", |s| {
        split(s) == (2, 2.0, 0.0)
    });
    for conn in mesh_conns {
        finish(conn);
    }
    wait_samples(server, OPEN, "own 0, overflow 0", |s| {
        split(s) == (2, 0.0, 0.0)
    });
}

/// A plaintext connection straight to the server sidecar claiming to be `workload` (a valid
/// exchange frame, accepted in detect mode), that has exchanged one request and reply.
fn hold_as(port: u16, workload: &str) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let frame = hostile::claimed_frame(&[("WORKLOAD_NAME", workload)], "sidecar~x");
    conn.write_all(&[frame, b"world\n".to_vec()].concat())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"hello world\n") {
        let n = conn.read(&mut buf).expect("the reply");
        assert!(n > 0, "closed early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(hostile::after_frame(&got), b"hello world\n");
    conn
}

#[test]
fn the_gauge_stays_exact_in_sum_with_the_cap_reached_on_two_workers() {
    // Six peers, one series per metric allowed on each of the two workers: at least four label
    // sets fold, whichever worker took which connection. Which ones fold depends on that; the
    // sum over own and overflow series never does.
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        server_stats: r#"{"max_series_per_metric":1}"#.into(),
        ..two_workers()
    };
    let mesh = Mesh::start("lifecycle-gauge-cap-2w", backend.port(), &opts);
    let server = mesh.server();
    let total = |s: &[Sample]| s.iter().map(|x| x.value).sum::<f64>();
    let mut conns: Vec<TcpStream> = (0..6)
        .map(|i| hold_as(mesh.server_port, &format!("peer-{i}")))
        .collect();
    wait_samples(server, OPEN, "6 in sum", |s| total(s) == 6.0);
    let series = samples(server, OPEN);
    let overflow: f64 = series
        .iter()
        .filter(|x| x.labels.contains_key("overflow"))
        .map(|x| x.value)
        .sum();
    eprintln!(
        "cap 1, two workers, six peers: {} series, values {:?} (overflow {overflow}), \
         per-worker active {:?}",
        series.len(),
        series.iter().map(|x| x.value).collect::<Vec<_>>(),
        per_worker_active(server)
    );
    assert!(overflow >= 4.0, "{series:#?}");
    assert!(
        series.len() <= 3,
        "one own series per worker, one overflow series (the same stat for both)"
    );
    for conn in conns.drain(..3) {
        finish(conn);
    }
    wait_samples(server, OPEN, "3 in sum", |s| total(s) == 3.0);
    for conn in conns {
        finish(conn);
    }
    wait_samples(server, OPEN, "0 in sum", |s| total(s) == 0.0);
    wait_samples(server, CLOSED, "6 closed in sum", |s| total(s) == 6.0);
}

/// `_bucket` samples of `metric` for `reporter`, by `le`.
fn buckets(envoy: &Envoy, reporter: &str) -> BTreeMap<String, f64> {
    samples(envoy, &format!("{DURATION}_bucket"))
        .into_iter()
        .filter(|s| s.labels.get("reporter").map(String::as_str) == Some(reporter))
        .map(|s| (s.labels["le"].clone(), s.value))
        .collect()
}

#[test]
fn lifetimes_land_in_their_buckets_and_prometheus_computes_quantiles() {
    let backend = prefix_server(b"hello ");
    let on = r#"{"connection_duration":true}"#;
    let opts = MeshOptions {
        client_stats: on.into(),
        server_stats: on.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("lifecycle-histogram", backend.port(), &opts);
    // Three short connections (a request and its reply) and two held for 1.5 s.
    for _ in 0..3 {
        request_reply(mesh.client_port, b"world\n", 12);
    }
    let long: Vec<TcpStream> = (0..2).map(|_| hold(mesh.client_port)).collect();
    thread::sleep(Duration::from_millis(1500));
    for conn in long {
        finish(conn);
    }
    for (envoy, reporter) in [(&mesh.client, "source"), (mesh.server(), "destination")] {
        // Envoy merges histograms on its stats flush (every 5 s by default).
        wait_samples(envoy, &format!("{DURATION}_count"), "5 lifetimes", |s| {
            s.len() == 1 && s[0].value == 5.0
        });
        let b = buckets(envoy, reporter);
        eprintln!("{reporter}: {DURATION}_bucket {b:?}");
        assert_eq!(b.len(), 20, "19 shipped buckets and +Inf: {b:?}");
        assert_eq!(b["1000"], 3.0, "the short ones under a second");
        assert_eq!(b["5000"], 5.0, "the held ones between 1 s and 5 s");
        assert_eq!(b["86400000"], 5.0);
        assert_eq!(b["+Inf"], 5.0);
        let sum = &samples(envoy, &format!("{DURATION}_sum"))[0];
        assert!(
            (3000.0..6000.0).contains(&sum.value),
            "{reporter}: sum {}",
            sum.value
        );
        assert_eq!(sum.labels.len(), 23, "the histogram has Istio's labels");
    }
    // promtool reads it as a histogram.
    let dir = TempDir::new("lifecycle-promtool");
    let file = dir.path().join("server.prom");
    std::fs::write(&file, mesh.server().prometheus()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool is installed by `make tools`");
    let report =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !report.contains("error while linting") && out.status.code() != Some(1),
        "promtool check metrics: {report}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("# TYPE {DURATION} histogram")),
        "{text}"
    );
    // Real Prometheus, the shipped scrape config: p50 among the short ones, p99 in (1 s, 5 s].
    let prometheus = Prometheus::start(mesh.client.admin_port(), mesh.server().admin_port());
    let quantile = |q: f64| {
        let buckets = format!("{DURATION}_bucket{{reporter=\"destination\"}}");
        let promql = format!("histogram_quantile({q}, sum by (le, reporter) ({buckets}))");
        let result = prometheus.wait_for(&promql, 1, Duration::from_secs(30));
        result[0].1.parse::<f64>().unwrap_or(f64::NAN)
    };
    let (p50, p99) = (quantile(0.5), quantile(0.99));
    eprintln!("Prometheus histogram_quantile: p50 {p50} ms, p99 {p99} ms");
    assert!(p50 < 1000.0, "p50 {p50}");
    assert!((1000.0..=5000.0).contains(&p99), "p99 {p99}");
}

/// A user-defined close-time counter with every close attribute as a label, and the README's
/// failed-connections metric.
const ENDED_DEFINITION: &str = r#"{"definitions":[{"name":"istio_tcp_connections_ended_total",
    "value":"connections_closed",
    "dimensions":{"closed_by":"closed_by","close_flags":"close_flags",
                  "termination_details":"termination_details","duration_class":"duration_class",
                  "destination_service_name":"destination_service_name"}},
  {"name": "istio_tcp_connections_failed_total", "value": "connections_closed",
   "dimensions": {"destination_service_name": "destination_service_name",
                  "close_flags": "close_flags"},
   "match": {"close_flags": ["UF", "UF,URX", "UH", "UO", "NC"]}}]}"#;
const FAILED: &str = "istio_tcp_connections_failed_total";

/// The labels of the series of [`ENDED`] that went up by one since `before`.
fn new_ending(envoy: &Envoy, before: &[Sample]) -> BTreeMap<String, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = samples(envoy, ENDED);
        let grown: Vec<&Sample> = now
            .iter()
            .filter(|s| {
                let old = before
                    .iter()
                    .find(|b| b.labels == s.labels)
                    .map_or(0.0, |b| b.value);
                s.value == old + 1.0
            })
            .collect();
        if grown.len() == 1
            && now.iter().map(|s| s.value).sum::<f64>()
                == before.iter().map(|s| s.value).sum::<f64>() + 1.0
        {
            return grown[0].labels.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{ENDED}: no new ending: {now:#?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn attrs(labels: &BTreeMap<String, String>) -> [&str; 4] {
    [
        &labels["closed_by"],
        &labels["close_flags"],
        &labels["termination_details"],
        &labels["duration_class"],
    ]
    .map(String::as_str)
}

/// Adds `idle_timeout: 2s` to the client sidecar's tcp_proxy.
fn client_idle_timeout(template: &str) -> String {
    template.replace(
        "          stat_prefix: outbound\n",
        "          stat_prefix: outbound\n          idle_timeout: 2s\n",
    )
}

/// Replies "hello " + request; on "bye\n" it replies and closes first.
fn closing_backend() -> Backend {
    Backend::spawn(|mut conn| {
        let mut buf = [0u8; 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return conn.shutdown(Shutdown::Write);
            }
            conn.write_all(b"hello ")?;
            conn.write_all(&buf[..n])?;
            if &buf[..n] == b"bye\n" {
                return conn.shutdown(Shutdown::Both);
            }
        }
    })
}

#[test]
fn close_attributes_tell_how_each_connection_ended() {
    // A refused upstream: the client sidecar points at a port nobody listens on.
    let dead = free_port();
    let opts = MeshOptions {
        client_stats: ENDED_DEFINITION.into(),
        without_server_sidecar: true,
        ..Default::default()
    };
    let mesh = Mesh::start("lifecycle-refused", dead, &opts);
    let mut conn = TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let _ = conn.write_all(b"world\n");
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let refused = new_ending(&mesh.client, &[]);
    eprintln!("refused upstream, source: {:?}", attrs(&refused));
    assert_eq!(refused["closed_by"], "local");
    assert_eq!(
        refused["close_flags"], "UF,URX",
        "connect failure, attempts exhausted"
    );
    assert!(
        refused["termination_details"].contains("Connection_refused"),
        "{refused:?}"
    );
    assert_eq!(refused["duration_class"], "subsecond");
    // It never reached its upstream, so it was opened at close: Istio's response_flags label
    // carries the failure too (the dashboard's "failed connections" panel counts on it).
    let closed = samples(&mesh.client, CLOSED);
    assert_eq!(closed.len(), 1, "{closed:#?}");
    assert_eq!(closed[0].labels["response_flags"], "UF,URX");
    let failed = samples(&mesh.client, FAILED);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0].value, 1.0);
    assert_eq!(
        failed[0].labels,
        BTreeMap::from([
            ("close_flags".to_string(), "UF,URX".to_string()),
            (
                "destination_service_name".to_string(),
                "mongodb".to_string()
            ),
        ])
    );
    assert!(
        samples(&mesh.client, OPEN).is_empty(),
        "closed before it was opened: the gauge is never touched"
    );
    drop(mesh);

    let backend = closing_backend();
    let opts = MeshOptions {
        client_stats: ENDED_DEFINITION.into(),
        server_stats: ENDED_DEFINITION.into(),
        template_edit: Some(client_idle_timeout),
        ..Default::default()
    };
    let mesh = Mesh::start("lifecycle-close", backend.port(), &opts);
    let envoys = [(&mesh.client, "source"), (mesh.server(), "destination")];
    let snapshot = || envoys.map(|(e, _)| samples(e, ENDED));

    // A client reset.
    let before = snapshot();
    hostile::reset(hold(mesh.client_port));
    for ((envoy, reporter), before) in envoys.iter().zip(&before) {
        let l = new_ending(envoy, before);
        eprintln!("client reset, {reporter}: {:?}", attrs(&l));
        assert_eq!(l["closed_by"], "downstream", "{reporter}");
        assert_eq!(
            l["close_flags"], "-",
            "Envoy sets no flag for it: {reporter}"
        );
        assert_eq!(l["destination_service_name"], "mongodb", "{reporter}");
    }

    // The backend closes first.
    let before = snapshot();
    let mut conn = hold(mesh.client_port);
    conn.write_all(b"bye\n").unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    drop(conn);
    for ((envoy, reporter), before) in envoys.iter().zip(&before) {
        let l = new_ending(envoy, before);
        eprintln!("backend close, {reporter}: {:?}", attrs(&l));
        assert_eq!(l["closed_by"], "upstream", "{reporter}");
    }

    // An idle timeout on the client sidecar (2 s).
    let before = snapshot();
    let conn = hold(mesh.client_port);
    let mut rest = Vec::new();
    let mut c = conn.try_clone().unwrap();
    let _ = c.read_to_end(&mut rest);
    for ((envoy, reporter), before) in envoys.iter().zip(&before) {
        let l = new_ending(envoy, before);
        eprintln!("idle timeout, {reporter}: {:?}", attrs(&l));
        let closer = if *reporter == "source" {
            "local"
        } else {
            "downstream"
        };
        assert_eq!(l["closed_by"], closer, "{reporter}");
        assert_eq!(l["duration_class"], "seconds", "{reporter}");
    }
    for (envoy, reporter) in envoys {
        assert!(samples(envoy, FAILED).is_empty(), "{reporter}: none failed");
        // Every way of ending took its connection off the gauge again.
        wait_one(envoy, OPEN, 0.0);
    }
}

#[test]
fn everything_off_adds_no_series() {
    let backend = prefix_server(b"hello ");
    let off = r#"{"metrics":[{"name":"tcp_connections_open","drop":true}]}"#;
    let opts = MeshOptions {
        client_stats: off.into(),
        server_stats: off.into(),
        ..Default::default()
    };
    let mesh = Mesh::start("lifecycle-off", backend.port(), &opts);
    for _ in 0..3 {
        request_reply(mesh.client_port, b"world\n", 12);
    }
    let held = hold(mesh.client_port);
    for envoy in [&mesh.client, mesh.server()] {
        wait_one(envoy, CLOSED, 3.0);
        let names: std::collections::BTreeSet<String> = parse_prometheus(&envoy.prometheus())
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with("istio_tcp"))
            .collect();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "istio_tcp_connections_closed_total",
                "istio_tcp_connections_opened_total",
                "istio_tcp_received_bytes_total",
                "istio_tcp_sent_bytes_total",
                "istio_tcp_stats_series_folded_total",
            ]
        );
    }
    finish(held);
}
