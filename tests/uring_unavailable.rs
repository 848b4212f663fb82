//! Where io_uring is forbidden, as in containers whose seccomp profile blocks it
//! (Docker's default does): `auto` falls back to the std backend and works, and an
//! explicit `uring` fails with an error that says so instead of falling back.
//!
//! The test thread installs a seccomp filter that answers `io_uring_setup` with
//! ENOSYS; threads it starts later (the WAL's) inherit it. A filter cannot be
//! removed, so this file holds one test and nothing else.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use bytes::Bytes;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Makes `io_uring_setup` fail with ENOSYS for this thread and every thread it
/// starts from now on.
fn forbid_io_uring() {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k, jt, jf| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    };
    // seccomp_data: `nr` at offset 0, `arch` at offset 4.
    let mut filter = [
        stmt(LD_W_ABS, 4),
        jump(AUDIT_ARCH, 0, 3),
        stmt(LD_W_ABS, 0),
        jump(libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with these options reads `prog` (and the filter it points
    // to), both alive for the call; the kernel copies the program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn config(backend: BackendKind) -> WalConfig {
    WalConfig {
        backend,
        sync_mode: SyncMode::EveryWrite,
        max_file_size: 256 << 10,
        ..WalConfig::default()
    }
}

#[test]
fn without_io_uring_auto_falls_back_to_std_and_uring_is_refused() {
    // The variable would override `auto`.
    std::env::remove_var("STREAMLINE_WAL_BACKEND");
    let dir = tempfile::tempdir().unwrap();
    // With io_uring available, `auto` means uring here.
    let (wal, _) = Wal::open(dir.path().join("before"), config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Uring);
    wal.close().unwrap();

    forbid_io_uring();
    let err = io_uring::IoUring::new(8).map(|_| ()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSYS), "{err}");

    let err = Wal::open(dir.path().join("uring"), config(BackendKind::Uring))
        .map(|_| ())
        .expect_err("uring was requested and io_uring is forbidden");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSYS), "{err}");
    assert!(err.to_string().contains("io_uring_setup"), "{err}");

    let path = dir.path().join("auto");
    let (wal, _) = Wal::open(&path, config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std, "auto did not fall back");
    let seqs: Vec<u64> = (0..200u64)
        .map(|i| {
            wal.append("fallback", 0, Bytes::from(vec![i as u8; 3000]))
                .wait()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(
        wal.stats().rotations > 0,
        "256 KiB files should have rotated"
    );
    wal.close().unwrap();

    let (wal, rec) = Wal::open(&path, config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std);
    let entries = rec.collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(entries.len(), 200);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(&e.data[..], &vec![i as u8; 3000][..]);
    }
    wal.close().unwrap();
}
