//! The combined filter (`root_id: istio_tcp_telemetry`): exchange and stats of a connection in
//! one stream context. Its logic is the two filters' own; what is its own is the
//! [`config`] (both parts in one object, the reporter from the side).

pub mod config;

pub use config::TelemetryConfig;
