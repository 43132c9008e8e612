//! Test harness: runs the real Envoy with the real Wasm module, plus loopback backends and
//! clients, using only `std` (and the `openssl` command for certificates).
//!
//! Include it from an integration test with `mod support;` (the demo uses
//! `#[path = "../tests/support/mod.rs"] mod support;`).
//!
//! - Locating the binaries: [`envoy_bin`], [`wasm_module`] (both panic, never skip).
//! - Configs: [`render`] fills a template of `envoy/`; [`yaml_single_quoted`], [`stats_tags`].
//! - Envoy: [`Envoy::start`] / [`Envoy::builder`], admin helpers ([`Envoy::counter`],
//!   [`Envoy::wait_for_counter`], [`Envoy::listener_port`], …), [`validate_config`].
//! - Network: [`free_port`], [`http_get`], backends [`echo_server`], [`prefix_server`],
//!   [`greeting_server`], client [`client_roundtrip`].
//! - Files: [`TempDir`], [`make_mtls_certs`].
//!
//! Ports: templates accept port 0 for both the admin and the listeners. The harness reads the
//! admin address back (`--admin-address-path`) and the listener ports from `GET /listeners`
//! ([`Envoy::listener_port`]), so no port is ever guessed.

// Every test binary uses only part of the harness.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long [`Envoy::start`] waits for `GET /ready` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Overall deadline of one [`client_roundtrip`].
pub const ROUNDTRIP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Locating things

/// The crate's root directory (where `Cargo.toml`, `envoy/` and `.venv/` are).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

// ---------------------------------------------------------------------------------------------
// Templates

