//! Sparse time index of one segment: (largest timestamp so far, offset
//! relative to the segment base of the batch that raised it). Every batch
//! before an entry's offset has no record newer than the entry's timestamp,
//! so a search for time `t` may skip to the last entry older than `t`.

use std::path::Path;

use super::config::TIME_INDEX_ENTRY_BYTES;
use super::error::LogResult;
use super::index_file::IndexFile;
use crate::sys::disk::Disk;

const MAGIC: u32 = u32::from_le_bytes(*b"WTIX");

#[derive(Debug)]
pub struct TimeIndex {
    file: IndexFile,
}

fn decode(entry: &[u8]) -> (i64, u32) {
    let timestamp_ms = i64::from_le_bytes(entry[0..8].try_into().expect("8 bytes"));
    let relative = u32::from_le_bytes(entry[8..12].try_into().expect("4 bytes"));
    (timestamp_ms, relative)
}

impl TimeIndex {
    pub fn open(disk: &dyn Disk, path: &Path, len_bytes: u64) -> LogResult<Self> {
        Ok(Self { file: IndexFile::open(disk, path, MAGIC, TIME_INDEX_ENTRY_BYTES, len_bytes)? })
    }

    pub fn file(&mut self) -> &mut IndexFile {
        &mut self.file
    }

    /// Full for regular entries: one slot stays free for the entry written at
    /// seal time.
    pub fn is_full(&self) -> bool {
        self.file.len() + 1 >= self.file.capacity()
    }

    /// Appends an entry if `timestamp_ms` is newer than the last one. `force`
    /// may use the reserved last slot.
    pub fn push(&mut self, timestamp_ms: i64, relative_offset: u32, force: bool) {
        if let Some((last_ts, last_rel)) = self.last() {
            if timestamp_ms <= last_ts || relative_offset <= last_rel {
                return;
            }
        }
        if self.file.is_full() || (self.is_full() && !force) {
            return;
        }
        let mut entry = [0u8; TIME_INDEX_ENTRY_BYTES as usize];
        entry[0..8].copy_from_slice(&timestamp_ms.to_le_bytes());
        entry[8..12].copy_from_slice(&relative_offset.to_le_bytes());
        self.file.push(&entry);
    }

    pub fn last(&self) -> Option<(i64, u32)> {
        self.file.len().checked_sub(1).map(|i| decode(self.file.entry(i)))
    }

    /// Where a search for the first record at or after `timestamp_ms` may
    /// start: the relative offset of the last entry older than it, or 0.
    pub fn lookup(&self, timestamp_ms: i64) -> u32 {
        let after = self.file.partition_point(|e| decode(e).0 < timestamp_ms);
        after.checked_sub(1).map_or(0, |i| decode(self.file.entry(i)).1)
    }

    /// Drops entries at or after `relative_offset`.
    pub fn truncate_from(&mut self, relative_offset: u32) {
        let keep = self.file.partition_point(|e| decode(e).1 < relative_offset);
        self.file.truncate(keep);
    }

    pub fn is_plausible(&self, relative_offset_end: u64) -> bool {
        let mut previous: Option<(i64, u32)> = None;
        for i in 0..self.file.len() {
            let (timestamp_ms, relative) = decode(self.file.entry(i));
            if u64::from(relative) >= relative_offset_end {
                return false;
            }
            if let Some((t, r)) = previous {
                if timestamp_ms <= t || relative <= r {
                    return false;
                }
            }
            previous = Some((timestamp_ms, relative));
        }
        true
    }
}
