//! weir-lossyfs: a filesystem in memory, mounted with FUSE, that loses on
//! command what was not fsynced, in the spirit of lazyfs. The nemesis puts
//! each broker's data directory on one, and makes a power loss real:
//! `kill -9` keeps the page cache, so on an ordinary disk a skipped fsync
//! goes unnoticed.
//!
//! ```text
//! weir-lossyfs mount DIR --control SOCKET [--capacity BYTES]
//! weir-lossyfs ctl SOCKET crash [SEED] | usage | unmount
//! ```
//!
//! `crash SEED` is the power loss: each file keeps a seeded prefix of what
//! was written since its last fsync, the next write perhaps torn, and each
//! directory its names as of its last fsync (`model.rs`). `crash` alone
//! keeps nothing that was not fsynced. Kill
//! every process using the filesystem first: the crash waits up to 10 s for
//! their files to be released and fails otherwise, since a process still
//! writing would outlive its own power loss. Dirty pages of mapped files
//! still in the kernel's cache are written back while the filesystem
//! ignores writes, so they are lost too; attributes and names are never
//! cached (a TTL of zero) and every open drops the file's cached pages, so
//! the next process reads what survived. `ctl` prints the answer and exits
//! non-zero unless the command succeeded, so a fault that could not be
//! injected fails its caller.

// A tool for real hosts, never simulated: the real clock and threads are
// what it should use (weir's seam rules are for the broker).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod model;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use model::{Error, Fs, Kind};

/// Names and attributes are never cached: after a crash the kernel must ask.
const TTL: Duration = Duration::ZERO;
const BLOCK: u64 = 4096;
/// How long a crash waits for the files of killed processes to be released.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

fn errno(error: Error) -> Errno {
    match error {
        Error::NotFound => Errno::ENOENT,
        Error::Exists => Errno::EEXIST,
        Error::NotDir => Errno::ENOTDIR,
        Error::IsDir => Errno::EISDIR,
        Error::NotEmpty => Errno::ENOTEMPTY,
        Error::NoSpace => Errno::ENOSPC,
        Error::Invalid => Errno::EINVAL,
    }
}

struct LossyFs {
    fs: Arc<Mutex<Fs>>,
    /// Set during a crash: writes are dropped, other changes refused.
    frozen: Arc<AtomicBool>,
}

