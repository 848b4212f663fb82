//! The broker with KafkaJS 2.2 (`tests/clients/kafkajs_client.js`), a client
//! written in JavaScript that shares no code with librdkafka: its admin client
//! (topics, configs, partitions, records, offsets by time), an idempotent gzip
//! producer, a consumer group that splits partitions, rebalances when a member
//! leaves and resumes from its committed offsets after a broker restart, a
//! consumer reading past what compaction emptied to a batch larger than its
//! limit, and a transactional producer, which must fail at once and say why.

mod broker_support;

use std::collections::{BTreeMap, BTreeSet};

use broker_support::{kafkajs_client, kcat_from_start, records, tagged, Broker};

#[test]
fn kafkajs_admin_manages_topics_configs_partitions_and_records() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let out = kafkajs_client(&["admin", &broker.addr, "inventory"]);

    assert_eq!(tagged(&out, "CREATED"), [["true"]], "{out}");
    assert_eq!(
        tagged(&out, "CREATED_AGAIN"),
        [["false"]],
        "a second create reports the topic exists:\n{out}"
    );
    assert_eq!(
        tagged(&out, "CONFIG"),
        [
            ["cleanup.policy", "compact", "false"],
            ["retention.ms", "3600000", "false"]
        ],
        "{out}"
    );
    assert_eq!(
        tagged(&out, "KEYLESS"),
        [["INVALID_RECORD"]],
        "a keyless record on a compacted topic is refused:\n{out}"
    );
    // AlterConfigs replaces the whole set: cleanup.policy falls back to its default.
    assert_eq!(
        tagged(&out, "ALTERED"),
        [
            ["cleanup.policy", "delete", "true"],
            ["retention.ms", "7200000", "false"]
        ],
        "{out}"
    );
    assert_eq!(tagged(&out, "PARTITIONS"), [["3"]], "{out}");
    assert_eq!(tagged(&out, "SENT"), [["0", "0"]], "{out}");
    // Records 0..6 at base + i s: the first at or after base + 2.5 s is offset 3;
    // partitions without such a record answer -1, which KafkaJS turns into their end.
    assert_eq!(
        tagged(&out, "BYTIME"),
        [["0", "3"], ["1", "0"], ["2", "0"]],
        "{out}"
    );
    // DeleteRecords moved partition 0's log start to 2.
    assert_eq!(
        tagged(&out, "OFFSETS"),
        [["0", "2", "6"], ["1", "0", "0"], ["2", "0", "0"]],
        "{out}"
    );
    // A consumer from the earliest offset starts at the new log start, with keys,
    // headers and timestamps as produced.
    let read: Vec<String> = tagged(&out, "READ").iter().map(|f| f.join(" ")).collect();
    assert_eq!(
        read,
        [
            "0 2 v2 key2 2 2000",
            "0 3 v3 key3 3 3000",
            "0 4 v4 key4 4 4000",
            "0 5 v5 key5 5 5000"
        ],
        "{out}"
    );
    assert_eq!(tagged(&out, "DELETED"), [["true"]], "{out}");
    assert_eq!(tagged(&out, "LISTED"), [["false"]], "{out}");
}

