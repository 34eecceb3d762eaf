//! Serving storage of one's own without a config file: [`TargetBuilder`] builds a target
//! (name, LUNs, CHAP, access rules) into a [`Registry`] that either runtime serves.
//!
//! ```
//! use std::sync::Arc;
//! use backstore::MemoryStore;
//! use iscsi_target::builder::{LunOptions, TargetBuilder};
//! use iscsi_target::driver::DriverConfig;
//!
//! let registry = TargetBuilder::new("iqn.2026-11.org.example:disk")
//!     .lun(0, Arc::new(MemoryStore::new(64 << 20, 512)?))
//!     .lun_with(1, Arc::new(MemoryStore::new(8 << 20, 4096)?),
//!               LunOptions::default().readonly(true))
//!     .chap("user", "secret-of-12+")
//!     .allow("10.0.0.0/8")
//!     .build()?;
//! // Serve it (runtime-threads or runtime-mio, port 0 picks a free port):
//! // let server = runtime_threads::Server::start(
//! //     registry, DriverConfig::default(), &["0.0.0.0:3260".parse()?])?;
//! // server.local_addrs(); server.shutdown(Duration::from_secs(3));
//! assert_eq!(registry.targets()[0].backends().len(), 2);
//! # let _ = DriverConfig::default();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every LU gets the same defaults as the `tgt-cli` daemon's (see [`lu_config`]): a stable
//! serial number and NAA identifier derived from the target id and LUN, and transfer
//! limits of [`MAX_TRANSFER`] bytes per command.

use std::sync::Arc;

use backstore::BackingStore;
use scsi_core::{BlockSize, LuConfig, TargetError};

use crate::acl::{InitiatorRule, validate_iscsi_name};
use crate::registry::{
    LunBackend, LunInfo, LunStats, Registry, RegistryError, TargetAuth, TargetNode,
};

/// The largest data transfer of one command, in bytes (VPD Block Limits).
pub const MAX_TRANSFER: u32 = 8 << 20;

/// The preferred (optimal) transfer of one command, in bytes.
pub const OPTIMAL_TRANSFER: u32 = 1 << 20;

/// Per-LUN settings beyond the backing store itself (which fixes size and block size).
///
/// Built with setters so that fields can be added later:
/// `LunOptions::default().readonly(true).thin(true)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LunOptions {
    /// Report the medium write-protected (the store may still be writable).
    pub readonly: bool,
    /// Report a removable medium.
    pub removable: bool,
    /// Report thin provisioning (UNMAP, GET LBA STATUS); useful when the store deallocates.
    pub thin: bool,
    /// log2 of logical blocks per physical block (READ CAPACITY (16) LBPPBE, the VPD Block
    /// Limits granularity): 3 makes a 512-byte-block LUN report 4096-byte physical blocks.
    /// 0..=15; larger values are clamped to 15.
    pub physical_block_exponent: u8,
}

impl LunOptions {
    /// Sets [`readonly`](Self::readonly).
    pub fn readonly(mut self, on: bool) -> Self {
        self.readonly = on;
        self
    }

    /// Sets [`removable`](Self::removable).
    pub fn removable(mut self, on: bool) -> Self {
        self.removable = on;
        self
    }

    /// Sets [`thin`](Self::thin).
    pub fn thin(mut self, on: bool) -> Self {
        self.thin = on;
        self
    }

    /// Sets [`physical_block_exponent`](Self::physical_block_exponent).
    pub fn physical_block_exponent(mut self, exponent: u8) -> Self {
        self.physical_block_exponent = exponent;
        self
    }

    /// Options for a store: read-only and thin as the store says, not removable, physical
    /// blocks the size of logical ones.
    pub fn for_store(store: &dyn BackingStore) -> Self {
        LunOptions {
            readonly: store.is_read_only(),
            removable: false,
            thin: store.is_thin(),
            physical_block_exponent: 0,
        }
    }
}

