//! Istio's TCP telemetry as a Proxy-Wasm extension: the `istio-peer-exchange` metadata exchange
//! and Istio's four TCP metrics, for a stock Envoy.
//!
//! - [`logic`]: everything that needs no host (frame codec, pairs decoding, workload model,
//!   exchange state machine, labels, reporting). Built and unit-tested natively.
//! - `wasm` (wasm32 only): the thin proxy-wasm glue that feeds host events into [`logic`] and
//!   applies what it decides.

pub mod logic;
pub mod proto;
