//! Fetch (with long-poll) and ListOffsets. Reads run on blocking threads.

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use kafka_protocol::messages::{
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::named_once;
use crate::{
    server::{codes, fetch_memory::Lease, Ctx},
    storage::{watchers::Watch, Partition, TopicManager},
};

struct Want {
    topic: TopicName,
    partitions: Vec<(i32, i64, i32)>,
}

/// What one read pass over the requested partitions returned.
struct Pass {
    topics: Vec<FetchableTopicResponse>,
    /// Record bytes in `topics`.
    total: i64,
    /// Whether a partition was answered with an error.
    errors: bool,
    /// Whether a partition had records left to read, past those returned,
    /// when the Fetch memory budget had given it less room than `max_bytes`
    /// would have (the budget short, not the request's own limits).
    cut: bool,
}

/// One pass over the requested partitions. As in Kafka (KIP-74), the response
/// holds at most `max_bytes` of records and each partition at most its
/// `partition_max_bytes`, except that the first partition with records gets its
/// first batch whole however large it is (even when a limit is 0), so that
/// consumers always progress; later partitions get what fits in the bytes
/// left, `max_bytes` less what the earlier ones returned. `lease` (at most
/// `max_bytes`) is what the Fetch memory budget gave, `short` whether it gave
/// less than was asked: the pass reads within the lease, `max_bytes` only
/// tells whether it was cut short. A first batch beyond its partition's share
/// of the lease took the later partitions' shares: what it took beyond is
/// asked of the budget before they are read, within `max_bytes`, so that they
/// get what Kafka gives them whenever the budget has it. `found` holds the
/// wanted partitions in order (see [`resolve`]); a partition not there is
/// answered `UNKNOWN_TOPIC_OR_PARTITION`.
fn read_all(
    wants: &[Want],
    found: &[Option<Arc<Partition>>],
    max_bytes: i64,
    lease: &mut Lease,
    short: bool,
    version: i16,
) -> Pass {
    let mut granted = i64::try_from(lease.bytes()).unwrap_or(i64::MAX);
    let mut short = short;
    let mut total = 0i64;
    // Whether a partition's answer holds records: the first that does may
    // exceed its limits (batches without records before it do not count).
    let mut records = false;
    let mut errors = false;
    let mut cut = false;
    let mut topics = Vec::with_capacity(wants.len());
    let mut found = found.iter();
    for w in wants {
        let mut parts = Vec::with_capacity(w.partitions.len());
        for &(index, offset, pmax) in &w.partitions {
            let base = partition_base(index);
            // log_start_offset exists from v5 on.
            let start = |o: i64| if version >= 5 { o } else { -1 };
            let room = |limit: i64| {
                if total >= limit {
                    0
                } else {
                    (limit - total).min(i64::from(pmax.max(0)))
                }
            };
            let budget = room(granted);
            // The memory budget, short, took room the request's limits would
            // have given.
            let squeezed = short && budget < room(max_bytes);
            let entry = match found.next().and_then(Option::as_ref) {
                None => {
                    errors = true;
                    failed(base, codes::UNKNOWN_TOPIC_OR_PARTITION)
                }
                Some(p) => {
                    // Kafka's minOneMessage: no records in the response yet.
                    let first = !records;
                    // Budget spent on earlier partitions: report positions only.
                    let read = if budget == 0 && !first {
                        p.positions(offset)
                    } else {
                        p.read_within(offset, budget as u64, first)
                    };
                    match read {
                        Ok(Some(r)) => {
                            let len = r.records.len() as i64;
                            total += len;
                            records |= r.holds_records;
                            cut |= squeezed && end_offset(&r.records, offset) < r.high_watermark;
                            if len > budget && total < max_bytes {
                                // A first batch beyond this partition's share:
                                // the later ones' shares, taken again.
                                let want = (len - budget).min(max_bytes - granted);
                                if want > 0 {
                                    let more = lease.take_more(want.unsigned_abs());
                                    granted += i64::try_from(more).unwrap_or(0);
                                    short |= more < want.unsigned_abs();
                                }
                            }
                            base.with_error_code(codes::NONE)
                                .with_high_watermark(r.high_watermark)
                                .with_last_stable_offset(r.high_watermark)
                                .with_log_start_offset(start(r.log_start_offset))
                                .with_records(Some(r.records))
                        }
                        Ok(None) => {
                            errors = true;
                            let hw = p.high_watermark();
                            base.with_error_code(codes::OFFSET_OUT_OF_RANGE)
                                .with_high_watermark(hw)
                                .with_last_stable_offset(hw)
                                .with_log_start_offset(start(p.log_start_offset()))
                                .with_records(Some(Bytes::new()))
                        }
                        // Deleted since it was looked up (its files moved
                        // away under the read): answered as Kafka answers a
                        // partition that left the broker.
                        Err(_) if p.is_deleted() => {
                            errors = true;
                            failed(base, codes::UNKNOWN_TOPIC_OR_PARTITION)
                        }
                        Err(e) => {
                            errors = true;
                            crate::log_limit::limited!(error, topic = %w.topic.0, partition = index, error = %e, "fetch read failed");
                            failed(
                                base,
                                super::storage_error_as_known(
                                    codes::KAFKA_STORAGE_ERROR,
                                    version >= 6,
                                ),
                            )
                        }
                    }
                }
            };
            parts.push(entry);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(w.topic.clone())
                .with_partitions(parts),
        );
    }
    Pass {
        topics,
        total,
        errors,
        cut,
    }
}

/// A partition's answer before its outcome: no aborted transactions, no
/// preferred read replica.
fn partition_base(index: i32) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_aborted_transactions(Some(vec![]))
        .with_preferred_read_replica(BrokerId(-1))
}

/// `base` answered with `error`: no records, and no offsets to report.
fn failed(base: PartitionData, error: i16) -> PartitionData {
    base.with_error_code(error)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_records(Some(Bytes::new()))
}

/// The offset after the last batch of `records` (whole batches), or `from`
/// when there is none.
fn end_offset(records: &[u8], from: i64) -> i64 {
    let mut end = from;
    let mut rest = records;
    while let Ok(b) = crate::storage::batch::parse_header(rest) {
        end = end.max(b.last_offset() + 1);
        let Some(next) = rest.get(b.len..) else { break };
        rest = next;
    }
    end
}

