//! The shipped `envoy/` templates rendered with their parameters, and `envoy --mode validate`.

#![forbid(unsafe_code)]

use std::fs;

use std::process::Command;

use crate::files::{envoy_bin, manifest_dir, TempDir};

/// `envoy/stats-tags.yaml` without its comment lines: the top-level `stats_config:` block that
/// fills a template's `{{STATS_TAGS}}` placeholder.
pub fn stats_tags() -> String {
    let path = manifest_dir().join("envoy/stats-tags.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    strip_comment_lines(&text).trim_end().to_string()
}

/// Escapes `s` for use inside a single-quoted YAML scalar (the templates write
/// `value: '{{STATS_CONFIG}}'`): doubles every single quote.
pub fn yaml_single_quoted(s: &str) -> String {
    s.replace('\'', "''")
}

/// The ALPN list a client sidecar offers over TLS (`{{UPSTREAM_ALPN}}`), from its exchange
/// config: `istio-peer-exchange` promises the server a frame, so it is offered only when the
/// client may send one, i.e. unless `client_gate` is `never`. `istio` is always offered (the
/// server's mTLS detect chain), as Istio's clients do.
pub fn upstream_alpn(exchange_config_json: &str) -> &'static str {
    let gate = serde_json::from_str::<serde_json::Value>(exchange_config_json)
        .ok()
        .and_then(|v| {
            v.get("client_gate")
                .and_then(|g| g.as_str())
                .map(String::from)
        });
    match gate.as_deref() {
        Some("never") => r#"["istio"]"#,
        _ => r#"["istio-peer-exchange", "istio"]"#,
    }
}

/// Renders `envoy/<template_rel_path>`: drops full-line comments (the documentation header),
/// then replaces every `{{NAME}}` with its value from `params`. `{{STATS_TAGS}}` defaults to
/// [`stats_tags`]; `{{UPSTREAM_ALPN}}` is derived from `EXCHANGE_CONFIG` ([`upstream_alpn`]),
/// the one place it is decided. Values are inserted verbatim and not scanned again.
///
/// Panics when a placeholder has no value, or when a parameter is not used by the template.
pub fn render(template_rel_path: &str, params: &[(&str, String)]) -> String {
    render_text(
        template_rel_path,
        &Filters::current().apply(&shipped_template(template_rel_path)),
        params,
        Unused::Refused,
    )
}

/// `both_filters!(test_a, test_b)`: each named function (a `fn()` without `#[test]`) becomes two
/// tests, `combined::test_a` (the shipped `istio_tcp_telemetry` filter) and `separate::test_a`
/// (the two separate filters), through [`Filters::run`].
#[macro_export]
macro_rules! both_filters {
    ($($name:ident),* $(,)?) => {
        mod combined {
            $(#[test]
            fn $name() {
                $crate::render::Filters::Combined.run(super::$name);
            })*
        }
        mod separate {
            $(#[test]
            fn $name() {
                $crate::render::Filters::Separate.run(super::$name);
            })*
        }
    };
}

/// The text of `envoy/<template_rel_path>` as shipped.
pub fn shipped_template(template_rel_path: &str) -> String {
    let path = manifest_dir().join("envoy").join(template_rel_path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Which of the module's deployments a sidecar template runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filters {
    /// As shipped: one `istio_tcp_telemetry` filter (exchange and stats in one context).
    #[default]
    Combined,
    /// The two separate filters in their chain order (client: stats → exchange; server:
    /// exchange → stats), same vm_id, same parameters.
    Separate,
}

thread_local! {
    /// The deployment a test runs under (see [`Filters::run`]); the shipped one otherwise.
    static CURRENT: std::cell::Cell<Filters> = const { std::cell::Cell::new(Filters::Combined) };
}

impl Filters {
    pub const BOTH: [Filters; 2] = [Filters::Combined, Filters::Separate];

    /// Runs `test` with this deployment as the default of [`crate::mesh::MeshOptions`] and of
    /// [`render`]: an end-to-end test runs unchanged under both ([`crate::both_filters`]).
    pub fn run(self, test: fn()) {
        CURRENT.with(|c| c.set(self));
        test();
    }

    /// The deployment of the running test ([`Filters::run`]); `Combined` outside one.
    pub fn current() -> Filters {
        CURRENT.with(|c| c.get())
    }

    pub fn name(self) -> &'static str {
        match self {
            Filters::Combined => "combined",
            Filters::Separate => "separate",
        }
    }

    /// A shipped template's text for this deployment.
    pub fn apply(self, text: &str) -> String {
        match self {
            Filters::Combined => text.to_string(),
            Filters::Separate => separate_filters(text),
        }
    }
}

