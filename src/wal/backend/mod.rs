//! The I/O backends the commit thread drives. All writes to WAL data files go
//! through [`Backend`]; nothing else in `wal/` writes WAL data.

use std::path::Path;

use super::buffer::AlignedBuf;
use super::config::BackendKind;
use super::format::BLOCK_SIZE;
use crate::error::{Error, Result};

#[cfg(all(unix, any(test, feature = "sim")))]
pub mod sim;
pub(crate) mod std_backend;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

/// One submitted operation.
pub(crate) enum Op<'a> {
    /// Write `buf[..len]` at `offset`; when `sync`, the write's own bytes are durable
    /// when it completes (an `RWF_DSYNC` write, or an fdatasync that starts after
    /// the write). It promises nothing about other writes: use [`Op::Sync`] for that.
    Write {
        /// Read by the io_uring backend only; `std` looks buffers up when it reaps.
        #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
        buf: &'a AlignedBuf,
        len: usize,
        offset: u64,
        sync: bool,
    },
    /// fdatasync the active file; covers every write that completed before it was
    /// submitted (later writes may proceed concurrently).
    Sync,
}

/// Finds the buffer of a submitted write by its token, for a backend that performs
/// writes only when they are reaped ([`Backend::writes_at_reap`]). `None`: the
/// write is not to be performed (the WAL failed); it completes with an error.
pub(crate) type BufLookup<'a> = &'a dyn Fn(u64) -> Option<&'a AlignedBuf>;

/// A finished operation.
pub(crate) struct Done {
    pub token: u64,
    pub result: Result<()>,
}

/// Asynchronous-submission interface over the active WAL file.
///
/// Operations may complete in any order; the commit thread acknowledges in order.
pub(crate) trait Backend: Send {
    /// The backend actually in use (`Uring` or `Std`).
    fn kind(&self) -> BackendKind;

    /// Makes `path` the active file for later operations. Only called with nothing in flight.
    fn open(&mut self, path: &Path) -> Result<()>;

    /// The active file was renamed to `path` (it stays open, the same file):
    /// errors name it so from now on. Needs no file descriptor.
    fn renamed(&mut self, path: &Path);

