//! Loading the target's binaries: with a deadline, on threads of their own,
//! into one cache with a memory limit.
//!
//! A binary is a file the target may control, and a file can make its reader
//! wait: an `open` waits out a write lease (`fcntl(F_SETLEASE)`, 45 s here,
//! docs/design.md#what-one-tenant-cannot-do) unless it is `O_NONBLOCK`; a
//! read of a FUSE file or a dead NFS mount can wait for ever, and only giving
//! up on the reader helps. So each load runs on a loader thread and the
//! unwinder waits for it at most `DEADLINE`; a load that overruns is
//! abandoned and the binary is marked unloadable, with the reason, until its
//! thread returns: a slow load that does finish is then kept (views read
//! after it name its frames), a failed one is remembered for `RETRY_AFTER`.
//! While an abandoned load is stuck, no other file of its device (a FUSE
//! mount is a device of its own) is loaded, so one tenant's blocking mount
//! costs one stuck thread, not one per file; and at most `MAX_LOADERS` loader
//! threads exist, stuck ones included.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::modules::Binary;
use crate::shared;

/// How long an unwinder waits for a binary to load.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// How a load's failure ends when it overran the deadline.
pub const OVERRAN: &str = "; abandoned";
/// How long a binary that could not be loaded is not tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Loader threads at most, those stuck in a file included.
const MAX_LOADERS: usize = 8;
/// The bytes all loaded binaries may keep; past it, binaries no process
/// view holds are dropped, and if that is not enough, a new one is refused.
pub const CACHE_LIMIT: u64 = 1 << 30;
/// Failures remembered at most (each is a few bytes).
const MAX_FAILURES: usize = 4096;

type Outcome = Result<Arc<Binary>, Arc<str>>;

/// A load under way: its result, once there, and whether it was abandoned.
#[derive(Default)]
struct Load {
    outcome: Option<Outcome>,
    abandoned: bool,
}

type Slot = Arc<(Mutex<Load>, Condvar)>;

/// A mapped file: its device (as `/proc/PID/maps` shows it) and inode.
type Key = (Arc<str>, u64);

enum Entry {
    Ready(Arc<Binary>),
    Loading(Slot),
    Failed(Arc<str>, Instant),
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Entry>,
    kept: u64,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Abandoned loads still stuck, by device. Taken alone or last (after the
/// cache's or a load's lock), never the other way round.
fn stuck() -> &'static Mutex<HashMap<Arc<str>, usize>> {
    static STUCK: OnceLock<Mutex<HashMap<Arc<str>, usize>>> = OnceLock::new();
    STUCK.get_or_init(Default::default)
}

/// Loader threads alive.
static LOADERS: AtomicUsize = AtomicUsize::new(0);

/// Opens a file for reading without waiting on a lease, and never as the
/// process's controlling terminal.
pub fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

/// A file mapping of a process, as `/proc/PID/maps` shows it.
pub struct Mapped<'a> {
    pub pid: i32,
    pub start: u64,
    pub end: u64,
    pub dev: &'a str,
    pub inode: u64,
}

