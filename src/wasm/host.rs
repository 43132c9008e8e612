//! Host calls that never panic.
//!
//! `proxy-wasm` 0.2.5 panics on any status it does not expect, both in its trait methods and in
//! most of `proxy_wasm::hostcalls` (`set_buffer`, `set_property`, `define_metric`, …). A panic
//! traps the VM for every connection on the worker, so every call whose failure is possible goes
//! through these wrappers over the raw ABI instead. Statuses are read as plain `u32`: an unknown
//! value from the host must not become an invalid Rust enum.

use std::ptr::{null, null_mut};

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;

/// A non-OK status returned by the host, kept for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Buffer {
    Downstream = 2,
    Upstream = 3,
    PluginConfiguration = 7,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
}

/// Asks for `on_tick` on this root every `period`.
pub fn set_tick_period(period: std::time::Duration) -> Result<(), HostError> {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value.
    match unsafe { proxy_set_tick_period_milliseconds(millis) } {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// The host's log level, so messages it would drop are not even formatted.
pub fn log_level() -> Option<proxy_wasm::types::LogLevel> {
    use proxy_wasm::types::LogLevel;
    let mut level = 0;
    // SAFETY: `level` is valid for the call.
    if unsafe { proxy_get_log_level(&mut level) } != OK {
        return None;
    }
    Some(match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    })
}

fn path_bytes(path: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for part in path {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    bytes.pop();
    bytes
}

/// Takes ownership of a host-allocated return buffer (allocated through the SDK's
/// `proxy_on_memory_allocate`, i.e. the same allocator as `Vec`).
///
/// # Safety
/// `data` must be null or a pointer the host got from `proxy_on_memory_allocate(size)`.
unsafe fn take_host_bytes(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// Reads a property: `Ok(None)` when the host says NotFound.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let path = path_bytes(path);
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills data/size on OK.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match status {
        // SAFETY: on OK the host allocated `data` through our allocator.
        OK => Ok(unsafe { take_host_bytes(data, size) }),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Reads a property as UTF-8 text; absent, failing or non-UTF-8 properties are `None`.
pub fn get_property_string(path: &[&str]) -> Option<String> {
    get_property(path)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), HostError> {
    let path = path_bytes(path);
    // SAFETY: both slices are valid for the call.
    let status =
        unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) };
    match status {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

pub fn get_buffer(buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the out-pointers are valid for the call.
    let status =
        unsafe { proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size) };
    match status {
        // SAFETY: on OK the host allocated `data` through our allocator.
        OK => Ok(unsafe { take_host_bytes(data, size) }.unwrap_or_default()),
        NOT_FOUND => Ok(Vec::new()),
        other => Err(HostError(other)),
    }
}

/// Replaces `size` bytes at `start` of a connection buffer with `value` (see ENVOY-NOTES.md for
/// which (start, size) pairs Envoy accepts: prepend, drop a prefix, replace all, append).
pub fn set_buffer(
    buffer: Buffer,
    start: usize,
    size: usize,
    value: &[u8],
) -> Result<(), HostError> {
    let data = if value.is_empty() {
        null()
    } else {
        value.as_ptr()
    };
    // SAFETY: `value` is valid for the call.
    let status = unsafe { proxy_set_buffer_bytes(buffer as u32, start, size, data, value.len()) };
    match status {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// Defines (or finds) a counter by name.
pub fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: `name` and `id` are valid for the call.
    let status = unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) };
    match status {
        OK => Ok(id),
        other => Err(HostError(other)),
    }
}

pub fn increment_counter(id: u32, by: u64) -> Result<(), HostError> {
    let by = i64::try_from(by).unwrap_or(i64::MAX);
    // SAFETY: plain values.
    match unsafe { proxy_increment_metric(id, by) } {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// Makes later host calls (properties) act on another context, e.g. a stream from its root.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain value.
    match unsafe { proxy_set_effective_context(context_id) } {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// Calls a host foreign function (e.g. Envoy's `declare_property`); its result bytes, if any.
pub fn call_foreign_function(name: &str, arguments: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the slices and out-pointers are valid for the call.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    };
    match status {
        // SAFETY: on OK the host allocated `data` (if any) through our allocator.
        OK => Ok(unsafe { take_host_bytes(data, size) }),
        other => Err(HostError(other)),
    }
}

/// The host's wall clock in nanoseconds (0 if it fails: rate limits then stay conservative).
pub fn now_nanos() -> u64 {
    let mut t = 0;
    // SAFETY: `t` is valid for the call.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        OK => t,
        _ => 0,
    }
}
