//! The Kafka-protocol server: a tokio listener, one reader and one writer task per
//! connection, message codecs from the `kafka-protocol` crate.
//!
//! Each connection's reader decodes requests in order. A Produce is *submitted* to the
//! storage pipeline right there (so pipelined produces keep their order and share
//! group commits), and SASL requests move the connection's authentication on;
//! every request then becomes a future queued to the writer, which awaits them
//! one after another: responses leave in request order. Every other request is
//! queued as its frame and decoded again when the writer reaches it: the queue
//! holds frames, counted in flight, not what they decode into. The reader
//! stays at most 32 MiB of request frames ahead of the writer, and a connection
//! idle (no I/O, no response being computed) for `--connections-max-idle-ms` is
//! closed (see [`conn`]). Malformed frames, oversized frames and unknown APIs close
//! only that connection, with a log line. A Fetch response's records hold their
//! share of one broker-wide budget until the response is written or dropped (see
//! [`fetch_memory`]).

mod conn;
mod fetch_memory;
pub mod groups;
mod handlers;
pub mod listed;
mod metrics;
pub use metrics::note_process_start;
pub mod sasl;
pub mod tls;

use std::{
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader},
    protocol::{Decodable, Encodable},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch, Notify},
};

use crate::{
    error::{Error, Result},
    storage::TopicManager,
};
use groups::GroupCoordinator;

/// Kafka error codes used by the broker.
pub mod codes {
    #![allow(missing_docs)]
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_BATCH_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INVALID_RECORD: i16 = 87;
    pub const INVALID_TIMESTAMP: i16 = 32;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    /// An incremental Fetch named a fetch session the broker does not hold.
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const SECURITY_DISABLED: i16 = 54;
    pub const RESOURCE_NOT_FOUND: i16 = 91;
    pub const DUPLICATE_RESOURCE: i16 = 92;
    pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;
}

/// A response still being computed.
type Pending = Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// A response as the connection's writer gets it: the frame to write, and the
/// Fetch response memory it holds ([`fetch_memory::Lease`]), given back when
/// the reply is dropped: once its frame is written, or with the connection.
#[derive(Debug)]
pub(crate) struct Reply {
    /// `None` means "send nothing" (Produce with acks=0), and an empty frame
    /// ([`close_connection`]) "send nothing and close the connection".
    frame: Option<BytesMut>,
    /// Declared after the frame: the frame is freed before its bytes are given
    /// back to the budget.
    _held: Option<fetch_memory::Lease>,
}

impl Reply {
    /// `frame` to write.
    pub(crate) fn frame(frame: BytesMut) -> Reply {
        Reply {
            frame: Some(frame),
            _held: None,
        }
    }

    /// Nothing to write (Produce with acks=0).
    pub(crate) fn nothing() -> Reply {
        Reply {
            frame: None,
            _held: None,
        }
    }

    /// The same reply, holding `lease` until it is dropped.
    pub(crate) fn holding(self, lease: fetch_memory::Lease) -> Reply {
        Reply {
            _held: Some(lease),
            ..self
        }
    }

    /// Bytes of the frame to write.
    fn len(&self) -> usize {
        self.frame.as_ref().map_or(0, BytesMut::len)
    }

    /// Whether the connection closes instead of answering.
    fn closes(&self) -> bool {
        self.frame.as_ref().is_some_and(BytesMut::is_empty)
    }
}

/// What a [`Pending`] resolves to when the connection must close instead of
/// answering (a Produce with acks=0 that failed, as in Kafka): an empty frame,
/// which no response is (each has at least its length and correlation id).
pub(crate) fn close_connection() -> Reply {
    Reply::frame(BytesMut::new())
}

/// How many segment reads (a Fetch's read pass, a ListOffsets lookup) run on
/// tokio's blocking threads at once; more wait, without a thread, for one to
/// end. A read blocked on a stalled device holds its thread until the device
/// answers, and nothing cancels it when its client gives up: unbounded,
/// reconnecting consumers could hold all of the runtime's blocking threads
/// (512), and every other request that needs one (a JoinGroup's or commit's
/// store, a create, a login's derivation) and the shutdown would queue behind
/// them.
pub(crate) const READS_AT_ONCE: usize = 64;

/// How many other pieces of blocking work that requests start (a group's or
/// a commit's store, an offset deletion, a topic create or partition add, a
/// config change, DeleteRecords, DescribeLogDirs, a producer id, a SCRAM
/// change) run on tokio's blocking threads at once; more wait, without a
/// thread, for one to end (see [`blocking`]). Each may wait on the device
/// through fsyncs: unbounded, clients repeating such requests against a
/// stalled device could hold every blocking thread, as reads could (see
/// [`READS_AT_ONCE`]), and Fetch reads of what the page cache holds would
/// queue behind them.
pub(crate) const WORK_AT_ONCE: usize = 64;

/// Runs `f`, blocking work a request started, on one of tokio's blocking
/// threads once one of the [`WORK_AT_ONCE`] places is free.
pub(crate) async fn blocking<R, F>(ctx: &Ctx, f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    // The semaphore is never closed.
    let permit = Arc::clone(&ctx.work).acquire_owned().await.ok();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
}

/// [`blocking`] work that takes the topic-admin lock (a create, a partition
/// growth, a topic config change): runs once the request has the lock's turn
/// ([`crate::storage::TopicManager::admin_turn`]), so that requests queued on
/// the lock wait without a place.
pub(crate) async fn admin_blocking<R, F>(ctx: &Ctx, f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let _turn = ctx.storage.admin_turn().await;
    blocking(ctx, f).await
}

/// What every handler can reach.
pub(crate) struct Ctx {
    pub(crate) storage: TopicManager,
    pub(crate) groups: Arc<GroupCoordinator>,
    pub(crate) host: String,
    pub(crate) port: i32,
    pub(crate) metrics: metrics::Metrics,
    /// What Fetch responses may hold in memory (`--fetch-response-memory-bytes`).
    pub(crate) fetch_memory: Arc<fetch_memory::FetchMemory>,
    /// Segment reads (Fetch read passes, ListOffsets lookups) running on
    /// blocking threads at once: at most [`READS_AT_ONCE`].
    pub(crate) reads: Arc<tokio::sync::Semaphore>,
    /// Other blocking work requests start, running at once: at most
    /// [`WORK_AT_ONCE`] (see [`blocking`]).
    pub(crate) work: Arc<tokio::sync::Semaphore>,
    /// TLS and SASL, reloaded on SIGHUP (by the broker binary, which holds the
    /// other reference).
    pub(crate) security: Arc<Security>,
    /// Set once the server stops serving ([`Server::run`]): connections stop
    /// reading requests, and long-polling Fetches answer at once.
    pub(crate) stopping: watch::Sender<bool>,
}

/// The TLS acceptor (`--tls-cert`) and the SASL users (`--sasl-users`), each
/// replaced as a whole when a SIGHUP reloads them: a connection keeps what it
/// started with, new ones get the new material.
pub struct Security {
    tls: Option<std::sync::RwLock<tokio_rustls::TlsAcceptor>>,
    sasl: Option<std::sync::RwLock<Arc<sasl::Authenticator>>>,
    /// Held while the users file is rewritten (AlterUserScramCredentials) or
    /// reloaded (SIGHUP), so that neither undoes the other.
    users_file: std::sync::Mutex<()>,
}

impl Security {
    /// Loads both from `cfg` (the broker does so before storage opens, so that
    /// bad material is refused first, and hands them to [`Server::bind_with`]).
    ///
    /// # Errors
    /// As [`tls::acceptor`] and [`sasl::load`]: what is wrong, naming the file
    /// or flag.
    pub fn load(cfg: &crate::config::ServerConfig) -> Result<Security> {
        let tls = cfg.tls.as_ref().map(tls::acceptor).transpose()?;
        let sasl = cfg.sasl.as_ref().map(sasl::load).transpose()?;
        Ok(Security {
            tls: tls.map(std::sync::RwLock::new),
            sasl: sasl.map(|a| std::sync::RwLock::new(Arc::new(a))),
            users_file: std::sync::Mutex::new(()),
        })
    }

