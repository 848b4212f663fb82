//! ext4 on a block device with a volatile write cache that can lose power: a loop
//! device over an image file on `tests/failfs/cachefs.py`, a FUSE file system that
//! holds every write in memory until the next flush. [`PowerFs::cut`] is the power
//! cut (unflushed writes kept, dropped, or torn at sector boundaries, at random);
//! [`PowerFs::power_on`] unmounts what is left, and mounts the file system again
//! from what the "disk" holds: ext4 replays its journal, and a program finds its
//! files as a real machine would after losing power.
//!
//! Needs root, `/dev/fuse`, libfuse3 and Python's `mfusepy`
//! (`scripts/install-test-deps.sh`), `mkfs.ext4` and loop devices; CI runs as
//! root.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[path = "../loop_fs/mod.rs"]
mod loop_fs;
use loop_fs::{require_root, LoopFs};

/// What the unflushed writes become at a power cut (`cachefs.py`'s modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Every unflushed write survives (as in a process crash).
    Keep,
    /// None survives.
    Drop,
    /// Each unflushed 512-byte sector keeps its flushed content or one of the
    /// versions written since, at random.
    Torn,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Keep => "keep",
            Cut::Drop => "drop",
            Cut::Torn => "torn",
        }
    }
}

/// What a cut did: sectors held unflushed, and how many of them it rolled back
/// or tore (now holding something other than their newest version).
#[derive(Debug, Default, Clone, Copy)]
pub struct CutReport {
    pub held: u64,
    pub changed: u64,
    /// Device writes held unflushed at the moment of the cut: the write
    /// requests the device received since its last flush (the loop device's
    /// writes, split at FUSE's maximum write size), every one of which the cut
    /// kept, dropped or tore with its sectors. More than one means the cut
    /// caught several writes in flight together, and a torn cut may have kept a
    /// later one and lost an earlier one.
    pub writes_held: u64,
}

/// When a drop or torn cut comes, drawn from `seed`: at the first write,
/// counted from the order, that is at least the `after`th (1 to 8) and leaves
/// at least `writes` writes held since the last flush, or else at the
/// (`after` + 64)th (`cachefs.py`). `writes` is 2 seven times in eight: a
/// writer with several writes in flight has them held together only now and
/// then, between flushes, and a cut at any write would mostly find one. It is 1
/// otherwise, so that cuts also come where one write alone is held. The seed is
/// mixed first: callers count it up from cycle to cycle.
fn cut_when(seed: u64) -> (u64, u64) {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let after = 1 + z % 8;
    let writes = if (z >> 3).is_multiple_of(8) { 1 } else { 2 };
    (after, writes)
}

/// The mounted ext4 file system and the FUSE daemon under it. Unmounted and
/// stopped on drop.
pub struct PowerFs {
    /// `None` only while dropping.
    ext4: Option<LoopFs>,
    /// Dropped before `tmp`, which holds its mount point.
    daemon: Daemon,
    tmp: tempfile::TempDir,
}

/// The FUSE daemon and its mount point: unmounted (lazily) and stopped on
/// drop, also when the set-up fails after its start, so that no daemon or
/// mount outlives the test.
struct Daemon {
    child: Child,
    fuse: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if mounted(&self.fuse) {
            let _ = Command::new("umount").arg("-l").arg(&self.fuse).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == path.to_str())
}