    /// Submits an operation identified by `token`.
    ///
    /// The caller keeps the buffer of a `Write` alive and unmodified until the
    /// operation's [`Done`] has been reaped.
    fn submit(&mut self, token: u64, op: Op<'_>) -> Result<()>;

    /// Moves finished operations into `out`. When `wait` and something is in flight,
    /// blocks until at least one finished. A backend whose writes run at reap
    /// ([`Backend::writes_at_reap`]) runs them here, when `wait`, finding their
    /// buffers with `bufs`.
    fn reap(&mut self, wait: bool, out: &mut Vec<Done>, bufs: BufLookup<'_>) -> Result<()>;

    /// Whether submitted operations only start when [`Backend::reap`] waits (the
    /// synchronous `std` backend: it then writes everything submitted with one
    /// `pwritev` and one fdatasync). A batch is then better submitted at once
    /// than kept collecting: nothing it could wait for is at the device yet.
    fn writes_at_reap(&self) -> bool {
        false
    }

    /// Asks for the durable writes submitted from now on to be written as a group
    /// at the commit thread's next wait (one `pwritev` and one fdatasync on the
    /// commit thread, as `std` writes everything) rather than each started on its
    /// own as soon as it is submitted; [`Backend::writes_at_reap`] then says true.
    /// Called before each durable write. The `uring` backend honours it for
    /// `O_DIRECT` files, starting a group only with nothing in the ring; others
    /// ignore it.
    fn prefer_group_writes(&mut self, _on: bool) {}

    /// Durable writes and syncs, counted as one flush each when submitted, that
    /// shared a flush with another operation since the last call (std: one
    /// fdatasync per group). The WAL's `fsyncs` counter subtracts them.
    fn take_shared_flushes(&mut self) -> u64 {
        0
    }

    /// Operations submitted but not reaped.
    fn in_flight(&self) -> usize;

    /// The WAL has failed: an operation not yet handed to the kernel never
    /// is (its batch is answered with the failure and must not land on disk),
    /// and completes with an error at the next [`Backend::reap`]; nothing
    /// submitted later runs. Operations the kernel already has still complete
    /// and are reaped as before. (`std` and the simulated disk run nothing
    /// before a reap, which a failed WAL offers no buffers to.)
    fn stop_submitting(&mut self) {}

    /// Whether the active file is written with `O_DIRECT`.
    fn direct_io(&self) -> bool {
        false
    }

    /// Whether the file system's view of the active file is what the syncs make
    /// durable, so that it can be asked after a sync whether the bytes it
    /// covered are mapped to written blocks (`journal::check_written_range`).
    /// False for the simulated disk, which models durability itself and never
    /// syncs the real file.
    fn syncs_the_real_file(&self) -> bool {
        true
    }

    /// Whether several durable writes and syncs may be in flight side by side:
    /// each reports its own write and flush errors (`O_DIRECT` writes with
    /// `RWF_DSYNC`). Not so through the page cache, where an fsync reports a
    /// failed writeback of any of the file's pages, and to one fsync only
    /// (`Committer::syncs_must_not_overlap`).
    fn syncs_may_overlap(&self) -> bool {
        self.direct_io()
    }

    /// Registers the commit thread's buffer pool with the kernel, where supported.
    /// The buffers must outlive the backend.
    fn register_buffers(&mut self, _bufs: &mut [AlignedBuf]) -> Result<()> {
        Ok(())
    }

    /// Keeps `lock` (the WAL directory's lock file, see
    /// [`crate::wal::files::DirLock`]) referenced for as long as operations
    /// this backend submitted may still complete, even after the process
    /// died. Backends whose operations end with the calling thread need
    /// nothing.
    ///
    /// # Errors
    /// I/O errors of the registration.
    fn hold_lock(&mut self, _lock: &std::fs::File) -> Result<()> {
        Ok(())
    }
}

/// Opens the WAL file `path` for reading and writing, with `O_DIRECT` when `direct`
/// (Linux; elsewhere `direct` is ignored). Files are close-on-exec, as std opens them.
/// Backends open their active file with [`open_active`], which checks that the
/// `O_DIRECT` is real.
pub(crate) fn open_rw(path: &Path, direct: bool) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true);
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_DIRECT);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = direct;
    opts.open(path)
}

/// Why a WAL file asked to be written with `O_DIRECT` is written through the page
/// cache instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoDirectIo {
    /// `open(O_DIRECT)` failed with `EINVAL`: the filesystem does not support it
    /// (some FUSE and network filesystems, tmpfs before Linux 6.6).
    Refused,
    /// The open succeeded, but the kernel reports (`statx` `STATX_DIOALIGN`, an
    /// alignment of 0) that direct I/O is not supported for this file. ext4 then
    /// performs `O_DIRECT` reads and writes as buffered ones: mounted
    /// `data=journal` (or the file flagged for data journaling), fscrypt without
    /// inline encryption, fs-verity.
    Unsupported,
    /// Direct I/O needs a larger alignment than the WAL's blocks
    /// ([`BLOCK_SIZE`]): every `O_DIRECT` write would fail with `EINVAL`.
    Alignment {
        /// Required alignment of buffers in memory, in bytes.
        mem: u32,
        /// Required alignment of file offsets and lengths, in bytes.
        offset: u32,
    },
}

impl std::fmt::Display for NoDirectIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoDirectIo::Refused => f.write_str("the filesystem refuses O_DIRECT (EINVAL)"),
            NoDirectIo::Unsupported => f.write_str(
                "the kernel reports no direct I/O for this file (statx STATX_DIOALIGN \
                 alignment 0: e.g. ext4 data=journal, fscrypt, fs-verity); O_DIRECT \
                 would be buffered silently",
            ),
            NoDirectIo::Alignment { mem, offset } => write!(
                f,
                "direct I/O needs {offset}-byte aligned offsets and {mem}-byte aligned \
                 buffers, more than the WAL's {BLOCK_SIZE}-byte blocks"
            ),
        }
    }
}

