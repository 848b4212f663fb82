//! Metadata, CreateTopics, CreatePartitions, DeleteTopics, DeleteRecords,
//! DescribeLogDirs.

use std::sync::Arc;

use kafka_protocol::{
    messages::{
        create_partitions_response::CreatePartitionsTopicResult,
        create_topics_response::CreatableTopicResult,
        delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult},
        delete_topics_response::DeletableTopicResult,
        describe_log_dirs_response::{
            DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
        },
        metadata_response::{
            MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
        },
        BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
        CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest,
        DeleteTopicsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse, MetadataRequest,
        MetadataResponse, TopicName,
    },
    protocol::StrBytes,
};

use crate::{
    server::{codes, Ctx},
    storage::{valid_topic_name, CreateError, DeleteRecordsError, Topic, TopicConfig},
};

use super::configs::created_topic_configs;

fn topic_entry(ctx: &Ctx, t: &Topic, version: i16) -> MetadataResponseTopic {
    let node = BrokerId(ctx.storage.meta().node_id);
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            MetadataResponsePartition::default()
                .with_error_code(codes::NONE)
                .with_partition_index(p.index())
                .with_leader_id(node)
                .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
                .with_offline_replicas(vec![])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_error_code(codes::NONE)
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_topic_id(if version >= 10 {
            t.id
        } else {
            uuid::Uuid::nil()
        })
        .with_is_internal(false)
        .with_partitions(partitions)
        .with_topic_authorized_operations(i32::MIN)
}

fn error_topic(name: Option<TopicName>, id: uuid::Uuid, error: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error)
        .with_name(name)
        .with_topic_id(id)
        .with_topic_authorized_operations(i32::MIN)
}

/// Creates `name` on a blocking thread (it creates and fsyncs files).
async fn create_blocking(
    ctx: &Ctx,
    name: String,
    partitions: i32,
    configs: TopicConfig,
) -> Result<Arc<Topic>, CreateError> {
    let storage = ctx.storage.clone();
    tokio::task::spawn_blocking(move || storage.create_topic_with(&name, partitions, configs))
        .await
        .unwrap_or_else(|e| Err(CreateError::Storage(e.to_string())))
}

/// Every topic, by id.
fn topics_by_id(ctx: &Ctx) -> std::collections::HashMap<uuid::Uuid, Arc<Topic>> {
    ctx.storage
        .topics()
        .into_iter()
        .map(|t| (t.id, t))
        .collect()
}

pub(crate) async fn metadata(ctx: &Ctx, req: MetadataRequest, version: i16) -> MetadataResponse {
    let node = ctx.storage.meta().node_id;
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(node))
        .with_host(StrBytes::from_string(ctx.host.clone()))
        .with_port(ctx.port)
        .with_rack(None);
    // v0: an empty list means all topics; v1+: null means all topics.
    let requested = match req.topics {
        Some(t) if !(version == 0 && t.is_empty()) => Some(t),
        _ => None,
    };
    // Asked for from v8 (the cluster's only until v10, as Kafka's schema has it).
    let topic_ops = version >= 8 && req.include_topic_authorized_operations;
    let cluster_ops = (8..=10).contains(&version) && req.include_cluster_authorized_operations;
    // v0-v3 always allow auto-creation; later versions say so per request.
    let allow_create = (version < 4 || req.allow_auto_topic_creation)
        && ctx.storage.config().storage.auto_create_topics;
    let mut topics = Vec::new();
    match requested {
        None => topics.extend(
            ctx.storage
                .topics()
                .iter()
                .map(|t| topic_entry(ctx, t, version)),
        ),
        Some(list) => {
            // A topic named (or identified) more than once is answered once, as
            // Kafka answers the set of topics asked for: the answer is bounded by
            // the topics there are, however often a request repeats a large one.
            let mut names = std::collections::HashSet::new();
            let mut ids = std::collections::HashSet::new();
            let mut by_id = None;
            for rt in list {
                let first = match &rt.name {
                    Some(n) => names.insert(n.0.clone()),
                    None => ids.insert(rt.topic_id),
                };
                if !first {
                    continue;
                }
                let Some(name) = rt.name else {
                    let by_id = by_id.get_or_insert_with(|| topics_by_id(ctx));
                    match by_id.get(&rt.topic_id) {
                        Some(t) => topics.push(topic_entry(ctx, t, version)),
                        None => {
                            topics.push(error_topic(None, rt.topic_id, codes::UNKNOWN_TOPIC_ID))
                        }
                    }
                    continue;
                };
                let n = name.0.to_string();
                if let Some(t) = ctx.storage.topic(&n) {
                    topics.push(topic_entry(ctx, &t, version));
                } else if !valid_topic_name(&n) {
                    topics.push(error_topic(
                        Some(name),
                        uuid::Uuid::nil(),
                        codes::INVALID_TOPIC_EXCEPTION,
                    ));
                } else if allow_create {
                    let parts = ctx.storage.config().storage.default_partitions;
                    match create_blocking(ctx, n.clone(), parts, TopicConfig::default()).await {
                        Ok(t) => topics.push(topic_entry(ctx, &t, version)),
                        Err(CreateError::Exists) => match ctx.storage.topic(&n) {
                            Some(t) => topics.push(topic_entry(ctx, &t, version)),
                            None => topics.push(error_topic(
                                Some(name),
                                uuid::Uuid::nil(),
                                codes::UNKNOWN_TOPIC_OR_PARTITION,
                            )),
                        },
                        Err(e) => {
                            tracing::warn!(topic = %n, error = ?e, "auto-create failed");
                            topics.push(error_topic(
                                Some(name),
                                uuid::Uuid::nil(),
                                codes::UNKNOWN_TOPIC_OR_PARTITION,
                            ));
                        }
                    }
                } else {
                    topics.push(error_topic(
                        Some(name),
                        uuid::Uuid::nil(),
                        codes::UNKNOWN_TOPIC_OR_PARTITION,
                    ));
                }
            }
        }
    }
    if topic_ops {
        for t in topics.iter_mut().filter(|t| t.error_code == codes::NONE) {
            t.topic_authorized_operations = super::describe::TOPIC_OPERATIONS;
        }
    }
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(
            (version >= 2).then(|| StrBytes::from_string(ctx.storage.meta().cluster_id.clone())),
        )
        .with_controller_id(BrokerId(if version >= 1 { node } else { -1 }))
        .with_topics(topics)
        .with_cluster_authorized_operations(if cluster_ops {
            super::describe::CLUSTER_OPERATIONS
        } else {
            i32::MIN
        })
}

