//! Protobuf messages from `proto/`, compiled by prost in `build.rs`.

#![forbid(unsafe_code)]

/// `envoy.config.core.v3` (only `Metadata`).
pub mod envoy_core {
    include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
}
