#!/usr/bin/env python3
"""confluent-kafka client used by the broker tests (tests/broker_*.rs).

Subcommands (all print one line per event, flushed at once; with IDEMPOTENT=1 in the
environment the producers are idempotent, with COMPRESSION=codec they compress):
  produce BOOTSTRAP TOPIC COUNT PARTITIONS PREFIX   acks=all; "ACK p offset value"; exit 1 unless all acked
  stream  BOOTSTRAP TOPIC PARTITIONS PREFIX         acks=all until killed; "ACK p offset value"
  stream-keyed BOOTSTRAP TOPIC KEYS PREFIX          the same to partition 0, message i with key k{i % KEYS}
  assign  BOOTSTRAP TOPIC PARTITIONS                assign() from the beginning to the end; "MSG p offset value"
  bench   BOOTSTRAP TOPIC COUNT SIZE PARTITIONS      acks=all throughput of the delivered messages, one JSON
                                                    line; exit 1 unless all delivered (see bench)
  produce-keyed BOOTSTRAP TOPIC ROUNDS KEYS TAIL [CODEC]  keyed messages, a tombstone, one keyless message
                                                    (see produce_keyed)
  recreate BOOTSTRAP TOPIC PARTITIONS              AdminClient: delete TOPIC, create it again
  grow    BOOTSTRAP TOPIC COUNT                     AdminClient: add partitions up to COUNT; "GREW topic count"
  describe-configs BOOTSTRAP TOPIC                 AdminClient: TOPIC's and broker 0's configs;
                                                    "CONFIG resource name value source"
  describe-ops BOOTSTRAP TOPIC                     AdminClient: the authorized operations of the cluster
                                                    and of TOPIC, asked for and not; "OPS what op,op,..."
  group   BOOTSTRAP TOPIC GROUP MAX                 subscribe with group.id, read up to MAX (or until idle),
                                                    commit what was read; "MSG ..." then "COMMITTED p offset"
  group-watch BOOTSTRAP TOPIC GROUP SECONDS [INSTANCE]  stay in the group for SECONDS (a static member
                                                    with INSTANCE as group.instance.id); "STARTED t",
                                                    then "ASSIGNED t p ..." / "REVOKED t p ..." as the
                                                    rebalances come (t: Unix time), "CLOSED t";
                                                    with WATCH_STOP_FILE set, leaves as soon as
                                                    that file exists (SECONDS is then a bound)
  group-admin BOOTSTRAP GROUP SECONDS               AdminClient while a member holds GROUP, then after it
                                                    left (waiting up to SECONDS for each): describe, list,
                                                    delete; one line per fact (see group_admin)
  group-across-restart BOOTSTRAP TOPIC GROUP FIRST SECOND  one consumer in GROUP: reads FIRST messages and
                                                    commits them, prints "WAITING" and stays in the group
                                                    until a line comes on stdin, then reads SECOND more and
                                                    commits them (see group_across_restart)
"""
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def producer(bootstrap):
    # IDEMPOTENT=1 turns on the idempotent producer (InitProducerId, sequence numbers);
    # COMPRESSION=gzip|snappy|lz4|zstd compresses the batches; BATCH_MESSAGES=N
    # caps a batch at N messages (librdkafka's default is 10000).
    return Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 2,
        "enable.idempotence": os.environ.get("IDEMPOTENT") == "1",
        "compression.codec": os.environ.get("COMPRESSION", "none"),
        "batch.num.messages": int(os.environ.get("BATCH_MESSAGES", "10000")),
        "message.timeout.ms": 30000,
    })


# Delivery errors seen by on_delivery: `produce` exits 1 when there were any.
DELIVERY_ERRORS = [0]


def on_delivery(err, msg):
    if err is None:
        out("ACK %d %d %s" % (msg.partition(), msg.offset(), msg.value().decode()))
    else:
        DELIVERY_ERRORS[0] += 1
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
    if DELIVERY_ERRORS[0]:
        sys.exit("%d deliveries failed" % DELIVERY_ERRORS[0])


