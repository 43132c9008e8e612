//! The test kit: what native tests, fuzz targets, the demo and the bench share.
//!
//! - [`fake_envoy`]: a native [`istio_tcp_telemetry::host::Host`] with Envoy 1.40's measured
//!   buffer, property, filter-state, metric and close semantics, running the *shipped* filters
//!   (`istio_tcp_telemetry::filters`) in listener chains;
//! - [`mesh`]: two fake sidecars wired back to back (client outbound → server inbound), both
//!   filters in each chain, bytes flowing both ways;
//! - [`node`]: node, endpoint and cluster metadata in the encodings Envoy hands to Wasm.

#![forbid(unsafe_code)]

pub mod fake_envoy;
pub mod mesh;
pub mod node;