/// One read pass within what the Fetch memory budget gives (see
/// [`fetch_memory`](crate::server::fetch_memory)), on a blocking thread: the
/// pass, the lease holding its record bytes, which the read keeps (so an
/// abandoned Fetch gives them back only once its read has ended), what each
/// and what each partition held from its fetch offset when the pass began
/// (see [`Held`]). It reads the partitions `pins` holds (see [`resolve`]).
/// Every partition lock is taken there, none on the async thread: an append
/// holds its partition's lock through a segment roll's `fdatasync`. The read
/// holds `permit`, its read slot (see [`read_slot`]), until it ends.
async fn read_pass(
    ctx: &Ctx,
    wants: &Arc<Vec<Want>>,
    pins: &Arc<Vec<Weak<Partition>>>,
    max_bytes: i64,
    version: i16,
    permit: Option<OwnedSemaphorePermit>,
) -> (Pass, Lease, Vec<Held>) {
    let storage = ctx.storage.clone();
    let memory = Arc::clone(&ctx.fetch_memory);
    let w = Arc::clone(wants);
    let pins = Arc::clone(pins);
    ctx.metrics.fetch_read();
    let pass = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let found = resolve(&storage, &w, Some(&pins));
        let held = holdings(&w, &found);
        // What the read could return, not the whole `max_bytes`: a Fetch near
        // the end of its partitions leaves the rest of the budget to others.
        let could_read = readable_bytes(&w, &held);
        let ask = u64::try_from(max_bytes).unwrap_or(0).min(could_read);
        let mut lease = memory.take_up_to(ask);
        let short = lease.bytes() < ask;
        let pass = read_all(&w, &found, max_bytes, &mut lease, short, version);
        // What was read, no more: a first batch beyond the grant overdraws.
        lease.settle(u64::try_from(pass.total).unwrap_or(0));
        (pass, lease, held)
    })
    .await;
    match pass {
        Ok((pass, lease, held)) => {
            if pass.cut {
                ctx.metrics.fetch_cut_by_memory();
            }
            (pass, lease, held)
        }
        Err(e) => {
            tracing::error!(error = %e, "fetch task failed");
            // Every partition asked for is answered, as Kafka answers a read
            // that failed: a response without them is one the Java client
            // refuses as invalid.
            let topics = wants
                .iter()
                .map(|w| {
                    FetchableTopicResponse::default()
                        .with_topic(w.topic.clone())
                        .with_partitions(
                            w.partitions
                                .iter()
                                .map(|&(index, _, _)| {
                                    failed(partition_base(index), codes::UNKNOWN_SERVER_ERROR)
                                })
                                .collect(),
                        )
                })
                .collect();
            let failed = Pass {
                topics,
                total: 0,
                errors: true,
                cut: false,
            };
            (failed, ctx.fetch_memory.take_up_to(0), Vec::new())
        }
    }
}

/// One of the [`READS_AT_ONCE`](crate::server::READS_AT_ONCE) read slots,
/// held by a read pass until it ends: waited for without end (a Fetch's
/// first pass, as Kafka's request threads wait for a stalled disk), or, with
/// `until`, only until the deadline or the shutdown (`None` then).
async fn read_slot(
    ctx: &Ctx,
    until: Option<(Instant, &mut watch::Receiver<bool>)>,
) -> Option<OwnedSemaphorePermit> {
    // The semaphore is never closed.
    let slot = Arc::clone(&ctx.reads).acquire_owned();
    match until {
        None => slot.await.ok(),
        Some((deadline, stopping)) => tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => None,
            s = tokio::time::timeout_at(deadline.into(), slot) => s.ok().and_then(Result::ok),
        },
    }
}

/// `topics` as a pass answered them, without their records: what a long
/// poll that cannot read again answers (see [`fetch`]).
fn without_records(topics: &[FetchableTopicResponse]) -> Vec<FetchableTopicResponse> {
    topics
        .iter()
        .map(|t| {
            let mut t = t.clone();
            for p in &mut t.partitions {
                p.records = Some(Bytes::new());
            }
            t
        })
        .collect()
}

/// The wanted partitions, in request order, as the broker names them now
/// (`None`: no such partition). With `pins`, the partitions the Fetch found
/// when it began, a partition that is not the one pinned is `None` too:
/// its topic was deleted while the Fetch waited, and perhaps created again
/// under the same name. As Kafka completes a delayed fetch whose partition
/// left the broker and answers it `UNKNOWN_TOPIC_OR_PARTITION`, such a Fetch
/// never reads the new topic at offsets that were the old one's. A pin is a
/// [`Weak`]: it keeps no deleted partition open, and the partition's
/// allocation, which it keeps, cannot be taken by a new one.
fn resolve(
    storage: &TopicManager,
    wants: &[Want],
    pins: Option<&[Weak<Partition>]>,
) -> Vec<Option<Arc<Partition>>> {
    let named = wants.iter().flat_map(|w| {
        w.partitions
            .iter()
            .map(move |&(index, ..)| storage.partition(&w.topic.0, index))
    });
    match pins {
        None => named.collect(),
        Some(pins) => named
            .zip(pins)
            .map(|(p, pin)| p.filter(|p| std::ptr::eq(Arc::as_ptr(p), pin.as_ptr())))
            .collect(),
    }
}

/// What a wanted partition held from its fetch offset at a moment:
/// its bytes from there to the log end (see
/// [`Partition::bytes_from`](crate::storage::partition::Partition::bytes_from)),
/// and its count of appended bytes then; `None` for no such partition.
type Held = Option<(u64, u64)>;

/// [`Held`] for each wanted partition, `found` as [`resolve`] gives them
/// (takes each partition's lock).
fn holdings(wants: &[Want], found: &[Option<Arc<Partition>>]) -> Vec<Held> {
    let offsets = wants
        .iter()
        .flat_map(|w| w.partitions.iter().map(|&(_, offset, _)| offset));
    found
        .iter()
        .zip(offsets)
        .map(|(p, offset)| p.as_ref().map(|p| p.bytes_from_marked(offset)))
        .collect()
}

/// Each wanted partition's `partition_max_bytes`, in the order of [`Held`].
fn limits(wants: &[Want]) -> impl Iterator<Item = u64> + '_ {
    wants.iter().flat_map(|w| {
        w.partitions
            .iter()
            .map(|&(.., pmax)| u64::try_from(pmax).unwrap_or(0))
    })
}

/// At most how many record bytes a read pass over `wants` could return, given
/// what they `held`: each partition's bytes from its fetch offset on, within
/// its `partition_max_bytes`.
fn readable_bytes(wants: &[Want], held: &[Held]) -> u64 {
    limits(wants)
        .zip(held)
        .map(|(pmax, h)| h.map_or(0, |(bytes, _)| bytes.min(pmax)))
        .fold(0u64, u64::saturating_add)
}

/// [`readable_bytes`] now, without taking any partition lock: what each
/// partition `held` at the last pass plus what was appended to it since, each
/// within its `partition_max_bytes`, as Kafka's DelayedFetch adds up the bytes
/// between each fetch offset and the log end. An estimate from above (bytes
/// appended but not yet below the high watermark count), as a read of at most
/// that much. `found` as [`resolve`] gives them, pinned to the partitions
/// `held` was taken from.
fn readable_now(wants: &[Want], found: &[Option<Arc<Partition>>], held: &[Held]) -> u64 {
    found
        .iter()
        .zip(limits(wants))
        .zip(held)
        .map(|((p, pmax), h)| match (p, h) {
            (Some(p), Some((bytes, mark))) => {
                let since = p.appended_bytes().saturating_sub(*mark);
                bytes.saturating_add(since).min(pmax)
            }
            _ => 0,
        })
        .fold(0u64, u64::saturating_add)
}

/// The partitions `pins` holds that are still the broker's (`None`: not
/// found when pinned, or its topic deleted since), as [`resolve`] finds them
/// with `pins`, but without a lookup by name: a partition leaves the topic map
/// only when its topic is deleted, which marks it deleted. Takes no lock.
fn pinned(pins: &[Weak<Partition>]) -> Vec<Option<Arc<Partition>>> {
    pins.iter()
        .map(|p| p.upgrade().filter(|p| !p.is_deleted()))
        .collect()
}

