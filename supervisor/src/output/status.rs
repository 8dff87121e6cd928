//! The end of the data path: a Trace's `status`, filled from its counters.

use std::collections::BTreeMap;

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::output::stats::Stats;
use crate::trace::policy::Policy;
use crate::trace::profile::{Trace, TraceStatus};

/// Threads listed in `status.output`, busiest first.
const TOP_THREADS: usize = 20;
/// Stacks listed in `status.output`, most frequent first.
const TOP_STACKS: usize = 20;

/// `status.output`: a YAML document as a string (the CRD's field is a
/// string), readable by people and by `yaml.safe_load` alike.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    signal: String,
    syscalls: &'a [String],
    notifications: u64,
    signals_sent: u64,
    skipped: BTreeMap<String, u64>,
    /// Callers that went away before their answer.
    withdrawn: u64,
    errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<&'a str>,
    /// How sigvisor knows each process's signal handlers.
    handlers: Handlers,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    containers: &'a [ContainerLine],
    threads: Vec<ThreadLine<'a>>,
    /// Who made the calls: the distinct stacks, most frequent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stacks: Vec<StackLine<'a>>,
    /// The distinct stacks beyond the most frequent, and their calls (a
    /// Stream or File output carries every call's stack).
    #[serde(skip_serializing_if = "Option::is_none")]
    stacks_omitted: Option<StacksOmitted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stacks_missed: Option<StacksMissed<'a>>,
}

#[derive(Serialize)]
struct StacksOmitted {
    stacks: u64,
    calls: u64,
}

#[derive(Serialize)]
struct StackLine<'a> {
    count: u64,
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    paths: &'a std::collections::BTreeSet<String>,
    frames: &'a [String],
}

#[derive(Serialize)]
struct StacksMissed<'a> {
    count: u64,
    /// How many for each reason.
    reasons: &'a BTreeMap<String, u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Handlers {
    /// Handler changes and execs trapped to follow them (not in `notifications`).
    calls: u64,
    /// execs seen: from each on, the process's handlers are known exactly.
    execs: u64,
    /// Processes first seen without an exec (fork children): their handlers
    /// are inherited, never signalled until they install one themselves.
    forked: u64,
    /// Decisions that read /proc, for a signal the filter does not watch.
    proc_reads: u64,
}

/// One container's share of a trace served by `sigvisor serve`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ContainerLine {
    pub id: String,
    pub name: String,
    /// The pod and its namespace, from the CRI annotations (Kubernetes).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub bundle: String,
    pub pid: i32,
    /// Where what sigvisor knows of the container's filter came from:
    /// sigvisor (its metadata), config.json (the runtime's), or unknown.
    pub filter: String,
    /// Said once for this container (how to get precise signals, say).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub notifications: u64,
    pub signals: u64,
    pub skipped: BTreeMap<String, u64>,
}

impl ContainerLine {
    pub fn add(&mut self, stats: &Stats) {
        self.notifications += stats.notifications;
        self.signals += stats.signals;
        for (why, n) in &stats.skipped {
            *self.skipped.entry(why.to_string()).or_default() += n;
        }
    }
}

#[derive(Serialize)]
struct ThreadLine<'a> {
    tid: i32,
    /// Unknown (0, empty) for threads never looked at (observe only).
    #[serde(skip_serializing_if = "is_zero")]
    pid: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    comm: &'a str,
    notifications: u64,
    signals: u64,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

pub fn summary(policy: &Policy, stats: &Stats, containers: &[ContainerLine]) -> String {
    let mut threads: Vec<ThreadLine> = stats
        .threads
        .iter()
        .map(|(&tid, t)| ThreadLine {
            tid,
            pid: t.pid,
            comm: &t.name,
            notifications: t.notifications,
            signals: t.signals,
        })
        .collect();
    threads.sort_by(|a, b| b.notifications.cmp(&a.notifications).then(a.tid.cmp(&b.tid)));
    threads.truncate(TOP_THREADS);
    let (stacks, stacks_omitted) = top_stacks(stats);
    let summary = Summary {
        signal: if policy.send_signal { sigvisor_proto::signal_name(policy.signal) } else { "none".into() },
        syscalls: &policy.syscalls,
        notifications: stats.notifications,
        signals_sent: stats.signals,
        skipped: stats.skipped.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        withdrawn: stats.withdrawn,
        errors: stats.errors,
        last_error: stats.last_error.as_deref(),
        handlers: Handlers {
            calls: stats.handlers.handler_calls,
            execs: stats.handlers.exec,
            forked: stats.handlers.proc,
            proc_reads: stats.handlers.proc_reads,
        },
        containers,
        threads,
        stacks,
        stacks_omitted,
        stacks_missed: (stats.stacks_missed > 0)
            .then_some(StacksMissed { count: stats.stacks_missed, reasons: &stats.stack_misses }),
    };
    yaml_serde::to_string(&summary).unwrap_or_else(|e| format!("unrenderable summary: {e}\n"))
}

