//! The broker's topics by name, with what a create asks of them kept beside:
//! the names that collide in Kafka's metric names ([`TopicMap::colliding`])
//! and the partitions open ([`TopicMap::partitions`]); and the file-descriptor
//! budget that bounds those partitions ([`FileBudget`]).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Deref,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use super::Topic;

/// Descriptors kept out of the partitions' budget for everything else storage
/// opens: the WAL's files (a rotation holds the old and the new one), its
/// directory and lock, checkpoint and recovery-point files being replaced,
/// a segment roll's new log, index and time index, committed offsets, and
/// the process's own (standard streams, the runtime's, the listener).
pub const RESERVED_FILES: u64 = 64;

/// Descriptors each open partition holds: its active segment's log and index.
pub const FILES_PER_PARTITION: u64 = 2;

/// A topic name as Kafka names its metrics: every `.` made `_`.
fn metric_name(name: &str) -> String {
    name.replace('.', "_")
}

/// Whether `name` can collide with another in metric names (only names with a
/// `.` or a `_` can).
fn can_collide(name: &str) -> bool {
    name.contains(['.', '_'])
}

#[cfg(test)]
thread_local! {
    /// Topic names [`TopicMap::colliding`] compared on this thread.
    static COMPARED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts a name compared by [`TopicMap::colliding`] (tests).
#[inline]
fn compared() {
    #[cfg(test)]
    COMPARED.with(|c| c.set(c.get() + 1));
}

/// Every topic in service, by name. Read through [`Deref`]; changed only by
/// [`TopicMap::insert`] and [`TopicMap::remove`], which keep the metric-name
/// index and the partition count in step with the map, under the same lock.
#[derive(Debug, Default)]
pub(crate) struct TopicMap {
    by_name: BTreeMap<String, Arc<Topic>>,
    /// The names that contain `.` or `_`, by metric name (see
    /// [`metric_name`]): as Kafka's `topicsWithCollisionChars`, so that a
    /// create finds a colliding topic in one look-up, not by comparing its
    /// name with every topic's. More than one name only for a data directory
    /// that holds colliding topics from before they were refused.
    by_metric_name: HashMap<String, Vec<String>>,
    /// The partitions of every topic in the map.
    partitions: usize,
    /// The data directory's file system does not tell names apart by case
    /// (macOS and Windows by default): every name is indexed, by its metric
    /// name in lower case, so that `Orders` and `orders`, one directory
    /// there, collide too.
    fold_case: bool,
}

impl Deref for TopicMap {
    type Target = BTreeMap<String, Arc<Topic>>;

    fn deref(&self) -> &Self::Target {
        &self.by_name
    }
}

impl From<BTreeMap<String, Arc<Topic>>> for TopicMap {
    fn from(by_name: BTreeMap<String, Arc<Topic>>) -> Self {
        TopicMap::new(by_name, false)
    }
}

impl TopicMap {
    /// The map of `by_name`, on a file system that does (`fold_case` false) or
    /// does not tell names apart by case.
    pub(crate) fn new(by_name: BTreeMap<String, Arc<Topic>>, fold_case: bool) -> TopicMap {
        let mut map = TopicMap {
            fold_case,
            ..TopicMap::default()
        };
        for (name, topic) in by_name {
            map.insert(name, topic);
        }
        map
    }

    /// Whether `name` can collide with another.
    fn can_collide(&self, name: &str) -> bool {
        self.fold_case || can_collide(name)
    }

    /// The key under which `name` and the names it collides with are indexed.
    fn collision_key(&self, name: &str) -> String {
        let key = metric_name(name);
        if self.fold_case {
            key.to_ascii_lowercase()
        } else {
            key
        }
    }

    /// Puts `topic` under `name`, returning the topic it replaces.
    pub(crate) fn insert(&mut self, name: String, topic: Arc<Topic>) -> Option<Arc<Topic>> {
        self.partitions += topic.partitions.len();
        if self.can_collide(&name) {
            let key = self.collision_key(&name);
            let names = self.by_metric_name.entry(key).or_default();
            if !names.contains(&name) {
                names.push(name.clone());
            }
        }
        let old = self.by_name.insert(name, topic);
        if let Some(old) = &old {
            self.partitions -= old.partitions.len();
        }
        old
    }

    /// Takes the topic named `name` out.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Arc<Topic>> {
        let old = self.by_name.remove(name)?;
        self.partitions -= old.partitions.len();
        if self.can_collide(name) {
            let key = self.collision_key(name);
            if let Some(names) = self.by_metric_name.get_mut(&key) {
                names.retain(|n| n != name);
                if names.is_empty() {
                    self.by_metric_name.remove(&key);
                }
            }
        }
        Some(old)
    }

    /// A topic other than `name` whose name differs from it only by `.` in
    /// place of `_` or the reverse (or, on a file system that does not tell
    /// names apart by case, by the case of letters too): one hash look-up.
    pub(crate) fn colliding(&self, name: &str) -> Option<&str> {
        if !self.can_collide(name) {
            return None;
        }
        self.by_metric_name
            .get(&self.collision_key(name))?
            .iter()
            .inspect(|_| compared())
            .find(|n| *n != name)
            .map(String::as_str)
    }

    /// The key `name` collides under, when it can collide with another name
    /// (see [`TopicMap::colliding`]).
    pub(crate) fn collision_key_of(&self, name: &str) -> Option<String> {
        self.can_collide(name).then(|| self.collision_key(name))
    }

    /// Whether names that differ only by case collide (see
    /// [`TopicMap::new`]).
    pub(crate) fn folds_case(&self) -> bool {
        self.fold_case
    }

    /// The partitions of every topic in the map.
    pub(crate) fn partitions(&self) -> usize {
        self.partitions
    }
}

