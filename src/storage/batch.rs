//! Kafka RecordBatch v2 framing: just enough to validate a batch, read its offsets and
//! rewrite its base offset. Records are never decoded, so every compression codec,
//! header, producer id/epoch/sequence and timestamp is stored exactly as received.
//!
//! ```text
//! offset  size  field                    covered by CRC
//!  0       8    baseOffset               no  (the broker rewrites it)
//!  8       4    batchLength              no  (bytes after this field)
//! 12       4    partitionLeaderEpoch     no
//! 16       1    magic (2)                no
//! 17       4    crc (CRC32C of 21..end)  no
//! 21       2    attributes               yes (bits 0-2: compression codec)
//! 23       4    lastOffsetDelta          yes
//! 27       8    baseTimestamp            yes
//! 35       8    maxTimestamp             yes
//! 43       8    producerId               yes
//! 51       2    producerEpoch            yes
//! 53       4    baseSequence             yes
//! 57       4    recordCount              yes
//! 61       …    records                  yes
//! ```

/// Bytes before the records.
pub const HEADER_LEN: usize = 61;
const LENGTH_OFFSET: usize = 8;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_DELTA_OFFSET: usize = 23;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
/// Attribute bit of a batch written inside a transaction.
pub const ATTR_TRANSACTIONAL: u16 = 0x10;
/// Attribute bit of a control batch (transaction markers).
pub const ATTR_CONTROL: u16 = 0x20;
const COUNT_OFFSET: usize = 57;
/// Bytes of `baseOffset` + `batchLength`, which `batchLength` does not count.
pub const LOG_OVERHEAD: usize = 12;

/// What is wrong with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or the declared length.
    Truncated,
    /// Not RecordBatch v2.
    BadMagic(i8),
    /// Declared length is impossible.
    BadLength(i32),
    /// The stored CRC does not match the bytes.
    Crc {
        /// CRC stored in the batch.
        expected: u32,
        /// CRC computed over the bytes.
        got: u32,
    },
    /// The compression codec is not one Kafka defines (0-4).
    UnsupportedCompression(u8),
    /// Record count and last offset delta disagree, or the batch holds no record.
    BadCount {
        /// The batch's record count.
        count: i32,
        /// The batch's last offset delta.
        last_offset_delta: i32,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Truncated => write!(f, "truncated record batch"),
            BatchError::BadMagic(m) => write!(f, "record batch magic {m} (only v2 is supported)"),
            BatchError::BadLength(l) => write!(f, "record batch length {l} is invalid"),
            BatchError::Crc { expected, got } => write!(
                f,
                "record batch CRC mismatch: stored {expected:#010x}, computed {got:#010x}"
            ),
            BatchError::UnsupportedCompression(c) => write!(f, "unsupported compression codec {c}"),
            BatchError::BadCount {
                count,
                last_offset_delta,
            } => {
                write!(
                    f,
                    "record count {count} does not match last offset delta {last_offset_delta}"
                )
            }
        }
    }
}

/// The header fields the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Total bytes of the batch, framing included.
    pub len: usize,
    /// The batch's base offset as stored.
    pub base_offset: i64,
    /// Offset of the last record relative to the base.
    pub last_offset_delta: i32,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// The idempotent producer that wrote it, or -1.
    pub producer_id: i64,
    /// That producer's epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record (per producer and partition), or -1.
    pub base_sequence: i32,
    /// The attributes field (codec, timestamp type, transactional, control).
    pub attributes: u16,
}

impl BatchInfo {
    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    /// Offsets the batch occupies.
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }
    /// Sequence number of the last record; sequences wrap from `i32::MAX` to 0.
    pub fn last_sequence(&self) -> i32 {
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    b.get(at..at + 4)
        .map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_i64(b: &[u8], at: usize) -> Option<i64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(i64::from_be_bytes(a))
}

/// Reads the header at the start of `buf` (which need only hold the header).
///
/// # Errors
/// When the header is short, not v2, or declares an impossible length.
pub fn parse_header(buf: &[u8]) -> Result<BatchInfo, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Truncated);
    }
    let magic = buf[MAGIC_OFFSET] as i8;
    if magic != 2 {
        return Err(BatchError::BadMagic(magic));
    }
    let length = be_i32(buf, LENGTH_OFFSET).ok_or(BatchError::Truncated)?;
    if length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(length));
    }
    Ok(BatchInfo {
        len: LOG_OVERHEAD + length as usize,
        base_offset: be_i64(buf, 0).ok_or(BatchError::Truncated)?,
        last_offset_delta: be_i32(buf, LAST_DELTA_OFFSET).ok_or(BatchError::Truncated)?,
        max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET).ok_or(BatchError::Truncated)?,
        producer_id: be_i64(buf, PRODUCER_ID_OFFSET).ok_or(BatchError::Truncated)?,
        producer_epoch: i16::from_be_bytes([
            buf[PRODUCER_EPOCH_OFFSET],
            buf[PRODUCER_EPOCH_OFFSET + 1],
        ]),
        base_sequence: be_i32(buf, BASE_SEQUENCE_OFFSET).ok_or(BatchError::Truncated)?,
        attributes: u16::from_be_bytes([buf[ATTRIBUTES_OFFSET], buf[ATTRIBUTES_OFFSET + 1]]),
    })
}