pub(crate) async fn create(ctx: &Ctx, req: CreateTopicsRequest) -> CreateTopicsResponse {
    // A topic named more than once is not created, and answered once with
    // INVALID_REQUEST, as Kafka does.
    let mut seen = std::collections::HashSet::new();
    let repeated: std::collections::HashSet<String> = req
        .topics
        .iter()
        .map(|t| t.name.0.as_str())
        .filter(|n| !seen.insert(*n))
        .map(str::to_string)
        .collect();
    let mut answered = std::collections::HashSet::new();
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        if repeated.contains(&name) {
            if answered.insert(name.clone()) {
                results.push(
                    CreatableTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(codes::INVALID_REQUEST)
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "topic {name} is named more than once in the request"
                        )))),
                );
            }
            continue;
        }
        let parts = if t.num_partitions == -1 {
            ctx.storage.config().storage.default_partitions
        } else {
            t.num_partitions
        };
        let configs = TopicConfig::from_pairs(
            t.configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map(StrBytes::as_str))),
        );
        let check = if !valid_topic_name(&name) {
            Err((
                codes::INVALID_TOPIC_EXCEPTION,
                "topic names are 1-249 characters of [A-Za-z0-9._-]".to_string(),
            ))
        } else if t.replication_factor != -1 && t.replication_factor != 1 {
            Err((
                codes::INVALID_REPLICATION_FACTOR,
                "this single-node broker supports replication factor 1".to_string(),
            ))
        } else if !t.assignments.is_empty() {
            Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                "manual replica assignment is not supported".to_string(),
            ))
        } else if !(1..=10_000).contains(&parts) {
            Err((
                codes::INVALID_PARTITIONS,
                format!("partition count {parts} is outside 1-10000"),
            ))
        } else if ctx.storage.topic(&name).is_some() {
            Err((
                codes::TOPIC_ALREADY_EXISTS,
                format!("topic {name} already exists"),
            ))
        } else if let Err(e) = &configs {
            Err((codes::INVALID_CONFIG, e.to_string()))
        } else if req.validate_only {
            // A dry run creates nothing, so there is no topic id to report.
            Ok(uuid::Uuid::nil())
        } else {
            let configs = configs.clone().unwrap_or_default();
            match create_blocking(ctx, name.clone(), parts, configs).await {
                Ok(topic) => Ok(topic.id),
                Err(CreateError::Exists) => Err((
                    codes::TOPIC_ALREADY_EXISTS,
                    format!("topic {name} already exists"),
                )),
                Err(CreateError::InvalidName) => {
                    Err((codes::INVALID_TOPIC_EXCEPTION, "invalid topic name".into()))
                }
                Err(CreateError::InvalidPartitions) => {
                    Err((codes::INVALID_PARTITIONS, "invalid partition count".into()))
                }
                Err(CreateError::Storage(s)) => Err((codes::KAFKA_STORAGE_ERROR, s)),
                Err(CreateError::BeingDeleted) => Err((
                    codes::REQUEST_TIMED_OUT,
                    format!("topic {name} is still being deleted; retry"),
                )),
            }
        };
        // v5+ describe a topic that was (or, in a dry run, would be) created, with
        // every config in force; as in Kafka, a failed topic keeps the defaults:
        // -1, -1 and no configs. v7 adds the topic id.
        let r = CreatableTopicResult::default().with_name(t.name);
        results.push(match check {
            Ok(id) => r
                .with_error_code(codes::NONE)
                .with_error_message(None)
                .with_num_partitions(parts)
                .with_replication_factor(1)
                .with_configs(Some(created_topic_configs(
                    ctx,
                    &configs.clone().unwrap_or_default(),
                )))
                .with_topic_id(id),
            Err((code, msg)) => r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(msg))),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// CreatePartitions: grows topics, as Kafka answers it for a single broker.
