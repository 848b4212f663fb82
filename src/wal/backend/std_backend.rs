//! Portable backend: `pwrite` + `fdatasync` (`F_FULLFSYNC` on macOS), synchronous.
//! The commit thread batches exactly as with io_uring, so the files are byte-identical.
//! On Linux it writes with `O_DIRECT` when asked to (see `WalConfig::direct_io`) and
//! falls back to the page cache, with one warning, where the filesystem refuses it.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use super::{open_rw, Backend, Done, Op};
use crate::error::{Error, Result};
use crate::file_at::FileAt;
use crate::wal::config::BackendKind;

pub(crate) struct StdBackend {
    file: Option<(File, PathBuf)>,
    done: Vec<Done>,
    /// Open files with `O_DIRECT` (Linux only; cleared when the filesystem refuses it).
    direct: bool,
}

impl StdBackend {
    pub(crate) fn new(direct: bool) -> Self {
        StdBackend {
            file: None,
            done: Vec::new(),
            direct: direct && cfg!(target_os = "linux"),
        }
    }
}

/// fdatasync, or its strongest equivalent on the platform.
pub(crate) fn data_sync(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsRawFd;
        #[expect(unsafe_code, reason = "F_FULLFSYNC has no std wrapper")]
        // SAFETY: fcntl(F_FULLFSYNC) takes no pointer argument; the fd is owned by `file`.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_FULLFSYNC) };
        if r == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "macos"))]
    {
        file.sync_data()
    }
}

impl StdBackend {
    /// Opens `path` as the active file with `open` (the real one, or a test's).
    fn open_via(
        &mut self,
        path: &Path,
        open: impl Fn(&Path, bool) -> std::io::Result<File>,
    ) -> Result<()> {
        let f = if self.direct {
            match open(path, true) {
                Ok(f) => {
                    // Direct writes over cached pages make the kernel invalidate
                    // them on every write (see files::drop_cached_pages).
                    crate::wal::files::drop_cached_pages(&f);
                    f
                }
                // The filesystem does not support O_DIRECT (tmpfs, some FUSE and
                // network filesystems): the page cache gives the same guarantees
                // with fdatasync, only a copy slower.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(path = %path.display(), "O_DIRECT not supported here, std backend writes through the page cache");
                    self.direct = false;
                    open(path, false).map_err(|e| Error::io("open", path, e))?
                }
                Err(e) => return Err(Error::io("open O_DIRECT", path, e)),
            }
        } else {
            open(path, false).map_err(|e| Error::io("open", path, e))?
        };
        self.file = Some((f, path.to_path_buf()));
        Ok(())
    }
}

impl Backend for StdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Std
    }

    fn open(&mut self, path: &Path) -> Result<()> {
        self.open_via(path, open_rw)
    }

    fn submit(&mut self, token: u64, op: Op<'_>) -> Result<()> {
        let (file, path) = self.file.as_ref().ok_or(Error::Closed)?;
        let result = match op {
            Op::Write {
                buf,
                len,
                offset,
                sync,
            } => file
                .write_all_at(&buf.as_slice()[..len], offset)
                .map_err(|e| Error::io("pwrite", path, e))
                .and_then(|()| {
                    if sync {
                        data_sync(file).map_err(|e| Error::io("fdatasync", path, e))
                    } else {
                        Ok(())
                    }
                }),
            Op::Sync => data_sync(file).map_err(|e| Error::io("fdatasync", path, e)),
        };
        self.done.push(Done { token, result });
        Ok(())
    }

    fn reap(&mut self, _wait: bool, out: &mut Vec<Done>) -> Result<()> {
        out.append(&mut self.done);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn direct_io(&self) -> bool {
        self.direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_refusing_o_direct_gets_page_cache_writes_and_other_errors_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 8192]).unwrap();
        let refusing = |p: &Path, direct: bool| {
            if direct {
                Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                open_rw(p, false)
            }
        };
        let mut b = StdBackend::new(true);
        b.open_via(&path, refusing).unwrap();
        assert!(!b.direct_io(), "fell back to the page cache");
        let mut buf = crate::wal::buffer::AlignedBuf::new(4096);
        buf.as_mut_slice()[..3].copy_from_slice(b"abc");
        b.submit(
            7,
            Op::Write {
                buf: &buf,
                len: 4096,
                offset: 4096,
                sync: true,
            },
        )
        .unwrap();
        let mut out = Vec::new();
        b.reap(true, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].token, 7);
        assert!(out[0].result.is_ok());
        assert_eq!(&std::fs::read(&path).unwrap()[4096..4099], b"abc");

        // Any other error is the caller's to see, naming the operation and path.
        let denied = |_: &Path, _: bool| -> std::io::Result<File> {
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        };
        let mut b = StdBackend::new(true);
        let err = b.open_via(&path, denied).unwrap_err().to_string();
        assert!(err.contains("open O_DIRECT") && err.contains("/f"), "{err}");
    }
}
