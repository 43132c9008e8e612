//! Loopback backends behind the sidecars: echo, "hello " + request, a server-first greeter.

#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// A TCP server on 127.0.0.1 run by a thread (one more thread per connection). Stops accepting
/// on drop; connections already open finish on their own.
pub struct Backend {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a server that runs `handle` on every accepted connection.
    pub fn spawn<F>(handle: F) -> Backend
    where
        F: Fn(TcpStream) -> io::Result<()> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handle = Arc::new(handle);
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let handle = handle.clone();
                thread::spawn(move || {
                    let _ = handle(conn);
                });
            }
        });
        Backend {
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes up accept()
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `conn` back to itself, each chunk preceded by `prefix`, until EOF; then closes the
/// write side.
fn serve_chunks(mut conn: TcpStream, prefix: &[u8]) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return conn.shutdown(Shutdown::Write);
        }
        if prefix.is_empty() {
            conn.write_all(&buf[..n])?;
        } else {
            let mut out = Vec::with_capacity(prefix.len() + n);
            out.extend_from_slice(prefix);
            out.extend_from_slice(&buf[..n]);
            conn.write_all(&out)?;
        }
    }
}

/// Echoes every byte back until EOF, then closes its write side. Returns the running backend.
pub fn echo_server() -> Backend {
    Backend::spawn(|conn| serve_chunks(conn, b""))
}

/// For every chunk received writes `prefix` + the chunk ("hello " + "world\n" →
/// "hello world\n"); closes its write side at EOF. Send small requests: a chunk is whatever
/// one read returns.
pub fn prefix_server(prefix: &'static [u8]) -> Backend {
    Backend::spawn(move |conn| serve_chunks(conn, prefix))
}

/// Server-first: writes `greeting` as soon as a connection is accepted, then echoes.
pub fn greeting_server(greeting: &'static [u8]) -> Backend {
    Backend::spawn(move |mut conn| {
        conn.write_all(greeting)?;
        serve_chunks(conn, b"")
    })
}
