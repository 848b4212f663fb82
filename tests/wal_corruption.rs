//! Torn tails and bit flips: recovery returns an exact prefix of what was written,
//! never garbage, and reports damage to synced data with file and byte offset.

mod common;

use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use common::{config, open, payload, BACKENDS};
use streamline::{
    wal::{
        files::list_archived,
        format::{decode_batch_header, decode_file_header, BATCH_HEADER_LEN, BLOCK_SIZE},
        BackendKind, SyncMode, WalReader,
    },
    Error,
};

fn data_for(i: u64) -> Vec<u8> {
    payload(i, 100 + (i as usize * 131) % 2500)
}

/// Writes `n` entries, each acknowledged (and synced) before the next.
fn write_entries(dir: &Path, backend: BackendKind, n: u64) {
    let (wal, _) = open(dir, config(backend, SyncMode::EveryWrite));
    for i in 0..n {
        let seq = wal
            .append("flip", 0, Bytes::from(data_for(i)))
            .wait()
            .unwrap();
        assert_eq!(seq, i + 1);
    }
    wal.close().unwrap();
}

/// (path, batch offset, batch bytes used by header + payload) of every batch, in log order.
fn batches(dir: &Path) -> Vec<(PathBuf, u64, u64, bool)> {
    let mut files: Vec<(u64, PathBuf)> = list_archived(dir).unwrap();
    let current = dir.join("current.wal");
    let n = files.last().map_or(1, |f| f.0 + 1);
    files.push((n, current));
    let mut out = Vec::new();
    for (number, path) in files {
        let bytes = std::fs::read(&path).unwrap();
        let file = decode_file_header(&bytes[..BLOCK_SIZE]).unwrap().id();
        assert_eq!(file.number, number);
        let mut pos = BLOCK_SIZE;
        while pos + BLOCK_SIZE <= bytes.len() {
            match decode_batch_header(&bytes[pos..], file) {
                Ok(h) => {
                    let seal = h.entry_count == 0;
                    out.push((
                        path.clone(),
                        pos as u64,
                        (BATCH_HEADER_LEN + h.payload_len as usize) as u64,
                        seal,
                    ));
                    pos += h.disk_len() as usize;
                }
                Err(_) => break,
            }
        }
    }
    out
}

/// Recovered entries must be exactly the first k of what was written.
fn assert_prefix(dir: &Path, written: u64) -> Result<u64, Error> {
    let reader = WalReader::open(dir)?;
    let mut k = 0;
    for e in reader.entries_from(1) {
        let e = e?;
        assert_eq!(e.sequence, k + 1, "sequences must be contiguous from 1");
        assert_eq!(
            &e.data[..],
            &data_for(k)[..],
            "entry {} has foreign bytes",
            e.sequence
        );
        k += 1;
    }
    assert!(k <= written, "recovery invented entries");
    Ok(k)
}

#[test]
fn truncation_at_every_offset_of_the_last_batch_recovers_a_prefix() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), backend, 30);
        // A torn last write means a crash: no clean-close marker (which would
        // prove the last batch synced, and its loss damage).
        std::fs::remove_file(
            dir.path()
                .join(streamline::wal::clean_close::CLEAN_CLOSE_FILE),
        )
        .unwrap();
        let all = batches(dir.path());
        let (path, start, used, _) = all.last().unwrap().clone();
        assert!(used > 2 * 512, "the last batch should span several sectors");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let end = start + used;
        let mut original = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut original, start).unwrap();
        for cut in start..end {
            // The disk kept [.., cut) of the last write; the rest never arrived.
            let zeros = vec![0u8; (end - cut) as usize];
            f.write_all_at(&zeros, cut).unwrap();
            let k = assert_prefix(dir.path(), 30)
                .unwrap_or_else(|e| panic!("{backend}: cut at {cut}: {e}"));
            assert_eq!(
                k, 29,
                "{backend}: cut at {cut} must drop exactly the torn last entry"
            );
            f.write_all_at(&original[(cut - start) as usize..], cut)
                .unwrap();
        }
        // A shorter file (the filesystem lost the end of it) recovers the same prefix.
        let len = f.metadata().unwrap().len();
        for cut in [start, start + 1, start + 700, end - 1] {
            f.set_len(cut).unwrap();
            assert_eq!(
                assert_prefix(dir.path(), 30).unwrap(),
                29,
                "{backend}: file cut at {cut}"
            );
            f.set_len(len).unwrap();
            f.write_all_at(&original, start).unwrap();
        }
        // Reopening for writing after a torn tail continues the sequence right after it.
        let zeros = vec![0u8; 600];
        f.write_all_at(&zeros, start + 500).unwrap();
        let (wal, rec) = open(dir.path(), config(backend, SyncMode::EveryWrite));
        assert_eq!(rec.len(), 29);
        assert_eq!(
            wal.append("flip", 0, Bytes::from(data_for(29)))
                .wait()
                .unwrap(),
            30
        );
        drop(wal);
        assert_eq!(assert_prefix(dir.path(), 30).unwrap(), 30);
    }
}

