//! A memory-mapped file of fixed-size entries: the storage under the offset
//! and time indexes.
//!
//! ```text
//! 0  u32 magic   4 u8 version   5 u8 sealed   6 u16 reserved
//! 8  u32 entry_count            12 u32 crc32c of the entries
//! 16 entries...
//! ```
//!
//! An index is rebuilt from its segment whenever it cannot be vouched for.
//! Only a *sealed* index is trusted: `seal` writes the entry count and a CRC of
//! the entries and flushes the map, and happens when the segment is rolled or
//! the log closed cleanly. The active segment's index is written through the
//! map without flushing; after a crash it is rebuilt by scanning.

use std::path::{Path, PathBuf};

use super::config::INDEX_HEADER_BYTES;
use super::error::{LogError, LogResult};
use crate::sys::disk::{Disk, DiskMap};

const INDEX_VERSION: u8 = 1;
const HEADER: usize = INDEX_HEADER_BYTES as usize;

pub struct IndexFile {
    path: PathBuf,
    map: Box<dyn DiskMap>,
    magic: u32,
    entry_bytes: usize,
    entry_count: usize,
}

impl std::fmt::Debug for IndexFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexFile({}, {} entries)", self.path.display(), self.entry_count)
    }
}

impl IndexFile {
    /// Maps (creating if needed) an index file of at least `len_bytes`. It
    /// starts with no entries: call [`IndexFile::load_sealed`] to trust what
    /// is there, or fill it by scanning the segment.
    pub fn open(disk: &dyn Disk, path: &Path, magic: u32, entry_bytes: u64, len_bytes: u64) -> LogResult<Self> {
        let map = disk.map(path, len_bytes).map_err(|e| LogError::io(path, e))?;
        if map.bytes().len() < HEADER + entry_bytes as usize {
            return Err(LogError::corrupt(path, 0, "index file too small for its header"));
        }
        Ok(Self { path: path.to_path_buf(), map, magic, entry_bytes: entry_bytes as usize, entry_count: 0 })
    }

    /// Trusts the stored entries if the index was sealed and its CRC matches;
    /// returns whether it did. On `false` the index is empty.
    pub fn load_sealed(&mut self) -> bool {
        let bytes = self.map.bytes();
        let stored_magic = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let sealed = bytes[4] == INDEX_VERSION && bytes[5] == 1 && stored_magic == self.magic;
        let count = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let trusted = sealed && count <= self.capacity() && crc32c::crc32c(self.entries_bytes(count)) == crc;
        // The header stays as it is: a sealed segment stays sealed on disk.
        self.entry_count = if trusted { count } else { 0 };
        trusted
    }

    fn entries_bytes(&self, count: usize) -> &[u8] {
        &self.map.bytes()[HEADER..HEADER + count * self.entry_bytes]
    }

    fn write_header(&mut self, sealed: bool) {
        let crc = if sealed { crc32c::crc32c(self.entries_bytes(self.entry_count)) } else { 0 };
        let count = self.entry_count as u32;
        let magic = self.magic;
        let header = &mut self.map.bytes_mut()[..HEADER];
        header[0..4].copy_from_slice(&magic.to_le_bytes());
        header[4] = INDEX_VERSION;
        header[5] = u8::from(sealed);
        header[6..8].fill(0);
        header[8..12].copy_from_slice(&count.to_le_bytes());
        header[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn capacity(&self) -> usize {
        (self.map.bytes().len() - HEADER) / self.entry_bytes
    }

    pub fn len(&self) -> usize {
        self.entry_count
    }

    pub fn is_full(&self) -> bool {
        self.entry_count >= self.capacity()
    }

    pub fn entry(&self, i: usize) -> &[u8] {
        assert!(i < self.entry_count, "index entry {i} of {}", self.entry_count);
        let start = HEADER + i * self.entry_bytes;
        &self.map.bytes()[start..start + self.entry_bytes]
    }

    pub fn push(&mut self, entry: &[u8]) {
        assert_eq!(entry.len(), self.entry_bytes);
        assert!(!self.is_full(), "push to a full index {}", self.path.display());
        let start = HEADER + self.entry_count * self.entry_bytes;
        self.map.bytes_mut()[start..start + self.entry_bytes].copy_from_slice(entry);
        self.entry_count += 1;
    }

    /// Keeps the first `count` entries.
    pub fn truncate(&mut self, count: usize) {
        self.entry_count = self.entry_count.min(count);
        self.write_header(false);
    }

    /// First index in `0..len` whose entry does not satisfy `before`, given
    /// that entries satisfying it come first.
    pub fn partition_point(&self, before: impl Fn(&[u8]) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.entry_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(self.entry(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Records the entry count and CRC and makes the index durable; from now
    /// on a recovery may trust it.
    pub fn seal(&mut self) -> LogResult<()> {
        self.write_header(true);
        self.map.flush().map_err(|e| LogError::io(&self.path, e))
    }

    /// Marks the index as being written again (after a truncation made its
    /// segment the active one).
    pub fn unseal(&mut self) {
        self.write_header(false);
    }
}
