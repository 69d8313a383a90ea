//! A simulated disk: in memory, crashable, faulty on command.
//!
//! Every file keeps two images: what reads see now, and what would survive a
//! crash (the image at its last successful `sync`), plus the list of writes
//! and length changes since that sync. The namespace (which name points at
//! which file) is kept the same way against `sync_dir`.
//!
//! [`SimDisk::crash`] keeps exactly the durable state, then, chosen by a seed:
//! a prefix of the unsynced namespace operations, and for each file a prefix
//! of its unsynced operations in order, the write after which may be torn
//! (only part of its bytes arrived, the rest of the range zeroes or
//! garbage). In half the files the writes after that, up to the next length
//! change, then each arrive or not: writes between two syncs reach the
//! platter in any order, so a later one may survive an earlier one (a gap
//! it leaves past the file's old end reads as zeroes).
//!
//! A map's bytes are durable after `flush`; unflushed changes reach the file
//! (as an unsynced write) when the map is dropped, as dirty pages would.
//!
//! Faults: the next N reads, writes or syncs can be made to fail with an I/O error,
//! or each with a probability; a capacity makes writes that grow the disk past
//! it fail with `StorageFull`. A failed sync also drops that file's unsynced
//! writes from what can become durable, as Linux drops dirty pages after a
//! failed fsync: later reads still see them, a crash does not.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Disk, DiskFile, DiskLock, DiskMap};
use crate::sys::rng::SeededRng;

/// Faults the simulated disk injects. Counters are consumed as they fire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimDiskFaults {
    /// The next this-many `write_at` / `set_len` calls fail with an I/O error.
    pub fail_writes: u32,
    /// The next this-many `sync` calls fail with an I/O error.
    pub fail_syncs: u32,
    /// The next this-many `read_at` calls fail with an I/O error (a disk
    /// that cannot read a sector for a while; maps are not affected).
    pub fail_reads: u32,
    /// This-many `read_at` calls succeed before the `fail_reads` start.
    pub reads_before_failing: u32,
    /// Total bytes the disk holds; growth past it fails with `StorageFull`.
    pub capacity_bytes: Option<u64>,
    /// Each write fails with this probability, in parts per million.
    pub write_error_ppm: u32,
    /// Each sync fails with this probability, in parts per million.
    pub sync_error_ppm: u32,
}

/// A simulated disk. Clones share the same disk; give each simulated node its
/// own.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk").field("epoch", &state.epoch).field("files", &state.names.len()).finish()
    }
}

