//! [`WasmHost`]: the [`Host`] of the shipped module, over the raw proxy-wasm ABI. It is the only
//! code that calls the host, and it never panics.
//!
//! `proxy-wasm` 0.2.5 panics on any status it does not expect, both in its trait methods and in
//! most of `proxy_wasm::hostcalls` (`set_buffer`, `set_property`, `define_metric`, …). A panic
//! traps the VM for every connection on the worker, so every call goes through the raw ABI
//! here instead. Statuses are read as plain `u32`: an unknown value from the host must not
//! become an invalid Rust enum.

use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::host::{Buffer, Counter, Gauge, Histogram, Host, HostError, LogLevel};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
/// proxy-wasm metric types.
const METRIC_COUNTER: u32 = 0;
const METRIC_GAUGE: u32 = 1;
const METRIC_HISTOGRAM: u32 = 2;

/// The host's log level, read in `on_configure` (messages below it are not formatted).
static LOG_LEVEL: AtomicU32 = AtomicU32::new(LogLevel::Info as u32);

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
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
}

fn status(code: u32) -> Result<(), HostError> {
    match code {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
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

fn define_metric(kind: u32, name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: `name` and `id` are valid for the call.
    status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Reads the host's log level into [`LOG_LEVEL`] (from `on_configure`).
pub fn refresh_log_level() {
    let mut level = 0;
    // SAFETY: `level` is valid for the call.
    if unsafe { proxy_get_log_level(&mut level) } == OK {
        LOG_LEVEL.store(level.min(LogLevel::Critical as u32), Ordering::Relaxed);
    }
}

/// The host of the running Wasm VM (the effective context is the host's).
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmHost;

impl Host for WasmHost {
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        let path = path_bytes(path);
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: the pointers are valid for the call; the host fills data/size on OK.
        let code = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        match code {
            // SAFETY: on OK the host allocated `data` through our allocator.
            OK => Ok(unsafe { take_host_bytes(data, size) }),
            NOT_FOUND => Ok(None),
            other => Err(HostError(other)),
        }
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        let path = path_bytes(path);
        // SAFETY: both slices are valid for the call.
        status(unsafe {
            proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
        })
    }

    fn buffer(&self, buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: the out-pointers are valid for the call.
        let code =
            unsafe { proxy_get_buffer_bytes(buffer as u32, start, max, &mut data, &mut size) };
        match code {
            // SAFETY: on OK the host allocated `data` through our allocator.
            OK => Ok(unsafe { take_host_bytes(data, size) }.unwrap_or_default()),
            NOT_FOUND => Ok(Vec::new()),
            other => Err(HostError(other)),
        }
    }

    fn set_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        len: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        let data = if value.is_empty() {
            null()
        } else {
            value.as_ptr()
        };
        // SAFETY: `value` is valid for the call.
        status(unsafe { proxy_set_buffer_bytes(buffer as u32, start, len, data, value.len()) })
    }

    fn define_counter(&self, name: &str) -> Result<Counter, HostError> {
        define_metric(METRIC_COUNTER, name).map(Counter)
    }

    fn increment(&self, counter: Counter, by: u64) -> Result<(), HostError> {
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        // SAFETY: plain values.
        status(unsafe { proxy_increment_metric(counter.0, by) })
    }

    fn define_gauge(&self, name: &str) -> Result<Gauge, HostError> {
        define_metric(METRIC_GAUGE, name).map(Gauge)
    }

    fn add(&self, gauge: Gauge, by: i64) -> Result<(), HostError> {
        // SAFETY: plain values. Envoy adds a positive offset to a gauge, subtracts a negative one.
        status(unsafe { proxy_increment_metric(gauge.0, by) })
    }

    fn define_histogram(&self, name: &str) -> Result<Histogram, HostError> {
        define_metric(METRIC_HISTOGRAM, name).map(Histogram)
    }

    fn record(&self, histogram: Histogram, value: u64) -> Result<(), HostError> {
        // SAFETY: plain values.
        status(unsafe { proxy_record_metric(histogram.0, value) })
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: plain value.
        status(unsafe { proxy_set_tick_period_milliseconds(millis) })
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        // SAFETY: plain value.
        status(unsafe { proxy_set_effective_context(context_id) })
    }

    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, HostError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: the slices and out-pointers are valid for the call.
        let code = unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut data,
                &mut size,
            )
        };
        match code {
            // SAFETY: on OK the host allocated `data` (if any) through our allocator.
            OK => Ok(unsafe { take_host_bytes(data, size) }),
            other => Err(HostError(other)),
        }
    }

    fn now_nanos(&self) -> u64 {
        let mut t = 0;
        // SAFETY: `t` is valid for the call.
        match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
            OK => t,
            _ => 0,
        }
    }

    fn log_level(&self) -> LogLevel {
        match LOG_LEVEL.load(Ordering::Relaxed) {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        }
    }

    fn log(&self, level: LogLevel, message: &str) {
        // SAFETY: `message` is valid for the call. A failed log has nowhere to be reported.
        let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
    }
}
