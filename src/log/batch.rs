//! The record batch: weir's unit of write, replication and read.
//!
//! A batch is stored, replicated and served in exactly this encoding, so the
//! bytes a producer sends are the bytes a consumer receives. Format version 1,
//! little-endian:
//!
//! ```text
//!  0  u64  base_offset        assigned by the log        ┐
//!  8  u64  term               Raft term of the leader    │ mutable fields,
//! 16  u64  raft_index         Raft log index (0: none)   ┘ set on append
//! 24  u32  head_crc           CRC32C of [0..24) ++ [28..74)
//! 28  u32  batch_len          whole batch, header included
//! 32  u8   version            = 1
//! 33  u8   reserved           = 0
//! 34  u16  attributes         compression, transactional (none yet)
//! 36  u32  body_crc           CRC32C of the records, [74..batch_len)
//! 40  u32  record_count       >= 1
//! 44  i64  first_timestamp_ms
//! 52  i64  max_timestamp_ms
//! 60  i64  producer_id        -1: not idempotent
//! 68  i16  producer_epoch
//! 70  i32  base_sequence
//! 74       records
//! ```
//!
//! Two CRCs instead of one: the producer seals the records with `body_crc`
//! once, and the log, which must assign the base offset, term and Raft index,
//! re-seals only the 70-byte header with `head_crc` instead of re-reading the
//! body. Together they cover every byte, so any flipped byte is detected.
//!
//! Each batch is one Raft log entry; `raft_index` names it. (Raft's other
//! entries, a leader's blank entry and membership changes, are kept beside
//! the log and take no offset: see `raft::log_store`.)
//!
//! Each record, varint-encoded (zigzag for signed):
//!
//! ```text
//! u64 record_len (bytes after this field), u8 attributes,
//! i64 timestamp_delta (from first_timestamp_ms), u64 offset_delta,
//! i64 key_len (-1: none), key, i64 value_len (-1: none), value,
//! u64 header_count, then per header: u64 key_len, key (UTF-8),
//! i64 value_len (-1: none), value
//! ```

use bytes::Bytes;

use super::varint::{self, ReadError, Reader};

pub const BATCH_VERSION: u8 = 1;
pub const BATCH_HEADER_BYTES: usize = 74;
/// The largest batch weir accepts or stores.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// `producer_id` of a batch from a producer that is not idempotent.
pub const PRODUCER_ID_NONE: i64 = -1;

/// Batch attribute bits weir defines (none yet: compression and
/// transactions will take some). A batch with any other bit set is
/// refused, never read as plain records it may not be.
pub const BATCH_ATTRIBUTES_KNOWN: u16 = 0;
/// Record attribute bits weir defines (none yet).
pub const RECORD_ATTRIBUTES_KNOWN: u8 = 0;

const HEAD_CRC_AT: usize = 24;
const BODY_CRC_AT: usize = 36;

const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BATCH_HEADER_BYTES == 70 + 4);

/// What is wrong with a batch's bytes. Every decoding failure is one of these;
/// decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported batch format version {0}")]
    UnsupportedVersion(u8),
    #[error("batch length {0} outside [{min}, {max}]", min = BATCH_HEADER_BYTES, max = BATCH_BYTES_MAX)]
    BadLength(u64),
    #[error("batch header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("batch body CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BodyCrc { stored: u32, computed: u32 },
    #[error("malformed batch: {0}")]
    Malformed(String),
    #[error("a batch holds at least one record")]
    Empty,
}

impl From<ReadError> for BatchError {
    fn from(error: ReadError) -> Self {
        BatchError::Malformed(match error {
            ReadError::Truncated => "record runs past the end of the batch".into(),
            ReadError::VarintOverflow => "varint overflows 64 bits".into(),
        })
    }
}

/// A record header: a named, optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// One message. `offset` is assigned by the log: ignored when building a
/// batch, set when decoding one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// The fixed-size header of a batch, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub term: u64,
    pub raft_index: u64,
    pub batch_len: u32,
    pub attributes: u16,
    pub body_crc: u32,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn head_crc(header: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..HEAD_CRC_AT]);
    crc32c::crc32c_append(crc, &header[HEAD_CRC_AT + 4..BATCH_HEADER_BYTES])
}