/// Where each of the partitions `found` (see [`resolve`]) has its readable log
/// start and end (`None`: no such partition): what a read pass depends on. A
/// long poll looks again only when these move, not at every append to any
/// partition of the broker. Takes no partition lock.
fn positions(found: &[Option<Arc<Partition>>]) -> Vec<Option<(i64, i64)>> {
    found
        .iter()
        .map(|p| {
            p.as_ref()
                .map(|p| (p.log_start_offset(), p.high_watermark()))
        })
        .collect()
}

/// Whether a long poll must read again now that its partitions are at `now`
/// rather than `seen`: a partition that appeared or went (its topic deleted,
/// or deleted and created again), whose log start moved (the fetch offset may
/// have left the log) or whose end went back calls for a read whatever the
/// bytes; records appended only add to [`readable_now`].
fn must_read(seen: &[Option<(i64, i64)>], now: &[Option<(i64, i64)>]) -> bool {
    seen.len() != now.len()
        || seen.iter().zip(now).any(|(s, n)| match (s, n) {
            (Some((start, hw)), Some((now_start, now_hw))) => start != now_start || now_hw < hw,
            (None, None) => false,
            _ => true,
        })
}

/// A Fetch: the response, and the lease on the Fetch memory budget that its
/// records hold until it is written.
pub(crate) async fn fetch(ctx: &Ctx, req: FetchRequest, version: i16) -> (FetchResponse, Lease) {
    // An incremental fetch (session epoch above 0, or below -1) names a
    // session, and this broker opens none (every answer has session id 0):
    // as Kafka answers one it does not hold, FETCH_SESSION_ID_NOT_FOUND, and
    // the client starts again with a full fetch. Answered as a full fetch,
    // the partitions it left out as unchanged would have gone unanswered.
    if version >= 7 && !matches!(req.session_epoch, 0 | -1) {
        let response = FetchResponse::default()
            .with_error_code(codes::FETCH_SESSION_ID_NOT_FOUND)
            .with_session_id(0);
        return (response, ctx.fetch_memory.take_up_to(0));
    }
    // Each partition is read and answered once, the first time the request
    // names it: a long poll reads every partition again at each change, so
    // repeats would multiply that work.
    let wants: Arc<Vec<Want>> = Arc::new(
        named_once(
            req.topics.iter().map(|t| (&t.topic, &t.partitions[..])),
            |p| p.partition,
        )
        .into_iter()
        .map(|(topic, partitions)| Want {
            topic: topic.clone(),
            partitions: partitions
                .into_iter()
                .map(|p| (p.partition, p.fetch_offset, p.partition_max_bytes))
                .collect(),
        })
        .collect(),
    );
    // The client's limit, capped by the broker's (Kafka: min(maxBytes, fetch.max.bytes)).
    // A limit of 0 still gets the first batch (see read_all).
    let cap = i64::try_from(ctx.storage.config().server.fetch_max_bytes).unwrap_or(i64::MAX);
    let max_bytes = i64::from(req.max_bytes.max(0)).min(cap);
    // Kafka: min(minBytes, the limit above): a poll whose partitions hold
    // the limit answers, though the client asked for more than it may get.
    let min_bytes = i64::from(req.min_bytes.max(0)).min(max_bytes);
    let deadline = Instant::now()
        + Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0).min(60_000));
    // Set once the server stops serving: a long poll then answers as at its
    // deadline, rather than hold the shutdown for up to `max_wait`.
    let mut stopping = ctx.stopping.subscribe();
    let answer = |pass: Pass, lease: Lease| {
        let response = FetchResponse::default()
            .with_responses(pass.topics)
            .with_session_id(0);
        (response, lease)
    };
    let wanted = u64::try_from(min_bytes).unwrap_or(0);
    // No partition to wait for (no topics, or topics listing none): nothing
    // could wake the wait, which would sit out `max_wait` and hold the
    // connection's later answers; Kafka answers such a Fetch at once.
    let nothing_asked = wants.iter().all(|w| w.partitions.is_empty());
    // The partitions the Fetch names now: every later look and read is of
    // them (see `resolve`).
    let pins: Arc<Vec<Weak<Partition>>> = Arc::new(
        resolve(&ctx.storage, &wants, None)
            .iter()
            .map(|p| p.as_ref().map_or_else(Weak::new, Arc::downgrade))
            .collect(),
    );
    // Registered with the pinned partitions once the Fetch first waits: only
    // a change to one of them wakes it (see `storage::watchers`).
    let mut watch: Option<Watch> = None;
    // Whether this pass was called for by the estimate of what the partitions
    // hold reaching `min_bytes`: it answers with what it read, as Kafka's
    // DelayedFetch completes once its estimate is reached.
    let mut enough = false;
    // What the last pass answered, without its records (see
    // `without_records`): `None` before the first.
    let mut last: Option<Vec<FetchableTopicResponse>> = None;
    // The answer of a long poll that cannot read again: every read slot is
    // held (reads stalled on the device) at its deadline or the shutdown.
    let unread = |last: Vec<FetchableTopicResponse>| {
        let pass = Pass {
            topics: last,
            total: 0,
            errors: false,
            cut: false,
        };
        answer(pass, ctx.fetch_memory.take_up_to(0))
    };
    loop {
        // Before the read: a change between the two then still counts as a
        // move (once registered, it also wakes the wait below).
        let mut seen = positions(&pinned(&pins));
        // The first pass waits for a slot as long as it takes; a later one
        // only until the deadline or the shutdown, which then answer what
        // the last pass found.
        let slot = match last.take() {
            None => read_slot(ctx, None).await,
            Some(topics) => match read_slot(ctx, Some((deadline, &mut stopping))).await {
                Some(slot) => Some(slot),
                None => return unread(topics),
            },
        };
        let (pass, lease, held) = read_pass(ctx, &wants, &pins, max_bytes, version, slot).await;
        // A pass the memory budget cut short answers now: what it left is
        // there to read, and waiting for a change would sit out `max_wait`.
        // So does one whose partitions hold `min_bytes` (each counted within
        // its `partition_max_bytes`) although the read, of whole batches
        // within the limits, came to less: waiting, it would sit out
        // `max_wait` for appends that change nothing, at every Fetch of a
        // consumer catching up; Kafka's DelayedFetch completes at once then.
        let done = enough
            || nothing_asked
            || pass.errors
            || pass.cut
            || pass.total >= min_bytes
            || readable_bytes(&wants, &held) >= wanted
            || Instant::now() >= deadline
            || *stopping.borrow();
        if done {
            return answer(pass, lease);
        }
        // A long poll holds no memory while it waits, and reads nothing: as
        // Kafka's DelayedFetch, it reads again once what its partitions hold
        // adds up to `min_bytes`, not at each append to them (each read would
        // take up to all it had read before, again).
        let found = without_records(&pass.topics);
        drop((pass, lease));
        // Registered only now, after `seen` was taken: a change in between
        // woke nothing, so the first look is at once.
        let mut look_now = false;
        let watch = watch.get_or_insert_with(|| {
            look_now = true;
            Watch::new(pinned(&pins).iter().flatten())
        });
        let woke = loop {
            if !look_now {
                let changed = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|stop| *stop) => false,
                    c = tokio::time::timeout_at(deadline.into(), watch.changed()) => c.is_ok(),
                };
                if !changed {
                    break None;
                }
                ctx.metrics.fetch_wakeup();
            }
            look_now = false;
            let found = pinned(&pins);
            let now = positions(&found);
            if now == seen {
                continue;
            }
            if must_read(&seen, &now) {
                break Some(false);
            }
            if readable_now(&wants, &found, &held) >= wanted {
                break Some(true);
            }
            seen = now;
        };
        match woke {
            Some(estimated) => {
                enough = estimated;
                last = Some(found);
            }
            None => {
                // Deadline or shutdown: one last read, then answer; when no
                // read can start at once, what the last pass found.
                let Ok(slot) = Arc::clone(&ctx.reads).try_acquire_owned() else {
                    return unread(found);
                };
                let (pass, lease, _) =
                    read_pass(ctx, &wants, &pins, max_bytes, version, Some(slot)).await;
                return answer(pass, lease);
            }
        }
    }
}

