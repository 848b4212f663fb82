//! Per-topic configuration: the overrides a topic was created or altered with,
//! under Kafka's topic-level names (`retention.ms`, `segment.bytes`, …), checked
//! before they are stored and kept in the topic's `topic.json`.
//!
//! A key this broker cannot honour is refused, never stored and ignored: an
//! unknown name, and a value a feature it lacks would need (broker-side
//! recompression, `LogAppendTime`, more than one in-sync replica).

use std::{collections::BTreeMap, fmt};

use crate::config::StorageConfig;

/// Why a topic configuration was refused (Kafka's `INVALID_CONFIG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Not a topic configuration this broker knows.
    Unknown(String),
    /// A value outside what the key accepts here.
    Invalid {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is accepted.
        accepted: &'static str,
    },
    /// A key given without a value.
    Missing(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unknown(k) => write!(
                f,
                "unknown or unsupported topic config {}; supported: {}",
                Echo(k),
                KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
            ),
            ConfigError::Invalid {
                key,
                value,
                accepted,
            } => write!(
                f,
                "invalid value {} for topic config {key}: {accepted}",
                Echo(value)
            ),
            ConfigError::Missing(k) => write!(f, "topic config {} has no value", Echo(k)),
        }
    }
}

/// The most characters of a refused key or value that a message repeats.
const ECHOED_CHARS: usize = 64;

/// A key or value from a client, as a message repeats it: quoted and escaped,
/// whole when it is at most [`ECHOED_CHARS`] characters, else its first ones
/// followed by `… (N bytes)`. Escaping makes a control character six (`\u{1f}`),
/// so a value echoed whole could make a message six times its size: one
/// refused 100 MiB value, some 600 MiB.
pub struct Echo<'a>(pub &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(ECHOED_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

impl std::error::Error for ConfigError {}

/// How a key's value is checked and normalised.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// An integer within the range, both ends included.
    Int(i64, i64, &'static str),
    /// Exactly this value (case-insensitive): the only one this broker honours.
    Only(&'static str, &'static str),
    /// A number from 0 to 1.
    Ratio(&'static str),
    /// `cleanup.policy`: `delete`, `compact`, or both (a comma-separated list).
    Policy(&'static str),
}

/// A topic configuration key this broker accepts.
#[derive(Debug, Clone, Copy)]
struct Key {
    name: &'static str,
    check: Check,
}

const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        check: Check::Policy("accepted: delete, compact, or both (compact,delete)"),
    },
    Key {
        name: "compression.type",
        check: Check::Only(
            "producer",
            "accepted: producer (batches are stored as the producer compressed them)",
        ),
    },
    Key {
        name: "delete.retention.ms",
        check: Check::Int(0, i64::MAX, "accepted values: 0 or more"),
    },
    Key {
        name: "max.message.bytes",
        check: Check::Int(0, i32::MAX as i64, "accepted values: 0 to 2147483647"),
    },
    Key {
        name: "message.timestamp.after.max.ms",
        check: Check::Int(0, i64::MAX, "accepted values: 0 or more"),
    },
    Key {
        name: "message.timestamp.before.max.ms",
        check: Check::Int(0, i64::MAX, "accepted values: 0 or more"),
    },
    Key {
        name: "message.timestamp.type",
        check: Check::Only(
            "CreateTime",
            "accepted: CreateTime (LogAppendTime is not supported)",
        ),
    },
    Key {
        name: "min.cleanable.dirty.ratio",
        check: Check::Ratio("accepted values: 0 to 1"),
    },
    Key {
        name: "min.compaction.lag.ms",
        check: Check::Int(0, i64::MAX, "accepted values: 0 or more"),
    },
    Key {
        name: "min.insync.replicas",
        check: Check::Int(
            1,
            1,
            "accepted: 1 (a single-node broker has one replica, so acks=all could never be met with more)",
        ),
    },
    Key {
        name: "retention.bytes",
        check: Check::Int(-1, i64::MAX, "accepted values: -1 (no limit) or 0 or more"),
    },
    Key {
        name: "retention.ms",
        check: Check::Int(-1, i64::MAX, "accepted values: -1 (forever) or 0 or more"),
    },
    Key {
        name: "segment.ms",
        check: Check::Int(1, i64::MAX, "accepted values: 1 or more"),
    },
    Key {
        name: "segment.bytes",
        check: Check::Int(4096, i32::MAX as i64, "accepted values: 4096 to 2147483647"),
    },
];

