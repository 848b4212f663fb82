//! The WAL byte decoders on arbitrary input: file header, batch header, entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamline::wal::format::{decode_batch_header, decode_file_header, for_each_entry, parse_entry, BatchHeader, BatchKind, FileId};

fuzz_target!(|data: &[u8]| {
    let _ = decode_file_header(data);
    if let Some((n, rest)) = data.split_first() {
        if let Ok(h) = decode_batch_header(rest, FileId { number: u64::from(*n % 4), key: u64::from(*n / 4) }) {
            let payload = rest.get(48..).unwrap_or_default();
            let len = payload.len().min(h.payload_len as usize);
            let h = BatchHeader { payload_len: len as u32, ..h };
            let _ = for_each_entry(&h, &payload[..len], |_| {});
        }
        let _ = parse_entry(rest);
        let h = BatchHeader {
            kind: BatchKind::Entries,
            file_number: 1,
            first_sequence: 1,
            entry_count: u32::from(*n),
            payload_len: rest.len() as u32,
            synced_through: 0,
            // Both layouts: batches from before the field, and with it.
            entries_crc: (*n % 2 == 1).then(|| u32::from(*n).wrapping_mul(0x9e37_79b9)),
        };
        let _ = for_each_entry(&h, rest, |_| {});
    }
});
