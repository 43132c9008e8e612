//! The last step of Istio's TCP metrics task with a real Prometheus: it scrapes both sidecars with the shipped
//! `examples/prometheus/` config, and `istio_tcp_connections_opened_total` /
//! `..._closed_total` queried through its HTTP API carry both workloads' labels.

mod mesh;
mod support;

use std::time::Duration;

use mesh::prometheus::Prometheus;
use mesh::{request_reply, Mesh, MeshOptions};
use support::prefix_server;

fn prometheus_sees_both_reporters_with_both_workloads() {
    let backend = prefix_server(b"hello ");
    let opts = MeshOptions {
        mtls: true,
        ..Default::default()
    };
    let mesh = Mesh::start("prometheus", backend.port(), &opts);
    for _ in 0..5 {
        assert_eq!(
            request_reply(mesh.client_port, b"world\n", 12),
            b"hello world\n"
        );
    }
    let prometheus = Prometheus::start(mesh.client.admin_port(), mesh.server().admin_port());
    for metric in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        let samples = prometheus.wait_for(metric, 2, Duration::from_secs(30));
        assert_eq!(
            samples.len(),
            2,
            "{metric}: one series per reporter: {samples:?}"
        );
        let mut reporters = Vec::new();
        for (labels, value) in &samples {
            let label = |k: &str| labels.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            reporters.push(label("reporter").to_string());
            assert_eq!(value, "5", "{metric}");
            assert_eq!(label("source_workload"), "ratings-v2");
            assert_eq!(label("source_canonical_service"), "ratings-v2");
            assert_eq!(label("source_canonical_revision"), "v2");
            assert_eq!(label("destination_workload"), "mongodb-v1");
            assert_eq!(label("destination_version"), "v1");
            assert_eq!(label("destination_service_name"), "mongodb");
            assert_eq!(
                label("source_principal"),
                "spiffe://cluster.local/ns/default/sa/bookinfo-ratings-v2"
            );
            assert_eq!(label("job"), "istio-tcp-telemetry-sidecars");
        }
        reporters.sort();
        assert_eq!(reporters, ["destination", "source"], "{metric}");
    }
}

testkit::both_filters!(prometheus_sees_both_reporters_with_both_workloads,);
