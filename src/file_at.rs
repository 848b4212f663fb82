//! Positioned reads and writes on every platform: `pread`/`pwrite` on Unix,
//! `seek_read`/`seek_write` in a loop on Windows. Import [`FileAt`] instead of
//! `std::os::unix::fs::FileExt`.

use std::fs::File;
use std::io;

/// `read_exact_at` / `write_all_at` for [`File`] wherever the crate builds.
pub trait FileAt {
    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// The OS error, or `UnexpectedEof` when the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// The OS error, or `WriteZero` when the OS stops accepting bytes.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Writes all of `bufs`, one after another, starting at `offset`: one
    /// `pwritev` on Unix (repeated from where a short write stopped).
    ///
    /// # Errors
    /// The OS error, or `WriteZero` when the OS stops accepting bytes.
    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()>;
}

#[cfg(unix)]
impl FileAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
        if let [one] = bufs {
            return self.write_all_at(one, offset);
        }
        let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        io::IoSlice::advance_slices(&mut rest, 0); // skips empty buffers
        while !rest.is_empty() {
            let at = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
            match nix::sys::uio::pwritev(self, rest, at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    offset += n as u64;
                    io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(windows)]
impl FileAt for File {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.seek_read(buf, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.seek_write(buf, offset)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
        for b in bufs {
            self.write_all_at(b, offset)?;
            offset += b.len() as u64;
        }
        Ok(())
    }
}

/// Bytes of `path` in the page cache, as `fincore` (util-linux) counts them.
#[cfg(test)]
pub(crate) fn cached_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux; scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "fincore: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The bytes of `path` as the disk holds them: read with `O_DIRECT`, past any
/// page the kernel keeps cached.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn read_direct(path: &std::path::Path) -> Vec<u8> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let block = crate::wal::format::BLOCK_SIZE;
    let mut buf = crate::wal::buffer::AlignedBuf::new(len.next_multiple_of(block).max(block));
    let whole = buf.capacity();
    // O_DIRECT reads whole blocks; the last one stops short at the end of the file.
    let mut done = 0;
    while done < len {
        let n = f
            .read_at(&mut buf.as_mut_slice()[done..whole], done as u64)
            .unwrap();
        assert!(n > 0, "{}: ends early at {done}", path.display());
        done += n;
    }
    buf.as_slice()[..len].to_vec()
}

/// A FUSE file system over a backing directory whose writes fail on demand
/// (`tests/failfs/failfs.py`, with the kernel's write-back cache on): after
/// `fail(Some(errno))` the pages written next cannot be written back, a real
/// write-back failure that the kernel reports to the next sync of the file by
/// anyone. Unmounted and stopped on drop. Needs root, `/dev/fuse`, libfuse3 and Python's `mfusepy`
/// (`scripts/install-test-deps.sh`).
#[cfg(all(test, target_os = "linux"))]
pub(crate) struct FailingFs {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
}

#[cfg(all(test, target_os = "linux"))]
impl FailingFs {
    pub(crate) fn mount() -> FailingFs {
        FailingFs::mount_with(true)
    }

