//! How many names a request lists, and how many tagged fields it carries,
//! counted on the wire before it is decoded.
//!
//! Decoding makes each entry of a list a value of its own, and the answer gives
//! each entry one of its own: an empty group id is one byte in a DescribeGroups v5
//! frame, 32 once decoded and some 200 in the answer being built. A frame near
//! `--max-request-bytes` (100 MiB by default) of such entries would take gigabytes
//! before a handler could look at it. So the lists of names (topics, group ids,
//! ListGroups and ListTransactions filters, config resources, their keys and
//! configs, an OffsetFetch's groups, JoinGroup protocols, SyncGroup
//! assignments, LeaveGroup members, ACL creations and filters, SCRAM users),
//! the partitions of a Produce, a Fetch, an OffsetCommit, an OffsetFetch, a
//! ListOffsets, a DeleteRecords, an OffsetDelete, a DescribeLogDirs, an
//! ElectLeaders, a DescribeProducers or a ListPartitionReassignments (counted
//! over all the request's topics, an OffsetFetch's over all its groups too),
//! a Fetch's forgotten topics and their partitions (over all of them), and
//! the replica assignments, broker ids and configs of a CreateTopics or a
//! CreatePartitions (counted over all its topics) are counted first, and a request
//! with more than [`MAX_LISTED`] in one of them is refused undecoded: its
//! connection is closed with a log line, as for a malformed frame.
//!
//! Tagged fields (flexible versions) are counted the same way. The decoder keeps
//! each unknown one in a map of its struct: a field of two bytes on the wire
//! (its tag and an empty value) takes some 70 bytes decoded, and the first one
//! of a struct some 400, so a frame of 100 MiB of them took over a gigabyte and
//! seconds of a worker. A tagged section (the request header's, the body's, each
//! struct's) may hold at most [`MAX_TAGGED`] fields, and a request at most
//! [`MAX_LISTED`] over all its sections. To reach them the walk goes through
//! every field of the body, in every version.

use kafka_protocol::messages::ApiKey;

/// The most entries a request may have in one of the lists counted here: far more
/// than any client sends (an admin client describing every group of a broker
/// names each once, a producer or consumer each partition it writes or reads),
/// few enough that decoding and answering them takes tens of MiB. A request's
/// tagged fields, over all its sections, are held to it too.
pub const MAX_LISTED: usize = 100_000;

/// The most fields one tagged section may hold: the request header's, the
/// body's own, or any struct's in it. Clients send none, or one or two that a
/// newer version of the protocol defines.
pub const MAX_TAGGED: usize = 1_000;

/// A cursor over a request body; `None` from any read means the body ended early
/// (the decoder then reports the malformed request), or that a tagged section
/// passed a bound (`refused` says so).
struct Wire<'a> {
    buf: &'a [u8],
    /// Flexible versions: compact strings and arrays, tagged fields.
    compact: bool,
    /// Tagged fields counted so far, over every section walked.
    tagged: usize,
    /// The most tagged fields the request may hold over all its sections.
    max_tagged: usize,
    /// Why the request is refused, once a tagged section passes a bound.
    refused: Option<String>,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8], compact: bool, max_tagged: usize) -> Wire<'a> {
        Wire {
            buf,
            compact,
            tagged: 0,
            max_tagged,
            refused: None,
        }
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// An unsigned varint of at most 5 bytes and 32 bits, as Kafka's
    /// `ByteUtils.readUnsignedVarint` reads it. The decoder stops after a
    /// fifth byte whatever its continuation bit says and drops the bits past
    /// 32, so one of those would make a count the walk cannot read (and lets
    /// through) a count the decoder reads: such a varint is refused.
    fn varint(&mut self) -> Option<usize> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return match u32::try_from(v) {
                    Ok(v) => usize::try_from(v).ok(),
                    Err(_) => self.malformed("holds a varint above 2^32 - 1"),
                };
            }
        }
        self.malformed("holds a varint longer than 5 bytes")
    }

    /// Refuses the request as malformed (`what` says why).
    fn malformed(&mut self, what: &str) -> Option<usize> {
        self.refused.get_or_insert_with(|| what.to_string());
        None
    }

    /// An array's or a string's length; null is 0.
    fn len(&mut self, wide: bool) -> Option<usize> {
        if self.compact {
            return Some(self.varint()?.saturating_sub(1));
        }
        let n = if wide {
            i32::from_be_bytes(self.take(4)?.try_into().ok()?)
        } else {
            i32::from(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
        };
        Some(usize::try_from(n).unwrap_or(0))
    }

    fn array_len(&mut self) -> Option<usize> {
        self.len(true)
    }

    fn skip_string(&mut self) -> Option<()> {
        let n = self.len(false)?;
        self.skip(n)
    }

    /// A byte field (a record set, a SASL token, a member's metadata).
    fn skip_bytes(&mut self) -> Option<()> {
        let n = self.len(true)?;
        self.skip(n)
    }

    /// A struct's tagged fields (flexible versions only), counted: `None`
    /// with `refused` set when the section holds more than [`MAX_TAGGED`] or
    /// brings the request's count past `max_tagged`.
    fn skip_tagged_fields(&mut self) -> Option<()> {
        if !self.compact {
            return Some(());
        }
        let n = self.varint()?;
        self.tagged = self.tagged.saturating_add(n);
        if n > MAX_TAGGED {
            self.refused = Some(format!(
                "has {n} fields in one tagged section; at most {MAX_TAGGED} are accepted"
            ));
            return None;
        }
        if self.tagged > self.max_tagged {
            self.refused = Some(format!(
                "has {} tagged fields; at most {} are accepted in one request",
                self.tagged, self.max_tagged
            ));
            return None;
        }
        for _ in 0..n {
            self.varint()?;
            let size = self.varint()?;
            self.skip(size)?;
        }
        Some(())
    }
}

/// An entry of a list (a topic's partitions, a resource's configs, an
/// assignment's broker ids), as it is on the wire.
enum Entry<'a> {
    /// A struct whose fields this skips; in flexible versions its tagged
    /// fields follow.
    Fields(&'a dyn Fn(&mut Wire<'_>) -> Option<()>),
    /// A bare value of this many bytes (an INT32 partition index, an INT64
    /// producer id), with no tagged fields of its own.
    Fixed(usize),
    /// A bare string (a DescribeConfigs key), with no tagged fields of its own.
    Name,
}

/// Skips `n` entries of a list.
fn skip_entries(w: &mut Wire<'_>, n: usize, entry: &Entry<'_>) -> Option<()> {
    match entry {
        Entry::Fields(fields) => {
            for _ in 0..n {
                fields(w)?;
                w.skip_tagged_fields()?;
            }
        }
        Entry::Fixed(size) => w.skip(n.saturating_mul(*size))?,
        Entry::Name => {
            for _ in 0..n {
                w.skip_string()?;
            }
        }
    }
    Some(())
}

/// A walk's outcome: `None` where the body ended early (or a tagged section
/// passed a bound), `Some(Some(reason))` where a list passed [`MAX_LISTED`]
/// (the walk stops there), `Some(None)` once every field is walked.
type Walked = Option<Option<String>>;

/// The topics and partitions a request lists, counted so far over all its
/// lists of topics (an OffsetFetch v8 has one a group).
#[derive(Default)]
struct Counted {
    topics: usize,
    partitions: usize,
}

