//! The demo's summary table (`testkit::summary`): sums per reporter and source → destination,
//! the overflow series on its own row, and the table's layout.

use testkit::mesh::Sample;
use testkit::summary::{rows, table, Row};

fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    }
}

#[test]
fn sums_per_reporter_and_pair() {
    let pair = [
        ("reporter", "destination"),
        ("source_workload", "ratings-v2"),
        ("destination_workload", "mongodb-v1"),
        ("response_flags", "-"),
    ];
    let mut other_flags = pair;
    other_flags[3] = ("response_flags", "UF");
    let samples = vec![
        sample("istio_tcp_connections_opened_total", &pair, 10.0),
        sample("istio_tcp_connections_opened_total", &other_flags, 1.0),
        sample("istio_tcp_connections_closed_total", &pair, 9.0),
        sample("istio_tcp_connections_open", &pair, 1.0),
        sample("istio_tcp_sent_bytes_total", &pair, 120.0),
        sample("istio_tcp_received_bytes_total", &pair, 60.0),
        sample(
            "istio_tcp_connections_opened_total",
            &[("overflow", "true")],
            3.0,
        ),
        sample("envoy_server_live", &[], 1.0),
    ];
    let rows = rows(&samples);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1],
        Row {
            reporter: "destination".into(),
            source: "ratings-v2".into(),
            destination: "mongodb-v1".into(),
            opened: 11.0,
            closed: 9.0,
            open_now: 1.0,
            sent_bytes: 120.0,
            received_bytes: 60.0,
        }
    );
    assert_eq!(rows[0].source, "(overflow)");
    let text = table(&rows, "  ");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("  reporter "));
    assert!(lines[2].contains("ratings-v2 → mongodb-v1"));
    assert!(lines[2].ends_with("120              60"), "{text}");
}
