//! Streamline: a single-node, Kafka-compatible streaming broker built around an
//! io_uring group-commit write-ahead log.
//!
//! The WAL engine ([`wal`]) is usable on its own; see [`wal::Wal`]. The broker is
//! [`config`] (command line and validation), [`storage`] (topics, segments, recovery)
//! and [`server`] (the Kafka protocol over TCP).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod error;
pub mod file_at;
#[cfg(unix)]
pub mod huge_alloc;
pub(crate) mod log_limit;
pub(crate) mod progress;
pub mod server;
pub mod storage;
pub mod wal;

pub use error::{Error, Result};
