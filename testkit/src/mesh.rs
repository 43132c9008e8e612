//! The Bookinfo TCP topology used by the end-to-end tests, from the shipped `envoy/` templates:
//!
//! ```text
//! app (test) ──▶ client sidecar (ratings-v2, outbound) ──▶ server sidecar (mongodb-v1, inbound) ──▶ backend
//! ```
//! Plaintext or mTLS (client cluster originates TLS with ALPN istio-peer-exchange; the server
//! picks its `mx-mtls` chain by ALPN).

#![forbid(unsafe_code)]

use std::path::PathBuf;

use crate::certs::{make_mtls_certs, MtlsCerts};
use crate::envoy::Envoy;
use crate::files::{self as support, free_port, TempDir};
pub use crate::render::Filters;
use crate::render::{render_text, shipped_template, yaml_single_quoted, Unused};

pub use crate::bookinfo::{
    MONGODB_ENDPOINT_WORKLOAD as ENDPOINT_WORKLOAD, MONGODB_NODE_ID as SERVER_NODE_ID,
    MONGODB_NODE_METADATA as SERVER_METADATA, RATINGS_NODE_ID as CLIENT_NODE_ID,
    RATINGS_NODE_METADATA as CLIENT_METADATA, SERVICE_HOST, SERVICE_NAME, SERVICE_NAMESPACE,
    SERVICE_PORT,
};

/// What to start; [`MeshOptions::default`] is the plaintext mesh with default configs.
#[derive(Clone)]
pub struct MeshOptions {
    pub mtls: bool,
    /// Endpoint label `tlsMode` on the client's cluster (`istio` or `disabled`).
    pub tls_mode: &'static str,
    pub client_exchange: String,
    pub server_exchange_mtls: String,
    pub server_exchange_plain: String,
    pub client_stats: String,
    pub server_stats: String,
    pub concurrency: u32,
    /// Point the client straight at the backend (no server sidecar): a non-mesh server.
    pub without_server_sidecar: bool,
    /// `stats_tags` entries for labels beyond Istio's (user-defined dimensions).
    pub extra_stats_tags: Vec<&'static str>,
    /// Envoys in their own process group (tests); the demo says false so Ctrl-C reaches them.
    pub own_process_group: bool,
    /// Envoy's `-l` for both sidecars (default: the kit's, see
    /// [`crate::envoy::EnvoyBuilder::log_level`]).
    pub log_level: Option<&'static str>,
    /// Edits the rendered client bootstrap (text in, text out), e.g. another cluster type.
    pub client_yaml_patch: Option<fn(&str) -> String>,
    /// Applied to each template's text before rendering (the bench lifts circuit breakers and,
    /// for its baseline, removes the Wasm filters); parameters it removes may go unused.
    pub template_edit: Option<fn(&str) -> String>,
    /// The combined filter (as shipped) or the two separate filters; by default the running
    /// test's ([`Filters::run`]).
    pub filters: Filters,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            mtls: false,
            tls_mode: "istio",
            client_exchange: r#"{"side":"client"}"#.into(),
            server_exchange_mtls: r#"{"side":"server","server_mode":"expect"}"#.into(),
            server_exchange_plain: r#"{"side":"server","server_mode":"detect"}"#.into(),
            client_stats: "{}".into(),
            server_stats: "{}".into(),
            concurrency: 1,
            without_server_sidecar: false,
            extra_stats_tags: Vec::new(),
            own_process_group: true,
            log_level: None,
            client_yaml_patch: None,
            template_edit: None,
            filters: Filters::current(),
        }
    }
}

impl MeshOptions {
    /// The defaults, with this deployment of the module.
    pub fn with_filters(filters: Filters) -> Self {
        MeshOptions {
            filters,
            ..Default::default()
        }
    }
}

pub struct Mesh {
    pub client: Envoy,
    pub server: Option<Envoy>,
    /// Where the application connects.
    pub client_port: u16,
    /// The server sidecar's inbound listener (0 without one).
    pub server_port: u16,
    pub client_access_log: PathBuf,
    pub server_access_log: PathBuf,
    pub certs: MtlsCerts,
    /// The rendered configurations (the server's empty without a server sidecar).
    pub client_config: String,
    pub server_config: String,
    /// Certificates and access logs; removed on drop (kept when a test panics).
    pub dir: TempDir,
}