/// The direct I/O alignment of an open file, in bytes, as `statx` reports it
/// (`stx_dio_mem_align`, `stx_dio_offset_align`); 0 means no direct I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DioAlign {
    pub mem: u32,
    pub offset: u32,
}

/// Whether a file whose direct I/O alignment is `align` takes the WAL's
/// `O_DIRECT` writes (block-sized and block-aligned, in memory and in the file).
/// `None`, alignment not reported (Linux before 6.1, filesystems that do not
/// tell, `statx` refused): it is assumed to, as `open(O_DIRECT)` succeeded.
pub(crate) fn direct_io_verdict(align: Option<DioAlign>) -> std::result::Result<(), NoDirectIo> {
    let Some(DioAlign { mem, offset }) = align else {
        return Ok(());
    };
    if mem == 0 || offset == 0 {
        return Err(NoDirectIo::Unsupported);
    }
    let block = u32::try_from(BLOCK_SIZE).unwrap_or(u32::MAX);
    // Alignments are powers of two: one no larger than a block divides it.
    if mem > block || offset > block {
        return Err(NoDirectIo::Alignment { mem, offset });
    }
    Ok(())
}

/// The direct I/O alignment `statx` reports for `f`, or `None` when it reports
/// none (see [`direct_io_verdict`]).
#[cfg(target_os = "linux")]
pub(crate) fn dio_align(f: &std::fs::File) -> Option<DioAlign> {
    crate::wal::journal::statx_of(f, libc::STATX_DIOALIGN).map(|st| DioAlign {
        mem: st.stx_dio_mem_align,
        offset: st.stx_dio_offset_align,
    })
}

/// Elsewhere `O_DIRECT` is never asked for.
#[cfg(not(target_os = "linux"))]
pub(crate) fn dio_align(_f: &std::fs::File) -> Option<DioAlign> {
    None
}

/// Opens the WAL file `path` as a backend's active file, with `O_DIRECT` when
/// `direct` and the file really gets direct I/O; returns the file and whether it
/// is written with `O_DIRECT`. Where it would not be (see [`NoDirectIo`]), the file
/// is opened for the page cache instead, with one warning naming it and the
/// reason, and the caller opens later files so too. Backends rely on `O_DIRECT`
/// meaning what it says: several durable `O_DIRECT` writes may be in flight at
/// once, each reporting its own errors ([`Backend::syncs_may_overlap`]), which
/// writes that secretly go through the page cache do not.
#[cfg_attr(
    not(target_os = "linux"),
    expect(dead_code, reason = "used by the io_uring backend (Linux)")
)]
pub(crate) fn open_active(path: &Path, direct: bool) -> Result<(std::fs::File, bool)> {
    open_active_via(path, direct, open_rw)
}

/// [`open_active`] with `open` in place of [`open_rw`] (a test's).
pub(crate) fn open_active_via(
    path: &Path,
    direct: bool,
    open: impl Fn(&Path, bool) -> std::io::Result<std::fs::File>,
) -> Result<(std::fs::File, bool)> {
    let page_cache = || open(path, false).map_err(|e| Error::io("open", path, e));
    if !direct {
        return Ok((page_cache()?, false));
    }
    let reason = match open(path, true) {
        Ok(f) => match direct_io_verdict(dio_align(&f)) {
            Ok(()) => {
                // Direct writes over cached pages make the kernel invalidate them
                // on every write (see files::drop_cached_pages).
                crate::wal::files::drop_cached_pages(&f);
                return Ok((f, true));
            }
            Err(reason) => reason,
        },
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => NoDirectIo::Refused,
        Err(e) => return Err(Error::io("open O_DIRECT", path, e)),
    };
    // The page cache gives the same guarantees with fdatasync, only a copy
    // slower, as long as durable writes do not overlap: the commit thread sees
    // to that for files that are not O_DIRECT (Committer::syncs_must_not_overlap).
    tracing::warn!(
        path = %path.display(), %reason,
        "no direct I/O for the WAL file, writing it through the page cache"
    );
    Ok((page_cache()?, false))
}

