//! Configuration under Kafka's names. DescribeConfigs answers for a topic (its
//! overrides, and the broker's settings for every key it does not override) or
//! for this broker. AlterConfigs and IncrementalAlterConfigs change a topic's
//! overrides (see [`crate::storage::topic_config`]); the broker's own settings
//! come from flags and the environment and cannot be changed while it runs.
//! Admin tools (`kafka-topics`, `kafka-configs`, AdminClient) use these.

use std::collections::{BTreeSet, HashSet};

use kafka_protocol::{
    messages::{
        alter_configs_response,
        create_topics_response::CreatableTopicConfigs,
        describe_configs_response::{
            DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
        },
        incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse,
        DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
        IncrementalAlterConfigsResponse,
    },
    protocol::StrBytes,
};

use crate::{
    config::Config,
    server::{codes, Ctx},
    storage::{topic_config, valid_topic_name, AlterError, ConfigError, TopicConfig},
};

/// Resource types (Kafka's `ConfigResource.Type`).
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Where a value comes from (Kafka's `ConfigSource`).
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// IncrementalAlterConfigs operations (Kafka's `AlterConfigOp.OpType`).
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

/// Value types (Kafka's `ConfigType`).
const BOOLEAN: i8 = 1;
const STRING: i8 = 2;
const INT: i8 = 3;
const LONG: i8 = 5;
const DOUBLE: i8 = 6;
const LIST: i8 = 7;

/// One configuration entry: name, value, type, and where the value comes from.
struct Entry {
    name: &'static str,
    value: String,
    kind: i8,
    source: i8,
    /// For a topic's entry, the broker's setting it falls back to: its
    /// broker-level name, value and source (DescribeConfigs synonyms).
    broker: Option<(&'static str, String, i8)>,
}

/// An entry whose value is the built-in default (`default`), or else was set on
/// the command line or in the environment.
fn entry(name: &'static str, value: impl ToString, kind: i8, default: bool) -> Entry {
    Entry {
        name,
        value: value.to_string(),
        kind,
        source: if default {
            DEFAULT_CONFIG
        } else {
            STATIC_BROKER_CONFIG
        },
        broker: None,
    }
}

/// The broker-level name of topic config `name` (Kafka's
/// `ServerTopicConfigSynonyms`; the same name where Kafka's is).
fn broker_synonym(name: &'static str) -> &'static str {
    match name {
        "cleanup.policy" => "log.cleanup.policy",
        "delete.retention.ms" => "log.cleaner.delete.retention.ms",
        "max.message.bytes" => "message.max.bytes",
        "message.timestamp.after.max.ms" => "log.message.timestamp.after.max.ms",
        "message.timestamp.before.max.ms" => "log.message.timestamp.before.max.ms",
        "message.timestamp.type" => "log.message.timestamp.type",
        "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio",
        "min.compaction.lag.ms" => "log.cleaner.min.compaction.lag.ms",
        "retention.bytes" => "log.retention.bytes",
        "retention.ms" => "log.retention.ms",
        "segment.bytes" => "log.segment.bytes",
        "segment.ms" => "log.roll.ms",
        same => same,
    }
}

/// The flags that set the broker-level setting `name` (the `setting`s
/// below).
fn flags_of(name: &str) -> &'static [&'static str] {
    match name {
        "auto.create.topics.enable" => &["--auto-create-topics"],
        "connection.failed.authentication.delay.ms" => {
            &["--connection-failed-authentication-delay-ms"]
        }
        "connections.max.idle.ms" => &["--connections-max-idle-ms"],
        "fetch.max.bytes" => &["--fetch-max-bytes"],
        "group.initial.rebalance.delay.ms" => &["--group-initial-rebalance-delay-ms"],
        "group.max.session.timeout.ms" => &["--group-max-session-timeout-ms"],
        "group.min.session.timeout.ms" => &["--group-min-session-timeout-ms"],
        "log.dirs" => &["--data-dir"],
        "log.cleaner.backoff.ms" => &["--log-cleaner-backoff-ms"],
        "log.cleaner.dedupe.buffer.size" => &["--log-cleaner-dedupe-buffer-size"],
        "log.retention.bytes" => &["--log-retention-bytes"],
        "log.retention.check.interval.ms" => &["--log-retention-check-interval-ms"],
        "log.retention.ms" => &["--log-retention-ms"],
        "log.roll.ms" => &["--log-roll-ms"],
        "log.segment.bytes" => &["--segment-bytes"],
        "message.max.bytes" => &[
            "--max-request-bytes",
            "--wal-max-file-size",
            "--wal-enabled",
        ],
        "num.partitions" => &["--default-partitions"],
        "offset.metadata.max.bytes" => &["--offset-metadata-max-bytes"],
        "socket.request.max.bytes" => &["--max-request-bytes"],
        "streamline.fetch.response.memory.bytes" => &["--fetch-response-memory-bytes"],
        _ => &[],
    }
}

/// Marks as set (`STATIC_BROKER_CONFIG`) the entries whose flags were given
/// (`Config::given`), whatever their value: as Kafka reports a setting in
/// `server.properties` equal to its default.
fn mark_given(entries: &mut [Entry], given: &std::collections::BTreeSet<String>) {
    for e in entries {
        if flags_of(broker_synonym(e.name))
            .iter()
            .any(|f| given.contains(*f))
        {
            e.source = STATIC_BROKER_CONFIG;
        }
    }
}

/// A setting whose default is `default`: `DEFAULT_CONFIG` unless it differs.
fn setting<T: PartialEq + ToString>(name: &'static str, value: T, default: T, kind: i8) -> Entry {
    let is_default = value == default;
    entry(name, value, kind, is_default)
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-1".to_string(), |v| v.to_string())
}

/// Bytes of a Produce request frame besides its record batch, at most, for a
/// request carrying one batch in any version the broker serves (v3 to v9):
/// the request header with a client id of up to 32767 bytes (its length is an
/// INT16) and v9's tagged fields; the transactional id, null (the broker
/// refuses transactional batches, so a producer it serves sends none); acks
/// and the timeout; the topic array's length, a topic name of
/// [`crate::storage::MAX_TOPIC_NAME`] bytes with its length; the partition
/// array's length, the partition index and the batch's length (INT32s, or
/// varints of up to 5 bytes in v9); and v9's empty tagged fields of the
/// request, the topic and the partition. A frame's own 4-byte length is not
/// counted by `--max-request-bytes`, so not here either.
const PRODUCE_FRAMING: u64 = {
    let header = 2 + 2 + 4 + (2 + 32767) + 1;
    let body = 2 + 2 + 4 + 4 + (2 + crate::storage::MAX_TOPIC_NAME as u64) + 4 + 4 + 5 + 3;
    header + body
};

/// The largest record batch a produce may carry whatever its client id and
/// topic name: one request frame less a Produce's framing, and with the WAL
/// enabled one WAL entry less its framing (counted for the longest topic name).
/// Advertised as Kafka's `message.max.bytes`, it must be reachable: a larger
/// frame closes the connection (clients resend it, forever), and the WAL's
/// check answers MESSAGE_TOO_LARGE. A larger batch may still be accepted, as
/// a shorter client id or topic name leaves it more room.
fn max_message_bytes(ctx: &Ctx) -> u64 {
    let frame = ctx.storage.config().server.max_request_bytes as u64;
    largest_batch(frame, ctx.storage.wal().map(|w| w.max_entry_bytes()))
}

/// [`max_message_bytes`] for request frames of `frame` bytes and WAL entries
/// of `entry` bytes at most (`None`: no WAL).
fn largest_batch(frame: u64, entry: Option<u64>) -> u64 {
    let framed = frame.saturating_sub(PRODUCE_FRAMING);
    entry.map_or(framed, |e| {
        e.saturating_sub(crate::storage::WAL_ENTRY_OVERHEAD + crate::storage::MAX_TOPIC_NAME as u64)
            .min(framed)
    })
}

/// [`max_message_bytes`] as a broker with every default setting has it: a
/// value that differs comes from `--max-request-bytes`, `--wal-max-file-size`
/// or `--wal-enabled`.
fn default_max_message_bytes() -> u64 {
    let d = Config::default();
    largest_batch(
        d.server.max_request_bytes as u64,
        d.wal
            .enabled
            .then(|| crate::wal::max_entry_bytes_for(d.wal.engine.max_file_size)),
    )
}

/// A topic's configuration: its overrides, and the broker's settings under the
/// topic-level names for the rest.
fn topic_entries(ctx: &Ctx, overrides: &TopicConfig) -> Vec<Entry> {
    let c = ctx.storage.config();
    let d = Config::default();
    let s = &c.storage;
    let mut entries = vec![
        entry("cleanup.policy", "delete", LIST, true),
        entry("compression.type", "producer", STRING, true),
        entry(
            "delete.retention.ms",
            topic_config::DEFAULT_DELETE_RETENTION_MS,
            LONG,
            true,
        ),
        setting(
            "max.message.bytes",
            max_message_bytes(ctx),
            default_max_message_bytes(),
            INT,
        ),
        entry(
            "message.timestamp.after.max.ms",
            crate::storage::MAX_TIMESTAMP_AHEAD_MS,
            LONG,
            true,
        ),
        entry("message.timestamp.before.max.ms", i64::MAX, LONG, true),
        entry("message.timestamp.type", "CreateTime", STRING, true),
        entry(
            "min.cleanable.dirty.ratio",
            topic_config::DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
            DOUBLE,
            true,
        ),
        entry("min.compaction.lag.ms", 0, LONG, true),
        entry("min.insync.replicas", 1, INT, true),
        setting(
            "retention.bytes",
            opt(s.retention_bytes),
            opt(d.storage.retention_bytes),
            LONG,
        ),
        setting(
            "retention.ms",
            opt(s.retention_ms),
            opt(d.storage.retention_ms),
            LONG,
        ),
        setting(
            "segment.bytes",
            s.segment_bytes,
            d.storage.segment_bytes,
            INT,
        ),
        setting("segment.ms", s.roll_ms, d.storage.roll_ms, LONG),
    ];
    mark_given(&mut entries, &c.given);
    for e in &mut entries {
        e.broker = Some((broker_synonym(e.name), e.value.clone(), e.source));
        if let Some(v) = overrides.get(e.name) {
            e.value = v.to_string();
            e.source = DYNAMIC_TOPIC_CONFIG;
        }
    }
    entries
}

/// The synonyms of entry `e`, as Kafka lists them (highest precedence
/// first): a topic's own value, then the broker's setting it falls back to;
/// for a broker's entry, itself.
fn synonyms(e: &Entry) -> Vec<DescribeConfigsSynonym> {
    let synonym = |name: &'static str, value: &str, source: i8| {
        DescribeConfigsSynonym::default()
            .with_name(StrBytes::from_static_str(name))
            .with_value(Some(StrBytes::from_string(value.to_string())))
            .with_source(source)
    };
    match &e.broker {
        Some((name, value, source)) => (e.source == DYNAMIC_TOPIC_CONFIG)
            .then(|| synonym(e.name, &e.value, e.source))
            .into_iter()
            .chain(std::iter::once(synonym(name, value, *source)))
            .collect(),
        None => vec![synonym(e.name, &e.value, e.source)],
    }
}

/// A topic's configuration as CreateTopics v5+ describes the created topic.
pub(crate) fn created_topic_configs(
    ctx: &Ctx,
    overrides: &TopicConfig,
) -> Vec<CreatableTopicConfigs> {
    topic_entries(ctx, overrides)
        .into_iter()
        .map(|e| {
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(e.name))
                .with_value(Some(StrBytes::from_string(e.value)))
                .with_read_only(false)
                .with_config_source(e.source)
                .with_is_sensitive(false)
        })
        .collect()
}

