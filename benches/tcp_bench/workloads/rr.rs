//! 64-byte request/response on 1 and 8 persistent connections: req/s, p50, p99, Envoy CPU.

use std::io::{Read, Write};
use std::time::Duration;

use crate::load::{connect, request, window_run, Rate, MSG, WARMUP};
use crate::report::{Base, Goal, Row, Target};
use crate::Ctx;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) {
    for conns in [1usize, 8] {
        let mut rps = Row::new(
            format!(
                "request/response 64 B, {conns} persistent connection{}",
                if conns > 1 { "s" } else { "" }
            ),
            "req/s",
            Target::Goals(&[Goal::RatioAtLeast(Base::A, 0.95)]),
        );
        let mut p50 = Row::new(
            format!("request/response, {conns} conn: p50 latency"),
            "µs",
            Target::Goals(&[Goal::RatioAtMost(Base::A, 1.05)]),
        );
        let mut p99 = Row::new(
            format!("request/response, {conns} conn: p99 latency"),
            "µs",
            Target::None,
        );
        let mut cpu = Row::new(
            format!("request/response, {conns} conn: Envoy CPU per request (both sidecars)"),
            "µs",
            Target::None,
        );
        for i in 0..ctx.pairs {
            for s in ctx.variants {
                s.wait_idle();
                let cpu0 = s.cpu_us();
                let r = request_response(s.client_port(), conns, ctx.secs);
                let per_req = (s.cpu_us() - cpu0) / (r.per_sec * (ctx.secs + WARMUP).as_secs_f64());
                rps.push(s.variant, r.per_sec);
                p50.push(s.variant, r.p50_us);
                p99.push(s.variant, r.p99_us);
                cpu.push(s.variant, per_req);
            }
            crate::progress!(
                ctx.start,
                "request/response {conns} conn round {}/{}: {} req/s, p50 {} µs",
                i + 1,
                ctx.pairs,
                rps.pair(i),
                p50.pair(i)
            );
        }
        rows.push(rps);
        rows.push(p50);
        rows.push(p99);
        rows.push(cpu);
    }
}

/// 64-byte request/response on `conns` persistent connections.
fn request_response(port: u16, conns: usize, secs: Duration) -> Rate {
    window_run(conns, secs, move |conn| {
        if conn.is_none() {
            let c = connect(port)?;
            *conn = Some(c);
        }
        let c = conn.as_mut().unwrap();
        c.write_all(&request(b'E'))?;
        let mut reply = [0u8; MSG];
        c.read_exact(&mut reply)
    })
}
