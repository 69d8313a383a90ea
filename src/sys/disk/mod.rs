//! The file system, behind a trait, so a simulated disk can stand in.
//!
//! weir's storage promises ("acknowledged under `all` is never lost") are only
//! as good as its handling of what a crash leaves behind. madsim passes file
//! I/O through to the real disk and its fsync does nothing, so crash
//! consistency needs a disk of our own: [`RealDisk`] for production and
//! [`SimDisk`], which on a simulated crash keeps exactly what was made durable,
//! may keep a torn prefix of what was not, and can fail writes and fsyncs or run
//! out of space on command.
//!
//! The contract every implementation honours, and every caller relies on:
//! - `DiskFile::write_at` returns only when all bytes were accepted (or fails);
//!   they are visible to reads at once but **not durable** until `sync`.
//! - `DiskFile::sync` returns `Ok` only once every earlier write and `set_len`
//!   of that file is durable. After it fails, the caller must assume the
//!   unsynced data is gone even if reads still return it (as on Linux, where a
//!   failed fsync drops the dirty pages): treat it as fatal for that file.
//! - Creating, removing or renaming a file is durable only after `sync_dir` of
//!   the directory that holds it. Renames stay within one directory and are
//!   atomic.
//! - `DiskMap::flush` makes the mapped bytes (and the file's length) durable.
//! - Running out of space is `io::ErrorKind::StorageFull`; callers report it
//!   as such instead of as a generic I/O error.

mod real;
mod sim;

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use real::RealDisk;
pub use sim::{SimDisk, SimDiskFaults};

/// A file opened for reading and writing at explicit positions.
#[allow(clippy::len_without_is_empty)] // a file length, not a collection
pub trait DiskFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `position`; fewer only at end of file.
    fn read_at(&self, position: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `buf` at `position`, extending the file if needed.
    fn write_at(&self, position: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every earlier write and length change of this file durable.
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Cuts or zero-extends the file to `len` bytes (durable after `sync`).
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `position`, or fails with
    /// `UnexpectedEof`.
    fn read_exact_at(&self, position: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read_at(position + filled as u64, &mut buf[filled..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"));
            }
            filled += n;
        }
        Ok(())
    }
}

/// A file mapped into memory for reading and writing (indexes).
pub trait DiskMap: Send + Sync {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes the mapped bytes durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A file system: files, directories, maps.
pub trait Disk: Send + Sync + Debug + 'static {
    /// Creates a directory and its parents; durable when it returns.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the regular files in a directory, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// The names of the directories in a directory, sorted.
    fn list_subdirs(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing; creates it (empty) if `create`
    /// and it does not exist, otherwise fails with `NotFound`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it (durable after `sync_dir`
    /// of its parent). A missing directory is not an error.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`; both in the same directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, removals and renames in `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Maps a file, creating it and zero-extending it to at least `len_min`
    /// bytes first. The map covers the whole file.
    fn map(&self, path: &Path, len_min: u64) -> io::Result<Box<dyn DiskMap>>;
    /// Takes an exclusive lock on the file `path` (created if missing) for
    /// as long as the returned guard lives, and writes `owner` into it.
    /// Fails with `WouldBlock` while another holder has it, whether in
    /// this process or another; the lock is released when the guard drops
    /// or the holder's process dies (a crash).
    fn lock_file(&self, path: &Path, owner: &str) -> io::Result<Box<dyn DiskLock>>;
}

/// An exclusive lock taken with [`Disk::lock_file`], held until dropped.
pub trait DiskLock: Send + Sync + Debug {}

/// Reads what the holder of a lock file wrote into it (its `owner`), for
/// a message naming who holds it.
pub fn lock_owner(disk: &dyn Disk, path: &Path) -> Option<String> {
    let file = disk.open(path, false).ok()?;
    let len = usize::try_from(file.len().ok()?).ok()?.min(256);
    let mut bytes = vec![0; len];
    file.read_exact_at(0, &mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).trim().to_owned()).filter(|owner| !owner.is_empty())
}

/// The host's file system, shared.
pub fn real_disk() -> Arc<dyn Disk> {
    Arc::new(RealDisk)
}

/// Whether an I/O error means the device is full.
pub fn is_no_space(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull || error.raw_os_error() == Some(28)
}

/// Replaces `dir/name` with `bytes`, atomically and durably: written to
/// `name.tmp`, fsynced, renamed over the old file and the directory
/// fsynced, so a crash leaves the old file or the new one, never a mix.
/// (Recovery of a directory may sweep away the leftover `.tmp`.)
pub fn replace_file(disk: &dyn Disk, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = disk.open(&tmp, true)?;
    file.set_len(0)?;
    file.write_at(0, bytes)?;
    file.sync()?;
    drop(file);
    disk.rename(&tmp, &dir.join(name))?;
    disk.sync_dir(dir)
}

/// Reads a small text file from the host (a config file) before any disk is
/// chosen.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path)
}
