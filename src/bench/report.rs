//! Turns a [`JobResult`] into the documented report: a JSON object per job, a human
//! table, and the HdrHistogram percentile distribution (`.hgrm`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::run::JobResult;
use crate::wal::SyncMode;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyUs {
    /// Acknowledged appends the histogram holds.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest.
    pub max: f64,
    /// Acknowledgements at the histogram's ceiling (100 s) or above: a slower
    /// one is counted at the ceiling, so when this is not 0, `max` and the
    /// percentiles that reach it are lower bounds.
    pub at_ceiling: u64,
}

impl LatencyUs {
    /// Percentiles of a nanosecond histogram, in microseconds (zeros when empty).
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencyUs {
                count: 0,
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                p9999: 0.0,
                max: 0.0,
                at_ceiling: 0,
            };
        }
        let us = |ns: u64| round2(ns as f64 / 1000.0);
        LatencyUs {
            count: h.len(),
            min: us(h.min()),
            mean: round2(h.mean() / 1000.0),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
            at_ceiling: h.count_at(h.high()),
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Reopen timing in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecoveryReport {
    /// `Wal::open` (validating scan of every file, tail handling, start-up), ms.
    pub open_ms: f64,
    /// Reading every entry back through the recovery iterator, ms.
    pub replay_ms: f64,
    /// Entries read back.
    pub entries: u64,
    /// WAL bytes validated.
    pub wal_bytes: u64,
    /// `wal_bytes / open` in MB/s (10^6 bytes): the validating scan alone.
    pub scan_mb_per_sec: f64,
    /// `wal_bytes / (open + replay)` in MB/s: open and read everything back.
    pub recovery_mb_per_sec: f64,
    /// True when the scan was cold: the page cache was dropped first and the
    /// open read at least half of `wal_bytes` from the device
    /// (`device_read_bytes`).
    pub cold_cache: bool,
    /// True when the page cache was dropped before the reopen (`--drop-caches`
    /// and the drop succeeded), whether or not the scan then read the device.
    pub caches_dropped: bool,
    /// Bytes the process read from storage during the open (`read_bytes` of
    /// `/proc/self/io`); `None` where that is not available.
    pub device_read_bytes: Option<u64>,
    /// Resident set size of the whole process just before the reopen, bytes.
    pub rss_before_bytes: Option<u64>,
    /// Peak resident set size of the whole process during the reopen and the
    /// replay, bytes (what recovery held at once is the rise over
    /// `rss_before_bytes`).
    pub peak_rss_bytes: Option<u64>,
}

/// One job's report: the documented JSON object (see `docs/benchmarks.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    /// 1-based job number in the run.
    pub job: usize,
    /// What was measured.
    pub engine: String,
    /// I/O path in use (`uring`, `std`, `pwrite+fdatasync`, ...).
    pub backend: String,
    /// `every_write`, `interval`, `os_default`, or `none` for `nowal`.
    pub sync_mode: String,
    /// Whether the WAL wrote with O_DIRECT (`null` for other engines).
    pub direct_io: Option<bool>,
    /// The fdatasync period in ms of an `interval` job (`null` for other
    /// modes and engines, which take none).
    pub sync_ms: Option<u64>,
    /// Bytes of each WAL file (streamline, raft-engine; `null` for engines
    /// without such files).
    pub max_file_size: Option<u64>,
    /// Writer threads.
    pub writers: usize,
    /// Outstanding appends per writer.
    pub queue_depth: usize,
    /// Checkpoint period in ms (`null`: never checkpointed, every file new);
    /// for raft-engine, its purge period.
    pub checkpoint_ms: Option<u64>,
    /// Runtime threads the writers ran on as tasks (`null`: one thread per writer).
    pub async_workers: Option<usize>,
    /// Bytes per record: a number, or `"MIN..MAX"` for a range.
    pub record_size: serde_json::Value,
    /// Measured window, from start to the last acknowledgement, in seconds.
    pub duration_s: f64,
    /// Records acknowledged in the window.
    pub records: u64,
    /// Acknowledged records per writer (sums to `records`).
    pub writer_records: Vec<u64>,
    /// Payload bytes acknowledged.
    pub bytes: u64,
    /// `records / duration_s`.
    pub records_per_sec: f64,
    /// Payload MB (10^6 bytes) acknowledged per second.
    pub mb_per_sec: f64,
    /// fdatasyncs in the window (`null` where the engine does not count them).
    pub fsyncs: Option<u64>,
    /// `fsyncs / duration_s`.
    pub fsyncs_per_sec: Option<f64>,
    /// Writes (batches) in the window.
    pub batches: Option<u64>,
    /// `records / batches`.
    pub records_per_batch_mean: Option<f64>,
    /// Largest batch since the engine opened.
    pub records_per_batch_max: Option<u64>,
    /// Batches in the window submitted beside an earlier durable write still in
    /// flight because their cohort had gathered (streamline `every_write`).
    pub early_batches: Option<u64>,
    /// Batches in the window written in a group at the commit thread's next wait
    /// (streamline `every_write`: every one with std, with uring while its group
    /// writes are on).
    pub grouped_batches: Option<u64>,
    /// Bytes written to files in the window, framing and padding included.
    pub bytes_written: Option<u64>,
    /// Latency of each acknowledged append, microseconds.
    pub latency_us: LatencyUs,
    /// Process CPU time (user + system, all threads) per acknowledged record, µs.
    pub cpu_us_per_record: Option<f64>,
    /// CPU of the WAL's own threads (commit thread, file preparers, io_uring
    /// workers) per record, µs. Preparers that started or exited within the
    /// window count what they used in it; an io_uring worker that exited before
    /// the end of the window is not counted (see [`super::sys::CpuSample`]).
    pub wal_thread_cpu_us_per_record: Option<f64>,
    /// Process CPU time over wall time (2.0 = two cores busy).
    pub cpu_cores_busy: Option<f64>,
    /// Peak resident set size during the job (`VmHWM`), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// With `--reopen`: time to reopen the WAL and read it back.
    pub recovery: Option<RecoveryReport>,
}

