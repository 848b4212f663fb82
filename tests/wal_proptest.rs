//! Property tests: the entry codec round-trips arbitrary entries, the reader never
//! panics on arbitrary bytes, and random batch shapes through the real engine come
//! back exactly, on both backends.

mod common;

use bytes::Bytes;
use common::{config, open, BACKENDS};
use proptest::prelude::*;
use streamline::wal::{
    format::{
        decode_batch_header, decode_entry, encode_entry, entry_len, parse_entry, WalEntryType,
    },
    NewEntry, SyncMode, WalReader,
};

fn entry_type() -> impl Strategy<Value = WalEntryType> {
    prop_oneof![
        Just(WalEntryType::Record),
        Just(WalEntryType::Checkpoint),
        Just(WalEntryType::Truncate)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn entry_codec_round_trips(
        seq in 1u64..u64::MAX, ts in any::<i64>(), ty in entry_type(),
        topic in "[a-zA-Z0-9._-]{0,40}", partition in any::<i32>(),
        data in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut buf = vec![0u8; entry_len(topic.len(), data.len())];
        let crc = encode_entry(&mut buf, seq, ts, ty, topic.as_bytes(), partition, &data);
        let (e, used) = decode_entry(&buf).unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(e.sequence, seq);
        prop_assert_eq!(e.timestamp, ts);
        prop_assert_eq!(e.entry_type, ty);
        prop_assert_eq!(e.topic, topic);
        prop_assert_eq!(e.partition, partition);
        prop_assert_eq!(&e.data[..], &data[..]);
        prop_assert_eq!(e.crc32, crc);
        // Any single-byte change is caught by the checksum or a length check.
        let i = (seq as usize) % buf.len();
        buf[i] ^= 0x5a;
        prop_assert!(decode_entry(&buf).is_err());
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), file in any::<u64>()) {
        let _ = parse_entry(&bytes);
        let key = if file % 2 == 0 { 0 } else { file.rotate_left(17) };
        let _ = decode_batch_header(&bytes, streamline::wal::format::FileId { number: file, key });
        let _ = streamline::wal::format::decode_file_header(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_through_the_engine_come_back_exactly(
        batches in proptest::collection::vec(
            proptest::collection::vec((0i32..4, proptest::collection::vec(any::<u8>(), 0..3000)), 1..12),
            1..25,
        ),
        backend_pick in 0usize..2,
    ) {
        let backend = BACKENDS[backend_pick];
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::Interval);
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut expected = Vec::new();
        let mut completions = Vec::new();
        for b in &batches {
            let entries: Vec<NewEntry> = b.iter().map(|(p, d)| NewEntry::record("prop", *p, Bytes::from(d.clone()))).collect();
            expected.extend(b.iter().cloned());
            completions.push((b.len() as u64, wal.append_batch(entries)));
        }
        let mut next = 1;
        for (n, c) in completions {
            prop_assert_eq!(c.wait().unwrap(), next);
            next += n;
        }
        drop(wal);
        let reader = WalReader::open(dir.path()).unwrap();
        let got: Vec<_> = reader.entries_from(1).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(got.len(), expected.len());
        for (i, (e, (p, d))) in got.iter().zip(&expected).enumerate() {
            prop_assert_eq!(e.sequence, i as u64 + 1);
            prop_assert_eq!(e.partition, *p);
            prop_assert_eq!(&e.data[..], &d[..]);
        }
    }

    #[test]
    fn mutated_wal_files_never_panic_and_never_yield_foreign_entries(
        edits in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..16),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(streamline::wal::BackendKind::Std, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg);
        let datas: Vec<Vec<u8>> = (0..40u64).map(|i| common::payload(i, 50 + (i as usize * 97) % 1500)).collect();
        for d in &datas {
            wal.append("m", 0, Bytes::from(d.clone())).wait().unwrap();
        }
        drop(wal);
        let path = dir.path().join("current.wal");
        let mut bytes = std::fs::read(&path).unwrap();
        // The header block and one block per entry: every batch, the last
        // one too.
        let used = 4096 * 41usize;
        for (at, v) in &edits {
            let i = *at as usize % used.min(bytes.len());
            bytes[i] = *v;
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(reader) = WalReader::open(dir.path()) {
            for (i, e) in reader.entries_from(1).enumerate() {
                match e {
                    Ok(e) => {
                        prop_assert_eq!(e.sequence, i as u64 + 1);
                        prop_assert_eq!(&e.data[..], &datas[i][..]);
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