/// The broker's configuration under Kafka's broker-level names.
fn broker_entries(ctx: &Ctx) -> Vec<Entry> {
    let c = ctx.storage.config();
    let d = Config::default();
    let (s, ds) = (&c.storage, &d.storage);
    let (g, dg) = (&c.groups, &d.groups);
    let (v, dv) = (&c.server, &d.server);
    let mut entries = vec![
        setting(
            "auto.create.topics.enable",
            s.auto_create_topics,
            ds.auto_create_topics,
            BOOLEAN,
        ),
        entry("broker.id", ctx.storage.meta().node_id, INT, true),
        setting(
            "connection.failed.authentication.delay.ms",
            v.failed_authentication_delay_ms,
            dv.failed_authentication_delay_ms,
            INT,
        ),
        setting(
            "connections.max.idle.ms",
            v.connections_max_idle_ms,
            dv.connections_max_idle_ms,
            LONG,
        ),
        setting(
            "fetch.max.bytes",
            v.fetch_max_bytes,
            dv.fetch_max_bytes,
            INT,
        ),
        setting(
            "group.initial.rebalance.delay.ms",
            g.initial_rebalance_delay_ms,
            dg.initial_rebalance_delay_ms,
            INT,
        ),
        setting(
            "group.max.session.timeout.ms",
            g.max_session_timeout_ms,
            dg.max_session_timeout_ms,
            INT,
        ),
        setting(
            "group.min.session.timeout.ms",
            g.min_session_timeout_ms,
            dg.min_session_timeout_ms,
            INT,
        ),
        entry(
            "log.dirs",
            s.data_dir.join("topics").display(),
            STRING,
            s.data_dir == ds.data_dir,
        ),
        setting(
            "log.cleaner.backoff.ms",
            s.cleaner_backoff_ms,
            ds.cleaner_backoff_ms,
            LONG,
        ),
        setting(
            "log.cleaner.dedupe.buffer.size",
            s.cleaner_dedupe_buffer_bytes,
            ds.cleaner_dedupe_buffer_bytes,
            LONG,
        ),
        setting(
            "log.retention.bytes",
            opt(s.retention_bytes),
            opt(ds.retention_bytes),
            LONG,
        ),
        setting(
            "log.retention.check.interval.ms",
            s.retention_check_interval_ms,
            ds.retention_check_interval_ms,
            LONG,
        ),
        setting(
            "log.retention.ms",
            opt(s.retention_ms),
            opt(ds.retention_ms),
            LONG,
        ),
        setting("log.roll.ms", s.roll_ms, ds.roll_ms, LONG),
        setting("log.segment.bytes", s.segment_bytes, ds.segment_bytes, INT),
        setting(
            "message.max.bytes",
            max_message_bytes(ctx),
            default_max_message_bytes(),
            INT,
        ),
        setting(
            "num.partitions",
            s.default_partitions,
            ds.default_partitions,
            INT,
        ),
        setting(
            "offset.metadata.max.bytes",
            g.offset_metadata_max_bytes,
            dg.offset_metadata_max_bytes,
            INT,
        ),
        setting(
            "socket.request.max.bytes",
            v.max_request_bytes,
            dv.max_request_bytes,
            INT,
        ),
        // This broker's own: Kafka sends fetched records from the page cache.
        setting(
            "streamline.fetch.response.memory.bytes",
            v.fetch_response_memory_bytes,
            dv.fetch_response_memory_bytes,
            LONG,
        ),
    ];
    mark_given(&mut entries, &c.given);
    entries
}

