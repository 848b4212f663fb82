#!/usr/bin/env python3
"""confluent-kafka client used by the broker tests (tests/broker_*.rs).

Subcommands (all print one line per event, flushed at once):
  produce BOOTSTRAP TOPIC COUNT PARTITIONS PREFIX   acks=all; "ACK p offset value"; exit 1 unless all acked
  stream  BOOTSTRAP TOPIC PARTITIONS PREFIX         acks=all until killed; "ACK p offset value"
  assign  BOOTSTRAP TOPIC PARTITIONS                assign() from the beginning to the end; "MSG p offset value"
  recreate BOOTSTRAP TOPIC PARTITIONS              AdminClient: delete TOPIC, create it again
  group   BOOTSTRAP TOPIC GROUP MAX                 subscribe with group.id, read up to MAX (or until idle),
                                                    commit what was read; "MSG ..." then "COMMITTED p offset"
"""
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def producer(bootstrap):
    return Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 2,
        "enable.idempotence": False,
        "message.timeout.ms": 30000,
    })


def on_delivery(err, msg):
    if err is None:
        out("ACK %d %d %s" % (msg.partition(), msg.offset(), msg.value().decode()))
    else:
        out("ERR %s" % err)


def produce(bootstrap, topic, count, partitions, prefix):
    p = producer(bootstrap)
    for i in range(count):
        while True:
            try:
                p.produce(topic, value=("%s-%d" % (prefix, i)).encode(), partition=i % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(60)
    if left:
        out("UNFLUSHED %d" % left)
        sys.exit(1)


def stream(bootstrap, topic, partitions, prefix):
    p = producer(bootstrap)
    i = 0
    while True:
        try:
            p.produce(topic, value=("%s-%d" % (prefix, i)).encode(), partition=i % partitions, on_delivery=on_delivery)
            i += 1
        except BufferError:
            p.poll(0.01)
        p.poll(0)
        if i % 50 == 0:
            p.poll(0.001)


def assign(bootstrap, topic, partitions):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "assign-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])  # offset 0 = beginning
    done = set()
    deadline = time.time() + 60
    while len(done) < partitions and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                done.add(m.partition())
                continue
            raise KafkaException(m.error())
        out("MSG %d %d %s" % (m.partition(), m.offset(), m.value().decode()))
    c.close()
    if len(done) < partitions:
        out("TIMEOUT")
        sys.exit(1)


def group(bootstrap, topic, group_id, maximum):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
    })
    c.subscribe([topic])
    positions = {}
    read = 0
    idle_since = time.time()
    deadline = time.time() + 60
    while read < maximum and time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            # Stop after 3 s without messages once something was assigned.
            if c.assignment() and time.time() - idle_since > 3:
                break
            continue
        if m.error():
            raise KafkaException(m.error())
        idle_since = time.time()
        out("MSG %d %d %s" % (m.partition(), m.offset(), m.value().decode()))
        positions[m.partition()] = m.offset() + 1
        read += 1
    if positions:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in positions.items()], asynchronous=False)
    for tp in c.committed([TopicPartition(topic, p) for p in sorted(positions)], timeout=10):
        out("COMMITTED %d %d" % (tp.partition, tp.offset))
    c.close()


def recreate(bootstrap, topic, partitions):
    """Deletes TOPIC, then creates it again with PARTITIONS partitions."""
    from confluent_kafka.admin import AdminClient, NewTopic
    a = AdminClient({"bootstrap.servers": bootstrap})
    for t, f in a.delete_topics([topic], operation_timeout=30).items():
        f.result()
        out("DELETED %s" % t)
    for t, f in a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).items():
        f.result()
        out("CREATED %s" % t)


def main(argv):
    cmd = argv[1]
    if cmd == "produce":
        produce(argv[2], argv[3], int(argv[4]), int(argv[5]), argv[6])
    elif cmd == "stream":
        stream(argv[2], argv[3], int(argv[4]), argv[5])
    elif cmd == "assign":
        assign(argv[2], argv[3], int(argv[4]))
    elif cmd == "group":
        group(argv[2], argv[3], argv[4], int(argv[5]))
    elif cmd == "recreate":
        recreate(argv[2], argv[3], int(argv[4]))
    else:
        sys.exit("unknown subcommand %s" % cmd)


if __name__ == "__main__":
    main(sys.argv)