    pub(crate) fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let lock = self.tls.as_ref()?;
        Some(
            lock.read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    pub(crate) fn sasl(&self) -> Option<Arc<sasl::Authenticator>> {
        let lock = self.sasl.as_ref()?;
        Some(Arc::clone(
            &lock
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }

    /// Applies SCRAM credential changes (AlterUserScramCredentials): writes the
    /// users file, then serves the new users. Returns the users whose changes
    /// were refused, with Kafka's error code and a message; the others' changes
    /// all took effect. A deletion of a credential that does not exist refuses
    /// that user's changes; a file that cannot be written refuses everyone's.
    /// A file replaced whose directory cannot then be fsynced holds the
    /// changes: they are in force, and every changed user is answered
    /// UNKNOWN_SERVER_ERROR saying that they may not survive a power loss.
    pub(crate) fn alter_scram(
        &self,
        mut changes: Vec<sasl::ScramChange>,
    ) -> std::collections::HashMap<String, (i16, String)> {
        use sasl::ScramChange;
        fn user_of(c: &ScramChange) -> &String {
            let (ScramChange::Delete { user, .. } | ScramChange::Upsert { user, .. }) = c;
            user
        }
        let mut refused = std::collections::HashMap::new();
        let Some(lock) = &self.sasl else {
            for c in &changes {
                refused.insert(
                    user_of(c).clone(),
                    (codes::SECURITY_DISABLED, handlers::NO_SASL.to_string()),
                );
            }
            return refused;
        };
        let _file = self
            .users_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.sasl().expect("SASL is configured");
        for c in &changes {
            if let ScramChange::Delete { user, mechanism } = c {
                let exists = current
                    .scram_credentials(user)
                    .is_some_and(|creds| creds.iter().any(|(m, _)| m == mechanism));
                if !exists {
                    refused.insert(
                        user.clone(),
                        (
                            codes::RESOURCE_NOT_FOUND,
                            "Attempt to delete a user credential that does not exist".to_string(),
                        ),
                    );
                }
            }
        }
        changes.retain(|c| !refused.contains_key(user_of(c)));
        if changes.is_empty() {
            return refused;
        }
        match current.altered(&changes) {
            Ok(sasl::Altered {
                authenticator,
                not_durable,
            }) => {
                // The file holds the change either way: the broker follows it.
                *lock
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(authenticator);
                let users: std::collections::BTreeSet<&String> =
                    changes.iter().map(user_of).collect();
                if let Some(e) = not_durable {
                    tracing::error!(?users, error = %e, "SCRAM credentials altered and in force, but the users file may not survive a power loss");
                    let message =
                        format!("the change is in force but may not survive a power loss: {e}");
                    for c in &changes {
                        refused
                            .entry(user_of(c).clone())
                            .or_insert((codes::UNKNOWN_SERVER_ERROR, message.clone()));
                    }
                } else {
                    tracing::info!(
                        ?users,
                        "SCRAM credentials altered; the users file was rewritten"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "altering SCRAM credentials failed; nothing changed");
                let code = match e {
                    Error::InvalidConfig { .. } => codes::INVALID_REQUEST,
                    _ => codes::UNKNOWN_SERVER_ERROR,
                };
                for c in &changes {
                    refused
                        .entry(user_of(c).clone())
                        .or_insert((code, e.to_string()));
                }
            }
        }
        refused
    }

    /// Reads the TLS material and the SASL users again; what fails to load is
    /// logged and the previous one kept. The `streamline` binary calls it on
    /// every SIGHUP (Unix), from start-up on (recovery included): new
    /// connections get the new material.
    pub fn reload(&self, cfg: &crate::config::ServerConfig) {
        if let (Some(lock), Some(c)) = (&self.tls, &cfg.tls) {
            match tls::acceptor(c) {
                Ok(a) => {
                    *lock
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = a;
                    tracing::info!(cert = %c.cert.display(), "reloaded the TLS certificate and key");
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate")
                }
            }
        }
        if let (Some(lock), Some(c)) = (&self.sasl, &cfg.sasl) {
            let _file = self
                .users_file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match sasl::load(c) {
                Ok(a) => {
                    *lock
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(a);
                    tracing::info!(users = %c.users.display(), "reloaded the SASL users");
                }
                Err(e) => {
                    tracing::error!(error = %e, "SASL users reload failed; keeping the previous ones")
                }
            }
        }
        if self.tls.is_none() && self.sasl.is_none() {
            tracing::info!("SIGHUP: no TLS or SASL configured, nothing to reload");
        }
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    /// The `/metrics` listener and its bound address (`--metrics-listen`).
    metrics: Option<(TcpListener, SocketAddr)>,
    ctx: Arc<Ctx>,
    local: SocketAddr,
    max_connections: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the listener of `storage`'s configuration. The advertised address is
    /// `--advertised-addr` when set, else the bound address; bound to every
    /// interface (`0.0.0.0`, `[::]`), this machine's host name ([`wildcard_host`]).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(storage: TopicManager) -> Result<Server> {
        let security = Security::load(&storage.config().server)?;
        Server::bind_with(storage, security).await
    }

    /// [`Server::bind`] with the TLS and SASL material already loaded (shared
    /// with whoever reloads it, [`Security::reload`]).
    ///
    /// # Errors
    /// When the address cannot be bound, or an explicit `max_connections` is
    /// more than the open-file limit in force can hold beside the files open
    /// now ([`check_max_connections`]; the binary raises the limit first,
    /// [`raise_open_file_limit`], and an embedder may too).
    pub async fn bind_with(
        storage: TopicManager,
        security: impl Into<Arc<Security>>,
    ) -> Result<Server> {
        let security = security.into();
        let cfg = storage.config().server.clone();
        // Judged again with storage open: its segments and WAL files hold
        // descriptors that the check before recovery could not count.
        check_max_connections(&cfg, open_file_limit())?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::io("bind", std::path::PathBuf::from(cfg.listen.to_string()), e))?;
        let local = listener.local_addr().map_err(|e| {
            Error::io(
                "local_addr",
                std::path::PathBuf::from(cfg.listen.to_string()),
                e,
            )
        })?;
        let (host, port) = match cfg
            .advertised_addr
            .as_deref()
            .and_then(crate::config::parse_host_port)
        {
            Some((h, p)) => (h, i32::from(p)),
            None if listens_everywhere(local.ip()) => {
                (wildcard_host(local), i32::from(local.port()))
            }
            None => (local.ip().to_string(), i32::from(local.port())),
        };
        if security.sasl.is_some() && security.tls.is_none() {
            tracing::warn!("SASL without TLS: passwords (PLAIN) and sessions travel in the clear; set --tls-cert");
        }
        let metrics = match cfg.metrics_listen {
            Some(addr) => Some(metrics::bind(addr).await.map_err(|e| {
                Error::io(
                    "bind metrics",
                    std::path::PathBuf::from(addr.to_string()),
                    e,
                )
            })?),
            None => None,
        };
        let max_connections = cfg
            .max_connections
            .unwrap_or_else(|| default_max_connections(&cfg));
        // What connections may take is not the partitions' to take: the Kafka
        // ones, and the metrics endpoint's (its listener, the connections it
        // holds, the files each page it renders reads).
        storage.reserve_files_for_connections(
            max_connections.saturating_add(metrics_files(&cfg) as usize),
        );
        // Settings the checks before recovery accepted (a cache and
        // connections each within its half) may still leave no room.
        if let Err(crate::storage::CreateError::TooManyFiles(e)) = storage.check_files(1) {
            tracing::warn!(error = %e, "the open-file limit leaves no room for another partition: every topic create and growth will be refused");
        }
        // Membership lives beside the committed offsets (read off the runtime's
        // threads: one file per group).
        let groups = {
            let cfg = storage.config().groups.clone();
            let dir = storage
                .offsets()
                .dir()
                .join(crate::storage::group_meta::MEMBERS_DIR);
            let at = dir.clone();
            tokio::task::spawn_blocking(move || GroupCoordinator::open(&cfg, dir))
                .await
                .map_err(|e| Error::io("load group membership", at, std::io::Error::other(e)))??
        };
        let groups = Arc::new(groups);
        let ctx = Arc::new(Ctx {
            storage,
            groups,
            host,
            port,
            metrics: metrics::Metrics::new(),
            fetch_memory: fetch_memory::FetchMemory::new(cfg.fetch_response_memory_bytes),
            reads: Arc::new(tokio::sync::Semaphore::new(READS_AT_ONCE)),
            work: Arc::new(tokio::sync::Semaphore::new(WORK_AT_ONCE)),
            security,
            stopping: watch::Sender::new(false),
        });
        Ok(Server {
            listener,
            metrics,
            ctx,
            local,
            max_connections,
        })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The bound address of the `/metrics` endpoint, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets every connection
    /// finish the requests it already read (up to 10 s; a long-polling Fetch
    /// answers at once, as at its deadline), closes those still busy (a client
    /// that does not read its answers), and returns once every connection's
    /// tasks have ended: none holds storage any more. Storage is left open;
    /// the caller shuts it down. Signals are the caller's: the broker binary
    /// listens for them from its start, and reloads the TLS and SASL material on
    /// SIGHUP ([`Security::reload`]).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let stop_rx = self.ctx.stopping.subscribe();
        let all_done = Arc::new(Notify::new());
        let metrics_task = self.metrics.map(|(listener, addr)| {
            tracing::info!(%addr, "serving metrics at /metrics");
            tokio::spawn(metrics::serve(listener, Arc::clone(&self.ctx)))
        });
        let groups = Arc::clone(&self.ctx.groups);
        let storage = self.ctx.storage.clone();
        let stopping = self.ctx.stopping.subscribe();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            // A tick that overran (the coordinator's lock held long) is not
            // followed by a burst of ticks to catch up, each taking the lock
            // every group request waits for.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // The forgetting of empty groups without positions, when they
            // crowd (see `GroupCoordinator::tick`): one at a time, at most
            // one every `CROWDED_SWEEP_EVERY`.
            let mut sweep: Option<(tokio::task::JoinHandle<()>, tokio::time::Instant)> = None;
            loop {
                every.tick().await;
                let crowded = groups.tick();
                if crowded
                    && sweep.as_ref().is_none_or(|(task, started)| {
                        task.is_finished() && started.elapsed() >= CROWDED_SWEEP_EVERY
                    })
                {
                    let (g, s) = (Arc::clone(&groups), storage.clone());
                    let stopping = stopping.clone();
                    let task = tokio::task::spawn_blocking(move || {
                        let forgotten =
                            g.forget_empty_groups_until(s.offsets(), || *stopping.borrow());
                        if forgotten > 0 {
                            tracing::info!(
                                groups = forgotten,
                                "forgot empty groups without committed offsets early: more groups held than may be in use"
                            );
                        }
                    });
                    sweep = Some((task, tokio::time::Instant::now()));
                }
            }
        });
        // Stores the membership of groups that changed (emptied, a static member
        // replaced) on the blocking threads, one pass at a time, and every few
        // seconds tries again those whose store failed. SyncGroup stores its
        // own group before it answers.
        let membership = {
            let groups = Arc::clone(&self.ctx.groups);
            let mut stopping = self.ctx.stopping.subscribe();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = groups.membership_changed() => {}
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        changed = stopping.changed() => if changed.is_err() { return },
                    }
                    // Ended at a shutdown, which waits for the pass under way
                    // and stores the rest itself.
                    if *stopping.borrow() {
                        return;
                    }
                    let g = Arc::clone(&groups);
                    // A shutdown stops the pass before its next group: the
                    // shutdown's own pass stores the rest.
                    let stopping = stopping.clone();
                    let pass = move || g.store_changed_until(|| *stopping.borrow());
                    if let Err(e) = tokio::task::spawn_blocking(pass).await {
                        tracing::error!(error = %e, "storing group membership failed");
                    }
                }
            })
        };
        let expiry = {
            let groups = Arc::clone(&self.ctx.groups);
            let storage = self.ctx.storage.clone();
            let cfg = storage.config().groups.clone();
            let retention = Duration::from_secs(cfg.offsets_retention_minutes.saturating_mul(60));
            let stopping = self.ctx.stopping.subscribe();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(
                    cfg.offsets_retention_check_interval_ms,
                ));
                every.tick().await;
                loop {
                    every.tick().await;
                    let (g, s) = (Arc::clone(&groups), storage.clone());
                    let stopping = stopping.clone();
                    let run = tokio::task::spawn_blocking(move || {
                        let expired = g.expire_offsets_until(
                            s.offsets(),
                            retention,
                            crate::storage::moment::PassTime::now(),
                            || *stopping.borrow(),
                        );
                        let forgotten =
                            g.forget_empty_groups_until(s.offsets(), || *stopping.borrow());
                        if forgotten > 0 {
                            tracing::debug!(
                                groups = forgotten,
                                "forgot empty groups without committed offsets"
                            );
                        }
                        expired
                    });
                    match run.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "expiring committed offsets failed")
                        }
                        Err(e) => tracing::error!(error = %e, "offset expiry task failed"),
                    }
                }
            })
        };
        tracing::info!(addr = %self.local, advertised = %format!("{}:{}", self.ctx.host, self.ctx.port), max_connections = self.max_connections, tls = self.ctx.security.tls.is_some(), sasl = self.ctx.security.sasl.is_some(), "listening");
        // Whether the last connection accepted was refused (logged once per run of them).
        let mut refusing = false;
        // Every connection's task, so that those still busy when the shutdown
        // has waited long enough can be ended; reaped as they end.
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(ended) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = ended {
                        if e.is_panic() {
                            tracing::error!(error = %e, "a connection task panicked");
                        }
                    }
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) if self.ctx.metrics.open_connections.load(Ordering::Acquire) >= self.max_connections => {
                        // Closed at once: a connection held open here would take a file
                        // descriptor that storage may need for its next file.
                        drop(stream);
                        self.ctx.metrics.refused();
                        // A client at the limit can flip it at will (close one,
                        // open two).
                        static LIMIT: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
                        if !refusing {
                            refusing = true;
                            crate::log_limit::limited!(LIMIT => warn, %peer, max_connections = self.max_connections, "connection limit reached; closing new connections until one ends");
                        }
                    }
                    Ok((stream, peer)) => {
                        if refusing {
                            refusing = false;
                            crate::log_limit::limited!(info, "below the connection limit again");
                        }
                        let ctx = Arc::clone(&self.ctx);
                        let stop = stop_rx.clone();
                        let all_done = Arc::clone(&all_done);
                        ctx.metrics.accepted();
                        // Given back when the task and its writer have ended, by a
                        // panic or an abort too.
                        let slot = Arc::new(ConnectionSlot::take(&ctx, all_done));
                        let tls = self.ctx.security.tls();
                        connections.spawn(async move {
                            if let Err(e) = accept_connection(ctx, stream, peer, tls, stop, slot).await {
                                tracing::debug!(%peer, error = %e, "connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        crate::log_limit::limited!(warn, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        drop(self.listener);
        // No session expires while the server reads no heartbeat: ticking
        // on through the drain (up to 15 s) emptied groups whose members
        // were alive, and stored them so, where a kill -9 kept them.
        ticker.abort();
        self.ctx.stopping.send_replace(true);
        let live = &self.ctx.metrics.open_connections;
        let ended = || async {
            loop {
                let notified = all_done.notified();
                if live.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, ended()).await.is_err() {
            tracing::warn!(
                connections = live.load(Ordering::Acquire),
                "connections still busy after 10 s; closing them"
            );
            // Each task's future is dropped, and with it its socket, the
            // responses it holds (their Fetch response memory given back) and
            // its writer, aborted in turn ([`Aborting`]).
            connections.abort_all();
        }
        while connections.join_next().await.is_some() {}
        // The aborted writers end at their next turn on the runtime; each
        // holds its connection's slot until then.
        if tokio::time::timeout(Duration::from_secs(5), ended())
            .await
            .is_err()
        {
            tracing::error!(
                connections = live.load(Ordering::Acquire),
                "connection writers still running 5 s after they were aborted"
            );
        }
        // The pass under way ends before its next group: a group it is
        // storing is not due for the last pass below, which a process ended
        // right after would otherwise cut off mid-store.
        if let Err(e) = membership.await {
            tracing::error!(error = %e, "the group membership store task failed");
        }
        expiry.abort();
        // What changed since the last pass (a group emptied by the last
        // LeaveGroup, those a pass stopped by the shutdown left), logged: each
        // group is two fsyncs, and thousands take a while.
        let groups = Arc::clone(&self.ctx.groups);
        let last = tokio::task::spawn_blocking(move || {
            let changed = groups.changed_count();
            if changed > 0 {
                tracing::info!(
                    groups = changed,
                    "storing the membership of groups that changed"
                );
            }
            groups.store_changed();
        });
        if let Err(e) = last.await {
            tracing::error!(error = %e, "storing group membership failed");
        }
        if let Some(t) = metrics_task {
            t.abort();
        }
    }
}

/// Whether a listener bound to `ip` takes connections on every interface:
/// `0.0.0.0`, `[::]`, and `[::ffff:0.0.0.0]` (every IPv4 interface, on a v6
/// socket), which was advertised as such, so that remote clients were told
/// to connect to themselves.
fn listens_everywhere(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_unspecified()
}

/// The host advertised for a listener bound to every interface (`0.0.0.0`,
/// `[::]`, `[::ffff:0.0.0.0]`) without `--advertised-addr`: this machine's host name, as Kafka
/// advertises for a listener without a host, since the loopback address would
/// send every client elsewhere to itself. Logged as a warning, for clients must
/// resolve the name to an address of this machine; when the name cannot be read,
/// the loopback address, with a warning too.
fn wildcard_host(local: SocketAddr) -> String {
    if let Some(name) = host_name() {
        tracing::warn!(%local, advertised = %name, "listening on every interface without --advertised-addr: advertising this machine's host name, which clients must resolve to one of its addresses (set --advertised-addr otherwise)");
        return name;
    }
    let loopback = if local.ip().to_canonical().is_ipv4() {
        "127.0.0.1"
    } else {
        "::1"
    };
    tracing::warn!(%local, advertised = loopback, "listening on every interface without --advertised-addr, and this machine's host name cannot be read: advertising the loopback address, which only local clients can reach (set --advertised-addr)");
    loopback.to_string()
}

/// This machine's host name, unless it cannot be read or is empty.
#[cfg(unix)]
fn host_name() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?.into_string().ok()?;
    (!name.is_empty()).then_some(name)
}

/// This machine's host name, unless it cannot be read or is empty.
#[cfg(not(unix))]
fn host_name() -> Option<String> {
    std::env::var("COMPUTERNAME").ok().filter(|n| !n.is_empty())
}

/// Encodes a response frame: length, header, body.
pub(crate) fn encode_response<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Reply {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let r = header
        .encode(&mut buf, api_key.response_header_version(version))
        .and_then(|()| body.encode(&mut buf, version));
    if let Err(e) = r {
        // Left unanswered, the request would shift every later answer on the
        // connection to the wrong request: the connection closes instead.
        tracing::error!(?api_key, version, correlation_id, error = %e, "encoding a response failed; closing the connection");
        return close_connection();
    }
    let Ok(len) = i32::try_from(buf.len() - 4) else {
        // A length the frame's size field cannot hold would be sent wrapped.
        tracing::error!(
            ?api_key,
            version,
            correlation_id,
            bytes = buf.len(),
            "a response is too large to frame; closing the connection"
        );
        return close_connection();
    };
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Reply::frame(buf)
}

enum Frame {
    Data(Bytes),
    Eof,
    /// A length prefix past the limit (the message says which).
    Oversized(String),
}

/// Reads one length-prefixed frame of at most `max` bytes, once `in_flight` has
/// room for it (see [`conn::InFlight`]); the frame is then counted in flight.
async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    max: usize,
    in_flight: &conn::InFlight,
) -> std::io::Result<Frame> {
    let mut len = [0u8; 4];
    // A close between frames is the end of the connection, a TLS one without
    // close_notify too (rustls reports it as UnexpectedEof; kafka-python's
    // close never sends close_notify).
    match stream.read(&mut len).await {
        Ok(0) => return Ok(Frame::Eof),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Frame::Eof),
        Err(e) => return Err(e),
        Ok(n) => match stream.read_exact(&mut len[n..]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Frame::Eof),
            Err(e) => return Err(e),
        },
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > max {
        return Ok(Frame::Oversized(format!("frame of {len} bytes exceeds the limit of {max} (--max-request-bytes; 512 KiB before SASL authentication)")));
    }
    let len = len as usize;
    in_flight.room_for(len).await;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    in_flight.add(len);
    Ok(Frame::Data(Bytes::from(buf)))
}

/// How often, at most, [`Server::run`] forgets the empty groups without
/// positions while the coordinator holds more groups than may be in use
/// (see [`groups::GroupCoordinator::tick`]).
const CROWDED_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How long [`Server::run`] lets connections finish the requests they read
/// once it stops serving, before it closes them.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A spawned task aborted when this handle is dropped: a connection's writer
/// goes with its connection's task, aborted at shutdown included.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The largest frame read from a connection that has yet to pass SASL.
const MAX_UNAUTHENTICATED_FRAME: usize = 512 * 1024;

/// How long a client has for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted connection, after a TLS handshake when `tls` is set;
/// `slot` is held until its reader and writer have both ended.
async fn accept_connection(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
    slot: Arc<ConnectionSlot>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    // As Kafka's acceptor does: a peer whose host vanished is found out, so its
    // connection does not hold a slot forever (without an idle limit).
    #[cfg(unix)]
    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
    let activity = conn::Activity::new();
    let Some(tls) = tls else {
        let (rd, wr) = stream.into_split();
        let (rd, wr) = (
            conn::Metered::new(rd, &activity),
            conn::Metered::new(wr, &activity),
        );
        return serve_connection(ctx, rd, wr, peer, stop, activity, slot).await;
    };
    // Metered below TLS: every byte on the socket counts, whole records or not.
    let stream = conn::Metered::new(stream, &activity);
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.tls_failure();
            crate::log_limit::limited!(info, %peer, error = %e, "TLS handshake failed; closing connection");
            return Ok(());
        }
        Err(_) => {
            ctx.metrics.tls_failure();
            crate::log_limit::limited!(info, %peer, timeout_s = TLS_HANDSHAKE_TIMEOUT.as_secs(), "TLS handshake timed out; closing connection");
            return Ok(());
        }
    };
    let (rd, wr) = tokio::io::split(stream);
    serve_connection(ctx, rd, wr, peer, stop, activity, slot).await
}

