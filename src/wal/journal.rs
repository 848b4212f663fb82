//! A check, after a sync that succeeded, that the file system did not answer it
//! from a journal that had already aborted.
//!
//! ext4 keeps a file's metadata changes (an extent turned from unwritten to
//! written by a first write into preallocated space, new blocks, a new size) in
//! a journal transaction, and `fdatasync` waits for the transaction that holds
//! the file's latest change. When a journal commit fails (a device error met by
//! any file's sync), jbd2 aborts the journal; ext4 learns of it only when it next
//! starts a journal handle ("Detected aborted journal"), and from then on fails
//! writes and syncs with `EROFS` (`emergency_ro` in `/proc/mounts`). In between,
//! an `fdatasync` of a file whose transaction was the one that failed finds
//! nothing running or committing to wait for and returns 0 (seen on Linux 6.18):
//! the data blocks reached the device, the extent that maps them did not, and
//! after a remount they read as zeros. `statfs` does not report the state.
//!
//! [`check`] makes ext4 start a handle (it rewrites a file's attribute flags
//! with the value they have), which fails with `EROFS` once the journal has
//! aborted: a sync followed by a passing check made durable everything it
//! covered. The check costs about 2 µs and no I/O; it journals the inode's
//! change time into the running transaction, which an `fdatasync` does not wait
//! for. It is done only on ext4 with a journal: without one there is nothing to
//! abort, and there the touched inode would cost the next `fdatasync` a write.
//! The WAL's commit thread checks only after syncs that covered writes into
//! space not known to be written already ([`crate::wal::files::first_unwritten`]):
//! an overwrite of written blocks needs no metadata, so its sync does not
//! depend on the journal.

use std::fs::File;
use std::io;
use std::path::Path;

/// The file system holding a directory, when its syncs need [`check`]: held by
/// the WAL's commit thread, which checks after syncs on its hot path.
#[derive(Debug)]
pub(crate) struct JournalCheck {
    dir: File,
}

impl JournalCheck {
    /// The check for the file system holding `dir`, or `None` when it needs
    /// none (off Linux, where no directory is opened).
    ///
    /// # Errors
    /// The directory's open. Before, a failed open (a descriptor shortage at
    /// a WAL's open) read as "no check needed", for the WAL's whole life and
    /// without a word, while the next open of the directory succeeded.
    pub(crate) fn for_dir(dir: &Path) -> io::Result<Option<JournalCheck>> {
        if !cfg!(target_os = "linux") {
            return Ok(None);
        }
        let dir = File::open(dir)?;
        Ok(needs_check(&dir).then_some(JournalCheck { dir }))
    }

    /// [`check`] on the directory.
    pub(crate) fn check(&self) -> io::Result<()> {
        check(&self.dir)
    }
}

/// After a sync of `f` (or of anything on its file system) returned success:
/// fails with `EROFS` when the file system's journal had aborted, so the sync
/// proves nothing. A no-op where no such check is needed ([`needs_check`]).
pub(crate) fn check_after_sync(f: &File) -> io::Result<()> {
    if needs_check(f) {
        check(f)
    } else {
        Ok(())
    }
}

/// Whether `f` lives on ext4 with a journal. Where that cannot be told (no
/// `/sys` or `/proc`), an ext4 file system is assumed to have one.
///
/// Whether ext4 has a journal is remembered per mount (Linux 6.8's unique
/// mount id, never reused while the system runs; a journal added or removed
/// takes effect only at the next mount): asking sysfs costs ~15 µs, a tenth of
/// a small sync. On older kernels every call asks. The file system's type is
/// asked every time (one `fstatfs`), so a failure to tell is never remembered.
#[cfg(target_os = "linux")]
pub(crate) fn needs_check(f: &File) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, PoisonError};
    /// Bounded: a process that mounts file systems endlessly (tests) starts over.
    const REMEMBERED: usize = 64;
    static BY_MOUNT: Mutex<Option<HashMap<u64, bool>>> = Mutex::new(None);
    if !is_ext4(f) {
        return false;
    }
    let Some(mount) = unique_mount_id(f) else {
        return has_journal(f);
    };
    let lock = || BY_MOUNT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = lock().as_ref().and_then(|m| m.get(&mount)) {
        return known;
    }
    let answer = has_journal(f);
    let mut guard = lock();
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= REMEMBERED {
        map.clear();
    }
    map.insert(mount, answer);
    answer
}