/// The scsi-core configuration of LUN `lun` of target `tid` on `store`: geometry from the
/// store; serial `tgtrs<tid:04><lun:05>`; NAA 6 identifier `0x60014050_0000_0000 | tid << 16
/// | lun`; transfer limits [`OPTIMAL_TRANSFER`] / [`MAX_TRANSFER`] bytes (WRITE SAME held to
/// the same block count); read-only, removable, thin and the physical block exponent from
/// `opts`.
pub fn lu_config(tid: u32, lun: u16, store: &dyn BackingStore, opts: &LunOptions) -> LuConfig {
    let block = store.block_size().max(1);
    let bs = if block == 4096 {
        BlockSize::B4096
    } else {
        BlockSize::B512
    };
    let blocks = store.size() / u64::from(block);
    let serial = format!("tgtrs{tid:04}{lun:05}");
    // NAA 6 (registered extended) with an OUI-style prefix and the tid/lun in the low bits.
    let naa = 0x6001_4050_0000_0000u64 | (u64::from(tid) << 16) | u64::from(lun);
    // One command moves at most MAX_TRANSFER bytes (this bounds a task's buffer); WRITE SAME
    // is held to the same count so an initiator can write what it may then unmap.
    let max_blocks = MAX_TRANSFER / block;
    LuConfig::new(blocks)
        .block_size(bs)
        .transfer_lengths(OPTIMAL_TRANSFER / block, max_blocks)
        .max_write_same(u64::from(max_blocks))
        .read_only(opts.readonly)
        .removable(opts.removable)
        .thin(opts.thin)
        .physical_block_exponent(opts.physical_block_exponent.min(15))
        .serial(&serial)
        .naa(naa)
}

/// Why [`TargetBuilder::build`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The target name is not a valid iSCSI name (the reason follows).
    Name(String),
    /// An [`allow`](TargetBuilder::allow) rule is neither `ALL`, an address, a CIDR nor an
    /// iSCSI name.
    Rule {
        /// The rule as given.
        rule: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The store's block size is neither 512 nor 4096, or its size is zero.
    Geometry {
        /// The LUN.
        lun: u16,
        /// The store's block size.
        block_size: u32,
        /// The store's size in bytes.
        size: u64,
    },
    /// scsi-core refused the LUN (duplicate number, table full).
    Lun {
        /// The LUN.
        lun: u16,
        /// What scsi-core said.
        error: TargetError,
    },
    /// The registry refused the target (duplicate tid or name).
    Registry(RegistryError),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Name(r) => write!(f, "target name {r}"),
            BuildError::Rule { rule, reason } => write!(f, "initiator rule {rule:?} {reason}"),
            BuildError::Geometry {
                lun,
                block_size,
                size,
            } => write!(
                f,
                "lun {lun}: unsupported geometry ({size} bytes in {block_size}-byte blocks; \
                 blocks must be 512 or 4096 bytes and the size non-zero)"
            ),
            BuildError::Lun { lun, error } => write!(f, "lun {lun}: {error}"),
            BuildError::Registry(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// Builds one target: iSCSI name, LUNs, CHAP accounts and initiator access rules.
///
/// With no [`allow`](Self::allow) rule every initiator may log in (subject to CHAP, if
/// accounts are set). The target id defaults to 1.
pub struct TargetBuilder {
    tid: u32,
    name: String,
    luns: Vec<(u16, Arc<dyn BackingStore>, LunOptions, String)>,
    auth: TargetAuth,
    rules: Vec<String>,
}

impl std::fmt::Debug for TargetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let luns: Vec<u16> = self.luns.iter().map(|l| l.0).collect();
        f.debug_struct("TargetBuilder")
            .field("tid", &self.tid)
            .field("name", &self.name)
            .field("luns", &luns)
            .field("auth", &self.auth)
            .field("rules", &self.rules)
            .finish()
    }
}

impl TargetBuilder {
    /// A target named `name` (an `iqn.` or `eui.` name) with no LUNs.
    pub fn new(name: &str) -> Self {
        TargetBuilder {
            tid: 1,
            name: name.to_string(),
            luns: Vec::new(),
            auth: TargetAuth::default(),
            rules: Vec::new(),
        }
    }

    /// Sets the target id (unique within a registry; it also seeds the LU identifiers).
    pub fn tid(mut self, tid: u32) -> Self {
        self.tid = tid;
        self
    }

