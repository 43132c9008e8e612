//! Every bootstrap template in `envoy/` renders with sample values and passes
//! `envoy --mode validate`. Fails (never skips) when Envoy or the Wasm module is missing.

mod support;

use support::*;

/// Sample values for every placeholder any template uses; each template takes its subset.
fn sample_params(dir: &TempDir, certs: &MtlsCerts) -> Vec<(&'static str, String)> {
    let s = |p: &std::path::Path| p.display().to_string();
    let q = yaml_single_quoted;
    vec![
        ("ADMIN_PORT", "0".into()),
        ("LISTENER_PORT", "0".into()),
        ("BACKEND_PORT", "9".into()),
        ("UPSTREAM_PORT", "9".into()),
        ("WASM_PATH", s(&wasm_module())),
        ("STATS_CONFIG", q("{}")),
        ("EXCHANGE_CONFIG", q(r#"{"side":"client"}"#)),
        (
            "EXCHANGE_CONFIG_MTLS",
            q(r#"{"side":"server","server_mode":"expect"}"#),
        ),
        (
            "EXCHANGE_CONFIG_PLAIN",
            q(r#"{"side":"server","server_mode":"detect"}"#),
        ),
        ("NODE_ID", RATINGS_NODE_ID.into()),
        ("NODE_METADATA", RATINGS_NODE_METADATA.into()),
        ("SERVICE_HOST", SERVICE_HOST.into()),
        ("SERVICE_NAME", SERVICE_NAME.into()),
        ("SERVICE_NAMESPACE", SERVICE_NAMESPACE.into()),
        ("SERVICE_PORT", SERVICE_PORT.to_string()),
        ("TLS_MODE", "istio".into()),
        ("ENDPOINT_WORKLOAD", MONGODB_ENDPOINT_WORKLOAD.into()),
        ("ACCESS_LOG", dir.file("access.log")),
        ("CERT_CHAIN", s(&certs.client_cert)),
        ("PRIVATE_KEY", s(&certs.client_key)),
        ("CA_CERT", s(&certs.ca_cert)),
        ("SNI", format!("outbound_.{SERVICE_PORT}_._.{SERVICE_HOST}")),
    ]
}

/// Renders `template` with the sample values it uses and validates it with Envoy: as shipped
/// (the combined filter), and for a sidecar also with the two separate filters. The shipped
/// rendering is returned.
fn check(template: &str) -> String {
    let dir = TempDir::new(&format!("template-{template}"));
    let certs = make_mtls_certs(&dir.path().join("certs"));
    let text = std::fs::read_to_string(manifest_dir().join("envoy").join(template)).unwrap();
    let params: Vec<(&str, String)> = sample_params(&dir, &certs)
        .into_iter()
        .filter(|(k, _)| text.contains(&format!("{{{{{k}}}}}")))
        .collect();
    let yaml = render(template, &params);
    if let Err(e) = validate_config(template, &yaml) {
        panic!("{template} is not a valid Envoy config:\n{e}\n--- rendered ---\n{yaml}");
    }
    if text.contains("istio_tcp_telemetry") {
        let separate = Filters::Separate.apply(&text);
        let separate = render_text(template, &separate, &params, Unused::Refused);
        if let Err(e) = validate_config(&format!("{template}-separate"), &separate) {
            panic!("{template} with separate filters is not valid:\n{e}\n---\n{separate}");
        }
    }
    yaml
}

/// Every shipped sidecar runs the combined filter, once per filter chain.
#[test]
fn sidecars_ship_the_combined_filter() {
    for (template, chains) in [
        ("sidecar-client.yaml", 1),
        ("sidecar-client-mtls.yaml", 1),
        ("sidecar-server.yaml", 3),
    ] {
        let text = std::fs::read_to_string(manifest_dir().join("envoy").join(template)).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert_eq!(
            text.matches("root_id: istio_tcp_telemetry").count(),
            chains,
            "{template}"
        );
        assert!(!text.contains("root_id: istio_tcp_stats"), "{template}");
        assert!(
            !text.contains("root_id: istio_metadata_exchange"),
            "{template}"
        );
    }
}

#[test]
fn plain_tcp_proxy_is_valid() {
    check("plain-tcp-proxy.yaml");
}

#[test]
fn passthrough_is_valid() {
    let yaml = check("passthrough.yaml");
    assert!(yaml.contains("root_id: istio_tcp_stats"));
}

#[test]
fn sidecar_client_is_valid() {
    check("sidecar-client.yaml");
}

#[test]
fn sidecar_client_mtls_is_valid() {
    let yaml = check("sidecar-client-mtls.yaml");
    assert!(yaml.contains("UpstreamTlsContext"));
    assert!(yaml.contains(r#"alpn_protocols: ["istio-peer-exchange", "istio"]"#));
}

/// The client offers `istio-peer-exchange` only when it may send a frame: `client_gate: never`
/// renders ALPN `["istio"]` (the server's mTLS detect chain), every other gate both.
#[test]
fn sidecar_client_mtls_alpn_follows_the_client_gate() {
    let dir = TempDir::new("template-client-alpn");
    let certs = make_mtls_certs(&dir.path().join("certs"));
    let text = shipped_template("sidecar-client-mtls.yaml");
    for (gate, alpn) in [
        (None, r#"["istio-peer-exchange", "istio"]"#),
        (
            Some("tls_mode_istio"),
            r#"["istio-peer-exchange", "istio"]"#,
        ),
        (Some("istio_mtls"), r#"["istio-peer-exchange", "istio"]"#),
        (Some("always"), r#"["istio-peer-exchange", "istio"]"#),
        (Some("never"), r#"["istio"]"#),
    ] {
        let exchange = match gate {
            None => r#"{"side":"client"}"#.to_string(),
            Some(g) => format!(r#"{{"side":"client","client_gate":"{g}"}}"#),
        };
        let params: Vec<(&str, String)> = sample_params(&dir, &certs)
            .into_iter()
            .filter(|(k, _)| text.contains(&format!("{{{{{k}}}}}")))
            .map(|(k, v)| match k {
                "EXCHANGE_CONFIG" => (k, yaml_single_quoted(&exchange)),
                _ => (k, v),
            })
            .collect();
        let yaml = render("sidecar-client-mtls.yaml", &params);
        let offered: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("alpn_protocols: "))
            .collect();
        assert_eq!(offered, [alpn], "{exchange}");
        if gate == Some("never") {
            validate_config("client-alpn-never", &yaml).unwrap();
        }
    }
}

/// Three chains: `istio-peer-exchange` → expect, `istio` alone → mutual TLS in detect mode (as
/// Istio's inbound mTLS chain serves `istio`), anything else → plaintext detect; each chain's
/// own tcp_proxy stat prefix.
#[test]
fn sidecar_server_is_valid() {
    let yaml = check("sidecar-server.yaml");
    let chain = |name: &str| {
        let start = yaml
            .find(&format!("- name: {name}\n"))
            .unwrap_or_else(|| panic!("no chain {name}"));
        let rest = &yaml[start + 1..];
        rest[..rest.find("\n    - name: ").unwrap_or(rest.len())].to_string()
    };
    let (expect, mtls_detect, plain) = (
        chain("mx-mtls"),
        chain("mtls-detect"),
        chain("plaintext-detect"),
    );
    assert!(expect.contains(r#"application_protocols: ["istio-peer-exchange"]"#));
    assert!(expect.contains(r#""server_mode":"expect""#));
    assert!(expect.contains("stat_prefix: inbound_mtls\n"));
    assert!(mtls_detect.contains(r#"application_protocols: ["istio"]"#));
    assert!(mtls_detect.contains("require_client_certificate: true"));
    assert!(mtls_detect.contains(r#""server_mode":"detect""#));
    assert!(mtls_detect.contains("stat_prefix: inbound_mtls_detect\n"));
    assert!(!plain.contains("filter_chain_match") && !plain.contains("DownstreamTlsContext"));
    assert!(plain.contains(r#""server_mode":"detect""#));
    assert!(plain.contains("stat_prefix: inbound_plaintext\n"));
}

/// With the separate filters, the exchange filter sits on the network side of the stats filter
/// in both sidecars.
#[test]
fn filter_order_keeps_exchange_frames_away_from_stats() {
    let pos = |yaml: &str, what: &str| yaml.find(what).unwrap_or(usize::MAX);
    let read = |t: &str| {
        Filters::Separate.apply(&std::fs::read_to_string(manifest_dir().join(t)).unwrap())
    };
    let client = read("envoy/sidecar-client.yaml");
    assert!(
        pos(&client, "root_id: istio_tcp_stats") < pos(&client, "root_id: istio_metadata_exchange")
    );
    let server = read("envoy/sidecar-server.yaml");
    let filter_chains = server.split("filter_chains:").nth(1).unwrap();
    let chains: Vec<&str> = filter_chains.split("\n    - name: ").skip(1).collect();
    assert_eq!(chains.len(), 3, "mx-mtls, mtls-detect, plaintext-detect");
    for chain in chains {
        assert!(
            pos(chain, "root_id: istio_metadata_exchange") < pos(chain, "root_id: istio_tcp_stats")
        );
        assert!(
            pos(chain, "root_id: istio_tcp_stats") < pos(chain, "envoy.filters.network.tcp_proxy")
        );
    }
}

/// One `stats_tags` entry per Istio TCP label (plus `overflow` and the close attributes), each
/// of the documented regex form, and nothing else; the lifetime histogram's buckets.
#[test]
fn stats_tags_cover_every_istio_tcp_label() {
    let labels = [
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_service_name",
        "destination_service_namespace",
        "destination_cluster",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
        // Not an Istio label: marks the series folded by the filter's cardinality cap.
        "overflow",
        // The close attributes under their own names (dimensions of metrics emitted at close).
        "closed_by",
        "close_flags",
        "termination_details",
        "duration_class",
    ];
    let tags = stats_tags() + "\n";
    assert!(tags.starts_with("stats_config:\n  use_all_default_tags: false\n"));
    for l in labels {
        let entry = format!("  - tag_name: {l}\n    regex: \"(_?{l}=\\\\.=(.*?);\\\\.;)\"\n");
        assert!(
            tags.contains(&entry),
            "missing or wrong entry for {l}:\n{entry}"
        );
    }
    assert_eq!(tags.matches("tag_name:").count(), labels.len());
    assert!(
        tags.contains(
            "  histogram_bucket_settings:\n  - match: { suffix: \"istio_tcp_connection_duration_milliseconds\" }\n"
        ),
        "the lifetime histogram's buckets"
    );
}

#[test]
fn yaml_single_quoted_doubles_quotes() {
    assert_eq!(yaml_single_quoted(r#"{"a":"it's"}"#), r#"{"a":"it''s"}"#);
}

#[test]
#[should_panic(expected = "no value for {{BACKEND_PORT}}")]
fn render_panics_on_missing_value() {
    render(
        "plain-tcp-proxy.yaml",
        &[("ADMIN_PORT", "0".into()), ("LISTENER_PORT", "0".into())],
    );
}

#[test]
#[should_panic(expected = "parameters not in the template")]
fn render_panics_on_unused_value() {
    render(
        "plain-tcp-proxy.yaml",
        &[
            ("ADMIN_PORT", "0".into()),
            ("LISTENER_PORT", "0".into()),
            ("BACKEND_PORT", "1".into()),
            ("NOPE", "1".into()),
        ],
    );
}
