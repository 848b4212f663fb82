//! A closed segment's time index, `<base offset, 20 digits>.timeindex`: the
//! newest record timestamp of all its batches and the batch holding it, saved
//! when the segment closes so that a start need not read every batch header
//! to learn it (a segment's `.index` gives only its last batch's). Pure bytes:
//! no I/O; [`super::segment`] writes and reads the file.
//!
//! One fixed record of [`LEN`] bytes, integers big-endian as in the `.index`:
//!
//! ```text
//! 0   magic "SLTI" [4]
//! 4   version u8 (1) | reserved [3] (zero)
//! 8   base_offset i64            the segment's first offset
//! 16  next_offset i64            the offset after its last batch
//! 24  log_size u64               bytes of its .log
//! 32  index_crc u32              CRC32C of its .index bytes (every batch's offset and position)
//! 36  reserved [4] (zero)
//! 40  max_timestamp i64          the newest `max_timestamp` of its batches; -1 when none has one
//! 48  max_timestamp_offset i64   base offset of the first batch holding it; -1 when none
//! 56  crc u32                    CRC32C of bytes 0..56
//! ```
//!
//! The file is only ever a shortcut: a segment opens without it, or with one
//! that does not validate or does not describe its log and index exactly as
//! they are (a crash, a cut at start-up, a log replaced by compaction), as it
//! opened before the file existed, learning its newest timestamp by reading
//! its batch headers when that is needed. `docs/broker.md` ("Segment files")
//! has the same layout and the crash cases.

/// Magic at the start of every time index file.
pub const MAGIC: [u8; 4] = *b"SLTI";

const VERSION_OFFSET: usize = MAGIC.len();
const BASE_OFFSET: usize = VERSION_OFFSET + 1 + 3;
const NEXT_OFFSET: usize = BASE_OFFSET + size_of::<i64>();
const LOG_SIZE_OFFSET: usize = NEXT_OFFSET + size_of::<i64>();
const INDEX_CRC_OFFSET: usize = LOG_SIZE_OFFSET + size_of::<u64>();
const MAX_TIMESTAMP_OFFSET: usize = INDEX_CRC_OFFSET + size_of::<u32>() + 4;
const MAX_TIMESTAMP_BATCH_OFFSET: usize = MAX_TIMESTAMP_OFFSET + size_of::<i64>();
const CRC_OFFSET: usize = MAX_TIMESTAMP_BATCH_OFFSET + size_of::<i64>();
/// Bytes of a time index file.
pub const LEN: usize = CRC_OFFSET + size_of::<u32>();

/// Versions of the time index this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The first: one record, as the module documents.
    V1,
}

impl Version {
    /// The version written.
    pub const CURRENT: Version = Version::V1;

    /// The on-disk number.
    pub fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
        }
    }
}

impl TryFrom<u8> for Version {
    type Error = Invalid;

    fn try_from(v: u8) -> Result<Self, Invalid> {
        match v {
            1 => Ok(Version::V1),
            other => Err(Invalid::Version(other)),
        }
    }
}

/// Why time index bytes were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// Not [`LEN`] bytes (a torn write, or not a time index).
    #[error("{0} bytes, not {LEN}")]
    Length(usize),
    /// The magic does not match.
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    /// A version this build does not know.
    #[error("unknown version {0}")]
    Version(u8),
    /// The checksum does not match the bytes.
    #[error("checksum mismatch: stored {expected:#010x}, computed {got:#010x}")]
    Checksum {
        /// The stored checksum.
        expected: u32,
        /// The checksum of the bytes read.
        got: u32,
    },
    /// Reserved bytes are not zero.
    #[error("reserved bytes are not zero")]
    Reserved,
    /// It validates but does not describe the segment as it is now.
    #[error("stale: {0}")]
    Stale(String),
}

/// What a time index file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndex {
    /// The segment's first offset.
    pub base_offset: i64,
    /// The offset after its last batch.
    pub next_offset: i64,
    /// Bytes of its log.
    pub log_size: u64,
    /// CRC32C of its index file's bytes.
    pub index_crc: u32,
    /// The newest `max_timestamp` of its batches; -1 when none has one.
    pub max_timestamp: i64,
    /// Base offset of the first batch whose `max_timestamp` is
    /// `max_timestamp`; -1 when none has one.
    pub max_timestamp_offset: i64,
}