#[test]
fn bit_flips_never_yield_garbage_and_synced_damage_is_reported_with_offset() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), backend, 150);
        let all = batches(dir.path());
        assert!(
            all.iter().any(|b| b.3),
            "{backend}: expected a rotation (seal batch)"
        );
        let mut reported = 0;
        for (i, (path, start, used, _)) in all.iter().enumerate() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            // Header bits and payload bits, sampled with a stride that shifts per batch
            // so that together the batches cover every bit position of a header.
            let bits: Vec<u64> = (i as u64 % 7..(BATCH_HEADER_LEN as u64 * 8))
                .step_by(7)
                .chain((BATCH_HEADER_LEN as u64 * 8 + i as u64..used * 8).step_by(997))
                .collect();
            for bit in bits {
                let at = start + bit / 8;
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at).unwrap();
                f.write_all_at(&[b[0] ^ (1 << (bit % 8))], at).unwrap();
                let result = assert_prefix(dir.path(), 150);
                match result {
                    Err(Error::Corrupt { file, offset, .. }) => {
                        assert_eq!(
                            &file, path,
                            "{backend}: corruption reported in the wrong file"
                        );
                        assert_eq!(
                            offset, *start,
                            "{backend}: corruption reported at the wrong offset"
                        );
                        reported += 1;
                    }
                    Err(e) => panic!("{backend}: unexpected error {e}"),
                    // The log was closed cleanly and its marker kept: the last
                    // batches were synced, so damage to them is reported too,
                    // never cut as a torn tail.
                    Ok(k) => panic!(
                        "{backend}: flip at {} byte {at} went unnoticed (recovered {k})",
                        path.display()
                    ),
                }
                f.write_all_at(&b, at).unwrap();
            }
        }
        assert!(reported > 500, "{backend}: only {reported} flips reported");
        assert_eq!(assert_prefix(dir.path(), 150).unwrap(), 150);
    }
}

#[test]
fn damaged_file_header_is_an_error_naming_the_file() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), backend, 5);
        let path = dir.path().join("current.wal");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", 3).unwrap();
        match WalReader::open(dir.path()) {
            Err(Error::Corrupt {
                file, offset: 0, ..
            }) => assert_eq!(file, path),
            other => panic!(
                "expected corrupt header, got {other:?}",
                other = other.map(|_| ())
            ),
        }
    }
}

#[test]
fn tolerant_recovery_skips_damaged_synced_data_loudly_and_keeps_the_rest() {
    use streamline::wal::{RecoveryMode, WalConfig};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), backend, 20);
        let all = batches(dir.path());
        // Damage the payload of the 5th batch (entry 5) in the middle of the log.
        let (path, start, _, _) = all[4].clone();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all_at(b"\xff\xff\xff\xff", start + BATCH_HEADER_LEN as u64 + 40)
            .unwrap();
        assert!(
            matches!(WalReader::open(dir.path()), Err(Error::Corrupt { .. })),
            "{backend}: strict mode must refuse"
        );
        let cfg = WalConfig {
            recovery_mode: RecoveryMode::TolerateCorruption,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, rec) = open(dir.path(), cfg);
        let seqs: Vec<u64> = rec.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=4).chain(6..=20).collect::<Vec<_>>(), "{backend}");
        for e in &rec {
            assert_eq!(&e.data[..], &data_for(e.sequence - 1)[..]);
        }
        assert_eq!(
            wal.append("flip", 0, Bytes::from_static(b"next"))
                .wait()
                .unwrap(),
            21
        );
    }
}

/// In `interval` mode every batch written between two fdatasyncs records the same
/// `synced_through`, so the batch right after a damaged one may predate the sync
/// that made the damaged one durable. Any later batch recording that sync is the
/// evidence: the damage is reported, not cut as a torn tail with everything after it.
#[test]
fn damage_to_synced_interval_batches_is_reported_even_when_the_next_batch_predates_the_sync() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = streamline::wal::WalConfig {
            sync_interval_ms: 60_000,
            ..config(backend, SyncMode::Interval)
        };
        let (wal, _) = open(dir.path(), cfg);
        for i in 0..10 {
            let seq = wal
                .append("flip", 0, Bytes::from(data_for(i)))
                .wait()
                .unwrap();
            assert_eq!(seq, i + 1);
        }
        assert_eq!(wal.sync().wait().unwrap(), 10);
        wal.append("flip", 0, Bytes::from(data_for(10)))
            .wait()
            .unwrap();
        wal.close().unwrap();
        let all = batches(dir.path());
        assert_eq!(all.len(), 11, "{backend}: one batch per append");
        for (k, (path, start, _, _)) in all.iter().enumerate().take(10) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            // A byte of the first entry's data.
            let at = start + BATCH_HEADER_LEN as u64 + 40;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
            match assert_prefix(dir.path(), 11) {
                Err(Error::Corrupt { file, offset, .. }) => {
                    assert_eq!((&file, offset), (path, *start), "{backend}: batch {k}");
                }
                other => panic!(
                    "{backend}: damage to synced batch {k} at byte {at} not reported: {other:?}"
                ),
            }
            f.write_all_at(&b, at).unwrap();
        }
        assert_eq!(assert_prefix(dir.path(), 11).unwrap(), 11);
    }
}

