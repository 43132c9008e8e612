//! The TCP stats filter's logic (`root_id: istio_tcp_stats`): Istio's four TCP metrics
//! (`istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`), the open-connections gauge
//! `istio_tcp_connections_open`, the lifetime histogram
//! `istio_tcp_connection_duration_milliseconds`, operator overrides and user-defined metrics,
//! without the host.
//!
//! Per connection, a [`ConnectionStats`] machine says when to report and when the labels are
//! needed; the glue then reads the [`LabelInputs`] properties, which become the
//! [`ConnectionFacts`]; the config's [`MetricPlan`] gives the [`Series`], and the per-VM
//! [`SeriesBook`] resolves them through the cardinality cap to counter handles. The glue only
//! reads properties and increments handles.
//!
//! - [`labels`]: Istio's 23 labels and the attribute vocabulary of overrides;
//! - [`stat_name`]: labels encoded into the stat name for the bootstrap's `stats_tags`, safely;
//! - [`response_flags`]: Envoy's `response.flags` bitmask as its short string;
//! - [`config`]: the JSON configuration, validated with field-named errors;
//! - [`plan`]: from facts to series;
//! - [`cardinality`]: the per-metric cap on distinct series;
//! - [`close`]: how a connection ended (close attributes), as data;
//! - [`connection`]: one connection's reporting machine;
//! - [`inputs`]: raw properties → facts, with the cache key;
//! - [`series`]: series → counter handles, cached, through the cap.

pub mod cardinality;
pub mod close;
pub mod config;
pub mod connection;
pub mod inputs;
pub mod labels;
pub mod plan;
pub mod response_flags;
pub mod series;
pub mod stat_name;

#[cfg(test)]
mod test_fixtures;

pub use cardinality::{Admitted, SeriesLimiter, FOLDED_SERIES_METRIC};
pub use close::{CloseFacts, CloseOrder, ClosedBy};
pub use config::StatsConfig;
pub use connection::{ConnectionStats, Emission, Moment, Report};
pub use inputs::LabelInputs;
pub use labels::{attribute, is_known_attribute, istio_labels, ConnectionFacts, Labels, Reporter};
pub use plan::{MetricPlan, MetricType, Series, ValueKind};
pub use series::{Resolved, SeriesBook};