impl BatchHeader {
    /// Parses and checks a header: length, version, bounds, head CRC. The body
    /// is not looked at.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated { needed: BATCH_HEADER_BYTES, available: bytes.len() });
        }
        let h = &bytes[..BATCH_HEADER_BYTES];
        let stored = le_u32(h, HEAD_CRC_AT);
        let computed = head_crc(h);
        if stored != computed {
            return Err(BatchError::HeaderCrc { stored, computed });
        }
        if h[32] != BATCH_VERSION {
            return Err(BatchError::UnsupportedVersion(h[32]));
        }
        if h[33] != 0 {
            return Err(BatchError::Malformed(format!("reserved header byte is {}, not 0", h[33])));
        }
        let attributes = le_u16(h, 34);
        if attributes & !BATCH_ATTRIBUTES_KNOWN != 0 {
            return Err(BatchError::Malformed(format!(
                "batch attributes {attributes:#06x} set bits weir does not define"
            )));
        }
        let batch_len = le_u32(h, 28);
        if (batch_len as usize) < BATCH_HEADER_BYTES || batch_len as usize > BATCH_BYTES_MAX {
            return Err(BatchError::BadLength(u64::from(batch_len)));
        }
        let header = BatchHeader {
            base_offset: le_u64(h, 0),
            term: le_u64(h, 8),
            raft_index: le_u64(h, 16),
            batch_len,
            attributes: le_u16(h, 34),
            body_crc: le_u32(h, BODY_CRC_AT),
            record_count: le_u32(h, 40),
            first_timestamp_ms: le_u64(h, 44) as i64,
            max_timestamp_ms: le_u64(h, 52) as i64,
            producer_id: le_u64(h, 60) as i64,
            producer_epoch: le_u16(h, 68) as i16,
            base_sequence: le_u32(h, 70) as i32,
        };
        if header.record_count == 0 {
            return Err(BatchError::Empty);
        }
        if header.base_offset.checked_add(u64::from(header.record_count)).is_none() {
            return Err(BatchError::Malformed("base offset + record count overflows".into()));
        }
        Ok(header)
    }

    /// The offset after the last record of this batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    pub fn last_offset(&self) -> u64 {
        self.next_offset() - 1
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.base_offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.term.to_le_bytes());
        out[16..24].copy_from_slice(&self.raft_index.to_le_bytes());
        out[28..32].copy_from_slice(&self.batch_len.to_le_bytes());
        out[32] = BATCH_VERSION;
        out[33] = 0;
        out[34..36].copy_from_slice(&self.attributes.to_le_bytes());
        out[36..40].copy_from_slice(&self.body_crc.to_le_bytes());
        out[40..44].copy_from_slice(&self.record_count.to_le_bytes());
        out[44..52].copy_from_slice(&self.first_timestamp_ms.to_le_bytes());
        out[52..60].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        out[60..68].copy_from_slice(&self.producer_id.to_le_bytes());
        out[68..70].copy_from_slice(&self.producer_epoch.to_le_bytes());
        out[70..74].copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = head_crc(out);
        out[HEAD_CRC_AT..HEAD_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A checked, encoded record batch. Holding one means both CRCs matched and
/// every record parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Checks and wraps an encoded batch: header, both CRCs and the structure
    /// of every record. `bytes` must hold exactly one batch.
    pub fn decode(bytes: Bytes) -> Result<Self, BatchError> {
        let batch = Self::from_storage(bytes)?;
        batch.check_records()?;
        Ok(batch)
    }

    /// Checks the header and both CRCs, not the record structure: for bytes
    /// that passed [`Batch::decode`] when they were written. Iterating the
    /// records still fails cleanly rather than panics if they do not parse.
    pub fn from_storage(bytes: Bytes) -> Result<Self, BatchError> {
        let header = BatchHeader::parse(&bytes)?;
        if header.batch_len as usize != bytes.len() {
            return Err(BatchError::Truncated { needed: header.batch_len as usize, available: bytes.len() });
        }
        let computed = crc32c::crc32c(&bytes[BATCH_HEADER_BYTES..]);
        if computed != header.body_crc {
            return Err(BatchError::BodyCrc { stored: header.body_crc, computed });
        }
        Ok(Batch { header, bytes })
    }

    fn check_records(&self) -> Result<(), BatchError> {
        let mut max_timestamp_ms = i64::MIN;
        let mut count = 0u32;
        for record in self.records() {
            let record = record?;
            max_timestamp_ms = max_timestamp_ms.max(record.timestamp_ms);
            count += 1;
        }
        if count != self.header.record_count {
            return Err(BatchError::Malformed(format!(
                "header says {} records, body holds {count}",
                self.header.record_count
            )));
        }
        if max_timestamp_ms != self.header.max_timestamp_ms {
            return Err(BatchError::Malformed(format!(
                "header max timestamp {} but records' max is {max_timestamp_ms}",
                self.header.max_timestamp_ms
            )));
        }
        Ok(())
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }

    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.header.max_timestamp_ms
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    pub fn term(&self) -> u64 {
        self.header.term
    }

    pub fn raft_index(&self) -> u64 {
        self.header.raft_index
    }

    /// The same batch placed at `base_offset`, as Raft entry `raft_index` of
    /// `term` (both 0 outside Raft): rewrites the mutable header fields and
    /// re-seals the header. The body is untouched.
    pub fn placed(self, base_offset: u64, term: u64, raft_index: u64) -> Self {
        let header = BatchHeader { base_offset, term, raft_index, ..self.header };
        let mut bytes = match self.bytes.try_into_mut() {
            Ok(unique) => unique,
            Err(shared) => bytes::BytesMut::from(&shared[..]),
        };
        header.encode(&mut bytes[..BATCH_HEADER_BYTES]);
        Batch { header, bytes: bytes.freeze() }
    }

    /// The records, decoded lazily. Each item fails rather than panics on
    /// bytes that do not parse.
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter { batch: self, reader: Reader::new(&self.bytes[BATCH_HEADER_BYTES..]), index: 0 }
    }
}

