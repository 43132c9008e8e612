//! The results: rows of (A, B) pairs with a target each, the markdown table, the machine,
//! and progress lines.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Instant;

use crate::sidecars::Variant;

pub fn elapsed_tag(start: Instant) -> String {
    let s = start.elapsed().as_secs();
    format!("[{:02}:{:02}]", s / 60, s % 60)
}

/// `progress!(start, "...")`: one timestamped line, flushed.
#[macro_export]
macro_rules! progress {
    ($start:expr, $($arg:tt)*) => {{
        use std::io::Write as _;
        println!("{} {}", $crate::report::elapsed_tag($start), format!($($arg)*));
        let _ = std::io::stdout().flush();
    }};
}

pub fn median(v: &[f64]) -> f64 {
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

pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

#[derive(Clone, Copy)]
pub enum Target {
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
pub struct Row {
    pub figure: String,
    pub unit: &'static str,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub target: Target,
    pub note: String,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: &'static str, target: Target) -> Row {
        Row {
            figure: figure.into(),
            unit,
            a: Vec::new(),
            b: Vec::new(),
            target,
            note: String::new(),
        }
    }

    pub fn ratios(&self) -> Vec<f64> {
        self.a.iter().zip(&self.b).map(|(a, b)| b / a).collect()
    }

    pub fn holds(&self) -> Option<bool> {
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

    pub fn target_text(&self) -> String {
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

pub fn num(x: f64) -> String {
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

pub fn spread(v: &[f64]) -> String {
    if v.len() < 2 {
        return num(median(v));
    }
    let (lo, hi) = min_max(v);
    format!("{} ({}–{})", num(median(v)), num(lo), num(hi))
}

pub fn ratio_spread(v: &[f64]) -> String {
    if v.is_empty() || v.iter().all(|x| !x.is_finite()) {
        return "—".to_string();
    }
    if v.len() < 2 {
        return format!("{:.3}", median(v));
    }
    let (lo, hi) = min_max(v);
    format!("{:.3} ({:.3}–{:.3})", median(v), lo, hi)
}

pub fn table(rows: &[Row]) -> String {
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

pub fn machine() -> String {
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
    let envoy = Command::new(testkit::files::envoy_bin())
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

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces the text between the bench markers of `path` (or writes a new file).
pub fn write_markdown(path: &Path, section: &str) {
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

impl Row {
    /// Adds one measurement to the A or B side.
    pub fn push(&mut self, variant: Variant, value: f64) {
        match variant {
            Variant::A => self.a.push(value),
            Variant::B => self.b.push(value),
        }
    }
}