def stream(bootstrap, topic, partitions, prefix, keys=None):
    """acks=all produces until killed: message i to partition i % partitions,
    or with `keys`, to partition 0 with key "k{i % keys}"."""
    p = producer(bootstrap)
    i = 0
    while True:
        try:
            if keys is None:
                p.produce(topic, value=("%s-%d" % (prefix, i)).encode(), partition=i % partitions,
                          on_delivery=on_delivery)
            else:
                p.produce(topic, key=b"k%d" % (i % keys), value=("%s-%d" % (prefix, i)).encode(),
                          partition=0, on_delivery=on_delivery)
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
        value = "<null>" if m.value() is None else m.value().decode()
        out("MSG %d %d %s" % (m.partition(), m.offset(), value))
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
    assigned = False
    deadline = time.time() + 60
    while read < maximum and time.time() < deadline:
        m = c.poll(0.2)
        if not assigned and c.assignment():
            # The idle time counts from the assignment, not from the start:
            # a slow join must not end the read before the first fetch.
            assigned = True
            idle_since = time.time()
        if m is None:
            # Stop after 3 s without messages once something was assigned.
            if assigned and time.time() - idle_since > 3:
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


def bench(bootstrap, topic, count, size, partitions):
    """Produce throughput with acks=all: prints one JSON line. BENCH_CLIENT_CONFIG
    (a JSON object) adds producer settings, e.g. for TLS; BENCH_FLUSH_SECONDS
    (default 120) is how long to wait for the last acknowledgements.

    Only delivered messages count: `failed` were reported failed, `remaining` were
    still unacknowledged when the wait ended, `delivered` is the rest, and the
    rates are of `delivered`. Exits 1 (after the line) when any message was not
    delivered."""
    import json
    import os
    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1000000,
        "enable.idempotence": False,
    }
    conf.update(json.loads(os.environ.get("BENCH_CLIENT_CONFIG", "{}")))
    p = Producer(conf)
    failed = [0]

    def cb(err, msg):
        if err is not None:
            failed[0] += 1

    value = b"x" * size
    start = time.time()
    for i in range(count):
        while True:
            try:
                p.produce(topic, value=value, partition=i % partitions, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.01)
    remaining = p.flush(float(os.environ.get("BENCH_FLUSH_SECONDS", "120")))
    end = time.time()
    took = end - start
    delivered = count - failed[0] - remaining
    # `start` and `end` (seconds since the epoch) bound this producer's own
    # produce-to-flush window, without the interpreter's start, the imports
    # and the client's creation, which bench-broker.sh's wall time includes.
    out(json.dumps({"messages": count, "delivered": delivered, "failed": failed[0], "remaining": remaining,
                    "start": start, "end": end, "bytes": delivered * size, "seconds": round(took, 3),
                    "msgs_per_s": round(delivered / took), "mb_per_s": round(delivered * size / took / 1e6, 1)}))
    if failed[0] or remaining:
        sys.stderr.write("bench: %d of %d messages not delivered (%d failed, %d unacknowledged after the flush)\n"
                         % (failed[0] + remaining, count, failed[0], remaining))
        sys.exit(1)


