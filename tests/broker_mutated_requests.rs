//! Requests that real clients sent, mutated: the broker answers each one or closes
//! that connection, never panics, keeps serving everyone else, keeps what it
//! acknowledged, and starts again to the same data.
//!
//! The requests are those in `tests/data/client-requests.txt`, recorded from
//! librdkafka, kafka-python and kcat (`tests/clients/capture_requests.py`). Each
//! mutation flips bits, writes boundary values (0, -1, `i32::MAX`, ...) over
//! fields, cuts the frame short or repeats a piece of it. Most mutated record
//! batches get their CRC recomputed, so that the mutation reaches what comes
//! after the CRC check: the records, their compression and the handlers.
//!
//! The SASL exchanges in `tests/data/sasl-requests.txt` (SCRAM-SHA-256,
//! SCRAM-SHA-512 and PLAIN by librdkafka and kafka-python) are replayed and
//! mutated the same way against a broker that requires SASL: no request that
//! needs authentication is answered before a SaslAuthenticate succeeded, and no
//! replayed SCRAM exchange, mutated or not, authenticates.
//!
//! `MUTATED_REQUESTS` (default 3000) sets how many mutations each test sends and
//! `MUTATED_REQUESTS_SEED` the seed (default: a fixed one, so a failure repeats).

mod broker_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use kafka_protocol::{
    messages::{
        list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
        ApiKey, ApiVersionsRequest, BrokerId, ListOffsetsRequest, ListOffsetsResponse,
    },
    protocol::StrBytes,
};

use broker_support::{
    kcat, kcat_from_start,
    wire::{connect, metadata_of, read_frame, request_frame, response},
    Broker,
};

const CORPUS: &str = include_str!("data/client-requests.txt");
/// SASL authentications (user alice, password alice-secret) and what followed them.
const SASL_CORPUS: &str = include_str!("data/sasl-requests.txt");

/// xorshift64*: small, fast and the same everywhere, so a seed names a run.
struct Rng(u64);

impl Rng {
    /// Seeded through splitmix64, so that nearby seeds start far apart.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Values that sit on the edges of Kafka's integer fields and length prefixes.
const BOUNDARY: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0x00, 0x00],
    &[0xff, 0xff],
    &[0x7f, 0xff],
    &[0x80, 0x00],
    &[0x00, 0x00, 0x00, 0x00],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x80, 0x00, 0x00, 0x00],
    &[0x00, 0x00, 0x00, 0x01],
    &[0xff, 0xff, 0xff, 0xfe],
    &[0x00, 0x00, 0x10, 0x00],
];

/// One to a few mutations of `frame`; the API key and version (its first four
/// bytes) are left alone nine times in ten, so that most mutations reach the
/// decoder and handler of the request they started as, and always when
/// `keep_key` is set.
fn mutate(rng: &mut Rng, frame: &[u8], keep_key: bool) -> Vec<u8> {
    let mut b = frame.to_vec();
    let rounds = [1, 1, 1, 2, 3, 8][rng.below(6)];
    for _ in 0..rounds {
        let from = if keep_key || rng.chance(90) { 4 } else { 0 };
        if b.len() <= from {
            break;
        }
        let i = from + rng.below(b.len() - from);
        match rng.below(10) {
            0..=3 => b[i] ^= 1 << rng.below(8),
            4..=6 => {
                let v = BOUNDARY[rng.below(BOUNDARY.len())];
                let end = (i + v.len()).min(b.len());
                b[i..end].copy_from_slice(&v[..end - i]);
            }
            7 => b.truncate(i),
            8 => {
                let j = rng.below(b.len());
                let piece = b[j..(j + 1 + rng.below(64)).min(b.len())].to_vec();
                b.splice(i..i, piece);
            }
            _ => b[i] = rng.next() as u8,
        }
    }
    b
}

