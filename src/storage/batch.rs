//! Kafka RecordBatch v2 framing: just enough to validate a batch, read its offsets and
//! rewrite its base offset, and to read the keys and timestamps of its records
//! (decompressing a compressed batch; for compaction, the keyless check of
//! compacted topics, and timestamp lookups). Every compression codec, header,
//! producer id/epoch/sequence and timestamp is stored exactly as received,
//! except for the header fields Kafka rewrites at append too (see
//! [`rewrite_at_append`]), and that compaction may write a batch back with
//! fewer records and their largest timestamp ([`retain_records`]),
//! uncompressed or compressed again with its own codec ([`compress_records`]).
//!
//! ```text
//! offset  size  field                    covered by CRC
//!  0       8    baseOffset               no  (the broker rewrites it)
//!  8       4    batchLength              no  (bytes after this field)
//! 12       4    partitionLeaderEpoch     no  (the broker rewrites it)
//! 16       1    magic (2)                no
//! 17       4    crc (CRC32C of 21..end)  no
//! 21       2    attributes               yes (bits 0-2 compression codec, 3 timestamp
//!                                              type, 4 transactional, 5 control, 6 delete horizon)
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
const LEADER_EPOCH_OFFSET: usize = 12;
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
/// The timestamp of a batch without records: none (Kafka's `NO_TIMESTAMP`).
pub const NO_TIMESTAMP: i64 = -1;
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
    /// A produced partition holds more than one batch, or bytes after its
    /// batch (Produce v3 and later carry exactly one batch per partition).
    MultipleBatches,
    /// A produced batch whose base offset is not 0: clients send 0, and
    /// Kafka refuses any other (`UnifiedLog.analyzeAndValidateRecords`).
    BaseOffset(i64),
    /// A batch from an idempotent producer (producer id 0 or more) without a
    /// sequence number.
    NoSequence {
        /// The batch's producer id.
        producer_id: i64,
        /// Its base sequence.
        base_sequence: i32,
    },
    /// A compressed records section that does not decompress (as Kafka's own
    /// readers decompress it: see [`payload`]), or would be larger than
    /// [`MAX_DECOMPRESSED`].
    BadPayload {
        /// The batch's compression codec.
        codec: u8,
    },
    /// The decompression budget ([`DECOMPRESSION_BUDGET`]) had no room for the
    /// batch's records before the deadline; retriable.
    DecompressionBusy,
    /// A record that does not parse, is out of order, or does not fit the batch.
    BadRecord {
        /// The record's index in its batch (the count, for bytes after the
        /// last counted record).
        index: i32,
        /// What is wrong.
        what: RecordFault,
    },
}

/// What is wrong with a record of a produced batch (see [`BatchError::BadRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// Its length prefix does not parse, is negative, or runs past the batch.
    Length,
    /// A field inside it does not parse or runs past the record's length.
    Field,
    /// Its fields end before its length does.
    TrailingBytes,
    /// Its offset delta is not its index in the batch.
    OffsetDelta(i32),
    /// Bytes follow the last record the batch counts.
    BeyondCount,
    /// Its timestamp delta added to the batch's first timestamp overflows a
    /// 64-bit timestamp: every reader here refuses such a record, and Kafka
    /// refuses the batch with INVALID_TIMESTAMP.
    Timestamp,
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
            BatchError::MultipleBatches => write!(
                f,
                "a produce request holds exactly one record batch per partition, and nothing after it"
            ),
            BatchError::BaseOffset(o) => write!(
                f,
                "the base offset of a produced record batch should be 0, but it is {o}"
            ),
            BatchError::NoSequence {
                producer_id,
                base_sequence,
            } => write!(
                f,
                "producer id {producer_id} with invalid base sequence {base_sequence}"
            ),
            BatchError::BadPayload { codec } => write!(
                f,
                "the records (compression codec {codec}) do not decompress as Kafka's clients read them, or exceed {} MiB",
                MAX_DECOMPRESSED >> 20
            ),
            BatchError::DecompressionBusy => write!(
                f,
                "the broker's decompression budget had no room for the records in time"
            ),
            BatchError::BadRecord { index, what } => {
                write!(f, "record {index}: ")?;
                match what {
                    RecordFault::Length => write!(f, "invalid length"),
                    RecordFault::Field => write!(f, "a field runs past the record or is invalid"),
                    RecordFault::TrailingBytes => write!(f, "bytes left after its fields"),
                    RecordFault::OffsetDelta(d) => {
                        write!(f, "offset delta {d}, expected {index}")
                    }
                    RecordFault::BeyondCount => write!(f, "bytes after the last counted record"),
                    RecordFault::Timestamp => {
                        write!(f, "its timestamp delta overflows the batch's first timestamp")
                    }
                }
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
    /// How many records the header states it holds (0: a batch compaction
    /// emptied).
    pub records: i32,
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
        records: be_i32(buf, COUNT_OFFSET).ok_or(BatchError::Truncated)?,
    })
}

/// Validates one whole batch at the start of `buf`: header, length, CRC, codec and
/// record count.
///
/// # Errors
/// The first check that fails.
pub fn validate(buf: &[u8]) -> Result<BatchInfo, BatchError> {
    validate_with(buf, 1)
}

/// [`validate`] for a batch read back from a segment, where compaction may have
/// left a batch with no records (it keeps the offsets the removed records
/// occupied, so that every segment stays contiguous).
///
/// # Errors
/// The first check that fails.
pub fn validate_stored(buf: &[u8]) -> Result<BatchInfo, BatchError> {
    validate_with(buf, 0)
}

fn validate_with(buf: &[u8], min_count: i32) -> Result<BatchInfo, BatchError> {
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
    if count < min_count || info.last_offset_delta < 0 || info.last_offset_delta < count - 1 {
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

/// The most records a refusal lists (see [`Produced::faults`]), and no more
/// than one per [`BYTES_PER_LISTED_FAULT`] bytes of the batch as sent: a
/// compressed batch of many small records would otherwise make a list, and
/// an answer, out of proportion to the request.
pub const MAX_LISTED_FAULTS: usize = 1000;

/// See [`MAX_LISTED_FAULTS`]: the size of the smallest record (a length,
/// attributes, timestamp delta, offset delta, null key, null value and header
/// count of one byte each), so that an uncompressed batch has every record
/// listed (up to the cap).
pub const BYTES_PER_LISTED_FAULT: usize = 7;

/// What a topic asks of each produced record, judged record by record as
/// Kafka's `LogValidator` judges them (`validateKey`, `validateTimestamp`),
/// so that a refusal names every record at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRules {
    /// Every record needs a key (a compacted topic).
    pub keyed: bool,
    /// The broker's clock, in ms since the epoch.
    pub now: i64,
    /// How far ahead of `now` a timestamp may be.
    pub ahead_ms: i64,
    /// How far behind `now` a timestamp may be, when bounded.
    pub behind_ms: Option<i64>,
}

impl RecordRules {
    /// Whether record timestamp `ts` (not -1) breaks the rules: more than
    /// `ahead_ms` ahead, more than `behind_ms` behind, or so far behind that
    /// `now - ts` overflows (Kafka's 64-bit difference then reads as far
    /// ahead).
    pub fn timestamp_refused(&self, ts: i64) -> bool {
        ts > self.now.saturating_add(self.ahead_ms)
            || self.now.checked_sub(ts).is_none()
            || self
                .behind_ms
                .is_some_and(|b| ts < self.now.saturating_sub(b))
    }
}

/// Why a record breaks its topic's [`RecordRules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRefusal {
    /// No key, for a compacted topic.
    NoKey,
    /// Its timestamp is out of range.
    Timestamp,
}

/// What [`validate_produce`] found in a valid produced batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// The batch's header.
    pub info: BatchInfo,
    /// The largest timestamp of its records (first timestamp plus the largest
    /// delta), which the header's `max_timestamp` should be but the client sets
    /// and only the CRC, which the client computes too, covers.
    pub max_timestamp: i64,
    /// The records that break the rules [`validate_produce_by`] was given, by
    /// index in the batch, the first [`MAX_LISTED_FAULTS`] of them (fewer for
    /// a small batch: see there; a record without a key for a compacted topic
    /// is judged by its key alone, as Kafka judges it).
    pub faults: Vec<(i32, RecordRefusal)>,
    /// The oldest and the newest timestamp of the records, listed or not,
    /// refused for their timestamp, if any.
    pub timestamp_refused: Option<(i64, i64)>,
}

/// Whether [`validate_produce`] of `buf` may take long enough that an async
/// runtime's worker should not run it in place: a compressed batch (a few KiB
/// may decompress to [`MAX_DECOMPRESSED`] bytes) or a large one.
pub fn validation_may_block(buf: &[u8]) -> bool {
    buf.len() > 64 * 1024
        || buf
            .get(ATTRIBUTES_OFFSET + 1)
            .is_some_and(|a| a & 0x07 != 0)
}

/// Validates the records produced to one partition, as Kafka's `LogValidator`
/// does: exactly one whole batch (RecordBatch v2) and nothing after it; its CRC
/// and codec; a base offset of 0; a record count of at least one equal to
/// `lastOffsetDelta + 1`; a base sequence for a producer id of 0 or more; and
/// every record, walked once (decompressed first for a compressed batch):
/// length prefixes and fields in bounds, offset deltas `0..count` in order,
/// exactly `count` records filling the batch. The broker assigns the batch's
/// offsets. Nothing is allocated per
/// record; a compressed batch is decompressed within the broker's budget (see
/// [`payload`]), so it may block while other decompressions hold it.
///
/// # Errors
/// The first check that fails.
pub fn validate_produce(buf: &[u8]) -> Result<Produced, BatchError> {
    validate_produce_by(buf, None, None)
}

/// [`validate_produce`], waiting for the decompression budget until `deadline`
/// at most ([`BatchError::DecompressionBusy`] then), and listing the records
/// that break `rules` (see [`Produced::faults`]).
///
/// # Errors
/// The first check that fails.
pub fn validate_produce_by(
    buf: &[u8],
    deadline: Option<std::time::Instant>,
    rules: Option<&RecordRules>,
) -> Result<Produced, BatchError> {
    // The magic sits at the same place in a v0/v1 message set, whose one
    // message may be shorter than a v2 header (26 bytes at least): refused
    // by its magic, not as a truncated batch.
    if let Some(&magic) = buf.get(MAGIC_OFFSET).filter(|&&m| m != 2) {
        return Err(BatchError::BadMagic(magic as i8));
    }
    let info = parse_header(buf)?;
    if buf.len() > info.len {
        return Err(BatchError::MultipleBatches);
    }
    // Before the CRC, which does not cover it, as Kafka checks it.
    if info.base_offset != 0 {
        return Err(BatchError::BaseOffset(info.base_offset));
    }
    let info = validate(buf)?;
    let count = be_i32(buf, COUNT_OFFSET).ok_or(BatchError::Truncated)?;
    if i64::from(info.last_offset_delta) != i64::from(count) - 1 {
        return Err(BatchError::BadCount {
            count,
            last_offset_delta: info.last_offset_delta,
        });
    }
    if info.producer_id >= 0 && info.base_sequence < 0 {
        return Err(BatchError::NoSequence {
            producer_id: info.producer_id,
            base_sequence: info.base_sequence,
        });
    }
    let codec = buf[ATTRIBUTES_OFFSET + 1] & 0x07;
    let mut busy = false;
    let payload = payload_within(buf, &DECOMPRESSION, deadline, &mut busy);
    let payload = payload.ok_or(if busy {
        BatchError::DecompressionBusy
    } else {
        BatchError::BadPayload { codec }
    })?;
    let first = be_i64(buf, BASE_TIMESTAMP_OFFSET).ok_or(BatchError::Truncated)?;
    let mut faults = Faults {
        listed: Vec::new(),
        room: MAX_LISTED_FAULTS.min(buf.len() / BYTES_PER_LISTED_FAULT),
        timestamp_refused: None,
    };
    let max_delta = walk_records(&payload, count, first, rules, &mut faults)?;
    Ok(Produced {
        info,
        faults: faults.listed,
        timestamp_refused: faults.timestamp_refused,
        // Every record's sum was checked in `walk_records`.
        max_timestamp: first.saturating_add(max_delta),
    })
}

/// Reads a zigzag varint of at most 32 bits at `*at`, advancing it: at most 5
/// bytes, as Kafka's `ByteUtils.readVarint` reads it (it refuses a fifth byte
/// with the continuation bit set, so Java consumers fail on a longer one),
/// and no value wider than 32 bits.
fn varint(b: &[u8], at: &mut usize) -> Option<i32> {
    let mut v: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let v = u32::try_from(v).ok()?;
            return Some((v >> 1) as i32 ^ -((v & 1) as i32));
        }
    }
    None
}

/// Steps over a length-prefixed byte string (`-1`: null, when `nullable`) at
/// `*at` in `b`; whether it was null.
fn skip_bytes(b: &[u8], at: &mut usize, nullable: bool) -> Option<bool> {
    let len = varint(b, at)?;
    if len < 0 {
        return (nullable && len == -1).then_some(true);
    }
    *at = at
        .checked_add(usize::try_from(len).ok()?)
        .filter(|&e| e <= b.len())?;
    Some(false)
}

