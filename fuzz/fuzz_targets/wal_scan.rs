//! Recovery over an arbitrary `current.wal` (the first byte picks whether a valid
//! file header block precedes the input, and how many blocks follow): scanning in both modes and reading every
//! entry must not panic, and an entry can only come from bytes that pass its CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamline::wal::{
    format::{encode_file_header, encode_file_header_v1},
    RecoveryMode, WalReader,
};

fuzz_target!(|data: &[u8]| {
    thread_local!(static DIR: tempfile::TempDir = tempfile::tempdir().expect("tempdir"));
    let Some((flag, rest)) = data.split_first() else { return };
    // Usually a valid header block, then the input as the file's blocks (short
    // inputs are repeated to reach a few blocks); otherwise the raw input.
    let bytes = if flag & 3 != 0 {
        let mut b = vec![0u8; 4096];
        // A version 1 header (no key) lets the input's batch headers pass their
        // checksums without knowing a key; version 2 tests the keyed path.
        if flag & 3 == 1 {
            encode_file_header_v1(&mut b, 1, 0);
        } else {
            encode_file_header(&mut b, 1, 0, 1);
        }
        let blocks = usize::from(flag >> 2) % 8 + 1;
        b.extend(rest.iter().cycle().take(blocks * 4096.max(rest.len())));
        if rest.is_empty() {
            b.resize(4096 * (blocks + 1), 0);
        }
        b
    } else {
        rest.to_vec()
    };
    DIR.with(|dir| {
        std::fs::write(dir.path().join("current.wal"), &bytes).expect("write");
        for mode in [RecoveryMode::Strict, RecoveryMode::TolerateCorruption] {
            if let Ok(r) = WalReader::open_with(dir.path(), mode) {
                for e in r.entries_from(0) {
                    if e.is_err() {
                        break;
                    }
                }
            }
        }
    });
});
