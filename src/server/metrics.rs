//! Metrics in the Prometheus text format, served over HTTP at `/metrics` when
//! `--metrics-listen` is set.
//!
//! Counters are atomics the request path bumps (one relaxed add each, no lock);
//! everything else (partitions, the WAL, groups, consumer lag) is read from its
//! owner when a scrape comes, on a blocking thread. The HTTP side is one request
//! per connection: `GET /metrics` gets the page, any other path 404, any other
//! method 405, a request head over 8 KiB or not there 2 s after the accept is
//! dropped, so is a client that has not taken the answer within 10 s; at most
//! 64 connections are open at once, and 16 pages rendered and written, other
//! requests waiting up to 5 s for their turn (then 503).

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kafka_protocol::messages::ApiKey;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{supported_apis, Ctx};

/// Upper bounds (seconds) of the request-duration histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The largest request head the metrics endpoint reads.
const MAX_HEAD: usize = 8192;

/// Metrics connections open at once; more are closed as soon as they are
/// accepted, so that they cannot take the file descriptors storage needs.
const MAX_METRICS_CONNECTIONS: usize = 64;

/// Metrics requests answered at once (a page rendered and written); the others
/// wait for their turn, up to [`ANSWER_WAIT`].
const MAX_METRICS_ANSWERS: usize = 16;

/// The file descriptors the endpoint may hold at once: its listener, the
/// connections it holds and one file read by each page being rendered (see
/// `render`); storage keeps them out of the partitions' budget.
pub(crate) const FILES: usize = 1 + MAX_METRICS_CONNECTIONS + MAX_METRICS_ANSWERS;

/// How long a request waits for one of the [`MAX_METRICS_ANSWERS`] before it is
/// answered 503.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// How long a metrics client has from its accept to send its request head.
/// Prometheus sends it at once. A client that sends nothing holds only one of
/// the [`MAX_METRICS_CONNECTIONS`] meanwhile, none of the answers: silent
/// connections used to take the answer slots, each for 5 s, and 16 clients
/// that reconnected at once when closed kept every scrape out.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a metrics client may take to receive the answer (Prometheus gives
/// up on a scrape after 10 s by default). Without a limit, a client that sends
/// its request and never reads held its connection slot for as long as it kept
/// the connection open, once the page outgrew the socket buffers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of one API.
struct ApiCounters {
    key: ApiKey,
    requests: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    /// Requests whose response took at most `BUCKETS[i]` (not cumulative).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Microseconds, summed over every request.
    duration_us: AtomicU64,
}

/// When the process started, as noted by [`note_process_start`] (or when the
/// first [`Metrics`] was made, in a program that never noted it).
static PROCESS_START: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();

/// Notes now as the process's start, for `process_start_time_seconds`: call it
/// first in `main`, before recovery, which can take minutes.
pub fn note_process_start() {
    PROCESS_START.get_or_init(SystemTime::now);
}

