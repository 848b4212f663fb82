//! Broker configuration: one [`Config`] struct, filled from the command line and
//! `STREAMLINE_*` environment variables by [`Cli`], checked by [`Config::validate`].
//!
//! Parsing and validation touch no files: an invalid value is rejected before the
//! data directory is created.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::{
    error::{Error, Result},
    wal::{BackendKind, RecoveryMode, SyncMode, WalConfig},
};

/// Everything the broker needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Server settings.
    pub server: ServerConfig,
    /// Topic and segment settings.
    pub storage: StorageConfig,
    /// Write-ahead log settings.
    pub wal: WalSettings,
    /// Consumer-group coordinator settings.
    pub groups: GroupConfig,
    /// The flags (`--segment-bytes`, ...) given on the command line or by
    /// their variables: DescribeConfigs reports their settings as set
    /// (`STATIC_BROKER_CONFIG`) even when the value is the default's, as
    /// Kafka reports what `server.properties` sets. Empty for a
    /// configuration built in code.
    pub given: std::collections::BTreeSet<String>,
}

/// Network settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address the Kafka listener binds. Default: `127.0.0.1:9092`.
    pub listen: SocketAddr,
    /// `host:port` advertised in Metadata and FindCoordinator. Default: the bound
    /// address; bound to every interface (`0.0.0.0`, `[::]`), this machine's host
    /// name and the bound port.
    pub advertised_addr: Option<String>,
    /// Largest request frame accepted; larger frames close that connection. Default: 100 MiB.
    pub max_request_bytes: usize,
    /// Client connections served at once; a connection beyond is closed as soon as
    /// it is accepted. `None`: half of what the files open once storage has
    /// recovered (and the metrics endpoint's, with one) leave of the process's
    /// open-file limit, so that connections can never take the file
    /// descriptors storage needs (WAL files, two per active segment, the sealed
    /// segments' read handles). Default: `None`.
    pub max_connections: Option<usize>,
    /// A connection with no byte read or written for this long, and no response
    /// being computed, is closed (Kafka's `connections.max.idle.ms`); clients
    /// reconnect when they need to. 0: never. Default: 600000 (10 minutes).
    pub connections_max_idle_ms: u64,
    /// How long after a failed SASL authentication arrived it is answered and
    /// the connection closed (Kafka's `connection.failed.authentication.delay.ms`,
    /// KIP-306), an unknown user's failure as a wrong password's. 0: at once.
    /// Default: 100.
    pub failed_authentication_delay_ms: u64,
    /// With SASL, a connection that has not authenticated this long after it
    /// was accepted is closed, whatever it sends. Default: 30000.
    pub sasl_authentication_timeout_ms: u64,
    /// Most record bytes one Fetch response carries, whatever the client asks for
    /// (Kafka's `fetch.max.bytes`); the first batch is returned even when larger, so
    /// consumers always progress. Default: 55 MiB.
    pub fetch_max_bytes: usize,
    /// Record bytes of Fetch responses held in memory at once across the broker,
    /// from their read until written to the socket (or their connection
    /// closes). A Fetch the budget cannot give its whole `max_bytes` reads only
    /// what is free, yet at least its first batch, so consumers always
    /// progress: memory stays within this plus one batch per connection, however
    /// slowly clients read. Default: 256 MiB.
    pub fetch_response_memory_bytes: u64,
    /// Where to serve metrics in the Prometheus text format (`GET /metrics`);
    /// `None` serves none. Default: `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS for the Kafka listener; `None`: plaintext. Default: `None`.
    pub tls: Option<TlsConfig>,
    /// SASL authentication of clients; `None`: none. Default: `None`.
    pub sasl: Option<SaslConfig>,
}

/// SASL authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslConfig {
    /// JSON file of user name → password.
    pub users: PathBuf,
    /// Mechanism names offered (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub mechanisms: Vec<String>,
}

/// The Kafka listener's TLS material, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The broker's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate that chains to one of these
    /// CA certificates (Kafka's `ssl.client.auth=required`).
    pub client_ca: Option<PathBuf>,
}

/// Topic and segment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Root of all data (`topics/`, `wal/`, `groups/`). Default: `./data`.
    pub data_dir: PathBuf,
    /// Partitions of an auto-created topic (and of CreateTopics with -1). Default: 1.
    pub default_partitions: i32,
    /// Create unknown topics on Metadata requests that allow it. Default: true.
    pub auto_create_topics: bool,
    /// Segment size at which a new segment is started, 4096 to 2147483647
    /// (Kafka's `segment.bytes` is an INT). Default: 256 MiB.
    pub segment_bytes: u64,
    /// Interval between checkpoints (fsync segments, then checkpoint the WAL). Default: 5000.
    pub checkpoint_interval_ms: u64,
    /// Oldest segments whose newest record is older than this are deleted (Kafka's
    /// `log.retention.ms`); `None` keeps them forever. Default: 7 days.
    pub retention_ms: Option<u64>,
    /// Oldest segments are deleted while the partition stays at least this large
    /// without them (Kafka's `log.retention.bytes`); `None`: no size limit (default).
    pub retention_bytes: Option<u64>,
    /// How often retention is applied. Default: 300000 (5 minutes).
    pub retention_check_interval_ms: u64,
    /// A partition starts a new segment once the records it appends are this much
    /// newer than the first batch of its active segment, even if that is not full
    /// (Kafka's `log.roll.ms`), so that time-based retention can delete old
    /// records of a slow topic. Default: 604800000 (7 days).
    pub roll_ms: u64,
    /// How often compacted topics (`cleanup.policy=compact`) are looked at for
    /// partitions to compact (Kafka's `log.cleaner.backoff.ms`). Default: 15000.
    pub cleaner_backoff_ms: u64,
    /// Bound of one compaction pass's key map, keys plus 80 bytes each (Kafka's
    /// `log.cleaner.dedupe.buffer.size`); a partition with more keys is compacted
    /// a part per pass. Default: 64 MiB.
    pub cleaner_dedupe_buffer_bytes: u64,
    /// Read handles kept open on sealed segments' logs, broker-wide (least
    /// recently used closed first); only each partition's active segment keeps
    /// its files open for good. `None`: a quarter of the open-file limit in
    /// force at start, at most 256. Default: `None`.
    pub segment_open_files: Option<usize>,
    /// Disk space kept back in `space.reserve` in the data directory for the
    /// writes that free space (retention's producer snapshots, a deleted
    /// topic's position drop), given back when they fail for want of space;
    /// 0 keeps none. Default: 4 MiB.
    pub space_reserve_bytes: u64,
}

/// Consumer-group coordinator settings (Kafka's `group.*` broker settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Shortest session timeout a JoinGroup may ask for; a shorter one is answered
    /// with INVALID_SESSION_TIMEOUT (Kafka's `group.min.session.timeout.ms`). Default: 6000.
    pub min_session_timeout_ms: i32,
    /// Longest session timeout a JoinGroup may ask for; a longer one is answered
    /// with INVALID_SESSION_TIMEOUT (Kafka's `group.max.session.timeout.ms`). Default: 1800000.
    pub max_session_timeout_ms: i32,
    /// A group that has had no members and no commit for this long loses its
    /// committed offsets (Kafka's `offsets.retention.minutes`). Default: 10080
    /// (7 days).
    pub offsets_retention_minutes: u64,
    /// How often expired offsets are looked for (Kafka's
    /// `offsets.retention.check.interval.ms`). Default: 600000.
    pub offsets_retention_check_interval_ms: u64,
    /// Longest metadata string an OffsetCommit may store with an offset, in
    /// UTF-16 units as in Kafka; a longer one is refused for its partition with
    /// OFFSET_METADATA_TOO_LARGE (Kafka's `offset.metadata.max.bytes`).
    /// Default: 4096.
    pub offset_metadata_max_bytes: usize,
    /// How long the first rebalance of an empty group waits for more members
    /// to join, extended by as much (up to the rebalance timeout) while new
    /// ones do (Kafka's `group.initial.rebalance.delay.ms`). Default: 3000.
    pub initial_rebalance_delay_ms: u32,
}

/// The WAL switch plus the engine's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// Write every produced batch to the WAL before acknowledging it. When false,
    /// batches are acknowledged once they are in the segment's page cache and become
    /// durable only at the next segment flush. Default: true.
    pub enabled: bool,
    /// The engine's configuration (sync mode, interval, file size, retention, backend).
    pub engine: WalConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
                advertised_addr: None,
                max_request_bytes: 100 * 1024 * 1024,
                max_connections: None,
                connections_max_idle_ms: 600_000,
                failed_authentication_delay_ms: 100,
                sasl_authentication_timeout_ms: 30_000,
                fetch_max_bytes: 55 * 1024 * 1024,
                fetch_response_memory_bytes: 256 * 1024 * 1024,
                metrics_listen: None,
                tls: None,
                sasl: None,
            },
            storage: StorageConfig {
                data_dir: PathBuf::from("./data"),
                default_partitions: 1,
                auto_create_topics: true,
                segment_bytes: 256 * 1024 * 1024,
                checkpoint_interval_ms: 5000,
                retention_ms: Some(7 * 24 * 3600 * 1000),
                retention_bytes: None,
                retention_check_interval_ms: 300_000,
                roll_ms: 7 * 24 * 3600 * 1000,
                cleaner_backoff_ms: 15_000,
                cleaner_dedupe_buffer_bytes: crate::storage::compaction::DEFAULT_MAP_BYTES as u64,
                segment_open_files: None,
                space_reserve_bytes: crate::storage::DEFAULT_SPACE_RESERVE_BYTES,
            },
            wal: WalSettings {
                enabled: true,
                // The broker resolves STREAMLINE_WAL_BACKEND as `--wal-backend`.
                engine: WalConfig {
                    backend_from_env: false,
                    ..WalConfig::default()
                },
            },
            groups: GroupConfig::default(),
            given: std::collections::BTreeSet::new(),
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            initial_rebalance_delay_ms: 3000,
        }
    }
}

impl Config {
    /// The WAL directory: `<data_dir>/wal`.
    pub fn wal_dir(&self) -> PathBuf {
        self.storage.data_dir.join("wal")
    }

