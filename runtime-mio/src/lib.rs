//! # runtime-mio
//!
//! The epoll runtime of the tgt-rs target: `N` reactor threads, each a [`mio::Poll`] owning
//! its connections. Listener threads accept on every portal and hand connections out
//! round-robin. Each wake-up reads everything the socket holds, handles every complete PDU,
//! and sends the batched responses with one `writev` straight from the task buffers (Data-In
//! is not copied in user space; only the remainder of a partial write is). Block I/O runs on a per-reactor worker
//! pool (memory and null stores run inline); completions come back through the reactor's
//! [`mio::Waker`]. LUNs with an asynchronous engine (Ceph RBD) skip the pool for plain
//! reads, writes, flushes, UNMAP and zeroing: each reactor makes its own engine per LUN,
//! registers the engine's completion eventfd in its `Poll`, submits without blocking and
//! reaps when the eventfd fires ([`iscsi_target::engines`]), so requests in flight are not
//! limited by [`MioConfig::io_threads`]. All protocol and SCSI logic lives in
//! [`iscsi_target::driver::Driver`].
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
//! let server = runtime_mio::Server::start(
//!     registry,
//!     DriverConfig::default(),
//!     &["127.0.0.1:0".parse()?], // port 0: any free port
//!     runtime_mio::MioConfig::default(),
//! )?;
//! let addr = server.local_addrs()[0];
//! assert_ne!(addr.port(), 0);
//! // ... initiators log in to iscsi://<addr>/iqn.2026-11.org.example:ram/0 ...
//! server.shutdown(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A complete program with a custom block device: `examples/multi_lun.rs`
//! (`cargo run -p runtime-mio --example multi_lun -- --self-test`).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iscsi_proto::session::{TaskData, Timestamp};
use iscsi_proto::wire::BHS_LEN;
use iscsi_target::driver::{
    ConnLimiter, ConnPermit, Driver, DriverConfig, InputStatus, IoJob, Payload, RxTarget,
};
use iscsi_target::registry::{LunBackend, Registry};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

mod engines;
use engines::Engines;

const WAKER: Token = Token(0);
/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 256 * 1024;
/// Stop reading from a connection while this much output is queued (backpressure).
const MAX_PENDING_OUTPUT: usize = 8 << 20;
/// PDUs gathered into one `writev` (three slices each: header, data, trailer).
const WRITEV_PDUS: usize = 64;

/// Reactor settings.
#[derive(Debug, Clone, Copy)]
pub struct MioConfig {
    /// Reactor threads; 0 = one per core, each kept on its core (the I/O threads are not
    /// pinned).
    pub reactors: usize,
    /// I/O worker threads per reactor.
    pub io_threads: usize,
}

impl Default for MioConfig {
    fn default() -> Self {
        MioConfig {
            reactors: 0,
            io_threads: 8,
        }
    }
}

enum Cmd {
    NewConn(std::net::TcpStream, SocketAddr, ConnPermit),
    Logout(u16),
    Stop,
}

struct ReactorShared {
    waker: Waker,
    cmds: Mutex<VecDeque<Cmd>>,
    woken: Mutex<Vec<Token>>,
    done: Mutex<Vec<(Token, IoJob)>>,
    conns: AtomicUsize,
}

impl ReactorShared {
    fn send(&self, c: Cmd) {
        self.cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(c);
        let _ = self.waker.wake();
    }
}

