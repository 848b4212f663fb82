//! Hostile bytes: the WAL reader and recovery over arbitrary and mutated files never
//! panic, always finish, never allocate much more than the file, and never return an
//! entry that was not written; a produced batch is never decompressed into more
//! than its bytes can hold.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use proptest::prelude::*;
use streamline::wal::{
    format::{
        self, decode_batch_header, decode_file_header, for_each_entry, parse_entry, BatchHeader,
        BatchKind,
    },
    recovery::scan_dir,
    BackendKind, RecoveryMode, SyncMode, Wal, WalConfig, WalReader,
};

/// Records the largest single allocation made by each thread, so a length field
/// trusted before it was checked against the file shows up as a huge request.
/// Per thread, because the tests run in parallel.
struct Tracking;

thread_local!(static LARGEST_HERE: Cell<usize> = const { Cell::new(0) });

fn note(size: usize) {
    // try_with: the slot may be gone while the thread is being torn down.
    let _ = LARGEST_HERE.try_with(|l| l.set(l.get().max(size)));
}

/// The calling thread's largest allocation since the last `reset`.
struct Largest;
impl Largest {
    fn reset() {
        LARGEST_HERE.with(|l| l.set(0));
    }
    fn get() -> usize {
        LARGEST_HERE.with(Cell::get)
    }
}

// SAFETY: forwards every call unchanged to the system allocator; only observes sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by System with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note(n);
        // SAFETY: `p` was allocated by System with `l`.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// The reader works in 4 MiB chunks; anything far above that (or the file) is a
/// length trusted without a bounds check.
const ALLOC_LIMIT: usize = 8 << 20;

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

fn data(i: u64) -> Vec<u8> {
    (0..(i * 131 % 2500)).map(|j| (i * 7 + j) as u8).collect()
}

/// A valid WAL of `n` entries (several files); returns its files' bytes by name.
fn golden(n: u64) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    for i in 1..=n {
        wal.append("t", (i % 4) as i32, Bytes::from(data(i)))
            .wait()
            .unwrap();
    }
    wal.close().unwrap();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Scans `dir` in both modes and reads every entry, checking each against `expect`
/// (what was written at that sequence). Returns the strict entries' sequences.
fn read_all(dir: &Path, expect: impl Fn(u64) -> Option<Vec<u8>>) -> Option<Vec<u64>> {
    let start = Instant::now();
    Largest::reset();
    let mut strict = None;
    for mode in [RecoveryMode::Strict, RecoveryMode::TolerateCorruption] {
        let Ok(reader) = WalReader::open_with(dir, mode) else {
            continue;
        };
        let mut seqs = Vec::new();
        for e in reader.entries_from(0) {
            let Ok(e) = e else { break };
            match expect(e.sequence) {
                Some(d) => assert_eq!(
                    &e.data[..],
                    &d[..],
                    "entry {} returned with other bytes",
                    e.sequence
                ),
                None => panic!("entry {} returned but never written", e.sequence),
            }
            seqs.push(e.sequence);
        }
        if mode == RecoveryMode::Strict {
            strict = Some(seqs);
        }
    }
    assert!(
        Largest::get() > 0,
        "the allocation tracker saw nothing: it is not installed"
    );
    assert!(
        Largest::get() <= ALLOC_LIMIT,
        "allocation of {} bytes",
        Largest::get()
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "scan took {:?}",
        start.elapsed()
    );
    strict
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        file: usize,
        at: usize,
        bit: u8,
    },
    Set {
        file: usize,
        at: usize,
        bytes: Vec<u8>,
    },
    Zero {
        file: usize,
        at: usize,
        len: usize,
    },
    Truncate {
        file: usize,
        at: usize,
    },
    CopyBlock {
        file: usize,
        from: usize,
        to: usize,
    },
    Remove {
        file: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>(), 0u8..8).prop_map(|(file, at, bit)| Mutation::Flip { file, at, bit }),
        2 => (any::<usize>(), any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64)).prop_map(|(file, at, bytes)| Mutation::Set { file, at, bytes }),
        2 => (any::<usize>(), any::<usize>(), 1usize..9000).prop_map(|(file, at, len)| Mutation::Zero { file, at, len }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(file, at)| Mutation::Truncate { file, at }),
        1 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(file, from, to)| Mutation::CopyBlock { file, from, to }),
        1 => any::<usize>().prop_map(|file| Mutation::Remove { file }),
    ]
}