/// The broker's counters, shared by every connection.
pub(crate) struct Metrics {
    started: SystemTime,
    apis: Vec<ApiCounters>,
    /// Connections being served now.
    pub(crate) open_connections: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Connections closed because of what the client sent (a malformed or
    /// oversized frame, an unknown API or version).
    bad_requests: AtomicU64,
    /// TLS handshakes that failed or timed out.
    tls_failures: AtomicU64,
    /// Connections closed for a TLS error after their handshake.
    tls_errors: AtomicU64,
    sasl_successes: AtomicU64,
    sasl_failures: AtomicU64,
    /// Read passes of Fetch requests over their partitions.
    fetch_reads: AtomicU64,
    /// Read passes that left records unread for want of Fetch response memory.
    fetch_cut_by_memory: AtomicU64,
    /// Times a waiting long poll was woken by a change to one of its partitions.
    fetch_wakeups: AtomicU64,
    /// PLAIN passwords checked by deriving a salted credential again.
    plain_derivations: AtomicU64,
    /// Such derivations running now, and the most that ever ran at once.
    plain_derivations_running: AtomicUsize,
    plain_derivations_peak: AtomicUsize,
}

/// One PLAIN derivation running, counted by [`Metrics::plain_derivation`]
/// until dropped.
pub(crate) struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            started: *PROCESS_START.get_or_init(SystemTime::now),
            apis: supported_apis()
                .into_iter()
                .map(|(key, _, _)| ApiCounters {
                    key,
                    requests: AtomicU64::new(0),
                    request_bytes: AtomicU64::new(0),
                    response_bytes: AtomicU64::new(0),
                    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                    duration_us: AtomicU64::new(0),
                })
                .collect(),
            open_connections: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            tls_errors: AtomicU64::new(0),
            sasl_successes: AtomicU64::new(0),
            sasl_failures: AtomicU64::new(0),
            fetch_reads: AtomicU64::new(0),
            fetch_cut_by_memory: AtomicU64::new(0),
            fetch_wakeups: AtomicU64::new(0),
            plain_derivations: AtomicU64::new(0),
            plain_derivations_running: AtomicUsize::new(0),
            plain_derivations_peak: AtomicUsize::new(0),
        }
    }

    /// A PLAIN derivation starts; it ends when the guard is dropped.
    pub(crate) fn plain_derivation(&self) -> Running<'_> {
        self.plain_derivations.fetch_add(1, Ordering::Relaxed);
        let now = self
            .plain_derivations_running
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        self.plain_derivations_peak
            .fetch_max(now, Ordering::Relaxed);
        Running(&self.plain_derivations_running)
    }

    pub(crate) fn fetch_read(&self) {
        self.fetch_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Passes counted by [`Metrics::fetch_read`].
    #[cfg(test)]
    pub(crate) fn fetch_reads(&self) -> u64 {
        self.fetch_reads.load(Ordering::Relaxed)
    }

    /// A waiting long poll was woken to look at its partitions' positions.
    pub(crate) fn fetch_wakeup(&self) {
        self.fetch_wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// Wake-ups counted by [`Metrics::fetch_wakeup`].
    #[cfg(test)]
    pub(crate) fn fetch_wakeups(&self) -> u64 {
        self.fetch_wakeups.load(Ordering::Relaxed)
    }

    /// A Fetch read pass left records unread because the Fetch response memory
    /// budget gave it less room than its `max_bytes`.
    pub(crate) fn fetch_cut_by_memory(&self) {
        self.fetch_cut_by_memory.fetch_add(1, Ordering::Relaxed);
    }

    /// Passes counted by [`Metrics::fetch_cut_by_memory`].
    #[cfg(test)]
    pub(crate) fn fetches_cut_by_memory(&self) -> u64 {
        self.fetch_cut_by_memory.load(Ordering::Relaxed)
    }

    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sasl(&self, success: bool) {
        let c = if success {
            &self.sasl_successes
        } else {
            &self.sasl_failures
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tls_failure(&self) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tls_error(&self) {
        self.tls_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one request of `key`, from its decoding until its response was
    /// ready (`elapsed`), with the sizes of both frames.
    pub(crate) fn request(
        &self,
        key: ApiKey,
        request_bytes: usize,
        response_bytes: usize,
        elapsed: Duration,
    ) {
        let Some(a) = self.apis.iter().find(|a| a.key == key) else {
            return;
        };
        a.requests.fetch_add(1, Ordering::Relaxed);
        a.request_bytes
            .fetch_add(request_bytes as u64, Ordering::Relaxed);
        a.response_bytes
            .fetch_add(response_bytes as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            a.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        a.duration_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// The longest label value a page carries. Group ids come from clients and have
/// no length limit of their own: a value longer than [`KEPT_LABEL_BYTES`] is
/// cut to those first bytes, a `~` and the first 8 bytes of the SHA-256 of the
/// whole value, in hex, so that two long ids that share their start stay two
/// series (a value shaped like a cut one is cut too, so none can pose as
/// another's).
const MAX_LABEL_BYTES: usize = 256;

/// The bytes of a label value kept as they are: [`MAX_LABEL_BYTES`] less the
/// `~` and 16 hex digits of a cut value.
const KEPT_LABEL_BYTES: usize = MAX_LABEL_BYTES - 17;

/// The most series of each per-group family (`streamline_group_members`,
/// `_committed_offset`, `_lag`) on one page, in order of group, topic and
/// partition; `streamline_metrics_series_omitted` counts the rest. Groups and
/// committed positions are made by clients: without a cap, one OffsetCommit of
/// 60 KB (a 32,000-byte group id, 2,000 partitions) added 128 MB to every page.
const MAX_GROUP_SERIES: usize = 10_000;

/// A label value with `\`, `"` and newlines escaped, as the text format wants,
/// and cut to [`MAX_LABEL_BYTES`].
fn escape(v: &str) -> String {
    let cut;
    let v = if v.len() > KEPT_LABEL_BYTES {
        let mut end = KEPT_LABEL_BYTES;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        cut = format!("{}~{}", &v[..end], label_hash(v));
        cut.as_str()
    } else {
        v
    };
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The first 8 bytes of the SHA-256 of `v`, in hex: a cut label's suffix.
fn label_hash(v: &str) -> String {
    #[cfg(test)]
    tests::HASHED.with(|h| h.set(h.get() + v.len()));
    let d = ring::digest::digest(&ring::digest::SHA256, v.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the text format, one family at a time.
struct Page(String);

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let escaped: Vec<(&str, String)> = labels.iter().map(|&(k, v)| (k, escape(v))).collect();
        let escaped: Vec<(&str, &str)> = escaped.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.sample_escaped(name, &escaped, value);
    }

    /// [`Self::sample`] with label values already passed through [`escape`]
    /// (a value used by many series is escaped, and hashed when cut, once).
    fn sample_escaped(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The metrics page for the broker behind `ctx`. Reads storage and the group
/// coordinator (locks each partition briefly, when its lock is free): run it
/// on a blocking thread.
pub(crate) fn render(ctx: &Ctx) -> String {
    let m = &ctx.metrics;
    let mut p = Page(String::with_capacity(16 * 1024));

    p.family(
        "streamline_build_info",
        "gauge",
        "Always 1; the version of the running broker.",
    );
    p.sample(
        "streamline_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    let started = m
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    p.single(
        "process_start_time_seconds",
        "gauge",
        "When the broker process started (before recovery), in seconds since the Unix epoch.",
        started,
    );
    process_metrics(&mut p);

    // Connections and requests.
    p.single(
        "streamline_connections_open",
        "gauge",
        "Client connections being served.",
        m.open_connections.load(Ordering::Relaxed),
    );
    let connection_counters = [
        (
            "streamline_connections_accepted_total",
            "Client connections accepted.",
            &m.accepted,
        ),
        (
            "streamline_connections_refused_total",
            "Client connections closed at once because --max-connections were open.",
            &m.refused,
        ),
        (
            "streamline_connections_closed_bad_request_total",
            "Connections closed because of a malformed or oversized frame, an unsupported API or version, or (with SASL) a request not served before authentication.",
            &m.bad_requests,
        ),
        (
            "streamline_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out (--tls-cert).",
            &m.tls_failures,
        ),
        (
            "streamline_tls_errors_total",
            "Connections closed for a TLS error after their handshake: a record that did not decrypt, or a fatal alert.",
            &m.tls_errors,
        ),
    ];
    for (name, help, v) in connection_counters {
        p.single(name, "counter", help, v.load(Ordering::Relaxed));
    }
    let budget = crate::storage::batch::decompression_budget();
    let (waits, timeouts) = budget.waits();
    p.single(
        "streamline_decompression_budget_bytes_in_use",
        "gauge",
        "Bytes of decompressed records held now, of the broker-wide decompression budget.",
        budget.in_use(),
    );
    p.single(
        "streamline_decompression_budget_waits_total",
        "counter",
        "Decompressions that waited for room in the budget.",
        waits,
    );
    p.single(
        "streamline_decompression_budget_timeouts_total",
        "counter",
        "Produced batches refused with REQUEST_TIMED_OUT because the budget had no room before the request's timeout.",
        timeouts,
    );
    p.single(
        "streamline_fetch_reads_total",
        "counter",
        "Read passes of Fetch requests over their partitions (a long poll reads again only when one of its partitions moves).",
        m.fetch_reads.load(Ordering::Relaxed),
    );
    p.single(
        "streamline_fetch_wakeups_total",
        "counter",
        "Times a waiting long poll was woken to look at its partitions: only a change to one of its own partitions (records applied, log start moved, end cut back, topic deleted) wakes it.",
        m.fetch_wakeups.load(Ordering::Relaxed),
    );
    p.single(
        "streamline_fetch_response_memory_bytes",
        "gauge",
        "Record bytes of Fetch responses in memory: being read, or waiting to be written to their connection (--fetch-response-memory-bytes bounds them, but for one batch per connection).",
        ctx.fetch_memory.in_use(),
    );
    p.single(
        "streamline_fetch_response_memory_limit_bytes",
        "gauge",
        "The Fetch response memory budget (--fetch-response-memory-bytes).",
        ctx.fetch_memory.limit(),
    );
    p.single(
        "streamline_fetch_cut_by_memory_total",
        "counter",
        "Fetch read passes that left records unread because the Fetch response memory budget gave them less than their max_bytes (they returned what fit, at least one batch).",
        m.fetch_cut_by_memory.load(Ordering::Relaxed),
    );
    p.family(
        "streamline_sasl_authentications_total",
        "counter",
        "SASL authentications, by result (--sasl-users).",
    );
    for (result, v) in [
        ("success", &m.sasl_successes),
        ("failure", &m.sasl_failures),
    ] {
        p.sample(
            "streamline_sasl_authentications_total",
            &[("result", result)],
            v.load(Ordering::Relaxed),
        );
    }
    p.single(
        "streamline_sasl_plain_derivations_total",
        "counter",
        "PLAIN logins of users known by salted credentials only whose password was checked by deriving the credential again (PBKDF2); a user's next login with the same password needs none.",
        m.plain_derivations.load(Ordering::Relaxed),
    );
    p.single(
        "streamline_sasl_plain_derivations_max_concurrent",
        "gauge",
        "The most such derivations that ran at once since the start (they are run one at a time).",
        m.plain_derivations_peak.load(Ordering::Relaxed),
    );
    let used: Vec<&ApiCounters> = m
        .apis
        .iter()
        .filter(|a| a.requests.load(Ordering::Relaxed) > 0)
        .collect();
    let api_name = |a: &ApiCounters| format!("{:?}", a.key);
    type Counter = fn(&ApiCounters) -> &AtomicU64;
    let per_api: [(&str, &str, Counter); 3] = [
        (
            "streamline_requests_total",
            "Requests answered (or, for acks=0 produces, handled), by API.",
            |a| &a.requests,
        ),
        (
            "streamline_request_bytes_total",
            "Bytes of request frames, by API.",
            |a| &a.request_bytes,
        ),
        (
            "streamline_response_bytes_total",
            "Bytes of response frames, by API.",
            |a| &a.response_bytes,
        ),
    ];
    for (name, help, counter) in per_api {
        p.family(name, "counter", help);
        for a in &used {
            let api = api_name(a);
            p.sample(name, &[("api", &api)], counter(a).load(Ordering::Relaxed));
        }
    }
    p.family(
        "streamline_request_duration_seconds",
        "histogram",
        "Time from a request's decoding until its response was ready, by API (a Fetch includes its long poll, a Produce its wait for the WAL).",
    );
    for a in &used {
        let api = api_name(a);
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += a.buckets[i].load(Ordering::Relaxed);
            p.sample(
                "streamline_request_duration_seconds_bucket",
                &[("api", &api), ("le", &bound.to_string())],
                cumulative,
            );
        }
        let count = a.requests.load(Ordering::Relaxed);
        p.sample(
            "streamline_request_duration_seconds_bucket",
            &[("api", &api), ("le", "+Inf")],
            count,
        );
        p.sample(
            "streamline_request_duration_seconds_sum",
            &[("api", &api)],
            a.duration_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        p.sample(
            "streamline_request_duration_seconds_count",
            &[("api", &api)],
            count,
        );
    }

    storage_metrics(ctx, &mut p);
    group_metrics(ctx, &mut p);
    p.0
}

/// The process's CPU time, memory and file descriptors, under the names
/// Prometheus client libraries use; each where the platform tells it.
fn process_metrics(p: &mut Page) {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrusage, UsageWho};
        if let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            p.single(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the broker, in seconds.",
                secs(u.user_time()) + secs(u.system_time()),
            );
        }
    }
    #[cfg(target_os = "linux")]
    {
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            });
        if let Some(kib) = rss_kib {
            p.single(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the broker, in bytes.",
                kib * 1024,
            );
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            p.single(
                "process_open_fds",
                "gauge",
                "Open file descriptors: WAL files, two per active segment, sealed segments' read handles, one per connection.",
                dir.count(),
            );
        }
    }
    if let Some(limit) = super::open_file_limit() {
        p.single(
            "process_max_fds",
            "gauge",
            "The soft limit on open file descriptors.",
            limit,
        );
    }
}

fn storage_metrics(ctx: &Ctx, p: &mut Page) {
    let storage = &ctx.storage;
    p.single(
        "streamline_storage_failed",
        "gauge",
        "1 once a WAL or segment write failed: produces are refused until a restart.",
        u8::from(storage.failed_why().is_some()),
    );
    let topics = storage.topics();
    p.single("streamline_topics", "gauge", "Topics.", topics.len());
    // The log end and size of each partition, read once a page without
    // waiting long for its log lock (a roll holds it through its syncs).
    let now: Vec<Vec<(i64, u64)>> = topics
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| p.log_end_and_size_now())
                .collect()
        })
        .collect();
    type Read = fn(&crate::storage::Partition, (i64, u64)) -> u64;
    let families: [(&str, &str, Read); 4] = [
        (
            "streamline_partition_log_start_offset",
            "First offset a consumer can read.",
            |p, _| u64::try_from(p.log_start_offset()).unwrap_or(0),
        ),
        (
            "streamline_partition_high_watermark",
            "Offset after the last record consumers can read (durable per the sync mode).",
            |p, _| u64::try_from(p.high_watermark()).unwrap_or(0),
        ),
        (
            "streamline_partition_log_end_offset",
            "Offset after the last record stored.",
            |_, (end, _)| u64::try_from(end).unwrap_or(0),
        ),
        (
            "streamline_partition_size_bytes",
            "Bytes of the partition's segments.",
            |_, (_, size)| size,
        ),
    ];
    for (name, help, read) in families {
        p.family(name, "gauge", help);
        for (t, now) in topics.iter().zip(&now) {
            for (i, (part, &now)) in t.partitions.iter().zip(now).enumerate() {
                let index = i.to_string();
                p.sample(
                    name,
                    &[("topic", &t.name), ("partition", &index)],
                    read(part, now),
                );
            }
        }
    }

    p.single(
        "streamline_wal_enabled",
        "gauge",
        "1 when produced batches go through the WAL.",
        u8::from(storage.wal().is_some()),
    );
    if let Some(wal) = storage.wal() {
        let s = wal.stats();
        let counters = [
            (
                "streamline_wal_entries_total",
                "Entries written to the WAL.",
                s.entries,
            ),
            (
                "streamline_wal_batches_total",
                "Batches written to the WAL (one write each).",
                s.batches,
            ),
            (
                "streamline_wal_fsyncs_total",
                "fdatasyncs of WAL files (linked, standalone, rotation and close).",
                s.fsyncs,
            ),
            (
                "streamline_wal_written_bytes_total",
                "Bytes written to WAL files, padding included.",
                s.bytes_written,
            ),
            (
                "streamline_wal_rotations_total",
                "WAL file rotations.",
                s.rotations,
            ),
        ];
        for (name, help, v) in counters {
            p.single(name, "counter", help, v);
        }
        p.single(
            "streamline_wal_pending_bytes",
            "gauge",
            "Bytes accepted by the WAL but not yet acknowledged.",
            s.pending_bytes,
        );
    }
}

fn group_metrics(ctx: &Ctx, p: &mut Page) {
    let groups = ctx.groups.overview();
    p.family(
        "streamline_group_members",
        "gauge",
        "Members of each consumer group the coordinator holds, with the group's state.",
    );
    for g in groups.iter().take(MAX_GROUP_SERIES) {
        p.sample(
            "streamline_group_members",
            &[("group", &g.group), ("state", g.state)],
            g.members,
        );
    }
    let omitted_members = groups.len().saturating_sub(MAX_GROUP_SERIES);
    drop(groups);
    let offsets = ctx.storage.offsets();
    let stored = offsets.groups();
    p.family(
        "streamline_group_committed_offset",
        "gauge",
        "The next offset each group will consume, as last committed.",
    );
    // Each group's and topic's label is escaped (and, when cut, hashed) once;
    // a lag row names them by index, so a long id is held once however many
    // series it labels.
    let mut labels: Vec<String> = Vec::new();
    let mut topic_labels: HashMap<String, usize> = HashMap::new();
    let mut lags: Vec<(usize, usize, i32, i64)> = Vec::new();
    let (mut positions, mut omitted_positions, mut omitted_lags) = (0usize, 0usize, 0usize);
    for g in &stored {
        let mut committed = offsets.fetch_all(&g.group);
        committed.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let mut group_label = None;
        for c in committed {
            let part = ctx.storage.partition(&c.topic, c.partition);
            if positions == MAX_GROUP_SERIES {
                omitted_positions += 1;
                omitted_lags += usize::from(part.is_some());
                continue;
            }
            positions += 1;
            let group = *group_label.get_or_insert_with(|| {
                labels.push(escape(&g.group));
                labels.len() - 1
            });
            let topic = match topic_labels.get(&c.topic) {
                Some(&i) => i,
                None => {
                    labels.push(escape(&c.topic));
                    topic_labels.insert(c.topic.clone(), labels.len() - 1);
                    labels.len() - 1
                }
            };
            let partition = c.partition.to_string();
            p.sample_escaped(
                "streamline_group_committed_offset",
                &[
                    ("group", &labels[group]),
                    ("topic", &labels[topic]),
                    ("partition", &partition),
                ],
                c.offset,
            );
            if let Some(part) = part {
                let lag = (part.high_watermark() - c.offset.max(part.log_start_offset())).max(0);
                lags.push((group, topic, c.partition, lag));
            }
        }
    }
    drop(topic_labels);
    p.family(
        "streamline_group_lag",
        "gauge",
        "Records between each group's committed offset (or the log start, if later) and the high watermark.",
    );
    for &(group, topic, partition, lag) in &lags {
        p.sample_escaped(
            "streamline_group_lag",
            &[
                ("group", &labels[group]),
                ("topic", &labels[topic]),
                ("partition", &partition.to_string()),
            ],
            lag,
        );
    }
    p.family(
        "streamline_metrics_series_omitted",
        "gauge",
        "Series of a per-group family left off this page: each shows at most 10000, in order of group, topic and partition.",
    );
    for (family, omitted) in [
        ("streamline_group_members", omitted_members),
        ("streamline_group_committed_offset", omitted_positions),
        ("streamline_group_lag", omitted_lags),
    ] {
        p.sample(
            "streamline_metrics_series_omitted",
            &[("family", family)],
            omitted,
        );
    }
}

/// Serves `/metrics` on `listener` until the task is dropped.
/// At most `MAX_METRICS_CONNECTIONS` are open at once; more are closed as soon
/// as they are accepted. Each lives at most `HEAD_TIMEOUT`, `ANSWER_WAIT`, the
/// time to render the page, and `WRITE_TIMEOUT`.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    let answers = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_ANSWERS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(place) = Arc::clone(&open).try_acquire_owned() else {
                    tracing::debug!(%peer, "too many metrics connections; closing this one");
                    drop(stream);
                    continue;
                };
                let ctx = Arc::clone(&ctx);
                let answers = Arc::clone(&answers);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, ctx, &answers).await {
                        tracing::debug!(%peer, error = %e, "metrics request failed");
                    }
                    drop(place);
                });
            }
            Err(e) => {
                crate::log_limit::limited!(warn, error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one request head and answers it, the page once one of `answers` is
/// free.
async fn answer(
    mut stream: TcpStream,
    ctx: Arc<Ctx>,
    answers: &tokio::sync::Semaphore,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_HEAD {
                return Err(std::io::Error::other("request head too large"));
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    // Held until the page is written: it bounds the pages in memory too.
    let mut turn = None;
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => match tokio::time::timeout(ANSWER_WAIT, answers.acquire()).await {
            Ok(Ok(permit)) => {
                turn = Some(permit);
                let page = tokio::task::spawn_blocking(move || render(&ctx))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                ("200 OK", "text/plain; version=0.0.4; charset=utf-8", page)
            }
            _ => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                "too many metrics requests at once; try again\n".to_string(),
            ),
        },
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_string(),
        ),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    // Header and body are written apart, so the page is not copied again;
    // without Nagle's wait the body's last segment does not wait for the
    // header's acknowledgement.
    let _ = stream.set_nodelay(true);
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(header.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
    drop(turn);
    written
}

/// Binds the metrics listener, when one is configured.
///
/// # Errors
/// When the address cannot be bound.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    Ok((l, local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Committed;

    fn position(topic: &str, partition: i32, offset: i64) -> Committed {
        Committed {
            topic: topic.to_string(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: None,
        }
    }

    async fn page(ctx: &Arc<Ctx>) -> String {
        let ctx = Arc::clone(ctx);
        tokio::task::spawn_blocking(move || render(&ctx))
            .await
            .unwrap()
    }

    /// A group id as long as a client likes made each of its series as long:
    /// one OffsetCommit of 60 KB added 128 MB to every page. Label values are
    /// cut, and two long ids that share their start stay two series.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_group_ids_are_cut_in_labels_and_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let long = "g".repeat(32_000);
        for (group, offset) in [(format!("{long}1"), 1), (format!("{long}2"), 2)] {
            ctx.storage
                .offsets()
                .commit(&group, None, vec![position("t", 0, offset)])
                .unwrap();
        }
        let page = page(&ctx).await;
        let committed: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("streamline_group_committed_offset{"))
            .collect();
        assert_eq!(committed.len(), 2, "{committed:?}");
        let longest = page.lines().map(str::len).max().unwrap();
        assert!(longest < 600, "a line of {longest} bytes");
        for (offset, line) in [1, 2].into_iter().zip(&committed) {
            let group = format!("{long}{offset}");
            let cut = format!("{}~{}", &group[..KEPT_LABEL_BYTES], label_hash(&group));
            assert_eq!(cut.len(), MAX_LABEL_BYTES);
            assert_eq!(
                **line,
                format!(
                    "streamline_group_committed_offset{{group=\"{cut}\",topic=\"t\",partition=\"0\"}} {offset}"
                )
            );
        }
        // A multi-byte character at the cut is not split.
        let wide = "é".repeat(400);
        let label = escape(&wide);
        assert!(label.len() <= MAX_LABEL_BYTES, "{}", label.len());
        assert!(label.starts_with(&"é".repeat(119)), "{label}");
        // A value shaped like another's cut form is cut too: it cannot pose
        // as that other value's series.
        let posing = escape(&format!("{long}1"));
        assert_eq!(posing.len(), MAX_LABEL_BYTES);
        assert_ne!(escape(&posing), posing);
        assert_eq!(
            escape(&"g".repeat(KEPT_LABEL_BYTES)),
            "g".repeat(KEPT_LABEL_BYTES)
        );
    }

    /// A timed `interval` fdatasync that fails on a quiet broker fails the
    /// WAL before any produce meets it: the gauge read only the failure a
    /// produce or segment write records, and stayed 0 while DescribeLogDirs
    /// already answered KAFKA_STORAGE_ERROR.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn storage_failed_counts_a_wal_failure_no_produce_met() {
        let fs = crate::file_at::FailingFs::mount();
        let mut c = crate::config::Config::default();
        // `pwrite` and `fdatasync`, which FailingFs fails.
        c.wal.engine.backend = crate::wal::BackendKind::Std;
        c.wal.engine.direct_io = Some(false);
        let ctx = crate::server::tests::ctx_with(&fs.path().join("data"), c).await;
        let failed = "streamline_storage_failed 0";
        assert!(page(&ctx).await.lines().any(|l| l == failed), "{failed}");
        fs.fail_fsyncs(Some(libc::EIO));
        let wal = ctx.storage.wal().unwrap().clone();
        let synced = tokio::task::spawn_blocking(move || {
            wal.append("elsewhere", 0, bytes::Bytes::from_static(b"x"))
                .wait()?;
            wal.sync().wait()
        })
        .await
        .unwrap();
        fs.fail_fsyncs(None);
        assert!(synced.is_err(), "{synced:?}");
        assert!(ctx.storage.failure().is_none(), "no produce met it");
        let page = page(&ctx).await;
        assert!(
            page.lines().any(|l| l == "streamline_storage_failed 1"),
            "{}",
            page.lines()
                .find(|l| l.starts_with("streamline_storage_failed"))
                .unwrap_or("no line")
        );
    }

    /// `process_start_time_seconds` was when serving began, after recovery:
    /// after a 5-minute replay the uptime read 5 minutes short. It is the
    /// moment `main` noted.
    #[test]
    fn the_start_time_is_the_moment_noted_before_recovery() {
        note_process_start();
        let noted = *PROCESS_START.get().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let m = Metrics::new();
        assert_eq!(m.started, noted);
        assert!(noted < SystemTime::now() - Duration::from_millis(15));
    }

    thread_local! {
        /// Bytes [`label_hash`] hashed on this thread.
        pub(super) static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Each long group id was copied into every lag row and escaped (hashed)
    /// once per series: 100 groups of 32 KB ids over 100 partitions made a
    /// render hold ~312 MiB and take ~0.6 s. Each id is hashed once a page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_group_id_is_hashed_once_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 20).unwrap();
        let groups: Vec<String> = (0..3)
            .map(|g| format!("{}{g}", "g".repeat(32_000)))
            .collect();
        for group in &groups {
            let positions = (0..20).map(|p| position("t", p, 0)).collect();
            ctx.storage
                .offsets()
                .commit(group, None, positions)
                .unwrap();
        }
        HASHED.with(|h| h.set(0));
        let page = render(&ctx);
        let hashed = HASHED.with(std::cell::Cell::get);
        assert_eq!(
            page.lines()
                .filter(|l| l.starts_with("streamline_group_lag{"))
                .count(),
            60
        );
        let ids: usize = groups.iter().map(String::len).sum();
        assert_eq!(hashed, ids, "hashed {hashed} bytes for {ids} bytes of ids");
    }

    /// A roll holds its partition's log lock through four syncs, a compaction
    /// swap through two directory fsyncs: seconds each on a stalled disk. The
    /// page waited for the lock (past a scraper's timeout, holding one of the
    /// 16 answer turns); it shows the values last read instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_partition_lock_does_not_hold_up_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let part = ctx.storage.partition("t", 0).unwrap();
        let batch = crate::storage::batch::tests::make_batch(0, &[b"a", b"b"]);
        let infos = crate::storage::batch::validate_all(&batch).unwrap();
        part.append(&batch, &infos).unwrap();
        let first = page(&ctx).await;
        // Appended after that page, and readable: the page shows the log end
        // no lower than the high watermark, which it reads afresh.
        let more = crate::storage::batch::tests::make_batch(2, &[b"c", b"d", b"e"]);
        let infos = crate::storage::batch::validate_all(&more).unwrap();
        part.append(&more, &infos).unwrap();
        part.set_high_watermark(5);
        let held = part.hold_log();
        let ctx2 = Arc::clone(&ctx);
        let rendered = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || render(&ctx2)),
        )
        .await;
        drop(held);
        let held_page = rendered
            .expect("the page waited for the partition's lock")
            .unwrap();
        let size = |n: usize| {
            format!("streamline_partition_size_bytes{{topic=\"t\",partition=\"0\"}} {n}")
        };
        let end = |n: i64| {
            format!("streamline_partition_log_end_offset{{topic=\"t\",partition=\"0\"}} {n}")
        };
        for line in [end(2), size(batch.len())] {
            assert!(
                first.lines().any(|l| l == line),
                "no {line:?} in the first page"
            );
        }
        // As last read, but never below the high watermark.
        for line in [end(5), size(batch.len())] {
            assert!(
                held_page.lines().any(|l| l == line),
                "no {line:?} while the lock was held"
            );
        }
        // With the lock free, as it is.
        let free = page(&ctx).await;
        for line in [end(5), size(batch.len() + more.len())] {
            assert!(
                free.lines().any(|l| l == line),
                "no {line:?} once the lock was free"
            );
        }
    }

    /// Committed positions for partitions by the thousand made the page grow
    /// without bound; each per-group family now shows at most
    /// `MAX_GROUP_SERIES` and counts the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_group_series_are_capped_and_the_rest_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let many = i32::try_from(MAX_GROUP_SERIES).unwrap();
        // Group "a": the cap's worth and one more, only partition 0 exists.
        let positions = (0..=many).map(|p| position("t", p, 0)).collect();
        ctx.storage.offsets().commit("a", None, positions).unwrap();
        // Group "b", after "a": past the cap, its partition exists.
        ctx.storage
            .offsets()
            .commit("b", None, vec![position("t", 0, 0)])
            .unwrap();
        let page = page(&ctx).await;
        let count = |prefix: &str| page.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(
            count("streamline_group_committed_offset{"),
            MAX_GROUP_SERIES
        );
        assert_eq!(count("streamline_group_committed_offset{group=\"b\""), 0);
        assert_eq!(count("streamline_group_lag{"), 1, "a's partition 0 only");
        for line in [
            "streamline_metrics_series_omitted{family=\"streamline_group_members\"} 0",
            "streamline_metrics_series_omitted{family=\"streamline_group_committed_offset\"} 2",
            "streamline_metrics_series_omitted{family=\"streamline_group_lag\"} 1",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?}");
        }
    }
}