    /// Rejects values the broker cannot honour, naming the flag and what is accepted.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for the first invalid value.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                value,
                reason: reason.to_string(),
            })
        };
        if self.storage.default_partitions < 1 || self.storage.default_partitions > 10_000 {
            return bad(
                "--default-partitions",
                self.storage.default_partitions.to_string(),
                "accepted values: 1 to 10000",
            );
        }
        // Kafka's segment.bytes is an INT: the topic-level setting and
        // DescribeConfigs use the same range.
        if self.storage.segment_bytes < 4096 || self.storage.segment_bytes > i32::MAX as u64 {
            return bad(
                "--segment-bytes",
                self.storage.segment_bytes.to_string(),
                "accepted values: 4096 to 2147483647 (2g - 1)",
            );
        }
        if self.storage.checkpoint_interval_ms == 0 {
            return bad("--checkpoint-ms", "0".into(), "accepted values: 1 or more");
        }
        if self.storage.retention_ms == Some(0) {
            return bad(
                "--log-retention-ms",
                "0".into(),
                "accepted values: -1 (forever) or 1 to 9223372036854775807",
            );
        }
        for (flag, v) in [
            (
                "--offsets-retention-minutes",
                self.groups.offsets_retention_minutes,
            ),
            (
                "--offsets-retention-check-interval-ms",
                self.groups.offsets_retention_check_interval_ms,
            ),
        ] {
            if v == 0 {
                return bad(flag, "0".into(), "accepted values: 1 or more");
            }
        }
        if self.storage.roll_ms == 0 {
            return bad("--log-roll-ms", "0".into(), "accepted values: 1 or more");
        }
        if self.storage.cleaner_dedupe_buffer_bytes < 1024 * 1024 {
            return bad(
                "--log-cleaner-dedupe-buffer-size",
                self.storage.cleaner_dedupe_buffer_bytes.to_string(),
                "accepted values: 1m or more",
            );
        }
        if self.storage.segment_open_files == Some(0) {
            return bad(
                "--segment-open-files",
                "0".into(),
                "accepted values: 1 or more",
            );
        }
        if self.storage.cleaner_backoff_ms == 0 {
            return bad(
                "--log-cleaner-backoff-ms",
                "0".into(),
                "accepted values: 1 or more",
            );
        }
        if self.storage.retention_check_interval_ms == 0 {
            return bad(
                "--log-retention-check-interval-ms",
                "0".into(),
                "accepted values: 1 or more",
            );
        }
        // Sizes that go into i32 fields of the protocol.
        for (flag, bytes) in [
            ("--max-request-bytes", self.server.max_request_bytes),
            ("--fetch-max-bytes", self.server.fetch_max_bytes),
        ] {
            if !(1024..=i32::MAX as usize).contains(&bytes) {
                return bad(
                    flag,
                    bytes.to_string(),
                    "accepted values: 1024 to 2147483647",
                );
            }
        }
        if self.server.fetch_response_memory_bytes < 1024 {
            return bad(
                "--fetch-response-memory-bytes",
                self.server.fetch_response_memory_bytes.to_string(),
                "accepted values: 1024 or more",
            );
        }
        // Two listeners on one port: the second bind would fail, after
        // recovery.
        if let Some(metrics) = self.server.metrics_listen {
            let listen = self.server.listen;
            // Across address families only the kernel can tell (a v6
            // wildcard may take v4 too): the bind before storage opens does.
            if metrics.port() != 0
                && metrics.port() == listen.port()
                && metrics.is_ipv4() == listen.is_ipv4()
                && (metrics.ip() == listen.ip()
                    || metrics.ip().is_unspecified()
                    || listen.ip().is_unspecified())
            {
                return bad(
                    "--metrics-listen",
                    metrics.to_string(),
                    &format!(
                        "the port of --listen {listen}: accepted values: another port (or 0 \
                         for any free one)"
                    ),
                );
            }
        }
        if self.server.sasl_authentication_timeout_ms == 0 {
            return bad(
                "--sasl-authentication-timeout-ms",
                "0".into(),
                "accepted values: 1 or more",
            );
        }
        // Settings DescribeConfigs reports under Kafka's names and types: a value
        // past its type's range (INT: 2147483647, LONG: 9223372036854775807)
        // would be reported as a number no Kafka client can parse.
        const INT: u64 = i32::MAX as u64;
        const LONG: u64 = i64::MAX as u64;
        let (s, v) = (&self.storage, &self.server);
        for (flag, value, min, max, accepted) in [
            (
                "--connection-failed-authentication-delay-ms",
                Some(v.failed_authentication_delay_ms),
                0,
                INT,
                "accepted values: 0 to 2147483647",
            ),
            (
                "--connections-max-idle-ms",
                Some(v.connections_max_idle_ms),
                0,
                LONG,
                "accepted values: 0 (never) to 9223372036854775807",
            ),
            (
                "--fetch-response-memory-bytes",
                Some(v.fetch_response_memory_bytes),
                1024,
                LONG,
                "accepted values: 1024 to 9223372036854775807",
            ),
            (
                "--log-cleaner-backoff-ms",
                Some(s.cleaner_backoff_ms),
                1,
                LONG,
                "accepted values: 1 to 9223372036854775807",
            ),
            (
                "--log-cleaner-dedupe-buffer-size",
                Some(s.cleaner_dedupe_buffer_bytes),
                1 << 20,
                LONG,
                "accepted values: 1m to 9223372036854775807",
            ),
            (
                "--log-retention-bytes",
                s.retention_bytes,
                0,
                LONG,
                "accepted values: -1 (no limit) or 0 to 9223372036854775807",
            ),
            (
                "--log-retention-check-interval-ms",
                Some(s.retention_check_interval_ms),
                1,
                LONG,
                "accepted values: 1 to 9223372036854775807",
            ),
            (
                "--log-retention-ms",
                s.retention_ms,
                1,
                LONG,
                "accepted values: -1 (forever) or 1 to 9223372036854775807",
            ),
            (
                "--log-roll-ms",
                Some(s.roll_ms),
                1,
                LONG,
                "accepted values: 1 to 9223372036854775807",
            ),
            (
                "--group-initial-rebalance-delay-ms",
                Some(u64::from(self.groups.initial_rebalance_delay_ms)),
                0,
                INT,
                "accepted values: 0 to 2147483647",
            ),
            (
                "--offset-metadata-max-bytes",
                Some(self.groups.offset_metadata_max_bytes as u64),
                0,
                INT,
                "accepted values: 0 to 2147483647",
            ),
        ] {
            if let Some(value) = value.filter(|x| !(min..=max).contains(x)) {
                return bad(flag, value.to_string(), accepted);
            }
        }
        // As Kafka requires: a failed authentication is answered before the
        // connection would be closed as idle.
        let (delay, idle) = (v.failed_authentication_delay_ms, v.connections_max_idle_ms);
        if idle > 0 && delay >= idle {
            return bad(
                "--connection-failed-authentication-delay-ms",
                delay.to_string(),
                &format!(
                    "accepted values: 0 to {}, less than --connections-max-idle-ms ({idle})",
                    idle - 1
                ),
            );
        }
        if self.server.max_connections == Some(0) {
            return bad(
                "--max-connections",
                "0".into(),
                "accepted values: 1 or more",
            );
        }
        if let Some(sasl) = &self.server.sasl {
            if sasl.mechanisms.is_empty()
                || sasl
                    .mechanisms
                    .iter()
                    .any(|m| !SASL_MECHANISMS.contains(&m.as_str()))
            {
                return bad(
                    "--sasl-mechanisms",
                    sasl.mechanisms.join(","),
                    "accepted values: one or more of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
                );
            }
        }
        if let Some(a) = &self.server.advertised_addr {
            match parse_host_port(a) {
                None => {
                    return bad(
                        "--advertised-addr",
                        a.clone(),
                        "accepted values: HOST:PORT, HOST an IPv4 address (four decimal \
                         numbers), an IPv6 address in brackets ([::1]) or a host name (letters, \
                         digits, '-' and '_' in labels separated by '.'), PORT 1 to 65535",
                    )
                }
                // Clients connect where Metadata sends them: to themselves
                // (`::ffff:0.0.0.0` too, IPv4's unspecified address mapped).
                Some((host, _))
                    if host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.to_canonical().is_unspecified()) =>
                {
                    return bad(
                        "--advertised-addr",
                        a.clone(),
                        "a host clients can connect to: the unspecified address (0.0.0.0, ::) is \
                         for listening on, and a client sent to it connects to itself",
                    )
                }
                Some(_) => {}
            }
        }
        let (min, max) = (
            self.groups.min_session_timeout_ms,
            self.groups.max_session_timeout_ms,
        );
        if min < 1 {
            return bad(
                "--group-min-session-timeout-ms",
                min.to_string(),
                "accepted values: 1 to 2147483647",
            );
        }
        if max < min {
            return bad(
                "--group-max-session-timeout-ms",
                max.to_string(),
                &format!("accepted values: --group-min-session-timeout-ms ({min}) to 2147483647"),
            );
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return bad(
                "--data-dir",
                String::new(),
                "accepted values: a non-empty path",
            );
        }
        self.wal.engine.validate()
    }
}

/// The SASL mechanisms the broker knows.
const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Those offered when `--sasl-users` is given without `--sasl-mechanisms`.
const DEFAULT_SASL_MECHANISMS: [&str; 3] = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

/// Splits `host:port` as `--advertised-addr` accepts it, the host without
/// brackets: the host an IPv4 address, an IPv6 address in brackets, or a host
/// name (see [`is_host_name`]); the port ASCII digits, 1 to 65535. `None` for
/// anything else: clients would be sent to a host they cannot resolve or
/// connect to (`u16`'s parser alone took `+9092`).
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            v6
        }
        None if host.parse::<std::net::Ipv4Addr>().is_ok() || is_host_name(host) => host,
        None => return None,
    };
    Some((host.to_string(), port))
}

/// A host name clients can resolve: dot-separated labels of ASCII letters,
/// digits, `-` and `_`, none empty, longer than 63 characters or starting or
/// ending with `-`, 253 characters at most. A name whose last label is a
/// number (digits, or `0x` and hex digits) is not one: resolvers read it as
/// an IPv4 address in a short form (`0` is 0.0.0.0, `127.1` is 127.0.0.1), so
/// an address must be written as four decimal numbers. One final dot, as in a
/// fully qualified name, is allowed.
fn is_host_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let numeric = |l: &str| {
        l.bytes().all(|b| b.is_ascii_digit())
            || l.strip_prefix("0x")
                .or_else(|| l.strip_prefix("0X"))
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    // A fully qualified name may end in a dot (no search domain is tried).
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() <= 253
        && host.split('.').all(label_ok)
        && !host.rsplit('.').next().is_some_and(numeric)
}

fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("accepted values: true, false (also 1/0, yes/no, on/off)".into()),
    }
}

fn parse_sync_mode(s: &str) -> std::result::Result<SyncMode, String> {
    s.parse::<SyncMode>()
        .map_err(|_| format!("accepted values: {}", SyncMode::NAMES))
}

fn parse_recovery_mode(s: &str) -> std::result::Result<RecoveryMode, String> {
    s.parse::<RecoveryMode>()
        .map_err(|_| format!("accepted values: {}", RecoveryMode::NAMES))
}

