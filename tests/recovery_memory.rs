//! Recovery streams: reopening a WAL far larger than any buffer the engine keeps and
//! reading every entry back raises the process's peak resident memory by a few
//! MiB, not by the size of the WAL. The only test in its binary, because it resets
//! and reads the whole process's peak RSS (`/proc/self/clear_refs`, `VmHWM`).

mod common;

use std::collections::VecDeque;

use bytes::Bytes;
use common::BACKENDS;
use streamline::bench::sys::{peak_rss_bytes, reset_peak_rss, rss_bytes};
use streamline::wal::{SyncMode, Wal, WalConfig};

const ENTRY: usize = 64 * 1024;
/// 256 MiB of payload in 8 files.
const ENTRIES: u64 = 4096;
/// What reopening and reading the WAL back may add to the peak RSS, an eighth of
/// the WAL: the commit thread's buffer pool that `Wal::open` starts (9 batches of
/// 1 MiB here: 8 in flight and one filling), the scan's 4 MiB read chunk, one
/// batch being decoded, and slack for the allocator.
const MAX_RISE: u64 = 32 << 20;

fn payload(i: u64) -> Bytes {
    let mut v = vec![(i % 251) as u8; ENTRY];
    v[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(v)
}

#[test]
fn reading_a_large_wal_back_holds_a_bounded_amount_of_memory() {
    for backend in BACKENDS {
        // On the checkout's filesystem (the uring backend needs O_DIRECT for its
        // every_write files; here os_default writes through the page cache).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let cfg = WalConfig {
            backend,
            sync_mode: SyncMode::OsDefault,
            max_file_size: 32 << 20,
            max_batch_bytes: 1 << 20,
            ..WalConfig::default()
        };
        let (wal, rec) = Wal::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(wal.backend(), backend);
        assert_eq!(rec.count(), 0);
        let mut pending = VecDeque::new();
        for i in 0..ENTRIES {
            pending.push_back(wal.append("big", 0, payload(i)));
            if pending.len() >= 16 {
                pending.pop_front().unwrap().wait().unwrap();
            }
        }
        for c in pending {
            c.wait().unwrap();
        }
        wal.close().unwrap();

        assert!(
            reset_peak_rss(),
            "cannot reset the peak RSS (/proc/self/clear_refs)"
        );
        let before = rss_bytes().expect("VmRSS");
        let (wal, rec) = Wal::open(dir.path(), cfg).unwrap();
        let mut n = 0u64;
        for e in rec {
            let e = e.unwrap();
            assert_eq!(e.sequence, n + 1, "{backend}");
            assert_eq!(e.data.len(), ENTRY, "{backend}");
            assert_eq!(e.data[..8], n.to_le_bytes(), "{backend}");
            assert_eq!(e.data[ENTRY - 1], (n % 251) as u8, "{backend}");
            n += 1;
        }
        let peak = peak_rss_bytes().expect("VmHWM");
        wal.close().unwrap();
        assert_eq!(n, ENTRIES, "{backend}: every entry read back");
        let rise = peak.saturating_sub(before);
        eprintln!(
            "{backend}: {} MiB of WAL read back, peak RSS {} MiB, {} MiB above the {} MiB before",
            (ENTRIES * ENTRY as u64) >> 20,
            peak >> 20,
            rise >> 20,
            before >> 20
        );
        assert!(
            rise <= MAX_RISE,
            "{backend}: reading {} MiB back raised the peak RSS by {rise} bytes",
            (ENTRIES * ENTRY as u64) >> 20
        );
    }
}
