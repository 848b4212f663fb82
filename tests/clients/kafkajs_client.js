#!/usr/bin/env node
// KafkaJS (a Kafka client written in JavaScript, independent of librdkafka and of
// the Java client) against the broker, for tests/broker_kafkajs.rs. Installed by
// scripts/install-test-deps.sh into tests/clients/node/node_modules.
//
// With KAFKAJS_SSL_CA set, every connection uses TLS and trusts that CA.
//
// Every subcommand prints one fact per line, "TAG field field ...", which the Rust
// test parses; anything else goes to stderr. A failure exits non-zero.
//
//   admin BROKER TOPIC
//   produce BROKER TOPIC COUNT PARTITIONS PREFIX
//   group BROKER TOPIC GROUP MEMBERS PRODUCE EXPECT MORE PREFIX
//   txn BROKER TOPIC
//   sasl BROKER TOPIC USER PASSWORD MECHANISM...
//   compacted-large BROKER TOPIC
//   consume BROKER TOPIC COUNT MAX_BYTES_PER_PARTITION
'use strict';

const path = require('path');
const { Kafka, logLevel, CompressionTypes, ConfigResourceTypes } = require(
  path.join(__dirname, 'node', 'node_modules', 'kafkajs'),
);

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

const [cmd, broker, ...args] = process.argv.slice(2);
// TLS when KAFKAJS_SSL_CA names the CA certificate (PEM) to trust.
const ssl = process.env.KAFKAJS_SSL_CA
  ? { ca: [require('fs').readFileSync(process.env.KAFKAJS_SSL_CA)] }
  : undefined;

const kafka = new Kafka({
  clientId: 'streamline-kafkajs-test',
  brokers: [broker],
  ssl,
  logLevel: logLevel.ERROR,
  retry: { retries: 5 },
  // Log lines to stderr; BigInt fields (offsets) printed as text.
  logCreator: () => ({ label, namespace, log }) => {
    const { message, ...extra } = log;
    const text = JSON.stringify(extra, (_, v) => (typeof v === 'bigint' ? v.toString() : v));
    process.stderr.write(`${label} ${namespace} ${message} ${text}\n`);
  },
});

