//! Entry encode/decode, CRC32C, and batch assembly into an aligned buffer.
//! `cargo bench --bench format`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use streamline::wal::format::{
    align_up, encode_batch_header, encode_entry, entries_crc, entry_len, for_each_entry,
    parse_entry, BatchHeader, BatchKind, FileId, WalEntryType, BATCH_HEADER_LEN, BLOCK_SIZE,
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

/// Assembles `count` entries of `size` bytes into a block-aligned batch, the way the
/// commit thread does: header, entries, zero padding to the block.
fn assemble(out: &mut [u8], first_seq: u64, count: usize, data: &[u8]) -> usize {
    let mut pos = BATCH_HEADER_LEN;
    let mut crcs = 0;
    for i in 0..count {
        let len = entry_len(TOPIC.len(), data.len());
        let crc = encode_entry(
            &mut out[pos..pos + len],
            first_seq + i as u64,
            1_700_000_000_000,
            WalEntryType::Record,
            TOPIC,
            0,
            data,
        );
        crcs = entries_crc(crcs, crc);
        pos += len;
    }
    let h = BatchHeader {
        kind: BatchKind::Entries,
        file_number: 1,
        first_sequence: first_seq,
        entry_count: count as u32,
        payload_len: (pos - BATCH_HEADER_LEN) as u32,
        synced_through: first_seq - 1,
        entries_crc: Some(crcs),
    };
    encode_batch_header(&mut out[..BATCH_HEADER_LEN], &h, KEY);
    let end = align_up(pos);
    out[pos..end].fill(0);
    end
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
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(
            BenchmarkId::new("assemble", format!("{count}x{size}")),
            |b| b.iter(|| assemble(&mut v[off..off + total], 1000, count, black_box(&data))),
        );
        let end = assemble(&mut v[off..off + total], 1000, count, &data);
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
