//! The crate's single error type.
//!
//! Every I/O failure names the operation and the path it was applied to; every
//! corruption names the file and the byte offset where it was found.

use std::{io, path::PathBuf, sync::Arc};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by the WAL engine and the broker's storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation that failed (`"open"`, `"write"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Bytes on disk failed validation where valid data had to be.
    #[error("corrupt data in {} at byte offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// Byte offset of the first bad byte range (start of the batch or entry).
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// An entry (plus its framing) does not fit into one WAL file.
    #[error(
        "entry of {size} bytes exceeds the limit of {limit} bytes (max_file_size minus headers)"
    )]
    EntryTooLarge {
        /// Encoded size of the rejected entry.
        size: u64,
        /// Largest encoded entry a file can hold.
        limit: u64,
    },

    /// A configuration value was rejected.
    #[error("invalid configuration: {field} = {value:?}: {reason}")]
    InvalidConfig {
        /// The setting (as named on the command line, e.g. `--wal-sync-mode`).
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why, including the accepted values.
        reason: String,
    },

    /// An argument of a call was rejected (an empty batch, a topic name longer
    /// than the WAL's format holds); nothing was done.
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why.
        reason: String,
    },

    /// A configuration value read from its `STREAMLINE_*` environment variable
    /// (its flag being absent) was rejected.
    #[error(
        "invalid configuration: {var} = {value:?} (the environment variable of {flag}): {reason}"
    )]
    InvalidEnv {
        /// The variable, e.g. `STREAMLINE_MAX_CONNECTIONS`.
        var: String,
        /// Its flag, e.g. `--max-connections`.
        flag: &'static str,
        /// What the variable holds.
        value: String,
        /// Why, including the accepted values.
        reason: String,
    },

    /// The WAL hit an I/O error earlier and refuses all further work until reopened.
    #[error("WAL is in a failed state after an earlier error: {cause}")]
    Failed {
        /// The error that put the WAL into the failed state.
        cause: Arc<Error>,
    },

    /// The WAL was closed (or its commit thread stopped) before the request completed.
    #[error("WAL is closed")]
    Closed,

    /// The WAL's commit thread panicked (a bug): appends it had not made durable may
    /// be lost. Seen by the appends it held and every later one, and by `close`, as
    /// the cause of [`Error::Failed`].
    #[error("the WAL's commit thread panicked; appends not yet synced may be lost")]
    CommitThreadPanicked,

    /// A storage thread of the broker (`streamline-submit`, `streamline-apply`,
    /// `streamline-checkpoint` or `streamline-cleaner`) panicked (a bug): storage
    /// failed then, refusing produces, and no checkpoint was made after it.
    /// Returned by [`crate::storage::TopicManager::shutdown`]; a restart
    /// recovers from the WAL.
    #[error("storage thread {thread} panicked; storage failed then and refused produces from that point on; a restart recovers from the WAL")]
    StorageThreadPanicked {
        /// The thread (or threads, comma-separated) that panicked.
        thread: String,
    },

    /// A non-blocking append ([`crate::wal::Wal::try_append`]) found the pending-bytes
    /// cap reached; nothing was appended. Room a blocked append waits for
    /// (`claimed`) counts as taken: a non-blocking append does not pass it.
    #[error("WAL is full: {pending} bytes pending and {claimed} claimed by a blocked append, the cap (max_pending_bytes) is {cap}; the append was not accepted")]
    Full {
        /// Bytes accepted but not yet acknowledged when the append was refused.
        pending: u64,
        /// Bytes an append blocked at the cap waits for (0: none), kept free
        /// for it.
        claimed: u64,
        /// The configured cap.
        cap: u64,
    },

    /// A checkpoint was requested beyond the last acknowledged sequence.
    #[error("checkpoint {sequence} is beyond the last acknowledged sequence {acknowledged}")]
    CheckpointAhead {
        /// The requested checkpoint.
        sequence: u64,
        /// The last acknowledged sequence.
        acknowledged: u64,
    },

    /// No producer id is left to hand out: another block of ids after the
    /// reservation stored in `path` would pass the largest producer id.
    #[error(
        "no producer id is left to hand out: {} reserves every id below {reserved_below}, \
         and another block of {block} ids would pass the largest producer id",
        path.display()
    )]
    ProducerIdsExhausted {
        /// The reservation file (`producer-ids.json`).
        path: PathBuf,
        /// The end of the stored reservation.
        reserved_below: i64,
        /// The ids a new block reserves.
        block: i64,
    },

    /// The directory (WAL or broker data) is already in use by this or another process.
    #[error("directory {} is in use (locked by another process or owner)", path.display())]
    Locked {
        /// The locked directory.
        path: PathBuf,
    },
}

impl Error {
    /// Builds an [`Error::Io`] from an operation, a path and an OS error.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// The raw OS error code, if this error (or the failure that latched it) came from the OS.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Failed { cause } => cause.raw_os_error(),
            _ => None,
        }
    }
}