/// Walks the `count` records of a records section (decompressed): each record's
/// length, attributes, timestamp delta, offset delta (its index), key, value and
/// headers. Returns the index of the first record without a key and the largest
/// timestamp delta.
/// The records of a batch that break their topic's rules, as a walk finds
/// them (see [`Produced::faults`]).
struct Faults {
    listed: Vec<(i32, RecordRefusal)>,
    /// How many more may be listed.
    room: usize,
    timestamp_refused: Option<(i64, i64)>,
}

/// Walks the records of a batch whose first timestamp is `first`: the largest
/// timestamp delta; the records that break `rules` go to `faults` (records
/// without timestamps, -1, are not judged by theirs).
fn walk_records(
    payload: &[u8],
    count: i32,
    first: i64,
    rules: Option<&RecordRules>,
    faults: &mut Faults,
) -> Result<i64, BatchError> {
    let mut max_delta = i64::MIN;
    let mut at = 0usize;
    for index in 0..count {
        let bad = |what| BatchError::BadRecord { index, what };
        let len = varint(payload, &mut at)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or(bad(RecordFault::Length))?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= payload.len())
            .ok_or(bad(RecordFault::Length))?;
        let record = &payload[at..end];
        let mut r = 1; // attributes
        let mut overflow = false;
        let fields = (|| {
            (r <= record.len()).then_some(())?;
            let ts_delta = varlong(record, &mut r)?;
            max_delta = max_delta.max(ts_delta);
            // As `Records::read_one` reads it: a sum that overflows is no
            // timestamp, and every later reader would skip the whole batch.
            let Some(ts) = first.checked_add(ts_delta) else {
                overflow = true;
                return None;
            };
            let delta = varint(record, &mut r)?;
            let keyless = skip_bytes(record, &mut r, true)?;
            let refusal = rules.and_then(|rules| {
                if keyless && rules.keyed {
                    Some(RecordRefusal::NoKey)
                } else {
                    (ts != -1 && rules.timestamp_refused(ts)).then_some(RecordRefusal::Timestamp)
                }
            });
            if let Some(refusal) = refusal {
                if refusal == RecordRefusal::Timestamp {
                    faults.timestamp_refused = Some(
                        faults
                            .timestamp_refused
                            .map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))),
                    );
                }
                if faults.room > 0 {
                    faults.room -= 1;
                    faults.listed.push((index, refusal));
                }
            }
            skip_bytes(record, &mut r, true)?; // value
            let headers = varint(record, &mut r)?;
            (headers >= 0).then_some(())?;
            for _ in 0..headers {
                skip_bytes(record, &mut r, false)?; // header key
                skip_bytes(record, &mut r, true)?; // header value
            }
            Some(delta)
        })();
        let delta = fields.ok_or(bad(if overflow {
            RecordFault::Timestamp
        } else {
            RecordFault::Field
        }))?;
        if delta != index {
            return Err(bad(RecordFault::OffsetDelta(delta)));
        }
        if r != record.len() {
            return Err(bad(RecordFault::TrailingBytes));
        }
        at = end;
    }
    if at != payload.len() {
        return Err(BatchError::BadRecord {
            index: count,
            what: RecordFault::BeyondCount,
        });
    }
    // At least one record (the count was checked): `max_delta` is one of theirs.
    Ok(max_delta)
}

/// Sets the `max_timestamp` of the batch `b` (one whole batch) and its CRC.
pub fn set_max_timestamp(b: &mut [u8], max_timestamp: i64) {
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The leader epoch of every partition: this broker is each partition's only
/// replica, and its leader since it was created, as Metadata (v7 on) and
/// ListOffsets (v4 on) answer.
pub const PARTITION_LEADER_EPOCH: i32 = 0;

/// Attribute bit of a batch whose timestamps are the broker's (LogAppendTime)
/// rather than its records' own (CreateTime).
pub const ATTR_LOG_APPEND_TIME: u16 = 0x08;

/// The attribute bits Kafka keeps when it rewrites a batch's header at append
/// (`DefaultRecordBatch.setMaxTimestamp`): codec, transactional, control and
/// delete horizon; the timestamp type is set anew, any other bit cleared.
const ATTRS_KEPT_AT_APPEND: u16 = 0x07 | ATTR_TRANSACTIONAL | ATTR_CONTROL | 0x40;

/// Rewrites the header fields of a produced batch `b` (one whole, valid batch)
/// that Kafka's `LogValidator` rewrites at append, whatever the client sent:
/// the partition leader epoch ([`PARTITION_LEADER_EPOCH`]; not covered by the
/// CRC) and, when either differs, the largest timestamp (`max_timestamp`, the
/// records' own) and the timestamp type (CreateTime, the only one a topic
/// here has), the CRC then computed once. A batch flagged LogAppendTime would
/// otherwise make Java consumers read every record's timestamp as the batch's
/// largest. The base offset is the submit thread's to write
/// ([`assign_offsets`]).
pub fn rewrite_at_append(b: &mut [u8], max_timestamp: i64) {
    b[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&PARTITION_LEADER_EPOCH.to_be_bytes());
    let attributes = u16::from_be_bytes([b[ATTRIBUTES_OFFSET], b[ATTRIBUTES_OFFSET + 1]]);
    let stated = be_i64(b, MAX_TIMESTAMP_OFFSET);
    if attributes & ATTR_LOG_APPEND_TIME == 0 && stated == Some(max_timestamp) {
        return;
    }
    let attributes = attributes & ATTRS_KEPT_AT_APPEND;
    b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    set_max_timestamp(b, max_timestamp);
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

/// One record of an uncompressed batch, as [`records`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's offset (the batch's base offset plus its offset delta).
    pub offset: i64,
    /// The record's timestamp (the batch's first timestamp plus its delta).
    pub timestamp: i64,
    /// The key; `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Whether the value is null (a tombstone).
    pub tombstone: bool,
    /// Where the record lies in the batch, its length prefix included.
    pub bytes: std::ops::Range<usize>,
}

/// Reads a length-prefixed byte string (`-1`: null) at `*at`, advancing it.
fn nullable_bytes<'a>(b: &'a [u8], at: &mut usize, end: usize) -> Option<Option<&'a [u8]>> {
    let len = varlong(b, at)?;
    if len < 0 {
        return (len == -1).then_some(None);
    }
    let stop = at
        .checked_add(usize::try_from(len).ok()?)
        .filter(|&e| e <= end)?;
    let v = &b[*at..stop];
    *at = stop;
    Some(Some(v))
}

/// Every record of the whole, uncompressed batch at the start of `buf`, in order.
/// `None` for a compressed batch (see [`payload`] and [`records_in`]) or records
/// that do not parse, or that do not fill the batch exactly.
pub fn records(buf: &[u8]) -> Option<impl ExactSizeIterator<Item = RecordView<'_>>> {
    let info = parse_header(buf).ok()?;
    let bytes = buf.get(..info.len)?;
    if bytes[ATTRIBUTES_OFFSET + 1] & 0x07 != 0 {
        return None;
    }
    Some(records_in(bytes, &bytes[HEADER_LEN..])?.map(|mut r| {
        r.bytes = r.bytes.start + HEADER_LEN..r.bytes.end + HEADER_LEN;
        r
    }))
}

/// The records of the whole batch at the start of `buf` whose records section
/// (decompressed, for a compressed batch) is `payload`, in order; each record's
/// `bytes` is its range in `payload`. `None` when they do not parse or do not
/// fill `payload` exactly. The records are checked here, without allocating,
/// and read again one at a time as they are iterated: a batch of millions of
/// tiny records costs no memory per record.
pub fn records_in<'a>(buf: &[u8], payload: &'a [u8]) -> Option<Records<'a>> {
    let info = parse_header(buf).ok()?;
    let records = Records {
        payload,
        at: 0,
        left: usize::try_from(be_i32(buf, COUNT_OFFSET)?).ok()?,
        base_offset: info.base_offset,
        base_timestamp: be_i64(buf, BASE_TIMESTAMP_OFFSET)?,
    };
    let mut check = records.clone();
    while check.left > 0 {
        check.left -= 1;
        check.read_one()?;
    }
    (check.at == payload.len()).then_some(records)
}

/// The records of one batch, in order: see [`records_in`], which has checked
/// that every one parses.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    payload: &'a [u8],
    /// Where the next record starts in `payload`.
    at: usize,
    /// Records not yet read.
    left: usize,
    base_offset: i64,
    base_timestamp: i64,
}

impl<'a> Records<'a> {
    /// Parses the record at `at` and moves past it; `None` when it does not
    /// parse.
    fn read_one(&mut self) -> Option<RecordView<'a>> {
        let payload = self.payload;
        let start = self.at;
        let mut at = start;
        let len = usize::try_from(varlong(payload, &mut at)?).ok()?;
        let end = at.checked_add(len).filter(|&e| e <= payload.len())?;
        let mut r = at + 1; // attributes
        let ts_delta = varlong(payload, &mut r)?;
        let offset_delta = varlong(payload, &mut r)?;
        let key = nullable_bytes(payload, &mut r, end)?;
        let value = nullable_bytes(payload, &mut r, end)?;
        if r > end {
            return None;
        }
        self.at = end;
        Some(RecordView {
            offset: self.base_offset.checked_add(offset_delta)?,
            timestamp: self.base_timestamp.checked_add(ts_delta)?,
            key,
            tombstone: value.is_none(),
            bytes: start..end,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked by `records_in`: every record parses.
        self.read_one()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Records<'_> {}

/// The largest records section [`payload`] decompresses (a batch that claims
/// more is treated as one whose records cannot be read).
pub const MAX_DECOMPRESSED: usize = 128 << 20;

/// Bytes of decompressed records (and of the decoders' own buffers) held at once
/// across the broker: every request, the cleaner and ListOffsets. Each
/// decompression reserves what it may hold from this budget before allocating
/// it, and waits its turn when the budget is spent (see [`payload`]). Room for
/// the largest single reservation: a zstd records section of
/// [`MAX_DECOMPRESSED`] bytes with as much window history again, plus the
/// decoder's block buffers.
pub const DECOMPRESSION_BUDGET: usize = 2 * MAX_DECOMPRESSED + (16 << 20);

/// The broker's decompression budget (see [`DECOMPRESSION_BUDGET`]).
static DECOMPRESSION: Budget = Budget::new(DECOMPRESSION_BUDGET);

/// A budget of bytes that decompressions reserve before they allocate them.
/// Reservations are granted in the order they are asked for, each once enough
/// of the budget is free; nothing waits for a reservation while holding
/// another, so every wait ends. (A thread that did could wait for good: what
/// it holds may keep its own reservation from fitting, and it heads the line,
/// so every later one waits behind it too.) Debug builds count the
/// reservations each thread holds, and a wait without a deadline asserts
/// that its thread holds none.
#[derive(Debug)]
pub struct Budget {
    capacity: usize,
    state: std::sync::Mutex<BudgetState>,
    changed: std::sync::Condvar,
}

#[derive(Debug)]
struct BudgetState {
    in_use: usize,
    peak: usize,
    /// The next reservation asked for gets this ticket.
    next_ticket: u64,
    /// The ticket whose reservation is granted next.
    serving: u64,
    /// Tickets given up at their deadline before their turn: skipped.
    abandoned: std::collections::BTreeSet<u64>,
    /// Reservations that had to wait, and those of them that gave up.
    waits: u64,
    timeouts: u64,
}

impl BudgetState {
    /// The next ticket's turn, past any given up.
    fn advance(&mut self) {
        self.serving += 1;
        while self.abandoned.remove(&self.serving) {
            self.serving += 1;
        }
    }
}

impl Budget {
    /// A budget of `capacity` bytes.
    pub const fn new(capacity: usize) -> Budget {
        Budget {
            capacity,
            state: std::sync::Mutex::new(BudgetState {
                in_use: 0,
                peak: 0,
                next_ticket: 0,
                serving: 0,
                abandoned: std::collections::BTreeSet::new(),
                waits: 0,
                timeouts: 0,
            }),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves `bytes` (at most the capacity: a larger ask takes all of it),
    /// blocking until the reservations asked for earlier are granted and that
    /// much is free, or until `deadline` (`None`: then the place in line is
    /// given up, and `None` returned).
    fn reserve(
        &self,
        bytes: usize,
        deadline: Option<std::time::Instant>,
    ) -> Option<Reservation<'_>> {
        self.reserve_counting(bytes, deadline, &mut false)
    }

    /// [`Self::reserve`] for one of a decompression's asks: a wait is counted
    /// only while `waited` is false, and sets it, so a decompression that asks
    /// again with more room counts as one wait.
    fn reserve_counting(
        &self,
        bytes: usize,
        deadline: Option<std::time::Instant>,
        counted: &mut bool,
    ) -> Option<Reservation<'_>> {
        let bytes = bytes.min(self.capacity);
        #[cfg(debug_assertions)]
        assert!(
            bytes == 0 || deadline.is_some() || HELD.with(std::cell::Cell::get) == 0,
            "a thread waits for a decompression reservation of {bytes} bytes while holding another: the wait may never end"
        );
        let mut st = self.lock();
        if bytes > 0 {
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            let mut waited = false;
            while st.serving != ticket || st.in_use + bytes > self.capacity {
                if !waited {
                    waited = true;
                    if !*counted {
                        *counted = true;
                        st.waits += 1;
                    }
                }
                let Some(deadline) = deadline else {
                    st = self
                        .changed
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    continue;
                };
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    st.timeouts += 1;
                    if st.serving == ticket {
                        st.advance();
                    } else {
                        st.abandoned.insert(ticket);
                    }
                    self.changed.notify_all();
                    return None;
                }
                st = self
                    .changed
                    .wait_timeout(st, left)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            st.advance();
            st.in_use += bytes;
            st.peak = st.peak.max(st.in_use);
            // The next in line may fit too.
            self.changed.notify_all();
        }
        #[cfg(debug_assertions)]
        HELD.with(|h| h.set(h.get() + 1));
        Some(Reservation {
            budget: self,
            bytes,
            _one_thread: std::marker::PhantomData,
        })
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// Reservations that had to wait for room, and those of them that gave up
    /// at their deadline.
    pub fn waits(&self) -> (u64, u64) {
        let st = self.lock();
        (st.waits, st.timeouts)
    }
}

#[cfg(debug_assertions)]
thread_local! {
    /// [`Reservation`]s this thread holds, of any [`Budget`] (see
    /// [`Budget::reserve`]).
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes held of a [`Budget`], given back when dropped, by the thread that
/// reserved them (it is not `Send`: a thread's reservations are counted in
/// debug builds, see [`Budget`]).
#[derive(Debug)]
struct Reservation<'a> {
    budget: &'a Budget,
    bytes: usize,
    _one_thread: std::marker::PhantomData<*const ()>,
}

impl Reservation<'_> {
    /// Gives back all but `bytes`.
    fn shrink(&mut self, bytes: usize) {
        if bytes < self.bytes {
            let mut st = self.budget.lock();
            st.in_use -= self.bytes - bytes;
            self.bytes = bytes;
            self.budget.changed.notify_all();
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.shrink(0);
        #[cfg(debug_assertions)]
        HELD.with(|h| h.set(h.get() - 1));
    }
}

/// A batch's records section (see [`payload`]): the batch's own bytes, or its
/// records decompressed, which hold their share of the decompression budget
/// until dropped.
#[derive(Debug)]
pub struct Payload<'a> {
    // Declared first: freed before its reservation is given back.
    bytes: std::borrow::Cow<'a, [u8]>,
    _reserved: Option<Reservation<'a>>,
}

impl std::ops::Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The records section of the whole batch at the start of `buf`: the bytes
/// themselves for an uncompressed batch, decompressed for gzip, snappy (raw or
/// xerial-framed, as the Java client writes it), lz4 (the frame format, as the
/// Java client reads it) and zstd (content checksums checked, as zstd-jni
/// checks them). `None` when it does not decompress so, or would be larger
/// than [`MAX_DECOMPRESSED`].
///
/// Decompressed bytes are reserved from the broker's budget
/// ([`DECOMPRESSION_BUDGET`]) before they are allocated, blocking while it is
/// spent: snappy's exact length, which its block headers state (a header that
/// claims more than its block could expand to is refused before anything is
/// allocated); for the streamed codecs, whose length nothing states reliably,
/// a guess (gzip's stated length, or four times the compressed bytes), and
/// four times as much again each time the records turn out larger, starting
/// over. A streamed decompression that outgrows its reservation gives it back
/// before asking for a larger one.
pub fn payload(buf: &[u8]) -> Option<Payload<'_>> {
    payload_within(buf, &DECOMPRESSION, None, &mut false)
}

/// [`payload`], reserving from `budget` (blocking while it is spent).
pub fn payload_in<'a>(buf: &'a [u8], budget: &'a Budget) -> Option<Payload<'a>> {
    payload_within(buf, budget, None, &mut false)
}

/// The broker's decompression budget.
pub fn decompression_budget() -> &'static Budget {
    &DECOMPRESSION
}

/// [`payload`], reserving from `budget` by `deadline`; `None` with `busy` set
/// when the deadline passed first.
fn payload_within<'a>(
    buf: &'a [u8],
    budget: &'a Budget,
    deadline: Option<std::time::Instant>,
    busy: &mut bool,
) -> Option<Payload<'a>> {
    let info = parse_header(buf).ok()?;
    let data = buf.get(HEADER_LEN..info.len)?;
    match buf[ATTRIBUTES_OFFSET + 1] & 0x07 {
        0 => Some(Payload {
            bytes: std::borrow::Cow::Borrowed(data),
            _reserved: None,
        }),
        2 => snappy(data, budget, deadline, busy),
        codec @ (1 | 3 | 4) => streamed(codec, data, budget, deadline, busy),
        _ => None,
    }
}