/// `statx` of the open file `f` for the fields in `mask`, when the call
/// succeeds and the kernel reports every one of them; `None` otherwise (older
/// kernels, file systems that do not tell).
#[cfg(target_os = "linux")]
pub(crate) fn statx_of(f: &File, mask: u32) -> Option<libc::statx> {
    use std::os::fd::AsRawFd;
    #[expect(
        unsafe_code,
        reason = "std has no statx wrapper for the fields the WAL asks about"
    )]
    // SAFETY: `st` is a zeroed, writable statx owned by this frame, the path is a
    // valid empty C string (AT_EMPTY_PATH: the fd itself), and the fd is owned
    // by `f` for the whole call.
    let (r, st) = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            mask,
            &mut st,
        );
        (r, st)
    };
    (r == 0 && st.stx_mask & mask == mask).then_some(st)
}

/// The unique id of the mount holding `f` (`statx` with `STX_MNT_ID_UNIQUE`,
/// Linux 6.8); `None` on older kernels.
#[cfg(target_os = "linux")]
fn unique_mount_id(f: &File) -> Option<u64> {
    const STX_MNT_ID_UNIQUE: u32 = 0x4000;
    statx_of(f, STX_MNT_ID_UNIQUE).map(|st| st.stx_mnt_id)
}

/// [`needs_check`] without the memory: asks `statfs` and sysfs.
#[cfg(all(test, target_os = "linux"))]
fn ask_needs_check(f: &File) -> bool {
    is_ext4(f) && has_journal(f)
}

#[cfg(target_os = "linux")]
fn is_ext4(f: &File) -> bool {
    nix::sys::statfs::fstatfs(f)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC)
}

/// Whether the ext4 file system holding `f` has a journal (sysfs, or procfs on
/// older kernels); `true` when that cannot be told.
#[cfg(target_os = "linux")]
fn has_journal(f: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = f.metadata() else {
        return true;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    // ext4 names a file system after its block device (`vda`, `loop0`, `dm-0`).
    let Some(name) = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return true;
    };
    if let Ok(task) = std::fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")) {
        return task.trim() != "<none>";
    }
    // Older kernels: a journal has its statistics under /proc/fs/jbd2/<name>-<inode>.
    match std::fs::read_dir("/proc/fs/jbd2") {
        Ok(entries) => entries.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with('-'))
        }),
        Err(_) => true,
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn needs_check(_f: &File) -> bool {
    false
}

/// Fails with `EROFS` when the journal of the file system holding `f` has
/// aborted. Rewrites `f`'s attribute flags with their value (`FS_IOC_SETFLAGS`;
/// ext4 starts a journal handle for it); where that is refused (not the
/// file's owner), sets its times to now twice instead: the first makes ext4
/// start a handle, whose failure it does not return but records, and the
/// second then fails.
#[cfg(target_os = "linux")]
pub(crate) fn check(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut flags: libc::c_int = 0;
    #[expect(unsafe_code, reason = "FS_IOC_GETFLAGS/SETFLAGS have no safe wrapper")]
    // SAFETY: both ioctls pass one int through the pointer, which points to
    // `flags`, alive for both calls; the fd is owned by `f` for both calls.
    let r = unsafe {
        match libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) {
            0 => libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags),
            r => r,
        }
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if aborted(&e) {
        return Err(report(e));
    }
    use nix::sys::time::TimeSpec;
    for _ in 0..2 {
        let now = TimeSpec::UTIME_NOW;
        if let Err(errno) = nix::sys::stat::futimens(f, &now, &now) {
            let e = io::Error::from(errno);
            if aborted(&e) {
                return Err(report(e));
            }
            warn_unchecked(&e);
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn check(_f: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(target_os = "linux")]
fn aborted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EROFS | libc::EIO))
}