/// `envoy/stats-tags.yaml` without its comment lines: the top-level `stats_config:` block that
/// fills a template's `{{STATS_TAGS}}` placeholder.
pub fn stats_tags() -> String {
    let path = manifest_dir().join("envoy/stats-tags.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    strip_comment_lines(&text).trim_end().to_string()
}

/// Escapes `s` for use inside a single-quoted YAML scalar (the templates write
/// `value: '{{STATS_CONFIG}}'`): doubles every single quote.
pub fn yaml_single_quoted(s: &str) -> String {
    s.replace('\'', "''")
}

/// Renders `envoy/<template_rel_path>`: drops full-line comments (the documentation header),
/// then replaces every `{{NAME}}` with its value from `params`. `{{STATS_TAGS}}` defaults to
/// [`stats_tags`]. Values are inserted verbatim and not scanned again.
///
/// Panics when a placeholder has no value, or when a parameter is not used by the template.
pub fn render(template_rel_path: &str, params: &[(&str, String)]) -> String {
    let path = manifest_dir().join("envoy").join(template_rel_path);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = strip_comment_lines(&text);
    let mut used = vec![false; params.len()];
    let mut out = String::with_capacity(text.len() * 2);
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("{template_rel_path}: unterminated '{{{{'"));
        let name = &after[..end];
        match params.iter().position(|(k, _)| *k == name) {
            Some(i) => {
                used[i] = true;
                out.push_str(&params[i].1);
            }
            None if name == "STATS_TAGS" => out.push_str(&stats_tags()),
            None => panic!("{template_rel_path}: no value for {{{{{name}}}}}"),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    let unused: Vec<&str> = (params.iter().zip(&used))
        .filter(|(_, u)| !**u)
        .map(|((k, _), _)| *k)
        .collect();
    assert!(
        unused.is_empty(),
        "{template_rel_path}: parameters not in the template: {unused:?}"
    );
    out
}

fn strip_comment_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// Runs `envoy --mode validate` on `config_yaml`; `Err` holds Envoy's output.
pub fn validate_config(name: &str, config_yaml: &str) -> Result<(), String> {
    let dir = TempDir::new(&format!("validate-{name}"));
    let cfg = dir.path().join("envoy.yaml");
    fs::write(&cfg, config_yaml).expect("write config");
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-l", "warning", "-c"])
        .arg(&cfg)
        .output()
        .expect("run envoy --mode validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy

/// Options for starting an Envoy; see [`Envoy::builder`].
pub struct EnvoyBuilder {
    name: String,
    config_yaml: String,
    concurrency: u32,
    log_level: String,
    args: Vec<String>,
    own_process_group: bool,
    die_with_parent: bool,
}

impl EnvoyBuilder {
    /// `--concurrency` (worker threads); default 1.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// `-l`; default `$ENVOY_TEST_LOG_LEVEL`, else `info`
    /// (e.g. `ENVOY_TEST_LOG_LEVEL=debug cargo test --test e2e_passthrough`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Extra command-line arguments, appended after the harness's own.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Run Envoy in its own process group (default true), so a terminal's Ctrl-C meant for the
    /// test runner does not reach it. The demo sets false so that Ctrl-C stops Envoy too.
    pub fn own_process_group(mut self, yes: bool) -> Self {
        self.own_process_group = yes;
        self
    }

    /// Linux: Envoy gets SIGTERM when the *thread* that started it ends (default true), so a
    /// killed test run leaves no Envoy behind. Set false to start an Envoy that outlives its
    /// thread (e.g. one shared by several tests).
    pub fn die_with_parent(mut self, yes: bool) -> Self {
        self.die_with_parent = yes;
        self
    }

    /// Starts Envoy and waits until it is ready; see [`Envoy::start`].
    pub fn start(self) -> Envoy {
        Envoy::spawn(self)
    }
}

/// A running Envoy; stopped (SIGTERM, then SIGKILL after 5 s) on drop. When the thread is
/// panicking, the drop prints the end of Envoy's log to stderr and keeps its directory.
pub struct Envoy {
    name: String,
    child: Child,
    dir: TempDir,
    admin_port: u16,
}

impl Envoy {
    /// Starts Envoy with `config_yaml` and `--concurrency <concurrency>` and waits (up to
    /// [`READY_TIMEOUT`]) until `GET /ready` answers 200. Config, log, stdout/stderr and the
    /// admin address file live in a fresh [`TempDir`] named after `name`.
    ///
    /// Command line: `-c <cfg> --concurrency N --disable-hot-restart --log-path <log> -l info
    /// --admin-address-path <file> --file-flush-interval-msec 100` (access logs reach their
    /// files within 0.1 s; `-l` follows `$ENVOY_TEST_LOG_LEVEL` when set). Fails the test,
    /// printing the log, if Envoy exits or is not ready.
    pub fn start(name: &str, config_yaml: &str, concurrency: u32) -> Envoy {
        Envoy::builder(name, config_yaml)
            .concurrency(concurrency)
            .start()
    }

    /// Like [`Envoy::start`] with extra command-line arguments.
    pub fn start_with_args(
        name: &str,
        config_yaml: &str,
        concurrency: u32,
        args: &[&str],
    ) -> Envoy {
        Envoy::builder(name, config_yaml)
            .concurrency(concurrency)
            .args(args.iter().copied())
            .start()
    }

    /// A builder for the less common options ([`EnvoyBuilder`]).
    pub fn builder(name: &str, config_yaml: &str) -> EnvoyBuilder {
        EnvoyBuilder {
            name: name.to_string(),
            config_yaml: config_yaml.to_string(),
            concurrency: 1,
            log_level: std::env::var("ENVOY_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".to_string()),
            args: Vec::new(),
            own_process_group: true,
            die_with_parent: true,
        }
    }

    fn spawn(b: EnvoyBuilder) -> Envoy {
        let bin = envoy_bin();
        let dir = TempDir::new(&b.name);
        let cfg = dir.path().join("envoy.yaml");
        let log = dir.path().join("envoy.log");
        let addr_file = dir.path().join("admin-address");
        fs::write(&cfg, &b.config_yaml).expect("write Envoy config");
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--concurrency", &b.concurrency.to_string()])
            .arg("--disable-hot-restart")
            .arg("--log-path")
            .arg(&log)
            .args(["-l", &b.log_level])
            .arg("--admin-address-path")
            .arg(&addr_file)
            .args(["--file-flush-interval-msec", "100"])
            .args(&b.args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("stdout.txt")).expect("stdout file"))
            .stderr(fs::File::create(dir.path().join("stderr.txt")).expect("stderr file"));
        if b.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        if b.die_with_parent {
            sys::die_with_parent(&mut cmd);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut envoy = Envoy {
            name: b.name,
            child,
            dir,
            admin_port: 0,
        };
        envoy.wait_ready(&addr_file);
        envoy
    }

    /// Waits for the admin address file, then for `GET /ready` = 200.
    fn wait_ready(&mut self, addr_file: &Path) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Envoy '{}' exited during startup ({status}).\n{}",
                    self.name,
                    self.output_tail(200)
                );
            }
            if self.admin_port == 0 {
                if let Ok(text) = fs::read_to_string(addr_file) {
                    // The file reads "127.0.0.1:PORT" once written.
                    if let Some(port) = text.trim().rsplit(':').next().and_then(|p| p.parse().ok())
                    {
                        self.admin_port = port;
                    }
                }
            }
            if self.admin_port != 0 {
                if let Ok((200, _)) = try_http_get(self.admin_port, "/ready") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "Envoy '{}' not ready after {READY_TIMEOUT:?} (admin port {}).\n{}",
                    self.name,
                    self.admin_port,
                    self.output_tail(200)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin port (read back from Envoy, so `ADMIN_PORT` 0 works).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding this Envoy's config, log and output.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET path` on the admin port; panics unless the status is 200.
    pub fn admin(&self, path: &str) -> String {
        let (status, body) = http_get(self.admin_port, path);
        assert_eq!(status, 200, "GET {path} on Envoy '{}': {body}", self.name);
        body
    }

    /// `GET /stats`: one `name: value` line per stat.
    pub fn stats(&self) -> String {
        self.admin("/stats")
    }

    /// `GET /stats/prometheus`.
    pub fn prometheus(&self) -> String {
        self.admin("/stats/prometheus")
    }

    /// The value of counter or gauge `name` in `/stats`, if Envoy has it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        parse_stat(&self.stats(), name)
    }

    /// Polls `/stats` until counter `name` equals `expected`; panics with the used stats after
    /// `timeout`.
    pub fn wait_for_counter(&self, name: &str, expected: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.counter(name);
            if value == Some(expected) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "Envoy '{}': {name} = {value:?}, expected {expected} within {timeout:?}.\n\
                     Stats in use:\n{}",
                    self.name,
                    self.admin("/stats?usedonly")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port listener `listener` is bound to (from `GET /listeners`: `name::addr:port`).
    pub fn listener_port(&self, listener: &str) -> u16 {
        let text = self.admin("/listeners");
        text.lines()
            .find_map(|l| {
                let (name, addr) = l.split_once("::")?;
                (name == listener).then(|| addr.rsplit(':').next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("Envoy '{}': no listener {listener} in:\n{text}", self.name))
    }

    /// Envoy's log so far. Envoy writes it in batches (every 100 ms, see [`Envoy::start`]): use
    /// [`Envoy::wait_for_log`] for a line that should appear.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Polls the log until it contains `needle`; returns false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of the log, plus stdout/stderr if not empty.
    fn output_tail(&self, lines: usize) -> String {
        let mut out = format!(
            "----- last {lines} lines of Envoy '{}' log ({}) -----\n",
            self.name,
            self.dir.path().join("envoy.log").display()
        );
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        for l in &all[all.len().saturating_sub(lines)..] {
            out.push_str(l);
            out.push('\n');
        }
        for file in ["stdout.txt", "stderr.txt"] {
            let text = fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
            if !text.trim().is_empty() {
                out.push_str(&format!("----- {file} -----\n{text}\n"));
            }
        }
        out.push_str("----- end -----");
        out
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            sys::signal(pid, sys::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill(); // SIGKILL
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("{}", self.output_tail(200));
        }
    }
}

/// Finds `name: <integer>` in `/stats` text.
pub fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(": ")?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// Signals and process lifetime, through the C library std already links (no extra crate).
mod sys {
    use std::os::raw::c_int;

    pub const SIGTERM: c_int = 15;

    extern "C" {
        fn kill(pid: c_int, sig: c_int) -> c_int;
    }

    /// Sends `sig` to process `pid` (errors, e.g. already gone, are ignored).
    pub fn signal(pid: u32, sig: c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { kill(pid as c_int, sig) };
    }

    /// Makes the child get SIGTERM when the thread that spawned it ends (Linux only).
    #[cfg(target_os = "linux")]
    pub fn die_with_parent(cmd: &mut std::process::Command) {
        use std::os::raw::c_ulong;
        use std::os::unix::process::CommandExt;
        const PR_SET_PDEATHSIG: c_int = 1;
        extern "C" {
            fn prctl(op: c_int, a2: c_ulong, a3: c_ulong, a4: c_ulong, a5: c_ulong) -> c_int;
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGTERM as c_ulong, 0, 0, 0);
                Ok(())
            });
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn die_with_parent(_cmd: &mut std::process::Command) {}
}

// ---------------------------------------------------------------------------------------------
// HTTP (admin)

/// `GET path` on 127.0.0.1:`port` with HTTP/1.1 and `Connection: close`; returns the status and
/// the body (de-chunked). Panics on I/O errors.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}{path}: {e}"))
}

pub fn try_http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let split = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// A TCP server on 127.0.0.1 run by a thread (one more thread per connection). Stops accepting
/// on drop; connections already open finish on their own.
pub struct Backend {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a server that runs `handle` on every accepted connection.
    pub fn spawn<F>(handle: F) -> Backend
    where
        F: Fn(TcpStream) -> io::Result<()> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handle = Arc::new(handle);
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let handle = handle.clone();
                thread::spawn(move || {
                    let _ = handle(conn);
                });
            }
        });
        Backend {
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes up accept()
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `conn` back to itself, each chunk preceded by `prefix`, until EOF; then closes the
/// write side.
fn serve_chunks(mut conn: TcpStream, prefix: &[u8]) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return conn.shutdown(Shutdown::Write);
        }
        if prefix.is_empty() {
            conn.write_all(&buf[..n])?;
        } else {
            let mut out = Vec::with_capacity(prefix.len() + n);
            out.extend_from_slice(prefix);
            out.extend_from_slice(&buf[..n]);
            conn.write_all(&out)?;
        }
    }
}

