#!/usr/bin/env python3
"""kafka-python 3 (a Kafka client written in Python, sharing no code with
librdkafka) against the broker, for tests/broker_kafka_python.rs.

Every subcommand prints one fact per line, "TAG field field ...", which the Rust
test parses; a failure exits non-zero.

  admin BROKER TOPIC
  produce BROKER TOPIC COUNT PARTITIONS PREFIX
  group BROKER TOPIC GROUP EXPECT
  txn BROKER TOPIC
  tools BROKER TOPIC
  sasl BROKER TOPIC USER PASSWORD MECHANISM...
"""
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import KafkaError


def out(*fields):
    print(*fields, flush=True)


def cmd_admin(broker, topic):
    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="kp-admin")
    admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"cleanup.policy": "compact"})])
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
        out("CREATE_AGAIN", "ok")
    except KafkaError as e:
        out("CREATE_AGAIN", type(e).__name__)
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["cleanup.policy"])])
    for name, entry in described["topic"][topic].items():
        out("CONFIG", name, entry["value"], entry["config_source"])
    admin.create_partitions({topic: NewPartitions(3)})
    meta = admin.describe_topics([topic])
    out("PARTITIONS", len(meta[0]["partitions"]))
    # DescribeCluster (kafka-python falls back to Metadata without it: its brokers
    # then have no is_fenced) and DescribeTopicPartitions, two partitions a page.
    cluster = admin.describe_cluster()
    for b in cluster["brokers"]:
        out("CLUSTER", cluster["cluster_id"], cluster["controller_id"], b["broker_id"],
            "%s:%d" % (b["host"], b["port"]), "is_fenced" in b)
    cursor = None
    while True:
        page = admin.describe_topic_partitions([topic, "no-such-topic"], response_partition_limit=2,
                                               cursor=cursor)
        for t in page["topics"]:
            out("DESCRIBED", t["name"], t["error_code"],
                ",".join(str(p["partition_index"]) for p in t["partitions"]) or "-")
        cursor = page["next_cursor"]
        if cursor is None:
            break
        out("CURSOR", cursor["topic_name"], cursor["partition_index"])

    producer = KafkaProducer(bootstrap_servers=broker, acks="all", retries=0)
    try:
        producer.send(topic, value=b"no key", partition=0).get(timeout=30)
        out("KEYLESS", "accepted")
    except KafkaError as e:
        out("KEYLESS", type(e).__name__)
    for i in range(6):
        producer.send(topic, key=b"k%d" % (i % 2), value=b"v%d" % i, partition=0).get(timeout=30)
    producer.close()
    # A topic that only compacts keeps its records (as in Kafka); once it
    # also deletes, DeleteRecords applies.
    try:
        admin.delete_records({TopicPartition(topic, 0): 2})
        out("DELETE_COMPACTED", "ok")
    except KafkaError as e:
        out("DELETE_COMPACTED", type(e).__name__)
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                        configs={"cleanup.policy": "compact,delete"})])
    admin.delete_records({TopicPartition(topic, 0): 2})
    consumer = KafkaConsumer(bootstrap_servers=broker, auto_offset_reset="earliest", enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    out("BOUNDS", consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp])
    consumer.close()
    admin.delete_topics([topic])
    out("LISTED", topic in admin.list_topics())
    admin.close()


def cmd_produce(broker, topic, count, partitions, prefix):
    producer = KafkaProducer(
        bootstrap_servers=broker, acks="all", enable_idempotence=True, compression_type="gzip", linger_ms=5
    )
    futures = []
    for i in range(int(count)):
        value = "%s%d" % (prefix, i)
        futures.append((value, producer.send(topic, key=value.encode(), value=value.encode(), partition=i % int(partitions))))
    producer.flush()
    for value, f in futures:
        md = f.get(timeout=30)
        out("ACK", md.partition, md.offset, value)
    producer.close()


