//! Portable backend: `pwrite` + `fdatasync` (`F_FULLFSYNC` on macOS), synchronous.
//! The commit thread batches exactly as with io_uring, so the files are byte-identical.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
};

use super::{Backend, Done, Op};
use crate::error::{Error, Result};
use crate::wal::config::BackendKind;

pub(crate) struct StdBackend {
    file: Option<(File, PathBuf)>,
    done: Vec<Done>,
}

impl StdBackend {
    pub(crate) fn new() -> Self {
        StdBackend {
            file: None,
            done: Vec::new(),
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

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

impl Backend for StdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Std
    }

    fn open(&mut self, path: &Path) -> Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        self.file = Some((f, path.to_path_buf()));
        Ok(())
    }

    fn submit(&mut self, token: u64, op: Op<'_>) -> Result<()> {
        let (file, path) = self.file.as_ref().ok_or(Error::Closed)?;
        let result = match op {
            Op::Write {
                buf,
                len,
                offset,
                sync,
            } => write_all_at(file, &buf.as_slice()[..len], offset)
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
}
