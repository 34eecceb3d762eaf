//! `tgt-cli daemon`: builds the target registry from a validated config, opens the backing
//! stores, starts the runtime and serves until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use backstore::{BackingStore, LunStore, OpenOptions};
use iscsi_target::builder::LunOptions;
use iscsi_target::driver::DriverConfig;
use iscsi_target::persist::FilePrStore;
use iscsi_target::registry::{LunBackend, LunInfo, LunStats, Registry, TargetAuth};
use scsi_core::LuConfig;

use crate::config::{Config, LunSpec, RuntimeKind, TargetSpec, Validated};
use crate::control::{self, Control, Portals};

/// The largest data transfer of one command, in bytes (VPD Block Limits).
pub const MAX_TRANSFER: u32 = iscsi_target::builder::MAX_TRANSFER;

/// How long initiators get to log out at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Opens a LUN's backing store as its spec says, through [`LunStore::open`]: files are
/// created sparse at `size` when missing (never for a read-only LUN), `aio` falls back to
/// buffered I/O where `O_DIRECT` is refused, `nbd` connects to the server at the URL.
pub fn open_store(spec: &LunSpec) -> Result<LunStore> {
    let path = spec.path.as_deref();
    if spec.bstype.is_file() {
        let p = path.ok_or_else(|| anyhow!("no backing_store path"))?;
        if spec.readonly && !Path::new(p).exists() {
            return Err(anyhow!(
                "backing_store {p:?} does not exist (a read-only LUN is never created)"
            ));
        }
    }
    let opts = OpenOptions {
        read_only: spec.readonly,
        create_size: spec.size,
        block_size: spec.block_size,
        ..OpenOptions::default()
    };
    Ok(LunStore::open(spec.bstype, path.map(Path::new), &opts)?)
}

/// The registry's view of an opened LUN: its description for `show` and `config save`,
/// the store, and its asynchronous engine if it has one (rbd).
pub fn lun_backend(spec: &LunSpec, lun: &LunStore) -> LunBackend {
    let store = lun.store().clone();
    LunBackend {
        info: LunInfo {
            number: spec.lun as u16,
            bstype: spec.bstype.as_str().to_string(),
            path: spec.path.clone(),
            size: store.size(),
            block_size: spec.block_size,
            readonly: spec.readonly,
            removable: spec.removable,
            thin: spec.thin,
        },
        store,
        stats: LunStats::default(),
        engine: LunBackend::engine_of(lun),
    }
}

/// Builds one LU's scsi-core configuration: the library's defaults
/// ([`iscsi_target::builder::lu_config`]) with the spec's flags.
pub fn lu_config(tid: u32, spec: &LunSpec, store: &dyn BackingStore) -> LuConfig {
    let opts = LunOptions::default()
        .readonly(spec.readonly)
        .removable(spec.removable)
        .thin(spec.thin)
        .physical_block_exponent(spec.physical_block_exponent);
    iscsi_target::builder::lu_config(tid, spec.lun as u16, store, &opts)
}

/// Adds a target and its LUNs to the registry.
pub fn add_target(registry: &Registry, t: &TargetSpec) -> Result<()> {
    let node = registry.new_target(t.tid, &t.name);
    node.set_acl(t.initiators.clone());
    node.set_auth(TargetAuth {
        incoming: t.incoming.clone(),
        outgoing: t.outgoing.clone(),
    });
    for l in &t.luns {
        let lun = open_store(l).with_context(|| format!("target {} lun {}", t.tid, l.lun))?;
        let cfg = lu_config(t.tid, l, &**lun.store());
        node.add_lun(lun_backend(l, &lun), cfg)
            .map_err(|e| anyhow!("target {} lun {}: {e}", t.tid, l.lun))?;
    }
    registry.add_target(node).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Where persistent reservations (APTPL) live: a directory beside the config file,
/// named after it (`/etc/tgt-rs/targets.toml` → `/etc/tgt-rs/targets.reservations/`).
pub fn reservations_dir(config_path: &Path) -> PathBuf {
    let stem = config_path
        .file_stem()
        .map_or_else(|| "tgt-rs".into(), |s| s.to_string_lossy().into_owned());
    config_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(format!("{stem}.reservations"))
}

/// Builds the whole registry; nothing is served unless every target and LUN opened.
/// With `pr_dir`, persistent reservations registered with APTPL are restored from it and
/// kept in it.
pub fn build_registry(v: &Validated, pr_dir: Option<&Path>) -> Result<Arc<Registry>> {
    let registry = Arc::new(Registry::new());
    if let Some(dir) = pr_dir {
        let store = FilePrStore::new(dir)
            .with_context(|| format!("reservations directory {}", dir.display()))?;
        registry.set_pr_store(Arc::new(store));
    }
    for t in &v.targets {
        add_target(&registry, t)?;
        if t.initiators.is_empty() {
            log::warn!(
                "target {} ({}) has no initiators: nobody can log in",
                t.tid,
                t.name
            );
        }
    }
    Ok(registry)
}

enum Running {
    Threads(runtime_threads::Server),
    Mio(runtime_mio::Server),
}

impl Running {
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Running::Threads(s) => s.local_addrs(),
            Running::Mio(s) => s.local_addrs(),
        }
    }

    fn add_portal(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        match self {
            Running::Threads(s) => s.add_portal(addr),
            Running::Mio(s) => s.add_portal(addr),
        }
    }

    fn remove_portal(&mut self, addr: SocketAddr) -> bool {
        match self {
            Running::Threads(s) => s.remove_portal(addr),
            Running::Mio(s) => s.remove_portal(addr),
        }
    }

    fn shutdown(self) {
        match self {
            Running::Threads(s) => s.shutdown(SHUTDOWN_GRACE),
            Running::Mio(s) => s.shutdown(SHUTDOWN_GRACE),
        }
    }
}

