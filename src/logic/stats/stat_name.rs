//! Encoding labels into an Envoy stat name.
//!
//! A Wasm module cannot attach tags to a metric, so every label rides in the name as
//! `NAME=.=VALUE;.;`, labels first, metric name last:
//! `reporter=.=destination;.;source_app=.=ratings;.;istio_tcp_connections_opened_total`.
//! The bootstrap's `stats_tags` (`envoy/stats-tags.yaml`) cut each part out again with the regex
//! `(_?NAME=\.=(.*?);\.;)`, so Prometheus sees `istio_tcp_connections_opened_total{…}`.
//!
//! Values come from peers and certificates, so they are untrusted: [`sanitize_value`] keeps a
//! small character set that can never spell `=.=` or `;.;` (no `=`, no `;`), so no value can end
//! its own label early or forge another, and bounds the length so one peer cannot make a stat
//! name arbitrarily long. Label names come from config and are validated with [`is_valid_name`];
//! [`encode`] still scrubs them, so even an unvalidated name cannot break the structure.

use std::borrow::Cow;

/// Longest value kept, in bytes (sanitized values are ASCII, so also in characters).
pub const MAX_VALUE_BYTES: usize = 256;
/// Between a label's name and its value.
pub const NAME_VALUE_SEPARATOR: &str = "=.=";
/// After each label's value.
pub const LABEL_TERMINATOR: &str = ";.;";

/// Characters a value keeps besides ASCII alphanumerics: enough for hosts, versions, SPIFFE
/// URIs (`spiffe://cluster.local/ns/default/sa/x`) and Envoy's joined response flags (`UF,URX`,
/// hence `,`). None of them is `=` or `;`, the characters of the separators.
fn is_kept(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_./:@+~%*,".contains(c)
}

/// The value with every other character replaced by `_` and cut to [`MAX_VALUE_BYTES`].
/// Borrowed when nothing had to change; empty stays empty.
pub fn sanitize_value(value: &str) -> Cow<'_, str> {
    let clean = value.len() <= MAX_VALUE_BYTES && value.chars().all(is_kept);
    if clean {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .chars()
            .take(MAX_VALUE_BYTES)
            .map(|c| if is_kept(c) { c } else { '_' })
            .collect(),
    )
}

/// `^[a-zA-Z_][a-zA-Z0-9_]*$`: a valid metric or label name (Prometheus' label-name rule).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A name with anything outside `[A-Za-z0-9_]` replaced by `_` (empty becomes `_`).
fn scrub_name(name: &str) -> Cow<'_, str> {
    if is_valid_name(name) {
        return Cow::Borrowed(name);
    }
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    Cow::Owned(out)
}

/// `label1=.=value1;.;label2=.=value2;.;metric`, values sanitized.
pub fn encode(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(
        metric.len()
            + labels
                .iter()
                .map(|(n, v)| n.len() + v.len().min(MAX_VALUE_BYTES) + 6)
                .sum::<usize>(),
    );
    for (name, value) in labels {
        out.push_str(&scrub_name(name));
        out.push_str(NAME_VALUE_SEPARATOR);
        out.push_str(&sanitize_value(value));
        out.push_str(LABEL_TERMINATOR);
    }
    out.push_str(&scrub_name(metric));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Envoy's tag extractor for `name` would find: every `name=.=(.*?);.;` match.
    fn extract<'a>(stat: &'a str, name: &str) -> Vec<&'a str> {
        let key = format!("{name}{NAME_VALUE_SEPARATOR}");
        let mut found = Vec::new();
        let mut rest = stat;
        while let Some(i) = rest.find(&key) {
            let after = &rest[i + key.len()..];
            let Some(end) = after.find(LABEL_TERMINATOR) else {
                break;
            };
            found.push(&after[..end]);
            rest = &after[end + LABEL_TERMINATOR.len()..];
        }
        found
    }

    #[test]
    fn encodes_labels_then_metric() {
        assert_eq!(
            encode("m", &[("reporter", "source"), ("source_app", "ratings")]),
            "reporter=.=source;.;source_app=.=ratings;.;m"
        );
        assert_eq!(encode("m", &[]), "m");
        assert_eq!(encode("m", &[("a", "")]), "a=.=;.;m");
    }

    #[test]
    fn spiffe_and_hosts_survive() {
        for v in [
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings",
            "mongodb.default.svc.cluster.local",
            "v1.2.3+build~4",
            "a@b:c%d*e",
            "-",
            "UF,URX",
        ] {
            assert!(matches!(sanitize_value(v), Cow::Borrowed(_)), "{v}");
        }
    }

    #[test]
    fn a_value_cannot_forge_a_label() {
        let evil = "x;.;reporter=.=evil";
        let stat = encode("m", &[("reporter", "source"), ("source_app", evil)]);
        assert_eq!(extract(&stat, "reporter"), vec!["source"]);
        assert_eq!(extract(&stat, "source_app"), vec!["x_._reporter_._evil"]);
        assert!(!sanitize_value(evil).contains(';'));
        assert!(!sanitize_value(evil).contains('='));
    }

    #[test]
    fn unicode_whitespace_and_controls_are_replaced() {
        assert_eq!(sanitize_value("héllo wörld"), "h_llo_w_rld");
        assert_eq!(sanitize_value("a\tb\nc\0d"), "a_b_c_d");
        assert_eq!(sanitize_value("💥"), "_");
        assert_eq!(sanitize_value(""), "");
    }

    #[test]
    fn length_is_capped_on_a_char_boundary() {
        assert_eq!(sanitize_value(&"a".repeat(1000)).len(), MAX_VALUE_BYTES);
        assert_eq!(
            sanitize_value(&"a".repeat(MAX_VALUE_BYTES)).len(),
            MAX_VALUE_BYTES
        );
        let multibyte = "é".repeat(300);
        let cut = sanitize_value(&multibyte);
        assert_eq!(cut.len(), MAX_VALUE_BYTES);
        assert!(cut.chars().all(|c| c == '_'));
    }

    #[test]
    fn any_value_sanitizes_to_a_safe_bounded_value() {
        let mut state: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let text: String = (0..(state % 400))
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    char::from_u32(state >> 11).unwrap_or(';')
                })
                .collect();
            let clean = sanitize_value(&text);
            assert!(clean.len() <= MAX_VALUE_BYTES);
            assert!(clean.chars().all(is_kept), "{clean:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "_", "source_app", "A9_b"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a.b", "a b", "é", "a=b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert_eq!(
            encode("bad metric", &[("9x=", "v")]),
            "_9x_=.=v;.;bad_metric"
        );
        assert_eq!(encode("", &[]), "_");
    }
}
