//! Shared by the adversarial, trust and reload end-to-end tests: a seeded RNG, hostile exchange
//! frames, raw-socket behaviours (reset), and checks on Envoy's health and Prometheus sums.
//! Include with `mod support; mod mesh; mod hostile;`.

#![allow(dead_code)]

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use istio_tcp_telemetry::logic::exchange::frame::{encode_frame, STRUCT_TYPE_URL};
use istio_tcp_telemetry::logic::workload::{string_value, struct_value};
use prost::Message;
use prost_types::{Any, Struct};

use crate::mesh::parse_prometheus;
use crate::support::{exchange_within, http_get, Envoy, HalfClose};

pub use istio_tcp_telemetry::logic::exchange::frame::MAGIC_BYTES as MAGIC;

pub const OPENED: &str = "istio_tcp_connections_opened_total";
pub const CLOSED: &str = "istio_tcp_connections_closed_total";
pub const SENT: &str = "istio_tcp_sent_bytes_total";
pub const RECEIVED: &str = "istio_tcp_received_bytes_total";
/// The frame cap every test config uses (the default `max_frame_bytes`).
pub const CAP: usize = 64 * 1024;

// ---- randomness ------------------------------------------------------------------------------

/// splitmix64: small, seedable, good enough to pick sizes and bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// `ADVERSARIAL_SEED` when set (to replay a failure), else the clock. Printed by the callers.
pub fn seed() -> u64 {
    std::env::var("ADVERSARIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// FNV-1a, streamed: the digest of the concatenation, however the bytes were split.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xCBF2_9CE4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01B3);
        }
    }

    pub fn of(bytes: &[u8]) -> u64 {
        let mut h = Fnv::new();
        h.update(bytes);
        h.0
    }
}

// ---- frames ----------------------------------------------------------------------------------

/// Magic and a declared payload length.
pub fn header(len: u32) -> Vec<u8> {
    [&MAGIC[..], &len.to_be_bytes()].concat()
}

/// A frame around an arbitrary payload.
pub fn frame_with_payload(payload: &[u8]) -> Vec<u8> {
    [header(payload.len() as u32), payload.to_vec()].concat()
}

/// A well-formed frame, as a mesh peer would send it, claiming these fields.
pub fn claimed_frame(fields: &[(&str, &str)], id: &str) -> Vec<u8> {
    let mut md = Struct::default();
    for (k, v) in fields {
        md.fields.insert(k.to_string(), string_value(v));
    }
    encode_frame(&md, id)
}

/// A valid header and `Any`, but the `Any` holds a `google.protobuf.Duration`.
pub fn wrong_type_frame() -> Vec<u8> {
    let any = Any {
        type_url: "type.googleapis.com/google.protobuf.Duration".into(),
        value: vec![0x08, 0x2A],
    };
    frame_with_payload(&any.encode_to_vec())
}

/// `Struct { "a": Value { struct_value: <inner> } }`, as raw protobuf bytes.
fn wrap_struct(inner: &[u8]) -> Vec<u8> {
    let mut value = vec![0x2A]; // Value.struct_value (5), length-delimited
    varint(inner.len(), &mut value);
    value.extend_from_slice(inner);
    let mut entry = vec![0x0A, 0x01, b'a', 0x12]; // key (1) "a", value (2)
    varint(value.len(), &mut entry);
    entry.extend_from_slice(&value);
    let mut strukt = vec![0x0A]; // Struct.fields (1)
    varint(entry.len(), &mut strukt);
    strukt.extend_from_slice(&entry);
    strukt
}

fn varint(mut v: usize, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn struct_frame(value: Vec<u8>) -> Vec<u8> {
    let any = Any {
        type_url: STRUCT_TYPE_URL.into(),
        value,
    };
    frame_with_payload(&any.encode_to_vec())
}

/// Frames holding a `Struct` nested ever deeper (valid protobuf, far beyond prost's recursion
/// limit): the deepest whose frame payload still fits `cap` (with its depth), and one 10^4
/// levels deep, which does not.
pub fn deep_struct_frames(cap: usize) -> (Vec<u8>, usize, Vec<u8>) {
    let mut inner = Vec::new();
    let mut fitting = None;
    for depth in 1..=10_000 {
        let next = wrap_struct(&inner);
        // The Any adds the type URL and two tags and lengths: under 16 bytes besides the URL.
        if fitting.is_none() && next.len() + STRUCT_TYPE_URL.len() + 16 > cap {
            fitting = Some((inner.clone(), depth - 1));
        }
        inner = next;
    }
    let fitting = fitting.expect("10^4 levels exceed the cap");
    let under = struct_frame(fitting.0);
    assert!(under.len() <= 8 + cap, "{} > cap", under.len());
    let over = struct_frame(inner);
    assert!(over.len() > 8 + cap);
    (under, fitting.1, over)
}

/// A well-formed frame whose `LABELS` hold about `bytes` bytes of labels.
pub fn huge_labels_frame(bytes: usize) -> Vec<u8> {
    let mut labels = Struct::default();
    for i in 0..bytes / 100 {
        labels
            .fields
            .insert(format!("label-{i:08}"), string_value(&"v".repeat(80)));
    }
    let mut md = Struct::default();
    md.fields
        .insert("WORKLOAD_NAME".into(), string_value("huge-labels"));
    md.fields.insert("LABELS".into(), struct_value(labels));
    encode_frame(&md, "sidecar~huge")
}

// ---- sockets ---------------------------------------------------------------------------------

extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
}

