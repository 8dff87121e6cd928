//! One Trace as the registry keeps it: its state, its operation's error
//! and warnings, and the counters of the listeners it selected (live ones
//! read at each view, finished ones folded in when they end).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::handle::{Config, TraceHandle};
use crate::output::events::Sink;
use crate::output::stats::Stats;
use crate::output::status::ContainerLine;
use crate::trace::container::Origin;
use crate::trace::policy::Policy;
use crate::trace::profile::Trace;
use crate::trace::state::Source;

/// One listener's share of a Trace, kept for the status after it ends.
pub struct ListenerRecord {
    pub origin: Origin,
    pub stats: Arc<Mutex<Stats>>,
}

/// `status.state`, as Inspektor Gadget spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    NotStarted,
    Started,
    Stopped,
    /// Every process it supervised is gone (`sigvisor run`).
    Completed,
}

impl State {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            State::NotStarted => "",
            State::Started => "Started",
            State::Stopped => "Stopped",
            State::Completed => "Completed",
        }
    }
}

pub(super) struct Entry {
    pub(super) trace: Trace,
    /// Declared (a profile on the command line) or applied through the API.
    pub(super) source: Source,
    pub(super) handle: Arc<TraceHandle>,
    pub(super) state: State,
    pub(super) operation_error: String,
    pub(super) warning: Option<String>,
    /// Why its last save to the state directory failed.
    pub(super) unsaved: Option<String>,
    /// Listeners still running; their counters are read live.
    pub(super) listeners: Vec<ListenerRecord>,
    /// What finished listeners counted, folded in when they ended.
    pub(super) finished: Stats,
    pub(super) containers: BTreeMap<String, ContainerLine>,
}

/// Folds an ended listener's counters into its Trace (if it still exists).
pub(super) fn retire_in(traces: &mut BTreeMap<String, Entry>, trace: &str, stats: &Arc<Mutex<Stats>>) {
    let Some(entry) = traces.get_mut(trace) else { return };
    let Some(at) = entry.listeners.iter().position(|r| Arc::ptr_eq(&r.stats, stats)) else { return };
    let record = entry.listeners.swap_remove(at);
    let counted = crate::shared::lock(&record.stats);
    entry.finished.merge(&counted);
    count_container(&mut entry.containers, &record.origin, &counted);
}

/// Adds one listener's counters to a container's line.
pub(super) fn count_container(
    containers: &mut BTreeMap<String, ContainerLine>,
    origin: &Origin,
    stats: &Stats,
) {
    if origin.id.is_empty() {
        return;
    }
    containers
        .entry(origin.label())
        .or_insert_with(|| ContainerLine {
            id: origin.id.clone(),
            name: origin.name().to_owned(),
            pod: origin.pod().to_owned(),
            namespace: origin.namespace().to_owned(),
            bundle: origin.bundle.clone(),
            pid: origin.pid,
            filter: origin.filter.to_owned(),
            note: origin.note.clone(),
            ..ContainerLine::default()
        })
        .add(stats);
}

impl Entry {
    pub(super) fn new(trace: Trace, policy: Policy, source: Source) -> Entry {
        let sink = Sink::prepare(policy.output_mode);
        let handle = TraceHandle::new(trace.metadata.name.clone(), Config { policy: Arc::new(policy), sink });
        Entry {
            trace,
            source,
            handle: Arc::new(handle),
            state: State::NotStarted,
            operation_error: String::new(),
            warning: None,
            unsaved: None,
            listeners: Vec::new(),
            finished: Stats::default(),
            containers: BTreeMap::new(),
        }
    }

    pub(super) fn set_state(&mut self, state: State) {
        self.handle.set_active(state == State::Started);
        self.state = state;
    }
}
