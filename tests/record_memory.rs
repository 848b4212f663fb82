//! Memory a timestamp lookup needs inside one batch of millions of tiny
//! records. A batch of null records costs about 9 bytes a record on disk;
//! ListOffsets by timestamp reads its records one at a time, so its peak is
//! about the batch itself, not a per-record table several times larger.
//!
//! Measured as the process's peak resident set (`VmHWM`, reset through
//! `/proc/self/clear_refs`), so this binary holds this one test.

use streamline::storage::{batch, partition::Partition};

const RECORDS: usize = 2_000_000;
const BASE_TIMESTAMP: i64 = 1_700_000_000_000;

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One uncompressed batch at offset 0 of `RECORDS` records with null keys and
/// values, record `i` at timestamp `BASE_TIMESTAMP + i`.
fn tiny_records_batch() -> Vec<u8> {
    let mut records = Vec::with_capacity(RECORDS * 10);
    let mut body = Vec::with_capacity(16);
    for i in 0..RECORDS as i64 {
        body.clear();
        body.push(0); // attributes
        put_varint(&mut body, i); // timestamp delta
        put_varint(&mut body, i); // offset delta
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, -1); // null value
        put_varint(&mut body, 0); // no headers
        put_varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let last = RECORDS as i64 - 1;
    let mut b = Vec::with_capacity(61 + records.len());
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes()); // batch length
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // crc, below
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&(last as i32).to_be_bytes()); // last offset delta
    b.extend_from_slice(&BASE_TIMESTAMP.to_be_bytes());
    b.extend_from_slice(&(BASE_TIMESTAMP + last).to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&(RECORDS as i32).to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The process's (peak, current) resident set in bytes.
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |field: &str| {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        n << 10
    };
    (kib("VmHWM:"), kib("VmRSS:"))
}

#[test]
fn a_timestamp_lookup_inside_a_batch_of_millions_of_records_holds_about_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0");
    let len = {
        let b = tiny_records_batch();
        let infos = batch::validate_all(&b).unwrap();
        let p = Partition::open("t", 0, path.clone(), 1 << 30).unwrap();
        p.append(&b, &infos).unwrap();
        p.sync().unwrap();
        b.len() as u64
    };
    // Reopened: every record is below the high watermark.
    let p = Partition::open("t", 0, path, 1 << 30).unwrap();
    assert_eq!(p.high_watermark(), RECORDS as i64);

    let mut peaks = Vec::new();
    for target in [1_500_000i64, RECORDS as i64 - 1] {
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let (_, before) = resident();
        let found = p
            .offset_for_timestamp(BASE_TIMESTAMP + target)
            .unwrap()
            .unwrap();
        let (peak, _) = resident();
        assert_eq!(found, (target, BASE_TIMESTAMP + target));
        peaks.push(peak.saturating_sub(before));
    }
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (_, before) = resident();
    let newest = p.max_timestamp_offset().unwrap().unwrap();
    let (peak, _) = resident();
    let last = RECORDS as i64 - 1;
    assert_eq!(newest, (last, BASE_TIMESTAMP + last));
    peaks.push(peak.saturating_sub(before));

    // The batch is read into memory once: about `len`. A table of every
    // record (56 bytes each) would add about 6 times as much again.
    for grew in peaks {
        assert!(
            grew < 2 * len,
            "a lookup in a batch of {len} bytes grew the resident set by {grew} bytes"
        );
    }
}