def member(bootstrap, group_id, instance=None):
    """A group consumer that notices rebalances quickly (heartbeats every 300 ms);
    static (KIP-345) with INSTANCE as its group.instance.id."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 300,
    }
    if instance:
        conf["group.instance.id"] = instance
    return Consumer(conf)


def group_watch(bootstrap, topic, group_id, seconds, instance=None):
    out("STARTED %.3f" % time.time())
    c = member(bootstrap, group_id, instance)

    def event(kind, parts):
        out("%s %.3f %s" % (kind, time.time(), " ".join(str(tp.partition) for tp in parts)))

    c.subscribe([topic], on_assign=lambda _, ps: event("ASSIGNED", ps),
                on_revoke=lambda _, ps: event("REVOKED", ps))
    start = time.time()
    stop_file = os.environ.get("WATCH_STOP_FILE")
    while time.time() - start < seconds:
        if stop_file and os.path.exists(stop_file):
            break
        m = c.poll(0.1)
        if m is not None and m.error():
            raise KafkaException(m.error())
    # A static member does not leave the group when it closes (KIP-345).
    c.close()
    out("CLOSED %.3f" % time.time())


def group_admin(bootstrap, group_id, seconds):
    """AdminClient view of GROUP while a member holds it (waits for Stable), then
    after the member left (waits for Empty): DESCRIBED/MEMBER lines from
    describe_consumer_groups, LISTED lines from list_consumer_groups (all groups,
    then Stable ones only), DELETED or DELETE_FAILED from delete_consumer_groups.
    After the deletion: a last listing and description."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient
    a = AdminClient({"bootstrap.servers": bootstrap})

    def describe():
        futures = a.describe_consumer_groups([group_id], include_authorized_operations=True,
                                             request_timeout=10)
        return futures[group_id].result()

    def report(d):
        ops = ",".join(sorted(op.name for op in (d.authorized_operations or [])))
        out("DESCRIBED %s %s simple=%s assignor=%s members=%d ops=%s" % (
            d.group_id, d.state.name, d.is_simple_consumer_group, d.partition_assignor or "-",
            len(d.members), ops))
        for m in d.members:
            parts = sorted(tp.partition for tp in m.assignment.topic_partitions)
            out("MEMBER %s %s %s %s" % (m.member_id, m.client_id, m.host,
                                        " ".join(str(p) for p in parts)))

    def wait_for(state):
        deadline = time.time() + seconds
        while True:
            d = describe()
            if d.state.name == state:
                return d
            if time.time() > deadline:
                out("TIMEOUT waiting for %s (last %s)" % (state, d.state.name))
                sys.exit(1)
            time.sleep(0.2)

    def listing(tag, **kw):
        r = a.list_consumer_groups(request_timeout=10, **kw).result()
        for e in r.errors:
            out("LIST_ERROR %s" % e)
        for g in sorted(r.valid, key=lambda g: g.group_id):
            out("%s %s %s simple=%s type=%s" % (tag, g.group_id, g.state.name,
                                                g.is_simple_consumer_group, g.type.name))

    def delete():
        try:
            a.delete_consumer_groups([group_id], request_timeout=10)[group_id].result()
            out("DELETED %s" % group_id)
        except KafkaException as e:
            out("DELETE_FAILED %s %s" % (group_id, e.args[0].name()))

    report(wait_for("STABLE"))
    listing("LISTED")
    listing("LISTED_STABLE", states={ConsumerGroupState.STABLE})
    delete()
    report(wait_for("EMPTY"))
    listing("LISTED")
    listing("LISTED_STABLE", states={ConsumerGroupState.STABLE})
    delete()
    listing("LISTED")
    report(describe())


