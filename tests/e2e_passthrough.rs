//! End to end through a real Envoy: bytes pass unchanged through `tcp_proxy`, without Wasm
//! (the harness's self-test) and with the Wasm stats filter in the chain.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

/// xorshift64*: a tiny deterministic generator (std only).
struct Rng(u64);

impl Rng {
    /// Seeded from `E2E_SEED` if set, else from the clock; prints the seed to replay a failure.
    fn from_env_or_time() -> Rng {
        let seed = std::env::var("E2E_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random seed: E2E_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
}

/// Payload sizes from 1 B to 1 MiB: the edges, plus random sizes spread over the decades.
fn payload_sizes(rng: &mut Rng, count: usize) -> Vec<usize> {
    let mut sizes = vec![1, 1024 * 1024];
    while sizes.len() < count {
        let decade = 10usize.pow((rng.next() % 6) as u32 + 1); // 10 … 1_000_000
        sizes.push(((rng.next() as usize) % decade).clamp(1, 1024 * 1024));
    }
    sizes
}

/// Sends `count` random payloads, one connection each, and checks each comes back unchanged.
fn roundtrip_random_payloads(port: u16, count: usize) {
    let mut rng = Rng::from_env_or_time();
    for (i, size) in payload_sizes(&mut rng, count).into_iter().enumerate() {
        let payload = rng.bytes(size);
        let started = Instant::now();
        let echoed = client_roundtrip(port, &payload);
        assert_eq!(
            echoed.len(),
            payload.len(),
            "connection {i}: length of the echo"
        );
        assert!(
            echoed == payload,
            "connection {i}: {size} B echoed with different bytes"
        );
        eprintln!("connection {i}: {size} B ok in {:?}", started.elapsed());
    }
}

#[test]
fn harness_self_test_plain_tcp_proxy() {
    let backend = echo_server();
    let yaml = render(
        "plain-tcp-proxy.yaml",
        &[
            ("ADMIN_PORT", "0".into()),
            ("LISTENER_PORT", "0".into()),
            ("BACKEND_PORT", backend.port().to_string()),
        ],
    );
    let envoy = Envoy::start("plain-tcp-proxy", &yaml, 1);
    let port = envoy.listener_port("plain");
    assert_eq!(client_roundtrip(port, b"ping\n"), b"ping\n");
    roundtrip_random_payloads(port, 5);
    envoy.wait_for_counter("tcp.plain.downstream_cx_total", 6, Duration::from_secs(5));
    assert_eq!(backend.accepted(), 6);
    assert!(envoy.prometheus().contains("envoy_tcp_downstream_cx_total"));
    assert!(envoy.wait_for_log("starting main dispatch loop", Duration::from_secs(5)));
}

#[test]
fn passthrough_with_wasm_stats_filter_keeps_bytes_intact() {
    let backend = echo_server();
    let yaml = render(
        "passthrough.yaml",
        &[
            ("ADMIN_PORT", "0".into()),
            ("LISTENER_PORT", "0".into()),
            ("BACKEND_PORT", backend.port().to_string()),
            ("WASM_PATH", wasm_module().display().to_string()),
            ("STATS_CONFIG", "{}".into()),
        ],
    );
    let envoy = Envoy::start("passthrough", &yaml, 2);
    let port = envoy.listener_port("passthrough");
    roundtrip_random_payloads(port, 20);
    envoy.wait_for_counter(
        "tcp.passthrough.downstream_cx_total",
        20,
        Duration::from_secs(5),
    );
    // All connections closed again (a gauge of the listener).
    let active = "listener.passthrough.downstream_cx_active";
    envoy.wait_for_counter(active, 0, Duration::from_secs(5));
    assert_eq!(backend.accepted(), 20);
    assert_wasm_healthy(&envoy);
}

/// The Wasm VM loaded, is still alive and never failed.
fn assert_wasm_healthy(envoy: &Envoy) {
    let stats = envoy.stats();
    let stat = |name: &str| parse_stat(&stats, name);
    let vm_stats: Vec<&str> = stats.lines().filter(|l| l.starts_with("wasm.")).collect();
    let context = vm_stats.join("\n");
    assert!(
        stat("wasm.envoy.wasm.runtime.v8.active").unwrap_or(0) >= 1,
        "no live V8 Wasm VM:\n{context}"
    );
    assert_eq!(
        stat("wasm.envoy.wasm.runtime.v8.created").map(|c| c >= 1),
        Some(true),
        "{context}"
    );
    for line in &vm_stats {
        let failed = line.contains("fail") || line.contains("crash");
        assert!(
            !failed || line.ends_with(": 0"),
            "Wasm failure stat: {line}\n{context}"
        );
    }
    let log = envoy.log();
    assert!(
        !log.contains("Plugin configured to fail closed"),
        "Wasm plugin failed:\n{log}"
    );
}