/// Where `frame` holds record batches (magic 2) whose CRC checks out.
fn batches(frame: &[u8]) -> Vec<usize> {
    (0..frame.len().saturating_sub(61))
        .filter(|&p| {
            let len = i32::from_be_bytes(frame[p + 8..p + 12].try_into().unwrap());
            let Ok(len) = usize::try_from(len) else {
                return false;
            };
            frame[p + 16] == 2
                && len >= 49
                && p + 12 + len <= frame.len()
                && u32::from_be_bytes(frame[p + 17..p + 21].try_into().unwrap())
                    == crc32c::crc32c(&frame[p + 21..p + 12 + len])
        })
        .collect()
}

/// Recomputes the CRC of the batches that started at `at` before mutation, over
/// what their (possibly mutated) length now covers.
fn fix_crcs(frame: &mut [u8], at: &[usize]) {
    for &p in at {
        if p + 21 > frame.len() {
            continue;
        }
        let len = i32::from_be_bytes(frame[p + 8..p + 12].try_into().unwrap());
        let end = usize::try_from(len)
            .map_or(frame.len(), |l| p + 12 + l)
            .clamp(p + 21, frame.len());
        let crc = crc32c::crc32c(&frame[p + 21..end]);
        frame[p + 17..p + 21].copy_from_slice(&crc.to_be_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Answered,
    Closed,
    /// No answer within the wait: a produce with acks=0, a fetch whose mutated
    /// wait is long, a join or sync waiting for its group (any other request
    /// silent for 30 s fails the test).
    Silent,
}

/// Sends `frame` on a connection of its own and waits `wait` for the answer.
fn send(addr: &str, frame: &[u8], wait: Duration) -> Outcome {
    exchange(&mut TcpStream::connect(addr).expect("connect"), frame, wait)
}

/// Whether a request may go unanswered for a while by design: a Produce (with
/// acks=0 never answered), a Fetch (its mutated wait), a JoinGroup or
/// SyncGroup (waiting for the rest of a group). Every other request is
/// answered or its connection closed.
fn may_wait(frame: &[u8]) -> bool {
    frame.len() >= 2 && matches!(i16::from_be_bytes([frame[0], frame[1]]), 0 | 1 | 11 | 14)
}

/// [`send`] with `wait`; a request that [`may_wait`] does not, still
/// unanswered then, is given 30 s more on its connection, to tell one that is
/// slow from one left hanging (`Silent`).
fn send_patiently(addr: &str, frame: &[u8], wait: Duration) -> Outcome {
    let mut s = TcpStream::connect(addr).expect("connect");
    match exchange(&mut s, frame, wait) {
        Outcome::Silent if !may_wait(frame) => {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut len = [0u8; 4];
            match s.read_exact(&mut len) {
                Ok(()) => Outcome::Answered,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Outcome::Silent
                }
                Err(_) => Outcome::Closed,
            }
        }
        o => o,
    }
}

/// Sends `frame` on `s` and waits `wait` for the answer, which must carry the
/// request's correlation id.
fn exchange(s: &mut TcpStream, frame: &[u8], wait: Duration) -> Outcome {
    answer(s, frame, wait).map_or_else(|o| o, |_| Outcome::Answered)
}

/// Like [`exchange`]; the answer's body (after its length) when there is one.
fn answer(s: &mut TcpStream, frame: &[u8], wait: Duration) -> Result<Vec<u8>, Outcome> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    if s.write_all(&out).is_err() {
        return Err(Outcome::Closed);
    }
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Outcome::Silent)
        }
        Err(_) => return Err(Outcome::Closed),
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.read_exact(&mut body).expect("the rest of an answer");
    assert!(
        frame.len() >= 8 && body.len() >= 4 && body[..4] == frame[4..8],
        "an answer whose correlation id is not the request's: request {}, answer {}",
        hex(frame),
        hex(&body)
    );
    Ok(body)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The broker still answers a well-formed request on a new connection.
