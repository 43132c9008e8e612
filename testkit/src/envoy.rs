//! A real Envoy process: started from a rendered config, ready-checked, read through its admin
//! API, stopped on drop.

use std::fs;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::files::{envoy_bin, TempDir};
use crate::http::{http_get, try_http_get};

/// How long [`Envoy::start`] waits for `GET /ready` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

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
