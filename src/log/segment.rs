//! One segment of a partition log: a file of batches back to back, named by
//! its base offset, with its sparse offset and time indexes.
//!
//! A segment knows how to append, find and read batches, scan itself during
//! recovery (checking every CRC and cutting a bad tail), truncate, and seal
//! itself when it stops being the active one.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::batch::{Batch, BatchHeader, BATCH_HEADER_BYTES};
use super::config::LogConfig;
use super::error::{LogError, LogResult};
use super::offset_index::OffsetIndex;
use super::time_index::TimeIndex;
use crate::sys::disk::{Disk, DiskFile};
use crate::sys::planted::{self, Bug};

pub const LOG_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// The file name stem of a segment: its base offset, zero-padded so names
/// sort in offset order.
pub fn file_stem(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

/// What a recovery scan of one segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    pub batches: u64,
    /// Where the first bad batch started and why, if the tail was cut.
    pub cut: Option<(u64, String)>,
    pub bytes_cut: u64,
    /// Intact batches (whole, both CRCs good) lay beyond the cut: the bad
    /// bytes were not a torn tail but damage in the middle of the data.
    pub intact_after_cut: bool,
    /// The largest Raft index among those intact batches.
    pub raft_index_after_cut: Option<u64>,
}

/// How much of a segment file a search for intact batches reads at a time.
const SEARCH_CHUNK_BYTES: usize = 1 << 20;

pub struct Segment {
    base_offset: u64,
    next_offset: u64,
    size: u64,
    max_timestamp_ms: i64,
    offset_of_max_timestamp: u64,
    created_ms: i64,
    bytes_since_index: u64,
    path: PathBuf,
    file: Box<dyn DiskFile>,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    index_interval_bytes: u64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("offsets", &(self.base_offset..self.next_offset))
            .field("size", &self.size)
            .finish()
    }
}

/// A planned cut of a segment (see [`Segment::plan_cut`]).
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    offset: u64,
    position: u64,
    max_timestamp_ms: i64,
    offset_of_max_timestamp: u64,
}

impl Segment {
    pub fn paths(dir: &Path, base_offset: u64) -> [PathBuf; 3] {
        let stem = file_stem(base_offset);
        [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX].map(|suffix| dir.join(format!("{stem}{suffix}")))
    }

