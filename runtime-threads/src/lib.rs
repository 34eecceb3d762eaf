//! # runtime-threads
//!
//! The simplest driver of the tgt-rs target: one thread per connection with a blocking
//! socket and synchronous backing-store calls. A second, small thread per connection reads
//! the socket so the connection thread can also wait for wake-ups (another session released
//! one of its tasks, reinstatement, shutdown) and timers. All protocol and SCSI logic lives
//! in [`iscsi_target::driver::Driver`]; this crate only moves bytes.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use backstore::MemoryStore;
//! use iscsi_target::TargetBuilder;
//! use iscsi_target::driver::DriverConfig;
//!
//! let registry = TargetBuilder::new("iqn.2026-11.org.example:ram")
//!     .lun(0, Arc::new(MemoryStore::new(16 << 20, 512)?))
//!     .chap("user", "a-long-secret")
//!     .build()?;
//! let server = runtime_threads::Server::start(
//!     registry,
//!     DriverConfig::default(),
//!     &["127.0.0.1:0".parse()?], // port 0: any free port
//! )?;
//! let addr = server.local_addrs()[0];
//! assert_ne!(addr.port(), 0);
//! // ... initiators log in to iscsi://<addr>/iqn.2026-11.org.example:ram/0 ...
//! server.shutdown(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A complete program with a custom block device: `examples/memdisk.rs`
//! (`cargo run -p runtime-threads --example memdisk -- --self-test`).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iscsi_proto::session::Timestamp;
use iscsi_target::driver::{ConnLimiter, Driver, DriverConfig, InputStatus};
use iscsi_target::registry::Registry;

/// Most bytes read from the socket at once.
const READ_CHUNK: usize = 256 * 1024;
/// Fewest bytes read at once: the reader starts here and doubles its buffer while reads
/// fill it (bulk Data-Out), halving it again when they do not, so an idle connection's
/// reader holds 16 KiB rather than `READ_CHUNK`.
const READ_MIN: usize = 16 * 1024;
/// Read chunks queued between the reader thread and the connection thread.
const READ_QUEUE: usize = 8;

enum Msg {
    Data(Vec<u8>),
    Eof,
    Wake,
    Logout(u16),
}

struct Shared {
    registry: Arc<Registry>,
    cfg: DriverConfig,
    epoch: Instant,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, SyncSender<Msg>>>,
    next_id: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    limiter: Arc<ConnLimiter>,
}

impl Shared {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// One portal's accept thread.
struct Listener {
    addr: SocketAddr,
    /// Set to stop this portal only ([`Server::remove_portal`]).
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A running thread-per-connection target.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listening", &self.local_addrs())
            .finish()
    }
}

fn spawn_listener(shared: &Arc<Shared>, l: TcpListener, addr: SocketAddr) -> io::Result<Listener> {
    let sh = shared.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let own = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("listen-{addr}"))
        .spawn(move || accept_loop(&sh, &l, addr, &own))?;
    Ok(Listener { addr, stop, thread })
}

/// Unblocks a listener thread parked in `accept()`.
fn poke(addr: &SocketAddr) {
    let _ = TcpStream::connect_timeout(addr, Duration::from_millis(200));
}

impl Server {
    /// Listens on `portals` and serves `registry`. The registry's portal list is set to the
    /// bound addresses (so port 0 works).
    pub fn start(
        registry: Arc<Registry>,
        cfg: DriverConfig,
        portals: &[SocketAddr],
    ) -> io::Result<Server> {
        let mut bound = Vec::new();
        for p in portals {
            let l = TcpListener::bind(p)
                .map_err(|e| io::Error::new(e.kind(), format!("listen on {p}: {e}")))?;
            bound.push(l);
        }
        let addrs: Vec<SocketAddr> = bound
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<_>>()?;
        registry.set_portals(addrs.clone());
        let limiter = ConnLimiter::new(&cfg.limits);
        let shared = Arc::new(Shared {
            registry,
            cfg,
            limiter,
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            threads: Mutex::new(Vec::new()),
        });
        let mut listeners = Vec::new();
        for (l, addr) in bound.into_iter().zip(addrs) {
            listeners.push(spawn_listener(&shared, l, addr)?);
        }
        Ok(Server { shared, listeners })
    }

