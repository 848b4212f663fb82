//! The crash writer's payloads, shared with `tests/wal_crash.rs` (which includes this
//! file) so the test checks recovered bytes against exactly what was written.

/// Deterministic payload length and bytes for (run, thread, counter).
pub fn payload(run: u64, thread: u64, counter: u64) -> Vec<u8> {
    let mut x = (run << 40) ^ (thread << 32) ^ counter ^ 0x9E37_79B9_7F4A_7C15;
    let len = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 52) as usize % 3000;
    let mut v = format!("{run}/{thread}/{counter}/").into_bytes();
    v.extend((0..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    v
}