    /// Adds LUN `number` on `store` with [`LunOptions::for_store`].
    pub fn lun(self, number: u16, store: Arc<dyn BackingStore>) -> Self {
        let opts = LunOptions::for_store(&*store);
        self.lun_with(number, store, opts)
    }

    /// Adds LUN `number` on `store` with explicit options.
    pub fn lun_with(self, number: u16, store: Arc<dyn BackingStore>, opts: LunOptions) -> Self {
        self.lun_labeled(number, store, opts, "custom")
    }

    /// As [`lun_with`](Self::lun_with), with the backing-store type label shown by
    /// management tools (`memory`, `rdwr`, ...).
    pub fn lun_labeled(
        mut self,
        number: u16,
        store: Arc<dyn BackingStore>,
        opts: LunOptions,
        bstype: &str,
    ) -> Self {
        self.luns.push((number, store, opts, bstype.to_string()));
        self
    }

    /// Requires CHAP: initiators must authenticate as `user` with `secret` (call again to
    /// accept several accounts).
    pub fn chap(mut self, user: &str, secret: &str) -> Self {
        self.auth
            .incoming
            .push((user.to_string(), secret.to_string()));
        self
    }

    /// Mutual CHAP: the target authenticates to the initiator as `user` with `secret`.
    pub fn mutual_chap(mut self, user: &str, secret: &str) -> Self {
        self.auth.outgoing = Some((user.to_string(), secret.to_string()));
        self
    }

    /// Lets initiators in: `ALL`, an IP address, a CIDR prefix or an initiator iSCSI name.
    pub fn allow(mut self, rule: &str) -> Self {
        self.rules.push(rule.to_string());
        self
    }

    /// Builds the target node (to add to an existing [`Registry`]).
    pub fn build_node(self) -> Result<TargetNode, BuildError> {
        validate_iscsi_name(&self.name).map_err(BuildError::Name)?;
        let mut rules = Vec::new();
        for r in &self.rules {
            rules.push(InitiatorRule::parse(r).map_err(|reason| BuildError::Rule {
                rule: r.clone(),
                reason,
            })?);
        }
        if rules.is_empty() {
            rules.push(InitiatorRule::All);
        }
        let node = TargetNode::new(self.tid, &self.name);
        node.set_acl(rules);
        node.set_auth(self.auth);
        for (number, store, opts, bstype) in self.luns {
            let (block_size, size) = (store.block_size(), store.size());
            if !matches!(block_size, 512 | 4096) || size < u64::from(block_size) {
                return Err(BuildError::Geometry {
                    lun: number,
                    block_size,
                    size,
                });
            }
            let cfg = lu_config(self.tid, number, &*store, &opts);
            let info = LunInfo {
                number,
                bstype,
                path: None,
                size,
                block_size,
                readonly: opts.readonly,
                removable: opts.removable,
                thin: opts.thin,
            };
            let backend = LunBackend {
                info,
                store,
                stats: LunStats::default(),
                engine: None,
            };
            node.add_lun(backend, cfg)
                .map_err(|error| BuildError::Lun { lun: number, error })?;
        }
        Ok(node)
    }

    /// Builds the target and adds it to `registry`.
    pub fn add_to(self, registry: &Registry) -> Result<Arc<TargetNode>, BuildError> {
        let node = self.build_node()?;
        registry.add_target(node).map_err(BuildError::Registry)
    }