impl Mesh {
    pub fn start(name: &str, backend_port: u16, opts: &MeshOptions) -> Mesh {
        let name = &format!("{name}-{}", opts.filters.name());
        let dir = TempDir::new(name);
        let certs = make_mtls_certs(&dir.path().join("certs"));
        let client_access_log = dir.path().join("client-access.log");
        let server_access_log = dir.path().join("server-access.log");
        let wasm = support::wasm_module().display().to_string();
        let path = |p: &PathBuf| p.display().to_string();
        let mut tags = crate::render::stats_tags();
        for label in &opts.extra_stats_tags {
            tags.push_str(&format!(
                "\n  - tag_name: {label}\n    regex: \"(_?{label}=\\\\.=(.*?);\\\\.;)\""
            ));
        }
        let service = [
            ("STATS_TAGS", tags),
            ("SERVICE_HOST", SERVICE_HOST.to_string()),
            ("SERVICE_NAME", SERVICE_NAME.to_string()),
            ("SERVICE_NAMESPACE", SERVICE_NAMESPACE.to_string()),
            ("SERVICE_PORT", SERVICE_PORT.to_string()),
        ];
        let start = |who: &str, yaml: &str| {
            let mut builder = Envoy::builder(&format!("{name}-{who}"), yaml)
                .concurrency(opts.concurrency)
                .own_process_group(opts.own_process_group);
            if let Some(level) = opts.log_level {
                builder = builder.log_level(level);
            }
            builder.start()
        };
        let render = |template: &str, params: &[(&str, String)]| {
            let text = opts.filters.apply(&shipped_template(template));
            match opts.template_edit {
                None => render_text(template, &text, params, Unused::Refused),
                Some(edit) => render_text(template, &edit(&text), params, Unused::Allowed),
            }
        };

        let mut server_config = String::new();
        let (server, server_port) = if opts.without_server_sidecar {
            (None, 0)
        } else {
            let mut params = vec![
                ("ADMIN_PORT", "0".to_string()),
                ("LISTENER_PORT", free_port().to_string()),
                ("NODE_ID", SERVER_NODE_ID.to_string()),
                ("NODE_METADATA", SERVER_METADATA.to_string()),
                ("WASM_PATH", wasm.clone()),
                ("STATS_CONFIG", yaml_single_quoted(&opts.server_stats)),
                (
                    "EXCHANGE_CONFIG_MTLS",
                    yaml_single_quoted(&opts.server_exchange_mtls),
                ),
                (
                    "EXCHANGE_CONFIG_PLAIN",
                    yaml_single_quoted(&opts.server_exchange_plain),
                ),
                ("BACKEND_PORT", backend_port.to_string()),
                ("CERT_CHAIN", path(&certs.server_cert)),
                ("PRIVATE_KEY", path(&certs.server_key)),
                ("CA_CERT", path(&certs.ca_cert)),
                ("ACCESS_LOG", path(&server_access_log)),
            ];
            params.extend(service.iter().cloned());
            server_config = render("sidecar-server.yaml", &params);
            let envoy = start("server", &server_config);
            let port = envoy.listener_port("inbound");
            (Some(envoy), port)
        };

        let upstream = if opts.without_server_sidecar {
            backend_port
        } else {
            server_port
        };
        let mut params = vec![
            ("ADMIN_PORT", "0".to_string()),
            ("LISTENER_PORT", free_port().to_string()),
            ("NODE_ID", CLIENT_NODE_ID.to_string()),
            ("NODE_METADATA", CLIENT_METADATA.to_string()),
            ("WASM_PATH", wasm),
            ("STATS_CONFIG", yaml_single_quoted(&opts.client_stats)),
            ("EXCHANGE_CONFIG", yaml_single_quoted(&opts.client_exchange)),
            ("UPSTREAM_PORT", upstream.to_string()),
            ("TLS_MODE", opts.tls_mode.to_string()),
            ("ENDPOINT_WORKLOAD", ENDPOINT_WORKLOAD.to_string()),
            ("ACCESS_LOG", path(&client_access_log)),
        ];
        params.extend(service.iter().cloned());
        let template = if opts.mtls {
            params.extend([
                ("CERT_CHAIN", path(&certs.client_cert)),
                ("PRIVATE_KEY", path(&certs.client_key)),
                ("CA_CERT", path(&certs.ca_cert)),
                ("SNI", format!("outbound_.{SERVICE_PORT}_._.{SERVICE_HOST}")),
            ]);
            "sidecar-client-mtls.yaml"
        } else {
            "sidecar-client.yaml"
        };
        let mut client_config = render(template, &params);
        if let Some(patch) = opts.client_yaml_patch {
            client_config = patch(&client_config);
        }
        let client = start("client", &client_config);
        let client_port = client.listener_port("outbound");
        Mesh {
            client,
            server,
            client_port,
            server_port,
            client_access_log,
            server_access_log,
            certs,
            client_config,
            server_config,
            dir,
        }
    }

    pub fn server(&self) -> &Envoy {
        self.server
            .as_ref()
            .expect("this mesh has a server sidecar")
    }
}

/// The request/response client (see [`crate::client::HalfClose::AfterReply`]).
pub use crate::client::request_reply;

/// One sample of Prometheus text output.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `/stats/prometheus` output (comments skipped; label values unescaped for `\"`, `\\`).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or(f64::NAN);
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut val = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            map.insert(key.trim_start_matches(',').to_string(), val);
            rest = &after[end..];
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}
