//! Crashes in the middle of a rotation, reproduced on disk: every intermediate state
//! of seal → rename → rename → directory fsync recovers the full log and appends
//! continue with the next sequence.

mod common;

use std::{os::unix::fs::FileExt, path::Path};

use bytes::Bytes;
use common::{config, open, payload, BACKENDS};
use streamline::wal::{
    files::{archived_path, list_archived},
    format::{encode_batch_header, BatchHeader, BatchKind, BATCH_HEADER_LEN, BLOCK_SIZE},
    SyncMode, WalReader,
};

/// Writes `n` entries and closes; returns the number of the active file. The
/// clean close's marker is removed: a crash in the middle of a rotation never
/// leaves one (the open removes it before anything is written), so recovery
/// scans these states as after a crash.
fn write(dir: &Path, backend: streamline::wal::BackendKind, n: u64) -> u64 {
    let (wal, _) = open(dir, config(backend, SyncMode::EveryWrite));
    for i in 0..n {
        wal.append("rot", 0, Bytes::from(payload(i, 900)))
            .wait()
            .unwrap();
    }
    drop(wal);
    std::fs::remove_file(dir.join(streamline::wal::clean_close::CLEAN_CLOSE_FILE))
        .expect("a clean close leaves its marker");
    list_archived(dir).unwrap().last().map_or(1, |(n, _)| n + 1)
}

/// Seals `current.wal` the way rotation does, before its renames.
fn seal_current(dir: &Path, number: u64, next_sequence: u64) {
    let reader = WalReader::open(dir).unwrap();
    let info = reader.scan().files.last().unwrap().clone();
    assert_eq!(info.number, number);
    let mut block = vec![0u8; BLOCK_SIZE];
    let h = BatchHeader {
        kind: BatchKind::Seal,
        file_number: number,
        first_sequence: next_sequence,
        entry_count: 0,
        payload_len: 0,
        synced_through: next_sequence - 1,
        entries_crc: Some(0),
    };
    encode_batch_header(&mut block[..BATCH_HEADER_LEN], &h, info.key);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("current.wal"))
        .unwrap();
    f.write_all_at(&block, info.valid_end).unwrap();
    f.sync_all().unwrap();
}

fn check_full_log_then_append(dir: &Path, backend: streamline::wal::BackendKind, n: u64) {
    let (wal, rec) = open(dir, config(backend, SyncMode::EveryWrite));
    assert_eq!(rec.len() as u64, n, "{backend}");
    for (i, e) in rec.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(&e.data[..], &payload(i as u64, 900)[..]);
    }
    assert_eq!(
        wal.append("rot", 0, Bytes::from_static(b"after"))
            .wait()
            .unwrap(),
        n + 1,
        "{backend}"
    );
    drop(wal);
    let reader = WalReader::open(dir).unwrap();
    assert_eq!(reader.entries_from(1).count() as u64, n + 1);
}

#[test]
fn crash_after_seal_before_renames() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let number = write(dir.path(), backend, 40);
        seal_current(dir.path(), number, 41);
        check_full_log_then_append(dir.path(), backend, 40);
        assert!(
            archived_path(dir.path(), number).exists(),
            "{backend}: the sealed file was not archived"
        );
    }
}

#[test]
fn crash_between_the_two_renames() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let number = write(dir.path(), backend, 40);
        seal_current(dir.path(), number, 41);
        // current.wal → 0000000N.wal happened; next.wal → current.wal did not.
        std::fs::rename(
            dir.path().join("current.wal"),
            archived_path(dir.path(), number),
        )
        .unwrap();
        std::fs::write(dir.path().join("next.wal"), vec![0u8; 8192]).unwrap();
        check_full_log_then_append(dir.path(), backend, 40);
        assert!(
            !dir.path().join("next.wal").exists()
                || std::fs::metadata(dir.path().join("next.wal"))
                    .unwrap()
                    .len()
                    > 8192
        );
    }
}

/// As a rotation leaves it: the next file prepared whole (the preparer
/// renames only complete files into `next.wal`). The open takes that very
/// file as `current.wal`, and appends go on in it.
#[test]
fn crash_between_the_two_renames_with_the_next_file_prepared() {
    use streamline::wal::{
        files::{prepare_file, Prealloc},
        format::decode_file_header,
    };
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let number = write(dir.path(), backend, 40);
        seal_current(dir.path(), number, 41);
        let size = config(backend, SyncMode::EveryWrite).max_file_size;
        let next = prepare_file(dir.path(), number + 1, size, Prealloc::ZeroFill).unwrap();
        assert_eq!(next, dir.path().join("next.wal"));
        // Its key, drawn at random when it was made, tells it from any other.
        let prepared = decode_file_header(&std::fs::read(&next).unwrap()).unwrap();
        std::fs::rename(
            dir.path().join("current.wal"),
            archived_path(dir.path(), number),
        )
        .unwrap();
        check_full_log_then_append(dir.path(), backend, 40);
        let current = dir.path().join("current.wal");
        let header = decode_file_header(&std::fs::read(&current).unwrap()).unwrap();
        assert_eq!(
            (header.file_number, header.key),
            (number + 1, prepared.key),
            "{backend}: the prepared file became current.wal"
        );
    }
}

#[test]
fn crash_while_preparing_the_next_file() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), backend, 40);
        std::fs::write(dir.path().join("next.wal.tmp"), b"half a header").unwrap();
        check_full_log_then_append(dir.path(), backend, 40);
    }
}

#[test]
fn a_missing_archived_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let backend = streamline::wal::BackendKind::Std;
    let (wal, _) = open(dir.path(), config(backend, SyncMode::Interval));
    for i in 0..400u64 {
        wal.append("rot", 0, Bytes::from(payload(i, 2000)))
            .wait()
            .unwrap();
    }
    drop(wal);
    let archived = list_archived(dir.path()).unwrap();
    assert!(archived.len() >= 3);
    std::fs::remove_file(&archived[1].1).unwrap();
    match WalReader::open(dir.path()) {
        Err(streamline::Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("missing"), "{reason}")
        }
        other => panic!("expected a missing-file error, got {:?}", other.map(|_| ())),
    }
}
