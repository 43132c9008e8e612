//! A [`Host`] for the two halves of one connection in the combined filter: a property that is
//! fixed for the connection's life and that both halves read (the upstream's peer certificate,
//! read by the client gate `istio_mtls` and by the stats labels; the endpoint's metadata, read
//! by the client gate `tls_mode_istio` and by the stats' fallback labels) is asked of Envoy once.
//!
//! Why the cache stays correct: it lives and dies with one connection (never shared between
//! connections, never kept by a root), and it only holds properties of that connection's
//! established TLS session and chosen upstream host, which neither an xDS update nor a
//! certificate rotation changes for a connection already open (new connections get a new
//! cache). It is only filled from data callbacks on, when Envoy has these properties (before
//! the first data callback they read as absent: docs/ENVOY-NOTES.md), so an early absence is
//! never remembered. Everything else goes straight to the host.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::host::{Buffer, Counter, Gauge, Histogram, Host, HostError, LogLevel};

/// Paths remembered per connection: read by both halves, fixed once the connection is up.
const SHARED_READS: [&[&str]; 3] = [
    &["upstream", "uri_san_peer_certificate"],
    &["upstream", "tls_version"],
    &["xds", "upstream_host_metadata"],
];

type Reads = Rc<RefCell<Vec<(usize, Option<Vec<u8>>)>>>;

#[derive(Clone)]
pub struct ConnectionHost<H: Host> {
    inner: H,
    /// `None` for a root's host (it acts for many connections): no cache.
    reads: Option<Reads>,
    /// True once a data callback ran on this connection (see the module docs).
    data_seen: Option<Rc<std::cell::Cell<bool>>>,
}

impl<H: Host> ConnectionHost<H> {
    /// The host of a root: every call goes to the host.
    pub fn for_root(inner: H) -> Self {
        ConnectionHost {
            inner,
            reads: None,
            data_seen: None,
        }
    }

    /// From a root's host: the host both halves of one new connection share.
    pub fn for_connection(&self) -> Self
    where
        H: Clone,
    {
        ConnectionHost {
            inner: self.inner.clone(),
            reads: Some(Rc::default()),
            data_seen: Some(Rc::default()),
        }
    }

    /// Called at the start of every data callback of this connection.
    pub fn data_callback(&self) {
        if let Some(seen) = &self.data_seen {
            seen.set(true);
        }
    }
}

impl<H: Host> Host for ConnectionHost<H> {
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        let shared = SHARED_READS.iter().position(|p| *p == path);
        let (Some(index), Some(reads), Some(seen)) = (shared, &self.reads, &self.data_seen) else {
            return self.inner.property(path);
        };
        if !seen.get() {
            return self.inner.property(path);
        }
        if let Some((_, value)) = reads.borrow().iter().find(|(i, _)| *i == index) {
            return Ok(value.clone());
        }
        // A failed read is not remembered: the next asker tries again.
        let value = self.inner.property(path)?;
        reads.borrow_mut().push((index, value.clone()));
        Ok(value)
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        self.inner.set_property(path, value)
    }

    fn buffer(&self, buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
        self.inner.buffer(buffer, start, max)
    }

    fn set_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        len: usize,
        value: &[u8],
    ) -> Result<(), HostError> {
        self.inner.set_buffer(buffer, start, len, value)
    }

    fn define_counter(&self, name: &str) -> Result<Counter, HostError> {
        self.inner.define_counter(name)
    }

    fn increment(&self, counter: Counter, by: u64) -> Result<(), HostError> {
        self.inner.increment(counter, by)
    }

    fn define_gauge(&self, name: &str) -> Result<Gauge, HostError> {
        self.inner.define_gauge(name)
    }

    fn add(&self, gauge: Gauge, by: i64) -> Result<(), HostError> {
        self.inner.add(gauge, by)
    }

    fn define_histogram(&self, name: &str) -> Result<Histogram, HostError> {
        self.inner.define_histogram(name)
    }

    fn record(&self, histogram: Histogram, value: u64) -> Result<(), HostError> {
        self.inner.record(histogram, value)
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.inner.set_tick_period(period)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.inner.set_effective_context(context_id)
    }

    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, HostError> {
        self.inner.call_foreign_function(name, arguments)
    }

    fn now_nanos(&self) -> u64 {
        self.inner.now_nanos()
    }

    fn log_level(&self) -> LogLevel {
        self.inner.log_level()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message)
    }
}