#[test]
fn kafkajs_group_splits_rebalances_and_resumes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &[]);

    // Two members split 4 partitions; 120 messages; then one leaves and the other
    // owns everything and reads 40 more.
    let first = kafkajs_client(&[
        "group",
        &broker.addr,
        "payments",
        "ledger",
        "2",
        "120",
        "120",
        "40",
        "a",
    ]);
    let acks = records(&first, "ACK");
    assert_eq!(acks.len(), 160, "{first}");
    let read: Vec<(i32, i64, String, String)> = tagged(&first, "MSG")
        .into_iter()
        .map(|f| {
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
                f[3].to_string(),
            )
        })
        .collect();
    let got: BTreeMap<(i32, i64), &str> = read
        .iter()
        .map(|(p, o, v, _)| ((*p, *o), v.as_str()))
        .collect();
    assert_eq!(got.len(), read.len(), "no message read twice:\n{first}");
    let want: BTreeMap<(i32, i64), &str> = acks
        .iter()
        .map(|(p, o, v)| ((*p, *o), v.as_str()))
        .collect();
    assert_eq!(
        got, want,
        "every acknowledged message read once at its offset"
    );
    // Before the leave both members read; after it, member 0 read everything.
    let by_member = |values: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
        read.iter()
            .filter(|(_, _, v, _)| values(v))
            .map(|(_, _, _, m)| m.clone())
            .collect()
    };
    let before = |v: &str| v[1..].parse::<u32>().unwrap() < 120;
    assert_eq!(
        by_member(&before),
        BTreeSet::from(["0".to_string(), "1".to_string()]),
        "both members consumed:\n{first}"
    );
    assert_eq!(
        by_member(&|v| !before(v)),
        BTreeSet::from(["0".to_string()]),
        "after member 1 left, member 0 read the rest:\n{first}"
    );
    let assignments = tagged(&first, "ASSIGNED");
    assert!(
        assignments
            .iter()
            .any(|a| a == &["1", "1,3"] || a == &["1", "0,2"]),
        "member 1 got half of the partitions:\n{first}"
    );
    assert_eq!(
        assignments.last().map(|a| a.join(" ")),
        Some("0 0,1,2,3".to_string()),
        "{first}"
    );
    let committed: BTreeMap<String, String> = tagged(&first, "COMMITTED")
        .into_iter()
        .map(|f| (f[0].to_string(), f[1].to_string()))
        .collect();
    let ends: BTreeMap<String, String> =
        (0..4).map(|p| (p.to_string(), "40".to_string())).collect();
    assert_eq!(
        committed, ends,
        "the group committed every partition's end:\n{first}"
    );

    // The commits survive a restart: one member reads exactly the 40 messages
    // produced after it, nothing from before.
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let second = kafkajs_client(&[
        "group",
        &broker.addr,
        "payments",
        "ledger",
        "1",
        "40",
        "40",
        "0",
        "b",
    ]);
    let acks = records(&second, "ACK");
    assert_eq!(acks.len(), 40, "{second}");
    let read: BTreeMap<(i32, i64), String> = records(&second, "MSG")
        .into_iter()
        .map(|(p, o, v)| ((p, o), v.split(' ').next().unwrap().to_string()))
        .collect();
    let want: BTreeMap<(i32, i64), String> =
        acks.into_iter().map(|(p, o, v)| ((p, o), v)).collect();
    assert_eq!(
        read, want,
        "after the restart the group resumed at its commits:\n{second}"
    );
    assert!(want.keys().all(|(_, o)| (40..50).contains(o)), "{second}");
}

#[test]
fn kafkajs_transactional_producer_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let out = kafkajs_client(&["txn", &broker.addr, "orders"]);
    let err = tagged(&out, "TXN_ERROR");
    assert_eq!(err.len(), 1, "the transaction failed:\n{out}");
    let ms: u64 = err[0][0].parse().unwrap();
    // COORDINATOR_NOT_AVAILABLE kept KafkaJS (5 retries) retrying for 13 s.
    assert!(
        ms < 10_000,
        "a refused transaction coordinator fails the producer at once, not after {ms} ms"
    );
    assert_eq!(err[0][1], "KafkaJSGroupCoordinatorNotFound", "{out}");
    let log = broker.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// Compaction leaves a batch without records where `a=old` was, before a
/// batch larger than the consumer's `maxBytesPerPartition`. A response of the
/// empty batch alone gave KafkaJS nothing to step past: it asked for offset 0
/// again, at once, for as long as the large batch stayed (tens of thousands
/// of Fetches, no message). The read goes on to the large batch.
#[test]
fn kafkajs_reads_past_an_emptied_batch_to_a_batch_larger_than_its_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--log-cleaner-backoff-ms", "100"],
    );
    let out = kafkajs_client(&["compacted-large", &broker.addr, "c"]);
    let acks: Vec<(String, String)> = tagged(&out, "ACK")
        .into_iter()
        .map(|f| (f[0].to_string(), f[1].to_string()))
        .collect();
    assert_eq!(acks.len(), 16, "{out}");
    assert_eq!(acks[0], ("0".to_string(), "a".to_string()), "{out}");
    // Compacted once kcat, from the start, finds offset 0 gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while kcat_from_start(&broker.addr, "c", Some(0))
        .first()
        .map(|r| r.0)
        != Some(1)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not compacted after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = kafkajs_client(&["consume", &broker.addr, "c", "15", "65536"]);
    let read: Vec<(String, String)> = tagged(&out, "MSG")
        .into_iter()
        .map(|f| (f[0].to_string(), f[1].to_string()))
        .collect();
    assert_eq!(read, acks[1..], "{out}");
    let fetches: u64 = tagged(&out, "FETCHES")[0][0].parse().unwrap();
    assert!(fetches < 1000, "{fetches} fetches:\n{out}");
}
