//! Opening a LUN's store and engines from its configuration (`bstype`, path, size, block
//! size, read-only), the way the daemon does. For `nbd` the path is the server's URL.
//!
//! [`LunStore::open`] opens the store once; [`LunStore::engine`] then builds as many
//! engines over it as the runtime wants (one per reactor, each with its own completion
//! eventfd or waker), all sharing the same store.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::aio::{AioConfig, AioEngine};
use crate::engine::{Engine, InlineEngine, Notify};
use crate::error::{OpenError, OpenErrorKind};
use crate::file::{FileStore, OpenOptions};
use crate::memory::{MemoryStore, NullStore};
use crate::nbd::{NbdOptions, NbdStore};
use crate::rdwr::{RdwrConfig, RdwrEngine};
use crate::store::BackingStore;

/// The backing-store type of a LUN (`bstype` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BsType {
    /// File or block device through the [`RdwrEngine`] thread pool.
    Rdwr,
    /// File or block device through [`AioEngine`], opened with `O_DIRECT`.
    Aio,
    /// A thin RAM disk ([`MemoryStore`]) run inline.
    Memory,
    /// [`NullStore`] run inline.
    Null,
    /// A remote NBD server ([`NbdStore`]); the path is its URL. Calls block on the
    /// network, so engines run it through the [`RdwrEngine`] thread pool.
    Nbd,
    /// A Ceph RBD image (`crate::rbd::RbdStore`, cargo feature `rbd`); the path is
    /// `[rbd:]pool/image[@snap][:conf=PATH][:id=NAME]`. Without the feature, opening one
    /// fails with [`crate::rbd::FEATURE_DISABLED`].
    Rbd,
}

impl BsType {
    /// Every type, in the order the configuration documents them.
    pub const ALL: [BsType; 6] = [
        BsType::Rdwr,
        BsType::Aio,
        BsType::Memory,
        BsType::Null,
        BsType::Nbd,
        BsType::Rbd,
    ];

    /// The configuration spelling: `rdwr`, `aio`, `memory`, `null`, `nbd`, `rbd`.
    pub fn as_str(self) -> &'static str {
        match self {
            BsType::Rdwr => "rdwr",
            BsType::Aio => "aio",
            BsType::Memory => "memory",
            BsType::Null => "null",
            BsType::Nbd => "nbd",
            BsType::Rbd => "rbd",
        }
    }

    /// Whether the LUN needs a path (`rdwr`, `aio`: a file or device; `nbd`: a URL;
    /// `rbd`: `[rbd:]pool/image[@snap]`). Memory and null stores need a size instead.
    pub fn needs_path(self) -> bool {
        matches!(self, BsType::Rdwr | BsType::Aio | BsType::Nbd | BsType::Rbd)
    }

    /// Whether the path names a local file or block device (`rdwr`, `aio`), which may be
    /// created, as opposed to a URL.
    pub fn is_file(self) -> bool {
        matches!(self, BsType::Rdwr | BsType::Aio)
    }
}

impl fmt::Display for BsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `bstype` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBsType(pub String);

impl fmt::Display for UnknownBsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown bstype {:?} (expected rdwr, aio, memory, null, nbd or rbd)",
            self.0
        )
    }
}

impl std::error::Error for UnknownBsType {}

impl FromStr for BsType {
    type Err = UnknownBsType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rdwr" => Ok(BsType::Rdwr),
            "aio" => Ok(BsType::Aio),
            "memory" => Ok(BsType::Memory),
            "null" => Ok(BsType::Null),
            "nbd" => Ok(BsType::Nbd),
            "rbd" => Ok(BsType::Rbd),
            _ => Err(UnknownBsType(s.to_owned())),
        }
    }
}

/// Engine tuning for [`LunStore::engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineTuning {
    /// rdwr worker threads.
    pub threads: usize,
    /// aio depth (iocbs in the kernel).
    pub depth: u32,
}

impl Default for EngineTuning {
    fn default() -> Self {
        Self {
            threads: crate::rdwr::DEFAULT_THREADS,
            depth: crate::aio::DEFAULT_DEPTH,
        }
    }
}

/// A LUN's opened store plus what is needed to build engines over it.
#[derive(Clone)]
pub struct LunStore {
    bstype: BsType,
    store: Arc<dyn BackingStore>,
    file: Option<Arc<FileStore>>,
    #[cfg(feature = "rbd")]
    rbd: Option<Arc<crate::rbd::RbdStore>>,
}

impl LunStore {
    fn plain(bstype: BsType, store: Arc<dyn BackingStore>, file: Option<Arc<FileStore>>) -> Self {
        Self {
            bstype,
            store,
            file,
            #[cfg(feature = "rbd")]
            rbd: None,
        }
    }

