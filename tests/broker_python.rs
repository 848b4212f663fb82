//! The broker with confluent-kafka (librdkafka from PyPI): acks=all producer, assign()
//! consumer, group subscription with committed offsets that survive a restart.

mod broker_support;

use std::collections::{BTreeMap, BTreeSet};

use broker_support::{python_client, records, Broker};

#[test]
fn confluent_kafka_acks_all_assign_and_group_commits_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "3"]);

    let produced = python_client("kafka_client.py", &["produce", &broker.addr, "orders", "90", "3", "o"]);
    let acks = records(&produced, "ACK");
    assert_eq!(acks.len(), 90, "every message acknowledged:\n{produced}");
    let mut per_part: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, off, _) in &acks {
        per_part.entry(*p).or_default().push(*off);
    }
    for (p, offs) in &per_part {
        let mut sorted = offs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..30).collect::<Vec<i64>>(), "partition {p}: acknowledged offsets are 0..30");
    }

    // assign(): every acknowledged message at its acknowledged offset.
    let read = records(&python_client("kafka_client.py", &["assign", &broker.addr, "orders", "3"]), "MSG");
    let got: BTreeMap<(i32, i64), String> = read.iter().map(|(p, o, v)| ((*p, *o), v.clone())).collect();
    assert_eq!(got.len(), 90);
    for (p, off, v) in &acks {
        assert_eq!(got.get(&(*p, *off)), Some(v), "message at {p}/{off}");
    }

    // A group consumer reads part of the topic and commits; the commit survives a restart.
    let first = python_client("kafka_client.py", &["group", &broker.addr, "orders", "billing", "40"]);
    let first_msgs = records(&first, "MSG");
    assert_eq!(first_msgs.len(), 40, "{first}");
    let committed: Vec<(i32, i64)> = first
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("COMMITTED ")?.split(' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    assert!(!committed.is_empty(), "offsets were committed:\n{first}");
    for (p, off) in &committed {
        let next = first_msgs.iter().filter(|(mp, _, _)| mp == p).map(|(_, o, _)| o + 1).max().unwrap();
        assert_eq!(*off, next, "committed offset of partition {p} is the position after the last read");
    }

    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let second = python_client("kafka_client.py", &["group", &broker.addr, "orders", "billing", "1000"]);
    let second_msgs = records(&second, "MSG");
    assert_eq!(second_msgs.len(), 50, "the group resumes at its committed offsets:\n{second}");
    let all: BTreeSet<(i32, i64)> = first_msgs.iter().chain(&second_msgs).map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(all.len(), 90, "no message read twice, none skipped");
}

#[test]
fn deleted_topic_stays_deleted_after_recreate_and_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &["--wal-sync-mode", "every_write", "--checkpoint-ms", "600000"]);
    let acks = records(&python_client("kafka_client.py", &["produce", &broker.addr, "churn", "20", "1", "old"]), "ACK");
    assert_eq!(acks.len(), 20);
    let out = python_client("kafka_client.py", &["recreate", &broker.addr, "churn", "2"]);
    assert!(out.contains("DELETED churn") && out.contains("CREATED churn"), "{out}");
    let acks = records(&python_client("kafka_client.py", &["produce", &broker.addr, "churn", "4", "2", "new"]), "ACK");
    assert_eq!(acks.len(), 4);
    // Crash: the WAL still holds the old topic's entries, which must not come back.
    broker.kill9();
    let broker = broker.restart();
    let read = records(&python_client("kafka_client.py", &["assign", &broker.addr, "churn", "2"]), "MSG");
    let mut values: Vec<String> = read.iter().map(|(_, _, v)| v.clone()).collect();
    values.sort();
    assert_eq!(values, vec!["new-0", "new-1", "new-2", "new-3"], "only the recreated topic's data");
    for (p, o, _) in &read {
        assert!(*o < 2, "partition {p}: offsets start again at 0 (got {o})");
    }
}
