//! Istio's TCP telemetry as a Proxy-Wasm extension: the `istio-peer-exchange` metadata exchange
//! and Istio's four TCP metrics, for a stock Envoy.
//!
//! - [`logic`]: everything that needs no host (frame codec, pairs decoding, workload model,
//!   exchange state machine, labels, reporting). Built and unit-tested natively.
//! - `wasm` (wasm32 only): the thin proxy-wasm glue that feeds host events into [`logic`] and
//!   applies what it decides.

pub mod logic;
pub mod proto;

#[cfg(target_arch = "wasm32")]
mod wasm;

/// `root_id` of the metadata-exchange filter.
pub const EXCHANGE_ROOT_ID: &str = "istio_metadata_exchange";
/// `root_id` of the TCP stats filter.
pub const STATS_ROOT_ID: &str = "istio_tcp_stats";