/// One portal's accept thread.
struct Listener {
    addr: SocketAddr,
    /// Set to stop this portal only ([`Server::remove_portal`]).
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A running reactor target.
pub struct Server {
    reactors: Vec<(Arc<ReactorShared>, JoinHandle<()>)>,
    listeners: Vec<Listener>,
    stop: Arc<AtomicBool>,
    registry: Arc<Registry>,
    rr: Arc<AtomicUsize>,
    limiter: Arc<ConnLimiter>,
}

/// Starts the accept thread of one portal: connections within the limits go to the
/// reactors round-robin; the others are closed at once.
fn spawn_listener(
    l: TcpListener,
    addr: SocketAddr,
    stop_all: Arc<AtomicBool>,
    targets: Vec<Arc<ReactorShared>>,
    rr: Arc<AtomicUsize>,
    limiter: Arc<ConnLimiter>,
) -> io::Result<Listener> {
    let stop = Arc::new(AtomicBool::new(false));
    let own = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("listen-{addr}"))
        .spawn(move || {
            for s in l.incoming() {
                if stop_all.load(Ordering::SeqCst) || own.load(Ordering::SeqCst) {
                    return;
                }
                match s {
                    Ok(s) => {
                        let peer = match s.peer_addr() {
                            Ok(p) => p,
                            Err(_) => continue,
                        };
                        // Refused: dropping the socket closes it before anything is
                        // allocated for it (the limiter logs once per burst).
                        let Ok(permit) = limiter.try_admit(addr, peer.ip()) else {
                            continue;
                        };
                        let i = rr.fetch_add(1, Ordering::Relaxed) % targets.len();
                        targets[i].send(Cmd::NewConn(s, peer, permit));
                    }
                    Err(e) => {
                        log::warn!("accept on {addr}: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(Listener { addr, stop, thread })
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listening", &self.local_addrs())
            .field("reactors", &self.reactors.len())
            .finish()
    }
}

impl Server {
    /// Listens on `portals` and serves `registry` with `cfg.reactors` reactors.
    ///
    /// The reactors send Data-In with [`Driver::payload`], so this runtime turns
    /// [`DriverConfig::zero_copy_reads`] on: large page-cache reads go from the file to the
    /// socket with `sendfile(2)`.
    pub fn start(
        registry: Arc<Registry>,
        mut driver_cfg: DriverConfig,
        portals: &[SocketAddr],
        cfg: MioConfig,
    ) -> io::Result<Server> {
        driver_cfg.zero_copy_reads = true;
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
        let n = if cfg.reactors == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.reactors
        };
        // One reactor per core: each stays on its own core (its I/O threads go wherever the
        // scheduler puts them), so the busiest threads do not chase each other across cores.
        let cpus = if cfg.reactors == 0 {
            allowed_cpus()
        } else {
            Vec::new()
        };
        let epoch = Instant::now();
        let mut reactors = Vec::new();
        for i in 0..n {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let shared = Arc::new(ReactorShared {
                waker,
                cmds: Mutex::new(VecDeque::new()),
                woken: Mutex::new(Vec::new()),
                done: Mutex::new(Vec::new()),
                conns: AtomicUsize::new(0),
            });
            let pool = IoPool::new(cfg.io_threads.max(1), shared.clone(), i)?;
            let mut r = Reactor {
                poll,
                shared: shared.clone(),
                registry: registry.clone(),
                driver_cfg: driver_cfg.clone(),
                conns: HashMap::new(),
                next_token: 1,
                pool,
                engines: Engines::default(),
                epoch,
                stopping: false,
                read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            };
            let cpu = cpus.get(i).copied();
            let h = std::thread::Builder::new()
                .name(format!("reactor-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_to_cpu(cpu) {
                            log::warn!("reactor {i}: cannot pin to CPU {cpu}: {e}");
                        }
                    }
                    r.run()
                })?;
            reactors.push((shared, h));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<Arc<ReactorShared>> = reactors.iter().map(|(s, _)| s.clone()).collect();
        let rr = Arc::new(AtomicUsize::new(0));
        let limiter = ConnLimiter::new(&driver_cfg.limits);
        let mut listeners = Vec::new();
        for (l, addr) in bound.into_iter().zip(addrs) {
            listeners.push(spawn_listener(
                l,
                addr,
                stop.clone(),
                targets.clone(),
                rr.clone(),
                limiter.clone(),
            )?);
        }
        Ok(Server {
            reactors,
            listeners,
            stop,
            registry,
            rr,
            limiter,
        })
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
        let targets: Vec<Arc<ReactorShared>> =
            self.reactors.iter().map(|(s, _)| s.clone()).collect();
        self.listeners.push(spawn_listener(
            l,
            bound,
            self.stop.clone(),
            targets,
            self.rr.clone(),
            self.limiter.clone(),
        )?);
        self.registry.set_portals(self.local_addrs());
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
        self.registry.set_portals(self.local_addrs());
        // Unblock accept().
        let _ = std::net::TcpStream::connect_timeout(&l.addr, Duration::from_millis(200));
        let _ = l.thread.join();
        true
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.reactors
            .iter()
            .map(|(s, _)| s.conns.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops accepting, asks every initiator to log out, waits up to `grace`, then closes
    /// what is left and joins every thread.
    pub fn shutdown(self, grace: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            let _ = std::net::TcpStream::connect_timeout(&l.addr, Duration::from_millis(200));
        }
        for l in self.listeners {
            let _ = l.thread.join();
        }
        let secs = u16::try_from(grace.as_secs()).unwrap_or(u16::MAX).max(1);
        for (s, _) in &self.reactors {
            s.send(Cmd::Logout(secs));
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self
                .reactors
                .iter()
                .any(|(s, _)| s.conns.load(Ordering::Relaxed) > 0)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (s, _) in &self.reactors {
            s.send(Cmd::Stop);
        }
        for (_, h) in self.reactors {
            let _ = h.join();
        }
    }
}

/// Worker threads that run blocking I/O jobs for one reactor.
struct IoPool {
    state: Arc<PoolState>,
    threads: Vec<JoinHandle<()>>,
}

/// The pool's queue, behind one lock, and the condition its idle workers wait on.
#[derive(Default)]
struct PoolState {
    queue: Mutex<PoolQueue>,
    work: Condvar,
}

#[derive(Default)]
struct PoolQueue {
    jobs: VecDeque<(Token, IoJob)>,
    /// Jobs that run one at a time ([`IoJob::lane`]): a lane is here while one of its jobs
    /// is queued or running; the others wait in its queue, and the worker that finishes
    /// one runs the next itself, without a trip through the reactor.
    lanes: HashMap<usize, VecDeque<(Token, IoJob)>>,
    /// Workers waiting for a job: only then does a submission wake one.
    idle: usize,
    stop: bool,
}

impl IoPool {
    fn new(n: usize, shared: Arc<ReactorShared>, reactor: usize) -> io::Result<IoPool> {
        let state = Arc::new(PoolState::default());
        let mut threads = Vec::new();
        for i in 0..n {
            let (state, shared) = (state.clone(), shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("io-{reactor}-{i}"))
                    .spawn(move || worker(&state, &shared))?,
            );
        }
        Ok(IoPool { state, threads })
    }

    fn submit(&self, token: Token, job: IoJob) {
        let mut q = self.state.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = job.lane() {
            if let Some(waiting) = q.lanes.get_mut(&lane) {
                waiting.push_back((token, job));
                return;
            }
            q.lanes.insert(lane, VecDeque::new());
        }
        q.jobs.push_back((token, job));
        if q.idle > 0 {
            self.state.work.notify_one();
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        // Workers finish what is queued, then exit.
        self.state
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.state.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(state: &PoolState, shared: &ReactorShared) {
    // The batch this worker runs: one job, or a lane's contiguous writes joined into one.
    let mut tokens = Vec::new();
    let mut jobs = Vec::new();
    let mut q = state.queue.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let Some((token, job)) = q.jobs.pop_front() else {
            if q.stop {
                return;
            }
            q.idle += 1;
            q = state.work.wait(q).unwrap_or_else(|e| e.into_inner());
            q.idle -= 1;
            continue;
        };
        drop(q);
        let lane = job.lane();
        tokens.push(token);
        jobs.push(job);
        loop {
            IoJob::run_joined(&mut jobs);
            shared
                .done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(tokens.drain(..).zip(jobs.drain(..)));
            let _ = shared.waker.wake();
            let Some(lane) = lane else { break };
            // The lane's next jobs run here and now: its next write, and the writes queued
            // behind it that continue it, as one.
            let mut q = state.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(waiting) = q.lanes.get_mut(&lane) {
                while let Some((_, next)) = waiting.front() {
                    if !jobs.is_empty() && !IoJob::joins(&jobs, next) {
                        break;
                    }
                    if let Some((token, job)) = waiting.pop_front() {
                        tokens.push(token);
                        jobs.push(job);
                    }
                }
            }
            if jobs.is_empty() {
                q.lanes.remove(&lane);
                break;
            }
        }
        q = state.queue.lock().unwrap_or_else(|e| e.into_inner());
    }
}

/// One PDU of a vectored batch: its header and trailer bytes are ranges of `Conn::hdrs`; its
/// data stays in the task buffer until the `writev`. (A PDU whose data is a store range has
/// no data here: the range and its trailer wait in `Conn::out_store` / `out_after`.)
#[derive(Clone, Copy)]
struct Piece {
    hdr: (usize, usize),
    data: Option<TaskData>,
    trailer: (usize, usize),
}

/// The part of a store range [`Payload::Store`] not yet sent.
struct StoreOut {
    backend: Arc<LunBackend>,
    offset: u64,
    len: usize,
}

struct Conn {
    sock: TcpStream,
    driver: Driver,
    rx: Vec<u8>,
    /// Output queued after a partial write, in order: `out[out_pos..]`, then `out_store`,
    /// then `out_after` (which is empty while `out_store` is `None`).
    out: Vec<u8>,
    out_pos: usize,
    out_store: Option<StoreOut>,
    out_after: Vec<u8>,
    /// Headers and trailers of the batch being written (reused).
    hdrs: Vec<u8>,
    /// The batch being written (reused).
    pieces: Vec<Piece>,
    writable_armed: bool,
    /// The socket may hold input: set by a readable event, cleared when a read would block
    /// (the reactor's registration is edge-triggered, so new input brings a new event).
    /// Wake-ups for completions skip the read that would find nothing.
    readable: bool,
    peer_closed: bool,
    /// This connection's place in the connection limits.
    _permit: ConnPermit,
}

struct Reactor {
    poll: Poll,
    shared: Arc<ReactorShared>,
    registry: Arc<Registry>,
    driver_cfg: DriverConfig,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    pool: IoPool,
    /// Asynchronous engines of the LUNs that have one, and the jobs in flight on them.
    engines: Engines,
    epoch: Instant,
    stopping: bool,
    /// Socket reads land here first (one buffer per reactor, not zeroed per wake-up).
    read_buf: Box<[u8]>,
}

impl Reactor {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = self.now();
            let timeout = self
                .conns
                .values()
                .filter_map(|c| c.driver.poll_timeout())
                .min()
                .map(|t| Duration::from_millis(t.as_millis().saturating_sub(now.as_millis())));
            let timeout = match (timeout, self.engines.timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll: {e}");
                    return;
                }
            }
            let mut touched: Vec<Token> = Vec::new();
            let mut engines_ready = Vec::new();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                match Engines::engine_of(ev.token()) {
                    Some(id) => engines_ready.push(id),
                    None => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if let Some(c) = self.conns.get_mut(&ev.token()) {
                                c.readable = true;
                            }
                        }
                        touched.push(ev.token());
                    }
                }
            }
            if self.handle_commands() {
                return;
            }
            let now = self.now();
            // I/O completions.
            let done =
                std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(|e| e.into_inner()));
            for (t, job) in done {
                if let Some(c) = self.conns.get_mut(&t) {
                    c.driver.io_done(now, job);
                    touched.push(t);
                }
            }
            self.reap_engines(&engines_ready, now, &mut touched);
            // Wake-ups from other sessions.
            let woken =
                std::mem::take(&mut *self.shared.woken.lock().unwrap_or_else(|e| e.into_inner()));
            for t in woken {
                if let Some(c) = self.conns.get_mut(&t) {
                    c.driver.handle_wake(now);
                    touched.push(t);
                }
            }
            // Timers.
            for (t, c) in self.conns.iter_mut() {
                if c.driver.poll_timeout().is_some_and(|d| d <= now) {
                    c.driver.handle_timeout(now);
                    touched.push(*t);
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for t in touched {
                self.service(t, now);
            }
            if self.stopping && self.conns.is_empty() {
                return;
            }
        }
    }

    /// Hands the jobs the ready engines finished back to their drivers, then drops the
    /// engines of removed LUNs.
    fn reap_engines(&mut self, ready: &[usize], now: Timestamp, touched: &mut Vec<Token>) {
        let conns = &mut self.conns;
        for &id in ready {
            self.engines.reap(id, &mut |t, job| {
                if let Some(c) = conns.get_mut(&t) {
                    c.driver.io_done(now, job);
                    touched.push(t);
                }
            });
        }
        self.engines.retire(self.poll.registry());
    }

    /// Returns true when the reactor must exit.
    fn handle_commands(&mut self) -> bool {
        let cmds = std::mem::take(&mut *self.shared.cmds.lock().unwrap_or_else(|e| e.into_inner()));
        for c in cmds {
            match c {
                Cmd::NewConn(s, peer, permit) => self.accept(s, peer, permit),
                Cmd::Logout(secs) => {
                    self.stopping = true;
                    let now = self.now();
                    let tokens: Vec<Token> = self.conns.keys().copied().collect();
                    for t in tokens {
                        if let Some(c) = self.conns.get_mut(&t) {
                            c.driver.request_logout(now, secs);
                        }
                        self.service(t, now);
                    }
                }
                Cmd::Stop => {
                    let now = self.now();
                    for (_, mut c) in self.conns.drain() {
                        c.driver.close(now);
                        let _ = self.poll.registry().deregister(&mut c.sock);
                    }
                    self.shared.conns.store(0, Ordering::Relaxed);
                    return true;
                }
            }
        }
        false
    }

    fn accept(&mut self, s: std::net::TcpStream, peer: SocketAddr, permit: ConnPermit) {
        if s.set_nonblocking(true).is_err() {
            return;
        }
        let _ = s.set_nodelay(true);
        let local = s.local_addr().unwrap_or(peer);
        let mut sock = TcpStream::from_std(s);
        let token = Token(self.next_token);
        self.next_token += 1;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, token, Interest::READABLE)
        {
            log::warn!("register {peer}: {e}");
            return;
        }
        let shared = self.shared.clone();
        let wake: iscsi_target::registry::Wake = Arc::new(move || {
            shared
                .woken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(token);
            let _ = shared.waker.wake();
        });
        let driver = Driver::new(
            self.registry.clone(),
            &self.driver_cfg,
            peer,
            local,
            self.now(),
            wake,
        );
        self.conns.insert(
            token,
            Conn {
                sock,
                driver,
                rx: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                out_store: None,
                out_after: Vec::new(),
                hdrs: Vec::new(),
                pieces: Vec::new(),
                writable_armed: false,
                readable: true,
                peer_closed: false,
                _permit: permit,
            },
        );
        self.shared.conns.fetch_add(1, Ordering::Relaxed);
        // Data may already be waiting.
        let now = self.now();
        self.service(token, now);
    }