fn result(resource_type: i8, name: StrBytes) -> DescribeConfigsResult {
    DescribeConfigsResult::default()
        .with_resource_type(resource_type)
        .with_resource_name(name)
}

/// The resources a DescribeConfigs asks about, in request order: `(type, name,
/// keys)`, the keys `None` for every one (null or an empty list). A resource named
/// again with the same keys is answered once, so that a request repeating a
/// resource cannot have its every config copied into the answer each time.
fn asked_resources(req: &DescribeConfigsRequest) -> Vec<(i8, &StrBytes, Option<BTreeSet<&str>>)> {
    let mut seen = HashSet::new();
    req.resources
        .iter()
        .map(|r| {
            let keys = r
                .configuration_keys
                .as_ref()
                .filter(|k| !k.is_empty())
                .map(|k| k.iter().map(StrBytes::as_str).collect::<BTreeSet<&str>>());
            (r.resource_type, &r.resource_name, keys)
        })
        .filter(|(kind, name, keys)| seen.insert((*kind, name.as_str(), keys.clone())))
        .collect()
}

pub(crate) fn describe_configs(ctx: &Ctx, req: &DescribeConfigsRequest) -> DescribeConfigsResponse {
    let node = ctx.storage.meta().node_id.to_string();
    let results = asked_resources(req)
        .into_iter()
        .map(|(resource_type, resource_name, keys)| {
            let out = result(resource_type, resource_name.clone());
            let name = resource_name.as_str();
            let (entries, read_only) = match resource_type {
                TOPIC => match ctx.storage.topic(name) {
                    Some(t) => (topic_entries(ctx, &t.configs), false),
                    // Judged before the look-up, as Kafka's ConfigHelper does.
                    None if !valid_topic_name(name) => {
                        let (code, message) = invalid_topic_name();
                        return out
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(message)));
                    }
                    None => {
                        return out
                            .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "unknown topic {name}"
                            ))))
                    }
                },
                // The empty name asks for the cluster-wide dynamic defaults,
                // of which this broker has none (Kafka: only those set).
                BROKER if name.is_empty() => (Vec::new(), true),
                BROKER if name == node => (broker_entries(ctx), true),
                BROKER => {
                    return out
                        .with_error_code(codes::INVALID_REQUEST)
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "this is broker {node}, not {name}"
                        ))))
                }
                other => {
                    return out
                        .with_error_code(codes::INVALID_REQUEST)
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "resource type {other} is not supported (topics: 2, brokers: 4)"
                        ))))
                }
            };
            let configs = entries
                .into_iter()
                .filter(|e| keys.as_ref().is_none_or(|k| k.contains(e.name)))
                .map(|e| {
                    let synonyms = if req.include_synonyms {
                        synonyms(&e)
                    } else {
                        Vec::new()
                    };
                    DescribeConfigsResourceResult::default()
                        .with_synonyms(synonyms)
                        .with_name(StrBytes::from_static_str(e.name))
                        .with_value(Some(StrBytes::from_string(e.value)))
                        // A topic's every key can be overridden; the broker's are
                        // fixed while it runs.
                        .with_read_only(read_only)
                        .with_config_source(e.source)
                        .with_is_sensitive(false)
                        .with_config_type(e.kind)
                        // Null, as Kafka's when not asked for; when asked
                        // (`include_documentation`), too: the broker holds no
                        // text for its keys (docs/broker.md has it).
                        .with_documentation(None)
                })
                .collect();
            out.with_error_code(codes::NONE)
                .with_error_message(None)
                .with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// What an alter of one resource came to: `NONE`, or an error code and message.
type Outcome = Result<(), (i16, String)>;

/// The answer to a topic resource whose name no topic can have (Kafka:
/// `InvalidTopicException` from `Topic.validate`).
fn invalid_topic_name() -> (i16, String) {
    (
        codes::INVALID_TOPIC_EXCEPTION,
        "topic names are 1-249 characters of [A-Za-z0-9._-]".to_string(),
    )
}

fn alter_error(name: &str, e: AlterError) -> (i16, String) {
    match e {
        AlterError::UnknownTopic => (
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("unknown topic {name}"),
        ),
        AlterError::Invalid(e) => (codes::INVALID_CONFIG, e.to_string()),
        AlterError::InvalidRequest(m) => (codes::INVALID_REQUEST, m),
        AlterError::Storage(m) => (codes::KAFKA_STORAGE_ERROR, m),
    }
}

/// Whether a resource can be altered: topics only; a resource named twice in one
/// request is refused each time (as Kafka does).
fn alterable(resource_type: i8, name: &str, dup: bool) -> Outcome {
    if dup {
        return Err((
            codes::INVALID_REQUEST,
            format!("resource {name} appears more than once in the request"),
        ));
    }
    match resource_type {
        TOPIC => Ok(()),
        BROKER => Err((
            codes::INVALID_REQUEST,
            "broker configs cannot be changed while the broker runs: set them with flags or \
             STREAMLINE_* environment variables and restart"
                .to_string(),
        )),
        other => Err((
            codes::INVALID_REQUEST,
            format!("resource type {other} cannot be altered (topics: 2)"),
        )),
    }
}