    /// Opens (or, with `create`, creates) the segment files. The segment
    /// starts out empty in memory; [`Segment::load_trusted`] or
    /// [`Segment::scan`] bring it up to what the file holds.
    pub fn open(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: u64,
        config: &LogConfig,
        now_ms: i64,
        create: bool,
    ) -> LogResult<Self> {
        let [path, index_path, time_index_path] = Self::paths(dir, base_offset);
        let file = disk.open(&path, create).map_err(|e| LogError::io(&path, e))?;
        let offset_index = OffsetIndex::open(disk, &index_path, config.index_bytes())?;
        let time_index = TimeIndex::open(disk, &time_index_path, config.index_bytes())?;
        Ok(Self {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp_ms: i64::MIN,
            offset_of_max_timestamp: base_offset,
            created_ms: now_ms,
            bytes_since_index: 0,
            path,
            file,
            offset_index,
            time_index,
            index_interval_bytes: config.index_interval_bytes,
        })
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn relative(&self, offset: u64) -> u32 {
        u32::try_from(offset - self.base_offset).expect("relative offset fits u32 (checked by should_roll)")
    }

    fn io(&self, error: std::io::Error) -> LogError {
        LogError::io(&self.path, error)
    }

    fn read_error(&self, error: std::io::Error) -> LogError {
        LogError::read(&self.path, error)
    }

    /// Whether appending `batch` here would break a limit, so the log must
    /// roll first. An empty segment takes any batch.
    pub fn should_roll(&self, batch: &Batch, config: &LogConfig, now_ms: i64) -> bool {
        if self.is_empty() {
            return false;
        }
        let too_big = self.size + batch.len() as u64 > config.segment_bytes_max;
        let too_old = config.segment_age_ms_max.is_some_and(|age| now_ms.saturating_sub(self.created_ms) >= age);
        let offsets_overflow =
            self.next_offset + u64::from(batch.record_count()) - self.base_offset > u64::from(u32::MAX);
        too_big || too_old || offsets_overflow || self.offset_index.is_full() || self.time_index.is_full()
    }

    /// Keeps the indexes and bounds in step with a batch stored at `position`.
    fn note_batch(&mut self, position: u64, header: &BatchHeader) {
        if header.max_timestamp_ms > self.max_timestamp_ms {
            self.max_timestamp_ms = header.max_timestamp_ms;
            self.offset_of_max_timestamp = header.base_offset;
        }
        if self.bytes_since_index >= self.index_interval_bytes {
            let relative = self.relative(header.base_offset);
            self.offset_index.push(relative, position as u32);
            let relative_max = self.relative(self.offset_of_max_timestamp);
            self.time_index.push(self.max_timestamp_ms, relative_max, false);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += u64::from(header.batch_len);
        self.next_offset = header.next_offset();
        self.size = position + u64::from(header.batch_len);
    }

    /// Writes a batch already placed at this segment's next offset. Not
    /// durable until [`Segment::sync`].
    pub fn append(&mut self, batch: &Batch) -> LogResult<()> {
        assert_eq!(batch.base_offset(), self.next_offset, "append out of order");
        let position = self.size;
        if let Err(error) = self.file.write_at(position, batch.as_bytes()) {
            // Cut whatever part of the batch reached the file, so a later
            // append does not leave stray bytes behind it.
            let _ = self.file.set_len(position);
            return Err(self.io(error));
        }
        self.note_batch(position, batch.header());
        Ok(())
    }

    pub fn sync(&self) -> LogResult<()> {
        self.file.sync().map_err(|e| self.io(e))
    }

    /// Trusts the sealed indexes of a segment that a checkpoint vouches for,
    /// and reads the segment from its last index entry to its end (at most
    /// an index interval), so a file cut short at rest is found here: the
    /// read ends below `next_offset` (known for all but the last segment),
    /// which the caller takes for damage. Trusting the file's length
    /// instead let a sealed segment cut at a batch boundary pass: reads
    /// then skipped the lost offsets to the next segment, and a Raft
    /// replica met the gap applying its log and stopped for good
    /// (simulation seed 1115). Returns `None` if the indexes cannot be
    /// trusted, leaving the caller to [`Segment::scan`].
    pub fn load_trusted(&mut self, next_offset: Option<u64>) -> LogResult<Option<ScanOutcome>> {
        let file_len = self.file.len().map_err(|e| self.io(e))?;
        let trusted = self.offset_index.file().load_sealed() && self.time_index.file().load_sealed();
        let end_relative = next_offset.map_or(u64::from(u32::MAX), |n| n - self.base_offset);
        if !trusted || !self.offset_index.is_plausible(file_len.max(1)) || !self.time_index.is_plausible(end_relative) {
            self.offset_index.file().truncate(0);
            self.time_index.file().truncate(0);
            return Ok(None);
        }
        if let Some((timestamp_ms, relative)) = self.time_index.last() {
            self.max_timestamp_ms = timestamp_ms;
            self.offset_of_max_timestamp = self.base_offset + u64::from(relative);
        }
        let (relative, position) = self.offset_index.lookup(u32::MAX);
        self.next_offset = self.base_offset + u64::from(relative);
        self.size = u64::from(position);
        self.scan_tail(u64::from(position), file_len, false).map(Some)
    }

    /// Scans the whole segment, checking every batch, rebuilding both indexes
    /// and cutting the file at the first batch that is torn or corrupt.
    pub fn scan(&mut self) -> LogResult<ScanOutcome> {
        let file_len = self.file.len().map_err(|e| self.io(e))?;
        self.offset_index.file().truncate(0);
        self.time_index.file().truncate(0);
        self.next_offset = self.base_offset;
        self.size = 0;
        self.bytes_since_index = 0;
        self.max_timestamp_ms = i64::MIN;
        self.scan_tail(0, file_len, true)
    }

    fn scan_tail(&mut self, mut position: u64, file_len: u64, rebuild: bool) -> LogResult<ScanOutcome> {
        let mut outcome = ScanOutcome::default();
        // Rebuilding starts a fresh index at the first batch.
        if rebuild {
            self.bytes_since_index = 0;
        }
        while position < file_len {
            match self.read_checked(position, self.next_offset, file_len) {
                Ok(batch) => {
                    self.note_batch(position, batch.header());
                    position += batch.len() as u64;
                    outcome.batches += 1;
                }
                Err(LogError::Corrupt { reason, .. }) => {
                    outcome.cut = Some((position, reason));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        if position < file_len {
            if outcome.cut.is_some() {
                let (intact, raft_index) = self.intact_batches_after(position, file_len)?;
                outcome.intact_after_cut = intact;
                outcome.raft_index_after_cut = raft_index;
            }
            outcome.bytes_cut = file_len - position;
            self.file.set_len(position).map_err(|e| self.io(e))?;
            self.file.sync().map_err(|e| self.io(e))?;
        }
        Ok(outcome)
    }

    /// The header at `position` if it is intact (its CRC holds) and its
    /// batch fits in the first `end` bytes.
    fn intact_header_at(&self, position: u64, end: u64) -> LogResult<Option<BatchHeader>> {
        if end.saturating_sub(position) < BATCH_HEADER_BYTES as u64 {
            return Ok(None);
        }
        let mut buf = [0u8; BATCH_HEADER_BYTES];
        self.file.read_exact_at(position, &mut buf).map_err(|e| self.read_error(e))?;
        Ok(BatchHeader::parse(&buf).ok().filter(|h| position + u64::from(h.batch_len) <= end))
    }

    /// The first position at or after `from` where an intact batch (header
    /// and body CRCs good, whole within `end`) starts. Tries `from` itself,
    /// then searches byte by byte, a chunk at a time.
    fn find_intact_batch(&self, from: u64, end: u64) -> LogResult<Option<(u64, BatchHeader)>> {
        let mut chunk_start = from;
        while end.saturating_sub(chunk_start) >= BATCH_HEADER_BYTES as u64 {
            let chunk_end = end.min(chunk_start + (SEARCH_CHUNK_BYTES + BATCH_HEADER_BYTES) as u64);
            let mut buf = vec![0u8; (chunk_end - chunk_start) as usize];
            self.file.read_exact_at(chunk_start, &mut buf).map_err(|e| self.read_error(e))?;
            for at in 0..=buf.len() - BATCH_HEADER_BYTES {
                // Cheap filter first: the version byte and the reserved one.
                if buf[at + 32] != super::batch::BATCH_VERSION || buf[at + 33] != 0 {
                    continue;
                }
                let Ok(header) = BatchHeader::parse(&buf[at..]) else { continue };
                let position = chunk_start + at as u64;
                if position + u64::from(header.batch_len) > end {
                    continue;
                }
                if self.read_checked(position, header.base_offset, end).is_ok() {
                    return Ok(Some((position, header)));
                }
            }
            chunk_start += (buf.len() - BATCH_HEADER_BYTES + 1) as u64;
        }
        Ok(None)
    }

    /// The intact batch at `from`, or else the next one found by searching.
    fn next_intact_batch(&self, from: u64, end: u64) -> LogResult<Option<(u64, BatchHeader)>> {
        if let Some(header) = self.intact_header_at(from, end)? {
            if self.read_checked(from, header.base_offset, end).is_ok() {
                return Ok(Some((from, header)));
            }
        }
        self.find_intact_batch(from, end)
    }

    /// Whether intact batches lie beyond the bad batch at `bad`, and the
    /// largest Raft index among them: what tells damage at rest (bad bytes
    /// with good data after them) from a torn tail (nothing good after).
    fn intact_batches_after(&self, bad: u64, end: u64) -> LogResult<(bool, Option<u64>)> {
        let mut from = match self.intact_header_at(bad, end)? {
            // The header holds, so the body is what is bad: skip it.
            Some(header) => bad + u64::from(header.batch_len),
            None => bad + 1,
        };
        let (mut intact, mut raft_index) = (false, None);
        while let Some((position, header)) = self.next_intact_batch(from, end)? {
            intact = true;
            raft_index = raft_index.max(Some(header.raft_index));
            from = position + u64::from(header.batch_len);
        }
        Ok((intact, raft_index))
    }

    /// The largest Raft index among the intact batches anywhere in this
    /// segment's file, read before the file is deleted as lying beyond a
    /// cut. `None` if it holds none.
    pub fn raft_index_in_file(&self) -> LogResult<Option<u64>> {
        let end = self.file.len().map_err(|e| self.io(e))?;
        let mut from = 0;
        let mut raft_index = None;
        while let Some((position, header)) = self.next_intact_batch(from, end)? {
            raft_index = raft_index.max(Some(header.raft_index));
            from = position + u64::from(header.batch_len);
        }
        Ok(raft_index)
    }

    /// Reads the batch header at `position`, checked. `None` at end of data.
    fn read_header(&self, position: u64) -> LogResult<Option<BatchHeader>> {
        if position >= self.size {
            return Ok(None);
        }
        let mut buf = [0u8; BATCH_HEADER_BYTES];
        if self.size - position < BATCH_HEADER_BYTES as u64 {
            return Err(LogError::corrupt(&self.path, position, "batch header runs past the segment end"));
        }
        self.file.read_exact_at(position, &mut buf).map_err(|e| self.read_error(e))?;
        let header = BatchHeader::parse(&buf).map_err(|e| LogError::corrupt(&self.path, position, e.to_string()))?;
        Ok(Some(header))
    }

    /// Reads and fully checks the batch at `position`, which must start at
    /// `expected_offset` and end by `end`.
    fn read_checked(&self, position: u64, expected_offset: u64, end: u64) -> LogResult<Batch> {
        let corrupt = |reason: String| LogError::corrupt(&self.path, position, reason);
        if end - position < BATCH_HEADER_BYTES as u64 {
            return Err(corrupt(format!("{} stray bytes, less than a batch header", end - position)));
        }
        let mut head = [0u8; BATCH_HEADER_BYTES];
        self.file.read_exact_at(position, &mut head).map_err(|e| self.read_error(e))?;
        let header = BatchHeader::parse(&head).map_err(|e| corrupt(e.to_string()))?;
        if header.base_offset != expected_offset {
            return Err(corrupt(format!("batch at offset {} where {expected_offset} belongs", header.base_offset)));
        }
        let len = u64::from(header.batch_len);
        if end - position < len {
            return Err(corrupt(format!("batch of {len} bytes runs past the end ({} left)", end - position)));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(position, &mut buf).map_err(|e| self.read_error(e))?;
        Batch::decode(Bytes::from(buf)).map_err(|e| corrupt(e.to_string()))
    }

    /// Position of the batch holding `offset`, with its header. `None` if
    /// `offset` is at or past the segment's end.
    fn locate(&self, offset: u64) -> LogResult<Option<(u64, BatchHeader)>> {
        if offset < self.base_offset || offset >= self.next_offset {
            return Ok(None);
        }
        let (_, start) = self.offset_index.lookup(self.relative(offset));
        let mut position = u64::from(start);
        while let Some(header) = self.read_header(position)? {
            if header.next_offset() > offset {
                if header.base_offset > offset {
                    let reason = format!("index led past offset {offset} to batch {}", header.base_offset);
                    return Err(LogError::corrupt(&self.path, position, reason));
                }
                return Ok(Some((position, header)));
            }
            position += u64::from(header.batch_len);
        }
        Ok(None)
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (at
    /// least one batch), none reaching past `limit`. Every batch is
    /// CRC-checked before it is returned.
    pub fn read(&self, offset: u64, max_bytes: usize, limit: u64) -> LogResult<Vec<Batch>> {
        let Some((start, first)) = self.locate(offset)? else { return Ok(Vec::new()) };
        if first.next_offset() > limit {
            return Ok(Vec::new());
        }
        let first_len = u64::from(first.batch_len);
        if first_len > self.size - start {
            let reason = format!("batch of {first_len} bytes runs past the segment end");
            return Err(LogError::corrupt(&self.path, start, reason));
        }
        let want = (max_bytes as u64).max(first_len).min(self.size - start);
        let mut buf = vec![0u8; want as usize];
        self.file.read_exact_at(start, &mut buf).map_err(|e| self.read_error(e))?;
        let buf = Bytes::from(buf);
        let mut batches = Vec::new();
        let mut at = 0usize;
        let mut expected = first.base_offset;
        while buf.len() - at >= BATCH_HEADER_BYTES {
            let position = start + at as u64;
            let corrupt = |reason: String| LogError::corrupt(&self.path, position, reason);
            let header = BatchHeader::parse(&buf[at..]).map_err(|e| corrupt(e.to_string()))?;
            let len = header.batch_len as usize;
            if len > buf.len() - at || header.next_offset() > limit {
                break;
            }
            if header.base_offset != expected {
                return Err(corrupt(format!("batch at offset {} where {expected} belongs", header.base_offset)));
            }
            let batch = Batch::from_storage(buf.slice(at..at + len)).map_err(|e| corrupt(e.to_string()))?;
            expected = batch.next_offset();
            at += len;
            batches.push(batch);
        }
        Ok(batches)
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> LogResult<Option<u64>> {
        if self.is_empty() || self.max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let relative = self.time_index.lookup(timestamp_ms);
        let Some((mut position, _)) = self.locate(self.base_offset + u64::from(relative))? else {
            return Ok(None);
        };
        while let Some(header) = self.read_header(position)? {
            if header.max_timestamp_ms >= timestamp_ms {
                let batch = self.read_checked(position, header.base_offset, self.size)?;
                for record in batch.records() {
                    let record = record.map_err(|e| LogError::corrupt(&self.path, position, e.to_string()))?;
                    if record.timestamp_ms >= timestamp_ms {
                        return Ok(Some(record.offset));
                    }
                }
            }
            position += u64::from(header.batch_len);
        }
        Ok(None)
    }

    /// Plans cutting the segment at `offset`, which must start a batch or be
    /// the segment's end: every read the cut needs happens here, before
    /// anything changes, so a failed read leaves the segment as it was.
    pub fn plan_cut(&self, offset: u64) -> LogResult<Cut> {
        if offset == self.next_offset {
            return Ok(Cut {
                offset,
                position: self.size,
                max_timestamp_ms: self.max_timestamp_ms,
                offset_of_max_timestamp: self.offset_of_max_timestamp,
            });
        }
        let position = match self.locate(offset)? {
            Some((position, header)) if header.base_offset == offset => position,
            _ => return Err(LogError::NotBatchBoundary { offset }),
        };
        // Recompute what the cut removes: the newest timestamp. Truncation
        // is rare; a header scan is fine.
        let mut cut = Cut { offset, position, max_timestamp_ms: i64::MIN, offset_of_max_timestamp: self.base_offset };
        let mut at = 0;
        while at < position {
            let Some(header) = self.read_header(at)? else { break };
            if header.max_timestamp_ms > cut.max_timestamp_ms {
                cut.max_timestamp_ms = header.max_timestamp_ms;
                cut.offset_of_max_timestamp = header.base_offset;
            }
            at += u64::from(header.batch_len);
        }
        Ok(cut)
    }

    /// Cuts the segment as planned by [`Segment::plan_cut`]: writes only.
    /// Durable on return.
    pub fn cut(&mut self, cut: Cut) -> LogResult<()> {
        if cut.offset == self.next_offset {
            return Ok(());
        }
        self.file.set_len(cut.position).map_err(|e| self.io(e))?;
        self.file.sync().map_err(|e| self.io(e))?;
        let relative = self.relative(cut.offset);
        self.offset_index.truncate_from(relative);
        self.time_index.truncate_from(relative);
        self.offset_index.file().unseal();
        self.time_index.file().unseal();
        self.size = cut.position;
        self.next_offset = cut.offset;
        self.max_timestamp_ms = cut.max_timestamp_ms;
        self.offset_of_max_timestamp = cut.offset_of_max_timestamp;
        let (_, last_indexed) = self.offset_index.lookup(relative);
        self.bytes_since_index = cut.position - u64::from(last_indexed);
        Ok(())
    }

    /// Makes the segment and its indexes durable and vouches for the indexes:
    /// done when the segment stops being the active one.
    pub fn seal(&mut self) -> LogResult<()> {
        if !planted::on(Bug::SealWithoutSync) {
            self.sync()?;
        }
        if !self.is_empty() {
            let relative = self.relative(self.offset_of_max_timestamp);
            self.time_index.push(self.max_timestamp_ms, relative, true);
        }
        self.offset_index.file().seal()?;
        self.time_index.file().seal()
    }

    /// Reopens the indexes for writing after the segment became active again.
    pub fn unseal(&mut self) {
        self.offset_index.file().unseal();
        self.time_index.file().unseal();
    }

    /// Removes the segment's files. The caller syncs the directory.
    pub fn delete(self, disk: &dyn Disk) -> LogResult<()> {
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_offset = self.base_offset;
        drop(self);
        Self::remove_files(disk, &dir, base_offset)
    }

    /// Removes whichever of a segment's files exist. The caller syncs the
    /// directory.
    pub fn remove_files(disk: &dyn Disk, dir: &Path, base_offset: u64) -> LogResult<()> {
        for path in Self::paths(dir, base_offset) {
            match disk.remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(LogError::Io { path, source: e }),
                _ => {}
            }
        }
        Ok(())
    }
}
