//! Protobuf messages from `proto/`, compiled by prost in `build.rs`.

/// `envoy.config.core.v3` (only `Metadata`).
pub mod envoy_core {
    include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
}