#[derive(Debug, Clone)]
enum FileOp {
    Write { position: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum NamespaceOp {
    Create {
        path: PathBuf,
        inode: u64,
    },
    Remove {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    /// A directory removed with everything in it (these names, of these
    /// inodes): one entry in its parent, durable once the parent is synced
    /// (the files' own entries went with the directory), or undone whole by
    /// a crash before that. Names made since are not touched.
    RemoveTree {
        path: PathBuf,
        names: Vec<(PathBuf, u64)>,
    },
}

impl NamespaceOp {
    fn dir(&self) -> &Path {
        let path = match self {
            NamespaceOp::Create { path, .. } | NamespaceOp::Remove { path } | NamespaceOp::RemoveTree { path, .. } => {
                path
            }
            NamespaceOp::Rename { to, .. } => to,
        };
        path.parent().unwrap_or(Path::new(""))
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            NamespaceOp::Create { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            NamespaceOp::Remove { path } => {
                names.remove(path);
            }
            NamespaceOp::RemoveTree { names: doomed, .. } => {
                for (name, inode) in doomed {
                    if names.get(name) == Some(inode) {
                        names.remove(name);
                    }
                }
            }
            NamespaceOp::Rename { from, to } => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// Writes and length changes since the last sync, in order.
    pending: Vec<FileOp>,
    /// Open handles and maps; an unlinked inode lives while this is non-zero.
    handles: usize,
}

#[derive(Debug)]
struct State {
    /// Bumped by every crash; handles from an older epoch are dead.
    epoch: u64,
    inode_next: u64,
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    names_durable: BTreeMap<PathBuf, u64>,
    names_pending: Vec<NamespaceOp>,
    dirs: BTreeSet<PathBuf>,
    faults: SimDiskFaults,
    rng: SeededRng,
    /// Lock files held, each by the guard with that token.
    locks: BTreeMap<PathBuf, u64>,
    lock_token_next: u64,
}

fn apply_op(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { position, bytes } => write_into(data, *position, bytes),
        FileOp::SetLen(len) => data.resize(to_usize(*len), 0),
    }
}

fn write_into(data: &mut Vec<u8>, position: u64, bytes: &[u8]) {
    let start = to_usize(position);
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("simulated file larger than memory")
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("simulated {what} error"))
}

fn stale() -> io::Error {
    io::Error::other("simulated crash: this handle belongs to a process that died")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory", path.display()))
}

impl State {
    fn live(&self, epoch: u64) -> io::Result<()> {
        if epoch == self.epoch {
            Ok(())
        } else {
            Err(stale())
        }
    }

    fn inode(&mut self, inode: u64) -> &mut Inode {
        self.inodes.get_mut(&inode).expect("open handle to a freed inode")
    }

    fn check_dir(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() || self.dirs.contains(parent) {
            Ok(())
        } else {
            Err(not_found(parent))
        }
    }

    fn write_fault(&mut self) -> io::Result<()> {
        if self.faults.fail_writes > 0 {
            self.faults.fail_writes -= 1;
            return Err(injected("write"));
        }
        let ppm = u64::from(self.faults.write_error_ppm);
        if ppm > 0 && self.rng.chance(ppm, 1_000_000) {
            return Err(injected("write"));
        }
        Ok(())
    }

    fn sync_fault(&mut self) -> io::Result<()> {
        if self.faults.fail_syncs > 0 {
            self.faults.fail_syncs -= 1;
            return Err(injected("fsync"));
        }
        let ppm = u64::from(self.faults.sync_error_ppm);
        if ppm > 0 && self.rng.chance(ppm, 1_000_000) {
            return Err(injected("fsync"));
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|inode| inode.data.len() as u64).sum()
    }

    fn check_space(&self, growth: u64) -> io::Result<()> {
        match self.faults.capacity_bytes {
            Some(capacity) if growth > 0 && self.used_bytes() + growth > capacity => {
                Err(io::Error::new(io::ErrorKind::StorageFull, format!("simulated disk full ({capacity} bytes)")))
            }
            _ => Ok(()),
        }
    }

    /// Frees an inode nothing refers to any more.
    fn collect(&mut self, inode: u64) {
        let Some(node) = self.inodes.get(&inode) else { return };
        let referenced = node.handles > 0
            || self.names.values().any(|&i| i == inode)
            || self.names_durable.values().any(|&i| i == inode)
            || self.names_pending.iter().any(|op| matches!(op, NamespaceOp::Create { inode: i, .. } if *i == inode));
        if !referenced {
            self.inodes.remove(&inode);
        }
    }
}

impl SimDisk {
    /// An empty disk. `seed` drives the probabilistic faults.
    pub fn new(seed: u64) -> Self {
        let state = State {
            epoch: 0,
            inode_next: 1,
            inodes: BTreeMap::new(),
            names: BTreeMap::new(),
            names_durable: BTreeMap::new(),
            names_pending: Vec::new(),
            dirs: BTreeSet::new(),
            faults: SimDiskFaults::default(),
            rng: SeededRng::new(seed),
            locks: BTreeMap::new(),
            lock_token_next: 0,
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_faults(&self, faults: SimDiskFaults) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> SimDiskFaults {
        self.lock().faults.clone()
    }

    pub fn fail_next_writes(&self, count: u32) {
        self.lock().faults.fail_writes = count;
    }

    pub fn fail_next_syncs(&self, count: u32) {
        self.lock().faults.fail_syncs = count;
    }

    pub fn fail_next_reads(&self, count: u32) {
        self.fail_reads_after(0, count);
    }

    /// Lets `skip` reads succeed, then fails the `count` after them.
    pub fn fail_reads_after(&self, skip: u32, count: u32) {
        let faults = &mut self.lock().faults;
        faults.reads_before_failing = skip;
        faults.fail_reads = count;
    }

    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.lock().faults.capacity_bytes = capacity_bytes;
    }

    /// Bytes held by all files, including unlinked ones still open.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Simulates power loss: every handle dies, and what remains is the
    /// durable state plus a seed-chosen prefix of the unsynced operations,
    /// possibly with a torn write after it per file and some later writes
    /// that overtook it (see the module docs). One-shot faults are cleared.
    pub fn crash(&self, seed: u64) {
        self.crash_keeping(Some(SeededRng::new(seed)));
    }

    /// Simulates the harshest power loss: exactly the durable state
    /// survives, nothing that was not fsynced (no prefix of pending writes,
    /// no torn write). What a checker reads to ask "is it durable?".
    pub fn crash_to_durable(&self) {
        self.crash_keeping(None);
    }

    /// A crash keeping a prefix of the pending operations chosen by `rng`,
    /// or none without one.
    fn crash_keeping(&self, mut rng: Option<SeededRng>) {
        let below = |rng: &mut Option<SeededRng>, n: u64| rng.as_mut().map_or(0, |rng| rng.below(n));
        let mut state = self.lock();
        let state = &mut *state;

        let kept = below(&mut rng, state.names_pending.len() as u64 + 1) as usize;
        let mut names = state.names_durable.clone();
        for op in &state.names_pending[..kept] {
            op.apply(&mut names);
        }

        let survivors: BTreeSet<u64> = names.values().copied().collect();
        state.inodes.retain(|inode, _| survivors.contains(inode));
        for inode in state.inodes.values_mut() {
            let mut data = std::mem::take(&mut inode.durable);
            let kept = below(&mut rng, inode.pending.len() as u64 + 1) as usize;
            for op in &inode.pending[..kept] {
                apply_op(&mut data, op);
            }
            if let (Some(FileOp::Write { position, bytes }), Some(rng)) = (inode.pending.get(kept), rng.as_mut()) {
                if !bytes.is_empty() && rng.chance(1, 2) {
                    tear(&mut data, *position, bytes, rng);
                }
                // Reordered: later writes that reached the disk before it.
                if rng.chance(1, 2) {
                    let later = inode.pending[kept + 1..].iter().take_while(|op| matches!(op, FileOp::Write { .. }));
                    for op in later {
                        if rng.chance(1, 2) {
                            apply_op(&mut data, op);
                        }
                    }
                }
            }
            inode.durable = data.clone();
            inode.data = data;
            inode.pending.clear();
            inode.handles = 0;
        }

        // Directories are durable once made; a file that a crash brought back
        // brings back the directories above it.
        for name in names.keys() {
            for dir in name.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
                state.dirs.insert(dir.to_path_buf());
            }
        }
        state.names_durable = names.clone();
        state.names = names;
        state.names_pending.clear();
        // The crashed process's locks died with it.
        state.locks.clear();
        state.epoch += 1;
        state.faults.fail_writes = 0;
        state.faults.fail_syncs = 0;
        state.faults.fail_reads = 0;
        state.faults.reads_before_failing = 0;
    }

    /// XORs one stored byte with `mask`, in what reads see and in what
    /// survives a crash: bit rot. Fails if the file or position does not exist.
    pub fn corrupt_byte(&self, path: &Path, position: u64, mask: u8) -> io::Result<()> {
        let mut state = self.lock();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        let node = state.inode(inode);
        let index = to_usize(position);
        if index >= node.data.len() || index >= node.durable.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "corrupt_byte past end of file"));
        }
        node.data[index] ^= mask;
        node.durable[index] ^= mask;
        Ok(())
    }

