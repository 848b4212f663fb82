//! How many names a request lists, counted on the wire before it is decoded.
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
//! and the replica assignments, broker ids and configs of a CreateTopics or a
//! CreatePartitions (counted over all its topics) are counted first, and a request
//! with more than [`MAX_LISTED`] in one of them is refused undecoded: its
//! connection is closed with a log line, as for a malformed frame.

use kafka_protocol::messages::ApiKey;

/// The most entries a request may have in one of the lists counted here: far more
/// than any client sends (an admin client describing every group of a broker
/// names each once, a producer or consumer each partition it writes or reads),
/// few enough that decoding and answering them takes tens of MiB.
pub const MAX_LISTED: usize = 100_000;

/// A cursor over a request body; `None` from any read means the body ended early
/// (the decoder then reports the malformed request).
struct Wire<'a> {
    buf: &'a [u8],
    /// Flexible versions: compact strings and arrays, tagged fields.
    compact: bool,
}

impl Wire<'_> {
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

    fn varint(&mut self) -> Option<usize> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return usize::try_from(v).ok();
            }
        }
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

    fn skip_tagged_fields(&mut self) -> Option<()> {
        if self.compact {
            for _ in 0..self.varint()? {
                self.varint()?;
                let size = self.varint()?;
                self.skip(size)?;
            }
        }
        Some(())
    }
}

/// An entry of a nested list (a topic's partitions, a resource's configs, an
/// assignment's broker ids), as it is on the wire.
enum Partition<'a> {
    /// A struct whose fields this skips; in flexible versions its tagged
    /// fields follow.
    Fields(&'a dyn Fn(&mut Wire<'_>) -> Option<()>),
    /// A bare INT32 partition index, with no tagged fields of its own.
    Index,
    /// A bare string (a DescribeConfigs key), with no tagged fields of its own.
    Name,
}

/// The topics and partitions a request lists, counted so far over all its
/// lists of topics (an OffsetFetch v8 has one a group).
#[derive(Default)]
struct Counted {
    topics: usize,
    partitions: usize,
}