def cmd_group(broker, topic, group, expect):
    """Reads EXPECT messages as a member of GROUP, committing after each poll."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen = 0
    deadline = time.time() + 60
    while seen < int(expect):
        if time.time() > deadline:
            sys.exit("timed out after %d of %s messages" % (seen, expect))
        for tp, msgs in consumer.poll(timeout_ms=500).items():
            for m in msgs:
                out("MSG", m.partition, m.offset, m.value.decode())
                seen += 1
        consumer.commit()
    for tp in sorted(consumer.assignment()):
        out("COMMITTED", tp.partition, consumer.committed(tp))
    consumer.close()


def cmd_txn(broker, topic):
    start = time.time()
    try:
        producer = KafkaProducer(bootstrap_servers=broker, transactional_id="kp-txn", max_block_ms=20000)
        producer.init_transactions()
        out("TXN", "initialised")
    except KafkaError as e:
        out("TXN_ERROR", int((time.time() - start) * 1000), type(e).__name__, "|", e)


def cmd_sasl(broker, topic, user, password, *mechanisms):
    """Produces one message per mechanism as USER: "SASL mechanism ok offset" or
    "SASL mechanism error type"."""
    for mechanism in mechanisms:
        try:
            producer = KafkaProducer(
                bootstrap_servers=broker,
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism=mechanism,
                sasl_plain_username=user,
                sasl_plain_password=password,
                acks="all",
                max_block_ms=10000,
            )
            md = producer.send(topic, ("kafka-python-" + mechanism).encode()).get(timeout=30)
            out("SASL", mechanism, "ok", md.offset)
            producer.close()
        except KafkaError as e:
            out("SASL", mechanism, "error", type(e).__name__)


def cmd_tools(broker, topic):
    """What admin tools ask a broker without an authorizer, replicas or
    transactions: ACLs, producer state, leader elections, reassignments and
    transactions. One line per fact."""
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePattern, ResourcePatternFilter,
                             ResourceType)
    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="kp-tools")
    admin.create_topics([NewTopic(topic, 2, 1)])
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=True)
    for i in range(7):
        producer.send(topic, b"v%d" % i, partition=0, timestamp_ms=1600000000000 + i)
    producer.flush()
    producer.close()
    any_topic = ResourcePatternFilter(ResourceType.TOPIC, None, ACLResourcePatternType.ANY)
    try:
        admin.describe_acls(ACLFilter(principal=None, host="*", operation=ACLOperation.ANY,
                                      permission_type=ACLPermissionType.ANY,
                                      resource_pattern=any_topic))
        out("ACL_DESCRIBE", "ok")
    except KafkaError as e:
        out("ACL_DESCRIBE", type(e).__name__, str(e).split(": ", 1)[-1].replace(" ", "_"))
    created = admin.create_acls([ACL(principal="User:bob", host="*", operation=ACLOperation.READ,
                                     permission_type=ACLPermissionType.ALLOW,
                                     resource_pattern=ResourcePattern(ResourceType.TOPIC, topic))])
    out("ACL_CREATE", len(created["succeeded"]), *[e.__name__ for e in created["failed"]])
    for _, matched, error in admin.delete_acls([ACLFilter(
            principal="User:bob", host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.TOPIC, topic,
                                                   ACLResourcePatternType.LITERAL))]):
        out("ACL_DELETE", len(matched), error.__name__)
    states = admin.describe_producers([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    for tp, state in sorted(states.items()):
        out("PRODUCERS", tp.partition, len(state.active_producers))
        for p in state.active_producers:
            out("PRODUCER", tp.partition, p.producer_epoch, p.last_sequence, p.coordinator_epoch,
                p.current_transaction_start_offset, p.last_timestamp)
    elected = admin.elect_leaders(0, {topic: [0, 1, 9]}, raise_errors=False)
    for r in elected.replica_election_results:
        for p in r.partition_result:
            out("ELECT", r.topic, p.partition_id, p.error_code)
    out("REASSIGNMENTS", len(admin.list_partition_reassignments()))
    out("TRANSACTIONS", sum(len(v) for v in admin.list_transactions().values()))
    admin.close()


COMMANDS = {"admin": cmd_admin, "produce": cmd_produce, "group": cmd_group, "txn": cmd_txn, "sasl": cmd_sasl, "tools": cmd_tools}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