impl PowerFs {
    /// A fresh ext4 file system of `mib` MiB, mounted.
    pub fn new(mib: u64) -> PowerFs {
        require_root("mounts FUSE and loop devices");
        let tmp = tempfile::tempdir().unwrap();
        for sub in ["back", "fuse", "control"] {
            std::fs::create_dir(tmp.path().join(sub)).unwrap();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/failfs/cachefs.py");
        let fuse = tmp.path().join("fuse");
        let child = Command::new("python3")
            .arg(script)
            .arg(tmp.path().join("back"))
            .arg(&fuse)
            .arg(tmp.path().join("control"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 tests/failfs/cachefs.py");
        let mut daemon = Daemon {
            child,
            fuse: fuse.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mounted(&fuse) {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("cachefs exited before mounting ({status}); scripts/install-test-deps.sh installs libfuse3 and mfusepy");
            }
            assert!(Instant::now() < deadline, "cachefs did not mount in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        // LoopFs::at syncs the image after mkfs: nothing mkfs wrote can be cut.
        let ext4 = LoopFs::at(fuse.join("ext4.img"), mib, &["-b", "4096"]);
        PowerFs {
            ext4: Some(ext4),
            tmp,
            daemon,
        }
    }

    fn ext4(&self) -> &LoopFs {
        self.ext4.as_ref().expect("mounted")
    }

    fn control(&self, name: &str) -> PathBuf {
        self.tmp.path().join("control").join(name)
    }

    /// The mounted ext4 file system.
    pub fn path(&self) -> PathBuf {
        self.ext4().mount.clone()
    }

    /// Cuts the power: every write not yet flushed is kept, dropped or torn
    /// (`seed` picks which sectors), and from then on every write, flush and
    /// read fails with EIO until [`PowerFs::power_on`]. A keep cut comes at
    /// once. A drop or torn one comes at a write the device receives after
    /// the order (or at once, forced, if it has not come within 2 s), letting
    /// the flushes in between through: one to eight writes on, and mostly at
    /// one that leaves another held with it ([`cut_when`]). A cut at the first
    /// write after the order would nearly always find that one write alone
    /// since the last flush; this one lands anywhere in the device's stream of
    /// writes and flushes, and mostly where the writer had more than one write
    /// in flight, which a torn cut can then split (a later write kept, an
    /// earlier one lost).
    pub fn cut(&self, how: Cut, seed: u64) -> CutReport {
        let order = |spec: String| {
            // Written whole, then renamed into place: the daemon must never read
            // a half-written cut.
            let tmp = self.control("cut.tmp");
            std::fs::write(&tmp, spec).unwrap();
            std::fs::rename(&tmp, self.control("cut")).unwrap();
            // Any operation that looks for the cut takes the order (and applies
            // a keep or forced one); statfs is one that touches no file.
            Command::new("stat")
                .arg("-f")
                .arg(self.tmp.path().join("fuse"))
                .stdout(Stdio::null())
                .status()
                .expect("stat -f");
        };
        let done = self.control("cut-done");
        // A drop or torn cut waits for its write; one that has not come after
        // 2 s (the writer stopped) is forced.
        order(match how {
            Cut::Keep => format!("keep {seed}\n"),
            Cut::Drop | Cut::Torn => {
                let (after, writes) = cut_when(seed);
                format!("{} {seed} after={after} writes={writes}\n", how.as_str())
            }
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !done.exists() {
            order(format!("{} {seed} force\n", how.as_str()));
        }
        let text = std::fs::read_to_string(&done)
            .unwrap_or_else(|e| panic!("{}: {e} (the cut was not applied)", done.display()));
        std::fs::remove_file(&done).unwrap();
        let f: Vec<&str> = text.split_whitespace().collect();
        assert!(
            f.len() == 6 && f[0] == "held" && f[2] == "changed" && f[4] == "writes",
            "cut-done: {text:?}"
        );
        CutReport {
            held: f[1].parse().unwrap(),
            changed: f[3].parse().unwrap(),
            writes_held: f[5].parse().unwrap(),
        }
    }

    /// After [`PowerFs::cut`] and once every process using the file system has
    /// died: unmounts it (its remaining writes fail), powers the device on, and
    /// mounts it again from what the disk holds.
    pub fn power_on(&self) {
        let ext4 = self.ext4();
        assert!(
            ext4.unmount(),
            "{} stayed busy after the cut",
            ext4.mount.display()
        );
        std::fs::remove_file(self.control("cut")).unwrap();
        ext4.mount();
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.control("cut"));
        // ext4 first (LoopFs unmounts on drop), then the file system under
        // it (`daemon`, dropped next).
        drop(self.ext4.take());
    }
}