/// What [`inflate`] gave.
enum Inflated {
    /// The whole records section.
    Done(Vec<u8>),
    /// More bytes than allowed.
    Larger,
}

/// What a streamed decompression (codec 1 gzip, 3 lz4, 4 zstd) of `want` bytes
/// at most holds: its output (one byte more, which tells a larger one), and
/// the decoder's own buffers. lz4 decodes each block straight into the output
/// and reads the compressed bytes where they are ([`lz4_frame`]): nothing
/// more; zstd decodes a frame whole into its own buffer (no further than the
/// room asked for and one block of 128 KiB) before it is copied out, plus
/// block buffers; gzip a window of 32 KiB.
fn streamed_charge(codec: u8, want: usize) -> usize {
    match codec {
        3 => want + 1,
        4 => 2 * want + (1 << 20),
        _ => want + (256 << 10),
    }
}

/// Decompresses a gzip, lz4 or zstd records section of at most `limit` bytes
/// (`None`: it does not decompress, or not as Kafka's Java client reads it).
fn inflate(codec: u8, data: &[u8], limit: usize) -> Option<Inflated> {
    use std::io::Read;
    let room = limit as u64 + 1;
    // All the room at once: a read never grows the buffer past what was reserved.
    let mut out = Vec::with_capacity(limit + 1);
    match codec {
        1 => {
            flate2::read::MultiGzDecoder::new(data)
                .take(room)
                .read_to_end(&mut out)
                .ok()?;
        }
        3 => lz4_frame(data, limit, &mut out)?,
        4 => {
            // One or more frames back to back.
            let mut rest = data;
            while !rest.is_empty() && out.len() <= limit {
                // The frame header descriptor (after the magic number, which
                // the decoder checks): libzstd, which zstd-jni (Kafka's) and
                // librdkafka use, refuses a frame with its reserved bit set,
                // and one whose stated content size (present with a size flag
                // or single segment) is not what it decompresses to.
                let descriptor = *rest.get(4)?;
                if descriptor & 0x08 != 0 {
                    return None;
                }
                let size_stated = descriptor >> 6 != 0 || descriptor & 0x20 != 0;
                let mut frame = ruzstd::decoding::FrameDecoder::new();
                frame.init(&mut rest).ok()?;
                // Decoded no further than the room left, and the block that
                // passes it (128 KiB at most), before anything is collected:
                // a streaming read hands nothing out until the decoder holds
                // more than the frame's window, which a frame declares in one
                // byte (up to 128 MiB, all decoded outside the budget's
                // charge for a 4 KB batch).
                let left = limit + 1 - out.len();
                let strategy = ruzstd::decoding::BlockDecodingStrategy::UptoBytes(left);
                if !frame.decode_blocks(&mut rest, strategy).ok()? || frame.can_collect() >= left {
                    return Some(Inflated::Larger);
                }
                let decoded = frame.collect_to_writer(&mut out).ok()?;
                // Read to its end: its content checksum, when it has one,
                // must match what it decompressed to, as zstd-jni checks it.
                if let Some(stored) = frame.get_checksum_from_data() {
                    (frame.get_calculated_checksum() == Some(stored)).then_some(())?;
                }
                if size_stated && frame.content_size() != decoded as u64 {
                    return None;
                }
            }
        }
        _ => return None,
    }
    Some(if out.len() > limit {
        Inflated::Larger
    } else {
        Inflated::Done(out)
    })
}

/// The magic number of an lz4 frame (little-endian on the wire). The legacy
/// format's (0x184C2102) is not one Kafka reads.
const LZ4_MAGIC: u32 = 0x184D_2204;

/// The little-endian word at `at` in `b`.
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decompresses the lz4 frame at the start of `data` into `out` as Kafka's
/// Java client (`Lz4BlockInputStream`) reads it, and its broker checks it at
/// produce: the frame magic number (not the legacy format's), version 01,
/// independent blocks, no dictionary id, reserved bits clear, a block size of
/// 64 KiB to 4 MiB (BD 4-7), the descriptor's checksum; then each block
/// (compressed, or stored as is) no larger than that size, decoded on its own,
/// its checksum checked when the frame has them; the end mark (a block length
/// of 0: the Java client takes one with the stored bit set for it too); and
/// the content checksum when the frame has one. Bytes after the frame are
/// ignored, as the Java client ignores them. Stops once `out` holds more than
/// `limit` bytes (the caller sees a larger section). `None`: the frame does
/// not decompress, or is one the Java client refuses.
fn lz4_frame(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Option<()> {
    use twox_hash::XxHash32;
    if le_u32(data, 0)? != LZ4_MAGIC {
        return None;
    }
    let (flg, bd) = (*data.get(4)?, *data.get(5)?);
    // FLG: version (bits 7-6) 01; block independence (bit 5) set; bits 1-0
    // (reserved, dictionary id) clear.
    if flg >> 6 != 0b01 || flg & 0x20 == 0 || flg & 0x03 != 0 {
        return None;
    }
    // BD: bit 7 and bits 3-0 reserved; the block size (bits 6-4) 4 to 7.
    let size_code = (bd >> 4) & 0x07;
    if bd & 0x8f != 0 || size_code < 4 {
        return None;
    }
    let max_block = 1usize << (2 * u32::from(size_code) + 8);
    let block_checksums = flg & 0x10 != 0;
    let content_checksum = flg & 0x04 != 0;
    // FLG, BD, the content size when stated, then the descriptor's checksum:
    // the second byte of their xxHash32.
    let mut at = if flg & 0x08 != 0 { 14 } else { 6 };
    let descriptor = XxHash32::oneshot(0, data.get(4..at)?);
    if data.get(at) != Some(&((descriptor >> 8) as u8)) {
        return None;
    }
    at += 1;
    let start = out.len();
    // The bytes decoded: `out` is extended with zeros only past what an
    // earlier block zeroed, and cut to `end` when done. (Zeroing the room of
    // each block anew, up to 4 MiB, made a frame of many blocks of a byte or
    // two cost minutes of CPU per MB.)
    let mut end = out.len();
    let decoded = loop {
        let word = le_u32(data, at)?;
        at += 4;
        let stored = word & 0x8000_0000 != 0;
        let len = (word & 0x7fff_ffff) as usize;
        if len == 0 {
            break Some(());
        }
        if len > max_block {
            break None;
        }
        let block = data.get(at..at + len)?;
        at += len;
        if block_checksums {
            (le_u32(data, at)? == XxHash32::oneshot(0, block)).then_some(())?;
            at += 4;
        }
        // Decoded in place: `out` has room for `limit + 1` bytes, one more
        // than a section may hold.
        let room = (limit + 1).saturating_sub(end);
        let fits = if stored {
            len.min(room)
        } else {
            room.min(max_block)
        };
        if out.len() < end + fits {
            zeroed(end + fits - out.len());
            out.resize(end + fits, 0);
        }
        let into = &mut out[end..end + fits];
        if stored {
            into.copy_from_slice(&block[..fits]);
            end += fits;
        } else {
            // By liblz4, which Kafka's Java client (lz4-java) and librdkafka
            // decode with, into as much room as the Java client gives a
            // block: it refuses blocks that break the format's end-of-block
            // rules (the last sequence literals only, its last bytes too),
            // which a lenient decoder reads, and which would stop every such
            // consumer at the batch.
            let capacity = i32::try_from(fits).ok()?;
            match lz4::block::decompress_to_buffer(block, Some(capacity), into) {
                Ok(n) => end += n,
                // With less room than a block may take, a failure may be the
                // room's (liblz4 says no more): when the block's sequences
                // add up to more than that, taken as more than the limit
                // (`out` full), which the caller tries again with more room,
                // up to its cap. Otherwise the block is damaged: retried with
                // ever more room, a corrupt block of 4 bytes made each batch
                // zero and reserve 5 MiB.
                Err(_) if fits < max_block && lz4_block_output(block).is_some_and(|n| n > fits) => {
                    end += fits;
                }
                Err(_) => break None,
            }
        }
        if end > limit {
            break Some(());
        }
    };
    out.truncate(end);
    decoded?;
    if end <= limit && content_checksum {
        (le_u32(data, at)? == XxHash32::oneshot(0, &out[start..])).then_some(())?;
    }
    Some(())
}

/// The bytes an lz4 block's sequences decode to (literal runs and match
/// lengths added up, nothing checked but that the lengths fit the block);
/// `None` when they do not.
fn lz4_block_output(block: &[u8]) -> Option<usize> {
    // A length: its 4 bits, then bytes added while they are 255.
    let length = |at: &mut usize, first: u8| -> Option<usize> {
        let mut n = usize::from(first);
        if first == 15 {
            loop {
                let b = *block.get(*at)?;
                *at += 1;
                n = n.checked_add(usize::from(b))?;
                if b != 255 {
                    break;
                }
            }
        }
        Some(n)
    };
    let (mut at, mut out) = (0usize, 0usize);
    loop {
        let token = *block.get(at)?;
        at += 1;
        let literals = length(&mut at, token >> 4)?;
        at = at.checked_add(literals).filter(|&a| a <= block.len())?;
        out = out.checked_add(literals)?;
        // The last sequence is literals only.
        if at == block.len() {
            return Some(out);
        }
        // The match's offset, then its length (at least 4).
        at = at.checked_add(2).filter(|&a| a <= block.len())?;
        out = out
            .checked_add(length(&mut at, token & 0x0f)?)?
            .checked_add(4)?;
    }
}

/// Counts the bytes [`lz4_frame`] zeroes (tests check that it zeroes each
/// byte of its output once).
#[cfg(test)]
fn zeroed(n: usize) {
    ZEROED.with(|z| z.set(z.get() + n));
}

#[cfg(not(test))]
#[inline]
fn zeroed(_: usize) {}

#[cfg(test)]
thread_local! {
    /// What [`zeroed`] counted on this thread.
    static ZEROED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A gzip, lz4 or zstd records section (codec 1, 3, 4), decompressed within
/// `budget` (see [`payload`]).
fn streamed<'a>(
    codec: u8,
    data: &[u8],
    budget: &'a Budget,
    deadline: Option<std::time::Instant>,
    busy: &mut bool,
) -> Option<Payload<'a>> {
    // gzip ends with its (last member's) length modulo 2^32: exact for the one
    // member Kafka clients write, a guess otherwise.
    let stated = match (codec, data.len().checked_sub(4)) {
        (1, Some(at)) => data
            .get(at..)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| u32::from_le_bytes(b) as usize),
        _ => 0,
    };
    let mut want = stated
        .max(data.len().saturating_mul(4))
        .clamp(64 << 10, MAX_DECOMPRESSED);
    let mut counted = false;
    loop {
        let charge = streamed_charge(codec, want);
        let Some(mut reserved) = budget.reserve_counting(charge, deadline, &mut counted) else {
            *busy = true;
            return None;
        };
        match inflate(codec, data, want)? {
            Inflated::Done(mut out) => {
                if out.capacity() / 2 > out.len() {
                    out.shrink_to_fit();
                }
                reserved.shrink(out.capacity());
                return Some(Payload {
                    bytes: std::borrow::Cow::Owned(out),
                    _reserved: Some(reserved),
                });
            }
            Inflated::Larger if want >= MAX_DECOMPRESSED => return None,
            // The reservation goes back before a larger one is asked for.
            Inflated::Larger => want = want.saturating_mul(4).min(MAX_DECOMPRESSED),
        }
    }
}