fn lock(fs: &Mutex<Fs>) -> MutexGuard<'_, Fs> {
    fs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LossyFs {
    fn lock(&self) -> MutexGuard<'_, Fs> {
        lock(&self.fs)
    }

    fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    fn attr(fs: &Fs, ino: u64) -> Result<FileAttr, Errno> {
        let attr = fs.attr(ino).map_err(errno)?;
        let (kind, nlink) = match attr.kind {
            Kind::File => (FileType::RegularFile, 1),
            Kind::Dir => (FileType::Directory, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: attr.mtime,
            mtime: attr.mtime,
            ctime: attr.mtime,
            crtime: attr.mtime,
            kind,
            perm: (attr.mode & 0o7777) as u16,
            nlink,
            uid: attr.uid,
            gid: attr.gid,
            rdev: 0,
            flags: 0,
            blksize: BLOCK as u32,
        })
    }

    fn reply_entry(&self, result: Result<u64, Error>, reply: ReplyEntry) {
        let fs = self.lock();
        match result.map_err(errno).and_then(|ino| Self::attr(&fs, ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn reply_empty(result: Result<(), Error>, reply: ReplyEmpty) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        umask: u32,
    ) -> Result<u64, Error> {
        if self.frozen() {
            return Err(Error::Invalid);
        }
        self.lock().make(parent.0, name, kind, mode & !umask, req.uid(), req.gid())
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.lock().lookup(parent.0, name);
        self.reply_entry(found, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match Self::attr(&self.lock(), ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.frozen() && (mode.is_some() || size.is_some()) {
            return reply.error(Errno::EIO);
        }
        let mut fs = self.lock();
        let changed = mode.map_or(Ok(()), |mode| fs.set_mode(ino.0, mode)).and_then(|()| match size {
            Some(size) => fs.set_len(ino.0, size),
            None => Ok(()),
        });
        match changed.map_err(errno).and_then(|()| Self::attr(&fs, ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let made = self.make(req, parent, name, Kind::File, mode, umask);
        self.reply_entry(made, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let made = self.make(req, parent, name, Kind::Dir, mode, umask);
        self.reply_entry(made, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.frozen() {
            return reply.error(Errno::EIO);
        }
        Self::reply_empty(self.lock().unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.frozen() {
            return reply.error(Errno::EIO);
        }
        Self::reply_empty(self.lock().rmdir(parent.0, name), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        if self.frozen() {
            return reply.error(Errno::EIO);
        }
        Self::reply_empty(self.lock().rename(parent.0, name, new_parent.0, new_name), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_KEEP_CACHE: the kernel drops the file's cached pages.
        match self.lock().open(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self.make(req, parent, name, Kind::File, mode, umask);
        let mut fs = self.lock();
        let opened = made.and_then(|ino| fs.open(ino).map(|()| ino));
        match opened.map_err(errno).and_then(|ino| Self::attr(&fs, ino)) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.frozen() {
            // The power is off: the kernel's write-back goes nowhere.
            return reply.written(data.len() as u32);
        }
        match self.lock().write(ino.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().release(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.frozen() {
            return reply.ok();
        }
        Self::reply_empty(self.lock().sync(ino.0), reply);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = match self.lock().list(ino.0) {
            Ok(listed) => listed,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
        let entries = listed.into_iter().map(|(child, kind, name)| {
            let kind = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            (child, kind, name)
        });
        for (at, (child, kind, name)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), at as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.frozen() {
            return reply.ok();
        }
        Self::reply_empty(self.lock().sync(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = self.lock();
        let blocks = fs.capacity() / BLOCK;
        let free = fs.capacity().saturating_sub(fs.used()) / BLOCK;
        let files = 1 << 20;
        reply.statfs(blocks, free, free, files, files - fs.files().min(files), BLOCK as u32, 255, BLOCK as u32);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        if self.frozen() {
            return reply.error(Errno::EIO);
        }
        Self::reply_empty(self.lock().allocate(ino.0, offset, length), reply);
    }
}

/// The power loss: see the module docs.
fn crash(fs: &Mutex<Fs>, frozen: &AtomicBool, mountpoint: &Path, seed: Option<u64>) -> Result<String, String> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        let open = lock(fs).open_handles();
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{open} file(s) still open after {RELEASE_WAIT:?}: is every process using it dead?"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    frozen.store(true, Ordering::Release);
    // Push the kernel's dirty pages (of mapped files) out, into the void.
    let flushed = std::fs::File::open(mountpoint).map_err(|e| e.to_string()).and_then(|dir| {
        // SAFETY: syncfs takes a file descriptor we own for the call.
        match unsafe { libc::syncfs(dir.as_raw_fd()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().to_string()),
        }
    });
    let report = lock(fs).crash(seed);
    frozen.store(false, Ordering::Release);
    flushed.map_err(|e| format!("syncfs on {}: {e}", mountpoint.display()))?;
    Ok(format!(
        "files_cut={} changes_lost={} names_reverted={}",
        report.files_cut, report.changes_lost, report.names_reverted
    ))
}

fn serve(listener: UnixListener, fs: &Mutex<Fs>, frozen: &AtomicBool, mountpoint: &Path) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["crash", seed] => match seed.parse::<u64>() {
                Ok(seed) => crash(fs, frozen, mountpoint, Some(seed)),
                Err(_) => Err(format!("not a seed: {seed}")),
            },
            ["crash"] => crash(fs, frozen, mountpoint, None),
            ["usage"] => {
                let fs = lock(fs);
                Ok(format!(
                    "used={} capacity={} inodes={} open={}",
                    fs.used(),
                    fs.capacity(),
                    fs.files(),
                    fs.open_handles()
                ))
            }
            ["unmount"] => unmount(mountpoint),
            _ => Err(format!("unknown command {:?}: crash [SEED] | usage | unmount", line.trim())),
        };
        let _ = match answer {
            Ok(text) => writeln!(stream, "ok {text}"),
            Err(text) => writeln!(stream, "error {text}"),
        };
    }
}

/// Detaches the mount; the session then ends, and with it the process.
fn unmount(mountpoint: &Path) -> Result<String, String> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path.
    match unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } {
        0 => Ok(String::from("unmounted")),
        _ => Err(format!("umount {}: {}", mountpoint.display(), std::io::Error::last_os_error())),
    }
}

fn mount(dir: PathBuf, control: PathBuf, capacity: u64) -> Result<(), String> {
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = Arc::new(Mutex::new(Fs::new(capacity, uid, gid)));
    let frozen = Arc::new(AtomicBool::new(false));
    let _ = std::fs::remove_file(&control);
    let listener = UnixListener::bind(&control).map_err(|e| format!("binding {}: {e}", control.display()))?;
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("weir-lossyfs".into()), MountOption::NoAtime];
    let filesystem = LossyFs { fs: fs.clone(), frozen: frozen.clone() };
    let session =
        fuser::spawn_mount(filesystem, &dir, &config).map_err(|e| format!("mounting {}: {e}", dir.display()))?;
    eprintln!("weir-lossyfs: {} mounted ({capacity} bytes), control at {}", dir.display(), control.display());
    let mountpoint = dir.clone();
    std::thread::spawn(move || serve(listener, &fs, &frozen, &mountpoint));
    // Until unmounted: by `ctl unmount`, or by `umount` from outside.
    let ended = session.join().map_err(|e| format!("serving {}: {e}", dir.display()));
    let _ = std::fs::remove_file(&control);
    ended
}

fn ctl(control: &Path, command: &[String]) -> Result<String, String> {
    let mut stream = UnixStream::connect(control).map_err(|e| format!("connecting to {}: {e}", control.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    writeln!(stream, "{}", command.join(" ")).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(|e| e.to_string())?;
    let answer = answer.trim().to_string();
    if answer == "ok" || answer.starts_with("ok ") {
        Ok(answer)
    } else if answer.is_empty() {
        Err("no answer".to_string())
    } else {
        Err(answer)
    }
}

const USAGE: &str = "usage: weir-lossyfs mount DIR --control SOCKET [--capacity BYTES]\n       \
                     weir-lossyfs ctl SOCKET crash [SEED] | usage | unmount";

fn run(args: &[String]) -> Result<String, String> {
    match args {
        [verb, dir, rest @ ..] if verb == "mount" => {
            let mut control = None;
            let mut capacity: u64 = 1 << 30;
            let mut rest = rest.iter();
            while let Some(flag) = rest.next() {
                let value = rest.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
                match flag.as_str() {
                    "--control" => control = Some(PathBuf::from(value)),
                    "--capacity" => capacity = value.parse().map_err(|_| format!("not a byte count: {value}"))?,
                    _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
                }
            }
            let control = control.ok_or(format!("--control is required\n{USAGE}"))?;
            mount(PathBuf::from(dir), control, capacity).map(|()| String::new())
        }
        [verb, control, command @ ..] if verb == "ctl" && !command.is_empty() => ctl(Path::new(control), command),
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("weir-lossyfs: {error}");
            ExitCode::FAILURE
        }
    }
}
