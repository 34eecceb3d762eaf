//! Throwaway Ceph clusters for the rbd tests, from `scripts/ceph-test-cluster.sh` (memstore
//! OSDs on 127.0.0.1, no ceph-mgr): [`shared`] gives the single-OSD cluster a test binary
//! shares (stopped by the script's watcher when the binary exits), [`Cluster::start`] one of
//! a test's own (stopped when dropped). Without the Ceph tools they return `None` after
//! printing `SKIPPED: ...`.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Straight to stderr: the test harness would swallow `eprintln!` of a passing test.
pub fn say(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

pub fn have_ceph() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = ["ceph-mon", "ceph-osd", "ceph", "rbd"]
        .into_iter()
        .filter(|tool| {
            !std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/bin")])
                .any(|d| d.join(tool).is_file())
        })
        .collect();
    if !missing.is_empty() {
        say(&format!(
            "SKIPPED: {} not installed (apt-get install ceph-mon ceph-osd ceph-common); the rbd \
             acceptance tests need a throwaway Ceph cluster",
            missing.join(", ")
        ));
    }
    missing.is_empty()
}

/// A cluster started by `scripts/ceph-test-cluster.sh`.
pub struct Cluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub pool: String,
    /// `osd.N`'s PID at index N.
    pub osd_pids: Vec<i32>,
    /// Stop it when dropped (the shared cluster is a static: its watcher stops it).
    pub stop_on_drop: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ceph-test-cluster.sh")
}

impl Cluster {
    pub fn start(osds: u32, tag: &str) -> Cluster {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tgt-cli-rbd-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let started = Instant::now();
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .args(["--osds", &osds.to_string()])
            .args(["--watch", &std::process::id().to_string()])
            .env("RBD_TEST_IMAGE_SIZE", "1M")
            .output()
            .expect("run ceph-test-cluster.sh");
        assert!(
            out.status.success(),
            "ceph-test-cluster.sh start --osds {osds} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key}= in the script's output {stdout:?}"))
                .to_owned()
        };
        let osd_pids: Vec<i32> = field("osd_pids")
            .split(',')
            .map(|p| p.parse().expect("osd pid"))
            .collect();
        assert_eq!(osd_pids.len(), osds as usize, "{stdout}");
        say(&format!(
            "ceph test cluster ({osds} OSD) up in {:.1} s at {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        ));
        Cluster {
            dir,
            conf: field("conf").into(),
            pool: field("pool"),
            osd_pids,
            stop_on_drop: true,
        }
    }

    /// Runs `TOOL -c CONF ARGS` (`rbd`, `ceph`): its stdout, or its stderr if it failed.
    pub fn try_run(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(tool)
            .env("PATH", "/usr/bin:/bin")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `rbd -c CONF ARGS`, which must succeed; its stdout.
    pub fn rbd(&self, args: &[&str]) -> String {
        self.try_run("rbd", args)
            .unwrap_or_else(|e| panic!("rbd {args:?} failed: {e}"))
    }

    /// A new image of `mib` MiB with a name unique to this run.
    pub fn image(&self, name: &str, mib: u64) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let image = format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.rbd(&[
            "create",
            &format!("{}/{image}", self.pool),
            "--size",
            &format!("{mib}M"),
        ]);
        image
    }

    /// The LUN's `backing_store` for `image`.
    pub fn backing_store(&self, image: &str) -> String {
        format!("rbd:{}/{image}:conf={}", self.pool, self.conf.display())
    }

    /// The whole image, through `rbd export`.
    pub fn export(&self, image: &str, scratch: &Path) -> Vec<u8> {
        let file = scratch.join(format!("{image}.export"));
        let _ = std::fs::remove_file(&file);
        self.rbd(&[
            "export",
            "--no-progress",
            &format!("{}/{image}", self.pool),
            file.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        bytes
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.stop_on_drop {
            let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
        }
    }
}

/// The single-OSD cluster this binary's tests share (None: no Ceph tools, skip).
pub fn shared() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    static START: Mutex<()> = Mutex::new(());
    let _g = START.lock().unwrap_or_else(|e| e.into_inner());
    CLUSTER
        .get_or_init(|| {
            have_ceph().then(|| {
                let mut c = Cluster::start(1, "shared");
                // A static is never dropped; the script's watcher stops it with this process.
                c.stop_on_drop = false;
                c
            })
        })
        .as_ref()
}
