//! On-disk byte format of WAL files. Pure bytes: no I/O, no unsafe.
//!
//! All integers are little-endian. Every file is a sequence of 4096-byte blocks.
//!
//! ```text
//! block 0      file header (48 bytes used, rest zero)
//! block 1..    batch: batch header (48 bytes) | entry | entry | ... | zero padding
//!              to the next block boundary; the next batch starts on a fresh block
//! ```
//!
//! File header (version 2): `magic[8] "STRMLWAL" | version u16 | flags u16 |
//! block_size u32 | file_number u64 | created_ms i64 | key u64 |
//! crc32c(bytes 0..40) u32 | reserved u32`. Version 1 had no `key`: its checksum
//! covers bytes 0..32 and sits at 32.
//!
//! Batch header: `magic u32 | kind u8 | flags u8 | reserved[2] | file_number u64 |
//! first_sequence u64 | entry_count u32 | payload_len u32 | synced_through u64 |
//! entries_crc u32 | header_crc u32`, where `header_crc` is CRC32C of the file's
//! `key` (8 bytes) followed by bytes 0..44 (version 1: of bytes 0..44 alone) and
//! `entries_crc` (present when flag bit 0 is set) is CRC32C of the entries' `crc`
//! fields in order. The file number inside the checksummed header ties every batch
//! to its file, so recycled or stale space never decodes as a batch of the current
//! file. The key, random for every file and never sent anywhere, ties it to this
//! very copy of the file: bytes that clients sent (entry payloads, in this file or
//! in the stale space of a recycled one) cannot be made to pass for a batch header,
//! since whoever chose them could not know the key. `entries_crc` ties the entries
//! to their header, so a torn write over older entries of the same file never
//! decodes as a mix of both.
//!
//! Entry: `crc u32 | len u32 | sequence u64 | timestamp i64 | entry_type u8 |
//! reserved u8 | topic_len u16 | partition i32 | data_len u32 | topic | data`;
//! `len` counts the bytes after the `len` field and `crc` is CRC32C of bytes
//! `4..8+len` (length field included). `docs/format.md` has the same layout as tables.

use bytes::Bytes;

/// Size of a block: the unit of alignment for O_DIRECT writes and of batch placement.
pub const BLOCK_SIZE: usize = 4096;

/// Magic at the start of every WAL file.
pub const FILE_MAGIC: [u8; 8] = *b"STRMLWAL";
/// Bytes of the file header that carry data (the rest of block 0 is zero).
pub const FILE_HEADER_LEN: usize = 8 + 2 + 2 + 4 + 8 + 8 + 8 + 4 + 4;
/// Where the header checksum is in version 2 files (it covers the bytes before it).
const FILE_HEADER_CRC_OFFSET: usize = 8 + 2 + 2 + 4 + 8 + 8 + 8;
/// Where it was in version 1 files, which had no key.
const FILE_HEADER_V1_CRC_OFFSET: usize = 8 + 2 + 2 + 4 + 8 + 8;

/// Magic at the start of every batch header ("SLB1" read as little-endian bytes).
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"SLB1");
/// Size of the batch header.
pub const BATCH_HEADER_LEN: usize = 4 + 1 + 3 + 8 + 8 + 4 + 4 + 8 + 4 + 4;
const BATCH_HEADER_CRC_OFFSET: usize = BATCH_HEADER_LEN - 4;

/// Fixed part of an entry before the topic bytes.
pub const ENTRY_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 1 + 1 + 2 + 4 + 4;
/// Bytes counted by an entry's `len` field beyond topic and data.
const ENTRY_LEN_FIXED: usize = ENTRY_HEADER_LEN - 8;

/// Longest topic name an entry can carry.
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Versions of the file format this build can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatVersion {
    /// The first format: batch headers checksummed without a key.
    V1,
    /// The file header carries a random key that seeds every batch header's checksum.
    V2,
}

impl FormatVersion {
    /// The version new files are written with.
    pub const CURRENT: FormatVersion = FormatVersion::V2;

    /// Parses the on-disk number; `None` for versions this build does not know.
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(FormatVersion::V1),
            2 => Some(FormatVersion::V2),
            _ => None,
        }
    }

    /// The on-disk number.
    pub fn as_u16(self) -> u16 {
        match self {
            FormatVersion::V1 => 1,
            FormatVersion::V2 => 2,
        }
    }
}

/// Kind of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalEntryType {
    /// Application data (for the broker: a record batch of one partition).
    Record,
    /// A checkpoint marker written by the application.
    Checkpoint,
    /// A truncation marker written by the application.
    Truncate,
}

impl TryFrom<u8> for WalEntryType {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(WalEntryType::Record),
            2 => Ok(WalEntryType::Checkpoint),
            3 => Ok(WalEntryType::Truncate),
            other => Err(other),
        }
    }
}

impl WalEntryType {
    /// The on-disk tag.
    pub fn as_u8(self) -> u8 {
        match self {
            WalEntryType::Record => 1,
            WalEntryType::Checkpoint => 2,
            WalEntryType::Truncate => 3,
        }
    }
}