    #[cfg(feature = "rbd")]
    fn open_rbd(path: Option<&Path>, opts: &OpenOptions) -> Result<Self, OpenError> {
        use crate::rbd::{RbdOptions, RbdSpec, RbdStore};
        let text = path.and_then(Path::to_str).ok_or_else(|| {
            OpenError::new(
                "<none>",
                OpenErrorKind::Remote("bstype rbd needs pool/image as its path".into()),
            )
        })?;
        let spec = RbdSpec::parse(text)
            .map_err(|e| OpenError::new(text, OpenErrorKind::Remote(e.to_string())))?;
        let store = RbdStore::open(
            &spec,
            &RbdOptions {
                block_size: opts.block_size,
                read_only: opts.read_only,
                ..RbdOptions::default()
            },
        )?;
        if let Some(want) = opts.create_size {
            if want != store.size() {
                return Err(OpenError::new(
                    text,
                    OpenErrorKind::Remote(format!(
                        "size {want} given, but the image has {} bytes",
                        store.size()
                    )),
                ));
            }
        }
        let store = Arc::new(store);
        Ok(Self {
            rbd: Some(store.clone()),
            ..Self::plain(BsType::Rbd, store, None)
        })
    }

    #[cfg(not(feature = "rbd"))]
    fn open_rbd(path: Option<&Path>, _opts: &OpenOptions) -> Result<Self, OpenError> {
        let label = path.map_or_else(|| "<none>".into(), |p| p.display().to_string());
        Err(OpenError::new(
            label,
            OpenErrorKind::Remote(crate::rbd::FEATURE_DISABLED.into()),
        ))
    }

    /// Open the store for `bstype`. File types need `path`; memory and null need
    /// `opts.create_size` (their `path`, if any, is only a label). `aio` opens with
    /// `O_DIRECT` and falls back to buffered I/O (with a warning) where the file system
    /// refuses it. `nbd` needs `path` as the server URL (`nbd://host[:port]/export` or
    /// `nbd+unix:///export?socket=PATH`); the size comes from the server, and
    /// `opts.create_size`, if given, must match it.
    pub fn open(
        bstype: BsType,
        path: Option<&Path>,
        opts: &OpenOptions,
    ) -> Result<Self, OpenError> {
        let label = || path.map_or_else(|| Path::new("<memory>").to_path_buf(), Path::to_path_buf);
        match bstype {
            BsType::Rdwr | BsType::Aio => {
                let Some(path) = path else {
                    return Err(OpenError::new("<none>", OpenErrorKind::Os(libc::ENOENT)));
                };
                let file = if bstype == BsType::Aio && !opts.direct {
                    let direct = OpenOptions {
                        direct: true,
                        ..opts.clone()
                    };
                    match FileStore::open(path, &direct) {
                        Err(e) if e.kind == OpenErrorKind::DirectUnsupported => {
                            log::warn!("{e}; aio falls back to buffered I/O");
                            FileStore::open(path, opts)?
                        }
                        r => r?,
                    }
                } else {
                    FileStore::open(path, opts)?
                };
                let file = Arc::new(file);
                Ok(Self::plain(bstype, file.clone(), Some(file)))
            }
            BsType::Nbd => {
                let Some(path) = path else {
                    return Err(OpenError::new(
                        "<none>",
                        OpenErrorKind::Remote("bstype nbd needs the server URL as its path".into()),
                    ));
                };
                let url = path.to_str().ok_or_else(|| {
                    OpenError::new(path, OpenErrorKind::Remote("URL is not UTF-8".into()))
                })?;
                let store = NbdStore::open(
                    url,
                    &NbdOptions {
                        block_size: opts.block_size,
                        read_only: opts.read_only,
                        expect_size: opts.create_size,
                        ..NbdOptions::default()
                    },
                )?;
                Ok(Self::plain(bstype, Arc::new(store), None))
            }
            BsType::Rbd => Self::open_rbd(path, opts),
            BsType::Memory | BsType::Null => {
                let size = opts.create_size.unwrap_or(0);
                let store: Arc<dyn BackingStore> = if bstype == BsType::Memory {
                    Arc::new(
                        MemoryStore::with_options(size, opts.block_size, opts.read_only).map_err(
                            |e| OpenError {
                                path: label(),
                                kind: e.kind,
                            },
                        )?,
                    )
                } else {
                    Arc::new(
                        NullStore::new(size, opts.block_size).map_err(|e| OpenError {
                            path: label(),
                            kind: e.kind,
                        })?,
                    )
                };
                Ok(Self::plain(bstype, store, None))
            }
        }
    }

    /// The store type.
    pub fn bstype(&self) -> BsType {
        self.bstype
    }

    /// The store, for synchronous calls (thread-per-connection runtime) and geometry.
    pub fn store(&self) -> &Arc<dyn BackingStore> {
        &self.store
    }

    /// The file store, for `rdwr` and `aio`.
    pub fn file(&self) -> Option<&Arc<FileStore>> {
        self.file.as_ref()
    }

