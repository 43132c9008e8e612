//! Short connections: connect, 64-byte request/response, close; rate, p50, Envoy CPU.

use std::io::{Read, Write};
use std::time::Duration;

use crate::load::{connect, request, window_run, Rate, MSG, WARMUP};
use crate::report::{Base, Goal, Row, Target};
use crate::Ctx;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) {
    {
        let threads = 4;
        let mut rate = Row::new(
            format!("short connections ({threads} clients): connect, 64 B request/response, close"),
            "conn/s",
            Target::Goals(&[
                Goal::RatioAtLeast(Base::A, 0.90),
                Goal::RatioAtLeast(Base::F, 0.97),
            ]),
        );
        let mut p50 = Row::new("short connections: p50 connection time", "µs", Target::None);
        let mut cpu = Row::new(
            "short connections: Envoy CPU per connection (both sidecars)",
            "µs",
            Target::None,
        );
        let mut errors = 0;
        for i in 0..ctx.pairs {
            // S (the separate roots) and O (B's additions off) here: the workload where the
            // work per connection shows.
            for s in ctx
                .variants
                .into_iter()
                .chain([ctx.separate, ctx.extras_off])
            {
                s.wait_idle();
                let cpu0 = s.cpu_us();
                let r = short_connections(s.client_port(), threads, ctx.secs);
                // Connections of the warm-up and the window both cost CPU: divide by all.
                let per_conn =
                    (s.cpu_us() - cpu0) / (r.per_sec * (ctx.secs + WARMUP).as_secs_f64());
                errors += r.errors;
                rate.push(s.variant, r.per_sec);
                p50.push(s.variant, r.p50_us);
                cpu.push(s.variant, per_conn);
            }
            crate::progress!(
                ctx.start,
                "short connections round {}/{}: {} conn/s",
                i + 1,
                ctx.pairs,
                rate.pair(i)
            );
        }
        if errors > 0 {
            rate.note = format!("{errors} failed attempts");
        }
        rows.push(rate);
        rows.push(p50);
        rows.push(cpu);
    }
}

/// Connect, 64-byte request, 64-byte response, close (no half-close before the reply).
fn short_connections(port: u16, threads: usize, secs: Duration) -> Rate {
    window_run(threads, secs, move |_| {
        let mut c = connect(port)?;
        c.write_all(&request(b'E'))?;
        let mut reply = [0u8; MSG];
        c.read_exact(&mut reply)?;
        Ok(())
    })
}