    /// Reads, handles, runs I/O and writes for one connection until it would block.
    fn service(&mut self, token: Token, now: Timestamp) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let chunk = &mut self.read_buf;
        loop {
            let backlog = c.backlog();
            // Read what the socket has unless output is backed up.
            let mut read_any = false;
            let mut st = None;
            if c.readable && !c.peer_closed && backlog < MAX_PENDING_OUTPUT {
                loop {
                    // Large data segments go straight into their task buffers; the rest is
                    // read into the shared buffer.
                    // (The next PDU's header may follow the data segment in the same call.)
                    let got = match c.driver.rx_target(&c.rx) {
                        RxTarget::Task(dst) => {
                            let want = dst.len();
                            let mut iov =
                                [IoSliceMut::new(dst), IoSliceMut::new(&mut chunk[..BHS_LEN])];
                            c.sock.read_vectored(&mut iov).map(|n| (n, Some(want)))
                        }
                        RxTarget::Buffer(max) => {
                            let max = max.min(chunk.len());
                            c.sock.read(&mut chunk[..max]).map(|n| (n, None))
                        }
                    };
                    match got {
                        Ok((0, _)) => c.peer_closed = true,
                        Ok((n, Some(want))) => {
                            read_any = true;
                            let placed = n.min(want);
                            let mut s = c.driver.placed(now, placed, &mut c.rx);
                            let after = &chunk[..n - placed];
                            if s == InputStatus::NeedMore && !after.is_empty() {
                                s = c.driver.handle_read(now, &mut c.rx, after);
                            } else {
                                c.rx.extend_from_slice(after);
                            }
                            st = Some(s);
                        }
                        Ok((n, None)) => {
                            // PDUs are handled where they landed; only a PDU split between
                            // reads (or what a full output queue held back) is copied.
                            read_any = true;
                            st = Some(c.driver.handle_read(now, &mut c.rx, &chunk[..n]));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => c.peer_closed = true,
                    }
                    break;
                }
            }
            let st = match st {
                Some(s) => s,
                None if c.rx.is_empty() => InputStatus::NeedMore,
                None => c.driver.handle_input(now, &mut c.rx),
            };
            // I/O: inline when it cannot block (page-cache hits, RAM stores), the pool
            // otherwise.
            while let Some(job) = c.driver.poll_io() {
                // On the LUN's asynchronous engine if it has one.
                let Some(mut job) = self.engines.submit(self.poll.registry(), token, job) else {
                    continue;
                };
                if job.try_run_nonblocking() {
                    c.driver.io_done(now, job);
                } else {
                    self.pool.submit(token, job);
                }
            }
            transmit(c, now);
            c.flush();
            let pending = c.pending();
            if pending != c.writable_armed {
                let interest = if pending {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                let _ = self
                    .poll
                    .registry()
                    .reregister(&mut c.sock, token, interest);
                c.writable_armed = pending;
            }
            let closed = c.driver.is_closed() || c.peer_closed;
            if closed {
                break;
            }
            if st == InputStatus::Blocked && !pending {
                continue;
            }
            if !read_any || c.backlog() >= MAX_PENDING_OUTPUT {
                break;
            }
        }
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let finished = c.driver.is_closed() && !c.pending();
        if (finished || c.peer_closed) && !c.driver.io_in_flight() {
            let Some(mut c) = self.conns.remove(&token) else {
                return;
            };
            c.driver.close(now);
            let _ = self.poll.registry().deregister(&mut c.sock);
            self.shared.conns.fetch_sub(1, Ordering::Relaxed);
        } else if c.peer_closed {
            // Wait for in-flight I/O to come back before dropping the driver.
            c.driver.close(now);
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // Each engine waits for the requests it has running (librbd writes into their
        // buffers until they complete), then the jobs in flight are dropped.
        self.engines.shutdown(self.poll.registry());
    }
}

/// The CPUs this process may run on (its affinity mask), lowest first; empty if unknown.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits, and all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Keeps the calling thread on `cpu` (threads it starts afterwards inherit that).
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is plain bits, and all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sendmsg(sock, iov, MSG_MORE)`: like `writev`, but the kernel holds a short tail back
/// for the bytes sent next.
fn send_more(sock: &TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero msghdr is valid (no name, no control data); it then points at
    // `iov`, whose IoSlices are ABI-compatible with `struct iovec` and outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: `msg` is a valid msghdr describing readable memory (see above); the socket
    // is borrowed and open.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_MORE | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Conn {
    /// Whether output is queued.
    fn pending(&self) -> bool {
        self.out_pos < self.out.len() || self.out_store.is_some()
    }

    /// Bytes of output queued.
    fn backlog(&self) -> usize {
        (self.out.len() - self.out_pos)
            + self.out_store.as_ref().map_or(0, |s| s.len)
            + self.out_after.len()
    }

    /// Writes queued output until it is gone or the socket is full; a failed write or send
    /// closes the connection.
    fn flush(&mut self) {
        while !self.peer_closed {
            if self.out_pos < self.out.len() {
                match self.sock.write(&self.out[self.out_pos..]) {
                    Ok(0) => self.peer_closed = true,
                    Ok(n) => self.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => self.peer_closed = true,
                }
                continue;
            }
            self.out.clear();
            self.out_pos = 0;
            if self.out_store.is_some() {
                if !self.send_store() {
                    return;
                }
                continue;
            }
            if self.out_after.is_empty() {
                return;
            }
            std::mem::swap(&mut self.out, &mut self.out_after);
        }
    }

    /// Sends `out_store` until it is all sent (`true`) or the socket is full (`false`). A
    /// failed send closes the connection: the PDU's header, already sent, says GOOD.
    fn send_store(&mut self) -> bool {
        use std::os::fd::AsFd;
        while let Some(s) = &mut self.out_store {
            if s.len == 0 {
                self.out_store = None;
                break;
            }
            match s
                .backend
                .store
                .send_cached(self.sock.as_fd(), s.offset, s.len)
            {
                Ok(n) => {
                    s.offset += n as u64;
                    s.len -= n.min(s.len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!(
                        "connection from {}: sending read data from the store failed: {e}",
                        self.driver.peer()
                    );
                    self.peer_closed = true;
                    self.out_store = None;
                    return false;
                }
            }
        }
        true
    }
}

/// Sends the driver's pending PDUs. While nothing is queued, PDUs go out with `writev`
/// straight from the header scratch and the task buffers (Data-In is never copied), and a
/// Data-In whose data is a store range ([`Payload::Store`]: a page-cache READ) ends its
/// batch and follows it with `sendfile`. On a partial write only the unwritten remainder of
/// the buffers is copied to `Conn::out` (a store range stays a range, in `out_store`). With
/// output already queued, PDUs are appended to the queue to keep their order.
fn transmit(c: &mut Conn, now: Timestamp) {
    while !c.pending() && !c.peer_closed {
        c.hdrs.clear();
        c.pieces.clear();
        while c.pieces.len() < WRITEV_PDUS && c.out_store.is_none() {
            let Some(o) = c.driver.poll_transmit(now) else {
                break;
            };
            let h0 = c.hdrs.len();
            c.hdrs
                .extend_from_slice(&c.driver.header_buf()[..o.header_len]);
            let h1 = c.hdrs.len();
            let mut data = o.data;
            if let Some(d) = o.data {
                let payload = c.driver.payload(&d);
                if let Payload::Store {
                    backend,
                    offset,
                    len,
                } = payload
                {
                    // The range and its trailer follow this batch's writev.
                    c.out_store = Some(StoreOut {
                        backend: backend.clone(),
                        offset,
                        len,
                    });
                    c.out_after
                        .extend_from_slice(payload.trailer(&d).as_bytes());
                    data = None;
                } else {
                    c.hdrs.extend_from_slice(payload.trailer(&d).as_bytes());
                }
            }
            c.pieces.push(Piece {
                hdr: (h0, h1),
                data,
                trailer: (h1, c.hdrs.len()),
            });
        }
        if c.pieces.is_empty() {
            break;
        }
        let ends_in_store = c.out_store.is_some();
        let full = c.pieces.len() == WRITEV_PDUS || ends_in_store;
        let mut iov = [IoSlice::new(&[]); 3 * WRITEV_PDUS];
        let mut n_iov = 0;
        let mut total = 0;
        for p in &c.pieces {
            let data = p.data.map(|d| c.driver.task_data(&d)).unwrap_or(&[]);
            for part in [
                &c.hdrs[p.hdr.0..p.hdr.1],
                data,
                &c.hdrs[p.trailer.0..p.trailer.1],
            ] {
                if !part.is_empty() {
                    iov[n_iov] = IoSlice::new(part);
                    n_iov += 1;
                    total += part.len();
                }
            }
        }
        let mut written = 0;
        while written < total {
            // `advance_slices` rewrites the slices: work on a copy, `iov` stays whole.
            let mut tmp = iov;
            let mut rest = &mut tmp[..n_iov];
            IoSlice::advance_slices(&mut rest, written);
            let r = if ends_in_store {
                // The data follows at once: let the header wait for it (one segment, one
                // wake-up of the initiator, despite TCP_NODELAY).
                send_more(&c.sock, rest)
            } else {
                c.sock.write_vectored(rest)
            };
            match r {
                Ok(0) => {
                    c.peer_closed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.peer_closed = true;
                    break;
                }
            }
        }
        if c.peer_closed {
            break;
        }
        if written < total {
            // Keep only the unwritten remainder (task buffers may be reused after this).
            let mut skip = written;
            for part in &iov[..n_iov] {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                c.out.extend_from_slice(&part[skip..]);
                skip = 0;
            }
        }
        if ends_in_store && written == total && c.send_store() {
            // Sent whole: the trailer (padding, if any) goes next.
            std::mem::swap(&mut c.out, &mut c.out_after);
        }
        if c.pending() || !full {
            break;
        }
    }
    // Anything still pending (output backed up), then let the driver act on what it sent
    // (e.g. close after a Logout Response). Behind a store range it queues after it.
    let tail = if c.out_store.is_some() {
        &mut c.out_after
    } else {
        &mut c.out
    };
    c.driver.transmit_into(now, tail);
}

#[cfg(test)]
mod tests {
    use super::*;
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
            MioConfig {
                reactors: 2,
                io_threads: 1,
            },
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

    // --- Asynchronous engines -----------------------------------------------------------

    use backstore::testing::{Gate, GatedEngine};
    use iscsi_proto::session::initiator::{CommandSpec, Initiator, write_text};
    use iscsi_proto::wire::{DataInFlags, Digests, Pdu, Stage, Status, pdu_len};
    use iscsi_target::builder::{LunOptions, lu_config};
    use iscsi_target::registry::{EngineFactory, LunBackend, LunInfo, LunStats, TargetNode};

    const GATED: &str = "iqn.2026-11.org.tgt-rs:rt-engines";

    /// A target whose LUN 0 (a RAM disk) runs its I/O on [`GatedEngine`]s, on a server with
    /// one reactor and one I/O thread. The engines the reactor made are pushed to `made`.
    fn gated_server(
        gate: Arc<Gate>,
        made: Arc<Mutex<Vec<GatedEngine>>>,
    ) -> (Server, SocketAddr, Arc<MemoryStore>, Arc<TargetNode>) {
        let mem = Arc::new(MemoryStore::new(1 << 20, 512).unwrap());
        let store: Arc<dyn backstore::BackingStore> = mem.clone();
        let s = store.clone();
        let factory: EngineFactory = Arc::new(move |notify| {
            let e = GatedEngine::new(s.clone(), notify, gate.clone())?;
            made.lock().unwrap().push(e.clone());
            Ok(Box::new(e))
        });
        let (s, node) = server_with_lun0(store, "gated", Some(factory), 1);
        let addr = s.local_addrs()[0];
        (s, addr, mem, node)
    }

    /// A server with one reactor and `io_threads` I/O threads whose target's LUN 0 is a 1
    /// MiB `store` of type `bstype`, with `engine` if given.
    fn server_with_lun0(
        store: Arc<dyn backstore::BackingStore>,
        bstype: &str,
        engine: Option<EngineFactory>,
        io_threads: usize,
    ) -> (Server, Arc<TargetNode>) {
        let registry = TargetBuilder::new(GATED)
            .lun(0, Arc::new(MemoryStore::new(1 << 20, 512).unwrap()))
            .build()
            .unwrap();
        let node = registry.target_by_name(GATED).unwrap();
        node.remove_lun(0).unwrap();
        let cfg = lu_config(1, 0, &*store, &LunOptions::default());
        let info = LunInfo {
            number: 0,
            bstype: bstype.into(),
            path: None,
            size: 1 << 20,
            block_size: 512,
            readonly: false,
            removable: false,
            thin: false,
        };
        let backend = LunBackend {
            info,
            store,
            stats: LunStats::default(),
            engine,
        };
        node.add_lun(backend, cfg).unwrap();
        let s = Server::start(
            registry,
            DriverConfig::default(),
            &["127.0.0.1:0".parse().unwrap()],
            MioConfig {
                reactors: 1,
                io_threads,
            },
        )
        .unwrap();
        (s, node)
    }

    /// A logged-in session on a real socket (iscsi-proto's test initiator).
    struct Session {
        sock: std::net::TcpStream,
        ini: Initiator,
        rx: Vec<u8>,
    }

    /// What came back for one command: its status and the Data-In bytes.
    #[derive(Debug, Default)]
    struct Answer {
        status: Option<u8>,
        data: Vec<u8>,
    }

    impl Session {
        fn login(addr: SocketAddr) -> Session {
            let sock = std::net::TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut s = Session {
                sock,
                ini: Initiator::new([0x80, 0, 0, 0, 0x0e, 1], 1),
                rx: Vec::new(),
            };
            let mut text = [0u8; 512];
            let pairs = [
                ("InitiatorName", "iqn.2026-11.org.tgt-rs:rt-ini"),
                ("TargetName", GATED),
                ("SessionType", "Normal"),
                ("ImmediateData", "Yes"),
            ];
            let n = write_text(&mut text, &pairs).unwrap();
            let mut pdu = vec![0u8; 1024];
            let stages = (Stage::LoginOperational, Some(Stage::FullFeature));
            let len = s
                .ini
                .login(&mut pdu, stages.0, stages.1, &text[..n])
                .unwrap();
            s.sock.write_all(&pdu[..len]).unwrap();
            let pdu = s.next_pdu();
            assert!(
                matches!(s.ini.receive(&pdu), Ok((Pdu::LoginResponse(r), _)) if r.status.class == 0)
            );
            s.ini.set_digests(Digests::NONE);
            // TEST UNIT READY clears the POWER ON unit attention.
            let itt = s.send(&CommandSpec::read(0, &[0; 6], 0));
            s.wait(&[itt]);
            s
        }

        fn next_pdu(&mut self) -> Vec<u8> {
            loop {
                if let Status::Complete(n) = pdu_len(&self.rx, Digests::NONE) {
                    if self.rx.len() >= n {
                        return self.rx.drain(..n).collect();
                    }
                }
                let mut b = [0u8; 64 * 1024];
                let n = self.sock.read(&mut b).unwrap();
                assert!(n > 0, "the target closed the connection");
                self.rx.extend_from_slice(&b[..n]);
            }
        }

        fn send(&mut self, spec: &CommandSpec<'_>) -> u32 {
            let mut pdu = vec![0u8; spec.data.len() + 256];
            let (itt, len) = self.ini.command(&mut pdu, spec).unwrap();
            self.sock.write_all(&pdu[..len]).unwrap();
            itt
        }

        /// Collects every command of `itts` until each has its status.
        fn wait(&mut self, itts: &[u32]) -> HashMap<u32, Answer> {
            let mut got: HashMap<u32, Answer> = HashMap::new();
            while itts
                .iter()
                .any(|t| got.get(t).is_none_or(|a| a.status.is_none()))
            {
                let pdu = self.next_pdu();
                match self.ini.receive(&pdu).unwrap().0 {
                    Pdu::DataIn(d) => {
                        let a = got.entry(d.itt).or_default();
                        a.data.extend_from_slice(d.data);
                        if d.flags.contains(DataInFlags::STATUS) {
                            a.status = Some(d.status);
                        }
                    }
                    Pdu::ScsiResponse(r) => got.entry(r.itt).or_default().status = Some(r.status),
                    _ => {}
                }
            }
            got
        }
    }

    /// READ(16) / WRITE(16) of `blocks` at `lba`.
    fn rw16(opcode: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = opcode;
        c[1] = if fua { 0x08 } else { 0 };
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// Sends eight 4 KiB READ(16)s, or WRITE(16)s with FUA.
    fn send_eight(s: &mut Session, write: bool) {
        let data = vec![9u8; 4096];
        for k in 0..8u64 {
            if write {
                s.send(&CommandSpec::write(
                    0,
                    &rw16(0x8a, k * 8, 8, true),
                    4096,
                    &data,
                ));
            } else {
                s.send(&CommandSpec::read(0, &rw16(0x88, k * 8, 8, false), 4096));
            }
        }
    }

    /// Waits until the reactor's engine holds `n` requests; returns it.
    fn engine_holding(made: &Mutex<Vec<GatedEngine>>, n: usize) -> GatedEngine {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = made.lock().unwrap().first().filter(|e| e.held() >= n) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "{n} requests reached the engine");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pattern(lba: u64) -> Vec<u8> {
        (0..4096u64).map(|i| (lba * 7 + i) as u8).collect()
    }

    #[test]
    fn an_engine_keeps_more_requests_in_flight_than_the_reactor_has_io_threads() {
        use backstore::BackingStore;
        // The engine holds every request until 32 are in it: with one I/O thread doing
        // blocking calls, this could never happen.
        let gate = Arc::new(Gate::default());
        gate.release_at.store(32, Ordering::SeqCst);
        let made: Arc<Mutex<Vec<GatedEngine>>> = Arc::default();
        let (server, addr, mem, _node) = gated_server(gate.clone(), Arc::clone(&made));
        for k in 0..64u64 {
            mem.write_at(&pattern(k * 8), k * 4096, false).unwrap();
        }
        let mut s = Session::login(addr);
        let cdbs: Vec<[u8; 16]> = (0..32u64).map(|k| rw16(0x88, k * 8, 8, false)).collect();
        let itts: Vec<u32> = cdbs
            .iter()
            .map(|c| s.send(&CommandSpec::read(0, c, 4096)))
            .collect();
        let got = s.wait(&itts);
        assert_eq!(
            gate.peak.load(Ordering::SeqCst),
            32,
            "32 reads in the engine at once"
        );
        for (k, itt) in itts.iter().enumerate() {
            let a = &got[itt];
            assert_eq!(a.status, Some(0), "read {k}");
            assert!(a.data == pattern(k as u64 * 8), "read {k}: data");
        }
        // 32 writes, half with FUA, in flight together too; then read back.
        let cdbs: Vec<[u8; 16]> = (0..32u64)
            .map(|k| rw16(0x8a, 512 + k * 8, 8, k % 2 == 0))
            .collect();
        let datas: Vec<Vec<u8>> = (0..32u64).map(|k| pattern(1000 + k)).collect();
        let itts: Vec<u32> = cdbs
            .iter()
            .zip(&datas)
            .map(|(c, d)| s.send(&CommandSpec::write(0, c, 4096, d)))
            .collect();
        let got = s.wait(&itts);
        for (k, itt) in itts.iter().enumerate() {
            assert_eq!(got[itt].status, Some(0), "write {k}");
        }
        assert_eq!(gate.peak.load(Ordering::SeqCst), 32);
        for (k, d) in datas.iter().enumerate() {
            let mut b = vec![0u8; 4096];
            mem.read_at(&mut b, (512 + k as u64 * 8) * 512).unwrap();
            assert!(&b == d, "write {k} landed");
        }
        assert_eq!(made.lock().unwrap().len(), 1, "one engine for the LUN");
        drop(s);
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_connection_with_requests_in_an_engine_stays_until_they_return() {
        let gate = Arc::new(Gate::default());
        let made: Arc<Mutex<Vec<GatedEngine>>> = Arc::default();
        let (server, addr, _mem, node) = gated_server(gate, made.clone());
        let mut s = Session::login(addr);
        send_eight(&mut s, false);
        let engine = engine_holding(&made, 8);
        // The initiator goes away: the connection (whose buffers are in the engine) stays.
        drop(s);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(server.connection_count(), 1);
        assert_eq!(engine.release(), 8);
        wait_count(&server, 0);

        // LUN removal: the engine is retired (stopped, its eventfd out of the poll) once
        // nothing holds the LUN.
        let mut s = Session::login(addr);
        let c = rw16(0x88, 0, 8, false);
        let itt = s.send(&CommandSpec::read(0, &c, 4096));
        engine_holding(&made, 1);
        node.remove_lun(0).unwrap();
        assert!(!engine.is_stopped(), "a request still holds the LUN");
        engine.release();
        // (scsi-core forgot the task with its LUN: no status comes, as with the blocking
        // pool; `tgt-cli lun delete --force` logs such sessions out.)
        let _ = itt;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !engine.is_stopped() {
            assert!(
                Instant::now() < deadline,
                "the engine of the removed LUN was retired"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(s);
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn shutdown_with_requests_in_an_engine_completes() {
        let gate = Arc::new(Gate::default());
        let made: Arc<Mutex<Vec<GatedEngine>>> = Arc::default();
        let (server, addr, _mem, _node) = gated_server(gate, made.clone());
        let mut s = Session::login(addr);
        send_eight(&mut s, true);
        let engine = engine_holding(&made, 8);
        let t = Instant::now();
        server.shutdown(Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(engine.is_stopped(), "stopped by the reactor on its way out");
        assert_eq!(engine.held(), 0);
        drop(s);
    }

    // --- Write lanes ----------------------------------------------------------------------

    /// A RAM disk whose writes take 3 ms and count how many run at once, how many calls
    /// there were and the most writes one call joined.
    #[derive(Default)]
    struct SlowWrites {
        mem: Option<MemoryStore>,
        serializes: bool,
        now: AtomicUsize,
        peak: AtomicUsize,
        calls: AtomicUsize,
        most_joined: AtomicUsize,
    }

    impl SlowWrites {
        fn mem(&self) -> &MemoryStore {
            self.mem.as_ref().expect("store")
        }

        /// One write call of `pieces` writes: 3 ms, counted.
        fn slow_call(&self, pieces: usize) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.most_joined.fetch_max(pieces, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(3));
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl backstore::BackingStore for SlowWrites {
        fn size(&self) -> u64 {
            self.mem().size()
        }
        fn block_size(&self) -> u32 {
            self.mem().block_size()
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn is_thin(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, backstore::StoreError> {
            self.mem().read_at(buf, offset)
        }
        fn write_at(
            &self,
            buf: &[u8],
            offset: u64,
            fua: bool,
        ) -> Result<usize, backstore::StoreError> {
            self.slow_call(1);
            self.mem().write_at(buf, offset, fua)
        }
        fn write_vectored_at(
            &self,
            bufs: &[std::io::IoSlice<'_>],
            offset: u64,
        ) -> Result<usize, backstore::StoreError> {
            self.slow_call(bufs.len());
            self.mem().write_vectored_at(bufs, offset)
        }
        fn flush(&self) -> Result<(), backstore::StoreError> {
            Ok(())
        }
        fn serializes_writes(&self) -> bool {
            self.serializes
        }
    }

    /// Sends 16 contiguous WRITE(16)s of 4 KiB at once (FUA or not) to a reactor with four
    /// I/O threads and checks every one landed; returns the store's counters.
    fn sixteen_writes(serializes: bool, fua: bool) -> Arc<SlowWrites> {
        use backstore::BackingStore;
        let store = Arc::new(SlowWrites {
            mem: Some(MemoryStore::new(1 << 20, 512).unwrap()),
            serializes,
            ..SlowWrites::default()
        });
        let (server, _node) = server_with_lun0(store.clone(), "slow", None, 4);
        let mut s = Session::login(server.local_addrs()[0]);
        let datas: Vec<Vec<u8>> = (0..16u64).map(|k| pattern(2000 + k)).collect();
        let itts: Vec<u32> = datas
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let cdb = rw16(0x8a, k as u64 * 8, 8, fua);
                s.send(&CommandSpec::write(0, &cdb, 4096, d))
            })
            .collect();
        let got = s.wait(&itts);
        for (k, (itt, d)) in itts.iter().zip(&datas).enumerate() {
            assert_eq!(got[itt].status, Some(0), "write {k}");
            let mut b = vec![0u8; 4096];
            store.mem().read_at(&mut b, k as u64 * 4096).unwrap();
            assert!(&b == d, "write {k} landed");
        }
        drop(s);
        server.shutdown(Duration::from_secs(1));
        store
    }

    #[test]
    fn plain_writes_to_a_serializing_store_run_one_at_a_time() {
        let laned = sixteen_writes(true, false);
        assert_eq!(laned.peak.load(Ordering::SeqCst), 1, "one lane");
        // FUA writes spend their time in the sync, outside the file's lock: not laned.
        assert!(sixteen_writes(true, true).peak.load(Ordering::SeqCst) > 1);
        assert!(sixteen_writes(false, false).peak.load(Ordering::SeqCst) > 1);
    }

    #[test]
    fn queued_contiguous_writes_of_a_lane_are_joined() {
        // The first write runs alone; the others queue behind it in the lane meanwhile and
        // go out joined (up to the JOIN_MAX and byte bounds, far away here).
        let laned = sixteen_writes(true, false);
        let calls = laned.calls.load(Ordering::SeqCst);
        assert!(calls < 16, "{calls} calls for 16 writes");
        assert!(laned.most_joined.load(Ordering::SeqCst) > 1);
        // Writes outside a lane are never joined.
        for (serializes, fua) in [(true, true), (false, false)] {
            let s = sixteen_writes(serializes, fua);
            assert_eq!(s.calls.load(Ordering::SeqCst), 16);
            assert_eq!(s.most_joined.load(Ordering::SeqCst), 1);
        }
    }

    // --- Reactor placement ----------------------------------------------------------------

    /// `Cpus_allowed_list` of this process's threads named `name`.
    fn cpus_of_threads(name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
                out.push(l["Cpus_allowed_list:".len()..].trim().to_string());
            }
        }
        out
    }

    #[test]
    fn one_reactor_per_core_keeps_each_on_its_core() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let start = |reactors| {
            let reg = TargetBuilder::new(GATED)
                .lun(0, Arc::new(MemoryStore::new(1 << 20, 512).unwrap()))
                .build()
                .unwrap();
            let cfg = MioConfig {
                reactors,
                io_threads: 1,
            };
            Server::start(
                reg,
                DriverConfig::default(),
                &["127.0.0.1:0".parse().unwrap()],
                cfg,
            )
            .unwrap()
        };
        let s = start(0);
        // Each thread pins itself as it starts. (Other tests' servers run unpinned reactors
        // of the same names.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (k, cpu) in cpus.iter().take(n.min(2)).enumerate() {
            let name = format!("reactor-{k}");
            while !cpus_of_threads(&name).contains(&cpu.to_string()) {
                let now = cpus_of_threads(&name);
                assert!(Instant::now() < deadline, "{name}: {now:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if n > 1 {
            // The I/O threads float.
            assert!(
                cpus_of_threads("io-0-0")
                    .iter()
                    .all(|c| c.contains(['-', ',']))
            );
        }
        s.shutdown(Duration::from_secs(1));
        // A reactor count given in the configuration leaves placement to the scheduler.
        let s = start(1);
        std::thread::sleep(Duration::from_millis(50));
        if cpus.len() > 1 {
            assert!(
                cpus_of_threads("reactor-0")
                    .iter()
                    .all(|c| c.contains(['-', ',']))
            );
        }
        s.shutdown(Duration::from_secs(1));
    }
}
