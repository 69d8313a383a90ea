//! The partition log: record batches in segment files with mmap'd sparse
//! offset and time indexes, read by offset or timestamp, truncated for Raft,
//! trimmed by retention, flushed by policy and recovered after a crash.
//!
//! All file access goes through [`crate::sys::disk::Disk`], so the same code
//! runs on the real disk and on the simulated one that loses unsynced writes.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod durable_mark;
pub mod error;
mod index_file;
mod offset_index;
pub mod partition_log;
pub mod recovery;
pub mod segment;
mod time_index;
mod varint;

pub use batch::{Batch, BatchBuilder, BatchError, BatchHeader, Record, RecordHeader};
pub use config::{FlushPolicy, LogConfig};
pub use error::{LogError, LogResult};
pub use partition_log::{Appended, PartitionLog};
pub use recovery::{Damage, RecoveryReport};
