//! How many names a request lists, counted on the wire before it is decoded.
//!
//! Decoding makes each entry of a list a value of its own, and the answer gives
//! each entry one of its own: an empty group id is one byte in a DescribeGroups v5
//! frame, 32 once decoded and some 200 in the answer being built. A frame near
//! `--max-request-bytes` (100 MiB by default) of such entries would take gigabytes
//! before a handler could look at it. So the lists of names (topics, group ids,
//! ListGroups filters, config resources and their keys), and the partitions of
//! a Produce or a Fetch (counted over all the request's topics), are counted
//! first, and a request with more than [`MAX_LISTED`] in one of them is refused
//! undecoded: its connection is closed with a log line, as for a malformed
//! frame.

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
        self.take(n).map(|_| ())
    }

    fn skip_tagged_fields(&mut self) -> Option<()> {
        if self.compact {
            for _ in 0..self.varint()? {
                self.varint()?;
                let size = self.varint()?;
                self.take(size)?;
            }
        }
        Some(())
    }
}

/// Walks a list of topics, each `name` and then a list of partitions, each
/// `partition`'s fields (tagged fields after each are skipped here): the
/// reason to refuse it when it holds more than [`MAX_LISTED`] topics, or
/// partitions over all its topics. `None` where the body ends early.
fn topic_partitions(
    w: &mut Wire<'_>,
    over: &dyn Fn(usize, &str) -> Option<String>,
    name: &dyn Fn(&mut Wire<'_>) -> Option<()>,
    partition: &dyn Fn(&mut Wire<'_>) -> Option<()>,
) -> Option<Option<String>> {
    let topics = w.array_len()?;
    if let Some(r) = over(topics, "topics") {
        return Some(Some(r));
    }
    let mut partitions = 0usize;
    for _ in 0..topics {
        name(w)?;
        let n = w.array_len()?;
        partitions = partitions.saturating_add(n);
        if let Some(r) = over(partitions, "partitions") {
            return Some(Some(r));
        }
        for _ in 0..n {
            partition(w)?;
            w.skip_tagged_fields()?;
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
            let records = |w: &mut Wire<'_>| {
                w.take(4)?; // index
                let n = w.len(true)?;
                w.take(n).map(|_| ())
            };
            topic_partitions(&mut w, &over, &|w: &mut Wire<'_>| w.skip_string(), &records).flatten()
        })(),
        ApiKey::Fetch => (|| {
            let since = |v: i16, n: usize| if version >= v { n } else { 0 };
            // Replica id (up to v14), max wait, min bytes, max bytes (v3),
            // isolation level (v4), session id and epoch (v7).
            w.take(4 - since(15, 4) + 8 + since(3, 4) + since(4, 1) + since(7, 8))?;
            // Partition, current leader epoch (v9), fetch offset, last fetched
            // epoch (v12), log start offset (v5), partition max bytes.
            let partition = 4 + since(9, 4) + 8 + since(12, 4) + since(5, 8) + 4;
            let name = |w: &mut Wire<'_>| {
                if version >= 13 {
                    w.take(16).map(|_| ()) // topic id
                } else {
                    w.skip_string()
                }
            };
            let fields = |w: &mut Wire<'_>| w.take(partition).map(|_| ());
            if let Some(r) = topic_partitions(&mut w, &over, &name, &fields)? {
                return Some(r);
            }
            if version < 7 {
                return None;
            }
            over(w.array_len()?, "forgotten topics")
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
            describe_configs_request::DescribeConfigsResource,
            describe_topic_partitions_request::TopicRequest,
            elect_leaders_request::TopicPartitions,
            fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
            produce_request::{PartitionProduceData, TopicProduceData},
            CreateAclsRequest, DescribeConfigsRequest, DescribeGroupsRequest,
            DescribeTopicPartitionsRequest, ElectLeadersRequest, FetchRequest, GroupId,
            ListGroupsRequest, ProduceRequest, TransactionalId,
        },
        protocol::{Encodable, StrBytes},
    };

    fn body<R: Encodable>(r: &R, version: i16) -> BytesMut {
        let mut b = BytesMut::new();
        r.encode(&mut b, version).unwrap();
        b
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
}
