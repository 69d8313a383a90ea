//! The filesystem's state, apart from FUSE: files and directories in
//! memory, each also holding what a power loss would leave of it.
//!
//! - A file keeps its contents as reads see them, its image at its last
//!   fsync, and the changes (writes, length changes) since, in order.
//! - A directory keeps its entries, and the entries as of its last fsync. A
//!   created, removed or renamed name is durable only once its directory is
//!   fsynced (as on a real disk, where fsyncing a file does not make its
//!   name durable).
//! - [`Fs::crash`] is the power loss: every directory goes back to its last
//!   fsync, and every file to its last fsync plus a seeded prefix of the
//!   changes since, the next change perhaps torn part way, and in half the
//!   files some of the writes after it (each by a coin, up to the next
//!   length change): writes between two fsyncs reach a disk in any order.
//!   What is left is durable from then on.
//!
//! Space counts the files reachable now (or open): an unlinked file frees
//! its space at once, as on a journaling filesystem, though a power loss
//! before its directory's fsync brings it back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

pub const ROOT: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    NoSpace,
    Invalid,
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Change {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            Change::Write { offset, bytes } => write_into(data, *offset, bytes),
            Change::SetLen(len) => data.resize(to_usize(*len), 0),
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("fits in memory")
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let start = to_usize(offset);
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

#[derive(Debug, Default)]
struct File {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Change>,
}

#[derive(Debug, Default)]
struct Dir {
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Node {
    File(File),
    Dir(Dir),
}

#[derive(Debug)]
struct Inode {
    node: Node,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Open handles: an unlinked file stays readable through them.
    open: u32,
}

/// What [`Fs::attr`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// What a power loss did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CrashReport {
    /// Files that lost changes not fsynced.
    pub files_cut: u64,
    /// Changes (writes, length changes) dropped, a torn one included.
    pub changes_lost: u64,
    /// Directory entries that went back to their last fsync.
    pub names_reverted: u64,
}

/// A small seeded generator (splitmix64): which prefix a crash keeps.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=n`.
    fn upto(&mut self, n: u64) -> u64 {
        self.next() % (n + 1)
    }
}

#[derive(Debug)]
pub struct Fs {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    capacity: u64,
    used: u64,
}

impl Fs {
    /// An empty filesystem of `capacity` bytes; the root belongs to
    /// `uid`/`gid`.
    pub fn new(capacity: u64, uid: u32, gid: u32) -> Self {
        let root = Inode { node: Node::Dir(Dir::default()), mode: 0o755, uid, gid, mtime: SystemTime::now(), open: 0 };
        Self { inodes: HashMap::from([(ROOT, root)]), next_ino: ROOT + 1, capacity, used: 0 }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held by the files reachable now or open.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn files(&self) -> u64 {
        self.inodes.len() as u64
    }

    /// Open handles, over all files and directories.
    pub fn open_handles(&self) -> u64 {
        self.inodes.values().map(|inode| u64::from(inode.open)).sum()
    }

    fn inode(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Error::NotFound)
    }