/// The most frequent stacks, and what the rest add up to.
fn top_stacks(stats: &Stats) -> (Vec<StackLine<'_>>, Option<StacksOmitted>) {
    let mut stacks: Vec<StackLine> = stats
        .stacks
        .iter()
        .map(|(frames, n)| StackLine { count: n.count, paths: &n.paths, frames })
        .collect();
    stacks.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.frames.cmp(b.frames)));
    let rest = stacks.split_off(stacks.len().min(TOP_STACKS));
    let omitted = (!rest.is_empty())
        .then(|| StacksOmitted { stacks: rest.len() as u64, calls: rest.iter().map(|s| s.count).sum() });
    (stacks, omitted)
}

/// The warning a trace carries when its filter cannot wait killable.
pub const NOT_KILLABLE_WARNING: &str = "the seccomp filter does not wait killable \
    (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV is missing: Linux < 5.19, or a runtime that cannot set it); \
    a signal would interrupt the trapped syscall (EINTR, a leaked fd, or a restart loop), \
    so notifications are answered without a signal";

/// The warning of a Trace with `handler: any`.
pub const ANY_HANDLER_WARNING: &str = "handler: any: crash handlers are signalled too \
    (Go's runtime, the JVM and Python's faulthandler die of the signal)";

/// The warning a trace carries when its filter does not watch its signal's handler.
pub fn not_watched_warning(signal: i32) -> String {
    format!(
        "the seccomp filter does not trap handler changes for {} (a runtime's own filter without \
         sigvisor's rules, or one built for another signal): handlers are read from /proc at every \
         call, and a crash handler is recognised only by its process catching a fault signal too",
        sigvisor_proto::signal_name(signal)
    )
}

/// The Trace with `status` filled: state, warning and summary.
pub fn with_status(
    trace: &Trace,
    state: &str,
    warning: Option<&str>,
    policy: &Policy,
    stats: &Stats,
    containers: &[ContainerLine],
) -> Trace {
    let mut trace = trace.clone();
    trace.status = Some(TraceStatus {
        state: state.to_owned(),
        output: summary(policy, stats, containers),
        operation_error: String::new(),
        operation_warning: warning.unwrap_or_default().to_owned(),
    });
    trace
}

/// Writes Traces as a YAML stream to `file`, or to stderr.
pub fn write_status(traces: &[Trace], file: Option<&Path>) -> Result<()> {
    let mut yaml = String::new();
    for trace in traces {
        yaml.push_str("---\n");
        yaml.push_str(&yaml_serde::to_string(trace).context("rendering the Trace status")?);
    }
    match file {
        Some(path) => {
            std::fs::write(path, yaml).with_context(|| format!("writing the status to {}", path.display()))
        }
        None => {
            eprint!("{yaml}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Nothing is left out silently: beyond the 20 most frequent stacks,
    /// the status counts the stacks and calls it does not list.
    #[test]
    fn the_stacks_left_out_are_counted() {
        let mut stats = Stats::default();
        for i in 0..25u64 {
            let frames: Arc<[String]> = Arc::from(vec![format!("close_from_{i}")]);
            for _ in 0..=i {
                stats.stack(Arc::clone(&frames), None);
            }
        }
        let text = "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata: {name: t}\nspec: {gadget: signal}\n";
        let (_, policy) = crate::trace::profile::parse(text, Path::new("t.yaml")).expect("a profile");
        let text = summary(&policy, &stats, &[]);
        let parsed: yaml_serde::Value = yaml_serde::from_str(&text).expect("YAML");
        assert_eq!(parsed["stacks"].as_sequence().map(Vec::len), Some(20), "{text}");
        // The five least frequent: 1 + 2 + 3 + 4 + 5 calls.
        assert_eq!(parsed["stacksOmitted"]["stacks"].as_u64(), Some(5), "{text}");
        assert_eq!(parsed["stacksOmitted"]["calls"].as_u64(), Some(15), "{text}");
        assert!(!text.contains("close_from_4\n"), "{text}");
        let few = Stats::default();
        assert!(!summary(&policy, &few, &[]).contains("stacksOmitted"));
    }
}
