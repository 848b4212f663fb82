#!/usr/bin/env python3
"""Records the request frames real Kafka clients send, for the mutated-request
test (tests/broker_mutated_requests.rs, which reads tests/data/client-requests.txt).

  capture_requests.py BROKER_BIN OUT SASL_OUT

Starts the broker (BROKER_BIN) on a temporary data directory, advertising a
proxy that forwards every connection to it and keeps each request frame a
client sends. Then librdkafka (confluent-kafka), kafka-python and kcat run a spread
of producer, consumer, group and admin calls through the proxy. OUT gets one
line per frame: the client that sent it, its connection (numbered in the order
they were opened), then the frame (without its length prefix) in hex. SASL_OUT
gets the same for a second broker that requires SASL (`--sasl-users`, user
alice, password alice-secret), where each client authenticates with
SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN and then produces. Run it again when a client or the broker learns new requests;
the test keeps working with any such file.
"""
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

frames = []
frames_lock = threading.Lock()
client = ["-"]
connections = [0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pump(src, dst, record):
    with frames_lock:
        connections[0] += record
        conn = connections[0]
    buf = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            if not record:
                continue
            buf += data
            while len(buf) >= 4:
                n = struct.unpack(">i", buf[:4])[0]
                if len(buf) < 4 + n:
                    break
                with frames_lock:
                    frames.append((client[0], conn, buf[4:4 + n]))
                buf = buf[4 + n:]
    except OSError:
        pass
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def proxy(listener, upstream):
    while True:
        c, _ = listener.accept()
        try:
            b = socket.create_connection(upstream)
        except OSError:
            c.close()
            continue
        threading.Thread(target=pump, args=(c, b, True), daemon=True).start()
        threading.Thread(target=pump, args=(b, c, False), daemon=True).start()


def librdkafka(bootstrap):
    from confluent_kafka import (Consumer, ConsumerGroupTopicPartitions, Producer,
                                 TopicPartition)
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, NewPartitions, NewTopic, OffsetSpec)
    a = AdminClient({"bootstrap.servers": bootstrap})
    for f in a.create_topics([NewTopic("fz", 3, 1),
                              NewTopic("fzc", 2, 1, config={"cleanup.policy": "compact"}),
                              NewTopic("gone", 1, 1)]).values():
        f.result()
    for codec, idem in [("lz4", True), ("zstd", False), ("snappy", False), ("gzip", True), ("none", True)]:
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": idem,
                      "compression.type": codec, "linger.ms": 5})
        for i in range(60):
            p.produce("fz", key=str(i % 7).encode(), value=b"%s-%d" % (codec.encode(), i),
                      partition=i % 3, headers=[("h", b"x")])
            p.produce("fzc", key=str(i % 5).encode(), value=b"c%d" % i)
        p.flush(30)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g1", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "group.instance.id": "inst1"})
    c.subscribe(["fz"])
    n, deadline = 0, time.time() + 30
    while n < 300 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            n += 1
    c.commit(asynchronous=False)
    c.committed([TopicPartition("fz", 0)], timeout=10)
    c.offsets_for_times([TopicPartition("fz", 0, 0)], timeout=10)
    c.get_watermark_offsets(TopicPartition("fz", 1), timeout=10)
    c.close()
    a.describe_configs([ConfigResource("topic", "fz"), ConfigResource("broker", "0")])
    time.sleep(1)
    a.create_partitions([NewPartitions("fz", 4)])["fz"].result()
    r = ConfigResource("topic", "fz", incremental_configs=[
        ConfigEntry("retention.ms", "100000", incremental_operation=AlterConfigOpType.SET)])
    list(a.incremental_alter_configs([r]).values())[0].result()
    a.list_consumer_groups().result()
    a.describe_consumer_groups(["g1"])["g1"].result()
    list(a.list_consumer_group_offsets([ConsumerGroupTopicPartitions("g1")]).values())[0].result()
    list(a.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
        "g3", [TopicPartition("fz", 1, 3)])]).values())[0].result()
    list(a.delete_records([TopicPartition("fz", 0, 5)]).values())[0].result()
    list(a.list_offsets({TopicPartition("fz", 0): OffsetSpec.latest(),
                         TopicPartition("fz", 1): OffsetSpec.earliest()}).values())[0].result()
    a.describe_cluster().result()
    # g1's static member stays until its session times out; g3 has none.
    a.delete_consumer_groups(["g3"])["g3"].result()
    a.delete_topics(["gone"])["gone"].result()


