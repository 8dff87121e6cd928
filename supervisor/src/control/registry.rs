//! Traces as living resources: their state, operations and status.
//!
//! Semantics follow Inspektor Gadget's Trace controller: `runMode: Auto`
//! starts a Trace when it is created; operations (`start`, `stop`) come from
//! the annotation `gadget.kinvolk.io/operation`, which is consumed, or from
//! the CLI; `stop` on a Trace that is not started sets `operationError`
//! "Not started"; a successful operation clears the previous error; a Trace
//! for another node is listed and never acts.
//!
//! Listeners hold a `TraceHandle`: one atomic load per notification tells
//! them whether the Trace is started, so a stopped Trace costs nearly
//! nothing on the notification path.

use std::collections::{btree_map, BTreeMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::entry::{count_container, retire_in, Entry, ListenerRecord, State};
use super::handle::{Config, Selected, Selection};
use crate::output::events::Sink;
use crate::output::stats::Stats;
use crate::output::status::{self, ContainerLine};
use crate::trace::container::{self, FilterFacts, Origin};
use crate::trace::policy::{OutputMode, Policy, RunMode};
use crate::trace::profile::Trace;
use crate::trace::state::{Source, StateDir};

pub const OPERATION_ANNOTATION: &str = "gadget.kinvolk.io/operation";
pub const OPERATIONS: &[&str] = &["start", "stop"];

/// An operation on a Trace (the annotation or the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    Stop,
}

impl std::str::FromStr for Operation {
    type Err = String;

    /// The `operationError` for anything else, as Inspektor Gadget sets it.
    fn from_str(op: &str) -> Result<Operation, String> {
        match op {
            "start" => Ok(Operation::Start),
            "stop" => Ok(Operation::Stop),
            other => Err(format!("unknown operation {other:?}; accepted: {}", OPERATIONS.join(", "))),
        }
    }
}

/// A live listener, for selecting it again.
struct Attached {
    origin: Origin,
    facts: FilterFacts,
    selection: Arc<Selection>,
}

pub struct Registry {
    pub node: String,
    /// A local launch (`sigvisor run`) acts whatever `spec.node` says.
    any_node: bool,
    traces: Mutex<BTreeMap<String, Entry>>,
    /// Live listeners (locked after `traces`, never before).
    attached: Mutex<Vec<Attached>>,
    /// Where the Traces are saved after each change (`serve`).
    state: std::sync::OnceLock<StateDir>,
    /// The only place File outputs are written (`serve`).
    outputs: std::sync::OnceLock<crate::output::events::OutputDir>,
    /// Where the pods' labels come from, if anywhere.
    pod_labels: Mutex<Option<PodLabels>>,
}

/// A pod's labels by its namespace and name, as far as they are known.
pub type PodLabels = Box<dyn Fn(&str, &str) -> Option<BTreeMap<String, String>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no trace named {0:?}")]
    NotFound(String),
    #[error("trace {0:?} has outputMode {1}: only Stream traces can be followed (File traces append to spec.output)")]
    NotStreaming(String, String),
}

impl Registry {
    pub fn new(node: String, any_node: bool) -> Registry {
        Registry {
            node,
            any_node,
            traces: Mutex::new(BTreeMap::new()),
            attached: Mutex::new(Vec::new()),
            state: std::sync::OnceLock::new(),
            outputs: std::sync::OnceLock::new(),
            pod_labels: Mutex::new(None),
        }
    }

    /// File outputs go inside `dir` from now on, and nowhere else.
    pub fn keep_outputs_in(&self, dir: crate::output::events::OutputDir) {
        let _ = self.outputs.set(dir);
    }

    /// Saves the Traces in `dir` from now on, after every `save_state`.
    pub fn keep_state_in(&self, dir: StateDir) {
        let _ = self.state.set(dir);
        self.save_state();
    }

    /// Saves the Traces as they are now, if they are kept anywhere.
    pub fn save_state(&self) {
        if let Some(dir) = self.state.get() {
            let traces: Vec<(Trace, Source)> =
                self.lock().values().map(|e| (self.view(e), e.source)).collect();
            let mut failed = dir.save(&traces);
            for (name, entry) in self.lock().iter_mut() {
                entry.unsaved = failed.remove(name).map(|e| {
                    format!("not saved in the state directory ({e}): a restarted serve will not have it")
                });
            }
        }
    }

    fn on_node(&self, trace: &Trace) -> bool {
        self.any_node || container::on_node(trace, &self.node)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        crate::shared::lock(&self.traces)
    }

