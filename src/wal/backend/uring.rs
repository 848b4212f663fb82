//! io_uring backend (Linux): the active file is opened `O_DIRECT` (unless configured
//! for page-cache writes, see `WalConfig::direct_io`, or the file gets no direct
//! I/O, see [`super::open_active`]) and registered with
//! the ring, the commit thread's buffers are registered, and a write with `sync` is
//! submitted as `WRITE_FIXED` linked (`IOSQE_IO_LINK`) to an `FSYNC` with
//! `IORING_FSYNC_DATASYNC`, so one `io_uring_enter` carries a whole batch.
#![expect(
    unsafe_code,
    reason = "io_uring submission hands buffer pointers to the kernel"
)]

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use io_uring::{opcode, squeue, types, IoUring};

use super::{std_backend::WriteGroup, Backend, BufLookup, Done, Op};
use crate::error::{Error, Result};
use crate::wal::{buffer::AlignedBuf, config::BackendKind};

/// user_data layout: token << 1 | 1 for the fsync of an operation, | 0 for its write.
const FSYNC_BIT: u64 = 1;

struct Pending {
    /// Remaining write: pointer, length, file offset, registered buffer index.
    ptr: *const u8,
    len: usize,
    offset: u64,
    buf_index: Option<u16>,
    /// A write followed by a linked fsync (or a lone fsync when `len == 0`).
    sync: bool,
    /// CQEs still expected for the current submission round.
    outstanding: u8,
    /// A short write broke the link: resubmit the remainder (and fsync) when the
    /// round's CQEs are all in (the linked fsync arrives as -ECANCELED).
    resubmit: bool,
    /// Rounds the kernel cancelled without running them (see [`CANCEL_RETRIES`]).
    cancelled: u8,
    error: Option<Error>,
}

/// How many times an operation the kernel cancelled on its own is submitted again
/// before the cancellation is reported as its error. The WAL never cancels an
/// operation; the kernel cancels one it queued for an io-wq worker when it could
/// not start a worker for it, which a signal arriving at the submitting thread at
/// that moment causes. Such an operation never ran, so submitting it again is no
/// retry of a failed write or fsync (both are idempotent besides).
const CANCEL_RETRIES: u8 = 16;

// SAFETY: the raw pointer refers to a buffer owned by the commit thread, which also
// owns this backend; it is only ever dereferenced by the kernel.
unsafe impl Send for Pending {}

pub(crate) struct UringBackend {
    ring: IoUring,
    file: Option<(File, PathBuf)>,
    pending: HashMap<u64, Pending>,
    /// The user_data of each entry queued in the submission ring and not yet
    /// taken by the kernel, oldest first (the kernel takes them in order).
    queued: VecDeque<u64>,
    /// Set once an `io_uring_enter` that submits failed, or the commit thread
    /// failed the WAL ([`Backend::stop_submitting`]): from then on no entry
    /// reaches the kernel, and only completions are waited for.
    stopped: bool,
    /// Open files with O_DIRECT (cleared when a file gets no direct I/O, see
    /// [`super::open_active`]).
    direct: bool,
    /// A write with `sync` is one `RWF_DSYNC` write rather than a write linked to an
    /// fsync (O_DIRECT files only).
    dsync: bool,
    /// Page-cache writes without `sync` done inline (see `submit`), reported by the next `reap`.
    inline_done: Vec<Done>,
    /// Completions copied out of the ring by `reap`, kept to reuse its allocation.
    cqes: Vec<(u64, i32)>,
    /// Durable writes queued to be written together at the next wait, on the
    /// commit thread ([`Backend::prefer_group_writes`]).
    group: WriteGroup,
    /// Whether a durable write submitted with nothing in the ring starts a group.
    group_writes: bool,
    /// CQEs (by user_data) whose result a test replaces with -ECANCELED, as if
    /// the kernel had cancelled the operation.
    #[cfg(test)]
    cancel_next: std::collections::HashSet<u64>,
    /// While set, `push` refuses every entry, as it does when the kernel accepts
    /// none from a full submission queue.
    #[cfg(test)]
    refuse_pushes: bool,
    /// Refusals of `io_uring_enter`, shared with a test (see [`EnterHooks`]).
    #[cfg(test)]
    hooks: std::sync::Arc<EnterHooks>,
    /// Makes the next `io_uring_enter` hand the kernel at most this many of
    /// the queued entries, as when it runs short of memory part way.
    /// Completions `reap` took from the ring and has not yet accounted for in
    /// `pending` (their operations' `outstanding`).
    unprocessed: usize,
    #[cfg(test)]
    submit_at_most: Option<u32>,
    /// How many completions `enter` waited for after each partial submission.
    #[cfg(test)]
    waited_after_partial: Vec<usize>,
}

