//! Sparse offset index of one segment: (offset relative to the segment base,
//! byte position of the batch that starts there), one entry per
//! `index_interval_bytes` of data. A lookup lands at or before the wanted
//! batch; a short scan of batch headers finds it.

use std::path::Path;

use super::config::OFFSET_INDEX_ENTRY_BYTES;
use super::error::LogResult;
use super::index_file::IndexFile;
use crate::sys::disk::Disk;

const MAGIC: u32 = u32::from_le_bytes(*b"WIDX");

#[derive(Debug)]
pub struct OffsetIndex {
    file: IndexFile,
}

fn decode(entry: &[u8]) -> (u32, u32) {
    let relative = u32::from_le_bytes(entry[0..4].try_into().expect("4 bytes"));
    let position = u32::from_le_bytes(entry[4..8].try_into().expect("4 bytes"));
    (relative, position)
}

impl OffsetIndex {
    pub fn open(disk: &dyn Disk, path: &Path, len_bytes: u64) -> LogResult<Self> {
        Ok(Self { file: IndexFile::open(disk, path, MAGIC, OFFSET_INDEX_ENTRY_BYTES, len_bytes)? })
    }

    pub fn file(&mut self) -> &mut IndexFile {
        &mut self.file
    }

    pub fn is_full(&self) -> bool {
        self.file.is_full()
    }

    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if let Some((last, _)) = self.last() {
            assert!(relative_offset > last, "offset index must grow: {relative_offset} after {last}");
        }
        let mut entry = [0u8; OFFSET_INDEX_ENTRY_BYTES as usize];
        entry[0..4].copy_from_slice(&relative_offset.to_le_bytes());
        entry[4..8].copy_from_slice(&position.to_le_bytes());
        self.file.push(&entry);
    }

    pub fn last(&self) -> Option<(u32, u32)> {
        self.file.len().checked_sub(1).map(|i| decode(self.file.entry(i)))
    }

    /// The last entry at or before `relative_offset`, or the segment start.
    pub fn lookup(&self, relative_offset: u32) -> (u32, u32) {
        let after = self.file.partition_point(|e| decode(e).0 <= relative_offset);
        after.checked_sub(1).map_or((0, 0), |i| decode(self.file.entry(i)))
    }

    /// Drops entries at or after `relative_offset`.
    pub fn truncate_from(&mut self, relative_offset: u32) {
        let keep = self.file.partition_point(|e| decode(e).0 < relative_offset);
        self.file.truncate(keep);
    }

    /// Checks that a trusted index is consistent with its segment: growing
    /// offsets and positions, all inside the file.
    pub fn is_plausible(&self, segment_bytes: u64) -> bool {
        let mut previous: Option<(u32, u32)> = None;
        for i in 0..self.file.len() {
            let (relative, position) = decode(self.file.entry(i));
            if u64::from(position) >= segment_bytes {
                return false;
            }
            if let Some((r, p)) = previous {
                if relative <= r || position <= p {
                    return false;
                }
            }
            previous = Some((relative, position));
        }
        true
    }
}