    /// Creates or updates a Trace through the API (`sigvisor apply`), then
    /// performs (and removes) the operation its annotation asks for. A new
    /// `Auto` Trace starts. Saved, it comes back to a restarted serve.
    pub fn apply(&self, trace: Trace, policy: Policy) -> Trace {
        self.put(trace, policy, Source::Applied)
    }

    /// The same for a Trace of the Kubernetes API (`serve --kubernetes`).
    pub fn apply_from_cluster(&self, trace: Trace, policy: Policy) -> Trace {
        self.put(trace, policy, Source::Cluster)
    }

    /// The Traces of the Kubernetes API: name and namespace.
    pub fn from_cluster(&self) -> Vec<(String, String)> {
        let traces = self.lock();
        let cluster = traces.values().filter(|e| e.source == Source::Cluster);
        cluster
            .map(|e| (e.trace.metadata.name.clone(), e.trace.metadata.namespace.clone().unwrap_or_default()))
            .collect()
    }

    /// The same for a Trace of the declared set (the profiles on serve's or
    /// run's command line): saved, it comes back only while declared.
    pub fn declare(&self, trace: Trace, policy: Policy) -> Trace {
        self.put(trace, policy, Source::Declared)
    }

    fn put(&self, mut trace: Trace, policy: Policy, source: Source) -> Trace {
        let operation = trace.metadata.annotations.remove(OPERATION_ANNOTATION);
        trace.status = None;
        let mut traces = self.lock();
        let entry = match traces.entry(trace.metadata.name.clone()) {
            btree_map::Entry::Vacant(slot) => {
                let auto = policy.run_mode == RunMode::Auto;
                let entry = slot.insert(Entry::new(trace, policy, source));
                if auto {
                    self.start(entry);
                }
                entry
            }
            btree_map::Entry::Occupied(slot) => {
                let entry = slot.into_mut();
                entry.source = entry.source.max(source);
                let output_changed = entry.handle.config().policy.output_mode != policy.output_mode
                    || entry.trace.spec.output != trace.spec.output;
                let sink = if output_changed {
                    Sink::prepare(policy.output_mode)
                } else {
                    entry.handle.config().sink.clone()
                };
                // An Auto Trace whose start failed is tried again.
                let retry = policy.run_mode == RunMode::Auto && entry.state == State::NotStarted;
                entry.trace = trace;
                entry.handle.set_config(Config { policy: Arc::new(policy), sink });
                if output_changed && (entry.state == State::Started || retry) {
                    // Started again, so that a new File output is opened now.
                    entry.set_state(State::NotStarted);
                    self.start(entry);
                }
                entry
            }
        };
        if let Some(op) = operation {
            self.operate(entry, &op);
        }
        let name = entry.trace.metadata.name.clone();
        self.reselect(&mut traces);
        let entry = traces.get(&name).expect("just applied");
        self.view(entry)
    }

    /// Performs `start` or `stop` on a Trace; failures land in its
    /// `operationError`, as the cluster controller does.
    pub fn operation(&self, name: &str, op: &str) -> Result<Trace, RegistryError> {
        let mut traces = self.lock();
        let entry = traces.get_mut(name).ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        self.operate(entry, op);
        Ok(self.view(entry))
    }

    fn operate(&self, entry: &mut Entry, op: &str) {
        match op.parse::<Operation>() {
            Ok(Operation::Start) => self.start(entry),
            Ok(Operation::Stop) if entry.state != State::Started => {
                entry.operation_error = "Not started".into()
            }
            Ok(Operation::Stop) => {
                entry.set_state(State::Stopped);
                entry.operation_error.clear();
            }
            Err(error) => entry.operation_error = error,
        }
    }

    fn start(&self, entry: &mut Entry) {
        if entry.state == State::Started {
            entry.operation_error.clear();
            return;
        }
        if !self.on_node(&entry.trace) {
            entry.operation_error =
                format!("trace is for node {:?}, not this node ({:?})", entry.trace.spec.node, self.node);
            return;
        }
        let current = entry.handle.config();
        let sink = match current.policy.output_mode {
            OutputMode::File => match Sink::open_file(&entry.trace.spec.output, self.outputs.get()) {
                Ok(sink) => sink,
                Err(e) => {
                    entry.operation_error = e;
                    return;
                }
            },
            _ => current.sink.clone(),
        };
        entry.handle.set_config(Config { policy: Arc::clone(&current.policy), sink });
        entry.set_state(State::Started);
        entry.operation_error.clear();
    }

    /// Marks every Trace whose processes are all gone (`sigvisor run`).
    pub fn complete_all(&self) {
        for entry in self.lock().values_mut() {
            if entry.state == State::Started {
                entry.set_state(State::Completed);
            }
        }
    }

