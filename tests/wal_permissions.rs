//! A WAL opened by a user without the rights it needs: a clear error naming the
//! path and the operation, and nothing written or lost; a parent directory the
//! user may only traverse (mode 0711) is not a reason to refuse an existing WAL.
//!
//! The unprivileged part of each test runs on a thread of its own whose user is
//! switched to `nobody` with raw `setresuid`/`setresgid` system calls, which change
//! the calling thread's credentials only (the C library's wrappers would change
//! every thread of the process). The WAL's own threads, started from that thread,
//! inherit them. Needs root to switch user (CI runs as root).
#![cfg(target_os = "linux")]

mod common;

use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt},
    path::Path,
};

use bytes::Bytes;
use common::{open, payload, BACKENDS};
use streamline::{
    wal::{SyncMode, Wal},
    Error,
};

const NOBODY: u32 = 65534;

/// Runs `f` on a new thread whose real, effective and saved user and group ids
/// are `nobody`'s, with no supplementary groups.
fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the permission tests switch to the `nobody` user and need root (CI runs as root)"
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            let id = libc::c_long::from(NOBODY);
            // SAFETY: raw credential system calls on the calling thread with plain
            // integer arguments (a null list of length 0 for setgroups); they
            // touch no memory of the process.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                    0
                );
                assert_eq!(libc::syscall(libc::SYS_setresgid, id, id, id), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, id, id, id), 0);
                assert_eq!(libc::geteuid(), NOBODY, "thread credentials not switched");
            }
            f()
        })
        .join()
        .expect("unprivileged thread panicked")
    })
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A root-owned scratch directory every user may traverse.
fn scratch() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    set_mode(t.path(), 0o755);
    t
}

/// Every file under `dir` with its contents, sorted by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let bytes = fs::read(e.path()).expect("read file");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    v.sort();
    v
}

fn io_error(r: Result<(Wal, streamline::wal::Recovery), Error>) -> (String, Error) {
    match r {
        Ok(_) => panic!("open succeeded without the rights it needs"),
        Err(e) => (e.to_string(), e),
    }
}

#[test]
fn a_directory_it_cannot_create_is_an_error_naming_it() {
    for backend in BACKENDS {
        let t = scratch();
        let dir = t.path().join("data").join("wal");
        let cfg = common::config(backend, SyncMode::EveryWrite);
        let (msg, err) = io_error(as_nobody(|| Wal::open(&dir, cfg)));
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{backend:?}: {msg}");
        assert!(
            msg.contains("create_dir_all") && msg.contains(&dir.display().to_string()),
            "{backend:?}: the error names neither the operation nor the path: {msg}"
        );
        assert!(
            !t.path().join("data").exists(),
            "{backend:?}: created anyway"
        );
    }
}

#[test]
fn a_wal_it_can_read_but_not_write_is_refused_and_left_unchanged() {
    for backend in BACKENDS {
        let t = scratch();
        let dir = t.path().join("wal");
        let cfg = || common::config(backend, SyncMode::EveryWrite);
        // Written by root: two files' worth, closed cleanly.
        let (wal, _) = open(&dir, cfg());
        for i in 0..300 {
            wal.append("t", 0, Bytes::from(payload(i, 1000)))
                .wait()
                .expect("append");
        }
        wal.checkpoint(100).expect("checkpoint");
        wal.close().expect("close");
        // As a crash leaves it: no clean-close marker for the open to remove,
        // so that it goes on to open the log's files.
        std::fs::remove_file(dir.join(streamline::wal::clean_close::CLEAN_CLOSE_FILE))
            .expect("a clean close leaves its marker");
        let before = snapshot(&dir);
        assert!(before.len() >= 3, "expected several files: {before:?}");

        // Readable by everyone, writable by root only; the lock file
        // writable by all, so that the open gets past the lock and meets
        // the log's own files.
        set_mode(&dir, 0o755);
        for (name, _) in &before {
            set_mode(&dir.join(name), 0o644);
        }
        set_mode(&dir.join("LOCK"), 0o666);
        let (msg, err) = io_error(as_nobody(|| Wal::open(&dir, cfg())));
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{backend:?}: {msg}");
        // Refused by the backend's own open of the active file.
        assert!(
            matches!(&err, Error::Io { path, .. } if *path == dir.join("current.wal")),
            "{backend:?}: the error does not name the active file: {msg}"
        );
        assert_eq!(
            snapshot(&dir),
            before,
            "{backend:?}: a refused open changed the WAL"
        );

        // Root still recovers everything after the checkpoint, in order.
        let (wal, entries) = open(&dir, cfg());
        let seqs: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (101..=300).collect::<Vec<_>>(), "{backend:?}");
        for e in &entries {
            assert_eq!(e.data, payload(e.sequence - 1, 1000), "{backend:?}");
        }
        wal.close().expect("close");
    }
}

#[test]
fn an_existing_wal_in_a_parent_it_may_only_traverse_opens_and_keeps_appending() {
    for backend in BACKENDS {
        let t = scratch();
        // The parent: traversable, not readable, by others (so its own fsync, which
        // needs to open it, is refused).
        let parent = t.path().join("srv");
        fs::create_dir(&parent).expect("mkdir");
        set_mode(&parent, 0o711);
        let dir = parent.join("wal");
        fs::create_dir(&dir).expect("mkdir");
        chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
        let cfg = || common::config(backend, SyncMode::EveryWrite);

        let first = as_nobody(|| {
            let (wal, entries) = open(&dir, cfg());
            assert!(entries.is_empty());
            let last = common::append_payloads(&wal, "t", 50, 512);
            wal.close().expect("close");
            last
        });
        assert_eq!(first, 50, "{backend:?}");
        let entries = as_nobody(|| {
            let (wal, entries) = open(&dir, cfg());
            let next = wal
                .append("t", 0, Bytes::from(payload(50, 512)))
                .wait()
                .expect("append after reopen");
            assert_eq!(next, 51, "{backend:?}");
            wal.close().expect("close");
            entries
        });
        assert_eq!(entries.len(), 50, "{backend:?}");
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1, "{backend:?}");
            assert_eq!(e.data, payload(i as u64, 512), "{backend:?}");
        }
        // The files belong to the user that wrote them.
        for e in fs::read_dir(&dir).expect("read_dir") {
            let md = e.expect("entry").metadata().expect("metadata");
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), NOBODY);
        }
    }
}