/// `io_uring_enter`'s flag to wait for completions (linux/io_uring.h).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// How long `enter` keeps retrying an `io_uring_enter` the kernel refused for
/// want of memory or resources (EAGAIN, ENOMEM) before it fails the WAL.
const ENTER_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Test hooks a test shares with a backend that a commit thread owns.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct EnterHooks {
    /// How many `io_uring_enter` calls that submit fail with `errno` before
    /// the kernel is called, as when it runs short of memory (EAGAIN).
    pub refusals: std::sync::atomic::AtomicU32,
    pub errno: std::sync::atomic::AtomicI32,
    /// Replaces [`ENTER_RETRY_FOR`] when not zero, in milliseconds.
    pub retry_for_ms: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl EnterHooks {
    /// Makes the next `n` submitting enters fail with `errno`.
    pub fn refuse(&self, n: u32, errno: i32) {
        use std::sync::atomic::Ordering::SeqCst;
        self.errno.store(errno, SeqCst);
        self.refusals.store(n, SeqCst);
    }

    fn refusals_left(&self) -> u32 {
        self.refusals.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A standalone fdatasync of the registered file, for operation `token`.
fn fsync_entry(token: u64) -> squeue::Entry {
    opcode::Fsync::new(types::Fixed(0))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data((token << 1) | FSYNC_BIT)
}

/// The registered file's path, for error messages (empty before the first open).
fn path_of(file: &Option<(File, PathBuf)>) -> &Path {
    file.as_ref().map_or(Path::new(""), |(_, p)| p.as_path())
}

/// Checks that the kernel runs every operation this backend submits. A ring can
/// be set up from Linux 5.1, but `IORING_OP_WRITE` (unregistered buffers) and
/// the file update at rotation need 5.6 and 5.5: without the check, `auto` would
/// choose io_uring on such a kernel and the WAL would fail at its first rotation
/// or first large entry. The probe itself needs 5.6.
fn require_operations(ring: &IoUring) -> Result<()> {
    let unsupported = |detail: String| {
        Error::io(
            "io_uring_register probe",
            "io_uring",
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{detail}; the io_uring backend needs Linux 5.6 or later"),
            ),
        )
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| unsupported(format!("the kernel lists no io_uring operations ({e})")))?;
    for (name, code) in [
        ("WRITE", opcode::Write::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
        ("FSYNC", opcode::Fsync::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(unsupported(format!("the kernel lacks IORING_OP_{name}")));
        }
    }
    Ok(())
}

impl UringBackend {
    pub(crate) fn new(entries: u32, direct: bool) -> Result<Self> {
        // Completions need no IPI to interrupt the commit thread; they are run at its
        // next io_uring_enter (COOP_TASKRUN, Linux 5.19). Older kernels reject the
        // flag: retry with a plain ring. (SINGLE_ISSUER is not used: the ring is
        // created by the opening thread and driven by the commit thread.)
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::new(entries))
            .map_err(|e| Error::io("io_uring_setup", "io_uring", e))?;
        require_operations(&ring)?;
        Ok(UringBackend {
            ring,
            file: None,
            pending: HashMap::new(),
            queued: VecDeque::new(),
            stopped: false,
            direct,
            dsync: direct,
            inline_done: Vec::new(),
            cqes: Vec::new(),
            group: WriteGroup::default(),
            group_writes: false,
            #[cfg(test)]
            cancel_next: std::collections::HashSet::new(),
            #[cfg(test)]
            refuse_pushes: false,
            #[cfg(test)]
            hooks: std::sync::Arc::default(),
            unprocessed: 0,
            #[cfg(test)]
            submit_at_most: None,
            #[cfg(test)]
            waited_after_partial: Vec::new(),
        })
    }

    /// Shares the test hooks `hooks` with this backend.
    #[cfg(test)]
    pub(crate) fn with_hooks(mut self, hooks: std::sync::Arc<EnterHooks>) -> Self {
        self.hooks = hooks;
        self
    }

    fn path(&self) -> PathBuf {
        path_of(&self.file).to_path_buf()
    }

    /// Queues the SQEs for the (remaining) write of `token`, and its linked fsync.
    ///
    /// # Safety
    /// The buffer behind `p.ptr` (`p.len` bytes) and the registered file must stay
    /// alive and unmodified until every CQE of `token` has been reaped. The commit
    /// thread guarantees this: it holds the buffer in its in-flight queue until the
    /// operation's `Done` is returned, and never closes the file with work in flight.
    // SAFETY: callers uphold the `# Safety` contract above (buffer and file outlive the CQEs).
    unsafe fn push_write(&mut self, token: u64, p: &mut Pending) -> Result<()> {
        let linked = p.sync && !self.dsync;
        p.outstanding = if linked { 2 } else { 1 };
        let rw_flags = if p.sync && self.dsync {
            libc::RWF_DSYNC
        } else {
            0
        };
        let len = u32::try_from(p.len).map_err(|_| {
            Error::io(
                "io_uring write",
                self.path(),
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        let write = match p.buf_index {
            Some(idx) => opcode::WriteFixed::new(types::Fixed(0), p.ptr, len, idx)
                .offset(p.offset)
                .rw_flags(rw_flags)
                .build(),
            None => opcode::Write::new(types::Fixed(0), p.ptr, len)
                .offset(p.offset)
                .rw_flags(rw_flags)
                .build(),
        };
        let write = write.user_data(token << 1);
        if linked {
            let fsync = opcode::Fsync::new(types::Fixed(0))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data((token << 1) | FSYNC_BIT);
            self.push(&[write.flags(squeue::Flags::IO_LINK), fsync])
        } else {
            self.push(&[write])
        }
    }

    fn push(&mut self, sqes: &[squeue::Entry]) -> Result<()> {
        if self.stopped {
            return Err(self.not_submitted());
        }
        if sqes.len() > self.ring.submission().capacity() {
            // Never fits, however often the queue is handed to the kernel.
            return Err(Error::io(
                "io_uring submission",
                self.path(),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} linked entries do not fit a ring of {}",
                        sqes.len(),
                        self.ring.submission().capacity()
                    ),
                ),
            ));
        }
        #[cfg(test)]
        if self.refuse_pushes {
            return Err(Error::io(
                "io_uring submission",
                self.path(),
                std::io::Error::other("submission refused by the test"),
            ));
        }
        loop {
            // SAFETY: see push_write; an Fsync entry carries no pointers.
            let pushed = unsafe { self.ring.submission().push_multiple(sqes) };
            if pushed.is_ok() {
                self.queued
                    .extend(sqes.iter().map(squeue::Entry::get_user_data));
                return Ok(());
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            let queued = self.ring.submission().len();
            self.enter(0)?;
            if self.ring.submission().len() >= queued {
                // The kernel took none of them (EBUSY: its completion queue
                // overflowed). Only reaping could make room, and this caller
                // cannot: fail rather than retry forever. The commit thread keeps
                // far fewer operations in flight than the ring holds, so this is
                // not expected to happen. The WAL fails: what is queued never
                // goes.
                self.stop_submitting();
                return Err(Error::io(
                    "io_uring submission",
                    self.path(),
                    std::io::Error::other(format!(
                        "submission queue full ({queued} entries) and the kernel accepts none"
                    )),
                ));
            }
        }
    }

    /// Hands the queued entries to the kernel and waits for `want` completions.
    /// Once it fails, or submission has stopped ([`Backend::stop_submitting`]),
    /// no entry is handed to the kernel again: only completions are waited for.
    fn enter(&mut self, want: usize) -> Result<()> {
        if self.stopped {
            return if want > 0 {
                self.wait_for_completions(want)
            } else {
                Ok(())
            };
        }
        let r = self.submit_queued(want);
        if r.is_err() {
            // The WAL fails with this error. The entries the kernel did not
            // take belong to batches that are answered with it: a later
            // enter (the failure's reap, a close, the drop) must not write
            // them.
            self.stop_submitting();
        }
        r
    }

    /// Drops from [`UringBackend::queued`] the entries the kernel took, as
    /// its head of the submission ring tells.
    fn note_taken(&mut self) {
        let left = self.ring.submission().len();
        let taken = self.queued.len().saturating_sub(left);
        self.queued.drain(..taken);
    }

    /// The error of an operation whose entries never reached the kernel.
    fn not_submitted(&self) -> Error {
        Error::io(
            "io_uring submission",
            self.path(),
            std::io::Error::other(
                "not handed to the kernel: submission stopped when the WAL failed",
            ),
        )
    }

    /// How long a refused `io_uring_enter` is retried ([`ENTER_RETRY_FOR`]).
    fn enter_retry_for(&self) -> std::time::Duration {
        #[cfg(test)]
        {
            let ms = self
                .hooks
                .retry_for_ms
                .load(std::sync::atomic::Ordering::SeqCst);
            if ms > 0 {
                return std::time::Duration::from_millis(ms);
            }
        }
        ENTER_RETRY_FOR
    }

    fn submit_queued(&mut self, want: usize) -> Result<()> {
        let retry_for = self.enter_retry_for();
        let mut refused_since = None;
        let mut pause = std::time::Duration::from_micros(50);
        loop {
            let entered = self.submit_and_wait(want);
            self.note_taken();
            match entered {
                Ok(_) if self.ring.submission().is_empty() => return Ok(()),
                Ok(_) => {
                    // The kernel took only part of the queue (it ran short of
                    // memory for a request). A write may have gone without the
                    // fdatasync linked to it: a link does not carry across
                    // submissions, and that fdatasync, submitted on its own
                    // next, could run before the write completes and not
                    // cover it. Everything submitted completes before the
                    // rest goes.
                    let left = self.ring.submission().len();
                    let unreaped: usize = self
                        .pending
                        .values()
                        .map(|p| usize::from(p.outstanding))
                        .sum();
                    // Not counted: completions taken from the ring whose
                    // operations `reap` has not yet accounted for.
                    let submitted = unreaped.saturating_sub(left + self.unprocessed);
                    #[cfg(test)]
                    self.waited_after_partial.push(submitted);
                    if submitted == 0 {
                        // Nothing in flight to wait for: as a refusal.
                        if refused_since
                            .get_or_insert_with(std::time::Instant::now)
                            .elapsed()
                            >= retry_for
                        {
                            return Err(Error::io(
                                "io_uring_enter",
                                self.path(),
                                std::io::Error::other(format!(
                                    "the kernel takes none of {left} queued entries"
                                )),
                            ));
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(std::time::Duration::from_millis(10));
                        continue;
                    }
                    self.wait_for_completions(submitted)?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Completion queue full: the caller reaps and the next enter retries.
                    return Ok(());
                }
                // The kernel ran short of memory or resources for the request
                // and asks to be called again (io_uring_enter(2)). The entries
                // stay queued: failing here fails the WAL for good (and the
                // entries are then never submitted, see `enter`). Retry for a
                // while, the operations in flight completing meanwhile.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM))
                        && refused_since
                            .get_or_insert_with(std::time::Instant::now)
                            .elapsed()
                            < retry_for =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(Error::io("io_uring_enter", self.path(), e)),
            }
        }
    }

    /// `io_uring_enter`, or the errno a test makes it fail with.
    fn submit_and_wait(&mut self, want: usize) -> std::io::Result<usize> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            let hooks = &self.hooks;
            if hooks
                .refusals
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(std::io::Error::from_raw_os_error(hooks.errno.load(SeqCst)));
            }
        }
        #[cfg(test)]
        if let Some(n) = self.submit_at_most.take() {
            // SAFETY: submits at most `n` of the entries queued, each already
            // upholding `push`'s contract; no argument is passed.
            return unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(n, 0, IORING_ENTER_GETEVENTS, None)
            };
        }
        self.ring.submit_and_wait(want)
    }

    /// Waits until the completion queue holds `n` completions, submitting
    /// nothing (the completions stay there for `reap`).
    fn wait_for_completions(&mut self, n: usize) -> Result<()> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        loop {
            // SAFETY: to_submit 0 hands the kernel no entry; no argument is
            // passed.
            let r = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, n, IORING_ENTER_GETEVENTS, None)
            };
            match r {
                Ok(_) if self.ring.completion().len() >= n as usize => return Ok(()),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(Error::io("io_uring_enter (wait)", self.path(), e)),
            }
        }
    }
}

