//! How a connection ended, as pure data: the close attributes that `metrics` dimensions and
//! `definitions` may use on metrics emitted at close.
//!
//! The standard series' labels are fixed when opened is emitted (Istio's `response_flags`
//! included), so these attributes exist only at close: [`is_close_attribute`] is what the
//! config checks a metric against, [`CloseFacts::attribute`] what the plan evaluates.
//!
//! - `closed_by`: which side closed first, `downstream`, `upstream` or `local` (Envoy itself:
//!   a failed upstream, an idle timeout), from the first end of stream or remote close the
//!   stream saw ([`CloseOrder`]);
//! - `close_flags`: Envoy's response flags at close (`UF,URX`, `DC`, `-`);
//! - `termination_details`: Envoy's connection termination details, else the upstream
//!   transport failure reason, else `-`;
//! - `duration_class`: the lifetime as `subsecond`, `seconds`, `minutes` or `hours`
//!   (`unknown` without a host clock).

pub const CLOSED_BY: &str = "closed_by";
pub const CLOSE_FLAGS: &str = "close_flags";
pub const TERMINATION_DETAILS: &str = "termination_details";
pub const DURATION_CLASS: &str = "duration_class";

/// The close attributes, in documentation order.
pub const CLOSE_ATTRIBUTES: [&str; 4] =
    [CLOSED_BY, CLOSE_FLAGS, TERMINATION_DETAILS, DURATION_CLASS];

/// True for an attribute known only at close.
pub fn is_close_attribute(name: &str) -> bool {
    CLOSE_ATTRIBUTES.contains(&name)
}

/// Which side closed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Downstream,
    Upstream,
    Local,
}

impl ClosedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Downstream => "downstream",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Local => "local",
        }
    }
}

/// The first sign of a close the stream saw: an end of stream in either direction, or a close
/// callback whose peer is remote. Envoy calls `on_upstream_close` before `on_downstream_close`
/// whoever closed, and reports its own closes (and the side it closes in answer) as local, so
/// a local close counts only when nothing remote came first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseOrder {
    first: Option<ClosedBy>,
}

impl CloseOrder {
    /// A data callback with `end_of_stream` from downstream (`true`) or upstream.
    pub fn end_of_stream(&mut self, downstream: bool) {
        self.first.get_or_insert(if downstream {
            ClosedBy::Downstream
        } else {
            ClosedBy::Upstream
        });
    }

    /// A close callback of the downstream (`true`) or upstream connection; `remote`: the host
    /// says that connection's peer closed it.
    pub fn closed(&mut self, downstream: bool, remote: bool) {
        if remote {
            self.end_of_stream(downstream);
        }
    }

    pub fn closed_by(&self) -> ClosedBy {
        self.first.unwrap_or(ClosedBy::Local)
    }
}

/// The duration class of a lifetime in milliseconds.
pub fn duration_class(millis: Option<u64>) -> &'static str {
    match millis {
        None => "unknown",
        Some(ms) if ms < 1_000 => "subsecond",
        Some(ms) if ms < 60_000 => "seconds",
        Some(ms) if ms < 3_600_000 => "minutes",
        Some(_) => "hours",
    }
}

/// How one connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFacts {
    pub closed_by: ClosedBy,
    /// Envoy's short form of `response.flags` read at close (`-` when none).
    pub flags: String,
    /// `-` when Envoy gives none.
    pub termination_details: String,
    /// Lifetime in milliseconds, when the host has a clock.
    pub duration_ms: Option<u64>,
}

impl CloseFacts {
    /// The value of close attribute `name`; `None` for any other name.
    pub fn attribute(&self, name: &str) -> Option<String> {
        Some(match name {
            CLOSED_BY => self.closed_by.as_str().to_string(),
            CLOSE_FLAGS => self.flags.clone(),
            TERMINATION_DETAILS => self.termination_details.clone(),
            DURATION_CLASS => duration_class(self.duration_ms).to_string(),
            _ => return None,
        })
    }
}