/// A time limit in milliseconds: -1 for none, or 0 and more (0 is refused by
/// validation, naming the flag).
fn parse_limit_ms(s: &str) -> std::result::Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(v) if v >= -1 => Ok(v),
        _ => Err("accepted values: -1 (forever) or 1 to 9223372036854775807".into()),
    }
}

/// A parser of a whole number of type `T` for a flag that accepts
/// `accepted` (its range is checked by [`Config::validate`]): a value that
/// does not parse is refused naming what the flag accepts, not the parse
/// error alone ("invalid digit found in string" for `-1`).
fn number<T>(
    accepted: &'static str,
) -> impl Fn(&str) -> std::result::Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
{
    move |s: &str| {
        s.parse::<T>().map_err(|_| {
            // Digits alone that do not parse: more than the type holds.
            let digits = s.strip_prefix('+').unwrap_or(s);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                format!("too large a number; accepted values: {accepted}")
            } else {
                format!("accepted values: {accepted}")
            }
        })
    }
}

/// An address to listen on, `IP:PORT`.
fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        "accepted values: IP:PORT, such as 127.0.0.1:9092, 0.0.0.0:9092 or [::1]:9092 \
         (an IP address, not a host name)"
            .to_string()
    })
}

/// A size limit: -1 for none, or a size as `parse_size` reads it.
fn parse_limit_size(s: &str) -> std::result::Result<i64, String> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    const ACCEPTED: &str = "accepted values: -1 (no limit), or a byte count from 0 to \
                            9223372036854775807 such as 104857600, 64k, 100m or 1g";
    parse_size(s)
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| ACCEPTED.to_string())
}

/// A size as `parse_size` reads it, within Kafka's INT (0 to 2147483647), for
/// a setting DescribeConfigs reports as one.
fn parse_int_size(s: &str) -> std::result::Result<u32, String> {
    parse_size(s)
        .ok()
        .filter(|&v| v <= i32::MAX as u64)
        .map(|v| v as u32)
        .ok_or_else(|| {
            "accepted values: a byte count from 0 to 2147483647 such as 4096, 4k or 1m".to_string()
        })
}

fn parse_backend(s: &str) -> std::result::Result<BackendKind, String> {
    s.parse::<BackendKind>()
        .map_err(|_| format!("accepted values: {}", BackendKind::NAMES))
}

/// Parses a byte size: a plain number, or one with a `k`, `m` or `g` suffix (binary units,
/// an optional trailing `b`/`ib`).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| {
            "accepted values: a byte count such as 104857600, 64k, 100m or 1g".to_string()
        })
}

/// The flags whose values came from their `STREAMLINE_*` environment variables
/// (see [`Cli::from_env`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FromEnv(Vec<EnvValue>);

/// A flag's value read from its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EnvValue {
    /// The flag, e.g. `--max-connections`.
    flag: String,
    /// Its variable, e.g. `STREAMLINE_MAX_CONNECTIONS`.
    var: String,
    /// What the variable held.
    value: String,
}

impl FromEnv {
    /// The values of `matches` that came from a variable, per the arguments of `cmd`.
    fn of(cmd: &clap::Command, matches: &clap::ArgMatches) -> FromEnv {
        FromEnv(
            cmd.get_arguments()
                .filter(|a| {
                    matches.value_source(a.get_id().as_str())
                        == Some(clap::parser::ValueSource::EnvVariable)
                })
                .filter_map(|a| {
                    let var = a.get_env()?;
                    Some(EnvValue {
                        flag: format!("--{}", a.get_long()?),
                        var: var.to_string_lossy().into_owned(),
                        value: std::env::var_os(var)?.to_string_lossy().into_owned(),
                    })
                })
                .collect(),
        )
    }

    /// The variable `flag` took its value from, if it did.
    fn get(&self, flag: &str) -> Option<&EnvValue> {
        self.0.iter().find(|v| v.flag == flag)
    }

    /// `e`, naming the variable (and its value) instead of the flag when the
    /// flag it names took its value from its variable: a value the user never
    /// typed as a flag is found where it was set.
    pub fn name_variable(&self, e: Error) -> Error {
        match e {
            Error::InvalidConfig {
                field,
                value,
                reason,
            } => match self.0.iter().find(|v| v.flag == field) {
                Some(v) => Error::InvalidEnv {
                    var: v.var.clone(),
                    flag: field,
                    value: v.value.clone(),
                    reason,
                },
                None => Error::InvalidConfig {
                    field,
                    value,
                    reason,
                },
            },
            e => e,
        }
    }
}

/// For clap's error about an invalid value of a flag that was not on the command
/// line `args`, so was read from its environment variable: a message naming the
/// variable, the flag, the value and the accepted values. For its error about
/// flags a TLS flag set by its variable needs, or about a variable's value that
/// is not UTF-8: a message naming the variable. (Clap names neither.)
fn env_value_error(e: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::{
        error::{ContextKind, ContextValue, ErrorKind},
        CommandFactory,
    };
    let given = |flag: &str| {
        args.iter().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        })
    };
    let cmd = Cli::command();
    // The variable of `--<long>` and what it holds, when it is set.
    let env_of = |long: &str| {
        let var = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long))?
            .get_env()?
            .to_string_lossy()
            .into_owned();
        let value = std::env::var_os(&var)?.to_string_lossy().into_owned();
        Some((var, value))
    };
    if e.kind() == ErrorKind::MissingRequiredArgument {
        // Flags that need others (`requires`), set by their variables only:
        // clap names the missing flags as if they had been typed.
        let missing: Vec<&str> = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::Strings(m)) => {
                m.iter().filter_map(|m| m.split(' ').next()).collect()
            }
            _ => return None,
        };
        // What each needs, directly or through the flag it needs.
        const NEEDS: [(&str, &[&str]); 3] = [
            ("--tls-cert", &["--tls-key"]),
            ("--tls-key", &["--tls-cert"]),
            ("--tls-client-ca", &["--tls-cert", "--tls-key"]),
        ];
        let wants = |needs: &[&str]| missing.iter().any(|m| needs.contains(m));
        // A typed flag that needs a missing one: clap's message is right.
        if NEEDS
            .iter()
            .any(|(flag, needs)| given(flag) && wants(needs))
        {
            return None;
        }
        let mut explained = Vec::new();
        let requirers: Vec<String> = NEEDS
            .iter()
            .filter(|(flag, needs)| !given(flag) && !missing.contains(flag) && wants(needs))
            .filter_map(|(flag, needs)| {
                let (var, value) = env_of(flag.strip_prefix("--")?)?;
                let wanted: Vec<&str> = missing
                    .iter()
                    .copied()
                    .filter(|m| needs.contains(m))
                    .collect();
                explained.extend_from_slice(&wanted);
                Some(format!(
                    "{var} = {value:?} (the environment variable of {flag}) needs {}",
                    wanted.join(" and ")
                ))
            })
            .collect();
        if requirers.is_empty() || missing.iter().any(|m| !explained.contains(m)) {
            return None;
        }
        return Some(format!(
            "invalid configuration: {}: set {}, or unset {}",
            requirers.join("; "),
            if missing.len() == 1 { "it" } else { "them" },
            if requirers.len() == 1 {
                "the variable"
            } else {
                "the variables"
            }
        ));
    }
    if e.kind() == ErrorKind::InvalidUtf8 {
        // Clap names no argument. Typed on the command line, the user knows
        // which; the same line parsed without the variables tells.
        let without_env = Cli::command().mut_args(|a| a.env(None).allow_negative_numbers(true));
        if without_env
            .try_get_matches_from(args)
            .is_err_and(|e| e.kind() == ErrorKind::InvalidUtf8)
        {
            return None;
        }
        // A variable of a flag not typed, holding bytes that are not UTF-8, for
        // a flag whose value must be text (a path need not be).
        let (var, flag, value) = cmd.get_arguments().find_map(|a| {
            let flag = format!("--{}", a.get_long()?);
            let var = a.get_env()?;
            let value = std::env::var_os(var)?;
            let path = a.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>();
            (value.to_str().is_none() && !path && !given(&flag))
                .then(|| (var.to_string_lossy().into_owned(), flag, value))
        })?;
        return Some(format!(
            "invalid configuration: {var} = {value:?} (the environment variable of {flag}): not \
             valid UTF-8"
        ));
    }
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // "--wal-backend <BACKEND>"
    let flag = arg.split(' ').next()?;
    let long = flag.strip_prefix("--")?;
    if given(flag) {
        return None;
    }
    let (var, value) = env_of(long)?;
    let reason = match (e.kind(), e.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) if !valid.is_empty() => {
            format!("accepted values: {}", valid.join(", "))
        }
        // A path (or any other value) left empty: clap names no values.
        (ErrorKind::InvalidValue, _) if value.is_empty() => "the value is empty".to_string(),
        _ => std::error::Error::source(e).map_or_else(|| "invalid value".into(), |s| s.to_string()),
    };
    Some(format!(
        "invalid configuration: {var} = {value:?} (the environment variable of {flag}): {reason}"
    ))
}