    /// With `write_back` false the kernel's write-back cache stays off and each
    /// write(2) reaching the file system fails itself (`FailingExt4` puts a loop
    /// device over it).
    fn mount_with(write_back: bool) -> FailingFs {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        for sub in ["back", "mnt"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/failfs/failfs.py");
        let daemon = std::process::Command::new("python3")
            .arg(script)
            .arg(dir.path().join("back"))
            .arg(dir.path().join("mnt"))
            .arg(dir.path().join("fail"))
            .args((!write_back).then_some("write-through"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("python3 tests/failfs/failfs.py");
        let mut fs = FailingFs { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs.mounted() {
            if let Some(status) = fs.daemon.try_wait().unwrap() {
                panic!("failfs exited before mounting ({status}); scripts/install-test-deps.sh installs libfuse3 and mfusepy");
            }
            assert!(Instant::now() < deadline, "failfs did not mount in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    fn mounted(&self) -> bool {
        let mnt = self.path();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == mnt.to_str())
    }

    /// The mounted file system.
    pub(crate) fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }

    /// The directory behind it: what the "disk" holds.
    pub(crate) fn backing(&self) -> std::path::PathBuf {
        self.dir.path().join("back")
    }

    /// Makes every write reaching the file system fail with `errno`, or (`None`)
    /// succeed again.
    pub(crate) fn fail(&self, errno: Option<i32>) {
        self.flag("fail", errno)
    }

    /// The same for reads.
    pub(crate) fn fail_reads(&self, errno: Option<i32>) {
        self.flag("fail-reads", errno)
    }

    /// The same for `fsync` and `fdatasync` reaching the file system.
    pub(crate) fn fail_fsyncs(&self, errno: Option<i32>) {
        self.flag("fail-fsyncs", errno)
    }

    fn flag(&self, name: &str, errno: Option<i32>) {
        let flag = self.dir.path().join(name);
        match errno {
            Some(e) => std::fs::write(flag, e.to_string()).unwrap(),
            None => std::fs::remove_file(flag).unwrap(),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
impl Drop for FailingFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(self.path())
            .status();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// ext4 on a loop device whose image lives on a [`FailingFs`] without the
/// write-back cache: after `fail(Some(errno))` every block write reaching the
/// device fails, so ext4 meets real I/O errors and handles them its own way.
/// Unlike FUSE, which drops pages it could not write back, ext4 keeps them
/// cached as written: reads return bytes the disk does not hold, and once the
/// failure has been reported (to the first sync after it) nothing tells the
/// next opener. Unmounted on drop. Needs what [`FailingFs`] needs, plus
/// `mkfs.ext4` and loop devices (as `tests/full_disk.rs`).
#[cfg(all(test, target_os = "linux"))]
pub(crate) struct FailingExt4 {
    mnt: tempfile::TempDir,
    fs: FailingFs,
}

#[cfg(all(test, target_os = "linux"))]
impl FailingExt4 {
    pub(crate) fn mount() -> FailingExt4 {
        let fs = FailingFs::mount_with(false);
        std::fs::File::create(fs.path().join("ext4.img"))
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let ext4 = FailingExt4 {
            mnt: tempfile::tempdir().unwrap(),
            fs,
        };
        // 4 KiB blocks (mkfs picks 1 KiB for a file system this small): see
        // `mount_image`.
        ext4.run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-b".as_ref(),
                "4096".as_ref(),
                ext4.img().as_ref(),
            ],
        );
        ext4.mount_image();
        ext4
    }

    fn img(&self) -> std::path::PathBuf {
        self.fs.path().join("ext4.img")
    }

    fn run(&self, cmd: &str, args: &[&std::ffi::OsStr]) {
        let out = std::process::Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    }

    fn mount_image(&self) {
        // No periodic journal commit while a test makes writes fail: a failed
        // journal write aborts the journal (the file system turns read-only),
        // which a test should meet only when it makes the file system commit.
        let opts = "loop,commit=600";
        let (img, mnt) = (self.img(), self.path());
        self.run(
            "mount",
            &["-o".as_ref(), opts.as_ref(), img.as_ref(), mnt.as_ref()],
        );
        // The loop device writes a request to the image with one write(2), and
        // FUSE splits that into WRITE requests at page boundaries and every
        // 512 KiB; when the failure begins between two of them the write(2) is
        // short, and the loop device (Linux 6.18) completes the request as a
        // success: an O_DIRECT|O_DSYNC write of 12 KiB that ext4 issued at a
        // 1 KiB offset returned success with 3 KiB on the image (checked by
        // hand). A real device does not fail half a request and report it done,
        // so requests are kept to one FUSE WRITE each: 4 KiB blocks (aligned
        // requests) and at most 256 KiB per request.
        let dev = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == mnt.to_str())
            .and_then(|l| l.split(" - ").nth(1))
            .and_then(|rest| rest.split(' ').nth(1))
            .map(str::to_string)
            .expect("the loop device of the mount");
        let name = std::path::Path::new(&dev).file_name().unwrap().to_owned();
        let limit = std::path::Path::new("/sys/block")
            .join(name)
            .join("queue/max_sectors_kb");
        std::fs::write(&limit, "256").unwrap_or_else(|e| panic!("{}: {e}", limit.display()));
    }

    /// Whether the unmount succeeded. An io_uring instance releases its files
    /// asynchronously after it is dropped, so the mount may be busy for a
    /// moment; the loop device is detached with the unmount.
    fn unmount(&self) -> bool {
        for _ in 0..50 {
            let ok = std::process::Command::new("umount")
                .arg(self.mnt.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// Unmounts and mounts the file system again: every cache is gone, the
    /// journal is replayed, and what remains is what the device holds, as
    /// after a crash. Writes must work again first (`fail(None)`).
    pub(crate) fn remount(&self) {
        assert!(self.unmount(), "{} stayed busy", self.path().display());
        self.mount_image();
    }

    /// The mounted ext4 file system.
    pub(crate) fn path(&self) -> std::path::PathBuf {
        self.mnt.path().to_path_buf()
    }

    /// Makes every block write fail with `errno`, or (`None`) succeed again.
    pub(crate) fn fail(&self, errno: Option<i32>) {
        self.fs.fail(errno)
    }

    /// Makes every block read that reaches the device fail with `errno`, or
    /// (`None`) succeed again. Blocks cached above the device (ext4's pages and
    /// its metadata buffers) are still read from the cache; the image's own
    /// cached pages are dropped first, so that no read of the loop device is
    /// answered without asking the file system below.
    pub(crate) fn fail_reads(&self, errno: Option<i32>) {
        if errno.is_some() {
            let img = std::fs::File::open(self.img()).unwrap();
            crate::wal::files::drop_cached_pages(&img);
        }
        self.fs.fail_reads(errno)
    }
}

#[cfg(all(test, target_os = "linux"))]
impl Drop for FailingExt4 {
    fn drop(&mut self) {
        for flag in ["fail", "fail-reads"] {
            let _ = std::fs::remove_file(self.fs.dir.path().join(flag));
        }
        if !self.unmount() {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(self.mnt.path())
                .status();
        }
    }
}

/// Helpers of the random device failure tests (WAL and storage).
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod device_failure {
    /// Payload `i` of writer `t`: `min` to `min + spread` bytes, naming both.
    pub(crate) fn payload(t: u64, i: u64, min: usize, spread: u64) -> Vec<u8> {
        let len = min + ((t * 7919 + i * 104_729) % spread) as usize;
        let mut d = format!("{t}:{i}:").into_bytes();
        d.resize(len, b'a' + (i % 26) as u8);
        d
    }

    /// The environment variable `name` as a number, `default` when unset.
    pub(crate) fn env(name: &str, default: u64) -> u64 {
        std::env::var(name).map_or(default, |v| v.parse().expect(name))
    }

    /// splitmix64 of `x`: a run's failure point and errno from its seed.
    pub(crate) fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb)
    }
}

#[cfg(test)]
mod tests {
    use super::FileAt;

    #[test]
    fn positioned_io_round_trips_and_reports_eof() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(b"world", 6).unwrap();
        f.write_all_at(b"hello ", 0).unwrap();
        let mut buf = [0u8; 11];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello world");
        let e = f.read_exact_at(&mut buf, 4).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn vectored_writes_land_in_order_and_skip_empty_buffers() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_vectored_at(&[b"", b"ab", b"", b"cde", b"f"], 3)
            .unwrap();
        f.write_all_vectored_at(&[b"xyz"], 0).unwrap();
        f.write_all_vectored_at(&[], 100).unwrap();
        let mut buf = [0u8; 9];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"xyzabcdef");
        assert_eq!(
            f.metadata().unwrap().len(),
            9,
            "an empty write extends nothing"
        );
    }
}