/// Serves one connection: `rd` and `wr` are its two directions, metered by
/// `activity` (see [`conn`]). The connection closes at end of stream, on a bad
/// frame, at shutdown, and once idle for `--connections-max-idle-ms`: no byte read
/// or written and no response being computed, so a request that stops arriving
/// halfway or responses the client does not read do not hold it open. The
/// writer is a task of its own, which holds `slot` too and is aborted if this
/// future is dropped first.
async fn serve_connection<R, W>(
    ctx: Arc<Ctx>,
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    activity: Arc<conn::Activity>,
    slot: Arc<ConnectionSlot>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Each response with the size of its request's frame, released from
    // `in_flight` once the response is written, and whether it is dropped
    // unanswered when the client goes (see `Abandoned`).
    let (tx, mut rx) = mpsc::channel::<(Pending, usize, Abandoned)>(64);
    // Set once the reader has stopped for any reason but the server's stop
    // (the client closed its end or the connection failed; a bad frame or
    // request, or a response that closes the connection, ends it): a
    // response that waits for a group is then dropped, for no one can wait
    // for it, and a rebalance can take up to its timeout (i32::MAX ms),
    // holding the connection's slot. At the stop such a response is
    // answered NOT_COORDINATOR instead.
    let (gone_tx, gone) = watch::channel(false);
    // Set once the client closed its end or the connection failed: a read
    // (`Abandoned::WhenPeerGone`) is then dropped.
    let (peer_gone_tx, peer_gone) = watch::channel(false);
    // Whether the client closed its end, or the connection failed.
    let mut peer_closed = false;
    let mut stopped = false;
    let in_flight = Arc::new(conn::InFlight::default());
    let released = Arc::clone(&in_flight);
    let progress = Arc::clone(&activity);
    let writer_slot = Arc::clone(&slot);
    let mut writer = Aborting(tokio::spawn(async move {
        let _slot = writer_slot;
        let mut gone = gone;
        let mut peer_gone = peer_gone;
        // Set once a response was dropped unanswered: the later ones are
        // computed (a Produce is stored, a commit made) but not written, so
        // that what the client reads stays a prefix of its answers, as when
        // Kafka closes a connection, never one with a hole (a client that
        // only half-closed its end reads on, matching answers in order).
        let mut muted = false;
        let written = async {
            while let Some((p, len, abandoned)) = rx.recv().await {
                progress.computing();
                // Holds its Fetch response memory until dropped, after the
                // write, or when the task ends or is aborted.
                let reply = match abandoned {
                    Abandoned::Never => p.await,
                    // Polled first, once at least: the request takes effect
                    // in the group (a member joins, a leader's assignment is
                    // stored) whether or not its answer is still wanted, as
                    // in Kafka, which closes the connection at once. A read
                    // changes nothing.
                    Abandoned::WhenGone | Abandoned::WhenPeerGone => {
                        let signal = if abandoned == Abandoned::WhenGone {
                            &mut gone
                        } else {
                            &mut peer_gone
                        };
                        tokio::select! {
                            biased;
                            reply = p => reply,
                            Ok(_) = signal.wait_for(|g| *g) => {
                                progress.waiting();
                                released.release(len);
                                muted = true;
                                continue;
                            }
                        }
                    }
                };
                progress.writing();
                let close = reply.closes();
                if let Some(frame) = reply.frame.as_ref().filter(|f| !f.is_empty() && !muted) {
                    wr.write_all(frame).await?;
                    // TLS takes the bytes before they are all on the socket: the
                    // rest would wait for the next response, which a client
                    // waiting for this one never asks for.
                    wr.flush().await?;
                }
                drop(reply);
                progress.waiting();
                released.release(len);
                if close {
                    break;
                }
            }
            wr.shutdown().await
        }
        .await;
        released.close();
        written
    }));
    let cfg = &ctx.storage.config().server;
    let max = cfg.max_request_bytes;
    // Some while the connection still has to authenticate (SASL enabled).
    let mut unauthenticated = ctx.security.sasl.as_ref().map(|_| sasl::Session::default());
    // From the accept, for a connection that has to authenticate.
    let authenticate_within = Duration::from_millis(cfg.sasl_authentication_timeout_ms);
    let idle = (cfg.connections_max_idle_ms > 0)
        .then(|| Duration::from_millis(cfg.connections_max_idle_ms));
    let idle_closed = || {
        if activity.unread_response() {
            crate::log_limit::limited!(info, %peer, idle_ms = cfg.connections_max_idle_ms, "closing a connection whose client does not read its responses");
        } else {
            tracing::debug!(%peer, idle_ms = cfg.connections_max_idle_ms, "closing idle connection");
        }
    };
    // Done once the last request that changes topics or their configuration has
    // been answered (see `orders_produce`).
    let mut barrier: Option<oneshot::Receiver<()>> = None;
    // Clients that never authenticate can cause this at will (closing at
    // once while a login waits, say).
    let auth_closed = || {
        crate::log_limit::limited!(info, %peer, timeout_ms = cfg.sasl_authentication_timeout_ms, "closing a connection that did not authenticate in time");
    };
    let result = 'conn: loop {
        // Before authentication a frame may hold at most 512 KiB (Kafka's
        // `sasl.server.max.receive.size`): an unknown client cannot make the
        // broker allocate --max-request-bytes.
        let limit = if unauthenticated.is_some() {
            max.min(MAX_UNAUTHENTICATED_FRAME)
        } else {
            max
        };
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => {
                stopped = true;
                break 'conn Ok(());
            }
            // The writer ended early (a write failed, or a response closes the
            // connection): read no more.
            () = tx.closed() => break 'conn Ok(()),
            // Before any frame, which a flood of them would keep ready.
            () = activity.older_than(unauthenticated.is_some().then_some(authenticate_within)) => {
                auth_closed();
                writer.0.abort();
                break 'conn Ok(());
            }
            f = read_frame(&mut rd, limit, &in_flight) => f,
            () = activity.idle(idle) => {
                idle_closed();
                // Responses not yet written are dropped: the client is not reading.
                writer.0.abort();
                break 'conn Ok(());
            }
        };
        match frame {
            Ok(Frame::Eof) => {
                peer_closed = true;
                break Ok(());
            }
            Ok(Frame::Oversized(why)) => {
                crate::log_limit::limited!(warn, %peer, error = %why, "closing connection");
                ctx.metrics.bad_request();
                break Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
            }
            Err(e) => {
                // A read error, or a TLS record that does not decrypt or an
                // alert after the handshake (tokio-rustls reports those as
                // InvalidData; a plain socket never does): not a bad Kafka
                // request. A reset or a broken pipe is a client gone (a
                // health check closing with RST, say): debug.
                static LIMIT: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) {
                    tracing::debug!(%peer, error = %e, "closing connection");
                } else {
                    crate::log_limit::limited!(LIMIT => warn, %peer, error = %e, "closing connection");
                }
                if e.kind() == std::io::ErrorKind::InvalidData {
                    ctx.metrics.tls_error();
                } else {
                    peer_closed = true;
                }
                break Err(e);
            }
            Ok(Frame::Data(buf)) => {
                let len = buf.len();
                let key = buf.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
                // Responses are computed in order by the writer, but a Produce
                // is submitted to storage here, ahead of the requests queued
                // before it: it waits for the last one that changes what it
                // writes to, as Kafka, handling one request at a time, would.
                if key == Some(ApiKey::Produce as i16) {
                    if let Some(done) = barrier.take() {
                        tokio::select! {
                            biased;
                            _ = stop.changed() => {
                                stopped = true;
                                break 'conn Ok(());
                            }
                            () = tx.closed() => break 'conn Ok(()),
                            _ = done => {}
                            () = activity.idle(idle) => {
                                idle_closed();
                                writer.0.abort();
                                break 'conn Ok(());
                            }
                        }
                    }
                }
                let auth_limit = unauthenticated.is_some().then_some(authenticate_within);
                let dispatched = tokio::select! {
                    biased;
                    d = dispatch(&ctx, buf, peer, &mut unauthenticated) => d,
                    // A PLAIN login queued for its password derivation is still
                    // bound by the deadline (dropped, it gives up its place).
                    () = activity.older_than(auth_limit) => {
                        auth_closed();
                        writer.0.abort();
                        break 'conn Ok(());
                    }
                };
                // The time the reader spent on the request (a Produce waiting
                // for pipeline capacity, a login for its derivation) is not
                // idle time: taken for it, a Produce submitted after a long wait
                // was dropped unanswered with its connection, and retried into
                // a duplicate.
                activity.touch();
                match dispatched {
                    Ok((mut p, then_close, kept)) => {
                        // Counted with the frame until the answer is written:
                        // a Produce's state per partition is many times its
                        // bytes on the wire, and the Produces pipelined
                        // behind an answer the client does not read (or a
                        // long poll) would otherwise hold it beyond the
                        // connection's bound.
                        in_flight.add(kept);
                        let len = len + kept;
                        if key.is_some_and(orders_produce) {
                            let (done_tx, done) = oneshot::channel();
                            barrier = Some(done);
                            p = Box::pin(async move {
                                let response = p.await;
                                let _ = done_tx.send(());
                                response
                            });
                        }
                        // A full queue waits for the writer, which may wait for the
                        // client to read: an unauthenticated client that does
                        // not read is bound by the deadline here too (its
                        // ApiVersions answers queue without end).
                        let auth_limit = unauthenticated.is_some().then_some(authenticate_within);
                        let sent = tokio::select! {
                            biased;
                            r = tx.send((p, len, Abandoned::of(key))) => r.is_ok(),
                            () = activity.idle(idle) => {
                                idle_closed();
                                writer.0.abort();
                                break 'conn Ok(());
                            }
                            () = activity.older_than(auth_limit) => {
                                auth_closed();
                                writer.0.abort();
                                break 'conn Ok(());
                            }
                        };
                        if !sent || then_close {
                            break Ok(());
                        }
                    }
                    Err(msg) => {
                        crate::log_limit::limited!(warn, %peer, reason = %msg, "bad request; closing connection");
                        ctx.metrics.bad_request();
                        break Ok(());
                    }
                }
            }
        }
    };
    drop(tx);
    if !stopped {
        gone_tx.send_replace(true);
    }
    if peer_closed {
        peer_gone_tx.send_replace(true);
    }
    // The responses already asked for are written, unless the client stops
    // reading them (or, not authenticated, reaches its deadline).
    let auth_limit = unauthenticated.is_some().then_some(authenticate_within);
    let written = tokio::select! {
        w = &mut writer.0 => w,
        () = activity.idle(idle) => {
            idle_closed();
            writer.0.abort();
            return result;
        }
        () = activity.older_than(auth_limit) => {
            auth_closed();
            writer.0.abort();
            return result;
        }
    };
    match written {
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "write failed"),
        Err(e) if e.is_cancelled() => {}
        Err(e) => tracing::error!(%peer, error = %e, "writer task failed"),
        // Every response written and the connection's end sent: when the
        // broker ended it (a stop, a refused request) while the client may
        // still be sending, the socket is closed only once the client has
        // closed its end too. Closed with bytes unread, it would be reset,
        // and a reset discards the responses not yet delivered: a Produce
        // written to storage would look unanswered, and be sent again.
        Ok(Ok(())) if !peer_closed => linger(&mut rd).await,
        Ok(Ok(())) => {}
    }
    result
}

