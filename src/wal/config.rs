//! WAL configuration: plain data with defaults and one `validate()` that rejects.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// When an append is acknowledged, named by the syscall it pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Acknowledge after the write completed; `fdatasync` at least every
    /// `sync_interval_ms`. A crash of the process loses nothing acknowledged; a power
    /// loss may lose up to one interval.
    #[default]
    Interval,
    /// Acknowledge only after the write and an `fdatasync` covering it completed.
    EveryWrite,
    /// Acknowledge after the write; never `fdatasync` except at rotation and close.
    OsDefault,
}

impl SyncMode {
    /// Accepted spellings, for error messages and `--help`.
    pub const NAMES: &'static str = "interval, every_write, os_default";

    /// The configuration spelling of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Interval => "interval",
            SyncMode::EveryWrite => "every_write",
            SyncMode::OsDefault => "os_default",
        }
    }
}

impl FromStr for SyncMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "interval" => Ok(SyncMode::Interval),
            "every_write" => Ok(SyncMode::EveryWrite),
            "os_default" => Ok(SyncMode::OsDefault),
            _ => Err(Error::InvalidConfig {
                field: "--wal-sync-mode",
                value: s.to_string(),
                reason: format!("accepted values: {}", SyncMode::NAMES),
            }),
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which I/O backend the commit thread drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// `uring` where io_uring and `O_DIRECT` work, otherwise `std` (logged once).
    #[default]
    Auto,
    /// io_uring (Linux only): `every_write` writes each batch with `O_DIRECT`
    /// from registered buffers as one `RWF_DSYNC` write; `interval` and
    /// `os_default` write through the page cache and fsync through the ring
    /// (see `docs/engine.md`, "Backends").
    Uring,
    /// `pwritev` + `fdatasync` (`F_FULLFSYNC` on macOS), on every platform: the
    /// batches submitted since the commit thread last waited go out together.
    Std,
}

impl BackendKind {
    /// Accepted spellings, for error messages and `--help`.
    pub const NAMES: &'static str = "auto, uring, std";

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Uring => "uring",
            BackendKind::Std => "std",
        }
    }

    /// The environment variable that may choose the backend of a WAL configured
    /// with `auto` (see [`WalConfig::backend_from_env`]).
    pub const ENV: &'static str = "STREAMLINE_WAL_BACKEND";

    /// Reads [`BackendKind::ENV`]; `None` when unset.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the variable and the accepted values when
    /// it holds anything else, an empty value included (as the broker's
    /// `--wal-backend` refuses the variable set empty).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_env_value(std::env::var_os(Self::ENV).as_deref())
    }

    /// [`BackendKind::from_env`] for the variable's value `value` (`None`: unset).
    ///
    /// # Errors
    /// As [`BackendKind::from_env`].
    pub fn from_env_value(value: Option<&std::ffi::OsStr>) -> Result<Option<Self>> {
        let Some(value) = value else {
            return Ok(None);
        };
        value
            .to_str()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Error::InvalidConfig {
                field: Self::ENV,
                value: value.to_string_lossy().into_owned(),
                reason: format!("accepted values: {}", BackendKind::NAMES),
            })
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "uring" => Ok(BackendKind::Uring),
            "std" => Ok(BackendKind::Std),
            _ => Err(Error::InvalidConfig {
                field: "--wal-backend",
                value: s.to_string(),
                reason: format!("accepted values: {}", BackendKind::NAMES),
            }),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What recovery does with a corrupt batch that has valid data after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// Refuse to open; the error names the file and byte offset.
    #[default]
    Strict,
    /// Skip the corrupt bytes (logged as a warning with file and offset) and continue.
    TolerateCorruption,
}

impl RecoveryMode {
    /// Accepted spellings, for error messages and `--help`.
    pub const NAMES: &'static str = "strict, tolerate_corruption";

    /// The configuration spelling of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryMode::Strict => "strict",
            RecoveryMode::TolerateCorruption => "tolerate_corruption",
        }
    }
}

impl FromStr for RecoveryMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "strict" => Ok(RecoveryMode::Strict),
            "tolerate_corruption" => Ok(RecoveryMode::TolerateCorruption),
            _ => Err(Error::InvalidConfig {
                field: "--recovery-mode",
                value: s.to_string(),
                reason: format!("accepted values: {}", RecoveryMode::NAMES),
            }),
        }
    }
}