/// Echoes every byte back until EOF, then closes its write side. Returns the running backend.
pub fn echo_server() -> Backend {
    Backend::spawn(|conn| serve_chunks(conn, b""))
}

/// For every chunk received writes `prefix` + the chunk ("hello " + "world\n" →
/// "hello world\n"); closes its write side at EOF. Send small requests: a chunk is whatever
/// one read returns.
pub fn prefix_server(prefix: &'static [u8]) -> Backend {
    Backend::spawn(move |conn| serve_chunks(conn, prefix))
}

/// Server-first: writes `greeting` as soon as a connection is accepted, then echoes.
pub fn greeting_server(greeting: &'static [u8]) -> Backend {
    Backend::spawn(move |mut conn| {
        conn.write_all(greeting)?;
        serve_chunks(conn, b"")
    })
}

// ---------------------------------------------------------------------------------------------
// Client

/// Connects to 127.0.0.1:`port`, writes `payload` (from a second thread, so large payloads
/// cannot deadlock against an echo), shuts down its write side and reads until EOF. Panics on
/// any error or after [`ROUNDTRIP_TIMEOUT`].
pub fn client_roundtrip(port: u16, payload: &[u8]) -> Vec<u8> {
    try_client_roundtrip(port, payload)
        .unwrap_or_else(|e| panic!("roundtrip via 127.0.0.1:{port} ({} B): {e}", payload.len()))
}