/// Whether `name` is a topic configuration key this broker accepts.
pub fn is_known(name: &str) -> bool {
    KEYS.iter().any(|k| k.name == name)
}

/// Checks `value` for `key` as [`TopicConfig::set`] does; returns the value as
/// it is stored.
///
/// # Errors
/// [`ConfigError`] for an unknown key or an invalid value.
pub fn normalise(key: &str, value: &str) -> Result<String, ConfigError> {
    let k = KEYS
        .iter()
        .find(|k| k.name == key)
        .ok_or_else(|| ConfigError::Unknown(key.to_string()))?;
    let v = value.trim();
    let invalid = |accepted| ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        accepted,
    };
    match k.check {
        Check::Int(lo, hi, accepted) => match v.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n.to_string()),
            _ => Err(invalid(accepted)),
        },
        Check::Only(only, accepted) => {
            if v.eq_ignore_ascii_case(only) {
                Ok(only.to_string())
            } else {
                Err(invalid(accepted))
            }
        }
        Check::Ratio(accepted) => match v.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r.to_string()),
            _ => Err(invalid(accepted)),
        },
        Check::Policy(accepted) => {
            // Each policy once, in the order given: Kafka describes the list
            // as it was set, and a tool comparing what it set with what is
            // described sees no difference.
            let mut listed: Vec<&str> = Vec::with_capacity(2);
            for p in v.split(',').map(str::trim) {
                let p = ["compact", "delete"]
                    .into_iter()
                    .find(|x| p.eq_ignore_ascii_case(x))
                    .ok_or_else(|| invalid(accepted))?;
                if !listed.contains(&p) {
                    listed.push(p);
                }
            }
            Ok(listed.join(","))
        }
    }
}

/// Kafka's default `delete.retention.ms` (`log.cleaner.delete.retention.ms`): one day.
pub const DEFAULT_DELETE_RETENTION_MS: u64 = 86_400_000;

/// Kafka's default `min.cleanable.dirty.ratio` (`log.cleaner.min.cleanable.ratio`).
pub const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO: f64 = 0.5;

/// A topic's configuration overrides; every key not overridden takes the
/// broker's setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    overrides: BTreeMap<String, String>,
}

