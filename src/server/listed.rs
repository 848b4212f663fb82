//! How many names a request lists, counted on the wire before it is decoded.
//!
//! Decoding makes each entry of a list a value of its own, and the answer gives
//! each entry one of its own: an empty group id is one byte in a DescribeGroups v5
//! frame, 32 once decoded and some 200 in the answer being built. A frame near
//! `--max-request-bytes` (100 MiB by default) of such entries would take gigabytes
//! before a handler could look at it. So the lists of names (topics, group ids,
//! ListGroups filters, config resources and their keys, an OffsetFetch's
//! groups), and the partitions of a Produce, a Fetch, an OffsetCommit, an
//! OffsetFetch, a ListOffsets, a DeleteRecords or an OffsetDelete (counted over
//! all the request's topics, an OffsetFetch's over all its groups too), are
//! counted first, and a request with more than [`MAX_LISTED`] in one of them is
//! refused undecoded: its connection is closed with a log line, as for a
//! malformed frame.

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

/// An entry of a topic's list of partitions, as it is on the wire.
enum Partition<'a> {
    /// A struct whose fields this skips; in flexible versions its tagged
    /// fields follow.
    Fields(&'a dyn Fn(&mut Wire<'_>) -> Option<()>),
    /// A bare INT32 partition index, with no tagged fields of its own.
    Index,
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
    let topics = w.array_len()?;
    counted.topics = counted.topics.saturating_add(topics);
    if let Some(r) = over(counted.topics, "topics") {
        return Some(Some(r));
    }
    for _ in 0..topics {
        name(w)?;
        let n = w.array_len()?;
        counted.partitions = counted.partitions.saturating_add(n);
        if let Some(r) = over(counted.partitions, "partitions") {
            return Some(Some(r));
        }
        match partition {
            Partition::Fields(fields) => {
                for _ in 0..n {
                    fields(w)?;
                    w.skip_tagged_fields()?;
                }
            }
            Partition::Index => w.skip(n.saturating_mul(4))?,
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
    // The walk stops (None) where the body ends early.
    let refused = match api {
        ApiKey::Metadata => w.array_len().and_then(|n| over(n, "topics")),
        ApiKey::DescribeGroups => w.array_len().and_then(|n| over(n, "group ids")),
        ApiKey::DeleteGroups => w.array_len().and_then(|n| over(n, "group ids")),
        ApiKey::DeleteTopics => w.array_len().and_then(|n| over(n, "topics")),
        ApiKey::DescribeTopicPartitions => w.array_len().and_then(|n| over(n, "topics")),
        ApiKey::DescribeProducers => w.array_len().and_then(|n| over(n, "topics")),
        ApiKey::CreateAcls => w.array_len().and_then(|n| over(n, "ACL creations")),
        ApiKey::DeleteAcls => w.array_len().and_then(|n| over(n, "ACL filters")),
        ApiKey::ElectLeaders => (|| {
            if version >= 1 {
                w.take(1)?; // election type
            }
            over(w.array_len()?, "topics")
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
        ApiKey::DescribeConfigs => (|| {
            let resources = w.array_len()?;
            if let Some(r) = over(resources, "resources") {
                return Some(r);
            }
            let mut keys = 0usize;
            for _ in 0..resources {
                w.take(1)?;
                w.skip_string()?;
                let n = w.array_len()?;
                keys = keys.saturating_add(n);
                if let Some(r) = over(keys, "config keys") {
                    return Some(r);
                }
                for _ in 0..n {
                    w.skip_string()?;
                }
                w.skip_tagged_fields()?;
            }
            None
        })(),
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
            delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
            describe_configs_request::DescribeConfigsResource,
            describe_topic_partitions_request::TopicRequest,
            elect_leaders_request::TopicPartitions,
            fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
            list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
            offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
            offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic},
            offset_fetch_request::{
                OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
            },
            produce_request::{PartitionProduceData, TopicProduceData},
            CreateAclsRequest, DeleteRecordsRequest, DescribeConfigsRequest, DescribeGroupsRequest,
            DescribeTopicPartitionsRequest, ElectLeadersRequest, FetchRequest, GroupId,
            ListGroupsRequest, ListOffsetsRequest, OffsetCommitRequest, OffsetDeleteRequest,
            OffsetFetchRequest, ProduceRequest, TopicName, TransactionalId,
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
        bounded(api, version, "partitions", |n| {
            request(halves(n).map(&topic).to_vec())
        });
        bounded(api, version, "topics", |n| request(vec![T::default(); n]));
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
        let indexes = |n: usize| (0..n).map(|i| i32::try_from(i).unwrap()).collect();
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
}
