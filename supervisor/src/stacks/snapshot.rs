//! What only the waiting thread can give, taken on the answer path: its SP
//! and PC (`/proc/TID/syscall`) and a bounded copy of its stack. Nothing
//! else: no file of the target's is opened, no table walked. Unwinding the
//! copy comes after the answer (`pool.rs`), the way `perf --call-graph
//! dwarf` copies the stack and unwinds later.
//!
//! Only pages in memory are read: a missing one could be a userfaultfd's,
//! and the read would wait for whoever serves it. A frame's untouched
//! locals leave holes; the caller's own frames are in memory: it ran on
//! them.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::procfs;
use crate::sys::memory;

/// Stack bytes copied from SP (clipped where the mapping ends: pages past
/// it read as absent). 30 C frames take about 1 KiB, a Go stack of 60
/// frames about 6 KiB.
pub const STACK_BYTES: usize = 64 * 1024;

/// Threads' `/proc/TID/syscall` and processes' `/proc/PID/pagemap` kept
/// open (a kept-open file names its task, never a later one with its id),
/// at most this many each.
const MAX_OPEN: usize = 256;

/// The stack memory copied: reads outside it, or in a page that was not
/// in memory (and so not read), fail.
pub struct Memory {
    pub base: u64,
    pub bytes: Vec<u8>,
    /// Per page from `base`'s page: read or not.
    pub read: Vec<bool>,
}

impl Memory {
    /// The word at `at`; Err (framehop's kind) if it was not copied.
    pub(crate) fn word(&self, at: u64) -> Result<u64, ()> {
        let i = usize::try_from(at.checked_sub(self.base).ok_or(())?).map_err(|_| ())?;
        // Addresses come from the target's memory: any value, no overflow.
        let bytes = self.bytes.get(i..i.checked_add(8).ok_or(())?).ok_or(())?;
        // In range now: base <= at and at + 8 <= base + len.
        let page = memory::page_size();
        let (first, last) =
            ((at / page - self.base / page) as usize, ((at + 7) / page - self.base / page) as usize);
        if !(first..=last).all(|p| self.read.get(p).copied().unwrap_or(false)) {
            return Err(());
        }
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    }

    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.bytes.len() as u64)
    }
}

/// One waiting thread's registers and stack.
pub struct Snapshot {
    pub tid: i32,
    pub tgid: i32,
    /// The process's start time: tells it from a later one with its pid.
    pub start: u64,
    /// Its exec count when taken (`Execs`): its mappings are the ones of
    /// that image.
    pub image: u64,
    pub pc: u64,
    pub sp: u64,
    pub memory: Memory,
    /// The process's mappings, with its first snapshot of each image: a
    /// process may be gone by the time its stack is unwound.
    pub layout: Option<Arc<Layout>>,
}

/// What unwinding needs of a process that may exit right after its call:
/// its mappings, and its root directory (a container's), through which
/// its binaries are opened by path later.
pub struct Layout {
    pub maps: String,
    pub root: Option<Arc<OwnedFd>>,
}

impl Layout {
    /// Read now. Both are /proc reads that wait for no file of the
    /// target's: the root is opened `O_PATH` (nothing of its filesystem
    /// is asked), and maps is bounded.
    pub fn read(tgid: i32) -> Result<Layout, String> {
        let maps = procfs::maps::read(tgid).map_err(|e| format!("reading its maps: {e}"))?;
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = open(procfs::path(tgid, "root").as_str(), flags, Mode::empty()).ok().map(Arc::new);
        Ok(Layout { maps, root })
    }

    /// The executable ranges it shows.
    fn code(&self) -> Vec<(u64, u64)> {
        self.maps
            .lines()
            .filter_map(procfs::maps::parse_line)
            .filter(|m| m.executable)
            .map(|m| (m.start, m.end))
            .collect()
    }
}

/// A process's kept-open pagemap, and the code its last layout taken
/// showed mapped.
struct Process {
    start: u64,
    image: u64,
    pagemap: Option<File>,
    code: Vec<(u64, u64)>,
}

/// The files a listener's snapshots read, kept open.
#[derive(Default)]
pub struct Snapshotter {
    threads: HashMap<i32, File>,
    processes: HashMap<i32, Process>,
}