    /// The addresses listened on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Starts listening on another portal while running; returns the bound address (port 0
    /// picks a free port). The registry's portal list follows.
    pub fn add_portal(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let l = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("listen on {addr}: {e}")))?;
        let bound = l.local_addr()?;
        self.listeners.push(spawn_listener(&self.shared, l, bound)?);
        self.shared.registry.set_portals(self.local_addrs());
        Ok(bound)
    }

    /// Stops listening on a portal (connections made through it stay); false when not
    /// listening there. The registry's portal list follows.
    pub fn remove_portal(&mut self, addr: SocketAddr) -> bool {
        let Some(i) = self.listeners.iter().position(|l| l.addr == addr) else {
            return false;
        };
        let l = self.listeners.remove(i);
        l.stop.store(true, Ordering::SeqCst);
        self.shared.registry.set_portals(self.local_addrs());
        poke(&l.addr);
        let _ = l.thread.join();
        true
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stops accepting, asks every initiator to log out, waits up to `grace` for them, then
    /// closes what is left and joins every thread. In-flight commands finish first: I/O runs
    /// synchronously on the connection threads.
    pub fn shutdown(self, grace: Duration) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            // Unblock accept().
            poke(&l.addr);
        }
        for l in self.listeners {
            let _ = l.thread.join();
        }
        let secs = u16::try_from(grace.as_secs()).unwrap_or(u16::MAX).max(1);
        broadcast(&self.shared, || Msg::Logout(secs));
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && !self
                .shared
                .conns
                .lock()
                .map(|c| c.is_empty())
                .unwrap_or(true)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        broadcast(&self.shared, || Msg::Eof);
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in threads {
            let _ = t.join();
        }
    }
}

fn broadcast(shared: &Shared, msg: impl Fn() -> Msg) {
    let conns: Vec<SyncSender<Msg>> = shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for tx in conns {
        let _ = tx.send(msg());
    }
}

fn accept_loop(shared: &Arc<Shared>, l: &TcpListener, portal: SocketAddr, own_stop: &AtomicBool) {
    let stopped = || shared.stop.load(Ordering::SeqCst) || own_stop.load(Ordering::SeqCst);
    loop {
        let (stream, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                if stopped() {
                    return;
                }
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stopped() {
            return;
        }
        // Refused: dropping the socket closes it before a thread is started for it (the
        // limiter logs once per burst).
        let Ok(permit) = shared.limiter.try_admit(portal, peer.ip()) else {
            continue;
        };
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{peer}"))
            .spawn(move || {
                serve_connection(&sh, stream, peer);
                drop(permit);
            });
        match spawned {
            Ok(h) => {
                let mut t = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
                t.retain(|h| !h.is_finished());
                t.push(h);
            }
            Err(e) => log::warn!("cannot start a thread for {peer}: {e}"),
        }
    }
}

fn reader(mut s: TcpStream, tx: SyncSender<Msg>) {
    let mut size = READ_MIN;
    loop {
        let mut buf = vec![0u8; size];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Msg::Eof);
                return;
            }
            Ok(n) => {
                size = next_read_size(size, n);
                buf.truncate(n);
                if tx.send(Msg::Data(buf)).is_err() {
                    return;
                }
            }
        }
    }
}

/// The reader's next buffer size after a read of `n` bytes into `size`.
fn next_read_size(size: usize, n: usize) -> usize {
    if n == size {
        (size * 2).min(READ_CHUNK)
    } else if n < size / 4 {
        (size / 2).max(READ_MIN)
    } else {
        size
    }
}

fn serve_connection(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let (tx, rx) = mpsc::sync_channel::<Msg>(READ_QUEUE);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx.clone());
    let read_half = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("{peer}: {e}");
            shared
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return;
        }
    };
    let rtx = tx.clone();
    let reader = std::thread::Builder::new()
        .name(format!("read-{peer}"))
        .spawn(move || reader(read_half, rtx));
    let wake_tx = tx.clone();
    let wake: iscsi_target::registry::Wake = Arc::new(move || match wake_tx.try_send(Msg::Wake) {
        Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
    });
    drop(tx);
    let mut driver = Driver::new(
        shared.registry.clone(),
        &shared.cfg,
        peer,
        local,
        shared.now(),
        wake,
    );
    run(shared, &mut driver, stream.try_clone().ok(), &rx);
    driver.close(shared.now());
    drop(driver);
    let _ = stream.shutdown(Shutdown::Both);
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    // Drain so the reader can exit.
    while let Ok(m) = rx.recv_timeout(Duration::from_millis(0)) {
        drop(m);
    }
    drop(rx);
    if let Ok(h) = reader {
        let _ = h.join();
    }
}