/// Validates one whole batch at the start of `buf`: header, length, CRC, codec and
/// record count.
///
/// # Errors
/// The first check that fails.
pub fn validate(buf: &[u8]) -> Result<BatchInfo, BatchError> {
    let info = parse_header(buf)?;
    let bytes = buf.get(..info.len).ok_or(BatchError::Truncated)?;
    let expected = u32::from_be_bytes([
        bytes[CRC_OFFSET],
        bytes[CRC_OFFSET + 1],
        bytes[CRC_OFFSET + 2],
        bytes[CRC_OFFSET + 3],
    ]);
    let got = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
    if expected != got {
        return Err(BatchError::Crc { expected, got });
    }
    let codec = bytes[ATTRIBUTES_OFFSET + 1] & 0x07;
    if codec > 4 {
        return Err(BatchError::UnsupportedCompression(codec));
    }
    let count = be_i32(bytes, COUNT_OFFSET).ok_or(BatchError::Truncated)?;
    if count < 1 || info.last_offset_delta < 0 || info.last_offset_delta < count - 1 {
        return Err(BatchError::BadCount {
            count,
            last_offset_delta: info.last_offset_delta,
        });
    }
    Ok(info)
}

/// Validates every batch in a produce payload (one or more whole batches, nothing else).
///
/// # Errors
/// The first invalid batch, or trailing bytes that are not a whole batch.
pub fn validate_all(buf: &[u8]) -> Result<Vec<BatchInfo>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let info = validate(&buf[at..])?;
        at += info.len;
        out.push(info);
    }
    if out.is_empty() {
        return Err(BatchError::Truncated);
    }
    Ok(out)
}

/// First timestamp of a batch (the base its records' deltas count from).
const BASE_TIMESTAMP_OFFSET: usize = 27;

/// Reads a zigzag varint (up to 64 bits) at `*at`, advancing it.
fn varlong(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((v >> 1) as i64 ^ -((v & 1) as i64));
        }
    }
    None
}

/// The (offset, timestamp) of every record of the whole, uncompressed batch at the
/// start of `buf`, in order. `None` for a compressed batch (its records would have
/// to be decompressed) or records that do not parse.
pub fn record_timestamps(buf: &[u8]) -> Option<Vec<(i64, i64)>> {
    let info = parse_header(buf).ok()?;
    let bytes = buf.get(..info.len)?;
    if bytes[ATTRIBUTES_OFFSET + 1] & 0x07 != 0 {
        return None;
    }
    let base_ts = be_i64(bytes, BASE_TIMESTAMP_OFFSET)?;
    let count = usize::try_from(be_i32(bytes, COUNT_OFFSET)?).ok()?;
    let mut out = Vec::with_capacity(count.min(bytes.len()));
    let mut at = HEADER_LEN;
    for _ in 0..count {
        let len = usize::try_from(varlong(bytes, &mut at)?).ok()?;
        let end = at.checked_add(len).filter(|&e| e <= bytes.len())?;
        let mut r = at + 1; // attributes
        let ts_delta = varlong(bytes, &mut r)?;
        let offset_delta = varlong(bytes, &mut r)?;
        if r > end {
            return None;
        }
        out.push((
            info.base_offset.checked_add(offset_delta)?,
            base_ts.checked_add(ts_delta)?,
        ));
        at = end;
    }
    Some(out)
}