impl TopicConfig {
    /// Checks every pair; the first refused one is the error. A key given twice
    /// keeps its last value, as Kafka's admin tools do.
    ///
    /// # Errors
    /// [`ConfigError`] for an unknown key, a missing value or an invalid one.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, Option<V>)>,
    ) -> Result<TopicConfig, ConfigError> {
        let mut c = TopicConfig::default();
        for (k, v) in pairs {
            let k = k.as_ref();
            let v = v.ok_or_else(|| ConfigError::Missing(k.to_string()))?;
            c.set(k, v.as_ref())?;
        }
        Ok(c)
    }

    /// Overrides `key` with `value`.
    ///
    /// # Errors
    /// [`ConfigError`] for an unknown key or an invalid value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let v = normalise(key, value)?;
        self.overrides.insert(key.to_string(), v);
        Ok(())
    }

    /// Removes the override of `key` (the broker's setting applies again).
    ///
    /// # Errors
    /// [`ConfigError::Unknown`] for a key this broker does not know.
    pub fn remove(&mut self, key: &str) -> Result<(), ConfigError> {
        if !is_known(key) {
            return Err(ConfigError::Unknown(key.to_string()));
        }
        self.overrides.remove(key);
        Ok(())
    }

    /// The override of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.overrides.get(key).map(String::as_str)
    }

    /// Every override, by key.
    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    fn long(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// Records older than this are deleted; `None`: kept forever.
    pub fn retention_ms(&self, broker: &StorageConfig) -> Option<u64> {
        self.long("retention.ms")
            .map_or(broker.retention_ms, |v| u64::try_from(v).ok())
    }

    /// The size each partition is trimmed to; `None`: no limit.
    pub fn retention_bytes(&self, broker: &StorageConfig) -> Option<u64> {
        self.long("retention.bytes")
            .map_or(broker.retention_bytes, |v| u64::try_from(v).ok())
    }

    /// Segment size at which a partition starts a new segment.
    pub fn segment_bytes(&self, broker: &StorageConfig) -> u64 {
        self.long("segment.bytes")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(broker.segment_bytes)
    }

    /// How much newer than the active segment's first batch appended records may
    /// be before the segment rolls.
    pub fn segment_ms(&self, broker: &StorageConfig) -> u64 {
        self.long("segment.ms")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(broker.roll_ms)
    }

    /// Whether the topic is compacted (`cleanup.policy` holds `compact`).
    pub fn compact(&self) -> bool {
        self.get("cleanup.policy")
            .is_some_and(|p| p.split(',').any(|p| p == "compact"))
    }

    /// Whether retention by age and size deletes the topic's old segments
    /// (`cleanup.policy` holds `delete`, the default).
    pub fn delete(&self) -> bool {
        self.get("cleanup.policy")
            .is_none_or(|p| p.split(',').any(|p| p == "delete"))
    }

    /// How long a tombstone stays readable once compaction could remove it.
    pub fn delete_retention_ms(&self) -> u64 {
        self.long("delete.retention.ms")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(DEFAULT_DELETE_RETENTION_MS)
    }

    /// How old a record must be before compaction may remove it.
    pub fn min_compaction_lag_ms(&self) -> u64 {
        self.long("min.compaction.lag.ms")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0)
    }

    /// The share of a compacted partition's bytes that must be new since its last
    /// compaction before it is compacted again.
    pub fn min_cleanable_dirty_ratio(&self) -> f64 {
        self.get("min.cleanable.dirty.ratio")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MIN_CLEANABLE_DIRTY_RATIO)
    }

    /// How far ahead of the broker's clock a produced record's timestamp may
    /// be (`message.timestamp.after.max.ms`; one hour unless overridden).
    pub fn timestamp_after_max_ms(&self) -> i64 {
        self.long("message.timestamp.after.max.ms")
            .unwrap_or(super::MAX_TIMESTAMP_AHEAD_MS)
    }

    /// How far behind the broker's clock a produced record's timestamp may be
    /// (`message.timestamp.before.max.ms`), when overridden: Kafka's default
    /// (`Long.MAX_VALUE`) sets no bound.
    pub fn timestamp_before_max_ms(&self) -> Option<i64> {
        self.long("message.timestamp.before.max.ms")
            .filter(|&v| v != i64::MAX)
    }

    /// The largest record batch a produce to this topic may carry, when
    /// overridden (the broker's own limit applies in any case).
    pub fn max_message_bytes(&self) -> Option<u64> {
        self.long("max.message.bytes")
            .and_then(|v| u64::try_from(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_and_normalised() {
        let c = TopicConfig::from_pairs([
            ("retention.ms", Some(" 60000")),
            ("cleanup.policy", Some("DELETE")),
            ("segment.bytes", Some("4096")),
            ("retention.bytes", Some("-1")),
            ("retention.ms", Some("120000")),
        ])
        .unwrap();
        assert_eq!(c.get("retention.ms"), Some("120000"));
        assert_eq!(c.get("cleanup.policy"), Some("delete"));
        let broker = crate::config::Config::default().storage;
        assert_eq!(c.retention_ms(&broker), Some(120_000));
        assert_eq!(c.retention_bytes(&broker), None);
        assert_eq!(c.segment_bytes(&broker), 4096);
        assert_eq!(c.max_message_bytes(), None);

        assert!(!c.compact() && c.delete());
        let both = TopicConfig::from_pairs([
            ("cleanup.policy", Some(" Delete , compact")),
            ("min.cleanable.dirty.ratio", Some("0.25")),
            ("delete.retention.ms", Some("0")),
        ])
        .unwrap();
        // In the order given, as Kafka describes it (it was stored sorted).
        assert_eq!(both.get("cleanup.policy"), Some("delete,compact"));
        assert!(both.compact() && both.delete());
        let twice = TopicConfig::from_pairs([("cleanup.policy", Some("compact,delete,compact"))]);
        assert_eq!(twice.unwrap().get("cleanup.policy"), Some("compact,delete"));
        assert_eq!(both.min_cleanable_dirty_ratio(), 0.25);
        assert_eq!(both.delete_retention_ms(), 0);
        let compact = TopicConfig::from_pairs([("cleanup.policy", Some("compact"))]).unwrap();
        assert!(compact.compact() && !compact.delete());
        assert_eq!(compact.delete_retention_ms(), DEFAULT_DELETE_RETENTION_MS);
        assert_eq!(compact.min_compaction_lag_ms(), 0);
        assert_eq!(compact.min_cleanable_dirty_ratio(), 0.5);

        let forever = TopicConfig::from_pairs([("retention.ms", Some("-1"))]).unwrap();
        assert_eq!(forever.retention_ms(&broker), None);
        let none = TopicConfig::default();
        assert_eq!(none.retention_ms(&broker), broker.retention_ms);
        assert_eq!(none.segment_bytes(&broker), broker.segment_bytes);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_the_reason() {
        let refused =
            |k: &str, v: Option<&str>| TopicConfig::from_pairs([(k, v)]).unwrap_err().to_string();
        assert!(refused("cleanup.policy", Some("compact,gzip")).contains("compact,delete"));
        assert!(refused("cleanup.policy", Some("")).contains("accepted: delete"));
        assert!(refused("min.cleanable.dirty.ratio", Some("1.5")).contains("0 to 1"));
        assert!(refused("delete.retention.ms", Some("-1")).contains("0 or more"));
        assert!(refused("min.insync.replicas", Some("2")).contains("one replica"));
        assert!(refused("compression.type", Some("gzip")).contains("accepted: producer"));
        assert!(refused("message.timestamp.type", Some("LogAppendTime")).contains("CreateTime"));
        assert!(refused("segment.bytes", Some("100")).contains("4096 to 2147483647"));
        assert!(refused("segment.bytes", Some("3000000000")).contains("4096 to"));
        assert!(refused("retention.ms", Some("-2")).contains("-1 (forever)"));
        assert!(refused("retention.ms", Some("soon")).contains("\"soon\""));
        assert!(refused("retention.ms", None).contains("has no value"));
        let unknown = refused("segment.jitter.ms", Some("1"));
        assert!(unknown.contains("\"segment.jitter.ms\"") && unknown.contains("retention.ms"));

        let mut c = TopicConfig::from_pairs([("retention.ms", Some("1000"))]).unwrap();
        assert!(c.set("retention.ms", "x").is_err());
        assert_eq!(
            c.get("retention.ms"),
            Some("1000"),
            "a refused value changes nothing"
        );
        assert!(c.remove("no.such.key").is_err());
        c.remove("retention.ms").unwrap();
        assert!(c.overrides().is_empty());
    }

    /// A refused value or key is repeated in the message only in part: escaped
    /// whole, a control character takes six bytes, and a value of 100 MiB of
    /// them made a message of 600 MiB.
    #[test]
    fn a_refused_value_is_echoed_in_part_when_long() {
        let long = "\x1f".repeat(1 << 20);
        for (key, value) in [("retention.ms", long.as_str()), (long.as_str(), "1")] {
            let m = TopicConfig::from_pairs([(key, Some(value))])
                .unwrap_err()
                .to_string();
            assert!(m.len() < 1024, "a message of {} bytes", m.len());
            assert!(m.contains("\\u{1f}\"… (1048576 bytes)"), "{m}");
        }
        let m = TopicConfig::from_pairs([("retention.ms", Some(long.as_str()))])
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("for topic config retention.ms: accepted values"),
            "{m}"
        );

        // Short ones, and one of exactly the echoed length, are echoed whole.
        let refused = |v: &str| {
            TopicConfig::from_pairs([("segment.bytes", Some(v))])
                .unwrap_err()
                .to_string()
        };
        assert!(refused("\x1f\n").contains("\"\\u{1f}\\n\""));
        let exact = "é".repeat(ECHOED_CHARS);
        assert!(refused(&exact).contains(&format!("{exact:?} for")));
        let over = format!("{exact}x");
        assert!(refused(&over).contains(&format!("{exact:?}… ({} bytes)", over.len())));
    }
}