/// One entry of the log, as recovered or read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// Position in the log; contiguous, starting at 1.
    pub sequence: u64,
    /// Milliseconds since the Unix epoch when the entry was appended.
    pub timestamp: i64,
    /// Kind of entry.
    pub entry_type: WalEntryType,
    /// Topic the data belongs to.
    pub topic: String,
    /// Partition the data belongs to.
    pub partition: i32,
    /// The payload.
    pub data: Bytes,
    /// CRC32C of the encoded entry (see the module docs).
    pub crc32: u32,
}

/// Kind of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// A batch of entries.
    Entries,
    /// The end of a file: nothing after it in this file belongs to the log.
    Seal,
}

impl BatchKind {
    fn as_u8(self) -> u8 {
        match self {
            BatchKind::Entries => 1,
            BatchKind::Seal => 2,
        }
    }
}

/// Decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Format version of the file.
    pub version: FormatVersion,
    /// Number of the file; archived files are named after it.
    pub file_number: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Seeds the checksum of every batch header of the file; 0 in version 1 files.
    pub key: u64,
}

impl FileHeader {
    /// What a batch header of this file must match.
    pub fn id(&self) -> FileId {
        FileId {
            number: self.file_number,
            key: self.key,
        }
    }
}

/// What ties a batch header to its file: the file's number and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// The file number.
    pub number: u64,
    /// The key from the file header; 0 for version 1 files (no key).
    pub key: u64,
}

impl FileId {
    /// A version 1 file, whose batch headers are checksummed without a key.
    pub const fn unkeyed(number: u64) -> Self {
        FileId { number, key: 0 }
    }
}

/// A new file's key: 64 bits no client can know or guess, never 0 (0 means
/// "version 1, no key"). SipHash under the process's random hash keys is the
/// standard library's source of unpredictable values.
pub fn new_file_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish().max(1)
}

/// CRC32C of a batch header's first 44 bytes, seeded with the file's key.
fn batch_header_crc(key: u64, h: &[u8]) -> u32 {
    if key == 0 {
        crc32c::crc32c(&h[..BATCH_HEADER_CRC_OFFSET])
    } else {
        crc32c::crc32c_append(
            crc32c::crc32c(&key.to_le_bytes()),
            &h[..BATCH_HEADER_CRC_OFFSET],
        )
    }
}

/// Flag bit of a batch header: `entries_crc` is present.
const BATCH_FLAG_ENTRIES_CRC: u8 = 1;

/// Decoded batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Entries or seal.
    pub kind: BatchKind,
    /// The file the batch was written to.
    pub file_number: u64,
    /// Sequence of the first entry (for a seal: the sequence the next file starts at).
    pub first_sequence: u64,
    /// Number of entries.
    pub entry_count: u32,
    /// Bytes of entries after the header.
    pub payload_len: u32,
    /// Highest sequence known durable (covered by a completed fdatasync) when the
    /// batch was written. Recovery uses it to tell bit rot from a torn tail.
    pub synced_through: u64,
    /// CRC32C of the entries' `crc` fields in order ([`entries_crc`]); `None` in
    /// batches written before the field existed, whose entries are checked one by
    /// one only.
    pub entries_crc: Option<u32>,
}

/// Folds one entry's `crc` into a batch's running `entries_crc` (which starts at
/// 0, the CRC32C of nothing).
pub fn entries_crc(running: u32, entry_crc: u32) -> u32 {
    crc32c::crc32c_append(running, &entry_crc.to_le_bytes())
}

impl BatchHeader {
    /// Bytes the batch occupies on disk: header, payload and padding.
    pub fn disk_len(&self) -> u64 {
        // In u64: on a 32-bit target a payload length near u32::MAX would
        // wrap a usize sum to a small length that passes every bound.
        let block = BLOCK_SIZE as u64;
        (BATCH_HEADER_LEN as u64 + u64::from(self.payload_len) + block - 1) & !(block - 1)
    }

    /// Sequence of the last entry, or `first_sequence - 1` for an empty batch.
    pub fn last_sequence(&self) -> u64 {
        self.first_sequence + u64::from(self.entry_count) - 1
    }
}