fn run(shared: &Shared, d: &mut Driver, out: Option<TcpStream>, rx: &Receiver<Msg>) {
    let Some(mut out) = out else { return };
    let mut inbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut outbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let now = shared.now();
        let msg = match d.poll_timeout() {
            Some(t) if t <= now => {
                d.handle_timeout(now);
                None
            }
            Some(t) => {
                match rx.recv_timeout(Duration::from_millis(t.as_millis() - now.as_millis())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            },
        };
        let now = shared.now();
        match msg {
            Some(Msg::Data(bytes)) => {
                if inbuf.is_empty() {
                    inbuf = bytes;
                } else {
                    inbuf.extend_from_slice(&bytes);
                }
            }
            Some(Msg::Eof) => return,
            Some(Msg::Wake) => d.handle_wake(now),
            Some(Msg::Logout(secs)) => d.request_logout(now, secs),
            None => d.handle_timeout(now),
        }
        loop {
            let st = d.handle_input(now, &mut inbuf);
            d.run_io_inline(now);
            outbuf.clear();
            d.transmit_into(now, &mut outbuf);
            if !outbuf.is_empty() && out.write_all(&outbuf).is_err() {
                return;
            }
            match st {
                InputStatus::Blocked => continue,
                InputStatus::Closed => return,
                InputStatus::NeedMore => {}
            }
            if d.is_closed() {
                return;
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_follows_the_traffic() {
        assert_eq!(next_read_size(READ_MIN, READ_MIN), 2 * READ_MIN);
        assert_eq!(next_read_size(READ_CHUNK, READ_CHUNK), READ_CHUNK);
        assert_eq!(next_read_size(4 * READ_MIN, 48), 2 * READ_MIN);
        assert_eq!(next_read_size(READ_MIN, 48), READ_MIN);
        assert_eq!(next_read_size(4 * READ_MIN, 2 * READ_MIN), 4 * READ_MIN);
    }
    use backstore::MemoryStore;
    use iscsi_target::TargetBuilder;
    use iscsi_target::driver::Limits;

    fn server(limits: Limits) -> (Server, SocketAddr) {
        let registry = TargetBuilder::new("iqn.2026-11.org.tgt-rs:rt-limits")
            .lun(0, Arc::new(MemoryStore::new(1 << 20, 512).unwrap()))
            .build()
            .unwrap();
        let s = Server::start(
            registry,
            DriverConfig::with_limits(limits),
            &["127.0.0.1:0".parse().unwrap()],
        )
        .unwrap();
        let addr = s.local_addrs()[0];
        (s, addr)
    }

    /// Whether the target closes `s` within `within` (EOF or reset); false when it is still
    /// open (the read times out).
    fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
        s.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 512];
        loop {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// A Login Request header (no data yet) declaring `data_len` bytes of data.
    fn login_header(data_len: u32) -> [u8; 48] {
        let mut h = [0u8; 48];
        h[0] = 0x43;
        h[1] = 0x87;
        h[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
        h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 7, 7]);
        h
    }

    fn wait_count(s: &Server, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.connection_count() != n {
            assert!(Instant::now() < deadline, "{} != {n}", s.connection_count());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn connections_beyond_the_per_initiator_limit_are_closed_at_once() {
        let (s, addr) = server(Limits {
            max_connections_per_initiator: 2,
            ..Limits::default()
        });
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        wait_count(&s, 2);
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        assert!(
            closed_within(&mut c, Duration::from_secs(3)),
            "third closed"
        );
        assert!(!closed_within(&mut a, Duration::from_millis(200)));
        assert!(!closed_within(&mut b, Duration::from_millis(10)));
        assert_eq!(s.connection_count(), 2);
        drop(a);
        wait_count(&s, 1);
        let mut d = std::net::TcpStream::connect(addr).unwrap();
        assert!(
            !closed_within(&mut d, Duration::from_millis(300)),
            "room again"
        );
        wait_count(&s, 2);
        drop((b, d));
        s.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn connections_beyond_the_per_portal_limit_are_closed_at_once() {
        let (s, addr) = server(Limits {
            max_connections_per_portal: 1,
            ..Limits::default()
        });
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        wait_count(&s, 1);
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        assert!(closed_within(&mut b, Duration::from_secs(3)));
        assert!(!closed_within(&mut a, Duration::from_millis(200)));
        drop(a);
        s.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_stalled_login_is_closed_by_the_login_timeout() {
        let (s, addr) = server(Limits {
            login_timeout_ms: 300,
            ..Limits::default()
        });
        // Slowloris: half a header, then nothing.
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        a.write_all(&login_header(0)[..20]).unwrap();
        let t = Instant::now();
        assert!(closed_within(&mut a, Duration::from_secs(5)));
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        // A connection that never sends anything: the same.
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        assert!(closed_within(&mut b, Duration::from_secs(5)));
        wait_count(&s, 0);
        s.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn an_oversized_data_segment_closes_before_it_is_buffered() {
        let (s, addr) = server(Limits {
            max_text_bytes: 4096,
            ..Limits::default()
        });
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        a.write_all(&login_header(0xff_ffff)).unwrap();
        let t = Instant::now();
        assert!(closed_within(&mut a, Duration::from_secs(5)));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "closed from the header"
        );
        // Within the limit the target waits for the data.
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        b.write_all(&login_header(1000)).unwrap();
        assert!(!closed_within(&mut b, Duration::from_millis(300)));
        drop(b);
        s.shutdown(Duration::from_secs(1));
    }
}