/// How long a connection the broker ends waits for its client to close its
/// end, after its last response ([`linger`]).
const LINGER: Duration = Duration::from_secs(1);

/// Reads and drops what the client still sends until it closes its end (or
/// the connection fails), for at most [`LINGER`], as web servers close a
/// connection they end ("lingering close"): a client sees the end of stream
/// after its last response, and closes.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Whether a request with API key `key` may wait for other members of its
/// consumer group, up to their rebalance timeout.
fn waits_for_group(key: i16) -> bool {
    key == ApiKey::JoinGroup as i16 || key == ApiKey::SyncGroup as i16
}

/// When a response is dropped unanswered, its client gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abandoned {
    /// Never: it is written, or the connection's end waits for it.
    Never,
    /// Once the reader has stopped for any reason but the server's stop: a
    /// response that waits for a group ([`waits_for_group`]).
    WhenGone,
    /// Once the client has closed its end or the connection failed: a read
    /// of the segments (Fetch, ListOffsets), which changes nothing and may
    /// wait long, for one of the [`READS_AT_ONCE`] reads to end (a stalled
    /// device) or for its long poll. Dropped, it gives up its place in that
    /// queue and its connection's slot; a read already running ends on its
    /// own. A connection the broker ends still answers it.
    WhenPeerGone,
}

impl Abandoned {
    fn of(key: Option<i16>) -> Abandoned {
        match key {
            Some(k) if waits_for_group(k) => Abandoned::WhenGone,
            Some(k) if k == ApiKey::Fetch as i16 || k == ApiKey::ListOffsets as i16 => {
                Abandoned::WhenPeerGone
            }
            _ => Abandoned::Never,
        }
    }
}

/// Whether a request with API key `key` changes what a later Produce on the same
/// connection writes to (its topics, partitions, limits or producer ids), so that
/// Produce must wait for it to be answered.
fn orders_produce(key: i16) -> bool {
    [
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::CreatePartitions,
        ApiKey::DeleteRecords,
        ApiKey::AlterConfigs,
        ApiKey::IncrementalAlterConfigs,
        ApiKey::InitProducerId,
    ]
    .iter()
    .any(|k| *k as i16 == key)
}

/// A connection's place among `--max-connections`: counted open from
/// [`ConnectionSlot::take`] until dropped, when the last one wakes a shutdown
/// waiting for connections to end.
struct ConnectionSlot {
    ctx: Arc<Ctx>,
    all_done: Arc<tokio::sync::Notify>,
}

impl ConnectionSlot {
    fn take(ctx: &Arc<Ctx>, all_done: Arc<tokio::sync::Notify>) -> ConnectionSlot {
        ctx.metrics.open_connections.fetch_add(1, Ordering::AcqRel);
        ConnectionSlot {
            ctx: Arc::clone(ctx),
            all_done,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if self
            .ctx
            .metrics
            .open_connections
            .fetch_sub(1, Ordering::AcqRel)
            == 1
        {
            self.all_done.notify_waiters();
        }
    }
}

/// The default connection limit: half the open files the process has left when
/// the server starts (storage has recovered by then, its segments open), leaving
/// the other half for storage to grow into. Without a limit to ask for
/// (non-Unix), 1,024.
fn default_max_connections(cfg: &crate::config::ServerConfig) -> usize {
    open_file_limit().map_or(1024, |limit| {
        connection_budget(limit, open_file_count().unwrap_or(0) + metrics_files(cfg))
    })
}

/// The descriptors the metrics endpoint may hold ([`metrics::FILES`]) when
/// `--metrics-listen` is set: counted as open by every judgement of the
/// open-file limit, so that neither connections nor storage count on them.
fn metrics_files(cfg: &crate::config::ServerConfig) -> u64 {
    if cfg.metrics_listen.is_some() {
        metrics::FILES as u64
    } else {
        0
    }
}

/// Refuses an explicit `--max-connections` (in `cfg`) above what the open-file
/// limit `limit` in force (see [`raise_open_file_limit`]) can hold: half of
/// what the files open now leave of it, the other half kept for storage. Idle
/// connections beyond that would take the descriptors the next WAL rotation or
/// segment roll needs, failing storage. Called once the limit is raised,
/// before storage opens (nothing is touched on disk then), and again when the
/// server binds, storage open: a data directory of many partitions holds many
/// of the limit's files.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `--max-connections`, the limit and the
/// largest value that fits.
pub fn check_max_connections(cfg: &crate::config::ServerConfig, limit: Option<u64>) -> Result<()> {
    let (Some(max), Some(limit)) = (cfg.max_connections, limit) else {
        return Ok(());
    };
    let open = open_file_count().unwrap_or(0) + metrics_files(cfg);
    let fits = connection_budget(limit, open);
    if max <= fits {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        field: "--max-connections",
        value: max.to_string(),
        reason: format!(
            "more connections than the open-file limit can hold: the limit is {limit} \
             open files (RLIMIT_NOFILE, raised at start to its hard limit where allowed), \
             {open} are open (or kept for the metrics endpoint, with --metrics-listen), and \
             connections may take half of the rest, storage needing the other half; \
             accepted values: 1 to {fits} (or raise the hard limit, e.g. ulimit -n)"
        ),
    })
}

/// Binds the Kafka listener's address and the metrics endpoint's (when set)
/// and lets them go, so that an address in use (another broker on the port)
/// stops the start before storage opens: recovery may take minutes, and a
/// new data directory gets a preallocated WAL file. The binds once storage is
/// open ([`Server::bind_with`]) may still fail, should another process take
/// the port meanwhile.
///
/// # Errors
/// The bind's error, naming the address.
pub fn probe_listen(cfg: &crate::config::ServerConfig) -> Result<()> {
    let bind = |what: &'static str, addr: std::net::SocketAddr| {
        std::net::TcpListener::bind(addr)
            .map_err(|e| Error::io(what, std::path::PathBuf::from(addr.to_string()), e))
    };
    let listener = bind("bind", cfg.listen)?;
    let metrics = cfg
        .metrics_listen
        .map(|addr| {
            // The configuration's check leaves pairs of different families
            // to the kernel: a v6 wildcard may hold the v4 port too.
            let what = if addr.port() == cfg.listen.port() {
                "bind metrics (on the port of --listen, whose address may hold it for both \
                 IPv4 and IPv6)"
            } else {
                "bind metrics"
            };
            bind(what, addr)
        })
        .transpose()?;
    drop((listener, metrics));
    Ok(())
}

/// Refuses an explicit `--segment-open-files` (in `storage`) above what the
/// open-file limit `limit` in force can hold beside the files open now: the
/// half of the rest that storage keeps, connections taking the other half
/// ([`check_max_connections`]). A cache that large could hold every
/// descriptor storage has, with connections holding theirs. Called once the
/// limit is raised, before storage opens (nothing is touched on disk then).
/// The default (a quarter of the limit, at most 256) is not judged. With an
/// explicit `--max-connections` too, the two together must leave room for
/// one partition's files beside storage's own.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `--segment-open-files`, the limit and the
/// largest value that fits (or what the two may take together).
pub fn check_segment_open_files(
    storage: &crate::config::StorageConfig,
    server: &crate::config::ServerConfig,
    limit: Option<u64>,
) -> Result<()> {
    let (Some(files), Some(limit)) = (storage.segment_open_files, limit) else {
        return Ok(());
    };
    let open = open_file_count().unwrap_or(0) + metrics_files(server);
    let fits = connection_budget(limit, open);
    if files <= fits {
        // Each within its half, both given may still leave no descriptor
        // for a single partition (every create and auto-create refused).
        let Some(connections) = server.max_connections else {
            return Ok(());
        };
        let room = limit
            .saturating_sub(open)
            .saturating_sub(crate::storage::topic_map::RESERVED_FILES)
            .saturating_sub(crate::storage::topic_map::FILES_PER_PARTITION);
        let wanted = (files as u64).saturating_add(connections as u64);
        if wanted <= room {
            return Ok(());
        }
        return Err(Error::InvalidConfig {
            field: "--segment-open-files",
            value: files.to_string(),
            reason: format!(
                "with --max-connections {connections} it leaves no open file for a \
                 partition: the limit is {limit} open files (RLIMIT_NOFILE, raised at start \
                 to its hard limit where allowed), {open} are open (or kept for the \
                 metrics endpoint, with --metrics-listen), {} are kept for storage's own \
                 files and a partition takes {}; the two may take {room} together (lower \
                 either, or raise the hard limit, e.g. ulimit -n)",
                crate::storage::topic_map::RESERVED_FILES,
                crate::storage::topic_map::FILES_PER_PARTITION
            ),
        });
    }
    Err(Error::InvalidConfig {
        field: "--segment-open-files",
        value: files.to_string(),
        reason: format!(
            "more cached segment read handles than the open-file limit can hold: the limit \
             is {limit} open files (RLIMIT_NOFILE, raised at start to its hard limit where \
             allowed), {open} are open (or kept for the metrics endpoint, with \
             --metrics-listen), and storage's files, the cache among them, may take \
             half of the rest, connections needing the other half; accepted values: 1 to \
             {fits} (or raise the hard limit, e.g. ulimit -n)"
        ),
    })
}

/// Half of what `used` leaves of `limit` open files, at least 1.
fn connection_budget(limit: u64, used: u64) -> usize {
    usize::try_from(limit.saturating_sub(used) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// How many files the process has open, where the system lists them.
fn open_file_count() -> Option<u64> {
    ["/proc/self/fd", "/dev/fd"]
        .iter()
        .find_map(|dir| listed_open_files(Path::new(dir)))
}

/// How many files `dir` lists as open, when it can be trusted to list them
/// all: it must list a probe descriptor numbered 3 or more, held open while it
/// is read (FreeBSD's `/dev/fd` without fdescfs mounted lists 0 to 2 whatever
/// is open, and counting those made the open-file budget ignore every open
/// file).
#[cfg(unix)]
fn listed_open_files(dir: &Path) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // `try_clone` duplicates to the lowest free descriptor at or above 3.
    let probe = std::fs::File::open("/dev/null").ok()?.try_clone().ok()?;
    let probe_name = probe.as_raw_fd().to_string();
    let mut listed = 0u64;
    let mut probe_seen = false;
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        probe_seen |= entry.file_name() == probe_name.as_str();
        listed += 1;
    }
    // The listing's own descriptor and the probe are among those listed.
    probe_seen.then(|| listed.saturating_sub(2))
}

#[cfg(not(unix))]
fn listed_open_files(_dir: &Path) -> Option<u64> {
    None
}

/// The soft limit on open files (`RLIMIT_NOFILE`), when there is one.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft == RLIM_INFINITY {
        return None;
    }
    rlim_to_u64(soft)
}

/// `rlim_t` is unsigned on Linux and macOS, signed on the BSDs.
#[cfg(unix)]
#[allow(
    clippy::useless_conversion,
    reason = "the conversion is the identity only where rlim_t is u64"
)]
fn rlim_to_u64(v: nix::libc::rlim_t) -> Option<u64> {
    u64::try_from(v).ok()
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// Raises the soft limit on open files to the hard limit, as the JVM does for
/// Kafka: every active segment holds two files open, sealed segments' reads a
/// bounded number (`--segment-open-files`), every connection one, and the
/// usual soft limit of 1,024 is soon reached. Returns the soft limit in force.
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        // macOS refuses more than OPEN_MAX (10,240) for the soft limit, and its
        // hard limit is often unlimited: that much is asked for then, as the
        // JVM does; failing that, what is in force is kept.
        const OPEN_MAX: nix::libc::rlim_t = 10_240;
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            let fallback = hard.min(OPEN_MAX);
            if fallback <= soft || setrlimit(Resource::RLIMIT_NOFILE, fallback, hard).is_err() {
                tracing::debug!(soft, hard, error = %e, "could not raise the open-file limit");
                return rlim_to_u64(soft);
            }
        }
    }
    open_file_limit()
}

/// Without `RLIMIT_NOFILE`: nothing to raise.
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<u64> {
    None
}

/// The APIs and versions this broker serves: (key, min, max), intersected with what
/// the codec crate supports.
pub(crate) fn supported_apis() -> Vec<(ApiKey, i16, i16)> {
    let wanted = [
        (ApiKey::Produce, 3, 9),
        (ApiKey::Fetch, 4, 12),
        (ApiKey::ListOffsets, 1, 7),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::OffsetCommit, 2, 7),
        (ApiKey::OffsetFetch, 1, 7),
        (ApiKey::FindCoordinator, 0, 3),
        (ApiKey::JoinGroup, 0, 5),
        (ApiKey::Heartbeat, 0, 3),
        (ApiKey::LeaveGroup, 0, 3),
        (ApiKey::SyncGroup, 0, 3),
        (ApiKey::DescribeGroups, 0, 5),
        (ApiKey::ListGroups, 0, 5),
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::CreateTopics, 2, 7),
        (ApiKey::DeleteTopics, 1, 6),
        (ApiKey::DeleteGroups, 0, 2),
        (ApiKey::OffsetDelete, 0, 0),
        (ApiKey::InitProducerId, 0, 4),
        (ApiKey::DescribeConfigs, 1, 4),
        (ApiKey::CreatePartitions, 0, 3),
        (ApiKey::DeleteRecords, 0, 2),
        (ApiKey::DescribeLogDirs, 1, 4),
        (ApiKey::AlterConfigs, 0, 2),
        (ApiKey::IncrementalAlterConfigs, 0, 1),
        (ApiKey::DescribeCluster, 0, 2),
        (ApiKey::DescribeTopicPartitions, 0, 0),
        // Without an authorizer: SECURITY_DISABLED, as Kafka answers.
        (ApiKey::DescribeAcls, 1, 3),
        (ApiKey::CreateAcls, 1, 3),
        (ApiKey::DeleteAcls, 1, 3),
        (ApiKey::DescribeProducers, 0, 0),
        (ApiKey::ElectLeaders, 0, 2),
        (ApiKey::ListPartitionReassignments, 0, 0),
        (ApiKey::ListTransactions, 0, 1),
        // v0: raw SASL tokens follow the handshake, outside Kafka's framing.
        (ApiKey::SaslHandshake, 0, 1),
        (ApiKey::SaslAuthenticate, 0, 2),
        (ApiKey::DescribeUserScramCredentials, 0, 0),
        (ApiKey::AlterUserScramCredentials, 0, 0),
    ];
    wanted
        .into_iter()
        .filter_map(|(k, lo, hi)| {
            let v = k.valid_versions();
            let (lo, hi) = (lo.max(v.min), hi.min(v.max));
            (lo <= hi).then_some((k, lo, hi))
        })
        .collect()
}