def kafka_python(bootstrap):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
    a = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kp-admin")
    a.create_topics([NewTopic("kp", 2, 1), NewTopic("kpgone", 1, 1)])
    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", acks="all")
    for i in range(50):
        p.send("kp", b"x%d" % i, key=b"k%d" % (i % 3), partition=i % 2)
    p.flush()
    p.close()
    c = KafkaConsumer("kp", bootstrap_servers=bootstrap, group_id="g2",
                      auto_offset_reset="earliest", consumer_timeout_ms=4000)
    sum(1 for _ in c)
    c.commit()
    c.close()
    a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kp", ["cleanup.policy"])])
    a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp", {"retention.ms": "500000"})])
    a.create_partitions({"kp": NewPartitions(3)})
    a.describe_log_dirs()
    a.describe_cluster()
    a.describe_topic_partitions(["kp", "kpgone"], response_partition_limit=2)
    a.describe_producers([TopicPartition("kp", 0), TopicPartition("kp", 1)])
    a.elect_leaders(0, {"kp": [0, 1, 7]}, raise_errors=False)
    a.list_partition_reassignments()
    a.list_transactions(state_filters=["Ongoing"])
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePattern, ResourcePatternFilter,
                             ResourceType)
    from kafka.errors import SecurityDisabledError
    try:
        a.describe_acls(ACLFilter(principal=None, host="*", operation=ACLOperation.ANY,
                                  permission_type=ACLPermissionType.ANY,
                                  resource_pattern=ResourcePatternFilter(
                                      ResourceType.TOPIC, None, ACLResourcePatternType.ANY)))
    except SecurityDisabledError:
        pass
    a.create_acls([ACL(principal="User:bob", host="*", operation=ACLOperation.READ,
                       permission_type=ACLPermissionType.ALLOW,
                       resource_pattern=ResourcePattern(ResourceType.TOPIC, "kp"))])
    a.delete_acls([ACLFilter(principal="User:bob", host="*", operation=ACLOperation.ANY,
                             permission_type=ACLPermissionType.ANY,
                             resource_pattern=ResourcePatternFilter(
                                 ResourceType.TOPIC, "kp", ACLResourcePatternType.LITERAL))])
    a.delete_records({TopicPartition("kp", 0): 2})
    a.list_group_offsets("g2")
    a.describe_groups(["g2"])
    a.list_groups()
    a.delete_groups(["g2"])
    a.delete_topics(["kpgone"])
    a.close()


def kcat(bootstrap):
    """Debian's kcat, built on an older librdkafka that speaks older versions."""
    run = lambda *args, data=None: subprocess.run(
        ["kcat", "-b", bootstrap, *args], input=data, timeout=60, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("-P", "-t", "kc", "-z", "snappy", "-K:", data=b"a:1\nb:2\nc:3\n")
    run("-C", "-t", "kc", "-e", "-q")
    run("-L")


def sasl(bootstrap):
    """Authentication of user alice (password alice-secret) with each mechanism, by
    librdkafka and kafka-python, each followed by a produce."""
    from confluent_kafka import Producer
    from kafka import KafkaProducer
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]:
        client[0] = "librdkafka-" + mechanism
        p = Producer({"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
                      "sasl.mechanism": mechanism, "sasl.username": "alice",
                      "sasl.password": "alice-secret"})
        p.produce("sasl", b"librdkafka " + mechanism.encode())
        assert p.flush(30) == 0
        client[0] = "kafka-python-" + mechanism
        k = KafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism=mechanism, sasl_plain_username="alice",
                          sasl_plain_password="alice-secret", acks="all")
        k.send("sasl", b"kafka-python " + mechanism.encode()).get(timeout=30)
        k.close()


def capture(broker_bin, extra, workloads):
    """Runs each workload against a new broker started with `extra` flags, through
    the proxy; returns the frames recorded."""
    del frames[:]
    connections[0] = 0
    port, proxy_port = free_port(), free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", proxy_port))
    listener.listen(64)
    threading.Thread(target=proxy, args=(listener, ("127.0.0.1", port)), daemon=True).start()
    with tempfile.TemporaryDirectory() as data:
        broker = subprocess.Popen(
            [broker_bin, "--data-dir", data, "--listen", "127.0.0.1:%d" % port,
             "--advertised-addr", "127.0.0.1:%d" % proxy_port, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            for line in broker.stdout:
                if "listening on" in line:
                    break
            bootstrap = "127.0.0.1:%d" % proxy_port
            for name, workload in workloads:
                client[0] = name
                workload(bootstrap)
            time.sleep(0.5)
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(30)
    with frames_lock:
        return list(frames)


def write(path, recorded, what):
    with open(path, "w") as f:
        f.write("# %s (tests/clients/capture_requests.py):\n" % what)
        f.write("# the client, its connection, then the frame without its length prefix, in hex.\n")
        for who, conn, frame in recorded:
            f.write("%s %d %s\n" % (who, conn, frame.hex()))
    print("%s: %d frames" % (path, len(recorded)))


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    broker_bin, out, sasl_out = argv[1], argv[2], argv[3]
    write(out, capture(broker_bin, [], [("librdkafka", librdkafka),
                                        ("kafka-python", kafka_python), ("kcat", kcat)]),
          "Request frames sent by real clients")
    with tempfile.TemporaryDirectory() as d:
        users = os.path.join(d, "users.json")
        with open(users, "w") as f:
            f.write('{"alice": "alice-secret"}')
        write(sasl_out, capture(broker_bin, ["--sasl-users", users], [("-", sasl)]),
              "Request frames of SASL authentications by real clients, user alice, "
              "password alice-secret")


if __name__ == "__main__":
    main(sys.argv)
