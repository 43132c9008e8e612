//! The two filters' stream logic, generic over [`crate::host::Host`] and compiled on every
//! target: in Envoy through `wasm`'s adapters, natively through the fake Envoy of the `testkit`
//! crate (native glue tests and fuzz targets run this same code).
//!
//! - [`dispatch`]: the root chosen by `root_id`, and the stream it creates;
//! - [`exchange`]: applies the exchange machine's verdicts to buffers and filter state;
//! - [`stats`]: counts bytes, asks the reporting machine, increments counter handles;
//! - [`telemetry`]: both in one stream context, the peer handed over in memory;
//! - [`node`]: the local node's metadata.

#![forbid(unsafe_code)]

mod connection_host;
pub mod dispatch;
pub mod exchange;
mod node;
pub mod stats;
pub mod telemetry;

pub use dispatch::{Dispatch, Stream};
