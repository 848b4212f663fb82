//! Append, reopen, recover: the basic contract on both backends and all sync modes.

mod common;

use bytes::Bytes;
use common::{config, open, payload, BACKENDS};
use streamline::wal::{NewEntry, SyncMode, WalEntryType};

#[test]
fn append_reopen_recovers_everything_in_order() {
    for backend in BACKENDS {
        for mode in [
            SyncMode::EveryWrite,
            SyncMode::Interval,
            SyncMode::OsDefault,
        ] {
            // O_DIRECT on and off for every mode (the std backend ignores it).
            for direct_io in [Some(true), Some(false)] {
                let dir = tempfile::tempdir().unwrap();
                let cfg = streamline::wal::WalConfig {
                    direct_io,
                    ..config(backend, mode)
                };
                let (wal, rec) = open(dir.path(), cfg.clone());
                assert!(rec.is_empty());
                let mut seqs = Vec::new();
                for i in 0..300u64 {
                    let data = payload(i, (i as usize * 37) % 3000);
                    seqs.push(
                        wal.append("t", (i % 3) as i32, Bytes::from(data))
                            .wait()
                            .unwrap(),
                    );
                }
                assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "{backend} {mode}");
                assert!(wal.stats().rotations > 0, "256 KiB files should rotate");
                wal.close().unwrap();

                let (wal, rec) = open(dir.path(), cfg.clone());
                assert_eq!(rec.len(), 300, "{backend} {mode}");
                for (i, e) in rec.iter().enumerate() {
                    assert_eq!(e.sequence, i as u64 + 1);
                    assert_eq!(e.topic, "t");
                    assert_eq!(e.partition, (i % 3) as i32);
                    assert_eq!(e.entry_type, WalEntryType::Record);
                    assert_eq!(&e.data[..], &payload(i as u64, (i * 37) % 3000)[..]);
                }
                assert_eq!(
                    wal.append("t", 0, Bytes::from_static(b"x")).wait().unwrap(),
                    301
                );
                let first = wal
                    .append_batch(vec![
                        NewEntry::record("u", 1, Bytes::from_static(b"a")),
                        NewEntry::record("u", 2, Bytes::from_static(b"b")),
                    ])
                    .wait()
                    .unwrap();
                assert_eq!(first, 302);
                drop(wal);
                let (_wal, rec) = open(dir.path(), cfg);
                assert_eq!(rec.len(), 303);
                assert_eq!(rec[302].sequence, 303);
                assert_eq!(&rec[302].data[..], b"b");
            }
        }
    }
}

/// What `{:?}` shows of a WAL, its recovery and a completion: enough to tell
/// them apart in a log line.
#[test]
fn debug_output_names_the_directory_backend_and_state() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, rec) = streamline::wal::Wal::open(dir.path(), cfg.clone()).unwrap();
        let shown = format!("{wal:?}");
        assert!(
            shown.contains(&dir.path().display().to_string())
                && shown
                    .to_lowercase()
                    .contains(&backend.to_string().to_lowercase()),
            "{shown}"
        );
        let shown = format!("{rec:?}");
        assert!(
            shown.starts_with("Recovery") && shown.contains("checkpoint: 0"),
            "{shown}"
        );
        drop(rec);
        let c = wal.append("t", 0, Bytes::from_static(b"x"));
        assert!(format!("{c:?}").starts_with("Completion"));
        assert_eq!(c.wait().unwrap(), 1);
        wal.close().unwrap();
        let (_, rec) = streamline::wal::Wal::open(dir.path(), cfg).unwrap();
        let shown = format!("{rec:?}");
        assert!(shown.contains("last_sequence: 1"), "{shown}");
    }
}