    fn dir(&self, ino: u64) -> Result<&Dir> {
        match &self.inode(ino)?.node {
            Node::Dir(dir) => Ok(dir),
            Node::File(_) => Err(Error::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir> {
        match &mut self.inodes.get_mut(&ino).ok_or(Error::NotFound)?.node {
            Node::Dir(dir) => Ok(dir),
            Node::File(_) => Err(Error::NotDir),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut File> {
        match &mut self.inodes.get_mut(&ino).ok_or(Error::NotFound)?.node {
            Node::File(file) => Ok(file),
            Node::Dir(_) => Err(Error::IsDir),
        }
    }

    pub fn attr(&self, ino: u64) -> Result<Attr> {
        let inode = self.inode(ino)?;
        let (kind, size) = match &inode.node {
            Node::File(file) => (Kind::File, file.data.len() as u64),
            Node::Dir(dir) => (Kind::Dir, dir.entries.len() as u64),
        };
        Ok(Attr { ino, kind, size, mode: inode.mode, uid: inode.uid, gid: inode.gid, mtime: inode.mtime })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64> {
        self.dir(parent)?.entries.get(name).copied().ok_or(Error::NotFound)
    }

    /// Makes a file or directory `name` in `parent`.
    pub fn make(&mut self, parent: u64, name: &OsStr, kind: Kind, mode: u32, uid: u32, gid: u32) -> Result<u64> {
        if name.is_empty() || name == "." || name == ".." {
            return Err(Error::Invalid);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Error::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = match kind {
            Kind::File => Node::File(File::default()),
            Kind::Dir => Node::Dir(Dir::default()),
        };
        self.inodes.insert(ino, Inode { node, mode, uid, gid, mtime: SystemTime::now(), open: 0 });
        self.dir_mut(parent)?.entries.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8]> {
        match &self.inode(ino)?.node {
            Node::File(file) => {
                let start = to_usize(offset).min(file.data.len());
                let end = start.saturating_add(size as usize).min(file.data.len());
                Ok(&file.data[start..end])
            }
            Node::Dir(_) => Err(Error::IsDir),
        }
    }

    /// Room for a file of `old` bytes to become `new` bytes.
    fn reserve(&mut self, old: u64, new: u64) -> Result<()> {
        let used = self.used - old + new;
        if new > old && used > self.capacity {
            return Err(Error::NoSpace);
        }
        self.used = used;
        Ok(())
    }

    fn change(&mut self, ino: u64, change: Change) -> Result<()> {
        let file = self.file_mut(ino)?;
        let old = file.data.len() as u64;
        let new = match &change {
            Change::Write { offset, bytes } => old.max(offset + bytes.len() as u64),
            Change::SetLen(len) => *len,
        };
        self.reserve(old, new)?;
        let file = self.file_mut(ino)?;
        change.apply(&mut file.data);
        file.pending.push(change);
        self.inodes.get_mut(&ino).expect("checked").mtime = SystemTime::now();
        Ok(())
    }

    /// Writes what fits: a write that would grow the file past the space
    /// left is cut short there, as on a real disk (`NoSpace` if nothing
    /// fits).
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<u32> {
        let len = self.attr(ino)?.size;
        let room_end = len + self.capacity.saturating_sub(self.used);
        let end = (offset + bytes.len() as u64).min(room_end.max(len));
        if end <= offset && !bytes.is_empty() {
            return Err(Error::NoSpace);
        }
        let fits = &bytes[..to_usize(end.saturating_sub(offset))];
        let written = u32::try_from(fits.len()).map_err(|_| Error::Invalid)?;
        self.change(ino, Change::Write { offset, bytes: fits.to_vec() })?;
        Ok(written)
    }

    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<()> {
        self.change(ino, Change::SetLen(len))
    }

    /// `fallocate` without flags: the file grows to cover the range.
    pub fn allocate(&mut self, ino: u64, offset: u64, length: u64) -> Result<()> {
        let len = self.attr(ino)?.size;
        let end = offset.checked_add(length).ok_or(Error::Invalid)?;
        if end > len {
            self.set_len(ino, end)?;
        }
        Ok(())
    }

    pub fn set_mode(&mut self, ino: u64, mode: u32) -> Result<()> {
        self.inodes.get_mut(&ino).ok_or(Error::NotFound)?.mode = mode;
        Ok(())
    }

    /// fsync: a file's contents, or a directory's entries, become durable.
    pub fn sync(&mut self, ino: u64) -> Result<()> {
        match &mut self.inodes.get_mut(&ino).ok_or(Error::NotFound)?.node {
            Node::File(file) => {
                for change in file.pending.drain(..) {
                    change.apply(&mut file.durable);
                }
            }
            Node::Dir(dir) => dir.durable = dir.entries.clone(),
        }
        self.collect();
        Ok(())
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        if self.attr(ino)?.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.collect();
        Ok(())
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(Error::NotEmpty);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.collect();
        Ok(())
    }

    /// Moves `name` in `parent` to `new_name` in `new_parent`, replacing a
    /// file there, or an empty directory.
    pub fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        let kind = self.attr(ino)?.kind;
        self.dir(new_parent)?;
        if new_name.is_empty() || new_name == "." || new_name == ".." {
            return Err(Error::Invalid);
        }
        if kind == Kind::Dir && self.contains(ino, new_parent) {
            return Err(Error::Invalid);
        }
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            match (kind, self.attr(target)?.kind) {
                (Kind::File, Kind::Dir) => return Err(Error::IsDir),
                (Kind::Dir, Kind::File) => return Err(Error::NotDir),
                (Kind::Dir, Kind::Dir) if !self.dir(target)?.entries.is_empty() => return Err(Error::NotEmpty),
                _ => {}
            }
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?.entries.insert(new_name.to_os_string(), ino);
        self.collect();
        Ok(())
    }

    /// Whether directory `dir` is `ino` or below it.
    fn contains(&self, ino: u64, mut dir: u64) -> bool {
        let parents: HashMap<u64, u64> = self
            .inodes
            .iter()
            .filter_map(|(parent, inode)| match &inode.node {
                Node::Dir(d) => Some(d.entries.values().map(move |child| (*child, *parent))),
                Node::File(_) => None,
            })
            .flatten()
            .collect();
        loop {
            if dir == ino {
                return true;
            }
            match parents.get(&dir) {
                Some(parent) if *parent != dir => dir = *parent,
                _ => return false,
            }
        }
    }

    /// `(ino, kind, name)` of each entry of directory `ino`.
    pub fn list(&self, ino: u64) -> Result<Vec<(u64, Kind, OsString)>> {
        let dir = self.dir(ino)?;
        Ok(dir
            .entries
            .iter()
            .filter_map(|(name, child)| self.attr(*child).ok().map(|attr| (*child, attr.kind, name.clone())))
            .collect())
    }

    pub fn open(&mut self, ino: u64) -> Result<()> {
        self.inodes.get_mut(&ino).ok_or(Error::NotFound)?.open += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.collect();
    }

    /// Inodes reachable from the root through `entries` (now) or through
    /// `durable` (after a power loss).
    fn reachable(&self, durable: bool) -> HashSet<u64> {
        let mut seen = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if let Some(Inode { node: Node::Dir(dir), .. }) = self.inodes.get(&ino) {
                let names = if durable { &dir.durable } else { &dir.entries };
                for child in names.values() {
                    if seen.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        seen
    }

    /// Frees what neither now nor a power loss can reach and no handle
    /// holds; recounts the space in use.
    fn collect(&mut self) {
        let now = self.reachable(false);
        let after_crash = self.reachable(true);
        self.inodes.retain(|ino, inode| inode.open > 0 || now.contains(ino) || after_crash.contains(ino));
        self.used = self
            .inodes
            .iter()
            .filter(|(ino, inode)| inode.open > 0 || now.contains(ino))
            .map(|(_, inode)| match &inode.node {
                Node::File(file) => file.data.len() as u64,
                Node::Dir(_) => 0,
            })
            .sum();
    }

    /// A power loss: see the module docs. With `seed`, each file keeps a
    /// seeded prefix of its changes since its last fsync, the next perhaps
    /// torn, and maybe some later writes that overtook it; without, none of
    /// them (as lazyfs does).
    pub fn crash(&mut self, seed: Option<u64>) -> CrashReport {
        let mut rng = seed.map(Rng);
        let mut report = CrashReport::default();
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let inode = self.inodes.get_mut(&ino).expect("listed");
            inode.open = 0;
            match &mut inode.node {
                Node::Dir(dir) => {
                    let changed = dir.entries.iter().filter(|(name, ino)| dir.durable.get(*name) != Some(*ino)).count()
                        + dir.durable.keys().filter(|name| !dir.entries.contains_key(*name)).count();
                    report.names_reverted += changed as u64;
                    dir.entries = dir.durable.clone();
                }
                Node::File(file) => {
                    let pending = std::mem::take(&mut file.pending);
                    let kept = rng.as_mut().map_or(0, |rng| to_usize(rng.upto(pending.len() as u64)));
                    for change in &pending[..kept] {
                        change.apply(&mut file.durable);
                    }
                    if let Some(torn) = pending.get(kept) {
                        let mut overtook = 0;
                        if let (Change::Write { offset, bytes }, Some(rng)) = (torn, rng.as_mut()) {
                            // Some of it, never all.
                            let part = to_usize(rng.next() % (bytes.len() as u64).max(1));
                            write_into(&mut file.durable, *offset, &bytes[..part]);
                            // Later writes that reached the disk before it.
                            if rng.next() % 2 == 0 {
                                let later =
                                    pending[kept + 1..].iter().take_while(|c| matches!(c, Change::Write { .. }));
                                for change in later {
                                    if rng.next() % 2 == 0 {
                                        change.apply(&mut file.durable);
                                        overtook += 1;
                                    }
                                }
                            }
                        }
                        report.files_cut += 1;
                        report.changes_lost += (pending.len() - kept - overtook) as u64;
                    }
                    file.data = file.durable.clone();
                }
            }
        }
        self.collect();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs() -> Fs {
        Fs::new(1 << 20, 0, 0)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn contents(fs: &Fs, path: &[&str]) -> Option<Vec<u8>> {
        let mut ino = ROOT;
        for part in path {
            ino = fs.lookup(ino, name(part)).ok()?;
        }
        fs.read(ino, 0, u32::MAX).ok().map(<[u8]>::to_vec)
    }

    #[test]
    fn fsynced_data_survives_and_the_rest_is_a_prefix_perhaps_torn_or_overtaken() {
        let mut outcomes = HashSet::new();
        let mut overtaken = false;
        for seed in 0..200 {
            let mut fs = fs();
            let f = fs.make(ROOT, name("f"), Kind::File, 0o644, 0, 0).unwrap();
            fs.sync(ROOT).unwrap();
            fs.write(f, 0, b"durable|").unwrap();
            fs.sync(f).unwrap();
            fs.write(f, 8, b"one|").unwrap();
            fs.write(f, 12, b"two").unwrap();
            let report = fs.crash(Some(seed));
            let left = contents(&fs, &["f"]).unwrap();
            assert!(left.starts_with(b"durable|"), "seed {seed}: {left:?}");
            if left.len() == 15 && left[8..12] != *b"one|" {
                // The second write overtook the first, which is torn: part
                // of it, then zeroes.
                assert_eq!(&left[12..], b"two", "seed {seed}: {left:?}");
                let arrived = left[8..12].iter().position(|&b| b == 0).unwrap_or(4);
                assert!(left[8..8 + arrived] == b"one|"[..arrived], "seed {seed}: {left:?}");
                assert!(left[8 + arrived..12].iter().all(|&b| b == 0), "seed {seed}: {left:?}");
                overtaken = true;
            } else {
                assert!(b"durable|one|two".starts_with(&left), "seed {seed}: not a prefix: {left:?}");
            }
            assert_eq!(report.files_cut, u64::from(left != b"durable|one|two"), "seed {seed}");
            outcomes.insert(left.len());
            // What survived is durable: a second crash keeps it all.
            fs.crash(None);
            assert_eq!(contents(&fs, &["f"]).unwrap(), left, "seed {seed}");
        }
        assert!(outcomes.contains(&8) && outcomes.contains(&15), "{outcomes:?}");
        assert!(outcomes.iter().any(|len| ![8, 12, 15].contains(len)), "no torn write in 200 seeds: {outcomes:?}");
        assert!(overtaken, "no write overtook an earlier one in 200 seeds");
    }

    #[test]
    fn a_name_is_durable_only_once_its_directory_is_fsynced() {
        let mut fs = fs();
        let d = fs.make(ROOT, name("d"), Kind::Dir, 0o755, 0, 0).unwrap();
        let f = fs.make(d, name("f"), Kind::File, 0o644, 0, 0).unwrap();
        fs.write(f, 0, b"data").unwrap();
        fs.sync(f).unwrap();
        fs.sync(d).unwrap();
        let report = fs.crash(Some(1));
        assert_eq!(fs.lookup(ROOT, name("d")), Err(Error::NotFound), "the root was never fsynced");
        assert_eq!(report.names_reverted, 1);

        let d = fs.make(ROOT, name("d"), Kind::Dir, 0o755, 0, 0).unwrap();
        fs.sync(ROOT).unwrap();
        let f = fs.make(d, name("f"), Kind::File, 0o644, 0, 0).unwrap();
        fs.write(f, 0, b"data").unwrap();
        fs.sync(f).unwrap();
        fs.crash(Some(2));
        assert_eq!(contents(&fs, &["d", "f"]), None, "a fsynced file whose name was not");
        let f = fs.make(d, name("f"), Kind::File, 0o644, 0, 0).unwrap();
        fs.sync(d).unwrap();
        fs.write(f, 0, b"data").unwrap();
        fs.crash(None);
        assert_eq!(contents(&fs, &["d", "f"]), Some(Vec::new()), "a durable name whose data was not");
    }

    #[test]
    fn a_rename_or_unlink_is_undone_by_a_crash_before_the_directory_fsync() {
        let mut fs = fs();
        let old = fs.make(ROOT, name("state"), Kind::File, 0o644, 0, 0).unwrap();
        fs.write(old, 0, b"old").unwrap();
        fs.sync(old).unwrap();
        fs.sync(ROOT).unwrap();
        let tmp = fs.make(ROOT, name("state.tmp"), Kind::File, 0o644, 0, 0).unwrap();
        fs.write(tmp, 0, b"new").unwrap();
        fs.sync(tmp).unwrap();
        fs.rename(ROOT, name("state.tmp"), ROOT, name("state")).unwrap();
        assert_eq!(contents(&fs, &["state"]).unwrap(), b"new");
        fs.crash(Some(0));
        assert_eq!(contents(&fs, &["state"]).unwrap(), b"old");
        assert_eq!(contents(&fs, &["state.tmp"]), None);

        let tmp = fs.make(ROOT, name("state.tmp"), Kind::File, 0o644, 0, 0).unwrap();
        fs.write(tmp, 0, b"new").unwrap();
        fs.sync(tmp).unwrap();
        fs.rename(ROOT, name("state.tmp"), ROOT, name("state")).unwrap();
        fs.sync(ROOT).unwrap();
        fs.crash(Some(0));
        assert_eq!(contents(&fs, &["state"]).unwrap(), b"new");

        fs.unlink(ROOT, name("state")).unwrap();
        fs.crash(Some(0));
        assert_eq!(contents(&fs, &["state"]).unwrap(), b"new", "the unlink was never fsynced");
        fs.unlink(ROOT, name("state")).unwrap();
        fs.sync(ROOT).unwrap();
        fs.crash(Some(0));
        assert_eq!(contents(&fs, &["state"]), None);
        assert_eq!(fs.files(), 1, "only the root is left");
    }

    #[test]
    fn a_full_disk_refuses_growth_and_an_unlink_frees_space_at_once() {
        let mut fs = Fs::new(100, 0, 0);
        let f = fs.make(ROOT, name("f"), Kind::File, 0o644, 0, 0).unwrap();
        fs.write(f, 0, &[1; 60]).unwrap();
        let g = fs.make(ROOT, name("g"), Kind::File, 0o644, 0, 0).unwrap();
        assert_eq!(fs.allocate(g, 0, 41), Err(Error::NoSpace));
        assert_eq!(fs.write(g, 0, &[2; 41]), Ok(40), "cut short at the last byte");
        assert_eq!(fs.write(g, 40, &[2]), Err(Error::NoSpace));
        fs.set_len(g, 0).unwrap();
        fs.allocate(g, 0, 40).unwrap();
        assert_eq!(fs.used(), 100);
        fs.write(f, 0, &[3; 60]).unwrap();
        assert_eq!(fs.write(f, 60, &[3]), Err(Error::NoSpace));
        fs.unlink(ROOT, name("g")).unwrap();
        assert_eq!(fs.used(), 60);
        fs.write(f, 60, &[3; 40]).unwrap();
        assert_eq!(fs.set_len(f, 101), Err(Error::NoSpace));
        fs.set_len(f, 10).unwrap();
        assert_eq!(fs.used(), 10);
    }

    #[test]
    fn an_unlinked_file_stays_readable_while_open() {
        let mut fs = fs();
        let f = fs.make(ROOT, name("f"), Kind::File, 0o644, 0, 0).unwrap();
        fs.write(f, 0, b"kept").unwrap();
        fs.open(f).unwrap();
        fs.unlink(ROOT, name("f")).unwrap();
        fs.sync(ROOT).unwrap();
        assert_eq!(fs.read(f, 0, 10).unwrap(), b"kept");
        assert_eq!(fs.open_handles(), 1);
        fs.release(f);
        assert_eq!(fs.read(f, 0, 10), Err(Error::NotFound));
    }

    #[test]
    fn names_and_kinds_are_checked() {
        let mut fs = fs();
        let d = fs.make(ROOT, name("d"), Kind::Dir, 0o755, 0, 0).unwrap();
        fs.make(d, name("f"), Kind::File, 0o644, 0, 0).unwrap();
        assert_eq!(fs.make(ROOT, name("d"), Kind::File, 0o644, 0, 0), Err(Error::Exists));
        assert_eq!(fs.rmdir(ROOT, name("d")), Err(Error::NotEmpty));
        assert_eq!(fs.unlink(ROOT, name("d")), Err(Error::IsDir));
        assert_eq!(fs.rename(ROOT, name("d"), d, name("inside")), Err(Error::Invalid));
        let f = fs.lookup(d, name("f")).unwrap();
        assert_eq!(fs.make(f, name("x"), Kind::File, 0o644, 0, 0), Err(Error::NotDir));
        assert_eq!(fs.write(d, 0, b"x"), Err(Error::IsDir));
        assert_eq!(fs.list(d).unwrap(), vec![(f, Kind::File, OsString::from("f"))]);
        fs.unlink(d, name("f")).unwrap();
        fs.rmdir(ROOT, name("d")).unwrap();
        assert!(fs.list(ROOT).unwrap().is_empty());
    }
}