    /// How many of the file's bytes would survive a crash now, if it exists.
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let state = self.lock();
        let inode = state.names.get(path)?;
        Some(state.inodes[inode].durable.len() as u64)
    }

    /// The length reads see, if the file exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let state = self.lock();
        let inode = state.names.get(path)?;
        Some(state.inodes[inode].data.len() as u64)
    }
}

/// Applies part of a write: a random strict prefix of its bytes, and maybe the
/// rest of its range as zeroes or garbage (the length reached the disk, the
/// data did not).
fn tear(data: &mut Vec<u8>, position: u64, bytes: &[u8], rng: &mut SeededRng) {
    let arrived = rng.below(bytes.len() as u64) as usize;
    let mut torn = bytes[..arrived].to_vec();
    match rng.below(3) {
        0 => {}
        1 => torn.resize(bytes.len(), 0),
        _ => torn.extend((arrived..bytes.len()).map(|_| rng.next_u64() as u8)),
    }
    write_into(data, position, &torn);
}

struct SimFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    epoch: u64,
    path: PathBuf,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimFile({})", self.path.display())
    }
}

impl SimFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.live(self.epoch)?;
        Ok(state)
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.epoch != self.epoch {
            return;
        }
        state.inode(self.inode).handles -= 1;
        state.collect(self.inode);
    }
}