impl JobReport {
    /// Computes the report of a finished job.
    pub fn from_result(r: &JobResult) -> Self {
        let secs = r.elapsed.as_secs_f64();
        let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        let per_record = |d: std::time::Duration| {
            if r.records > 0 {
                Some(round2(d.as_secs_f64() * 1e6 / r.records as f64))
            } else {
                None
            }
        };
        let sync_mode = match r.spec.engine {
            super::job::EngineKind::Nowal => "none".to_string(),
            super::job::EngineKind::Streamline => r.spec.wal.sync_mode.to_string(),
            _ => SyncMode::EveryWrite.to_string(),
        };
        let record_size = match r.spec.record_size {
            super::job::RecordSize::Fixed(n) => serde_json::Value::from(n),
            other => serde_json::Value::from(other.to_string()),
        };
        let is_streamline = r.spec.engine == super::job::EngineKind::Streamline;
        JobReport {
            job: r.index,
            engine: r.spec.engine.to_string(),
            backend: r.backend.clone(),
            sync_mode,
            direct_io: r.direct_io,
            sync_ms: (is_streamline && r.spec.wal.sync_mode == SyncMode::Interval)
                .then_some(r.spec.wal.sync_interval_ms),
            max_file_size: matches!(
                r.spec.engine,
                super::job::EngineKind::Streamline | super::job::EngineKind::RaftEngine
            )
            .then_some(r.spec.wal.max_file_size),
            writers: r.spec.writers,
            queue_depth: r.spec.queue_depth,
            async_workers: r.spec.async_workers,
            checkpoint_ms: r
                .spec
                .checkpoint_every
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            record_size,
            duration_s: (secs * 1e6).round() / 1e6,
            records: r.records,
            writer_records: r.writer_records.clone(),
            bytes: r.bytes,
            records_per_sec: per_sec(r.records as f64).round(),
            mb_per_sec: round2(per_sec(r.bytes as f64) / 1e6),
            fsyncs: r.counters.fsyncs,
            fsyncs_per_sec: r.counters.fsyncs.map(|f| per_sec(f as f64).round()),
            batches: r.counters.batches,
            records_per_batch_mean: r
                .counters
                .batches
                .filter(|&b| b > 0)
                .map(|b| round2(r.records as f64 / b as f64)),
            records_per_batch_max: r.counters.max_batch_records,
            early_batches: r.counters.early_batches,
            grouped_batches: r.counters.grouped_batches,
            bytes_written: r.counters.bytes_written,
            latency_us: LatencyUs::from_hist(&r.hist),
            cpu_us_per_record: r.cpu.and_then(|c| per_record(c.process)),
            wal_thread_cpu_us_per_record: if is_streamline {
                r.cpu.and_then(|c| per_record(c.wal_threads))
            } else {
                None
            },
            cpu_cores_busy: r
                .cpu
                .filter(|_| secs > 0.0)
                .map(|c| round2(c.process.as_secs_f64() / secs)),
            peak_rss_bytes: r.peak_rss_bytes,
            recovery: r.recovery.map(|rec| {
                let mb = rec.wal_bytes as f64 / 1e6;
                let open = rec.open.as_secs_f64();
                let total = open + rec.replay.as_secs_f64();
                RecoveryReport {
                    open_ms: round2(open * 1e3),
                    replay_ms: round2(rec.replay.as_secs_f64() * 1e3),
                    entries: rec.entries,
                    wal_bytes: rec.wal_bytes,
                    scan_mb_per_sec: if open > 0.0 { round2(mb / open) } else { 0.0 },
                    recovery_mb_per_sec: if total > 0.0 { round2(mb / total) } else { 0.0 },
                    cold_cache: rec.cold,
                    caches_dropped: rec.caches_dropped,
                    device_read_bytes: rec.device_read_bytes,
                    rss_before_bytes: rec.rss_before_bytes,
                    peak_rss_bytes: rec.peak_rss_bytes,
                }
            }),
        }
    }

