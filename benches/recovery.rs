//! Recovery scan speed: MB/s of WAL read and validated by a scan of every file
//! (`recovery::scan_dir`) and by a full replay of its entries, from the page
//! cache: the parsing and checking, not the device. (`WalReader` drops the
//! files' cached pages first, to read what the disk holds, so each of its
//! scans would read the device.) `cargo bench --bench recovery`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streamline::wal::{
    recovery::scan_dir, BackendKind, EntryIter, RecoveryMode, SyncMode, Wal, WalConfig,
};

/// Writes `mib` MiB of 4 KiB records and returns the directory and the WAL bytes.
fn build(mib: usize) -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = WalConfig {
        sync_mode: SyncMode::OsDefault,
        backend: BackendKind::Std,
        max_file_size: 32 << 20,
        retention_files: usize::MAX,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), cfg).expect("open WAL");
    let data = Bytes::from((0..4096u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
    let mut pending = Vec::new();
    for _ in 0..mib * 256 {
        pending.push(wal.append("bench", 0, data.clone()));
        if pending.len() == 256 {
            for c in pending.drain(..) {
                c.wait().expect("append");
            }
        }
    }
    for c in pending {
        c.wait().expect("append");
    }
    wal.close().expect("close");
    let bytes = scan_dir(dir.path(), RecoveryMode::Strict)
        .expect("scan")
        .files
        .iter()
        .map(|f| f.valid_end)
        .sum();
    (dir, bytes)
}

fn recovery(c: &mut Criterion) {
    let (dir, bytes) = build(64);
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("scan_64MiB", |b| {
        b.iter(|| {
            scan_dir(dir.path(), RecoveryMode::Strict)
                .expect("scan")
                .last_sequence
        })
    });
    g.bench_function("scan_and_replay_64MiB", |b| {
        b.iter(|| {
            let scan = scan_dir(dir.path(), RecoveryMode::Strict).expect("scan");
            EntryIter::new(scan.files, 1)
                .map(|e| e.expect("entry").data.len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