/// The most a raw snappy block of `len` bytes (length header included) can
/// decompress to. A literal emits the bytes it carries and no more; a copy
/// emits at most 64 bytes, and takes 2 bytes (1-byte offset, at most 11
/// bytes), 3 (2-byte offset, at most 64) or 5 (4-byte offset, at most 64): no
/// element emits more than 64/3 bytes per byte of the block, and the length
/// header emits none. A block whose header claims more can never decompress.
fn snappy_max_len(len: usize) -> usize {
    len.saturating_mul(64) / 3
}

const XERIAL: &[u8] = b"\x82SNAPPY\0";

/// Calls `f` with each raw snappy block of `data` as Kafka clients write it:
/// xerial's framing (a magic header, then blocks each preceded by its length)
/// or one raw block. `None` when the framing does not hold or `f` says so.
fn snappy_blocks<'a>(data: &'a [u8], mut f: impl FnMut(&'a [u8]) -> Option<()>) -> Option<()> {
    if !data.starts_with(XERIAL) {
        return f(data);
    }
    let mut at = XERIAL.len() + 8; // version and compatible version
    while at < data.len() {
        let len = usize::try_from(be_i32(data, at)?).ok()?;
        f(data.get(at + 4..at + 4 + len)?)?;
        at += 4 + len;
    }
    Some(())
}

/// A snappy records section, decompressed within `budget`: every block's
/// stated length is checked against what its size allows
/// ([`snappy_max_len`]) and the total against [`MAX_DECOMPRESSED`] before that
/// total is reserved and allocated.
fn snappy<'a>(
    data: &[u8],
    budget: &'a Budget,
    deadline: Option<std::time::Instant>,
    busy: &mut bool,
) -> Option<Payload<'a>> {
    let mut total = 0usize;
    snappy_blocks(data, |b| {
        let n = snap::raw::decompress_len(b).ok()?;
        (n <= snappy_max_len(b.len())).then_some(())?;
        total = total.checked_add(n).filter(|&t| t <= MAX_DECOMPRESSED)?;
        Some(())
    })?;
    let Some(reserved) = budget.reserve(total, deadline) else {
        *busy = true;
        return None;
    };
    let mut out = vec![0u8; total];
    let mut dec = snap::raw::Decoder::new();
    let mut at = 0;
    snappy_blocks(data, |b| {
        let n = snap::raw::decompress_len(b).ok()?;
        dec.decompress(b, out.get_mut(at..at + n)?).ok()?;
        at += n;
        Some(())
    })?;
    Some(Payload {
        bytes: std::borrow::Cow::Owned(out),
        _reserved: Some(reserved),
    })
}

