//! Seccomp filters for tests that take a system call away from the process.
//! A filter cannot be removed: a test file that installs one holds one test.

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Makes system call `nr` fail with `errno`, for the calling thread and the
/// threads it starts later or, with `all_threads`, for every thread of the
/// process at once (`SECCOMP_FILTER_FLAG_TSYNC`), such as a WAL's commit thread
/// that is already running.
pub fn deny(nr: libc::c_long, errno: i32, all_threads: bool) {
    install(nr, None, errno, all_threads);
}

/// Like [`deny`], only for the calls of `nr` whose second argument is `op` (an
/// `io_uring_register` opcode, say); other calls go through.
pub fn deny_op(nr: libc::c_long, op: u32, errno: i32, all_threads: bool) {
    install(nr, Some(op), errno, all_threads);
}

fn install(nr: libc::c_long, op: Option<u32>, errno: i32, all_threads: bool) {
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
    // seccomp_data: `nr` at offset 0, `arch` at offset 4, the arguments as
    // 64-bit words from offset 16 (the second one's low half at 24 on these
    // little-endian machines). Each failed test jumps to the final ALLOW.
    let nr = u32::try_from(nr).expect("system call number");
    let mut filter = match op {
        None => vec![
            stmt(LD_W_ABS, 4),
            jump(AUDIT_ARCH, 0, 3),
            stmt(LD_W_ABS, 0),
            jump(nr, 0, 1),
            stmt(RET_K, libc::SECCOMP_RET_ERRNO | errno as u32),
            stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        ],
        Some(op) => vec![
            stmt(LD_W_ABS, 4),
            jump(AUDIT_ARCH, 0, 5),
            stmt(LD_W_ABS, 0),
            jump(nr, 0, 3),
            stmt(LD_W_ABS, 24),
            jump(op, 0, 1),
            stmt(RET_K, libc::SECCOMP_RET_ERRNO | errno as u32),
            stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        ],
    };
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes no pointer. prctl(PR_SET_SECCOMP)
    // and seccomp(SECCOMP_SET_MODE_FILTER) read `prog` and the filter it points
    // to, both alive for the call; the kernel copies the program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let r = if all_threads {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &prog as *const libc::sock_fprog,
            )
        } else {
            libc::c_long::from(libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ))
        };
        assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}