/// [`client_roundtrip`] returning errors instead of panicking.
pub fn try_client_roundtrip(port: u16, payload: &[u8]) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + ROUNDTRIP_TIMEOUT;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_write_timeout(Some(ROUNDTRIP_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let payload = payload.to_vec();
    let write = thread::spawn(move || -> io::Result<()> {
        writer.write_all(&payload)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no EOF after {ROUNDTRIP_TIMEOUT:?} ({} B read)", out.len()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    write.join().expect("writer thread")?;
    Ok(out)
}

/// Connects to 127.0.0.1:`port`, writes `payload` and reads until the reply ends with `end`
/// (or EOF), then closes, without ever half-closing. Use it where the client must not send a
/// FIN early: Envoy 1.40 resets a connection whose FIN arrives before a listener filter (the
/// server sidecar's `tls_inspector`) has peeked at it. Panics on errors or after
/// [`ROUNDTRIP_TIMEOUT`].
pub fn request_until(port: u16, payload: &[u8], end: &[u8]) -> Vec<u8> {
    let fail = |e: io::Error| -> ! { panic!("request via 127.0.0.1:{port}: {e}") };
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| fail(e));
    stream
        .set_read_timeout(Some(ROUNDTRIP_TIMEOUT))
        .and_then(|_| stream.write_all(payload))
        .unwrap_or_else(|e| fail(e));
    let deadline = Instant::now() + ROUNDTRIP_TIMEOUT;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(end) {
        assert!(
            Instant::now() < deadline,
            "request via 127.0.0.1:{port}: timed out"
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => fail(e),
        }
    }
    out
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

// ---------------------------------------------------------------------------------------------
// Certificates

/// SPIFFE identity of the client certificate (Bookinfo's ratings-v2).
pub const CLIENT_SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings-v2";
/// SPIFFE identity of the server certificate (Bookinfo's mongodb).
pub const SERVER_SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-mongodb";

/// PEM files made by [`make_mtls_certs`].
#[derive(Debug, Clone)]
pub struct MtlsCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Makes, in `dir`, with the `openssl` command (`make tools` installs it): a CA, a client
/// certificate with URI SAN [`CLIENT_SPIFFE`] and a server certificate with URI SAN
/// [`SERVER_SPIFFE`] and DNS SAN `localhost`. EC P-256 keys, valid for a day.
pub fn make_mtls_certs(dir: &Path) -> MtlsCerts {
    fs::create_dir_all(dir).expect("cert dir");
    let p = |f: &str| dir.join(f);
    let certs = MtlsCerts {
        ca_cert: p("ca.pem"),
        ca_key: p("ca-key.pem"),
        client_cert: p("client.pem"),
        client_key: p("client-key.pem"),
        server_cert: p("server.pem"),
        server_key: p("server-key.pem"),
    };
    let s = |path: &PathBuf| path.display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "1", "-subj", "/O=cluster.local/CN=Test CA"],
        ]
        .concat(),
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &s(&certs.ca_key),
            "-out",
            &s(&certs.ca_cert),
        ],
    );
    let leaves = [
        (
            "client",
            &certs.client_cert,
            &certs.client_key,
            format!("URI:{CLIENT_SPIFFE}"),
        ),
        (
            "server",
            &certs.server_cert,
            &certs.server_key,
            format!("URI:{SERVER_SPIFFE},DNS:localhost"),
        ),
    ];
    for (name, cert, key, san) in leaves {
        let csr = p(&format!("{name}.csr"));
        let ext = p(&format!("{name}.ext"));
        fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=critical,{san}\n"
            ),
        )
        .expect("write ext file");
        openssl(
            &[&["req"], &ec[..], &["-subj", "/O=cluster.local"]].concat(),
            &["-keyout", &s(key), "-out", &s(&csr)],
        );
        openssl(
            &["x509", "-req", "-days", "1", "-set_serial", &serial(name)],
            &[
                "-in",
                &s(&csr),
                "-CA",
                &s(&certs.ca_cert),
                "-CAkey",
                &s(&certs.ca_key),
                "-extfile",
                &s(&ext),
                "-out",
                &s(cert),
            ],
        );
    }
    certs
}

