//! Bulk throughput, 1 and 4 streams, both directions, and Envoy's CPU per MB.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::load::{connect, CHUNK, WARMUP};
use crate::report::{Base, Goal, Row, Target};
use crate::Ctx;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) {
    for (streams, upload) in [(1, true), (1, false), (4, true), (4, false)] {
        let dir = if upload {
            "upload (client → backend)"
        } else {
            "download (backend → client)"
        };
        let mut row = Row::new(
            format!(
                "bulk, {streams} stream{}, {dir}",
                if streams > 1 { "s" } else { "" }
            ),
            "MB/s",
            Target::Goals(&[Goal::RatioAtLeast(Base::A, 0.97)]),
        );
        let mut cpu = Row::new(
            format!(
                "bulk, {streams}×{}: Envoy CPU per MB (both sidecars)",
                if upload { "up" } else { "down" }
            ),
            "µs/MB",
            Target::None,
        );
        for i in 0..ctx.pairs {
            for s in ctx.variants {
                s.wait_idle();
                let cpu0 = s.cpu_us();
                let (v, moved) = bulk(s.client_port(), streams, upload, ctx.secs);
                let per_mb = (s.cpu_us() - cpu0) / (moved as f64 / 1e6);
                row.push(s.variant, v);
                cpu.push(s.variant, per_mb);
            }
            crate::progress!(
                ctx.start,
                "bulk {streams}×{} round {}/{}: {} MB/s",
                if upload { "up" } else { "down" },
                i + 1,
                ctx.pairs,
                row.pair(i)
            );
        }
        rows.push(row);
        rows.push(cpu);
    }
}

/// Bulk transfer for `secs` after the warm-up: MB/s (10^6 bytes) summed over `streams`, and
/// every byte moved (warm-up included).
fn bulk(port: u16, streams: usize, upload: bool, secs: Duration) -> (f64, u64) {
    let counted = Arc::new(AtomicU64::new(0));
    let moved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (from, to) = (start + WARMUP, start + WARMUP + secs);
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            let counted = Arc::clone(&counted);
            let moved = Arc::clone(&moved);
            thread::spawn(move || {
                let mut c = connect(port).expect("connect");
                let mut buf = vec![0xA5u8; CHUNK];
                let mut mine = 0u64;
                let mut all = 0u64;
                // 8 bytes, not 1: a first write under 5 bytes makes the server sidecar's
                // tls_inspector wait its listener_filters_timeout (docs/ENVOY-NOTES.md), which B's
                // frame would hide and A and F would pay. The backend reads the first byte; the
                // rest is drained (S) or never read (G).
                c.write_all(if upload { b"SSSSSSSS" } else { b"GGGGGGGG" })
                    .unwrap();
                loop {
                    let n = if upload {
                        c.write(&buf)
                    } else {
                        c.read(&mut buf)
                    };
                    let n = match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    all += n as u64;
                    let now = Instant::now();
                    if now >= to {
                        break;
                    }
                    if now >= from {
                        mine += n as u64;
                    }
                }
                counted.fetch_add(mine, Ordering::Relaxed);
                moved.fetch_add(all, Ordering::Relaxed);
                let _ = c.shutdown(Shutdown::Both);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (
        counted.load(Ordering::Relaxed) as f64 / secs.as_secs_f64() / 1e6,
        moved.load(Ordering::Relaxed),
    )
}
