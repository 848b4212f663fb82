//! On a kernel older than Linux 5.6 an io_uring ring can be set up, but the
//! operations the WAL needs at its first rotation or first large entry are
//! missing. Such a kernel also has no `IORING_REGISTER_PROBE`: the backend asks
//! for it at setup, so `auto` falls back to the std backend at once and an
//! explicit `uring` is refused with an error naming the kernel needed.
//!
//! The test thread installs a seccomp filter that answers
//! `io_uring_register(IORING_REGISTER_PROBE)` with EINVAL, as a 5.1-5.5 kernel
//! does; threads it starts later inherit it. A filter cannot be removed, so
//! this file holds one test and nothing else.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use bytes::Bytes;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

mod common;

/// `IORING_REGISTER_PROBE`.
const REGISTER_PROBE: u32 = 8;

/// The shared small-file configuration, `every_write`.
fn config(backend: BackendKind) -> WalConfig {
    common::config(backend, SyncMode::EveryWrite)
}

#[test]
fn a_kernel_without_the_operations_needed_gets_the_std_backend() {
    std::env::remove_var("STREAMLINE_WAL_BACKEND");
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path().join("before"), config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Uring, "io_uring works here");
    wal.close().unwrap();

    common::seccomp::deny_op(
        libc::SYS_io_uring_register,
        REGISTER_PROBE,
        libc::EINVAL,
        false,
    );
    let err = Wal::open(dir.path().join("uring"), config(BackendKind::Uring))
        .map(|_| ())
        .expect_err("uring was requested on a kernel without the operations");
    assert!(err.to_string().contains("Linux 5.6"), "{err}");

    let path = dir.path().join("auto");
    let (wal, _) = Wal::open(&path, config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std, "auto did not fall back");
    for i in 0..100u64 {
        let seq = wal
            .append("t", 0, Bytes::from(vec![i as u8; 3000]))
            .wait()
            .unwrap();
        assert_eq!(seq, i + 1);
    }
    assert!(wal.stats().rotations > 0);
    wal.close().unwrap();
    let (wal, rec) = Wal::open(&path, config(BackendKind::Auto)).unwrap();
    assert_eq!(rec.count(), 100);
    wal.close().unwrap();
}