const out = (...fields) => process.stdout.write(`${fields.join(' ')}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, cond, limitMs = 60000) {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > limitMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

// Sends COUNT messages, each send to one partition (round robin), acks=-1,
// idempotent, gzip-compressed: prints "ACK partition offset value" for each.
async function produce(producer, topic, count, partitions, prefix, first = 0) {
  const perSend = 10;
  for (let i = 0; i < count; i += perSend) {
    const partition = (i / perSend) % partitions;
    const values = [];
    for (let j = i; j < Math.min(i + perSend, count); j++) values.push(`${prefix}${first + j}`);
    const [res] = await producer.send({
      topic,
      acks: -1,
      compression: CompressionTypes.GZIP,
      messages: values.map((v) => ({ key: `k${v}`, value: v, partition })),
    });
    if (res.errorCode !== 0 || res.partition !== partition) {
      throw new Error(`unexpected produce result ${JSON.stringify(res)}`);
    }
    values.forEach((v, j) => out('ACK', partition, BigInt(res.baseOffset) + BigInt(j), v));
  }
}

async function cmdProduce([topic, count, partitions, prefix]) {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await produce(producer, topic, Number(count), Number(partitions), prefix);
  await producer.disconnect();
}

async function cmdAdmin([topic]) {
  const admin = kafka.admin();
  await admin.connect();
  const created = await admin.createTopics({
    waitForLeaders: true,
    topics: [{
      topic,
      numPartitions: 2,
      configEntries: [
        { name: 'cleanup.policy', value: 'compact' },
        { name: 'retention.ms', value: '3600000' },
      ],
    }],
  });
  out('CREATED', created);
  // Creating it again is not an error for KafkaJS: it answers false.
  out('CREATED_AGAIN', await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] }));
  const described = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['cleanup.policy', 'retention.ms'] }],
  });
  for (const e of described.resources[0].configEntries) out('CONFIG', e.configName, e.configValue, e.isDefault);

  // A keyless record on a compacted topic: refused, and the producer says why.
  const producer = kafka.producer({ retry: { retries: 0 } });
  await producer.connect();
  try {
    await producer.send({ topic, acks: -1, messages: [{ value: 'no key', partition: 0 }] });
    out('KEYLESS accepted');
  } catch (e) {
    out('KEYLESS', e.type || e.name);
  }

  // IncrementalAlterConfigs is not in KafkaJS; AlterConfigs replaces every config.
  await admin.alterConfigs({
    validateOnly: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.ms', value: '7200000' }] }],
  });
  const altered = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['cleanup.policy', 'retention.ms'] }],
  });
  for (const e of altered.resources[0].configEntries) out('ALTERED', e.configName, e.configValue, e.isDefault);

  await admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] });
  const meta = await admin.fetchTopicMetadata({ topics: [topic] });
  out('PARTITIONS', meta.topics[0].partitions.length);

  const base = Date.now() - 60000;
  const [sent] = await producer.send({
    topic,
    acks: -1,
    messages: [0, 1, 2, 3, 4, 5].map((i) => ({
      key: `key${i}`, value: `v${i}`, partition: 0, timestamp: String(base + i * 1000), headers: { n: String(i) },
    })),
  });
  out('SENT', sent.partition, sent.baseOffset);
  for (const p of await admin.fetchTopicOffsetsByTimestamp(topic, base + 2500)) out('BYTIME', p.partition, p.offset);
  await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '2' }] });
  for (const p of await admin.fetchTopicOffsets(topic)) out('OFFSETS', p.partition, p.low, p.high);

  // Read partition 0 back from its new log start with a group consumer.
  const consumer = kafka.consumer({ groupId: `${topic}-reader` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const read = [];
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      read.push(`READ ${partition} ${message.offset} ${message.value} ${message.key} ${message.headers.n} ${message.timestamp - base}`);
    },
  });
  await until('4 records', () => read.length >= 4);
  await consumer.disconnect();
  read.forEach((l) => out(l));

  await producer.disconnect();
  out('DELETED', (await admin.deleteTopics({ topics: [topic] })) === undefined);
  out('LISTED', (await admin.listTopics()).includes(topic));
  await admin.disconnect();
}

// MEMBERS consumers join GROUP (TOPIC is created with 4 partitions if missing);
// once the partitions are split among all of them, PRODUCE messages are produced
// and they read until EXPECT messages are in. With MORE > 0, all but the first
// then leave, the first rejoins owning every partition, and MORE messages are
// produced and read. Prints "ASSIGNED member p,p" for each assignment received,
// "ACK partition offset value" for each message produced, "MSG partition offset
// value member" for each message read, and, after everyone left, "COMMITTED
// partition offset" for the group.
async function cmdGroup([topic, group, members, toProduce, expect, more, prefix]) {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 4 }] });
  const partitions = (await admin.fetchTopicMetadata({ topics: [topic] })).topics[0].partitions.length;
  const seen = [];
  const assigned = new Map();
  const consumers = [];
  for (let m = 0; m < Number(members); m++) {
    const c = kafka.consumer({ groupId: group, sessionTimeout: 10000, heartbeatInterval: 300, maxWaitTimeInMs: 200 });
    c.on(c.events.GROUP_JOIN, (e) => {
      const parts = (e.payload.memberAssignment[topic] || []).slice().sort((a, b) => a - b);
      assigned.set(m, parts);
      out('ASSIGNED', m, parts.join(',') || '-');
    });
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
    await c.run({
      eachMessage: async ({ partition, message }) => {
        seen.push(message.value.toString());
        out('MSG', partition, message.offset, message.value, m);
      },
    });
    consumers.push(c);
  }
  const split = () => {
    const all = [...assigned.values()].flat();
    return assigned.size === consumers.length && all.length === partitions && new Set(all).size === partitions;
  };
  await until('the partitions to be split among every member', split);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await produce(producer, topic, Number(toProduce), partitions, prefix);
  await until(`${expect} messages`, () => seen.length >= Number(expect));
  if (Number(more) > 0) {
    for (const c of consumers.splice(1)) await c.disconnect();
    for (let m = 1; m < Number(members); m++) assigned.delete(m);
    await until('the first member to own every partition', split);
    await produce(producer, topic, Number(more), partitions, prefix, Number(toProduce));
    await until(`${more} more messages`, () => seen.length >= Number(expect) + Number(more));
  }
  await producer.disconnect();
  for (const c of consumers) await c.disconnect();
  const [committed] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
  for (const p of committed.partitions) out('COMMITTED', p.partition, p.offset);
  await admin.disconnect();
}

async function cmdTxn([topic]) {
  const start = Date.now();
  const producer = kafka.producer({ transactionalId: 'streamline-txn', idempotent: true, maxInFlightRequests: 1 });
  try {
    await producer.connect();
    const txn = await producer.transaction();
    await txn.send({ topic, messages: [{ key: 'k', value: 'v' }] });
    await txn.commit();
    out('TXN committed');
  } catch (e) {
    const cause = e.originalError || e.cause || e;
    out('TXN_ERROR', Date.now() - start, cause.type || cause.name, '|', cause.message);
  } finally {
    await producer.disconnect().catch(() => {});
  }
}

// Produces one message per mechanism (lower case, as KafkaJS names them) as USER
// with PASSWORD: "SASL mechanism ok offset" or "SASL mechanism error type".
async function cmdSasl([topic, username, password, ...mechanisms]) {
  for (const mechanism of mechanisms) {
    const client = new Kafka({
      clientId: 'streamline-kafkajs-sasl',
      brokers: [broker],
      ssl,
      logLevel: logLevel.NOTHING,
      retry: { retries: 0 },
      sasl: { mechanism, username, password },
    });
    const producer = client.producer();
    try {
      await producer.connect();
      const [r] = await producer.send({ topic, acks: -1, messages: [{ value: `kafkajs-${mechanism}` }] });
      out('SASL', mechanism, 'ok', r.baseOffset);
    } catch (e) {
      out('SASL', mechanism, 'error', e.name);
    } finally {
      await producer.disconnect().catch(() => {});
    }
  }
}

// Creates compacted TOPIC (256 KiB segments) and produces, without
// compression: a=old (offset 0); one batch of a=new and b0..b9 of 20,000 bytes
// each (offsets 1..11); c0..c3 of 20,000 bytes, one batch each (12..15), the
// third of which starts a new segment. Compaction of the first then leaves a
// batch without records at offset 0, before the large batch.
// Prints "ACK offset key" for each message.
async function cmdCompactedLarge([topic]) {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({
    waitForLeaders: true,
    topics: [{
      topic,
      numPartitions: 1,
      configEntries: [
        { name: 'cleanup.policy', value: 'compact' },
        { name: 'segment.bytes', value: '262144' },
        { name: 'min.cleanable.dirty.ratio', value: '0.01' },
      ],
    }],
  });
  await admin.disconnect();
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const big = 'x'.repeat(20000);
  const sends = [
    [{ key: 'a', value: 'old' }],
    [{ key: 'a', value: 'new' }, ...Array.from({ length: 10 }, (_, i) => ({ key: `b${i}`, value: big }))],
    ...Array.from({ length: 4 }, (_, i) => [{ key: `c${i}`, value: big }]),
  ];
  for (const messages of sends) {
    const [res] = await producer.send({ topic, acks: -1, messages: messages.map((m) => ({ ...m, partition: 0 })) });
    if (res.errorCode !== 0) throw new Error(`unexpected produce result ${JSON.stringify(res)}`);
    messages.forEach((m, j) => out('ACK', BigInt(res.baseOffset) + BigInt(j), m.key));
  }
  await producer.disconnect();
}

// A consumer group of one reading TOPIC from the start with
// maxBytesPerPartition MAX_BYTES_PER_PARTITION until COUNT messages came or 30
// s passed: "MSG offset key" for each, then "FETCHES n" (fetch requests sent).
async function cmdConsume([topic, count, maxBytesPerPartition]) {
  const c = kafka.consumer({
    groupId: `consume-${process.pid}`,
    maxBytesPerPartition: Number(maxBytesPerPartition),
    maxWaitTimeInMs: 200,
  });
  let seen = 0;
  let fetches = 0;
  c.on(c.events.FETCH, () => { fetches += 1; });
  await c.connect();
  await c.subscribe({ topic, fromBeginning: true });
  await c.run({
    eachMessage: async ({ message }) => {
      seen += 1;
      out('MSG', message.offset, message.key);
    },
  });
  await until(`${count} messages`, () => seen >= Number(count), 30000).catch(() => {});
  await c.disconnect();
  out('FETCHES', fetches);
}

const commands = {
  admin: cmdAdmin,
  produce: cmdProduce,
  group: cmdGroup,
  txn: cmdTxn,
  sasl: cmdSasl,
  'compacted-large': cmdCompactedLarge,
  consume: cmdConsume,
};
if (!commands[cmd] || !broker) {
  process.stderr.write('usage: kafkajs_client.js admin|produce|group|txn|sasl|compacted-large|consume BROKER ARGS...\n');
  process.exit(2);
}
commands[cmd](args).then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`FAILED ${e.stack || e}\n`);
    process.exit(1);
  },
);