/// Every (API key, lowest version, highest version) this broker serves.
pub fn supported_api_versions() -> Vec<(i16, i16, i16)> {
    supported_apis()
        .into_iter()
        .map(|(k, lo, hi)| (k as i16, lo, hi))
        .collect()
}

/// A request frame, decoded.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once per request and consumed at once"
)]
pub enum Decoded {
    /// A request of an API and version this broker serves.
    Request(RequestHeader, RequestKind),
    /// ApiVersions at a version this broker does not serve: answered with error 35
    /// and a v0 body so the client retries with a listed version.
    UnsupportedApiVersions {
        /// The request's correlation id.
        correlation_id: i32,
    },
}

/// Decodes one request frame (without its length prefix). Every failure is an
/// error message for the log; arbitrary bytes never panic (see the property test
/// `tests/kafka_decode.rs`).
///
/// # Errors
/// Frames shorter than a header, unknown API keys, versions outside the advertised
/// ranges, malformed headers or bodies, lists longer than
/// [`listed::MAX_LISTED`], and tagged sections of more than
/// [`listed::MAX_TAGGED`] fields (or more than [`listed::MAX_LISTED`] over a
/// request).
pub fn decode_request(frame: Bytes) -> std::result::Result<Decoded, String> {
    if frame.len() < 8 {
        return Err(format!(
            "request frame of {} bytes is shorter than a header",
            frame.len()
        ));
    }
    let mut peek = &frame[..8];
    let key = peek.get_i16();
    let version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let api_key = ApiKey::try_from(key).map_err(|()| format!("unknown API key {key}"))?;
    let supported = supported_apis().into_iter().find(|(k, _, _)| *k == api_key);
    let in_range = supported.is_some_and(|(_, lo, hi)| (lo..=hi).contains(&version));
    if !in_range {
        if api_key == ApiKey::ApiVersions {
            return Ok(Decoded::UnsupportedApiVersions { correlation_id });
        }
        return Err(format!("{api_key:?} v{version} is not supported"));
    }
    listed::check_header(api_key, version, &frame)?;
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| format!("malformed {api_key:?} v{version} request header: {e}"))?;
    listed::check(api_key, version, &buf)?;
    let request = RequestKind::decode(api_key, &mut buf, version)
        .map_err(|e| format!("malformed {api_key:?} v{version} request: {e}"))?;
    Ok(Decoded::Request(header, request))
}

/// Why a connection yet to authenticate is closed at an ApiVersions.
const API_VERSIONS_AGAIN: &str =
    "ApiVersions again, or after SaslHandshake, before SASL authentication";

/// Decodes one request frame from the client at `peer` and starts handling it.
/// `unauthenticated` is `Some` while the connection has yet to pass SASL. Returns
/// the response and whether the connection closes after it; `Err` closes it at
/// once.
async fn dispatch(
    ctx: &Arc<Ctx>,
    frame: Bytes,
    peer: SocketAddr,
    unauthenticated: &mut Option<sasl::Session>,
) -> std::result::Result<(Pending, bool, usize), String> {
    let len = frame.len() + 4;
    if unauthenticated.as_ref().is_some_and(|s| s.raw_tokens) {
        let (pending, close) = handlers::sasl::raw_token(ctx, &frame, unauthenticated, peer).await;
        return Ok((pending, close, 0));
    }
    // Before authentication only three APIs are served: any other is refused
    // by its key, before its body is decoded (a Metadata of 100,000 topic
    // names cost some 31 ms of CPU and 48 MB to decode), as Kafka's
    // authenticator reads only the header.
    if unauthenticated.is_some() && frame.len() >= 2 {
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let served = [
            ApiKey::ApiVersions,
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
        ];
        if !served.iter().any(|&a| a as i16 == key) {
            return Err(format!(
                "{} before SASL authentication",
                ApiKey::try_from(key)
                    .map_or_else(|()| format!("API key {key}"), |a| format!("{a:?}"))
            ));
        }
    }
    // Decoded here whatever it is, so that a malformed request closes the
    // connection before any later one is read (a Produce behind it is never
    // written), as Kafka, reading one request at a time, does.
    match decode_request(frame.clone())? {
        Decoded::UnsupportedApiVersions { correlation_id } => {
            if unauthenticated
                .as_mut()
                .is_some_and(|s| !s.api_versions(false))
            {
                return Err(API_VERSIONS_AGAIN.into());
            }
            let body = handlers::api_versions_body(codes::UNSUPPORTED_VERSION);
            let resp = encode_response(ApiKey::ApiVersions, 0, correlation_id, &body);
            Ok((Box::pin(async move { resp }), false, 0))
        }
        Decoded::Request(header, request) => {
            let started = std::time::Instant::now();
            let api = ApiKey::try_from(header.request_api_key).ok();
            let (version, cid) = (header.request_api_version, header.correlation_id);
            // The bytes the answer to come keeps beyond the frame: a Produce's
            // state per partition (the others are decoded in turn).
            let mut kept = 0;
            let (pending, then_close): (Pending, bool) = match request {
                RequestKind::SaslHandshake(req) => {
                    let (r, close) = handlers::sasl::handshake(ctx, &req, unauthenticated);
                    if version == 0 && r.error_code == codes::NONE {
                        if let Some(s) = unauthenticated.as_mut() {
                            s.raw_tokens = true;
                        }
                    }
                    let resp = encode_response(ApiKey::SaslHandshake, version, cid, &r);
                    // A refusal that closes is a failed authentication:
                    // answered late, as Kafka answers it.
                    (handlers::sasl::answer(ctx, resp, close, started), close)
                }
                RequestKind::SaslAuthenticate(req) => {
                    let (r, close) =
                        handlers::sasl::authenticate(ctx, &req, unauthenticated, peer).await;
                    let resp = encode_response(ApiKey::SaslAuthenticate, version, cid, &r);
                    (handlers::sasl::answer(ctx, resp, close, started), close)
                }
                RequestKind::ApiVersions(req) => {
                    // One that names its client software wrongly is answered
                    // INVALID_REQUEST, and may be sent again, as Kafka's
                    // authenticator allows.
                    let valid = handlers::names_valid(&req, version);
                    if unauthenticated
                        .as_mut()
                        .is_some_and(|s| !s.api_versions(valid))
                    {
                        return Err(API_VERSIONS_AGAIN.into());
                    }
                    (in_turn(ctx, frame, peer, started), false)
                }
                _ if unauthenticated.is_some() => {
                    return Err(format!(
                        "{} before SASL authentication",
                        api.map_or_else(|| "request".to_string(), |a| format!("{a:?}"))
                    ));
                }
                // Submitted to storage here, in the order read.
                RequestKind::Produce(req) => {
                    let (pending, close, state) = handlers::produce(ctx, &header, req).await;
                    kept = state;
                    (pending, close)
                }
                _ => (in_turn(ctx, frame, peer, started), false),
            };
            let ctx = Arc::clone(ctx);
            Ok((
                Box::pin(async move {
                    let response = pending.await;
                    if let Some(api) = api {
                        ctx.metrics
                            .request(api, len, response.len(), started.elapsed());
                    }
                    response
                }),
                then_close,
                kept,
            ))
        }
    }
}