impl DiskFile for SimFile {
    fn read_at(&self, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.lock()?;
        if state.faults.fail_reads > 0 && state.faults.reads_before_failing > 0 {
            state.faults.reads_before_failing -= 1;
        } else if state.faults.fail_reads > 0 {
            state.faults.fail_reads -= 1;
            return Err(injected("read"));
        }
        let data = &state.inode(self.inode).data;
        let start = to_usize(position).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, position: u64, buf: &[u8]) -> io::Result<()> {
        let mut state = self.lock()?;
        state.write_fault()?;
        let len = state.inode(self.inode).data.len() as u64;
        state.check_space((position + buf.len() as u64).saturating_sub(len))?;
        let inode = state.inode(self.inode);
        write_into(&mut inode.data, position, buf);
        inode.pending.push(FileOp::Write { position, bytes: buf.to_vec() });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.lock()?;
        let failed = state.sync_fault();
        let inode = state.inode(self.inode);
        if failed.is_ok() {
            for op in &inode.pending {
                apply_op(&mut inode.durable, op);
            }
        }
        inode.pending.clear();
        failed
    }

    fn len(&self) -> io::Result<u64> {
        let mut state = self.lock()?;
        Ok(state.inode(self.inode).data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock()?;
        state.write_fault()?;
        let current = state.inode(self.inode).data.len() as u64;
        state.check_space(len.saturating_sub(current))?;
        let inode = state.inode(self.inode);
        inode.data.resize(to_usize(len), 0);
        inode.pending.push(FileOp::SetLen(len));
        Ok(())
    }
}

struct SimMap {
    file: SimFile,
    buf: Vec<u8>,
}

/// Unmapping leaves unflushed changes in the page cache: later opens see
/// them, and a crash may or may not keep them (a pending write).
impl Drop for SimMap {
    fn drop(&mut self) {
        let Ok(mut state) = self.file.lock() else { return };
        let inode = state.inode(self.file.inode);
        if inode.data != self.buf {
            inode.data.clone_from(&self.buf);
            inode.pending.push(FileOp::Write { position: 0, bytes: self.buf.clone() });
        }
    }
}

impl DiskMap for SimMap {
    fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut state = self.file.lock()?;
        state.sync_fault()?;
        let inode = state.inode(self.file.inode);
        inode.data.clone_from(&self.buf);
        inode.durable.clone_from(&self.buf);
        inode.pending.clear();
        Ok(())
    }
}

/// A lock taken with [`Disk::lock_file`] on a [`SimDisk`].
#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    token: u64,
}

impl DiskLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.locks.get(&self.path) == Some(&self.token) {
            state.locks.remove(&self.path);
        }
    }
}

