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
    let dir = rotated_log(2);
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
    let dir = rotated_log(1);
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

/// Writes a log that rotated `files` times, one 2,000-byte entry per batch (each
/// batch one block: batches of file 1 start at 4096, 8192, ...), closed cleanly.
fn rotated_log(files: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    while wal.stats().rotations < files {
        wal.append("t", 0, Bytes::from(vec![1u8; 2000]))
            .wait()
            .unwrap();
    }
    wal.close().unwrap();
    dir
}

/// A file missing from the middle of the log is reported, naming the file that
/// follows the gap, whether the gap shows in the archived names or only in the
/// active file's header (`current.wal` has no number in its name).
#[test]
fn a_file_missing_from_the_middle_of_the_log_is_reported() {
    for (removed, named, why) in [
        ("00000002.wal", "00000003.wal", "file 3 follows file 1"),
        (
            "00000003.wal",
            "current.wal",
            "header says file 4, expected 3",
        ),
    ] {
        let dir = rotated_log(3);
        std::fs::remove_file(dir.path().join(removed)).unwrap();
        let err = Wal::open(dir.path(), config())
            .map(|_| ())
            .expect_err("a log with a file missing was accepted");
        assert!(
            matches!(&err, Error::Corrupt { file, offset: 0, .. } if file.ends_with(named)),
            "{removed}: {err}"
        );
        assert!(err.to_string().contains(why), "{err}");
    }
}

/// A batch header whose checksum is right but whose length runs past the end of
/// the file (a writer bug, or bytes made to pass the checksum) is never followed:
/// inside the log it is corruption at its offset; as the last batch of the
/// newest file after a crash it is a torn tail, cut.
#[test]
fn a_checksummed_length_running_past_the_end_of_the_file_is_never_followed() {
    use streamline::wal::format::{decode_batch_header, encode_batch_header, BATCH_HEADER_LEN};
    let stretch = |path: &std::path::Path, number: u64, at: usize| {
        let mut bytes = std::fs::read(path).unwrap();
        let mut h = decode_batch_header(&bytes[at..at + BATCH_HEADER_LEN], number).unwrap();
        h.payload_len = u32::MAX - 4096;
        encode_batch_header(&mut bytes[at..at + BATCH_HEADER_LEN], &h);
        std::fs::write(path, &bytes).unwrap();
    };

    // Inside the log: the second batch of the first (archived) file.
    let dir = rotated_log(1);
    stretch(&dir.path().join("00000001.wal"), 1, 8192);
    let err = Wal::open(dir.path(), config())
        .map(|_| ())
        .expect_err("a batch running past the end of its file was accepted");
    assert!(
        matches!(&err, Error::Corrupt { file, offset: 8192, .. } if file.ends_with("00000001.wal")),
        "{err}"
    );
    assert!(
        err.to_string().contains("runs past the end of the file"),
        "{err}"
    );

    // The last batch of the newest file, after a crash (no clean-close record).
    let dir = rotated_log(1);
    let (wal, rec) = Wal::open(dir.path(), config()).unwrap();
    let mut total = rec.count() as u64;
    for _ in 0..3 {
        total = wal
            .append("t", 0, Bytes::from(vec![2u8; 2000]))
            .wait()
            .unwrap();
    }
    wal.close().unwrap();
    let current = dir.path().join("current.wal");
    let info = streamline::wal::recovery::scan_file(
        &current,
        None,
        true,
        None,
        streamline::wal::RecoveryMode::Strict,
    )
    .unwrap();
    assert!(
        info.entries >= 2,
        "the newest file holds {} entries",
        info.entries
    );
    stretch(&current, info.number, info.valid_end as usize - 4096);
    std::fs::remove_file(
        dir.path()
            .join(streamline::wal::clean_close::CLEAN_CLOSE_FILE),
    )
    .unwrap();
    let (wal, rec) = Wal::open(dir.path(), config()).unwrap();
    assert!(rec.truncated.is_some(), "the stretched batch was not cut");
    let entries = rec.collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(entries.len() as u64, total - 1);
    assert_eq!(
        wal.append("t", 0, Bytes::from_static(b"next"))
            .wait()
            .unwrap(),
        total
    );
    wal.close().unwrap();
}