impl Drop for UringBackend {
    /// The commit thread reaps every operation before it drops the backend, except
    /// when it unwinds from a panic. Closing the ring does not wait for requests the
    /// device is still working on, and the buffers they read from are dropped right
    /// after this backend: wait for every outstanding completion first (the
    /// `# Safety` contract of `push_write`). Entries not yet handed to the kernel
    /// are not handed to it now: their operations were answered with an error
    /// (closing the ring leaves them unread).
    fn drop(&mut self) {
        self.stop_submitting();
        let mut expected: usize = self
            .pending
            .values()
            .map(|p| usize::from(p.outstanding))
            .sum();
        while expected > 0 {
            // SAFETY: to_submit 0 hands the kernel no entry; no argument is
            // passed.
            let r = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, 1, IORING_ENTER_GETEVENTS, None)
            };
            match r {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, outstanding = expected, "io_uring: waiting for in-flight writes at drop failed");
                    return;
                }
            }
            for c in self.ring.completion() {
                if self.pending.contains_key(&(c.user_data() >> 1)) {
                    expected = expected.saturating_sub(1);
                }
            }
        }
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn open(&mut self, path: &Path) -> Result<()> {
        debug_assert!(self.pending.is_empty(), "file switched with I/O in flight");
        // For an O_DIRECT file this drops its cached pages: pages cached by
        // recovery's scan would send every direct write over them through an
        // io-wq worker (see files::drop_cached_pages). A file the preparer made
        // has none left, so this is cheap at rotation.
        let (f, direct) = super::open_active(path, self.direct)?;
        if !direct && self.direct {
            // No direct I/O for this file (open_active warned why): from now on
            // page-cache writes, with durable ones a write linked to an fsync.
            // Nothing is in flight, so nothing is grouped.
            self.direct = false;
            self.dsync = false;
            self.group_writes = false;
        }
        let fd = f.as_raw_fd();
        let sub = self.ring.submitter();
        let reg = if self.file.is_some() {
            sub.register_files_update(0, &[fd]).map(|_| ())
        } else {
            // Slot 1, empty for now, holds the directory's lock (`hold_lock`).
            sub.register_files(&[fd, -1])
        };
        reg.map_err(|e| Error::io("io_uring_register files", path, e))?;
        self.file = Some((f, path.to_path_buf()));
        Ok(())
    }

    fn renamed(&mut self, path: &Path) {
        if let Some((_, p)) = &mut self.file {
            *p = path.to_path_buf();
        }
    }

    /// The ring holds the lock file in its file table: when the process dies
    /// with writes in flight, the kernel completes them in the ring's teardown,
    /// after the process's own files are closed, and drops the table (and with
    /// it this reference, the lock's last) only then. A clean close unlocks
    /// explicitly, so a reopen in the same process does not wait for it.
    fn hold_lock(&mut self, lock: &std::fs::File) -> Result<()> {
        self.ring
            .submitter()
            .register_files_update(1, &[lock.as_raw_fd()])
            .map(|_| ())
            .map_err(|e| Error::io("io_uring_register the lock file", self.path(), e))
    }

    fn register_buffers(&mut self, bufs: &mut [AlignedBuf]) -> Result<()> {
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.capacity(),
            })
            .collect();
        // SAFETY: the buffers are owned by the commit thread, which drops this backend
        // (and with it the ring and its registration) before the buffers, or, when
        // reaping failed and the ring is leaked with operations possibly still in
        // the kernel, never submits through it again: a registration left behind
        // then names memory no operation uses.
        unsafe { self.ring.submitter().register_buffers(&iovecs) }
            .map_err(|e| Error::io("io_uring_register buffers", self.path(), e))?;
        for (i, b) in bufs.iter_mut().enumerate() {
            b.index = u16::try_from(i).ok();
        }
        Ok(())
    }

    fn submit(&mut self, token: u64, op: Op<'_>) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::Closed);
        }
        if self.stopped {
            return Err(self.not_submitted());
        }
        if let Op::Write { buf, len, .. } = &op {
            // The kernel is handed the buffer's address and `len`: a longer
            // length would have it read past the allocation (an unregistered
            // buffer is not range-checked by the kernel).
            if *len > buf.capacity() {
                return Err(Error::io(
                    "io_uring submit",
                    "io_uring",
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "a write of {len} bytes from a {}-byte buffer",
                            buf.capacity()
                        ),
                    ),
                ));
            }
        }
        match op {
            Op::Write {
                buf,
                len,
                offset,
                sync: false,
            } if !self.direct => {
                // A page-cache write is a memory copy that io_uring would hand to a
                // worker thread (one more wake-up per batch); pwrite does it here. The
                // ring still runs the fdatasyncs, so the commit thread keeps writing
                // while one is in progress.
                use std::os::unix::fs::FileExt;
                let (file, path) = self.file.as_ref().expect("checked above");
                let result = file
                    .write_all_at(&buf.as_slice()[..len], offset)
                    .map_err(|e| Error::io("pwrite", path, e));
                self.inline_done.push(Done { token, result });
                return Ok(());
            }
            Op::Write { sync: true, .. }
                if self.dsync
                    && (!self.group.is_empty()
                        || (self.group_writes && self.pending.is_empty())) =>
            {
                // Written at the next wait, with the durable writes queued beside it.
                self.group.push(token, &op);
                return Ok(());
            }
            Op::Write {
                buf,
                len,
                offset,
                sync,
            } => {
                let p = Pending {
                    ptr: buf.as_ptr(),
                    len,
                    offset,
                    buf_index: buf.index,
                    sync,
                    outstanding: 0,
                    resubmit: false,
                    cancelled: 0,
                    error: None,
                };
                let mut p = p;
                // SAFETY: the commit thread keeps `buf` alive and untouched until this
                // token is reaped (Backend::submit contract).
                unsafe { self.push_write(token, &mut p)? };
                self.pending.insert(token, p);
            }
            Op::Sync => {
                self.push(&[fsync_entry(token)])?;
                self.pending.insert(
                    token,
                    Pending {
                        ptr: std::ptr::null(),
                        len: 0,
                        offset: 0,
                        buf_index: None,
                        sync: true,
                        outstanding: 1,
                        resubmit: false,
                        cancelled: 0,
                        error: None,
                    },
                );
            }
        }
        // One io_uring_enter per batch: submit now so the disk starts while the
        // commit thread assembles the next batch.
        self.enter(0)
    }

    fn reap(&mut self, wait: bool, out: &mut Vec<Done>, bufs: BufLookup<'_>) -> Result<()> {
        if wait && !self.group.is_empty() {
            self.group.run(self.file.as_ref(), bufs);
        }
        let grouped = self.group.take_done(out);
        let wait = wait && self.inline_done.is_empty() && grouped == 0;
        out.append(&mut self.inline_done);
        let want = usize::from(wait && !self.pending.is_empty());
        if want > 0 || !self.queued.is_empty() {
            self.enter(want)?;
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        self.unprocessed = cqes.len();
        for (ud, res) in cqes.drain(..) {
            self.unprocessed -= 1;
            let token = ud >> 1;
            let is_fsync = ud & FSYNC_BIT != 0;
            #[cfg(test)]
            let res = if self.cancel_next.remove(&ud) {
                -libc::ECANCELED
            } else {
                res
            };
            let Some(p) = self.pending.get_mut(&token) else {
                continue;
            };
            p.outstanding = p.outstanding.saturating_sub(1);
            if res == -libc::ECANCELED && p.error.is_none() {
                // Nothing of this round ran. Either a short write of this round
                // broke the link (it set `resubmit` first, and the remainder goes
                // out again), or the kernel cancelled the round itself; then its
                // other CQE, if any, arrives cancelled too.
                if !p.resubmit {
                    if p.cancelled < CANCEL_RETRIES {
                        p.cancelled += 1;
                        p.resubmit = true;
                    } else {
                        let e = std::io::Error::from_raw_os_error(libc::ECANCELED);
                        let op = if is_fsync {
                            "fdatasync (io_uring)"
                        } else {
                            "write (io_uring)"
                        };
                        p.error = Some(Error::io(op, path_of(&self.file), e));
                    }
                }
            } else if is_fsync {
                // Cancelled after its write failed: that error stands.
                if res < 0 && res != -libc::ECANCELED {
                    let e = std::io::Error::from_raw_os_error(-res);
                    p.error.get_or_insert_with(|| {
                        Error::io("fdatasync (io_uring)", path_of(&self.file), e)
                    });
                }
            } else if res < 0 {
                let e = std::io::Error::from_raw_os_error(-res);
                p.error
                    .get_or_insert_with(|| Error::io("write (io_uring)", path_of(&self.file), e));
            } else {
                let n = res as usize;
                if n < p.len {
                    if n == 0 || !n.is_multiple_of(crate::wal::format::BLOCK_SIZE) {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            format!("short write of {n} of {} bytes", p.len),
                        );
                        p.error.get_or_insert_with(|| {
                            Error::io("write (io_uring)", path_of(&self.file), e)
                        });
                    } else {
                        // SAFETY: n < len, so the pointer stays inside the same buffer.
                        p.ptr = unsafe { p.ptr.add(n) };
                        p.len -= n;
                        p.offset += n as u64;
                        p.resubmit = true;
                    }
                }
            }
            if p.outstanding > 0 {
                continue;
            }
            let mut p = self.pending.remove(&token).expect("present");
            if p.resubmit && p.error.is_none() {
                p.resubmit = false;
                let again = if p.ptr.is_null() {
                    // A standalone fsync.
                    p.outstanding = 1;
                    self.push(&[fsync_entry(token)])
                } else {
                    // SAFETY: the same buffer as the original submission, still
                    // owned by the commit thread until this token is reaped.
                    unsafe { self.push_write(token, &mut p) }
                };
                match again {
                    Ok(()) => {
                        self.pending.insert(token, p);
                        continue;
                    }
                    // Nothing of this token reached the submission queue: it is done,
                    // failed. The loop goes on, so no other completion taken from
                    // the ring is dropped (its owner would wait for it forever).
                    Err(e) => p.error = Some(e),
                }
            }
            out.push(Done {
                token,
                result: p.error.map_or(Ok(()), Err),
            });
        }
        self.cqes = cqes;
        if !self.queued.is_empty() {
            self.enter(0)?;
        }
        Ok(())
    }

    /// Withdraws every entry the kernel has not taken: its operation
    /// completes (at the next `reap`) with an error, and nothing is handed to
    /// the kernel from now on. What the kernel took is still waited for.
    fn stop_submitting(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.note_taken();
        let withdrawn = std::mem::take(&mut self.queued);
        for ud in withdrawn {
            let token = ud >> 1;
            let error = self.not_submitted();
            let Some(p) = self.pending.get_mut(&token) else {
                continue;
            };
            // Its completion never comes: the kernel never saw the entry.
            p.outstanding = p.outstanding.saturating_sub(1);
            p.resubmit = false;
            p.error.get_or_insert(error);
            if p.outstanding == 0 {
                let p = self.pending.remove(&token).expect("present");
                self.inline_done.push(Done {
                    token,
                    result: Err(p.error.expect("set above")),
                });
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.inline_done.len() + self.group.len()
    }

    fn writes_at_reap(&self) -> bool {
        // Exactly when the next durable write would join a group.
        !self.group.is_empty() || (self.group_writes && self.pending.is_empty())
    }

    fn prefer_group_writes(&mut self, on: bool) {
        self.group_writes = on && self.dsync;
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
    use crate::wal::buffer::AlignedBuf;

    /// A backend of `entries` on `path` with `bufs` registered, with direct
    /// I/O as `direct` asks (asserted).
    fn backend_on(
        path: &std::path::Path,
        entries: u32,
        direct: bool,
        bufs: &mut [AlignedBuf],
    ) -> UringBackend {
        let mut b = UringBackend::new(entries, direct).unwrap();
        b.open(path).unwrap();
        // Asserted, not skipped: a temporary directory without direct I/O
        // would leave the O_DIRECT half of each test untested.
        assert_eq!(
            b.direct_io(),
            direct,
            "O_DIRECT open (the temporary directory must be on a disk filesystem)"
        );
        b.register_buffers(bufs).unwrap();
        b
    }

    /// A write longer than its buffer is refused before it reaches the ring:
    /// the kernel would read past the allocation (an unregistered buffer's
    /// range is not checked), and nothing is left in flight.
    #[test]
    fn a_write_longer_than_its_buffer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        for direct in [false, true] {
            let mut b = UringBackend::new(4, direct).unwrap();
            b.open(&path).unwrap();
            let buf = AlignedBuf::new(4096);
            for sync in [false, true] {
                let op = Op::Write {
                    buf: &buf,
                    len: 8192,
                    offset: 0,
                    sync,
                };
                let r = b.submit(1, op);
                assert!(
                    matches!(&r, Err(e) if e.to_string().contains("8192 bytes from a 4096-byte buffer")),
                    "direct {direct}, sync {sync}: {r:?}"
                );
                assert_eq!(b.in_flight(), 0);
            }
        }
    }

    /// The ring holds the directory's lock file: with the process's own copy
    /// closed without an unlock (as when it dies), the lock stays held until
    /// the ring is gone, not just until the file is closed.
    #[test]
    fn the_ring_keeps_the_lock_file_locked_until_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("current.wal");
        std::fs::write(&wal, vec![0u8; 8192]).unwrap();
        let lock_path = dir.path().join("LOCK");
        let try_lock = || {
            std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .unwrap()
                .try_lock()
        };
        let mut b = UringBackend::new(4, false).unwrap();
        b.open(&wal).unwrap();
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap();
        lock.try_lock().unwrap();
        b.hold_lock(&lock).unwrap();
        drop(lock); // closed, not unlocked
        assert!(
            matches!(try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            "the lock went with the process's file"
        );
        drop(b);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while try_lock().is_err() {
            assert!(
                std::time::Instant::now() < until,
                "the lock outlived the ring"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// More operations in flight than the ring's completion queue holds (24 in a
    /// ring of 2 entries, 4 completions), none reaped until the end: no completion
    /// is lost and every write lands (the kernel keeps overflowing completions).
    /// The commit thread never has this many in flight (`ring_entries`); this pins
    /// down that the backend copes if it did. On this kernel it reaches neither
    /// the full-submission-queue nor the EBUSY branch: each submit enters the ring.
    #[test]
    fn more_operations_than_the_ring_holds_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 64 * 4096]).unwrap();
        for direct in [false, true] {
            let mut bufs: Vec<AlignedBuf> = (0..24)
                .map(|i| {
                    let mut buf = AlignedBuf::new(4096);
                    buf.as_mut_slice()[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    buf
                })
                .collect();
            let mut b = backend_on(&path, 2, direct, &mut bufs);
            for (i, buf) in bufs.iter().enumerate() {
                let op = Op::Write {
                    buf,
                    len: 4096,
                    offset: i as u64 * 4096,
                    sync: i % 2 == 0,
                };
                b.submit(i as u64, op).unwrap();
            }
            let mut done = Vec::new();
            while done.len() < bufs.len() {
                b.reap(true, &mut done, &|_| None).unwrap();
            }
            let mut tokens: Vec<u64> = done.iter().map(|d| d.token).collect();
            tokens.sort_unstable();
            assert_eq!(tokens, (0..24).collect::<Vec<_>>(), "direct {direct}");
            assert!(done.iter().all(|d| d.result.is_ok()));
            assert_eq!(b.in_flight(), 0);
            let data = std::fs::read(&path).unwrap();
            for i in 0..24u64 {
                let at = i as usize * 4096;
                assert_eq!(&data[at..at + 8], &i.to_be_bytes(), "direct {direct}");
            }
        }
    }

    /// An operation the kernel cancelled on its own (it could not start an io-wq
    /// worker for it: a signal at the submitting thread) never ran: it is
    /// submitted again and completes, a standalone fsync, a write linked to its
    /// fsync and an `O_DIRECT` durable write alike. One cancelled every time fails
    /// with ECANCELED after `CANCEL_RETRIES` rounds, never succeeds falsely.
    /// (`tests/wal_signals.rs` met such a cancelled fsync, which latched the WAL.)
    #[test]
    fn operations_the_kernel_cancels_are_submitted_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 16 * 4096]).unwrap();
        for direct in [false, true] {
            let mut bufs: Vec<AlignedBuf> = (0..3u8)
                .map(|i| {
                    let mut buf = AlignedBuf::new(4096);
                    buf.as_mut_slice().fill(0x40 + i + u8::from(direct) * 8);
                    buf
                })
                .collect();
            let mut b = backend_on(&path, 8, direct, &mut bufs);
            let run = |b: &mut UringBackend, token: u64, op: Op<'_>, cancels: &[u64]| {
                b.cancel_next.extend(cancels);
                b.submit(token, op).unwrap();
                let mut done = Vec::new();
                while done.is_empty() {
                    b.reap(true, &mut done, &|_| None).unwrap();
                }
                assert_eq!(b.in_flight(), 0);
                done.pop().unwrap().result
            };
            let write = |i: usize| Op::Write {
                buf: &bufs[i],
                len: 4096,
                offset: i as u64 * 4096,
                sync: true,
            };
            // A standalone fsync, cancelled once.
            run(&mut b, 1, Op::Sync, &[(1 << 1) | FSYNC_BIT]).expect("fsync");
            // A durable write: its write CQE cancelled once (page cache: the linked
            // fsync's real CQE then arrives as well).
            run(&mut b, 2, write(0), &[2 << 1]).expect("write");
            // A durable write whose fsync (page cache) or write (O_DIRECT) is
            // cancelled once.
            let ud = if direct { 3 << 1 } else { (3 << 1) | FSYNC_BIT };
            run(&mut b, 3, write(1), &[ud]).expect("write");
            let data = std::fs::read(&path).unwrap();
            for i in 0..2u8 {
                let at = usize::from(i) * 4096;
                assert!(
                    data[at..at + 4096]
                        .iter()
                        .all(|&x| x == 0x40 + i + u8::from(direct) * 8),
                    "direct {direct}: write {i}"
                );
            }
            // Cancelled every round: an error after CANCEL_RETRIES submissions.
            let mut rounds = 0;
            let mut done = Vec::new();
            b.submit(4, Op::Sync).unwrap();
            while done.is_empty() {
                b.cancel_next.insert((4 << 1) | FSYNC_BIT);
                b.reap(true, &mut done, &|_| None).unwrap();
                rounds += 1;
            }
            b.cancel_next.clear();
            let e = done.pop().unwrap().result.expect_err("cancelled for good");
            assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
            assert_eq!(rounds, usize::from(CANCEL_RETRIES) + 1, "direct {direct}");
            assert_eq!(b.in_flight(), 0);
            drop(b);
        }
    }

    /// An operation whose resubmission cannot be queued (the kernel accepts nothing
    /// from a full submission queue) completes with that error, and the other
    /// completions reaped in the same round are still reported: their owners
    /// would otherwise wait forever.
    #[test]
    fn a_resubmission_that_cannot_be_queued_fails_only_its_own_operation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 16 * 4096]).unwrap();
        for direct in [false, true] {
            let mut bufs: Vec<AlignedBuf> = (0..2u8)
                .map(|i| {
                    let mut buf = AlignedBuf::new(4096);
                    buf.as_mut_slice().fill(0x60 + i);
                    buf
                })
                .collect();
            let mut b = backend_on(&path, 8, direct, &mut bufs);
            // Token 1, a standalone fsync, and token 3, a durable write, are
            // cancelled by the kernel, and their resubmissions are refused;
            // tokens 2 and 4 (a plain and a durable write) are not disturbed.
            let write = |i: usize, sync: bool| Op::Write {
                buf: &bufs[i],
                len: 4096,
                offset: i as u64 * 4096,
                sync,
            };
            b.submit(1, Op::Sync).unwrap();
            b.submit(2, write(0, false)).unwrap();
            b.submit(3, write(1, true)).unwrap();
            b.submit(4, Op::Sync).unwrap();
            b.cancel_next.insert((1 << 1) | FSYNC_BIT);
            b.cancel_next
                .insert(if direct { 3 << 1 } else { (3 << 1) | FSYNC_BIT });
            b.refuse_pushes = true;
            let mut done = Vec::new();
            while done.len() < 4 {
                b.reap(true, &mut done, &|_| None).unwrap();
            }
            assert_eq!(b.in_flight(), 0, "direct {direct}");
            done.sort_by_key(|d| d.token);
            let tokens: Vec<u64> = done.iter().map(|d| d.token).collect();
            assert_eq!(tokens, [1, 2, 3, 4], "direct {direct}");
            for d in &done {
                match d.token {
                    1 | 3 => {
                        let e = d.result.as_ref().expect_err("resubmission refused");
                        assert!(e.to_string().contains("io_uring submission"), "{e}");
                    }
                    _ => assert!(d.result.is_ok(), "direct {direct}: token {}", d.token),
                }
            }
        }
    }

    /// An `io_uring_enter` refused for want of memory (EAGAIN, ENOMEM) failed
    /// the WAL for good, though the kernel asks to be called again, and the
    /// entry it left queued was handed to the kernel by the failure's own reap:
    /// a batch answered as failed was written. It is retried now; a refusal
    /// that lasts still fails, naming the call.
    #[test]
    fn an_enter_refused_for_want_of_memory_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let mut bufs = vec![AlignedBuf::new(4096)];
        bufs[0].as_mut_slice().fill(7);
        let mut b = backend_on(&path, 8, false, &mut bufs);
        let write = |offset: u64| Op::Write {
            buf: &bufs[0],
            len: 4096,
            offset,
            sync: true,
        };
        b.hooks.refuse(3, libc::EAGAIN);
        b.submit(1, write(0)).unwrap();
        b.hooks.refuse(2, libc::ENOMEM);
        let mut done = Vec::new();
        while done.is_empty() {
            b.reap(true, &mut done, &|_| None).unwrap();
        }
        assert_eq!(b.hooks.refusals_left(), 0, "every refusal was met");
        assert!(done[0].result.is_ok(), "{:?}", done[0].result);
        assert_eq!(&std::fs::read(&path).unwrap()[..4096], &[7u8; 4096][..]);

        b.hooks.refuse(u32::MAX, libc::EAGAIN);
        let e = b
            .submit(2, write(4096))
            .expect_err("a lasting refusal fails");
        assert!(e.to_string().contains("io_uring_enter"), "{e}");
    }

    /// A batch whose `io_uring_enter` was refused for the whole retry window
    /// fails the WAL, and its producer is answered with the failure; its
    /// entries stayed queued in the ring, and the next enter (the failure's
    /// own reap, waiting for what was in flight) handed them to the kernel
    /// once it accepted enters again: the batch landed in the file and the
    /// next open recovered it, data nobody was told was written. Nothing the
    /// kernel had not taken reaches it once the WAL failed, through the
    /// failure's reap, the close or the backend's drop.
    #[test]
    fn a_batch_refused_until_the_wal_failed_never_reaches_the_file() {
        use crate::wal::{BackendKind, SyncMode, Wal, WalConfig};
        use std::sync::{atomic::Ordering::SeqCst, Arc};
        const REFUSED: &[u8] = b"the refused batch, answered as failed";
        let dir = tempfile::tempdir().unwrap();
        let hooks = Arc::new(EnterHooks::default());
        hooks.retry_for_ms.store(500, SeqCst);
        let config = WalConfig {
            backend: BackendKind::Uring,
            sync_mode: SyncMode::EveryWrite,
            // A durable write is a write linked to an fdatasync in the ring.
            direct_io: Some(false),
            max_file_size: WalConfig::MIN_FILE_SIZE,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open_with(dir.path(), config.clone(), |_, _, path| {
            let mut b = UringBackend::new(64, false)?.with_hooks(Arc::clone(&hooks));
            b.open(path)?;
            Ok(Box::new(b))
        })
        .unwrap();
        assert_eq!(wal.backend(), BackendKind::Uring);
        wal.append("t", 0, bytes::Bytes::from_static(b"acknowledged"))
            .wait()
            .unwrap();

        hooks.refuse(u32::MAX, libc::EAGAIN);
        let refused = wal.append("t", 0, bytes::Bytes::from_static(REFUSED));
        // The failure is latched before its reap waits for what is in flight:
        // from then on the kernel accepts enters again, as after a passing
        // shortage.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while wal.failure().is_none() {
            assert!(std::time::Instant::now() < until, "the WAL never failed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        hooks.refuse(0, 0);
        let e = refused
            .wait()
            .expect_err("a refused batch was acknowledged");
        assert!(e.to_string().contains("io_uring_enter"), "{e}");
        let later = wal.append("t", 0, bytes::Bytes::from_static(b"later"));
        assert!(matches!(later.wait(), Err(Error::Failed { .. })));
        let e = wal.close().expect_err("the close of a failed WAL");
        assert!(e.to_string().contains("io_uring_enter"), "{e}");

        let file = std::fs::read(dir.path().join(crate::wal::files::CURRENT)).unwrap();
        assert!(
            !file.windows(REFUSED.len()).any(|w| w == REFUSED),
            "the refused batch was written"
        );
        let (wal, rec) = Wal::open(dir.path(), config).unwrap();
        let entries: Vec<_> = rec.collect::<Result<_>>().unwrap();
        let data: Vec<&[u8]> = entries.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, [&b"acknowledged"[..]]);
        wal.close().unwrap();
    }

    /// Once an enter failed, the operations the kernel took are still waited
    /// for and reported, the one it never took completes with an error and
    /// is never written, by a reap or the drop, and nothing is submitted
    /// again.
    #[test]
    fn after_a_failed_enter_only_what_the_kernel_took_runs() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let mut bufs: Vec<AlignedBuf> = (1..=2u8)
            .map(|i| {
                let mut buf = AlignedBuf::new(4096);
                buf.as_mut_slice().fill(i);
                buf
            })
            .collect();
        let mut b = backend_on(&path, 8, false, &mut bufs);
        let write = |i: usize| Op::Write {
            buf: &bufs[i],
            len: 4096,
            offset: i as u64 * 4096,
            sync: true,
        };
        b.submit(1, write(0)).unwrap();
        b.hooks.retry_for_ms.store(20, SeqCst);
        b.hooks.refuse(u32::MAX, libc::EAGAIN);
        let e = b.submit(2, write(1)).expect_err("refused for good");
        assert!(e.to_string().contains("io_uring_enter"), "{e}");
        // The kernel would take entries again.
        b.hooks.refuse(0, 0);
        let mut done = Vec::new();
        while b.in_flight() > 0 {
            b.reap(true, &mut done, &|_| None).unwrap();
        }
        done.sort_by_key(|d| d.token);
        assert_eq!(done.len(), 2);
        assert!(done[0].result.is_ok(), "{:?}", done[0].result);
        let e = done[1].result.as_ref().expect_err("never submitted");
        assert!(e.to_string().contains("io_uring submission"), "{e}");
        let e = b.submit(3, Op::Sync).expect_err("submission stopped");
        assert!(e.to_string().contains("io_uring submission"), "{e}");
        drop(b);
        let data = std::fs::read(&path).unwrap();
        assert!(data[..4096].iter().all(|&x| x == 1), "the write taken");
        assert!(
            data[4096..8192].iter().all(|&x| x == 0),
            "the refused write landed"
        );
    }

    /// A submission the kernel cut short (short of memory for a request) may
    /// take a write and leave the fdatasync linked to it: a link does not
    /// carry across submissions, so that fdatasync, submitted on its own,
    /// could run before the write completed and not cover it, and the write
    /// was then answered as durable. Everything submitted now completes
    /// before the rest goes.
    #[test]
    fn a_write_cut_from_its_linked_fdatasync_completes_before_the_fdatasync_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let mut bufs = vec![AlignedBuf::new(4096)];
        bufs[0].as_mut_slice().fill(9);
        let mut b = backend_on(&path, 8, false, &mut bufs);
        assert!(
            !b.dsync,
            "a page-cache file: the write is linked to its fdatasync"
        );
        b.submit_at_most = Some(1);
        b.submit(
            1,
            Op::Write {
                buf: &bufs[0],
                len: 4096,
                offset: 0,
                sync: true,
            },
        )
        .unwrap();
        // The write went alone; the backend waited for its completion (one)
        // before it handed over the fdatasync.
        assert_eq!(b.waited_after_partial, [1]);
        assert!(b.ring.submission().is_empty());
        let mut done = Vec::new();
        while done.is_empty() {
            b.reap(true, &mut done, &|_| None).unwrap();
        }
        assert!(done[0].result.is_ok(), "{:?}", done[0].result);
        assert_eq!(&std::fs::read(&path).unwrap()[..4096], &[9u8; 4096][..]);
    }

    /// A backend dropped with writes in flight (the commit thread unwinding from a
    /// panic) waits for them: the buffers they read from are freed right after, and
    /// every write is on the file when the drop returns.
    #[test]
    fn a_backend_dropped_with_writes_in_flight_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 8 << 20]).unwrap();
        for direct in [false, true] {
            let mut bufs: Vec<AlignedBuf> = (0..6u8)
                .map(|i| {
                    let mut buf = AlignedBuf::new(1 << 20);
                    buf.as_mut_slice().fill(i + 1 + u8::from(direct) * 10);
                    buf
                })
                .collect();
            let mut b = backend_on(&path, 16, direct, &mut bufs);
            for (i, buf) in bufs.iter().enumerate() {
                let op = Op::Write {
                    buf,
                    len: 1 << 20,
                    offset: i as u64 * (1 << 20),
                    sync: i % 2 == 1,
                };
                b.submit(i as u64, op).unwrap();
            }
            assert_eq!(b.in_flight(), 6);
            drop(b);
            let data = std::fs::read(&path).unwrap();
            for i in 0..6u8 {
                let want = i + 1 + u8::from(direct) * 10;
                let at = usize::from(i) << 20;
                assert!(
                    data[at..at + (1 << 20)].iter().all(|&x| x == want),
                    "direct {direct}: write {i} not complete after the drop"
                );
            }
            drop(bufs);
        }
    }

    /// With group writes preferred, durable writes submitted while the ring is
    /// empty are queued, not started: nothing reaches the file until the thread
    /// waits, and then all of them do, with one flush for the group. A write
    /// submitted while the ring holds an operation goes to the ring, and a group
    /// whose buffers are not offered (the WAL failed) writes nothing and fails
    /// every operation in it.
    #[test]
    fn preferred_group_writes_run_together_at_the_next_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 16 * 4096]).unwrap();
        let mut b = UringBackend::new(8, true).unwrap();
        b.open(&path).unwrap();
        assert!(
            b.direct_io(),
            "O_DIRECT open (the temporary directory must be on a disk filesystem)"
        );
        let mut bufs: Vec<AlignedBuf> = (0..6u8)
            .map(|i| {
                let mut buf = AlignedBuf::new(4096);
                buf.as_mut_slice().fill(i + 1);
                buf
            })
            .collect();
        b.register_buffers(&mut bufs).unwrap();
        let write = |i: usize, offset: u64| Op::Write {
            buf: &bufs[i],
            len: 4096,
            offset,
            sync: true,
        };
        assert!(!b.writes_at_reap(), "the ring is the default");
        b.prefer_group_writes(true);
        assert!(b.writes_at_reap());
        for i in 0..3 {
            b.submit(i as u64, write(i, i as u64 * 4096)).unwrap();
        }
        assert_eq!(b.in_flight(), 3);
        let mut done = Vec::new();
        b.reap(false, &mut done, &|_| None).unwrap();
        assert!(done.is_empty(), "a reap that does not wait writes nothing");
        assert!(
            std::fs::read(&path).unwrap()[..3 * 4096]
                .iter()
                .all(|&x| x == 0),
            "nothing written before the wait"
        );
        let lookup = |t: u64| bufs.get(t as usize);
        b.reap(true, &mut done, &lookup).unwrap();
        let mut tokens: Vec<u64> = done.iter().map(|d| d.token).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, vec![0, 1, 2]);
        assert!(done.iter().all(|d| d.result.is_ok()));
        assert_eq!(
            b.take_shared_flushes(),
            2,
            "three durable writes, one flush"
        );
        assert_eq!(b.in_flight(), 0);
        let data = std::fs::read(&path).unwrap();
        for i in 0..3usize {
            assert!(data[i * 4096..(i + 1) * 4096]
                .iter()
                .all(|&x| x == i as u8 + 1));
        }

        // With a sync in the ring, a durable write does not start a group.
        b.submit(10, Op::Sync).unwrap();
        assert!(!b.writes_at_reap());
        b.submit(3, write(3, 3 * 4096)).unwrap();
        let mut done = Vec::new();
        while done.len() < 2 {
            b.reap(true, &mut done, &|_| None).unwrap();
        }
        assert!(
            done.iter().all(|d| d.result.is_ok()),
            "went through the ring"
        );
        assert_eq!(std::fs::read(&path).unwrap()[3 * 4096], 4);

        // A group whose buffers are withheld is not written, and fails whole.
        assert!(b.writes_at_reap());
        b.submit(4, write(4, 4 * 4096)).unwrap();
        b.submit(5, write(5, 5 * 4096)).unwrap();
        let mut done = Vec::new();
        b.reap(true, &mut done, &|_| None).unwrap();
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|d| d.result.is_err()));
        let data = std::fs::read(&path).unwrap();
        assert!(data[4 * 4096..6 * 4096].iter().all(|&x| x == 0));

        // Switched off, durable writes go to the ring again.
        b.prefer_group_writes(false);
        assert!(!b.writes_at_reap());
    }

    /// A full submission queue is handed to the kernel and the entries that did
    /// not fit are queued after it: every entry completes once.
    #[test]
    fn entries_pushed_into_a_full_submission_queue_wait_for_it_to_be_submitted() {
        let mut b = UringBackend::new(2, false).unwrap();
        let nop = |ud: u64| opcode::Nop::new().build().user_data(ud);
        b.push(&[nop(11), nop(12)]).unwrap();
        assert_eq!(
            b.ring.submission().len(),
            2,
            "the queue is full, nothing entered"
        );
        b.push(&[nop(13)]).unwrap();
        // The first two went to the kernel to make room; the third is queued.
        assert_eq!(b.ring.submission().len(), 1);
        b.enter(0).unwrap();
        assert!(b.queued.is_empty());
        let mut seen = Vec::new();
        while seen.len() < 3 {
            b.ring.submit_and_wait(1).unwrap();
            seen.extend(b.ring.completion().map(|c| (c.user_data(), c.result())));
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![(11, 0), (12, 0), (13, 0)]);
    }

    /// A write with its linked fsync needs two submission entries: a ring of one
    /// refuses it with an error instead of handing the queue to the kernel forever.
    #[test]
    fn a_linked_write_larger_than_the_ring_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let mut b = UringBackend::new(1, false).unwrap();
        b.open(&path).unwrap();
        let buf = AlignedBuf::new(4096);
        let op = Op::Write {
            buf: &buf,
            len: 4096,
            offset: 0,
            sync: true,
        };
        let e = b.submit(1, op).unwrap_err().to_string();
        assert!(e.contains("do not fit a ring of 1"), "{e}");
        assert_eq!(b.in_flight(), 0);
    }
}
