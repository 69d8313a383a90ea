//! How a partition log behaves: segment sizes, index density, retention and
//! when data is flushed. Every limit is named here.

use super::batch::BATCH_HEADER_BYTES;
use super::error::LogError;

/// Positions inside a segment are stored as u32 in the offset index.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;
/// Index files start with a header of this many bytes.
pub const INDEX_HEADER_BYTES: u64 = 16;
pub const OFFSET_INDEX_ENTRY_BYTES: u64 = 8;
pub const TIME_INDEX_ENTRY_BYTES: u64 = 12;

const _: () = assert!(INDEX_HEADER_BYTES.is_multiple_of(4));

/// When appended data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync after every append: an append returns only once it is durable.
    EveryBatch,
    /// fsync on an append when this long has passed since the last flush, and
    /// whenever the owner calls `flush_if_due` (e.g. from a ticker).
    Interval { interval_ms: i64 },
    /// Only when the owner calls `flush` (Raft decides when it needs it).
    Explicit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment rolls when the next batch would take it past this size.
    pub segment_bytes_max: u64,
    /// A segment rolls on the next append once it is this old.
    pub segment_age_ms_max: Option<i64>,
    /// One offset-index entry per this many bytes of batches (sparse index).
    pub index_interval_bytes: u64,
    /// Size of each index file at most; a full index rolls the segment.
    /// Each is made only as large as its segment can need
    /// ([`LogConfig::index_bytes`]).
    pub index_bytes_max: u64,
    /// Delete the oldest segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<i64>,
    pub flush: FlushPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 128 << 20,
            segment_age_ms_max: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            index_bytes_max: 1 << 20,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            flush: FlushPolicy::EveryBatch,
        }
    }
}

impl LogConfig {
    /// The size of a new segment's index files: room for an entry per
    /// `index_interval_bytes` of a full segment (both indexes add one entry
    /// per interval, and the time index one more at seal time), with a
    /// margin, capped at `index_bytes_max`. Small segments get small
    /// indexes instead of a mostly empty map each (a 16 KiB segment's
    /// index is 112 bytes; a 128 MiB one's 384 KiB, not 1 MiB).
    pub fn index_bytes(&self) -> u64 {
        let entries = self.segment_bytes_max / self.index_interval_bytes.max(1) + 4;
        (INDEX_HEADER_BYTES + entries * TIME_INDEX_ENTRY_BYTES).min(self.index_bytes_max)
    }

    pub fn validate(&self) -> Result<(), LogError> {
        let fail = |reason: String| Err(LogError::Config(reason));
        if self.segment_bytes_max < BATCH_HEADER_BYTES as u64 || self.segment_bytes_max > SEGMENT_BYTES_LIMIT {
            return fail(format!(
                "segment_bytes_max {} outside [{BATCH_HEADER_BYTES}, {SEGMENT_BYTES_LIMIT}]",
                self.segment_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        let entries_min = 2 * TIME_INDEX_ENTRY_BYTES;
        if self.index_bytes_max < INDEX_HEADER_BYTES + entries_min {
            return fail(format!("index_bytes_max {} too small for two entries", self.index_bytes_max));
        }
        if let Some(age) = self.segment_age_ms_max.filter(|age| *age <= 0) {
            return fail(format!("segment_age_ms_max {age} must be positive"));
        }
        if let Some(age) = self.retention_ms.filter(|age| *age <= 0) {
            return fail(format!("retention_ms {age} must be positive"));
        }
        if let FlushPolicy::Interval { interval_ms } = self.flush {
            if interval_ms <= 0 {
                return fail(format!("flush interval {interval_ms} ms must be positive"));
            }
        }
        Ok(())
    }
}