impl SimDisk {
    /// Releases every lock file: the process that held them is gone (a
    /// simulated node restarting calls this before its broker opens).
    pub fn release_locks(&self) {
        self.lock().locks.clear();
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for dir in path.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            state.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(state
            .names
            .keys()
            .filter(|name| name.parent() == Some(path))
            .filter_map(|name| name.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn list_subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(state
            .dirs
            .iter()
            .filter(|dir| dir.parent() == Some(path))
            .filter_map(|dir| dir.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let mut state = self.lock();
        state.check_dir(path)?;
        let inode = match state.names.get(path) {
            Some(&inode) => inode,
            None if create => {
                let inode = state.inode_next;
                state.inode_next += 1;
                state.inodes.insert(inode, Inode::default());
                state.names.insert(path.to_path_buf(), inode);
                state.names_pending.push(NamespaceOp::Create { path: path.to_path_buf(), inode });
                inode
            }
            None => return Err(not_found(path)),
        };
        state.inode(inode).handles += 1;
        let file = SimFile { state: self.state.clone(), inode, epoch: state.epoch, path: path.to_path_buf() };
        Ok(Box::new(file))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.names.remove(path).ok_or_else(|| not_found(path))?;
        state.names_pending.push(NamespaceOp::Remove { path: path.to_path_buf() });
        state.collect(inode);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let doomed: Vec<(PathBuf, u64)> =
            state.names.iter().filter(|(name, _)| name.starts_with(path)).map(|(n, i)| (n.clone(), *i)).collect();
        for (name, _) in &doomed {
            state.names.remove(name);
        }
        let inodes: Vec<u64> = doomed.iter().map(|&(_, inode)| inode).collect();
        state.names_pending.push(NamespaceOp::RemoveTree { path: path.to_path_buf(), names: doomed });
        for inode in inodes {
            state.collect(inode);
        }
        state.dirs.retain(|dir| !dir.starts_with(path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if from.parent() != to.parent() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "simulated rename across directories"));
        }
        let mut state = self.lock();
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        let replaced = state.names.insert(to.to_path_buf(), inode);
        state.names_pending.push(NamespaceOp::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        if let Some(replaced) = replaced {
            state.collect(replaced);
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        state.sync_fault()?;
        let state = &mut *state;
        let (in_dir, others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut state.names_pending).into_iter().partition(|op| op.dir() == path);
        for op in &in_dir {
            op.apply(&mut state.names_durable);
        }
        state.names_pending = others;
        let dropped: Vec<u64> = state.inodes.keys().copied().collect();
        for inode in dropped {
            state.collect(inode);
        }
        Ok(())
    }

    fn map(&self, path: &Path, len_min: u64) -> io::Result<Box<dyn DiskMap>> {
        let file = self.open(path, true)?;
        if file.len()? < len_min {
            file.set_len(len_min)?;
        }
        // Reopen as the concrete type: the map flushes through the same inode.
        drop(file);
        let mut state = self.lock();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        // Copied straight from the inode: mapping a real file reads nothing
        // (its pages fault in later), so injected read errors spare it.
        let buf = state.inode(inode).data.clone();
        state.inode(inode).handles += 1;
        let file = SimFile { state: self.state.clone(), inode, epoch: state.epoch, path: path.to_path_buf() };
        Ok(Box::new(SimMap { file, buf }))
    }

    fn lock_file(&self, path: &Path, owner: &str) -> io::Result<Box<dyn DiskLock>> {
        let file = self.open(path, true)?;
        let token = {
            let mut state = self.lock();
            if state.locks.contains_key(path) {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{} is locked", path.display())));
            }
            state.lock_token_next += 1;
            let token = state.lock_token_next;
            state.locks.insert(path.to_path_buf(), token);
            token
        };
        file.set_len(0)?;
        file.write_at(0, owner.as_bytes())?;
        Ok(Box::new(SimLock { state: self.state.clone(), path: path.to_path_buf(), token }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/d";

    fn disk_with_dir() -> SimDisk {
        let disk = SimDisk::new(0);
        disk.create_dir_all(Path::new(DIR)).unwrap();
        disk
    }

    fn path(name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    fn contents(disk: &SimDisk, name: &str) -> Option<Vec<u8>> {
        let file = disk.open(&path(name), false).ok()?;
        let mut buf = vec![0; file.len().unwrap() as usize];
        file.read_exact_at(0, &mut buf).unwrap();
        Some(buf)
    }

    /// A synced file with `synced`, then an unsynced append of `pending`.
    fn setup(synced: &[u8], pending: &[u8]) -> SimDisk {
        let disk = disk_with_dir();
        let file = disk.open(&path("f"), true).unwrap();
        file.write_at(0, synced).unwrap();
        file.sync().unwrap();
        disk.sync_dir(Path::new(DIR)).unwrap();
        file.write_at(synced.len() as u64, pending).unwrap();
        disk
    }

    #[test]
    fn crash_keeps_synced_data_and_a_possibly_torn_prefix_of_the_rest() {
        let (synced, pending) = (b"durable|".to_vec(), b"maybe-lost".to_vec());
        let mut outcomes = BTreeSet::new();
        for seed in 0..200 {
            let disk = setup(&synced, &pending);
            disk.crash(seed);
            let got = contents(&disk, "f").expect("a synced, dir-synced file survives");
            assert_eq!(got[..synced.len()], synced[..], "seed {seed} lost synced bytes");
            assert!(got.len() <= synced.len() + pending.len());
            let tail = &got[synced.len()..];
            let arrived = tail.iter().zip(&pending).take_while(|(a, b)| a == b).count();
            outcomes.insert((tail.len(), arrived == tail.len()));
        }
        assert!(outcomes.contains(&(0, true)), "some crash loses the whole unsynced write");
        assert!(outcomes.contains(&(pending.len(), true)), "some crash keeps all of it");
        assert!(outcomes.iter().any(|&(len, _)| len > 0 && len < pending.len()), "some crash tears it");
        assert!(outcomes.contains(&(pending.len(), false)), "some tear leaves junk in the range");
    }

    #[test]
    fn a_crash_may_keep_a_later_unsynced_write_and_lose_an_earlier_one() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..400 {
            let disk = setup(b"durable|", b"first|");
            let file = disk.open(&path("f"), false).unwrap();
            file.write_at(14, b"second|").unwrap();
            file.write_at(21, b"third").unwrap();
            // A length change orders what comes after it.
            file.set_len(30).unwrap();
            file.write_at(30, b"after").unwrap();
            disk.crash(seed);
            let got = contents(&disk, "f").expect("the file survives");
            assert_eq!(&got[..8], b"durable|", "seed {seed} lost synced bytes");
            let has = |at: usize, what: &[u8]| got.get(at..at + what.len()) == Some(what);
            if has(30, b"after") {
                assert!(got.len() >= 30 && has(8, b"first|"), "seed {seed}: a write overtook a length change");
            }
            outcomes.insert((has(8, b"first|"), has(14, b"second|"), has(21, b"third")));
        }
        assert!(outcomes.contains(&(false, true, false)), "the second write alone survives: {outcomes:?}");
        assert!(outcomes.contains(&(false, false, true)), "the third write alone survives: {outcomes:?}");
        assert!(outcomes.contains(&(true, false, true)), "the second is lost between two kept: {outcomes:?}");
    }

    #[test]
    fn a_crash_to_durable_keeps_exactly_what_was_synced() {
        let (synced, pending) = (b"durable|".to_vec(), b"maybe-lost".to_vec());
        let disk = setup(&synced, &pending);
        let file = disk.open(&path("unnamed"), true).unwrap();
        file.write_at(0, b"never synced, nor its name").unwrap();
        drop(file);
        disk.crash_to_durable();
        assert_eq!(contents(&disk, "f").expect("a synced file survives"), synced);
        assert!(contents(&disk, "unnamed").is_none(), "a name never synced is gone");
    }

    #[test]
    fn names_need_a_directory_sync() {
        let mut vanished = false;
        for seed in 0..50 {
            let disk = disk_with_dir();
            let file = disk.open(&path("new"), true).unwrap();
            file.write_at(0, b"x").unwrap();
            file.sync().unwrap();
            disk.crash(seed);
            vanished |= contents(&disk, "new").is_none();
        }
        assert!(vanished, "an unsynced create can be lost");

        for seed in 0..50 {
            let disk = setup(b"x", b"");
            disk.remove_file(&path("f")).unwrap();
            disk.crash(seed);
            if contents(&disk, "f").is_some() {
                return; // an unsynced remove can be undone by a crash
            }
        }
        panic!("an unsynced remove always survived");
    }

    /// A directory removed whole is one entry in its parent: synced there,
    /// none of its files comes back, even into a directory made again under
    /// its name; not synced, a crash keeps the whole tree or none of it.
    #[test]
    fn a_removed_tree_is_durable_with_its_parent_and_never_comes_back_in_part() {
        let make = |disk: &SimDisk, name: &str| {
            let file = disk.open(&path(name), true).unwrap();
            file.write_at(0, name.as_bytes()).unwrap();
            file.sync().unwrap();
        };
        let mut came_back = false;
        for seed in 0..50 {
            let disk = SimDisk::new(0);
            disk.create_dir_all(Path::new(DIR)).unwrap();
            make(&disk, "a");
            make(&disk, "b");
            disk.sync_dir(Path::new(DIR)).unwrap();
            disk.remove_dir_all(Path::new(DIR)).unwrap();
            disk.crash(seed);
            let (a, b) = (contents(&disk, "a").is_some(), contents(&disk, "b").is_some());
            assert_eq!(a, b, "seed {seed}: part of a removed tree came back");
            came_back |= a;

            disk.remove_dir_all(Path::new(DIR)).unwrap();
            disk.sync_dir(Path::new("/")).unwrap();
            disk.create_dir_all(Path::new(DIR)).unwrap();
            make(&disk, "c");
            disk.sync_dir(Path::new(DIR)).unwrap();
            disk.crash(seed);
            assert_eq!(contents(&disk, "a"), None, "seed {seed}");
            assert_eq!(contents(&disk, "c").as_deref(), Some(&b"c"[..]), "seed {seed}");
        }
        assert!(came_back, "an unsynced removal can be undone");
    }

    #[test]
    fn rename_is_atomic_across_crashes() {
        for seed in 0..50 {
            let disk = setup(b"old", b"");
            let tmp = disk.open(&path("tmp"), true).unwrap();
            tmp.write_at(0, b"new").unwrap();
            tmp.sync().unwrap();
            disk.rename(&path("tmp"), &path("f")).unwrap();
            disk.crash(seed);
            let got = contents(&disk, "f").expect("target always exists");
            assert!(got == b"old" || got == b"new", "seed {seed}: {got:?}");
        }
        let disk = setup(b"old", b"");
        let tmp = disk.open(&path("tmp"), true).unwrap();
        tmp.write_at(0, b"new").unwrap();
        tmp.sync().unwrap();
        disk.rename(&path("tmp"), &path("f")).unwrap();
        disk.sync_dir(Path::new(DIR)).unwrap();
        disk.crash(3);
        assert_eq!(contents(&disk, "f").unwrap(), b"new");
        assert!(contents(&disk, "tmp").is_none());
    }

    #[test]
    fn a_failed_fsync_loses_the_data_even_if_a_later_one_succeeds() {
        for seed in 0..30 {
            let disk = setup(b"ok|", b"lost");
            let file = disk.open(&path("f"), false).unwrap();
            disk.fail_next_syncs(1);
            assert!(file.sync().is_err());
            assert_eq!(contents(&disk, "f").unwrap(), b"ok|lost", "reads still see the data");
            file.sync().unwrap();
            disk.crash(seed);
            assert_eq!(contents(&disk, "f").unwrap(), b"ok|", "seed {seed}");
        }
    }

    #[test]
    fn injected_write_errors_and_full_disk() {
        let disk = setup(b"abc", b"");
        let file = disk.open(&path("f"), false).unwrap();
        disk.fail_next_writes(1);
        assert!(file.write_at(3, b"d").is_err());
        file.write_at(3, b"d").unwrap();
        disk.set_capacity(Some(disk.used_bytes() + 2));
        let full = file.write_at(4, b"efg").unwrap_err();
        assert!(crate::sys::disk::is_no_space(&full));
        file.write_at(4, b"ef").unwrap();
        file.write_at(0, b"growing past the capacity fails").unwrap_err();
        file.write_at(0, b"AB").unwrap();
        assert_eq!(contents(&disk, "f").unwrap(), b"ABcdef");
    }

    #[test]
    fn injected_read_errors_spare_maps() {
        let disk = setup(b"abc", b"");
        let file = disk.open(&path("f"), false).unwrap();
        disk.fail_next_reads(1);
        let map = disk.map(&path("f"), 3).unwrap();
        assert_eq!(map.bytes(), b"abc");
        assert!(file.read_at(0, &mut [0; 3]).is_err(), "the read error is still pending");
        assert_eq!(file.read_at(0, &mut [0; 3]).unwrap(), 3);
    }

    #[test]
    fn handles_die_with_the_crash() {
        let disk = setup(b"abc", b"");
        let file = disk.open(&path("f"), false).unwrap();
        disk.crash(0);
        assert!(file.read_at(0, &mut [0; 3]).is_err());
        assert!(file.write_at(0, b"x").is_err());
        assert!(disk.open(&path("f"), false).is_ok());
    }

    #[test]
    fn maps_are_durable_only_after_flush() {
        let disk = disk_with_dir();
        let mut map = disk.map(&path("idx"), 8).unwrap();
        disk.sync_dir(Path::new(DIR)).unwrap();
        map.bytes_mut()[0] = 7;
        map.flush().unwrap();
        map.bytes_mut()[1] = 9;
        disk.crash(5);
        assert_eq!(contents(&disk, "idx").unwrap(), vec![7, 0, 0, 0, 0, 0, 0, 0]);
    }
}
