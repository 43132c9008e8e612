//! The backend behind both topologies, in a child process (this binary again,
//! `TCP_BENCH_ROLE=backend`) so that neither process needs more file descriptors than the hard
//! limit allows.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use crate::load::{CHUNK, MSG};

/// The backend's protocol: the first byte of a connection says what it wants.
/// `S` sink (read to EOF), `G` generate (write until the peer goes away), `E` echo (the byte is
/// part of the first message), `H` hold (echo one 64-byte message, then keep the connection open
/// without a thread), `D` drop every held connection and answer their count (8 bytes LE).
pub fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    println!("{}", listener.local_addr().unwrap().port());
    let _ = io::stdout().flush();
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..48 {
        let rx = Arc::clone(&rx);
        let held = Arc::clone(&held);
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || loop {
                let conn = match rx.lock().unwrap().recv() {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let _ = serve(conn, &held);
            })
            .expect("backend worker");
    }
    // Exits with the parent: stdin closes when the bench ends or dies.
    thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    for conn in listener.incoming().flatten() {
        let _ = tx.send(conn);
    }
}

fn serve(mut conn: TcpStream, held: &Mutex<Vec<TcpStream>>) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut first = [0u8; 1];
    conn.read_exact(&mut first)?;
    match first[0] {
        b'S' => {
            let mut buf = vec![0u8; CHUNK];
            while conn.read(&mut buf)? > 0 {}
            Ok(())
        }
        b'G' => {
            let buf = vec![0x5Au8; CHUNK];
            loop {
                conn.write_all(&buf)?;
            }
        }
        b'H' => {
            let mut msg = [0u8; MSG];
            msg[0] = first[0];
            conn.read_exact(&mut msg[1..])?;
            conn.write_all(&msg)?;
            held.lock().unwrap().push(conn);
            Ok(())
        }
        b'D' => {
            let dropped = std::mem::take(&mut *held.lock().unwrap());
            let n = dropped.len() as u64;
            drop(dropped);
            conn.write_all(&n.to_le_bytes())
        }
        _ => {
            conn.write_all(&first)?;
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                conn.write_all(&buf[..n])?;
            }
        }
    }
}

pub struct BackendProcess {
    child: Child,
    pub port: u16,
}

impl BackendProcess {
    pub fn start() -> BackendProcess {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env("TCP_BENCH_ROLE", "backend")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the backend process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("backend port");
        let port = line.trim().parse().expect("backend port number");
        BackendProcess { child, port }
    }

    /// Closes every held connection; how many there were.
    pub fn drop_held(&self) -> u64 {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("backend control");
        c.write_all(b"D").unwrap();
        let mut n = [0u8; 8];
        c.read_exact(&mut n).unwrap();
        u64::from_le_bytes(n)
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