    pub fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let mut traces = self.lock();
        let entry = traces.remove(name).ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        // A listener keeps the handle until it is selected anew; it never acts again.
        entry.handle.set_active(false);
        entry.handle.set_config(Config { policy: entry.handle.config().policy.clone(), sink: Sink::None });
        self.reselect(&mut traces);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Trace, RegistryError> {
        let traces = self.lock();
        let entry = traces.get(name).ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        Ok(self.view(entry))
    }

    pub fn list(&self) -> Vec<Trace> {
        self.lock().values().map(|e| self.view(e)).collect()
    }

    /// The Trace for a listener: the first, by name, on this node whose
    /// filter selects the container (started or not: a Manual trace started
    /// later acts on it). Registers the listener's counters with it.
    fn select_in(
        &self,
        traces: &mut BTreeMap<String, Entry>,
        origin: &Origin,
        facts: &FilterFacts,
    ) -> Option<Selected> {
        let entry = traces
            .values_mut()
            .find(|e| self.on_node(&e.trace) && origin.matches(e.trace.spec.filter.as_ref()))?;
        let signal = entry.handle.config().policy.signal;
        if let Some(warning) = &facts.warning {
            entry.warning = Some(warning.clone());
        } else if !facts.wait_killable {
            entry.warning = Some(status::NOT_KILLABLE_WARNING.to_owned());
        } else if facts.watched & sigvisor_proto::signal_bit(signal) == 0 {
            entry.warning = Some(status::not_watched_warning(signal));
        }
        let stats = Arc::new(Mutex::new(Stats::default()));
        entry.listeners.push(ListenerRecord { origin: origin.clone(), stats: Arc::clone(&stats) });
        Some((Arc::clone(&entry.handle), stats))
    }

    /// Where the pods' labels come from (`serve --kubernetes`: the API).
    pub fn pod_labels_from(&self, lookup: PodLabels) {
        *crate::shared::lock(&self.pod_labels) = Some(lookup);
    }

    /// A new listener: selected now, and again whenever Traces come and go.
    /// Its pod's labels are the ones its pod has as it arrives.
    pub fn attach(&self, origin: &Origin, facts: &FilterFacts) -> Arc<Selection> {
        let mut origin = origin.clone();
        if let Some(lookup) = crate::shared::lock(&self.pod_labels).as_ref() {
            origin.pod_labels = lookup(origin.namespace(), origin.pod()).unwrap_or_default();
        }
        let origin = &origin;
        let mut traces = self.lock();
        let selection = Arc::new(Selection::default());
        selection.set(self.select_in(&mut traces, origin, facts));
        let attached =
            Attached { origin: origin.clone(), facts: facts.clone(), selection: Arc::clone(&selection) };
        crate::shared::lock(&self.attached).push(attached);
        selection
    }

    /// A listener that ended: its counters fold into its Trace.
    pub fn detach(&self, selection: &Arc<Selection>) {
        let mut traces = self.lock();
        crate::shared::lock(&self.attached).retain(|a| !Arc::ptr_eq(&a.selection, selection));
        if let Some((handle, stats)) = selection.current() {
            retire_in(&mut traces, &handle.name, &stats);
        }
    }

    /// Live listeners that no (live) Trace selects get one if one matches
    /// now: after a Trace was applied or deleted.
    fn reselect(&self, traces: &mut BTreeMap<String, Entry>) {
        for attached in crate::shared::lock(&self.attached).iter() {
            let current = attached.selection.current();
            if current.as_ref().is_some_and(|(handle, _)| traces.contains_key(&handle.name)) {
                continue;
            }
            let selected = self.select_in(traces, &attached.origin, &attached.facts);
            if current.is_some() || selected.is_some() {
                attached.selection.set(selected);
            }
        }
    }

    /// Follows a Stream trace's events.
    pub fn subscribe(&self, name: &str) -> Result<tokio::sync::broadcast::Receiver<Arc<str>>, RegistryError> {
        let traces = self.lock();
        let entry = traces.get(name).ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        let sink = entry.handle.config().sink.clone();
        if !sink.is_stream() {
            return Err(RegistryError::NotStreaming(name.to_owned(), entry.trace.spec.output_mode.clone()));
        }
        Ok(sink.subscribe())
    }