/// Builds the backend for `kind`, opening `path` as the active file. `Auto` tries
/// io_uring and falls back to std with one log line when the ring cannot be set
/// up, or when `direct` and the file gets no direct I/O ([`open_active`]). `kind` is the
/// resolved one ([`super::config::WalConfig::resolved_backend`]): the environment
/// is not read here.
pub(crate) fn create(
    kind: BackendKind,
    path: &Path,
    ring_entries: u32,
    direct: bool,
) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Std => {
            let mut b = std_backend::StdBackend::new(direct);
            b.open(path)?;
            Ok(Box::new(b))
        }
        #[cfg(target_os = "linux")]
        BackendKind::Uring => {
            let mut b = uring::UringBackend::new(ring_entries, direct)?;
            b.open(path)?;
            Ok(Box::new(b))
        }
        #[cfg(not(target_os = "linux"))]
        BackendKind::Uring => Err(crate::error::Error::InvalidConfig {
            field: "--wal-backend",
            value: "uring".into(),
            reason: "io_uring is only available on Linux; use auto or std".into(),
        }),
        BackendKind::Auto => {
            #[cfg(target_os = "linux")]
            {
                let attempt = uring::UringBackend::new(ring_entries, direct).and_then(|mut b| {
                    b.open(path)?;
                    Ok(b)
                });
                match attempt {
                    Ok(b) if b.direct_io() || !direct => return Ok(Box::new(b)),
                    // The file gets no direct I/O (its open warned why): std
                    // writes through the page cache, as it does everywhere.
                    Ok(b) => {
                        drop(b);
                        tracing::warn!(path = %path.display(), "io_uring backend without direct I/O, falling back to std");
                        let mut b = std_backend::StdBackend::new(false);
                        b.open(path)?;
                        return Ok(Box::new(b));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring backend unavailable, falling back to std")
                    }
                }
            }
            let _ = ring_entries;
            let mut b = std_backend::StdBackend::new(direct);
            b.open(path)?;
            Ok(Box::new(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{direct_io_verdict, DioAlign, NoDirectIo};

    /// Direct I/O is kept unless the kernel says it would not be direct, or would
    /// refuse the WAL's block-aligned writes.
    #[test]
    fn direct_io_is_kept_only_where_the_reported_alignment_allows_it() {
        let align = |mem, offset| Some(DioAlign { mem, offset });
        // Not reported (Linux before 6.1, a filesystem that does not tell).
        assert_eq!(direct_io_verdict(None), Ok(()));
        // Reported as supported, at any alignment the WAL's blocks satisfy.
        for (mem, offset) in [(1, 1), (4, 512), (512, 512), (512, 4096), (4096, 4096)] {
            assert_eq!(
                direct_io_verdict(align(mem, offset)),
                Ok(()),
                "{mem}/{offset}"
            );
        }
        // Reported as unsupported: O_DIRECT would be buffered silently.
        for (mem, offset) in [(0, 0), (0, 512), (512, 0)] {
            assert_eq!(
                direct_io_verdict(align(mem, offset)),
                Err(NoDirectIo::Unsupported),
                "{mem}/{offset}"
            );
        }
        // More alignment than a WAL block: every write would fail with EINVAL.
        for (mem, offset) in [(512, 8192), (8192, 512), (16384, 16384)] {
            let verdict = direct_io_verdict(align(mem, offset));
            assert_eq!(verdict, Err(NoDirectIo::Alignment { mem, offset }));
            let why = verdict.unwrap_err().to_string();
            assert!(
                why.contains(&format!("{offset}-byte aligned offsets"))
                    && why.contains(&format!("{mem}-byte aligned buffers"))
                    && why.contains("4096"),
                "{why}"
            );
        }
    }
}
