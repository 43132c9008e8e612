//! Module size and each sidecar's idle memory (first: before any traffic).

use std::thread;
use std::time::Duration;

use crate::report::{Base, Goal, Row, Target};
use crate::sidecars::memory;
use crate::Ctx;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) {
    // Settle: the shipped templates' memory_allocator_manager returns free heap every second.
    thread::sleep(Duration::from_secs(8));
    let mut size_row = Row::new(
        "module size",
        "KiB",
        Target::Goals(&[Goal::ValueAtMost(250.0)]),
    );
    size_row.a.push(f64::NAN); // no module in A
    size_row.f.push(ctx.noop_size as f64 / 1024.0);
    size_row.b.push(ctx.module_size as f64 / 1024.0);
    rows.push(size_row);
    for who in 0..2 {
        let name = ["client", "server"][who];
        let mut alloc = Row::new(
            format!("idle {name} sidecar, heap allocated"),
            "KiB",
            Target::Delta,
        );
        let mut rss = Row::new(
            format!("idle {name} sidecar, RSS"),
            "KiB",
            Target::Goals(&[Goal::DeltaAtMost(Base::F, 4096.0)]),
        );
        for s in ctx.variants.into_iter().chain([ctx.separate]) {
            let m = memory(s.envoys()[who].1);
            if std::env::var_os("BENCH_MEMORY_DUMP").is_some() {
                let envoy = s.envoys()[who].1;
                let vms: Vec<String> = envoy
                    .stats()
                    .lines()
                    .filter(|l| l.starts_with("wasm.envoy.wasm.runtime.v8."))
                    .map(str::to_string)
                    .collect();
                eprintln!(
                    "{:?} {name}: RSS {} KiB; V8 {vms:?}; /memory: {}",
                    s.variant,
                    m.rss / 1024.0,
                    envoy.admin("/memory")
                );
            }
            alloc.push(s.variant, m.allocated / 1024.0);
            rss.push(s.variant, m.rss / 1024.0);
        }
        rows.push(alloc);
        rows.push(rss);
    }
    crate::progress!(ctx.start, "idle memory read");
}
