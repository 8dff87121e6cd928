//! What a supervisor knows of its processes' handlers, as it passes to a
//! successor through the keeper (keeper/mod.rs), and takes over from one.

use super::changes::wait_delivered;
use super::handlers::{Disposition, Table};
use super::{Callers, Process, Source};
use crate::procfs::status::Status;

/// What a supervisor knew of one process's handlers, kept by the keeper
/// for the next one (keeper/mod.rs). The table is the one that holds
/// whichever way a change still under way goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KnownProcess {
    pub tgid: i32,
    /// Start time, which tells it from a later process with its pid.
    pub start: u64,
    pub table: Vec<(i32, Disposition)>,
}

impl Callers {
    /// Takes over what an earlier supervisor knew (keeper/): those
    /// processes are signalled as if their handler changes had been seen here.
    pub fn import(&mut self, known: Vec<KnownProcess>) {
        for k in known {
            let process = Process {
                table: Table::from_entries(&k.table),
                source: Source::Exec,
                counted: true,
                ..Callers::first_seen(&Status::default(), k.start)
            };
            self.processes.insert(k.tgid, Box::new(process));
        }
    }

    /// What changed since the last call, as a successor should know it;
    /// empty (and no allocation) when nothing did.
    pub fn take_changed(&mut self) -> Vec<KnownProcess> {
        if self.changed.is_empty() {
            return Vec::new();
        }
        let mut tgids = std::mem::take(&mut self.changed);
        tgids.sort_unstable();
        tgids.dedup();
        tgids
            .into_iter()
            .filter_map(|tgid| {
                let p = self.processes.get(&tgid)?;
                let table = match &p.pending {
                    Some(pending) => pending.before.meet(&p.table),
                    None => p.table.clone(),
                };
                Some(KnownProcess { tgid, start: p.start, table: table.entries() })
            })
            .collect()
    }

    /// Forgets every thread and process: the keeper answered handler
    /// changes while this supervisor was stuck, so its tables may be wrong.
    /// Each process is then seen afresh, as a fork child is (/proc, and no
    /// inherited handler signalled), which is never unsafe.
    pub fn forget_all(&mut self) {
        for (&tid, thread) in &self.threads {
            if let Some(signal) = thread.in_flight {
                wait_delivered(tid, signal);
            }
        }
        self.threads.clear();
        self.processes.clear();
    }
}
