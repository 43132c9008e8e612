//! The `istio-peer-exchange` metadata exchange, free of any host call:
//! - [`frame`]: the frame codec (magic, length, `Any { Struct }`) and its incremental decoder;
//! - [`memo`]: the few payloads a worker sees again and again, remembered by their owner (the
//!   filter's root) and passed to the decoder;
//! - [`machine`]: one connection's exchange, as verdicts on each data callback;
//! - [`config`]: the filter's JSON configuration.

pub mod config;
pub mod frame;
pub mod machine;
pub mod memo;

pub use machine::{Counter, Event, Exchange, NotFound, Verdict};
