//! Module size and each sidecar's idle memory (first: before any traffic).

use std::thread;
use std::time::Duration;

use crate::report::{Row, Target};
use crate::sidecars::memory;
use crate::Ctx;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) {
    thread::sleep(Duration::from_secs(1));
    let mut size_row = Row::new("module size", "KiB", Target::ValueAtMost(250.0));
    size_row.a.push(f64::NAN); // no module in A
    size_row.b.push(ctx.module_size as f64 / 1024.0);
    rows.push(size_row);
    for who in 0..2 {
        let name = ["client", "server"][who];
        let mut alloc = Row::new(
            format!("idle {name} sidecar, heap allocated"),
            "KiB",
            Target::Delta,
        );
        let mut rss = Row::new(format!("idle {name} sidecar, RSS"), "KiB", Target::Delta);
        for s in ctx.both {
            let m = memory(s.envoys()[who].1);
            alloc.push(s.variant, m.allocated / 1024.0);
            rss.push(s.variant, m.rss / 1024.0);
        }
        rows.push(alloc);
        rows.push(rss);
    }
    crate::progress!(ctx.start, "idle memory read");
}
