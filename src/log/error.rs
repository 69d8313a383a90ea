//! What can go wrong in a partition log, typed, so callers map each to the
//! right response (a gRPC status, a retry, a fatal stop).

use std::io;
use std::path::{Path, PathBuf};

use super::batch::BatchError;
use crate::sys::disk::is_no_space;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("offset {offset} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("corrupt data in {} at byte {position}: {reason}", file.display())]
    Corrupt { file: PathBuf, position: u64, reason: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A read failed before the operation changed anything: the log stands
    /// as it was and stays usable (a disk that cannot read a sector for a
    /// while).
    #[error("I/O error reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("no space left on the device holding {}", path.display())]
    NoSpace { path: PathBuf },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("offset {offset} is not a batch boundary")]
    NotBatchBoundary { offset: u64 },
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// A write or fsync failed: what is on disk can no longer be trusted, so
    /// the log refuses all further work until it is reopened (recovered).
    #[error("log is failed and must be reopened: {0}")]
    Failed(String),
}

impl LogError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        if is_no_space(&source) {
            LogError::NoSpace { path: path.to_path_buf() }
        } else {
            LogError::Io { path: path.to_path_buf(), source }
        }
    }

    pub fn read(path: &Path, source: io::Error) -> Self {
        LogError::Read { path: path.to_path_buf(), source }
    }

    pub fn corrupt(file: &Path, position: u64, reason: impl Into<String>) -> Self {
        LogError::Corrupt { file: file.to_path_buf(), position, reason: reason.into() }
    }
}

pub type LogResult<T> = Result<T, LogError>;