/// Rewrites the base offsets of consecutive batches in `buf` so the first starts at
/// `base`; returns the offset after the last one. The CRC does not cover the base
/// offset, so it stays valid.
pub fn assign_offsets(buf: &mut [u8], infos: &[BatchInfo], base: i64) -> i64 {
    let mut at = 0;
    let mut next = base;
    for info in infos {
        buf[at..at + 8].copy_from_slice(&next.to_be_bytes());
        next += info.offset_count();
        at += info.len;
    }
    next
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a valid uncompressed batch with `count` records whose values are `values`.
    pub(crate) fn make_batch(base: i64, values: &[&[u8]]) -> Vec<u8> {
        make_producer_batch(base, values, -1, -1, -1)
    }

    /// `b` with its first and largest timestamps set to `ts` (CRC updated).
    pub(crate) fn with_timestamp(mut b: Vec<u8>, ts: i64) -> Vec<u8> {
        b[27..35].copy_from_slice(&ts.to_be_bytes());
        b[35..43].copy_from_slice(&ts.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// [`make_batch`] written by producer `pid` at `epoch`, first sequence `seq`.
    pub(crate) fn make_producer_batch(
        base: i64,
        values: &[&[u8]],
        pid: i64,
        epoch: i16,
        seq: i32,
    ) -> Vec<u8> {
        let records: Vec<(i64, &[u8])> = values.iter().map(|v| (0, *v)).collect();
        make_timed_batch(base, 1_700_000_000_000, &records, pid, epoch, seq)
    }

    /// A batch whose record `i` is `records[i].1` at timestamp `first_ts +
    /// records[i].0`.
    pub(crate) fn make_timed_batch(
        base: i64,
        first_ts: i64,
        records: &[(i64, &[u8])],
        pid: i64,
        epoch: i16,
        seq: i32,
    ) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, v: i64) {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                let b = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
        }
        let values = records;
        let mut records = Vec::new();
        for (i, &(delta, v)) in values.iter().enumerate() {
            let mut r = Vec::new();
            r.push(0u8); // attributes
            varint(&mut r, delta); // timestamp delta
            varint(&mut r, i as i64); // offset delta
            varint(&mut r, -1); // key
            varint(&mut r, v.len() as i64);
            r.extend_from_slice(v);
            varint(&mut r, 0); // headers
            varint(&mut records, r.len() as i64);
            records.extend_from_slice(&r);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&base.to_be_bytes());
        b.extend_from_slice(&[0; 4]); // length, patched below
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]); // crc, patched below
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(values.len() as i32 - 1).to_be_bytes());
        let max_delta = values.iter().map(|r| r.0).max().unwrap_or(0);
        b.extend_from_slice(&first_ts.to_be_bytes());
        b.extend_from_slice(&(first_ts + max_delta).to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&(values.len() as i32).to_be_bytes());
        b.extend_from_slice(&records);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn record_timestamps_are_read_from_uncompressed_batches_only() {
        let mut b = make_timed_batch(
            0,
            1000,
            &[(0, b"a"), (-300, b"b"), (70_000, b"c"), (5, &[9u8; 200])],
            -1,
            -1,
            -1,
        );
        let infos = validate_all(&b).unwrap();
        assign_offsets(&mut b, &infos, 40);
        assert_eq!(
            record_timestamps(&b),
            Some(vec![(40, 1000), (41, 700), (42, 71_000), (43, 1005)])
        );
        assert_eq!(validate(&b).unwrap().max_timestamp, 71_000);
        // A codec other than none: the records are not read.
        let mut gz = b.clone();
        gz[ATTRIBUTES_OFFSET + 1] |= 1;
        assert_eq!(record_timestamps(&gz), None);
        // More records counted than the batch holds, or a batch cut short: no
        // answer, no panic.
        let mut bad = b.clone();
        bad[COUNT_OFFSET + 3] += 1;
        assert_eq!(record_timestamps(&bad), None);
        assert_eq!(record_timestamps(&b[..HEADER_LEN + 3]), None);
        let mut long = b.clone();
        long[HEADER_LEN] = 0x7e; // the first record's length: 63 bytes, past it
        assert_ne!(record_timestamps(&long), record_timestamps(&b));
    }

    #[test]
    fn header_len_matches_layout() {
        assert_eq!(COUNT_OFFSET + 4, HEADER_LEN);
    }

    #[test]
    fn validates_and_rewrites_offsets_keeping_crc() {
        let mut two = make_batch(0, &[b"a", b"b", b"c"]);
        two.extend_from_slice(&make_batch(0, &[b"d"]));
        let infos = validate_all(&two).expect("valid");
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].last_offset_delta, 2);
        let next = assign_offsets(&mut two, &infos, 10);
        assert_eq!(next, 14);
        let again = validate_all(&two).expect("still valid after rewrite");
        assert_eq!(again[0].base_offset, 10);
        assert_eq!(again[1].base_offset, 13);
    }

    #[test]
    fn rejects_bad_crc_and_truncation() {
        let mut b = make_batch(0, &[b"hello"]);
        let n = b.len();
        b[n - 2] ^= 0xff;
        assert!(matches!(validate(&b), Err(BatchError::Crc { .. })));
        let b = make_batch(0, &[b"hello"]);
        assert_eq!(validate(&b[..b.len() - 1]), Err(BatchError::Truncated));
        assert_eq!(validate_all(&[]), Err(BatchError::Truncated));
        let mut b = make_batch(0, &[b"x"]);
        b[16] = 1;
        assert_eq!(validate(&b), Err(BatchError::BadMagic(1)));
    }
}
