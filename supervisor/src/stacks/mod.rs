//! The calling thread's user stack, captured by sigvisor itself while the
//! thread waits for the answer: no signal, no handler, no cooperation.
//!
//! Two halves, split by the answer (design.md, "What is bounded"):
//! - **On the answer path** (`snapshot.rs`): only what the waiting thread
//!   can give, its SP and PC (`/proc/TID/syscall`) and a bounded copy of
//!   its stack (`process_vm_readv`, in-memory pages only). Bounded work, no
//!   file of the target's opened, nothing parsed.
//! - **After the answer** (`pool.rs`, a small fixed pool of threads): the
//!   copy is unwound and named. Go code unwinds by `.gopclntab`
//!   (`gopclntab.rs`), as Go's own traceback does; C, C++ and Rust code by
//!   DWARF CFI (`.eh_frame`, with `framehop`) and is named by symbols (and a
//!   separate debug file's) and DWARF lines; a frame whose CFA is RBP-based
//!   gets RBP from its function's prologue (`prologue.rs`). Binaries load
//!   with a deadline and within memory limits (`loader.rs`, `modules.rs`).
//! - A frame that cannot be unwound ends the stack, and the stack says why:
//!   never a made-up frame. A stack that cannot be had is counted in
//!   `stacksMissed`, with its reason.

pub mod gopclntab;
pub mod loader;
pub mod modules;
pub mod pool;
pub mod prologue;
pub mod snapshot;
pub mod unwind;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use pool::{Done, Execs};
use snapshot::{Snapshot, Snapshotter};

/// One frame: where it is, and what it is called.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub module: Arc<str>,
    /// Its address in the process, and in its module as linked.
    #[serde(serialize_with = "hex")]
    pub address: u64,
    #[serde(serialize_with = "hex_opt", skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

fn hex<S: serde::Serializer>(address: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{address:#x}"))
}

fn hex_opt<S: serde::Serializer>(address: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{:#x}", address.unwrap_or_default()))
}

impl Frame {
    /// A frame with no name: in no mapping, or in one whose binary was not
    /// loaded.
    pub fn unnamed(address: u64, module: Option<Arc<str>>) -> Frame {
        let module = module.unwrap_or_else(|| Arc::from("?"));
        Frame { function: None, file: None, line: None, module, address, offset: None }
    }

    /// `function (file:line)`, as the status lists frames.
    pub fn text(&self) -> String {
        let function = self.function.as_deref().unwrap_or("??");
        match (&self.file, self.line, self.offset) {
            (Some(file), Some(line), _) => format!("{function} ({file}:{line})"),
            (_, _, Some(offset)) => format!("{function} ({}+{offset:#x})", self.module),
            _ => format!("{function} ({:#x})", self.address),
        }
    }
}

/// A captured stack, innermost frame first.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// Why unwinding stopped before a thread's first frame, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

impl Stack {
    /// The lines the status shows: a frame per line, then the stop.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.frames.iter().map(Frame::text).collect();
        if let Some(why) = &self.truncated {
            lines.push(format!("... (unwinding stopped: {why})"));
        }
        lines
    }
}

/// A captured stack: its lines for the status (shared by every capture of
/// the same addresses), and its frames.
pub struct Captured {
    pub lines: Arc<[String]>,
    pub stack: Arc<Stack>,
}

/// One listener's stack capture: the snapshots it takes, the processes'
/// exec counts, and its stacks still being unwound.
pub struct Stacks {
    snapshots: Snapshotter,
    execs: Arc<Execs>,
    pending: Pending,
}

impl Stacks {
    /// `pending` counts its stacks still on the pool.
    pub fn new(pending: Pending) -> Stacks {
        Stacks { snapshots: Snapshotter::default(), execs: Arc::default(), pending }
    }

    /// On the answer path: the waiting thread's registers and stack.
    pub fn snapshot(&mut self, tid: i32, tgid: i32, start: u64) -> Result<Snapshot, String> {
        let image = self.execs.of(tgid);
        self.snapshots.take(tid, tgid, start, image)
    }

    /// Before an `execve` of process `tgid` is answered: its snapshots
    /// taken so far belong to the image it leaves.
    pub fn exec(&self, tgid: i32) {
        self.execs.bump(tgid);
    }

    /// After the answer: unwinds and names the snapshot on the pool, then
    /// calls `done`; or, if the pool is behind, calls it at once with why.
    pub fn unwind(&self, snapshot: Snapshot, done: Done) {
        self.pending.0.fetch_add(1, Ordering::AcqRel);
        UNNAMED.fetch_add(1, Ordering::AcqRel);
        let in_flight = Arc::clone(&self.pending.0);
        let done: Done = Box::new(move |result| {
            done(result);
            in_flight.fetch_sub(1, Ordering::AcqRel);
            UNNAMED.fetch_sub(1, Ordering::AcqRel);
        });
        pool::submit(pool::Job { snapshot, execs: Arc::clone(&self.execs), done });
    }
}

/// Stacks of every listener still on the pool.
static UNNAMED: AtomicUsize = AtomicUsize::new(0);

/// This listener's stacks still on the pool.
#[derive(Clone, Default)]
pub struct Pending(Arc<AtomicUsize>);

impl Pending {
    /// Waits until none is left, at most `limit` (a hostile binary's
    /// deadline, or a pool that is behind): a listener's last stacks reach
    /// its Trace before its counters are folded in.
    pub async fn settle(&self, limit: Duration) {
        settle(&self.0, limit).await
    }
}

/// Waits, at most `limit`, until every listener's stacks are named: the
/// status a stopping serve writes counts the calls its listeners saw last
/// (their targets may be gone already, their stacks not yet named).
pub async fn settle_all(limit: Duration) {
    settle(&UNNAMED, limit).await
}

async fn settle(count: &AtomicUsize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while count.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