impl Snapshotter {
    /// Thread `tid` of process `tgid` (started at `start`), which waits
    /// inside a trapped call.
    pub fn take(&mut self, tid: i32, tgid: i32, start: u64, image: u64) -> Result<Snapshot, String> {
        let (sp, pc) = self.registers(tid)?;
        // The layout again when the process is new, exec'd, or calls from
        // code mapped since the last (ld.so maps libc after its own first
        // calls; dlopen).
        let layout = match self.processes.get_mut(&tgid) {
            Some(p) if p.start == start && p.image == image => {
                if p.code.iter().any(|(from, to)| (*from..*to).contains(&pc)) {
                    None
                } else {
                    let layout = Layout::read(tgid)?;
                    p.code = layout.code();
                    Some(Arc::new(layout))
                }
            }
            _ => {
                let layout = Layout::read(tgid)?;
                if self.processes.len() >= MAX_OPEN {
                    self.processes.clear();
                }
                let pagemap = procfs::pagemap::open(tgid);
                self.processes.insert(tgid, Process { start, image, pagemap, code: layout.code() });
                Some(Arc::new(layout))
            }
        };
        let pagemap = self.processes.get(&tgid).and_then(|p| p.pagemap.as_ref());
        let memory = read_stack(pagemap, tid, sp)?;
        Ok(Snapshot { tid, tgid, start, image, pc, sp, memory, layout })
    }

    /// SP and PC of a thread inside a syscall, from its kept-open
    /// `/proc/TID/syscall` ("nr arg0..arg5 sp pc").
    fn registers(&mut self, tid: i32) -> Result<(u64, u64), String> {
        if self.threads.len() >= MAX_OPEN && !self.threads.contains_key(&tid) {
            self.threads.clear();
        }
        let file = match self.threads.entry(tid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(File::open(procfs::path(tid, "syscall")).map_err(|e| e.to_string())?)
            }
        };
        let mut buf = [0u8; 256];
        // A waiting thread woken for a moment (a signal from elsewhere)
        // reads as "running" until it waits again: a few tries, no wait.
        for _ in 0..3 {
            let n = match file.read_at(&mut buf, 0) {
                Ok(n) => n,
                Err(e) => {
                    // The thread this file named is gone.
                    self.threads.remove(&tid);
                    return Err(e.to_string());
                }
            };
            let text = std::str::from_utf8(&buf[..n]).map_err(|e| e.to_string())?;
            if let Some(registers) = procfs::syscall::registers(text) {
                return Ok(registers);
            }
            std::thread::yield_now();
        }
        Err("not inside a syscall (running)".into())
    }
}

/// `STACK_BYTES` from SP: only the pages in memory, one read per run.
fn read_stack(pagemap: Option<&File>, tid: i32, sp: u64) -> Result<Memory, String> {
    let len = STACK_BYTES.min(usize::try_from(u64::MAX - sp).unwrap_or(STACK_BYTES));
    let read = match pagemap {
        Some(pagemap) => procfs::pagemap::resident_pages(pagemap, sp, len),
        None => vec![true; len / memory::page_size() as usize + 2],
    };
    if !read.first().copied().unwrap_or(false) {
        return Err("its stack is not in memory (reading could block)".into());
    }
    let page = memory::page_size();
    // Kept only up to the last page in memory (a thread's stack ends below
    // the window's end, often far below): nothing past it is allocated.
    let mut read = read;
    let last = read.iter().rposition(|r| *r).unwrap_or(0);
    read.truncate(last + 1);
    // Saturating: SP is the target's to choose, the top of the address
    // space included.
    let page_end = |n: usize| (sp / page).saturating_add(n as u64).saturating_mul(page);
    let end = page_end(last + 1).min(sp + len as u64);
    let mut bytes = vec![0u8; (end - sp) as usize];
    let mut p = 0;
    while p < read.len() {
        let run = read[p..].iter().take_while(|r| **r == read[p]).count();
        if read[p] {
            let (from, to) = (page_end(p).max(sp), page_end(p + run).min(end));
            if to > from {
                let range = (from - sp) as usize..(to - sp) as usize;
                memory::read(tid, from, &mut bytes[range]).map_err(|e| format!("reading its stack: {e}"))?;
            }
        }
        p += run;
    }
    Ok(Memory { base: sp, bytes, read })
}
