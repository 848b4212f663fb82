//! Portable backend: `pwritev` + `fdatasync` (`F_FULLFSYNC` on macOS), synchronous.
//! The commit thread batches exactly as with io_uring, so for the same batches the
//! files are byte-identical but for clock readings (entry timestamps, the header's
//! creation time) and the checksums over them
//! (`wal_files::every_backend_and_write_path_writes_the_same_bytes`).
//! On Linux it writes with `O_DIRECT` when asked to (see `WalConfig::direct_io`) and
//! falls back to the page cache, with one warning, where a file gets no direct I/O
//! (the filesystem refuses `O_DIRECT`, or accepts it but buffers: [`super::open_active`]).
//!
//! Operations are queued when submitted and run when the commit thread waits for
//! them ([`Backend::writes_at_reap`]): every batch submitted since the last wait
//! goes out in one `pwritev` (per contiguous run) followed by at most one
//! fdatasync. With many appends outstanding a batch fills (`max_batch_bytes`) long
//! before the previous write returns; io_uring keeps several such batches in
//! flight, and this backend, which runs one system call at a time, writes and
//! flushes them together instead of one by one.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use super::{open_rw, Backend, BufLookup, Done, Op};
use crate::error::{Error, Result};
use crate::file_at::FileAt;
use crate::wal::config::BackendKind;

pub(crate) struct StdBackend {
    file: Option<(File, PathBuf)>,
    /// Submitted, not yet run.
    group: WriteGroup,
    /// Open files with `O_DIRECT` (Linux only; cleared when a file gets no direct
    /// I/O, see [`super::open_active`]).
    direct: bool,
}

/// Operations queued to run together at the commit thread's next wait: the
/// writes with one `pwritev` per contiguous run, then at most one fdatasync.
/// The `std` backend runs everything this way; the `uring` backend runs durable
/// writes this way when asked to ([`Backend::prefer_group_writes`]).
#[derive(Default)]
pub(crate) struct WriteGroup {
    queue: Vec<Queued>,
    done: Vec<Done>,
    /// See [`Backend::take_shared_flushes`].
    shared_flushes: u64,
}

#[derive(Clone, Copy)]
enum Queued {
    Write {
        token: u64,
        len: usize,
        offset: u64,
        sync: bool,
    },
    Sync {
        token: u64,
    },
}

impl Queued {
    fn token(self) -> u64 {
        match self {
            Queued::Write { token, .. } | Queued::Sync { token } => token,
        }
    }
}

/// Writes the queued writes in order, each run of contiguous ones with one
/// `pwritev`. A write whose buffer `bufs` does not offer is not performed, nor is
/// anything after it.
fn write_queued(file: &File, queue: &[Queued], bufs: BufLookup<'_>) -> io::Result<()> {
    let slice = |q: &Queued| -> io::Result<&[u8]> {
        match *q {
            Queued::Write { token, len, .. } => bufs(token)
                .map(|b| &b.as_slice()[..len])
                .ok_or_else(|| io::Error::other("not performed: the WAL failed first")),
            Queued::Sync { .. } => Ok(&[]),
        }
    };
    let mut i = 0;
    while i < queue.len() {
        let Queued::Write { offset: start, .. } = queue[i] else {
            i += 1;
            continue;
        };
        // The run: writes that continue where the previous one ended (syncs in
        // between change nothing: the one flush comes after every write).
        let (mut end, mut last, mut count) = (start, i, 0);
        for (k, q) in queue.iter().enumerate().skip(i) {
            match *q {
                Queued::Sync { .. } => {}
                Queued::Write { offset, len, .. } if offset == end => {
                    end += len as u64;
                    last = k;
                    count += 1;
                }
                Queued::Write { .. } => break,
            }
        }
        if count == 1 {
            file.write_all_at(slice(&queue[i])?, start)?;
        } else {
            let run = queue[i..=last]
                .iter()
                .filter(|q| matches!(q, Queued::Write { .. }))
                .map(slice)
                .collect::<io::Result<Vec<_>>>()?;
            file.write_all_vectored_at(&run, start)?;
        }
        i = last + 1;
    }
    Ok(())
}

/// The same OS error again, for every operation of a group that one error failed.
fn same_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl StdBackend {
    pub(crate) fn new(direct: bool) -> Self {
        StdBackend {
            file: None,
            group: WriteGroup::default(),
            direct: direct && cfg!(target_os = "linux"),
        }
    }
}

/// fdatasync, or its strongest equivalent on the platform.
pub(crate) fn data_sync(file: &File) -> io::Result<()> {
    #[cfg(target_os = "macos")]
    return full_fsync(file);
    #[cfg(not(target_os = "macos"))]
    file.sync_data()
}

/// fsync, or its strongest equivalent on the platform.
pub(crate) fn file_sync(file: &File) -> io::Result<()> {
    #[cfg(target_os = "macos")]
    return full_fsync(file);
    #[cfg(not(target_os = "macos"))]
    file.sync_all()
}