/// How many partitions storage may hold open: the open-file limit less what
/// connections may take, the sealed-segment read-handle cache's capacity and
/// [`RESERVED_FILES`], at [`FILES_PER_PARTITION`] descriptors each. A create
/// or growth past it would leave storage without the descriptors the next WAL
/// rotation, checkpoint or segment roll needs, failing it until a restart
/// (which reopens every partition, so the shortage would come back).
#[derive(Debug)]
pub(crate) struct FileBudget {
    /// The connections the server may hold open (one descriptor each): set
    /// when it binds; until then `--max-connections`, or none.
    connections: AtomicUsize,
    /// The open-file limit the budget is judged against, in place of
    /// `RLIMIT_NOFILE` (tests; `u64::MAX` for none).
    #[cfg(test)]
    limit: std::sync::Mutex<Option<u64>>,
}

/// Why a create or growth was refused: it would hold more partitions open
/// than the open-file limit leaves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    /// The soft `RLIMIT_NOFILE`.
    pub limit: u64,
    /// Descriptors kept for connections.
    pub connections: u64,
    /// Descriptors kept for the read-handle cache (`--segment-open-files`).
    pub cache: u64,
    /// Partitions open now.
    pub open: u64,
    /// Partitions the create or growth would add.
    pub new: u64,
}

impl OverBudget {
    /// The most partitions the limit leaves room for.
    pub fn most(&self) -> u64 {
        partition_budget(self.limit, self.connections, self.cache) / FILES_PER_PARTITION
    }
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new partitions would make {} open, each holding {FILES_PER_PARTITION} files, \
             past the {} partitions the open-file limit leaves room for: RLIMIT_NOFILE {} \
             less {} for connections (--max-connections, and the metrics endpoint's with \
             --metrics-listen), {} for sealed segments' read \
             handles (--segment-open-files) and {RESERVED_FILES} for the WAL, checkpoints \
             and segment rolls; raise the limit (ulimit -n) or lower --max-connections or \
             --segment-open-files",
            self.new,
            self.open + self.new,
            self.most(),
            self.limit,
            self.connections,
            self.cache,
        )
    }
}