impl fmt::Display for RecoveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Configuration of a [`crate::wal::Wal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WalConfig {
    /// When appends are acknowledged. Default: `interval`.
    pub sync_mode: SyncMode,
    /// Longest time between two `fdatasync`s in `interval` mode, in milliseconds.
    /// Default: 100.
    pub sync_interval_ms: u64,
    /// Size every WAL file is preallocated to; a batch that does not fit rotates.
    /// Default: 100 MiB. Minimum: 64 KiB.
    pub max_file_size: u64,
    /// Archived files kept even when a checkpoint covers them. Default: 2.
    pub retention_files: usize,
    /// I/O backend. Default: `auto` (see [`WalConfig::backend_from_env`]).
    pub backend: BackendKind,
    /// Whether the environment variable `STREAMLINE_WAL_BACKEND` (`auto`, `uring`
    /// or `std`) is consulted. When true, [`WalConfig::validate`] (and so
    /// [`crate::wal::Wal::open`], before it touches the directory) refuses any other
    /// value, and a valid one chooses the backend when `backend` is `auto`; an
    /// explicit `uring` or `std` wins over it. When false the variable is not read
    /// at all: an application that takes the backend from its own flag (the
    /// broker's `--wal-backend`, which reads the same variable when the flag is
    /// absent) sets false so that the flag it resolved, `auto` included, is the
    /// one used. Default: true.
    pub backend_from_env: bool,
    /// Largest batch the commit thread assembles into one write, in bytes (rounded up
    /// to the 4 KiB block). A single larger entry is written alone. Default: 256 KiB.
    pub max_batch_bytes: usize,
    /// Cap on bytes accepted but not yet acknowledged; producers block at the cap.
    /// Default: 64 MiB.
    pub max_pending_bytes: usize,
    /// Batches submitted to the disk but not yet completed at once (pipelining).
    /// Together with `max_batch_bytes` this bounds the bytes in flight: the disk
    /// completes several durable writes at once much faster than one after another.
    /// Default: 8.
    pub max_in_flight: usize,
    /// Handling of mid-log corruption during recovery. Default: `strict`.
    pub recovery_mode: RecoveryMode,
    /// Whether WAL files are written with `O_DIRECT` (bypassing the page cache).
    /// Unset: on for `every_write` (each acknowledgement waits for the device anyway,
    /// and O_DIRECT saves a memory copy), off for `interval` and `os_default` (an
    /// acknowledgement then only waits for the page cache, ~5 µs instead of a device
    /// write, and the periodic fdatasync writes back in large runs). Linux only.
    /// A file that gets no direct I/O is written through the page cache, with one
    /// warning: where the filesystem refuses `O_DIRECT`, and where it accepts it
    /// but would buffer the writes or needs more than 4096-byte alignment (as
    /// `statx` reports, Linux 6.1: ext4 mounted `data=journal`, fscrypt, fs-verity);
    /// `auto` then picks `std`. [`crate::wal::Wal::direct_io`] tells what is in
    /// use. Default: unset.
    pub direct_io: Option<bool>,
    /// How long the idle commit thread polls for the next append before sleeping,
    /// in microseconds; trades a little CPU for single-producer latency. In
    /// `every_write` mode, also how long it polls while a small batch gathers to go
    /// out beside the durable write in flight, while such polls pay off (see
    /// `docs/engine.md`). 0 disables. Default: 50.
    pub idle_spin_us: u64,
    /// How long a thread blocked in [`crate::wal::Completion::wait`] polls for its
    /// acknowledgement (yielding the CPU between looks) before it sleeps, in
    /// microseconds. Sleeping costs a wake-up per acknowledgement, which on a
    /// virtual machine is often longer than the device's write; polling costs CPU
    /// that other runnable threads can still take. An `.await`ed completion does
    /// the same within its executor: for this long after its first poll it yields
    /// the thread and asks to be polled again, so that an executor thread whose
    /// tasks all wait for the WAL does not park. 0 disables. Default: 500.
    pub ack_spin_us: u64,
    /// How the `uring` backend writes `every_write` batches to `O_DIRECT` files.
    /// `false`: each as its own `RWF_DSYNC` write through the ring, started as
    /// soon as it is assembled, several in flight side by side. `true`: those
    /// submitted until the commit thread next waits as one group, written by the
    /// commit thread itself with one `pwritev` and one `fdatasync` (as the `std`
    /// backend writes), so that producers appending while a batch is submitted
    /// share its flush. Unset: groups while the thread finds that polling for a
    /// batch to send beside the write in flight does not pay (many producer
    /// threads on few CPUs) and no full batch waits, or while a producer is
    /// alone (32 writes in a row of one append each, nothing beside them), the
    /// ring otherwise (see `docs/engine.md`). Other backends and configurations ignore it. Default: unset.
    pub uring_group_writes: Option<bool>,
    /// Called when a rotation is short of file descriptors (EMFILE, ENFILE),
    /// before each try again: the application closes what it can do without
    /// (the broker its cache of segment read handles), so that the shortage
    /// passes before the tries run out and the WAL fails. A rotation opens
    /// everything it needs before it changes anything on disk, so a shortage
    /// that outlasts the tries fails the WAL with the files as they were. Not
    /// serialized. Default: none.
    #[serde(skip)]
    pub on_descriptor_shortage: Option<ShortageHook>,
}

/// A function the WAL calls when short of file descriptors
/// ([`WalConfig::on_descriptor_shortage`]), on its commit thread: it must not
/// wait for the WAL. Equal to another only when it is the same function.
#[derive(Clone)]
pub struct ShortageHook(std::sync::Arc<dyn Fn() + Send + Sync>);

impl ShortageHook {
    /// Wraps `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        ShortageHook(std::sync::Arc::new(f))
    }

    /// Calls the function.
    pub fn call(&self) {
        (self.0)();
    }
}