/// Rounds `n` up to a multiple of [`BLOCK_SIZE`].
pub const fn align_up(n: usize) -> usize {
    (n + BLOCK_SIZE - 1) & !(BLOCK_SIZE - 1)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The first 32 bytes of a file header, the same in every version.
fn encode_file_header_start(out: &mut [u8], version: FormatVersion, number: u64, created_ms: i64) {
    out[0..8].copy_from_slice(&FILE_MAGIC);
    out[8..10].copy_from_slice(&version.as_u16().to_le_bytes());
    out[10..12].copy_from_slice(&0u16.to_le_bytes());
    out[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    out[16..24].copy_from_slice(&number.to_le_bytes());
    out[24..32].copy_from_slice(&created_ms.to_le_bytes());
}

/// Writes a version 2 file header into `out` (at least [`FILE_HEADER_LEN`] bytes;
/// the caller zeroes the rest of the block). `key` must not be 0
/// ([`new_file_key`]).
pub fn encode_file_header(out: &mut [u8], file_number: u64, created_ms: i64, key: u64) {
    assert_ne!(key, 0, "a version 2 file needs a key");
    encode_file_header_start(out, FormatVersion::V2, file_number, created_ms);
    out[32..40].copy_from_slice(&key.to_le_bytes());
    let crc = crc32c::crc32c(&out[..FILE_HEADER_CRC_OFFSET]);
    out[40..44].copy_from_slice(&crc.to_le_bytes());
    out[44..48].copy_from_slice(&0u32.to_le_bytes());
}

/// Writes a version 1 file header (no key), as writers before version 2 did: for
/// tests and tools that build old files.
pub fn encode_file_header_v1(out: &mut [u8], file_number: u64, created_ms: i64) {
    encode_file_header_start(out, FormatVersion::V1, file_number, created_ms);
    let crc = crc32c::crc32c(&out[..FILE_HEADER_V1_CRC_OFFSET]);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
    out[36..40].copy_from_slice(&0u32.to_le_bytes());
}

/// Decodes a file header; the error says which check failed.
pub fn decode_file_header(b: &[u8]) -> Result<FileHeader, String> {
    if b.len() < FILE_HEADER_LEN {
        return Err(format!(
            "file header needs {FILE_HEADER_LEN} bytes, file has {}",
            b.len()
        ));
    }
    if b[0..8] != FILE_MAGIC {
        return Err("bad magic: not a streamline WAL file".into());
    }
    // The version says where the checksum is; one that is neither is refused
    // whatever the rest reads (a flip of one bit never turns 2 into 1).
    let raw_version = le_u16(b, 8);
    let Some(version) = FormatVersion::from_u16(raw_version) else {
        // A header written by a newer build, or a damaged one: a known layout
        // whose checksum holds says which (a flipped version bit fails both).
        let sums = [FILE_HEADER_V1_CRC_OFFSET, FILE_HEADER_CRC_OFFSET]
            .iter()
            .any(|&at| le_u32(b, at) == crc32c::crc32c(&b[..at]));
        return Err(if sums {
            format!("unsupported format version {raw_version} (this build reads 1 and 2)")
        } else {
            format!("file header checksum mismatch (version field reads {raw_version})")
        });
    };
    let crc_at = match version {
        FormatVersion::V1 => FILE_HEADER_V1_CRC_OFFSET,
        FormatVersion::V2 => FILE_HEADER_CRC_OFFSET,
    };
    let stored = le_u32(b, crc_at);
    let actual = crc32c::crc32c(&b[..crc_at]);
    if stored != actual {
        return Err(format!(
            "file header checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    // The 4 bytes after the checksum are reserved (written as zero) and not
    // covered by it.
    if le_u32(b, crc_at + 4) != 0 {
        return Err("reserved file header bytes are not zero".into());
    }
    let block = le_u32(b, 12);
    if block as usize != BLOCK_SIZE {
        return Err(format!("unsupported block size {block}"));
    }
    let key = match version {
        FormatVersion::V1 => 0,
        FormatVersion::V2 => le_u64(b, 32),
    };
    if version == FormatVersion::V2 && key == 0 {
        return Err("file key is 0".into());
    }
    Ok(FileHeader {
        version,
        file_number: le_u64(b, 16),
        created_ms: le_u64(b, 24) as i64,
        key,
    })
}

/// Writes a batch header into `out[..BATCH_HEADER_LEN]`, checksummed with `key`,
/// the key of file `h.file_number` (0 for a version 1 file).
pub fn encode_batch_header(out: &mut [u8], h: &BatchHeader, key: u64) {
    out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    out[4] = h.kind.as_u8();
    out[5] = if h.entries_crc.is_some() {
        BATCH_FLAG_ENTRIES_CRC
    } else {
        0
    };
    out[6..8].copy_from_slice(&[0, 0]);
    out[8..16].copy_from_slice(&h.file_number.to_le_bytes());
    out[16..24].copy_from_slice(&h.first_sequence.to_le_bytes());
    out[24..28].copy_from_slice(&h.entry_count.to_le_bytes());
    out[28..32].copy_from_slice(&h.payload_len.to_le_bytes());
    out[32..40].copy_from_slice(&h.synced_through.to_le_bytes());
    out[40..44].copy_from_slice(&h.entries_crc.unwrap_or(0).to_le_bytes());
    let crc = batch_header_crc(key, out);
    out[44..48].copy_from_slice(&crc.to_le_bytes());
}

/// Why a block does not hold a valid batch header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadBatch {
    /// The block is all zeroes where the header would be: never-written space.
    Zero,
    /// A valid header of another file: stale space of a recycled file. Only in
    /// version 1 files, where another file's header can be checked (no key); in
    /// a version 2 file it cannot be, and is [`BadBatch::Invalid`].
    Foreign(u64),
    /// Not a header: wrong magic, wrong checksum, impossible fields.
    Invalid(String),
}

/// Decodes the batch header at the start of `b`, which must belong to `file`.
pub fn decode_batch_header(b: &[u8], file: FileId) -> Result<BatchHeader, BadBatch> {
    let file_number = file.number;
    if b.len() < BATCH_HEADER_LEN {
        return Err(BadBatch::Invalid("truncated batch header".into()));
    }
    let h = &b[..BATCH_HEADER_LEN];
    if h.iter().all(|&x| x == 0) {
        return Err(BadBatch::Zero);
    }
    if le_u32(h, 0) != BATCH_MAGIC {
        return Err(BadBatch::Invalid("bad batch magic".into()));
    }
    let on_disk_file = le_u64(h, 8);
    let stored = le_u32(h, BATCH_HEADER_CRC_OFFSET);
    let actual = batch_header_crc(file.key, h);
    if stored != actual {
        // Another file's header fails this file's key and cannot be checked
        // with its own (gone with that file). Stale space of a recycled file
        // reads like this, and so does a header of this file whose number was
        // damaged: not the quiet end of written data, but a bad block.
        if file.key != 0 && on_disk_file != file_number {
            return Err(BadBatch::Invalid(format!(
                "batch header naming file {on_disk_file}, not checked (stale space of a recycled file, or damage)"
            )));
        }
        return Err(BadBatch::Invalid(format!(
            "batch header checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    if on_disk_file != file_number {
        return Err(BadBatch::Foreign(on_disk_file));
    }
    let kind = match h[4] {
        1 => BatchKind::Entries,
        2 => BatchKind::Seal,
        k => return Err(BadBatch::Invalid(format!("unknown batch kind {k}"))),
    };
    let flags = h[5];
    if flags & !BATCH_FLAG_ENTRIES_CRC != 0 {
        return Err(BadBatch::Invalid(format!(
            "unknown batch flags {flags:#04x}"
        )));
    }
    let hdr = BatchHeader {
        kind,
        file_number,
        first_sequence: le_u64(h, 16),
        entry_count: le_u32(h, 24),
        payload_len: le_u32(h, 28),
        synced_through: le_u64(h, 32),
        entries_crc: (flags & BATCH_FLAG_ENTRIES_CRC != 0).then(|| le_u32(h, 40)),
    };
    if hdr.first_sequence == 0 {
        return Err(BadBatch::Invalid("batch first sequence is 0".into()));
    }
    // Sequences are below u64::MAX: `last_sequence() + 1` (the next one) must exist.
    if hdr
        .first_sequence
        .checked_add(u64::from(hdr.entry_count))
        .is_none_or(|end| end == u64::MAX)
    {
        return Err(BadBatch::Invalid(format!(
            "batch sequences {} + {} run past the largest sequence",
            hdr.first_sequence, hdr.entry_count
        )));
    }
    if kind == BatchKind::Entries && hdr.entry_count == 0 {
        return Err(BadBatch::Invalid("entry batch with no entries".into()));
    }
    if kind == BatchKind::Seal && (hdr.entry_count != 0 || hdr.payload_len != 0) {
        return Err(BadBatch::Invalid("seal batch with a payload".into()));
    }
    if u64::from(hdr.payload_len) < u64::from(hdr.entry_count) * ENTRY_HEADER_LEN as u64 {
        return Err(BadBatch::Invalid(
            "payload too short for its entry count".into(),
        ));
    }
    Ok(hdr)
}

/// Encoded size of an entry with the given topic and data lengths.
pub const fn entry_len(topic_len: usize, data_len: usize) -> usize {
    ENTRY_HEADER_LEN + topic_len + data_len
}

/// Encodes one entry at the start of `out` (which must hold [`entry_len`] bytes) and
/// returns its CRC.
pub fn encode_entry(
    out: &mut [u8],
    sequence: u64,
    timestamp: i64,
    entry_type: WalEntryType,
    topic: &[u8],
    partition: i32,
    data: &[u8],
) -> u32 {
    let len = ENTRY_LEN_FIXED + topic.len() + data.len();
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    out[16..24].copy_from_slice(&timestamp.to_le_bytes());
    out[24] = entry_type.as_u8();
    out[25] = 0;
    out[26..28].copy_from_slice(&(topic.len() as u16).to_le_bytes());
    out[28..32].copy_from_slice(&partition.to_le_bytes());
    out[32..36].copy_from_slice(&(data.len() as u32).to_le_bytes());
    let t_end = ENTRY_HEADER_LEN + topic.len();
    out[ENTRY_HEADER_LEN..t_end].copy_from_slice(topic);
    out[t_end..t_end + data.len()].copy_from_slice(data);
    let crc = crc32c::crc32c(&out[4..8 + len]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// Assembles a whole batch of `Record` entries at the start of `out`, as the
/// commit thread lays one out (it builds its batches entry by entry instead):
/// the header, one entry per `data` with sequences from `h.first_sequence`, all
/// with `timestamp`, `topic` and `partition`, then zeros to the next block
/// boundary. `h`'s `entry_count`, `payload_len` and `entries_crc` are filled in;
/// the header is checksummed with `key` (0 for a version 1 file). Returns the
/// batch's length on disk. For tools, tests and benchmarks that write WAL files
/// by hand.
///
/// # Panics
/// When `out` is shorter than the batch.
pub fn encode_record_batch(
    out: &mut [u8],
    mut h: BatchHeader,
    key: u64,
    timestamp: i64,
    topic: &[u8],
    partition: i32,
    data: &[&[u8]],
) -> usize {
    let mut pos = BATCH_HEADER_LEN;
    let mut crcs = 0;
    for (i, d) in data.iter().enumerate() {
        let len = entry_len(topic.len(), d.len());
        let crc = encode_entry(
            &mut out[pos..pos + len],
            h.first_sequence + i as u64,
            timestamp,
            WalEntryType::Record,
            topic,
            partition,
            d,
        );
        crcs = entries_crc(crcs, crc);
        pos += len;
    }
    h.kind = BatchKind::Entries;
    h.entry_count = data.len() as u32;
    h.payload_len = (pos - BATCH_HEADER_LEN) as u32;
    h.entries_crc = Some(crcs);
    encode_batch_header(&mut out[..BATCH_HEADER_LEN], &h, key);
    let end = align_up(pos);
    out[pos..end].fill(0);
    end
}

/// An entry borrowed from a buffer (no allocation), as validated by [`parse_entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Sequence of the entry.
    pub sequence: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Kind of entry.
    pub entry_type: WalEntryType,
    /// Topic (validated UTF-8).
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Payload.
    pub data: &'a [u8],
    /// Stored (and verified) CRC32C.
    pub crc32: u32,
    /// Bytes the entry occupies.
    pub encoded_len: usize,
}

impl EntryRef<'_> {
    /// Copies the entry out of the buffer.
    pub fn to_owned_entry(&self) -> WalEntry {
        WalEntry {
            sequence: self.sequence,
            timestamp: self.timestamp,
            entry_type: self.entry_type,
            topic: self.topic.to_string(),
            partition: self.partition,
            data: Bytes::copy_from_slice(self.data),
            crc32: self.crc32,
        }
    }
}

/// Validates the entry at the start of `b` without allocating. Every length is
/// checked against `b` before it is used.
pub fn parse_entry(b: &[u8]) -> Result<EntryRef<'_>, String> {
    if b.len() < ENTRY_HEADER_LEN {
        return Err(format!(
            "entry header needs {ENTRY_HEADER_LEN} bytes, {} remain in the batch",
            b.len()
        ));
    }
    let len = le_u32(b, 4) as usize;
    let total = 8usize.checked_add(len).ok_or("entry length overflows")?;
    if len < ENTRY_LEN_FIXED || total > b.len() {
        return Err(format!(
            "entry length {len} does not fit the {} bytes left in the batch",
            b.len()
        ));
    }
    let stored = le_u32(b, 0);
    let actual = crc32c::crc32c(&b[4..total]);
    if stored != actual {
        return Err(format!(
            "entry checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let topic_len = le_u16(b, 26) as usize;
    let data_len = le_u32(b, 32) as usize;
    // Checked: on a 32-bit target the sum of a header and data lengths could
    // wrap to `total`.
    if ENTRY_HEADER_LEN
        .checked_add(topic_len)
        .and_then(|n| n.checked_add(data_len))
        != Some(total)
    {
        return Err("entry field lengths disagree with its length".into());
    }
    let entry_type =
        WalEntryType::try_from(b[24]).map_err(|t| format!("unknown entry type {t}"))?;
    let t_end = ENTRY_HEADER_LEN + topic_len;
    let topic = std::str::from_utf8(&b[ENTRY_HEADER_LEN..t_end])
        .map_err(|_| "topic is not UTF-8".to_string())?;
    Ok(EntryRef {
        sequence: le_u64(b, 8),
        timestamp: le_u64(b, 16) as i64,
        entry_type,
        topic,
        partition: le_u32(b, 28) as i32,
        data: &b[t_end..total],
        crc32: stored,
        encoded_len: total,
    })
}

/// Decodes the entry at the start of `b`. Returns the entry and the bytes it used.
pub fn decode_entry(b: &[u8]) -> Result<(WalEntry, usize), String> {
    let e = parse_entry(b)?;
    Ok((e.to_owned_entry(), e.encoded_len))
}

/// Validates every entry of a batch payload against its header (checksums, lengths,
/// contiguous sequences, and `entries_crc` when the header has it) and calls `f`
/// for each; the `entries_crc` check comes after the last call. `payload` is exactly
/// `header.payload_len` bytes. On failure returns the offset inside the payload and
/// the reason.
pub fn for_each_entry<'a>(
    header: &BatchHeader,
    payload: &'a [u8],
    mut f: impl FnMut(EntryRef<'a>),
) -> Result<(), (usize, String)> {
    let mut pos = 0usize;
    let mut crcs = 0u32;
    for i in 0..header.entry_count {
        let rest = payload.get(pos..).unwrap_or_default();
        let entry = parse_entry(rest).map_err(|e| (pos, format!("entry {i}: {e}")))?;
        crcs = entries_crc(crcs, entry.crc32);
        let expect = header.first_sequence + u64::from(i);
        if entry.sequence != expect {
            return Err((
                pos,
                format!(
                    "entry {i} has sequence {}, expected {expect}",
                    entry.sequence
                ),
            ));
        }
        pos += entry.encoded_len;
        f(entry);
    }
    if pos != payload.len() {
        return Err((
            pos,
            format!(
                "{} unexplained bytes after the last entry",
                payload.len() - pos
            ),
        ));
    }
    if let Some(want) = header.entries_crc {
        if crcs != want {
            return Err((
                0,
                format!("entries do not belong to this batch header (entries crc {crcs:#010x}, header says {want:#010x})"),
            ));
        }
    }
    Ok(())
}

/// Decodes and validates every entry of a batch payload (see [`for_each_entry`]).
pub fn decode_batch_entries(
    header: &BatchHeader,
    payload: &[u8],
) -> Result<Vec<WalEntry>, (usize, String)> {
    let mut out =
        Vec::with_capacity((header.entry_count as usize).min(payload.len() / ENTRY_HEADER_LEN + 1));
    for_each_entry(header, payload, |e| out.push(e.to_owned_entry()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_match_docs() {
        assert_eq!(FILE_HEADER_LEN, 48);
        assert_eq!(BATCH_HEADER_LEN, 48);
        assert_eq!(ENTRY_HEADER_LEN, 36);
    }

    #[test]
    fn file_header_round_trip_and_rejects_flips() {
        let mut b = vec![0u8; BLOCK_SIZE];
        encode_file_header(&mut b, 42, 1234, KEY);
        let h = decode_file_header(&b).unwrap();
        assert_eq!(
            (h.file_number, h.created_ms, h.version, h.key),
            (42, 1234, FormatVersion::V2, KEY)
        );
        let mut v1 = vec![0u8; BLOCK_SIZE];
        encode_file_header_v1(&mut v1, 42, 1234);
        let h1 = decode_file_header(&v1).unwrap();
        assert_eq!(
            (h1.file_number, h1.created_ms, h1.version, h1.key),
            (42, 1234, FormatVersion::V1, 0)
        );
        for (b, used) in [(&b, FILE_HEADER_LEN), (&v1, 40)] {
            for bit in 0..used * 8 {
                let mut c = b.clone();
                c[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decode_file_header(&c).is_err(),
                    "flip of bit {bit} accepted"
                );
            }
        }
    }

    /// What docs/format.md says of the fields written as 0: the file header's
    /// `reserved` (outside its checksum) and unknown batch flag bits are checked
    /// and refused; the file header's `flags`, a batch header's `reserved` (under
    /// their checksums) are not checked; the file header's bytes 48..4096 are
    /// under no checksum and never read.
    #[test]
    fn fields_written_as_zero_are_read_as_the_format_doc_says() {
        let mut b = vec![0u8; BLOCK_SIZE];
        encode_file_header(&mut b, 42, 1234, KEY);
        let reseal = |b: &mut [u8]| {
            let crc = crc32c::crc32c(&b[..FILE_HEADER_CRC_OFFSET]);
            b[FILE_HEADER_CRC_OFFSET..FILE_HEADER_CRC_OFFSET + 4]
                .copy_from_slice(&crc.to_le_bytes());
        };
        for at in FILE_HEADER_CRC_OFFSET + 4..FILE_HEADER_LEN {
            let mut c = b.clone();
            c[at] = 0x80;
            assert_eq!(
                decode_file_header(&c).unwrap_err(),
                "reserved file header bytes are not zero",
                "byte {at}"
            );
        }
        let mut c = b.clone();
        c[FILE_HEADER_LEN..].fill(0xa5);
        assert_eq!(decode_file_header(&c), decode_file_header(&b));
        let mut c = b.clone();
        c[10..12].copy_from_slice(&0xffffu16.to_le_bytes());
        reseal(&mut c);
        assert_eq!(decode_file_header(&c), decode_file_header(&b));

        for bit in 1..8 {
            let mut h = [0u8; BATCH_HEADER_LEN];
            encode_batch_header(&mut h, &SAMPLE, KEY);
            h[5] |= 1 << bit;
            reseal_batch_header(&mut h);
            assert_eq!(
                decode_batch_header(&h, F7),
                Err(BadBatch::Invalid(format!(
                    "unknown batch flags {:#04x}",
                    1u8 | 1 << bit
                ))),
                "flag bit {bit}"
            );
        }
        let mut h = [0u8; BATCH_HEADER_LEN];
        encode_batch_header(&mut h, &SAMPLE, KEY);
        h[6..8].fill(0xff);
        reseal_batch_header(&mut h);
        assert_eq!(decode_batch_header(&h, F7), Ok(SAMPLE));
    }

    #[test]
    fn new_file_keys_differ_and_are_never_zero() {
        let keys: std::collections::HashSet<u64> = (0..1000).map(|_| new_file_key()).collect();
        assert_eq!(keys.len(), 1000);
        assert!(!keys.contains(&0));
    }

    /// The key of file 7 in these tests.
    const KEY: u64 = 0x5eed_0ff1_1e00_0007;
    const F7: FileId = FileId {
        number: 7,
        key: KEY,
    };

    /// An entry batch of file 7.
    const SAMPLE: BatchHeader = BatchHeader {
        kind: BatchKind::Entries,
        file_number: 7,
        first_sequence: 100,
        entry_count: 3,
        payload_len: 200,
        synced_through: 99,
        entries_crc: Some(0x1234_5678),
    };

    #[test]
    fn an_assembled_record_batch_decodes_to_its_entries() {
        let mut b = vec![0xffu8; 2 * BLOCK_SIZE];
        let end = encode_record_batch(&mut b, SAMPLE, KEY, 5, b"t", 3, &[b"one", b"", b"three"]);
        assert_eq!(end, BLOCK_SIZE);
        let h = decode_batch_header(&b[..BATCH_HEADER_LEN], F7).unwrap();
        let payload_end = BATCH_HEADER_LEN + h.payload_len as usize;
        assert_eq!((h.entry_count, h.first_sequence), (3, 100));
        assert!(b[payload_end..end].iter().all(|&x| x == 0), "padding");
        assert_eq!(b[end], 0xff, "nothing written past the batch");
        let got: Vec<(u64, i64, i32, Vec<u8>)> =
            decode_batch_entries(&h, &b[BATCH_HEADER_LEN..payload_end])
                .unwrap()
                .into_iter()
                .map(|e| (e.sequence, e.timestamp, e.partition, e.data.to_vec()))
                .collect();
        let want: Vec<(u64, i64, i32, Vec<u8>)> = vec![
            (100, 5, 3, b"one".to_vec()),
            (101, 5, 3, vec![]),
            (102, 5, 3, b"three".to_vec()),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn batch_header_is_tied_to_its_file() {
        let h = SAMPLE;
        let mut b = [0u8; BATCH_HEADER_LEN];
        encode_batch_header(&mut b, &h, KEY);
        assert_eq!(decode_batch_header(&b, F7), Ok(h));
        let f8 = FileId { number: 8, key: 9 };
        assert!(
            matches!(decode_batch_header(&b, f8), Err(BadBatch::Invalid(ref why)) if why.contains("naming file 7, not checked")),
        );
        assert_eq!(decode_batch_header(&[0u8; 64], F7), Err(BadBatch::Zero));
        // Version 1 files: no key, and another file's header is checked too.
        let mut v1 = [0u8; BATCH_HEADER_LEN];
        encode_batch_header(&mut v1, &h, 0);
        assert_eq!(decode_batch_header(&v1, FileId::unkeyed(7)), Ok(h));
        assert_eq!(
            decode_batch_header(&v1, FileId::unkeyed(8)),
            Err(BadBatch::Foreign(7))
        );
    }

    /// A header of this file's number checksummed without this file's key (bytes a
    /// client sent, made to look like a header of a file whose number is easy to
    /// guess) is no header, in a keyed file; so is a version 1 header.
    #[test]
    fn a_batch_header_without_the_files_key_is_invalid() {
        let mut b = [0u8; BATCH_HEADER_LEN];
        for key in [0, KEY ^ 1, KEY.rotate_left(1)] {
            encode_batch_header(&mut b, &SAMPLE, key);
            assert!(
                matches!(decode_batch_header(&b, F7), Err(BadBatch::Invalid(ref why)) if why.contains("checksum mismatch")),
                "key {key:#x} accepted"
            );
        }
    }

    /// A change to a header's bytes, and the reason the decoder must give.
    type Case = (fn(&mut [u8]), &'static str);

    /// Recomputes the checksum of a batch header after a test changed its fields.
    fn reseal_batch_header(b: &mut [u8]) {
        let crc = batch_header_crc(KEY, b);
        b[BATCH_HEADER_CRC_OFFSET..BATCH_HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// A header whose checksum is right can still describe an impossible batch (a
    /// writer bug, or bytes made to pass the checksum): each is refused, and why.
    #[test]
    fn checksummed_but_impossible_batch_headers_are_refused() {
        let valid = SAMPLE;
        let seal = BatchHeader {
            kind: BatchKind::Seal,
            entry_count: 0,
            payload_len: 0,
            ..valid
        };
        let cases: [(BatchHeader, Case); 9] = [
            (valid, (|b| b[4] = 9, "unknown batch kind 9")),
            (valid, (|b| b[5] = 3, "unknown batch flags 0x03")),
            (valid, (|b| b[16..24].fill(0), "batch first sequence is 0")),
            (
                valid,
                (|b| b[24..28].fill(0), "entry batch with no entries"),
            ),
            (seal, (|b| b[24] = 1, "seal batch with a payload")),
            (seal, (|b| b[28] = 1, "seal batch with a payload")),
            (
                valid,
                (
                    |b| b[28..32].copy_from_slice(&(3 * ENTRY_HEADER_LEN as u32 - 1).to_le_bytes()),
                    "payload too short for its entry count",
                ),
            ),
            (
                valid,
                (
                    |b| b[16..24].copy_from_slice(&(u64::MAX - 3).to_le_bytes()),
                    "batch sequences 18446744073709551612 + 3 run past the largest sequence",
                ),
            ),
            (
                seal,
                (
                    |b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes()),
                    "batch sequences 18446744073709551615 + 0 run past the largest sequence",
                ),
            ),
        ];
        for (h, (change, why)) in cases {
            let mut b = [0u8; BATCH_HEADER_LEN];
            encode_batch_header(&mut b, &h, KEY);
            assert_eq!(decode_batch_header(&b, F7), Ok(h));
            change(&mut b);
            reseal_batch_header(&mut b);
            assert_eq!(
                decode_batch_header(&b, F7),
                Err(BadBatch::Invalid(why.into()))
            );
        }
    }

    #[test]
    fn checksummed_but_unsupported_file_headers_are_refused() {
        let cases: [Case; 4] = [
            (
                |b| b[8..10].copy_from_slice(&3u16.to_le_bytes()),
                "unsupported format version 3",
            ),
            (
                |b| b[12..16].copy_from_slice(&512u32.to_le_bytes()),
                "unsupported block size 512",
            ),
            (|b| b[44] = 1, "reserved file header bytes are not zero"),
            (|b| b[32..40].fill(0), "file key is 0"),
        ];
        for (change, why) in cases {
            let mut b = vec![0u8; BLOCK_SIZE];
            encode_file_header(&mut b, 42, 1234, KEY);
            change(&mut b);
            let crc = crc32c::crc32c(&b[..FILE_HEADER_CRC_OFFSET]);
            b[FILE_HEADER_CRC_OFFSET..FILE_HEADER_CRC_OFFSET + 4]
                .copy_from_slice(&crc.to_le_bytes());
            let err = decode_file_header(&b).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    /// An entry whose checksum is right but whose fields contradict each other or
    /// its batch is refused before any of its bytes are used.
    #[test]
    fn checksummed_but_inconsistent_entries_are_refused() {
        fn entry(change: impl FnOnce(&mut [u8])) -> Vec<u8> {
            let mut b = vec![0u8; entry_len(5, 11)];
            encode_entry(
                &mut b,
                10,
                0,
                WalEntryType::Record,
                b"topic",
                0,
                b"hello world",
            );
            change(&mut b);
            let crc = crc32c::crc32c(&b[4..]);
            b[0..4].copy_from_slice(&crc.to_le_bytes());
            b
        }
        let wrong_topic_len = entry(|b| b[26] = 6);
        assert_eq!(
            parse_entry(&wrong_topic_len).unwrap_err(),
            "entry field lengths disagree with its length"
        );
        assert_eq!(
            parse_entry(&entry(|b| b[24] = 9)).unwrap_err(),
            "unknown entry type 9"
        );
        assert_eq!(
            parse_entry(&entry(|b| b[ENTRY_HEADER_LEN] = 0xFF)).unwrap_err(),
            "topic is not UTF-8"
        );
        // Within a batch: the sequence must be the batch's next one, and nothing
        // may follow the last entry.
        let good = entry(|_| {});
        let header = |first_sequence, payload_len: usize| BatchHeader {
            kind: BatchKind::Entries,
            file_number: 1,
            first_sequence,
            entry_count: 1,
            payload_len: payload_len as u32,
            synced_through: 0,
            entries_crc: None,
        };
        assert_eq!(
            for_each_entry(&header(11, good.len()), &good, |_| {}),
            Err((0, "entry 0 has sequence 10, expected 11".into()))
        );
        let mut longer = good.clone();
        longer.extend([0u8; 8]);
        assert_eq!(
            for_each_entry(&header(10, longer.len()), &longer, |_| {}),
            Err((
                good.len(),
                "8 unexplained bytes after the last entry".into()
            ))
        );
        assert_eq!(
            decode_batch_entries(&header(10, good.len()), &good)
                .unwrap()
                .len(),
            1
        );
    }

    /// A header with `entries_crc` accepts its own entries only: a valid entry of
    /// the same sequence and length from another write (a torn write over older
    /// bytes of the file) is refused. A header without it (older files) checks
    /// each entry alone.
    #[test]
    fn entries_crc_ties_entries_to_their_header() {
        let make = |data: &[u8; 20]| {
            let mut payload = vec![0u8; 2 * entry_len(1, 20)];
            let mut crcs = 0;
            for (i, chunk) in payload.chunks_mut(entry_len(1, 20)).enumerate() {
                let crc = encode_entry(chunk, 7 + i as u64, 0, WalEntryType::Record, b"t", 0, data);
                crcs = entries_crc(crcs, crc);
            }
            (payload, crcs)
        };
        let (ours, crcs) = make(&[1; 20]);
        let (theirs, _) = make(&[2; 20]);
        let header = |entries_crc| BatchHeader {
            kind: BatchKind::Entries,
            file_number: 1,
            first_sequence: 7,
            entry_count: 2,
            payload_len: ours.len() as u32,
            synced_through: 0,
            entries_crc,
        };
        let mut b = [0u8; BATCH_HEADER_LEN];
        let f1 = FileId {
            number: 1,
            key: KEY,
        };
        encode_batch_header(&mut b, &header(Some(crcs)), KEY);
        assert_eq!(decode_batch_header(&b, f1), Ok(header(Some(crcs))));
        encode_batch_header(&mut b, &header(None), KEY);
        assert_eq!(decode_batch_header(&b, f1), Ok(header(None)));
        assert_eq!(
            decode_batch_entries(&header(Some(crcs)), &ours)
                .unwrap()
                .len(),
            2
        );
        // Our first entry, their second: each entry is valid on its own.
        let mut mixed = ours.clone();
        let half = entry_len(1, 20);
        mixed[half..].copy_from_slice(&theirs[half..]);
        assert_eq!(
            decode_batch_entries(&header(None), &mixed).unwrap().len(),
            2
        );
        let (at, why) = decode_batch_entries(&header(Some(crcs)), &mixed).unwrap_err();
        assert_eq!(at, 0);
        assert!(
            why.starts_with("entries do not belong to this batch header"),
            "{why}"
        );
    }

    #[test]
    fn entry_round_trip() {
        let mut b = vec![0u8; entry_len(5, 11)];
        let crc = encode_entry(
            &mut b,
            9,
            -5,
            WalEntryType::Truncate,
            b"topic",
            -1,
            b"hello world",
        );
        let (e, used) = decode_entry(&b).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(e.sequence, 9);
        assert_eq!(e.timestamp, -5);
        assert_eq!(e.entry_type, WalEntryType::Truncate);
        assert_eq!(e.topic, "topic");
        assert_eq!(e.partition, -1);
        assert_eq!(&e.data[..], b"hello world");
        assert_eq!(e.crc32, crc);
        for cut in 0..b.len() {
            assert!(
                decode_entry(&b[..cut]).is_err(),
                "truncated entry of {cut} bytes accepted"
            );
        }
    }
}
