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
}

/// The mounted ext4 file system and the FUSE daemon under it. Unmounted and
/// stopped on drop.
pub struct PowerFs {
    tmp: tempfile::TempDir,
    daemon: Child,
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (install e2fsprogs / mount)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the power-loss tests mount FUSE and loop devices and need root (CI runs as root)"
        );
        let tmp = tempfile::tempdir().unwrap();
        for sub in ["back", "fuse", "control", "ext4"] {
            std::fs::create_dir(tmp.path().join(sub)).unwrap();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/failfs/cachefs.py");
        let daemon = Command::new("python3")
            .arg(script)
            .arg(tmp.path().join("back"))
            .arg(tmp.path().join("fuse"))
            .arg(tmp.path().join("control"))
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 tests/failfs/cachefs.py");
        let mut fs = PowerFs { tmp, daemon };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mounted(&fs.fuse()) {
            if let Some(status) = fs.daemon.try_wait().unwrap() {
                panic!("cachefs exited before mounting ({status}); scripts/install-test-deps.sh installs libfuse3 and mfusepy");
            }
            assert!(Instant::now() < deadline, "cachefs did not mount in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let img = fs.img();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-b".as_ref(),
                "4096".as_ref(),
                img.as_ref(),
            ],
        );
        // What mkfs wrote reaches the "disk" before anything can be cut.
        std::fs::File::open(&img).unwrap().sync_all().unwrap();
        fs.mount();
        fs
    }

    fn fuse(&self) -> PathBuf {
        self.tmp.path().join("fuse")
    }

    fn img(&self) -> PathBuf {
        self.fuse().join("ext4.img")
    }

    fn control(&self, name: &str) -> PathBuf {
        self.tmp.path().join("control").join(name)
    }

    /// The mounted ext4 file system.
    pub fn path(&self) -> PathBuf {
        self.tmp.path().join("ext4")
    }

    fn mount(&self) {
        let (img, mnt) = (self.img(), self.path());
        run(
            "mount",
            &["-o".as_ref(), "loop".as_ref(), img.as_ref(), mnt.as_ref()],
        );
    }

    /// Whether the unmount succeeded. An io_uring instance releases its files
    /// asynchronously after its process died, so the mount may be busy for a
    /// moment; the loop device is detached with the unmount.
    fn unmount(&self) -> bool {
        for _ in 0..100 {
            let ok = Command::new("umount")
                .arg(self.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Cuts the power now: every write not yet flushed is kept, dropped or torn
    /// (`seed` picks which sectors), and from then on every write, flush and
    /// read fails with EIO until [`PowerFs::power_on`].
    pub fn cut(&self, how: Cut, seed: u64) -> CutReport {
        // Written whole, then renamed into place: the daemon must never read a
        // half-written cut.
        let tmp = self.control("cut.tmp");
        std::fs::write(&tmp, format!("{} {seed}\n", how.as_str())).unwrap();
        std::fs::rename(&tmp, self.control("cut")).unwrap();
        // Any operation that looks for the cut applies it; statfs is one that
        // touches no file.
        Command::new("stat")
            .arg("-f")
            .arg(self.fuse())
            .stdout(Stdio::null())
            .status()
            .expect("stat -f");
        let done = self.control("cut-done");
        let text = std::fs::read_to_string(&done)
            .unwrap_or_else(|e| panic!("{}: {e} (the cut was not applied)", done.display()));
        std::fs::remove_file(&done).unwrap();
        let f: Vec<&str> = text.split_whitespace().collect();
        assert!(
            f.len() == 4 && f[0] == "held" && f[2] == "changed",
            "cut-done: {text:?}"
        );
        CutReport {
            held: f[1].parse().unwrap(),
            changed: f[3].parse().unwrap(),
        }
    }

    /// After [`PowerFs::cut`] and once every process using the file system has
    /// died: unmounts it (its remaining writes fail), powers the device on, and
    /// mounts it again from what the disk holds.
    pub fn power_on(&self) {
        assert!(
            self.unmount(),
            "{} stayed busy after the cut",
            self.path().display()
        );
        std::fs::remove_file(self.control("cut")).unwrap();
        self.mount();
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.control("cut"));
        if !self.unmount() {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
        let _ = Command::new("umount").arg("-l").arg(self.fuse()).status();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
