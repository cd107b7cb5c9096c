//! A one-response HTTP/1.1 server on a free loopback port: the module server a `remote` Wasm
//! source fetches from, and upstreams that answer with a fixed body. Every request (any
//! method, any path) gets the same `200` and `connection: close`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Result;

/// A running server; stopped on drop.
#[derive(Debug)]
pub struct Static {
    port: u16,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Static {
    /// Serves `body` as `content_type` to every request.
    pub fn start(body: Vec<u8>, content_type: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let response: Arc<[u8]> = [head.as_bytes(), &body].concat().into();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&served), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (response, count) = (Arc::clone(&response), Arc::clone(&count));
                std::thread::spawn(move || {
                    let _ = answer(conn, &response, &count);
                });
            }
        });
        Ok(Self {
            port,
            served,
            stop,
            thread: Some(thread),
        })
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests received so far (counted once their head is read).
    #[must_use]
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Acquire)
    }
}

/// Reads one request head (a body, if any, is not read), counts it, and writes the response.
fn answer(mut conn: TcpStream, response: &[u8], count: &AtomicU64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0_u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    count.fetch_add(1, Ordering::AcqRel);
    conn.write_all(response)?;
    conn.flush()
}

impl Drop for Static {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
