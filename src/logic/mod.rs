//! Host-independent logic: no host calls here, so all of it is unit-tested natively.
//!
//! - [`exchange`]: the metadata exchange (frame codec, state machine, config);
//! - [`stats`]: the TCP stats (labels, config, per-connection reporting, series);
//! - [`peer`]: the filter-state contract between the two filters; [`handover`]: the exchange's
//!   decision as a value (published once per distinct peer, handed to the stats in memory);
//! - [`telemetry`]: the combined filter's configuration (both parts, reporter from side);
//! - the shared model: [`workload`], [`endpoint`], [`pairs`], [`config_error`].

#![forbid(unsafe_code)]

pub mod config_error;
pub mod endpoint;
pub mod exchange;
pub mod gateway_node;
pub mod handover;
pub mod log_limit;
pub mod pairs;
pub mod peer;
pub mod stats;
pub mod telemetry;
pub mod workload;