fn answers(addr: &str) -> bool {
    let mut s = connect(addr);
    let frame = request_frame(ApiKey::ApiVersions, 0, 77, &ApiVersionsRequest::default());
    s.write_all(&frame).is_ok() && read_frame(&mut s).is_some()
}

/// Every topic's partitions with their log start and end offsets.
fn bounds(addr: &str) -> BTreeMap<String, Vec<(i64, i64)>> {
    let meta = metadata_of(addr);
    let mut s = connect(addr);
    let mut out = BTreeMap::new();
    for t in meta.topics {
        let name = t.name.expect("a name").0.to_string();
        let ids: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        let at = |timestamp: i64, s: &mut TcpStream| -> Vec<i64> {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(StrBytes::from_string(name.clone()).into())
                    .with_partitions(
                        ids.iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            s.write_all(&request_frame(ApiKey::ListOffsets, 7, 2, &req))
                .unwrap();
            let r: ListOffsetsResponse = response(s, ApiKey::ListOffsets, 7).1;
            let mut got: Vec<(i32, i64)> = r.topics[0]
                .partitions
                .iter()
                .map(|p| {
                    assert_eq!(
                        p.error_code, 0,
                        "ListOffsets of {name}/{}",
                        p.partition_index
                    );
                    (p.partition_index, p.offset)
                })
                .collect();
            got.sort_unstable();
            got.into_iter().map(|(_, o)| o).collect()
        };
        let (start, end) = (at(-2, &mut s), at(-1, &mut s));
        out.insert(name, start.into_iter().zip(end).collect());
    }
    out
}

/// The lines of a corpus file: client, connection number, frame.
fn parse(text: &str) -> Vec<(String, u32, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [client, conn, h] = f[..] else {
                panic!("not `client connection hex`: {l}")
            };
            let frame = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect();
            (
                client.to_string(),
                conn.parse().expect("a connection number"),
                frame,
            )
        })
        .collect()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn mutated_client_requests_get_an_answer_or_a_close_and_lose_nothing() {
    let corpus: Vec<Vec<u8>> = parse(CORPUS).into_iter().map(|(_, _, f)| f).collect();
    assert!(
        corpus.len() > 100,
        "the corpus holds {} frames",
        corpus.len()
    );
    let with_batches: Vec<(usize, Vec<usize>)> = corpus
        .iter()
        .enumerate()
        .map(|(i, f)| (i, batches(f)))
        .filter(|(_, at)| !at.is_empty())
        .collect();
    assert!(
        with_batches.len() >= 10,
        "{} produce frames",
        with_batches.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        dir.path(),
        &[
            "--log-cleaner-backoff-ms",
            "200",
            "--segment-bytes",
            "16384",
        ],
    );
    let addr = broker.addr.clone();

    // Records no request of the corpus names: whatever the mutations do, these stay.
    let witness: Vec<String> = (0..300).map(|i| format!("witness-{i}")).collect();
    kcat(
        &["-b", &addr, "-P", "-t", "witness", "-X", "acks=all"],
        (witness.join("\n") + "\n").as_bytes(),
    );

    // The corpus as it was sent sets up its topics, groups and producers, and
    // every request of it reaches its handler: none closes its connection.
    for frame in &corpus {
        assert_ne!(
            send(&addr, frame, Duration::from_millis(500)),
            Outcome::Closed,
            "a request of the corpus as recorded: {}\nlog:\n{}",
            hex(frame),
            broker.log_text()
        );
    }

    let seed: u64 = env_or("MUTATED_REQUESTS_SEED", 0x5eed_2026_1203);
    let count: usize = env_or("MUTATED_REQUESTS", 3000);
    let mut rng = Rng::new(seed);
    let mut outcomes: BTreeMap<(i16, Outcome), usize> = BTreeMap::new();
    let started = Instant::now();
    for n in 0..count {
        let (frame, at) = if rng.chance(40) {
            let (i, at) = &with_batches[rng.below(with_batches.len())];
            (&corpus[*i], at.as_slice())
        } else {
            (&corpus[rng.below(corpus.len())], &[][..])
        };
        let mut m = mutate(&mut rng, frame, false);
        if !at.is_empty() && rng.chance(80) {
            fix_crcs(&mut m, at);
        }
        let outcome = send_patiently(&addr, &m, Duration::from_millis(300));
        assert!(
            outcome != Outcome::Silent || may_wait(&m),
            "mutation {n} (seed {seed:#x}) was neither answered nor closed within 30 s: {}\nlog:\n{}",
            hex(&m),
            broker.log_text()
        );
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        *outcomes.entry((key, outcome)).or_default() += 1;
        if n % 100 == 99 {
            assert!(
                answers(&addr),
                "the broker stopped answering after mutation {n} (seed {seed:#x}): {}\nlog:\n{}",
                hex(&m),
                broker.log_text()
            );
        }
    }
    let total = |o: Outcome| -> usize {
        outcomes
            .iter()
            .filter(|((_, x), _)| *x == o)
            .map(|(_, n)| n)
            .sum()
    };
    eprintln!(
        "{count} mutations (seed {seed:#x}) in {:.1} s: {} answered, {} closed, {} silent",
        started.elapsed().as_secs_f64(),
        total(Outcome::Answered),
        total(Outcome::Closed),
        total(Outcome::Silent)
    );
    // Both ways out are exercised: mutations the decoder refuses, and mutations
    // that decode and reach a handler.
    assert!(total(Outcome::Answered) > count / 5, "{outcomes:?}");
    assert!(total(Outcome::Closed) > count / 5, "{outcomes:?}");
    // Most APIs of the corpus had a mutated request answered (those with one or
    // two small frames in the corpus may see all their mutations refused).
    let keys: BTreeSet<i16> = corpus
        .iter()
        .map(|f| i16::from_be_bytes([f[0], f[1]]))
        .collect();
    let answered = keys
        .iter()
        .filter(|k| outcomes.contains_key(&(**k, Outcome::Answered)))
        .count();
    assert!(
        count < 1000 || answered * 5 >= keys.len() * 4,
        "{answered} of {} APIs had a mutated request answered: {outcomes:?}",
        keys.len()
    );

    let log = broker.log_text();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    let read = |addr: &str| -> Vec<String> {
        kcat_from_start(addr, "witness", Some(0))
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(
        read(&addr),
        witness,
        "the witness topic after the mutations"
    );
    let before = bounds(&addr);
    assert!(
        before.contains_key("fz") && before.contains_key("witness"),
        "{before:?}"
    );

    assert!(broker.sigterm().success(), "log:\n{}", broker.log_text());
    let broker = broker.restart();
    assert_eq!(
        bounds(&broker.addr),
        before,
        "every partition's log start and end across a restart"
    );
    assert_eq!(
        read(&broker.addr),
        witness,
        "the witness topic after a restart"
    );
    let log = broker.log_text();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
}

/// API keys a client may send before it has authenticated.
const SASL_HANDSHAKE: i16 = 17;
const API_VERSIONS: i16 = 18;
const SASL_AUTHENTICATE: i16 = 36;

/// Sends one connection's `frames` in order, each once the one before was
/// answered, and stops at the first left unanswered. Returns whether a request
/// that needs authentication was answered; panics if one was although no
/// SaslAuthenticate had been answered without an error.
fn authenticates(addr: &str, frames: &[Vec<u8>]) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut sasl_ok = false;
    for f in frames {
        let key = i16::from_be_bytes([f[0], f[1]]);
        let version = i16::from_be_bytes([f[2], f[3]]);
        let Ok(body) = answer(&mut s, f, Duration::from_millis(500)) else {
            return false;
        };
        match key {
            SASL_AUTHENTICATE => {
                // Header v1 (a tag buffer after the correlation id) from v2 on.
                let at = if version >= 2 { 5 } else { 4 };
                sasl_ok = body.get(at..at + 2) == Some(&[0, 0][..]);
            }
            SASL_HANDSHAKE | API_VERSIONS => {}
            _ => {
                assert!(
                    sasl_ok,
                    "API key {key} answered before authentication: {}",
                    hex(f)
                );
                return true;
            }
        }
    }
    false
}

