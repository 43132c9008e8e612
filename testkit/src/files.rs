//! Where things are (the crate, Envoy, the Wasm module), free ports, and temporary
//! directories kept for post-mortems when a test fails.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The project's root directory (where `Cargo.toml`, `envoy/` and `.venv/` are): the test
/// kit's parent.
pub fn manifest_dir() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent().unwrap_or(kit).to_path_buf()
}

/// The Envoy binary: `$ENVOY_BIN`, else `<crate>/.venv/bin/envoy` (what `make envoy` installs).
/// Panics (the test fails, it is never skipped) when it does not exist.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join(".venv/bin/envoy"));
    assert!(
        path.is_file(),
        "Envoy not found at {}: run `make envoy` (or set ENVOY_BIN)",
        path.display()
    );
    path
}

/// The Wasm module: `$WASM_MODULE`, else the release build under `target/wasm32-wasip1/`.
/// Panics when it does not exist.
pub fn wasm_module() -> PathBuf {
    let path = std::env::var_os("WASM_MODULE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir().join("target/wasm32-wasip1/release/istio_tcp_telemetry.wasm")
        });
    assert!(
        path.is_file(),
        "Wasm module not found at {}: run `make build` (or set WASM_MODULE)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, release it). No port is handed out
/// twice by one process. Prefer port 0 in the config plus [`Envoy::listener_port`] where
/// possible: a released port can in principle be taken by someone else before it is used.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if handed_out.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("free_port: no new free port after 1000 tries");
}

// ---------------------------------------------------------------------------------------------
// Temporary directories

/// A fresh directory `<tmp>/istio-tcp-telemetry-tests/<name>-<pid>-<n>`. It is removed on drop,
/// unless the thread is panicking: then it is kept (and its path printed) for post-mortems,
/// until the first `TempDir` of a later process prunes the directories of dead processes.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = std::env::temp_dir().join("istio-tcp-telemetry-tests");
        static PRUNED: std::sync::Once = std::sync::Once::new();
        PRUNED.call_once(|| prune_dead_dirs(&base));
        let path = base.join(format!("{safe}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(file)` as a `String`, handy as a template parameter.
    pub fn file(&self, file: &str) -> String {
        self.path.join(file).display().to_string()
    }
}

/// Removes the directories left in `base` by processes that are gone (Linux: checks `/proc`).
fn prune_dead_dirs(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<name>-<pid>-<n>`: the pid is the second field from the end.
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("kept for inspection: {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Reads the lines of a file, waiting up to `timeout` until there are at least `min_lines`
/// (access logs are flushed every 100 ms, see [`Envoy::start`]). Returns what is there then.
pub fn wait_for_lines(path: &Path, min_lines: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<String> = fs::File::open(path)
            .map(|f| {
                io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .collect()
            })
            .unwrap_or_default();
        if lines.len() >= min_lines || Instant::now() > deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
