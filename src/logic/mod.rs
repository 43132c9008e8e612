//! Host-independent logic: no proxy-wasm calls here, so all of it is unit-tested natively.

pub mod config_error;
pub mod endpoint;
pub mod exchange;
pub mod exchange_config;
pub mod exchange_sim;
pub mod frame;
pub mod frame_memo;
pub mod gateway_node;
pub mod log_limit;
pub mod pairs;
pub mod peer_property;
pub mod report;
pub mod stats;
pub mod workload;
