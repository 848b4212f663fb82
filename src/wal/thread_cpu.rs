//! CPU time of the WAL's own threads that have exited (Linux), for
//! `streamline-bench`'s "WAL threads" CPU, which otherwise reads only the threads
//! alive when it samples `/proc/self/task`: a file preparer (one thread per
//! prepared file) that starts and exits between two samples would be missed,
//! and one alive at the first sample but gone at the second would be subtracted.
//!
//! Each `streamline-wal-*` thread reports its own CPU time here as the last
//! thing it does. A sampler reads [`finished`], then the task list (skipping
//! the threads named in [`Finished::recent`]: reported, not yet gone), then
//! [`finished`] again, and scans again when a report came in between: every
//! WAL thread's CPU is then counted exactly once, from the task list while it
//! runs and from here once it has reported. Everywhere but Linux nothing is
//! recorded.

use std::{sync::Mutex, time::Duration};

/// How many reporting threads [`Finished::recent`] remembers: a thread is gone
/// microseconds after it reports, and each WAL has one preparer at a time.
const RECENT: usize = 8;

/// CPU time of the WAL threads of this process that have finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Finished {
    /// Threads that reported; changes with every report.
    pub reports: u64,
    /// Their CPU time (user + system), summed.
    pub cpu: Duration,
    /// Thread ids of the latest reports (0: none): such a thread may still be
    /// listed in `/proc/self/task` for a moment.
    pub recent: [u32; RECENT],
}

static FINISHED: Mutex<Finished> = Mutex::new(Finished {
    reports: 0,
    cpu: Duration::ZERO,
    recent: [0; RECENT],
});

/// What the WAL threads that have finished so far used.
pub(crate) fn finished() -> Finished {
    *FINISHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds the calling thread's CPU time to [`finished`]; call it as the thread's
/// last action.
pub(crate) fn report_this_thread() {
    let Some((tid, _, cpu)) = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
    else {
        return;
    };
    let mut f = FINISHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let slot = (f.reports % RECENT as u64) as usize;
    f.recent[slot] = tid;
    f.reports += 1;
    f.cpu += cpu;
}

/// Parses a `/proc/.../stat` line: the thread id (field 1), the command name
/// inside the parentheses, and `utime + stime` (fields 14 and 15).
pub(crate) fn parse_stat(line: &str) -> Option<(u32, String, Duration)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let tid: u32 = line.get(..open)?.trim().parse().ok()?;
    let comm = line.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI this project builds for.
    const HZ: u64 = 100;
    Some((
        tid,
        comm,
        Duration::from_nanos((utime + stime) * 1_000_000_000 / HZ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line = "1234 (streamline-wal-c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100";
        let (tid, comm, cpu) = parse_stat(line).expect("parse");
        assert_eq!((tid, comm.as_str()), (1234, "streamline-wal-c"));
        assert_eq!(cpu, Duration::from_secs(3));
        let odd = "1 (a b) c) R 1 2 3 4 5 6 7 8 9 10 1 1 0 0";
        assert_eq!(parse_stat(odd).map(|x| x.1), Some("a b) c".to_string()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_reports_its_cpu_once_it_is_done() {
        let before = finished();
        let tid = std::thread::spawn(|| {
            // Burn at least two 10 ms ticks of this thread's CPU.
            let own = || {
                let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
                parse_stat(&s).unwrap().2
            };
            let mut x = 0u64;
            while own() < Duration::from_millis(20) {
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            let tid = std::fs::read_link("/proc/thread-self")
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap();
            report_this_thread();
            tid
        })
        .join()
        .unwrap();
        let after = finished();
        assert!(after.reports > before.reports);
        assert!(tid > 0);
        // Other tests' WAL threads may report meanwhile: only more is certain.
        assert!(
            after.cpu >= before.cpu + Duration::from_millis(20),
            "{after:?}"
        );
    }
}