    /// The Trace with its status as of now.
    fn view(&self, entry: &Entry) -> Trace {
        let mut total = entry.finished.clone();
        let mut containers = entry.containers.clone();
        for record in &entry.listeners {
            let stats = crate::shared::lock(&record.stats);
            total.merge(&stats);
            count_container(&mut containers, &record.origin, &stats);
        }
        let containers: Vec<ContainerLine> = containers.into_values().collect();
        let policy = entry.handle.config().policy.clone();
        let elsewhere = (!self.on_node(&entry.trace)).then(|| {
            format!("for node {:?}; this is node {:?}: it never acts here", entry.trace.spec.node, self.node)
        });
        let any_handler = policy.any_handler.then_some(status::ANY_HANDLER_WARNING);
        let warnings: Vec<&str> =
            [elsewhere.as_deref(), entry.warning.as_deref(), entry.unsaved.as_deref(), any_handler]
                .into_iter()
                .flatten()
                .collect();
        let warning = (!warnings.is_empty()).then(|| warnings.join("; "));
        let mut view = status::with_status(
            &entry.trace,
            entry.state.as_str(),
            warning.as_deref(),
            &policy,
            &total,
            &containers,
        );
        if let Some(status) = view.status.as_mut() {
            status.operation_error.clone_from(&entry.operation_error);
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::trace::profile;

    fn trace(name: &str, run_mode: &str, node: &str, annotation: Option<&str>) -> (Trace, Policy) {
        let annotations = annotation
            .map(|op| format!("  annotations:\n    {OPERATION_ANNOTATION}: {op}\n"))
            .unwrap_or_default();
        let text = format!(
            "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: {name}\n{annotations}\
             spec:\n  node: {node}\n  gadget: signal\n  runMode: {run_mode}\n  outputMode: Status\n"
        );
        profile::parse(&text, Path::new("t.yaml")).expect("a valid trace")
    }

    fn state(trace: &Trace) -> (String, String) {
        let status = trace.status.clone().unwrap_or_default();
        (status.state, status.operation_error)
    }

    fn started(s: &str) -> (String, String) {
        (s.to_owned(), String::new())
    }

    #[test]
    fn run_modes_and_operations() {
        let registry = Registry::new("node-a".into(), false);
        let (t, p) = trace("auto", "Auto", "", None);
        assert_eq!(state(&registry.apply(t, p)), started("Started"));
        let (t, p) = trace("manual", "Manual", "node-a", None);
        assert_eq!(state(&registry.apply(t, p)), started(""));
        // Stop on a Trace that is not started is an error, as in Inspektor Gadget.
        let stopped = registry.operation("manual", "stop").unwrap();
        assert_eq!(state(&stopped), (String::new(), "Not started".to_owned()));
        // A successful operation clears the previous error.
        assert_eq!(state(&registry.operation("manual", "start").unwrap()), started("Started"));
        assert_eq!(state(&registry.operation("manual", "stop").unwrap()), started("Stopped"));
        let unknown = registry.operation("manual", "collect").unwrap();
        assert!(unknown.status.unwrap().operation_error.contains("accepted: start, stop"));
        assert!(matches!(registry.operation("nobody", "start"), Err(RegistryError::NotFound(_))));
    }

    #[test]
    fn the_annotation_is_performed_and_consumed() {
        let registry = Registry::new("node-a".into(), false);
        let (t, p) = trace("annotated", "Manual", "", Some("start"));
        let applied = registry.apply(t, p);
        assert_eq!(state(&applied), started("Started"));
        assert!(!applied.metadata.annotations.contains_key(OPERATION_ANNOTATION));
    }

    #[test]
    fn another_nodes_trace_never_acts_here() {
        let registry = Registry::new("node-a".into(), false);
        let (t, p) = trace("elsewhere", "Auto", "node-b", None);
        let applied = registry.apply(t, p);
        let status = applied.status.unwrap();
        assert_eq!(status.state, "");
        assert!(status.operation_error.contains("node-b"), "{status:?}");
        assert!(status.operation_warning.contains("never acts here"), "{status:?}");
        // A local launch acts whatever spec.node says.
        let local = Registry::new("node-a".into(), true);
        let (t, p) = trace("elsewhere", "Auto", "node-b", None);
        assert_eq!(state(&local.apply(t, p)), started("Started"));
    }

    #[test]
    fn completed_when_every_process_is_gone_and_deleted_handles_never_act() {
        let registry = Registry::new("node-a".into(), true);
        let (t, p) = trace("run", "Auto", "", None);
        registry.apply(t, p);
        let facts = FilterFacts { wait_killable: true, watched: u64::MAX, source: "sigvisor", warning: None };
        let selection = registry.attach(&Origin::default(), &facts);
        let (handle, _) = selection.current().expect("selects every container");
        assert!(handle.active());
        registry.complete_all();
        assert_eq!(state(&registry.get("run").unwrap()), started("Completed"));
        assert!(!handle.active());
        registry.delete("run").unwrap();
        assert!(registry.get("run").is_err());
    }
}