/// The (type, name) pairs named more than once in a request.
fn duplicates<'a>(resources: impl Iterator<Item = (i8, &'a str)>) -> BTreeSet<(i8, String)> {
    let mut seen = BTreeSet::new();
    resources
        .filter(|&(t, n)| !seen.insert((t, n.to_string())))
        .map(|(t, n)| (t, n.to_string()))
        .collect()
}

/// Runs a topic config change on a blocking thread (it replaces and fsyncs
/// `topic.json`): `prepare` checks what the request asks and makes `change`
/// of it there, before the change is serialised with the other topic admin
/// operations (see [`crate::storage::TopicManager::alter_topic_configs`]), so
/// that however long the request's values are, the lock is held only to apply
/// what was already checked.
async fn alter_topic<C>(
    ctx: &Ctx,
    name: &str,
    validate_only: bool,
    prepare: impl FnOnce() -> Result<C, AlterError> + Send + 'static,
) -> Outcome
where
    C: FnOnce(&TopicConfig) -> Result<TopicConfig, AlterError>,
{
    // As Kafka's controller judges the name (before the topic's existence):
    // the empty name is the default topic resource, which cannot be altered.
    if ctx.storage.topic(name).is_none() {
        if name.is_empty() {
            return Err((
                codes::INVALID_REQUEST,
                "Default topic resources are not allowed.".to_string(),
            ));
        }
        if !valid_topic_name(name) {
            return Err(invalid_topic_name());
        }
    }
    let storage = ctx.storage.clone();
    let topic = name.to_string();
    crate::server::admin_blocking(ctx, move || {
        // An unknown topic is answered as such whatever the request asks of it.
        if storage.topic(&topic).is_none() {
            return Err(AlterError::UnknownTopic);
        }
        let change = prepare()?;
        storage.alter_topic_configs(&topic, validate_only, change)
    })
    .await
    .unwrap_or_else(|e| Err(AlterError::Storage(e.to_string())))
    .map(|configs| {
        tracing::debug!(topic = name, validate_only, configs = ?configs.overrides(), "topic configs altered");
    })
    .map_err(|e| alter_error(name, e))
}

/// The most names of null entries a refusal of an alter lists (see
/// [`preprocess`]).
const LISTED_NULLS: usize = 16;

/// Checks the entries of one resource of an AlterConfigs or an
/// IncrementalAlterConfigs as Kafka's broker does before anything else of the
/// resource (`ConfigAdminManager`'s preprocessing, which the topic's existence
/// is checked after): a key named twice, or a null value (of an operation
/// other than DELETE), is refused with `INVALID_REQUEST` and Kafka's message.
/// `entries` gives each key and whether its value is such a null. A null value
/// is no "key left out" of a legacy AlterConfigs: Kafka refuses it rather than
/// returning the key to its default, and so does this broker.
fn preprocess<'a>(entries: impl Iterator<Item = (&'a str, bool)> + Clone) -> Outcome {
    let mut names = HashSet::new();
    if !entries.clone().all(|(name, _)| names.insert(name)) {
        return Err((
            codes::INVALID_REQUEST,
            "Error due to duplicate config keys".to_string(),
        ));
    }
    let nulls: Vec<&str> = entries
        .filter(|&(_, null)| null)
        .map(|(name, _)| name)
        .collect();
    if nulls.is_empty() {
        return Ok(());
    }
    // As Kafka words it; a key echoed in part when long, and the list cut
    // short, so that a request of many such entries does not make a message
    // of its size.
    let mut listed: Vec<String> = nulls
        .iter()
        .take(LISTED_NULLS)
        .map(|n| {
            let plain = n.chars().count() <= 64 && !n.chars().any(char::is_control);
            if plain {
                (*n).to_string()
            } else {
                topic_config::Echo(n).to_string()
            }
        })
        .collect();
    if nulls.len() > LISTED_NULLS {
        listed.push(format!("… ({} more)", nulls.len() - LISTED_NULLS));
    }
    Err((
        codes::INVALID_REQUEST,
        format!("Null value not supported for : {}", listed.join(", ")),
    ))
}

/// AlterConfigs: replaces a topic's overrides with exactly the pairs given (keys
/// left out return to the broker's setting), as Kafka's legacy API does; an
/// entry without a value, or a key named twice, refuses the resource (see
/// [`preprocess`]).
pub(crate) async fn alter_configs(ctx: &Ctx, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let dups = duplicates(
        req.resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.as_str())),
    );
    let mut responses = Vec::new();
    for r in req.resources {
        let name = r.resource_name.to_string();
        let dup = dups.contains(&(r.resource_type, name.clone()));
        let mut outcome = if dup {
            alterable(r.resource_type, &name, dup)
        } else {
            preprocess(
                r.configs
                    .iter()
                    .map(|c| (c.name.as_str(), c.value.is_none())),
            )
            .and_then(|()| alterable(r.resource_type, &name, dup))
        };
        if outcome.is_ok() {
            let pairs: Vec<(String, Option<String>)> = r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.value.as_ref().map(ToString::to_string),
                    )
                })
                .collect();
            outcome = alter_topic(ctx, &name, req.validate_only, move || {
                let configs = TopicConfig::from_pairs(pairs)?;
                Ok(move |_: &TopicConfig| Ok(configs))
            })
            .await;
        }
        let (code, message) = split(outcome);
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

fn split(outcome: Outcome) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (codes::NONE, None),
        Err((code, m)) => (code, Some(StrBytes::from_string(m))),
    }
}

/// One IncrementalAlterConfigs operation.
struct Op {
    name: String,
    op: i8,
    value: Option<String>,
}