/// Descriptors the open-file limit `limit` leaves to partitions once
/// `connections`, `cache` and [`RESERVED_FILES`] are kept.
fn partition_budget(limit: u64, connections: u64, cache: u64) -> u64 {
    limit
        .saturating_sub(connections)
        .saturating_sub(cache)
        .saturating_sub(RESERVED_FILES)
}

/// Refuses `new` partitions beside `open` ones when their descriptors would
/// pass what `limit` leaves them (see [`FileBudget`]); `None` for no limit.
///
/// # Errors
/// [`OverBudget`] with the figures.
pub(crate) fn check_budget(
    limit: Option<u64>,
    connections: u64,
    cache: u64,
    open: u64,
    new: u64,
) -> Result<(), OverBudget> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let files = open.saturating_add(new).saturating_mul(FILES_PER_PARTITION);
    if files <= partition_budget(limit, connections, cache) {
        return Ok(());
    }
    Err(OverBudget {
        limit,
        connections,
        cache,
        open,
        new,
    })
}

impl FileBudget {
    /// A budget keeping `connections` descriptors for connections.
    pub(crate) fn new(connections: usize) -> FileBudget {
        FileBudget {
            connections: AtomicUsize::new(connections),
            #[cfg(test)]
            limit: std::sync::Mutex::new(None),
        }
    }

    /// Keeps `n` descriptors for connections (the server's connection cap).
    pub(crate) fn set_connections(&self, n: usize) {
        self.connections.store(n, Ordering::Relaxed);
    }

    /// The open-file limit in force, `None` for none.
    fn limit(&self) -> Option<u64> {
        #[cfg(test)]
        if let Some(l) = *self.limit.lock().unwrap_or_else(|e| e.into_inner()) {
            return (l != u64::MAX).then_some(l);
        }
        super::segment::open_file_limit()
    }

