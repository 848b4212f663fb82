//! Metadata, CreateTopics, CreatePartitions, DeleteTopics, DeleteRecords,
//! DescribeLogDirs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::{
    messages::{
        create_partitions_response::CreatePartitionsTopicResult,
        create_topics_request::CreatableReplicaAssignment,
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
    storage::{
        valid_topic_name, CreateError, DeleteRecordsError, Topic, TopicConfig,
        CREATE_WAITS_FOR_DELETE,
    },
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

/// Creates `name` on a blocking thread (it creates and fsyncs files), in the
/// topic-admin turn ([`crate::server::admin_blocking`]). A delete of the name
/// still running is waited for here, up to [`CREATE_WAITS_FOR_DELETE`] (and
/// not past `until`, the request's own deadline), out of the turn: each try
/// is refused at once while the delete runs, and the next comes
/// [`DELETE_RETRY`] later. Waited for inside the turn, one create behind a
/// delete held every other create, partition add and config change for as
/// long.
async fn create_blocking(
    ctx: &Ctx,
    name: String,
    partitions: i32,
    configs: TopicConfig,
    until: Option<Instant>,
) -> Result<Arc<Topic>, CreateError> {
    let waited = Instant::now() + CREATE_WAITS_FOR_DELETE;
    let deadline = until.map_or(waited, |u| u.min(waited));
    loop {
        let storage = ctx.storage.clone();
        let (n, c) = (name.clone(), configs.clone());
        let created =
            crate::server::admin_blocking(ctx, move || storage.create_topic_now(&n, partitions, c))
                .await
                .unwrap_or_else(|e| Err(CreateError::Storage(e.to_string())));
        match created {
            Err(CreateError::BeingDeleted) if Instant::now() + DELETE_RETRY < deadline => {
                tokio::time::sleep(DELETE_RETRY).await;
            }
            done => return done,
        }
    }
}

/// How often a create waiting for a delete of its name tries again.
const DELETE_RETRY: Duration = Duration::from_millis(20);

/// Every topic's name, by id.
fn names_by_id(ctx: &Ctx) -> std::collections::HashMap<uuid::Uuid, String> {
    ctx.storage
        .topics()
        .into_iter()
        .map(|t| (t.id, t.name.clone()))
        .collect()
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
    // Before v12 a topic is asked for by name alone (the id field exists from
    // v10, unused): Kafka refuses a null name or an id with INVALID_REQUEST for
    // every topic asked for, a null name answered as "" (the response's name is
    // not nullable before v12), and no brokers.
    if version < 12 {
        if let Some(list) = req
            .topics
            .as_ref()
            .filter(|l| l.iter().any(|t| t.name.is_none() || !t.topic_id.is_nil()))
        {
            return MetadataResponse::default().with_topics(
                list.iter()
                    .map(|t| {
                        let name = t
                            .name
                            .clone()
                            .unwrap_or_else(|| TopicName(StrBytes::default()));
                        error_topic(Some(name), t.topic_id, codes::INVALID_REQUEST)
                    })
                    .collect(),
            );
        }
    }
    metadata_creating_at_most(ctx, req, version, MAX_CREATED_TOPICS, AUTO_CREATE_BUDGET).await
}

/// How long a Metadata request may spend auto-creating topics: the names it
/// has not come to by then are answered `UNKNOWN_TOPIC_OR_PARTITION`, which
/// clients ask for again. Each create takes some 4-19 ms (files made and
/// fsynced), so the 5,000 names a request may create took up to 95 s, holding
/// one of the places for blocking work and every request behind it on its
/// connection.
const AUTO_CREATE_BUDGET: Duration = Duration::from_secs(5);

/// Metadata, auto-creating at most `cap` topics (`MAX_CREATED_TOPICS`; a
/// test's smaller bound), and none once `budget` has passed since it began.
async fn metadata_creating_at_most(
    ctx: &Ctx,
    req: MetadataRequest,
    version: i16,
    cap: usize,
    budget: Duration,
) -> MetadataResponse {
    let began = Instant::now();
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
            // Auto-creates tried, at most `cap`; then the names
            // left uncreated past that bound, and those left uncreated once
            // the open-file limit refused one (with its reason): each is
            // answered UNKNOWN_TOPIC_OR_PARTITION, with one warning per request.
            let mut tried = 0usize;
            let mut past_cap = 0usize;
            let mut past_budget = 0usize;
            let mut no_files: Option<(usize, String)> = None;
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
                } else if allow_create
                    && (tried >= cap || no_files.is_some() || began.elapsed() >= budget)
                {
                    match &mut no_files {
                        Some((left, _)) => *left += 1,
                        None if tried >= cap => past_cap += 1,
                        None => past_budget += 1,
                    }
                    topics.push(error_topic(
                        Some(name),
                        uuid::Uuid::nil(),
                        codes::UNKNOWN_TOPIC_OR_PARTITION,
                    ));
                } else if allow_create {
                    tried += 1;
                    let parts = ctx.storage.config().storage.default_partitions;
                    let storage = ctx.storage.clone();
                    let name_ = n.clone();
                    // Not waiting for a delete of the name: answered at once,
                    // as Kafka answers, and asked again by the client.
                    let created = crate::server::admin_blocking(ctx, move || {
                        storage.auto_create_topic(&name_, parts)
                    })
                    .await
                    .unwrap_or_else(|e| Err(CreateError::Storage(e.to_string())));
                    match created {
                        Ok(t) => topics.push(topic_entry(ctx, &t, version)),
                        Err(CreateError::Exists) => match ctx.storage.topic(&n) {
                            Some(t) => topics.push(topic_entry(ctx, &t, version)),
                            None => topics.push(error_topic(
                                Some(name),
                                uuid::Uuid::nil(),
                                codes::UNKNOWN_TOPIC_OR_PARTITION,
                            )),
                        },
                        // Listed when a failed delete put it back meanwhile.
                        Err(CreateError::BeingDeleted) => match ctx.storage.topic(&n) {
                            Some(t) => topics.push(topic_entry(ctx, &t, version)),
                            None => {
                                tracing::debug!(topic = %n, "auto-create refused: a topic of the name is being deleted");
                                topics.push(error_topic(
                                    Some(name),
                                    uuid::Uuid::nil(),
                                    codes::UNKNOWN_TOPIC_OR_PARTITION,
                                ));
                            }
                        },
                        // Not retriable: the name stays refused while the other
                        // topic exists.
                        Err(CreateError::Collides(other)) => {
                            tracing::debug!(topic = %n, %other, "auto-create refused: the name collides with another topic's");
                            topics.push(error_topic(
                                Some(name),
                                uuid::Uuid::nil(),
                                codes::INVALID_TOPIC_EXCEPTION,
                            ));
                        }
                        // As a create past what the open-file limit leaves to
                        // storage is refused; so are the request's later names.
                        Err(CreateError::TooManyFiles(e)) => {
                            no_files = Some((1, e.to_string()));
                            topics.push(error_topic(
                                Some(name),
                                uuid::Uuid::nil(),
                                codes::UNKNOWN_TOPIC_OR_PARTITION,
                            ));
                        }
                        Err(e) => {
                            crate::log_limit::limited!(warn, topic = %n, error = ?e, "auto-create failed");
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
            if let Some((left, why)) = no_files {
                crate::log_limit::limited!(warn, topics = left, reason = %why, "Metadata auto-create refused: the open-file limit leaves no room for the new partitions; those topics are answered UNKNOWN_TOPIC_OR_PARTITION");
            }
            if past_budget > 0 {
                crate::log_limit::limited!(
                    warn,
                    topics = past_budget,
                    "Metadata auto-create: new topics left uncreated after {budget:?} of creating in one request; they are answered UNKNOWN_TOPIC_OR_PARTITION, and created when asked for again"
                );
            }
            if past_cap > 0 {
                crate::log_limit::limited!(
                    warn,
                    topics = past_cap,
                    "Metadata auto-create: more than {cap} new topics in one request; the rest are not created and are answered UNKNOWN_TOPIC_OR_PARTITION"
                );
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

/// The entries of `items` that appear more than once.
fn repeated<T: std::hash::Hash + Eq + Clone>(
    items: impl Iterator<Item = T>,
) -> std::collections::HashSet<T> {
    let mut seen = std::collections::HashSet::new();
    items.filter(|i| !seen.insert(i.clone())).collect()
}

/// The most topics one CreateTopics creates (or, `validate_only`, checks);
/// later ones are answered INVALID_REQUEST, with a message shared by all.
/// From v5 each topic acted on is answered with every config in force, 14
/// entries: 5,000 topics make 75,000 entries, within the
/// [`crate::server::listed::MAX_LISTED`] that bound what a request may list,
/// so that the answer takes tens of MiB at most. Without the bound a dry run
/// of 100,000 new names (1.6 MB of request) was answered with 48 MB, having
/// touched no storage; now with 11 MB.
pub(crate) const MAX_CREATED_TOPICS: usize = 5_000;

/// CreateTopics `req`, read off its connection at `arrived` (its
/// `timeout_ms` counts from then).
pub(crate) async fn create(
    ctx: &Ctx,
    req: CreateTopicsRequest,
    arrived: Instant,
) -> CreateTopicsResponse {
    // A topic named more than once is not created, and answered once with
    // INVALID_REQUEST, as Kafka does.
    let repeated = repeated(req.topics.iter().map(|t| t.name.0.as_str()))
        .into_iter()
        .map(str::to_string)
        .collect::<std::collections::HashSet<String>>();
    let mut answered = std::collections::HashSet::new();
    let mut results = Vec::new();
    let mut considered = 0usize;
    // The partitions a dry run's earlier topics would have made: each topic is
    // judged against the budget with them, as a real create of the same
    // request would be.
    let mut dry_run_partitions = 0usize;
    // The collision keys of the names a dry run passed (see
    // `TopicManager::collision_key`), with the name.
    let mut dry_run_names: std::collections::HashMap<String, String> =
        std::collections::HashMap::new();
    // One message, shared by every topic past the bound.
    let mut past_cap = None;
    // The request's `timeout_ms`: a topic whose create could not end before
    // it is not created and is answered REQUEST_TIMED_OUT, as Kafka answers
    // one not created in time, so that the client learns of the rest before
    // its own request timeout, which clients set to the same value
    // (thousands of topics of many partitions take minutes to create, the
    // files of each synced). It counts from the request's arrival: a request
    // read behind others on its connection waits for their answers (a Fetch's
    // long poll, a JoinGroup's rebalance) before it starts. A topic is not
    // started with less left than the longest create of the request so far,
    // or a fifth of the timeout (the answer's own way, and the time the
    // request waited before it was read). 0 or less sets none.
    let deadline = u64::try_from(req.timeout_ms)
        .ok()
        .filter(|&ms| ms > 0)
        .map(|ms| {
            (
                arrived + Duration::from_millis(ms),
                Duration::from_millis(ms) / 5,
            )
        });
    let mut longest = Duration::ZERO;
    let mut timed_out = None;
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
        considered += 1;
        if considered > MAX_CREATED_TOPICS {
            let message = past_cap.get_or_insert_with(|| {
                StrBytes::from_string(format!(
                    "more than {MAX_CREATED_TOPICS} topics in one CreateTopics: send this \
                     one in another"
                ))
            });
            results.push(
                CreatableTopicResult::default()
                    .with_name(t.name)
                    .with_error_code(codes::INVALID_REQUEST)
                    .with_error_message(Some(message.clone())),
            );
            continue;
        }
        // With a manual assignment the partitions are those it lists.
        let parts = if !t.assignments.is_empty() {
            i32::try_from(t.assignments.len()).unwrap_or(i32::MAX)
        } else if t.num_partitions == -1 {
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
        } else if ctx.storage.topic(&name).is_some() {
            // Before the rest of the request is judged, as Kafka does: an
            // application that creates its topics at start takes
            // TOPIC_ALREADY_EXISTS as success, whatever it asked for.
            Err((
                codes::TOPIC_ALREADY_EXISTS,
                format!("topic {name} already exists"),
            ))
        } else if !t.assignments.is_empty()
            && (t.num_partitions != -1 || t.replication_factor != -1)
        {
            Err((
                codes::INVALID_REQUEST,
                "Both numPartitions or replicationFactor and replicasAssignments were set. \
                 Both cannot be used at the same time."
                    .to_string(),
            ))
        } else if t.replication_factor != -1 && t.replication_factor != 1 {
            Err((
                codes::INVALID_REPLICATION_FACTOR,
                "this single-node broker supports replication factor 1".to_string(),
            ))
        } else if let Err(why) = check_assignments(&t.assignments, ctx.storage.meta().node_id) {
            Err((codes::INVALID_REPLICA_ASSIGNMENT, why))
        } else if !(1..=10_000).contains(&parts) {
            Err((
                codes::INVALID_PARTITIONS,
                format!("partition count {parts} is outside 1-10000"),
            ))
        } else if let Some(other) = ctx.storage.colliding_topic(&name) {
            Err(collides(&name, &other))
        } else if let Err(e) = &configs {
            Err((codes::INVALID_CONFIG, e.to_string()))
        } else if !req.validate_only
            && deadline.is_some_and(|(d, fifth)| Instant::now() + longest.max(fifth) >= d)
        {
            let message = timed_out.get_or_insert_with(|| {
                format!(
                    "not created: the request's timeout ({} ms) would pass before its \
                     create ended; send it again",
                    req.timeout_ms
                )
            });
            Err((codes::REQUEST_TIMED_OUT, message.clone()))
        } else if req.validate_only {
            // A dry run creates nothing, so there is no topic id to report.
            // Its earlier topics are judged as made, as a real create of the
            // same request makes them: their partitions count in the budget,
            // and a later name colliding with one is refused.
            let new = usize::try_from(parts).unwrap_or(usize::MAX);
            let key = ctx.storage.collision_key(&name);
            match key.as_ref().and_then(|k| dry_run_names.get(k)) {
                Some(other) => Err(collides(&name, other)),
                None => match ctx
                    .storage
                    .check_dry_run(dry_run_partitions.saturating_add(new))
                {
                    Ok(()) => {
                        dry_run_partitions += new;
                        if let Some(k) = key {
                            dry_run_names.insert(k, name.clone());
                        }
                        Ok(uuid::Uuid::nil())
                    }
                    Err(CreateError::TooManyFiles(e)) => Err(too_many_files(&e)),
                    Err(CreateError::Storage(s)) => Err((codes::KAFKA_STORAGE_ERROR, s)),
                    Err(e) => Err((codes::UNKNOWN_SERVER_ERROR, format!("{e:?}"))),
                },
            }
        } else {
            let configs = configs.clone().unwrap_or_default();
            let started = Instant::now();
            // A delete of the name is waited for until the request's deadline
            // less the answer's way at most.
            let until = deadline.map(|(d, fifth)| d.checked_sub(fifth).unwrap_or(d));
            let created = create_blocking(ctx, name.clone(), parts, configs, until).await;
            longest = longest.max(started.elapsed());
            match created {
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
                Err(CreateError::Collides(other)) => Err(collides(&name, &other)),
                Err(CreateError::TooManyFiles(e)) => Err(too_many_files(&e)),
                Err(CreateError::Storage(s)) => Err((codes::KAFKA_STORAGE_ERROR, s)),
                Err(CreateError::BeingDeleted) => Err((
                    codes::REQUEST_TIMED_OUT,
                    format!("topic {name} is still being deleted; retry"),
                )),
                Err(CreateError::UnknownTopic) => Err((
                    codes::UNKNOWN_SERVER_ERROR,
                    format!("creating topic {name} failed: unknown topic"),
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

/// Checks a CreateTopics' manual replica assignment (none: nothing to check):
/// as Kafka, one entry per partition, numbered 0 to n-1 in any order; each
/// partition's replicas are this broker, once (`node`, its id).
///
/// # Errors
/// Kafka's reason, for INVALID_REPLICA_ASSIGNMENT.
fn check_assignments(assignments: &[CreatableReplicaAssignment], node: i32) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for a in assignments {
        let p = a.partition_index;
        if !seen.insert(p) {
            return Err(format!(
                "Found multiple manual partition assignments for partition {p}"
            ));
        }
        if a.broker_ids.is_empty() {
            return Err(format!(
                "The manual partition assignment of partition {p} includes an empty \
                 replica list."
            ));
        }
        if let Some(other) = a.broker_ids.iter().find(|b| b.0 != node) {
            return Err(format!(
                "The manual partition assignment of partition {p} includes broker {}, \
                 but no such broker is registered: this single-node broker is node {node}.",
                other.0
            ));
        }
        if a.broker_ids.len() > 1 {
            return Err(format!(
                "The manual partition assignment of partition {p} includes the broker \
                 {node} more than once."
            ));
        }
    }
    // n distinct indexes are 0..n-1 exactly when every one is within it.
    let n = seen.len();
    if seen
        .iter()
        .any(|p| usize::try_from(*p).map_or(true, |p| p >= n))
    {
        return Err("partitions should be a consecutive 0-based integer sequence".to_string());
    }
    Ok(())
}

/// The answer to a create or growth whose partitions' files the open-file
/// limit has no room for: a limit of the broker's, refused as Kafka refuses
/// what its policies do not allow.
fn too_many_files(e: &crate::storage::OverBudget) -> (i16, String) {
    (codes::POLICY_VIOLATION, e.to_string())
}

/// Kafka's answer to a create of `name`, which collides with topic `other`
/// (see [`crate::storage::TopicManager::colliding_topic`]).
fn collides(name: &str, other: &str) -> (i16, String) {
    (
        codes::INVALID_TOPIC_EXCEPTION,
        format!("Topic '{name}' collides with existing topic: {other}"),
    )
}

/// CreatePartitions: grows topics, as Kafka answers it for a single broker.
pub(crate) async fn create_partitions(
    ctx: &Ctx,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    // A topic named more than once is not grown, and answered once with
    // INVALID_REQUEST, as Kafka does: `[t→4, t→8]` grew it twice.
    let repeated = repeated(req.topics.iter().map(|t| t.name.0.clone()));
    let mut answered = std::collections::HashSet::new();
    let mut results = Vec::new();
    // The partitions a dry run's earlier topics would have added (see
    // `create_topics`).
    let mut dry_run_partitions = 0usize;
    for t in req.topics {
        if repeated.contains(&t.name.0) {
            if answered.insert(t.name.0.clone()) {
                results.push(
                    CreatePartitionsTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(codes::INVALID_REQUEST)
                        .with_error_message(Some(StrBytes::from_static_str(
                            "Duplicate topic name.",
                        ))),
                );
            }
            continue;
        }
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
            // As Kafka refuses them: an empty replica list, or a broker
            // listed twice.
            Some(_)
                if t.assignments
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|x| x.broker_ids.is_empty())) =>
            {
                Err((
                    codes::INVALID_REPLICA_ASSIGNMENT,
                    "The manual partition assignment includes an empty replica list.".into(),
                ))
            }
            Some(_)
                if t.assignments
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|x| x.broker_ids.len() > 1)) =>
            {
                Err((
                    codes::INVALID_REPLICA_ASSIGNMENT,
                    format!(
                        "The manual partition assignment includes the broker {node} more than once."
                    ),
                ))
            }
            Some(topic) if req.validate_only => {
                let new = usize::try_from(t.count).unwrap_or(0) - topic.partitions.len();
                match ctx.storage.check_dry_run(dry_run_partitions + new) {
                    Ok(()) => {
                        dry_run_partitions += new;
                        Ok(())
                    }
                    Err(CreateError::TooManyFiles(e)) => Err(too_many_files(&e)),
                    Err(CreateError::Storage(s)) => Err((codes::KAFKA_STORAGE_ERROR, s)),
                    Err(e) => Err((codes::UNKNOWN_SERVER_ERROR, format!("{e:?}"))),
                }
            }
            Some(_) => {
                let storage = ctx.storage.clone();
                let (n, count) = (name.clone(), t.count);
                match crate::server::admin_blocking(ctx, move || storage.add_partitions(&n, count))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(CreateError::InvalidPartitions)) => Err((
                        codes::INVALID_PARTITIONS,
                        "the partition count can only grow".into(),
                    )),
                    // Deleted since it was looked up, as Kafka answers a topic
                    // it does not know.
                    Ok(Err(CreateError::UnknownTopic)) => Err((
                        codes::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("unknown topic {name}"),
                    )),
                    Ok(Err(CreateError::TooManyFiles(e))) => Err(too_many_files(&e)),
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

/// A topic a DeleteTopics names.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Named {
    Name(String),
    Id(uuid::Uuid),
    /// An entry that names a topic both ways, or neither way: answered
    /// INVALID_REQUEST with the message, as Kafka does, and never counted as
    /// a repeat of another entry.
    Refused(Option<String>, uuid::Uuid, &'static str),
}

/// Kafka's answer to a DeleteTopics entry naming a topic that another entry
/// identifies by id.
const NAME_MAPS_TO_ID: &str = "The provided topic name maps to an ID that was already supplied.";

pub(crate) async fn delete(ctx: &Ctx, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // Up to v5 topics come by name; from v6 by name or by id (the name null).
    let mut asked: Vec<Named> = req
        .topic_names
        .iter()
        .map(|n| Named::Name(n.0.to_string()))
        .collect();
    asked.extend(
        req.topics
            .iter()
            .map(|t| match (&t.name, t.topic_id.is_nil()) {
                (Some(n), true) => Named::Name(n.0.to_string()),
                (None, false) => Named::Id(t.topic_id),
                (Some(n), false) => Named::Refused(
                    Some(n.0.to_string()),
                    t.topic_id,
                    "You may not specify both topic name and topic id.",
                ),
                (None, true) => Named::Refused(
                    None,
                    t.topic_id,
                    "Neither topic name nor id were specified.",
                ),
            }),
    );
    // A topic named (or identified) more than once is not deleted, and
    // answered once with INVALID_REQUEST, as Kafka does.
    let repeated = repeated(
        asked
            .iter()
            .filter(|n| !matches!(n, Named::Refused(..)))
            .cloned(),
    );
    // A topic named by an entry and identified by another is deleted by
    // neither: both are answered INVALID_REQUEST, as Kafka refuses a name
    // that maps to an id already supplied. (A name given more than once is
    // refused as a repeat and looked up no further, as in Kafka.)
    let asked_ids: std::collections::HashSet<uuid::Uuid> = asked
        .iter()
        .filter_map(|n| match n {
            Named::Id(id) => Some(*id),
            _ => None,
        })
        .collect();
    // Those names, with the id each maps to (looked up before any delete).
    let crossed: std::collections::HashMap<String, uuid::Uuid> = if asked_ids.is_empty() {
        std::collections::HashMap::new()
    } else {
        asked
            .iter()
            .filter(|n| !repeated.contains(*n))
            .filter_map(|n| match n {
                Named::Name(n) => ctx
                    .storage
                    .topic(n)
                    .map(|t| t.id)
                    .or_else(|| ctx.storage.undurable_delete(n, None))
                    .filter(|id| asked_ids.contains(id))
                    .map(|id| (n.clone(), id)),
                _ => None,
            })
            .collect()
    };
    let crossed_ids: std::collections::HashSet<uuid::Uuid> = crossed.values().copied().collect();
    let mut answered = std::collections::HashSet::new();
    let mut results = Vec::new();
    // Each topic's name by its id, looked up once. A topic deleted and created
    // again under its name since (while an earlier delete of the request ran,
    // each waiting for produces, syncing and checkpointing) has another id,
    // which the delete checks as it takes the topic: the new topic is left
    // alone.
    let mut ids = None;
    for named in asked {
        if repeated.contains(&named) {
            if answered.insert(named.clone()) {
                let (name, id, message) = match named {
                    Named::Name(n) => (Some(n), uuid::Uuid::nil(), "Duplicate topic name."),
                    Named::Id(id) => (None, id, "Duplicate topic id."),
                    Named::Refused(..) => unreachable!("refused entries are not counted"),
                };
                results.push(
                    DeletableTopicResult::default()
                        .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                        .with_topic_id(id)
                        .with_error_code(codes::INVALID_REQUEST)
                        .with_error_message(Some(StrBytes::from_static_str(message))),
                );
            }
            continue;
        }
        let (code, message, name, id) = match named {
            Named::Refused(name, id, message) => {
                (codes::INVALID_REQUEST, message.to_string(), name, id)
            }
            Named::Id(id) if crossed_ids.contains(&id) => (
                codes::INVALID_REQUEST,
                NAME_MAPS_TO_ID.to_string(),
                None,
                id,
            ),
            Named::Name(n) if crossed.contains_key(&n) => {
                let id = crossed[&n];
                (
                    codes::INVALID_REQUEST,
                    NAME_MAPS_TO_ID.to_string(),
                    Some(n),
                    id,
                )
            }
            Named::Name(n) => {
                // A topic deleted from this run whose deletion a power loss
                // may undo is deleted again: the retry of a delete answered
                // KAFKA_STORAGE_ERROR for it.
                let known = ctx
                    .storage
                    .topic(&n)
                    .map(|t| t.id)
                    .or_else(|| ctx.storage.undurable_delete(&n, None));
                match known {
                    None => (
                        codes::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("unknown topic {n}"),
                        Some(n),
                        uuid::Uuid::nil(),
                    ),
                    Some(known) => match ctx.storage.delete_topic_of_id(&n, None).await {
                        Ok(Some(id)) => (codes::NONE, String::new(), Some(n), id),
                        Ok(None) => (
                            codes::UNKNOWN_TOPIC_OR_PARTITION,
                            format!("unknown topic {n}"),
                            Some(n),
                            known,
                        ),
                        Err(e) => {
                            crate::log_limit::limited!(error, topic = %n, error = %e, "delete topic failed");
                            (codes::KAFKA_STORAGE_ERROR, e.to_string(), Some(n), known)
                        }
                    },
                }
            }
            Named::Id(id) => {
                let unknown = || {
                    (
                        codes::UNKNOWN_TOPIC_ID,
                        format!("no topic has id {id}"),
                        None,
                        id,
                    )
                };
                let name = ids
                    .get_or_insert_with(|| names_by_id(ctx))
                    .remove(&id)
                    .or_else(|| ctx.storage.undurable_delete_of_id(id));
                match name {
                    None => unknown(),
                    Some(n) => match ctx.storage.delete_topic_of_id(&n, Some(id)).await {
                        Ok(Some(_)) => (codes::NONE, String::new(), Some(n), id),
                        Ok(None) => unknown(),
                        Err(e) => {
                            crate::log_limit::limited!(error, topic = %n, error = %e, "delete topic failed");
                            (codes::KAFKA_STORAGE_ERROR, e.to_string(), Some(n), id)
                        }
                    },
                }
            }
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
    // As Kafka: each partition once, with the last offset the request names
    // for it, a topic named again merged into its first entry. Before, every
    // mention was a durable move of the log start and an answer of its own.
    let mut named: Vec<(TopicName, Vec<(i32, i64)>)> = Vec::new();
    let mut at: std::collections::HashMap<String, (usize, std::collections::HashMap<i32, usize>)> =
        std::collections::HashMap::new();
    for t in req.topics {
        let (i, seen) = at.entry(t.name.0.to_string()).or_insert_with(|| {
            named.push((t.name.clone(), Vec::new()));
            (named.len() - 1, std::collections::HashMap::new())
        });
        let parts = &mut named[*i].1;
        for p in t.partitions {
            match seen.get(&p.partition_index) {
                Some(&j) => parts[j].1 = p.offset,
                None => {
                    seen.insert(p.partition_index, parts.len());
                    parts.push((p.partition_index, p.offset));
                }
            }
        }
    }
    let storage = ctx.storage.clone();
    let topics = crate::server::blocking(ctx, move || delete_named_records(&storage, named))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "DeleteRecords task failed");
            Vec::new()
        });
    DeleteRecordsResponse::default().with_topics(topics)
}

/// The blocking part of [`delete_records`]: each partition of `named` (topic,
/// then partition and offset, each once) moved, or refused.
fn delete_named_records(
    storage: &crate::storage::TopicManager,
    named: Vec<(TopicName, Vec<(i32, i64)>)>,
) -> Vec<DeleteRecordsTopicResult> {
    // Logged once for the request: one line per partition refused made a
    // request of 26 KB write 359 KB of log.
    let mut refused = crate::log_limit::Refused::default();
    let topics = named
        .into_iter()
        .map(|(name, parts)| {
            // As Kafka: records of a topic whose policy does not delete
            // (compact only) are not deleted on request either.
            let deletes = storage
                .topic(&name.0)
                .is_none_or(|topic| topic.configs.delete());
            let partitions = parts
                .iter()
                .map(|&(index, offset)| {
                    let r = DeleteRecordsPartitionResult::default()
                        .with_partition_index(index)
                        .with_low_watermark(-1);
                    let Some(part) = storage.partition(&name.0, index) else {
                        return r.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
                    };
                    if !deletes {
                        return r.with_error_code(codes::POLICY_VIOLATION);
                    }
                    match storage.delete_records(&part, offset) {
                        Ok(start) => r.with_error_code(codes::NONE).with_low_watermark(start),
                        Err(e) => {
                            refused.add(&name.0, index, || e.to_string());
                            r.with_error_code(match e {
                                DeleteRecordsError::OutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
                                DeleteRecordsError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
                                DeleteRecordsError::Deleted => codes::UNKNOWN_TOPIC_OR_PARTITION,
                            })
                        }
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    if let Some((topic, partition, error)) = &refused.first {
        crate::log_limit::limited!(warn, %topic, partition, %error, refused = refused.count, "DeleteRecords refused");
    }
    topics
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
/// that do not exist are left out, and each is answered once, as Kafka does. Once storage has failed (a
/// WAL or segment write or sync; produces are refused until a restart) the
/// directory is offline, as Kafka reports one: KAFKA_STORAGE_ERROR and no
/// topics.
pub(crate) async fn describe_log_dirs(
    ctx: &Ctx,
    req: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let storage = ctx.storage.clone();
    let result = crate::server::blocking(ctx, move || {
        let dir = storage.config().storage.data_dir.join("topics");
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if let Some(why) = storage.failed_why() {
            crate::log_limit::limited!(warn, dir = %dir.display(), %why, "DescribeLogDirs: the log directory is offline");
            return DescribeLogDirsResult::default()
                .with_error_code(codes::KAFKA_STORAGE_ERROR)
                .with_log_dir(StrBytes::from_string(dir.display().to_string()));
        }
        let wanted: Vec<(Arc<Topic>, Vec<i32>)> = match req.topics {
            None => storage
                .topics()
                .into_iter()
                .map(|t| {
                    let all = (0..t.partitions.len() as i32).collect();
                    (t, all)
                })
                .collect(),
            // Each topic and partition once, as Kafka answers its set of
            // partitions: a repeat is no answer of its own.
            Some(asked) => super::named_once(
                asked.iter().map(|a| (&a.topic, &a.partitions[..])),
                |&i| i,
            )
            .into_iter()
            .filter_map(|(name, parts)| {
                storage
                    .topic(&name.0)
                    .map(|t| (t, parts.into_iter().copied().collect()))
            })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kafka_protocol::messages::{
        create_partitions_request::CreatePartitionsTopic, create_topics_request::CreatableTopic,
        delete_topics_request::DeleteTopicState, metadata_request::MetadataRequestTopic,
    };

    use super::*;
    use crate::{
        config::Config,
        storage::{batch::tests::make_batch, TopicManager},
    };

    fn topic_name(name: &str) -> TopicName {
        TopicName(StrBytes::from_string(name.to_string()))
    }

    fn by_id(id: uuid::Uuid) -> DeleteTopicState {
        DeleteTopicState::default().with_topic_id(id)
    }

    fn by_name(name: &str) -> DeleteTopicState {
        DeleteTopicState::default().with_name(Some(topic_name(name)))
    }

    /// Each answer of a DeleteTopics: name, id, error code.
    fn deleted(r: &DeleteTopicsResponse) -> Vec<(Option<String>, uuid::Uuid, i16)> {
        r.responses
            .iter()
            .map(|t| {
                let name = t.name.as_ref().map(|n| n.0.to_string());
                (name, t.topic_id, t.error_code)
            })
            .collect()
    }

    /// Once a segment append has failed (produces refused until a restart),
    /// DescribeLogDirs reports the directory offline, as Kafka does: it
    /// answered NONE with every partition, and tools watching for offline
    /// directories saw nothing wrong.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_storage_reports_its_log_dir_offline() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let r = describe_log_dirs(&ctx, DescribeLogDirsRequest::default().with_topics(None)).await;
        assert_eq!(r.results[0].error_code, codes::NONE);
        assert_eq!(r.results[0].topics.len(), 1);
        let p = ctx.storage.partition("t", 0).unwrap();
        p.fail_next_append
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let acked = ctx
            .storage
            .submit("t", 0, &make_batch(0, &[b"a"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(acked.await.unwrap().is_err());
        let r = describe_log_dirs(&ctx, DescribeLogDirsRequest::default().with_topics(None)).await;
        assert_eq!(r.error_code, codes::NONE);
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].error_code, codes::KAFKA_STORAGE_ERROR);
        assert!(r.results[0].topics.is_empty());
        assert!(!r.results[0].log_dir.is_empty());
    }

    /// Fails storage as a segment append that failed does (produces refused
    /// until a restart): `t` is a topic of one partition in `ctx`.
    async fn fail_storage_through(ctx: &Ctx, t: &str) {
        let p = ctx.storage.partition(t, 0).unwrap();
        p.fail_next_append
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let acked = ctx
            .storage
            .submit(t, 0, &make_batch(0, &[b"a"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(acked.await.unwrap().is_err());
        assert!(ctx.storage.failed_why().is_some());
    }

    /// A dry run answers as the real create of the same request would: a
    /// name colliding with an earlier name of the request (`.` for `_`) is
    /// refused, and once storage has failed every topic and growth gets
    /// KAFKA_STORAGE_ERROR. Before, the dry run passed both names (its
    /// earlier topics made nothing to collide with) and passed anything on a
    /// failed storage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dry_run_answers_as_the_real_create_would() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let codes_of = |r: &CreateTopicsResponse| -> Vec<i16> {
            r.topics.iter().map(|t| t.error_code).collect()
        };
        for validate_only in [true, false] {
            let req = CreateTopicsRequest::default()
                .with_topics(vec![creatable("x.y"), creatable("x_y"), creatable("x-y")])
                .with_validate_only(validate_only);
            let r = create(&ctx, req, Instant::now()).await;
            assert_eq!(
                codes_of(&r),
                [codes::NONE, codes::INVALID_TOPIC_EXCEPTION, codes::NONE],
                "validate only: {validate_only}"
            );
            assert_eq!(
                r.topics[1].error_message.as_deref(),
                Some("Topic 'x_y' collides with existing topic: x.y")
            );
        }
        fail_storage_through(&ctx, "t").await;
        for validate_only in [true, false] {
            let req = CreateTopicsRequest::default()
                .with_topics(vec![creatable("z")])
                .with_validate_only(validate_only);
            let r = create(&ctx, req, Instant::now()).await;
            assert_eq!(
                codes_of(&r),
                [codes::KAFKA_STORAGE_ERROR],
                "{validate_only}"
            );
            let req = CreatePartitionsRequest::default()
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(topic_name("t"))
                    .with_count(2)
                    .with_assignments(None)])
                .with_validate_only(validate_only);
            let r = create_partitions(&ctx, req).await;
            assert_eq!(
                r.results[0].error_code,
                codes::KAFKA_STORAGE_ERROR,
                "{validate_only}"
            );
        }
    }

    /// DescribeLogDirs answers each topic and partition once, as Kafka
    /// answers its set of partitions; before, every repeat was an answer of
    /// its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_log_dirs_answers_each_partition_once() {
        use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 2).unwrap();
        let asked = |parts: Vec<i32>| {
            DescribableLogDirTopic::default()
                .with_topic(topic_name("t"))
                .with_partitions(parts)
        };
        let req = DescribeLogDirsRequest::default()
            .with_topics(Some(vec![asked(vec![0, 0]), asked(vec![1, 0, 1])]));
        let r = describe_log_dirs(&ctx, req).await;
        let answered: Vec<(String, Vec<i32>)> = r.results[0]
            .topics
            .iter()
            .map(|t| {
                let parts = t.partitions.iter().map(|p| p.partition_index).collect();
                (t.name.0.to_string(), parts)
            })
            .collect();
        assert_eq!(answered, [("t".to_string(), vec![0, 1])]);
    }

    /// The admin lines a client can cause once per request or per topic
    /// while storage has failed (each Metadata auto-create, each topic of a
    /// DeleteTopics) go through the log limit: 100 requests log at most its
    /// 20 lines a site. Before, each logged, and a pipelined flood of
    /// Metadata requests wrote some 20 times the bytes it sent.
    #[test]
    fn admin_refusals_after_a_storage_failure_are_logged_within_the_limit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ctx = rt.block_on(crate::server::tests::ctx_with(
            dir.path(),
            Config::default(),
        ));
        for i in 0..100 {
            ctx.storage.create_topic(&format!("d{i}"), 1).unwrap();
        }
        rt.block_on(fail_storage_through(&ctx, "d0"));
        let ((), log) = crate::storage::partition::tests::logged(|| {
            rt.block_on(async {
                for i in 0..100 {
                    let req = MetadataRequest::default()
                        .with_topics(Some(vec![MetadataRequestTopic::default()
                            .with_name(Some(topic_name(&format!("new{i}"))))]))
                        .with_allow_auto_topic_creation(true);
                    let r = metadata(&ctx, req, 12).await;
                    assert_eq!(r.topics[0].error_code, codes::UNKNOWN_TOPIC_OR_PARTITION);
                    let req = DeleteTopicsRequest::default()
                        .with_topic_names(vec![topic_name(&format!("d{i}"))]);
                    let r = delete(&ctx, req).await;
                    assert_eq!(r.responses[0].error_code, codes::KAFKA_STORAGE_ERROR);
                }
            });
        });
        let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
        let (creates, deletes) = (count("auto-create failed"), count("delete topic failed"));
        assert!((1..=20).contains(&creates), "{creates} auto-create lines");
        assert!((1..=20).contains(&deletes), "{deletes} delete lines");
    }

    /// A Metadata that may auto-create a topic being deleted is answered at
    /// once, UNKNOWN_TOPIC_OR_PARTITION, which clients ask again on. Before,
    /// its create waited up to 30 s for the delete, holding one of the
    /// broker's 64 places for blocking work (64 clients asking for the topic
    /// held every one, and commits, stores and admin requests for every other
    /// topic waited), and the Metadata answer with every one behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_auto_create_does_not_wait_for_a_delete_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        ctx.storage.pause_next_delete(Duration::from_secs(5));
        let deleting = {
            let storage = ctx.storage.clone();
            tokio::spawn(async move { storage.delete_topic("t").await })
        };
        while !ctx.storage.delete_pause_taken() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name("t")))
            ]))
            .with_allow_auto_topic_creation(true);
        let r = tokio::time::timeout(Duration::from_secs(2), metadata(&ctx, req, 12))
            .await
            .expect("answered without waiting for the delete");
        assert_eq!(r.topics[0].error_code, codes::UNKNOWN_TOPIC_OR_PARTITION);
        assert!(!deleting.is_finished());
        assert!(deleting.await.unwrap().unwrap());
    }

    /// A DeleteTopics by ids `[A, B]` looked every id up before its first
    /// delete. While A's delete ran (a barrier, syncs and a checkpoint), topic
    /// "b" (id B) was deleted and created again (id B'); the request then
    /// deleted "b" by the name it had looked up, so the new topic, with its
    /// acknowledged records. B is now answered UNKNOWN_TOPIC_ID and "b" stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_by_id_leaves_a_topic_created_again_under_the_name_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let a = ctx.storage.create_topic("a", 1).unwrap();
        let b = ctx.storage.create_topic("b", 1).unwrap();
        // A's delete (the request's first) waits before it moves a's files.
        ctx.storage.pause_next_delete(Duration::from_secs(3));
        let req = DeleteTopicsRequest::default().with_topics(vec![by_id(a.id), by_id(b.id)]);
        let request = {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move { delete(&ctx, req).await })
        };
        while !ctx.storage.delete_pause_taken() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(ctx.storage.delete_topic("b").await.unwrap());
        let b2 = ctx.storage.create_topic("b", 1).unwrap();
        let acked = ctx
            .storage
            .submit("b", 0, &make_batch(0, &[b"kept"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(acked.await.unwrap(), Ok(0));
        assert!(
            !request.is_finished(),
            "the request is still deleting a when b is created again"
        );
        let r = request.await.unwrap();
        assert_eq!(
            deleted(&r),
            vec![
                (Some("a".into()), a.id, codes::NONE),
                (None, b.id, codes::UNKNOWN_TOPIC_ID),
            ]
        );
        let now = ctx.storage.topic("b").expect("the new b is kept");
        assert_eq!(now.id, b2.id);
        assert_eq!(now.partitions[0].log_end_offset(), 1);

        // The delete checks the id it was given, whatever the caller looked up.
        assert_eq!(
            ctx.storage
                .delete_topic_of_id("b", Some(b.id))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            ctx.storage
                .delete_topic_of_id("b", Some(b2.id))
                .await
                .unwrap(),
            Some(b2.id)
        );
    }

    /// A DeleteTopics whose move of the topic's directory to the trash was
    /// done but whose fsync of the topics directory then failed was answered
    /// KAFKA_STORAGE_ERROR, the topic gone from the broker; sent again, it got
    /// UNKNOWN_TOPIC_OR_PARTITION, and nothing ever fsynced the move, which a
    /// power loss could undo, bringing the topic back. The answer now says the
    /// topic is deleted but not durably, and a delete of it again (by name, or
    /// by id although a topic of its name was created since) fsyncs the
    /// directory again: KAFKA_STORAGE_ERROR while that fails, NONE once it
    /// succeeds.
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_whose_directory_fsync_fails_is_made_durable_by_its_retry() {
        use crate::wal::sim::{SimDisk, SimPlan};
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let t = ctx.storage.create_topic("t", 1).unwrap();
        let u = ctx.storage.create_topic("u", 1).unwrap();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&dir.path().join("topics")).unwrap();
        let by_names = |names: &[&str]| {
            DeleteTopicsRequest::default()
                .with_topic_names(names.iter().map(|n| topic_name(n)).collect())
        };
        let by_ids = |ids: &[uuid::Uuid]| {
            DeleteTopicsRequest::default().with_topics(ids.iter().map(|id| by_id(*id)).collect())
        };
        let trash = dir.path().join("topics-deleted");
        let in_trash = || std::fs::read_dir(&trash).unwrap().count();

        disk.crash_at_next_dir_sync();
        let r = delete(&ctx, by_names(&["t"])).await;
        assert_eq!(
            deleted(&r),
            [(Some("t".into()), t.id, codes::KAFKA_STORAGE_ERROR)]
        );
        let message = r.responses[0].error_message.as_ref().unwrap().to_string();
        assert!(
            message.contains("is deleted") && message.contains("power loss"),
            "{message}"
        );
        assert!(ctx.storage.topic("t").is_none());
        assert_eq!(in_trash(), 1, "its files wait in the trash");
        // Sent again while the directory still cannot be fsynced.
        let r = delete(&ctx, by_names(&["t"])).await;
        assert_eq!(
            deleted(&r),
            [(Some("t".into()), t.id, codes::KAFKA_STORAGE_ERROR)]
        );
        // Sent again once it can: fsynced, then answered.
        disk.restart();
        let syncs = disk.stats().dir_syncs;
        let r = delete(&ctx, by_names(&["t"])).await;
        assert_eq!(deleted(&r), [(Some("t".into()), t.id, codes::NONE)]);
        assert_eq!(disk.stats().dir_syncs, syncs + 1);
        assert_eq!(in_trash(), 0);
        let r = delete(&ctx, by_names(&["t"])).await;
        assert_eq!(
            deleted(&r),
            [(
                Some("t".into()),
                uuid::Uuid::nil(),
                codes::UNKNOWN_TOPIC_OR_PARTITION
            )]
        );

        // By id, a topic of its name created since and left alone.
        disk.crash_at_next_dir_sync();
        let r = delete(&ctx, by_ids(&[u.id])).await;
        assert_eq!(
            deleted(&r),
            [(Some("u".into()), u.id, codes::KAFKA_STORAGE_ERROR)]
        );
        disk.restart();
        let u2 = ctx.storage.create_topic("u", 1).unwrap();
        let r = delete(&ctx, by_ids(&[u.id])).await;
        assert_eq!(deleted(&r), [(Some("u".into()), u.id, codes::NONE)]);
        assert_eq!(ctx.storage.topic("u").unwrap().id, u2.id);
        assert_eq!(in_trash(), 0);
        let r = delete(&ctx, by_ids(&[u.id])).await;
        assert_eq!(deleted(&r), [(None, u.id, codes::UNKNOWN_TOPIC_ID)]);
    }

    /// A delete whose directory fsync failed is finished by the first
    /// retention pass whose fsyncs succeed, without a delete of it again: its
    /// files leave the trash. Before, they stayed until a restart unless the
    /// client sent the delete again.
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_whose_directory_fsync_failed_is_finished_by_a_retention_pass() {
        use crate::wal::sim::{SimDisk, SimPlan};
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let t = ctx.storage.create_topic("t", 1).unwrap();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&dir.path().join("topics")).unwrap();
        let trash = dir.path().join("topics-deleted");
        let in_trash = || std::fs::read_dir(&trash).unwrap().count();
        let by_name = || DeleteTopicsRequest::default().with_topic_names(vec![topic_name("t")]);

        disk.crash_at_next_dir_sync();
        let r = delete(&ctx, by_name()).await;
        assert_eq!(
            deleted(&r),
            [(Some("t".into()), t.id, codes::KAFKA_STORAGE_ERROR)]
        );
        let retention = || {
            let storage = ctx.storage.clone();
            tokio::task::spawn_blocking(move || storage.apply_retention())
        };
        // Fsyncs still fail: the files stay.
        let _ = retention().await.unwrap();
        assert_eq!(in_trash(), 1);
        disk.restart();
        let syncs = disk.stats().dir_syncs;
        retention().await.unwrap().unwrap();
        assert!(disk.stats().dir_syncs > syncs);
        assert_eq!(in_trash(), 0);
        let r = delete(&ctx, by_name()).await;
        assert_eq!(
            deleted(&r),
            [(
                Some("t".into()),
                uuid::Uuid::nil(),
                codes::UNKNOWN_TOPIC_OR_PARTITION
            )]
        );
    }

    /// DeleteRecords logs its refusals once per request, with the first and
    /// their count: a line per partition made one request of 26 KB (2,000
    /// empty partitions, offset 5 each) write 359 KB of log, which a client
    /// repeating it could turn into a full log disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_records_logs_its_refusals_once_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 100).unwrap();
        let storage = ctx.storage.clone();
        let (topics, log) = tokio::task::spawn_blocking(move || {
            crate::storage::partition::tests::logged(|| {
                delete_named_records(
                    &storage,
                    vec![(topic_name("t"), (0..100).map(|p| (p, 5)).collect())],
                )
            })
        })
        .await
        .unwrap();
        assert_eq!(topics[0].partitions.len(), 100);
        assert!(topics[0]
            .partitions
            .iter()
            .all(|p| p.error_code == codes::OFFSET_OUT_OF_RANGE));
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("DeleteRecords refused"))
            .collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(
            lines[0].contains("refused=100") && lines[0].contains("partition=0"),
            "{log}"
        );
    }

    /// A topic named (or identified) more than once in a DeleteTopics or a
    /// CreatePartitions is answered once with INVALID_REQUEST and left alone,
    /// as Kafka does: a CreatePartitions `[t→4, t→8]` grew t twice, and a
    /// DeleteTopics deleted a topic then answered its repeat as unknown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_named_twice_in_a_delete_or_a_growth_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let t = ctx.storage.create_topic("t", 2).unwrap();
        let u = ctx.storage.create_topic("u", 1).unwrap();
        let grow = |name: &str, count: i32| {
            CreatePartitionsTopic::default()
                .with_name(topic_name(name))
                .with_count(count)
                .with_assignments(None)
        };
        for validate_only in [true, false] {
            let req = CreatePartitionsRequest::default()
                .with_topics(vec![grow("t", 4), grow("u", 3), grow("t", 8)])
                .with_validate_only(validate_only);
            let r = create_partitions(&ctx, req).await;
            let answers: Vec<(String, i16, Option<String>)> = r
                .results
                .iter()
                .map(|x| {
                    let message = x.error_message.as_ref().map(ToString::to_string);
                    (x.name.0.to_string(), x.error_code, message)
                })
                .collect();
            assert_eq!(
                answers,
                vec![
                    (
                        "t".into(),
                        codes::INVALID_REQUEST,
                        Some("Duplicate topic name.".into())
                    ),
                    ("u".into(), codes::NONE, None),
                ],
                "validate only: {validate_only}"
            );
        }
        assert_eq!(ctx.storage.topic("t").unwrap().partitions.len(), 2);
        assert_eq!(ctx.storage.topic("u").unwrap().partitions.len(), 3);

        // v5 by name, v6 by name or id: every repeat counts, the rest is done.
        let v = ctx.storage.create_topic("v", 1).unwrap();
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![topic_name("t")])
            .with_topics(vec![
                by_id(u.id),
                by_name("t"),
                by_id(u.id),
                by_id(v.id),
                by_id(u.id),
            ]);
        let r = delete(&ctx, req).await;
        assert_eq!(
            deleted(&r),
            vec![
                (Some("t".into()), uuid::Uuid::nil(), codes::INVALID_REQUEST),
                (None, u.id, codes::INVALID_REQUEST),
                (Some("v".into()), v.id, codes::NONE),
            ]
        );
        let messages: Vec<Option<String>> = r
            .responses
            .iter()
            .map(|x| x.error_message.as_ref().map(ToString::to_string))
            .collect();
        assert_eq!(
            messages,
            vec![
                Some("Duplicate topic name.".into()),
                Some("Duplicate topic id.".into()),
                None
            ]
        );
        assert_eq!(ctx.storage.topic("t").map(|x| x.id), Some(t.id));
        assert_eq!(ctx.storage.topic("u").map(|x| x.id), Some(u.id));
        assert!(ctx.storage.topic("v").is_none());

        // A topic named by one entry and identified by another, in either
        // order, was deleted (the second entry then answered unknown); Kafka
        // refuses both entries and deletes nothing. The rest is done.
        let w = ctx.storage.create_topic("w", 1).unwrap();
        let x = ctx.storage.create_topic("x", 1).unwrap();
        let orders = [
            (
                vec![by_name("t"), by_id(t.id), by_name("w")],
                vec![
                    (Some("t".into()), t.id, codes::INVALID_REQUEST),
                    (None, t.id, codes::INVALID_REQUEST),
                    (Some("w".into()), w.id, codes::NONE),
                ],
            ),
            (
                vec![by_id(u.id), by_name("u"), by_id(x.id)],
                vec![
                    (None, u.id, codes::INVALID_REQUEST),
                    (Some("u".into()), u.id, codes::INVALID_REQUEST),
                    (Some("x".into()), x.id, codes::NONE),
                ],
            ),
        ];
        for (entries, answers) in orders {
            let r = delete(&ctx, DeleteTopicsRequest::default().with_topics(entries)).await;
            assert_eq!(deleted(&r), answers);
            for refused in &r.responses[..2] {
                assert_eq!(
                    refused.error_message.as_deref(),
                    Some("The provided topic name maps to an ID that was already supplied.")
                );
            }
        }
        assert_eq!(ctx.storage.topic("t").map(|x| x.id), Some(t.id));
        assert_eq!(ctx.storage.topic("u").map(|x| x.id), Some(u.id));
        assert!(ctx.storage.topic("w").is_none() && ctx.storage.topic("x").is_none());
    }

    /// A v6 DeleteTopics entry carrying both a name and an id deleted the
    /// topic of that name whatever the id said, and one carrying neither was
    /// answered UNKNOWN_TOPIC_ID. Kafka refuses both with INVALID_REQUEST,
    /// and such entries do not count as repeats of the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_entry_naming_a_topic_both_ways_or_neither_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let t = ctx.storage.create_topic("t", 1).unwrap();
        let u = ctx.storage.create_topic("u", 1).unwrap();
        let other = uuid::Uuid::from_u128(7);
        let req = DeleteTopicsRequest::default().with_topics(vec![
            by_name("t").with_topic_id(other),
            by_name("t").with_topic_id(t.id),
            DeleteTopicState::default(),
            by_name("u"),
        ]);
        let r = delete(&ctx, req).await;
        assert_eq!(
            deleted(&r),
            vec![
                (Some("t".into()), other, codes::INVALID_REQUEST),
                (Some("t".into()), t.id, codes::INVALID_REQUEST),
                (None, uuid::Uuid::nil(), codes::INVALID_REQUEST),
                (Some("u".into()), u.id, codes::NONE),
            ]
        );
        let messages: Vec<String> = r.responses[..3]
            .iter()
            .map(|x| x.error_message.as_ref().map(ToString::to_string).unwrap())
            .collect();
        assert_eq!(
            messages,
            vec![
                "You may not specify both topic name and topic id.",
                "You may not specify both topic name and topic id.",
                "Neither topic name nor id were specified.",
            ]
        );
        assert_eq!(ctx.storage.topic("t").map(|x| x.id), Some(t.id));
        assert!(ctx.storage.topic("u").is_none());
    }

    /// A growth of a topic deleted after the handler looked it up was answered
    /// KAFKA_STORAGE_ERROR ("unknown topic" reported as a storage failure);
    /// Kafka answers UNKNOWN_TOPIC_OR_PARTITION, which the handler gives for
    /// [`CreateError::UnknownTopic`].
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_growth_of_a_topic_deleted_meanwhile_finds_it_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        ctx.storage.pause_next_delete(Duration::from_secs(1));
        let deleting = {
            let storage = ctx.storage.clone();
            tokio::spawn(async move { storage.delete_topic("t").await })
        };
        while !ctx.storage.delete_pause_taken() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let storage = ctx.storage.clone();
        let grown = tokio::task::spawn_blocking(move || {
            (
                storage.add_partitions("t", 2),
                storage.add_partitions("nope", 2),
            )
        })
        .await
        .unwrap();
        assert!(
            matches!(
                grown,
                (
                    Err(CreateError::UnknownTopic),
                    Err(CreateError::UnknownTopic)
                )
            ),
            "{grown:?}"
        );
        assert!(deleting.await.unwrap().unwrap());
        let req =
            CreatePartitionsRequest::default().with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name("t"))
                .with_count(2)
                .with_assignments(None)]);
        let r = create_partitions(&ctx, req).await;
        assert_eq!(r.results[0].error_code, codes::UNKNOWN_TOPIC_OR_PARTITION);
    }

    fn creatable(name: &str) -> CreatableTopic {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(1)
            .with_replication_factor(1)
    }

    /// A topic whose create could not end within the request's `timeout_ms`
    /// is not created and is answered REQUEST_TIMED_OUT: thousands of topics in one
    /// request took minutes to answer, past the client's own timeout, which
    /// then learnt nothing of what was created. `timeout_ms` 0 sets none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topics_whose_turn_comes_after_the_timeout_are_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let topics = |prefix: &str, partitions: i32| -> Vec<CreatableTopic> {
            (0..8)
                .map(|i| creatable(&format!("{prefix}{i}")).with_num_partitions(partitions))
                .collect()
        };
        let r = create(
            &ctx,
            CreateTopicsRequest::default()
                .with_topics(topics("late", 200))
                .with_timeout_ms(1),
            Instant::now(),
        )
        .await;
        let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
        let created = codes.iter().take_while(|&&c| c == codes::NONE).count();
        assert!(created < codes.len(), "{codes:?}");
        assert!(
            codes[created..]
                .iter()
                .all(|&c| c == codes::REQUEST_TIMED_OUT),
            "{codes:?}"
        );
        for (i, t) in r.topics.iter().enumerate() {
            assert_eq!(
                ctx.storage.topic(&t.name).is_some(),
                i < created,
                "{codes:?}"
            );
        }
        let message = r.topics[created].error_message.as_deref().unwrap();
        assert!(message.contains("timeout (1 ms)"), "{message}");
        for timeout_ms in [0, 600_000] {
            let prefix = format!("t{timeout_ms}-");
            let r = create(
                &ctx,
                CreateTopicsRequest::default()
                    .with_topics(topics(&prefix, 2))
                    .with_timeout_ms(timeout_ms),
                Instant::now(),
            )
            .await;
            assert!(r.topics.iter().all(|t| t.error_code == codes::NONE));
        }
        // The timeout counts from the request's arrival: one that waited out
        // its timeout behind others on its connection creates nothing.
        let r = create(
            &ctx,
            CreateTopicsRequest::default()
                .with_topics(topics("waited", 1))
                .with_timeout_ms(1_000),
            Instant::now() - Duration::from_millis(1_500),
        )
        .await;
        assert!(
            r.topics
                .iter()
                .all(|t| t.error_code == codes::REQUEST_TIMED_OUT
                    && ctx.storage.topic(&t.name).is_none()),
            "{r:?}"
        );
    }

    /// Kafka names a topic's metrics with its `.` made `_`, and refuses a
    /// topic whose name collides so with an existing one's
    /// (INVALID_TOPIC_EXCEPTION, "collides with existing topic"); both were
    /// created. A Metadata auto-create of such a name gets the same error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_name_differing_from_a_topics_only_by_dot_and_underscore_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("a.b_c", 1).unwrap();
        for validate_only in [true, false] {
            let req = CreateTopicsRequest::default()
                .with_topics(vec![
                    creatable("a_b_c"),
                    creatable("a.b.c"),
                    creatable("a-b_c"),
                ])
                .with_validate_only(validate_only);
            let r = create(&ctx, req, Instant::now()).await;
            let answers: Vec<(String, i16)> = r
                .topics
                .iter()
                .map(|t| (t.name.0.to_string(), t.error_code))
                .collect();
            assert_eq!(
                answers,
                vec![
                    ("a_b_c".into(), codes::INVALID_TOPIC_EXCEPTION),
                    ("a.b.c".into(), codes::INVALID_TOPIC_EXCEPTION),
                    ("a-b_c".into(), codes::NONE),
                ],
                "validate only: {validate_only}"
            );
            assert_eq!(
                r.topics[0].error_message.as_deref(),
                Some("Topic 'a_b_c' collides with existing topic: a.b_c")
            );
        }
        assert!(matches!(
            ctx.storage.create_topic("a_b.c", 1),
            Err(CreateError::Collides(other)) if other == "a.b_c"
        ));
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name("a_b_c")))
            ]))
            .with_allow_auto_topic_creation(true);
        let r = metadata(&ctx, req, 12).await;
        assert_eq!(r.topics[0].error_code, codes::INVALID_TOPIC_EXCEPTION);
        let mut names: Vec<String> = ctx
            .storage
            .topics()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a-b_c", "a.b_c"]);
    }

    /// Before Metadata v12 a topic is asked for by name: a null name or a
    /// topic id gets INVALID_REQUEST for every topic asked for, as from Kafka,
    /// and the answer encodes at the request's version (a null name there
    /// would not). From v12 an id is looked up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metadata_before_v12_refuses_a_topic_by_id_or_without_a_name() {
        use kafka_protocol::protocol::Encodable;
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let id = ctx.storage.topic("t").unwrap().id;
        let ask = |topics: Vec<MetadataRequestTopic>| {
            MetadataRequest::default()
                .with_topics(Some(topics))
                .with_allow_auto_topic_creation(false)
        };
        let named = MetadataRequestTopic::default().with_name(Some(topic_name("t")));
        let nameless = MetadataRequestTopic::default().with_name(None);
        let with_id = MetadataRequestTopic::default()
            .with_name(Some(topic_name("t")))
            .with_topic_id(id);
        for (version, topics) in [
            (1, vec![named.clone(), nameless.clone()]),
            (9, vec![nameless.clone()]),
            (11, vec![named.clone(), with_id.clone()]),
        ] {
            let r = metadata(&ctx, ask(topics.clone()), version).await;
            let answers: Vec<(String, i16)> = r
                .topics
                .iter()
                .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
                .collect();
            let expected: Vec<(String, i16)> = topics
                .iter()
                .map(|t| {
                    let name = t.name.as_ref().map_or("", |n| n.0.as_str());
                    (name.to_string(), codes::INVALID_REQUEST)
                })
                .collect();
            assert_eq!(answers, expected, "v{version}");
            assert!(r.brokers.is_empty());
            let mut buf = bytes::BytesMut::new();
            r.encode(&mut buf, version).expect("encodes at its version");
        }
        // Names alone before v12, and an id from v12, are answered.
        let r = metadata(&ctx, ask(vec![named]), 11).await;
        assert_eq!(r.topics[0].error_code, codes::NONE);
        let by_id = MetadataRequestTopic::default()
            .with_name(None)
            .with_topic_id(id);
        let r = metadata(&ctx, ask(vec![by_id]), 12).await;
        assert_eq!(
            (
                r.topics[0].error_code,
                r.topics[0].name.as_ref().map(|n| n.0.as_str())
            ),
            (codes::NONE, Some("t"))
        );
    }

    /// A data directory holding two topics whose names collide (made before
    /// the broker refused them) still opens, both topics served, with a
    /// warning naming them.
    #[test]
    fn colliding_topics_already_on_disk_both_open_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.data_dir = dir.path().to_path_buf();
        let m = TopicManager::new(config.clone()).unwrap();
        m.create_topic("a.b", 1).unwrap();
        m.create_topic("x", 2).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let topics = dir.path().join("topics");
        std::fs::rename(topics.join("x"), topics.join("a_b")).unwrap();
        let (m, log) = crate::storage::partition::tests::logged(|| TopicManager::new(config));
        let m = m.unwrap();
        assert_eq!(m.topic("a.b").unwrap().partitions.len(), 1);
        assert_eq!(m.topic("a_b").unwrap().partitions.len(), 2);
        assert!(
            log.contains("differ only by '.' and '_'") && log.contains("a_b"),
            "{log}"
        );
        m.shutdown().unwrap();
    }

    /// A CreateTopics acts on its first [`MAX_CREATED_TOPICS`] topics; the
    /// others are answered INVALID_REQUEST, without configs. From v5 each
    /// topic is answered with its every config, so a dry run of 100,000 new
    /// names (1.5 MB of request) was answered with 50 MB, no storage touched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_topics_answers_at_most_the_bound_with_configs() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        // A dry run counts its topics' partitions against the open-file
        // limit, as a create does; this one is about the bound alone.
        ctx.storage.set_open_file_limit(None);
        let mut topics: Vec<CreatableTopic> = (0..MAX_CREATED_TOPICS + 3)
            .map(|i| creatable(&format!("t{i}")))
            .collect();
        // A repeated name is answered once and does not count.
        topics.insert(1, creatable("twice"));
        topics.push(creatable("twice"));
        let req = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_validate_only(true);
        let r = create(&ctx, req, Instant::now()).await;
        assert_eq!(r.topics.len(), MAX_CREATED_TOPICS + 4);
        assert_eq!(
            (r.topics[1].name.0.as_str(), r.topics[1].error_code),
            ("twice", codes::INVALID_REQUEST)
        );
        let (done, left): (Vec<_>, Vec<_>) = r
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() != "twice")
            .partition(|t| t.error_code == codes::NONE);
        assert_eq!(done.len(), MAX_CREATED_TOPICS);
        assert_eq!(
            done.last().map(|t| t.name.0.to_string()),
            Some(format!("t{}", MAX_CREATED_TOPICS - 1))
        );
        assert!(done
            .iter()
            .all(|t| t.configs.as_ref().is_some_and(|c| c.len() > 10)));
        assert_eq!(left.len(), 3);
        for t in left {
            assert_eq!(t.error_code, codes::INVALID_REQUEST);
            assert!(t.configs.as_ref().is_none_or(Vec::is_empty));
            let m = t.error_message.as_deref().unwrap_or_default();
            assert!(
                m.contains(&format!("more than {MAX_CREATED_TOPICS} topics")),
                "{m}"
            );
        }
        assert!(ctx.storage.topics().is_empty(), "a dry run creates nothing");
    }

    fn assigned(name: &str, assignments: &[(i32, &[i32])]) -> CreatableTopic {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(
                assignments
                    .iter()
                    .map(|(p, ids)| {
                        CreatableReplicaAssignment::default()
                            .with_partition_index(*p)
                            .with_broker_ids(ids.iter().map(|b| BrokerId(*b)).collect())
                    })
                    .collect(),
            )
    }

    /// Every manual replica assignment was refused ("not supported"), though
    /// Kafka accepts one with -1 partitions and replication factor, and
    /// CreatePartitions here takes assignments naming this broker. One that
    /// gives partitions 0 to n-1 each to this broker alone creates n
    /// partitions; anything else is refused, as Kafka refuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_manual_assignment_to_this_broker_creates_its_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let node = ctx.storage.meta().node_id;
        for validate_only in [true, false] {
            let req = CreateTopicsRequest::default()
                .with_topics(vec![assigned(
                    "m",
                    &[(2, &[node]), (0, &[node]), (1, &[node])],
                )])
                .with_validate_only(validate_only);
            let r = create(&ctx, req, Instant::now()).await;
            let t = &r.topics[0];
            assert_eq!(
                (t.error_code, t.num_partitions, t.replication_factor),
                (codes::NONE, 3, 1),
                "validate only: {validate_only}: {:?}",
                t.error_message
            );
            assert_eq!(ctx.storage.topic("m").is_some(), !validate_only);
        }
        assert_eq!(ctx.storage.topic("m").unwrap().partitions.len(), 3);

        let other = node + 1;
        let cases: Vec<(CreatableTopic, i16, String)> = vec![
            (
                assigned("r1", &[(0, &[node])]).with_num_partitions(1),
                codes::INVALID_REQUEST,
                "Both numPartitions or replicationFactor and replicasAssignments were set".into(),
            ),
            (
                assigned("r2", &[(0, &[node])]).with_replication_factor(1),
                codes::INVALID_REQUEST,
                "Both cannot be used at the same time".into(),
            ),
            (
                assigned("r3", &[(0, &[node]), (2, &[node])]),
                codes::INVALID_REPLICA_ASSIGNMENT,
                "consecutive 0-based".into(),
            ),
            (
                assigned("r4", &[(-1, &[node])]),
                codes::INVALID_REPLICA_ASSIGNMENT,
                "consecutive 0-based".into(),
            ),
            (
                assigned("r5", &[(0, &[node]), (0, &[node])]),
                codes::INVALID_REPLICA_ASSIGNMENT,
                "multiple manual partition assignments for partition 0".into(),
            ),
            (
                assigned("r6", &[(0, &[node]), (1, &[])]),
                codes::INVALID_REPLICA_ASSIGNMENT,
                "partition 1 includes an empty replica list".into(),
            ),
            (
                assigned("r7", &[(0, &[node, other])]),
                codes::INVALID_REPLICA_ASSIGNMENT,
                format!("includes broker {other}, but no such broker is registered"),
            ),
            (
                assigned("r8", &[(0, &[node, node])]),
                codes::INVALID_REPLICA_ASSIGNMENT,
                "more than once".into(),
            ),
        ];
        for validate_only in [true, false] {
            for (topic, code, message) in &cases {
                let req = CreateTopicsRequest::default()
                    .with_topics(vec![topic.clone()])
                    .with_validate_only(validate_only);
                let r = create(&ctx, req, Instant::now()).await;
                let t = &r.topics[0];
                let m = t.error_message.as_deref().unwrap_or_default();
                assert_eq!(t.error_code, *code, "{}: {m}", t.name.0);
                assert!(m.contains(message.as_str()), "{}: {m}", t.name.0);
            }
        }
        let names: Vec<String> = ctx
            .storage
            .topics()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(names, ["m"]);
    }

    /// Auto-creates queued on the topic-admin lock wait for its turn, not
    /// each in a place for blocking work: more than `WORK_AT_ONCE` of them
    /// held every place, and every other client's blocking work waited behind
    /// all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_queued_on_the_admin_lock_leave_places_for_other_work() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let (release, released) = std::sync::mpsc::channel();
        let holder = ctx.storage.hold_admin_lock(released);
        let creates: Vec<_> = (0..crate::server::WORK_AT_ONCE + 1)
            .map(|i| {
                let ctx = std::sync::Arc::clone(&ctx);
                tokio::spawn(async move {
                    let req = MetadataRequest::default()
                        .with_topics(Some(vec![MetadataRequestTopic::default()
                            .with_name(Some(topic_name(&format!("a{i}"))))]))
                        .with_allow_auto_topic_creation(true);
                    metadata_creating_at_most(&ctx, req, 9, 1, Duration::from_secs(600)).await
                })
            })
            .collect();
        // Time for the creates to queue (without their turn, in the places).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let req = kafka_protocol::messages::DescribeLogDirsRequest::default();
        let described = tokio::time::timeout(
            Duration::from_secs(5),
            describe_log_dirs(&ctx, req.with_topics(None)),
        )
        .await
        .expect("DescribeLogDirs finds a place while the creates wait");
        assert_eq!(described.results[0].error_code, codes::NONE);
        assert!(creates.iter().all(|c| !c.is_finished()), "the lock is held");
        release.send(()).unwrap();
        holder.join().unwrap();
        for c in creates {
            let r = c.await.unwrap();
            assert_eq!(r.topics[0].error_code, codes::NONE);
        }
        assert_eq!(ctx.storage.topics().len(), crate::server::WORK_AT_ONCE + 1);
    }

    /// A create of a name still being deleted waits for the delete out of
    /// the topic-admin turn: other creates go on meanwhile. Inside the turn,
    /// one such create held every create, partition add and config change
    /// for as long as the delete ran (up to 30 s). A create whose request's
    /// deadline comes first is answered then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_waiting_for_a_delete_leaves_the_admin_turn_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("d", 1).unwrap();
        ctx.storage.set_delete_sync_pause(Duration::from_secs(6));
        let delete = {
            let ctx = std::sync::Arc::clone(&ctx);
            tokio::spawn(async move { ctx.storage.delete_topic("d").await })
        };
        // Out of the map, its name reserved until the delete ends.
        while ctx.storage.topic("d").is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A create whose request has less time left than the delete takes
        // is answered when its time is up, the delete still running.
        let early = create_blocking(
            &ctx,
            "d".into(),
            1,
            TopicConfig::default(),
            Some(Instant::now() + Duration::from_millis(300)),
        )
        .await;
        assert!(matches!(early, Err(CreateError::BeingDeleted)), "{early:?}");
        assert!(!delete.is_finished(), "answered before the delete ended");
        let again = {
            let ctx = std::sync::Arc::clone(&ctx);
            tokio::spawn(async move {
                create_blocking(&ctx, "d".into(), 1, TopicConfig::default(), None).await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let other = tokio::time::timeout(
            Duration::from_secs(4),
            create_blocking(&ctx, "x".into(), 1, TopicConfig::default(), None),
        )
        .await
        .expect("another create goes on while one waits for a delete");
        assert!(other.is_ok(), "{other:?}");
        assert!(!again.is_finished(), "the create of d waits for its delete");
        assert!(delete.await.unwrap().unwrap());
        again.await.unwrap().unwrap();
        assert!(ctx.storage.topic("d").is_some());
    }

    /// A Metadata request auto-creates at most its bound of topics: the names
    /// past it (new names only; existing topics, repeats and invalid names do
    /// not count) are answered UNKNOWN_TOPIC_OR_PARTITION and not created. The
    /// bound is 3 here, `MAX_CREATED_TOPICS` in the broker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_metadata_request_auto_creates_at_most_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        ctx.storage.create_topic("old", 1).unwrap();
        let names = ["n1", "old", "n1", "bad name", "n2", "n3", "n4", "old", "n5"];
        let req = MetadataRequest::default()
            .with_topics(Some(
                names
                    .iter()
                    .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                    .collect(),
            ))
            .with_allow_auto_topic_creation(true);
        let r = metadata_creating_at_most(&ctx, req, 9, 3, AUTO_CREATE_BUDGET).await;
        let answers: Vec<(String, i16)> = r
            .topics
            .iter()
            .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
            .collect();
        let expect: Vec<(String, i16)> = [
            ("n1", codes::NONE),
            ("old", codes::NONE),
            ("bad name", codes::INVALID_TOPIC_EXCEPTION),
            ("n2", codes::NONE),
            ("n3", codes::NONE),
            ("n4", codes::UNKNOWN_TOPIC_OR_PARTITION),
            ("n5", codes::UNKNOWN_TOPIC_OR_PARTITION),
        ]
        .iter()
        .map(|(n, c)| ((*n).to_string(), *c))
        .collect();
        assert_eq!(answers, expect);
        let mut made: Vec<String> = ctx
            .storage
            .topics()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        made.sort();
        assert_eq!(made, ["n1", "n2", "n3", "old"]);
    }

    /// A Metadata request auto-creates for its time budget at most: the names
    /// it has not come to by then are answered UNKNOWN_TOPIC_OR_PARTITION and
    /// not created, and a request asking again creates them. Before, the
    /// 5,000 names a request may create took up to 95 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_metadata_request_auto_creates_within_its_time_budget() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let ask = || {
            MetadataRequest::default()
                .with_topics(Some(
                    ["b1", "b2"]
                        .iter()
                        .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                        .collect(),
                ))
                .with_allow_auto_topic_creation(true)
        };
        let codes_of =
            |r: &MetadataResponse| -> Vec<i16> { r.topics.iter().map(|t| t.error_code).collect() };
        let r = metadata_creating_at_most(&ctx, ask(), 9, 10, Duration::ZERO).await;
        assert_eq!(
            codes_of(&r),
            [
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                codes::UNKNOWN_TOPIC_OR_PARTITION
            ]
        );
        assert!(ctx.storage.topics().is_empty(), "nothing created");
        let r = metadata_creating_at_most(&ctx, ask(), 9, 10, Duration::from_secs(600)).await;
        assert_eq!(codes_of(&r), [codes::NONE, codes::NONE]);
        assert_eq!(ctx.storage.topics().len(), 2);
    }

    /// A dry run judges each topic with the partitions its request's earlier
    /// topics would have made, so that it answers what the same request would
    /// get for real. Before, each was judged alone and a dry run passed topics
    /// the real request refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dry_run_counts_its_earlier_topics_against_the_file_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.max_connections = Some(100);
        config.storage.segment_open_files = Some(16);
        let ctx = crate::server::tests::ctx_with(dir.path(), config).await;
        // 200 - 100 - 16 - 64 = 20 files: 10 partitions, 2 of them left.
        ctx.storage.set_open_file_limit(Some(200));
        ctx.storage.create_topic("t", 7).unwrap();
        ctx.storage.create_topic("u", 1).unwrap();
        let grow = |name: &str, count: i32| {
            CreatePartitionsTopic::default()
                .with_name(topic_name(name))
                .with_count(count)
                .with_assignments(None)
        };
        for validate_only in [true, false] {
            let req = CreatePartitionsRequest::default()
                .with_topics(vec![grow("t", 8), grow("u", 3)])
                .with_validate_only(validate_only);
            let r = create_partitions(&ctx, req).await;
            let answers: Vec<i16> = r.results.iter().map(|t| t.error_code).collect();
            assert_eq!(
                answers,
                [codes::NONE, codes::POLICY_VIOLATION],
                "validate only: {validate_only}"
            );
        }
        // One partition left.
        let make = |name: &str| {
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(1)
                .with_replication_factor(1)
        };
        for validate_only in [true, false] {
            let req = CreateTopicsRequest::default()
                .with_topics(vec![make("a"), make("b")])
                .with_validate_only(validate_only);
            let r = create(&ctx, req, Instant::now()).await;
            let answers: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
            assert_eq!(
                answers,
                [codes::NONE, codes::POLICY_VIOLATION],
                "validate only: {validate_only}"
            );
        }
        assert!(ctx.storage.topic("a").is_some() && ctx.storage.topic("b").is_none());
    }

    /// CreateTopics, CreatePartitions and a Metadata auto-create whose
    /// partitions' files the open-file limit leaves no room for are refused
    /// before anything is created (the first two POLICY_VIOLATION, naming the
    /// limit; the auto-create UNKNOWN_TOPIC_OR_PARTITION, for that name and
    /// every later one of the request). Before, they were created until one
    /// failed with EMFILE, and storage was then left without the descriptors
    /// its next WAL rotation needed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_past_the_open_file_budget_are_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.max_connections = Some(100);
        config.storage.segment_open_files = Some(16);
        let ctx = crate::server::tests::ctx_with(dir.path(), config).await;
        // 200 - 100 - 16 - 64 = 20 files: 10 partitions.
        ctx.storage.set_open_file_limit(Some(200));
        ctx.storage.create_topic("t", 8).unwrap();
        let make = |name: &str, partitions: i32| {
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
        };
        for validate_only in [true, false] {
            let req = CreateTopicsRequest::default()
                .with_topics(vec![make("wide", 3), make("narrow", 2)])
                .with_validate_only(validate_only);
            let r = create(&ctx, req, Instant::now()).await;
            let answers: Vec<(String, i16)> = r
                .topics
                .iter()
                .map(|t| (t.name.0.to_string(), t.error_code))
                .collect();
            assert_eq!(
                answers,
                [
                    ("wide".to_string(), codes::POLICY_VIOLATION),
                    ("narrow".to_string(), codes::NONE)
                ],
                "validate only: {validate_only}"
            );
            let m = r.topics[0].error_message.as_deref().unwrap_or_default();
            assert!(m.contains("RLIMIT_NOFILE 200"), "{m}");
        }
        assert!(ctx.storage.topic("wide").is_none());
        assert!(!dir.path().join("topics/wide").exists());
        // The budget is full: no growth, no auto-create.
        for validate_only in [true, false] {
            let req = CreatePartitionsRequest::default()
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(topic_name("narrow"))
                    .with_count(3)
                    .with_assignments(None)])
                .with_validate_only(validate_only);
            let r = create_partitions(&ctx, req).await;
            assert_eq!(r.results[0].error_code, codes::POLICY_VIOLATION);
            let m = r.results[0].error_message.as_deref().unwrap_or_default();
            assert!(m.contains("RLIMIT_NOFILE 200"), "{m}");
        }
        assert_eq!(ctx.storage.topic("narrow").unwrap().partitions.len(), 2);
        let req = MetadataRequest::default()
            .with_topics(Some(
                ["t", "auto1", "auto2"]
                    .iter()
                    .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                    .collect(),
            ))
            .with_allow_auto_topic_creation(true);
        let r = metadata(&ctx, req, 9).await;
        let answers: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
        assert_eq!(
            answers,
            [
                codes::NONE,
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                codes::UNKNOWN_TOPIC_OR_PARTITION
            ]
        );
        assert!(ctx.storage.topic("auto1").is_none() && ctx.storage.topic("auto2").is_none());
        // Without a limit there is no bound.
        ctx.storage.set_open_file_limit(None);
        let r = metadata(
            &ctx,
            MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(topic_name("auto1")))
                ]))
                .with_allow_auto_topic_creation(true),
            9,
        )
        .await;
        assert_eq!(r.topics[0].error_code, codes::NONE);
    }
}
