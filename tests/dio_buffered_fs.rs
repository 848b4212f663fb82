//! On a real filesystem: a small ext4 image mounted through a loop device (needs
//! root, `mkfs.ext4` and loop devices; CI runs as root).
//!
//! ext4 accepts `open(O_DIRECT)` for a file it cannot do direct I/O on (mounted
//! `data=journal`, fscrypt without inline encryption, fs-verity) and then
//! performs every `O_DIRECT` write as a buffered one. Several durable writes in
//! flight side by side each report their own errors only when they really are
//! direct; through the page cache one fsync can consume the writeback error of
//! another's pages. The WAL asks the kernel (`statx`, `STATX_DIOALIGN`) and writes
//! such a file as a page-cache file, one durable write at a time, with one
//! warning naming the file. On the same image mounted without `data=journal` the
//! files are written `O_DIRECT`. Both backends, and `auto` (which then picks std).

mod common;
mod loop_fs;

use std::{collections::BTreeMap, path::Path, sync::Mutex};

use common::logs::logs;

use bytes::Bytes;
use loop_fs::LoopFs;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

/// The warnings that a WAL file under `dir` is written through the page cache.
fn page_cache_warnings(dir: &Path) -> Vec<String> {
    let logs = logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| {
            l.contains("no direct I/O for the WAL file") && l.contains(dir.to_str().unwrap())
        })
        .map(str::to_owned)
        .collect()
}

fn config(backend: BackendKind) -> WalConfig {
    WalConfig {
        backend,
        backend_from_env: false,
        sync_mode: SyncMode::EveryWrite,
        direct_io: Some(true),
        // Each durable write its own RWF_DSYNC write through the ring, several
        // side by side, where the files are O_DIRECT.
        uring_group_writes: Some(false),
        max_file_size: 256 * 1024,
        retention_files: 1,
        max_batch_bytes: 16 * 1024,
        ..WalConfig::default()
    }
}

fn data(p: u64, i: u64) -> Vec<u8> {
    let len = 500 + (p * 7919 + i * 104_729) % 2500;
    (0..len).map(|j| (p * 31 + i * 17 + j) as u8).collect()
}

/// Appends from 8 producers at once, each waiting for its acknowledgement;
/// returns what was acknowledged, by sequence.
fn append_all(wal: &Wal, round: u64) -> BTreeMap<u64, Vec<u8>> {
    let acked = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for p in 0..8u64 {
            let (wal, acked) = (wal, &acked);
            s.spawn(move || {
                for i in 0..60 {
                    let d = data(p + round * 8, i);
                    let seq = wal
                        .append("dio", p as i32, Bytes::from(d.clone()))
                        .wait()
                        .unwrap_or_else(|e| panic!("producer {p}, append {i}: {e}"));
                    acked.lock().unwrap().insert(seq, d);
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

/// Opens a WAL on `fs` with direct I/O asked for, appends across several
/// rotations (into prepared files, then, after a checkpoint, into recycled
/// ones), reopens it and reads everything back; checks throughout that the
/// files are written `O_DIRECT` exactly when `direct`, and that `backend` is in
/// use. Returns the page-cache warnings logged for the directory.
fn run(fs: &LoopFs, asked: BackendKind, backend: BackendKind, direct: bool) -> Vec<String> {
    let dir = fs.mount.join(format!("wal-{asked}"));
    let (wal, _) = Wal::open(&dir, config(asked)).unwrap();
    let what = format!("{asked} backend on {}", fs.mount.display());
    assert_eq!(wal.backend(), backend, "{what}");
    assert_eq!(wal.direct_io(), direct, "{what}: O_DIRECT in use");

    let first = append_all(&wal, 0);
    wal.checkpoint(*first.keys().last().unwrap()).unwrap();
    let acked = append_all(&wal, 1);
    let stats = wal.stats();
    assert!(stats.rotations >= 4, "{what}: {stats:?}");
    if !direct {
        // Through the page cache, one fsync would consume the writeback error
        // of pages another is also writing back.
        assert!(stats.max_syncs_in_flight <= 1, "{what}: {stats:?}");
    }
    wal.close().unwrap();

    let (wal, recovery) = Wal::open(&dir, config(asked)).unwrap();
    assert_eq!(wal.backend(), backend, "{what}, reopened");
    assert_eq!(wal.direct_io(), direct, "{what}, reopened: O_DIRECT in use");
    let back: BTreeMap<u64, Vec<u8>> = recovery
        .map(|e| {
            let e = e.unwrap();
            (e.sequence, e.data.to_vec())
        })
        .collect();
    assert_eq!(
        back.len(),
        acked.len(),
        "{what}: entries after the checkpoint"
    );
    assert!(back == acked, "{what}: the entries read back differ");
    // The log goes on where it stopped.
    let more = append_all(&wal, 2);
    assert_eq!(
        more.keys().next(),
        Some(&(acked.keys().last().unwrap() + 1)),
        "{what}"
    );
    wal.close().unwrap();
    page_cache_warnings(&dir)
}

#[test]
fn data_journal_ext4_files_are_written_through_the_page_cache() {
    logs();
    let fs = LoopFs::with_options(64, "data=journal");
    for (asked, backend) in [
        (BackendKind::Uring, BackendKind::Uring),
        (BackendKind::Std, BackendKind::Std),
        (BackendKind::Auto, BackendKind::Std),
    ] {
        let warnings = run(&fs, asked, backend, false);
        // One per open (two opens), naming the file and the reason.
        assert_eq!(warnings.len(), 2, "{asked}: {warnings:#?}");
        for w in &warnings {
            assert!(w.contains("STATX_DIOALIGN"), "{asked}: {w}");
            assert!(w.contains(".wal"), "{asked}: {w}");
        }
    }
}

#[test]
fn ordered_ext4_files_are_written_o_direct() {
    logs();
    let fs = LoopFs::new(64);
    for (asked, backend) in [
        (BackendKind::Uring, BackendKind::Uring),
        (BackendKind::Std, BackendKind::Std),
        (BackendKind::Auto, BackendKind::Uring),
    ] {
        let warnings = run(&fs, asked, backend, true);
        assert!(warnings.is_empty(), "{asked}: {warnings:#?}");
    }
}
