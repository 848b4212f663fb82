//! A ring that stops working under running WALs: once `io_uring_enter` fails,
//! every append that needs it fails with an error naming it, no append is
//! acknowledged that was not written, and closing reports the failure. Reopened
//! with the std backend, each log holds every acknowledged entry and nothing that
//! was not appended: exactly the acknowledged ones for an idle `every_write` WAL;
//! in `interval` mode also appends written to the page cache whose acknowledgement
//! the failed fdatasync stopped; under load, also writes that were in flight.
//!
//! The test thread installs a seccomp filter on every thread of the process
//! (the commit thread is already running) that answers `io_uring_enter` with
//! EIO. A filter cannot be removed, so this file holds one test and nothing else.
//! A WAL whose failure leaves operations in the kernel that the ring cannot
//! reap keeps its directory locked after the close; one whose refused enter
//! was the only operation in flight leaves nothing there (the entries the
//! kernel never took are never submitted) and is unlocked. Each log is
//! recovered from a copy.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use bytes::Bytes;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

mod common;

fn config(backend: BackendKind, sync_mode: SyncMode) -> WalConfig {
    WalConfig {
        backend,
        sync_mode,
        max_file_size: 1 << 20,
        ..WalConfig::default()
    }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("entry {i} ").repeat(40))
}