/// `F_FULLFSYNC` (macOS's `fsync` does not flush the drive's cache), or `fsync`
/// where the volume does not support it (SMB, macFUSE, some external drives:
/// std's syncs, which take `F_FULLFSYNC` alone, fail on them every time), with
/// one warning.
#[cfg(target_os = "macos")]
fn full_fsync(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let fd = file.as_raw_fd();
    let retry = |call: &dyn Fn() -> libc::c_int| loop {
        if call() != -1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    #[expect(unsafe_code, reason = "F_FULLFSYNC has no std wrapper")]
    // SAFETY: fcntl(F_FULLFSYNC) takes no pointer argument; `fd` is owned by
    // `file`, borrowed for the call.
    let full = retry(&|| unsafe { libc::fcntl(fd, libc::F_FULLFSYNC) });
    let Err(e) = full else {
        return Ok(());
    };
    if !matches!(
        e.raw_os_error(),
        Some(libc::ENOTSUP | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY)
    ) {
        return Err(e);
    }
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            error = %e,
            "the file system does not support F_FULLFSYNC: syncing with fsync, \
             which may leave writes in the drive's cache"
        );
    }
    #[expect(
        unsafe_code,
        reason = "the fallback of F_FULLFSYNC, which std cannot call"
    )]
    // SAFETY: fsync takes no pointer argument; `fd` is owned by `file`,
    // borrowed for the call.
    retry(&|| unsafe { libc::fsync(fd) })
}

impl WriteGroup {
    /// Queues `op` under `token`.
    pub(crate) fn push(&mut self, token: u64, op: &Op<'_>) {
        self.queue.push(match *op {
            Op::Write {
                len, offset, sync, ..
            } => Queued::Write {
                token,
                len,
                offset,
                sync,
            },
            Op::Sync => Queued::Sync { token },
        });
    }

    /// Whether nothing is queued to run.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Operations queued or run but not yet handed out by [`WriteGroup::take_done`].
    pub(crate) fn len(&self) -> usize {
        self.queue.len() + self.done.len()
    }

    /// Moves the operations run so far into `out`; returns how many.
    pub(crate) fn take_done(&mut self, out: &mut Vec<Done>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    /// See [`Backend::take_shared_flushes`].
    pub(crate) fn take_shared_flushes(&mut self) -> u64 {
        std::mem::take(&mut self.shared_flushes)
    }

    /// Runs every queued operation on `file`, in order: the writes (one `pwritev`
    /// per run of contiguous writes), then one fdatasync if any of them is durable
    /// or a sync was asked for. Every operation of the group completes with the
    /// group's outcome: a write or a flush that failed fails them all, so nothing
    /// is reported done that an error may have left undone.
    pub(crate) fn run(&mut self, file: Option<&(File, PathBuf)>, bufs: BufLookup<'_>) {
        let mut queue = std::mem::take(&mut self.queue);
        let failure = match file {
            None => Some(Error::Closed),
            Some((file, path)) => {
                let flushes = queue
                    .iter()
                    .filter(|q| matches!(q, Queued::Sync { .. } | Queued::Write { sync: true, .. }))
                    .count() as u64;
                let needs_sync = flushes > 0;
                self.shared_flushes += flushes.saturating_sub(1);
                let written = write_queued(file, &queue, bufs).map_err(|e| ("pwritev", e));
                let synced = written.and_then(|()| {
                    if needs_sync {
                        data_sync(file).map_err(|e| ("fdatasync", e))
                    } else {
                        Ok(())
                    }
                });
                synced.err().map(|(op, e)| Error::io(op, path, e))
            }
        };
        self.done.extend(queue.iter().map(|q| Done {
            token: q.token(),
            result: match &failure {
                None => Ok(()),
                Some(Error::Io { op, path, source }) => {
                    Err(Error::io(op, path.clone(), same_error(source)))
                }
                Some(_) => Err(Error::Closed),
            },
        }));
        // Keep the allocation for the next group.
        queue.clear();
        self.queue = queue;
    }
}

impl StdBackend {
    /// Opens `path` as the active file with `open` (the real one, or a test's).
    fn open_via(
        &mut self,
        path: &Path,
        open: impl Fn(&Path, bool) -> std::io::Result<File>,
    ) -> Result<()> {
        let (f, direct) = super::open_active_via(path, self.direct, open)?;
        self.direct = direct;
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

    fn renamed(&mut self, path: &Path) {
        if let Some((_, p)) = &mut self.file {
            *p = path.to_path_buf();
        }
    }

    fn submit(&mut self, token: u64, op: Op<'_>) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::Closed);
        }
        self.group.push(token, &op);
        Ok(())
    }