/// Closes `conn` with a TCP RST (SO_LINGER on, timeout 0), as a crashed or hostile peer would.
pub fn reset(conn: TcpStream) {
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger: [i32; 2] = [1, 0]; // struct linger { l_onoff = 1, l_linger = 0 }
                                   // SAFETY: a valid fd and a pointer to 8 readable bytes, the size of struct linger.
    let rc = unsafe {
        setsockopt(
            conn.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            linger.as_ptr().cast(),
            std::mem::size_of_val(&linger) as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
    drop(conn);
}

/// Writes `bytes`, waits `pause` before half-closing (the server sidecar's tls_inspector resets
/// a plaintext connection whose FIN comes with its first bytes), and reads to EOF.
pub fn send_pause_close(port: u16, bytes: &[u8], pause: Duration) -> Vec<u8> {
    exchange_within(
        port,
        bytes,
        HalfClose::AfterPause(pause),
        Duration::from_secs(15),
    )
    .expect("a reply and EOF before the timeout: no hang")
}

/// The bytes after the sidecar's own exchange frame at the start of `back`.
pub fn after_frame(back: &[u8]) -> &[u8] {
    assert!(
        back.starts_with(&MAGIC),
        "starts with a frame: {:?}",
        &back[..back.len().min(16)]
    );
    let len = u32::from_be_bytes([back[4], back[5], back[6], back[7]]) as usize;
    &back[8 + len..]
}

// ---- Envoy health ----------------------------------------------------------------------------

/// What must not change while hostile peers do their worst.
#[derive(Debug, Clone, PartialEq)]
pub struct VmHealth {
    /// `wasm.envoy.wasm.runtime.v8.created` and `.active`: a trapped VM is replaced (created
    /// grows) or lost (active drops).
    pub created: u64,
    pub active: u64,
    /// Sum of every `wasm.*.vm_reload*` counter but the successes.
    pub reload_trouble: u64,
}

pub fn vm_health(envoy: &Envoy) -> VmHealth {
    let stats = envoy.stats();
    let get = |name: &str| crate::support::parse_stat(&stats, name).unwrap_or(0);
    let reload_trouble = stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| {
            n.starts_with("wasm.") && n.contains(".vm_reload") && !n.ends_with("_success")
        })
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum();
    VmHealth {
        created: get("wasm.envoy.wasm.runtime.v8.created"),
        active: get("wasm.envoy.wasm.runtime.v8.active"),
        reload_trouble,
    }
}

/// Bytes allocated by Envoy's heap (`GET /memory`, tcmalloc's `allocated`).
pub fn allocated(envoy: &Envoy) -> u64 {
    let json: serde_json::Value = serde_json::from_str(&envoy.admin("/memory")).expect("json");
    json["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("allocated")
}

/// Envoy is up and ready, no Wasm VM trapped or was replaced since `before`, and the log holds
/// no panic and no failed proxy-wasm callback.
pub fn assert_unharmed(envoy: &Envoy, what: &str, before: &VmHealth) {
    let (status, body) = http_get(envoy.admin_port(), "/ready");
    assert_eq!((status, body.trim()), (200, "LIVE"), "{what}: /ready");
    let now = vm_health(envoy);
    assert_eq!(&now, before, "{what}: Wasm runtime stats moved");
    assert!(now.active > 0, "{what}: no active VM");
    let log = envoy.log();
    for bad in ["panicked", "Function: proxy_", "RuntimeError", "wasm trap"] {
        assert!(!log.contains(bad), "{what}: log contains {bad:?}");
    }
}

// ---- Prometheus ------------------------------------------------------------------------------

/// The sum of `metric` over all its series in `/stats/prometheus`.
pub fn metric_sum(envoy: &Envoy, metric: &str) -> f64 {
    parse_prometheus(&envoy.prometheus())
        .iter()
        .filter(|s| s.name == metric)
        .map(|s| s.value)
        .sum()
}

/// Polls until every `(metric, value)` sum holds; panics with the sums after `timeout`.
pub fn wait_sums(envoy: &Envoy, what: &str, want: &[(&str, f64)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got: Vec<(&str, f64)> = want
            .iter()
            .map(|(m, _)| (*m, metric_sum(envoy, m)))
            .collect();
        if got.iter().zip(want).all(|(g, w)| g.1 == w.1) {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: wanted {want:?}, got {got:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}