/// The binary of mapping `m`, mapped from `path` (in the process's `root`):
/// from the cache, or loaded within the deadline.
pub fn binary(m: &Mapped, path: &Arc<str>, root: Option<&Arc<OwnedFd>>) -> Outcome {
    let dev = m.dev;
    let key: Key = (Arc::from(dev), m.inode);
    let slot = {
        let mut cache = shared::lock(cache());
        match cache.entries.get(&key) {
            Some(Entry::Ready(binary)) => return Ok(Arc::clone(binary)),
            Some(Entry::Failed(why, when)) if when.elapsed() < RETRY_AFTER => return Err(Arc::clone(why)),
            Some(Entry::Loading(slot)) => Arc::clone(slot),
            _ => {
                if shared::lock(stuck()).get(dev).is_some_and(|n| *n > 0) {
                    return Err(Arc::from(format!(
                        "another file of its device {dev} blocked its loader, which is still stuck"
                    )));
                }
                if LOADERS.load(Ordering::Acquire) >= MAX_LOADERS {
                    return Err(Arc::from(format!(
                        "{MAX_LOADERS} binaries are loading already (some may be stuck in their files)"
                    )));
                }
                let slot: Slot = Arc::default();
                cache.entries.insert(key.clone(), Entry::Loading(Arc::clone(&slot)));
                let source = Source {
                    pid: m.pid,
                    range: (m.start, m.end),
                    inode: m.inode,
                    path: Arc::clone(path),
                    root: root.cloned(),
                };
                spawn_loader(source, &key, Arc::clone(&slot));
                slot
            }
        }
    };
    let outcome = wait(&slot, &key.0);
    let mut cache = shared::lock(cache());
    // Only the first to see the outcome records it (an abandoned load's
    // late result is recorded by its own thread).
    if let Some(Entry::Loading(current)) = cache.entries.get(&key) {
        if Arc::ptr_eq(current, &slot) {
            let outcome = outcome.and_then(|binary| admit(&mut cache, binary));
            match &outcome {
                Ok(binary) => drop(cache.entries.insert(key, Entry::Ready(Arc::clone(binary)))),
                // Its process was gone: another may have it to open.
                Err(why) if why.starts_with(GONE) => drop(cache.entries.remove(&key)),
                Err(why) => drop(cache.entries.insert(key, Entry::Failed(Arc::clone(why), Instant::now()))),
            }
            forget_old_failures(&mut cache);
            return outcome;
        }
    }
    match cache.entries.get(&key) {
        Some(Entry::Ready(binary)) => Ok(Arc::clone(binary)),
        Some(Entry::Failed(why, _)) => Err(Arc::clone(why)),
        _ => outcome,
    }
}

/// The load's outcome, or the deadline's: then the load is abandoned, and
/// its device counted stuck until it returns.
fn wait(slot: &Slot, dev: &Arc<str>) -> Outcome {
    let (lock, ready) = &**slot;
    let deadline = Instant::now() + DEADLINE;
    let mut load = shared::lock(lock);
    loop {
        if let Some(outcome) = load.outcome.as_ref() {
            return outcome.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if !load.abandoned {
                load.abandoned = true;
                *shared::lock(stuck()).entry(Arc::clone(dev)).or_default() += 1;
            }
            return Err(Arc::from(format!(
                "loading it took over {DEADLINE:?} (a file that blocks: FUSE, a dead mount?){OVERRAN}"
            )));
        }
        load = ready.wait_timeout(load, left).map_or_else(|e| e.into_inner().0, |(g, _)| g);
    }
}

/// Room for a loaded binary within the cache's limit: binaries no view
/// holds go first; a binary that still does not fit is refused.
fn admit(cache: &mut Cache, binary: Arc<Binary>) -> Outcome {
    if cache.kept.saturating_add(binary.kept) > CACHE_LIMIT {
        let Cache { entries, kept } = cache;
        entries.retain(|_, e| match e {
            Entry::Ready(b) if Arc::strong_count(b) == 1 => {
                *kept = kept.saturating_sub(b.kept);
                false
            }
            _ => true,
        });
    }
    if cache.kept.saturating_add(binary.kept) > CACHE_LIMIT {
        return Err(Arc::from(format!(
            "the binary cache is full ({} MiB in binaries processes use; this one keeps {} MiB)",
            cache.kept >> 20,
            binary.kept >> 20
        )));
    }
    cache.kept += binary.kept;
    Ok(binary)
}

fn forget_old_failures(cache: &mut Cache) {
    let failures = cache.entries.values().filter(|e| matches!(e, Entry::Failed(..))).count();
    if failures > MAX_FAILURES {
        cache.entries.retain(|_, e| !matches!(e, Entry::Failed(_, when) if when.elapsed() >= RETRY_AFTER));
    }
}

/// Where a binary can be opened from.
struct Source {
    pid: i32,
    range: (u64, u64),
    inode: u64,
    path: Arc<str>,
    root: Option<Arc<OwnedFd>>,
}