/// Iterator over the records of a [`Batch`].
pub struct RecordIter<'a> {
    batch: &'a Batch,
    reader: Reader<'a>,
    index: u64,
}

impl Iterator for RecordIter<'_> {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.remaining() == 0 {
            return None;
        }
        let item = self.decode_one();
        if item.is_err() {
            // Stop after the first error: the rest cannot be framed.
            self.reader = Reader::new(&[]);
        }
        self.index += 1;
        Some(item)
    }
}

impl RecordIter<'_> {
    fn slice(&self, within_body: &[u8]) -> Bytes {
        self.batch.bytes.slice_ref(within_body)
    }

    fn optional_bytes(&self, reader: &mut Reader<'_>) -> Result<Option<Bytes>, BatchError> {
        match reader.i64()? {
            -1 => Ok(None),
            len if len < -1 => Err(BatchError::Malformed(format!("negative length {len}"))),
            len => {
                let len = usize::try_from(len).map_err(|_| BatchError::Malformed("length too large".into()))?;
                Ok(Some(self.slice(reader.bytes(len)?)))
            }
        }
    }

    fn decode_one(&mut self) -> Result<Record, BatchError> {
        let len = usize::try_from(self.reader.u64()?).map_err(|_| BatchError::Malformed("record too long".into()))?;
        let body = self.reader.bytes(len)?;
        let mut r = Reader::new(body);
        let attributes = r.u8()?;
        if attributes & !RECORD_ATTRIBUTES_KNOWN != 0 {
            return Err(BatchError::Malformed(format!(
                "record {} has attributes {attributes:#04x}, bits weir does not define",
                self.index
            )));
        }
        let timestamp_delta = r.i64()?;
        let offset_delta = r.u64()?;
        if offset_delta != self.index {
            return Err(BatchError::Malformed(format!("record {} has offset delta {offset_delta}", self.index)));
        }
        let key = self.optional_bytes(&mut r)?;
        let value = self.optional_bytes(&mut r)?;
        let header_count = r.u64()?;
        if header_count > r.remaining() as u64 {
            return Err(BatchError::Malformed(format!("{header_count} headers cannot fit")));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key_len = usize::try_from(r.u64()?).map_err(|_| BatchError::Malformed("header key too long".into()))?;
            let key = std::str::from_utf8(r.bytes(key_len)?)
                .map_err(|_| BatchError::Malformed("header key is not UTF-8".into()))?
                .to_owned();
            let value = self.optional_bytes(&mut r)?;
            headers.push(RecordHeader { key, value });
        }
        if r.remaining() != 0 {
            return Err(BatchError::Malformed(format!("{} stray bytes after record {}", r.remaining(), self.index)));
        }
        // Wrapping on both ends, so every timestamp a builder accepts round-trips.
        let timestamp_ms = self.batch.header.first_timestamp_ms.wrapping_add(timestamp_delta);
        Ok(Record { offset: self.batch.header.base_offset + offset_delta, timestamp_ms, key, value, headers })
    }
}