    /// A new engine over this store: librbd's asynchronous calls for rbd (with the `rbd`
    /// feature), rdwr pool (rdwr, nbd), aio context, or inline for memory/null.
    pub fn engine(&self, notify: Notify, tuning: EngineTuning) -> io::Result<Box<dyn Engine>> {
        #[cfg(feature = "rbd")]
        if let Some(rbd) = &self.rbd {
            return Ok(Box::new(crate::rbd::RbdEngine::new(rbd.clone(), notify)?));
        }
        Ok(match (self.bstype, &self.file) {
            (BsType::Aio, Some(file)) => Box::new(AioEngine::new(
                file.clone(),
                AioConfig {
                    depth: tuning.depth,
                    notify,
                },
            )?),
            (BsType::Rdwr | BsType::Aio | BsType::Nbd | BsType::Rbd, _) => {
                Box::new(RdwrEngine::new(
                    self.store.clone(),
                    RdwrConfig {
                        threads: tuning.threads,
                        notify,
                    },
                )?)
            }
            (BsType::Memory | BsType::Null, _) => {
                Box::new(InlineEngine::new(self.store.clone(), notify)?)
            }
        })
    }
}

impl LunStore {
    /// Whether [`LunStore::async_engine`] gives an engine: one whose `submit` never waits
    /// for the I/O, so an event loop keeps any number of requests in flight on it without
    /// a thread per request. Today: `rbd` (librbd's `rbd_aio_*`, with the `rbd` feature).
    ///
    /// Not `aio`: the kernel needs its buffers aligned for `O_DIRECT`, and a runtime's
    /// task buffers (vectors handed over with [`crate::IoBuf::from_vec`]) are not; nor
    /// `rdwr`/`nbd` (a thread pool: the runtime's own pool does the same) or
    /// `memory`/`null` (never block: run inline).
    pub fn has_async_engine(&self) -> bool {
        #[cfg(feature = "rbd")]
        if self.rbd.is_some() {
            return true;
        }
        false
    }

    /// A new engine that never blocks its submitter (see
    /// [`LunStore::has_async_engine`]), or `None` for a store without one.
    pub fn async_engine(&self, notify: Notify) -> Option<io::Result<Box<dyn Engine>>> {
        self.has_async_engine()
            .then(|| self.engine(notify, EngineTuning::default()))
    }
}

impl fmt::Debug for LunStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LunStore")
            .field("bstype", &self.bstype)
            .field("size", &self.store.size())
            .field("block_size", &self.store.block_size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::IoBuf;
    use crate::engine::Request;

    #[test]
    fn bstype_parses_and_prints() {
        for t in BsType::ALL {
            assert_eq!(t.as_str().parse::<BsType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        let e = "tape".parse::<BsType>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown bstype \"tape\" (expected rdwr, aio, memory, null, nbd or rbd)"
        );
        let paths: Vec<_> = BsType::ALL.iter().map(|t| t.needs_path()).collect();
        assert_eq!(paths, [true, true, false, false, true, true]);
        let files: Vec<_> = BsType::ALL.iter().map(|t| t.is_file()).collect();
        assert_eq!(files, [true, true, false, false, false, false]);
    }

    #[test]
    fn opens_every_type_and_builds_engines() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("lun.img");
        let opts = OpenOptions {
            create_size: Some(1 << 20),
            block_size: 4096,
            ..Default::default()
        };
        for t in [BsType::Rdwr, BsType::Aio, BsType::Memory, BsType::Null] {
            let lun = LunStore::open(t, Some(&path), &opts).unwrap();
            assert_eq!(lun.store().size(), 1 << 20);
            assert_eq!(
                lun.file().is_some(),
                matches!(t, BsType::Rdwr | BsType::Aio)
            );
            assert!(!lun.has_async_engine(), "{t}");
            assert!(lun.async_engine(Notify::EventFd).is_none(), "{t}");
            let engine = lun
                .engine(
                    Notify::EventFd,
                    EngineTuning {
                        threads: 2,
                        depth: 8,
                    },
                )
                .unwrap();
            let expected = match t {
                BsType::Rdwr => "rdwr",
                BsType::Aio => "aio",
                _ => "inline",
            };
            assert_eq!(engine.name(), expected);
            engine.submit(Request::write(1, IoBuf::from_slice(&[3; 4096]), 4096, true));
            let mut out = Vec::new();
            while out.is_empty() {
                engine.wait_completions(Some(std::time::Duration::from_secs(1)));
                engine.drain(&mut out);
            }
            assert_eq!(out[0].result, Ok(4096), "{t}");
        }
        let e = LunStore::open(BsType::Memory, None, &OpenOptions::default()).unwrap_err();
        assert_eq!(e.kind, OpenErrorKind::Empty);
        assert_eq!(e.to_string(), "<memory>: size is zero");
        let e = LunStore::open(BsType::Rdwr, None, &opts).unwrap_err();
        assert_eq!(e.kind, OpenErrorKind::Os(libc::ENOENT));
        let e = LunStore::open(BsType::Nbd, None, &opts).unwrap_err();
        assert!(e.to_string().contains("needs the server URL"), "{e}");
        let e = LunStore::open(BsType::Nbd, Some(&path), &opts).unwrap_err();
        assert!(e.to_string().contains("is not an NBD URL"), "{e}");
    }
}
