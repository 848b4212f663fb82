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
        wal.append("t", 0, Bytes::from(vec![1u8; 2000])).wait().unwrap();
    }
    wal.close().unwrap();
    std::fs::remove_file(dir.path().join("00000001.wal")).unwrap();
    let err = Wal::open(dir.path(), config()).map(|_| ()).expect_err("a log missing its first entries was accepted");
    assert!(matches!(&err, Error::Corrupt { file, .. } if file.ends_with("00000002.wal")), "{err}");
    assert!(err.to_string().contains("entries are missing"), "{err}");
}
