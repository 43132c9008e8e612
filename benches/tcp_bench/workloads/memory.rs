//! Memory per live, exchanged connection: `n` connections held open through each topology.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::load::{connect, request, MSG};
use crate::report::{num, Base, Goal, Row, Target};
use crate::sidecars::{memory, Mem};
use crate::Ctx;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) {
    for &level in &ctx.levels {
        let n = level.min(ctx.max_conns);
        let mut per_conn = [
            Row::new(
                format!(
                    "memory per live connection, {} held, client sidecar",
                    num(n as f64)
                ),
                "B/conn",
                Target::Goals(&[
                    Goal::DeltaAtMost(Base::A, 1280.0),
                    Goal::DeltaAtMost(Base::F, 256.0),
                ]),
            ),
            Row::new(
                format!(
                    "memory per live connection, {} held, server sidecar",
                    num(n as f64)
                ),
                "B/conn",
                Target::Goals(&[
                    Goal::DeltaAtMost(Base::A, 1280.0),
                    Goal::DeltaAtMost(Base::F, 256.0),
                ]),
            ),
        ];
        // RSS also holds what Envoy's `allocated` does not: the VMs' linear memory (our
        // per-connection state lives there) and allocator slack; noisier, no target.
        let mut rss_conn = ["client", "server"].map(|who| {
            Row::new(
                format!(
                    "RSS per live connection, {} held, {who} sidecar",
                    num(n as f64)
                ),
                "B/conn",
                Target::Delta,
            )
        });
        if n < level {
            for r in per_conn.iter_mut().chain(rss_conn.iter_mut()) {
                r.note = format!(
                    "{level} asked; the fd hard limit {} allows {n}",
                    ctx.hard_limit
                );
            }
        }
        for s in ctx.variants {
            s.wait_idle();
            let before: Vec<Mem> = s.envoys().iter().map(|(_, e)| memory(e)).collect();
            let held = match hold_connections(s.client_port(), n) {
                Ok(h) => h,
                Err(e) => panic!("holding {n} connections through {:?}: {e}", s.variant),
            };
            thread::sleep(Duration::from_millis(700));
            let after: Vec<Mem> = s.envoys().iter().map(|(_, e)| memory(e)).collect();
            for who in 0..2 {
                let per = (after[who].allocated - before[who].allocated) / n as f64;
                per_conn[who].push(s.variant, per);
                let rss = (after[who].rss - before[who].rss) / n as f64;
                rss_conn[who].push(s.variant, rss);
            }
            let rss_per: Vec<String> = (0..2)
                .map(|w| num((after[w].rss - before[w].rss) / n as f64))
                .collect();
            drop(held);
            let dropped = ctx.backend.drop_held();
            crate::progress!(
                ctx.start,
                "memory {:?}: {n} connections held (backend held {dropped}); allocated/conn client {} server {}, RSS/conn client {} server {}",
                s.variant,
                num((after[0].allocated - before[0].allocated) / n as f64),
                num((after[1].allocated - before[1].allocated) / n as f64),
                rss_per[0],
                rss_per[1]
            );
            s.wait_idle();
        }
        rows.extend(per_conn);
        rows.extend(rss_conn);
    }
}

/// Opens `n` connections that each exchange one 64-byte message and then stay open.
fn hold_connections(port: u16, n: usize) -> io::Result<Vec<TcpStream>> {
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let count = n / threads + usize::from(t < n % threads);
            thread::spawn(move || -> io::Result<Vec<TcpStream>> {
                let mut held = Vec::with_capacity(count);
                for _ in 0..count {
                    let opened = (|| -> io::Result<TcpStream> {
                        let mut c = connect(port)?;
                        c.write_all(&request(b'H'))?;
                        let mut reply = [0u8; MSG];
                        c.read_exact(&mut reply)?;
                        Ok(c)
                    })();
                    match opened {
                        Ok(c) => held.push(c),
                        Err(e) => {
                            eprintln!("connection {} of this thread: {e}", held.len());
                            return Err(e);
                        }
                    }
                }
                Ok(held)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut first_error = None;
    for h in handles {
        match h.join().unwrap() {
            Ok(v) => all.extend(v),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(io::Error::new(
            e.kind(),
            format!("{e} (about {} of {n} connections were open)", all.len()),
        )),
        None => Ok(all),
    }
}
