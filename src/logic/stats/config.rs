//! Configuration of the TCP stats filter (`root_id: istio_tcp_stats`).
//!
//! ```json
//! {"tcp_reporting_duration": "15s", "reporter": "destination", "max_series_per_metric": 1000,
//!  "connection_duration": true,
//!  "metrics": [{"name": "tcp_sent_bytes_total", "tags_to_remove": ["source_principal"],
//!               "dimensions": {"team": "destination_labels.team"}}],
//!  "definitions": [{"name": "istio_mongo_received_bytes", "value": "bytes_received",
//!                   "dimensions": {"source_version": "source_version"},
//!                   "match": {"destination_service_name": "mongodb"}}]}
//! ```
//! `metrics` follows Istio's stats plugin (`name` is a standard metric, with or without `istio_`,
//! a definition's name, or `""` for all standard metrics; `dimensions` with `""` also reach the
//! definitions, as in Istio). Dimension values are attribute names ([`super::labels::attribute`])
//! where Istio takes CEL; a `match` value is a string or a list of accepted strings. Close
//! attributes ([`super::close`]) are admitted only on metrics emitted at close (closed counts
//! and lifetimes). Every rejection names the field at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::cardinality::{FOLDED_SERIES_METRIC, OVERFLOW_LABEL};
use super::close::is_close_attribute;
use super::labels::{is_known_attribute, is_standard_label, Reporter, STANDARD_LABELS};
use super::plan::{standard_metric, MetricPlan, MetricType, Target, ValueKind, ISTIO_PREFIX};
use super::stat_name::is_valid_name;
use crate::logic::config_error::{parse_json, ConfigError};

pub const DEFAULT_REPORTING_DURATION: Duration = Duration::from_secs(15);
pub const MIN_REPORTING_DURATION: Duration = Duration::from_secs(1);
/// Upper bound: the host's tick period is a u32 of milliseconds (about 49 days); a day is far
/// above any sensible period and far below that.
pub const MAX_REPORTING_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_MAX_SERIES: u64 = 1000;
pub const MAX_SERIES_LIMIT: u64 = 100_000;

