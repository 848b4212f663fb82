//! A small ext4 image mounted through a loop device, for tests on a real filesystem
//! that fills up or is shut down under the process (needs root, `mkfs.ext4` and
//! loop devices; CI runs as root).
#![allow(dead_code)]

use std::{path::PathBuf, process::Command, time::Duration};

/// Mounts a fresh ext4 image of `mib` MiB; unmounts on drop.
pub struct LoopFs {
    /// Where the image is mounted.
    pub mount: PathBuf,
    img: PathBuf,
    /// Mount options besides `loop`, comma-separated (may be empty).
    options: String,
    _tmp: tempfile::TempDir,
}

fn run(cmd: &str, args: &[&str]) {
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

/// Fails the test unless it runs as root: it `does` what needs root.
pub fn require_root(does: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the test {does} and needs root (CI runs as root)");
}

impl LoopFs {
    /// A fresh ext4 image of `mib` MiB in a temporary directory, mounted.
    pub fn new(mib: u64) -> LoopFs {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("fs.img");
        Self::create(img, mib, &[], "", tmp)
    }

    /// A fresh ext4 image of `mib` MiB in a temporary directory, mounted with
    /// `options` (comma-separated, as `mount -o` takes them) besides `loop`,
    /// every time it is mounted.
    pub fn with_options(mib: u64, options: &str) -> LoopFs {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("fs.img");
        Self::create(img, mib, &[], options, tmp)
    }

    /// A fresh ext4 image of `mib` MiB at `img`, which may lie on another test
    /// file system, made with `mkfs.ext4` and `mkfs_args` besides the usual ones,
    /// synced to that file system, and mounted.
    pub fn at(img: PathBuf, mib: u64, mkfs_args: &[&str]) -> LoopFs {
        Self::create(img, mib, mkfs_args, "", tempfile::tempdir().unwrap())
    }

    fn create(
        img: PathBuf,
        mib: u64,
        mkfs_args: &[&str],
        options: &str,
        tmp: tempfile::TempDir,
    ) -> LoopFs {
        require_root("mounts a loop device");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let mut args = vec!["-q", "-F", "-m", "0"];
        args.extend_from_slice(mkfs_args);
        args.push(img.to_str().unwrap());
        run("mkfs.ext4", &args);
        // What mkfs wrote is on the image's own file system before the mount.
        std::fs::File::open(&img).unwrap().sync_all().unwrap();
        let mount = tmp.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let fs = LoopFs {
            mount,
            img,
            options: options.to_owned(),
            _tmp: tmp,
        };
        fs.mount();
        fs
    }

    pub fn mount(&self) {
        let options = if self.options.is_empty() {
            "loop".to_owned()
        } else {
            format!("loop,{}", self.options)
        };
        run(
            "mount",
            &[
                "-o",
                &options,
                self.img.to_str().unwrap(),
                self.mount.to_str().unwrap(),
            ],
        );
    }

    /// Whether the unmount succeeded. An io_uring instance releases its file
    /// references asynchronously after it is dropped, so the first attempts may
    /// find the mount busy. The loop device is detached with the unmount.
    pub fn unmount(&self) -> bool {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.mount)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Shuts the filesystem down at once, without flushing its journal or any
    /// data (`EXT4_IOC_SHUTDOWN`, `EXT4_GOING_FLAGS_NOLOGFLUSH`): every later
    /// write and fsync on it fails with EIO until it is mounted again.
    pub fn shut_down(&self) {
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D; // _IOR('X', 125, __u32)
        const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
        let dir = std::fs::File::open(&self.mount).unwrap();
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the fd is open for the whole call, and the ioctl reads one u32
        // from the pointer, which points to a live local.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                EXT4_IOC_SHUTDOWN,
                &flags as *const u32,
            )
        };
        assert_eq!(
            r,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Unmounts and mounts the image again (after a shutdown: as after a crash).
    pub fn remount(&self) {
        assert!(self.unmount(), "umount {} failed", self.mount.display());
        self.mount();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if !self.unmount() {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}