pub(crate) async fn create_partitions(
    ctx: &Ctx,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let node = ctx.storage.meta().node_id;
        let check = match ctx.storage.topic(&name) {
            None => Err((
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {name}"),
            )),
            Some(topic) if t.count <= topic.partitions.len() as i32 => Err((
                codes::INVALID_PARTITIONS,
                format!(
                    "topic {name} has {} partitions; the count can only grow",
                    topic.partitions.len()
                ),
            )),
            Some(_) if t.count > 10_000 => Err((
                codes::INVALID_PARTITIONS,
                format!("partition count {} is above 10000", t.count),
            )),
            Some(topic)
                if t.assignments.as_ref().is_some_and(|a| {
                    a.len() != (t.count as usize - topic.partitions.len())
                        || a.iter().any(|x| x.broker_ids.iter().any(|b| b.0 != node))
                }) =>
            {
                Err((
                    codes::INVALID_REPLICA_ASSIGNMENT,
                    format!("new partitions can only be assigned to broker {node}, one each"),
                ))
            }
            Some(_) if req.validate_only => Ok(()),
            Some(_) => {
                let storage = ctx.storage.clone();
                let (n, count) = (name.clone(), t.count);
                match tokio::task::spawn_blocking(move || storage.add_partitions(&n, count)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(CreateError::InvalidPartitions)) => Err((
                        codes::INVALID_PARTITIONS,
                        "the partition count can only grow".into(),
                    )),
                    Ok(Err(CreateError::Storage(s))) => Err((codes::KAFKA_STORAGE_ERROR, s)),
                    Ok(Err(e)) => Err((codes::KAFKA_STORAGE_ERROR, format!("{e:?}"))),
                    Err(e) => Err((codes::KAFKA_STORAGE_ERROR, e.to_string())),
                }
            }
        };
        let r = CreatePartitionsTopicResult::default().with_name(t.name);
        results.push(match check {
            Ok(()) => r.with_error_code(codes::NONE),
            Err((code, msg)) => r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(msg))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

pub(crate) async fn delete(ctx: &Ctx, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // Up to v5 topics come by name; from v6 by name or by id (the name null).
    let mut asked: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    asked.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut results = Vec::new();
    let mut ids = None;
    for (name, id) in asked {
        let by_id = name.is_none();
        let found = match &name {
            Some(n) => ctx.storage.topic(n),
            None => ids
                .get_or_insert_with(|| topics_by_id(ctx))
                .get(&id)
                .cloned(),
        };
        let (code, message, name, id) = match found {
            None if by_id => (
                codes::UNKNOWN_TOPIC_ID,
                format!("no topic has id {id}"),
                None,
                id,
            ),
            None => (
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {}", name.as_deref().unwrap_or_default()),
                name,
                id,
            ),
            Some(t) => match ctx.storage.delete_topic(&t.name).await {
                Ok(true) => {
                    if let Some(ids) = &mut ids {
                        ids.remove(&t.id);
                    }
                    (codes::NONE, String::new(), Some(t.name.clone()), t.id)
                }
                Ok(false) => (
                    codes::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {}", t.name),
                    Some(t.name.clone()),
                    t.id,
                ),
                Err(e) => {
                    tracing::error!(topic = %t.name, error = %e, "delete topic failed");
                    (
                        codes::KAFKA_STORAGE_ERROR,
                        e.to_string(),
                        Some(t.name.clone()),
                        t.id,
                    )
                }
            },
        };
        results.push(
            DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                .with_topic_id(id)
                .with_error_code(code)
                .with_error_message((code != codes::NONE).then(|| StrBytes::from_string(message))),
        );
    }
    DeleteTopicsResponse::default().with_responses(results)
}

/// DeleteRecords (`kafka-delete-records`, AdminClient `delete_records`): moves each
/// partition's log start offset up to the offset given (-1: the high watermark),
/// durably, and answers the new start as the low watermark.
pub(crate) async fn delete_records(ctx: &Ctx, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let storage = ctx.storage.clone();
    let topics = tokio::task::spawn_blocking(move || {
        req.topics
            .into_iter()
            .map(|t| {
                // As Kafka: records of a topic whose policy does not delete
                // (compact only) are not deleted on request either.
                let deletes = storage
                    .topic(&t.name.0)
                    .is_none_or(|topic| topic.configs.delete());
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let r = DeleteRecordsPartitionResult::default()
                            .with_partition_index(p.partition_index)
                            .with_low_watermark(-1);
                        let Some(part) = storage.partition(&t.name.0, p.partition_index) else {
                            return r.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
                        };
                        if !deletes {
                            return r.with_error_code(codes::POLICY_VIOLATION);
                        }
                        match part.delete_records(p.offset) {
                            Ok(start) => r.with_error_code(codes::NONE).with_low_watermark(start),
                            Err(e) => {
                                tracing::warn!(topic = %t.name.0, partition = p.partition_index, error = %e, "DeleteRecords refused");
                                r.with_error_code(match e {
                                    DeleteRecordsError::OutOfRange { .. } => {
                                        codes::OFFSET_OUT_OF_RANGE
                                    }
                                    DeleteRecordsError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
                                    DeleteRecordsError::Deleted => {
                                        codes::UNKNOWN_TOPIC_OR_PARTITION
                                    }
                                })
                            }
                        }
                    })
                    .collect();
                DeleteRecordsTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "DeleteRecords task failed");
        Vec::new()
    });
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Total and available bytes of the filesystem holding `dir`; -1, -1 where that
/// cannot be asked.
fn disk_space(dir: &std::path::Path) -> (i64, i64) {
    #[cfg(unix)]
    if let Ok(s) = nix::sys::statvfs::statvfs(dir) {
        let block = i64::try_from(s.fragment_size()).unwrap_or(0);
        let total = i64::try_from(s.blocks()).unwrap_or(0).saturating_mul(block);
        let usable = i64::try_from(s.blocks_available())
            .unwrap_or(0)
            .saturating_mul(block);
        return (total, usable);
    }
    let _ = dir;
    (-1, -1)
}

/// DescribeLogDirs (`kafka-log-dirs --describe`, AdminClient `describeLogDirs`):
/// the one log directory, each partition's bytes on disk (lag 0: there are no
/// replicas), and from v4 the disk's total and usable bytes. Topics or partitions
/// that do not exist are left out, as Kafka does.
pub(crate) async fn describe_log_dirs(
    ctx: &Ctx,
    req: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let storage = ctx.storage.clone();
    let result = tokio::task::spawn_blocking(move || {
        let wanted: Vec<(Arc<Topic>, Vec<i32>)> = match req.topics {
            None => storage
                .topics()
                .into_iter()
                .map(|t| {
                    let all = (0..t.partitions.len() as i32).collect();
                    (t, all)
                })
                .collect(),
            Some(asked) => asked
                .into_iter()
                .filter_map(|a| storage.topic(&a.topic.0).map(|t| (t, a.partitions)))
                .collect(),
        };
        let topics = wanted
            .into_iter()
            .map(|(t, indexes)| {
                let partitions = indexes
                    .into_iter()
                    .filter_map(|i| usize::try_from(i).ok().and_then(|i| t.partitions.get(i)))
                    .map(|p| {
                        DescribeLogDirsPartition::default()
                            .with_partition_index(p.index())
                            .with_partition_size(i64::try_from(p.size_bytes()).unwrap_or(i64::MAX))
                            .with_offset_lag(0)
                            .with_is_future_key(false)
                    })
                    .collect();
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_partitions(partitions)
            })
            .collect();
        let dir = storage.config().storage.data_dir.join("topics");
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let (total, usable) = disk_space(&dir);
        DescribeLogDirsResult::default()
            .with_error_code(codes::NONE)
            .with_log_dir(StrBytes::from_string(dir.display().to_string()))
            .with_topics(topics)
            .with_total_bytes(total)
            .with_usable_bytes(usable)
    })
    .await;
    match result {
        Ok(r) => DescribeLogDirsResponse::default()
            .with_error_code(codes::NONE)
            .with_results(vec![r]),
        Err(e) => {
            tracing::error!(error = %e, "DescribeLogDirs task failed");
            DescribeLogDirsResponse::default().with_error_code(codes::KAFKA_STORAGE_ERROR)
        }
    }
}