    /// Builds a registry holding just this target, ready for a runtime's `Server::start`.
    pub fn build(self) -> Result<Arc<Registry>, BuildError> {
        let registry = Arc::new(Registry::new());
        self.add_to(&registry)?;
        Ok(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstore::{MemoryStore, NullStore};
    use std::net::IpAddr;

    fn mem(size: u64, bs: u32) -> Arc<dyn BackingStore> {
        Arc::new(MemoryStore::new(size, bs).unwrap())
    }

    #[test]
    fn builds_a_registry_with_luns_auth_and_rules() {
        let reg = TargetBuilder::new("iqn.2026-11.test:b")
            .tid(7)
            .lun(0, mem(1 << 20, 512))
            .lun_with(
                3,
                mem(1 << 20, 4096),
                LunOptions::default().readonly(true).removable(true),
            )
            .chap("u", "s1")
            .chap("v", "s2")
            .mutual_chap("t", "s3")
            .allow("10.0.0.0/8")
            .allow("iqn.2026-11.test:ini")
            .build()
            .unwrap();
        let t = reg.targets();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].tid, t[0].name.as_str()), (7, "iqn.2026-11.test:b"));
        let l = t[0].backends();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].info.number, 0);
        assert_eq!(l[0].info.bstype, "custom");
        assert!(
            l[0].info.thin,
            "MemoryStore is thin: lun() follows the store"
        );
        assert!(!l[0].info.readonly);
        assert_eq!(
            (l[1].info.number, l[1].info.block_size, l[1].info.readonly),
            (3, 4096, true)
        );
        assert!(l[1].info.removable);
        let auth = t[0].auth();
        assert_eq!(auth.incoming.len(), 2);
        assert_eq!(auth.outgoing, Some(("t".into(), "s3".into())));
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        let b: IpAddr = "192.168.0.1".parse().unwrap();
        assert!(t[0].allows(a, "iqn.x:y"));
        assert!(!t[0].allows(b, "iqn.x:y"));
        assert!(t[0].allows(b, "iqn.2026-11.test:ini"));
    }

    #[test]
    fn no_rules_means_everyone() {
        let reg = TargetBuilder::new("iqn.2026-11.test:open").build().unwrap();
        let t = &reg.targets()[0];
        assert_eq!(t.acl(), vec![InitiatorRule::All]);
        assert_eq!(t.tid, 1);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(
            TargetBuilder::new("not a name").build(),
            Err(BuildError::Name(_))
        ));
        let e = TargetBuilder::new("iqn.2026-11.test:x")
            .allow("10.0.0.0/99")
            .build()
            .unwrap_err();
        assert!(matches!(&e, BuildError::Rule { rule, .. } if rule == "10.0.0.0/99"));
        assert!(e.to_string().starts_with("initiator rule \"10.0.0.0/99\""));
        let e = TargetBuilder::new("iqn.2026-11.test:x")
            .lun(1, Arc::new(NullStore::new(1 << 20, 1024).unwrap()))
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            BuildError::Geometry {
                lun: 1,
                block_size: 1024,
                size: 1 << 20
            }
        );
        let e = TargetBuilder::new("iqn.2026-11.test:x")
            .lun(1, mem(1 << 20, 512))
            .lun(1, mem(1 << 20, 512))
            .build()
            .unwrap_err();
        assert!(matches!(e, BuildError::Lun { lun: 1, .. }));
        let reg = Registry::new();
        TargetBuilder::new("iqn.2026-11.test:x")
            .add_to(&reg)
            .unwrap();
        let e = TargetBuilder::new("iqn.2026-11.test:y")
            .add_to(&reg)
            .unwrap_err();
        assert_eq!(e, BuildError::Registry(RegistryError::DuplicateTid(1)));
    }

    #[test]
    fn lu_config_defaults_match_the_daemon() {
        let store = mem(1 << 30, 4096);
        let cfg = lu_config(2, 5, &*store, &LunOptions::default());
        let expect = LuConfig::new((1 << 30) / 4096)
            .block_size(BlockSize::B4096)
            .transfer_lengths(256, 2048)
            .max_write_same(2048)
            .read_only(false)
            .removable(false)
            .thin(false)
            .serial("tgtrs000200005")
            .naa(0x6001_4050_0002_0005);
        assert_eq!(cfg, expect);
        assert_eq!(cfg.physical_block_exponent, 0);
    }

    #[test]
    fn physical_block_exponent_reaches_the_lu() {
        let store = mem(1 << 20, 512);
        let opts = LunOptions::default().physical_block_exponent(3).thin(true);
        assert_eq!(opts.physical_block_exponent, 3);
        let cfg = lu_config(1, 0, &*store, &opts);
        assert_eq!(cfg.physical_block_exponent, 3);
        assert_eq!(cfg.block_size, BlockSize::B512);
        let cfg = lu_config(1, 0, &*store, &opts.physical_block_exponent(200));
        assert_eq!(cfg.physical_block_exponent, 15);
        assert_eq!(LunOptions::for_store(&*store).physical_block_exponent, 0);
    }
}