fn apply(files: &mut Vec<(String, Vec<u8>)>, m: &Mutation) {
    if files.is_empty() {
        return;
    }
    let n = files.len();
    match m {
        Mutation::Flip { file, at, bit } => {
            let f = &mut files[file % n].1;
            if !f.is_empty() {
                let i = at % f.len();
                f[i] ^= 1 << bit;
            }
        }
        Mutation::Set { file, at, bytes } => {
            let f = &mut files[file % n].1;
            let i = at % f.len().max(1);
            for (k, b) in bytes.iter().enumerate() {
                if let Some(x) = f.get_mut(i + k) {
                    *x = *b;
                }
            }
        }
        Mutation::Zero { file, at, len } => {
            let f = &mut files[file % n].1;
            let i = at % f.len().max(1);
            let end = (i + len).min(f.len());
            f[i..end].fill(0);
        }
        Mutation::Truncate { file, at } => {
            let f = &mut files[file % n].1;
            let i = at % (f.len() + 1);
            f.truncate(i);
        }
        Mutation::CopyBlock { file, from, to } => {
            let f = &mut files[file % n].1;
            let blocks = f.len() / 4096;
            if blocks > 1 {
                let (a, b) = (from % blocks * 4096, to % blocks * 4096);
                let block = f[a..a + 4096].to_vec();
                f[b..b + 4096].copy_from_slice(&block);
            }
        }
        Mutation::Remove { file } => {
            files.remove(file % n);
        }
    }
}

fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Cases per property: 256, or `HOSTILE_CASES` for a longer run.
fn cases() -> u32 {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A 75-byte produced snappy batch whose raw block states 128 MiB (`80 80 80
/// 40`) over 10 bytes of garbage, its CRC valid: refused without an allocation
/// of anything near the stated size (it was zero-filled before decompressing).
#[test]
fn a_snappy_batch_stating_128_mib_is_refused_without_allocating_it() {
    use streamline::storage::batch::{validate_produce, BatchError};
    let mut b = vec![0u8; 61];
    b[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b[16] = 2; // magic
    b[22] = 2; // attributes: snappy
    b[43..61].copy_from_slice(&[0xff; 18]); // no producer: id, epoch, sequence -1
    b[57..61].copy_from_slice(&1i32.to_be_bytes()); // one record
    b.extend_from_slice(&[0x80, 0x80, 0x80, 0x40]);
    b.extend_from_slice(&[0x55; 10]);
    let len = i32::try_from(b.len() - 12).unwrap();
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(b.len(), 75);
    Largest::reset();
    assert_eq!(
        validate_produce(&b),
        Err(BatchError::BadPayload { codec: 2 })
    );
    let largest = Largest::get();
    assert!(largest <= 64 * 1024, "allocated {largest} bytes at once");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated valid directories: scans finish, strict recovery returns a prefix of
    /// what was written (or an error), tolerant recovery returns only written entries,
    /// and opening (which may cut or seal) does not panic either.
    #[test]
    fn mutated_wal_never_yields_garbage(muts in proptest::collection::vec(mutation(), 1..4)) {
        static GOLDEN: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
        let mut files = GOLDEN.get_or_init(|| golden(80)).clone();
        for m in &muts {
            apply(&mut files, m);
        }
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &files);
        let expect = |s: u64| (1..=80).contains(&s).then(|| data(s));
        if let Some(seqs) = read_all(dir.path(), expect) {
            let prefix: Vec<u64> = (1..=seqs.len() as u64).collect();
            prop_assert_eq!(seqs, prefix, "strict recovery is not a prefix");
        }
        if let Ok((wal, rec)) = Wal::open(dir.path(), config()) {
            for (i, e) in rec.enumerate() {
                let Ok(e) = e else { break };
                prop_assert_eq!(e.sequence, i as u64 + 1);
                prop_assert_eq!(&e.data[..], &data(e.sequence)[..]);
            }
            drop(wal);
        }
    }

    /// Arbitrary bytes as the current file (with or without a valid file header).
    #[test]
    fn arbitrary_current_file_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20_000), header in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = bytes;
        if header && b.len() >= 4096 {
            format::encode_file_header(&mut b[..4096], 1, 0, 0x5eed);
            b[48..4096].fill(0);
        }
        std::fs::write(dir.path().join("current.wal"), &b).unwrap();
        let _ = scan_dir(dir.path(), RecoveryMode::Strict);
        let _ = read_all(dir.path(), |_| None);
    }

    /// The decoders themselves on arbitrary input.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), n in any::<u64>(), count in 0u32..50) {
        let _ = decode_file_header(&bytes);
        let _ = decode_batch_header(&bytes, format::FileId { number: n % 4, key: n / 4 });
        let _ = parse_entry(&bytes);
        let h = BatchHeader { kind: BatchKind::Entries, file_number: 1, first_sequence: 1 + n % 1000, entry_count: count, payload_len: bytes.len() as u32, synced_through: 0, entries_crc: (n % 2 == 0).then_some(n as u32) };
        Largest::reset();
        let _ = for_each_entry(&h, &bytes, |_| {});
        let _ = format::decode_batch_entries(&h, &bytes);
        prop_assert!(Largest::get() <= 64 * 1024);
    }
}