/// Sets a batch's length and CRC from its bytes (after its records changed).
pub(crate) fn seal(b: &mut [u8]) {
    let len = i32::try_from(b.len() - LOG_OVERHEAD).unwrap_or(i32::MAX);
    b[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The whole batch at the start of `buf` holding only the records at the byte
/// ranges `keep` of `payload` (its records section, decompressed for a
/// compressed batch: see [`payload`] and [`records_in`]; or `buf` itself with
/// the ranges [`records`] gives), uncompressed, with `max_timestamp` as its
/// largest timestamp (the kept records' own, as Kafka's log cleaner rebuilds
/// a batch): every other header field stays as it was (base offset, last
/// offset delta, first timestamp, producer), as Kafka's log cleaner keeps
/// them, so the batch still spans the same offsets and its records' deltas
/// still count from its first timestamp.
pub fn retain_records(
    buf: &[u8],
    payload: &[u8],
    keep: impl IntoIterator<Item = std::ops::Range<usize>>,
    max_timestamp: i64,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
    b.extend_from_slice(&buf[..HEADER_LEN]);
    b[ATTRIBUTES_OFFSET + 1] &= !0x07;
    let mut kept = 0usize;
    for r in keep {
        b.extend_from_slice(&payload[r]);
        kept += 1;
    }
    let count = i32::try_from(kept).unwrap_or(i32::MAX);
    b[COUNT_OFFSET..COUNT_OFFSET + 4].copy_from_slice(&count.to_be_bytes());
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    seal(&mut b);
    b
}

/// Bytes of records a snappy block holds as the Java client writes them
/// (xerial's `SnappyOutputStream`, 32 KiB blocks).
const SNAPPY_BLOCK: usize = 32 << 10;

/// Bytes of records an lz4 block holds as the Java client writes them
/// (`Lz4BlockOutputStream`, 64 KiB blocks: BD 4).
const LZ4_BLOCK: usize = 64 << 10;

/// The whole uncompressed batch `b` with its records section compressed with
/// `codec` (1 gzip, 2 snappy, 3 lz4, 4 zstd), the codec bits set and its length
/// and CRC updated, written as Kafka's Java client writes each: gzip at the
/// default level; snappy in xerial's framing (version 1, compatible version 1,
/// 32 KiB blocks); an lz4 frame (version 01, independent blocks of 64 KiB
/// without checksums, no content size or checksum; a block that does not
/// shrink stored as is); a zstd frame (pure Rust, about zstd's level 1). Every
/// one reads back with [`payload`]. `None` for another codec, a batch that
/// does not parse or is already compressed, or a compressor that failed.
pub fn compress_records(b: &[u8], codec: u8) -> Option<Vec<u8>> {
    use std::io::Write;
    let info = parse_header(b).ok()?;
    let section = b.get(HEADER_LEN..info.len)?;
    if is_compressed(b) {
        return None;
    }
    let mut out = b[..HEADER_LEN].to_vec();
    match codec {
        1 => {
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            e.write_all(section).ok()?;
            out = e.finish().ok()?;
        }
        2 => {
            out.extend_from_slice(XERIAL);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            let mut block = Vec::new();
            for chunk in section.chunks(SNAPPY_BLOCK) {
                block.resize(snap::raw::max_compress_len(chunk.len()), 0);
                let n = enc.compress(chunk, &mut block).ok()?;
                out.extend_from_slice(&i32::try_from(n).ok()?.to_be_bytes());
                out.extend_from_slice(&block[..n]);
            }
        }
        3 => {
            // FLG: version 01, independent blocks; BD: 64 KiB blocks.
            let (flg, bd) = (0x60u8, 0x40u8);
            out.extend_from_slice(&LZ4_MAGIC.to_le_bytes());
            out.extend_from_slice(&[flg, bd]);
            out.push((twox_hash::XxHash32::oneshot(0, &[flg, bd]) >> 8) as u8);
            let mut block = vec![0u8; lz4_flex::block::get_maximum_output_size(LZ4_BLOCK)];
            for chunk in section.chunks(LZ4_BLOCK) {
                let n = lz4_flex::block::compress_into(chunk, &mut block).ok()?;
                let (word, bytes) = if n < chunk.len() {
                    (n, &block[..n])
                } else {
                    (chunk.len() | 0x8000_0000, chunk)
                };
                out.extend_from_slice(&u32::try_from(word).ok()?.to_le_bytes());
                out.extend_from_slice(bytes);
            }
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        4 => ruzstd::encoding::compress(
            section,
            &mut out,
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
        _ => return None,
    }
    // The codec bits of an uncompressed batch are clear.
    out[ATTRIBUTES_OFFSET + 1] |= codec;
    i32::try_from(out.len() - LOG_OVERHEAD).ok()?;
    seal(&mut out);
    Some(out)
}

/// A batch with no records spanning offsets `first..=last` (what compaction leaves
/// where every record of one or more batches was removed), with `max_timestamp` as
/// both timestamps, no producer, and the leader epoch of every stored batch.
pub fn empty_batch(first: i64, last: i64, max_timestamp: i64) -> Vec<u8> {
    empty_batch_of(first, last, max_timestamp, (-1, -1, -1))
}

/// The batch `info` describes with no records (what compaction leaves of an
/// idempotent producer's last batch once every record of it went, as Kafka's
/// cleaner keeps it with `BatchRetention.RETAIN_EMPTY`): the same offsets
/// (base offset, last offset delta), producer id, epoch and base sequence, so
/// that producer state read back from the log still finds the producer's last
/// sequence; `max_timestamp` as both timestamps, no codec, CreateTime, and the
/// leader epoch of every stored batch.
pub fn empty_producer_batch(info: &BatchInfo, max_timestamp: i64) -> Vec<u8> {
    empty_batch_of(
        info.base_offset,
        info.last_offset(),
        max_timestamp,
        (info.producer_id, info.producer_epoch, info.base_sequence),
    )
}

/// [`empty_batch`] written by `producer` (id, epoch, base sequence).
fn empty_batch_of(
    first: i64,
    last: i64,
    max_timestamp: i64,
    (producer_id, producer_epoch, base_sequence): (i64, i16, i32),
) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN];
    b[..8].copy_from_slice(&first.to_be_bytes());
    b[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&PARTITION_LEADER_EPOCH.to_be_bytes());
    b[MAGIC_OFFSET] = 2;
    let delta = i32::try_from(last - first).unwrap_or(i32::MAX);
    b[LAST_DELTA_OFFSET..LAST_DELTA_OFFSET + 4].copy_from_slice(&delta.to_be_bytes());
    b[BASE_TIMESTAMP_OFFSET..BASE_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&max_timestamp.to_be_bytes());
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    b[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&producer_id.to_be_bytes());
    b[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    b[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4].copy_from_slice(&base_sequence.to_be_bytes());
    seal(&mut b);
    b
}

/// Whether the batch at the start of `buf` is compressed (codec other than none).
pub fn is_compressed(buf: &[u8]) -> bool {
    codec(buf) != 0
}

/// The compression codec of the batch at the start of `buf` (0 none, 1 gzip,
/// 2 snappy, 3 lz4, 4 zstd; 0 for fewer bytes than its attributes).
pub fn codec(buf: &[u8]) -> u8 {
    buf.get(ATTRIBUTES_OFFSET + 1).map_or(0, |a| a & 0x07)
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
    use std::time::Duration;

    /// Every record of the uncompressed batch at the start of `buf`, collected.
    fn all_records(buf: &[u8]) -> Option<Vec<RecordView<'_>>> {
        records(buf).map(Iterator::collect)
    }

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
        let records: Vec<KeyedRecord<'_>> =
            records.iter().map(|&(d, v)| (d, None, Some(v))).collect();
        make_keyed_batch(base, first_ts, &records, pid, epoch, seq)
    }

    /// A record for [`make_keyed_batch`]: timestamp delta, key, value (`None`: null).
    pub(crate) type KeyedRecord<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>);

    /// A batch of records with keys and values, either of which may be null.
    /// Its partition leader epoch is the one the broker stores, so that a
    /// batch read back equals the one produced (clients send -1, which the
    /// broker rewrites: see [`rewrite_at_append`]).
    pub(crate) fn make_keyed_batch(
        base: i64,
        first_ts: i64,
        values: &[KeyedRecord<'_>],
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
        fn nullable(out: &mut Vec<u8>, v: Option<&[u8]>) {
            match v {
                Some(v) => {
                    varint(out, v.len() as i64);
                    out.extend_from_slice(v);
                }
                None => varint(out, -1),
            }
        }
        let mut records = Vec::new();
        for (i, &(delta, k, v)) in values.iter().enumerate() {
            let mut r = Vec::new();
            r.push(0u8); // attributes
            varint(&mut r, delta); // timestamp delta
            varint(&mut r, i as i64); // offset delta
            nullable(&mut r, k);
            nullable(&mut r, v);
            varint(&mut r, 0); // headers
            varint(&mut records, r.len() as i64);
            records.extend_from_slice(&r);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&base.to_be_bytes());
        b.extend_from_slice(&[0; 4]); // length, patched below
        b.extend_from_slice(&PARTITION_LEADER_EPOCH.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]); // crc, patched below
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(values.len() as i32 - 1).to_be_bytes());
        let max_delta = values.iter().map(|r| r.0).max().unwrap_or(0);
        b.extend_from_slice(&first_ts.to_be_bytes());
        b.extend_from_slice(&first_ts.wrapping_add(max_delta).to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&(values.len() as i32).to_be_bytes());
        b.extend_from_slice(&records);
        seal(&mut b);
        b
    }

    /// `b` (uncompressed) with its records section compressed with `codec` (1
    /// gzip, 2 snappy raw, 5 snappy xerial-framed, 3 lz4 frame, 4 zstd), the
    /// codec bits set and the CRC updated.
    pub(crate) fn compress_batch(b: &[u8], codec: u8) -> Vec<u8> {
        use std::io::Write;
        let records = &b[HEADER_LEN..];
        let packed = match codec {
            1 => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(records).unwrap();
                e.finish().unwrap()
            }
            2 => snap::raw::Encoder::new().compress_vec(records).unwrap(),
            5 => {
                let mut out = b"\x82SNAPPY\0".to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                for chunk in records.chunks(1000) {
                    let c = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
                    out.extend_from_slice(&(c.len() as i32).to_be_bytes());
                    out.extend_from_slice(&c);
                }
                out
            }
            3 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(records).unwrap();
                e.finish().unwrap()
            }
            4 => ruzstd::encoding::compress_to_vec(
                records,
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
            _ => unreachable!(),
        };
        let mut out = b[..HEADER_LEN].to_vec();
        out[ATTRIBUTES_OFFSET + 1] |= if codec == 5 { 2 } else { codec };
        out.extend_from_slice(&packed);
        seal(&mut out);
        out
    }

    #[test]
    fn compressed_batches_are_read_with_every_codec() {
        let b = make_keyed_batch(
            5,
            500,
            &[
                (0, Some(b"k1"), Some(&[7u8; 3000])),
                (1, None, Some(b"v")),
                (2, Some(b"k2"), None),
            ],
            -1,
            -1,
            -1,
        );
        type Owned = (i64, i64, Option<Vec<u8>>, bool);
        let owned = |rs: Vec<RecordView<'_>>| -> Vec<Owned> {
            rs.into_iter()
                .map(|r| {
                    (
                        r.offset,
                        r.timestamp,
                        r.key.map(<[u8]>::to_vec),
                        r.tombstone,
                    )
                })
                .collect()
        };
        let plain = owned(all_records(&b).unwrap());
        for codec in [1, 2, 5, 3, 4] {
            let c = compress_batch(&b, codec);
            let info = validate(&c).unwrap();
            assert_eq!(info.last_offset(), 7);
            assert!(
                is_compressed(&c) && all_records(&c).is_none(),
                "codec {codec}"
            );
            let p = payload(&c).unwrap_or_else(|| panic!("codec {codec}"));
            assert_eq!(&p[..], &b[HEADER_LEN..], "codec {codec}");
            assert_eq!(
                owned(records_in(&c, &p).unwrap().collect()),
                plain,
                "codec {codec}"
            );
            // The records kept, uncompressed, every other field as it was.
            let rs: Vec<_> = records_in(&c, &p).unwrap().collect();
            let kept = retain_records(&c, &p, [rs[2].bytes.clone()], 502);
            assert!(!is_compressed(&kept));
            let left: Vec<_> = all_records(&kept)
                .unwrap()
                .into_iter()
                .map(|r| r.offset)
                .collect();
            assert_eq!(left, vec![7]);
            assert_eq!(validate(&kept).unwrap().last_offset(), 7);
            // Given back before the next decompression (see `Budget`).
            drop(p);
            // Damaged compressed bytes: not read, no panic.
            let mut bad = c.clone();
            let n = bad.len();
            bad[HEADER_LEN..n].fill(0x55);
            seal(&mut bad);
            assert!(
                payload(&bad).is_none_or(|p| records_in(&bad, &p).is_none()),
                "codec {codec}"
            );
        }
        // More than MAX_DECOMPRESSED bytes: not read.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::copy(
            &mut std::io::Read::take(std::io::repeat(0), MAX_DECOMPRESSED as u64 + 1),
            &mut e,
        )
        .unwrap();
        let mut bomb = b[..HEADER_LEN].to_vec();
        bomb[ATTRIBUTES_OFFSET + 1] |= 1;
        bomb.extend_from_slice(&e.finish().unwrap());
        seal(&mut bomb);
        assert!(payload(&bomb).is_none());
    }

    /// Compaction compresses the records it keeps again with their batch's
    /// codec: each codec's output reads back, as the broker reads it and, for
    /// lz4 and gzip, as another decoder does; sections of several blocks and
    /// records that do not compress included.
    #[test]
    fn records_compressed_again_read_back_with_every_codec() {
        use std::io::Read;
        let mut seed = 11u64;
        let noise: Vec<u8> = (0..150_000)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (seed >> 33) as u8
            })
            .collect();
        let repeated = vec![b'a'; 200_000];
        let small = make_keyed_batch(9, 700, &[(3, Some(b"k"), Some(b"v"))], 5, 1, 2);
        let large = make_keyed_batch(
            9,
            700,
            &[
                (0, Some(b"a"), Some(&repeated[..])),
                (1, Some(b"n"), Some(&noise[..])),
                (2, Some(b"t"), None),
            ],
            5,
            1,
            2,
        );
        for b in [&small, &large] {
            let section = &b[HEADER_LEN..];
            for codec in 1..=4u8 {
                let c = compress_records(b, codec).unwrap_or_else(|| panic!("codec {codec}"));
                assert_eq!(super::codec(&c), codec);
                let (info, orig) = (validate(&c).unwrap(), validate(b).unwrap());
                assert_eq!(
                    (info.base_offset, info.last_offset_delta, info.max_timestamp),
                    (orig.base_offset, orig.last_offset_delta, orig.max_timestamp)
                );
                assert_eq!((info.producer_id, info.base_sequence), (5, 2));
                assert_eq!(
                    &c[ATTRIBUTES_OFFSET + 2..HEADER_LEN],
                    &b[ATTRIBUTES_OFFSET + 2..HEADER_LEN]
                );
                assert_eq!(&payload(&c).unwrap()[..], section, "codec {codec}");
                let packed = &c[HEADER_LEN..];
                let mut other = Vec::new();
                match codec {
                    1 => {
                        flate2::read::GzDecoder::new(packed)
                            .read_to_end(&mut other)
                            .unwrap();
                        assert_eq!(other, section);
                    }
                    2 => assert!(packed.starts_with(XERIAL)),
                    3 => {
                        lz4_flex::frame::FrameDecoder::new(packed)
                            .read_to_end(&mut other)
                            .unwrap();
                        assert_eq!(other, section);
                    }
                    _ => {}
                }
            }
            assert!(compress_records(b, 0).is_none() && compress_records(b, 5).is_none());
            let gz = compress_records(b, 1).unwrap();
            assert!(compress_records(&gz, 4).is_none(), "already compressed");
        }
        // lz4 blocks that do not shrink are stored as they are: three blocks
        // of noise take their length words, the frame's header (7 bytes) and
        // end mark more than the records.
        let noisy = make_keyed_batch(0, 700, &[(0, Some(b"n"), Some(&noise[..]))], -1, -1, -1);
        let lz4 = compress_records(&noisy, 3).unwrap();
        assert_eq!(&payload(&lz4).unwrap()[..], &noisy[HEADER_LEN..]);
        assert!(lz4.len() <= noisy.len() + 7 + 3 * 4 + 4, "{}", lz4.len());
    }

    #[test]
    fn records_give_keys_tombstones_and_ranges_and_batches_keep_their_span() {
        let b = make_keyed_batch(
            0,
            500,
            &[
                (0, Some(b"k1"), Some(b"v1")),
                (1, None, Some(b"no key")),
                (2, Some(b"k2"), None),
                (3, Some(b""), Some(b"")),
            ],
            7,
            0,
            10,
        );
        let rs = all_records(&b).unwrap();
        let keys: Vec<_> = rs
            .iter()
            .map(|r| (r.offset, r.timestamp, r.key, r.tombstone))
            .collect();
        assert_eq!(
            keys,
            vec![
                (0, 500, Some(&b"k1"[..]), false),
                (1, 501, None, false),
                (2, 502, Some(&b"k2"[..]), true),
                (3, 503, Some(&b""[..]), false),
            ]
        );
        assert_eq!(rs[0].bytes.start, HEADER_LEN);
        assert_eq!(rs[3].bytes.end, b.len());

        // Keep records 0 and 2: a valid batch spanning the same offsets, same
        // producer and sequence, two records, their largest timestamp its own;
        // the records keep theirs.
        let kept = retain_records(&b, &b, [rs[0].bytes.clone(), rs[2].bytes.clone()], 502);
        let info = validate(&kept).unwrap();
        let orig = validate(&b).unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset_delta),
            (orig.base_offset, orig.last_offset_delta)
        );
        assert_eq!((orig.max_timestamp, info.max_timestamp), (503, 502));
        assert_eq!((info.producer_id, info.base_sequence), (7, 10));
        let left: Vec<_> = all_records(&kept)
            .unwrap()
            .into_iter()
            .map(|r| (r.offset, r.timestamp, r.key))
            .collect();
        assert_eq!(
            left,
            vec![(0, 500, Some(&b"k1"[..])), (2, 502, Some(&b"k2"[..]))]
        );

        // Keep none: still valid as a stored batch, refused as a produced one.
        let none = retain_records(&b, &b, [], -1);
        assert!(matches!(
            validate(&none),
            Err(BatchError::BadCount { count: 0, .. })
        ));
        assert_eq!(validate_stored(&none).unwrap().last_offset(), 3);

        let gap = empty_batch(40, 59, 1234);
        let info = validate_stored(&gap).unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset(), info.max_timestamp),
            (40, 59, 1234)
        );
        assert_eq!(info.producer_id, -1);
        assert_eq!(all_records(&gap), Some(vec![]));

        // An idempotent producer's batch left empty keeps its offsets and
        // producer, so its last sequence reads back the same.
        let produced = validate(&make_producer_batch(70, &[b"a", b"b", b"c"], 9, 3, 41)).unwrap();
        let emptied = empty_producer_batch(&produced, -1);
        let info = validate_stored(&emptied).unwrap();
        assert_eq!(emptied.len(), HEADER_LEN);
        assert_eq!(
            (info.base_offset, info.last_offset(), info.max_timestamp),
            (70, 72, -1)
        );
        assert_eq!(
            (info.producer_id, info.producer_epoch, info.base_sequence),
            (9, 3, 41)
        );
        assert_eq!(info.last_sequence(), produced.last_sequence());
        assert_eq!((info.attributes, codec(&emptied)), (0, 0));
        assert_eq!(all_records(&emptied), Some(vec![]));

        // Trailing bytes after the counted records, or a key longer than its
        // record: not parsed.
        let mut short_count = b.clone();
        short_count[COUNT_OFFSET + 3] -= 1;
        assert_eq!(all_records(&short_count), None);
        let mut long_key = b.clone();
        long_key[HEADER_LEN + 4] = 0x7e; // first record's key length: 63
        assert_eq!(all_records(&long_key), None);
        let mut gz = b.clone();
        gz[ATTRIBUTES_OFFSET + 1] |= 4;
        assert!(is_compressed(&gz) && !is_compressed(&b));
        assert_eq!(all_records(&gz), None);
    }

    /// (offset, timestamp) of every record, as [`records`] reads them.
    /// A snappy batch (codec 2) whose records section is a raw block stating
    /// `stated` bytes, then `body`, its CRC valid.
    fn snappy_stating(stated: u64, body: &[u8]) -> Vec<u8> {
        let mut b = make_batch(0, &[b"v"])[..HEADER_LEN].to_vec();
        b[ATTRIBUTES_OFFSET + 1] |= 2;
        let mut v = stated;
        while v >= 0x80 {
            b.push((v as u8) | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
        b.extend_from_slice(body);
        seal(&mut b);
        b
    }

    #[test]
    fn a_snappy_block_stating_more_than_it_can_expand_to_is_refused_before_anything_is_allocated() {
        // 128 MiB stated (80 80 80 40) over 10 bytes of garbage: a 75-byte batch
        // made the broker zero-fill 128 MiB before finding out.
        let bomb = snappy_stating(128 << 20, &[0x55; 10]);
        assert_eq!(bomb[HEADER_LEN..HEADER_LEN + 4], [0x80, 0x80, 0x80, 0x40]);
        assert_eq!(bomb.len(), 75);
        let budget = Budget::new(DECOMPRESSION_BUDGET);
        assert!(payload_within(&bomb, &budget, None, &mut false).is_none());
        assert_eq!(budget.peak(), 0, "nothing reserved, so nothing allocated");
        assert_eq!(
            validate_produce(&bomb),
            Err(BatchError::BadPayload { codec: 2 })
        );
        // The same block in xerial framing.
        let block = &bomb[HEADER_LEN..];
        let mut framed = bomb[..HEADER_LEN].to_vec();
        framed.extend_from_slice(XERIAL);
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend_from_slice(&(block.len() as i32).to_be_bytes());
        framed.extend_from_slice(block);
        seal(&mut framed);
        assert!(payload_within(&framed, &budget, None, &mut false).is_none());
        assert_eq!(budget.peak(), 0);

        // The bound is snappy's own: the most a block can expand is one literal
        // byte, then copies of 64 bytes with 2-byte offsets, 3 bytes each.
        let copies = 1000;
        let mut body = vec![0x00, 0x00]; // a literal of 1 byte: 0
        for _ in 0..copies {
            body.extend_from_slice(&[(63 << 2) | 2, 1, 0]); // 64 bytes from 1 back
        }
        let n = 1 + 64 * copies;
        let densest = snappy_stating(n as u64, &body);
        let len = densest.len() - HEADER_LEN;
        assert!(n <= snappy_max_len(len) && snappy_max_len(len) < n + 200);
        let p = payload_within(&densest, &budget, None, &mut false).expect("decompresses");
        assert_eq!(&p[..], &vec![0u8; n][..]);
        assert_eq!(budget.in_use(), n);
        drop(p);
        assert_eq!(budget.in_use(), 0);
        // One byte more than the bound is refused unread.
        let over = snappy_stating(snappy_max_len(len) as u64 + 1, &body);
        assert_eq!(over.len(), densest.len(), "same header length");
        let before = budget.peak();
        assert!(payload_within(&over, &budget, None, &mut false).is_none());
        assert_eq!(budget.peak(), before);
    }

    /// A decompression that asks again with more room (its first guess was
    /// small) and waits each time is one wait, not one per ask: the counter
    /// said up to 5 for one batch.
    #[test]
    fn a_decompression_that_waits_at_each_ask_counts_one_wait() {
        let plain = make_batch(0, &[&vec![0u8; 1 << 20]]);
        let lz4 = compress_batch(&plain, 3);
        let cap = 8 << 20;
        let budget = Budget::new(cap);
        let first = budget.reserve(cap - (100 << 10), None).expect("room");
        let in_line = |b: &Budget| {
            let st = b.lock();
            st.next_ticket > st.serving
        };
        std::thread::scope(|s| {
            // Its 64 KiB ask fits; its 256 KiB ask waits behind `first`.
            let decompressed =
                s.spawn(|| payload_within(&lz4, &budget, None, &mut false).map(|p| p.len()));
            while budget.waits().0 < 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            // `second` queues behind it, and is granted beside its 256 KiB;
            // its 1 MiB ask then waits behind `second`.
            let (granted, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
            let budget = &budget;
            s.spawn(move || {
                let second = budget.reserve(cap - (300 << 10), None).expect("room");
                granted.0.send(()).unwrap();
                release.1.recv().unwrap();
                drop(second);
            });
            while budget.waits().0 < 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(first);
            granted.1.recv().unwrap();
            while !in_line(budget) {
                std::thread::sleep(Duration::from_millis(1));
            }
            release.0.send(()).unwrap();
            assert_eq!(decompressed.join().unwrap(), Some(plain.len() - HEADER_LEN));
        });
        // One wait for the decompression, one for `second`.
        assert_eq!(budget.waits(), (2, 0));
    }

    #[test]
    fn a_decompression_gives_up_its_place_in_line_at_its_deadline() {
        let plain = make_batch(0, &[&vec![0u8; 1 << 20]]);
        let snappy = compress_batch(&plain, 2);
        let budget = Budget::new(4 << 20);
        let all = budget.reserve(4 << 20, None).expect("room");
        // One behind it without a deadline, then one with a deadline that passes.
        std::thread::scope(|s| {
            let patient = s.spawn(|| {
                payload_within(&snappy, &budget, None, &mut false)
                    .map(|p| p.len())
                    .expect("decompresses once there is room")
            });
            while budget.waits().0 < 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut busy = false;
            let deadline = std::time::Instant::now() + Duration::from_millis(50);
            assert!(payload_within(&snappy, &budget, Some(deadline), &mut busy).is_none());
            assert!(busy, "refused as busy, not as a bad payload");
            assert!(std::time::Instant::now() >= deadline);
            assert_eq!(budget.waits(), (2, 1));
            drop(all);
            assert_eq!(patient.join().unwrap(), plain.len() - HEADER_LEN);
        });
        // The place given up does not hold the line: the next one is served.
        let mut busy = false;
        let soon = std::time::Instant::now() + Duration::from_secs(5);
        assert!(payload_within(&snappy, &budget, Some(soon), &mut busy).is_some());
        assert!(!busy);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn parallel_decompressions_never_hold_more_than_the_budget() {
        // Records sections of 4 MiB that compress to little, with every codec.
        let value = vec![0u8; 4 << 20];
        let plain = make_batch(0, &[&value]);
        let bombs: Vec<Vec<u8>> = [1, 2, 5, 3, 4]
            .iter()
            .map(|&c| compress_batch(&plain, c))
            .collect();
        // Room for the largest single reservation (zstd's: 2 * 16 MiB + 1 MiB).
        let budget = Budget::new(40 << 20);
        let threads = 16;
        let start = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for i in 0..threads {
                let (bomb, budget, start, plain) =
                    (&bombs[i % bombs.len()], &budget, &start, &plain);
                s.spawn(move || {
                    start.wait();
                    let p = payload_within(bomb, budget, None, &mut false).expect("decompresses");
                    assert!(p[..] == plain[HEADER_LEN..]);
                    // Held a while, as a request holds it while walking records.
                    std::thread::sleep(Duration::from_millis(20));
                });
            }
        });
        assert!(
            budget.peak() <= 40 << 20,
            "{} MiB held at once",
            budget.peak() >> 20
        );
        assert_eq!(budget.in_use(), 0, "everything given back");
        for codec in [1, 3, 4] {
            assert!(streamed_charge(codec, MAX_DECOMPRESSED) <= DECOMPRESSION_BUDGET);
        }
    }

    fn record_timestamps(buf: &[u8]) -> Option<Vec<(i64, i64)>> {
        Some(records(buf)?.map(|r| (r.offset, r.timestamp)).collect())
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

    /// `b` with its record count and last offset delta set (CRC updated).
    fn with_count(mut b: Vec<u8>, count: i32, last_offset_delta: i32) -> Vec<u8> {
        b[COUNT_OFFSET..COUNT_OFFSET + 4].copy_from_slice(&count.to_be_bytes());
        b[LAST_DELTA_OFFSET..LAST_DELTA_OFFSET + 4]
            .copy_from_slice(&last_offset_delta.to_be_bytes());
        seal(&mut b);
        b
    }

    /// The index of the first record of batch `b` without a key, as
    /// validation for a compacted topic finds it.
    fn first_keyless(b: &[u8]) -> Option<i32> {
        let rules = RecordRules {
            keyed: true,
            now: 0,
            ahead_ms: i64::MAX,
            behind_ms: None,
        };
        let p = validate_produce_by(b, None, Some(&rules)).unwrap();
        p.faults.first().map(|&(index, refusal)| {
            assert_eq!(refusal, RecordRefusal::NoKey);
            index
        })
    }

    #[test]
    fn produced_batches_are_walked_record_by_record() {
        let recs: &[KeyedRecord<'_>] = &[
            (0, Some(b"k1"), Some(b"v1")),
            (1, None, Some(b"no key")),
            (2, Some(b"k2"), None),
        ];
        let b = make_keyed_batch(0, 500, recs, -1, -1, -1);
        let p = validate_produce(&b).unwrap();
        assert_eq!((p.info.base_offset, first_keyless(&b)), (0, Some(1)));
        let keyed = make_keyed_batch(0, 500, &[(0, Some(b"k"), Some(b"v"))], -1, -1, -1);
        assert_eq!(first_keyless(&keyed), None);
        // Every codec: decompressed and walked the same way.
        for codec in [1, 2, 5, 3, 4] {
            let c = compress_batch(&b, codec);
            assert_eq!(first_keyless(&c), Some(1));
            let mut bad = c.clone();
            let n = bad.len();
            bad[HEADER_LEN..n].fill(0x55);
            seal(&mut bad);
            assert!(
                matches!(
                    validate_produce(&bad),
                    Err(BatchError::BadPayload { .. } | BatchError::BadRecord { .. })
                ),
                "codec {codec}"
            );
        }
        // A base offset other than 0 is refused before any record is read
        // (the record offsets never come from it).
        let mut max = b.clone();
        max[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        assert_eq!(
            validate_produce(&max).err(),
            Some(BatchError::BaseOffset(i64::MAX))
        );
        // Judged before the CRC, as Kafka judges it.
        let mut both = make_batch(0, &[b"a"]);
        both[..8].copy_from_slice(&1i64.to_be_bytes());
        let n = both.len();
        both[n - 1] ^= 1;
        assert_eq!(
            validate_produce(&both).err(),
            Some(BatchError::BaseOffset(1))
        );

        // Headers are walked too.
        let mut h = make_keyed_batch(0, 500, &[(0, Some(b"k"), Some(b"v"))], -1, -1, -1);
        // Record: length, attributes, ts delta, offset delta, key (2), value (2), headers.
        h.truncate(h.len() - 1);
        h.extend_from_slice(&[2, 2, b'h', 2, b'x']); // one header "h" = "x"
        h[HEADER_LEN] += 2 * 4; // the record is 4 bytes longer (zigzag length)
        seal(&mut h);
        assert_eq!(first_keyless(&h), None);
        let mut null_header_key = h.clone();
        let n = null_header_key.len();
        null_header_key[n - 4] = 1; // header key length -1
        seal(&mut null_header_key);
        assert!(matches!(
            validate_produce(&null_header_key),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::Field | RecordFault::TrailingBytes
            })
        ));
    }

    #[test]
    fn produced_batches_that_kafka_refuses_are_refused() {
        let b = make_batch(0, &[b"a", b"b"]);
        // More records counted than present (count and last delta agreeing).
        assert_eq!(
            validate_produce(&with_count(b.clone(), 3, 2)),
            Err(BatchError::BadRecord {
                index: 2,
                what: RecordFault::Length
            })
        );
        // Fewer: bytes after the last counted record.
        assert_eq!(
            validate_produce(&with_count(b.clone(), 1, 0)),
            Err(BatchError::BadRecord {
                index: 1,
                what: RecordFault::BeyondCount
            })
        );
        // A last offset delta other than count - 1.
        for (count, delta) in [(3, 1), (2, 5), (0, -1)] {
            assert_eq!(
                validate_produce(&with_count(b.clone(), count, delta)),
                Err(BatchError::BadCount {
                    count,
                    last_offset_delta: delta
                })
            );
        }
        // A producer id without a sequence; none at all is fine.
        assert_eq!(
            validate_produce(&make_producer_batch(0, &[b"a"], 4, 0, -1)),
            Err(BatchError::NoSequence {
                producer_id: 4,
                base_sequence: -1
            })
        );
        assert!(validate_produce(&make_producer_batch(0, &[b"a"], 4, 0, 0)).is_ok());
        // Two batches, or anything after the batch.
        let mut two = b.clone();
        two.extend_from_slice(&make_batch(0, &[b"c"]));
        assert_eq!(validate_produce(&two), Err(BatchError::MultipleBatches));
        let mut tail = b.clone();
        tail.push(0);
        assert_eq!(validate_produce(&tail), Err(BatchError::MultipleBatches));
        assert_eq!(
            validate_produce(&b[..b.len() - 1]),
            Err(BatchError::Truncated)
        );
        // Offset deltas out of order: the second record's says 5.
        let rs = all_records(&b).unwrap();
        let mut order = b.clone();
        let at = rs[1].bytes.start + 3; // length, attributes, timestamp delta
        assert_eq!(order[at], 2);
        order[at] = 10;
        seal(&mut order);
        assert_eq!(
            validate_produce(&order),
            Err(BatchError::BadRecord {
                index: 1,
                what: RecordFault::OffsetDelta(5)
            })
        );
        // A key longer than its record; a record longer than its fields.
        let mut long_key = b.clone();
        long_key[HEADER_LEN + 4] = 0x7e;
        seal(&mut long_key);
        assert_eq!(
            validate_produce(&long_key),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::Field
            })
        );
        let mut one = make_batch(0, &[b"a"]);
        one.push(0);
        one[HEADER_LEN] += 2;
        seal(&mut one);
        assert_eq!(
            validate_produce(&one),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::TrailingBytes
            })
        );
        // A timestamp delta whose sum with the first timestamp overflows: no
        // reader here could read the record back (`read_one` checks the sum).
        let wraps = make_timed_batch(0, -2, &[(0, b"a"), (i64::MIN, b"b")], -1, -1, -1);
        assert_eq!(
            validate_produce(&wraps),
            Err(BatchError::BadRecord {
                index: 1,
                what: RecordFault::Timestamp
            })
        );
        let high = make_timed_batch(0, 2, &[(i64::MAX, b"a")], -1, -1, -1);
        assert!(matches!(
            validate_produce(&high),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::Timestamp
            })
        ));
        // At the edge it is a timestamp, and it reads back.
        let edge = make_timed_batch(0, -1, &[(i64::MIN + 1, b"a")], -1, -1, -1);
        assert_eq!(validate_produce(&edge).unwrap().max_timestamp, i64::MIN);
        assert_eq!(all_records(&edge).unwrap()[0].timestamp, i64::MIN);
        // A CRC mismatch and another magic, as before.
        let mut crc = b.clone();
        let n = crc.len();
        crc[n - 1] ^= 1;
        assert!(matches!(
            validate_produce(&crc),
            Err(BatchError::Crc { .. })
        ));
        let mut v1 = b.clone();
        v1[MAGIC_OFFSET] = 1;
        assert_eq!(validate_produce(&v1), Err(BatchError::BadMagic(1)));
    }

    /// `b` (uncompressed) with its records section replaced by `section`, the
    /// codec bits set to `codec` and the CRC updated.
    pub(crate) fn with_section(b: &[u8], codec: u8, section: &[u8]) -> Vec<u8> {
        let mut out = b[..HEADER_LEN].to_vec();
        out[ATTRIBUTES_OFFSET + 1] |= codec;
        out.extend_from_slice(section);
        seal(&mut out);
        out
    }

    /// `records` written as an lz4 frame by lz4_flex with `info`.
    fn lz4_frame_with(records: &[u8], info: lz4_flex::frame::FrameInfo) -> Vec<u8> {
        use std::io::Write;
        let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(records).unwrap();
        e.finish().unwrap()
    }

    /// About 200 KiB of records that compress well, repeating across lz4's
    /// 64 KiB blocks (what a linked frame refers back to).
    fn repetitive_batch() -> Vec<u8> {
        let values: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("record {} ", i % 7).repeat(50).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        make_batch(0, &refs)
    }

    #[test]
    fn lz4_frames_are_read_as_the_java_client_reads_them() {
        use lz4_flex::frame::{BlockSize, FrameInfo};
        let b = repetitive_batch();
        let records = &b[HEADER_LEN..];
        assert!(records.len() > 190 << 10);
        // Independent blocks of every size Kafka reads, with and without
        // block and content checksums, and the content size stated.
        for size in [
            BlockSize::Max64KB,
            BlockSize::Max256KB,
            BlockSize::Max1MB,
            BlockSize::Max4MB,
        ] {
            for (blocks, content) in [(false, false), (true, false), (false, true), (true, true)] {
                let info = FrameInfo::new()
                    .block_size(size)
                    .block_checksums(blocks)
                    .content_checksum(content)
                    .content_size(content.then_some(records.len() as u64));
                let c = with_section(&b, 3, &lz4_frame_with(records, info));
                let p = validate_produce(&c)
                    .unwrap_or_else(|e| panic!("{size:?} {blocks} {content}: {e}"));
                assert_eq!(p.info.last_offset_delta, 499);
                assert_eq!(&payload(&c).unwrap()[..], records);
            }
        }
        // Blocks stored as they are (records that do not compress).
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let plain = make_batch(0, &[&noise]);
        let info = FrameInfo::new()
            .block_size(BlockSize::Max64KB)
            .block_checksums(true)
            .content_checksum(true);
        let frame = lz4_frame_with(&plain[HEADER_LEN..], info);
        assert_ne!(
            le_u32(&frame, 7).unwrap() & 0x8000_0000,
            0,
            "a stored block"
        );
        let c = with_section(&plain, 3, &frame);
        assert_eq!(&payload(&c).unwrap()[..], &plain[HEADER_LEN..]);
        // Bytes after the end mark (and content checksum) are not read, as the
        // Java client does not read them.
        let mut trailing = lz4_frame_with(records, FrameInfo::new().content_checksum(true));
        trailing.extend_from_slice(&lz4_frame_with(b"more", FrameInfo::new()));
        trailing.extend_from_slice(&[0x55; 9]);
        let c = with_section(&b, 3, &trailing);
        assert_eq!(&payload(&c).unwrap()[..], records);
        assert!(validate_produce(&c).is_ok());
        // A section larger than the limit, compressed or stored, is told as
        // larger (the caller asks for more room), not as one that does not
        // decompress.
        for frame in [
            lz4_frame_with(records, FrameInfo::new()),
            lz4_frame_with(&plain[HEADER_LEN..], FrameInfo::new()),
        ] {
            let n = if frame.len() > 100_000 {
                plain.len() - HEADER_LEN
            } else {
                records.len()
            };
            for limit in [1, 1000, 70_000, n - 1] {
                assert!(
                    matches!(inflate(3, &frame, limit), Some(Inflated::Larger)),
                    "limit {limit}"
                );
            }
            assert!(matches!(inflate(3, &frame, n), Some(Inflated::Done(o)) if o.len() == n));
        }
    }

    /// An lz4 frame with one block, then the end mark.
    fn lz4_one_block(bd: u8, block: &[u8]) -> Vec<u8> {
        let flg = 0x60u8;
        let mut frame = LZ4_MAGIC.to_le_bytes().to_vec();
        frame.extend_from_slice(&[
            flg,
            bd,
            (twox_hash::XxHash32::oneshot(0, &[flg, bd]) >> 8) as u8,
        ]);
        frame.extend_from_slice(&u32::try_from(block.len()).unwrap().to_le_bytes());
        frame.extend_from_slice(block);
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame
    }

    /// A block that lz4_flex decodes to the records, but that breaks the
    /// format's end-of-block rules (a match ends it, then a token of no
    /// literals), which liblz4 refuses: it was stored, and every consumer
    /// decoding with liblz4 (the Java client through lz4-java, librdkafka)
    /// stopped at the batch for good, as Kafka refuses it at produce.
    #[test]
    fn lz4_blocks_liblz4_refuses_are_refused() {
        // Two records alike but for their offset delta: the second's tail
        // copied from the first's.
        let b = make_batch(0, &[b"valuevaluevalue", b"valuevaluevalue"]);
        let r = &b[HEADER_LEN..];
        let half = r.len() / 2;
        let m = half - 4;
        assert_eq!(&r[half + 4..], &r[4..half]);
        let lit = r.len() - m;
        let varint = |block: &mut Vec<u8>, mut n: usize| {
            while n >= 255 {
                block.push(255);
                n -= 255;
            }
            block.push(n as u8);
        };
        let mut block = vec![0xF0 | u8::try_from((m - 4).min(15)).unwrap()];
        varint(&mut block, lit - 15);
        block.extend_from_slice(&r[..lit]);
        block.extend_from_slice(&u16::try_from(half).unwrap().to_le_bytes());
        if m - 4 >= 15 {
            varint(&mut block, m - 4 - 15);
        }
        block.push(0x00);
        let mut out = vec![0u8; 64 << 10];
        let n = lz4_flex::block::decompress_into(&block, &mut out).unwrap();
        assert_eq!(&out[..n], r, "a lenient decoder reads the records");
        let c = with_section(&b, 3, &lz4_one_block(0x40, &block));
        assert_eq!(
            validate_produce(&c),
            Err(BatchError::BadPayload { codec: 3 })
        );
        // The same records as liblz4 itself writes them are read.
        let good = lz4::block::compress(r, None, false).unwrap();
        let c = with_section(&b, 3, &lz4_one_block(0x40, &good));
        assert!(validate_produce(&c).is_ok());
        assert_eq!(payload(&c).unwrap().bytes.as_ref(), r);
    }

    /// A frame of 50,000 blocks of one byte each, which decode to nothing:
    /// each zeroed the room a block may take (up to 4 MiB) anew, a minute of
    /// CPU per MB of such a frame. Each byte of the output is now zeroed
    /// once.
    #[test]
    fn an_lz4_frame_of_many_empty_blocks_zeroes_its_output_once() {
        let b = make_batch(0, &[b"value"]);
        let (flg, bd) = (0x60u8, 0x70u8);
        let mut frame = LZ4_MAGIC.to_le_bytes().to_vec();
        frame.extend_from_slice(&[
            flg,
            bd,
            (twox_hash::XxHash32::oneshot(0, &[flg, bd]) >> 8) as u8,
        ]);
        for _ in 0..50_000 {
            frame.extend_from_slice(&1u32.to_le_bytes());
            frame.push(0x00);
        }
        frame.extend_from_slice(&0u32.to_le_bytes());
        let c = with_section(&b, 3, &frame);
        ZEROED.with(|z| z.set(0));
        // It decodes to no records.
        assert_eq!(
            validate_produce(&c),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::Length
            })
        );
        let zeroed = ZEROED.with(std::cell::Cell::get);
        assert!(zeroed < 4 << 20, "{zeroed} bytes zeroed");
    }

    /// A damaged block of 4 bytes in a frame of 4 MiB blocks (a match at
    /// offset 0): liblz4 fails it as it fails a block given too little room,
    /// and it was taken as larger than the room, retried with 256 KiB, 1 MiB,
    /// then 4 MiB (5 MiB zeroed and four reservations per 80-byte batch).
    /// Now refused at the first try; a block whose sequences do add up to
    /// more than the room is still tried again with more.
    #[test]
    fn a_damaged_lz4_block_is_refused_at_the_first_try() {
        let b = make_batch(0, &[b"value"]);
        let c = with_section(&b, 3, &lz4_one_block(0x70, &[0x1f, 0x41, 0x00, 0x00]));
        ZEROED.with(|z| z.set(0));
        assert_eq!(
            validate_produce(&c),
            Err(BatchError::BadPayload { codec: 3 })
        );
        let zeroed = ZEROED.with(std::cell::Cell::get);
        assert!(zeroed <= 128 << 10, "{zeroed} bytes zeroed");
        assert_eq!(lz4_block_output(&[0x1f, 0x41, 0x00, 0x00]), None);
        assert_eq!(
            lz4_block_output(&[0x10, 0x41, 0x01, 0x00, 0x00]),
            Some(1 + 4)
        );
        // Records larger than the first try's room are read.
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let b = make_batch(0, &[&big]);
        let r = &b[HEADER_LEN..];
        let block = lz4::block::compress(r, None, false).unwrap();
        assert_eq!(lz4_block_output(&block), Some(r.len()));
        let c = with_section(&b, 3, &lz4_one_block(0x70, &block));
        assert!(validate_produce(&c).is_ok());
        assert_eq!(payload(&c).unwrap().bytes.as_ref(), r);
    }

    /// zstd frames libzstd (zstd-jni, Kafka's; librdkafka) refuses: one whose
    /// stated content size is not what it holds ("Data corruption
    /// detected"), one with the descriptor's reserved bit set ("Unsupported
    /// frame parameter"). Both were stored, and stopped every such consumer
    /// at the batch.
    #[test]
    fn zstd_frames_libzstd_refuses_are_refused() {
        // One frame, single segment (one byte of content size), holding the
        // records in a raw block.
        let frame = |descriptor: u8, size: u8, records: &[u8]| {
            let mut f = 0xFD2F_B528u32.to_le_bytes().to_vec();
            f.push(descriptor);
            f.push(size);
            let header = (u32::try_from(records.len()).unwrap() << 3) | 1;
            f.extend_from_slice(&header.to_le_bytes()[..3]);
            f.extend_from_slice(records);
            f
        };
        let b = make_batch(0, &[b"value", b"value"]);
        let r = &b[HEADER_LEN..];
        let n = u8::try_from(r.len()).unwrap();
        let ok = with_section(&b, 4, &frame(0x20, n, r));
        assert!(validate_produce(&ok).is_ok());
        assert_eq!(payload(&ok).unwrap().bytes.as_ref(), r);
        for (what, section) in [
            ("content size stated 7 bytes more", frame(0x20, n + 7, r)),
            ("content size stated 1 byte less", frame(0x20, n - 1, r)),
            ("reserved bit", frame(0x28, n, r)),
        ] {
            let c = with_section(&b, 4, &section);
            assert_eq!(
                validate_produce(&c),
                Err(BatchError::BadPayload { codec: 4 }),
                "{what}"
            );
            assert!(payload(&c).is_none(), "{what}");
        }
    }

    /// A zstd frame declaring a window of 128 MiB, then 1,024 RLE blocks of
    /// 128 KiB of `x`, then a block of the reserved type: 4 KB on the wire.
    fn zstd_window_bomb() -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x88];
        for _ in 0..1024 {
            f.extend_from_slice(&[0x02, 0x00, 0x10, b'x']);
        }
        f.extend_from_slice(&[0x06, 0x00, 0x00]);
        f
    }

    /// A zstd frame is decoded no further than the room asked for (and one
    /// block). Before, the decoder's reading handed nothing out until it held
    /// more than the window the frame declares: a 4 KB batch declaring 128
    /// MiB had all of it decoded (128-192 MiB resident) on the first ask of
    /// 64 KiB, charged 1.1 MiB to the decompression budget, before its
    /// reserved block refused it.
    #[test]
    fn a_zstd_frame_is_decoded_no_further_than_the_room_asked_for() {
        let bomb = zstd_window_bomb();
        assert!(matches!(
            inflate(4, &bomb, 64 << 10),
            Some(Inflated::Larger)
        ));
        let b = with_section(&make_batch(0, &[b"v"]), 4, &bomb);
        assert_eq!(
            validate_produce(&b),
            Err(BatchError::BadPayload { codec: 4 })
        );
        // Whole frames, back to back, still decode at any room they fit.
        let r = make_batch(0, &[b"value", b"value"]);
        let records = &r[HEADER_LEN..];
        let frame =
            ruzstd::encoding::compress_to_vec(records, ruzstd::encoding::CompressionLevel::Fastest);
        let two = [frame.clone(), frame].concat();
        let both = [records, records].concat();
        for limit in [both.len(), both.len() + 1, 1 << 20] {
            assert!(
                matches!(inflate(4, &two, limit), Some(Inflated::Done(d)) if d == both),
                "{limit}"
            );
        }
        for limit in [0, records.len(), both.len() - 1] {
            assert!(
                matches!(inflate(4, &two, limit), Some(Inflated::Larger)),
                "{limit}"
            );
        }
    }

    #[test]
    fn lz4_frames_the_java_client_refuses_are_refused() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameInfo};
        let b = repetitive_batch();
        let records = &b[HEADER_LEN..];
        let refused = |frame: &[u8], what: &str| {
            let c = with_section(&b, 3, frame);
            assert_eq!(
                validate_produce(&c),
                Err(BatchError::BadPayload { codec: 3 }),
                "{what}"
            );
            assert!(payload(&c).is_none(), "{what}");
        };
        // Linked blocks: "Dependent block stream is unsupported".
        let linked = lz4_frame_with(records, FrameInfo::new().block_mode(BlockMode::Linked));
        assert_eq!(linked[4] & 0x20, 0, "the block independence bit is clear");
        refused(&linked, "linked blocks");
        // A frame without its end mark: the input ends where the next block's
        // length should be.
        let whole = lz4_frame_with(records, FrameInfo::new().block_size(BlockSize::Max64KB));
        assert_eq!(
            whole[4..6],
            [0x60, 0x40],
            "version 01, independent blocks, 64 KiB"
        );
        assert_eq!(whole[whole.len() - 4..], [0, 0, 0, 0]);
        refused(&whole[..whole.len() - 4], "no end mark");
        refused(&whole[..whole.len() - 2], "half an end mark");
        // The legacy format (blocks of 8 MiB, each its compressed length then
        // its bytes, no descriptor and no end mark), which lz4_flex reads.
        let mut legacy = 0x184C_2102u32.to_le_bytes().to_vec();
        let block = lz4_flex::block::compress(records);
        legacy.extend_from_slice(&u32::try_from(block.len()).unwrap().to_le_bytes());
        legacy.extend_from_slice(&block);
        let mut read = Vec::new();
        std::io::Read::read_to_end(
            &mut lz4_flex::frame::FrameDecoder::new(&legacy[..]),
            &mut read,
        )
        .unwrap();
        assert_eq!(read, records);
        refused(&legacy, "legacy frame");
        // Checksums that do not match: the descriptor's, a block's, the content's.
        let mut hc = whole.clone();
        hc[6] ^= 1;
        refused(&hc, "descriptor checksum");
        let checked = lz4_frame_with(
            records,
            FrameInfo::new()
                .block_checksums(true)
                .content_checksum(true),
        );
        assert!(validate_produce(&with_section(&b, 3, &checked)).is_ok());
        let first_len = (le_u32(&checked, 7).unwrap() & 0x7fff_ffff) as usize;
        let mut block = checked.clone();
        block[11 + first_len] ^= 1;
        refused(&block, "block checksum");
        let mut content = checked.clone();
        let n = content.len();
        content[n - 1] ^= 1;
        refused(&content, "content checksum");
        let mut no_content = checked.clone();
        no_content.truncate(n - 4);
        refused(&no_content, "content checksum missing");
        // Descriptor bits the Java client refuses (the descriptor checksum
        // made to match, so only the bit is wrong): a dictionary id, a
        // reserved bit, another version, a block size code below 4 or a
        // reserved BD bit.
        let descriptor = |flg: u8, bd: u8| {
            let mut f = 0x184D_2204u32.to_le_bytes().to_vec();
            f.extend_from_slice(&[flg, bd]);
            f.push((twox_hash::XxHash32::oneshot(0, &[flg, bd]) >> 8) as u8);
            f
        };
        assert_eq!(descriptor(0x60, 0x40), whole[..7]);
        for (flg, bd, what) in [
            (0x61, 0x40, "dictionary id"),
            (0x62, 0x40, "reserved FLG bit"),
            (0xe0, 0x40, "version 11"),
            (0x20, 0x40, "version 00"),
            (0x60, 0x30, "block size code 3"),
            (0x60, 0x41, "reserved BD bit"),
            (0x60, 0xc0, "BD bit 7"),
        ] {
            let mut f = descriptor(flg, bd);
            f.extend_from_slice(&whole[7..]);
            refused(&f, what);
        }
        // A block longer than the frame's block size: 64 KiB and one byte,
        // stored, read when the frame states 256 KiB blocks.
        let stored = |bd: u8| {
            let mut f = descriptor(0x60, bd);
            let len = (64u32 << 10) + 1;
            f.extend_from_slice(&(len | 0x8000_0000).to_le_bytes());
            f.extend_from_slice(&vec![7u8; len as usize]);
            f.extend_from_slice(&[0; 4]);
            with_section(&b, 3, &f)
        };
        assert_eq!(payload(&stored(0x50)).map(|p| p.len()), Some(65_537));
        assert!(
            payload(&stored(0x40)).is_none(),
            "block longer than the block size"
        );
        // Empty, or too short for a descriptor.
        refused(&[], "empty");
        refused(&whole[..6], "no descriptor checksum");
    }

    #[test]
    fn a_zstd_frame_whose_content_checksum_does_not_match_is_refused() {
        let b = repetitive_batch();
        let c = compress_batch(&b, 4);
        let frame = &c[HEADER_LEN..];
        // The frame header's descriptor: the content checksum flag (bit 2).
        assert_eq!(le_u32(frame, 0), Some(0xFD2F_B528));
        assert_ne!(frame[4] & 0x04, 0, "written with a content checksum");
        assert!(validate_produce(&c).is_ok());
        for i in 1..=4 {
            let mut bad = c.clone();
            let n = bad.len();
            bad[n - i] ^= 0x10;
            seal(&mut bad);
            assert_eq!(
                validate_produce(&bad),
                Err(BatchError::BadPayload { codec: 4 }),
                "checksum byte {i} from the end flipped"
            );
        }
        // The second of two frames back to back is checked too.
        let mid = all_records(&b).unwrap()[250].bytes.start;
        let zstd = |r: &[u8]| {
            ruzstd::encoding::compress_to_vec(r, ruzstd::encoding::CompressionLevel::Fastest)
        };
        let mut two = zstd(&b[HEADER_LEN..mid]);
        two.extend_from_slice(&zstd(&b[mid..]));
        assert!(validate_produce(&with_section(&b, 4, &two)).is_ok());
        let n = two.len();
        two[n - 1] ^= 0x10;
        assert_eq!(
            validate_produce(&with_section(&b, 4, &two)),
            Err(BatchError::BadPayload { codec: 4 })
        );
    }

    /// `b` with the byte at `at` replaced by `with`, its record count kept, the
    /// length and CRC updated.
    fn spliced(b: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
        let mut out = b[..at].to_vec();
        out.extend_from_slice(with);
        out.extend_from_slice(&b[at + 1..]);
        seal(&mut out);
        out
    }

    #[test]
    fn varints_longer_than_five_bytes_are_refused() {
        let b = make_batch(0, &[b"a", b"b"]);
        // Record 0: length, attributes, timestamp delta (0), offset delta (0).
        let len = b[HEADER_LEN];
        assert!(len < 0x40);
        let delta_at = HEADER_LEN + 3;
        assert_eq!(b[delta_at], 0);
        // Padded to 5 bytes (the fifth without the continuation bit), as Java
        // reads them: the same batch.
        let five = spliced(&b, HEADER_LEN, &[len | 0x80, 0x80, 0x80, 0x80, 0x00]);
        assert!(validate_produce(&five).is_ok());
        let mut five_delta = spliced(&b, delta_at, &[0x80, 0x80, 0x80, 0x80, 0x00]);
        five_delta[HEADER_LEN] += 2 * 4;
        seal(&mut five_delta);
        assert!(validate_produce(&five_delta).is_ok());
        // Padded to 6: Java's readVarint throws at the fifth byte's
        // continuation bit.
        let six = spliced(&b, HEADER_LEN, &[len | 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        assert_eq!(
            validate_produce(&six),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::Length
            })
        );
        let mut six_delta = spliced(&b, delta_at, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        six_delta[HEADER_LEN] += 2 * 5;
        seal(&mut six_delta);
        assert_eq!(
            validate_produce(&six_delta),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::Field
            })
        );
        // Five bytes holding more than 32 bits: refused as before.
        let wide = spliced(&b, HEADER_LEN, &[len | 0x80, 0x80, 0x80, 0x80, 0x10]);
        assert_eq!(
            validate_produce(&wide),
            Err(BatchError::BadRecord {
                index: 0,
                what: RecordFault::Length
            })
        );
        // The reader itself: every 32-bit value round-trips in at most 5 bytes.
        for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            let mut z = ((v << 1) ^ (v >> 31)) as u32;
            let mut enc = Vec::new();
            while z >= 0x80 {
                enc.push((z as u8) | 0x80);
                z >>= 7;
            }
            enc.push(z as u8);
            let mut at = 0;
            assert_eq!(varint(&enc, &mut at), Some(v));
            assert_eq!(at, enc.len());
        }
    }

    #[test]
    fn the_header_fields_kafka_rewrites_at_append_are_rewritten() {
        let b = make_timed_batch(0, 1000, &[(0, b"a"), (7, b"b")], -1, -1, -1);
        // A client's LogAppendTime flag, delete horizon flag and an unused
        // bit, leader epoch 5, and a largest timestamp other than the records'.
        let mut sent = b.clone();
        sent[ATTRIBUTES_OFFSET] |= 0x01;
        sent[ATTRIBUTES_OFFSET + 1] |= 0x08 | 0x40;
        sent[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4].copy_from_slice(&5i32.to_be_bytes());
        sent[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&1i64.to_be_bytes());
        seal(&mut sent);
        let p = validate_produce(&sent).unwrap();
        let mut stored = sent.clone();
        rewrite_at_append(&mut stored, p.max_timestamp);
        let info = validate(&stored).expect("the CRC is recomputed");
        // As Kafka's setMaxTimestamp: CreateTime, the delete horizon kept,
        // the unused bit cleared.
        assert_eq!(info.attributes, 0x40);
        assert_eq!(info.max_timestamp, 1007);
        assert_eq!(
            be_i32(&stored, LEADER_EPOCH_OFFSET),
            Some(PARTITION_LEADER_EPOCH)
        );
        // Only the leader epoch, when nothing else differs (the CRC, which
        // does not cover it, stays).
        let mut epoch = b.clone();
        epoch[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4].copy_from_slice(&5i32.to_be_bytes());
        let mut stored = epoch.clone();
        rewrite_at_append(&mut stored, 1007);
        assert_eq!(be_i32(&stored, LEADER_EPOCH_OFFSET), Some(0));
        assert_eq!(
            stored[LEADER_EPOCH_OFFSET + 4..],
            epoch[LEADER_EPOCH_OFFSET + 4..]
        );
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

    /// A produced v0/v1 message set of one message shorter than a v2 batch
    /// header (61 bytes) is refused by its magic, as a longer one is; it was
    /// refused as a truncated record batch.
    #[test]
    fn a_short_old_message_set_is_refused_by_its_magic() {
        for (magic, len) in [(0u8, 26usize), (1, 34), (1, 60)] {
            // Offset 0, size, CRC, then the magic; key and value of -1.
            let mut m = vec![0u8; len];
            m[8..12].copy_from_slice(&(len as i32 - 12).to_be_bytes());
            m[16] = magic;
            assert_eq!(
                validate_produce(&m).map(|_| ()),
                Err(BatchError::BadMagic(magic as i8)),
                "magic {magic}, {len} bytes"
            );
        }
    }
}