/// How a failure to open begins when the process that mapped the file
/// is gone: not remembered, since another process may open it.
const GONE: &str = "its process is gone";

/// Loads on a thread of its own, which may stay stuck in the file.
fn spawn_loader(source: Source, key: &Key, slot: Slot) {
    LOADERS.fetch_add(1, Ordering::AcqRel);
    let dev = Arc::clone(&key.0);
    let key = key.clone();
    let job = move || {
        let (pid, path) = (source.pid, Arc::clone(&source.path));
        let outcome = load(source).map(Arc::new).map_err(|why| {
            tracing::debug!("stacks: {path} (pid {pid}) not loaded: {why}");
            Arc::<str>::from(why)
        });
        let (lock, ready) = &*slot;
        let mut load = shared::lock(lock);
        load.outcome = Some(outcome.clone());
        let abandoned = load.abandoned;
        if abandoned {
            if let Some(n) = shared::lock(stuck()).get_mut(&dev) {
                *n = n.saturating_sub(1);
            }
        }
        drop(load);
        ready.notify_all();
        if let (true, Ok(binary)) = (abandoned, outcome) {
            // Slow, not stuck: kept for the views read from now on.
            let mut cache = shared::lock(cache());
            if let Ok(binary) = admit(&mut cache, binary) {
                cache.entries.insert(key, Entry::Ready(binary));
            }
        }
        LOADERS.fetch_sub(1, Ordering::AcqRel);
    };
    if let Err(e) = std::thread::Builder::new().name("sigvisor-load".into()).spawn(job) {
        LOADERS.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!("stacks: no loader thread: {e}");
    }
}

/// Opens the mapped file, checks that it is the mapped inode, and reads
/// it. By its path in the process's root first (which outlives the
/// process, and needs no privilege), resolved inside that root; else
/// through `/proc/PID/map_files` (the mapping itself, while it lives).
fn load(source: Source) -> Result<Binary, String> {
    let Source { pid, range: (start, end), inode, path, root } = source;
    let lease = |e: &std::io::Error| e.raw_os_error() == Some(libc::EWOULDBLOCK);
    const LEASED: &str = "its file has a lease on it (opening would wait for the lease to break)";
    let by_path = root.as_deref().map(|root| open_in_root(root, &path));
    let file = match by_path {
        Some(Ok(file)) if file.metadata().is_ok_and(|m| m.ino() == inode) => file,
        Some(Err(e)) if lease(&e) => return Err(LEASED.into()),
        _ => {
            // map_files names ranges without the leading zeros maps shows.
            let link = crate::procfs::path(pid, &format!("map_files/{start:x}-{end:x}"));
            let file = match open_nonblocking(Path::new(&link)) {
                Ok(file) => file,
                Err(e) if lease(&e) => return Err(LEASED.into()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                    return Err(format!("{GONE}, and {path} in its root is another file or none"))
                }
                Err(e) => return Err(format!("opening {link}: {e}")),
            };
            let found = file.metadata().map_err(|e| e.to_string())?.ino();
            if found != inode {
                return Err(format!("{link} is inode {found}, not the mapped {inode}"));
            }
            file
        }
    };
    Binary::load(file, path)
}

/// Opens `path` as the process sees it: resolved inside its root, so that
/// no link of the target's leads out of it.
fn open_in_root(root: &OwnedFd, path: &str) -> std::io::Result<File> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root, path.trim_end_matches(" (deleted)"), how)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_that_never_ends_is_abandoned_at_the_deadline() {
        let slot: Slot = Arc::default();
        let dev: Arc<str> = Arc::from("test:00");
        let started = Instant::now();
        let outcome = wait(&slot, &dev);
        assert!(started.elapsed() >= DEADLINE);
        assert!(outcome.err().is_some_and(|why| why.contains("abandoned")));
        assert_eq!(shared::lock(stuck()).get(&dev), Some(&1), "its device counts as stuck");
    }
}
