//! The unwinder threads: a small fixed pool that turns snapshots into named
//! stacks after the answer, off the notification path and off tokio's
//! workers. A process's snapshots always go to the same thread (by its
//! pid), so its views and named stacks live there without locks, and its
//! events keep their order. Each thread's queue is bounded: a snapshot
//! that finds it full is dropped and counted, never waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use framehop::x86_64::CacheX86_64;

use super::gopclntab::Budget;
use super::snapshot::{Layout, Snapshot};
use super::unwind::{self, View};
use super::{Captured, Frame, Stack};
use crate::shared;

/// Unwinder threads.
const THREADS: usize = 2;
/// Snapshot bytes waiting on all threads at most: a burst of a few
/// thousand calls fits (a copy is the used stack, a few KiB, up to 64 KiB).
const QUEUED_BYTES: usize = 64 << 20;
/// Processes' views kept per thread.
const MAX_PROCESSES: usize = 256;
/// Stacks kept named, by their addresses, per thread.
const MAX_NAMED: usize = 8192;

/// What to do with a snapshot's stack, once named (or why it has none).
pub type Done = Box<dyn FnOnce(Result<Captured, String>) + Send>;

/// A snapshot to unwind, and whom to tell.
pub struct Job {
    pub snapshot: Snapshot,
    /// The listener's exec counts: tells whether the process exec'd
    /// since the snapshot.
    pub execs: Arc<Execs>,
    pub done: Done,
}

/// Exec counts per process of one listener, bumped before an `execve` is
/// answered: a view read later knows whether its process still runs the
/// image a snapshot was taken in.
#[derive(Default)]
pub struct Execs {
    counts: Mutex<HashMap<i32, u64>>,
    next: AtomicU64,
}

/// Exec counts kept; past it, all are forgotten (a snapshot then finds its
/// count changed, and is dropped as stale: never a wrong frame).
const MAX_EXECS: usize = 4096;

impl Execs {
    pub fn of(&self, tgid: i32) -> u64 {
        shared::lock(&self.counts).get(&tgid).copied().unwrap_or(0)
    }

    pub fn bump(&self, tgid: i32) {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut counts = shared::lock(&self.counts);
        if counts.len() >= MAX_EXECS {
            counts.clear();
        }
        counts.insert(tgid, n);
    }
}

/// Snapshot bytes queued now.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Hands a job to its process's thread; if the threads are behind (too
/// many bytes queued) or gone, tells its `done` why at once.
pub fn submit(job: Job) {
    let queues = queues();
    let Some(queue) = queues.get(job.snapshot.tgid.unsigned_abs() as usize % queues.len().max(1)) else {
        return (job.done)(Err("no unwinder thread could be started".into()));
    };
    let bytes = job.snapshot.memory.bytes.len();
    if QUEUED.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes) > QUEUED_BYTES {
        QUEUED.fetch_sub(bytes, Ordering::AcqRel);
        return (job.done)(Err("the unwinders are behind (64 MiB of stacks wait)".into()));
    }
    if let Err(e) = queue.send(job) {
        QUEUED.fetch_sub(bytes, Ordering::AcqRel);
        (e.0.done)(Err("the unwinder thread is gone".into()));
    }
}

fn queues() -> &'static [Sender<Job>] {
    static QUEUES: OnceLock<Vec<Sender<Job>>> = OnceLock::new();
    QUEUES.get_or_init(|| {
        (0..THREADS)
            .filter_map(|i| {
                let (tx, rx) = mpsc::channel();
                let thread = std::thread::Builder::new().name(format!("sigvisor-unwind{i}"));
                match thread.spawn(move || Worker::default().run(rx)) {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::warn!("stacks: no unwinder thread: {e}");
                        None
                    }
                }
            })
            .collect()
    })
}

/// A stack's lines for the status, and its frames.
type Named = (Arc<[String]>, Arc<Stack>);

