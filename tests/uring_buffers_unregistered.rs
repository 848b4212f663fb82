//! Where io_uring cannot register the WAL's buffers (registered buffers count
//! against `RLIMIT_MEMLOCK`, which a few WALs exceed without `CAP_IPC_LOCK`), the
//! uring backend writes from unregistered buffers: the WAL opens, acknowledges
//! and recovers as usual, under `uring` and `auto` alike.
//!
//! The test thread installs a seccomp filter that answers
//! `io_uring_register(IORING_REGISTER_BUFFERS)` with ENOMEM, as the kernel does
//! past the limit; threads it starts later (the WAL's) inherit it. A filter
//! cannot be removed, so this file holds one test and nothing else.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use bytes::Bytes;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

mod common;

/// `IORING_REGISTER_BUFFERS`.
const REGISTER_BUFFERS: u32 = 0;

#[test]
fn without_registered_buffers_the_uring_backend_still_writes_and_recovers() {
    std::env::remove_var("STREAMLINE_WAL_BACKEND");
    common::seccomp::deny_op(
        libc::SYS_io_uring_register,
        REGISTER_BUFFERS,
        libc::ENOMEM,
        false,
    );
    common::logs::logs();
    let dir = tempfile::tempdir().unwrap();
    for (name, backend) in [("uring", BackendKind::Uring), ("auto", BackendKind::Auto)] {
        let path = dir.path().join(name);
        let config = WalConfig {
            backend,
            sync_mode: SyncMode::EveryWrite,
            max_file_size: 1 << 20,
            ..WalConfig::default()
        };
        // The filter takes: each open's registration fails, and says so.
        let warnings = || {
            common::logs::text()
                .matches("registering the WAL's buffers with io_uring failed")
                .count()
        };
        let before = warnings();
        let (wal, _) = Wal::open(&path, config.clone())
            .unwrap_or_else(|e| panic!("{name}: open without registered buffers: {e}"));
        assert_eq!(wal.backend(), BackendKind::Uring, "{name}");
        assert_eq!(warnings(), before + 1, "{name}: registration did not fail");
        // Entries of one block and of several (the batch buffers are 256 KiB).
        let size = |i: u64| if i.is_multiple_of(10) { 300_000 } else { 3000 };
        let seqs: Vec<u64> = (0..100u64)
            .map(|i| {
                wal.append("t", 0, Bytes::from(vec![i as u8; size(i)]))
                    .wait()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "{name}");
        assert!(wal.stats().rotations > 0, "{name}: 1 MiB files rotate");
        wal.close().unwrap();

        let (wal, rec) = Wal::open(&path, config).unwrap();
        assert_eq!(warnings(), before + 2, "{name}: the reopen's registration");
        let entries = rec.collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(entries.len(), 100, "{name}");
        for (i, e) in entries.iter().enumerate() {
            let i = i as u64;
            assert_eq!(e.sequence, i + 1);
            assert_eq!(&e.data[..], &vec![i as u8; size(i)][..], "{name}");
        }
        wal.close().unwrap();
    }
}
