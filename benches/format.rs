//! Entry encode/decode, CRC32C, and batch assembly into an aligned buffer.
//! `cargo bench --bench format`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use streamline::wal::format::{
    align_up, encode_entry, encode_record_batch, entry_len, for_each_entry, parse_entry,
    BatchHeader, BatchKind, FileId, WalEntryType, BATCH_HEADER_LEN, BLOCK_SIZE,
};

const TOPIC: &[u8] = b"bench";
const SIZES: [usize; 3] = [128, 1024, 64 * 1024];

fn payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect()
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for n in SIZES.into_iter().chain([1 << 20]) {
        let data = payload(n);
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &data, |b, d| {
            b.iter(|| crc32c::crc32c(black_box(d)))
        });
    }
    g.finish();
}

fn entries(c: &mut Criterion) {
    let mut g = c.benchmark_group("entry");
    for n in SIZES {
        let data = payload(n);
        let mut buf = vec![0u8; entry_len(TOPIC.len(), n)];
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", n), &data, |b, d| {
            b.iter(|| {
                encode_entry(
                    black_box(&mut buf),
                    42,
                    1_700_000_000_000,
                    WalEntryType::Record,
                    TOPIC,
                    3,
                    d,
                )
            })
        });
        let mut enc = vec![0u8; entry_len(TOPIC.len(), n)];
        encode_entry(
            &mut enc,
            42,
            1_700_000_000_000,
            WalEntryType::Record,
            TOPIC,
            3,
            &data,
        );
        g.bench_with_input(BenchmarkId::new("parse", n), &enc, |b, e| {
            b.iter(|| parse_entry(black_box(e)).map(|r| r.encoded_len))
        });
    }
    g.finish();
}

/// Assembles `count` entries of `size` bytes into a block-aligned batch, as the
/// commit thread lays one out: header, entries, zero padding to the block.
fn assemble(out: &mut [u8], first_seq: u64, entries: &[&[u8]]) -> usize {
    let h = BatchHeader {
        kind: BatchKind::Entries,
        file_number: 1,
        first_sequence: first_seq,
        entry_count: 0,
        payload_len: 0,
        synced_through: first_seq - 1,
        entries_crc: None,
    };
    encode_record_batch(out, h, KEY, 1_700_000_000_000, TOPIC, 0, entries)
}

/// The key of the file the batches are assembled for.
const KEY: u64 = 0x5eed;

/// A block-aligned window into an over-allocated vector.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + BLOCK_SIZE];
    let off = v.as_ptr().align_offset(BLOCK_SIZE);
    (v, off)
}

fn batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for (size, count) in [(128usize, 256usize), (1024, 64), (1024, 1000), (4096, 256)] {
        let data = payload(size);
        let total = align_up(BATCH_HEADER_LEN + count * entry_len(TOPIC.len(), size));
        let (mut v, off) = aligned(total);
        let entries = vec![data.as_slice(); count];
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(
            BenchmarkId::new("assemble", format!("{count}x{size}")),
            |b| b.iter(|| assemble(&mut v[off..off + total], 1000, black_box(&entries))),
        );
        let end = assemble(&mut v[off..off + total], 1000, &entries);
        let buf = v[off..off + end].to_vec();
        let hdr = streamline::wal::format::decode_batch_header(
            &buf,
            FileId {
                number: 1,
                key: KEY,
            },
        )
        .expect("valid header");
        let payload = &buf[BATCH_HEADER_LEN..BATCH_HEADER_LEN + hdr.payload_len as usize];
        g.bench_function(
            BenchmarkId::new("validate", format!("{count}x{size}")),
            |b| {
                b.iter(|| {
                    let mut n = 0usize;
                    for_each_entry(&hdr, black_box(payload), |e| n += e.data.len())
                        .expect("valid batch");
                    n
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, crc, entries, batches);
criterion_main!(benches);