#[cfg(target_os = "linux")]
fn report(e: io::Error) -> io::Error {
    tracing::error!(
        error = %e,
        "the file system has aborted its journal (a commit failed; ext4 turns \
         read-only): the sync that just returned success proves nothing, so it \
         counts as failed. The file system needs fsck and a new mount"
    );
    e
}

/// Says once per process that syncs go unchecked.
#[cfg(target_os = "linux")]
fn warn_unchecked(e: &io::Error) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            error = %e,
            "cannot check the file system's journal after a sync (neither the \
             attribute flags nor the times of a file may be set): a sync that \
             ext4 answers from an aborted journal would go unnoticed"
        );
    });
}

/// `fdatasync` of `f`, then [`check_after_sync`].
pub(crate) fn sync_data(f: &File) -> io::Result<()> {
    assert_writable(f);
    super::backend::std_backend::data_sync(f)?;
    check_after_sync(f)
}

/// `fsync` of `f`, then [`check_after_sync`].
pub(crate) fn sync_all(f: &File) -> io::Result<()> {
    assert_writable(f);
    super::backend::std_backend::file_sync(f)?;
    check_after_sync(f)
}

/// Debug builds (the tests) check that a regular file is synced through a
/// handle opened for writing: Windows' `FlushFileBuffers`, which std's syncs
/// call there, refuses a read-only handle (`ERROR_ACCESS_DENIED`), so a sync
/// through `File::open` works on Unix and fails every time on Windows.
/// Directories are opened read-only to be synced (Unix only).
pub(crate) fn assert_writable(f: &File) {
    #[cfg(all(unix, debug_assertions))]
    {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        if f.metadata().is_ok_and(|m| m.is_file()) {
            if let Ok(flags) = fcntl(f, FcntlArg::F_GETFL) {
                let mode = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
                assert!(
                    mode != OFlag::O_RDONLY,
                    "a file synced through a read-only handle (Windows refuses the sync)"
                );
            }
        }
    }
    #[cfg(not(all(unix, debug_assertions)))]
    let _ = f;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    /// A block of `byte`s, aligned for `O_DIRECT`.
    fn block(byte: u8) -> crate::wal::buffer::AlignedBuf {
        let mut b = crate::wal::buffer::AlignedBuf::new(4096);
        b.as_mut_slice().fill(byte);
        b
    }

    /// A directory that cannot be opened is an error, not "no check needed".
    #[test]
    fn a_directory_that_does_not_open_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("gone");
        assert!(super::JournalCheck::for_dir(&gone).is_err());
        assert!(super::JournalCheck::for_dir(tmp.path()).is_ok());
    }

    /// ext4 with a journal needs the check; file systems without a journal do not.
    #[test]
    fn only_ext4_with_a_journal_is_checked() {
        let fs = crate::file_at::FailingExt4::mount();
        let f = std::fs::File::open(fs.path()).unwrap();
        assert!(super::needs_check(&f));
        assert!(!super::needs_check(
            &std::fs::File::open("/proc/self").unwrap()
        ));
        assert!(!super::needs_check(
            &std::fs::File::open("/dev/shm").unwrap()
        ));
    }

    /// The answer is remembered per mount, never across mounts: the same
    /// image (same UUID), mounted on the same loop device without a journal,
    /// then with one added in between, gets each time its own answer.
    #[test]
    fn a_remount_with_a_journal_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ext4.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let (img, mnt) = (img.to_str().unwrap(), mnt.to_str().unwrap());
        let run = |cmd: &str, args: &[&str]| {
            let out = std::process::Command::new(cmd).args(args).output();
            let out = out.unwrap_or_else(|e| panic!("{cmd}: {e}"));
            assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
        };
        run("mkfs.ext4", &["-q", "-F", "-O", "^has_journal", img]);
        let mut answers = Vec::new();
        for journal in [false, true, false] {
            if journal {
                run("tune2fs", &["-O", "has_journal", img]);
            } else if !answers.is_empty() {
                run("tune2fs", &["-f", "-O", "^has_journal", img]);
            }
            run("mount", &["-o", "loop", img, mnt]);
            let f = std::fs::File::open(mnt).unwrap();
            let first = super::needs_check(&f);
            let again = super::needs_check(&f);
            let asked = super::ask_needs_check(&f);
            drop(f);
            run("umount", &[mnt]);
            assert_eq!((first, again), (asked, asked), "journal {journal}");
            answers.push(first);
        }
        assert_eq!(answers, [false, true, false]);
    }

    /// The hole, as ext4 6.18 has it: an `O_DIRECT` write into a reserved
    /// (unwritten) block, then another change whose journal commit fails (a
    /// directory fsync: the journal aborts), then an `fdatasync` of the first
    /// file, which finds the failed transaction gone and returns success; after
    /// a remount the block reads as zeros. The check must fail once the journal
    /// has aborted, and sync-then-check must never succeed for a block that is
    /// lost. On a healthy file system the check passes and changes no data.
    #[test]
    fn a_sync_answered_from_an_aborted_journal_is_caught() {
        let fs = crate::file_at::FailingExt4::mount();
        let dir = fs.path();
        let path = dir.join("a");
        let a = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        // Really direct, as the WAL's own files (backend::open_active), not
        // buffered behind an accepted O_DIRECT.
        let align = crate::wal::backend::dio_align(&a);
        assert_eq!(
            crate::wal::backend::direct_io_verdict(align),
            Ok(()),
            "{align:?}"
        );
        nix::fcntl::fallocate(&a, nix::fcntl::FallocateFlags::empty(), 0, 1 << 20).unwrap();
        super::sync_all(&a).unwrap();
        super::sync_all(&std::fs::File::open(&dir).unwrap()).unwrap();
        a.write_at(block(0xab).as_slice(), 0).unwrap();
        super::sync_data(&a).unwrap();
        super::check(&a).unwrap();
        assert_eq!(crate::file_at::read_direct(&path)[..4096], [0xab; 4096]);

        a.write_at(block(0xcd).as_slice(), 4096).unwrap();
        fs.fail(Some(libc::EIO));
        std::fs::write(dir.join("b"), b"x").unwrap();
        let dir_sync = std::fs::File::open(&dir).unwrap().sync_all();
        assert!(
            dir_sync.is_err(),
            "the directory's journal commit succeeded"
        );
        let raw = a.sync_data();
        let e = super::check(&a).expect_err("the check passed on an aborted journal");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        assert!(
            std::fs::read_to_string("/proc/mounts")
                .unwrap()
                .lines()
                .any(|l| l.contains(dir.to_str().unwrap()) && l.contains("emergency_ro")),
            "the file system is not marked emergency read-only"
        );
        drop(a);
        fs.fail(None);
        fs.remount();
        let back = crate::file_at::read_direct(&path);
        assert_eq!(back[..4096], [0xab; 4096], "the synced block was lost");
        let lost = back[4096..8192] == [0; 4096];
        assert!(
            lost || back[4096..8192] == [0xcd; 4096],
            "the block holds neither what was written nor zeros"
        );
        // On Linux 6.18: `Ok(())` and lost, which only the check tells.
        eprintln!("fdatasync after the abort: {raw:?}; the block lost: {lost}");
    }

    /// The `FIEMAP` request number built from the architecture's `ioctl.h`
    /// layout is the one the kernel headers give on x86_64 and aarch64 (the
    /// number written out by hand before, when the check ran there only).
    #[test]
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    fn the_fiemap_request_is_the_kernels() {
        assert_eq!(super::FS_IOC_FIEMAP, 0xC020_660B_u32 as libc::Ioctl);
    }

    /// `check_written` passes for a file written and synced, and fails where
    /// the bytes it is asked about are not on the disk: blocks reserved but
    /// never written (an unwritten extent, as a failed conversion leaves),
    /// a hole, or data not yet written back.
    #[test]
    fn check_written_finds_bytes_that_are_not_on_the_disk() {
        let fs = crate::file_at::FailingExt4::mount();
        let path = fs.path().join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&[7; 100_000], 0).unwrap();
        let e = super::check_written(&f, 100_000).unwrap_err();
        assert!(e.to_string().contains("bytes 0..100000"), "{e}");
        super::sync_data(&f).unwrap();
        super::check_written(&f, 100_000).unwrap();
        // Reserved, never written.
        nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 100_000, 50_000).unwrap();
        super::sync_all(&f).unwrap();
        super::check_written(&f, 100_000).unwrap();
        let e = super::check_written(&f, 150_000).unwrap_err();
        assert!(e.to_string().contains("not all on the disk"), "{e}");
        // A hole.
        f.set_len(400_000).unwrap();
        f.write_all_at(&[7; 4096], 300_000).unwrap();
        super::sync_all(&f).unwrap();
        assert!(super::check_written(&f, 304_096).is_err());
    }
}

