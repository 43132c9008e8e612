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
        &shipped_template(template_rel_path),
        params,
        Unused::Refused,
    )
}

/// The text of `envoy/<template_rel_path>` as shipped.
pub fn shipped_template(template_rel_path: &str) -> String {
    let path = manifest_dir().join("envoy").join(template_rel_path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What [`render_text`] does with a parameter the text does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unused {
    /// A panic: the shipped templates use every parameter they document.
    Refused,
    /// Allowed: for a template edited before rendering (the bench removes the Wasm filters).
    Allowed,
}

/// [`render`] of a template's text (`label` names it in panics).
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
