//! The results: rows of A/F/B (and S) measurements with their targets, the markdown table, the
//! machine, and progress lines.

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

/// What B is compared with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Base {
    A,
    F,
}

impl Base {
    fn name(self) -> &'static str {
        match self {
            Base::A => "A",
            Base::F => "F",
        }
    }
}

/// One target of a row, on the medians of the pairs (ratios) or of the values (deltas).
#[derive(Clone, Copy)]
pub enum Goal {
    /// B/base at least this (higher is better).
    RatioAtLeast(Base, f64),
    /// B/base at most this (lower is better).
    RatioAtMost(Base, f64),
    /// B−base at most this.
    DeltaAtMost(Base, f64),
    /// B at most this.
    ValueAtMost(f64),
}

#[derive(Clone, Copy)]
pub enum Target {
    /// Every goal must hold.
    Goals(&'static [Goal]),
    /// No target; show B−A and B−F rather than ratios.
    Delta,
    None,
}

/// One row of the table: the measurements of each variant, pair by pair (A, F, B always; S,
/// the two separate roots, on the rows that measure it).
pub struct Row {
    pub figure: String,
    pub unit: &'static str,
    pub a: Vec<f64>,
    pub f: Vec<f64>,
    pub b: Vec<f64>,
    pub s: Vec<f64>,
    pub o: Vec<f64>,
    pub target: Target,
    pub note: String,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: &'static str, target: Target) -> Row {
        Row {
            figure: figure.into(),
            unit,
            a: Vec::new(),
            f: Vec::new(),
            b: Vec::new(),
            s: Vec::new(),
            o: Vec::new(),
            target,
            note: String::new(),
        }
    }

    fn base(&self, base: Base) -> &[f64] {
        match base {
            Base::A => &self.a,
            Base::F => &self.f,
        }
    }

    /// The pairs' ratios of `of` (B or S values) over the base.
    pub fn ratios_of(&self, of: &[f64], base: Base) -> Vec<f64> {
        self.base(base).iter().zip(of).map(|(x, y)| y / x).collect()
    }

    pub fn holds(&self) -> Option<bool> {
        let Target::Goals(goals) = self.target else {
            return None;
        };
        Some(goals.iter().all(|g| match *g {
            Goal::RatioAtLeast(base, t) => median(&self.ratios_of(&self.b, base)) >= t,
            Goal::RatioAtMost(base, t) => median(&self.ratios_of(&self.b, base)) <= t,
            Goal::DeltaAtMost(base, t) => median(&self.b) - median(self.base(base)) <= t,
            Goal::ValueAtMost(t) => median(&self.b) <= t,
        }))
    }

    pub fn target_text(&self) -> String {
        let Target::Goals(goals) = self.target else {
            return "—".to_string();
        };
        let each: Vec<String> = goals
            .iter()
            .map(|g| {
                let (text, ok) = match *g {
                    Goal::RatioAtLeast(base, t) => (
                        format!("B/{} ≥ {t:.2}", base.name()),
                        median(&self.ratios_of(&self.b, base)) >= t,
                    ),
                    Goal::RatioAtMost(base, t) => (
                        format!("B/{} ≤ {t:.2}", base.name()),
                        median(&self.ratios_of(&self.b, base)) <= t,
                    ),
                    Goal::DeltaAtMost(base, t) => (
                        format!("B−{} ≤ {}", base.name(), num(t)),
                        median(&self.b) - median(self.base(base)) <= t,
                    ),
                    Goal::ValueAtMost(t) => (format!("≤ {}", num(t)), median(&self.b) <= t),
                };
                format!("{text} {}", if ok { "✅" } else { "❌" })
            })
            .collect();
        each.join(", ")
    }

    /// The B/A and B/F cells (`of`: the values of `who`, B or S).
    fn comparison_cells(&self, who: &str, of: &[f64]) -> [String; 2] {
        let delta = matches!(self.target, Target::Delta)
            || matches!(self.target, Target::Goals(g) if g.iter().any(|g| matches!(g, Goal::DeltaAtMost(..))));
        let value_only = matches!(self.target, Target::Goals(g) if g.iter().all(|g| matches!(g, Goal::ValueAtMost(_))));
        [Base::A, Base::F].map(|base| {
            if value_only {
                "—".to_string()
            } else if delta {
                format!(
                    "{who}−{} = {}",
                    base.name(),
                    num(median(of) - median(self.base(base)))
                )
            } else {
                ratio_spread(&self.ratios_of(of, base))
            }
        })
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
        "| figure | unit | A: tcp_proxy only | F: do-nothing Wasm filter | B: istio_tcp_telemetry | B/A per pair | B/F per pair | target |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let figure = if r.note.is_empty() {
            r.figure.clone()
        } else {
            format!("{} ({})", r.figure, r.note)
        };
        let [vs_a, vs_f] = r.comparison_cells("B", &r.b);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            figure,
            r.unit,
            spread(&r.a),
            spread(&r.f),
            spread(&r.b),
            vs_a,
            vs_f,
            r.target_text()
        );
        if !r.s.is_empty() {
            let [vs_a, vs_f] = r.comparison_cells("S", &r.s);
            let _ = writeln!(
                out,
                "| ↳ the same with the two separate roots (S: `istio_metadata_exchange` + `istio_tcp_stats`) in B's place | {} | | | {} | {} | {} | — |",
                r.unit,
                spread(&r.s),
                vs_a,
                vs_f,
            );
        }
        if !r.o.is_empty() {
            let [vs_a, vs_f] = r.comparison_cells("O", &r.o);
            let _ = writeln!(
                out,
                "| ↳ the same with B's additions to Istio's four counters off (O: open-connections gauge dropped; lifetime histogram and close attributes are off by default) | {} | | | {} | {} | {} | — |",
                r.unit,
                spread(&r.o),
                vs_a,
                vs_f,
            );
        }
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
    /// Adds one measurement of a variant.
    pub fn push(&mut self, variant: Variant, value: f64) {
        match variant {
            Variant::A => self.a.push(value),
            Variant::F => self.f.push(value),
            Variant::B => self.b.push(value),
            Variant::S => self.s.push(value),
            Variant::O => self.o.push(value),
        }
    }

    /// "A x F y B z" of pair `i`, for progress lines.
    pub fn pair(&self, i: usize) -> String {
        let at = |v: &[f64]| v.get(i).map_or("-".to_string(), |x| num(*x));
        let mut text = format!("A {} F {} B {}", at(&self.a), at(&self.f), at(&self.b));
        if !self.s.is_empty() {
            text.push_str(&format!(" S {}", at(&self.s)));
        }
        if !self.o.is_empty() {
            text.push_str(&format!(" O {}", at(&self.o)));
        }
        text
    }
}