/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// KIP-734, from v7.
const MAX_TIMESTAMP: i64 = -3;

/// Whether ListOffsets at `version` (1 to 7 served) looks `timestamp` up: a
/// time (0 or more), `LATEST` and `EARLIEST`, and `MAX_TIMESTAMP` from v7.
/// Kafka answers any other negative timestamp `UNSUPPORTED_VERSION` (-4,
/// the earliest local offset, is defined from v8, -5, the latest tiered
/// offset, from v9, the rest never); they were looked up as times (the log
/// start offset, answered NONE) and -3 below v7 as the newest timestamp.
fn timestamp_supported(timestamp: i64, version: i16) -> bool {
    match timestamp {
        LATEST | EARLIEST => true,
        MAX_TIMESTAMP => version >= 7,
        t => t >= 0,
    }
}

/// The answer `r` of ListOffsets for `part` at `timestamp` (`LATEST`,
/// `EARLIEST`, `MAX_TIMESTAMP` or a time), with leader epoch `epoch` when an
/// offset is found. A partition whose topic is deleted, before or during the
/// lookup (its files moved away under the read), is answered as Kafka answers
/// a partition that left the broker, as a Fetch is: `KAFKA_STORAGE_ERROR` and
/// an error in the log said the disk had failed.
fn offsets_of(
    part: &Partition,
    timestamp: i64,
    r: ListOffsetsPartitionResponse,
    epoch: i32,
) -> ListOffsetsPartitionResponse {
    let unknown = |r: ListOffsetsPartitionResponse| {
        r.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
            .with_offset(-1)
            .with_leader_epoch(-1)
    };
    if part.is_deleted() {
        return unknown(r);
    }
    // (offset, timestamp), the timestamp -1 for latest and earliest, as in
    // Kafka.
    let found = match timestamp {
        LATEST => Ok(Some((part.high_watermark(), -1))),
        EARLIEST => Ok(Some((part.log_start_offset(), -1))),
        MAX_TIMESTAMP => part.max_timestamp_offset(),
        ts => part.offset_for_timestamp(ts),
    };
    match found {
        Ok(Some((o, ts))) => r
            .with_error_code(codes::NONE)
            .with_offset(o)
            .with_timestamp(ts)
            .with_leader_epoch(epoch),
        // No record qualifies: offset, timestamp and leader epoch all -1, as
        // Kafka answers.
        Ok(None) => r
            .with_error_code(codes::NONE)
            .with_offset(-1)
            .with_leader_epoch(-1),
        Err(_) if part.is_deleted() => unknown(r),
        Err(e) => {
            crate::log_limit::limited!(error, error = %e, "list offsets read failed");
            r.with_error_code(codes::KAFKA_STORAGE_ERROR)
                .with_offset(-1)
                .with_leader_epoch(-1)
        }
    }
}

pub(crate) async fn list_offsets(
    ctx: &Ctx,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    // leader_epoch exists from v4 on.
    let epoch = move |e: i32| if version >= 4 { e } else { -1 };
    let storage = ctx.storage.clone();
    // Held by the lookups until they end (see `READS_AT_ONCE`), when one reads
    // the segments: the latest and earliest offsets are read without a lock,
    // and a consumer's offset reset or a lag monitor does not wait for reads.
    let reads = req
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .any(|p| !matches!(p.timestamp, LATEST | EARLIEST));
    let permit = if reads {
        Arc::clone(&ctx.reads).acquire_owned().await.ok()
    } else {
        None
    };
    // Kept to answer every partition asked for should the lookups' task fail.
    let asked: Vec<(TopicName, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            let parts = t.partitions.iter().map(|p| p.partition_index).collect();
            (t.name.clone(), parts)
        })
        .collect();
    let topics = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        #[cfg(test)]
        if req
            .topics
            .iter()
            .any(|t| t.name.0.as_str() == PANICKING_TOPIC)
        {
            panic!("list offsets task panicked (test)");
        }
        // As Kafka does, every mention of a partition named more than once is
        // answered INVALID_REQUEST, without a lookup.
        let mut seen = HashSet::new();
        let mut repeated = HashSet::new();
        for t in &req.topics {
            for p in &t.partitions {
                let key = (t.name.0.as_str(), p.partition_index);
                if !seen.insert(key) {
                    repeated.insert(key);
                }
            }
        }
        req.topics
            .iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let r = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1);
                        if repeated.contains(&(t.name.0.as_str(), p.partition_index)) {
                            return r
                                .with_error_code(codes::INVALID_REQUEST)
                                .with_offset(-1)
                                .with_leader_epoch(-1);
                        }
                        let Some(part) = storage.partition(&t.name.0, p.partition_index) else {
                            return r
                                .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                                .with_offset(-1)
                                .with_leader_epoch(-1);
                        };
                        if !timestamp_supported(p.timestamp, version) {
                            return r
                                .with_error_code(codes::UNSUPPORTED_VERSION)
                                .with_offset(-1)
                                .with_leader_epoch(-1);
                        }
                        offsets_of(&part, p.timestamp, r, epoch(0))
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(t.name.clone())
                    .with_partitions(parts)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "list offsets task failed");
        // Every partition asked for is answered, as a Fetch whose read failed
        // is: a response without them left the Java consumer's partitions
        // waiting for a reset until it asked again, and the admin client
        // saw partitions missing.
        asked
            .into_iter()
            .map(|(name, parts)| {
                let parts = parts
                    .into_iter()
                    .map(|index| {
                        ListOffsetsPartitionResponse::default()
                            .with_partition_index(index)
                            .with_error_code(codes::UNKNOWN_SERVER_ERROR)
                            .with_timestamp(-1)
                            .with_offset(-1)
                            .with_leader_epoch(-1)
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(name)
                    .with_partitions(parts)
            })
            .collect()
    });
    ListOffsetsResponse::default().with_topics(topics)
}