def group_across_restart(bootstrap, topic, group_id, first, second):
    """A consumer that stays in GROUP while the broker restarts (the test
    restarts it between "WAITING" and the line it then writes on stdin). Prints
    "ASSIGNED t p ...", "REVOKED t p ..." and "LOST t p ..." for each rebalance,
    "MSG p offset value" per message, "COMMITTED p offset" per position a
    synchronous commit stored or "COMMIT_FAILED p error" (or "COMMIT_FAILED -
    error" for the whole commit), "EVENT error" for client events such as a
    lost connection, and "CLOSING" before it leaves the group. Exits 1 when a
    phase does not read its messages in 60 s."""
    import select
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        # Long enough for the broker to restart within it.
        "session.timeout.ms": 30000,
        "heartbeat.interval.ms": 500,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
    })

    def event(kind, parts):
        out("%s %.3f %s" % (kind, time.time(), " ".join(str(tp.partition) for tp in parts)))

    c.subscribe([topic], on_assign=lambda _, ps: event("ASSIGNED", ps),
                on_revoke=lambda _, ps: event("REVOKED", ps),
                on_lost=lambda _, ps: event("LOST", ps))
    positions = {}
    read = [0]

    def poll_once():
        m = c.poll(0.1)
        if m is None:
            return
        if m.error():
            out("EVENT %s" % m.error().name())
            return
        out("MSG %d %d %s" % (m.partition(), m.offset(), m.value().decode()))
        positions[m.partition()] = m.offset() + 1
        read[0] += 1

    def read_up_to(count):
        deadline = time.time() + 60
        while read[0] < count:
            if time.time() > deadline:
                out("TIMEOUT after %d of %d messages" % (read[0], count))
                sys.exit(1)
            poll_once()

    def commit():
        try:
            done = c.commit(offsets=[TopicPartition(topic, p, o) for p, o in sorted(positions.items())],
                            asynchronous=False)
        except KafkaException as e:
            out("COMMIT_FAILED - %s" % e.args[0].name())
            return
        for tp in done:
            if tp.error:
                out("COMMIT_FAILED %d %s" % (tp.partition, tp.error.name()))
            else:
                out("COMMITTED %d %d" % (tp.partition, tp.offset))

    read_up_to(first)
    commit()
    out("WAITING")
    while not select.select([sys.stdin], [], [], 0)[0]:
        poll_once()
    sys.stdin.readline()
    out("GO")
    read_up_to(first + second)
    commit()
    # Closing revokes the assignment (on_revoke) as the member leaves.
    out("CLOSING")
    c.close()


def describe_configs(bootstrap, topic):
    from confluent_kafka.admin import AdminClient, ConfigResource
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resources = [ConfigResource("topic", topic), ConfigResource("broker", "0")]
    for res, fut in admin.describe_configs(resources, request_timeout=20).items():
        for name, entry in sorted(fut.result(timeout=30).items()):
            out("CONFIG %s %s %s %s" % (res.name, name, entry.value, entry.source))


def describe_ops(bootstrap, topic):
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def ops(found):
        if found is None:
            return "none"
        return ",".join(sorted(op.name for op in found))

    for asked in (True, False):
        cluster = admin.describe_cluster(include_authorized_operations=asked,
                                         request_timeout=20).result()
        out("OPS cluster%s %s" % ("" if asked else "-unasked", ops(cluster.authorized_operations)))
        described = admin.describe_topics(TopicCollection([topic]), include_authorized_operations=asked,
                                          request_timeout=20)[topic].result()
        out("OPS topic%s %s" % ("" if asked else "-unasked", ops(described.authorized_operations)))


def create_with_configs(bootstrap, topic, pairs):
    """Creates `topic` (1 partition) with configs given as key=value."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = dict(p.split("=", 1) for p in pairs)
    for t, fut in admin.create_topics([NewTopic(topic, 1, config=config)], request_timeout=20).items():
        try:
            fut.result(timeout=30)
            out("CREATED %s" % t)
        except Exception as e:  # the KafkaException carries the broker's error
            err = e.args[0]
            out("REFUSED %s %s %s" % (t, err.name(), err.str()))


def alter_configs(bootstrap, topic, ops):
    """IncrementalAlterConfigs on `topic`: each op is set:key=value or delete:key."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entries = []
    for o in ops:
        kind, rest = o.split(":", 1)
        if kind == "set":
            k, v = rest.split("=", 1)
            entries.append(ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET))
        else:
            entries.append(ConfigEntry(rest, None, incremental_operation=AlterConfigOpType.DELETE))
    res = ConfigResource("topic", topic, incremental_configs=entries)
    for r, fut in admin.incremental_alter_configs([res], request_timeout=20).items():
        try:
            fut.result(timeout=30)
            out("ALTERED %s" % r.name)
        except Exception as e:
            err = e.args[0]
            out("REFUSED %s %s %s" % (r.name, err.name(), err.str()))