impl fmt::Debug for ShortageHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShortageHook(..)")
    }
}

impl PartialEq for ShortageHook {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ShortageHook {}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            sync_mode: SyncMode::Interval,
            sync_interval_ms: 100,
            max_file_size: 100 * 1024 * 1024,
            retention_files: 2,
            backend: BackendKind::Auto,
            backend_from_env: true,
            max_batch_bytes: 256 * 1024,
            max_pending_bytes: 64 * 1024 * 1024,
            max_in_flight: 8,
            recovery_mode: RecoveryMode::Strict,
            idle_spin_us: 50,
            ack_spin_us: 500,
            direct_io: None,
            uring_group_writes: None,
            on_descriptor_shortage: None,
        }
    }
}

impl WalConfig {
    /// Smallest accepted `max_file_size`.
    pub const MIN_FILE_SIZE: u64 = 64 * 1024;

    /// Largest accepted `max_file_size`: 1 TiB. A file is preallocated to it
    /// (`fallocate` takes an `off_t`, a signed 64-bit size), so a value past
    /// i64::MAX used to fail only there, after the directory was created and
    /// locked; far below that, no disk holds one such file.
    pub const MAX_FILE_SIZE: u64 = 1 << 40;

    /// Whether the backend is asked to open files with `O_DIRECT` (see [`WalConfig::direct_io`]).
    pub fn uses_direct_io(&self) -> bool {
        self.direct_io
            .unwrap_or(self.sync_mode == SyncMode::EveryWrite)
    }

    /// The backend [`crate::wal::Wal::open`] asks for: `backend`, or the one
    /// `STREAMLINE_WAL_BACKEND` names when `backend` is `auto` and
    /// [`WalConfig::backend_from_env`] is set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the variable when it is consulted and holds
    /// an unknown value.
    pub fn resolved_backend(&self) -> Result<BackendKind> {
        self.resolve_backend(std::env::var_os(BackendKind::ENV).as_deref())
    }

    /// [`WalConfig::resolved_backend`] with `env` as the variable's value (`None`:
    /// unset); the variable itself is not read.
    ///
    /// # Errors
    /// As [`WalConfig::resolved_backend`].
    pub fn resolve_backend(&self, env: Option<&std::ffi::OsStr>) -> Result<BackendKind> {
        if !self.backend_from_env {
            return Ok(self.backend);
        }
        let env = BackendKind::from_env_value(env)?;
        Ok(match (self.backend, env) {
            (BackendKind::Auto, Some(kind)) => kind,
            (kind, _) => kind,
        })
    }

    /// Rejects values the engine cannot honour, naming the setting and what is
    /// accepted; with [`WalConfig::backend_from_env`], also an unknown
    /// `STREAMLINE_WAL_BACKEND`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for the first invalid field.
    pub fn validate(&self) -> Result<()> {
        self.validate_with_env(std::env::var_os(BackendKind::ENV).as_deref())
    }