    /// The report as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("report fields are all serialisable")
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// The human table of a run: one row per job, then a recovery section when any job
/// reopened its WAL.
pub fn table(reports: &[JobReport]) -> String {
    let header = [
        "job",
        "engine",
        "backend",
        "sync",
        "wr",
        "qd",
        "size",
        "rec/s",
        "MB/s",
        "fsync/s",
        "rec/batch",
        "p50us",
        "p90us",
        "p99us",
        "p99.9us",
        "p99.99us",
        "maxus",
        "cpu-us/rec",
        "rss-MiB",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.job.to_string(),
                r.engine.clone(),
                r.backend.clone(),
                r.sync_mode.clone(),
                // Writers run as tasks: "64/2rt" is 64 tasks on 2 runtime threads.
                match r.async_workers {
                    Some(n) => format!("{}/{n}rt", r.writers),
                    None => r.writers.to_string(),
                },
                r.queue_depth.to_string(),
                match &r.record_size {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                },
                format!("{:.0}", r.records_per_sec),
                format!("{:.1}", r.mb_per_sec),
                opt(r.fsyncs_per_sec, 0),
                opt(r.records_per_batch_mean, 1),
                format!("{:.1}", r.latency_us.p50),
                format!("{:.1}", r.latency_us.p90),
                format!("{:.1}", r.latency_us.p99),
                format!("{:.1}", r.latency_us.p999),
                format!("{:.1}", r.latency_us.p9999),
                format!("{:.1}", r.latency_us.max),
                opt(r.cpu_us_per_record, 2),
                opt(r.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0)), 1),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if (1..4).contains(&i) {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(
        &mut out,
        &header.iter().map(|s| (*s).to_string()).collect::<Vec<_>>(),
    );
    for row in &rows {
        line(&mut out, row);
    }
    let recs: Vec<(usize, &RecoveryReport)> = reports
        .iter()
        .filter_map(|r| r.recovery.as_ref().map(|x| (r.job, x)))
        .collect();
    if !recs.is_empty() {
        out.push_str(
            "\nreopen: job  wal-MB  entries  open-ms  replay-ms  scan-MB/s  recovery-MB/s  cache  device-read-MB  rss-MiB  peak-rss-MiB\n",
        );
        for &(job, x) in &recs {
            let _ = writeln!(
                out,
                "        {job:>3}  {:>6.0}  {:>7}  {:>7.1}  {:>9.1}  {:>9.0}  {:>13.0}  {:<5}  {:>14}  {:>7}  {:>12}",
                x.wal_bytes as f64 / 1e6,
                x.entries,
                x.open_ms,
                x.replay_ms,
                x.scan_mb_per_sec,
                x.recovery_mb_per_sec,
                if x.cold_cache { "cold" } else { "warm" },
                opt(x.device_read_bytes.map(|b| b as f64 / 1e6), 0),
                opt(x.rss_before_bytes.map(|b| b as f64 / (1024.0 * 1024.0)), 1),
                opt(x.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0)), 1),
            );
        }
        for (job, x) in recs {
            if x.caches_dropped && !x.cold_cache {
                let _ = writeln!(
                    out,
                    "note: job {job}: the page cache was dropped, yet the open read {} MB of the \
                     WAL's {:.0} MB from the device (less than half): reported as warm",
                    opt(x.device_read_bytes.map(|b| b as f64 / 1e6), 0),
                    x.wal_bytes as f64 / 1e6,
                );
            }
        }
    }
    out
}