/// The parsed, validated stats configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    pub tcp_reporting_duration: Duration,
    /// `None`: the glue derives it from `xds.listener_direction`.
    pub reporter: Option<Reporter>,
    pub max_series_per_metric: usize,
    pub plan: MetricPlan,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            tcp_reporting_duration: DEFAULT_REPORTING_DURATION,
            reporter: None,
            max_series_per_metric: DEFAULT_MAX_SERIES as usize,
            plan: MetricPlan::standard(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatsConfig {
    tcp_reporting_duration: Option<RawDuration>,
    reporter: Option<Reporter>,
    #[serde(default = "default_max_series")]
    max_series_per_metric: u64,
    #[serde(default)]
    connection_duration: bool,
    #[serde(default)]
    metrics: Vec<RawOverride>,
    #[serde(default)]
    definitions: Vec<RawDefinition>,
}

fn default_max_series() -> u64 {
    DEFAULT_MAX_SERIES
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    #[serde(default)]
    name: String,
    #[serde(default)]
    drop: bool,
    #[serde(default)]
    tags_to_remove: Vec<String>,
    /// Label → attribute; a BTreeMap, so labels are added in name order as Istio does.
    #[serde(default)]
    dimensions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawMetricType {
    #[default]
    Counter,
    Gauge,
    Histogram,
}

impl RawMetricType {
    fn of(self) -> MetricType {
        match self {
            RawMetricType::Counter => MetricType::Counter,
            RawMetricType::Gauge => MetricType::Gauge,
            RawMetricType::Histogram => MetricType::Histogram,
        }
    }
}

/// A `match` value: one accepted string or a list of them. Read by a small visitor of its own
/// (not through `serde_json::Value`), so a wrong value is reported at its own position, under
/// its attribute's name.
#[derive(Debug, Clone)]
enum RawMatch {
    One(String),
    AnyOf(Vec<String>),
}

const MATCH_EXPECTED: &str = "a string or a list of strings";

impl<'de> Deserialize<'de> for RawMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawMatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(MATCH_EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawMatch, E> {
                Ok(RawMatch::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawMatch, A::Error> {
                let mut items = Vec::new();
                let mut wrong = None;
                while let Some(item) = seq.next_element::<MatchItem>()? {
                    match item {
                        MatchItem::Text(s) => items.push(s),
                        MatchItem::Other(what) => wrong = wrong.or(Some(what)),
                    }
                }
                match wrong {
                    Some(what) => Err(serde::de::Error::custom(format!(
                        "expected {MATCH_EXPECTED}, got {what}"
                    ))),
                    None => Ok(RawMatch::AnyOf(items)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One element of a `match` list: a string, or what else it was (for the error).
enum MatchItem {
    Text(String),
    Other(String),
}

impl<'de> Deserialize<'de> for MatchItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MatchItem;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MatchItem, E> {
                Ok(MatchItem::Text(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<MatchItem, E> {
                Ok(MatchItem::Other(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MatchItem, E> {
                Ok(MatchItem::Other(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MatchItem, E> {
                Ok(MatchItem::Other(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MatchItem, E> {
                Ok(MatchItem::Other(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<MatchItem, E> {
                Ok(MatchItem::Other("null".to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: String,
    #[serde(default, rename = "type")]
    type_: RawMetricType,
    value: ValueKind,
    #[serde(default)]
    dimensions: BTreeMap<String, String>,
    #[serde(default, rename = "match")]
    match_: BTreeMap<String, RawMatch>,
}

impl StatsConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawStatsConfig = parse_json(bytes)?;
        let tcp_reporting_duration = match &raw.tcp_reporting_duration {
            None => DEFAULT_REPORTING_DURATION,
            Some(v) => reporting_duration(v)
                .map_err(|e| ConfigError::field("tcp_reporting_duration", e))?,
        };
        if !(1..=MAX_SERIES_LIMIT).contains(&raw.max_series_per_metric) {
            return Err(ConfigError::field(
                "max_series_per_metric",
                format!(
                    "{} is outside 1..={MAX_SERIES_LIMIT}",
                    raw.max_series_per_metric
                ),
            ));
        }
        let mut plan = MetricPlan::standard();
        if raw.connection_duration {
            plan.enable_duration();
        }
        let mut names = LabelNames::new();
        for (i, def) in raw.definitions.iter().enumerate() {
            define(&mut plan, &mut names, &format!("definitions[{i}]"), def)?;
        }
        for (i, o) in raw.metrics.iter().enumerate() {
            apply_override(&mut plan, &mut names, &format!("metrics[{i}]"), o)?;
        }
        Ok(StatsConfig {
            tcp_reporting_duration,
            reporter: raw.reporter,
            max_series_per_metric: usize::try_from(raw.max_series_per_metric)
                .unwrap_or(DEFAULT_MAX_SERIES as usize),
            plan,
        })
    }
}

/// `"<n>s"`, `"<n>ms"`, `"<n>m"` (n a decimal such as `15` or `1.5`) or a JSON number of
/// seconds, within [`MIN_REPORTING_DURATION`]..=[`MAX_REPORTING_DURATION`].
/// `tcp_reporting_duration` as written: a string with a unit, or a number of seconds. (A small
/// visitor of its own rather than `serde_json::Value`, whose map and visitors cost the module
/// several KB for this one field.)
#[derive(Debug, Clone, PartialEq)]
enum RawDuration {
    Text(String),
    Seconds(f64),
}

impl std::fmt::Display for RawDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawDuration::Text(s) => write!(f, "{s:?}"),
            RawDuration::Seconds(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""<n>s", "<n>ms", "<n>m" or a number of seconds"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v as f64))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn reporting_duration(v: &RawDuration) -> Result<Duration, String> {
    const FORMAT: &str = r#"expected "<n>s", "<n>ms", "<n>m" or a number of seconds"#;
    let secs = match v {
        RawDuration::Seconds(n) => *n,
        RawDuration::Text(s) => {
            let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = s.strip_suffix('s') {
                (n, 1.0)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 60.0)
            } else {
                return Err(format!("{FORMAT}, got {s:?}"));
            };
            let decimal = !number.is_empty()
                && number.chars().all(|c| c.is_ascii_digit() || c == '.')
                && number.chars().filter(|c| *c == '.').count() <= 1
                && number.chars().any(|c| c.is_ascii_digit());
            let n: f64 = match number.parse() {
                Ok(n) if decimal => n,
                _ => return Err(format!("{FORMAT}, got {s:?}")),
            };
            n * scale
        }
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|_| format!("{v} is not a duration"))?;
    if d < MIN_REPORTING_DURATION {
        return Err(format!("{v} is below the minimum of 1s"));
    }
    if d > MAX_REPORTING_DURATION {
        return Err(format!("{v} is above the maximum of 24h"));
    }
    Ok(d)
}

/// Every label name in use, so that no new one clashes with another in Envoy's tag extraction.
///
/// The bootstrap's regex for label `b`, `(_?b=\.=(.*?);\.;)`, also matches inside the part of
/// any label `a` that ends with `b` (`version` inside `source_version=.=…`), cutting that label
/// in two; so no label name may be a suffix of another. `overflow` is reserved for folded
/// series.
struct LabelNames(Vec<String>);

impl LabelNames {
    fn new() -> Self {
        let mut names: Vec<String> = STANDARD_LABELS.iter().map(|s| s.to_string()).collect();
        names.push(OVERFLOW_LABEL.to_string());
        LabelNames(names)
    }

    fn admit(&mut self, name: &str) -> Result<(), String> {
        if !is_valid_name(name) {
            return Err(format!(
                "invalid label name {name:?} (must match ^[a-zA-Z_][a-zA-Z0-9_]*$)"
            ));
        }
        if name == OVERFLOW_LABEL {
            return Err(format!("label name {name:?} is reserved for folded series"));
        }
        if let Some(other) = self
            .0
            .iter()
            .find(|n| n.as_str() != name && (n.ends_with(name) || name.ends_with(n.as_str())))
        {
            return Err(format!(
                "label name {name:?} clashes with {other:?}: one ends with the other, so Envoy's \
                 tag regex for the shorter would match inside the longer"
            ));
        }
        if !self.0.iter().any(|n| n == name) {
            self.0.push(name.to_string());
        }
        Ok(())
    }
}

fn check_attribute(field: &str, attribute: &str) -> Result<(), ConfigError> {
    if is_known_attribute(attribute) || is_close_attribute(attribute) {
        Ok(())
    } else {
        Err(ConfigError::field(
            field,
            format!("unknown attribute {attribute:?}"),
        ))
    }
}

/// A close attribute may only label metrics whose value is emitted at close.
fn check_close_time(
    field: &str,
    attribute: &str,
    metrics: &[(String, ValueKind)],
) -> Result<(), ConfigError> {
    if !is_close_attribute(attribute) {
        return Ok(());
    }
    match metrics.iter().find(|(_, v)| !v.is_close_time()) {
        None => Ok(()),
        Some((name, _)) => Err(ConfigError::field(
            field,
            format!(
                "attribute {attribute:?} is known only at close, but {name} is also reported \
                 before close; use it on tcp_connections_closed_total, \
                 tcp_connection_duration_milliseconds or a definition whose value is \
                 connections_closed or connection_duration"
            ),
        )),
    }
}

fn define(
    plan: &mut MetricPlan,
    names: &mut LabelNames,
    path: &str,
    def: &RawDefinition,
) -> Result<(), ConfigError> {
    let field = format!("{path}.name");
    if !is_valid_name(&def.name) {
        return Err(ConfigError::field(
            &field,
            format!(
                "invalid metric name {:?} (must match ^[a-zA-Z_][a-zA-Z0-9_]*$)",
                def.name
            ),
        ));
    }
    let istio_name = format!("{ISTIO_PREFIX}{}", def.name);
    if standard_metric(&def.name).is_some() || standard_metric(&istio_name).is_some() {
        return Err(ConfigError::field(
            &field,
            format!("{:?} is a standard metric", def.name),
        ));
    }
    if def.name == FOLDED_SERIES_METRIC {
        return Err(ConfigError::field(
            &field,
            format!("{:?} is reserved for the folded-series counter", def.name),
        ));
    }
    if plan.contains(&def.name) {
        return Err(ConfigError::field(
            &field,
            format!("duplicate definition {:?}", def.name),
        ));
    }
    if def.type_.of() != def.value.metric_type() {
        return Err(ConfigError::field(
            &format!("{path}.type"),
            format!(
                "a {:?} value goes to a {}",
                def.value,
                match def.value.metric_type() {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                    MetricType::Histogram => "histogram",
                }
            ),
        ));
    }
    let this = [(def.name.clone(), def.value)];
    for (label, attribute) in &def.dimensions {
        let field = format!("{path}.dimensions.{label}");
        names
            .admit(label)
            .map_err(|e| ConfigError::field(&field, e))?;
        check_attribute(&field, attribute)?;
        check_close_time(&field, attribute, &this)?;
    }
    for (attribute, want) in &def.match_ {
        let field = format!("{path}.match.{attribute}");
        check_attribute(&field, attribute)?;
        check_close_time(&field, attribute, &this)?;
        if matches!(want, RawMatch::AnyOf(v) if v.is_empty()) {
            return Err(ConfigError::field(&field, "an empty list matches nothing"));
        }
    }
    let dimensions: Vec<(String, String)> = def
        .dimensions
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let matches = def
        .match_
        .iter()
        .map(|(k, v)| {
            let values = match v {
                RawMatch::One(s) => vec![s.clone()],
                RawMatch::AnyOf(list) => list.clone(),
            };
            (k.clone(), values)
        })
        .collect();
    plan.define(&def.name, def.value, &dimensions, matches);
    Ok(())
}

fn apply_override(
    plan: &mut MetricPlan,
    names: &mut LabelNames,
    path: &str,
    o: &RawOverride,
) -> Result<(), ConfigError> {
    // `""` reaches all standard metrics; its dimensions also reach definitions (Istio).
    let (target, dimension_target) = if o.name.is_empty() {
        (Target::Standard, Target::All)
    } else if let Some(full) = standard_metric(&o.name) {
        (Target::Named(full), Target::Named(full))
    } else if plan.contains(&o.name) {
        (Target::Named(&o.name), Target::Named(&o.name))
    } else {
        return Err(ConfigError::field(
            &format!("{path}.name"),
            format!(
                "unknown metric {:?} (expected \"\", a standard TCP metric or a definition's name)",
                o.name
            ),
        ));
    };
    for (j, tag) in o.tags_to_remove.iter().enumerate() {
        if !is_standard_label(tag) {
            return Err(ConfigError::field(
                &format!("{path}.tags_to_remove[{j}]"),
                format!("{tag:?} is not a standard label"),
            ));
        }
    }
    let reached = if o.drop {
        Vec::new()
    } else {
        plan.values_of(dimension_target)
    };
    for (label, attribute) in &o.dimensions {
        let field = format!("{path}.dimensions.{label}");
        names
            .admit(label)
            .map_err(|e| ConfigError::field(&field, e))?;
        check_attribute(&field, attribute)?;
        check_close_time(&field, attribute, &reached)?;
    }
    if o.drop {
        // As Istio: a dropped metric ignores the rest of its entry.
        plan.drop_metrics(target);
        return Ok(());
    }
    for tag in &o.tags_to_remove {
        plan.remove_label(target, tag);
    }
    for (label, attribute) in &o.dimensions {
        plan.set_label(dimension_target, label, attribute);
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