    /// [`WalConfig::validate`] with `env` as the value of `STREAMLINE_WAL_BACKEND`.
    pub(crate) fn validate_with_env(&self, env: Option<&std::ffi::OsStr>) -> Result<()> {
        let bad = |field, value: String, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                value,
                reason: reason.to_string(),
            })
        };
        if self.sync_mode == SyncMode::Interval && self.sync_interval_ms == 0 {
            return bad(
                "--wal-sync-ms",
                "0".into(),
                "accepted values: 1 or more in interval mode (0 with every_write or os_default)",
            );
        }
        if self.max_file_size < Self::MIN_FILE_SIZE
            || self.max_file_size > Self::MAX_FILE_SIZE
            || !self.max_file_size.is_multiple_of(4096)
        {
            return bad(
                "--wal-max-file-size",
                self.max_file_size.to_string(),
                "must be a multiple of 4096, at least 65536 and at most 1099511627776 (1 TiB)",
            );
        }
        if self.max_batch_bytes < 4096 || self.max_batch_bytes > 64 * 1024 * 1024 {
            return bad(
                "max_batch_bytes",
                self.max_batch_bytes.to_string(),
                "must be between 4096 and 64 MiB",
            );
        }
        if self.max_pending_bytes < self.max_batch_bytes {
            return bad(
                "max_pending_bytes",
                self.max_pending_bytes.to_string(),
                "must be at least max_batch_bytes",
            );
        }
        if self.idle_spin_us > 10_000 {
            return bad(
                "idle_spin_us",
                self.idle_spin_us.to_string(),
                "must be at most 10000",
            );
        }
        if self.ack_spin_us > 100_000 {
            return bad(
                "ack_spin_us",
                self.ack_spin_us.to_string(),
                "must be at most 100000",
            );
        }
        if self.max_in_flight == 0 || self.max_in_flight > 64 {
            return bad(
                "max_in_flight",
                self.max_in_flight.to_string(),
                "must be between 1 and 64",
            );
        }
        let backend = self.resolve_backend(env)?;
        // io_uring is Linux's: refused here, before the open touches the
        // directory, not by the backend once the files are settled.
        if backend == BackendKind::Uring && !cfg!(target_os = "linux") {
            return bad(
                "--wal-backend",
                "uring".into(),
                "io_uring is available on Linux only (auto or std here)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn resolve(backend: BackendKind, from_env: bool, env: Option<&str>) -> Result<BackendKind> {
        WalConfig {
            backend,
            backend_from_env: from_env,
            ..WalConfig::default()
        }
        .resolve_backend(env.map(OsStr::new))
    }

    #[test]
    fn the_variable_chooses_only_for_auto_and_only_when_consulted() {
        use BackendKind::{Auto, Std, Uring};
        assert_eq!(resolve(Auto, true, None).unwrap(), Auto);
        // Set but empty is a value, and not an accepted one.
        for backend in [Auto, Std, Uring] {
            let e = resolve(backend, true, Some("")).unwrap_err().to_string();
            assert!(
                e.contains(BackendKind::ENV) && e.contains("auto, uring, std"),
                "{e}"
            );
        }
        assert_eq!(resolve(Auto, false, Some("")).unwrap(), Auto);
        assert_eq!(resolve(Auto, true, Some("std")).unwrap(), Std);
        assert_eq!(resolve(Auto, true, Some("uring")).unwrap(), Uring);
        assert_eq!(resolve(Uring, true, Some("std")).unwrap(), Uring);
        assert_eq!(resolve(Std, true, Some("auto")).unwrap(), Std);
        assert_eq!(resolve(Auto, false, Some("std")).unwrap(), Auto);
        assert_eq!(resolve(Std, false, Some("bogus")).unwrap(), Std);
    }

    #[test]
    fn an_unknown_value_names_the_variable_and_the_accepted_values() {
        for backend in [BackendKind::Auto, BackendKind::Std] {
            let e = resolve(backend, true, Some("bogus")).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidConfig {
                        field: "STREAMLINE_WAL_BACKEND",
                        ..
                    }
                ),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("bogus") && msg.contains("auto, uring, std"),
                "{msg}"
            );
        }
        let cfg = WalConfig::default();
        let e = cfg
            .validate_with_env(Some(OsStr::new("io_uring")))
            .unwrap_err();
        assert!(e.to_string().contains("STREAMLINE_WAL_BACKEND"), "{e}");
        cfg.validate_with_env(Some(OsStr::new("std"))).unwrap();
    }
}