def delete_records(bootstrap, topic, partition, offset):
    """DeleteRecords below `offset` of one partition (-1: everything readable)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, partition, offset)
    for t, fut in admin.delete_records([tp], request_timeout=20).items():
        try:
            out("DELETED %s %d %d" % (t.topic, t.partition, fut.result(timeout=30).low_watermark))
        except Exception as e:
            err = e.args[0]
            out("REFUSED %s %d %s" % (t.topic, t.partition, err.name()))


def timed(bootstrap, topic, first_ts, count):
    """Produces `count` messages to partition 0, message i at first_ts + i seconds,
    in one flush (the client batches them), then asks ListOffsets for the offset at
    first_ts + 2.5 s and for the newest record."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 100})
    for i in range(count):
        p.produce(topic, b"t%d" % i, partition=0, timestamp=first_ts + i * 1000)
    if p.flush(30) != 0:
        sys.exit("messages left unflushed")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for spec, name in [(OffsetSpec.for_timestamp(first_ts + 2500), "AT"), (OffsetSpec.max_timestamp(), "MAX")]:
        for tp, fut in admin.list_offsets({TopicPartition(topic, 0): spec}, request_timeout=20).items():
            r = fut.result(timeout=30)
            out("%s %d %d" % (name, r.offset, r.timestamp))


def produce_keyed(bootstrap, topic, rounds, keys, tail, compression="none"):
    """To partition 0: `rounds` rounds of one message per key k0..k{keys-1} (value
    "kN-rR"), a tombstone for k0, `tail` messages with key "tail", then one message
    without a key. "ACK offset key value" per delivered message ("<null>" for the
    tombstone); "KEYLESS error-name error-text" for the last one. Batches hold at
    most 5 messages, so that the tombstone and the tail span several segments.
    The first round comes from an idempotent producer of its own, every record
    of which the next round replaces: compaction keeps its last batch empty,
    with its producer id and sequence, which consumers step over."""
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 1,
        "batch.num.messages": 5,
        "compression.codec": compression,
        "message.timeout.ms": 30000,
    }
    first = Producer(dict(config, **{"enable.idempotence": True}))
    p = Producer(config)
    # Failed deliveries of keyed messages (the keyless one is expected to fail).
    failed = [0]

    def delivered(err, msg):
        if err is not None:
            if msg.key() is not None:
                failed[0] += 1
            out("%s %s %s" % ("KEYLESS" if msg.key() is None else "ERR", err.name(), err.str()))
            return
        value = "<null>" if msg.value() is None else msg.value().decode()
        out("ACK %d %s %s" % (msg.offset(), msg.key().decode(), value))

    def send(key, value, producer=p):
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=0, on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.05)

    for r in range(rounds):
        for k in range(keys):
            send(b"k%d" % k, b"k%d-r%d" % (k, r), first if r == 0 else p)
        if r == 0 and first.flush(60):
            sys.exit("messages left unflushed")
    send(b"k0", None)
    for i in range(tail):
        send(b"tail", b"tail-%d" % i)
    if p.flush(60):
        sys.exit("messages left unflushed")
    send(None, b"no key")
    if p.flush(60):
        sys.exit("messages left unflushed")
    if failed[0]:
        sys.exit("%d keyed deliveries failed" % failed[0])


def grow(bootstrap, topic, count):
    from confluent_kafka.admin import AdminClient, NewPartitions
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for t, fut in admin.create_partitions([NewPartitions(topic, count)], request_timeout=20).items():
        fut.result(timeout=30)
        out("GREW %s %d" % (t, count))


