//! A human summary of one sidecar's Istio TCP metrics (the demo prints it after the raw lines):
//! per reporter and source → destination workload, connections opened, closed and open now,
//! bytes sent and received, summed over the other labels.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::mesh::Sample;

/// One line of the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub reporter: String,
    pub source: String,
    pub destination: String,
    pub opened: f64,
    pub closed: f64,
    pub open_now: f64,
    pub sent_bytes: f64,
    pub received_bytes: f64,
}

/// The rows of `samples` (parsed `/stats/prometheus`), ordered by reporter, source,
/// destination. Series folded by the cardinality cap are one row, `(overflow)`.
pub fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut by_pair: BTreeMap<(String, String, String), Row> = BTreeMap::new();
    for s in samples {
        let label = |k: &str| s.labels.get(k).cloned();
        let key = if label("overflow").as_deref() == Some("true") {
            ("-".to_string(), "(overflow)".to_string(), String::new())
        } else {
            match (
                label("reporter"),
                label("source_workload"),
                label("destination_workload"),
            ) {
                (Some(r), Some(src), Some(dst)) => (r, src, dst),
                _ => continue,
            }
        };
        let field: fn(&mut Row) -> &mut f64 = match s.name.as_str() {
            "istio_tcp_connections_opened_total" => |r| &mut r.opened,
            "istio_tcp_connections_closed_total" => |r| &mut r.closed,
            "istio_tcp_connections_open" => |r| &mut r.open_now,
            "istio_tcp_sent_bytes_total" => |r| &mut r.sent_bytes,
            "istio_tcp_received_bytes_total" => |r| &mut r.received_bytes,
            _ => continue,
        };
        let row = by_pair.entry(key.clone()).or_insert_with(|| Row {
            reporter: key.0.clone(),
            source: key.1.clone(),
            destination: key.2.clone(),
            ..Default::default()
        });
        *field(row) += s.value;
    }
    by_pair.into_values().collect()
}

/// The rows as an aligned text table, each line starting with `indent`.
pub fn table(rows: &[Row], indent: &str) -> String {
    let header = [
        "reporter",
        "source → destination",
        "opened",
        "closed",
        "open now",
        "bytes sent",
        "bytes received",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(String::from)];
    for r in rows {
        let pair = if r.destination.is_empty() {
            r.source.clone()
        } else {
            format!("{} → {}", r.source, r.destination)
        };
        lines.push([
            r.reporter.clone(),
            pair,
            r.opened.to_string(),
            r.closed.to_string(),
            r.open_now.to_string(),
            r.sent_bytes.to_string(),
            r.received_bytes.to_string(),
        ]);
    }
    let width = |i: usize| {
        lines
            .iter()
            .map(|l| l[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..7).map(width).collect();
    let mut out = String::new();
    for l in &lines {
        out.push_str(indent);
        for (i, cell) in l.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i < 2 {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
            out.push_str(if i < 6 { "  " } else { "\n" });
        }
    }
    out
}