/// The `streamline` command line. Every flag can also be set with the environment
/// variable shown in `--help`.
#[derive(Debug, Parser)]
#[command(
    name = "streamline",
    version,
    about = "A single-node, Kafka-compatible streaming broker with a group-commit write-ahead log"
)]
pub struct Cli {
    /// Directory holding topics, groups and the WAL (in `<data-dir>/wal`).
    #[arg(
        long,
        env = "STREAMLINE_DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Address to listen on for Kafka clients (port 0 picks a free port).
    #[arg(
        long,
        env = "STREAMLINE_LISTEN",
        default_value = "127.0.0.1:9092",
        value_parser = parse_listen,
        value_name = "IP:PORT"
    )]
    pub listen: SocketAddr,

    /// Address advertised to clients in Metadata (default: the bound listen
    /// address; with --listen on every interface, such as 0.0.0.0, this machine's
    /// host name).
    #[arg(long, env = "STREAMLINE_ADVERTISED_ADDR", value_name = "HOST:PORT")]
    pub advertised_addr: Option<String>,

    /// Largest request frame accepted; a larger one closes that client's connection.
    #[arg(long, env = "STREAMLINE_MAX_REQUEST_BYTES", default_value = "100m", value_parser = parse_size, value_name = "BYTES")]
    pub max_request_bytes: u64,

    /// Client connections served at once; more are closed when accepted (default:
    /// half of the open-file limit less the files storage has open once it has
    /// recovered; the broker raises its soft limit to the hard limit).
    #[arg(long, env = "STREAMLINE_MAX_CONNECTIONS", value_parser = number::<usize>("1 or more"), value_name = "N")]
    pub max_connections: Option<usize>,

    /// Close a connection after this long without a byte read or written (and
    /// with no response being computed), in milliseconds; 0 never does.
    #[arg(
        long,
        env = "STREAMLINE_CONNECTIONS_MAX_IDLE_MS",
        default_value_t = 600_000,
        value_parser = number::<u64>("0 (never) to 9223372036854775807"),
        value_name = "MS"
    )]
    pub connections_max_idle_ms: u64,

    /// Answer a failed SASL authentication, and close its connection, this long
    /// after it arrived, in milliseconds (with --sasl-users); 0 at once.
    #[arg(
        long,
        env = "STREAMLINE_CONNECTION_FAILED_AUTHENTICATION_DELAY_MS",
        default_value_t = 100,
        value_parser = number::<u64>("0 to 2147483647, less than --connections-max-idle-ms unless that is 0"),
        value_name = "MS"
    )]
    pub connection_failed_authentication_delay_ms: u64,

    /// Close a connection that has not authenticated this long after it was
    /// accepted, in milliseconds (with --sasl-users).
    #[arg(
        long,
        env = "STREAMLINE_SASL_AUTHENTICATION_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = number::<u64>("1 or more"),
        value_name = "MS"
    )]
    pub sasl_authentication_timeout_ms: u64,

    /// Most record bytes in one Fetch response, whatever the client asks for (the
    /// first batch is returned even when larger).
    #[arg(long, env = "STREAMLINE_FETCH_MAX_BYTES", default_value = "55m", value_parser = parse_size, value_name = "BYTES")]
    pub fetch_max_bytes: u64,

    /// Most record bytes of Fetch responses held in memory at once, over every
    /// connection, until written to the socket; a Fetch gets what is free, and
    /// at least one batch.
    #[arg(long, env = "STREAMLINE_FETCH_RESPONSE_MEMORY_BYTES", default_value = "256m", value_parser = parse_size, value_name = "BYTES")]
    pub fetch_response_memory_bytes: u64,

    /// Serve metrics in the Prometheus text format at http://IP:PORT/metrics
    /// (port 0 picks a free port; default: no metrics endpoint).
    #[arg(long, env = "STREAMLINE_METRICS_LISTEN", value_parser = parse_listen, value_name = "IP:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve Kafka clients over TLS with this certificate chain (PEM, leaf first);
    /// needs --tls-key. Clients then connect with security.protocol=SSL.
    #[arg(
        long,
        env = "STREAMLINE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "STREAMLINE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates that chain to these CA certificates (PEM);
    /// needs --tls-cert.
    #[arg(
        long,
        env = "STREAMLINE_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Require SASL authentication with the users and passwords of this JSON file
    /// ({"alice": "secret", ...}); clients use security.protocol=SASL_PLAINTEXT, or
    /// SASL_SSL with --tls-cert.
    #[arg(long, env = "STREAMLINE_SASL_USERS", value_name = "FILE")]
    pub sasl_users: Option<PathBuf>,

    /// SASL mechanisms offered with --sasl-users, which they need (default:
    /// SCRAM-SHA-512,SCRAM-SHA-256,PLAIN).
    #[arg(
        long,
        env = "STREAMLINE_SASL_MECHANISMS",
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(SASL_MECHANISMS),
        value_name = "LIST"
    )]
    pub sasl_mechanisms: Option<Vec<String>>,

    /// Write every produced batch to the WAL before acknowledging it.
    #[arg(long, env = "STREAMLINE_WAL_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub wal_enabled: bool,

    /// Longest time between two fdatasyncs of the WAL in interval mode, in milliseconds
    /// (1 or more in interval mode).
    #[arg(
        long,
        env = "STREAMLINE_WAL_SYNC_MS",
        default_value_t = 100,
        value_parser = number::<u64>("1 or more (0 too with --wal-sync-mode every_write or os_default)"),
        value_name = "MS"
    )]
    pub wal_sync_ms: u64,

    /// When a produce is acknowledged: interval, every_write (after fdatasync) or os_default.
    #[arg(long, env = "STREAMLINE_WAL_SYNC_MODE", default_value = "interval", value_parser = parse_sync_mode, value_name = "MODE")]
    pub wal_sync_mode: SyncMode,

    /// Size each WAL file is preallocated to (multiple of 4096, at least 64k, at most 1024g).
    #[arg(long, env = "STREAMLINE_WAL_MAX_FILE_SIZE", default_value = "100m", value_parser = parse_size, value_name = "BYTES")]
    pub wal_max_file_size: u64,

    /// Archived WAL files kept even when a checkpoint covers them.
    #[arg(
        long,
        env = "STREAMLINE_WAL_RETENTION_FILES",
        default_value_t = 2,
        value_parser = number::<usize>("0 or more"),
        value_name = "N"
    )]
    pub wal_retention_files: usize,

    /// WAL I/O backend: auto, uring or std. The flag wins over the variable.
    #[arg(long, env = "STREAMLINE_WAL_BACKEND", default_value = "auto", value_parser = parse_backend, value_name = "BACKEND")]
    pub wal_backend: BackendKind,

    /// What start-up does with damaged data that was already synced (a corrupt WAL
    /// batch with valid ones after it, or a segment that lost flushed batches the
    /// WAL no longer holds): strict refuses to start and names the file and offset;
    /// tolerate_corruption skips it with a warning.
    #[arg(long, env = "STREAMLINE_RECOVERY_MODE", default_value = "strict", value_parser = parse_recovery_mode, value_name = "MODE")]
    pub recovery_mode: RecoveryMode,

    /// Partitions of auto-created topics (and of CreateTopics asking for -1).
    #[arg(
        long,
        env = "STREAMLINE_DEFAULT_PARTITIONS",
        default_value_t = 1,
        value_parser = number::<i32>("1 to 10000"),
        value_name = "N"
    )]
    pub default_partitions: i32,

    /// Create unknown topics when a client's Metadata request allows it.
    #[arg(long, env = "STREAMLINE_AUTO_CREATE_TOPICS", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub auto_create_topics: bool,

    /// Segment size at which a partition starts a new segment file: 4096 to
    /// 2147483647 (Kafka's segment.bytes is an INT).
    #[arg(long, env = "STREAMLINE_SEGMENT_BYTES", default_value = "256m", value_parser = parse_size, value_name = "BYTES")]
    pub segment_bytes: u64,

    /// Interval between checkpoints (fsync segments, then checkpoint the WAL), in milliseconds.
    #[arg(
        long,
        env = "STREAMLINE_CHECKPOINT_MS",
        default_value_t = 5000,
        value_parser = number::<u64>("1 or more"),
        value_name = "MS"
    )]
    pub checkpoint_ms: u64,

    /// Delete a partition's oldest segments once their newest record is older than
    /// this, in milliseconds (-1: keep forever).
    #[arg(long, env = "STREAMLINE_LOG_RETENTION_MS", default_value_t = 604_800_000, allow_negative_numbers = true, value_parser = parse_limit_ms, value_name = "MS")]
    pub log_retention_ms: i64,

    /// Delete a partition's oldest segments while it stays at least this large
    /// without them (-1: no limit).
    #[arg(long, env = "STREAMLINE_LOG_RETENTION_BYTES", default_value = "-1", allow_negative_numbers = true, value_parser = parse_limit_size, value_name = "BYTES")]
    pub log_retention_bytes: i64,

    /// How often retention is applied, in milliseconds.
    #[arg(
        long,
        env = "STREAMLINE_LOG_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 300_000,
        value_parser = number::<u64>("1 to 9223372036854775807"),
        value_name = "MS"
    )]
    pub log_retention_check_interval_ms: u64,

    /// Roll a partition's active segment once appended records are this much newer
    /// than its first batch (Kafka's `log.roll.ms`), in milliseconds.
    #[arg(
        long,
        env = "STREAMLINE_LOG_ROLL_MS",
        default_value_t = 604_800_000,
        value_parser = number::<u64>("1 to 9223372036854775807"),
        value_name = "MS"
    )]
    pub log_roll_ms: u64,

    /// How often compacted topics (`cleanup.policy=compact`) are looked at for
    /// partitions to compact, in milliseconds (Kafka's `log.cleaner.backoff.ms`).
    #[arg(
        long,
        env = "STREAMLINE_LOG_CLEANER_BACKOFF_MS",
        default_value_t = 15_000,
        value_parser = number::<u64>("1 to 9223372036854775807"),
        value_name = "MS"
    )]
    pub log_cleaner_backoff_ms: u64,

    /// Bound of one compaction pass's key map (keys plus 80 bytes each; Kafka's
    /// `log.cleaner.dedupe.buffer.size`): a partition with more distinct keys is
    /// compacted a part per pass.
    #[arg(long, env = "STREAMLINE_LOG_CLEANER_DEDUPE_BUFFER_SIZE", default_value = "64m", value_parser = parse_size, value_name = "BYTES")]
    pub log_cleaner_dedupe_buffer_size: u64,

    /// Read handles kept open on sealed segments' logs, for all partitions
    /// together (least recently used closed first); only each partition's
    /// active segment keeps its files open for good (default: a quarter of the
    /// open-file limit, at most 256).
    #[arg(long, env = "STREAMLINE_SEGMENT_OPEN_FILES", value_parser = number::<usize>("1 or more"), value_name = "N")]
    pub segment_open_files: Option<usize>,

    /// Disk space kept back, in space.reserve in the data directory, for the
    /// writes that free space (retention's producer snapshots, a deleted
    /// topic's position drop) on a disk something else filled: given back
    /// when they fail for want of space, taken again once twice as much is
    /// free (0: none). 4m covers a snapshot of some 25,000 live idempotent
    /// producers in one partition.
    #[arg(long, env = "STREAMLINE_SPACE_RESERVE_BYTES", default_value = "4m", value_parser = parse_size, value_name = "BYTES")]
    pub space_reserve_bytes: u64,

    /// Shortest session timeout a consumer may ask for in JoinGroup, in milliseconds.
    #[arg(
        long,
        env = "STREAMLINE_GROUP_MIN_SESSION_TIMEOUT_MS",
        default_value_t = 6000,
        value_parser = number::<i32>("1 to 2147483647"),
        value_name = "MS"
    )]
    pub group_min_session_timeout_ms: i32,

    /// Longest session timeout a consumer may ask for in JoinGroup, in milliseconds.
    #[arg(
        long,
        env = "STREAMLINE_GROUP_MAX_SESSION_TIMEOUT_MS",
        default_value_t = 1_800_000,
        value_parser = number::<i32>("--group-min-session-timeout-ms to 2147483647"),
        value_name = "MS"
    )]
    pub group_max_session_timeout_ms: i32,

    /// How long the first rebalance of an empty group waits for more members,
    /// in milliseconds, extended by as much (up to the rebalance timeout)
    /// while new ones join; 0 does not wait.
    #[arg(
        long,
        env = "STREAMLINE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 3000,
        value_parser = number::<u32>("0 to 2147483647"),
        value_name = "MS"
    )]
    pub group_initial_rebalance_delay_ms: u32,

    /// Committed offsets of a group are deleted once it has had no members and no
    /// commit for this many minutes.
    #[arg(
        long,
        env = "STREAMLINE_OFFSETS_RETENTION_MINUTES",
        default_value_t = 10_080,
        value_parser = number::<u64>("1 or more"),
        value_name = "MINUTES"
    )]
    pub offsets_retention_minutes: u64,

    /// How often expired committed offsets are looked for, in milliseconds.
    #[arg(
        long,
        env = "STREAMLINE_OFFSETS_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 600_000,
        value_parser = number::<u64>("1 or more"),
        value_name = "MS"
    )]
    pub offsets_retention_check_interval_ms: u64,

    /// Longest metadata string an OffsetCommit may store with an offset; a longer
    /// one is refused for its partition (OFFSET_METADATA_TOO_LARGE).
    #[arg(
        long,
        env = "STREAMLINE_OFFSET_METADATA_MAX_BYTES",
        default_value = "4096",
        value_parser = parse_int_size,
        value_name = "BYTES"
    )]
    pub offset_metadata_max_bytes: u32,

    /// The flags whose values came from their variables (filled by
    /// [`Cli::try_parse_args`]; empty otherwise).
    #[arg(skip)]
    pub from_env: FromEnv,

    /// `--wal-sync-mode` and `--wal-sync-ms`, those given on the command line
    /// or by their variables (filled by [`Cli::try_parse_args`]).
    #[arg(skip)]
    pub wal_sync_given: Vec<&'static str>,

    /// Every flag given on the command line or by its variable (filled by
    /// [`Cli::try_parse_args`]; empty otherwise), for [`Config::given`].
    #[arg(skip)]
    pub given: std::collections::BTreeSet<String>,
}

