//! Process accounting from `/proc` (Linux): CPU time per thread, peak RSS and
//! bytes read from storage.
//! Everywhere else these read as `None`.

use std::time::Duration;

use crate::wal::thread_cpu::parse_stat;

/// CPU time (user + system) of the whole process and of the WAL's threads over a
/// window: [`CpuSnapshot::since`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// All threads of the process, including those that exited.
    pub process: Duration,
    /// The WAL's threads (`streamline-wal-*`: the commit thread and the file
    /// preparers, including preparers that started or exited within the window)
    /// and the kernel's io_uring workers of this process (`iou-*`), which run its
    /// fsyncs. An io_uring worker that exited before the end of the window is
    /// not counted (the kernel starts and retires them as it sees fit).
    pub wal_threads: Duration,
}

/// One look at the process's CPU time, as [`cpu_sample`] takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSnapshot {
    /// All threads of the process, including those that exited.
    pub process: Duration,
    /// `streamline-wal-*` threads: those alive, plus those that reported their
    /// CPU time as they exited (see `wal::thread_cpu`).
    pub wal_threads: Duration,
    /// The io_uring workers alive (`iou-*`): thread id and CPU time.
    pub io_workers: Vec<(u32, Duration)>,
}

impl CpuSnapshot {
    /// The CPU used between `before` and `self`. An io_uring worker counts what
    /// it used since `before` (all of it when it started since), and nothing
    /// when it is gone: never less than nothing.
    pub fn since(&self, before: &CpuSnapshot) -> CpuSample {
        let io: Duration = self
            .io_workers
            .iter()
            .map(|(tid, cpu)| {
                let earlier = before
                    .io_workers
                    .iter()
                    .find(|(t, _)| t == tid)
                    .map_or(Duration::ZERO, |(_, c)| *c);
                cpu.saturating_sub(earlier)
            })
            .sum();
        CpuSample {
            process: self.process.saturating_sub(before.process),
            wal_threads: self.wal_threads.saturating_sub(before.wal_threads) + io,
        }
    }
}

/// Samples the CPU time of the process and of its WAL threads; `None` without `/proc`.
pub fn cpu_sample() -> Option<CpuSnapshot> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, _, process) = parse_stat(&stat)?;
    // A WAL thread that reports while the tasks are read could be counted in
    // neither place: read again (see `wal::thread_cpu`).
    let mut finished = crate::wal::thread_cpu::finished();
    for _ in 0..100 {
        let mut wal_threads = finished.cpu;
        let mut io_workers = Vec::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                let Ok(s) = std::fs::read_to_string(t.path().join("stat")) else {
                    continue;
                };
                let Some((tid, comm, cpu)) = parse_stat(&s) else {
                    continue;
                };
                if comm.starts_with("streamline-wal") && !finished.recent.contains(&tid) {
                    wal_threads += cpu;
                } else if comm.starts_with("iou-") {
                    io_workers.push((tid, cpu));
                }
            }
        }
        let now = crate::wal::thread_cpu::finished();
        if now.reports == finished.reports {
            return Some(CpuSnapshot {
                process,
                wal_threads,
                io_workers,
            });
        }
        finished = now;
    }
    None
}

/// Peak resident set size of the process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib_field(&status, "VmHWM:")
}

/// Resident set size of the process now (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib_field(&status, "VmRSS:")
}

/// Reads a `Name:   1234 kB` field of `/proc/self/status` as bytes.
pub fn parse_kib_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line
        .get(name.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Bytes the process has caused to be read from storage (`read_bytes` of
/// `/proc/self/io`: reads served from the page cache do not count), across all
/// its threads, those that exited included.
pub fn device_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    parse_io_field(&io, "read_bytes")
}

/// Reads a `name: 1234` field of `/proc/self/io`.
pub fn parse_io_field(io: &str, name: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

/// Resets the peak RSS to the current RSS (`echo 5 > /proc/self/clear_refs`), so
/// that each job reports its own peak. Returns false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Writes back dirty pages and drops the clean page cache
/// (`/proc/sys/vm/drop_caches`). Returns false where that is not permitted.
pub fn drop_page_cache() -> bool {
    let synced = std::process::Command::new("sync")
        .status()
        .is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the calling thread has used `at_least` more CPU time.
    #[cfg(target_os = "linux")]
    fn burn(at_least: Duration) {
        let own = || {
            let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            parse_stat(&s).unwrap().2
        };
        let until = own() + at_least;
        let mut x = 0u64;
        while own() < until {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }

    /// A WAL thread as the preparer is one: named `streamline-wal-*`, reporting
    /// its CPU time as it exits.
    #[cfg(target_os = "linux")]
    fn wal_thread(body: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("streamline-wal-test".into())
            .spawn(move || {
                body();
                crate::wal::thread_cpu::report_this_thread();
            })
            .unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn wal_threads_that_exit_within_the_window_are_counted() {
        // Other tests' threads may add CPU time to the window, never take any away.
        let ms = Duration::from_millis;
        let before = cpu_sample().expect("/proc");
        wal_thread(move || burn(ms(50))).join().unwrap();
        let used = cpu_sample().unwrap().since(&before).wal_threads;
        assert!(used >= ms(50), "a thread started and gone: {used:?}");

        // Alive (with 50 ms used) at the first sample, gone at the second.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (ready, started) = std::sync::mpsc::channel::<()>();
        let t = wal_thread(move || {
            burn(ms(50));
            ready.send(()).unwrap();
            wait.recv().unwrap();
            burn(ms(40));
        });
        started.recv().unwrap();
        let before = cpu_sample().unwrap();
        go.send(()).unwrap();
        t.join().unwrap();
        let used = cpu_sample().unwrap().since(&before).wal_threads;
        // The 40 ms it used in the window (less one 10 ms tick of rounding).
        assert!(used >= ms(30), "a thread gone by the end: {used:?}");
    }

    #[test]
    fn io_workers_count_from_the_first_sample_and_never_negative() {
        let ms = Duration::from_millis;
        let before = CpuSnapshot {
            process: ms(100),
            wal_threads: ms(10),
            io_workers: vec![(1, ms(30)), (2, ms(50))],
        };
        let after = CpuSnapshot {
            process: ms(200),
            wal_threads: ms(15),
            // 1 went on, 2 is gone, 3 is new.
            io_workers: vec![(1, ms(35)), (3, ms(7))],
        };
        let d = after.since(&before);
        assert_eq!(d.process, ms(100));
        assert_eq!(d.wal_threads, ms(5) + ms(5) + ms(7));
    }

    #[test]
    fn parses_status_fields() {
        let s = "Name:\tx\nVmPeak:\t 100 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(parse_kib_field(s, "VmHWM:"), Some(2048 * 1024));
        assert_eq!(parse_kib_field(s, "VmRSS:"), None);
    }

    #[test]
    fn parses_io_fields() {
        let io = "rchar: 5000\nwchar: 10\nsyscr: 3\nread_bytes: 4096\nwrite_bytes: 0\n\
                  cancelled_write_bytes: 0\n";
        assert_eq!(parse_io_field(io, "read_bytes"), Some(4096));
        assert_eq!(parse_io_field(io, "rchar"), Some(5000));
        assert_eq!(parse_io_field(io, "read"), None);
        assert_eq!(parse_io_field(io, "syscw"), None);
        if cfg!(target_os = "linux") {
            assert!(device_read_bytes().is_some(), "/proc/self/io");
        }
    }
}
