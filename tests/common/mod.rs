//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub mod seccomp;

pub mod logs;

use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig, WalEntry};

/// Both backends; every parametrised test runs once per entry.
pub const BACKENDS: [BackendKind; 2] = [BackendKind::Std, BackendKind::Uring];

/// Every way `every_write` batches reach the disk: the `std` backend, and the
/// `uring` backend with each durable write through the ring and with group
/// writes on the commit thread, each forced (by default it picks by load, see
/// `WalConfig::uring_group_writes`).
pub const WRITE_PATHS: [(BackendKind, Option<bool>); 3] = [
    (BackendKind::Std, None),
    (BackendKind::Uring, Some(false)),
    (BackendKind::Uring, Some(true)),
];

/// A small-file configuration for tests.
pub fn config(backend: BackendKind, mode: SyncMode) -> WalConfig {
    WalConfig {
        backend,
        sync_mode: mode,
        sync_interval_ms: 5,
        max_file_size: 256 * 1024,
        retention_files: 1,
        max_batch_bytes: 64 * 1024,
        ..WalConfig::default()
    }
}

/// Opens, asserting the requested backend really is the one in use.
pub fn open(dir: &Path, cfg: WalConfig) -> (Wal, Vec<WalEntry>) {
    let want = cfg.backend;
    let (wal, rec) = Wal::open(dir, cfg).expect("open WAL");
    assert_eq!(wal.backend(), want, "requested backend not in use");
    let entries = rec.collect::<Result<Vec<_>, _>>().expect("recovery");
    (wal, entries)
}

/// Appends `n` records of `payload(i, len)` (i = 0..n) to `topic`, each waited
/// for; returns the last sequence.
pub fn append_payloads(wal: &Wal, topic: &str, n: u64, len: usize) -> u64 {
    let mut last = 0;
    for i in 0..n {
        last = wal
            .append(topic, 0, bytes::Bytes::from(payload(i, len)))
            .wait()
            .expect("append");
    }
    last
}

/// Deterministic payload for a sequence/index.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tokio runtime for tasks that `.await` the WAL: the current thread only
/// (`workers` 0), or `workers` runtime threads.
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_time()
            .build()
    }
    .unwrap()
}
