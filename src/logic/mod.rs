//! Host-independent logic: no host calls here, so all of it is unit-tested natively.
//!
//! - [`exchange`]: the metadata exchange (frame codec, state machine, config);
//! - [`stats`]: the TCP stats (labels, config, per-connection reporting, series);
//! - [`peer`]: the filter-state contract between the two filters;
//! - the shared model: [`workload`], [`endpoint`], [`pairs`], [`config_error`].

#![forbid(unsafe_code)]

pub mod config_error;
pub mod endpoint;
pub mod exchange;
pub mod gateway_node;
pub mod log_limit;
pub mod pairs;
pub mod peer;
pub mod stats;
pub mod workload;