/// Builds a batch from records. Offsets are left at zero for the log to set.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// Room for the header, then the records as they will be stored: the
    /// batch is built in place, without a copy.
    bytes: Vec<u8>,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn optional_len(value: Option<&Bytes>) -> usize {
    match value {
        None => varint::len_i64(-1),
        Some(bytes) => varint::len_i64(bytes.len() as i64) + bytes.len(),
    }
}

fn put_optional(out: &mut Vec<u8>, value: Option<&Bytes>) {
    match value {
        None => varint::put_i64(out, -1),
        Some(bytes) => {
            varint::put_i64(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self {
            bytes: vec![0; BATCH_HEADER_BYTES],
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
            producer_id: PRODUCER_ID_NONE,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Marks the batch as sent by an idempotent producer.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes the batch would take if built now.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn push(&mut self, record: &Record) -> &mut Self {
        if self.record_count == 0 {
            self.first_timestamp_ms = record.timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
        let delta = record.timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let headers_len: usize = record
            .headers
            .iter()
            .map(|h| varint::len_u64(h.key.len() as u64) + h.key.len() + optional_len(h.value.as_ref()))
            .sum();
        let len = 1
            + varint::len_i64(delta)
            + varint::len_u64(u64::from(self.record_count))
            + optional_len(record.key.as_ref())
            + optional_len(record.value.as_ref())
            + varint::len_u64(record.headers.len() as u64)
            + headers_len;
        let out = &mut self.bytes;
        out.reserve(varint::len_u64(len as u64) + len);
        varint::put_u64(out, len as u64);
        let start = out.len();
        out.push(0);
        varint::put_i64(out, delta);
        varint::put_u64(out, u64::from(self.record_count));
        put_optional(out, record.key.as_ref());
        put_optional(out, record.value.as_ref());
        varint::put_u64(out, record.headers.len() as u64);
        for header in &record.headers {
            varint::put_u64(out, header.key.len() as u64);
            out.extend_from_slice(header.key.as_bytes());
            put_optional(out, header.value.as_ref());
        }
        debug_assert_eq!(out.len() - start, len, "a record's length is counted as it is written");
        self.record_count += 1;
        self
    }

    /// Seals the batch. Fails if it is empty or larger than [`BATCH_BYTES_MAX`].
    pub fn build(mut self) -> Result<Batch, BatchError> {
        if self.record_count == 0 {
            return Err(BatchError::Empty);
        }
        let batch_len = self.encoded_len();
        if batch_len > BATCH_BYTES_MAX {
            return Err(BatchError::BadLength(batch_len as u64));
        }
        let header = BatchHeader {
            base_offset: 0,
            term: 0,
            raft_index: 0,
            batch_len: batch_len as u32,
            attributes: 0,
            body_crc: crc32c::crc32c(&self.bytes[BATCH_HEADER_BYTES..]),
            record_count: self.record_count,
            first_timestamp_ms: self.first_timestamp_ms,
            max_timestamp_ms: self.max_timestamp_ms,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
        };
        header.encode(&mut self.bytes[..BATCH_HEADER_BYTES]);
        Ok(Batch { header, bytes: Bytes::from(self.bytes) })
    }
}