    /// Judges the budget against `limit` in place of `RLIMIT_NOFILE`
    /// (`None`: no limit).
    #[cfg(test)]
    pub(crate) fn set_limit(&self, limit: Option<u64>) {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner()) = Some(limit.unwrap_or(u64::MAX));
    }

    /// Refuses `new` partitions beside `open` ones, with a read-handle cache
    /// of `cache` (see [`check_budget`]).
    ///
    /// # Errors
    /// [`OverBudget`] with the figures.
    pub(crate) fn check(&self, cache: usize, open: usize, new: usize) -> Result<(), OverBudget> {
        let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        check_budget(
            self.limit(),
            wide(self.connections.load(Ordering::Relaxed)),
            wide(cache),
            wide(open),
            wide(new),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Arc<Topic> {
        Arc::new(Topic {
            name: name.to_string(),
            id: uuid::Uuid::from_u128(crate::storage::random_id()),
            partitions: Vec::new(),
            wal_floor: None,
            configs: crate::storage::TopicConfig::default(),
            configs_not_durable: None,
        })
    }

    /// On a file system that does not tell names apart by case (macOS's and
    /// Windows' defaults), `orders` after `Orders` is the same directory: the
    /// create was told the directory held a topic kept after a failed delete,
    /// and to restart, which changed nothing. Such names collide there.
    #[test]
    fn names_that_differ_by_case_collide_where_the_file_system_folds_case() {
        let names = ["Orders", "a.B"];
        let by_name = names.iter().map(|n| (n.to_string(), topic(n))).collect();
        let folded = TopicMap::new(by_name, true);
        assert_eq!(folded.colliding("orders"), Some("Orders"));
        assert_eq!(folded.colliding("ORDERS"), Some("Orders"));
        assert_eq!(folded.colliding("Orders"), None, "not itself");
        assert_eq!(folded.colliding("a_b"), Some("a.B"));
        assert_eq!(folded.colliding("other"), None);
        let mut folded = folded;
        folded.remove("Orders");
        assert_eq!(folded.colliding("orders"), None);
        let by_name = names.iter().map(|n| (n.to_string(), topic(n))).collect();
        let kept_apart = TopicMap::new(by_name, false);
        assert_eq!(kept_apart.colliding("orders"), None);
        assert_eq!(kept_apart.colliding("a_B"), Some("a.B"));
        assert_eq!(kept_apart.colliding("a_b"), None);
    }

    /// A create's collision check compared its name with every topic's under
    /// the topics' read lock: a dry run of 5,000 names against 10,000 topics
    /// made 5*10^7 comparisons on a runtime worker. Now each look-up compares
    /// the names of one metric name only.
    #[test]
    fn a_collision_look_up_compares_one_metric_names_topics_however_many_there_are() {
        let mut map = TopicMap::default();
        for i in 0..20_000 {
            let name = format!("t.{i}");
            map.insert(name, topic(&format!("t.{i}")));
        }
        COMPARED.with(|c| c.set(0));
        for i in 0..1_000 {
            assert_eq!(
                map.colliding(&format!("t_{i}")),
                Some(format!("t.{i}").as_str())
            );
            assert_eq!(map.colliding(&format!("u_{i}")), None);
            assert_eq!(map.colliding(&format!("t.{i}")), None, "not itself");
        }
        let compared = COMPARED.with(std::cell::Cell::get);
        assert!(
            compared <= 2_000,
            "{compared} names compared for 3,000 look-ups"
        );
    }

    /// The index follows inserts and removes, with two colliding names in
    /// service (a data directory from before they were refused) too; a
    /// replaced topic counts its partitions once.
    #[test]
    fn the_index_and_the_partition_count_follow_the_map() {
        let mut map = TopicMap::from(BTreeMap::from([
            ("a.b".to_string(), topic("a.b")),
            ("a_b".to_string(), topic("a_b")),
            ("c".to_string(), topic("c")),
        ]));
        assert_eq!(map.colliding("a.b"), Some("a_b"));
        assert_eq!(map.colliding("a_b"), Some("a.b"));
        assert!(map.remove("a_b").is_some());
        assert_eq!(map.colliding("a.b"), None);
        assert_eq!(map.colliding("a_b"), Some("a.b"));
        assert!(map.remove("a.b").is_some());
        assert_eq!(map.colliding("a_b"), None);
        assert!(map.remove("a.b").is_none());
        assert!(map.insert("a_b".into(), topic("a_b")).is_none());
        assert!(map.insert("a_b".into(), topic("a_b")).is_some());
        assert_eq!(map.colliding("a.b"), Some("a_b"));
        assert!(map.remove("a_b").is_some());
        assert_eq!(map.colliding("a.b"), None, "a replaced name is listed once");
        assert_eq!(map.partitions(), 0);
    }

    #[test]
    fn the_budget_refuses_exactly_past_the_limit() {
        // 1,000 - 300 - 100 - 64 = 536 files: 268 partitions.
        assert_eq!(partition_budget(1000, 300, 100), 536);
        assert_eq!(check_budget(Some(1000), 300, 100, 200, 68), Ok(()));
        let e = check_budget(Some(1000), 300, 100, 200, 69).unwrap_err();
        assert_eq!(e.most(), 268);
        let m = e.to_string();
        assert!(
            m.contains("RLIMIT_NOFILE 1000") && m.contains("269 open") && m.contains("268"),
            "{m}"
        );
        assert_eq!(check_budget(None, 300, 100, 1 << 40, 1 << 40), Ok(()));
        // A limit below what is kept leaves no partition.
        assert!(check_budget(Some(100), 300, 100, 0, 1).is_err());
        assert_eq!(check_budget(Some(100), 300, 100, 0, 0), Ok(()));
    }
}
