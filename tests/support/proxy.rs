//! A TCP proxy on loopback that injects network faults between a client under test and a real
//! server (S3, PostgreSQL): it passes bytes through, or cuts, stalls or refuses connections,
//! as the test's current [`Fault`] says. Faults apply to connections accepted after they are
//! set; a stalled connection is held open, silent, until the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes everything.
    None,
    /// Closes both sides once the client sent this many bytes (a connection reset mid-request).
    CutAfter(u64),
    /// Stops forwarding (both ways) once the client sent this many bytes, and holds the
    /// connection open: a peer that took the request and never answers.
    StallAfter(u64),
    /// Accepts and closes at once (a peer that drops connections).
    Refuse,
}

struct Shared {
    fault: Mutex<Fault>,
    closed: AtomicBool,
    tripped: AtomicU64,
    /// Stalled connections are held while this is their generation.
    generation: AtomicU64,
    /// The client side of every connection passed through, for [`FaultProxy::cut_all`].
    open: Mutex<Vec<TcpStream>>,
}

/// The proxy; stops (and releases held connections) when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT` to give the client.
    pub addr: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy to `target` (`HOST:PORT`), passing everything until told otherwise.
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            closed: AtomicBool::new(false),
            tripped: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        });
        let target = target.to_string();
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.closed.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let fault = *s.fault.lock().expect("fault");
                if fault == Fault::Refuse {
                    s.tripped.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                if let Ok(c) = client.try_clone() {
                    s.open.lock().expect("open").push(c);
                }
                let s = s.clone();
                std::thread::spawn(move || relay(client, server, fault, s));
            }
        });
        Self { addr, shared }
    }

    /// Sets the fault for connections accepted from now on.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().expect("fault") = fault;
    }

    /// Closes every stalled connection (the network came back, or the peer's kernel finally
    /// said the other side is gone): a server still waiting on one then sees it end.
    pub fn release_stalled(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Cuts every connection passed through so far (the network between went away); new ones
    /// get the current fault.
    pub fn cut_all(&self) {
        for c in self.shared.open.lock().expect("open").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// How many connections a fault has hit so far.
    pub fn tripped(&self) -> u64 {
        self.shared.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copies both ways; the client's bytes are counted against the fault.
fn relay(client: TcpStream, server: TcpStream, fault: Fault, s: Arc<Shared>) {
    let limit = match fault {
        Fault::CutAfter(n) | Fault::StallAfter(n) => Some(n),
        _ => None,
    };
    let stall = matches!(fault, Fault::StallAfter(_));
    let stalled = Arc::new(AtomicBool::new(false));
    let (mut c_read, mut s_write) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let (mut s_read, mut c_write) = (server, client);
    let back_stalled = stalled.clone();
    let back_shared = s.clone();
    let back = std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if back_stalled.load(Ordering::SeqCst) {
                hold(&back_shared);
                break;
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Write);
    });
    let mut sent = 0u64;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match c_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let allowed = limit.map_or(n as u64, |l| l.saturating_sub(sent).min(n as u64));
        if allowed > 0 && s_write.write_all(&buf[..allowed as usize]).is_err() {
            break;
        }
        sent += allowed;
        if (allowed as usize) < n {
            s.tripped.fetch_add(1, Ordering::SeqCst);
            if stall {
                stalled.store(true, Ordering::SeqCst);
                hold(&s);
            }
            let _ = c_read.shutdown(Shutdown::Both);
            let _ = s_write.shutdown(Shutdown::Both);
            break;
        }
    }
    let _ = s_write.shutdown(Shutdown::Write);
    let _ = back.join();
}

/// Holds a stalled connection until the proxy is dropped or releases its stalled connections.
fn hold(s: &Shared) {
    let generation = s.generation.load(Ordering::SeqCst);
    while !s.closed.load(Ordering::SeqCst) && s.generation.load(Ordering::SeqCst) == generation {
        std::thread::sleep(Duration::from_millis(50));
    }
}
