//! The metric plan: which series a connection reports, and under which stat names.
//!
//! A [`MetricPlan`] starts as Istio's four TCP metrics, the open-connections gauge and the
//! (dropped unless enabled) connection-lifetime histogram, each with the 23 standard labels
//! ([`MetricPlan::standard`]); the config ([`super::config`]) then adds user-defined metrics and
//! applies the operator's overrides, in Istio's way: drop a metric, remove a label, set a label
//! (in place when the metric has it, else appended) to an attribute. [`MetricPlan::series`]
//! evaluates it for one connection's facts: every kept metric whose `match` holds, with its
//! labels evaluated and encoded into a sanitized stat name.
//!
//! A metric whose labels or `match` use a close attribute ([`super::close`]) is resolved at
//! close ([`MetricPlan::close_series`]) instead of when opened ([`MetricPlan::series`]); the
//! config admits close attributes only on metrics whose value is emitted at close.

use std::borrow::Cow;

use serde::Deserialize;

use super::close::{is_close_attribute, CloseFacts};
use super::labels::{attribute, istio_labels, ConnectionFacts, Labels, STANDARD_LABELS, UNKNOWN};
use super::stat_name::encode;

/// What a metric counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// 1 when the connection is first reported.
    ConnectionsOpened,
    /// 1 when the connection closes.
    ConnectionsClosed,
    /// Bytes written to the downstream side.
    BytesSent,
    /// Bytes read from the downstream side.
    BytesReceived,
    /// +1 when opened is emitted before close, −1 at close (a gauge).
    ConnectionsOpen,
    /// The connection's lifetime in milliseconds, at close (a histogram).
    ConnectionDuration,
}

/// The kind of Envoy stat a value goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl ValueKind {
    pub fn metric_type(self) -> MetricType {
        match self {
            ValueKind::ConnectionsOpen => MetricType::Gauge,
            ValueKind::ConnectionDuration => MetricType::Histogram,
            _ => MetricType::Counter,
        }
    }

    /// True when the value is emitted only at close, so its labels may use close attributes.
    pub fn is_close_time(self) -> bool {
        matches!(
            self,
            ValueKind::ConnectionsClosed | ValueKind::ConnectionDuration
        )
    }
}

/// One series a connection reports: add the connection's `value` to the counter `stat_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// The metric's name (the key for [`super::cardinality::SeriesLimiter::admit`]).
    pub metric: String,
    pub value: ValueKind,
    /// Encoded labels and metric name ([`super::stat_name::encode`]).
    pub stat_name: String,
}

pub const TCP_CONNECTIONS_OPENED_TOTAL: &str = "istio_tcp_connections_opened_total";
pub const TCP_CONNECTIONS_CLOSED_TOTAL: &str = "istio_tcp_connections_closed_total";
pub const TCP_SENT_BYTES_TOTAL: &str = "istio_tcp_sent_bytes_total";
pub const TCP_RECEIVED_BYTES_TOTAL: &str = "istio_tcp_received_bytes_total";
pub const TCP_CONNECTIONS_OPEN: &str = "istio_tcp_connections_open";
pub const TCP_CONNECTION_DURATION: &str = "istio_tcp_connection_duration_milliseconds";
/// Istio's metric names are its config names with this prefix (`tcp_sent_bytes_total`).
pub const ISTIO_PREFIX: &str = "istio_";

/// The standard metrics, in reporting order: Istio's four, the open-connections gauge and the
/// lifetime histogram (dropped unless `connection_duration` is on).
pub const STANDARD_METRICS: [(&str, ValueKind); 6] = [
    (TCP_CONNECTIONS_OPENED_TOTAL, ValueKind::ConnectionsOpened),
    (TCP_CONNECTIONS_CLOSED_TOTAL, ValueKind::ConnectionsClosed),
    (TCP_SENT_BYTES_TOTAL, ValueKind::BytesSent),
    (TCP_RECEIVED_BYTES_TOTAL, ValueKind::BytesReceived),
    (TCP_CONNECTIONS_OPEN, ValueKind::ConnectionsOpen),
    (TCP_CONNECTION_DURATION, ValueKind::ConnectionDuration),
];

/// The full name of a standard metric given by its full or its Istio config (unprefixed) name.
pub fn standard_metric(name: &str) -> Option<&'static str> {
    STANDARD_METRICS
        .iter()
        .map(|(full, _)| *full)
        .find(|full| *full == name || full.strip_prefix(ISTIO_PREFIX) == Some(name))
}

