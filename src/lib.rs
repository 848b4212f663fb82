//! Streamline: a single-node, Kafka-compatible streaming broker built around an
//! io_uring group-commit write-ahead log.
//!
//! The WAL engine ([`wal`]) is usable on its own; see [`wal::Wal`].
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod error;
pub mod wal;

pub use error::{Error, Result};