/// After a sync of `f`, whose first `len` bytes were all written (a segment,
/// appended to and never preallocated): fails when part of them is not
/// mapped to written blocks (`FIEMAP`: a hole, or an extent still unwritten
/// or not yet allocated). ext4 allocates blocks for buffered writes as
/// unwritten extents and turns them into written ones after the data I/O; when
/// that conversion fails ("failed to convert unwritten extents to written
/// extents -- potential data loss!", seen with a failing device while the
/// journal went on) nothing reports it to `fdatasync`, the data is on the
/// device but unmapped, and after a remount the file reads as zeros there.
/// A no-op where the file system does not answer `FIEMAP`.
#[cfg(target_os = "linux")]
pub(crate) fn check_written(f: &File, len: u64) -> io::Result<()> {
    check_written_range(f, 0, len)
}

/// `struct fiemap_extent`.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Clone, Copy)]
struct Extent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` with room for `N` extents.
#[cfg(target_os = "linux")]
#[repr(C)]
struct Map<const N: usize> {
    start: u64,
    length: u64,
    flags: u32,
    mapped: u32,
    count: u32,
    reserved: u32,
    extents: [Extent; N],
}

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`, `struct fiemap` without
/// its extents (32 bytes), built as each architecture's `ioctl.h` builds it
/// (the check was compiled out on Linux other than x86_64 and aarch64, for a
/// number written out by hand).
#[cfg(target_os = "linux")]
const FS_IOC_FIEMAP: libc::Ioctl = libc::_IOWR::<Map<0>>(b'f' as u32, 11);

