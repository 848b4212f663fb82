//! Process accounting from `/proc` (Linux): CPU time per thread and peak RSS.
//! Everywhere else these read as `None`.

use std::time::Duration;

/// CPU time (user + system) of the whole process and of the WAL commit thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// All threads of the process, including those that already exited.
    pub process: Duration,
    /// Threads named `streamline-wal*` (the commit thread and its file preparer) and
    /// the kernel's io_uring workers of this process (`iou-*`), which run its fsyncs.
    pub wal_threads: Duration,
}

impl CpuSample {
    /// `self - before`.
    pub fn since(&self, before: &CpuSample) -> CpuSample {
        CpuSample {
            process: self.process.saturating_sub(before.process),
            wal_threads: self.wal_threads.saturating_sub(before.wal_threads),
        }
    }
}

fn ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux ABI this project builds for.
    100
}

/// Parses `utime + stime` (fields 14 and 15) of a `/proc/.../stat` line, and the
/// command name inside the parentheses.
pub fn parse_stat(line: &str) -> Option<(String, Duration)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    let hz = ticks_per_second();
    Some((comm, Duration::from_nanos(ticks * 1_000_000_000 / hz)))
}

/// Samples the CPU time of the process and of its WAL threads; `None` without `/proc`.
pub fn cpu_sample() -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, process) = parse_stat(&stat)?;
    let mut wal_threads = Duration::ZERO;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("stat")) {
                if let Some((comm, cpu)) = parse_stat(&s) {
                    if comm.starts_with("streamline-wal") || comm.starts_with("iou-") {
                        wal_threads += cpu;
                    }
                }
            }
        }
    }
    Some(CpuSample {
        process,
        wal_threads,
    })
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

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line = "1234 (streamline-wal-c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100";
        let (comm, cpu) = parse_stat(line).expect("parse");
        assert_eq!(comm, "streamline-wal-c");
        assert_eq!(cpu, Duration::from_secs(3));
        let odd = "1 (a b) c) R 1 2 3 4 5 6 7 8 9 10 1 1 0 0";
        assert_eq!(parse_stat(odd).map(|x| x.0), Some("a b) c".to_string()));
    }

    #[test]
    fn parses_status_fields() {
        let s = "Name:\tx\nVmPeak:\t 100 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(parse_kib_field(s, "VmHWM:"), Some(2048 * 1024));
        assert_eq!(parse_kib_field(s, "VmRSS:"), None);
    }
}