/// The HdrHistogram percentile distribution (`.hgrm`, values in microseconds), as
/// `HistogramLogProcessor` and the online plotters read it.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>14.12} {total:>10}",);
            }
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / 1000.0,
            h.stdev() / 1000.0,
            h.max() as f64 / 1000.0,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {sd:>12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        // As HdrHistogram's own footer: the sub-buckets per bucket that the
        // precision asks for (2048 at 3 significant digits), not the count
        // of distinct values.
        (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_of_an_empty_histogram_is_zero() {
        let h = super::super::run::new_histogram();
        let l = LatencyUs::from_hist(&h);
        assert_eq!(l.count, 0);
        assert_eq!(l.max, 0.0);
    }

    /// An acknowledgement slower than the histogram holds (100 s) is
    /// recorded at its ceiling, and counted as such: before, `max` and the
    /// percentiles showed 100 s with nothing saying it was a bound.
    #[test]
    fn latencies_beyond_the_ceiling_are_counted() {
        let mut h = super::super::run::new_histogram();
        h.saturating_record(1_000);
        let l = LatencyUs::from_hist(&h);
        assert_eq!(l.at_ceiling, 0);
        h.saturating_record(200_000_000_000);
        let l = LatencyUs::from_hist(&h);
        assert_eq!(l.at_ceiling, 1);
        assert!((99_000_000.0..=101_000_000.0).contains(&l.max), "{}", l.max);
    }

    /// Acknowledgements between the ceiling and the end of the histogram's
    /// last bucket (100-137 s) are counted at the ceiling too: one of 120 s
    /// was recorded as such, not counted, and ranked above one of 150 s.
    #[test]
    fn latencies_just_past_the_ceiling_are_counted_at_it() {
        use super::super::run::record_latency;
        let mut h = super::super::run::new_histogram();
        record_latency(&mut h, 50_000_000_000);
        assert_eq!(LatencyUs::from_hist(&h).at_ceiling, 0);
        record_latency(&mut h, 120_000_000_000);
        record_latency(&mut h, 150_000_000_000);
        let l = LatencyUs::from_hist(&h);
        assert_eq!(l.at_ceiling, 2);
        assert!((99_000_000.0..=101_000_000.0).contains(&l.max), "{}", l.max);
    }

    #[test]
    fn hgrm_ends_with_the_totals() {
        let mut h = super::super::run::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.contains("Total count    =         1000"), "{text}");
        let last_data = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        let cols: Vec<&str> = last_data.split_whitespace().collect();
        assert_eq!(
            cols[2], "1000",
            "cumulative count reaches the total: {last_data}"
        );
        let v: f64 = cols[0].parse().unwrap();
        assert!((999.0..=1001.0).contains(&v), "max value in µs: {v}");
    }
}
