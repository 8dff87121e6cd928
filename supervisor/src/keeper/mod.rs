//! The keeper: a small process of sigvisor's own that holds a copy of
//! every listener, so that no supervised syscall fails or hangs when the
//! supervisor dies, restarts or is upgraded.
//!
//! Why a copy is enough (docs/design.md#if-the-supervisor-dies-the-keeper):
//! the kernel fails trapped calls with ENOSYS only when a listener's *last*
//! reference closes; while any copy is open, callers wait. So the supervisor
//! hands a copy of each listener it receives to the keeper (`link.rs`) and
//! serves it as before; the keeper (`hold.rs`) only holds it, until the
//! supervisor says it hung up. When the supervisor's connection ends, however
//! it ends (exit, `kill -9`, OOM, panic), the keeper answers every call
//! itself with CONTINUE and no signal, until a supervisor connects again and
//! takes every listener back, with what it had said of it: the handoff
//! (container, bundle, annotations, filter facts) and the handlers it knew
//! per process.
//!
//! A notification the dead supervisor had received but not answered is
//! reachable only by its id: the supervisor leaves each id it receives in a
//! slot of a memory region it shares with the keeper (`sys::region`), one
//! store per notification, and the keeper answers that id (and probes the
//! next few: ids count up by one per filter, and the supervisor may have
//! died between its RECV and the store).
//!
//! The wire: a SOCK_SEQPACKET unix socket, one JSON message per packet,
//! with at most one fd (a listener, or the region's memfd).

pub mod custody;
pub mod hold;
pub mod intake;
mod kept;
pub mod link;
pub mod rescue;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::callers::KnownProcess;

/// The largest message; a listener's record is its OCI state (a few KiB).
pub const MAX_PACKET: usize = 256 * 1024;

/// Processes whose handlers the keeper remembers per listener; past this
/// the oldest are forgotten (they are then not signalled: never unsafe).
pub const MAX_KNOWN: usize = 1024;

/// What was last said of each process's handlers, for one listener: kept
/// by the keeper for the next supervisor, and by the supervisor for a
/// keeper that replaces one that died.
#[derive(Default)]
pub struct Known {
    by_pid: BTreeMap<i32, KnownProcess>,
    /// Processes in the order they were first told, to forget the oldest.
    order: VecDeque<i32>,
}

impl Known {
    pub fn remember(&mut self, process: KnownProcess) {
        let pid = process.tgid;
        if self.by_pid.insert(pid, process).is_none() {
            self.order.push_back(pid);
            if self.order.len() > MAX_KNOWN {
                if let Some(old) = self.order.pop_front() {
                    self.by_pid.remove(&old);
                }
            }
        }
    }

    /// Forgets the processes `drop` names.
    pub fn forget_if(&mut self, drop: impl Fn(i32) -> bool) {
        self.by_pid.retain(|&tgid, _| !drop(tgid));
        let by_pid = &self.by_pid;
        self.order.retain(|p| by_pid.contains_key(p));
    }

    pub fn all(&self) -> impl Iterator<Item = &KnownProcess> {
        self.by_pid.values()
    }
}

/// What `Cell::state` says about the notification whose id is in the slot.
pub mod slot {
    /// Answered, or none received yet.
    pub const IDLE: u64 = 0;
    /// A call the Trace may signal is being answered.
    pub const CALL: u64 = 1;
    /// A handler change or an exec is being recorded and answered: if the
    /// keeper has to answer it, what the supervisor knew of the process's
    /// handlers may be out of date.
    pub const BOOKKEEPING: u64 = 2;
    /// The supervisor is signalling the caller (from before its ID_VALID
    /// until the signal is sent): the keeper must not answer now, or the
    /// signal could land after the call returned.
    pub const SIGNALLING: u64 = 3;
    /// The keeper took the call over from a stuck supervisor, which then
    /// must not signal it.
    pub const TAKEN: u64 = 4;
}

/// What the supervisor said of one listener when it received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// The handoff's OCI `ContainerProcessState`, its `fds` reduced to the
    /// listener: decoded again on adoption as a fresh handoff.
    pub state: String,
    /// The program that handed it over (`runc`, `crun`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The signals whose handler changes its filter traps (a mask).
    #[serde(default)]
    pub watched: u64,
}

impl Record {
    pub fn of(handoff: &sigvisor_proto::Handoff, runtime: Option<&str>) -> Record {
        let mut state = handoff.state.clone();
        *state.fds_mut() = vec![sigvisor_proto::SECCOMP_FD_NAME.to_owned()];
        // Serializing what was just deserialized cannot fail.
        Record {
            state: serde_json::to_string(&state).unwrap_or_default(),
            runtime: runtime.map(str::to_owned),
            watched: handoff.metadata.watched_signals,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum ToKeeper {
    /// A new listener (the fd attached), which the supervisor serves.
    Keep { slot: u32, record: Record },
    /// No task uses this listener's filter any more: the keeper closes its copy.
    Release { slot: u32 },
    /// The supervisor is stopping on purpose (SIGTERM): what follows is
    /// not a crash.
    Stopping,
    /// What the supervisor knows now of one process's handlers.
    Known { slot: u32, process: KnownProcess },
    /// The supervisor stopped serving this listener (its task failed): the
    /// keeper answers it from now on.
    GiveBack { slot: u32 },
    /// serve's listening agent socket (the fd attached), which the keeper
    /// accepts on while no supervisor is attached.
    Agent { path: String },
    /// The supervisor's slot region (its memfd attached), for a keeper that
    /// replaces one that died: the supervisor's slots are in it. First,
    /// before any listener.
    Region,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum ToSupervisor {
    /// The slot region (its memfd attached); always the first message.
    Region,
    /// A listener the keeper holds (the fd attached): the supervisor serves
    /// it from now on. `answered`: calls the keeper answered for it.
    Adopt { slot: u32, record: Record, known: Vec<KnownProcess>, answered: u64 },
    /// The agent socket the keeper holds (the fd attached), for the
    /// supervisor to accept on rather than bind a new one.
    Agent { path: String },
    /// Every listener was sent. `rescued`: notifications a dead supervisor
    /// had received and the keeper answered by their id.
    Ready { answered: u64, rescued: u64 },
    /// Another supervisor is attached; this one is not.
    Refused { reason: String },
}