/// One IncrementalAlterConfigs operation, checked.
#[derive(Debug)]
enum Change {
    /// Override the key with the value (as it is stored).
    Set(String, String),
    /// Remove the key's override.
    Delete(String),
    /// Add the policies named (each once, in the order given) to the end of
    /// `cleanup.policy`, those it does not list already, as Kafka appends.
    Append(Vec<&'static str>),
    /// Remove the policies named from `cleanup.policy`.
    Subtract(Vec<&'static str>),
}

/// The policies `cleanup.policy` may list.
const POLICIES: [&str; 2] = ["compact", "delete"];

/// Checks `ops` (all of them, on their own; [`preprocess`] has refused a key
/// named twice): what they ask is refused here or
/// becomes [`Change`]s that [`apply_changes`] cannot refuse but for what the
/// current configuration makes of them (a `cleanup.policy` left empty).
///
/// An APPEND to `cleanup.policy` is checked a value at a time and refused at
/// the first that is not a policy, so that the work is linear in the value
/// however long it is, and a list is never built of it. A SUBTRACT of a value
/// the list does not hold removes nothing, as in Kafka.
fn parse_ops(ops: &[Op]) -> Result<Vec<Change>, AlterError> {
    ops.iter()
        .map(|o| {
            let value = || {
                o.value.as_deref().ok_or_else(|| {
                    AlterError::InvalidRequest(format!(
                        "config {} is given without a value",
                        topic_config::Echo(&o.name)
                    ))
                })
            };
            match o.op {
                SET => {
                    let v = topic_config::normalise(&o.name, value()?)?;
                    Ok(Change::Set(o.name.clone(), v))
                }
                // A key without an override here, unknown ones included, is
                // left as it is: Kafka answers the DELETE of a config a topic
                // does not hold with NONE.
                DELETE => Ok(Change::Delete(o.name.clone())),
                APPEND | SUBTRACT => {
                    if !topic_config::is_known(&o.name) {
                        return Err(ConfigError::Unknown(o.name.clone()).into());
                    }
                    if o.name != "cleanup.policy" {
                        // INVALID_CONFIG, as Kafka answers it.
                        return Err(ConfigError::Invalid {
                            key: o.name.clone(),
                            value: value()?.to_string(),
                            accepted:
                                "APPEND and SUBTRACT apply to list configs only (cleanup.policy)",
                        }
                        .into());
                    }
                    let mut named = Vec::with_capacity(POLICIES.len());
                    for v in value()?.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                        match topic_config::normalise(&o.name, v) {
                            Ok(p) => {
                                if let Some(p) = POLICIES.into_iter().find(|x| *x == p) {
                                    if !named.contains(&p) {
                                        named.push(p);
                                    }
                                }
                            }
                            Err(e) if o.op == APPEND => return Err(e.into()),
                            Err(_) => {}
                        }
                    }
                    Ok(if o.op == APPEND {
                        Change::Append(named)
                    } else {
                        Change::Subtract(named)
                    })
                }
                other => Err(AlterError::InvalidRequest(format!(
                    "unknown config operation {other} (SET 0, DELETE 1, APPEND 2, SUBTRACT 3)"
                ))),
            }
        })
        .collect()
}

/// Applies `changes` to `current`, all or nothing.
fn apply_changes(current: &TopicConfig, changes: &[Change]) -> Result<TopicConfig, AlterError> {
    let mut c = current.clone();
    for change in changes {
        match change {
            Change::Set(key, value) => c.set(key, value)?,
            Change::Delete(key) if topic_config::is_known(key) => c.remove(key)?,
            Change::Delete(_) => {}
            Change::Append(named) | Change::Subtract(named) => {
                // The broker's cleanup.policy is always delete.
                let now = c.get("cleanup.policy").unwrap_or("delete").to_string();
                let mut list: Vec<&str> = now.split(',').collect();
                if let Change::Append(_) = change {
                    for p in named {
                        if !list.contains(p) {
                            list.push(p);
                        }
                    }
                } else {
                    list.retain(|p| !named.contains(p));
                }
                c.set("cleanup.policy", &list.join(","))?;
            }
        }
    }
    Ok(c)
}

/// Applies `ops` to `current`, all or nothing.
#[cfg(test)]
fn apply_ops(current: &TopicConfig, ops: &[Op]) -> Result<TopicConfig, AlterError> {
    apply_changes(current, &parse_ops(ops)?)
}

/// IncrementalAlterConfigs: sets, deletes, appends to or subtracts from single
/// keys of a topic's overrides, leaving the others as they are.
pub(crate) async fn incremental_alter_configs(
    ctx: &Ctx,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let dups = duplicates(
        req.resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.as_str())),
    );
    let mut responses = Vec::new();
    for r in req.resources {
        let name = r.resource_name.to_string();
        let dup = dups.contains(&(r.resource_type, name.clone()));
        let mut outcome = if dup {
            alterable(r.resource_type, &name, dup)
        } else {
            let entries = r.configs.iter().map(|c| {
                let null = c.value.is_none() && c.config_operation != DELETE;
                (c.name.as_str(), null)
            });
            preprocess(entries).and_then(|()| alterable(r.resource_type, &name, dup))
        };
        if outcome.is_ok() {
            let ops: Vec<Op> = r
                .configs
                .iter()
                .map(|c| Op {
                    name: c.name.to_string(),
                    op: c.config_operation,
                    value: c.value.as_ref().map(ToString::to_string),
                })
                .collect();
            outcome = alter_topic(ctx, &name, req.validate_only, move || {
                let changes = parse_ops(&ops)?;
                Ok(move |current: &TopicConfig| apply_changes(current, &changes))
            })
            .await;
        }
        let (code, message) = split(outcome);
        responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_entries_show_each_setting_and_whether_it_was_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.failed_authentication_delay_ms = 250;
        let ctx = crate::server::tests::ctx_with(dir.path(), config).await;
        let entries = broker_entries(&ctx);
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} is described"))
        };
        let delay = find("connection.failed.authentication.delay.ms");
        assert_eq!(
            (delay.value.as_str(), delay.source),
            ("250", STATIC_BROKER_CONFIG)
        );
        let idle = find("connections.max.idle.ms");
        assert_eq!(
            (idle.value.as_str(), idle.source),
            ("600000", DEFAULT_CONFIG)
        );
        // Derived from settings left alone: a default, as it was not always
        // (every topic showed max.message.bytes as set by the broker).
        let largest = find("message.max.bytes");
        assert_eq!(
            (largest.value.clone(), largest.source),
            (default_max_message_bytes().to_string(), DEFAULT_CONFIG)
        );
        let topic = topic_entries(&ctx, &TopicConfig::default());
        let of_topic = topic
            .iter()
            .find(|e| e.name == "max.message.bytes")
            .unwrap();
        assert_eq!(of_topic.source, DEFAULT_CONFIG);
        let mut smaller = Config::default();
        smaller.server.max_request_bytes = 1 << 20;
        let dir2 = tempfile::tempdir().unwrap();
        let ctx2 = crate::server::tests::ctx_with(dir2.path(), smaller).await;
        let set = broker_entries(&ctx2)
            .into_iter()
            .find(|e| e.name == "message.max.bytes")
            .unwrap();
        assert_eq!(
            (set.value.clone(), set.source),
            (
                ((1 << 20) - PRODUCE_FRAMING).to_string(),
                STATIC_BROKER_CONFIG
            )
        );
        let mut names: Vec<&str> = entries.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), entries.len(), "each name once");

        // A flag given with the default's value is set all the same, as
        // Kafka reports a `server.properties` line equal to the default;
        // before, the value alone decided.
        let given = Config {
            given: ["--segment-bytes", "--max-request-bytes"]
                .map(String::from)
                .into(),
            ..Config::default()
        };
        let dir3 = tempfile::tempdir().unwrap();
        let ctx3 = crate::server::tests::ctx_with(dir3.path(), given).await;
        let broker = broker_entries(&ctx3);
        for name in [
            "log.segment.bytes",
            "socket.request.max.bytes",
            "message.max.bytes",
        ] {
            let e = broker.iter().find(|e| e.name == name).unwrap();
            assert_eq!(e.source, STATIC_BROKER_CONFIG, "{name}");
        }
        assert_eq!(
            broker
                .iter()
                .find(|e| e.name == "log.roll.ms")
                .unwrap()
                .source,
            DEFAULT_CONFIG
        );
        let topic = topic_entries(&ctx3, &TopicConfig::default());
        let segment = topic.iter().find(|e| e.name == "segment.bytes").unwrap();
        assert_eq!(segment.source, STATIC_BROKER_CONFIG);
        assert_eq!(
            segment.broker.as_ref().map(|b| b.2),
            Some(STATIC_BROKER_CONFIG)
        );
    }

    /// `message.max.bytes` was `--max-request-bytes` itself without the WAL
    /// (or with WAL entries larger than a frame), but a Produce carrying a
    /// batch of that size is a larger frame: its connection was closed, and
    /// librdkafka resent it forever. Encoded as clients encode it, in every
    /// version the broker serves, with the longest client id and topic name,
    /// a batch of the advertised size now fits in the frame, with only a few
    /// bytes to spare.
    #[test]
    fn a_produce_of_a_batch_of_message_max_bytes_fits_in_a_request_frame() {
        use kafka_protocol::{
            messages::{
                produce_request::{PartitionProduceData, TopicProduceData},
                ApiKey, ProduceRequest, RequestHeader, TopicName,
            },
            protocol::Encodable,
        };
        let (_, low, high) = crate::server::supported_apis()
            .into_iter()
            .find(|(key, ..)| *key == ApiKey::Produce)
            .unwrap();
        let client_id = StrBytes::from_string("c".repeat(i16::MAX as usize));
        let topic = TopicName(StrBytes::from_string(
            "t".repeat(crate::storage::MAX_TOPIC_NAME),
        ));
        // The number docs/broker.md gives (`--max-request-bytes`).
        assert_eq!(PRODUCE_FRAMING, 33057);
        for frame in [1 << 20, Config::default().server.max_request_bytes as u64] {
            let largest = largest_batch(frame, None);
            assert_eq!(largest_batch(frame, Some(1 << 30)), largest);
            let batch = bytes::Bytes::from(vec![0u8; largest as usize]);
            for version in low..=high {
                let request = ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(30_000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic.clone())
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch.clone()))])]);
                let mut buf = bytes::BytesMut::new();
                RequestHeader::default()
                    .with_request_api_key(ApiKey::Produce as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(i32::MAX)
                    .with_client_id(Some(client_id.clone()))
                    .encode(&mut buf, ApiKey::Produce.request_header_version(version))
                    .unwrap();
                request.encode(&mut buf, version).unwrap();
                // The length `--max-request-bytes` limits: after the frame's
                // own 4-byte length, which is not encoded here.
                let len = buf.len() as u64;
                assert!(
                    len <= frame,
                    "Produce v{version}: a frame of {len} bytes past the limit of {frame}"
                );
                assert!(
                    frame - len <= 16,
                    "Produce v{version}: {} bytes to spare in a frame of {frame}",
                    frame - len
                );
            }
        }
    }

    /// A synonym as the test below reads it: name, value, source.
    type Synonym = (String, String, i8);

    /// DescribeConfigs listed no synonyms, even when asked
    /// (`kafka-configs.sh --describe` asks): tools that show where a topic's
    /// value comes from, or what the broker's would be, saw nothing. Each
    /// entry now lists them as Kafka does, highest precedence first: the
    /// topic's own value, then the broker's setting under its broker-level
    /// name; a broker's entry lists itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_configs_lists_synonyms_when_asked() {
        use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.retention_ms = Some(7_200_000);
        let ctx = crate::server::tests::ctx_with(dir.path(), config).await;
        let overrides = TopicConfig::from_pairs([("retention.ms", Some("1000"))]).unwrap();
        ctx.storage.create_topic_with("t", 1, overrides).unwrap();
        let describe = |kind: i8, name: &str, include_synonyms: bool| {
            let req = DescribeConfigsRequest::default()
                .with_include_synonyms(include_synonyms)
                .with_resources(vec![DescribeConfigsResource::default()
                    .with_resource_type(kind)
                    .with_resource_name(StrBytes::from_string(name.to_string()))]);
            let r = describe_configs(&ctx, &req);
            assert_eq!(r.results[0].error_code, codes::NONE);
            r.results[0]
                .configs
                .iter()
                .map(|c| {
                    let synonyms: Vec<Synonym> = c
                        .synonyms
                        .iter()
                        .map(|s| {
                            (
                                s.name.to_string(),
                                s.value.as_ref().unwrap().to_string(),
                                s.source,
                            )
                        })
                        .collect();
                    (c.name.to_string(), synonyms)
                })
                .collect::<Vec<_>>()
        };
        let of = |entries: &[(String, Vec<Synonym>)], name: &str| {
            entries.iter().find(|(n, _)| n == name).unwrap().1.clone()
        };
        let s = |n: &str, v: &str, source: i8| (n.to_string(), v.to_string(), source);
        let topic = describe(TOPIC, "t", true);
        // No documentation, and no error message, is null (an empty string
        // before, which Java's AdminClient showed as empty text).
        for include_documentation in [false, true] {
            let req = DescribeConfigsRequest::default()
                .with_include_documentation(include_documentation)
                .with_resources(vec![DescribeConfigsResource::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(StrBytes::from_static_str("t"))]);
            let r = describe_configs(&ctx, &req);
            assert_eq!(r.results[0].error_message, None);
            assert!(!r.results[0].configs.is_empty());
            assert!(r.results[0]
                .configs
                .iter()
                .all(|c| c.documentation.is_none()));
        }
        assert_eq!(
            of(&topic, "retention.ms"),
            [
                s("retention.ms", "1000", DYNAMIC_TOPIC_CONFIG),
                s("log.retention.ms", "7200000", STATIC_BROKER_CONFIG)
            ]
        );
        let segment_bytes = Config::default().storage.segment_bytes.to_string();
        assert_eq!(
            of(&topic, "segment.bytes"),
            [s("log.segment.bytes", &segment_bytes, DEFAULT_CONFIG)]
        );
        assert!(topic.iter().all(|(_, synonyms)| !synonyms.is_empty()));
        assert!(describe(TOPIC, "t", false)
            .iter()
            .all(|(_, synonyms)| synonyms.is_empty()));
        let node = ctx.storage.meta().node_id.to_string();
        let broker = describe(BROKER, &node, true);
        assert_eq!(
            of(&broker, "log.retention.ms"),
            [s("log.retention.ms", "7200000", STATIC_BROKER_CONFIG)]
        );
        assert!(broker
            .iter()
            .all(|(name, synonyms)| synonyms.len() == 1 && &synonyms[0].0 == name));
    }

    /// A topic resource named as no topic can be was answered
    /// UNKNOWN_TOPIC_OR_PARTITION by DescribeConfigs and AlterConfigs (the
    /// Java client: "This server does not host this topic-partition"). Kafka
    /// judges the name first: INVALID_TOPIC_EXCEPTION, and INVALID_REQUEST
    /// for an alter of the empty name (the default topic resource). A
    /// missing topic of a valid name is still unknown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_resource_of_an_invalid_name_is_an_invalid_topic() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let long = "t".repeat(250);
        let names = ["a/b", "", long.as_str(), "missing"];
        let describe = DescribeConfigsRequest::default().with_resources(
            names
                .iter()
                .map(|n| {
                    kafka_protocol::messages::describe_configs_request::DescribeConfigsResource::default()
                        .with_resource_type(TOPIC)
                        .with_resource_name(StrBytes::from_string((*n).to_string()))
                })
                .collect(),
        );
        let codes_of = |r: &DescribeConfigsResponse| -> Vec<i16> {
            r.results.iter().map(|r| r.error_code).collect()
        };
        let invalid = codes::INVALID_TOPIC_EXCEPTION;
        assert_eq!(
            codes_of(&describe_configs(&ctx, &describe)),
            [invalid, invalid, invalid, codes::UNKNOWN_TOPIC_OR_PARTITION]
        );
        let r = alter_configs(
            &ctx,
            legacy_request(
                &names
                    .iter()
                    .map(|n| (*n, &[("retention.ms", Some("1000"))][..]))
                    .collect::<Vec<_>>(),
            ),
        )
        .await;
        let got: Vec<i16> = r.responses.iter().map(|r| r.error_code).collect();
        assert_eq!(
            got,
            [
                invalid,
                codes::INVALID_REQUEST,
                invalid,
                codes::UNKNOWN_TOPIC_OR_PARTITION
            ]
        );
    }

    /// A topic resource of a legacy AlterConfigs: its name, and its entries
    /// `(key, value)`.
    type Resource<'a> = (&'a str, &'a [(&'a str, Option<&'a str>)]);

    /// A legacy AlterConfigs of topic resources.
    fn legacy_request(resources: &[Resource<'_>]) -> AlterConfigsRequest {
        use kafka_protocol::messages::alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        AlterConfigsRequest::default().with_resources(
            resources
                .iter()
                .map(|(name, entries)| {
                    AlterConfigsResource::default()
                        .with_resource_type(TOPIC)
                        .with_resource_name(StrBytes::from_string((*name).to_string()))
                        .with_configs(
                            entries
                                .iter()
                                .map(|(k, v)| {
                                    AlterableConfig::default()
                                        .with_name(StrBytes::from_string((*k).to_string()))
                                        .with_value(v.map(|v| StrBytes::from_string(v.to_string())))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    /// An IncrementalAlterConfigs resource with a key named twice, or a null
    /// value for an operation other than DELETE, was judged after its topic
    /// was looked up (an unknown one answered UNKNOWN_TOPIC_OR_PARTITION) and
    /// with messages of this broker's naming one key. Kafka's preprocessing
    /// refuses both first, with INVALID_REQUEST and the messages a legacy
    /// AlterConfigs gets, listing every null key; a DELETE without a value is
    /// no null.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_incremental_alter_with_a_null_value_or_a_key_twice_is_refused_before_the_topic_is_looked_up(
    ) {
        use kafka_protocol::messages::incremental_alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        type Entry<'a> = (&'a str, i8, Option<&'a str>);
        let resource = |name: &str, entries: &[Entry<'_>]| {
            AlterConfigsResource::default()
                .with_resource_type(TOPIC)
                .with_resource_name(StrBytes::from_string(name.to_string()))
                .with_configs(
                    entries
                        .iter()
                        .map(|(k, op, v)| {
                            AlterableConfig::default()
                                .with_name(StrBytes::from_string((*k).to_string()))
                                .with_config_operation(*op)
                                .with_value(v.map(|v| StrBytes::from_string(v.to_string())))
                        })
                        .collect(),
                )
        };
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            resource(
                "no-such-topic",
                &[
                    ("retention.ms", SET, None),
                    ("cleanup.policy", APPEND, None),
                ],
            ),
            resource(
                "no-such-topic2",
                &[
                    ("retention.ms", SET, Some("1")),
                    ("retention.ms", DELETE, None),
                ],
            ),
            resource(
                "t",
                &[
                    ("retention.ms", SET, Some("1000")),
                    ("segment.ms", DELETE, None),
                ],
            ),
            resource("no-such-topic3", &[("segment.ms", DELETE, None)]),
        ]);
        let r = incremental_alter_configs(&ctx, req).await;
        let answers: Vec<(i16, Option<String>)> = r
            .responses
            .iter()
            .map(|a| {
                (
                    a.error_code,
                    a.error_message.as_ref().map(ToString::to_string),
                )
            })
            .collect();
        assert_eq!(
            answers[..3],
            [
                (
                    codes::INVALID_REQUEST,
                    Some("Null value not supported for : retention.ms, cleanup.policy".into())
                ),
                (
                    codes::INVALID_REQUEST,
                    Some("Error due to duplicate config keys".into())
                ),
                (codes::NONE, None),
            ]
        );
        assert_eq!(answers[3].0, codes::UNKNOWN_TOPIC_OR_PARTITION);
        assert_eq!(
            ctx.storage.topic("t").unwrap().configs.get("retention.ms"),
            Some("1000")
        );
    }

    /// A legacy AlterConfigs entry with a null value was refused with
    /// INVALID_CONFIG ("has no value"), on which the Java AdminClient raises
    /// InvalidConfigurationException. Kafka's broker refuses it too, before it
    /// looks at the resource, with INVALID_REQUEST and "Null value not
    /// supported for : <keys>"; a key named twice it refuses likewise ("Error
    /// due to duplicate config keys"), where the last value was taken. Neither
    /// changes the topic; the other resources of the request are altered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_legacy_alter_with_a_null_value_or_a_key_twice_is_refused_as_kafka_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        for t in ["t", "u"] {
            ctx.storage.create_topic(t, 1).unwrap();
        }
        let before = TopicConfig::from_pairs([("retention.ms", Some("1000"))]).unwrap();
        let r = alter_configs(
            &ctx,
            legacy_request(&[("t", &[("retention.ms", Some("1000"))])]),
        )
        .await;
        assert_eq!(r.responses[0].error_code, codes::NONE);

        let answers = |r: &AlterConfigsResponse| -> Vec<(i16, Option<String>)> {
            r.responses
                .iter()
                .map(|a| {
                    (
                        a.error_code,
                        a.error_message.as_ref().map(ToString::to_string),
                    )
                })
                .collect()
        };
        let r = alter_configs(
            &ctx,
            legacy_request(&[
                (
                    "t",
                    &[
                        ("retention.ms", None),
                        ("segment.bytes", Some("8192")),
                        ("cleanup.policy", None),
                    ],
                ),
                ("u", &[("segment.bytes", Some("8192"))]),
                // Before the topic is looked up, as Kafka's preprocessing.
                ("no-such-topic", &[("retention.ms", None)]),
                (
                    "t2",
                    &[
                        ("segment.bytes", Some("8192")),
                        ("segment.bytes", Some("4096")),
                    ],
                ),
            ]),
        )
        .await;
        assert_eq!(
            answers(&r),
            [
                (
                    codes::INVALID_REQUEST,
                    Some("Null value not supported for : retention.ms, cleanup.policy".into())
                ),
                (codes::NONE, None),
                (
                    codes::INVALID_REQUEST,
                    Some("Null value not supported for : retention.ms".into())
                ),
                (
                    codes::INVALID_REQUEST,
                    Some("Error due to duplicate config keys".into())
                ),
            ]
        );
        assert_eq!(ctx.storage.topic("t").unwrap().configs, before);
        assert_eq!(
            ctx.storage.topic("u").unwrap().configs.get("segment.bytes"),
            Some("8192")
        );
        // A duplicate key is refused on a topic that exists too, leaving it as it was.
        let r = alter_configs(
            &ctx,
            legacy_request(&[(
                "t",
                &[("retention.ms", Some("5")), ("retention.ms", Some("6"))],
            )]),
        )
        .await;
        assert_eq!(r.responses[0].error_code, codes::INVALID_REQUEST);
        assert_eq!(ctx.storage.topic("t").unwrap().configs, before);

        // The list of keys is bounded, each key echoed in part when long.
        let long = "k".repeat(100);
        let mut entries: Vec<(String, Option<&str>)> =
            (0..40).map(|i| (format!("key.{i}"), None)).collect();
        entries.insert(0, (long.clone(), None));
        let entries: Vec<(&str, Option<&str>)> =
            entries.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let r = alter_configs(&ctx, legacy_request(&[("t", &entries)])).await;
        let m = r.responses[0].error_message.as_ref().unwrap().to_string();
        assert!(
            m.starts_with("Null value not supported for : \"kkk")
                && m.contains("(100 bytes)")
                && m.contains(", key.14, … (25 more)")
                && !m.contains(&long),
            "{m}"
        );
    }

    fn op(name: &str, op: i8, value: Option<&str>) -> Op {
        Op {
            name: name.into(),
            op,
            value: value.map(Into::into),
        }
    }

    #[test]
    fn incremental_operations_apply_all_or_nothing() {
        let base = TopicConfig::from_pairs([("retention.ms", Some("1000"))]).unwrap();
        let c = apply_ops(
            &base,
            &[
                op("retention.ms", DELETE, None),
                op("segment.bytes", SET, Some("8192")),
                op("cleanup.policy", APPEND, Some("delete")),
            ],
        )
        .unwrap();
        assert_eq!(c.get("retention.ms"), None);
        assert_eq!(c.get("segment.bytes"), Some("8192"));
        assert_eq!(
            c.get("cleanup.policy"),
            Some("delete"),
            "already in the list"
        );

        // Appended at the end, as Kafka appends (the list was stored sorted).
        let both = apply_ops(&base, &[op("cleanup.policy", APPEND, Some("compact"))]).unwrap();
        assert_eq!(both.get("cleanup.policy"), Some("delete,compact"));
        let compact = apply_ops(&both, &[op("cleanup.policy", SUBTRACT, Some("delete"))]).unwrap();
        assert_eq!(compact.get("cleanup.policy"), Some("compact"));

        let refused = |ops: &[Op]| apply_ops(&base, ops).unwrap_err();
        assert!(matches!(
            refused(&[op("cleanup.policy", APPEND, Some("archive"))]),
            AlterError::Invalid(_)
        ));
        assert!(matches!(
            refused(&[op("cleanup.policy", SUBTRACT, Some("delete"))]),
            AlterError::Invalid(_)
        ));
        // As Kafka answers: INVALID_CONFIG for an APPEND to a key that is not
        // a list; a DELETE of a key the topic does not hold (unknown ones
        // too) leaves it as it is.
        let not_a_list = refused(&[op("retention.ms", APPEND, Some("5"))]);
        assert!(
            matches!(&not_a_list, AlterError::Invalid(e @ ConfigError::Invalid { key, .. })
                if key == "retention.ms" && e.to_string().contains("list configs only")),
            "{not_a_list:?}"
        );
        let deleted = apply_ops(
            &base,
            &[
                op("no.such", DELETE, None),
                op("segment.bytes", SET, Some("8192")),
            ],
        )
        .unwrap();
        assert_eq!(deleted.get("segment.bytes"), Some("8192"));
        assert_eq!(deleted.get("retention.ms"), Some("1000"));
        assert!(matches!(
            refused(&[op("no.such", SUBTRACT, Some("x"))]),
            AlterError::Invalid(ConfigError::Unknown(_))
        ));
        assert!(matches!(
            refused(&[op("retention.ms", 7, Some("5"))]),
            AlterError::InvalidRequest(m) if m.contains("operation 7")
        ));
        assert!(matches!(
            refused(&[op("retention.ms", SET, None)]),
            AlterError::InvalidRequest(m) if m.contains("without a value")
        ));
        // A key named twice is refused before (see `preprocess`).
    }

    /// An APPEND to cleanup.policy is refused at its first value that is not a
    /// policy. Each value used to be looked for in the list built so far, and
    /// the list checked only at the end: 200,000 values (1.4 MB) took a minute,
    /// under the lock every topic create, delete and growth waits for.
    #[test]
    fn an_append_of_many_values_is_refused_at_the_first_that_is_no_policy() {
        let tokens: Vec<String> = (0..200_000u32)
            .map(|mut i| {
                (0..6)
                    .map(|_| {
                        let c = char::from(b'a' + (i % 26) as u8);
                        i /= 26;
                        c
                    })
                    .collect()
            })
            .collect();
        let value = format!("delete,COMPACT,{}", tokens.join(","));
        let e = apply_ops(
            &TopicConfig::default(),
            &[op("cleanup.policy", APPEND, Some(&value))],
        )
        .unwrap_err();
        match &e {
            AlterError::Invalid(ConfigError::Invalid { key, value, .. }) => {
                assert_eq!(key, "cleanup.policy");
                assert_eq!(
                    value.len(),
                    6,
                    "the value refused is the first that is no policy, not a list of {} bytes",
                    value.len()
                );
                assert_eq!(value, "aaaaaa");
            }
            other => panic!(
                "refused otherwise: {}",
                format!("{other:?}").chars().take(200).collect::<String>()
            ),
        }

        // A SUBTRACT of values the list does not hold removes nothing (as in
        // Kafka); it costs the same per value.
        let both = TopicConfig::from_pairs([("cleanup.policy", Some("compact,delete"))]).unwrap();
        let value = format!("{},Delete", tokens.join(","));
        let c = apply_ops(&both, &[op("cleanup.policy", SUBTRACT, Some(&value))]).unwrap();
        assert_eq!(c.get("cleanup.policy"), Some("compact"));
    }
}
