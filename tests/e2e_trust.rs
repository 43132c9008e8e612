//! What a peer can make the metrics say, end to end in real Envoy.
//!
//! - `trust: mtls_only`: a frame on a plaintext connection is removed from the stream but not
//!   believed (`peer_not_found`, `source_workload="unknown"`); the same filter believes the
//!   client sidecar over mutual TLS.
//! - The namespace (and principal) come from the peer's certificate when there is one: a client
//!   sidecar that claims namespace `evil` in its metadata, with a certificate for `ns/default`,
//!   is reported in `default`.
//! - Label values from the network cannot forge labels: a workload name of
//!   `x;.;reporter=.=forged` is one sanitized label value; values are bounded in length.

mod hostile;
mod mesh;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostile::{after_frame, claimed_frame, send_pause_close, CLOSED, OPENED, RECEIVED, SENT};
use mesh::{parse_prometheus, request_reply, Mesh, MeshOptions, Sample, CLIENT_NODE_ID};
use support::{
    echo_server, render, wait_for_lines, yaml_single_quoted, Envoy, TempDir, CLIENT_SPIFFE,
};

const WAIT: Duration = Duration::from_secs(15);
const PAUSE: Duration = Duration::from_millis(200);

/// The `OPENED` series of `envoy`, once `n` connections are counted over all of them.
fn opened_series(envoy: &Envoy, n: f64) -> Vec<Sample> {
    let deadline = Instant::now() + WAIT;
    loop {
        let series: Vec<Sample> = parse_prometheus(&envoy.prometheus())
            .into_iter()
            .filter(|s| s.name == OPENED)
            .collect();
        if series.iter().map(|s| s.value).sum::<f64>() == n {
            return series;
        }
        assert!(
            Instant::now() < deadline,
            "{n} opened connections: {series:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one series whose `source_workload` is `workload`.
fn series_of<'a>(series: &'a [Sample], workload: &str) -> &'a BTreeMap<String, String> {
    let found: Vec<&Sample> = series
        .iter()
        .filter(|s| s.labels["source_workload"] == workload)
        .collect();
    assert_eq!(found.len(), 1, "one series of {workload}: {series:#?}");
    &found[0].labels
}

/// A second client sidecar (mTLS, the mesh's certificates) in front of `mesh`'s server sidecar,
/// with its own node metadata. The directory (its access log) lives as long as the Envoy.
fn extra_client_sidecar(name: &str, mesh: &Mesh, metadata: &str) -> (Envoy, TempDir) {
    let dir = TempDir::new(name);
    let path = |p: &std::path::Path| p.display().to_string();
    let params = vec![
        ("ADMIN_PORT", "0".to_string()),
        ("LISTENER_PORT", "0".to_string()),
        (
            "NODE_ID",
            "sidecar~10.0.0.9~evil-1.evil~evil.svc.cluster.local".into(),
        ),
        ("NODE_METADATA", metadata.to_string()),
        ("WASM_PATH", path(&support::wasm_module())),
        ("STATS_CONFIG", "{}".into()),
        (
            "EXCHANGE_CONFIG",
            yaml_single_quoted(r#"{"side":"client"}"#),
        ),
        ("UPSTREAM_PORT", mesh.server_port.to_string()),
        ("TLS_MODE", "istio".into()),
        ("ENDPOINT_WORKLOAD", mesh::ENDPOINT_WORKLOAD.into()),
        ("ACCESS_LOG", dir.file("access.log")),
        ("SERVICE_HOST", "mongodb.default.svc.cluster.local".into()),
        ("SERVICE_NAME", "mongodb".into()),
        ("SERVICE_NAMESPACE", "default".into()),
        ("SERVICE_PORT", "27017".into()),
        ("CERT_CHAIN", path(&mesh.certs.client_cert)),
        ("PRIVATE_KEY", path(&mesh.certs.client_key)),
        ("CA_CERT", path(&mesh.certs.ca_cert)),
        (
            "SNI",
            "outbound_.27017_._.mongodb.default.svc.cluster.local".into(),
        ),
    ];
    let yaml = render("sidecar-client-mtls.yaml", &params);
    (Envoy::start(name, &yaml, 1), dir)
}

fn mtls_only_believes_mutual_tls_and_namespaces_come_from_the_certificate() {
    let backend = echo_server();
    let opts = MeshOptions {
        mtls: true,
        server_exchange_mtls: r#"{"side":"server","server_mode":"expect","trust":"mtls_only"}"#
            .into(),
        server_exchange_plain: r#"{"side":"server","server_mode":"detect","trust":"mtls_only"}"#
            .into(),
        ..Default::default()
    };
    let mesh = Mesh::start("trust-mtls-only", backend.port(), &opts);
    let server = mesh.server();

    // 1. The client sidecar over mutual TLS: believed.
    assert_eq!(request_reply(mesh.client_port, b"hello", 5), b"hello");

    // 2. A plaintext client with a perfectly good frame: stripped, not believed.
    let liar = claimed_frame(
        &[("WORKLOAD_NAME", "liar"), ("NAMESPACE", "evil")],
        "sidecar~liar",
    );
    let back = send_pause_close(mesh.server_port, &[&liar[..], b"ping"].concat(), PAUSE);
    let back = if back.starts_with(&hostile::MAGIC) {
        after_frame(&back)
    } else {
        &back[..]
    };
    assert_eq!(back, b"ping", "the frame is removed, the rest intact");

    // 3. A client sidecar claiming namespace "evil", with a certificate for ns/default.
    let evil = r#"{"NAME": "evil-1", "NAMESPACE": "evil", "WORKLOAD_NAME": "evil-workload", "CLUSTER_ID": "Kubernetes", "LABELS": {"app": "evil", "version": "v6"}}"#;
    let (evil_client, _dir) = extra_client_sidecar("trust-evil-client", &mesh, evil);
    let evil_port = evil_client.listener_port("outbound");
    assert_eq!(request_reply(evil_port, b"hi", 2), b"hi");

    // One access-log line per connection (in whatever order they closed).
    let lines = wait_for_lines(&mesh.server_access_log, 3, WAIT);
    let count = |f: &dyn Fn(&String) -> bool| lines.iter().filter(|l| f(l)).count();
    let believed = format!("peer_id={CLIENT_NODE_ID} not_found=-");
    assert_eq!(count(&|l| l.starts_with(&believed)), 1, "{lines:?}");
    assert_eq!(
        count(&|l| l.starts_with("peer_id=- not_found=true")),
        1,
        "{lines:?}"
    );
    assert_eq!(
        count(&|l| l.contains("peer_id=sidecar~10.0.0.9~evil-1")),
        1,
        "{lines:?}"
    );

    let series = opened_series(server, 3.0);
    let mtls = series_of(&series, "ratings-v2");
    assert_eq!(mtls["source_principal"], CLIENT_SPIFFE);
    assert_eq!(mtls["connection_security_policy"], "mutual_tls");
    let plain = series_of(&series, "unknown");
    assert_eq!(plain["source_workload_namespace"], "unknown");
    assert_eq!(plain["source_app"], "unknown");
    assert_eq!(plain["connection_security_policy"], "none");
    let claimed = series_of(&series, "evil-workload");
    assert_eq!(
        claimed["source_workload_namespace"], "default",
        "the namespace comes from the certificate, not the claim"
    );
    assert_eq!(claimed["source_principal"], CLIENT_SPIFFE);
    // The workload name and labels are claims that mTLS does not verify (as in Istio).
    assert_eq!(claimed["source_app"], "evil");
    let text = server.prometheus();
    assert!(
        !text.contains("liar"),
        "the plaintext claim reached no label"
    );
    assert!(
        !text.contains("source_workload_namespace=\"evil\""),
        "no evil namespace"
    );
}

fn label_values_from_the_network_cannot_forge_labels() {
    let backend = echo_server();
    let mesh = Mesh::start("trust-sanitize", backend.port(), &MeshOptions::default());
    let server = mesh.server();
    let long = "c".repeat(10_000);
    let forged = claimed_frame(
        &[
            ("WORKLOAD_NAME", "x;.;reporter=.=forged"),
            ("NAMESPACE", "default"),
            ("CLUSTER_ID", &long),
        ],
        "sidecar~forger",
    );
    let back = send_pause_close(mesh.server_port, &[&forged[..], b"ping"].concat(), PAUSE);
    assert_eq!(after_frame(&back), b"ping");

    let series = opened_series(server, 1.0);
    assert_eq!(series.len(), 1);
    let labels = &series[0].labels;
    assert_eq!(labels.len(), 23, "exactly Istio's labels: {labels:#?}");
    assert_eq!(labels["reporter"], "destination");
    assert_eq!(labels["source_workload"], "x_._reporter_._forged");
    assert_eq!(labels["source_cluster"], "c".repeat(256), "bounded");
    for sample in parse_prometheus(&server.prometheus())
        .iter()
        .filter(|s| [OPENED, CLOSED, SENT, RECEIVED].contains(&s.name.as_str()))
    {
        assert_eq!(sample.labels["reporter"], "destination", "{sample:?}");
        assert!(sample.labels.values().all(|v| v != "forged"), "{sample:?}");
    }
}

testkit::both_filters!(
    mtls_only_believes_mutual_tls_and_namespaces_come_from_the_certificate,
    label_values_from_the_network_cannot_forge_labels,
);