/// Appends 5 entries from each of 4 threads at once; returns what each got.
fn append_concurrently(wal: &Wal) -> Vec<(Bytes, streamline::Result<u64>)> {
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let w = wal.clone();
            std::thread::spawn(move || {
                (0..5u64)
                    .map(|i| {
                        let data = payload(1000 + t * 10 + i);
                        (data.clone(), w.append("t", 0, data).wait())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Reopens `path` with the std backend (io_uring is gone for this process) and
/// checks what it recovered: contiguous sequences, every `acked` entry with its
/// data, nothing that was not appended (each payload names its own number).
/// Appends once more, closes, and returns the entries.
fn recover_with_std(path: &std::path::Path, acked: &[(u64, Bytes)]) -> Vec<(u64, Bytes)> {
    let (wal, rec) = Wal::open(path, config(BackendKind::Std, SyncMode::EveryWrite)).unwrap();
    let got: Vec<(u64, Bytes)> = rec
        .map(|e| e.map(|e| (e.sequence, e.data)))
        .collect::<Result<_, _>>()
        .unwrap();
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    for a in acked {
        assert!(got.contains(a), "acknowledged entry {} lost", a.0);
    }
    for (seq, data) in &got {
        let text = std::str::from_utf8(data).unwrap();
        let n = text
            .strip_prefix("entry ")
            .and_then(|t| t.split(' ').next());
        let n: u64 = n.and_then(|n| n.parse().ok()).expect("a payload");
        assert_eq!(payload(n), *data, "entry {seq} holds data never appended");
    }
    let next = got.len() as u64 + 1;
    assert_eq!(wal.append("t", 0, payload(next)).wait().unwrap(), next);
    wal.close().unwrap();
    got
}

/// A copy of the files of `path`, the directory of a WAL whose ring failed.
/// Where it failed with operations it could not reap the directory stays
/// locked: the kernel may still complete them, and a new owner's writes must
/// not be overwritten. Where nothing was left in the kernel (the refused
/// enter carried the only operation in flight) it is not, and `locked` is
/// false: the files are copied as the close left them.
fn copy_of(path: &std::path::Path, locked: Option<bool>) -> tempfile::TempDir {
    let lock = std::fs::File::open(path.join("LOCK")).unwrap();
    let free = lock.try_lock().is_ok();
    drop(lock);
    if let Some(locked) = locked {
        assert_eq!(!free, locked, "{}: locked", path.display());
    }
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(path).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
        }
    }
    copy
}

fn assert_names_the_ring(e: &streamline::Error) {
    assert!(e.to_string().contains("io_uring_enter"), "{e}");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
}

#[test]
fn a_failing_ring_fails_appends_and_acknowledges_nothing_it_did_not_write() {
    std::env::remove_var("STREAMLINE_WAL_BACKEND");
    let dir = tempfile::tempdir().unwrap();
    let durable = dir.path().join("every_write");
    let buffered = dir.path().join("interval");
    // Every durable write through the ring: by default a lone producer's writes
    // go out on the commit thread once 32 in a row were alone
    // (`uring_group_writes`), and those need no ring.
    let ring_only = WalConfig {
        uring_group_writes: Some(false),
        ..config(BackendKind::Uring, SyncMode::EveryWrite)
    };
    let (wal, _) = Wal::open(&durable, ring_only).unwrap();
    assert_eq!(wal.backend(), BackendKind::Uring);
    let (wal2, _) = Wal::open(&buffered, config(BackendKind::Uring, SyncMode::Interval)).unwrap();
    assert_eq!(wal2.backend(), BackendKind::Uring);
    for i in 1..=50u64 {
        assert_eq!(wal.append("t", 0, payload(i)).wait().unwrap(), i);
        assert_eq!(wal2.append("t", 0, payload(i)).wait().unwrap(), i);
    }
    wal2.sync().wait().unwrap();

    // A third WAL under load when the ring fails: writes are in flight then.
    let loaded = dir.path().join("loaded");
    let (wal3, _) = Wal::open(&loaded, config(BackendKind::Uring, SyncMode::EveryWrite)).unwrap();
    let loaders: Vec<_> = (0..4u64)
        .map(|t| {
            let w = wal3.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    let data = payload(1_000_000 * (t + 1) + i);
                    match w.append("t", 0, data.clone()).wait() {
                        Ok(seq) => acked.push((seq, data)),
                        Err(e) => {
                            assert_names_the_ring(&e);
                            return acked;
                        }
                    }
                }
                unreachable!()
            })
        })
        .collect();
    while wal3.stats().entries < 200 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    common::seccomp::deny(libc::SYS_io_uring_enter, libc::EIO, true);

    let mut acked3: Vec<(u64, Bytes)> = loaders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acked3.sort();
    // 200 entries had been written; each of the 4 writers waits for its one append.
    assert!(acked3.len() >= 196, "{} acknowledged", acked3.len());
    assert_names_the_ring(&wal3.close().unwrap_err());
    // Entries written but not acknowledged (in flight when the ring failed) may
    // be there too.
    // Locked if an operation was in the kernel when the ring failed.
    let got = recover_with_std(copy_of(&loaded, None).path(), &acked3);
    assert!(
        got.len() <= acked3.len() + 4,
        "at most one unacknowledged append per writer"
    );

    // every_write: each append needs the ring; every one fails, naming it.
    for (_, r) in append_concurrently(&wal) {
        assert_names_the_ring(&r.expect_err("an append the ring never took was acknowledged"));
    }
    // interval: appends are page-cache writes (pwrite) acknowledged once written;
    // the fdatasync goes through the ring and fails, and with it the WAL.
    let acked: Vec<(u64, Bytes)> = append_concurrently(&wal2)
        .into_iter()
        .filter_map(|(data, r)| match r {
            Ok(seq) => Some((seq, data)),
            Err(e) => {
                assert_names_the_ring(&e);
                None
            }
        })
        .collect();
    assert_names_the_ring(&wal2.sync().wait().unwrap_err());

    for w in [&wal, &wal2] {
        let e = w.append("t", 0, payload(0)).wait().unwrap_err();
        assert!(e.to_string().contains("failed state"), "{e}");
        assert_names_the_ring(&e);
        assert_names_the_ring(&w.sync().wait().unwrap_err());
    }
    assert_names_the_ring(&wal.close().unwrap_err());
    assert_names_the_ring(&wal2.close().unwrap_err());

    let want: Vec<(u64, Bytes)> = (1..=50).map(|i| (i, payload(i))).collect();
    // Idle, then each batch refused at its submission: nothing was left in
    // the kernel.
    let got = recover_with_std(copy_of(&durable, Some(false)).path(), &want);
    assert_eq!(got, want, "every_write: exactly what was acknowledged");
    // interval: the synced entries and every acknowledged one; anything else was
    // written, then not acknowledged because the fdatasync before it failed.
    let got = recover_with_std(copy_of(&buffered, Some(false)).path(), &acked);
    assert_eq!(got[..50], want[..], "interval: the synced entries");
}