#[test]
fn mutated_sasl_exchanges_fail_alone_and_a_replayed_scram_exchange_never_authenticates() {
    // One entry per recorded connection: its client and its frames in order.
    let mut conns: Vec<(String, u32, Vec<Vec<u8>>)> = Vec::new();
    for (client, conn, frame) in parse(SASL_CORPUS) {
        match conns.last_mut() {
            Some((_, n, frames)) if *n == conn => frames.push(frame),
            _ => conns.push((client, conn, vec![frame])),
        }
    }
    let is_scram = |client: &str| client.contains("SCRAM");
    assert!(
        conns.iter().filter(|(c, _, _)| is_scram(c)).count() >= 4
            && conns.iter().filter(|(c, _, _)| c.contains("PLAIN")).count() >= 2,
        "{:?}",
        conns.iter().map(|(c, n, _)| (c, n)).collect::<Vec<_>>()
    );

    let users = tempfile::tempdir().unwrap();
    let path = users.path().join("users.json");
    std::fs::write(&path, r#"{"alice": "alice-secret"}"#).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Failures answered at once: nearly every replayed exchange fails, and at
    // the default 100 ms each the run would take minutes.
    let broker = Broker::start(
        dir.path(),
        &[
            "--sasl-users",
            path.to_str().unwrap(),
            "--connection-failed-authentication-delay-ms",
            "0",
        ],
    );
    let addr = &broker.addr;

    // As recorded: a PLAIN exchange authenticates again (the password is in it);
    // a SCRAM one must not, since the server's nonce differs every time.
    for (client, conn, frames) in &conns {
        assert_eq!(
            authenticates(addr, frames),
            !is_scram(client),
            "{client} connection {conn} replayed"
        );
    }
    let plain: Vec<&Vec<Vec<u8>>> = conns
        .iter()
        .filter(|(c, _, _)| !is_scram(c))
        .map(|(_, _, f)| f)
        .collect();

    let seed: u64 = env_or("MUTATED_REQUESTS_SEED", 0x5a51_2026_1203);
    let count: usize = env_or("MUTATED_REQUESTS", 3000);
    let mut rng = Rng::new(seed);
    let mut authenticated = 0;
    for n in 0..count {
        let (client, _, frames) = &conns[rng.below(conns.len())];
        // Mutate one frame up to the last SaslAuthenticate: what a client sends
        // before it has authenticated.
        let last = frames
            .iter()
            .rposition(|f| f[..2] == SASL_AUTHENTICATE.to_be_bytes())
            .expect("a SaslAuthenticate");
        let at = rng.below(last + 1);
        let mut mutated = frames.clone();
        mutated[at] = mutate(&mut rng, &frames[at], true);
        let ok = authenticates(addr, &mutated);
        assert!(
            !(ok && is_scram(client)),
            "a mutated replay of a {client} exchange authenticated (seed {seed:#x}, frame {at}: {})",
            hex(&mutated[at])
        );
        authenticated += usize::from(ok);
        if n % 100 == 99 {
            assert!(
                authenticates(addr, plain[rng.below(plain.len())]),
                "a recorded PLAIN exchange no longer authenticates after mutation {n} (seed {seed:#x}); log:\n{}",
                broker.log_text()
            );
        }
    }
    eprintln!(
        "{count} mutated SASL exchanges (seed {seed:#x}): {authenticated} authenticated (PLAIN)"
    );
    let log = broker.log_text();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
}