/// A topic whose ListOffsets lookups panic (tests of a failed task).
#[cfg(test)]
const PANICKING_TOPIC: &str = "list-offsets-panics";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::{config::Config, storage::batch::tests::make_batch};

    fn want(topic: &'static str, partitions: &[(i32, i64, i32)]) -> Want {
        Want {
            topic: TopicName(StrBytes::from_static_str(topic)),
            partitions: partitions.to_vec(),
        }
    }

    /// ListOffsets for a partition whose topic was deleted after it was looked
    /// up answers it as one that left the broker, as a Fetch does: a lookup
    /// by time met the files moved away and answered `KAFKA_STORAGE_ERROR`
    /// (and logged an error, as for a failed disk), and the latest and
    /// earliest offsets were answered as if the topic were there.
    #[test]
    fn list_offsets_answers_a_partition_deleted_meanwhile_as_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.storage.data_dir = tmp.path().to_path_buf();
        let storage = TopicManager::new(c).unwrap();
        storage.create_topic("t", 1).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let batch = make_batch(0, &[b"v"]);
        let part = rt.block_on(async {
            let acked = storage
                .submit("t", 0, &batch, Duration::from_secs(5))
                .await
                .unwrap();
            acked.await.unwrap().unwrap();
            let part = storage.partition("t", 0).unwrap();
            assert!(storage.delete_topic("t").await.unwrap());
            part
        });
        for timestamp in [LATEST, EARLIEST, MAX_TIMESTAMP, 0] {
            let r = offsets_of(&part, timestamp, ListOffsetsPartitionResponse::default(), 0);
            assert_eq!(
                (r.error_code, r.offset),
                (codes::UNKNOWN_TOPIC_OR_PARTITION, -1),
                "{timestamp}"
            );
        }
        storage.shutdown().unwrap();
    }

    /// The Fetch memory budget is asked for what the partitions hold from the
    /// fetch offsets on, each within its `partition_max_bytes`: not the
    /// request's whole `max_bytes`, and nothing for partitions that do not exist.
    #[test]
    fn a_read_pass_asks_for_what_its_partitions_hold_from_their_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.storage.data_dir = tmp.path().to_path_buf();
        let storage = TopicManager::new(c).unwrap();
        storage.create_topic("t", 2).unwrap();
        let value = vec![5u8; 3000];
        let batch = make_batch(0, &[&value]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                let acked = storage
                    .submit("t", 0, &batch, Duration::from_secs(5))
                    .await
                    .unwrap();
                acked.await.unwrap().unwrap();
            }
        });
        let len = batch.len() as u64;
        let ask = |w: &[Want]| readable_bytes(w, &holdings(w, &resolve(&storage, w, None)));
        assert_eq!(ask(&[want("t", &[(0, 0, 1 << 20)])]), 3 * len);
        // From the second batch on; an offset past the end holds nothing.
        assert_eq!(ask(&[want("t", &[(0, 1, 1 << 20)])]), 2 * len);
        assert_eq!(ask(&[want("t", &[(0, 3, 1 << 20)])]), 0);
        // Each partition's own limit caps its share.
        assert_eq!(ask(&[want("t", &[(0, 0, 100)])]), 100);
        assert_eq!(ask(&[want("t", &[(0, 0, -1)])]), 0);
        // An empty partition, a missing partition and a missing topic add
        // nothing; the partitions asked for add up.
        assert_eq!(
            ask(&[
                want("t", &[(0, 0, 1 << 20), (1, 0, 1 << 20), (7, 0, 1 << 20)]),
                want("gone", &[(0, 0, 1 << 20)]),
                want("t", &[(0, 2, 1 << 20)]),
            ]),
            4 * len
        );
        storage.shutdown().unwrap();
    }

    /// KIP-74 with partition limits of 1000 bytes: the first partition's
    /// first batch, about 3000 bytes, comes whole, and the second partition
    /// still gets its batch of about 500 bytes within its own limit, as Kafka
    /// gives it `min(partition_max_bytes, max_bytes - 3000)`. The pass asked
    /// the budget for what the partitions held within their limits (1000 +
    /// 500), the batch took 3000 of that, and the second partition got
    /// nothing; the pass was also counted as cut short by memory, with the
    /// budget all but unused. Now the batch's excess is asked of the budget
    /// before the second partition is read, and a pass is counted as cut only
    /// when the budget was short.
    #[test]
    fn a_first_batch_past_its_partition_limit_leaves_the_next_partition_its_share() {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        const PMAX: i32 = 1000;
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ctx = rt.block_on(crate::server::tests::ctx_with(
            dir.path(),
            Config::default(),
        ));
        let storage = ctx.storage.clone();
        storage.create_topic("t", 2).unwrap();
        let big = make_batch(0, &[&[1u8; 3000]]);
        let small = make_batch(0, &[&[2u8; 430]]);
        assert!(big.len() > 3 * PMAX as usize && big.len() < 3 * PMAX as usize + 100);
        assert!(small.len() > 450 && small.len() <= 500, "{}", small.len());
        rt.block_on(async {
            for (p, b) in [(0, &big), (1, &small)] {
                let acked = storage
                    .submit("t", p, b, Duration::from_secs(5))
                    .await
                    .unwrap();
                acked.await.unwrap().unwrap();
            }
        });
        // Record bytes for each partition, and the passes counted as cut by
        // memory (a delta), for a Fetch of both from offset 0.
        let fetch_both = |max_bytes: usize| {
            let partition = |index| {
                FetchPartition::default()
                    .with_partition(index)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(PMAX)
            };
            let req = FetchRequest::default()
                .with_max_bytes(i32::try_from(max_bytes).unwrap())
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![partition(0), partition(1)])]);
            let cut = ctx.metrics.fetches_cut_by_memory();
            let (r, lease) = rt.block_on(fetch(&ctx, req, 12));
            let sizes: Vec<usize> = r.responses[0]
                .partitions
                .iter()
                .map(|p| {
                    assert_eq!((p.error_code, p.high_watermark), (codes::NONE, 1));
                    p.records.as_ref().map_or(0, Bytes::len)
                })
                .collect();
            assert_eq!(lease.bytes(), sizes.iter().sum::<usize>() as u64);
            (
                (sizes[0], sizes[1]),
                ctx.metrics.fetches_cut_by_memory() - cut,
            )
        };
        let both = (big.len(), small.len());
        // The budget free: the second partition gets its batch.
        assert_eq!(fetch_both(1 << 20), (both, 0));
        // What the response's own limit leaves (one byte short of the second
        // batch): nothing, and no cut by memory.
        let (sizes, cut) = fetch_both(big.len() + small.len() - 1);
        assert_eq!((sizes, cut), ((big.len(), 0), 0));
        // The budget has just what the pass asks for, and then the batch's
        // excess: the same answer.
        let limit = ctx.fetch_memory.limit();
        let asked = PMAX as usize + small.len();
        let excess = big.len() - PMAX as usize;
        let hog = ctx.fetch_memory.take_up_to(limit - (asked + excess) as u64);
        assert_eq!(fetch_both(1 << 20), (both, 0));
        drop(hog);
        // The budget has what the pass asks for but not all the excess: the
        // second partition is left for the next Fetch, a cut by memory.
        let hog = ctx
            .fetch_memory
            .take_up_to(limit - (asked + excess - 1) as u64);
        assert_eq!(fetch_both(1 << 20), ((big.len(), 0), 1));
        drop(hog);
        let hog = ctx.fetch_memory.take_up_to(limit);
        assert_eq!(fetch_both(1 << 20), ((big.len(), 0), 1));
        drop(hog);
        assert_eq!(ctx.fetch_memory.in_use(), 0);
        drop(ctx);
        storage.shutdown().unwrap();
    }

    /// A pass reads within its lease; records it leaves count as cut by
    /// memory only when the budget gave less than was asked. A lease that is
    /// all that was asked (what the partitions held a moment before: records
    /// appended since are not in it) leaves records for the next Fetch
    /// without the budget being short.
    #[test]
    fn a_pass_is_cut_by_memory_only_when_the_budget_gave_less_than_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.storage.data_dir = tmp.path().to_path_buf();
        let storage = TopicManager::new(c).unwrap();
        storage.create_topic("t", 1).unwrap();
        let batch = make_batch(0, &[&[3u8; 400]]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..2 {
                let acked = storage
                    .submit("t", 0, &batch, Duration::from_secs(5))
                    .await
                    .unwrap();
                acked.await.unwrap().unwrap();
            }
        });
        let wants = [want("t", &[(0, 0, 1 << 20)])];
        let found = resolve(&storage, &wants, None);
        let memory = crate::server::fetch_memory::FetchMemory::new(1 << 20);
        for short in [false, true] {
            let mut lease = memory.take_up_to(batch.len() as u64);
            let pass = read_all(&wants, &found, 1 << 20, &mut lease, short, 12);
            assert_eq!(pass.total, batch.len() as i64, "one batch of two");
            assert_eq!(pass.cut, short, "short: {short}");
        }
        storage.shutdown().unwrap();
    }

    /// A long poll reads only the partitions its first read found. Woken once
    /// its topic had been deleted and created again under the same name (the
    /// delete and the create both done before it looked), it read the new
    /// topic by name, at an offset that was the old one's; it now answers
    /// `UNKNOWN_TOPIC_OR_PARTITION` for it, as Kafka answers a delayed fetch
    /// whose partition left the broker.
    #[test]
    fn a_long_poll_answers_unknown_for_a_topic_created_again_while_it_waited() {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        let dir = tempfile::tempdir().unwrap();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        // The long poll runs on `polls`, driven only while this thread is in
        // its `block_on`; the delete, the create and the produce on `admin`.
        let (polls, admin) = (runtime(), runtime());
        let ctx = polls.block_on(crate::server::tests::ctx_with(
            dir.path(),
            Config::default(),
        ));
        let storage = ctx.storage.clone();
        storage.create_topic("t", 1).unwrap();
        let req = FetchRequest::default()
            .with_max_wait_ms(20_000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        let poll = {
            let ctx = std::sync::Arc::clone(&ctx);
            polls.spawn(async move { fetch(&ctx, req, 12).await.0 })
        };
        polls.block_on(async {
            while ctx.metrics.fetch_reads() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The pass ends on a blocking thread; the poll then waits.
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        assert!(!poll.is_finished(), "an empty partition: the poll waits");
        let batch = make_batch(0, &[b"new"]);
        admin.block_on(async {
            assert!(storage.delete_topic("t").await.unwrap());
            storage.create_topic("t", 1).unwrap();
            let acked = storage
                .submit("t", 0, &batch, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(acked.await.unwrap().unwrap(), 0);
        });
        let response = polls
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), poll).await })
            .expect("answered once it looks")
            .unwrap();
        let p = &response.responses[0].partitions[0];
        assert_eq!(
            (p.error_code, p.records.as_ref().map(Bytes::len)),
            (codes::UNKNOWN_TOPIC_OR_PARTITION, Some(0)),
            "{p:?}"
        );
        assert_eq!(ctx.metrics.fetch_reads(), 2);
        drop(ctx);
        storage.shutdown().unwrap();
    }

    /// A Fetch naming a session with an incremental epoch is answered
    /// FETCH_SESSION_ID_NOT_FOUND, as Kafka answers a session it does not
    /// hold, and the client starts again with a full fetch. Before, it was
    /// answered as a full fetch of the partitions it listed, leaving out
    /// those it had not sent as unchanged. A full fetch (epoch 0 or -1)
    /// naming a session is served, as Kafka closes that session and serves it.
    #[test]
    fn an_incremental_fetch_names_a_session_the_broker_does_not_hold() {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        t.produce("t", 0, &make_batch(0, &[b"v"]));
        let fetch_at = |session_id: i32, session_epoch: i32, version: i16| {
            let req = FetchRequest::default()
                .with_max_bytes(1 << 20)
                .with_session_id(session_id)
                .with_session_epoch(session_epoch)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20)])]);
            t.polls.block_on(fetch(&t.ctx, req, version)).0
        };
        for epoch in [1, 7, -2] {
            let r = fetch_at(5, epoch, 12);
            assert_eq!(
                r.error_code,
                codes::FETCH_SESSION_ID_NOT_FOUND,
                "epoch {epoch}"
            );
            assert!(r.responses.is_empty());
        }
        for (session, epoch, version) in [(5, 0, 12), (5, -1, 12), (0, 0, 12), (5, 3, 6)] {
            let r = fetch_at(session, epoch, version);
            assert_eq!(r.error_code, codes::NONE, "{session} {epoch} v{version}");
            assert_eq!(r.responses[0].partitions[0].high_watermark, 1);
        }
    }

    /// A negative timestamp a version does not define (-3 below v7, -4 and -5
    /// at v7, the highest served, and any other below -2) is answered
    /// UNSUPPORTED_VERSION, as Kafka answers it; it was looked up as a time
    /// (the log start offset, answered NONE) or, -3 below v7, as the newest
    /// timestamp.
    #[test]
    fn special_timestamps_a_version_does_not_define_are_unsupported() {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        let ask = |timestamp: i64| {
            ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(timestamp)])])
        };
        for (version, timestamp, code) in [
            (6, MAX_TIMESTAMP, codes::UNSUPPORTED_VERSION),
            (7, -4, codes::UNSUPPORTED_VERSION),
            (7, -5, codes::UNSUPPORTED_VERSION),
            (7, MAX_TIMESTAMP, codes::NONE),
            (6, EARLIEST, codes::NONE),
            (1, LATEST, codes::NONE),
            (6, 0, codes::NONE),
            (6, -6, codes::UNSUPPORTED_VERSION),
            (7, i64::MIN, codes::UNSUPPORTED_VERSION),
        ] {
            let r = t
                .polls
                .block_on(list_offsets(&t.ctx, ask(timestamp), version));
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error_code, code, "v{version}, {timestamp}");
            if code != codes::NONE {
                assert_eq!(p.offset, -1, "v{version}, {timestamp}");
            }
        }
    }

    /// A ListOffsets whose lookups' task failed answers every partition it
    /// named UNKNOWN_SERVER_ERROR, as a Fetch whose read failed does.
    /// Before, it answered no topic at all.
    #[test]
    fn a_failed_list_offsets_task_answers_every_partition() {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        let t = Polls::new();
        let topic = |name: &'static str, parts: &[i32]| {
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(name)))
                .with_partitions(
                    parts
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(0)
                        })
                        .collect(),
                )
        };
        let req = ListOffsetsRequest::default()
            .with_topics(vec![topic("other", &[0]), topic(PANICKING_TOPIC, &[0, 2])]);
        let r = t.polls.block_on(list_offsets(&t.ctx, req, 4));
        let answered: Vec<(&str, i32, i16, i64, i32)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let name = t.name.0.as_str();
                    (
                        name,
                        p.partition_index,
                        p.error_code,
                        p.offset,
                        p.leader_epoch,
                    )
                })
            })
            .collect();
        let failed = codes::UNKNOWN_SERVER_ERROR;
        assert_eq!(
            answered,
            [
                ("other", 0, failed, -1, -1),
                (PANICKING_TOPIC, 0, failed, -1, -1),
                (PANICKING_TOPIC, 2, failed, -1, -1)
            ]
        );
    }

    /// Read passes beyond `READS_AT_ONCE` wait, without a blocking thread,
    /// for one to end: with every permit held (reads blocked on a stalled
    /// device), a Fetch and a ListOffsets start no read until one is given
    /// back. Before, each took a blocking thread at once, and enough stalled
    /// consumers held every one the runtime has.
    #[test]
    fn reads_beyond_the_limit_wait_for_one_to_end() {
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        t.produce("t", 0, &make_batch(0, &[b"v"]));
        let all = u32::try_from(crate::server::READS_AT_ONCE).unwrap();
        let held = t
            .polls
            .block_on(Arc::clone(&t.ctx.reads).acquire_many_owned(all))
            .unwrap();
        let poll = t.start("t", &[0], 0, 0, 0);
        let offsets_at = |timestamp: i64| {
            let ctx = Arc::clone(&t.ctx);
            t.polls.spawn(async move {
                use kafka_protocol::messages::list_offsets_request::{
                    ListOffsetsPartition, ListOffsetsTopic,
                };
                let req =
                    ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(vec![ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(timestamp)])]);
                list_offsets(&ctx, req, 1).await
            })
        };
        // A look-up by time reads the segments; the latest offset does not,
        // and is answered at once.
        let offsets = offsets_at(0);
        let latest = offsets_at(LATEST);
        let latest = t
            .polls
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), latest).await })
            .expect("the latest offset waits for no read")
            .unwrap();
        assert_eq!(latest.topics[0].partitions[0].offset, 1);
        t.drive(300);
        assert!(
            !poll.is_finished() && !offsets.is_finished(),
            "read past the limit"
        );
        assert_eq!(t.ctx.metrics.fetch_reads(), 0);
        drop(held);
        let r = t.answer(poll);
        assert_eq!(r.responses[0].partitions[0].high_watermark, 1);
        let o = t
            .polls
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), offsets).await })
            .expect("answered once a read ended")
            .unwrap();
        assert_eq!(o.topics[0].partitions[0].offset, 0);
        assert_eq!(
            t.ctx.reads.available_permits(),
            crate::server::READS_AT_ONCE
        );
        t.close();
    }

    /// A long poll whose deadline comes while every read slot is held (reads
    /// stalled on the device) answers at its deadline with what its last
    /// pass found, without records; so does one woken by an append then.
    /// Before, its last read waited for a slot past `max_wait_ms`, holding
    /// the answers after it on its connection.
    #[test]
    fn a_long_poll_does_not_wait_past_its_deadline_for_a_read_slot() {
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        t.produce("t", 0, &make_batch(0, &[b"v"]));
        let all = u32::try_from(crate::server::READS_AT_ONCE).unwrap();
        for wake in [false, true] {
            let reads = t.ctx.metrics.fetch_reads();
            let poll = t.start("t", &[0], 1, 1 << 20, 700);
            t.until_read(reads + 1);
            let held = t
                .polls
                .block_on(Arc::clone(&t.ctx.reads).acquire_many_owned(all))
                .unwrap();
            if wake {
                // Enough to read: the poll wants a slot before its deadline.
                t.produce("t", 0, &make_batch(0, &[&[7u8; 2 << 20]]));
            }
            let r = t.answer(poll);
            let p = &r.responses[0].partitions[0];
            assert_eq!(p.error_code, codes::NONE, "wake {wake}");
            assert_eq!(p.high_watermark, 1, "wake {wake}: the last pass's");
            assert!(
                p.records.as_ref().is_none_or(Bytes::is_empty),
                "wake {wake}"
            );
            assert_eq!(t.ctx.metrics.fetch_reads(), reads + 1, "wake {wake}");
            drop(held);
        }
        t.close();
    }

    /// Two runtimes and a broker context for long-poll tests: the polls run on
    /// `polls`, driven only while the test thread is in its `block_on`;
    /// produces, deletes and the like on `admin`.
    struct Polls {
        polls: tokio::runtime::Runtime,
        admin: tokio::runtime::Runtime,
        ctx: Arc<Ctx>,
        storage: TopicManager,
        _dir: tempfile::TempDir,
    }

    impl Polls {
        fn new() -> Polls {
            let dir = tempfile::tempdir().unwrap();
            let runtime = || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
            };
            let (polls, admin) = (runtime(), runtime());
            let ctx = polls.block_on(crate::server::tests::ctx_with(
                dir.path(),
                Config::default(),
            ));
            let storage = ctx.storage.clone();
            Polls {
                polls,
                admin,
                ctx,
                storage,
                _dir: dir,
            }
        }

        /// Starts a Fetch of `topic` (its `partitions` from `offset`) that
        /// waits up to `max_wait_ms` for `min_bytes`.
        fn start(
            &self,
            topic: &'static str,
            partitions: &[i32],
            offset: i64,
            min_bytes: i32,
            max_wait_ms: i32,
        ) -> tokio::task::JoinHandle<FetchResponse> {
            use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
            let req = FetchRequest::default()
                .with_max_wait_ms(max_wait_ms)
                .with_min_bytes(min_bytes)
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str(topic)))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&p| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_fetch_offset(offset)
                                    .with_partition_max_bytes(1 << 20)
                            })
                            .collect(),
                    )]);
            let ctx = Arc::clone(&self.ctx);
            self.polls
                .spawn(async move { fetch(&ctx, req, 12).await.0 })
        }

        /// Drives the polls for `ms`.
        fn drive(&self, ms: u64) {
            self.polls
                .block_on(async { tokio::time::sleep(Duration::from_millis(ms)).await });
        }

        /// Drives the polls until `reads` read passes were made, then a
        /// moment more: the pass ends on a blocking thread, the poll then waits.
        fn until_read(&self, reads: u64) {
            self.polls.block_on(async {
                while self.ctx.metrics.fetch_reads() < reads {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }

        /// The poll's answer, which must come within 5 s (its `max_wait` is longer).
        fn answer(&self, poll: tokio::task::JoinHandle<FetchResponse>) -> FetchResponse {
            self.polls
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), poll).await })
                .expect("answered before its max_wait")
                .unwrap()
        }

        fn produce(&self, topic: &str, partition: i32, batch: &[u8]) {
            self.admin.block_on(async {
                let acked = self
                    .storage
                    .submit(topic, partition, batch, Duration::from_secs(5))
                    .await
                    .unwrap();
                acked.await.unwrap().unwrap();
            });
        }

        fn watchers(&self, topic: &str, partition: i32) -> usize {
            self.storage
                .partition(topic, partition)
                .unwrap()
                .watchers()
                .len()
        }

        fn close(self) {
            drop(self.ctx);
            self.storage.shutdown().unwrap();
        }
    }

    /// Every append anywhere on the broker woke every waiting long poll, which
    /// then looked each of its partitions up by name and compared its
    /// positions: with many idle consumers over many partitions that is work
    /// in proportion to appends × polls × partitions, on the runtime's
    /// threads. A poll is now woken only by changes to its own partitions:
    /// appends to another partition of its topic wake it not once.
    #[test]
    fn a_long_poll_is_not_woken_by_appends_to_another_partition() {
        let t = Polls::new();
        t.storage.create_topic("t", 2).unwrap();
        let poll = t.start("t", &[0], 0, 1, 30_000);
        t.until_read(1);
        assert!(!poll.is_finished(), "an empty partition: the poll waits");
        let wakeups = t.ctx.metrics.fetch_wakeups();
        let batch = make_batch(0, &[b"elsewhere"]);
        for _ in 0..20 {
            t.produce("t", 1, &batch);
            // The poll runs between the appends, as it would on a busy broker.
            t.drive(10);
        }
        assert_eq!(
            t.ctx.metrics.fetch_wakeups() - wakeups,
            0,
            "appends to partition 1 woke a poll of partition 0"
        );
        assert_eq!(t.ctx.metrics.fetch_reads(), 1);
        assert!(!poll.is_finished());
        assert_eq!((t.watchers("t", 0), t.watchers("t", 1)), (1, 0));
        // An append to its own partition answers it at once.
        t.produce("t", 0, &make_batch(0, &[b"mine"]));
        let response = t.answer(poll);
        let p = &response.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (codes::NONE, 1), "{p:?}");
        assert!(!p.records.as_ref().unwrap().is_empty());
        assert_eq!(t.ctx.metrics.fetch_wakeups() - wakeups, 1);
        assert_eq!(t.ctx.metrics.fetch_reads(), 2);
        assert_eq!(t.watchers("t", 0), 0, "the answered poll deregistered");
        t.close();
    }

    /// A long poll waiting for `min_bytes` wakes at each append to its
    /// partition, reads again only once the bytes appended reach `min_bytes`,
    /// and answers then, long before its `max_wait`.
    #[test]
    fn a_long_poll_answers_once_appends_to_its_partition_reach_min_bytes() {
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        let batch = make_batch(0, &[&[1u8; 300]]);
        let min_bytes = i32::try_from(2 * batch.len()).unwrap();
        let poll = t.start("t", &[0], 0, min_bytes, 30_000);
        t.until_read(1);
        t.produce("t", 0, &batch);
        t.drive(50);
        assert!(!poll.is_finished(), "half of min_bytes");
        assert_eq!(
            t.ctx.metrics.fetch_reads(),
            1,
            "no read for half of min_bytes"
        );
        t.produce("t", 0, &batch);
        let response = t.answer(poll);
        let p = &response.responses[0].partitions[0];
        assert_eq!(
            (p.error_code, p.records.as_ref().map(Bytes::len)),
            (codes::NONE, Some(2 * batch.len()))
        );
        assert_eq!(t.ctx.metrics.fetch_reads(), 2);
        t.close();
    }

    /// A Fetch asking for more bytes (`min_bytes`) than it may get
    /// (`max_bytes`, here 1 MiB) waited out its whole `max_wait` though its
    /// partition held more than that limit: no read could ever reach
    /// `min_bytes`. Kafka caps `min_bytes` at the limit; so does this broker
    /// now, answering at once.
    #[test]
    fn a_fetch_whose_min_bytes_exceeds_its_limit_answers_once_the_limit_is_readable() {
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        let batch = make_batch(0, &[&[1u8; 600_000]]);
        t.produce("t", 0, &batch);
        t.produce("t", 0, &batch);
        let poll = t.start("t", &[0], 0, 2 << 20, 30_000);
        let response = t.answer(poll);
        let p = &response.responses[0].partitions[0];
        assert_eq!(
            (p.error_code, p.records.as_ref().map(Bytes::len)),
            (codes::NONE, Some(batch.len())),
            "the first batch, within the limit"
        );
        t.close();
    }

    /// A DeleteRecords that moved the log start past a waiting poll's offset
    /// woke it only at the next append to some partition of the broker, or
    /// at its `max_wait`. Its partition now wakes it at once, and it answers
    /// `OFFSET_OUT_OF_RANGE`, as Kafka completes such a delayed fetch.
    #[test]
    fn a_long_poll_answers_at_once_when_delete_records_moves_the_log_start_past_its_offset() {
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        let batch = make_batch(0, &[b"r"]);
        for _ in 0..3 {
            t.produce("t", 0, &batch);
        }
        // From offset 1, it holds two batches, far from `min_bytes`: it waits.
        let poll = t.start("t", &[0], 1, 1 << 20, 30_000);
        t.until_read(1);
        assert!(!poll.is_finished());
        let p = t.storage.partition("t", 0).unwrap();
        assert_eq!(p.delete_records(3).unwrap(), 3);
        let response = t.answer(poll);
        let r = &response.responses[0].partitions[0];
        assert_eq!(
            (r.error_code, r.log_start_offset, r.high_watermark),
            (codes::OFFSET_OUT_OF_RANGE, 3, 3),
            "{r:?}"
        );
        assert_eq!(p.watchers().len(), 0);
        drop(p);
        t.close();
    }

    /// A Fetch that names no partition answers at once: nothing could wake
    /// its wait, which sat out its whole `max_wait` (up to 60 s), and every
    /// request behind it on the connection with it.
    #[test]
    fn a_fetch_naming_no_partition_answers_at_once() {
        let t = Polls::new();
        t.storage.create_topic("t", 1).unwrap();
        let poll = t.start("t", &[], 0, 1, 30_000);
        let response = t.answer(poll);
        assert_eq!(response.responses.len(), 1);
        assert!(response.responses[0].partitions.is_empty());
        t.close();
    }

    /// A long poll on a topic deleted while it waits is woken by the delete
    /// itself (no append anywhere) and answers `UNKNOWN_TOPIC_OR_PARTITION`.
    #[test]
    fn a_long_poll_answers_at_once_when_its_topic_is_deleted() {
        let t = Polls::new();
        t.storage.create_topic("t", 2).unwrap();
        let poll = t.start("t", &[0, 1], 0, 1, 30_000);
        t.until_read(1);
        assert!(!poll.is_finished());
        let pinned = t.storage.partition("t", 1).unwrap();
        assert_eq!(pinned.watchers().len(), 1);
        t.admin
            .block_on(async { assert!(t.storage.delete_topic("t").await.unwrap()) });
        let response = t.answer(poll);
        let codes: Vec<i16> = response.responses[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(codes, [codes::UNKNOWN_TOPIC_OR_PARTITION; 2]);
        assert_eq!(pinned.watchers().len(), 0);
        drop(pinned);
        t.close();
    }

    /// A long poll whose Fetch is dropped while it waits (its connection
    /// closed) takes its registrations off all its partitions: a partition's
    /// list of waiters holds only the polls waiting now.
    #[test]
    fn a_cancelled_long_poll_leaves_no_registration_behind() {
        let t = Polls::new();
        t.storage.create_topic("t", 2).unwrap();
        let polls: Vec<_> = (0..3)
            .map(|_| t.start("t", &[0, 1], 0, 1, 30_000))
            .collect();
        t.until_read(3);
        assert_eq!((t.watchers("t", 0), t.watchers("t", 1)), (3, 3));
        let mut polls = polls.into_iter();
        let first = polls.next().unwrap();
        first.abort();
        let ended = t.polls.block_on(first);
        assert!(ended.unwrap_err().is_cancelled());
        assert_eq!((t.watchers("t", 0), t.watchers("t", 1)), (2, 2));
        for poll in polls {
            poll.abort();
            assert!(t.polls.block_on(poll).unwrap_err().is_cancelled());
        }
        assert_eq!((t.watchers("t", 0), t.watchers("t", 1)), (0, 0));
        // Appends with nobody waiting.
        t.produce("t", 0, &make_batch(0, &[b"x"]));
        assert_eq!(t.ctx.metrics.fetch_wakeups(), 0);
        t.close();
    }
}
