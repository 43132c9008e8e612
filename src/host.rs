//! The seam between the filters and whatever runs them: everything a filter asks of Envoy.
//!
//! The filters in [`crate::filters`] are generic over [`Host`], so the code Envoy runs is the
//! code the native tests and fuzz targets run: in Wasm the implementation is `wasm::abi`'s
//! (the only code that calls the proxy-wasm ABI, and it never panics); natively it is the fake
//! Envoy of the dev-only `testkit` crate, which follows Envoy 1.40's measured behaviour
//! (docs/ENVOY-NOTES.md).
//!
//! Every call that can fail returns a [`HostError`]; a filter logs it and falls back, it never
//! panics on one.

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

/// A non-OK status returned by the host, kept for logging (proxy-wasm numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl HostError {
    pub const NOT_FOUND: HostError = HostError(1);
    pub const BAD_ARGUMENT: HostError = HostError(2);
    pub const INTERNAL_FAILURE: HostError = HostError(10);
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            1 => "NotFound",
            2 => "BadArgument",
            7 => "SerializationFailure",
            10 => "InternalFailure",
            12 => "Unimplemented",
            _ => "status",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// The buffers a network filter reads and edits (proxy-wasm numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Buffer {
    /// Bytes read from the downstream connection (client → upstream).
    Downstream = 2,
    /// Bytes written back to the downstream connection (upstream → client).
    Upstream = 3,
    /// The filter's `configuration`, during `on_configure`.
    PluginConfiguration = 7,
}

/// A counter defined by name; Envoy shares one stat per name across every VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counter(pub u32);

/// A gauge defined by name; like a counter, one stat per name across every VM, so the
/// workers' increments and decrements add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gauge(pub u32);

/// A histogram defined by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Histogram(pub u32);

/// Who closed a connection, as the host tells a close callback (proxy-wasm numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerType {
    Unknown = 0,
    /// Envoy closed it (a timeout, a failed upstream, the other side's close passed on).
    Local = 1,
    /// The peer of that connection closed it.
    Remote = 2,
}

/// What a data callback tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Pass the buffer on to the next filter.
    Continue,
    /// Keep the buffer; the next callback sees it with the new bytes appended. Never at end of
    /// stream: Envoy drops held bytes there.
    Pause,
}

/// Log levels, as the host numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Everything the filters ask of Envoy. Property paths are proxy-wasm's (`["xds", "node", "id"]`);
/// a one-element path names filter state set by a Wasm filter on this connection.
pub trait Host {
    /// A property of the effective context: `Ok(None)` when the host says NotFound.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;
    /// Sets filter state (`set_property([key], value)` is stored as `wasm.<key>`).
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError>;
    /// Up to `max` bytes of a buffer from `start`.
    fn buffer(&self, buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError>;
    /// Replaces `len` bytes at `start` of a connection buffer with `value`. Envoy 1.40 accepts
    /// prepend `(0, 0)`, drop a prefix `(0, n)`, replace all `(0, >= size)` and append.
    fn set_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        len: usize,
        value: &[u8],
    ) -> Result<(), HostError>;
    fn define_counter(&self, name: &str) -> Result<Counter, HostError>;
    fn increment(&self, counter: Counter, by: u64) -> Result<(), HostError>;
    fn define_gauge(&self, name: &str) -> Result<Gauge, HostError>;
    /// Adds `by` (negative: subtracts) to a gauge.
    fn add(&self, gauge: Gauge, by: i64) -> Result<(), HostError>;
    fn define_histogram(&self, name: &str) -> Result<Histogram, HostError>;
    fn record(&self, histogram: Histogram, value: u64) -> Result<(), HostError>;
    /// Asks for `on_tick` on the calling root every `period`.
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError>;
    /// Makes later calls (properties, filter state) act on another context, e.g. a stream from
    /// its root's tick.
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError>;
    /// Calls one of the host's foreign functions (Envoy's `declare_property`, …); its result.
    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, HostError>;
    /// The host's wall clock, in nanoseconds (0 when it cannot say).
    fn now_nanos(&self) -> u64;
    /// The host's log level: messages below it are not even formatted.
    fn log_level(&self) -> LogLevel;
    fn log(&self, level: LogLevel, message: &str);

    /// A property as UTF-8 text; absent, failing or non-UTF-8 properties are `None`.
    fn property_string(&self, path: &[&str]) -> Option<String> {
        self.property(path)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    }
}

/// `host_log!(host, Warn, "...", args)`: formats only when the host would keep the message.
#[macro_export]
macro_rules! host_log {
    ($host:expr, $level:ident, $($arg:tt)+) => {{
        let level = $crate::host::LogLevel::$level;
        if level >= $crate::host::Host::log_level($host) {
            $crate::host::Host::log($host, level, &format!($($arg)+));
        }
    }};
}
