//! The load generator the workloads share: connections, 64-byte messages, timed windows.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Request and response size of the request/response workloads.
pub const MSG: usize = 64;
/// Write/read chunk of the bulk workloads.
pub const CHUNK: usize = 256 * 1024;
/// Warm-up before each timed window.
pub const WARMUP: Duration = Duration::from_millis(300);

pub fn connect(port: u16) -> io::Result<TcpStream> {
    let c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(c)
}

pub fn request(first: u8) -> [u8; MSG] {
    let mut msg = [b'x'; MSG];
    msg[0] = first;
    msg
}

pub struct Rate {
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// Latencies (µs) of the operations finished inside the window, from every thread.
pub fn window_run(
    threads: usize,
    secs: Duration,
    op: impl Fn(&mut Option<TcpStream>) -> io::Result<()> + Send + Sync + 'static,
) -> Rate {
    let op = Arc::new(op);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (from, to) = (start + WARMUP, start + WARMUP + secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let op = Arc::clone(&op);
            let errors = Arc::clone(&errors);
            thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut conn = None;
                loop {
                    let t = Instant::now();
                    if t >= to {
                        break;
                    }
                    match op(&mut conn) {
                        Ok(()) => {
                            let done = Instant::now();
                            if t >= from && done <= to {
                                lat.push((done - t).as_secs_f64() * 1e6);
                            }
                        }
                        Err(_) => {
                            conn = None;
                            errors.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    Rate {
        per_sec: lat.len() as f64 / secs.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}