/// A template's text with every `istio.tcp_telemetry` filter entry replaced by the two separate
/// filters, built from the same entry (only the name, `root_id` and configuration change), in
/// the order that keeps the stats filter on the application side: the client's exchange part
/// is `{{EXCHANGE_CONFIG}}` (stats first), a server's `{{EXCHANGE_CONFIG_*}}` (exchange first).
pub fn separate_filters(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "- name: istio.tcp_telemetry" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut entry = vec![line.to_string()];
        let (exchange, stats) = loop {
            let Some(next) = lines.next() else {
                panic!("istio.tcp_telemetry entry without a configuration value");
            };
            let value = next.trim_start().strip_prefix("value: '{\"exchange\": ");
            if let Some(parts) = value {
                let (x, rest) = parts.split_once(", \"stats\": ").expect("stats part");
                let s = rest.strip_suffix("}'").expect("closing the configuration");
                let indent = &next[..next.len() - next.trim_start().len()];
                break ((x.to_string(), indent), s.to_string());
            }
            entry.push(next.to_string());
        };
        let ((exchange, indent), stats) = (exchange, stats);
        let one = |name: &str, root: &str, value: &str| {
            let mut block = String::new();
            for l in &entry {
                let l = l
                    .replace("istio.tcp_telemetry", name)
                    .replace("root_id: istio_tcp_telemetry", &format!("root_id: {root}"));
                block.push_str(&l);
                block.push('\n');
            }
            block.push_str(&format!("{indent}value: '{value}'\n"));
            block
        };
        let stats_entry = one("istio.tcp_stats", "istio_tcp_stats", &stats);
        let exchange_entry = one(
            "istio.metadata_exchange",
            "istio_metadata_exchange",
            &exchange,
        );
        if exchange == "{{EXCHANGE_CONFIG}}" {
            out.push_str(&stats_entry);
            out.push_str(&exchange_entry);
        } else {
            out.push_str(&exchange_entry);
            out.push_str(&stats_entry);
        }
    }
    out
}

/// What [`render_text`] does with a parameter the text does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unused {
    /// A panic: the shipped templates use every parameter they document.
    Refused,
    /// Allowed: for a template edited before rendering (the bench removes the Wasm filters).
    Allowed,
}

/// [`render`] of a template's text as given (`label` names it in panics).
pub fn render_text(label: &str, text: &str, params: &[(&str, String)], unused: Unused) -> String {
    let text = strip_comment_lines(text);
    let mut used = vec![false; params.len()];
    let mut out = String::with_capacity(text.len() * 2);
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("{label}: unterminated '{{{{'"));
        let name = &after[..end];
        match params.iter().position(|(k, _)| *k == name) {
            Some(i) => {
                used[i] = true;
                out.push_str(&params[i].1);
            }
            None if name == "STATS_TAGS" => out.push_str(&stats_tags()),
            None if name == "UPSTREAM_ALPN" => {
                let i = params
                    .iter()
                    .position(|(k, _)| *k == "EXCHANGE_CONFIG")
                    .unwrap_or_else(|| {
                        panic!("{label}: {{{{UPSTREAM_ALPN}}}} needs EXCHANGE_CONFIG")
                    });
                used[i] = true;
                // The parameter is YAML-single-quoted (doubled '); undo that to read the JSON.
                out.push_str(upstream_alpn(&params[i].1.replace("''", "'")));
            }
            None => panic!("{label}: no value for {{{{{name}}}}}"),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    let unused_params: Vec<&str> = (params.iter().zip(&used))
        .filter(|(_, u)| !**u)
        .map(|((k, _), _)| *k)
        .collect();
    assert!(
        unused == Unused::Allowed || unused_params.is_empty(),
        "{label}: parameters not in the template: {unused_params:?}"
    );
    out
}

fn strip_comment_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// Runs `envoy --mode validate` on `config_yaml`; `Err` holds Envoy's output.
pub fn validate_config(name: &str, config_yaml: &str) -> Result<(), String> {
    let dir = TempDir::new(&format!("validate-{name}"));
    let cfg = dir.path().join("envoy.yaml");
    fs::write(&cfg, config_yaml).expect("write config");
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-l", "warning", "-c"])
        .arg(&cfg)
        .output()
        .expect("run envoy --mode validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
