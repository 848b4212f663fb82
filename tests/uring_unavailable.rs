//! Where io_uring is forbidden, as in containers whose seccomp profile blocks it
//! (Docker's default does): `auto` falls back to the std backend and works, and an
//! explicit `uring` fails with an error that says so instead of falling back.
//!
//! The test thread installs a seccomp filter that answers `io_uring_setup` with
//! ENOSYS; threads it starts later (the WAL's) inherit it. A filter cannot be
//! removed, so this file holds one test and nothing else.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use bytes::Bytes;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

mod common;

/// Makes `io_uring_setup` fail with ENOSYS for this thread and every thread it
/// starts from now on.
fn forbid_io_uring() {
    common::seccomp::deny(libc::SYS_io_uring_setup, libc::ENOSYS, false);
}

/// The shared small-file configuration, `every_write`.
fn config(backend: BackendKind) -> WalConfig {
    common::config(backend, SyncMode::EveryWrite)
}

#[test]
fn without_io_uring_auto_falls_back_to_std_and_uring_is_refused() {
    // The variable would override `auto`.
    std::env::remove_var("STREAMLINE_WAL_BACKEND");
    let dir = tempfile::tempdir().unwrap();
    // With io_uring available, `auto` means uring here.
    let (wal, _) = Wal::open(dir.path().join("before"), config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Uring);
    wal.close().unwrap();

    forbid_io_uring();
    let err = io_uring::IoUring::new(8).map(|_| ()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSYS), "{err}");

    let err = Wal::open(dir.path().join("uring"), config(BackendKind::Uring))
        .map(|_| ())
        .expect_err("uring was requested and io_uring is forbidden");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSYS), "{err}");
    assert!(err.to_string().contains("io_uring_setup"), "{err}");

    let path = dir.path().join("auto");
    let (wal, _) = Wal::open(&path, config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std, "auto did not fall back");
    let seqs: Vec<u64> = (0..200u64)
        .map(|i| {
            wal.append("fallback", 0, Bytes::from(vec![i as u8; 3000]))
                .wait()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(
        wal.stats().rotations > 0,
        "256 KiB files should have rotated"
    );
    wal.close().unwrap();

    let (wal, rec) = Wal::open(&path, config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std);
    let entries = rec.collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(entries.len(), 200);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(&e.data[..], &vec![i as u8; 3000][..]);
    }
    wal.close().unwrap();
}
