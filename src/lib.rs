//! Istio's TCP telemetry as a Proxy-Wasm extension: the `istio-peer-exchange` metadata exchange
//! and Istio's four TCP metrics, for a stock Envoy.
//!
//! - [`logic`]: everything that needs no host (exchange machine and frame codec, stats
//!   reporting, labels and series, the peer contract, the workload model). Unit-tested natively.
//! - [`host`]: the [`host::Host`] trait, everything the filters ask of Envoy.
//! - [`filters`]: the two filters' stream logic, generic over the host: the same code runs in
//!   Envoy and, natively, in the tests' fake Envoy.
//! - `wasm` (wasm32 only): the ABI implementation of the host and proxy-wasm adapters.

// Only the Wasm ABI needs `unsafe` (it allows it for itself); everything else forbids it.
#![deny(unsafe_code)]

pub mod filters;
pub mod host;
pub mod logic;
pub mod proto;

#[cfg(target_arch = "wasm32")]
mod wasm;

/// `root_id` of the combined filter: exchange and stats in one stream context (the default).
pub const TELEMETRY_ROOT_ID: &str = "istio_tcp_telemetry";
/// `root_id` of the metadata-exchange filter.
pub const EXCHANGE_ROOT_ID: &str = "istio_metadata_exchange";
/// `root_id` of the TCP stats filter.
pub const STATS_ROOT_ID: &str = "istio_tcp_stats";