/// Where a label's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Index into [`istio_labels`] (a standard label, the common case: no lookup by name).
    Standard(usize),
    /// Any other attribute, evaluated with [`attribute`].
    Attribute(String),
    /// A close attribute ([`super::close`]).
    Close(String),
}

impl Source {
    fn of(attribute: &str) -> Self {
        match STANDARD_LABELS.iter().position(|l| *l == attribute) {
            Some(i) => Source::Standard(i),
            None if is_close_attribute(attribute) => Source::Close(attribute.to_string()),
            None => Source::Attribute(attribute.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Label {
    name: String,
    source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Metric {
    name: String,
    value: ValueKind,
    standard: bool,
    dropped: bool,
    labels: Vec<Label>,
    /// (attribute, accepted values) pairs that must all hold for the metric to be reported.
    matches: Vec<(String, Vec<String>)>,
}

/// Which metrics an override applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target<'a> {
    /// The four standard metrics.
    Standard,
    /// The standard metrics and every definition.
    All,
    /// One metric by its full name.
    Named(&'a str),
}

/// The metrics to report and how to label them (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricPlan {
    metrics: Vec<Metric>,
}

impl Default for MetricPlan {
    fn default() -> Self {
        MetricPlan::standard()
    }
}

impl MetricPlan {
    /// Istio's four TCP metrics and the gauge, each with the 23 standard labels; the histogram
    /// too, dropped.
    pub fn standard() -> Self {
        let labels: Vec<Label> = STANDARD_LABELS
            .iter()
            .enumerate()
            .map(|(i, name)| Label {
                name: name.to_string(),
                source: Source::Standard(i),
            })
            .collect();
        MetricPlan {
            metrics: STANDARD_METRICS
                .iter()
                .map(|(name, value)| Metric {
                    name: name.to_string(),
                    value: *value,
                    standard: true,
                    dropped: *value == ValueKind::ConnectionDuration,
                    labels: labels.clone(),
                    matches: Vec::new(),
                })
                .collect(),
        }
    }

    /// Adds a user-defined metric: `dimensions` are (label, attribute), `matches` are
    /// (attribute, any of these values). Names are validated by the config.
    pub(super) fn define(
        &mut self,
        name: &str,
        value: ValueKind,
        dimensions: &[(String, String)],
        matches: Vec<(String, Vec<String>)>,
    ) {
        self.metrics.push(Metric {
            name: name.to_string(),
            value,
            standard: false,
            dropped: false,
            labels: dimensions
                .iter()
                .map(|(label, attr)| Label {
                    name: label.clone(),
                    source: Source::of(attr),
                })
                .collect(),
            matches,
        });
    }

    fn targets<'s>(&'s mut self, target: Target<'s>) -> impl Iterator<Item = &'s mut Metric> {
        self.metrics.iter_mut().filter(move |m| match target {
            Target::Standard => m.standard,
            Target::All => true,
            Target::Named(name) => m.name == name,
        })
    }

    /// Reports the lifetime histogram (`connection_duration: true`).
    pub(super) fn enable_duration(&mut self) {
        self.targets(Target::Named(TCP_CONNECTION_DURATION))
            .for_each(|m| m.dropped = false);
    }

    /// (name, value) of the reported metrics an override reaches.
    pub(super) fn values_of<'s>(&'s mut self, target: Target<'s>) -> Vec<(String, ValueKind)> {
        self.targets(target)
            .filter(|m| !m.dropped)
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    pub(super) fn drop_metrics(&mut self, target: Target<'_>) {
        self.targets(target).for_each(|m| m.dropped = true);
    }

    pub(super) fn remove_label(&mut self, target: Target<'_>, label: &str) {
        self.targets(target)
            .for_each(|m| m.labels.retain(|l| l.name != label));
    }

    /// Sets `label` to `attribute`: in place when the metric has the label, else appended.
    pub(super) fn set_label(&mut self, target: Target<'_>, label: &str, attribute: &str) {
        for m in self.targets(target) {
            let source = Source::of(attribute);
            match m.labels.iter_mut().find(|l| l.name == label) {
                Some(existing) => existing.source = source,
                None => m.labels.push(Label {
                    name: label.to_string(),
                    source,
                }),
            }
        }
    }

    /// True when a metric of this full name is in the plan (dropped or not).
    pub fn contains(&self, name: &str) -> bool {
        self.metrics.iter().any(|m| m.name == name)
    }

    /// Names of the metrics that are not dropped, in reporting order.
    pub fn reported_metrics(&self) -> Vec<&str> {
        self.metrics
            .iter()
            .filter(|m| !m.dropped)
            .map(|m| m.name.as_str())
            .collect()
    }

    /// True when some reported metric is resolved at close (uses a close attribute).
    pub fn has_close_metrics(&self) -> bool {
        self.metrics.iter().any(|m| !m.dropped && m.uses_close())
    }

    /// True when a reported metric needs the connection's lifetime (the histogram, or a
    /// `duration_class` anywhere), so the glue reads the host's clock.
    pub fn needs_clock(&self) -> bool {
        self.metrics.iter().any(|m| {
            !m.dropped
                && (m.value == ValueKind::ConnectionDuration
                    || m.labels.iter().any(|l| {
                        matches!(&l.source, Source::Close(a) if a == super::close::DURATION_CLASS)
                    })
                    || m.matches
                        .iter()
                        .any(|(a, _)| a == super::close::DURATION_CLASS))
        })
    }

    /// The series resolved when opened is emitted: every kept metric without close attributes
    /// (minus dropped, with tags removed/added) whose `match` holds, each with its full
    /// encoded, sanitized stat name.
    pub fn series(&self, facts: &ConnectionFacts) -> Vec<Series> {
        self.series_of(facts, None)
    }

    /// The series resolved at close: the kept metrics that use close attributes.
    pub fn close_series(&self, facts: &ConnectionFacts, close: &CloseFacts) -> Vec<Series> {
        self.series_of(facts, Some(close))
    }

    fn series_of(&self, facts: &ConnectionFacts, close: Option<&CloseFacts>) -> Vec<Series> {
        let labels = istio_labels(facts);
        self.metrics
            .iter()
            .filter(|m| {
                !m.dropped && m.uses_close() == close.is_some() && matches(m, facts, &labels, close)
            })
            .map(|m| {
                let values: Vec<Cow<'_, str>> = m
                    .labels
                    .iter()
                    .map(|l| value_of(l, facts, &labels, close))
                    .collect();
                let pairs: Vec<(&str, &str)> = m
                    .labels
                    .iter()
                    .zip(&values)
                    .map(|(l, v)| (l.name.as_str(), v.as_ref()))
                    .collect();
                Series {
                    metric: m.name.clone(),
                    value: m.value,
                    stat_name: encode(&m.name, &pairs),
                }
            })
            .collect()
    }
}

impl Metric {
    fn uses_close(&self) -> bool {
        self.labels
            .iter()
            .any(|l| matches!(l.source, Source::Close(_)))
            || self.matches.iter().any(|(a, _)| is_close_attribute(a))
    }
}

/// An attribute's value, close attributes included when known.
fn any_attribute(
    facts: &ConnectionFacts,
    labels: &Labels,
    close: Option<&CloseFacts>,
    name: &str,
) -> Option<String> {
    if is_close_attribute(name) {
        close.and_then(|c| c.attribute(name))
    } else {
        attribute(facts, labels, name)
    }
}

fn matches(
    m: &Metric,
    facts: &ConnectionFacts,
    labels: &Labels,
    close: Option<&CloseFacts>,
) -> bool {
    m.matches.iter().all(|(attr, want)| {
        any_attribute(facts, labels, close, attr).is_some_and(|v| want.contains(&v))
    })
}

fn value_of<'a>(
    label: &Label,
    facts: &ConnectionFacts,
    labels: &'a Labels,
    close: Option<&CloseFacts>,
) -> Cow<'a, str> {
    match &label.source {
        Source::Close(attr) => Cow::Owned(
            close
                .and_then(|c| c.attribute(attr))
                .unwrap_or_else(|| UNKNOWN.to_string()),
        ),
        Source::Standard(i) => labels
            .get(*i)
            .map_or(Cow::Borrowed(UNKNOWN), |(_, v)| Cow::Borrowed(v.as_str())),
        Source::Attribute(attr) => {
            Cow::Owned(attribute(facts, labels, attr).unwrap_or_else(|| UNKNOWN.to_string()))
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