def scram(bootstrap, user, password, ops):
    """AdminClient's SCRAM calls (KIP-554), authenticated as user/password with
    SCRAM-SHA-256. Each op: "describe[=u1,u2]", "upsert=USER:MECH:ITER:PASSWORD",
    "delete=USER:MECH". Prints "SCRAM <op index> <user> ok [mech:iter ...]" or
    "SCRAM <op index> <user> error <KafkaError name>" per user."""
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialDeletion,
                                       UserScramCredentialUpsertion)
    from confluent_kafka import KafkaException
    a = AdminClient({"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": user,
                     "sasl.password": password})
    mech = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256,
            "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}

    def report(i, futures):
        for u, f in sorted(futures.items()):
            try:
                r = f.result(30)
                infos = ["%s:%d" % (c.mechanism.name.replace("_", "-"), c.iterations)
                         for c in (r.scram_credential_infos if r is not None else [])]
                out(" ".join(["SCRAM", str(i), u, "ok"] + infos))
            except KafkaException as e:
                out("SCRAM %d %s error %s" % (i, u, e.args[0].name()))

    for i, op in enumerate(ops):
        kind, _, arg = op.partition("=")
        if kind == "describe":
            if arg:
                report(i, a.describe_user_scram_credentials(users=arg.split(",")))
            else:
                try:
                    everyone = a.describe_user_scram_credentials().result(30)
                except KafkaException as e:
                    out("SCRAM %d * error %s" % (i, e.args[0].name()))
                    continue
                for u, r in sorted(everyone.items()):
                    infos = ["%s:%d" % (c.mechanism.name.replace("_", "-"), c.iterations)
                             for c in r.scram_credential_infos]
                    out(" ".join(["SCRAM", str(i), u, "ok"] + infos))
        elif kind == "upsert":
            u, m, iterations, pw = arg.split(":", 3)
            change = UserScramCredentialUpsertion(
                u, ScramCredentialInfo(mech[m], int(iterations)), pw.encode())
            report(i, a.alter_user_scram_credentials([change]))
        elif kind == "delete":
            u, m = arg.split(":")
            report(i, a.alter_user_scram_credentials([UserScramCredentialDeletion(u, mech[m])]))
        else:
            sys.exit("unknown scram op %s" % op)


def main(argv):
    cmd = argv[1]
    if cmd == "produce":
        produce(argv[2], argv[3], int(argv[4]), int(argv[5]), argv[6])
    elif cmd == "stream":
        stream(argv[2], argv[3], int(argv[4]), argv[5])
    elif cmd == "stream-keyed":
        stream(argv[2], argv[3], 1, argv[5], keys=int(argv[4]))
    elif cmd == "assign":
        assign(argv[2], argv[3], int(argv[4]))
    elif cmd == "group":
        group(argv[2], argv[3], argv[4], int(argv[5]))
    elif cmd == "bench":
        bench(argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6]))
    elif cmd == "group-watch":
        group_watch(argv[2], argv[3], argv[4], float(argv[5]), argv[6] if len(argv) > 6 else None)
    elif cmd == "group-admin":
        group_admin(argv[2], argv[3], float(argv[4]))
    elif cmd == "group-across-restart":
        group_across_restart(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]))
    elif cmd == "produce-keyed":
        produce_keyed(argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6]),
                      argv[7] if len(argv) > 7 else "none")
    elif cmd == "grow":
        grow(argv[2], argv[3], int(argv[4]))
    elif cmd == "create-with-configs":
        create_with_configs(argv[2], argv[3], argv[4:])
    elif cmd == "alter-configs":
        alter_configs(argv[2], argv[3], argv[4:])
    elif cmd == "timed":
        timed(argv[2], argv[3], int(argv[4]), int(argv[5]))
    elif cmd == "delete-records":
        delete_records(argv[2], argv[3], int(argv[4]), int(argv[5]))
    elif cmd == "describe-configs":
        describe_configs(argv[2], argv[3])
    elif cmd == "describe-ops":
        describe_ops(argv[2], argv[3])
    elif cmd == "recreate":
        recreate(argv[2], argv[3], int(argv[4]))
    elif cmd == "scram":
        scram(argv[2], argv[3], argv[4], argv[5:])
    else:
        sys.exit("unknown subcommand %s" % cmd)


if __name__ == "__main__":
    main(sys.argv)