impl Cli {
    /// Parses the process's arguments and `STREAMLINE_*` variables, or exits as
    /// clap does (status 2 for an invalid command line, 0 after `--help`). An
    /// invalid value that came from a variable, the flag being absent, is
    /// reported naming the variable as well as the flag.
    pub fn parse_or_exit() -> Cli {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        match Cli::try_parse_args(&args) {
            Ok(cli) => cli,
            Err(e) => {
                if let Some(msg) = env_value_error(&e, &args) {
                    use std::io::Write;
                    let _ = writeln!(std::io::stderr(), "error: {msg}");
                    std::process::exit(2);
                }
                e.exit()
            }
        }
    }

    /// [`Cli::try_parse_from`], also noting which values came from variables
    /// ([`Cli::from_env`]).
    ///
    /// # Errors
    /// clap's, for an invalid command line or variable.
    pub fn try_parse_args<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        // A negative number is a value (refused by the flag's own range, naming
        // it), not an unknown short option: `--max-connections -1` said only
        // "unexpected argument '-1'".
        let cmd = Cli::command().mut_args(|a| a.allow_negative_numbers(true));
        let matches = cmd.clone().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.from_env = FromEnv::of(&cmd, &matches);
        cli.given = cmd
            .get_arguments()
            .filter(|a| {
                matches!(
                    matches.value_source(a.get_id().as_str()),
                    Some(
                        clap::parser::ValueSource::CommandLine
                            | clap::parser::ValueSource::EnvVariable
                    )
                )
            })
            .filter_map(|a| Some(format!("--{}", a.get_long()?)))
            .collect();
        cli.wal_sync_given = [
            ("wal_sync_mode", "--wal-sync-mode"),
            ("wal_sync_ms", "--wal-sync-ms"),
        ]
        .into_iter()
        .filter(|(id, _)| {
            matches!(
                matches.value_source(id),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            )
        })
        .map(|(_, flag)| flag)
        .collect();
        Ok(cli)
    }

    /// The [`Config`] this command line describes, validated ([`Config::validate`]);
    /// `--sasl-mechanisms` without `--sasl-users` is refused too. The settings
    /// [`Cli::ignored_settings`] warns of take their defaults, whatever their
    /// variables hold.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the flag, or [`Error::InvalidEnv`]
    /// naming the variable when the value came from one.
    pub fn into_valid_config(self) -> Result<Config> {
        let from_env = self.from_env.clone();
        if let (None, Some(mechanisms)) = (&self.sasl_users, &self.sasl_mechanisms) {
            // SASL is on only with users: the mechanisms would be ignored, and
            // every client let in unauthenticated.
            return Err(from_env.name_variable(Error::InvalidConfig {
                field: "--sasl-mechanisms",
                value: mechanisms.join(","),
                reason: "needs --sasl-users (without users SASL is off, and any client is \
                         served unauthenticated)"
                    .into(),
            }));
        }
        let ignored: Vec<String> = self
            .wal_sync_check()
            .map_err(|e| from_env.name_variable(e))?
            .into_iter()
            .map(|v| v.flag.clone())
            .collect();
        // Settings reported as ignored are not used at all: a value the broker
        // would refuse (`STREAMLINE_WAL_SYNC_MS=0`) must not stop the start
        // the warning announces, nor set how an existing WAL is opened to be
        // replayed. They take their defaults, and are no longer given.
        let mut cli = self;
        let d = Config::default().wal.engine;
        for flag in &ignored {
            match flag.as_str() {
                "--wal-sync-mode" => cli.wal_sync_mode = d.sync_mode,
                "--wal-sync-ms" => cli.wal_sync_ms = d.sync_interval_ms,
                _ => {}
            }
            cli.given.remove(flag);
        }
        let config = cli.into_config();
        config.validate().map_err(|e| from_env.name_variable(e))?;
        Ok(config)
    }

    /// The settings this command line ignores, one warning each, for the log:
    /// `--wal-sync-mode` or `--wal-sync-ms` from its variable while
    /// `--wal-enabled false` is given on the command line (see
    /// [`Cli::into_valid_config`]). Empty when there are none, or when the
    /// configuration is refused.
    pub fn ignored_settings(&self) -> Vec<String> {
        self.wal_sync_check()
            .unwrap_or_default()
            .into_iter()
            .map(|v| {
                format!(
                    "ignoring {} = {:?} (the environment variable of {}): --wal-enabled false \
                     on the command line turns the WAL off, so produces are acknowledged from \
                     the page cache and are durable only after the next checkpoint",
                    v.var, v.value, v.flag
                )
            })
            .collect()
    }

    /// `--wal-enabled false` with a sync setting, which has no effect without
    /// the WAL: produces are acknowledged from the page cache and are durable
    /// only after the next checkpoint, whatever mode was asked for.
    ///
    /// A flag is more particular than a variable, which a container image or a
    /// service unit sets for every run: `--wal-enabled false` on the command
    /// line turns the WAL off for this run whatever the environment says, and
    /// the sync settings from variables are ignored (their values returned).
    /// Every other combination is refused: a sync flag on the command line asks
    /// for this run's durability, whatever turned the WAL off; and with both
    /// from the environment neither is more particular than the other.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the sync flag (a sync flag given on the
    /// command line before one from a variable).
    fn wal_sync_check(&self) -> Result<Vec<&EnvValue>> {
        if self.wal_enabled || self.wal_sync_given.is_empty() {
            return Ok(Vec::new());
        }
        let disabled_by = self.from_env.get("--wal-enabled");
        let (from_env, on_command_line): (Vec<&'static str>, Vec<&'static str>) = self
            .wal_sync_given
            .iter()
            .partition(|&&flag| self.from_env.get(flag).is_some());
        let Some(&flag) = on_command_line
            .first()
            .or(disabled_by.and(from_env.first()))
        else {
            return Ok(from_env
                .iter()
                .filter_map(|flag| self.from_env.get(flag))
                .collect());
        };
        let value = if flag == "--wal-sync-mode" {
            self.wal_sync_mode.to_string()
        } else {
            self.wal_sync_ms.to_string()
        };
        let disabled = disabled_by.map_or_else(
            || "--wal-enabled false".to_string(),
            |v| format!("{} = {:?}", v.var, v.value),
        );
        let mut reason = format!(
            "has no effect with {disabled}: without the WAL a produce is acknowledged before it \
             is synced, and is durable only after the next checkpoint; drop it or enable the WAL"
        );
        if on_command_line.is_empty() {
            reason.push_str(
                " (both come from the environment; --wal-enabled false on the command line turns \
                 the WAL off for one run, ignoring a sync setting from the environment)",
            );
        }
        Err(Error::InvalidConfig {
            field: flag,
            value,
            reason,
        })
    }

    /// Builds the [`Config`] this command line describes (not yet validated).
    pub fn into_config(self) -> Config {
        Config {
            server: ServerConfig {
                listen: self.listen,
                advertised_addr: self.advertised_addr,
                max_request_bytes: usize::try_from(self.max_request_bytes).unwrap_or(usize::MAX),
                max_connections: self.max_connections,
                connections_max_idle_ms: self.connections_max_idle_ms,
                failed_authentication_delay_ms: self.connection_failed_authentication_delay_ms,
                sasl_authentication_timeout_ms: self.sasl_authentication_timeout_ms,
                fetch_max_bytes: usize::try_from(self.fetch_max_bytes).unwrap_or(usize::MAX),
                fetch_response_memory_bytes: self.fetch_response_memory_bytes,
                metrics_listen: self.metrics_listen,
                tls: match (self.tls_cert, self.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsConfig {
                        cert,
                        key,
                        client_ca: self.tls_client_ca,
                    }),
                    // The parser requires both or neither.
                    _ => None,
                },
                sasl: self.sasl_users.map(|users| SaslConfig {
                    users,
                    mechanisms: self.sasl_mechanisms.unwrap_or_else(|| {
                        DEFAULT_SASL_MECHANISMS
                            .iter()
                            .map(|m| (*m).to_string())
                            .collect()
                    }),
                }),
            },
            storage: StorageConfig {
                data_dir: self.data_dir,
                default_partitions: self.default_partitions,
                auto_create_topics: self.auto_create_topics,
                segment_bytes: self.segment_bytes,
                checkpoint_interval_ms: self.checkpoint_ms,
                retention_ms: u64::try_from(self.log_retention_ms).ok(),
                retention_bytes: u64::try_from(self.log_retention_bytes).ok(),
                retention_check_interval_ms: self.log_retention_check_interval_ms,
                roll_ms: self.log_roll_ms,
                cleaner_backoff_ms: self.log_cleaner_backoff_ms,
                cleaner_dedupe_buffer_bytes: self.log_cleaner_dedupe_buffer_size,
                segment_open_files: self.segment_open_files,
                space_reserve_bytes: self.space_reserve_bytes,
            },
            wal: WalSettings {
                enabled: self.wal_enabled,
                engine: WalConfig {
                    sync_mode: self.wal_sync_mode,
                    sync_interval_ms: self.wal_sync_ms,
                    max_file_size: self.wal_max_file_size,
                    retention_files: self.wal_retention_files,
                    backend: self.wal_backend,
                    // `--wal-backend` already read STREAMLINE_WAL_BACKEND when
                    // the flag was absent; the flag, `auto` included, wins.
                    backend_from_env: false,
                    recovery_mode: self.recovery_mode,
                    ..WalConfig::default()
                },
            },
            groups: GroupConfig {
                min_session_timeout_ms: self.group_min_session_timeout_ms,
                max_session_timeout_ms: self.group_max_session_timeout_ms,
                offsets_retention_minutes: self.offsets_retention_minutes,
                offsets_retention_check_interval_ms: self.offsets_retention_check_interval_ms,
                offset_metadata_max_bytes: usize::try_from(self.offset_metadata_max_bytes)
                    .unwrap_or(usize::MAX),
                initial_rebalance_delay_ms: self.group_initial_rebalance_delay_ms,
            },
            given: self.given,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Config, String> {
        let mut v = vec!["streamline"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map(Cli::into_config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = parse(&[]).expect("no flags parse");
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(c.storage.data_dir, PathBuf::from("./data"));
        assert!(c.wal.enabled);
        assert_eq!(c.wal.engine.sync_mode, SyncMode::Interval);
        assert_eq!(c.wal.engine.sync_interval_ms, 100);
        assert_eq!(c.wal.engine.max_file_size, 100 << 20);
        assert_eq!(c, d);
        c.validate().expect("defaults are valid");
    }

    /// The metrics endpoint on the port of the Kafka listener is refused by
    /// the configuration's check (before, by the second bind, after
    /// recovery); other addresses on the port, or port 0, are not.
    #[test]
    fn metrics_on_the_listen_port_are_refused() {
        for (listen, metrics) in [
            ("127.0.0.1:9092", "127.0.0.1:9092"),
            ("0.0.0.0:9092", "127.0.0.1:9092"),
            ("127.0.0.1:9092", "0.0.0.0:9092"),
        ] {
            let c = parse(&["--listen", listen, "--metrics-listen", metrics]).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("--metrics-listen") && e.contains("the port of --listen"),
                "{e}"
            );
        }
        for (listen, metrics) in [
            ("127.0.0.1:9092", "127.0.0.2:9092"),
            ("127.0.0.1:9092", "127.0.0.1:9093"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            // Both bind on Linux.
            ("0.0.0.0:9092", "[::1]:9092"),
        ] {
            let c = parse(&["--listen", listen, "--metrics-listen", metrics]).unwrap();
            c.validate().unwrap();
        }
    }

    /// Every flag taking a value names what it accepts when the value does
    /// not parse: the numbers' default parsers said only "invalid digit
    /// found in string" (for `--max-connections -1`, say), and an address
    /// "invalid socket address syntax".
    #[test]
    fn a_value_that_does_not_parse_is_refused_naming_the_accepted_values() {
        use clap::CommandFactory;
        let mut checked = 0;
        for a in Cli::command().get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if !a.get_action().takes_values() {
                continue;
            }
            let flag = format!("--{long}");
            for bad in ["-1", "x", "1.5", "", "99999999999999999999"] {
                let Err(e) = Cli::try_parse_args(["streamline", &flag, bad]) else {
                    continue; // text, a path, or a valid number
                };
                let e = e.to_string();
                if e.contains("invalid value") {
                    assert!(
                        e.contains("accepted values") || e.contains("possible values"),
                        "{flag} {bad:?}: {e}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 60, "{checked} refusals checked");
        let e = Cli::try_parse_args(["streamline", "--listen", "localhost:9092"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("accepted values: IP:PORT"), "{e}");
        let e = Cli::try_parse_args(["streamline", "--checkpoint-ms", "18446744073709551616"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large a number; accepted values"), "{e}");
    }

    #[test]
    fn bad_sync_mode_names_flag_and_accepted_values() {
        let e = parse(&["--wal-sync-mode", "sometimes"]).expect_err("rejected");
        assert!(e.contains("--wal-sync-mode"), "{e}");
        assert!(e.contains("every_write") && e.contains("os_default"), "{e}");
    }

    #[test]
    fn recovery_mode_parses_and_reaches_the_wal() {
        assert_eq!(
            parse(&[]).unwrap().wal.engine.recovery_mode,
            RecoveryMode::Strict
        );
        let c = parse(&["--recovery-mode", "tolerate_corruption"]).expect("parses");
        assert_eq!(c.wal.engine.recovery_mode, RecoveryMode::TolerateCorruption);
        let e = parse(&["--recovery-mode", "lenient"]).expect_err("rejected");
        assert!(
            e.contains("--recovery-mode") && e.contains("strict, tolerate_corruption"),
            "{e}"
        );
    }

    #[test]
    fn retention_limits_parse_with_minus_one_for_none() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.storage.retention_ms, Some(604_800_000));
        assert_eq!(c.storage.retention_bytes, None);
        let c = parse(&[
            "--log-retention-ms",
            "-1",
            "--log-retention-bytes",
            "1g",
            "--log-retention-check-interval-ms",
            "1000",
        ])
        .unwrap();
        assert_eq!(c.storage.retention_ms, None);
        assert_eq!(c.storage.retention_bytes, Some(1 << 30));
        assert_eq!(c.storage.retention_check_interval_ms, 1000);
        c.validate().unwrap();
        let e = parse(&["--log-retention-ms", "0"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log-retention-ms"), "{e}");
        for bad in [
            ["--log-retention-ms", "-5"],
            ["--log-retention-bytes", "-2"],
        ] {
            let e = parse(&bad).expect_err("rejected");
            assert!(e.contains(bad[0]), "{e}");
        }
        // The accepted values stated are those the value is refused for
        // missing: past i64, and -1 offered for a size.
        let e = parse(&["--log-retention-ms", "9223372036854775808"]).unwrap_err();
        assert!(e.contains("1 to 9223372036854775807"), "{e}");
        for v in ["-5", "9223372036854775808", "9000000000g"] {
            let e = parse(&["--log-retention-bytes", v]).unwrap_err();
            assert!(
                e.contains("-1 (no limit), or a byte count from 0 to 9223372036854775807"),
                "{v}: {e}"
            );
        }
        let e = parse(&["--log-retention-check-interval-ms", "0"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log-retention-check-interval-ms"), "{e}");
        let e = parse(&["--log-cleaner-backoff-ms", "0"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log-cleaner-backoff-ms"), "{e}");
        let c = parse(&[]).unwrap();
        assert_eq!(c.storage.cleaner_backoff_ms, 15_000);
        assert_eq!(c.storage.cleaner_dedupe_buffer_bytes, 64 << 20);
        let e = parse(&["--log-cleaner-dedupe-buffer-size", "4k"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log-cleaner-dedupe-buffer-size"), "{e}");
        assert_eq!(c.storage.segment_open_files, None);
        assert_eq!(
            parse(&["--segment-open-files", "64"])
                .unwrap()
                .storage
                .segment_open_files,
            Some(64)
        );
        let e = parse(&["--segment-open-files", "0"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--segment-open-files"), "{e}");
        assert_eq!(
            (
                c.groups.offsets_retention_minutes,
                c.groups.offsets_retention_check_interval_ms
            ),
            (10_080, 600_000)
        );
        assert_eq!(c.storage.roll_ms, 604_800_000);
        assert_eq!(c.groups.offset_metadata_max_bytes, 4096);
        assert_eq!(
            parse(&["--offset-metadata-max-bytes", "0"])
                .unwrap()
                .groups
                .offset_metadata_max_bytes,
            0
        );
        // Kafka's offset.metadata.max.bytes is an INT.
        let e = parse(&["--offset-metadata-max-bytes", "2147483648"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--offset-metadata-max-bytes"), "{e}");
        // Kafka's group.initial.rebalance.delay.ms: 3000, an INT.
        assert_eq!(c.groups.initial_rebalance_delay_ms, 3000);
        let delay = |v: &str| {
            parse(&["--group-initial-rebalance-delay-ms", v]).and_then(|c| {
                c.validate()
                    .map(|()| c.groups.initial_rebalance_delay_ms)
                    .map_err(|e| e.to_string())
            })
        };
        assert_eq!(delay("0"), Ok(0));
        assert!(delay("2147483648")
            .unwrap_err()
            .contains("--group-initial-rebalance-delay-ms"));
        assert!(delay("-1").is_err());
        assert_eq!(
            parse(&["--log-roll-ms", "60000"]).unwrap().storage.roll_ms,
            60_000
        );
        for flag in [
            "--offsets-retention-minutes",
            "--offsets-retention-check-interval-ms",
            "--log-roll-ms",
        ] {
            let e = parse(&[flag, "0"])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn bad_bool_and_size_are_rejected() {
        let e = parse(&["--wal-enabled", "maybe"]).expect_err("rejected");
        assert!(
            e.contains("--wal-enabled") && e.contains("true, false"),
            "{e}"
        );
        let e = parse(&["--wal-max-file-size", "lots"]).expect_err("rejected");
        assert!(e.contains("--wal-max-file-size"), "{e}");
    }

    #[test]
    fn validate_names_the_flag() {
        let c = parse(&["--wal-max-file-size", "1000"]).expect("parses");
        let e = c.validate().expect_err("too small").to_string();
        assert!(
            e.contains("--wal-max-file-size") && e.contains("4096"),
            "{e}"
        );
        let c = parse(&["--default-partitions", "0"]).expect("parses");
        assert!(c
            .validate()
            .expect_err("zero")
            .to_string()
            .contains("--default-partitions"));
        let c = parse(&["--advertised-addr", "nohost"]).expect("parses");
        assert!(c
            .validate()
            .expect_err("no port")
            .to_string()
            .contains("--advertised-addr"));
        let c = parse(&["--sasl-authentication-timeout-ms", "0"]).expect("parses");
        assert!(c
            .validate()
            .expect_err("zero")
            .to_string()
            .contains("--sasl-authentication-timeout-ms"));
    }

    #[test]
    fn the_fetch_response_memory_budget_parses_and_is_checked() {
        let c = parse(&[]).expect("no flags parse");
        assert_eq!(c.server.fetch_response_memory_bytes, 256 << 20);
        let c = parse(&["--fetch-response-memory-bytes", "64m"]).expect("parses");
        assert_eq!(c.server.fetch_response_memory_bytes, 64 << 20);
        c.validate().expect("valid");
        let c = parse(&["--fetch-response-memory-bytes", "1k"]).expect("parses");
        c.validate().expect("the smallest accepted");
        let c = parse(&["--fetch-response-memory-bytes", "1023"]).expect("parses");
        let e = c.validate().expect_err("too small").to_string();
        assert!(
            e.contains("--fetch-response-memory-bytes") && e.contains("1024 or more"),
            "{e}"
        );
    }

    #[test]
    fn group_session_timeout_bounds_are_checked() {
        let c = parse(&[]).expect("no flags parse");
        assert_eq!(
            (
                c.groups.min_session_timeout_ms,
                c.groups.max_session_timeout_ms
            ),
            (6000, 1_800_000),
            "Kafka's defaults"
        );
        let c = parse(&[
            "--group-min-session-timeout-ms",
            "100",
            "--group-max-session-timeout-ms",
            "100",
        ])
        .expect("parses");
        c.validate().expect("min = max is valid");
        let c = parse(&["--group-min-session-timeout-ms", "0"]).expect("parses");
        let e = c.validate().expect_err("zero").to_string();
        assert!(e.contains("--group-min-session-timeout-ms"), "{e}");
        let c = parse(&[
            "--group-min-session-timeout-ms",
            "7000",
            "--group-max-session-timeout-ms",
            "6999",
        ])
        .expect("parses");
        let e = c.validate().expect_err("max below min").to_string();
        assert!(
            e.contains("--group-max-session-timeout-ms") && e.contains("7000"),
            "{e}"
        );
    }

    #[test]
    fn segment_bytes_is_an_int_as_in_kafka() {
        parse(&["--segment-bytes", "2147483647"])
            .unwrap()
            .validate()
            .expect("i32::MAX is accepted");
        parse(&["--segment-bytes", "4k"])
            .unwrap()
            .validate()
            .expect("4096 is accepted");
        for v in ["2147483648", "2g", "4294967295", "4095"] {
            let e = parse(&["--segment-bytes", v])
                .expect("parses")
                .validate()
                .expect_err(v)
                .to_string();
            assert!(
                e.contains("--segment-bytes") && e.contains("4096 to 2147483647"),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn the_backend_flag_is_not_overridden_by_the_variable() {
        // clap reads STREAMLINE_WAL_BACKEND for an absent flag; the WAL library
        // must not read it again over the flag's value.
        for flag in ["auto", "uring", "std"] {
            let c = parse(&["--wal-backend", flag]).unwrap();
            assert!(!c.wal.engine.backend_from_env);
            let env = Some(std::ffi::OsStr::new("std"));
            assert_eq!(
                c.wal.engine.resolve_backend(env).unwrap().as_str(),
                flag,
                "--wal-backend {flag} with STREAMLINE_WAL_BACKEND=std"
            );
            let bogus = Some(std::ffi::OsStr::new("bogus"));
            c.wal.engine.resolve_backend(bogus).expect("not consulted");
        }
        assert!(!Config::default().wal.engine.backend_from_env);
    }

    /// `--wal-enabled false` with an explicit `--wal-sync-mode` or
    /// `--wal-sync-ms` started without a word, produces then acknowledged
    /// from the page cache whatever mode was asked for; and an advertised
    /// address of 0.0.0.0 or :: sent every remote client to itself. Both are
    /// refused, naming the flag.
    #[test]
    fn contradictory_or_unreachable_settings_are_refused() {
        let refused = |args: &[&str], flag: &str| {
            let mut v = vec!["streamline"];
            v.extend_from_slice(args);
            let e = Cli::try_parse_args(v)
                .unwrap()
                .into_valid_config()
                .expect_err("refused")
                .to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
            e
        };
        let e = refused(
            &["--wal-enabled", "false", "--wal-sync-mode", "every_write"],
            "--wal-sync-mode",
        );
        assert!(
            e.contains("every_write") && e.contains("--wal-enabled false"),
            "{e}"
        );
        refused(
            &["--wal-enabled", "false", "--wal-sync-ms", "10"],
            "--wal-sync-ms",
        );
        refused(&["--advertised-addr", "0.0.0.0:9092"], "--advertised-addr");
        refused(&["--advertised-addr", "[::]:9092"], "--advertised-addr");
        for ok in [
            &["--wal-enabled", "false"][..],
            &["--wal-sync-mode", "every_write", "--wal-sync-ms", "10"],
            &["--advertised-addr", "127.0.0.1:9092"],
            &["--advertised-addr", "[::1]:9092"],
            &["--listen", "0.0.0.0:9092"],
        ] {
            let mut v = vec!["streamline"];
            v.extend_from_slice(ok);
            let c = Cli::try_parse_args(v).unwrap().into_valid_config();
            assert!(c.is_ok(), "{ok:?}: {c:?}");
        }
    }

    /// `--advertised-addr` checked no characters: hosts no client can resolve
    /// (a space, a non-ASCII letter, doubled brackets) and a signed port were
    /// advertised, and `0` (which resolvers read as 0.0.0.0) and IPv4's
    /// unspecified address mapped into IPv6 passed the refusal of the
    /// unspecified address. Each is refused, naming the flag and what is
    /// accepted.
    #[test]
    fn advertised_addresses_clients_cannot_reach_are_refused() {
        let refusal = |addr: &str| {
            parse(&[&format!("--advertised-addr={addr}")])
                .unwrap()
                .validate()
                .err()
                .map(|e| e.to_string())
        };
        for addr in [
            " broker1:9092",
            "broker1 :9092",
            "broker 1:9092",
            "\u{e9}:9092",
            "[[::1]]:9092",
            "[::1:9092",
            "::1:9092",
            "h:+9092",
            "h: 9092",
            "h:9092 ",
            "h:0",
            "h:65536",
            "h:",
            ":9092",
            "-broker:9092",
            "broker-:9092",
            ".broker:9092",
            "a..b:9092",
            "127.1:9092",
            "0x0:9092",
            "0:9092",
            "00.0.0.0:9092",
            "[fe80::1%eth0]:9092",
            "[127.0.0.1]:9092",
        ] {
            let e = refusal(addr).unwrap_or_else(|| panic!("{addr:?} accepted"));
            assert!(
                e.contains("--advertised-addr")
                    && e.contains("a host name")
                    && e.contains("1 to 65535"),
                "{addr:?}: {e}"
            );
        }
        for addr in ["[::ffff:0.0.0.0]:9092", "0.0.0.0:9092", "[::]:9092"] {
            let e = refusal(addr).unwrap_or_else(|| panic!("{addr:?} accepted"));
            assert!(
                e.contains("--advertised-addr") && e.contains("unspecified address"),
                "{addr:?}: {e}"
            );
        }
        for (addr, host, port) in [
            ("broker1:9092", "broker1", 9092),
            (
                "kafka-0.kafka_headless.svc:1",
                "kafka-0.kafka_headless.svc",
                1,
            ),
            ("localhost:65535", "localhost", 65535),
            ("10.0.0.1:9092", "10.0.0.1", 9092),
            ("[::1]:9092", "::1", 9092),
            ("[::ffff:10.0.0.1]:9092", "::ffff:10.0.0.1", 9092),
            ("broker.example:09092", "broker.example", 9092),
            // A fully qualified name's final dot.
            ("kafka.example.com.:9092", "kafka.example.com.", 9092),
        ] {
            assert_eq!(refusal(addr), None, "{addr:?}");
            assert_eq!(
                parse_host_port(addr),
                Some((host.to_string(), port)),
                "{addr:?}"
            );
        }
    }

    /// `cli` as if each `(flag, variable, value)` of `vars` had come from its
    /// variable: the flags are given on `args` with their values, and noted as
    /// read from the variables, as [`Cli::try_parse_args`] notes them (the
    /// process's environment is left alone, which other tests read).
    fn parse_with_vars(args: &[&str], vars: &[(&str, &str, &str)]) -> Cli {
        let mut v = vec!["streamline"];
        v.extend_from_slice(args);
        for (flag, _, value) in vars {
            v.extend_from_slice(&[flag, value]);
        }
        let mut cli = Cli::try_parse_args(v).unwrap();
        cli.from_env = FromEnv(
            vars.iter()
                .map(|(flag, var, value)| EnvValue {
                    flag: (*flag).into(),
                    var: (*var).into(),
                    value: (*value).into(),
                })
                .collect(),
        );
        cli
    }

    /// A merely present `STREAMLINE_WAL_SYNC_MODE` or `STREAMLINE_WAL_SYNC_MS`
    /// (set for every run by a container image or a service unit) stopped a
    /// broker started with `--wal-enabled false` on the command line. The flag
    /// wins, with a warning naming each variable it makes ignored. A sync flag
    /// on the command line is still refused, whatever turned the WAL off, and
    /// so are both settings from the environment, where neither is the more
    /// particular.
    #[test]
    fn wal_enabled_false_on_the_command_line_ignores_sync_settings_from_the_environment() {
        const MODE: (&str, &str, &str) =
            ("--wal-sync-mode", "STREAMLINE_WAL_SYNC_MODE", "every_write");
        const MS: (&str, &str, &str) = ("--wal-sync-ms", "STREAMLINE_WAL_SYNC_MS", "10");
        const OFF: (&str, &str, &str) = ("--wal-enabled", "STREAMLINE_WAL_ENABLED", "no");
        let off = ["--wal-enabled", "false"];

        // The flag on the command line, the sync settings from variables.
        for vars in [&[MODE][..], &[MS], &[MODE, MS]] {
            let cli = parse_with_vars(&off, vars);
            let ignored = cli.ignored_settings();
            let c = cli.into_valid_config().expect("starts");
            assert!(!c.wal.enabled);
            assert_eq!(ignored.len(), vars.len(), "{ignored:?}");
            for ((_, var, value), warning) in vars.iter().zip(&ignored) {
                assert!(
                    warning.contains(var)
                        && warning.contains(value)
                        && warning.contains("--wal-enabled false"),
                    "{warning}"
                );
            }
        }

        let refused = |cli: Cli| {
            assert!(cli.ignored_settings().is_empty());
            cli.into_valid_config().expect_err("refused").to_string()
        };
        // A sync flag on the command line, the WAL off by the flag or by its
        // variable; a sync flag beside a variable is the one named.
        let e = refused(parse_with_vars(
            &[&off[..], &["--wal-sync-ms", "10"]].concat(),
            &[MODE],
        ));
        assert!(
            e.contains("--wal-sync-ms") && !e.contains("STREAMLINE_WAL_SYNC"),
            "{e}"
        );
        let e = refused(parse_with_vars(&["--wal-sync-mode", "every_write"], &[OFF]));
        assert!(
            e.contains("--wal-sync-mode")
                && e.contains("STREAMLINE_WAL_ENABLED = \"no\"")
                && !e.contains("STREAMLINE_WAL_SYNC"),
            "{e}"
        );
        // Both from the environment: the sync variable is named, with the
        // variable that turned the WAL off and the way to turn it off for one run.
        let e = refused(parse_with_vars(&[], &[OFF, MS]));
        assert!(
            e.contains("STREAMLINE_WAL_SYNC_MS = \"10\"")
                && e.contains("STREAMLINE_WAL_ENABLED = \"no\"")
                && e.contains("--wal-enabled false on the command line"),
            "{e}"
        );
        // The WAL on: nothing to ignore.
        let cli = parse_with_vars(&[], &[MODE, MS]);
        assert!(cli.ignored_settings().is_empty());
        assert_eq!(
            cli.into_valid_config().unwrap().wal.engine.sync_mode,
            SyncMode::EveryWrite
        );
    }

    /// `STREAMLINE_WAL_SYNC_MS=0` with `--wal-enabled false` on the command
    /// line was announced as ignored, then stopped the start all the same
    /// ("must be at least 1 in interval mode"). Ignored settings now take
    /// their defaults, which is also what an existing WAL is opened with to be
    /// replayed; and they are no longer reported as given.
    #[test]
    fn ignored_sync_settings_are_neither_checked_nor_used() {
        for vars in [
            &[("--wal-sync-ms", "STREAMLINE_WAL_SYNC_MS", "0")][..],
            &[
                ("--wal-sync-mode", "STREAMLINE_WAL_SYNC_MODE", "every_write"),
                ("--wal-sync-ms", "STREAMLINE_WAL_SYNC_MS", "0"),
            ],
        ] {
            let cli = parse_with_vars(&["--wal-enabled", "false"], vars);
            let ignored = cli.ignored_settings();
            assert_eq!(ignored.len(), vars.len(), "{ignored:?}");
            assert!(
                ignored[0].contains("STREAMLINE_WAL_SYNC") && ignored[0].contains("ignoring"),
                "{ignored:?}"
            );
            let c = cli
                .into_valid_config()
                .unwrap_or_else(|e| panic!("{vars:?} refused: {e}"));
            let d = Config::default().wal.engine;
            assert!(!c.wal.enabled);
            assert_eq!(
                (c.wal.engine.sync_mode, c.wal.engine.sync_interval_ms),
                (d.sync_mode, d.sync_interval_ms)
            );
            assert_eq!(
                c.given.iter().map(String::as_str).collect::<Vec<_>>(),
                ["--wal-enabled"]
            );
        }
    }

    /// The flags given on the command line reach the configuration (for
    /// DescribeConfigs' sources), whatever their values.
    #[test]
    fn given_flags_are_noted() {
        let cli = Cli::try_parse_args([
            "streamline",
            "--segment-bytes",
            "256m",
            "--listen=127.0.0.1:0",
        ])
        .unwrap();
        let c = cli.into_valid_config().unwrap();
        assert_eq!(
            c.given.iter().map(String::as_str).collect::<Vec<_>>(),
            ["--listen", "--segment-bytes"]
        );
        assert_eq!(
            c.storage.segment_bytes,
            Config::default().storage.segment_bytes
        );
    }

    #[test]
    fn range_errors_name_the_variable_the_value_came_from() {
        // From the command line: the flag, and no variable.
        let cli = Cli::try_parse_args(["streamline", "--max-connections", "0"]).unwrap();
        assert_eq!(cli.from_env, FromEnv::default());
        let e = cli.into_valid_config().unwrap_err().to_string();
        assert!(
            e.contains("--max-connections")
                && e.contains("1 or more")
                && !e.contains("STREAMLINE_"),
            "{e}"
        );
        // From a variable: the variable and what it holds (`0k`, not the parsed
        // 0), then the flag and the accepted values.
        let from_env = FromEnv(vec![EnvValue {
            flag: "--fetch-max-bytes".into(),
            var: "STREAMLINE_FETCH_MAX_BYTES".into(),
            value: "0k".into(),
        }]);
        let mut cli = Cli::try_parse_args(["streamline", "--fetch-max-bytes", "0k"]).unwrap();
        cli.from_env = from_env.clone();
        let e = cli.into_valid_config().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid configuration: STREAMLINE_FETCH_MAX_BYTES = \"0k\" (the environment \
             variable of --fetch-max-bytes): accepted values: 1024 to 2147483647"
        );
        // Another flag's error is left naming that flag.
        let e = from_env
            .name_variable(Error::InvalidConfig {
                field: "--max-connections",
                value: "0".into(),
                reason: "accepted values: 1 or more".into(),
            })
            .to_string();
        assert!(
            e.contains("--max-connections") && !e.contains("STREAMLINE_"),
            "{e}"
        );
    }

    #[test]
    fn sasl_mechanisms_are_checked_with_or_without_users() {
        // An unknown mechanism is refused whatever else is set.
        for args in [
            &["--sasl-mechanisms", "BOGUS"][..],
            &["--sasl-mechanisms", "PLAIN,BOGUS", "--sasl-users", "u.json"],
            &["--sasl-mechanisms", ""],
        ] {
            let e = parse(args).expect_err("unknown mechanism");
            assert!(
                e.contains("--sasl-mechanisms") && e.contains("SCRAM-SHA-512"),
                "{args:?}: {e}"
            );
        }
        // Known ones without users would leave SASL off.
        let cli = Cli::try_parse_args(["streamline", "--sasl-mechanisms", "PLAIN"]).unwrap();
        let e = cli.into_valid_config().unwrap_err().to_string();
        assert!(
            e.contains("--sasl-mechanisms") && e.contains("needs --sasl-users"),
            "{e}"
        );
        // With users: as given, or all three by default.
        let c = parse(&["--sasl-users", "u.json", "--sasl-mechanisms", "PLAIN"]).unwrap();
        assert_eq!(c.server.sasl.unwrap().mechanisms, ["PLAIN"]);
        let c = parse(&["--sasl-users", "u.json"]).unwrap();
        assert_eq!(
            c.server.sasl.unwrap().mechanisms,
            ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
        );
        assert_eq!(parse(&[]).unwrap().server.sasl, None);
    }

    #[test]
    fn sizes_accept_suffixes() {
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("100m"), Ok(100 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("k").is_err());
    }

    /// `--space-reserve-bytes` sizes the space kept back for the writes that
    /// free space (4 MiB before it existed, and by default); 0 keeps none.
    #[test]
    fn the_space_reserve_takes_a_size() {
        let size = |args: &[&str]| parse(args).unwrap().storage.space_reserve_bytes;
        assert_eq!(size(&[]), 4 << 20);
        assert_eq!(size(&["--space-reserve-bytes", "0"]), 0);
        assert_eq!(size(&["--space-reserve-bytes", "64m"]), 64 << 20);
        assert!(parse(&["--space-reserve-bytes", "-1"]).is_err());
    }

    /// broker.md says sizes take `k`, `m` and `g` suffixes, but
    /// `--offset-metadata-max-bytes 4k` was refused. It takes them, within
    /// the same range (Kafka's INT).
    #[test]
    fn offset_metadata_max_bytes_accepts_sizes_within_an_int() {
        let bytes = |v: &str| {
            Cli::try_parse_args(["streamline", "--offset-metadata-max-bytes", v])
                .map(|cli| cli.into_config().groups.offset_metadata_max_bytes)
                .map_err(|e| e.to_string())
        };
        assert_eq!(bytes("4k"), Ok(4096));
        assert_eq!(bytes("1m"), Ok(1 << 20));
        assert_eq!(bytes("0"), Ok(0));
        assert_eq!(bytes("2147483647"), Ok(i32::MAX as usize));
        for v in ["2g", "2147483648", "-1", "lots"] {
            let e = bytes(v).expect_err(v);
            assert!(
                e.contains("--offset-metadata-max-bytes") && e.contains("0 to 2147483647"),
                "{v}: {e}"
            );
        }
    }

    /// Every setting DescribeConfigs reports as an INT or a LONG is held to
    /// that type's range: before, `--connection-failed-authentication-delay-ms
    /// 3000000000` was accepted and reported as an INT, and the LONG ones took
    /// values past 9223372036854775807.
    #[test]
    fn settings_reported_as_int_or_long_stay_within_the_type() {
        let int = i32::MAX.to_string();
        let long = i64::MAX.to_string();
        let past_int = (i32::MAX as u64 + 1).to_string();
        let past_long = (i64::MAX as u64 + 1).to_string();
        let flags = [
            (
                "--connection-failed-authentication-delay-ms",
                &int,
                &past_int,
            ),
            ("--connections-max-idle-ms", &long, &past_long),
            ("--fetch-response-memory-bytes", &long, &past_long),
            ("--log-cleaner-backoff-ms", &long, &past_long),
            ("--log-cleaner-dedupe-buffer-size", &long, &past_long),
            ("--log-retention-check-interval-ms", &long, &past_long),
            ("--log-roll-ms", &long, &past_long),
        ];
        for (flag, largest, past) in flags {
            // Idle connections never closed: any delay may be set.
            let mut args = vec![flag, largest.as_str()];
            if flag != "--connections-max-idle-ms" {
                args.extend(["--connections-max-idle-ms", "0"]);
            }
            let c = parse(&args).unwrap();
            c.validate()
                .unwrap_or_else(|e| panic!("{flag} {largest} refused: {e}"));
            args[1] = past.as_str();
            let e = parse(&args)
                .unwrap()
                .validate()
                .expect_err("past the type's range")
                .to_string();
            assert!(e.contains(flag) && e.contains(past.as_str()), "{e}");
        }
        // Not reachable from the command line (their flags are signed or
        // range-checked as they are parsed), but from a `Config` built in code.
        let mut c = parse(&[]).unwrap();
        c.storage.retention_ms = Some(i64::MAX as u64);
        c.storage.retention_bytes = Some(i64::MAX as u64);
        c.groups.offset_metadata_max_bytes = i32::MAX as usize;
        c.validate().unwrap();
        for (flag, set) in [
            (
                "--log-retention-ms",
                (|c: &mut Config| c.storage.retention_ms = Some(u64::MAX)) as fn(&mut Config),
            ),
            ("--log-retention-bytes", |c: &mut Config| {
                c.storage.retention_bytes = Some(u64::MAX)
            }),
            ("--offset-metadata-max-bytes", |c: &mut Config| {
                c.groups.offset_metadata_max_bytes = i32::MAX as usize + 1
            }),
        ] {
            let mut c = parse(&[]).unwrap();
            set(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    /// As in Kafka, a failed authentication is answered before its connection
    /// would be closed as idle.
    #[test]
    fn the_failed_authentication_delay_is_less_than_the_idle_timeout() {
        let args = |delay: &'static str| {
            [
                "--connections-max-idle-ms",
                "1000",
                "--connection-failed-authentication-delay-ms",
                delay,
            ]
        };
        parse(&args("999")).unwrap().validate().unwrap();
        for delay in ["1000", "5000"] {
            let e = parse(&args(delay))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--connection-failed-authentication-delay-ms")
                    && e.contains("--connections-max-idle-ms")
                    && e.contains("0 to 999"),
                "{e}"
            );
        }
    }
}
