//! The crash writer's payloads, shared with `tests/wal_crash.rs` (which includes this
//! file) so the test checks recovered bytes against exactly what was written.

/// Deterministic payload length and bytes for (run, thread, counter): up to
/// ~3 KB, or with `large` 64-224 KiB (entries large enough that the files
/// after them are only reserved, not zero-filled: `docs/engine.md`).
pub fn payload(run: u64, thread: u64, counter: u64, large: bool) -> Vec<u8> {
    let mut x = (run << 40) ^ (thread << 32) ^ counter ^ 0x9E37_79B9_7F4A_7C15;
    let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as usize;
    let len = if large {
        LARGE_MIN + r % (LARGE_MAX - LARGE_MIN)
    } else {
        r % 3000
    };
    let mut v = format!("{run}/{thread}/{counter}/").into_bytes();
    v.extend((0..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    v
}

/// Payload bytes of a large entry, without its tag.
pub const LARGE_MIN: usize = 64 << 10;
pub const LARGE_MAX: usize = 224 << 10;

/// `max_file_size` and `max_batch_bytes` of the crash writer's WAL, which the
/// test's recovery opens with too: small files, so that cycles rotate often; with
/// `large` entries, files of 2 MiB (about 13 entries) and batches that hold the
/// largest entry.
pub fn file_and_batch_size(large: bool) -> (u64, usize) {
    if large {
        (2 << 20, 1 << 20)
    } else {
        (256 << 10, 64 << 10)
    }
}