/// Walks a list of topics, each `name` and then a list of partitions, adding
/// them to `counted`: the reason to refuse the request when it holds more
/// than [`MAX_LISTED`] topics, or partitions over all its topics.
fn topic_partitions(
    w: &mut Wire<'_>,
    counted: &mut Counted,
    over: &dyn Fn(usize, &str) -> Option<String>,
    name: &dyn Fn(&mut Wire<'_>) -> Option<()>,
    partition: &Entry<'_>,
) -> Walked {
    let Counted { topics, partitions } = counted;
    let counts = [(topics, "topics"), (partitions, "partitions")];
    nested(w, counts, over, name, partition)
}

/// Walks a list of `outer` entries (the first of `counts`), each `head` and
/// then a list of `inner` entries (the second), and its tagged fields in
/// flexible versions, adding each list's length to its count: the reason to
/// refuse the request when a count passes [`MAX_LISTED`], the inner one summed
/// over all the outer entries.
fn nested(
    w: &mut Wire<'_>,
    counts: [(&mut usize, &str); 2],
    over: &dyn Fn(usize, &str) -> Option<String>,
    head: &dyn Fn(&mut Wire<'_>) -> Option<()>,
    entry: &Entry<'_>,
) -> Walked {
    let [(outer, outer_what), (inner, inner_what)] = counts;
    let n = w.array_len()?;
    *outer = outer.saturating_add(n);
    if let Some(r) = over(*outer, outer_what) {
        return Some(Some(r));
    }
    for _ in 0..n {
        head(w)?;
        let n = w.array_len()?;
        *inner = inner.saturating_add(n);
        if let Some(r) = over(*inner, inner_what) {
            return Some(Some(r));
        }
        skip_entries(w, n, entry)?;
        w.skip_tagged_fields()?;
    }
    Some(None)
}

/// The reason to refuse a request of `api` at `version` whose body (after the
/// header) is `body`: one of its lists is longer than [`MAX_LISTED`], one of
/// its tagged sections holds more than [`MAX_TAGGED`] fields, or all of them
/// more than [`MAX_LISTED`].
pub fn check(api: ApiKey, version: i16, body: &[u8]) -> Result<(), String> {
    walk(api, version, body, MAX_LISTED).0
}

/// The reason to refuse a request of `api` at `version` whose frame (from its
/// header, without the length) is `frame`: a header with more than
/// [`MAX_TAGGED`] tagged fields. A header that ends early is left to the
/// decoder.
pub fn check_header(api: ApiKey, version: i16, frame: &[u8]) -> Result<(), String> {
    if api.request_header_version(version) < 2 {
        return Ok(());
    }
    // Key, version, correlation id, then a client id that is a STRING even
    // in flexible versions.
    let mut w = Wire::new(frame, false, MAX_TAGGED);
    if w.skip(8).and_then(|()| w.skip_string()).is_none() {
        return Ok(());
    }
    w.compact = true;
    match w.skip_tagged_fields() {
        None => w.refused.map_or(Ok(()), |r| {
            Err(format!("{api:?} v{version} request header {r}"))
        }),
        Some(()) => Ok(()),
    }
}

/// [`check`] with at most `max_tagged` tagged fields over the request, and
/// the bytes of `body` left after its last field: `None` where the walk
/// stopped (the body ended early, or a bound was passed).
fn walk(
    api: ApiKey,
    version: i16,
    body: &[u8],
    max_tagged: usize,
) -> (Result<(), String>, Option<usize>) {
    let mut w = Wire::new(body, api.request_header_version(version) >= 2, max_tagged);
    let over = |n: usize, what: &str| {
        (n > MAX_LISTED).then(|| {
            format!(
                "{api:?} v{version} lists {n} {what}; at most {MAX_LISTED} are accepted in one request"
            )
        })
    };
    let walked = fields(api, version, &mut w, &over);
    // The body's own tagged fields come after all the others.
    let walked = match walked {
        Some(None) => w.skip_tagged_fields().map(|()| None),
        other => other,
    };
    let rest = matches!(walked, Some(None)).then_some(w.buf.len());
    let refused = match (w.refused, walked) {
        (Some(r), _) => Some(format!("{api:?} v{version} {r}")),
        (None, Some(r)) => r,
        (None, None) => None,
    };
    (refused.map_or(Ok(()), Err), rest)
}

/// Walks every field of a request body of `api` at `version` but its own
/// tagged fields, counting its lists with `over`.
fn fields(
    api: ApiKey,
    version: i16,
    w: &mut Wire<'_>,
    over: &dyn Fn(usize, &str) -> Option<String>,
) -> Walked {
    // `n` bytes in the versions from `v` on.
    let since = |v: i16, n: usize| if version >= v { n } else { 0 };
    let named = |w: &mut Wire<'_>| w.skip_string();
    // The strings from version `v` on.
    let string_since = |w: &mut Wire<'_>, v: i16| {
        if version >= v {
            w.skip_string()
        } else {
            Some(())
        }
    };
    // A list of `what`, each `entry`.
    let list = |w: &mut Wire<'_>, what: &str, entry: &Entry<'_>| -> Walked {
        let n = w.array_len()?;
        if let Some(r) = over(n, what) {
            return Some(Some(r));
        }
        skip_entries(w, n, entry)?;
        Some(None)
    };
    // A request's topics, each named, with its partitions' `fields`.
    let topics = |w: &mut Wire<'_>, fields: &dyn Fn(&mut Wire<'_>) -> Option<()>| {
        let partition = Entry::Fields(fields);
        topic_partitions(w, &mut Counted::default(), over, &named, &partition)
    };
    // A request's topics, each named, with bare partition indexes.
    let indexed = |w: &mut Wire<'_>| {
        topic_partitions(w, &mut Counted::default(), over, &named, &Entry::Fixed(4))
    };
    // Config resources (type, name), each with a list of `what`.
    let resources = |w: &mut Wire<'_>, what: &str, entry: &Entry<'_>| {
        let resource = |w: &mut Wire<'_>| {
            w.take(1)?; // type
            w.skip_string() // name
        };
        let (mut resources, mut entries) = (0, 0);
        let counts = [(&mut resources, "resources"), (&mut entries, what)];
        nested(w, counts, over, &resource, entry)
    };
    // A config's name, then its value (nullable).
    let config = |w: &mut Wire<'_>| {
        w.skip_string()?;
        w.skip_string()
    };
    // An ACL's or an ACL filter's fields: resource type, name, pattern type,
    // principal, host, operation, permission type.
    let acl = |w: &mut Wire<'_>| {
        w.take(1)?;
        w.skip_string()?;
        w.take(1)?;
        w.skip_string()?;
        w.skip_string()?;
        w.skip(2)
    };
    // Replica assignments, each `head` and then a list of broker ids, counted
    // over all a request's topics.
    let assignments =
        |w: &mut Wire<'_>, counts: [&mut usize; 2], head: &dyn Fn(&mut Wire<'_>) -> Option<()>| {
            let [assignments, brokers] = counts;
            let counts = [
                (assignments, "replica assignments"),
                (brokers, "broker ids"),
            ];
            nested(w, counts, over, head, &Entry::Fixed(4))
        };
    // Returns the refusal of a list, if any, from the walk in progress.
    macro_rules! counted {
        ($walk:expr) => {
            if let Some(r) = $walk? {
                return Some(Some(r));
            }
        };
    }
    match api {
        ApiKey::Metadata => {
            // Topic id (v10), name (nullable from v10).
            let topic = |w: &mut Wire<'_>| {
                w.skip(since(10, 16))?;
                w.skip_string()
            };
            counted!(list(w, "topics", &Entry::Fields(&topic)));
            // Allow auto topic creation (v4), include cluster authorized
            // operations (v8-v10), include topic authorized operations (v8).
            let cluster = usize::from((8..=10).contains(&version));
            w.skip(since(4, 1) + cluster + since(8, 1))?;
        }
        ApiKey::ApiVersions => {
            // Client software name and version (v3).
            string_since(w, 3)?;
            string_since(w, 3)?;
        }
        ApiKey::FindCoordinator => {
            if version <= 3 {
                w.skip_string()?; // key
            }
            w.skip(since(1, 1))?; // key type
            if version >= 4 {
                counted!(list(w, "coordinator keys", &Entry::Name));
            }
        }
        ApiKey::Heartbeat => {
            w.skip_string()?; // group id
            w.skip(4)?; // generation id
            w.skip_string()?; // member id
            string_since(w, 3)?; // group instance id
        }
        ApiKey::InitProducerId => {
            w.skip_string()?; // transactional id
            w.skip(4 + since(3, 8 + 2))?; // timeout; producer id and epoch (v3)
        }
        ApiKey::DescribeCluster => {
            // Include cluster authorized operations, endpoint type (v1),
            // include fenced brokers (v2).
            w.skip(1 + since(1, 1) + since(2, 1))?;
        }
        ApiKey::DescribeAcls => acl(w)?,
        ApiKey::SaslHandshake => w.skip_string()?, // mechanism
        ApiKey::SaslAuthenticate => w.skip_bytes()?, // auth bytes
        ApiKey::DescribeGroups => {
            counted!(list(w, "group ids", &Entry::Name));
            w.skip(since(3, 1))?; // include authorized operations
        }
        ApiKey::DeleteGroups => counted!(list(w, "group ids", &Entry::Name)),
        ApiKey::DeleteTopics => {
            if version >= 6 {
                // Name (nullable), topic id.
                let topic = |w: &mut Wire<'_>| {
                    w.skip_string()?;
                    w.skip(16)
                };
                counted!(list(w, "topics", &Entry::Fields(&topic)));
            } else {
                counted!(list(w, "topics", &Entry::Name));
            }
            w.skip(4)?; // timeout
        }
        ApiKey::DescribeTopicPartitions => {
            counted!(list(w, "topics", &Entry::Fields(&named)));
            w.skip(4)?; // response partition limit
                        // A cursor (topic name, partition) when the byte before it is 1.
            if w.take(1)? == [1] {
                w.skip_string()?;
                w.skip(4)?;
                w.skip_tagged_fields()?;
            }
        }
        ApiKey::DescribeUserScramCredentials => {
            counted!(list(w, "users", &Entry::Fields(&named)));
        }
        ApiKey::CreateAcls => counted!(list(w, "ACL creations", &Entry::Fields(&acl))),
        ApiKey::DeleteAcls => counted!(list(w, "ACL filters", &Entry::Fields(&acl))),
        ApiKey::ElectLeaders => {
            w.skip(since(1, 1))?; // election type
            counted!(indexed(w));
            w.skip(4)?; // timeout
        }
        ApiKey::DescribeProducers | ApiKey::DescribeLogDirs => counted!(indexed(w)),
        ApiKey::ListPartitionReassignments => {
            w.skip(4)?; // timeout
            counted!(indexed(w));
        }
        ApiKey::ListTransactions => {
            counted!(list(w, "states in its filter", &Entry::Name));
            counted!(list(w, "producer ids in its filter", &Entry::Fixed(8)));
            w.skip(since(1, 8))?; // duration filter
            string_since(w, 2)?; // transactional id pattern
        }
        ApiKey::JoinGroup => {
            w.skip_string()?; // group id
            w.skip(4 + since(1, 4))?; // session timeout, rebalance timeout (v1)
            w.skip_string()?; // member id
            string_since(w, 5)?; // group instance id
            w.skip_string()?; // protocol type
                              // Name, metadata.
            let protocol = |w: &mut Wire<'_>| {
                w.skip_string()?;
                w.skip_bytes()
            };
            counted!(list(w, "protocols", &Entry::Fields(&protocol)));
            string_since(w, 8)?; // reason
        }
        ApiKey::SyncGroup => {
            w.skip_string()?; // group id
            w.skip(4)?; // generation id
            w.skip_string()?; // member id
            string_since(w, 3)?; // group instance id
            string_since(w, 5)?; // protocol type
            string_since(w, 5)?; // protocol name
                                 // Member id, assignment.
            let assignment = |w: &mut Wire<'_>| {
                w.skip_string()?;
                w.skip_bytes()
            };
            counted!(list(w, "assignments", &Entry::Fields(&assignment)));
        }
        ApiKey::LeaveGroup => {
            w.skip_string()?; // group id
            if version <= 2 {
                w.skip_string()?; // member id
            } else {
                // Member id, group instance id, reason (v5).
                let member = |w: &mut Wire<'_>| {
                    w.skip_string()?;
                    w.skip_string()?;
                    string_since(w, 5)
                };
                counted!(list(w, "members", &Entry::Fields(&member)));
            }
        }
        ApiKey::AlterUserScramCredentials => {
            // User, mechanism.
            let deletion = |w: &mut Wire<'_>| {
                w.skip_string()?;
                w.skip(1)
            };
            counted!(list(w, "credential deletions", &Entry::Fields(&deletion)));
            // User, mechanism, iterations, salt, salted password.
            let upsertion = |w: &mut Wire<'_>| {
                w.skip_string()?;
                w.skip(1 + 4)?;
                w.skip_bytes()?;
                w.skip_bytes()
            };
            counted!(list(w, "credential upsertions", &Entry::Fields(&upsertion)));
        }
        // From v2, the oldest the codec reads.
        ApiKey::CreateTopics => {
            let topics = w.array_len()?;
            counted!(Some(over(topics, "topics")));
            let (mut assigned, mut brokers, mut configs) = (0, 0, 0usize);
            let index = |w: &mut Wire<'_>| w.skip(4); // partition
            for _ in 0..topics {
                // Name, partition count, replication factor; then
                // assignments, each a partition and its broker ids.
                w.skip_string()?;
                w.skip(6)?;
                counted!(assignments(w, [&mut assigned, &mut brokers], &index));
                let n = w.array_len()?;
                configs = configs.saturating_add(n);
                counted!(Some(over(configs, "configs")));
                skip_entries(w, n, &Entry::Fields(&config))?;
                w.skip_tagged_fields()?;
            }
            w.skip(4 + 1)?; // timeout, validate only
        }
        ApiKey::CreatePartitions => {
            let topics = w.array_len()?;
            counted!(Some(over(topics, "topics")));
            let (mut assigned, mut brokers) = (0, 0);
            for _ in 0..topics {
                // Name, partition count; then assignments (null: none),
                // each a list of broker ids.
                w.skip_string()?;
                w.skip(4)?;
                counted!(assignments(w, [&mut assigned, &mut brokers], &|_| Some(())));
                w.skip_tagged_fields()?;
            }
            w.skip(4 + 1)?; // timeout, validate only
        }
        ApiKey::ListGroups => {
            if version >= 4 {
                counted!(list(w, "states in its filter", &Entry::Name));
            }
            if version >= 5 {
                counted!(list(w, "types in its filter", &Entry::Name));
            }
        }
        ApiKey::Produce => {
            if version >= 3 {
                w.skip_string()?; // transactional id
            }
            w.skip(6)?; // acks, timeout
                        // Topic name (up to v12) or id (v13).
            let name = |w: &mut Wire<'_>| {
                if version >= 13 {
                    w.skip(16)
                } else {
                    w.skip_string()
                }
            };
            // Index, records.
            let partition = |w: &mut Wire<'_>| {
                w.skip(4)?;
                w.skip_bytes()
            };
            let partition = Entry::Fields(&partition);
            counted!(topic_partitions(
                w,
                &mut Counted::default(),
                over,
                &name,
                &partition
            ));
        }
        ApiKey::Fetch => {
            // Replica id (up to v14), max wait, min bytes, max bytes (v3),
            // isolation level (v4), session id and epoch (v7).
            w.skip(4 - since(15, 4) + 8 + since(3, 4) + since(4, 1) + since(7, 8))?;
            // Partition, current leader epoch (v9), fetch offset, last fetched
            // epoch (v12), log start offset (v5), partition max bytes.
            let partition = 4 + since(9, 4) + 8 + since(12, 4) + since(5, 8) + 4;
            // Topic name (up to v12) or id (v13).
            let name = |w: &mut Wire<'_>| {
                if version >= 13 {
                    w.skip(16)
                } else {
                    w.skip_string()
                }
            };
            let fields = |w: &mut Wire<'_>| w.skip(partition);
            let partition = Entry::Fields(&fields);
            counted!(topic_partitions(
                w,
                &mut Counted::default(),
                over,
                &name,
                &partition
            ));
            if version >= 7 {
                // Each a topic and its partition indexes, counted over all
                // of them: a list's stated length is what the decoder
                // reserves room for before it reads an entry.
                let (mut topics, mut partitions) = (0, 0);
                let counts = [
                    (&mut topics, "forgotten topics"),
                    (&mut partitions, "forgotten partitions"),
                ];
                counted!(nested(w, counts, over, &name, &Entry::Fixed(4)));
            }
            string_since(w, 11)?; // rack id
        }
        // From v2, the oldest the codec reads (v1 had a commit timestamp).
        ApiKey::OffsetCommit => {
            w.skip_string()?; // group id
            w.skip(4)?; // generation id or member epoch
            w.skip_string()?; // member id
            string_since(w, 7)?; // group instance id
            if version <= 4 {
                w.skip(8)?; // retention time
            }
            // Partition, committed offset, leader epoch (v6), then metadata.
            counted!(topics(w, &|w: &mut Wire<'_>| {
                w.skip(12 + since(6, 4))?;
                w.skip_string()
            }));
        }
        ApiKey::OffsetFetch => {
            let counted = &mut Counted::default();
            let mut group_topics =
                |w: &mut Wire<'_>| topic_partitions(w, counted, over, &named, &Entry::Fixed(4));
            if version < 8 {
                w.skip_string()?; // group id
                counted!(group_topics(w));
            } else {
                let groups = w.array_len()?;
                counted!(Some(over(groups, "groups")));
                for _ in 0..groups {
                    w.skip_string()?; // group id
                    if version >= 9 {
                        w.skip_string()?; // member id
                        w.skip(4)?; // member epoch
                    }
                    counted!(group_topics(w));
                    w.skip_tagged_fields()?;
                }
            }
            w.skip(since(7, 1))?; // require stable
        }
        // From v1, the oldest the codec reads (v0 had a maximum number of
        // offsets).
        ApiKey::ListOffsets => {
            // Replica id, isolation level (v2).
            w.skip(4 + since(2, 1))?;
            // Partition, current leader epoch (v4), timestamp.
            counted!(topics(w, &|w: &mut Wire<'_>| w.skip(4 + since(4, 4) + 8)));
            w.skip(since(10, 4))?; // timeout
        }
        ApiKey::DeleteRecords => {
            // Partition, offset.
            counted!(topics(w, &|w: &mut Wire<'_>| w.skip(12)));
            w.skip(4)?; // timeout
        }
        ApiKey::OffsetDelete => {
            w.skip_string()?; // group id
            counted!(topics(w, &|w: &mut Wire<'_>| w.skip(4))); // partition
        }
        ApiKey::DescribeConfigs => {
            counted!(resources(w, "config keys", &Entry::Name));
            // Include synonyms (v1), include documentation (v3).
            w.skip(since(1, 1) + since(3, 1))?;
        }
        ApiKey::AlterConfigs => {
            counted!(resources(w, "configs", &Entry::Fields(&config)));
            w.skip(1)?; // validate only
        }
        ApiKey::IncrementalAlterConfigs => {
            let config = |w: &mut Wire<'_>| {
                w.skip_string()?; // name
                w.take(1)?; // operation
                w.skip_string() // value
            };
            counted!(resources(w, "configs", &Entry::Fields(&config)));
            w.skip(1)?; // validate only
        }
        // Not served: left to the decoder, which refuses its version.
        _ => return None,
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::{
        messages::{
            alter_configs_request,
            alter_user_scram_credentials_request::{
                ScramCredentialDeletion, ScramCredentialUpsertion,
            },
            create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic},
            create_topics_request::{
                CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
            },
            delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
            describe_configs_request::DescribeConfigsResource,
            describe_log_dirs_request::DescribableLogDirTopic,
            describe_producers_request,
            describe_topic_partitions_request::TopicRequest,
            describe_user_scram_credentials_request::UserName,
            elect_leaders_request::TopicPartitions,
            fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
            incremental_alter_configs_request,
            join_group_request::JoinGroupRequestProtocol,
            leave_group_request::MemberIdentity,
            list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
            list_partition_reassignments_request::ListPartitionReassignmentsTopics,
            offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
            offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic},
            offset_fetch_request::{
                OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
            },
            produce_request::{PartitionProduceData, TopicProduceData},
            sync_group_request::SyncGroupRequestAssignment,
            AlterConfigsRequest, AlterUserScramCredentialsRequest, BrokerId, CreateAclsRequest,
            CreatePartitionsRequest, CreateTopicsRequest, DeleteRecordsRequest,
            DescribeConfigsRequest, DescribeGroupsRequest, DescribeLogDirsRequest,
            DescribeProducersRequest, DescribeTopicPartitionsRequest,
            DescribeUserScramCredentialsRequest, ElectLeadersRequest, FetchRequest, GroupId,
            IncrementalAlterConfigsRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
            ListOffsetsRequest, ListPartitionReassignmentsRequest, ListTransactionsRequest,
            OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest,
            ProducerId, SyncGroupRequest, TopicName, TransactionalId,
        },
        protocol::{Decodable, Encodable, StrBytes},
    };
    use std::collections::BTreeMap;

    fn body<R: Encodable>(r: &R, version: i16) -> BytesMut {
        let mut b = BytesMut::new();
        r.encode(&mut b, version).unwrap();
        b
    }

    /// [`check`] without the bound on a request's tagged fields (the requests
    /// here carry two in every struct), and the bytes the walk left.
    fn lists(api: ApiKey, version: i16, body: &[u8]) -> (Result<(), String>, Option<usize>) {
        walk(api, version, body, usize::MAX)
    }

    /// `request(n)` lists `n` of `what`: accepted at the bound, refused one
    /// past it, walked to its very end, and left to the decoder (accepted)
    /// wherever its body is cut.
    fn bounded<R: Encodable>(api: ApiKey, version: i16, what: &str, request: impl Fn(usize) -> R) {
        let at = body(&request(MAX_LISTED), version);
        let (walked, rest) = lists(api, version, &at);
        assert_eq!(walked, Ok(()), "{api:?} v{version}");
        assert_eq!(rest, Some(0), "{api:?} v{version}: walked to the end");
        let past = body(&request(MAX_LISTED + 1), version);
        let e = lists(api, version, &past).0.unwrap_err();
        let listed = format!("lists {} {what};", MAX_LISTED + 1);
        assert!(e.contains(&listed), "{api:?} v{version}: {e}");
        let small = body(&request(3), version);
        assert_eq!(walk(api, version, &small, MAX_LISTED), (Ok(()), Some(0)));
        for end in 0..small.len() {
            let cut = walk(api, version, &small[..end], MAX_LISTED);
            assert_eq!(cut, (Ok(()), None), "{api:?} v{version} cut at {end}");
        }
    }

    /// `n` split between two entries: the first `n / 2`, the second the rest.
    fn halves(n: usize) -> [usize; 2] {
        [n / 2, n - n / 2]
    }

    /// `request(topics)` with its partitions split between two `topic(n)`, and
    /// with as many empty topics: each bounded.
    fn topics_bounded<R: Encodable, T: Clone + Default>(
        api: ApiKey,
        version: i16,
        request: impl Fn(Vec<T>) -> R,
        topic: impl Fn(usize) -> T,
    ) {
        nested_bounded(api, version, ["topics", "partitions"], request, topic);
    }

    /// `request(entries)` with the `inner` entries of `what` split between two
    /// `outer(n)`, and with as many default outer entries: each bounded.
    fn nested_bounded<R: Encodable, T: Clone + Default>(
        api: ApiKey,
        version: i16,
        what: [&str; 2],
        request: impl Fn(Vec<T>) -> R,
        outer: impl Fn(usize) -> T,
    ) {
        let [outers, inners] = what;
        bounded(api, version, inners, |n| {
            request(halves(n).map(&outer).to_vec())
        });
        bounded(api, version, outers, |n| request(vec![T::default(); n]));
    }

    /// An AlterConfigs or an IncrementalAlterConfigs (structs of the same
    /// shape in modules of their own) at each of `versions`: its resources,
    /// and its configs over all of them, bounded.
    macro_rules! alter_configs_bounded {
        ($api:expr, $versions:expr, $request:ident, $module:ident, $config:expr) => {
            for version in $versions {
                use $module::AlterConfigsResource;
                let alter = |resources: Vec<AlterConfigsResource>| {
                    $request::default()
                        .with_resources(resources)
                        .with_validate_only(true)
                        .with_unknown_tagged_fields(tags())
                };
                let config = $config.clone().with_unknown_tagged_fields(tags());
                let resource = |n: usize| {
                    AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(name("t"))
                        .with_configs(vec![config.clone(); n])
                        .with_unknown_tagged_fields(tags())
                };
                nested_bounded($api, version, ["resources", "configs"], alter, resource);
            }
        };
    }

    fn name(n: &str) -> StrBytes {
        StrBytes::from_string(n.to_owned())
    }

    /// Fields a flexible version's decoder skips, in every struct given them.
    fn tags() -> BTreeMap<i32, Bytes> {
        BTreeMap::from([(7, Bytes::from_static(b"unknown")), (300, Bytes::new())])
    }

    /// A string whose compact length takes two bytes.
    fn metadata() -> Option<StrBytes> {
        Some(name(&"m".repeat(200)))
    }

    /// `n` as an unsigned varint padded to 5 bytes (continuation bits on
    /// the first four), then `fifth` ORed into the last byte: `0x80` makes
    /// it claim a sixth byte, `0x10` sets bit 32.
    fn padded_varint(n: u32, fifth: u8) -> [u8; 5] {
        let b = |i: u32| u8::try_from((n >> (7 * i)) & 0x7f).unwrap();
        [
            b(0) | 0x80,
            b(1) | 0x80,
            b(2) | 0x80,
            b(3) | 0x80,
            b(4) | fifth,
        ]
    }

    /// A count the decoder reads but the walk could not, a varint of more
    /// than 5 bytes or above 32 bits, is refused, not let through to the
    /// decoder: kafka-protocol stops after a fifth byte with its continuation
    /// bit and drops bits past 32, so such a count of MAX_LISTED + 1 topics
    /// (or of a gigabyte of tagged fields) reached the decoder uncounted.
    #[test]
    fn a_varint_the_walk_cannot_read_is_refused() {
        let n = u32::try_from(MAX_LISTED).unwrap() + 2;
        // Metadata v9: the topics (count n - 1), each an empty name and no
        // tagged fields, then allow auto topic creation, include cluster and
        // topic authorized operations, the body's tagged fields.
        let metadata = |count: [u8; 5]| {
            let mut b = count.to_vec();
            for _ in 0..n - 1 {
                b.extend([1, 0]);
            }
            b.extend([1, 0, 0, 0]);
            b
        };
        let e = check(ApiKey::Metadata, 9, &metadata(padded_varint(n, 0x80))).unwrap_err();
        assert!(e.contains("varint longer than 5 bytes"), "{e}");
        let e = check(ApiKey::Metadata, 9, &metadata(padded_varint(n, 0x10))).unwrap_err();
        assert!(e.contains("varint above 2^32 - 1"), "{e}");
        // Padded but in bounds: the walk reads what the decoder reads.
        let e = check(ApiKey::Metadata, 9, &metadata(padded_varint(n, 0))).unwrap_err();
        assert!(e.contains("100001 topics"), "{e}");

        // A header's tagged field count.
        let mut frame = vec![0, 3, 0, 12, 0, 0, 0, 7, 0, 1, b'c'];
        frame.extend(padded_varint(1001, 0x80));
        let e = check_header(ApiKey::Metadata, 12, &frame).unwrap_err();
        assert!(
            e.contains("request header holds a varint longer than 5 bytes"),
            "{e}"
        );
    }

    #[test]
    fn lists_up_to_the_limit_pass_and_longer_ones_are_refused() {
        for version in [0, 4, 5] {
            let groups = |n| {
                DescribeGroupsRequest::default().with_groups(vec![
                    GroupId(
                        StrBytes::from_static_str("")
                    );
                    n
                ])
            };
            let ok = body(&groups(MAX_LISTED), version);
            assert_eq!(check(ApiKey::DescribeGroups, version, &ok), Ok(()));
            let over = body(&groups(MAX_LISTED + 1), version);
            let e = check(ApiKey::DescribeGroups, version, &over).unwrap_err();
            assert!(e.contains("100001 group ids"), "{e}");
        }
        let states = vec![StrBytes::from_static_str("Empty"); 3];
        let list = ListGroupsRequest::default().with_states_filter(states);
        assert_eq!(check(ApiKey::ListGroups, 4, &body(&list, 4)), Ok(()));
        let types = vec![StrBytes::from_static_str(""); MAX_LISTED + 1];
        let list = list.with_types_filter(types);
        let e = check(ApiKey::ListGroups, 5, &body(&list, 5)).unwrap_err();
        assert!(e.contains("types in its filter"), "{e}");

        for version in [1, 4] {
            let resource = |keys: usize| {
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t"))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str("k"); keys]))
            };
            let half = DescribeConfigsRequest::default()
                .with_resources(vec![resource(MAX_LISTED / 2), resource(MAX_LISTED / 2)]);
            assert_eq!(
                check(ApiKey::DescribeConfigs, version, &body(&half, version)),
                Ok(())
            );
            let more = DescribeConfigsRequest::default()
                .with_resources(vec![resource(MAX_LISTED / 2), resource(MAX_LISTED / 2 + 1)]);
            let e = check(ApiKey::DescribeConfigs, version, &body(&more, version)).unwrap_err();
            assert!(e.contains("config keys"), "{e}");
        }
        let topics = |n| {
            DescribeTopicPartitionsRequest::default()
                .with_topics(vec![TopicRequest::default(); n])
                .with_response_partition_limit(2000)
        };
        let ok = body(&topics(MAX_LISTED), 0);
        assert_eq!(check(ApiKey::DescribeTopicPartitions, 0, &ok), Ok(()));
        let over = body(&topics(MAX_LISTED + 1), 0);
        let e = check(ApiKey::DescribeTopicPartitions, 0, &over).unwrap_err();
        assert!(e.contains("100001 topics"), "{e}");
        for version in [0, 1, 2] {
            let elect = |n| {
                ElectLeadersRequest::default()
                    .with_election_type(i8::from(version >= 1))
                    .with_topic_partitions(Some(vec![TopicPartitions::default(); n]))
            };
            let ok = body(&elect(MAX_LISTED), version);
            assert_eq!(check(ApiKey::ElectLeaders, version, &ok), Ok(()));
            let over = body(&elect(MAX_LISTED + 1), version);
            let e = check(ApiKey::ElectLeaders, version, &over).unwrap_err();
            assert!(e.contains("100001 topics"), "v{version}: {e}");
        }
        let acls =
            CreateAclsRequest::default().with_creations(vec![Default::default(); MAX_LISTED + 1]);
        let e = check(ApiKey::CreateAcls, 3, &body(&acls, 3)).unwrap_err();
        assert!(e.contains("100001 ACL creations"), "{e}");
        for version in [3, 7, 9] {
            let data = |n: usize| {
                let mut parts = vec![PartitionProduceData::default(); n];
                parts[0].records = Some(Bytes::from_static(b"not a batch, skipped"));
                TopicProduceData::default().with_partition_data(parts)
            };
            let produce = |last: usize| {
                ProduceRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("t"))))
                    .with_topic_data(vec![data(MAX_LISTED / 2), data(last)])
            };
            let ok = body(&produce(MAX_LISTED / 2), version);
            assert_eq!(check(ApiKey::Produce, version, &ok), Ok(()));
            let over = body(&produce(MAX_LISTED / 2 + 1), version);
            let e = check(ApiKey::Produce, version, &over).unwrap_err();
            assert!(e.contains("100001 partitions"), "v{version}: {e}");
            let topics = ProduceRequest::default()
                .with_topic_data(vec![TopicProduceData::default(); MAX_LISTED + 1]);
            let e = check(ApiKey::Produce, version, &body(&topics, version)).unwrap_err();
            assert!(e.contains("100001 topics"), "v{version}: {e}");
        }
        for version in [4, 5, 7, 9, 11, 12] {
            let topic = |n: usize| {
                FetchTopic::default().with_partitions(vec![FetchPartition::default(); n])
            };
            let fetch = |last: usize| {
                FetchRequest::default().with_topics(vec![topic(MAX_LISTED / 2), topic(last)])
            };
            let ok = body(&fetch(MAX_LISTED / 2), version);
            assert_eq!(check(ApiKey::Fetch, version, &ok), Ok(()));
            let over = body(&fetch(MAX_LISTED / 2 + 1), version);
            let e = check(ApiKey::Fetch, version, &over).unwrap_err();
            assert!(e.contains("100001 partitions"), "v{version}: {e}");
            if version >= 7 {
                let forgotten = fetch(1)
                    .with_forgotten_topics_data(vec![ForgottenTopic::default(); MAX_LISTED + 1]);
                let e = check(ApiKey::Fetch, version, &body(&forgotten, version)).unwrap_err();
                assert!(e.contains("100001 forgotten topics"), "v{version}: {e}");
            }
        }
        // A body that ends early is left to the decoder.
        assert_eq!(check(ApiKey::DescribeConfigs, 4, &[0x05, 0x02]), Ok(()));
        assert_eq!(check(ApiKey::Metadata, 1, &[0xff]), Ok(()));
    }

    #[test]
    fn offset_commit_partitions_are_counted_over_all_its_topics() {
        for version in [2, 4, 5, 6, 7, 8, 9] {
            let commit = |topics: Vec<OffsetCommitRequestTopic>| {
                OffsetCommitRequest::default()
                    .with_group_id(GroupId(name("group")))
                    .with_generation_id_or_member_epoch(3)
                    .with_member_id(name("member"))
                    .with_group_instance_id((version >= 7).then(|| name("instance")))
                    .with_retention_time_ms(60_000)
                    .with_topics(topics)
                    .with_unknown_tagged_fields(tags())
            };
            // Every optional field given.
            let partition = OffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(42)
                .with_committed_leader_epoch(5)
                .with_committed_metadata(metadata())
                .with_unknown_tagged_fields(tags());
            topics_bounded(ApiKey::OffsetCommit, version, commit, |n| {
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(name("t")))
                    .with_partitions(vec![partition.clone(); n])
                    .with_unknown_tagged_fields(tags())
            });
        }
    }

    #[test]
    fn offset_fetch_partitions_are_counted_over_all_its_topics_and_groups() {
        // Up to v7: one group, its topics (null for all of them).
        for version in [1, 2, 5, 6, 7] {
            let fetch = |topics: Option<Vec<OffsetFetchRequestTopic>>| {
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(name("group")))
                    .with_topics(topics)
                    .with_require_stable(version >= 7)
                    .with_unknown_tagged_fields(tags())
            };
            let listing = |topics| fetch(Some(topics));
            topics_bounded(ApiKey::OffsetFetch, version, listing, |n| {
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(name("t")))
                    .with_partition_indexes(indexes(n))
                    .with_unknown_tagged_fields(tags())
            });
            if version >= 2 {
                let all = body(&fetch(None), version);
                assert_eq!(check(ApiKey::OffsetFetch, version, &all), Ok(()));
            }
        }
        // From v8: groups, each with its topics.
        for version in [8, 9] {
            let fetch = |groups: Vec<OffsetFetchRequestGroup>| {
                OffsetFetchRequest::default()
                    .with_groups(groups)
                    .with_require_stable(true)
                    .with_unknown_tagged_fields(tags())
            };
            let group = |topics: Option<Vec<OffsetFetchRequestTopics>>| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(name("group")))
                    .with_member_id((version >= 9).then(|| name("member")))
                    .with_member_epoch(if version >= 9 { 4 } else { -1 })
                    .with_topics(topics)
                    .with_unknown_tagged_fields(tags())
            };
            let topic = |n: usize| {
                OffsetFetchRequestTopics::default()
                    .with_name(TopicName(name("t")))
                    .with_partition_indexes(indexes(n))
                    .with_unknown_tagged_fields(tags())
            };
            // A group of all topics (null) between the two that list some.
            bounded(ApiKey::OffsetFetch, version, "partitions", |n| {
                let [first, second] = halves(n);
                fetch(vec![
                    group(Some(vec![topic(0), topic(first)])),
                    group(None),
                    group(Some(vec![topic(second)])),
                ])
            });
            bounded(ApiKey::OffsetFetch, version, "topics", |n| {
                let [first, second] = halves(n);
                let topics = |n| Some(vec![OffsetFetchRequestTopics::default(); n]);
                fetch(vec![group(topics(first)), group(topics(second))])
            });
            bounded(ApiKey::OffsetFetch, version, "groups", |n| {
                fetch(vec![OffsetFetchRequestGroup::default(); n])
            });
        }
    }

    #[test]
    fn list_offsets_partitions_are_counted_over_all_its_topics() {
        for version in [1, 2, 4, 5, 6, 7, 10] {
            let list = |topics: Vec<ListOffsetsTopic>| {
                ListOffsetsRequest::default()
                    .with_replica_id((-1).into())
                    .with_isolation_level(i8::from(version >= 2))
                    .with_topics(topics)
                    .with_timeout_ms(30_000)
                    .with_unknown_tagged_fields(tags())
            };
            let partition = ListOffsetsPartition::default()
                .with_partition_index(1)
                .with_current_leader_epoch(5)
                .with_timestamp(-2)
                .with_unknown_tagged_fields(tags());
            topics_bounded(ApiKey::ListOffsets, version, list, |n| {
                ListOffsetsTopic::default()
                    .with_name(TopicName(name("t")))
                    .with_partitions(vec![partition.clone(); n])
                    .with_unknown_tagged_fields(tags())
            });
        }
    }

    #[test]
    fn delete_records_and_offset_delete_partitions_are_counted_over_all_their_topics() {
        for version in [0, 1, 2] {
            let delete = |topics: Vec<DeleteRecordsTopic>| {
                DeleteRecordsRequest::default()
                    .with_topics(topics)
                    .with_timeout_ms(30_000)
                    .with_unknown_tagged_fields(tags())
            };
            let partition = DeleteRecordsPartition::default()
                .with_partition_index(1)
                .with_offset(42)
                .with_unknown_tagged_fields(tags());
            topics_bounded(ApiKey::DeleteRecords, version, delete, |n| {
                DeleteRecordsTopic::default()
                    .with_name(TopicName(name("t")))
                    .with_partitions(vec![partition.clone(); n])
                    .with_unknown_tagged_fields(tags())
            });
        }
        let delete = |topics: Vec<OffsetDeleteRequestTopic>| {
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(name("group")))
                .with_topics(topics)
        };
        let partition = OffsetDeleteRequestPartition::default().with_partition_index(1);
        topics_bounded(ApiKey::OffsetDelete, 0, delete, |n| {
            OffsetDeleteRequestTopic::default()
                .with_name(TopicName(name("t")))
                .with_partitions(vec![partition.clone(); n])
        });
    }

    #[test]
    fn create_topics_assignments_broker_ids_and_configs_are_counted_over_all_its_topics() {
        let create = |topics: Vec<CreatableTopic>| {
            CreateTopicsRequest::default()
                .with_topics(topics)
                .with_timeout_ms(30_000)
                .with_validate_only(true)
                .with_unknown_tagged_fields(tags())
        };
        let assignment = |brokers: usize| {
            CreatableReplicaAssignment::default()
                .with_partition_index(1)
                .with_broker_ids(vec![BrokerId(2); brokers])
                .with_unknown_tagged_fields(tags())
        };
        let config = CreatableTopicConfig::default()
            .with_name(name("retention.ms"))
            .with_value(metadata())
            .with_unknown_tagged_fields(tags());
        // Every optional field given: one assignment (of one broker id) and
        // one config besides the entries counted.
        let topic = |assignments: Vec<CreatableReplicaAssignment>, configs: usize| {
            let mut all = vec![assignment(1)];
            all.extend(assignments);
            CreatableTopic::default()
                .with_name(TopicName(name("t")))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(all)
                .with_configs(vec![config.clone(); configs + 1])
                .with_unknown_tagged_fields(tags())
        };
        for version in [2, 4, 5, 7] {
            let api = ApiKey::CreateTopics;
            bounded(api, version, "topics", |n| {
                create(vec![CreatableTopic::default(); n])
            });
            bounded(api, version, "replica assignments", |n| {
                let [first, second] = halves(n - 2).map(|n| vec![assignment(0); n]);
                create(vec![topic(first, 0), topic(second, 0)])
            });
            bounded(api, version, "broker ids", |n| {
                let [first, second] = halves(n - 2).map(|n| vec![assignment(n)]);
                create(vec![topic(first, 0), topic(second, 0)])
            });
            bounded(api, version, "configs", |n| {
                let [first, second] = halves(n - 2);
                create(vec![topic(vec![], first), topic(vec![], second)])
            });
        }
    }

    #[test]
    fn create_partitions_assignments_and_broker_ids_are_counted_over_all_its_topics() {
        let create = |topics: Vec<CreatePartitionsTopic>| {
            CreatePartitionsRequest::default()
                .with_topics(topics)
                .with_timeout_ms(30_000)
                .with_validate_only(true)
                .with_unknown_tagged_fields(tags())
        };
        let assignment = |brokers: usize| {
            CreatePartitionsAssignment::default()
                .with_broker_ids(vec![BrokerId(2); brokers])
                .with_unknown_tagged_fields(tags())
        };
        let topic = |assignments: Option<Vec<CreatePartitionsAssignment>>| {
            CreatePartitionsTopic::default()
                .with_name(TopicName(name("t")))
                .with_count(3)
                .with_assignments(assignments)
                .with_unknown_tagged_fields(tags())
        };
        for version in [0, 1, 2, 3] {
            let api = ApiKey::CreatePartitions;
            bounded(api, version, "topics", |n| {
                create(vec![CreatePartitionsTopic::default(); n])
            });
            // A topic without assignments (null) between the two that have
            // some.
            bounded(api, version, "replica assignments", |n| {
                let [first, second] = halves(n).map(|n| Some(vec![assignment(1); n]));
                create(vec![topic(first), topic(None), topic(second)])
            });
            bounded(api, version, "broker ids", |n| {
                let [first, second] = halves(n).map(|n| Some(vec![assignment(0), assignment(n)]));
                create(vec![topic(first), topic(None), topic(second)])
            });
        }
    }

    #[test]
    fn alter_configs_configs_are_counted_over_all_its_resources() {
        let config = alter_configs_request::AlterableConfig::default()
            .with_name(name("retention.ms"))
            .with_value(metadata());
        alter_configs_bounded!(
            ApiKey::AlterConfigs,
            [0, 1, 2],
            AlterConfigsRequest,
            alter_configs_request,
            config
        );
        let config = incremental_alter_configs_request::AlterableConfig::default()
            .with_name(name("retention.ms"))
            .with_config_operation(1)
            .with_value(metadata());
        alter_configs_bounded!(
            ApiKey::IncrementalAlterConfigs,
            [0, 1],
            IncrementalAlterConfigsRequest,
            incremental_alter_configs_request,
            config
        );
    }

    /// `n` bare partition indexes, 0 to `n - 1`.
    fn indexes(n: usize) -> Vec<i32> {
        (0..n).map(|i| i32::try_from(i).unwrap()).collect()
    }

    #[test]
    fn partition_indexes_are_counted_over_all_the_topics_listing_them() {
        for version in [1, 2, 3, 4] {
            let describe = |topics: Vec<DescribableLogDirTopic>| {
                DescribeLogDirsRequest::default()
                    .with_topics(Some(topics))
                    .with_unknown_tagged_fields(tags())
            };
            topics_bounded(ApiKey::DescribeLogDirs, version, describe, |n| {
                DescribableLogDirTopic::default()
                    .with_topic(TopicName(name("t")))
                    .with_partitions(indexes(n))
                    .with_unknown_tagged_fields(tags())
            });
            // Null: every log dir's topics.
            let all = body(
                &DescribeLogDirsRequest::default().with_topics(None),
                version,
            );
            assert_eq!(check(ApiKey::DescribeLogDirs, version, &all), Ok(()));
        }
        for version in [0, 1, 2] {
            let elect = |topics: Vec<TopicPartitions>| {
                ElectLeadersRequest::default()
                    .with_election_type(i8::from(version >= 1))
                    .with_topic_partitions(Some(topics))
                    .with_timeout_ms(30_000)
                    .with_unknown_tagged_fields(tags())
            };
            topics_bounded(ApiKey::ElectLeaders, version, elect, |n| {
                TopicPartitions::default()
                    .with_topic(TopicName(name("t")))
                    .with_partitions(indexes(n))
                    .with_unknown_tagged_fields(tags())
            });
        }
        let describe = |topics: Vec<describe_producers_request::TopicRequest>| {
            DescribeProducersRequest::default()
                .with_topics(topics)
                .with_unknown_tagged_fields(tags())
        };
        topics_bounded(ApiKey::DescribeProducers, 0, describe, |n| {
            describe_producers_request::TopicRequest::default()
                .with_name(TopicName(name("t")))
                .with_partition_indexes(indexes(n))
                .with_unknown_tagged_fields(tags())
        });
        let list = |topics: Vec<ListPartitionReassignmentsTopics>| {
            ListPartitionReassignmentsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(Some(topics))
                .with_unknown_tagged_fields(tags())
        };
        topics_bounded(ApiKey::ListPartitionReassignments, 0, list, |n| {
            ListPartitionReassignmentsTopics::default()
                .with_name(TopicName(name("t")))
                .with_partition_indexes(indexes(n))
                .with_unknown_tagged_fields(tags())
        });
    }

    #[test]
    fn group_membership_and_admin_lists_are_counted() {
        for version in [0, 1, 5, 6, 9] {
            let join = |n: usize| {
                let protocol = JoinGroupRequestProtocol::default()
                    .with_name(name("range"))
                    .with_metadata(Bytes::from_static(b"metadata"))
                    .with_unknown_tagged_fields(tags());
                JoinGroupRequest::default()
                    .with_group_id(GroupId(name("group")))
                    .with_session_timeout_ms(10_000)
                    .with_rebalance_timeout_ms(if version >= 1 { 20_000 } else { -1 })
                    .with_member_id(name("member"))
                    .with_group_instance_id((version >= 5).then(|| name("instance")))
                    .with_protocol_type(name("consumer"))
                    .with_protocols(vec![protocol; n])
                    .with_reason((version >= 8).then(|| name("reason")))
                    .with_unknown_tagged_fields(tags())
            };
            bounded(ApiKey::JoinGroup, version, "protocols", join);
        }
        for version in [0, 3, 4, 5] {
            let sync = |n: usize| {
                let assignment = SyncGroupRequestAssignment::default()
                    .with_member_id(name("member"))
                    .with_assignment(Bytes::from_static(b"assignment"))
                    .with_unknown_tagged_fields(tags());
                SyncGroupRequest::default()
                    .with_group_id(GroupId(name("group")))
                    .with_generation_id(3)
                    .with_member_id(name("member"))
                    .with_group_instance_id((version >= 3).then(|| name("instance")))
                    .with_protocol_type((version >= 5).then(|| name("consumer")))
                    .with_protocol_name((version >= 5).then(|| name("range")))
                    .with_assignments(vec![assignment; n])
                    .with_unknown_tagged_fields(tags())
            };
            bounded(ApiKey::SyncGroup, version, "assignments", sync);
        }
        for version in [3, 4, 5] {
            let leave = |n: usize| {
                let member = MemberIdentity::default()
                    .with_member_id(name("member"))
                    .with_group_instance_id(Some(name("instance")))
                    .with_reason((version >= 5).then(|| name("reason")))
                    .with_unknown_tagged_fields(tags());
                LeaveGroupRequest::default()
                    .with_group_id(GroupId(name("group")))
                    .with_members(vec![member; n])
                    .with_unknown_tagged_fields(tags())
            };
            bounded(ApiKey::LeaveGroup, version, "members", leave);
        }
        for version in [0, 1] {
            let list = |states: usize, producers: usize| {
                ListTransactionsRequest::default()
                    .with_state_filters(vec![name("Ongoing"); states])
                    .with_producer_id_filters(vec![ProducerId(7); producers])
                    .with_duration_filter(if version >= 1 { 1000 } else { -1 })
                    .with_unknown_tagged_fields(tags())
            };
            let api = ApiKey::ListTransactions;
            bounded(api, version, "states in its filter", |n| list(n, 1));
            bounded(api, version, "producer ids in its filter", |n| list(1, n));
        }
        let users = |n: usize| {
            let user = UserName::default()
                .with_name(name("user"))
                .with_unknown_tagged_fields(tags());
            DescribeUserScramCredentialsRequest::default()
                .with_users(Some(vec![user; n]))
                .with_unknown_tagged_fields(tags())
        };
        bounded(ApiKey::DescribeUserScramCredentials, 0, "users", users);
        let alter = |deletions: usize, upsertions: usize| {
            let deletion = ScramCredentialDeletion::default()
                .with_name(name("user"))
                .with_mechanism(1)
                .with_unknown_tagged_fields(tags());
            let upsertion = ScramCredentialUpsertion::default()
                .with_name(name("user"))
                .with_mechanism(2)
                .with_iterations(4096)
                .with_salt(Bytes::from_static(b"salt"))
                .with_salted_password(Bytes::from_static(b"salted password"))
                .with_unknown_tagged_fields(tags());
            AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![deletion; deletions])
                .with_upsertions(vec![upsertion; upsertions])
                .with_unknown_tagged_fields(tags())
        };
        let api = ApiKey::AlterUserScramCredentials;
        bounded(api, 0, "credential deletions", |n| alter(n, 1));
        bounded(api, 0, "credential upsertions", |n| alter(1, n));
    }

    /// A tagged section of `n` fields (tags 1000 to `999 + n`, which no
    /// version defines, with empty values), as flexible versions encode it.
    fn section(n: usize) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut v: usize) {
            while v >= 0x80 {
                out.push(u8::try_from(v & 0x7f).unwrap() | 0x80);
                v >>= 7;
            }
            out.push(u8::try_from(v).unwrap());
        }
        let mut out = Vec::new();
        varint(&mut out, n);
        for tag in 1000..1000 + n {
            varint(&mut out, tag);
            varint(&mut out, 0);
        }
        out
    }

    /// How many bytes the decoder reads of `body`, or why it fails.
    fn decoded(api: ApiKey, version: i16, body: &[u8]) -> Result<usize, String> {
        let mut b = Bytes::copy_from_slice(body);
        kafka_protocol::messages::RequestKind::decode(api, &mut b, version)
            .map(|_| body.len() - bytes::Buf::remaining(&b))
            .map_err(|e| e.to_string())
    }

    /// A request of every API served at `version` (where it has the
    /// fields), its lists given an entry or two.
    fn one_of_each(version: i16) -> Vec<(ApiKey, kafka_protocol::messages::RequestKind)> {
        use kafka_protocol::messages::{
            delete_acls_request::DeleteAclsFilter, delete_topics_request::DeleteTopicState,
            describe_topic_partitions_request::Cursor, metadata_request::MetadataRequestTopic,
            ApiVersionsRequest, DeleteAclsRequest, DeleteGroupsRequest, DeleteTopicsRequest,
            DescribeAclsRequest, DescribeClusterRequest, FindCoordinatorRequest, HeartbeatRequest,
            InitProducerIdRequest, MetadataRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
        };
        let topic = || TopicName(name("t"));
        let group = || GroupId(name("group"));
        vec![
            (
                ApiKey::Produce,
                ProduceRequest::default()
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic())
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_records(Some(Bytes::from_static(b"not a batch")))])])
                    .into(),
            ),
            (
                ApiKey::Fetch,
                FetchRequest::default()
                    .with_topics(vec![FetchTopic::default()
                        .with_topic(topic())
                        .with_partitions(vec![FetchPartition::default()])])
                    .with_forgotten_topics_data(if version >= 7 {
                        vec![ForgottenTopic::default()
                            .with_topic(topic())
                            .with_partitions(vec![1, 2])]
                    } else {
                        vec![]
                    })
                    .with_rack_id(name(if version >= 11 { "rack" } else { "" }))
                    .into(),
            ),
            (
                ApiKey::ListOffsets,
                ListOffsetsRequest::default()
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![ListOffsetsPartition::default()])])
                    .into(),
            ),
            (
                ApiKey::Metadata,
                MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic())),
                        MetadataRequestTopic::default().with_name(Some(topic())),
                    ]))
                    .into(),
            ),
            (
                ApiKey::OffsetCommit,
                OffsetCommitRequest::default()
                    .with_group_id(group())
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![OffsetCommitRequestPartition::default()
                            .with_committed_metadata(metadata())])])
                    .into(),
            ),
            (
                ApiKey::OffsetFetch,
                OffsetFetchRequest::default()
                    .with_group_id(group())
                    .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                        .with_name(topic())
                        .with_partition_indexes(vec![0, 1])]))
                    .into(),
            ),
            (
                ApiKey::FindCoordinator,
                FindCoordinatorRequest::default()
                    .with_key(name("group"))
                    .into(),
            ),
            (
                ApiKey::JoinGroup,
                JoinGroupRequest::default()
                    .with_group_id(group())
                    .with_protocol_type(name("consumer"))
                    .with_protocols(vec![JoinGroupRequestProtocol::default()
                        .with_name(name("range"))
                        .with_metadata(Bytes::from_static(b"metadata"))])
                    .into(),
            ),
            (
                ApiKey::Heartbeat,
                HeartbeatRequest::default()
                    .with_group_id(group())
                    .with_member_id(name("member"))
                    .into(),
            ),
            (
                ApiKey::LeaveGroup,
                if version <= 2 {
                    LeaveGroupRequest::default()
                        .with_group_id(group())
                        .with_member_id(name("member"))
                } else {
                    LeaveGroupRequest::default()
                        .with_group_id(group())
                        .with_members(vec![MemberIdentity::default().with_member_id(name("m"))])
                }
                .into(),
            ),
            (
                ApiKey::SyncGroup,
                SyncGroupRequest::default()
                    .with_group_id(group())
                    .with_assignments(vec![SyncGroupRequestAssignment::default()
                        .with_member_id(name("member"))
                        .with_assignment(Bytes::from_static(b"assignment"))])
                    .into(),
            ),
            (
                ApiKey::DescribeGroups,
                DescribeGroupsRequest::default()
                    .with_groups(vec![group(), group()])
                    .into(),
            ),
            (ApiKey::ListGroups, ListGroupsRequest::default().into()),
            (
                ApiKey::ApiVersions,
                if version >= 3 {
                    ApiVersionsRequest::default()
                        .with_client_software_name(name("client"))
                        .with_client_software_version(name("1.0"))
                } else {
                    ApiVersionsRequest::default()
                }
                .into(),
            ),
            (
                ApiKey::CreateTopics,
                CreateTopicsRequest::default()
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(topic())
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                        .with_assignments(vec![CreatableReplicaAssignment::default()
                            .with_broker_ids(vec![BrokerId(0)])])
                        .with_configs(vec![CreatableTopicConfig::default()
                            .with_name(name("retention.ms"))
                            .with_value(metadata())])])
                    .into(),
            ),
            (
                ApiKey::DeleteTopics,
                if version >= 6 {
                    DeleteTopicsRequest::default()
                        .with_topics(vec![DeleteTopicState::default().with_name(Some(topic()))])
                } else {
                    DeleteTopicsRequest::default().with_topic_names(vec![topic()])
                }
                .into(),
            ),
            (
                ApiKey::DeleteGroups,
                DeleteGroupsRequest::default()
                    .with_groups_names(vec![group()])
                    .into(),
            ),
            (
                ApiKey::OffsetDelete,
                OffsetDeleteRequest::default()
                    .with_group_id(group())
                    .with_topics(vec![OffsetDeleteRequestTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![OffsetDeleteRequestPartition::default()])])
                    .into(),
            ),
            (
                ApiKey::InitProducerId,
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(name("tx"))))
                    .into(),
            ),
            (
                ApiKey::DescribeConfigs,
                DescribeConfigsRequest::default()
                    .with_resources(vec![DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(name("t"))
                        .with_configuration_keys(Some(vec![name("k")]))])
                    .into(),
            ),
            (
                ApiKey::CreatePartitions,
                CreatePartitionsRequest::default()
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(topic())
                        .with_assignments(Some(vec![CreatePartitionsAssignment::default()
                            .with_broker_ids(vec![BrokerId(0)])]))])
                    .into(),
            ),
            (
                ApiKey::DeleteRecords,
                DeleteRecordsRequest::default()
                    .with_topics(vec![DeleteRecordsTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![DeleteRecordsPartition::default()])])
                    .into(),
            ),
            (
                ApiKey::DescribeLogDirs,
                DescribeLogDirsRequest::default()
                    .with_topics(Some(vec![DescribableLogDirTopic::default()
                        .with_topic(topic())
                        .with_partitions(vec![0])]))
                    .into(),
            ),
            (
                ApiKey::AlterConfigs,
                AlterConfigsRequest::default()
                    .with_resources(vec![alter_configs_request::AlterConfigsResource::default()
                        .with_resource_name(name("t"))
                        .with_configs(vec![alter_configs_request::AlterableConfig::default()
                            .with_name(name("retention.ms"))
                            .with_value(metadata())])])
                    .into(),
            ),
            (
                ApiKey::IncrementalAlterConfigs,
                IncrementalAlterConfigsRequest::default()
                    .with_resources(vec![
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_name(name("t"))
                            .with_configs(vec![
                                incremental_alter_configs_request::AlterableConfig::default()
                                    .with_name(name("retention.ms"))
                                    .with_value(metadata()),
                            ]),
                    ])
                    .into(),
            ),
            (
                ApiKey::DescribeCluster,
                DescribeClusterRequest::default().into(),
            ),
            (
                ApiKey::DescribeTopicPartitions,
                DescribeTopicPartitionsRequest::default()
                    .with_topics(vec![TopicRequest::default().with_name(topic())])
                    .with_cursor(Some(Cursor::default().with_topic_name(topic())))
                    .into(),
            ),
            (
                ApiKey::DescribeAcls,
                DescribeAclsRequest::default()
                    .with_resource_name_filter(Some(name("t")))
                    .into(),
            ),
            (
                ApiKey::CreateAcls,
                CreateAclsRequest::default()
                    .with_creations(vec![Default::default()])
                    .into(),
            ),
            (
                ApiKey::DeleteAcls,
                DeleteAclsRequest::default()
                    .with_filters(vec![
                        DeleteAclsFilter::default().with_principal_filter(Some(name("User:a")))
                    ])
                    .into(),
            ),
            (
                ApiKey::DescribeProducers,
                DescribeProducersRequest::default()
                    .with_topics(vec![describe_producers_request::TopicRequest::default()
                        .with_name(topic())
                        .with_partition_indexes(vec![0])])
                    .into(),
            ),
            (
                ApiKey::ElectLeaders,
                ElectLeadersRequest::default()
                    .with_topic_partitions(Some(vec![TopicPartitions::default()
                        .with_topic(topic())
                        .with_partitions(vec![0])]))
                    .into(),
            ),
            (
                ApiKey::ListPartitionReassignments,
                ListPartitionReassignmentsRequest::default()
                    .with_topics(Some(vec![ListPartitionReassignmentsTopics::default()
                        .with_name(topic())
                        .with_partition_indexes(vec![0])]))
                    .into(),
            ),
            (
                ApiKey::ListTransactions,
                ListTransactionsRequest::default()
                    .with_state_filters(vec![name("Ongoing")])
                    .with_producer_id_filters(vec![ProducerId(7)])
                    .into(),
            ),
            (
                ApiKey::SaslHandshake,
                SaslHandshakeRequest::default()
                    .with_mechanism(name("PLAIN"))
                    .into(),
            ),
            (
                ApiKey::SaslAuthenticate,
                SaslAuthenticateRequest::default()
                    .with_auth_bytes(Bytes::from_static(b"\0user\0password"))
                    .into(),
            ),
            (
                ApiKey::DescribeUserScramCredentials,
                DescribeUserScramCredentialsRequest::default()
                    .with_users(Some(vec![UserName::default().with_name(name("user"))]))
                    .into(),
            ),
            (
                ApiKey::AlterUserScramCredentials,
                AlterUserScramCredentialsRequest::default()
                    .with_deletions(vec![ScramCredentialDeletion::default()
                        .with_name(name("user"))
                        .with_mechanism(1)])
                    .with_upsertions(vec![ScramCredentialUpsertion::default()
                        .with_name(name("user"))
                        .with_mechanism(2)
                        .with_iterations(4096)
                        .with_salt(Bytes::from_static(b"salt"))
                        .with_salted_password(Bytes::from_static(b"salted"))])
                    .into(),
            ),
        ]
    }

    /// Every version of every API served is walked to its last byte, where
    /// the decoder stops too, so that a flexible version's own tagged fields
    /// are found and counted: up to [`MAX_TAGGED`] are accepted, one more is
    /// refused.
    #[test]
    fn every_served_request_is_walked_to_its_own_tagged_fields() {
        for (key, lo, hi) in crate::server::supported_api_versions() {
            let api = ApiKey::try_from(key).unwrap();
            for version in lo..=hi {
                let requests = one_of_each(version);
                let (_, request) = requests
                    .iter()
                    .find(|(a, _)| *a == api)
                    .unwrap_or_else(|| panic!("no {api:?} request to walk"));
                let mut b = BytesMut::new();
                request.encode(&mut b, version).unwrap();
                let body = b.to_vec();
                assert_eq!(
                    decoded(api, version, &body),
                    Ok(body.len()),
                    "{api:?} v{version}"
                );
                assert_eq!(
                    walk(api, version, &body, MAX_LISTED),
                    (Ok(()), Some(0)),
                    "{api:?} v{version}"
                );
                if api.request_header_version(version) < 2 {
                    continue;
                }
                // The body's own (empty) tagged section is its last byte.
                assert_eq!(body.last(), Some(&0), "{api:?} v{version}");
                let tagged = |n: usize| {
                    let mut tagged = body[..body.len() - 1].to_vec();
                    tagged.extend(section(n));
                    tagged
                };
                let most = tagged(MAX_TAGGED);
                assert_eq!(
                    decoded(api, version, &most),
                    Ok(most.len()),
                    "{api:?} v{version}"
                );
                assert_eq!(
                    walk(api, version, &most, MAX_LISTED),
                    (Ok(()), Some(0)),
                    "{api:?} v{version}"
                );
                let e = check(api, version, &tagged(MAX_TAGGED + 1)).unwrap_err();
                assert!(
                    e.contains(&format!(
                        "{api:?} v{version} has 1001 fields in one tagged section"
                    )),
                    "{e}"
                );
            }
        }
    }

    /// Tagged fields are counted over every section of a request: a Metadata
    /// v9 topic of four bytes (an empty name, one unknown field) decodes into
    /// some 470, and 100,000 of them pass, but not one field more.
    #[test]
    fn tagged_fields_are_counted_over_the_whole_request() {
        use kafka_protocol::messages::{metadata_request::MetadataRequestTopic, MetadataRequest};
        let topic = MetadataRequestTopic::default()
            .with_name(Some(TopicName(name(""))))
            .with_unknown_tagged_fields(BTreeMap::from([(7, Bytes::new())]));
        let request = MetadataRequest::default()
            .with_topics(Some(vec![topic; MAX_LISTED]))
            .with_allow_auto_topic_creation(false);
        let at = body(&request, 9);
        assert!(at.len() < 5 * MAX_LISTED, "{} bytes", at.len());
        assert_eq!(
            walk(ApiKey::Metadata, 9, &at, MAX_LISTED),
            (Ok(()), Some(0))
        );
        let past = body(
            &request.with_unknown_tagged_fields(BTreeMap::from([(7, Bytes::new())])),
            9,
        );
        let e = check(ApiKey::Metadata, 9, &past).unwrap_err();
        assert_eq!(
            e,
            "Metadata v9 has 100001 tagged fields; at most 100000 are accepted in one request"
        );

        // Counted in structs nested two deep too: a Fetch's partitions.
        let partition = FetchPartition::default().with_unknown_tagged_fields(tags());
        let fetch = |n: usize| {
            FetchRequest::default().with_topics(vec![
                FetchTopic::default().with_partitions(vec![partition.clone(); n])
            ])
        };
        let at = body(&fetch(MAX_LISTED / 2), 12);
        assert_eq!(check(ApiKey::Fetch, 12, &at), Ok(()));
        let past = body(&fetch(MAX_LISTED / 2 + 1), 12);
        let e = check(ApiKey::Fetch, 12, &past).unwrap_err();
        assert!(e.contains("Fetch v12 has 100002 tagged fields"), "{e}");
        // Versions before the flexible ones have none.
        let old = body(&fetch(MAX_LISTED / 2 + 1), 11);
        assert_eq!(check(ApiKey::Fetch, 11, &old), Ok(()));
    }

    /// A request header holds at most [`MAX_TAGGED`] tagged fields; headers
    /// before v2 have none, and one cut short is left to the decoder.
    #[test]
    fn request_header_tagged_fields_are_bounded() {
        use kafka_protocol::messages::RequestHeader;
        let header = |version: i16, n: usize| {
            let mut b = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(ApiKey::Metadata as i16)
                .with_request_api_version(version)
                .with_correlation_id(7)
                .with_client_id(Some(name("client")))
                .encode(&mut b, ApiKey::Metadata.request_header_version(version))
                .unwrap();
            let mut frame = b.to_vec();
            if version >= 9 {
                // The header's own (empty) tagged section is its last byte.
                assert_eq!(frame.pop(), Some(0));
                frame.extend(section(n));
            }
            frame
        };
        let most = header(12, MAX_TAGGED);
        assert_eq!(check_header(ApiKey::Metadata, 12, &most), Ok(()));
        let mut b = Bytes::from(most.clone());
        RequestHeader::decode(&mut b, 2).unwrap();
        assert_eq!(bytes::Buf::remaining(&b), 0, "the decoder reads it whole");
        let e = check_header(ApiKey::Metadata, 12, &header(12, MAX_TAGGED + 1)).unwrap_err();
        assert_eq!(
            e,
            "Metadata v12 request header has 1001 fields in one tagged section; at most 1000 are accepted"
        );
        // A v1 header ends at its client id: what follows is the body.
        assert_eq!(
            check_header(ApiKey::Metadata, 8, &[header(8, 0), vec![0xff; 8]].concat()),
            Ok(())
        );
        for end in 0..most.len() {
            assert_eq!(check_header(ApiKey::Metadata, 12, &most[..end]), Ok(()));
        }
    }

    /// The requests real clients sent (`tests/data/client-requests.txt`) are
    /// walked to where the decoder stops, and so are those frames mutated
    /// (bytes overwritten) that the walk goes through and the decoder reads.
    /// (Mutated frames the walk does not go through are not decoded: the
    /// decoder would reserve what their lengths claim, gigabytes.)
    #[test]
    fn client_requests_are_walked_as_the_decoder_reads_them() {
        use kafka_protocol::messages::RequestHeader;
        let corpus = include_str!("../../tests/data/client-requests.txt");
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut walked, mut mutated) = (0, 0);
        for line in corpus.lines().filter(|l| !l.starts_with('#')) {
            let hex = line.split_whitespace().nth(2).unwrap();
            let frame: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let mut b = Bytes::from(frame);
            RequestHeader::decode(&mut b, api.request_header_version(version)).unwrap();
            let body = b.to_vec();
            let read = decoded(api, version, &body).unwrap();
            let (refused, rest) = walk(api, version, &body, MAX_LISTED);
            assert_eq!(refused, Ok(()), "{api:?} v{version}");
            assert_eq!(
                rest.map(|r| body.len() - r),
                Some(read),
                "{api:?} v{version}"
            );
            walked += 1;
            for _ in 0..200 {
                let mut m = body.clone();
                for _ in 0..=next() % 3 {
                    let at = usize::try_from(next() % m.len() as u64).unwrap();
                    m[at] = u8::try_from(next() & 0xff).unwrap();
                }
                if let (Ok(()), Some(rest)) = walk(api, version, &m, MAX_LISTED) {
                    if let Ok(read) = decoded(api, version, &m) {
                        assert_eq!(m.len() - rest, read, "{api:?} v{version}: {m:02x?}");
                        mutated += 1;
                    }
                }
            }
        }
        assert!(
            walked > 150 && mutated > 1000,
            "{walked} requests, {mutated} mutated ones decoded"
        );
    }
}