/// Tolerant recovery of an archived file whose last batch and seal are both
/// damaged skips to that file's end; the next file then starts after a gap, and
/// its entries are kept like any after a skip (they were dropped before, and an
/// active next file was even treated as torn at its first batch and overwritten).
#[test]
fn tolerant_recovery_keeps_the_next_file_after_a_skip_to_the_end_of_one() {
    use streamline::wal::{RecoveryMode, WalConfig};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), backend, 150);
        let all = batches(dir.path());
        let first_file = &all[0].0;
        // The first file's last entry batch and its seal.
        let in_first: Vec<_> = all.iter().filter(|b| &b.0 == first_file).collect();
        assert!(
            in_first.last().unwrap().3,
            "{backend}: the first file ends sealed"
        );
        let last_entry_batch = in_first.len() - 1;
        let f = OpenOptions::new().write(true).open(first_file).unwrap();
        for b in &in_first[last_entry_batch - 1..] {
            f.write_all_at(&[0xa5; BATCH_HEADER_LEN], b.1).unwrap();
        }
        let lost = u64::try_from(last_entry_batch).unwrap();
        assert!(
            matches!(WalReader::open(dir.path()), Err(Error::Corrupt { .. })),
            "{backend}: strict mode must refuse"
        );
        let cfg = WalConfig {
            recovery_mode: RecoveryMode::TolerateCorruption,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, rec) = open(dir.path(), cfg);
        let seqs: Vec<u64> = rec.iter().map(|e| e.sequence).collect();
        // One entry per batch: entries 1..lost-1 survive, `lost` is gone.
        assert_eq!(
            seqs,
            (1..lost).chain(lost + 1..=150).collect::<Vec<_>>(),
            "{backend}"
        );
        for e in &rec {
            assert_eq!(&e.data[..], &data_for(e.sequence - 1)[..]);
        }
        assert_eq!(
            wal.append("flip", 0, Bytes::from_static(b"next"))
                .wait()
                .unwrap(),
            151
        );
    }
}

/// A torn batch is cut at recovery and appends continue in its place, so its
/// sequences go to new entries. If the batch written there is torn as well, the
/// old batch's entries are still under it, each valid on its own with the same
/// sequence and, here, at the same offset: they must never be recovered as part
/// of the new batch (the header's `entries_crc` ties entries to their header).
#[test]
fn a_torn_rewrite_over_a_cut_batch_never_recovers_the_old_entries() {
    use streamline::wal::{clean_close::CLEAN_CLOSE_FILE, NewEntry};
    let batch = |sizes: &[(u8, usize)]| -> Vec<NewEntry> {
        sizes
            .iter()
            .map(|&(b, n)| NewEntry::record("t", 0, Bytes::from(vec![b; n])))
            .collect()
    };
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        for i in 0..3 {
            wal.append("t", 0, Bytes::from(data_for(i))).wait().unwrap();
        }
        // 48 + 36 + 1 + 427 bytes: the second entry starts at byte 512 of the block, in its
        // second sector, and the third runs into the batch's second block.
        let first = batch(&[(b'a', 427), (b'b', 400), (b'c', 5000)]);
        assert_eq!(wal.append_batch(first).wait().unwrap(), 4);
        wal.close().unwrap();
        let (path, x, _, _) = batches(dir.path())[3].clone();
        let original = std::fs::read(&path).unwrap();
        let at = |off: u64| usize::try_from(x + off).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        // Crash 1: the batch's second block never reached the disk.
        f.write_all_at(&[0u8; BLOCK_SIZE], x + BLOCK_SIZE as u64)
            .unwrap();
        std::fs::remove_file(dir.path().join(CLEAN_CLOSE_FILE)).unwrap();
        let (wal, rec) = open(dir.path(), cfg.clone());
        assert_eq!(rec.len(), 3, "{backend}: the torn batch is cut");
        let second = batch(&[(b'x', 427), (b'y', 400)]);
        assert_eq!(wal.append_batch(second).wait().unwrap(), 4);
        wal.close().unwrap();
        assert_eq!(batches(dir.path())[3].1, x, "{backend}: written in place");
        // Crash 2 tears that batch: its second sector keeps the old bytes.
        f.write_all_at(&original[at(512)..at(1024)], x + 512)
            .unwrap();
        std::fs::remove_file(dir.path().join(CLEAN_CLOSE_FILE)).unwrap();
        let reader = WalReader::open(dir.path()).unwrap();
        let got: Vec<(u64, Vec<u8>)> = reader
            .entries_from(1)
            .map(|e| e.map(|e| (e.sequence, e.data.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<(u64, Vec<u8>)> = (0..3).map(|i| (i + 1, data_for(i))).collect();
        assert!(
            got == want,
            "{backend}: entries of the cut batch came back: (sequence, length, first byte) {:?}",
            got.iter()
                .map(|(s, d)| (*s, d.len(), d.first().copied()))
                .collect::<Vec<_>>()
        );
    }
}