impl Portals for Running {
    fn add(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.add_portal(addr)
    }

    fn remove(&mut self, addr: SocketAddr) -> bool {
        self.remove_portal(addr)
    }

    fn list(&self) -> Vec<SocketAddr> {
        self.addrs()
    }
}

/// Where the daemon's files are.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The config file it started with (`config save` without a path rewrites it).
    pub config_path: PathBuf,
    /// The control socket.
    pub control: PathBuf,
}

/// Runs the daemon until SIGTERM or SIGINT: validates `config`, opens every LUN, binds
/// the control socket, starts the runtime, then serves admin requests.
pub fn run(config: Config, opts: &DaemonOptions) -> Result<()> {
    let v = config.validate()?;
    let pr_dir = reservations_dir(&opts.config_path);
    let registry = build_registry(&v, Some(&pr_dir))?;
    // Stores resized elsewhere (`rbd resize`) → CAPACITY DATA HAS CHANGED; stopped on drop.
    let _resize = iscsi_target::resize::ResizeWatcher::start(
        registry.clone(),
        iscsi_target::resize::DEFAULT_INTERVAL,
    )?;
    log::info!("persistent reservations (APTPL) in {}", pr_dir.display());
    let control_socket = control::bind(&opts.control)?;
    let cfg = DriverConfig::with_limits(v.limits);
    let started = match v.runtime {
        RuntimeKind::Threads => {
            runtime_threads::Server::start(registry.clone(), cfg, &v.listen).map(Running::Threads)
        }
        RuntimeKind::Mio => runtime_mio::Server::start(
            registry.clone(),
            cfg,
            &v.listen,
            runtime_mio::MioConfig {
                reactors: v.reactors,
                io_threads: match v.io_threads {
                    0 => runtime_mio::MioConfig::default().io_threads,
                    n => n,
                },
            },
        )
        .map(Running::Mio),
    };
    let running = match started {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&opts.control);
            return Err(e.into());
        }
    };
    let addrs: Vec<String> = running.addrs().iter().map(|a| a.to_string()).collect();
    log::info!(
        "listening on {} ({:?} runtime)",
        addrs.join(", "),
        v.runtime
    );
    for t in registry.targets() {
        for l in t.backends() {
            let i = &l.info;
            log::info!(
                "target {} {} lun {}: {} {} bytes, {}-byte blocks{}{}{}",
                t.tid,
                t.name,
                i.number,
                i.path.as_deref().unwrap_or(&i.bstype),
                i.size,
                i.block_size,
                if i.readonly { ", read-only" } else { "" },
                if i.removable { ", removable" } else { "" },
                if i.thin { ", thin" } else { "" },
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    log::info!("control socket {}", opts.control.display());
    let mut running = running;
    {
        let mut ctl = Control::new(
            registry.clone(),
            config,
            opts.config_path.clone(),
            &mut running,
        );
        if let Err(e) = ctl.serve(&control_socket, &stop) {
            log::error!("control socket: {e}");
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    drop(control_socket);
    let _ = std::fs::remove_file(&opts.control);
    log::info!("shutting down: asking initiators to log out");
    running.shutdown();
    for t in registry.targets() {
        for l in t.backends() {
            if let Err(e) = l.store.flush() {
                log::warn!("flush of target {} lun {}: {e}", t.tid, l.info.number);
            }
        }
    }
    log::info!("stopped");
    Ok(())
}