impl CloseFacts {
    /// The series-cache key of a connection's close-time series: its label inputs' key
    /// ([`super::inputs::LabelInputs::key`]) and every close attribute's value (the duration
    /// class, not the lifetime), length-prefixed after a marker no label-inputs key starts with.
    pub fn cache_key(&self, open_key: &[u8]) -> Vec<u8> {
        let values = [
            self.closed_by.as_str(),
            self.flags.as_str(),
            self.termination_details.as_str(),
            duration_class(self.duration_ms),
        ];
        let mut key = Vec::with_capacity(1 + open_key.len() + 64);
        key.push(CLOSE_KEY_MARKER);
        for part in std::iter::once(open_key).chain(values.iter().map(|v| v.as_bytes())) {
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part);
        }
        key
    }
}

/// First byte of a close-time cache key (label-inputs keys start with the reporter, 0 or 1).
const CLOSE_KEY_MARKER: u8 = 0xFF;

/// Termination details from the two properties Envoy may have set, first non-empty wins.
pub fn termination_details(details: Option<&str>, transport_failure: Option<&str>) -> String {
    [details, transport_failure]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("-")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_end_of_stream_or_remote_close_wins_else_local() {
        let mut o = CloseOrder::default();
        assert_eq!(o.closed_by(), ClosedBy::Local);
        o.closed(false, false);
        assert_eq!(o.closed_by(), ClosedBy::Local, "a local close waits");
        o.closed(true, true);
        assert_eq!(o.closed_by(), ClosedBy::Downstream);
        o.end_of_stream(false);
        assert_eq!(o.closed_by(), ClosedBy::Downstream, "the first one stays");

        let mut o = CloseOrder::default();
        o.end_of_stream(false);
        o.end_of_stream(true);
        assert_eq!(o.closed_by(), ClosedBy::Upstream);
        let mut o = CloseOrder::default();
        o.closed(false, true);
        assert_eq!(o.closed_by(), ClosedBy::Upstream);
        let mut o = CloseOrder::default();
        o.closed(true, false);
        assert_eq!(o.closed_by(), ClosedBy::Local);
    }

    #[test]
    fn cache_keys_differ_by_close_values_not_by_exact_lifetime() {
        let f = |closed_by, flags: &str, ms| CloseFacts {
            closed_by,
            flags: flags.into(),
            termination_details: "-".into(),
            duration_ms: Some(ms),
        };
        let a = f(ClosedBy::Upstream, "-", 10).cache_key(b"k");
        assert_eq!(
            a,
            f(ClosedBy::Upstream, "-", 900).cache_key(b"k"),
            "both subsecond"
        );
        assert_ne!(a, f(ClosedBy::Upstream, "-", 1000).cache_key(b"k"));
        assert_ne!(a, f(ClosedBy::Local, "-", 10).cache_key(b"k"));
        assert_ne!(a, f(ClosedBy::Upstream, "UF", 10).cache_key(b"k"));
        assert_ne!(a, f(ClosedBy::Upstream, "-", 10).cache_key(b"kk"));
        assert_eq!(a[0], CLOSE_KEY_MARKER);
    }

    #[test]
    fn duration_classes() {
        assert_eq!(duration_class(Some(0)), "subsecond");
        assert_eq!(duration_class(Some(999)), "subsecond");
        assert_eq!(duration_class(Some(1_000)), "seconds");
        assert_eq!(duration_class(Some(59_999)), "seconds");
        assert_eq!(duration_class(Some(60_000)), "minutes");
        assert_eq!(duration_class(Some(3_600_000)), "hours");
        assert_eq!(duration_class(None), "unknown");
    }

    #[test]
    fn attributes_and_details() {
        let f = CloseFacts {
            closed_by: ClosedBy::Local,
            flags: "UF,URX".into(),
            termination_details: termination_details(Some(""), Some("connection refused")),
            duration_ms: Some(1500),
        };
        assert_eq!(f.attribute(CLOSED_BY).as_deref(), Some("local"));
        assert_eq!(f.attribute(CLOSE_FLAGS).as_deref(), Some("UF,URX"));
        assert_eq!(
            f.attribute(TERMINATION_DETAILS).as_deref(),
            Some("connection refused")
        );
        assert_eq!(f.attribute(DURATION_CLASS).as_deref(), Some("seconds"));
        assert_eq!(f.attribute("response_flags"), None);
        assert_eq!(termination_details(None, None), "-");
        assert!(CLOSE_ATTRIBUTES.iter().all(|a| is_close_attribute(a)));
    }
}
