//! DescribeConfigs: the configuration in force, read-only, under Kafka's names, for
//! a topic (every topic has the broker's settings: there are no per-topic
//! overrides) or for this broker. Admin tools (`kafka-topics --describe`,
//! `kafka-configs --describe`, AdminClient `describe_configs`) ask for it.

use kafka_protocol::{
    messages::{
        describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
        DescribeConfigsRequest, DescribeConfigsResponse,
    },
    protocol::StrBytes,
};

use crate::{
    config::Config,
    server::{codes, Ctx},
};

/// Resource types (Kafka's `ConfigResource.Type`).
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Where a value comes from (Kafka's `ConfigSource`).
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// Value types (Kafka's `ConfigType`).
const BOOLEAN: i8 = 1;
const STRING: i8 = 2;
const INT: i8 = 3;
const LONG: i8 = 5;

/// One configuration entry: name, value, type, and whether the value is the
/// built-in default (else it was set on the command line or in the environment).
struct Entry {
    name: &'static str,
    value: String,
    kind: i8,
    default: bool,
}

fn entry(name: &'static str, value: impl ToString, kind: i8, default: bool) -> Entry {
    Entry {
        name,
        value: value.to_string(),
        kind,
        default,
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

/// The largest record batch a produce may carry: one WAL entry less its framing
/// (with the WAL enabled; the framing counted for the longest topic name), within
/// one request frame.
fn max_message_bytes(ctx: &Ctx) -> u64 {
    let frame = ctx.storage.config().server.max_request_bytes as u64;
    ctx.storage.wal().map_or(frame, |w| {
        w.max_entry_bytes()
            .saturating_sub(
                crate::storage::WAL_ENTRY_OVERHEAD + crate::storage::MAX_TOPIC_NAME as u64,
            )
            .min(frame)
    })
}

/// A topic's configuration: the broker's settings under the topic-level names.
fn topic_entries(ctx: &Ctx) -> Vec<Entry> {
    let c = ctx.storage.config();
    let d = Config::default();
    let s = &c.storage;
    vec![
        entry("cleanup.policy", "delete", STRING, true),
        entry("compression.type", "producer", STRING, true),
        entry("max.message.bytes", max_message_bytes(ctx), INT, false),
        entry("message.timestamp.type", "CreateTime", STRING, true),
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
    ]
}

/// The broker's configuration under Kafka's broker-level names.
fn broker_entries(ctx: &Ctx) -> Vec<Entry> {
    let c = ctx.storage.config();
    let d = Config::default();
    let (s, ds) = (&c.storage, &d.storage);
    let (g, dg) = (&c.groups, &d.groups);
    let (v, dv) = (&c.server, &d.server);
    vec![
        setting(
            "auto.create.topics.enable",
            s.auto_create_topics,
            ds.auto_create_topics,
            BOOLEAN,
        ),
        entry("broker.id", ctx.storage.meta().node_id, INT, true),
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
        setting("log.segment.bytes", s.segment_bytes, ds.segment_bytes, INT),
        entry("message.max.bytes", max_message_bytes(ctx), INT, false),
        setting(
            "num.partitions",
            s.default_partitions,
            ds.default_partitions,
            INT,
        ),
        setting(
            "socket.request.max.bytes",
            v.max_request_bytes,
            dv.max_request_bytes,
            INT,
        ),
    ]
}

fn result(resource_type: i8, name: StrBytes) -> DescribeConfigsResult {
    DescribeConfigsResult::default()
        .with_resource_type(resource_type)
        .with_resource_name(name)
}

pub(crate) fn describe_configs(ctx: &Ctx, req: &DescribeConfigsRequest) -> DescribeConfigsResponse {
    let node = ctx.storage.meta().node_id.to_string();
    let results = req
        .resources
        .iter()
        .map(|r| {
            let out = result(r.resource_type, r.resource_name.clone());
            let name = r.resource_name.as_str();
            let entries = match r.resource_type {
                TOPIC if ctx.storage.topic(name).is_some() => topic_entries(ctx),
                TOPIC => {
                    return out
                        .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "unknown topic {name}"
                        ))))
                }
                // The empty name asks for the cluster-wide defaults, which are
                // this broker's.
                BROKER if name.is_empty() || name == node => broker_entries(ctx),
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
                .filter(|e| {
                    r.configuration_keys
                        .as_ref()
                        .is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name))
                })
                .map(|e| {
                    DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_static_str(e.name))
                        .with_value(Some(StrBytes::from_string(e.value)))
                        // Nothing can be altered: AlterConfigs is not supported.
                        .with_read_only(true)
                        .with_config_source(if e.default {
                            DEFAULT_CONFIG
                        } else {
                            STATIC_BROKER_CONFIG
                        })
                        .with_is_sensitive(false)
                        .with_config_type(e.kind)
                })
                .collect();
            out.with_error_code(codes::NONE).with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
