//! The topologies, side by side: the test kit's mesh (client sidecar → server sidecar →
//! backend, from the shipped templates, `--concurrency 2`), with circuit breakers lifted for
//! all; A without any Wasm filter, F with the do-nothing filter in the same chain position as
//! ours, B as shipped (the combined filter), S with the two separate filters; plus what the
//! bench reads from a running Envoy.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use testkit::envoy::Envoy;
use testkit::files::wasm_module;
use testkit::mesh::{Filters, Mesh, MeshOptions};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// tcp_proxy only.
    A,
    /// The floor: a proxy-wasm filter that does nothing (`benches/noop_filter`), where B has
    /// ours.
    F,
    /// As shipped: `istio_tcp_telemetry` (exchange + stats in one context) on both sidecars.
    B,
    /// The two separate filters (`istio_metadata_exchange` + `istio_tcp_stats`) on both.
    S,
    /// B with everything beyond Istio's four counters off: the open-connections gauge dropped
    /// (the lifetime histogram and close attributes are off by default).
    O,
}

/// Variant O's stats configuration: Istio's four counters only.
const STATS_EXTRAS_OFF: &str = r#"{"metrics":[{"name":"tcp_connections_open","drop":true}]}"#;

impl Variant {
    /// Wasm filters in both sidecars' chains (client 1 chain; server 3: mTLS expect, mTLS
    /// detect, plaintext detect).
    fn wasm_filters(self) -> usize {
        match self {
            Variant::A => 0,
            Variant::F | Variant::B | Variant::O => 4,
            Variant::S => 8,
        }
    }
}

/// The do-nothing module (`make bench` builds it next to ours; `NOOP_MODULE` overrides).
pub fn noop_module() -> PathBuf {
    let path = std::env::var_os("NOOP_MODULE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| wasm_module().with_file_name("noop_filter.wasm"));
    assert!(
        path.is_file(),
        "do-nothing module not found at {}: run `make bench` (it builds benches/noop_filter)",
        path.display()
    );
    path
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

/// Variant A's edit of a template: circuit breakers lifted, Wasm filters removed.
fn edit_a(template: &str) -> String {
    strip_wasm_filters(&edit_b(template))
}

/// Variant F's edit: circuit breakers lifted, each of our filter entries loads the do-nothing
/// module instead (its own VM; the configuration is ignored).
fn edit_f(template: &str) -> String {
    let noop = noop_module().display().to_string();
    let text = edit_b(template)
        .replace("root_id: istio_tcp_telemetry", "root_id: noop")
        .replace("vm_id: istio_tcp_telemetry", "vm_id: noop")
        .replace("{{WASM_PATH}}", &noop);
    assert!(
        !text.contains("istio_tcp_telemetry\n"),
        "F must not load our module"
    );
    text
}

/// Variant B's edit: circuit breakers lifted (the filters as shipped).
fn edit_b(template: &str) -> String {
    let text = lift_circuit_breakers(template);
    assert!(
        text.contains("max_connections: 4294967295"),
        "no cluster found in a template"
    );
    text
}

/// One running topology.
pub struct Sidecars {
    pub variant: Variant,
    pub mesh: Mesh,
}

impl Sidecars {
    /// Plaintext (the server's plaintext chain in detect mode), as the tests' mesh.
    pub fn start(variant: Variant, backend_port: u16) -> Sidecars {
        let name = format!("bench-{variant:?}").to_lowercase();
        let mut opts = MeshOptions {
            concurrency: 2,
            log_level: Some("warning"),
            template_edit: Some(match variant {
                Variant::A => edit_a,
                Variant::F => edit_f,
                Variant::B | Variant::S | Variant::O => edit_b,
            }),
            filters: match variant {
                Variant::S => Filters::Separate,
                _ => Filters::Combined,
            },
            ..MeshOptions::default()
        };
        if variant == Variant::O {
            opts.client_stats = STATS_EXTRAS_OFF.to_string();
            opts.server_stats = STATS_EXTRAS_OFF.to_string();
        }
        let mesh = Mesh::start(&name, backend_port, &opts);
        let wasm_filters = mesh.client_config.matches("wasm.v3.Wasm").count()
            + mesh.server_config.matches("wasm.v3.Wasm").count();
        assert_eq!(
            wasm_filters,
            variant.wasm_filters(),
            "{variant:?}: Wasm filters"
        );
        Sidecars { variant, mesh }
    }

    pub fn client_port(&self) -> u16 {
        self.mesh.client_port
    }

    pub fn client(&self) -> &Envoy {
        &self.mesh.client
    }

    pub fn server(&self) -> &Envoy {
        self.mesh.server()
    }

    pub fn envoys(&self) -> [(&'static str, &Envoy); 2] {
        [("client", self.client()), ("server", self.server())]
    }

    /// CPU time of both sidecars so far, in µs.
    pub fn cpu_us(&self) -> f64 {
        cpu_us(self.client()) + cpu_us(self.server())
    }

    /// Waits (up to 20 s) until neither sidecar has a proxied connection left.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if active_connections(self.client()) == 0 && active_connections(self.server()) == 0 {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Envoy's heap in use (`/memory` allocated) and the process's resident set.
#[derive(Clone, Copy, Default)]
pub struct Mem {
    pub allocated: f64,
    pub rss: f64,
}

pub fn memory(envoy: &Envoy) -> Mem {
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

/// Sum of the listeners' `downstream_cx_active` (0 once every proxied connection is gone).
fn active_connections(envoy: &Envoy) -> u64 {
    envoy
        .admin("/stats?filter=downstream_cx_active")
        .lines()
        .filter(|l| l.starts_with("listener.") && !l.starts_with("listener.admin"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}