#[derive(Default)]
struct Worker {
    views: HashMap<i32, View>,
    cache: CacheX86_64,
    /// Stacks already named, by process and frame addresses: a repeated
    /// call path costs a hash lookup, not a symbolization.
    named: HashMap<(i32, Vec<u64>), Named>,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        for job in jobs {
            // A panic here (a bug, on some hostile binary) costs this one
            // stack, not the thread.
            let Job { snapshot, execs, done } = job;
            QUEUED.fetch_sub(snapshot.memory.bytes.len(), Ordering::AcqRel);
            let named =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.name(&snapshot, &execs)))
                    .unwrap_or_else(|_| {
                        self.views.remove(&snapshot.tgid);
                        Err("the unwinder failed on this stack (a bug: please report it)".into())
                    });
            done(named);
        }
    }

    fn name(&mut self, s: &Snapshot, execs: &Execs) -> Result<Captured, String> {
        // Read again when the process is another, or has exec'd, or runs
        // code mapped since (its stack is in the snapshot: no mapping
        // needed for it).
        let known = self.views.get(&s.tgid).filter(|v| v.start == s.start && v.image == s.image);
        let stale = known.is_none_or(|v| v.map.find(s.pc).is_none());
        // A binary that overran its deadline may have loaded since.
        let retry = known.and_then(View::retry_due);
        if stale || retry.is_some() {
            // The layout taken with the snapshot is its image's, whatever
            // the process did since; maps read now are only while it still
            // runs that image. The root stays the one first taken.
            let root = match (&s.layout, known) {
                (Some(layout), _) => layout.root.clone(),
                (None, Some(view)) => view.root.clone(),
                (None, None) => None,
            };
            let same_image = || execs.of(s.tgid) == s.image;
            let maps: Option<Arc<str>> = match (&s.layout, retry) {
                (Some(layout), _) => Some(Arc::from(layout.maps.as_str())),
                (None, Some(maps)) if !stale => Some(maps),
                // A dead process's maps read empty; an exec answered while
                // they were read makes them the new image's.
                (None, _) if same_image() => Layout::read(s.tgid)
                    .ok()
                    .filter(|layout| !layout.maps.is_empty() && same_image())
                    .map(|layout| Arc::from(layout.maps.as_str())),
                (None, _) => None,
            };
            match maps {
                Some(maps) => {
                    if self.views.len() >= MAX_PROCESSES && !self.views.contains_key(&s.tgid) {
                        // The gone go first; the live are read again when next seen.
                        self.views
                            .retain(|pid, _| std::path::Path::new(&crate::procfs::path(*pid, "")).exists());
                        if self.views.len() >= MAX_PROCESSES {
                            self.views.clear();
                        }
                    }
                    self.views.insert(s.tgid, View::new(s.start, s.image, &maps, s.tgid, root));
                    // Its addresses may mean other code now.
                    self.named.retain(|(pid, _), _| *pid != s.tgid);
                }
                // The view it has still names what was mapped before.
                None if known.is_some() => {}
                None if !same_image() => return Err("the process exec'd before its stack was unwound".into()),
                None => return Err("it was gone before its maps could be read".into()),
            }
        }
        let view = self.views.get(&s.tgid).ok_or("no view")?;
        let (addresses, stop) = unwind::unwind(view, &mut self.cache, s.pc, s.sp, &s.memory);
        let key = (s.tgid, addresses.iter().map(|(a, _)| *a).collect::<Vec<u64>>());
        if let Some((lines, stack)) = self.named.get(&key) {
            return Ok(Captured { lines: Arc::clone(lines), stack: Arc::clone(stack) });
        }
        // One budget for naming the whole stack: file:line scans Go's tables.
        let mut budget = Budget::new(unwind::STEPS);
        let frames = addresses
            .into_iter()
            .map(|(address, lookup)| frame(view, address, lookup, &mut budget))
            .collect();
        let stack = Stack { frames, truncated: stop };
        let lines: Arc<[String]> = Arc::from(stack.lines());
        let stack = Arc::new(stack);
        if self.named.len() >= MAX_NAMED {
            self.named.clear();
        }
        self.named.insert(key, (Arc::clone(&lines), Arc::clone(&stack)));
        Ok(Captured { lines, stack })
    }
}

/// Names a frame: `lookup` is the address inside its call instruction
/// (a return address less one) or the PC itself.
fn frame(view: &View, address: u64, lookup: u64, budget: &mut Budget) -> Frame {
    let Some(mapping) = view.map.find(lookup) else { return Frame::unnamed(address, None) };
    let Some(binary) = mapping.loaded() else { return Frame::unnamed(address, mapping.path.clone()) };
    let module = Arc::clone(&binary.path);
    let bias = binary.bias(mapping);
    // Names by the call (`lookup`); the offset shown is the address's.
    let linked = bias.map(|bias| lookup.wrapping_sub(bias));
    let offset = bias.map(|bias| address.wrapping_sub(bias));
    if let (Some(go), Some(linked)) = (&binary.go, linked) {
        if let Some(f) = go.func(linked) {
            let (file, line) =
                go.file_line(f, linked, budget).map_or((None, None), |(f, l)| (Some(Arc::from(f)), Some(l)));
            let function = go.name(f).map(Arc::from);
            return Frame { function, file, line, module, address, offset };
        }
    }
    let function = linked.and_then(|l| binary.symbol(l)).cloned().or_else(|| {
        // ld.so's entry has no symbol left; it is its `_start` all the same.
        linked.filter(|&l| binary.in_entry(l)).map(|_| Arc::from("_start"))
    });
    let (file, line) = linked.and_then(|l| binary.line(l)).map_or((None, None), |(f, l)| (Some(f), Some(l)));
    Frame { function, file, line, module, address, offset }
}