/// The answer to a request that the reader decoded (so checked) and let go:
/// decoded again, and handled, once the connection's writer reaches it. The
/// requests queued behind a slow one (a long poll, an answer the client does
/// not read) then hold their frames, which count in flight, and not what the
/// frames decode into: a Metadata v9 topic of 4 bytes (an empty name, one
/// unknown tagged field) decodes into some 470. `arrived` is when the reader
/// read it.
fn in_turn(ctx: &Arc<Ctx>, frame: Bytes, peer: SocketAddr, arrived: std::time::Instant) -> Pending {
    let ctx = Arc::clone(ctx);
    Box::pin(async move {
        match decode_request(frame) {
            Ok(Decoded::Request(header, request)) => {
                let (pending, _) = handlers::handle(&ctx, header, request, peer, arrived).await;
                pending.await
            }
            // Not reached: the reader decoded the same bytes.
            other => {
                tracing::error!(%peer, error = ?other.err(), "a request that decoded once did not decode again; closing the connection");
                close_connection()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::{
        messages::{
            describe_configs_request::DescribeConfigsResource, ApiVersionsRequest,
            DescribeConfigsRequest,
        },
        protocol::{Decodable, Encodable, StrBytes},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Before authentication, a request other than the three served was
    /// decoded whole before it was refused: one Metadata of 100,000 topic
    /// names cost some 31 ms of CPU and 48 MB, for a client that never logs
    /// in. It is refused by its key, its body unread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_before_authentication_are_refused_by_their_key_undecoded() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        // Metadata v9 (key 3), correlation id 7, then bytes that do not decode.
        let mut frame = vec![0, 3, 0, 9, 0, 0, 0, 7];
        frame.extend([0xff; 64]);
        let refusal = |frame: Vec<u8>, session: Option<sasl::Session>| {
            let ctx = Arc::clone(&ctx);
            async move {
                let mut session = session;
                dispatch(&ctx, Bytes::from(frame), peer, &mut session)
                    .await
                    .err()
                    .expect("refused")
            }
        };
        assert_eq!(
            refusal(frame.clone(), Some(sasl::Session::default())).await,
            "Metadata before SASL authentication"
        );
        // Authenticated, the same frame is decoded, and found malformed.
        let malformed = refusal(frame.clone(), None).await;
        assert!(!malformed.contains("SASL"), "{malformed}");
        // A key no API has.
        frame[..2].copy_from_slice(&0x7f7f_i16.to_be_bytes());
        assert_eq!(
            refusal(frame, Some(sasl::Session::default())).await,
            "API key 32639 before SASL authentication"
        );
    }

    /// A server context over a fresh data directory in `dir`.
    async fn ctx(dir: &std::path::Path) -> Arc<Ctx> {
        ctx_with(dir, crate::config::Config::default()).await
    }

    /// A server context with `config` over a fresh data directory in `dir`,
    /// listening on a free port.
    pub(crate) async fn ctx_with(
        dir: &std::path::Path,
        mut config: crate::config::Config,
    ) -> Arc<Ctx> {
        config.storage.data_dir = dir.to_path_buf();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        // Groups form at once: no ticker runs to end the first rebalance's wait.
        config.groups.initial_rebalance_delay_ms = 0;
        let storage = tokio::task::spawn_blocking(move || TopicManager::new(config))
            .await
            .unwrap()
            .unwrap();
        Arc::clone(&Server::bind(storage).await.unwrap().ctx)
    }

    /// A request frame: size, header (`client_id`), body.
    fn frame<B: Encodable>(api_key: ApiKey, version: i16, client_id: &str, body: &B) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_string(client_id.to_string())))
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = i32::try_from(buf.len() - 4).unwrap();
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf.to_vec()
    }

    /// Serves one in-memory connection whose writes reach the client only when
    /// flushed (as over TLS, where the last bytes of a write can stay in the
    /// session until the next one); returns the client's end.
    fn serve_in_memory(ctx: Arc<Ctx>) -> (tokio::io::DuplexStream, watch::Sender<bool>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (rd, wr) = tokio::io::split(server);
        let wr = tokio::io::BufWriter::with_capacity(1 << 20, wr);
        let (stop_tx, stop) = watch::channel(false);
        let peer = "127.0.0.1:1".parse().unwrap();
        let slot = slot(&ctx);
        tokio::spawn(serve_connection(
            ctx,
            rd,
            wr,
            peer,
            stop,
            conn::Activity::new(),
            slot,
        ));
        (client, stop_tx)
    }

    /// A connection's place among `--max-connections`, as the server takes it.
    fn slot(ctx: &Arc<Ctx>) -> Arc<ConnectionSlot> {
        Arc::new(ConnectionSlot::take(ctx, Arc::new(Notify::new())))
    }

    /// Serves one in-memory connection as [`accept_connection`] does (every
    /// byte read or written counts as activity), through a pipe that holds
    /// `capacity` bytes: a client that does not read stops the writer once
    /// that much is written.
    fn serve_pipe(ctx: Arc<Ctx>, capacity: usize) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(capacity);
        let (rd, wr) = tokio::io::split(server);
        let activity = conn::Activity::new();
        let (rd, wr) = (
            conn::Metered::new(rd, &activity),
            conn::Metered::new(wr, &activity),
        );
        let (stop_tx, stop) = watch::channel(false);
        let peer = "127.0.0.1:1".parse().unwrap();
        let slot = slot(&ctx);
        tokio::spawn(async move {
            // No shutdown while the connection lasts.
            let _stop = stop_tx;
            serve_connection(ctx, rd, wr, peer, stop, activity, slot).await
        });
        client
    }

    /// A Fetch of partition 0 of `t` from offset 0, answering at once, for up
    /// to `max_bytes` (the partition too).
    fn fetch_frame(max_bytes: i32) -> Vec<u8> {
        fetch_frame_waiting(max_bytes, 1, 0)
    }

    /// [`fetch_frame`] waiting up to `max_wait_ms` for `min_bytes`.
    fn fetch_frame_waiting(max_bytes: i32, min_bytes: i32, max_wait_ms: i32) -> Vec<u8> {
        use kafka_protocol::messages::{
            fetch_request::{FetchPartition, FetchTopic},
            BrokerId, FetchRequest, TopicName,
        };
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(max_bytes)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(max_bytes)])]);
        frame(ApiKey::Fetch, 12, "c", &req)
    }

    /// Reads one Fetch v12 response off `client`: the bytes of its records.
    async fn fetched_records(client: &mut tokio::io::DuplexStream) -> usize {
        use kafka_protocol::messages::FetchResponse;
        let mut len = [0u8; 4];
        client.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(len)).unwrap()];
        client.read_exact(&mut body).await.unwrap();
        let mut b = Bytes::from(body);
        ResponseHeader::decode(&mut b, ApiKey::Fetch.response_header_version(12)).unwrap();
        let r = FetchResponse::decode(&mut b, 12).unwrap();
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, codes::NONE);
        p.records.as_ref().map_or(0, Bytes::len)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_do_not_read_their_fetches_hold_at_most_the_budget_plus_a_batch_each() {
        const BUDGET: u64 = 64 << 10;
        let dir = tempfile::tempdir().unwrap();
        let mut c = crate::config::Config::default();
        c.server.fetch_response_memory_bytes = BUDGET;
        c.server.connections_max_idle_ms = 2000;
        let ctx = ctx_with(dir.path(), c).await;
        // 256 KiB of records in 16 batches.
        let storage = ctx.storage.clone();
        tokio::task::spawn_blocking(move || storage.create_topic("t", 1).map(drop))
            .await
            .unwrap()
            .unwrap();
        let value = vec![7u8; 16 << 10];
        let batch = crate::storage::batch::tests::make_batch(0, &[&value]);
        for _ in 0..16 {
            let acked = ctx
                .storage
                .submit("t", 0, &batch, Duration::from_secs(5))
                .await
                .unwrap();
            acked.await.unwrap().unwrap();
        }

        // Three clients ask for 1 MiB each and read only the length of the
        // answer: every answer is then computed and held, none written out.
        let mut slow = Vec::new();
        let mut held = 0usize;
        for _ in 0..3 {
            let mut c = serve_pipe(Arc::clone(&ctx), 1024);
            c.write_all(&fetch_frame(1 << 20)).await.unwrap();
            let mut len = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut len))
                .await
                .expect("answered at once, whatever the budget")
                .unwrap();
            held += usize::try_from(i32::from_be_bytes(len)).unwrap();
            slow.push(c);
        }
        // Each answer's header and partition fields are well under 1 KiB.
        let bound = usize::try_from(BUDGET).unwrap() + 3 * (batch.len() + 1024);
        assert!(
            held <= bound,
            "{held} bytes of answers held at once, above the budget plus a batch each ({bound})"
        );
        let in_use = ctx.fetch_memory.in_use();
        assert!(
            in_use > BUDGET && in_use <= BUDGET + 3 * batch.len() as u64,
            "{in_use} bytes counted in use"
        );
        let cut = ctx.metrics.fetches_cut_by_memory();
        assert!(cut >= 2, "{cut} fetches counted as cut short by the budget");
        let page = {
            let ctx = Arc::clone(&ctx);
            tokio::task::spawn_blocking(move || metrics::render(&ctx))
                .await
                .unwrap()
        };
        for line in [
            format!("streamline_fetch_response_memory_bytes {in_use}"),
            format!("streamline_fetch_response_memory_limit_bytes {BUDGET}"),
            format!("streamline_fetch_cut_by_memory_total {cut}"),
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }

        // Another client is still answered with records: the first batch.
        let mut reader = serve_pipe(Arc::clone(&ctx), 1 << 20);
        reader.write_all(&fetch_frame(1 << 20)).await.unwrap();
        let records = tokio::time::timeout(Duration::from_secs(5), fetched_records(&mut reader))
            .await
            .expect("answered while the budget is spent");
        assert_eq!(records, batch.len(), "exactly the first batch");
        // One waiting for more than a batch is answered at once too: what the
        // budget left out is there to read, and no change would come to end
        // its wait before `max_wait`.
        reader
            .write_all(&fetch_frame_waiting(1 << 20, 100 << 10, 20_000))
            .await
            .unwrap();
        let records = tokio::time::timeout(Duration::from_secs(10), fetched_records(&mut reader))
            .await
            .expect("answered without sitting out max_wait");
        assert_eq!(records, batch.len(), "the first batch again");

        // One slow client goes away (its writer fails), the others are closed
        // as idle (their writers aborted): every byte comes back.
        drop(slow.remove(0));
        tokio::time::timeout(Duration::from_secs(10), async {
            while ctx.fetch_memory.in_use() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} bytes still counted in use after every answer was written or dropped",
                ctx.fetch_memory.in_use()
            )
        });
        // With the budget free again a client gets the whole budget's worth.
        let mut reader = serve_pipe(Arc::clone(&ctx), 1 << 20);
        reader.write_all(&fetch_frame(1 << 20)).await.unwrap();
        let records = tokio::time::timeout(Duration::from_secs(5), fetched_records(&mut reader))
            .await
            .expect("answered");
        let fit = usize::try_from(BUDGET).unwrap() / batch.len();
        assert_eq!(records, fit * batch.len());
        drop(slow);
    }

    /// A v4-mapped wildcard listens on every IPv4 interface, and is advertised
    /// as a wildcard is (this machine's host name), not as itself.
    #[test]
    fn every_spelling_of_the_wildcard_listens_everywhere() {
        for (ip, everywhere) in [
            ("0.0.0.0", true),
            ("::", true),
            ("::ffff:0.0.0.0", true),
            ("127.0.0.1", false),
            ("::ffff:127.0.0.1", false),
            ("::1", false),
        ] {
            assert_eq!(listens_everywhere(ip.parse().unwrap()), everywhere, "{ip}");
        }
    }

    /// A users file renamed into place whose directory fsync then fails holds
    /// the change: it was answered as refused with nothing changed, while the
    /// next SIGHUP or restart put it in force. It is in force at once now,
    /// and the answer says it may not survive a power loss.
    #[test]
    fn scram_changes_in_the_file_are_in_force_when_the_directory_fsync_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, r#"{"user": "pencil"}"#).unwrap();
        let m = sasl::Mechanism::ScramSha256;
        let security = Security {
            tls: None,
            sasl: Some(std::sync::RwLock::new(Arc::new(
                sasl::Authenticator::load(&path, &[m]).unwrap(),
            ))),
            users_file: std::sync::Mutex::new(()),
        };
        let change = |user: &str| sasl::ScramChange::Upsert {
            user: user.into(),
            mechanism: m,
            iterations: 5000,
            salt: b"salt".to_vec(),
            salted_password: vec![7; 32],
        };
        sasl::FAIL_USERS_DIR_SYNC.with(|f| f.set(true));
        let answered = security.alter_scram(vec![change("zed")]);
        let (code, message) = &answered["zed"];
        assert_eq!(*code, codes::UNKNOWN_SERVER_ERROR);
        assert!(
            message.contains("in force") && message.contains("users.json"),
            "{message}"
        );
        let now = security.sasl().unwrap();
        assert_eq!(now.scram_credentials("zed").unwrap(), [(m, 5000)]);
        let file = sasl::Authenticator::load(&path, &[m]).unwrap();
        assert_eq!(file.user_names(), now.user_names());
        // A write that fails before its rename changes nothing.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let answered = security.alter_scram(vec![change("amy")]);
        assert_eq!(answered["amy"].0, codes::UNKNOWN_SERVER_ERROR);
        assert!(security.sasl().unwrap().scram_credentials("amy").is_none());
    }

    /// A Fetch of a partition whose lock is held (an append holds it through
    /// a segment roll's `fdatasync`) waits on a blocking thread, not on one of
    /// the runtime's workers: with a single worker, another connection is still
    /// answered while the lock is held.
    #[test]
    fn a_fetch_waiting_for_its_partitions_lock_leaves_the_workers_serving() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let ctx = ctx(dir.path()).await;
            let storage = ctx.storage.clone();
            tokio::task::spawn_blocking(move || storage.create_topic("t", 1).map(drop))
                .await
                .unwrap()
                .unwrap();
            let value = vec![3u8; 100];
            let batch = crate::storage::batch::tests::make_batch(0, &[&value]);
            let acked = ctx
                .storage
                .submit("t", 0, &batch, Duration::from_secs(5))
                .await
                .unwrap();
            acked.await.unwrap().unwrap();

            // The lock is held until this thread lets it go, once the other
            // connection was answered, so what is checked follows from the
            // order of events, not from how soon a thread wakes up. The holder
            // gives up after 10 s on its own (and says so), so that a Fetch
            // holding the only worker fails the test instead of hanging it.
            let partition = ctx.storage.partition("t", 0).unwrap();
            let (held_tx, held) = std::sync::mpsc::channel();
            let (release, release_rx) = std::sync::mpsc::channel::<()>();
            let holder = std::thread::spawn(move || {
                let _log = partition.hold_log();
                held_tx.send(()).unwrap();
                release_rx.recv_timeout(Duration::from_secs(10)).is_ok()
            });
            held.recv().unwrap();
            let (mut fetcher, _stop_fetcher) = serve_in_memory(Arc::clone(&ctx));
            fetcher.write_all(&fetch_frame(1 << 20)).await.unwrap();
            // The Fetch's answer is read as soon as it comes, and its arrival
            // is timed.
            let fetched = tokio::spawn(async move {
                let records = fetched_records(&mut fetcher).await;
                (records, std::time::Instant::now())
            });
            // The worker takes the Fetch up meanwhile (this thread is not a
            // worker: blocking it stops nothing).
            std::thread::sleep(Duration::from_millis(300));
            let (mut other, _stop_other) = serve_in_memory(Arc::clone(&ctx));
            other
                .write_all(&frame(ApiKey::ApiVersions, 3, "c", &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0"))))
                .await
                .unwrap();
            let mut len = [0u8; 4];
            other.read_exact(&mut len).await.unwrap();
            assert!(i32::from_be_bytes(len) > 0);
            let released = std::time::Instant::now();
            // The holder may have given up already: then nothing receives this.
            let _ = release.send(());
            assert!(
                holder.join().unwrap(),
                "ApiVersions was answered only once the partition lock was let go: a Fetch waiting for it held the only worker"
            );
            // The Fetch is answered once the lock is free, with the batch.
            let (records, answered) = tokio::time::timeout(Duration::from_secs(10), fetched)
                .await
                .expect("the Fetch is answered once the lock is free")
                .unwrap();
            assert_eq!(records, batch.len());
            assert!(
                answered >= released,
                "the Fetch was answered while its partition's lock was held"
            );
        });
    }

    /// ApiVersions v3 names its client software; Kafka answers a name or
    /// version outside `[a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?`
    /// INVALID_REQUEST, listing no API. Every one was answered as valid.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_versions_v3_with_invalid_client_software_names_is_refused() {
        use kafka_protocol::messages::ApiVersionsResponse;
        let dir = tempfile::tempdir().unwrap();
        let (mut client, _stop) = serve_in_memory(ctx(dir.path()).await);
        let ask = |name: &'static str, version: &'static str, v: i16| {
            frame(
                ApiKey::ApiVersions,
                v,
                "c",
                &ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str(name))
                    .with_client_software_version(StrBytes::from_static_str(version)),
            )
        };
        let cases = [
            ("", "1.0", false),
            ("client", "", false),
            ("-client", "1.0", false),
            ("client.", "1.0", false),
            ("cli ent", "1.0", false),
            ("cliént", "1.0", false),
            ("client", "1.0_1", false),
            ("a", "1", true),
            ("apache-kafka-java", "3.7.0-SNAPSHOT", true),
            ("librdkafka", "2.3.0", true),
        ];
        for (name, version, valid) in cases {
            client.write_all(&ask(name, version, 3)).await.unwrap();
            let r: ApiVersionsResponse = response(&mut client, 3).await;
            if valid {
                assert_eq!(r.error_code, codes::NONE, "{name:?} {version:?}");
                assert!(r.api_keys.len() > 20, "{name:?} {version:?}");
            } else {
                assert_eq!(r.error_code, codes::INVALID_REQUEST, "{name:?} {version:?}");
                assert!(r.api_keys.is_empty(), "{name:?} {version:?}");
            }
        }
        // Before v3 the request names nothing: never refused.
        client.write_all(&ask("", "", 2)).await.unwrap();
        let r: ApiVersionsResponse = response(&mut client, 2).await;
        assert_eq!(r.error_code, codes::NONE);
        assert!(r.api_keys.len() > 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_response_is_flushed_not_left_for_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, _stop) = serve_in_memory(ctx(dir.path()).await);
        let request = frame(
            ApiKey::ApiVersions,
            3,
            "c",
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
                .with_client_software_version(StrBytes::from_static_str("1.0")),
        );
        client.write_all(&request).await.unwrap();
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut len))
            .await
            .expect("the answer is written out, not held until another one")
            .unwrap();
        assert!(i32::from_be_bytes(len) > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_response_that_cannot_be_encoded_closes_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, _stop) = serve_in_memory(ctx(dir.path()).await);
        // The error message naming this other broker does not fit
        // DescribeConfigs v1's 16-bit string: the answer cannot be encoded.
        let long = "7".repeat(32_760);
        let describe = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(StrBytes::from_string(long)),
        ]);
        client
            .write_all(&frame(ApiKey::DescribeConfigs, 1, "c", &describe))
            .await
            .unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .expect(
                "the connection closes; a request left unanswered would shift every later answer",
            )
            .unwrap();
        assert_eq!(n, 0, "nothing is answered");
    }

    /// A CreateTopics v4 frame for one topic of one partition.
    fn create_frame(topic: &'static str) -> Vec<u8> {
        use kafka_protocol::messages::{
            create_topics_request::CreatableTopic, CreateTopicsRequest, TopicName,
        };
        let create = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_num_partitions(1)
                .with_replication_factor(1)]);
        frame(ApiKey::CreateTopics, 4, "c", &create)
    }

    /// Reads one response frame and decodes it as `R` (header v0: a version
    /// before flexible ones).
    async fn response<R: kafka_protocol::protocol::Decodable>(
        client: &mut tokio::io::DuplexStream,
        version: i16,
    ) -> R {
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut len))
            .await
            .expect("an answer")
            .unwrap();
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(len)).unwrap()];
        client.read_exact(&mut body).await.unwrap();
        let mut b = Bytes::from(body);
        b.advance(4); // correlation id
        R::decode(&mut b, version).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_produce_pipelined_behind_a_topic_change_waits_for_it() {
        use kafka_protocol::messages::{
            produce_request::{PartitionProduceData, TopicProduceData},
            CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, ProduceRequest,
            ProduceResponse, TopicName,
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut client, _stop) = serve_in_memory(ctx(dir.path()).await);
        let name = || TopicName(StrBytes::from_static_str("t"));
        let produce = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(
                        crate::storage::batch::tests::make_batch(0, &[b"v"]),
                    )))])]);
        let produced = |r: &ProduceResponse| r.responses[0].partition_responses[0].error_code;

        // CreateTopics and a Produce into the new topic, in one write.
        let mut both = create_frame("t");
        both.extend(frame(ApiKey::Produce, 8, "c", &produce));
        client.write_all(&both).await.unwrap();
        let created: CreateTopicsResponse = response(&mut client, 4).await;
        assert_eq!(created.topics[0].error_code, codes::NONE);
        let r: ProduceResponse = response(&mut client, 8).await;
        assert_eq!(produced(&r), codes::NONE, "the topic was created first");

        // DeleteTopics and a Produce into the deleted topic, in one write.
        let delete = DeleteTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topic_names(vec![name()]);
        let mut both = frame(ApiKey::DeleteTopics, 3, "c", &delete);
        both.extend(frame(ApiKey::Produce, 8, "c", &produce));
        client.write_all(&both).await.unwrap();
        let deleted: DeleteTopicsResponse = response(&mut client, 3).await;
        assert_eq!(deleted.responses[0].error_code, codes::NONE);
        let r: ProduceResponse = response(&mut client, 8).await;
        assert_eq!(
            produced(&r),
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            "the topic was deleted first"
        );
    }

    /// A CreateTopics read behind a Fetch's long poll on its connection
    /// starts once the Fetch is answered. Its `timeout_ms` counted from then,
    /// so it created topics after its client's own timeout (set to the same)
    /// had given up on the answer; it counts from its arrival now.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_waiting_behind_a_long_poll_counts_its_timeout_from_its_arrival() {
        use kafka_protocol::messages::{
            create_topics_request::CreatableTopic, CreateTopicsRequest, CreateTopicsResponse,
            TopicName,
        };
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        let create = CreateTopicsRequest::default()
            .with_timeout_ms(500)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("late")))
                .with_num_partitions(1)
                .with_replication_factor(1)]);
        let mut both = fetch_frame_waiting(1 << 20, 1, 1_000);
        both.extend(frame(ApiKey::CreateTopics, 4, "c", &create));
        client.write_all(&both).await.unwrap();
        assert_eq!(fetched_records(&mut client).await, 0, "the long poll ended");
        let created: CreateTopicsResponse = response(&mut client, 4).await;
        assert_eq!(
            created.topics[0].error_code,
            codes::REQUEST_TIMED_OUT,
            "{created:?}"
        );
        assert!(ctx.storage.topic("late").is_none());
    }

    /// ApiVersions lists Produce from v0, as Kafka 4.0 does (librdkafka up to
    /// 2.11 turns gzip, snappy and lz4 off against a broker whose lowest
    /// listed Produce version is above 0), but v0-v2 are refused when sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn produce_is_listed_from_v0_and_v0_to_v2_are_refused() {
        let listed = handlers::api_versions_body(codes::NONE);
        let produce = listed
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .unwrap();
        assert_eq!(produce.min_version, 0);
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for version in 0..3u8 {
            // Key 0, the version, correlation id 7, client id "c", a body.
            let mut f = vec![0, 0, 0, version, 0, 0, 0, 7, 0, 1, b'c'];
            f.extend([0u8; 32]);
            let e = dispatch(&ctx, Bytes::from(f), peer, &mut None)
                .await
                .err()
                .expect("refused");
            assert_eq!(e, format!("Produce v{version} is not supported"));
        }
    }

    /// KAFKA_STORAGE_ERROR went to Produce v3 clients, whose version predates
    /// it (KIP-112): they take it for an unknown error and fail the records
    /// at once. They get NOT_LEADER_OR_FOLLOWER, which they retry, as from
    /// Kafka; v4 and later keep KAFKA_STORAGE_ERROR.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storage_error_reaches_produce_versions_before_it_as_not_leader() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        use kafka_protocol::messages::{
            produce_request::{PartitionProduceData, TopicProduceData},
            ProduceRequest, ProduceResponse, TopicName,
        };
        assert_eq!(
            handlers::storage_error_as_known(codes::KAFKA_STORAGE_ERROR, false),
            codes::NOT_LEADER_OR_FOLLOWER
        );
        assert_eq!(
            handlers::storage_error_as_known(codes::INVALID_RECORD, false),
            codes::INVALID_RECORD
        );
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        // A config change that may not survive a power loss: the topic
        // refuses produces with a storage error until it is stored again.
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::DirSync));
        assert!(ctx
            .storage
            .alter_topic_configs("t", false, |c| Ok(c.clone()))
            .is_err());
        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        let produce = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(
                        crate::storage::batch::tests::make_batch(0, &[b"v"]),
                    )))])]);
        for (version, code) in [
            (3, codes::NOT_LEADER_OR_FOLLOWER),
            (4, codes::KAFKA_STORAGE_ERROR),
            (8, codes::KAFKA_STORAGE_ERROR),
        ] {
            client
                .write_all(&frame(ApiKey::Produce, version, "c", &produce))
                .await
                .unwrap();
            let r: ProduceResponse = response(&mut client, version).await;
            assert_eq!(
                r.responses[0].partition_responses[0].error_code, code,
                "v{version}"
            );
        }
    }

    /// A Produce v8 frame (acks -1) of one batch of `values` to partition 0 of
    /// topic "t", from idempotent `producer` (epoch 0) at sequence `seq`.
    fn idempotent_produce(values: &[&[u8]], producer: i64, seq: i32, timeout_ms: i32) -> Vec<u8> {
        use kafka_protocol::messages::{
            produce_request::{PartitionProduceData, TopicProduceData},
            ProduceRequest, TopicName,
        };
        let batch = crate::storage::batch::tests::make_producer_batch(0, values, producer, 0, seq);
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(batch)))])]);
        frame(ApiKey::Produce, 8, "c", &req)
    }

    /// A client that does not read its answers pipelines Produces of 10,000
    /// partitions of unknown topics each, some 200 KB on the wire: each keeps
    /// about 1.4 MB of state until its answer is written. The connection
    /// counted only the frames in flight, so it read all 60 (12 MB, under its
    /// 32 MiB), holding some 80 MB (200 MB before each topic's list of
    /// partitions was sized to it); it now counts the state too, and stops
    /// reading once that reaches its bound (about 22 read). Every request read
    /// is still answered once the client reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_produces_state_counts_in_flight_with_its_frame() {
        use kafka_protocol::messages::{
            produce_request::{PartitionProduceData, TopicProduceData},
            ProduceRequest, ProduceResponse, TopicName,
        };
        const FRAMES: usize = 60;
        const TOPICS: usize = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(
                (0..TOPICS)
                    .map(|i| {
                        TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string(format!("u{i}"))))
                            .with_partition_data(vec![PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(Bytes::from_static(&[0])))])
                    })
                    .collect(),
            );
        let produce = frame(ApiKey::Produce, 8, "c", &req);
        // Less than one answer fits: the connection's writer stops at once.
        let client = serve_pipe(Arc::clone(&ctx), 64 << 10);
        let (mut rd, mut wr) = tokio::io::split(client);
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sender = {
            let written = Arc::clone(&written);
            tokio::spawn(async move {
                for _ in 0..FRAMES {
                    wr.write_all(&produce).await.unwrap();
                    written.fetch_add(1, Ordering::AcqRel);
                }
                wr
            })
        };
        // Until the reader stops: the count unchanged over three looks 300 ms
        // apart, after two frames at least (a slow machine may take a while
        // to read the first), or every frame read, or 30 s.
        let started = std::time::Instant::now();
        let (mut last, mut same) = (usize::MAX, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = written.load(Ordering::Acquire);
            same = if now == last { same + 1 } else { 0 };
            last = now;
            if (same >= 3 && now >= 2)
                || now == FRAMES
                || started.elapsed() > Duration::from_secs(30)
            {
                break;
            }
        }
        let read = written.load(Ordering::Acquire);
        // A frame is written to the pipe whole only once the reader has taken
        // all but 64 KiB of it: at most one is written but not read.
        assert!(
            (2..FRAMES / 2).contains(&read),
            "{read} of {FRAMES} Produces read while their answers were not"
        );
        for _ in 0..FRAMES {
            let mut len = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut len))
                .await
                .expect("an answer")
                .unwrap();
            let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(len)).unwrap()];
            rd.read_exact(&mut body).await.unwrap();
            let mut b = Bytes::from(body);
            b.advance(4); // correlation id
            let r = ProduceResponse::decode(&mut b, 8).unwrap();
            assert_eq!(r.responses.len(), TOPICS);
            assert!(r
                .responses
                .iter()
                .all(|t| t.partition_responses[0].error_code == codes::UNKNOWN_TOPIC_OR_PARTITION));
        }
        sender.await.unwrap();
    }

    /// A new idempotent producer pipelines sequences 0 and 1; the first times
    /// out waiting for pipeline capacity, unwritten. The second used to be
    /// read and stored at offset 0 as the producer's first batch, so the
    /// retry of sequence 0 was out of order for good. The connection now
    /// closes after the first answer, before the second is read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idempotent_batch_refused_before_the_write_closes_the_connection_before_the_next() {
        use kafka_protocol::messages::ProduceResponse;
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        let storage = ctx.storage.clone();
        tokio::task::spawn_blocking(move || storage.create_topic("t", 1).map(drop))
            .await
            .unwrap()
            .unwrap();
        let produce = |seq: i32, timeout_ms: i32| idempotent_produce(&[b"v"], 7, seq, timeout_ms);
        let answer = |r: &ProduceResponse| {
            let p = &r.responses[0].partition_responses[0];
            (p.error_code, p.base_offset)
        };

        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        let held = ctx.storage.hold_capacity();
        let mut both = produce(0, 100);
        both.extend(produce(1, 10_000));
        client.write_all(&both).await.unwrap();
        let r: ProduceResponse = response(&mut client, 8).await;
        assert_eq!(answer(&r), (codes::REQUEST_TIMED_OUT, -1));
        // Room again while the second request could still wait for it.
        drop(held);
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(15), client.read_to_end(&mut rest)).await;
        let p = ctx.storage.partition("t", 0).unwrap();
        assert_eq!(
            p.high_watermark(),
            0,
            "sequence 1 was stored first ({} bytes answered)",
            rest.len()
        );
        assert!(
            matches!(closed, Ok(Ok(0))),
            "the connection closes, the second request unread and unanswered: {closed:?}"
        );

        // The client sends both again, in order, on a new connection.
        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        let mut both = produce(0, 10_000);
        both.extend(produce(1, 10_000));
        client.write_all(&both).await.unwrap();
        let first: ProduceResponse = response(&mut client, 8).await;
        let second: ProduceResponse = response(&mut client, 8).await;
        assert_eq!(answer(&first), (codes::NONE, 0));
        assert_eq!(answer(&second), (codes::NONE, 1));
    }

    /// A Fetch whose partition holds `min_bytes` but whose read of whole
    /// batches within `partition_max_bytes` comes to less answers at once,
    /// as Kafka's DelayedFetch does: it waited out `max_wait` for appends,
    /// so a consumer with a large `fetch.min.bytes` catching up got one
    /// answer per `max_wait`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_whose_partition_holds_min_bytes_answers_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        let storage = ctx.storage.clone();
        tokio::task::spawn_blocking(move || storage.create_topic("t", 1).map(drop))
            .await
            .unwrap()
            .unwrap();
        let value = vec![7u8; 40 << 10];
        let batch = crate::storage::batch::tests::make_batch(0, &[&value]);
        for _ in 0..3 {
            let acked = ctx
                .storage
                .submit("t", 0, &batch, Duration::from_secs(5))
                .await
                .unwrap();
            acked.await.unwrap().unwrap();
        }
        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        // Two batches fit in 100,000 bytes, and the partition holds more.
        client
            .write_all(&fetch_frame_waiting(100_000, 100_000, 10_000))
            .await
            .unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), fetched_records(&mut client))
            .await
            .expect("answered before max_wait");
        assert_eq!(read, 2 * batch.len());
    }

    /// A Produce that waits for pipeline capacity longer than the idle limit
    /// is answered once it is stored: the reader's wait is not idle time.
    /// (The connection was closed as idle right after the batch was
    /// submitted, so it was stored unanswered and a retry stored it twice.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_produce_waiting_for_capacity_past_the_idle_limit_is_answered() {
        use kafka_protocol::messages::ProduceResponse;
        let dir = tempfile::tempdir().unwrap();
        let mut c = crate::config::Config::default();
        c.server.connections_max_idle_ms = 300;
        let ctx = ctx_with(dir.path(), c).await;
        let storage = ctx.storage.clone();
        tokio::task::spawn_blocking(move || storage.create_topic("t", 1).map(drop))
            .await
            .unwrap()
            .unwrap();
        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        let held = ctx.storage.hold_capacity();
        client
            .write_all(&idempotent_produce(&[b"v"], 7, 0, 10_000))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        drop(held);
        let r: ProduceResponse =
            tokio::time::timeout(Duration::from_secs(10), response(&mut client, 8))
                .await
                .expect("the produce is answered");
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (codes::NONE, 0));
        assert_eq!(ctx.storage.partition("t", 0).unwrap().high_watermark(), 1);
    }

    /// A new idempotent producer's batch of two records, larger than the
    /// topic's `max.message.bytes`, is refused before the write; the Java
    /// producer splits it and sends its halves from the same first sequence.
    /// A batch pipelined behind it was stored first, as the producer's first,
    /// and the halves were then out of order for good. The connection now
    /// closes after the first answer, as for the other refusals clients retry;
    /// a one-record batch too large (failed, not split) leaves it open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idempotent_batch_too_large_to_store_whole_closes_the_connection_before_the_next() {
        use kafka_protocol::messages::ProduceResponse;
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        let storage = ctx.storage.clone();
        tokio::task::spawn_blocking(move || {
            let configs = crate::storage::topic_config::TopicConfig::from_pairs([(
                "max.message.bytes",
                Some("1000"),
            )])
            .unwrap();
            storage.create_topic_with("t", 1, configs).map(drop)
        })
        .await
        .unwrap()
        .unwrap();
        let produce = |values: &[&[u8]], producer: i64, seq: i32| {
            idempotent_produce(values, producer, seq, 10_000)
        };
        let code = |r: &ProduceResponse| r.responses[0].partition_responses[0].error_code;

        // One record too large: answered, and the next request too.
        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        let mut both = produce(&[&[0u8; 1600]], 7, 0);
        both.extend(produce(&[b"v"], 7, 5));
        client.write_all(&both).await.unwrap();
        let first: ProduceResponse = response(&mut client, 8).await;
        let second: ProduceResponse = response(&mut client, 8).await;
        assert_eq!(code(&first), codes::MESSAGE_TOO_LARGE);
        assert_eq!(code(&second), codes::NONE);
        let p = ctx.storage.partition("t", 0).unwrap();
        assert_eq!(p.high_watermark(), 1);

        // Two records too large together, from a producer the partition does
        // not know: the connection closes before the next request is read.
        let (mut client, _stop) = serve_in_memory(Arc::clone(&ctx));
        let big = [0u8; 800];
        let mut both = produce(&[&big, &big], 9, 0);
        both.extend(produce(&[b"v"], 9, 2));
        client.write_all(&both).await.unwrap();
        let r: ProduceResponse = response(&mut client, 8).await;
        assert_eq!(code(&r), codes::MESSAGE_TOO_LARGE);
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(15), client.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "the connection closes, the second request unread and unanswered: {closed:?}"
        );
        assert_eq!(p.high_watermark(), 1, "the pipelined batch was stored");
    }

    /// Every answer reflects the requests before it on its connection: an
    /// ElectLeaders pipelined behind the CreateTopics of its topic finds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_admin_answer_pipelined_behind_a_topic_change_sees_it() {
        use kafka_protocol::messages::{
            elect_leaders_request::TopicPartitions, CreateTopicsResponse, ElectLeadersRequest,
            ElectLeadersResponse, TopicName,
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut client, _stop) = serve_in_memory(ctx(dir.path()).await);
        let name = || TopicName(StrBytes::from_static_str("t"));
        let elect = ElectLeadersRequest::default()
            .with_election_type(0)
            .with_topic_partitions(Some(vec![TopicPartitions::default()
                .with_topic(name())
                .with_partitions(vec![0])]));
        let mut both = create_frame("t");
        both.extend(frame(ApiKey::ElectLeaders, 1, "c", &elect));
        client.write_all(&both).await.unwrap();
        let created: CreateTopicsResponse = response(&mut client, 4).await;
        assert_eq!(created.topics[0].error_code, codes::NONE);
        let r: ElectLeadersResponse = response(&mut client, 1).await;
        let p = &r.replica_election_results[0].partition_result[0];
        // ELECTION_NOT_NEEDED: the partition exists, and leads already.
        assert_eq!(p.error_code, 84, "{:?}", p.error_message);
    }

    /// Storage over `dir` (its config changed by `tweak`, listening on any
    /// port) holding topic `t` of one partition.
    async fn storage_with_t(
        dir: &std::path::Path,
        tweak: impl FnOnce(&mut crate::config::Config),
    ) -> TopicManager {
        let mut config = crate::config::Config::default();
        config.storage.data_dir = dir.to_path_buf();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        tokio::task::spawn_blocking(move || {
            let storage = TopicManager::new(config).unwrap();
            storage.create_topic("t", 1).unwrap();
            storage
        })
        .await
        .unwrap()
    }

    /// A server over `storage`, running: its context, its address, what stops
    /// it, and its task.
    async fn serve(
        storage: &TopicManager,
    ) -> (
        Arc<Ctx>,
        SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let server = Server::bind(storage.clone()).await.unwrap();
        let ctx = Arc::clone(&server.ctx);
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        (ctx, addr, stop_tx, serving)
    }

    /// A connection still busy when the shutdown has waited its 10 s (its
    /// client asked for Fetch answers and reads none) is closed: `run` returns
    /// with the connection's tasks ended, its slot and the Fetch response
    /// memory of the answer it was writing given back, and the client sees its
    /// connection end. Before, `run` logged "closing them" and returned with
    /// the connection still served, holding storage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_still_busy_after_the_shutdown_wait_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        // Never idle: only the shutdown closes the connection.
        let storage = storage_with_t(dir.path(), |c| c.server.connections_max_idle_ms = 0).await;
        // 256 KiB of records in 16 batches: each Fetch answer holds them all.
        let batch = crate::storage::batch::tests::make_batch(0, &[&vec![7u8; 16 << 10]]);
        for _ in 0..16 {
            let acked = storage
                .submit("t", 0, &batch, Duration::from_secs(5))
                .await
                .unwrap();
            acked.await.unwrap().unwrap();
        }
        let (ctx, addr, stop_tx, serving) = serve(&storage).await;

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket.connect(addr).await.unwrap();
        // 16 MiB of answers: far more than the sockets hold.
        for _ in 0..64 {
            client.write_all(&fetch_frame(1 << 20)).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while ctx.fetch_memory.in_use() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("an answer is held, unwritten");
        assert_eq!(ctx.metrics.open_connections.load(Ordering::Acquire), 1);

        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(30), serving)
            .await
            .expect("run returns once it has closed what was still busy")
            .unwrap();
        let stopped = std::time::Instant::now();
        assert_eq!(
            ctx.metrics.open_connections.load(Ordering::Acquire),
            0,
            "the connection's slot is given back when run returns"
        );
        assert_eq!(
            ctx.fetch_memory.in_use(),
            0,
            "the answer being written gave its memory back"
        );
        // What the sockets held is read, then the end of the connection.
        let mut buf = vec![0u8; 1 << 16];
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await
        .expect("the client sees its connection end");
        assert!(stopped.elapsed() < Duration::from_secs(5));
        drop(ctx);
        tokio::task::spawn_blocking(move || storage.shutdown())
            .await
            .unwrap()
            .unwrap();
    }

    /// A Fetch waiting for one of the `READS_AT_ONCE` reads to end (here all
    /// held, as by reads blocked on a stalled device) is dropped when its
    /// client closes the connection: the connection's slot is given back at
    /// once, and the Fetch never reads. Before, the writer waited for it,
    /// so reconnecting consumers left a queue of dead Fetches ahead of the
    /// live ones, each holding a connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_waiting_for_a_read_is_dropped_when_its_client_goes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage_with_t(dir.path(), |_| {}).await;
        let (ctx, addr, stop_tx, serving) = serve(&storage).await;
        let all = u32::try_from(READS_AT_ONCE).unwrap();
        let held = Arc::clone(&ctx.reads)
            .acquire_many_owned(all)
            .await
            .unwrap();

        let connections = |n: usize| {
            let ctx = Arc::clone(&ctx);
            async move {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while ctx.metrics.open_connections.load(Ordering::Acquire) != n {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{n} connections"));
            }
        };
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(&fetch_frame(1 << 20)).await.unwrap();
        connections(1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), async {
            while ctx.metrics.open_connections.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the connection's slot is given back while the Fetch waits");

        // A client that only half-closes reads on: the answers it gets stay
        // a prefix of its requests' (here the first ApiVersions), never the
        // answers after the dropped Fetch without it.
        let versions = frame(
            ApiKey::ApiVersions,
            0,
            "c",
            &kafka_protocol::messages::ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
                .with_client_software_version(StrBytes::from_static_str("1.0")),
        );
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        for f in [&versions, &fetch_frame(1 << 20), &versions] {
            client.write_all(f).await.unwrap();
        }
        connections(1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.shutdown().await.unwrap();
        let mut answers = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answers))
            .await
            .expect("the connection ends")
            .unwrap();
        let mut frames = 0;
        let mut rest = &answers[..];
        while rest.len() >= 4 {
            let len = usize::try_from(i32::from_be_bytes(rest[..4].try_into().unwrap())).unwrap();
            rest = &rest[4 + len..];
            frames += 1;
        }
        assert_eq!(frames, 1, "answers after the dropped Fetch were written");

        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ctx.metrics.fetch_reads(), 0, "a dropped Fetch read");

        let _ = stop_tx.send(());
        serving.await.unwrap();
        drop(ctx);
        tokio::task::spawn_blocking(move || storage.shutdown())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_task_that_panics_gives_its_slot_back() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path()).await;
        let all_done = Arc::new(tokio::sync::Notify::new());
        let slot = ConnectionSlot::take(&ctx, Arc::clone(&all_done));
        assert_eq!(ctx.metrics.open_connections.load(Ordering::Acquire), 1);
        let notified = all_done.notified();
        let task = tokio::spawn(async move {
            let _slot = slot;
            panic!("a handler's bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(ctx.metrics.open_connections.load(Ordering::Acquire), 0);
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("a shutdown waiting for connections to end is woken");
    }

    /// A frame whose header or body carries more than 1,000 tagged fields is
    /// refused before it is decoded (100 MiB of two-byte fields decoded into
    /// over a gigabyte); up to 1,000 in each decode.
    #[test]
    fn tagged_fields_past_their_bound_are_refused_before_the_request_is_decoded() {
        let section = |n: usize| {
            let mut out = Vec::new();
            let mut varint = |mut v: usize| {
                while v >= 0x80 {
                    out.push(u8::try_from(v & 0x7f).unwrap() | 0x80);
                    v >>= 7;
                }
                out.push(u8::try_from(v).unwrap());
            };
            varint(n);
            for tag in 1000..1000 + n {
                varint(tag);
                varint(0);
            }
            out
        };
        // Metadata v12: key, version, correlation id, client id "c", the
        // header's tagged fields; then every topic (null), allow auto topic
        // creation, include topic authorized operations, the body's tagged
        // fields.
        let frame = |header: usize, body: usize| {
            let mut f = vec![0, 3, 0, 12, 0, 0, 0, 7, 0, 1, b'c'];
            f.extend(section(header));
            f.extend([0, 1, 0]);
            f.extend(section(body));
            Bytes::from(f)
        };
        match decode_request(frame(1000, 1000)) {
            Ok(Decoded::Request(header, RequestKind::Metadata(m))) => {
                assert_eq!(header.unknown_tagged_fields.len(), 1000);
                assert_eq!(m.unknown_tagged_fields.len(), 1000);
            }
            other => panic!("{other:?}"),
        }
        let e = decode_request(frame(1001, 0)).unwrap_err();
        assert!(
            e.contains("Metadata v12 request header has 1001 fields"),
            "{e}"
        );
        let e = decode_request(frame(0, 1001)).unwrap_err();
        assert!(
            e.contains("Metadata v12 has 1001 fields in one tagged section"),
            "{e}"
        );
    }

    #[test]
    fn the_default_connection_limit_leaves_storage_half_of_what_is_left() {
        assert_eq!(connection_budget(1024, 0), 512);
        assert_eq!(
            connection_budget(1024, 400),
            312,
            "segments already open count"
        );
        assert_eq!(connection_budget(1024, 1024), 1, "at least one");
        assert_eq!(connection_budget(1024, 5000), 1);
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            let dir = tempfile::tempdir().unwrap();
            let files: Vec<std::fs::File> = (0..200)
                .map(|i| std::fs::File::create(dir.path().join(i.to_string())).unwrap())
                .collect();
            let n = open_file_count().expect("the system lists open files");
            assert!(n >= 200, "{n} open files counted with 200 held");
            drop(files);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_listing_that_misses_open_descriptors_is_not_counted() {
        // As FreeBSD's /dev/fd without fdescfs: 0 to 2 whatever is open.
        let dir = tempfile::tempdir().unwrap();
        for fd in ["0", "1", "2"] {
            std::fs::File::create(dir.path().join(fd)).unwrap();
        }
        assert_eq!(listed_open_files(dir.path()), None);
        #[cfg(target_os = "linux")]
        {
            let held = std::fs::File::open("/dev/null").unwrap();
            let n = listed_open_files(Path::new("/proc/self/fd")).expect("a full listing");
            assert!(n >= 1, "{n} open files counted with one held");
            drop(held);
        }
    }
}
