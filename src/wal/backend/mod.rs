//! The I/O backends the commit thread drives. All writes to WAL data files go
//! through [`Backend`]; nothing else in `wal/` writes WAL data.

use std::path::Path;

use super::buffer::AlignedBuf;
use super::config::BackendKind;
use crate::error::Result;

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

    /// Whether the active file is written with `O_DIRECT`.
    fn direct_io(&self) -> bool {
        false
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
}

/// Opens the WAL file `path` for reading and writing, with `O_DIRECT` when `direct`
/// (Linux; elsewhere `direct` is ignored). Files are close-on-exec, as std opens them.
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

/// Builds the backend for `kind`, opening `path` as the active file. `Auto` tries
/// io_uring with O_DIRECT and falls back to std with one log line. `kind` is the
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
                    Ok(b) => return Ok(Box::new(b)),
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
