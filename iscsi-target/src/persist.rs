//! Persistent reservations that survive a restart (APTPL, SPC-4 5.14.5).
//!
//! scsi-core keeps the reservation state of each LU and exports it as a compact image
//! ([`scsi_core::LogicalUnit::export_pr`]); without APTPL the image holds no
//! registrations. A [`PrStore`] keeps one image per (target, LUN): a [`TargetNode`] with a
//! store loads the image when a LUN is added and saves it whenever a command changed the
//! state, before the command's response leaves — so a PERSISTENT RESERVE OUT with APTPL is
//! durable by the time the initiator sees GOOD.
//!
//! [`FilePrStore`] keeps the images as files in a directory, each replaced atomically
//! (write to a temporary file, fsync, rename, fsync the directory): a crash at any moment
//! leaves either the old image or the new one.
//!
//! [`TargetNode`]: crate::registry::TargetNode

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where reservation images live across restarts.
pub trait PrStore: Send + Sync {
    /// The image saved for `lun` of target `target` (its iSCSI name), if any.
    fn load(&self, target: &str, lun: u16) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the image of `lun` of target `target`; durable when this returns.
    fn save(&self, target: &str, lun: u16, image: &[u8]) -> io::Result<()>;
}

/// Images as files `DIR/<target name>.lun<N>.pr`, replaced atomically.
#[derive(Debug, Clone)]
pub struct FilePrStore {
    dir: PathBuf,
}

impl FilePrStore {
    /// A store in `dir`, created (with parents) if missing.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<FilePrStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(FilePrStore { dir })
    }

    /// The directory holding the images.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, target: &str, lun: u16) -> PathBuf {
        // iSCSI names are [a-z0-9.:-]; anything else (a '/' above all) is replaced so a
        // name can never leave the directory.
        let safe: String = target
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.lun{lun}.pr"))
    }
}

impl PrStore for FilePrStore {
    fn load(&self, target: &str, lun: u16) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(target, lun)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, target: &str, lun: u16, image: &[u8]) -> io::Result<()> {
        let path = self.path(target, lun);
        let tmp = path.with_extension("pr.tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(image)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = FilePrStore::new(dir.path().join("pr")).unwrap();
        assert_eq!(s.load("iqn.2026-11.org.example:a", 1).unwrap(), None);
        s.save("iqn.2026-11.org.example:a", 1, b"one").unwrap();
        s.save("iqn.2026-11.org.example:a", 1, b"two").unwrap();
        s.save("iqn.2026-11.org.example:a", 2, b"lun2").unwrap();
        assert_eq!(
            s.load("iqn.2026-11.org.example:a", 1).unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(
            s.load("iqn.2026-11.org.example:a", 2).unwrap().as_deref(),
            Some(&b"lun2"[..])
        );
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".pr")));
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = FilePrStore::new(dir.path()).unwrap();
        s.save("../../evil/name", 0, b"x").unwrap();
        assert!(s.path("../../evil/name", 0).starts_with(dir.path()));
        assert_eq!(
            s.load("../../evil/name", 0).unwrap().as_deref(),
            Some(&b"x"[..])
        );
    }
}

#[cfg(test)]
mod registry_tests {
    //! APTPL through a [`TargetNode`]: a registration made with APTPL survives a restart
    //! (a new node on the same store); one made without it does not.
    use std::collections::VecDeque;
    use std::sync::Arc;

    use backstore::MemoryStore;
    use scsi_core::{Action, DataDirection, Lun, NexusId, ScsiStatus, TaskAttr, TaskId, TaskTag};

    use super::*;
    use crate::registry::{LunBackend, TargetNode};

    const NAME: &str = "iqn.2026-11.org.example:pr";
    const PORT: &[u8] = b"iqn.2026-11.org.example:host,i,0x400000000001";

    fn node(store: &Arc<FilePrStore>) -> TargetNode {
        let node = TargetNode::new(1, NAME);
        node.set_pr_store(store.clone());
        let mem = Arc::new(MemoryStore::new(1 << 20, 512).unwrap());
        let cfg = crate::builder::lu_config(1, 0, mem.as_ref(), &crate::LunOptions::default());
        node.add_lun(LunBackend::for_test("memory", mem, false), cfg)
            .unwrap();
        node.attach_nexus(NexusId(7), None).unwrap();
        node.scsi()
            .target()
            .add_nexus_with_port(NexusId(7), PORT, 1)
            .unwrap();
        node
    }

    /// Runs one command with optional Data-Out; returns its status and Data-In.
    fn run(
        node: &TargetNode,
        tag: u32,
        cdb: &[u8],
        out: &[u8],
        in_len: u32,
    ) -> (ScsiStatus, Vec<u8>) {
        let lun = Lun::from_number(0);
        let nexus = NexusId(7);
        let task = TaskId {
            nexus,
            tag: TaskTag(tag),
        };
        let mut g = node.scsi();
        let (dir, len) = if out.is_empty() {
            (DataDirection::Read, in_len)
        } else {
            (DataDirection::Write, out.len() as u32)
        };
        g.target()
            .submit(lun, nexus, TaskTag(tag), cdb, dir, len, TaskAttr::Simple)
            .unwrap();
        let mut data = Vec::new();
        loop {
            let mut q = VecDeque::new();
            g.drain_actions(nexus, &mut q);
            assert!(!q.is_empty(), "command stalled");
            for a in q {
                match a.action {
                    Action::NeedDataOut { .. } => {
                        g.target().data_out_ready(lun, task, out).unwrap()
                    }
                    Action::DataIn { len, .. } => {
                        let mut buf = vec![0u8; len as usize];
                        let n = g.target().emit_data_in(lun, task, &mut buf).unwrap();
                        data.extend_from_slice(&buf[..n]);
                    }
                    Action::Complete { status, .. } => return (status, data),
                    Action::Io(r) => panic!("unexpected I/O {r:?}"),
                }
            }
        }
    }

    fn register(node: &TargetNode, key: u64, aptpl: bool) {
        let mut p = [0u8; 24];
        p[8..16].copy_from_slice(&key.to_be_bytes());
        p[20] = u8::from(aptpl);
        let cdb = [0x5F, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(run(node, 1, &cdb, &p, 0).0, ScsiStatus::Good);
    }

    fn keys(node: &TargetNode) -> Vec<u64> {
        // Clear the POWER ON unit attention first.
        let _ = run(node, 2, &[0; 6], &[], 0);
        let (st, d) = run(node, 3, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x01, 0, 0], &[], 256);
        assert_eq!(st, ScsiStatus::Good);
        d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn aptpl_registration_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FilePrStore::new(dir.path()).unwrap());
        let first = node(&store);
        let _ = keys(&first);
        register(&first, 0xAB, true);
        assert_eq!(keys(&first), vec![0xAB]);
        drop(first);
        let second = node(&store);
        assert_eq!(keys(&second), vec![0xAB]);
    }

    #[test]
    fn registration_without_aptpl_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FilePrStore::new(dir.path()).unwrap());
        let first = node(&store);
        let _ = keys(&first);
        register(&first, 0xCD, false);
        assert_eq!(keys(&first), vec![0xCD]);
        drop(first);
        let second = node(&store);
        assert!(keys(&second).is_empty());
    }
}
