//! Recovery bugs found by the hostile-bytes tests, pinned by minimal cases.

use bytes::Bytes;
use streamline::{
    wal::{BackendKind, SyncMode, Wal, WalConfig},
    Error,
};

fn config() -> WalConfig {
    WalConfig {
        backend: BackendKind::Std,
        sync_mode: SyncMode::EveryWrite,
        max_file_size: WalConfig::MIN_FILE_SIZE,
        retention_files: 100,
        max_batch_bytes: 8192,
        ..WalConfig::default()
    }
}

/// Without a checkpoint the log must start at sequence 1: a missing oldest file is
/// lost data, not a shorter log. (It used to be accepted silently, recovering from
/// the second file on.)
#[test]
fn missing_oldest_file_without_checkpoint_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    while wal.stats().rotations < 2 {
        wal.append("t", 0, Bytes::from(vec![1u8; 2000]))
            .wait()
            .unwrap();
    }
    wal.close().unwrap();
    std::fs::remove_file(dir.path().join("00000001.wal")).unwrap();
    let err = Wal::open(dir.path(), config())
        .map(|_| ())
        .expect_err("a log missing its first entries was accepted");
    assert!(
        matches!(&err, Error::Corrupt { file, .. } if file.ends_with("00000002.wal")),
        "{err}"
    );
    assert!(err.to_string().contains("entries are missing"), "{err}");
}

/// A seal may skip sequences only up to the checkpoint (the WAL seals that way when
/// the checkpoint is ahead of the log). A seal block copied over an earlier batch
/// of its own file used to end the file there, silently dropping the entries
/// between. (Found by `hostile_bytes::mutated_wal_never_yields_garbage`.)
#[test]
fn seal_that_skips_unchecked_entries_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    while wal.stats().rotations < 1 {
        wal.append("t", 0, Bytes::from(vec![1u8; 2000]))
            .wait()
            .unwrap();
    }
    wal.close().unwrap();
    let first = dir.path().join("00000001.wal");
    let info = streamline::wal::recovery::scan_file(
        &first,
        Some(1),
        false,
        None,
        streamline::wal::RecoveryMode::Strict,
    )
    .unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    let seal_at = info.valid_end as usize - 4096;
    let seal = bytes[seal_at..seal_at + 4096].to_vec();
    // Over the second batch (block 2): entry 1 stays, the seal claims the next file
    // starts after the last entry of this one.
    bytes[2 * 4096..3 * 4096].copy_from_slice(&seal);
    std::fs::write(&first, &bytes).unwrap();
    let err = Wal::open(dir.path(), config())
        .map(|_| ())
        .expect_err("a seal skipping entries was accepted");
    assert!(
        matches!(&err, Error::Corrupt { file, offset: 8192, .. } if file.ends_with("00000001.wal")),
        "{err}"
    );
}