fn be_u32(b: &[u8; LEN], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be_u64(b: &[u8; LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn be_i64(b: &[u8; LEN], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

impl TimeIndex {
    /// The file's bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..VERSION_OFFSET].copy_from_slice(&MAGIC);
        b[VERSION_OFFSET] = Version::CURRENT.number();
        b[BASE_OFFSET..NEXT_OFFSET].copy_from_slice(&self.base_offset.to_be_bytes());
        b[NEXT_OFFSET..LOG_SIZE_OFFSET].copy_from_slice(&self.next_offset.to_be_bytes());
        b[LOG_SIZE_OFFSET..INDEX_CRC_OFFSET].copy_from_slice(&self.log_size.to_be_bytes());
        b[INDEX_CRC_OFFSET..INDEX_CRC_OFFSET + 4].copy_from_slice(&self.index_crc.to_be_bytes());
        b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_BATCH_OFFSET]
            .copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[MAX_TIMESTAMP_BATCH_OFFSET..CRC_OFFSET]
            .copy_from_slice(&self.max_timestamp_offset.to_be_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses and checks the file's bytes (not yet against the segment: see
    /// [`TimeIndex::check`]).
    ///
    /// # Errors
    /// [`Invalid`] saying what did not check.
    pub fn decode(bytes: &[u8]) -> Result<TimeIndex, Invalid> {
        let b: &[u8; LEN] = bytes.try_into().map_err(|_| Invalid::Length(bytes.len()))?;
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&b[..VERSION_OFFSET]);
        if magic != MAGIC {
            return Err(Invalid::Magic(magic));
        }
        Version::try_from(b[VERSION_OFFSET])?;
        let (expected, got) = (be_u32(b, CRC_OFFSET), crc32c::crc32c(&b[..CRC_OFFSET]));
        if expected != got {
            return Err(Invalid::Checksum { expected, got });
        }
        if b[VERSION_OFFSET + 1..BASE_OFFSET] != [0; 3]
            || b[INDEX_CRC_OFFSET + 4..MAX_TIMESTAMP_OFFSET] != [0; 4]
        {
            return Err(Invalid::Reserved);
        }
        Ok(TimeIndex {
            base_offset: be_i64(b, BASE_OFFSET),
            next_offset: be_i64(b, NEXT_OFFSET),
            log_size: be_u64(b, LOG_SIZE_OFFSET),
            index_crc: be_u32(b, INDEX_CRC_OFFSET),
            max_timestamp: be_i64(b, MAX_TIMESTAMP_OFFSET),
            max_timestamp_offset: be_i64(b, MAX_TIMESTAMP_BATCH_OFFSET),
        })
    }

    /// Checks that this describes the segment `now` (its base, end, log size
    /// and index as they are) and is consistent with what was read of it: its
    /// last batch's `max_timestamp` can be no newer than the newest of all.
    ///
    /// # Errors
    /// [`Invalid::Stale`] naming the first field that differs.
    pub fn check(&self, now: &TimeIndex, last_batch_timestamp: i64) -> Result<(), Invalid> {
        // What the time index says and what the segment has, for each field
        // that ties it to the segment as found.
        let ties = [
            (
                "base offset",
                self.base_offset.to_string(),
                now.base_offset.to_string(),
            ),
            (
                "the log's size",
                self.log_size.to_string(),
                now.log_size.to_string(),
            ),
            (
                "the offset after the last batch",
                self.next_offset.to_string(),
                now.next_offset.to_string(),
            ),
            (
                "the index's checksum",
                format!("{:#010x}", self.index_crc),
                format!("{:#010x}", now.index_crc),
            ),
        ];
        if let Some((what, saved, found)) =
            ties.into_iter().find(|(_, saved, found)| saved != found)
        {
            return Err(Invalid::Stale(format!(
                "{what} is {found}, the time index says {saved}"
            )));
        }
        let holder_fits = if self.max_timestamp == -1 {
            self.max_timestamp_offset == -1
        } else {
            self.max_timestamp >= 0
                && (self.base_offset..self.next_offset).contains(&self.max_timestamp_offset)
        };
        if !holder_fits || self.max_timestamp < last_batch_timestamp {
            return Err(Invalid::Stale(format!(
                "newest timestamp {} at offset {} does not fit the segment (last batch's timestamp {last_batch_timestamp}, offsets {}..{})",
                self.max_timestamp, self.max_timestamp_offset, self.base_offset, self.next_offset
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TimeIndex {
        TimeIndex {
            base_offset: 100,
            next_offset: 250,
            log_size: 65_000,
            index_crc: 0xdead_beef,
            max_timestamp: 1_700_000_000_000,
            max_timestamp_offset: 120,
        }
    }

    #[test]
    fn the_layout_is_60_bytes_big_endian() {
        assert_eq!(LEN, 60);
        let b = sample().encode();
        assert_eq!(&b[..4], b"SLTI");
        assert_eq!(b[4], 1);
        assert_eq!(&b[8..16], &100i64.to_be_bytes());
        assert_eq!(&b[16..24], &250i64.to_be_bytes());
        assert_eq!(&b[24..32], &65_000u64.to_be_bytes());
        assert_eq!(&b[32..36], &0xdead_beefu32.to_be_bytes());
        assert_eq!(&b[40..48], &1_700_000_000_000i64.to_be_bytes());
        assert_eq!(&b[48..56], &120i64.to_be_bytes());
        assert_eq!(&b[56..], &crc32c::crc32c(&b[..56]).to_be_bytes());
        assert_eq!(TimeIndex::decode(&b), Ok(sample()));
    }

    #[test]
    fn damaged_or_torn_bytes_never_decode() {
        let good = sample().encode();
        for i in 0..LEN {
            for bit in 0..8 {
                let mut b = good;
                b[i] ^= 1 << bit;
                assert!(TimeIndex::decode(&b).is_err(), "byte {i} bit {bit}");
            }
        }
        for len in 0..LEN {
            assert_eq!(TimeIndex::decode(&good[..len]), Err(Invalid::Length(len)));
        }
        let mut longer = good.to_vec();
        longer.push(0);
        assert_eq!(TimeIndex::decode(&longer), Err(Invalid::Length(LEN + 1)));
        let mut v2 = good;
        v2[4] = 2;
        let crc = crc32c::crc32c(&v2[..56]);
        v2[56..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(TimeIndex::decode(&v2), Err(Invalid::Version(2)));
    }

    #[test]
    fn a_time_index_that_does_not_describe_the_segment_is_stale() {
        let saved = sample();
        assert_eq!(saved.check(&saved, 5), Ok(()));
        let stale =
            |now: TimeIndex, last: i64| matches!(saved.check(&now, last), Err(Invalid::Stale(_)));
        assert!(
            stale(
                TimeIndex {
                    log_size: 64_000,
                    ..saved
                },
                5
            ),
            "a cut log"
        );
        assert!(
            stale(
                TimeIndex {
                    log_size: 66_000,
                    ..saved
                },
                5
            ),
            "a longer log"
        );
        assert!(stale(
            TimeIndex {
                next_offset: 249,
                ..saved
            },
            5
        ));
        assert!(stale(
            TimeIndex {
                base_offset: 0,
                ..saved
            },
            5
        ));
        assert!(
            stale(
                TimeIndex {
                    index_crc: 1,
                    ..saved
                },
                5
            ),
            "other batches"
        );
        assert!(stale(saved, saved.max_timestamp + 1), "a newer last batch");
        let outside = TimeIndex {
            max_timestamp_offset: 250,
            ..saved
        };
        assert!(matches!(outside.check(&outside, 5), Err(Invalid::Stale(_))));
        let none = TimeIndex {
            max_timestamp: -1,
            max_timestamp_offset: -1,
            ..saved
        };
        assert_eq!(none.check(&none, -1), Ok(()));
    }
}
