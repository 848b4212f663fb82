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
        let flag = self.dir.path().join("fail");
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
