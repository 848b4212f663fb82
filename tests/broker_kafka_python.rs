//! The broker with kafka-python 3 (`tests/clients/kafka_python_client.py`), a
//! client written in Python that shares no code with librdkafka or KafkaJS: its
//! admin client, an idempotent gzip producer, a group consumer whose commits
//! survive a broker restart, a transactional producer, which fails at once, and
//! what admin tools ask about ACLs, producers, elections and transactions.

mod broker_support;

use std::collections::BTreeMap;

use broker_support::{python_client, records, tagged, Broker};

const SCRIPT: &str = "kafka_python_client.py";

/// (partition, offset) → value.
fn by_offset(records: Vec<(i32, i64, String)>) -> BTreeMap<(i32, i64), String> {
    records.into_iter().map(|(p, o, v)| ((p, o), v)).collect()
}

#[test]
fn kafka_python_admin_manages_topics_configs_partitions_and_records() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let out = python_client(SCRIPT, &["admin", &broker.addr, "inventory"]);
    assert_eq!(
        tagged(&out, "CREATE_AGAIN"),
        [["TopicAlreadyExistsError"]],
        "{out}"
    );
    assert_eq!(
        tagged(&out, "CONFIG"),
        [["cleanup.policy", "compact", "DYNAMIC_TOPIC_CONFIG"]],
        "{out}"
    );
    assert_eq!(tagged(&out, "PARTITIONS"), [["3"]], "{out}");
    // DescribeCluster: this node, under the cluster id of meta.json; brokers with
    // is_fenced come from DescribeCluster itself, not kafka-python's fallback.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("data").join("meta.json")).unwrap(),
    )
    .unwrap();
    let cluster_id = meta["cluster_id"].as_str().unwrap();
    assert_eq!(
        tagged(&out, "CLUSTER"),
        [[cluster_id, "0", "0", broker.addr.as_str(), "True"]],
        "{out}"
    );
    // DescribeTopicPartitions two partitions at a time: the unknown topic sorts
    // after the topic and is answered with UNKNOWN_TOPIC_OR_PARTITION (3) on the
    // last page.
    assert_eq!(
        tagged(&out, "DESCRIBED"),
        [
            ["inventory", "0", "0,1"],
            ["inventory", "0", "2"],
            ["no-such-topic", "3", "-"]
        ],
        "{out}"
    );
    assert_eq!(tagged(&out, "CURSOR"), [["inventory", "2"]], "{out}");
    assert_eq!(
        tagged(&out, "KEYLESS"),
        [["InvalidRecordError"]],
        "a keyless record on a compacted topic is refused:\n{out}"
    );
    assert_eq!(
        tagged(&out, "DELETE_COMPACTED"),
        [["PolicyViolationError"]],
        "DeleteRecords on a topic that only compacts:\n{out}"
    );
    // Six records on partition 0, the first two deleted once the topic also
    // deletes.
    assert_eq!(tagged(&out, "BOUNDS"), [["2", "6"]], "{out}");
    assert_eq!(tagged(&out, "LISTED"), [["False"]], "{out}");
}

#[test]
fn kafka_python_group_commits_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "3"]);
    let produce = |broker: &Broker, count: &str, prefix: &str| {
        let out = python_client(
            SCRIPT,
            &["produce", &broker.addr, "events", count, "3", prefix],
        );
        records(&out, "ACK")
    };
    let acks = produce(&broker, "90", "a");
    assert_eq!(acks.len(), 90);
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o, _) in &acks {
        offsets.entry(*p).or_default().push(*o);
    }
    for (p, mut o) in offsets {
        o.sort_unstable();
        assert_eq!(o, (0..30).collect::<Vec<_>>(), "partition {p}");
    }

    let first = python_client(SCRIPT, &["group", &broker.addr, "events", "audit", "90"]);
    assert_eq!(
        by_offset(records(&first, "MSG")),
        by_offset(acks),
        "every acknowledged message, at its offset"
    );
    assert_eq!(
        tagged(&first, "COMMITTED"),
        [["0", "30"], ["1", "30"], ["2", "30"]],
        "{first}"
    );

    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let more = produce(&broker, "30", "b");
    let second = python_client(SCRIPT, &["group", &broker.addr, "events", "audit", "30"]);
    assert_eq!(
        by_offset(records(&second, "MSG")),
        by_offset(more),
        "after the restart the group resumed at its commits:\n{second}"
    );
}

#[test]
fn kafka_python_transactional_producer_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let out = python_client(SCRIPT, &["txn", &broker.addr, "orders"]);
    let err = tagged(&out, "TXN_ERROR");
    assert_eq!(err.len(), 1, "{out}");
    let ms: u64 = err[0][0].parse().unwrap();
    assert!(ms < 10_000, "failed after {ms} ms:\n{out}");
    assert!(
        out.contains("InvalidRequestError"),
        "the client names the broker's error:\n{out}"
    );
}

#[test]
fn kafka_python_admin_tools_get_answers_on_acls_producers_elections_and_transactions() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let out = python_client(SCRIPT, &["tools", &broker.addr, "tools"]);
    // No authorizer: SECURITY_DISABLED (54) everywhere, with Kafka's message.
    assert_eq!(
        tagged(&out, "ACL_DESCRIBE"),
        [[
            "SecurityDisabledError",
            "No_Authorizer_is_configured_on_the_broker"
        ]],
        "{out}"
    );
    assert_eq!(
        tagged(&out, "ACL_CREATE"),
        [["0", "SecurityDisabledError"]],
        "{out}"
    );
    assert_eq!(
        tagged(&out, "ACL_DELETE"),
        [["0", "SecurityDisabledError"]],
        "{out}"
    );
    // The idempotent producer's 7 records on partition 0: epoch 0, last sequence
    // 6, the last record's timestamp; no transaction. Partition 1 has none.
    assert_eq!(tagged(&out, "PRODUCERS"), [["0", "1"], ["1", "0"]], "{out}");
    assert_eq!(
        tagged(&out, "PRODUCER"),
        [["0", "0", "6", "-1", "-1", "1600000000006"]],
        "{out}"
    );
    // This node leads every partition: ELECTION_NOT_NEEDED (84); partition 9
    // does not exist (3).
    assert_eq!(
        tagged(&out, "ELECT"),
        [
            ["tools", "0", "84"],
            ["tools", "1", "84"],
            ["tools", "9", "3"]
        ],
        "{out}"
    );
    assert_eq!(tagged(&out, "REASSIGNMENTS"), [["0"]], "{out}");
    assert_eq!(tagged(&out, "TRANSACTIONS"), [["0"]], "{out}");
}
