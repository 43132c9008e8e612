//! A real Prometheus (Debian's, installed by `make tools`) scraping both sidecars with the shipped
//! `examples/prometheus/` configuration, and its HTTP query API: the task's "type the metric,
//! press Execute" step. Used by `make prometheus` (the demo's `--prometheus`) and a test.

#![forbid(unsafe_code)]

use std::fs;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::files::{free_port, manifest_dir, TempDir};
use crate::http::http_get;

pub struct Prometheus {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with `examples/prometheus/prometheus.yml`
    /// (and its recording rules), its two targets pointed at the given admin ports and a 1 s
    /// scrape interval. Panics, failing the test, if `prometheus` is missing or never ready.
    pub fn start(client_admin: u16, server_admin: u16) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let shipped = manifest_dir().join("examples/prometheus");
        let config = fs::read_to_string(shipped.join("prometheus.yml")).expect("prometheus.yml");
        let config = config
            .replace("localhost:15000", &format!("127.0.0.1:{client_admin}"))
            .replace("localhost:15001", &format!("127.0.0.1:{server_admin}"))
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("evaluation_interval: 5s", "evaluation_interval: 1s");
        fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        fs::copy(
            shipped.join("recording-rules.yaml"),
            dir.path().join("recording-rules.yaml"),
        )
        .expect("copy rules");
        let port = free_port();
        let log = fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package `prometheus`, installed by `make tools`)");
        let mut prometheus = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(crate::http::try_http_get(port, "/-/ready"), Ok((200, _))) {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=…`: the instant vector's samples as (labels, value).
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, String)> {
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        );
        assert_eq!(status, 200, "query {promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let labels = r["metric"].as_object().cloned().unwrap_or_default();
                let value = r["value"][1].as_str().unwrap_or_default().to_string();
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` until it returns at least `n` samples.
    pub fn wait_for(
        &self,
        promql: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(serde_json::Map<String, serde_json::Value>, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if result.len() >= n {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: {} samples after {timeout:?}:\n{}",
                result.len(),
                self.log()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