/// A serial number that differs between runs and between the two leaves.
fn serial(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}",
        (nanos % 1_000_000_000_000) * 2 + u128::from(name == "server")
    )
}

fn openssl(args: &[&str], more: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .args(more)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (install it: `make tools`): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Bookinfo's ratings-v2 → mongodb, for tests/mesh and the demo

/// Node metadata of the client workload (Bookinfo's ratings-v2), as Istio's agent sets it.
pub const RATINGS_NODE_METADATA: &str = r#"{"NAME": "ratings-v2-5d7c8b9f4-x2k9p", "NAMESPACE": "default", "WORKLOAD_NAME": "ratings-v2", "CLUSTER_ID": "Kubernetes", "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v2", "LABELS": {"app": "ratings", "version": "v2", "service.istio.io/canonical-name": "ratings-v2", "service.istio.io/canonical-revision": "v2"}}"#;
/// Node id of the client sidecar.
pub const RATINGS_NODE_ID: &str =
    "sidecar~10.44.0.11~ratings-v2-5d7c8b9f4-x2k9p.default~default.svc.cluster.local";
/// Node metadata of the server workload (Bookinfo's mongodb-v1).
pub const MONGODB_NODE_METADATA: &str = r#"{"NAME": "mongodb-v1-6b8f9c7d5-q7w4e", "NAMESPACE": "default", "WORKLOAD_NAME": "mongodb-v1", "CLUSTER_ID": "Kubernetes", "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/mongodb-v1", "LABELS": {"app": "mongodb", "version": "v1", "service.istio.io/canonical-name": "mongodb", "service.istio.io/canonical-revision": "v1"}}"#;
/// Node id of the server sidecar.
pub const MONGODB_NODE_ID: &str =
    "sidecar~10.44.0.12~mongodb-v1-6b8f9c7d5-q7w4e.default~default.svc.cluster.local";
/// The service the client calls.
pub const SERVICE_HOST: &str = "mongodb.default.svc.cluster.local";
pub const SERVICE_NAME: &str = "mongodb";
pub const SERVICE_NAMESPACE: &str = "default";
pub const SERVICE_PORT: u16 = 27017;
/// The client's view of the server endpoint (`istio.workload` endpoint metadata).
pub const MONGODB_ENDPOINT_WORKLOAD: &str = "mongodb-v1;default;mongodb;v1;Kubernetes";