    fn reap(&mut self, wait: bool, out: &mut Vec<Done>, bufs: BufLookup<'_>) -> Result<()> {
        if wait && !self.group.is_empty() {
            self.group.run(self.file.as_ref(), bufs);
        }
        self.group.take_done(out);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.group.len()
    }

    fn writes_at_reap(&self) -> bool {
        true
    }

    fn take_shared_flushes(&mut self) -> u64 {
        self.group.take_shared_flushes()
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
        b.reap(true, &mut out, &|t| (t == 7).then_some(&buf))
            .unwrap();
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

    use crate::wal::buffer::AlignedBuf;

    fn filled(byte: u8) -> AlignedBuf {
        let mut b = AlignedBuf::new(8192);
        b.as_mut_slice().fill(byte);
        b
    }

    fn write(token: u64, buf: &AlignedBuf, len: usize, offset: u64, sync: bool) -> (u64, Op<'_>) {
        (
            token,
            Op::Write {
                buf,
                len,
                offset,
                sync,
            },
        )
    }

    /// Submitted operations wait for a reap that waits; then every write lands
    /// (contiguous ones in one `pwritev`, a gap starting another), one flush
    /// covers the group, and every operation completes, in submission order.
    #[test]
    fn queued_writes_run_together_when_reaped_with_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
        let mut b = StdBackend::new(false);
        b.open(&path).unwrap();
        let (x, y, z) = (filled(b'x'), filled(b'y'), filled(b'z'));
        let ops = [
            write(1, &x, 4096, 0, true),
            write(2, &y, 8192, 4096, true),
            (3, Op::Sync),
            // Not contiguous with the run before: a second pwritev.
            write(4, &z, 4096, 32768, false),
        ];
        for (t, op) in ops {
            b.submit(t, op).unwrap();
        }
        let bufs = |t: u64| match t {
            1 => Some(&x),
            2 => Some(&y),
            4 => Some(&z),
            _ => None,
        };
        let mut out = Vec::new();
        b.reap(false, &mut out, &bufs).unwrap();
        assert!(out.is_empty(), "nothing runs before a waiting reap");
        assert_eq!(b.in_flight(), 4);
        assert!(std::fs::read(&path).unwrap().iter().all(|&c| c == 0));

        b.reap(true, &mut out, &bufs).unwrap();
        let tokens: Vec<u64> = out.iter().map(|d| d.token).collect();
        assert_eq!(tokens, [1, 2, 3, 4]);
        assert!(out.iter().all(|d| d.result.is_ok()));
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.take_shared_flushes(), 2, "three flushes asked, one made");
        assert_eq!(b.take_shared_flushes(), 0);
        let data = std::fs::read(&path).unwrap();
        assert!(data[..4096].iter().all(|&c| c == b'x'));
        assert!(data[4096..12288].iter().all(|&c| c == b'y'));
        assert!(data[12288..32768].iter().all(|&c| c == 0));
        assert!(data[32768..36864].iter().all(|&c| c == b'z'));
        assert!(data[36864..].iter().all(|&c| c == 0));
    }

    /// A write whose buffer is no longer offered (the WAL failed) is not
    /// performed, and nothing queued with it is reported done.
    #[test]
    fn writes_without_their_buffer_are_not_performed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 16384]).unwrap();
        let mut b = StdBackend::new(false);
        b.open(&path).unwrap();
        let x = filled(b'x');
        for (t, op) in [write(1, &x, 4096, 0, true), (2, Op::Sync)] {
            b.submit(t, op).unwrap();
        }
        let mut out = Vec::new();
        b.reap(true, &mut out, &|_| None).unwrap();
        assert_eq!(out.len(), 2);
        for d in &out {
            let e = d.result.as_ref().unwrap_err().to_string();
            assert!(e.contains("pwritev") && e.contains("not performed"), "{e}");
        }
        assert!(std::fs::read(&path).unwrap().iter().all(|&c| c == 0));
    }

    /// A write the OS refuses fails every operation of its group with the OS
    /// error, naming the operation and the file; no flush is reported done.
    #[test]
    fn a_failed_write_fails_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 16384]).unwrap();
        let read_only = |p: &Path, _: bool| std::fs::File::open(p);
        let mut b = StdBackend::new(false);
        b.open_via(&path, read_only).unwrap();
        let x = filled(b'x');
        for (t, op) in [(1, Op::Sync), write(2, &x, 4096, 0, true), (3, Op::Sync)] {
            b.submit(t, op).unwrap();
        }
        let mut out = Vec::new();
        b.reap(true, &mut out, &|t| (t == 2).then_some(&x)).unwrap();
        assert_eq!(out.iter().map(|d| d.token).collect::<Vec<_>>(), [1, 2, 3]);
        for d in &out {
            let e = d.result.as_ref().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("pwritev") && msg.contains("/f"), "{msg}");
            assert!(
                matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EBADF)),
                "{msg}"
            );
        }
    }
}