/// Walks a list of topics, each `name` and then a list of partitions, adding
/// them to `counted`: the reason to refuse the request when it holds more
/// than [`MAX_LISTED`] topics, or partitions over all its topics. `None`
/// where the body ends early.
fn topic_partitions(
    w: &mut Wire<'_>,
    counted: &mut Counted,
    over: &dyn Fn(usize, &str) -> Option<String>,
    name: &dyn Fn(&mut Wire<'_>) -> Option<()>,
    partition: &Partition<'_>,
) -> Option<Option<String>> {
    let Counted { topics, partitions } = counted;
    let counts = [(topics, "topics"), (partitions, "partitions")];
    nested(w, counts, over, name, partition)
}

/// Walks a list of `outer` entries (the first of `counts`), each `head` and
/// then a list of `inner` entries (the second), and its tagged fields in
/// flexible versions, adding each list's length to its count: the reason to
/// refuse the request when a count passes [`MAX_LISTED`], the inner one summed
/// over all the outer entries. `None` where the body ends early.
fn nested(
    w: &mut Wire<'_>,
    counts: [(&mut usize, &str); 2],
    over: &dyn Fn(usize, &str) -> Option<String>,
    head: &dyn Fn(&mut Wire<'_>) -> Option<()>,
    entry: &Partition<'_>,
) -> Option<Option<String>> {
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
        match entry {
            Partition::Fields(fields) => {
                for _ in 0..n {
                    fields(w)?;
                    w.skip_tagged_fields()?;
                }
            }
            Partition::Index => w.skip(n.saturating_mul(4))?,
            Partition::Name => {
                for _ in 0..n {
                    w.skip_string()?;
                }
            }
        }
        w.skip_tagged_fields()?;
    }
    Some(None)
}

/// The reason to refuse a request of `api` at `version` whose body (after the
/// header) is `body`, when one of its lists is longer than [`MAX_LISTED`].
pub fn check(api: ApiKey, version: i16, body: &[u8]) -> Result<(), String> {
    let mut w = Wire {
        buf: body,
        compact: api.request_header_version(version) >= 2,
    };
    let over = |n: usize, what: &str| {
        (n > MAX_LISTED).then(|| {
            format!(
                "{api:?} v{version} lists {n} {what}; at most {MAX_LISTED} are accepted in one request"
            )
        })
    };
    // `n` bytes in the versions from `v` on.
    let since = |v: i16, n: usize| if version >= v { n } else { 0 };
    let named = |w: &mut Wire<'_>| w.skip_string();
    // A request's topics, each named, with its partitions' `fields`.
    let topics = |w: &mut Wire<'_>, fields: &dyn Fn(&mut Wire<'_>) -> Option<()>| {
        let partition = Partition::Fields(fields);
        topic_partitions(w, &mut Counted::default(), &over, &named, &partition).flatten()
    };
    // A request's topics, each named, with bare partition indexes.
    let indexed = |w: &mut Wire<'_>| {
        topic_partitions(w, &mut Counted::default(), &over, &named, &Partition::Index).flatten()
    };
    // Config resources (type, name), each with a list of `what`.
    let resources = |w: &mut Wire<'_>, what: &str, entry: &Partition<'_>| {
        let resource = |w: &mut Wire<'_>| {
            w.take(1)?; // type
            w.skip_string() // name
        };
        let (mut resources, mut entries) = (0, 0);
        let counts = [(&mut resources, "resources"), (&mut entries, what)];
        nested(w, counts, &over, &resource, entry).flatten()
    };
    // A config's name, then its value (nullable).
    let config = |w: &mut Wire<'_>| {
        w.skip_string()?;
        w.skip_string()
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
            nested(w, counts, &over, head, &Partition::Index)
        };
    // The walk stops (None) where the body ends early.
    let refused = match api {
        ApiKey::Metadata => w.array_len().and_then(|n| over(n, "topics")),
        ApiKey::DescribeGroups => w.array_len().and_then(|n| over(n, "group ids")),
        ApiKey::DeleteGroups => w.array_len().and_then(|n| over(n, "group ids")),
        ApiKey::DeleteTopics => w.array_len().and_then(|n| over(n, "topics")),
        ApiKey::DescribeTopicPartitions => w.array_len().and_then(|n| over(n, "topics")),
        ApiKey::DescribeUserScramCredentials => w.array_len().and_then(|n| over(n, "users")),
        ApiKey::CreateAcls => w.array_len().and_then(|n| over(n, "ACL creations")),
        ApiKey::DeleteAcls => w.array_len().and_then(|n| over(n, "ACL filters")),
        ApiKey::ElectLeaders => (|| {
            if version >= 1 {
                w.take(1)?; // election type
            }
            indexed(&mut w)
        })(),
        ApiKey::DescribeProducers | ApiKey::DescribeLogDirs => indexed(&mut w),
        ApiKey::ListPartitionReassignments => (|| {
            w.skip(4)?; // timeout
            indexed(&mut w)
        })(),
        ApiKey::ListTransactions => (|| {
            let states = w.array_len()?;
            if let Some(r) = over(states, "states in its filter") {
                return Some(r);
            }
            for _ in 0..states {
                w.skip_string()?;
            }
            over(w.array_len()?, "producer ids in its filter")
        })(),
        ApiKey::JoinGroup => (|| {
            w.skip_string()?; // group id
            w.skip(4 + since(1, 4))?; // session timeout, rebalance timeout (v1)
            w.skip_string()?; // member id
            if version >= 5 {
                w.skip_string()?; // group instance id
            }
            w.skip_string()?; // protocol type
            over(w.array_len()?, "protocols")
        })(),
        ApiKey::SyncGroup => (|| {
            w.skip_string()?; // group id
            w.skip(4)?; // generation id
            w.skip_string()?; // member id
            if version >= 3 {
                w.skip_string()?; // group instance id
            }
            if version >= 5 {
                w.skip_string()?; // protocol type
                w.skip_string()?; // protocol name
            }
            over(w.array_len()?, "assignments")
        })(),
        ApiKey::LeaveGroup if version >= 3 => (|| {
            w.skip_string()?; // group id
            over(w.array_len()?, "members")
        })(),
        ApiKey::AlterUserScramCredentials => (|| {
            let deletions = w.array_len()?;
            if let Some(r) = over(deletions, "credential deletions") {
                return Some(r);
            }
            for _ in 0..deletions {
                w.skip_string()?; // user
                w.take(1)?; // mechanism
                w.skip_tagged_fields()?;
            }
            over(w.array_len()?, "credential upsertions")
        })(),
        // From v2, the oldest the codec reads.
        ApiKey::CreateTopics => (|| {
            let topics = w.array_len()?;
            if let Some(r) = over(topics, "topics") {
                return Some(r);
            }
            let (mut assigned, mut brokers, mut configs) = (0, 0, 0usize);
            let index = |w: &mut Wire<'_>| w.skip(4); // partition
            for _ in 0..topics {
                // Name, partition count, replication factor; then
                // assignments, each a partition and its broker ids.
                w.skip_string()?;
                w.skip(6)?;
                let counts = [&mut assigned, &mut brokers];
                if let Some(r) = assignments(&mut w, counts, &index)? {
                    return Some(r);
                }
                let n = w.array_len()?;
                configs = configs.saturating_add(n);
                if let Some(r) = over(configs, "configs") {
                    return Some(r);
                }
                for _ in 0..n {
                    config(&mut w)?;
                    w.skip_tagged_fields()?;
                }
                w.skip_tagged_fields()?;
            }
            None
        })(),
        ApiKey::CreatePartitions => (|| {
            let topics = w.array_len()?;
            if let Some(r) = over(topics, "topics") {
                return Some(r);
            }
            let (mut assigned, mut brokers) = (0, 0);
            for _ in 0..topics {
                // Name, partition count; then assignments (null: none),
                // each a list of broker ids.
                w.skip_string()?;
                w.skip(4)?;
                let counts = [&mut assigned, &mut brokers];
                if let Some(r) = assignments(&mut w, counts, &|_| Some(()))? {
                    return Some(r);
                }
                w.skip_tagged_fields()?;
            }
            None
        })(),
        ApiKey::ListGroups if version >= 4 => (|| {
            let states = w.array_len()?;
            if let Some(r) = over(states, "states in its filter") {
                return Some(r);
            }
            if version < 5 {
                return None;
            }
            for _ in 0..states {
                w.skip_string()?;
            }
            over(w.array_len()?, "types in its filter")
        })(),
        ApiKey::Produce => (|| {
            if version >= 3 {
                w.skip_string()?; // transactional id
            }
            w.take(6)?; // acks, timeout
            topics(&mut w, &|w: &mut Wire<'_>| {
                w.take(4)?; // index
                let n = w.len(true)?;
                w.skip(n)
            })
        })(),
        ApiKey::Fetch => (|| {
            // Replica id (up to v14), max wait, min bytes, max bytes (v3),
            // isolation level (v4), session id and epoch (v7).
            w.skip(4 - since(15, 4) + 8 + since(3, 4) + since(4, 1) + since(7, 8))?;
            // Partition, current leader epoch (v9), fetch offset, last fetched
            // epoch (v12), log start offset (v5), partition max bytes.
            let partition = 4 + since(9, 4) + 8 + since(12, 4) + since(5, 8) + 4;
            let name = |w: &mut Wire<'_>| {
                if version >= 13 {
                    w.skip(16) // topic id
                } else {
                    w.skip_string()
                }
            };
            let fields = |w: &mut Wire<'_>| w.skip(partition);
            let partition = Partition::Fields(&fields);
            let counted = &mut Counted::default();
            if let Some(r) = topic_partitions(&mut w, counted, &over, &name, &partition)? {
                return Some(r);
            }
            if version < 7 {
                return None;
            }
            over(w.array_len()?, "forgotten topics")
        })(),
        // From v2, the oldest the codec reads (v1 had a commit timestamp).
        ApiKey::OffsetCommit => (|| {
            w.skip_string()?; // group id
            w.skip(4)?; // generation id or member epoch
            w.skip_string()?; // member id
            if version >= 7 {
                w.skip_string()?; // group instance id
            }
            if version <= 4 {
                w.skip(8)?; // retention time
            }
            // Partition, committed offset, leader epoch (v6), then metadata.
            topics(&mut w, &|w: &mut Wire<'_>| {
                w.skip(12 + since(6, 4))?;
                w.skip_string()
            })
        })(),
        ApiKey::OffsetFetch => (|| {
            let counted = &mut Counted::default();
            let mut group_topics =
                |w: &mut Wire<'_>| topic_partitions(w, counted, &over, &named, &Partition::Index);
            if version < 8 {
                w.skip_string()?; // group id
                return group_topics(&mut w)?;
            }
            let groups = w.array_len()?;
            if let Some(r) = over(groups, "groups") {
                return Some(r);
            }
            for _ in 0..groups {
                w.skip_string()?; // group id
                if version >= 9 {
                    w.skip_string()?; // member id
                    w.skip(4)?; // member epoch
                }
                if let Some(r) = group_topics(&mut w)? {
                    return Some(r);
                }
                w.skip_tagged_fields()?;
            }
            None
        })(),
        // From v1, the oldest the codec reads (v0 had a maximum number of
        // offsets).
        ApiKey::ListOffsets => (|| {
            // Replica id, isolation level (v2).
            w.skip(4 + since(2, 1))?;
            // Partition, current leader epoch (v4), timestamp.
            topics(&mut w, &|w: &mut Wire<'_>| w.skip(4 + since(4, 4) + 8))
        })(),
        // Partition, offset.
        ApiKey::DeleteRecords => topics(&mut w, &|w: &mut Wire<'_>| w.skip(12)),
        ApiKey::OffsetDelete => (|| {
            w.skip_string()?; // group id
            topics(&mut w, &|w: &mut Wire<'_>| w.skip(4)) // partition
        })(),
        ApiKey::DescribeConfigs => resources(&mut w, "config keys", &Partition::Name),
        ApiKey::AlterConfigs => resources(&mut w, "configs", &Partition::Fields(&config)),
        ApiKey::IncrementalAlterConfigs => {
            let config = |w: &mut Wire<'_>| {
                w.skip_string()?; // name
                w.take(1)?; // operation
                w.skip_string() // value
            };
            resources(&mut w, "configs", &Partition::Fields(&config))
        }
        _ => None,
    };
    refused.map_or(Ok(()), Err)
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
        protocol::{Encodable, StrBytes},
    };
    use std::collections::BTreeMap;

    fn body<R: Encodable>(r: &R, version: i16) -> BytesMut {
        let mut b = BytesMut::new();
        r.encode(&mut b, version).unwrap();
        b
    }

    /// `request(n)` lists `n` of `what`: accepted at the bound, refused one
    /// past it, and left to the decoder (accepted) wherever its body is cut.
    fn bounded<R: Encodable>(api: ApiKey, version: i16, what: &str, request: impl Fn(usize) -> R) {
        let at = body(&request(MAX_LISTED), version);
        assert_eq!(check(api, version, &at), Ok(()), "{api:?} v{version}");
        let past = body(&request(MAX_LISTED + 1), version);
        let e = check(api, version, &past).unwrap_err();
        let listed = format!("lists {} {what};", MAX_LISTED + 1);
        assert!(e.contains(&listed), "{api:?} v{version}: {e}");
        let small = body(&request(3), version);
        for end in 0..=small.len() {
            let cut = check(api, version, &small[..end]);
            assert_eq!(cut, Ok(()), "{api:?} v{version} cut at {end}");
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
}
