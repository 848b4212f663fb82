//! Short writes from a real kernel. A file size limit (`RLIMIT_FSIZE`) makes the
//! kernel write a batch only up to the limit and return that count; the rest of
//! the batch, written again from where the short write stopped, then fails with
//! EFBIG. So the batch is never acknowledged, the WAL fails with the kernel's
//! error rather than a made-up one, and after the limit is lifted everything
//! acknowledged is recovered while the half-written batch is cut as a torn tail.
//!
//! Covers the io_uring backend's resubmission of a short write (a write with
//! `RWF_DSYNC` on an `O_DIRECT` file, and a page-cache write whose linked fsync
//! the kernel cancels), and the `pwrite` loop of the std backend and of the
//! io_uring backend's group writes.
//!
//! The limit is per process, so this file holds one test and nothing else.

use std::{collections::BTreeMap, os::unix::fs::FileExt, time::Duration};

use bytes::Bytes;
use streamline::wal::{files, BackendKind, SyncMode, Wal, WalConfig};

const FILE_SIZE: u64 = 1 << 20;
/// Where writes are cut: inside `current.wal`, on a block boundary.
const LIMIT: libc::rlim_t = 512 << 10;
/// One entry per batch (each append waits): a batch then takes 5 blocks, so
/// batches start at 4096 + k × 20480 and the one at 516096 crosses the limit.
const ENTRY: usize = 20_000;
const STRADDLING_BATCH: u64 = 4096 + 25 * 20_480;

fn set_file_size_limit(limit: libc::rlim_t) {
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit struct from a live local.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) };
    assert_eq!(r, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

fn payload(i: u64) -> Vec<u8> {
    (0..ENTRY as u64)
        .map(|j| (i * 131 + j * 7 + j / 4096) as u8)
        .collect()
}

#[test]
fn a_short_write_is_written_again_from_where_it_stopped_and_never_acknowledged_alone() {
    // A write at or past the limit raises SIGXFSZ, which would end the process.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    for (backend, direct_io, uring_group_writes) in [
        (BackendKind::Std, None, None),
        (BackendKind::Uring, Some(true), Some(false)),
        (BackendKind::Uring, Some(true), Some(true)),
        (BackendKind::Uring, Some(false), None),
    ] {
        let what =
            format!("{backend} (direct_io {direct_io:?}, group writes {uring_group_writes:?})");
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            backend,
            direct_io,
            uring_group_writes,
            sync_mode: SyncMode::EveryWrite,
            max_file_size: FILE_SIZE,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(wal.backend(), backend, "requested backend not in use");
        // Let the background work finish first (the rest of `current.wal`
        // zero-filled, `next.wal` prepared), so that only appends meet the limit.
        let current = dir.path().join("current.wal");
        let next = dir.path().join("next.wal");
        let start = std::time::Instant::now();
        while !(next.exists()
            && files::first_unwritten(&std::fs::File::open(&current).unwrap())
                .is_none_or(|hole| hole >= FILE_SIZE))
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: preparation not done"
            );
            std::thread::sleep(Duration::from_millis(5));
        }

        set_file_size_limit(LIMIT);
        let mut acked = BTreeMap::new();
        let mut error = None;
        for i in 0..100u64 {
            match wal.append("short", 0, Bytes::from(payload(i))).wait() {
                Ok(seq) => {
                    assert!(error.is_none(), "{what}: acknowledged after a failure");
                    acked.insert(seq, payload(i));
                }
                Err(e) if error.is_none() => error = Some(e),
                Err(_) => break, // and the next one fails too
            }
        }
        set_file_size_limit(libc::RLIM_INFINITY);

        let error = error.unwrap_or_else(|| panic!("{what}: no append failed at the limit"));
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EFBIG),
            "{what}: the failure is not the kernel's EFBIG: {error}"
        );
        assert!(error.to_string().contains("current.wal"), "{what}: {error}");
        // Every batch that ended at or below the limit, and none beyond.
        assert_eq!(acked.len(), 25, "{what}: acknowledged {}", acked.len());
        // The kernel did write the straddling batch up to the limit: its header is
        // there (a write failed outright would have left zeros).
        let mut head = [0u8; 64];
        std::fs::File::open(&current)
            .unwrap()
            .read_exact_at(&mut head, STRADDLING_BATCH)
            .unwrap();
        assert_ne!(head, [0u8; 64], "{what}: no short write happened");
        let _ = wal.close();

        let (wal, rec) = Wal::open(dir.path(), cfg)
            .unwrap_or_else(|e| panic!("{what}: reopen after the short write: {e}"));
        let entries = rec
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{what}: recovery: {e}"));
        let recovered: BTreeMap<u64, Vec<u8>> = entries
            .iter()
            .map(|e| (e.sequence, e.data.to_vec()))
            .collect();
        assert_eq!(
            recovered, acked,
            "{what}: recovery differs from what was acknowledged"
        );
        let seq = wal
            .append("short", 0, Bytes::from_static(b"after"))
            .wait()
            .unwrap_or_else(|e| panic!("{what}: append after reopening: {e}"));
        assert_eq!(seq, 26);
        wal.close().unwrap();
    }
}
