//! What happened to the notifications of one trace, counted on the hot path
//! by the listener that owns it and merged when listeners end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::callers::{Caller, Knowledge};
use crate::output::skip::Skip;

/// Per-thread entries kept at most; past that, threads are counted in
/// aggregate only, so a long-lived supervisor's memory stays bounded.
const MAX_THREADS: usize = 4096;
/// Distinct stacks kept, and fd paths per stack; past that, counted only.
const MAX_STACKS: usize = 1024;
const MAX_PATHS: usize = 8;
/// Distinct reasons a stack was missed, counted apart; past that, under
/// "other reasons".
const MAX_MISS_REASONS: usize = 16;

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub notifications: u64,
    pub signals: u64,
    pub skipped: BTreeMap<Skip, u64>,
    /// Callers that went away before their answer (killed, or interrupted
    /// before we received the notification). Their syscall never ran.
    pub withdrawn: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub threads: HashMap<i32, ThreadStats>,
    /// How the listener knows its processes' handlers.
    pub handlers: Knowledge,
    /// Stacks captured (`stacks: "true"`), by their frames' text.
    pub stacks: HashMap<Arc<[String]>, StackCount>,
    /// Selected calls whose stack could not be taken, by reason.
    pub stacks_missed: u64,
    pub stack_misses: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StackCount {
    pub count: u64,
    /// The paths of the fds closed from it (close only), a few.
    pub paths: BTreeSet<String>,
}

impl StackCount {
    fn add(&mut self, count: u64, paths: impl IntoIterator<Item = String>) {
        self.count += count;
        for path in paths {
            if self.paths.len() < MAX_PATHS {
                self.paths.insert(path);
            }
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ThreadStats {
    pub pid: i32,
    pub name: String,
    pub notifications: u64,
    pub signals: u64,
}

impl Stats {
    fn thread(&mut self, tid: i32, caller: Option<&Caller>) -> Option<&mut ThreadStats> {
        if tid == 0 || (self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&tid)) {
            return None;
        }
        let entry = self.threads.entry(tid).or_default();
        if let Some(c) = caller {
            if entry.pid != c.tgid || *entry.name != *c.name {
                entry.pid = c.tgid;
                entry.name = c.name.to_string();
            }
        }
        Some(entry)
    }

    pub fn notified(&mut self, tid: i32) {
        self.notifications += 1;
        if let Some(t) = self.thread(tid, None) {
            t.notifications += 1;
        }
    }

    pub fn signalled(&mut self, caller: &Caller) {
        self.signals += 1;
        if let Some(t) = self.thread(caller.tid, Some(caller)) {
            t.signals += 1;
        }
    }

    pub fn skipped(&mut self, why: Skip, caller: Option<&Caller>) {
        *self.skipped.entry(why).or_default() += 1;
        if let Some(c) = caller {
            self.thread(c.tid, Some(c));
        }
    }

    /// A captured stack, and the path of the fd closed from it.
    pub fn stack(&mut self, key: Arc<[String]>, path: Option<&str>) {
        if self.stacks.len() >= MAX_STACKS && !self.stacks.contains_key(&key) {
            self.stack_missed(format_args!("more than {MAX_STACKS} distinct stacks"));
            return;
        }
        self.stacks.entry(key).or_default().add(1, path.map(str::to_owned));
    }

    pub fn stack_missed(&mut self, why: impl std::fmt::Display) {
        self.stack_misses_add(why.to_string(), 1);
    }

    fn stack_misses_add(&mut self, why: String, n: u64) {
        self.stacks_missed += n;
        let why = if self.stack_misses.len() < MAX_MISS_REASONS || self.stack_misses.contains_key(&why) {
            why
        } else {
            "other reasons".to_owned()
        };
        *self.stack_misses.entry(why).or_default() += n;
    }

    pub fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        let message = what.to_string();
        tracing::warn!("{message}");
        self.last_error = Some(message);
    }

    /// Adds another listener's counts to these.
    pub fn merge(&mut self, other: &Stats) {
        self.notifications += other.notifications;
        self.signals += other.signals;
        for (why, n) in &other.skipped {
            *self.skipped.entry(*why).or_default() += n;
        }
        self.withdrawn += other.withdrawn;
        let (mine, theirs) = (&mut self.handlers, &other.handlers);
        mine.exec += theirs.exec;
        mine.proc += theirs.proc;
        mine.proc_reads += theirs.proc_reads;
        mine.handler_calls += theirs.handler_calls;
        self.errors += other.errors;
        if other.last_error.is_some() {
            self.last_error.clone_from(&other.last_error);
        }
        for (stack, n) in &other.stacks {
            if self.stacks.len() < MAX_STACKS || self.stacks.contains_key(stack) {
                self.stacks.entry(Arc::clone(stack)).or_default().add(n.count, n.paths.iter().cloned());
            }
        }
        for (why, n) in &other.stack_misses {
            self.stack_misses_add(why.clone(), *n);
        }
        for (tid, t) in &other.threads {
            if self.threads.len() < MAX_THREADS || self.threads.contains_key(tid) {
                let mine = self.threads.entry(*tid).or_default();
                mine.notifications += t.notifications;
                mine.signals += t.signals;
                if !t.name.is_empty() {
                    mine.pid = t.pid;
                    mine.name.clone_from(&t.name);
                }
            }
        }
    }
}
