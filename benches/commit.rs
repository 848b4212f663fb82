//! Producer → commit-thread hand-off: the cost of one append round trip when the
//! I/O is nearly free (`os_default`, `std` backend, on tmpfs when /dev/shm exists),
//! alone and pipelined. `cargo bench --bench commit`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

/// Each WAL file's size.
const FILE_SIZE: u64 = 64 << 20;

/// Room the WAL takes at most: alone, each append is a batch of its own, one
/// 4 KiB block, and [`trim`] checkpoints every 2^18 appends (1 GiB, 16 files);
/// with the active file, the next one prepared and the one retention keeps.
const ROOM: u64 = 20 * FILE_SIZE;

/// A directory on /dev/shm when it has [`ROOM`] free (Docker's default is 64
/// MiB), the system's temporary directory otherwise.
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() && streamline::storage::free_bytes(shm).is_some_and(|free| free >= ROOM) {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

fn open(dir: &std::path::Path) -> Wal {
    let cfg = WalConfig {
        sync_mode: SyncMode::OsDefault,
        backend: BackendKind::Std,
        max_file_size: FILE_SIZE,
        retention_files: 1,
        ..WalConfig::default()
    };
    Wal::open(dir, cfg).expect("open WAL").0
}

/// Lets retention delete old files now and then (a checkpoint costs an fsync and a
/// rename, so it must stay rare enough not to show in the measurement).
fn trim(wal: &Wal, seq: u64) {
    const EVERY: u64 = 1 << 18;
    if seq % EVERY < 256 && seq >= EVERY {
        wal.checkpoint(seq).expect("checkpoint");
    }
}

fn handoff(c: &mut Criterion) {
    let dir = scratch();
    let wal = open(dir.path());
    let data = Bytes::from(vec![7u8; 128]);
    let mut g = c.benchmark_group("handoff");
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_wait_128B", |b| {
        b.iter(|| {
            let seq = wal.append("bench", 0, data.clone()).wait().expect("append");
            trim(&wal, seq);
            seq
        })
    });
    for n in [16usize, 256] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("pipelined_128B", n), &n, |b, &n| {
            let mut pending = Vec::with_capacity(n);
            b.iter(|| {
                pending.extend((0..n).map(|_| wal.append("bench", 0, data.clone())));
                let mut last = 0;
                for c in pending.drain(..) {
                    last = c.wait().expect("append");
                }
                trim(&wal, last);
                black_box(last)
            })
        });
    }
    g.finish();
    wal.close().expect("close");
}

criterion_group!(benches, handoff);
criterion_main!(benches);