/// [`check_written`] for bytes `from..to` of `f` only: after a sync that covered
/// page-cache writes there (the WAL's writes into space never written before).
#[cfg(target_os = "linux")]
pub(crate) fn check_written_range(f: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = to;
    const EXTENTS: usize = 32;
    const LAST: u32 = 0x1;
    const NOT_ON_DISK: u32 = 0x2 | 0x4 | 0x800; // UNKNOWN, DELALLOC, UNWRITTEN
    let none = Extent {
        logical: 0,
        physical: 0,
        length: 0,
        reserved64: [0; 2],
        flags: 0,
        reserved: [0; 3],
    };
    let lost = |at: u64| {
        io::Error::other(format!(
            "the sync returned success, but bytes {at}..{len} are not all on the disk (the \
             file system left them unmapped or unwritten)"
        ))
    };
    let mut at = from;
    while at < len {
        let mut m = Map::<EXTENTS> {
            start: at,
            length: len - at,
            flags: 0,
            mapped: 0,
            count: EXTENTS as u32,
            reserved: 0,
            extents: [none; EXTENTS],
        };
        #[expect(unsafe_code, reason = "FS_IOC_FIEMAP has no safe wrapper")]
        // SAFETY: the kernel reads the header of `m` and writes at most `count`
        // (EXTENTS) extents into `m.extents`, which has room for them; `m` lives
        // for the whole call and the fd is owned by `f`.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &raw mut m) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOTTY) => Ok(()),
                _ => Err(e),
            };
        }
        let extents = &m.extents[..(m.mapped as usize).min(EXTENTS)];
        if extents.is_empty() {
            return Err(lost(at));
        }
        for e in extents {
            if e.logical > at || e.flags & NOT_ON_DISK != 0 {
                return Err(lost(at));
            }
            at = at.max(e.logical + e.length);
            if e.flags & LAST != 0 && at < len {
                return Err(lost(at));
            }
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn check_written(_f: &File, _len: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn check_written_range(_f: &File, _from: u64, _to: u64) -> io::Result<()> {
    Ok(())
}
