//! The one client of the end-to-end tests, the demo and the bench: connect, write, read the
//! reply, with the moment it half-closes made explicit ([`HalfClose`]). That moment matters in
//! Envoy 1.40: a listener with `tls_inspector` closes a connection whose FIN arrives with its
//! first bytes, before any filter chain is chosen (docs/ENVOY-NOTES.md), so a request/response
//! client must not half-close before its reply.

#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Overall deadline of one exchange.
pub const ROUNDTRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// When the client sends its FIN, and what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HalfClose {
    /// Right after writing; then read to EOF. The write runs on a second thread, so a large
    /// payload cannot deadlock against an echo.
    AfterWrite,
    /// After writing and a pause (long enough for the bytes to pass a listener's
    /// `tls_inspector`), from the writing thread as above; then read to EOF.
    AfterPause(Duration),
    /// After the first `n` reply bytes (request/response); then read the rest to EOF.
    AfterReply(usize),
    /// Never: read until the reply ends with these bytes (or EOF), then close.
    Never { until: Vec<u8> },
}

/// Connects to 127.0.0.1:`port`, writes `payload`, half-closes as `half_close` says and returns
/// every byte read. Fails after [`ROUNDTRIP_TIMEOUT`].
pub fn exchange(port: u16, payload: &[u8], half_close: HalfClose) -> io::Result<Vec<u8>> {
    exchange_within(port, payload, half_close, ROUNDTRIP_TIMEOUT)
}

/// [`exchange`] with another deadline.
pub fn exchange_within(
    port: u16,
    payload: &[u8],
    half_close: HalfClose,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = Vec::new();
    match &half_close {
        HalfClose::AfterWrite | HalfClose::AfterPause(_) => {
            let pause = match half_close {
                HalfClose::AfterPause(pause) => pause,
                _ => Duration::ZERO,
            };
            let mut writer = stream.try_clone()?;
            let payload = payload.to_vec();
            let write = thread::spawn(move || -> io::Result<()> {
                writer.write_all(&payload)?;
                thread::sleep(pause);
                writer.shutdown(Shutdown::Write)
            });
            read_until(&mut stream, &mut out, deadline, |_| false)?;
            write
                .join()
                .map_err(|_| io::Error::other("writer thread panicked"))??;
            return Ok(out);
        }
        HalfClose::AfterReply(n) => {
            stream.write_all(payload)?;
            let n = *n;
            read_until(&mut stream, &mut out, deadline, |got| got.len() >= n)?;
            if out.len() < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} reply bytes", out.len()),
                ));
            }
            stream.shutdown(Shutdown::Write)?;
        }
        HalfClose::Never { until } => {
            stream.write_all(payload)?;
            read_until(&mut stream, &mut out, deadline, |got| got.ends_with(until))?;
            return Ok(out);
        }
    }
    read_until(&mut stream, &mut out, deadline, |_| false)?;
    Ok(out)
}

/// Reads into `out` until `done(out)`, EOF, or the deadline (an error).
fn read_until(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    deadline: Instant,
    done: impl Fn(&[u8]) -> bool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while !done(out) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "timed out after {ROUNDTRIP_TIMEOUT:?} ({} B read)",
                    out.len()
                ),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`exchange`] with [`HalfClose::AfterWrite`]; panics on any error.
pub fn client_roundtrip(port: u16, payload: &[u8]) -> Vec<u8> {
    try_client_roundtrip(port, payload)
        .unwrap_or_else(|e| panic!("roundtrip via 127.0.0.1:{port} ({} B): {e}", payload.len()))
}

/// [`exchange`] with [`HalfClose::AfterWrite`].
pub fn try_client_roundtrip(port: u16, payload: &[u8]) -> io::Result<Vec<u8>> {
    exchange(port, payload, HalfClose::AfterWrite)
}

/// [`exchange`] with [`HalfClose::Never`] until the reply ends with `end`; panics on errors.
pub fn request_until(port: u16, payload: &[u8], end: &[u8]) -> Vec<u8> {
    let until = end.to_vec();
    exchange(port, payload, HalfClose::Never { until })
        .unwrap_or_else(|e| panic!("request via 127.0.0.1:{port}: {e}"))
}

/// [`exchange`] with [`HalfClose::AfterReply`] of `reply_len` bytes; panics on errors.
pub fn request_reply(port: u16, request: &[u8], reply_len: usize) -> Vec<u8> {
    exchange(port, request, HalfClose::AfterReply(reply_len))
        .unwrap_or_else(|e| panic!("reading {reply_len} reply bytes via port {port}: {e}"))
}
