//! A received listener, attached to the Trace that selects its container
//! and served until no process uses its filter any more: the step between
//! the handoff and the notification loop, for `serve` and `run` alike.

use std::sync::Arc;

use sigvisor_proto::Handoff;

use crate::callers::KnownProcess;
use crate::control::registry::Registry;
use crate::keeper::custody::Custody;
use crate::keeper::link::Link;
use crate::output::events::Describer;
use crate::output::stats::Stats;
use crate::path::notify::{self, Context, End};
use crate::path::pipeline::Pipeline;
use crate::sys::seccomp::Listener;
use crate::trace::container::{FilterFacts, Origin};

/// How long an ended listener, or a stopping serve, waits for the last
/// stacks to be named: a binary's load has a deadline of its own.
pub const STACKS_SETTLE: std::time::Duration =
    std::time::Duration::from_secs(crate::stacks::loader::DEADLINE.as_secs() + 1);

/// Whether the keeper holds a copy of the listener.
pub enum Keeping {
    /// No keeper: the listener's calls fail if this supervisor dies.
    None,
    /// A new listener: the keeper gets a copy now.
    New(Arc<Link>),
    /// Taken back from the keeper, with what the last supervisor knew of
    /// its processes' handlers.
    Adopted(Custody, Vec<KnownProcess>),
}

/// Serves a handed-over listener, under the Trace that selects its
/// container if any, until no process uses its filter any more; a listener
/// whose loop fails goes (back) to the keeper. `runtime`: the program that
/// handed it over, when known (`runc`, `crun`).
pub async fn supervise(
    handoff: Handoff,
    peer: &str,
    runtime: Option<&str>,
    registry: &Registry,
    ctx: Arc<Context>,
    keeping: Keeping,
) -> Stats {
    let facts = FilterFacts::of(&handoff);
    let note = (!facts.wait_killable && facts.warning.is_none()).then(|| not_killable_note(runtime));
    let origin = Origin { filter: facts.source, note: note.unwrap_or_default(), ..Origin::of(&handoff) };
    let (wait_killable, watched) = (facts.wait_killable, facts.watched);
    let selection = registry.attach(&origin, &facts);
    let label = origin.label();
    match &selection.current() {
        Some((trace, _)) => tracing::info!(
            "{label}: listener from {peer}, trace {}, {}",
            trace.name,
            if wait_killable { "precise" } else { "filter not killable: observe only" }
        ),
        None => tracing::info!("{label}: listener from {peer}, selected by no trace: answered at once"),
    }
    // An OCI runtime's init runs under the filter until it execs the
    // container's process; sigvisor-launch makes no trapped call before.
    let runtime_init = (!handoff.metadata.launcher).then_some(origin.pid);
    let describer = Describer::new(registry.node.clone(), origin);
    let (custody, known) = match keeping {
        Keeping::None => (None, Vec::new()),
        Keeping::New(link) => (link.keep(&handoff, runtime), Vec::new()),
        Keeping::Adopted(custody, known) => (Some(custody), known),
    };
    let mut handler = Pipeline::new(
        Arc::clone(&selection),
        wait_killable,
        watched,
        runtime_init,
        describer,
        custody.clone(),
    );
    handler.import(known);
    let stacks = handler.stacks_pending();
    // A task of its own, so that a panic in it ends here, not in the process.
    let task = tokio::spawn(notify::supervise(Listener::new(handoff.listener), handler, ctx));
    let (stats, end) = task.await.unwrap_or_else(|e| {
        tracing::error!("{label}: the listener's task failed: {e}");
        (Stats::default(), End::Failed)
    });
    // Its last calls' stacks are still being named: they count in its
    // Trace before the listener's counters are folded in.
    stacks.settle(STACKS_SETTLE).await;
    registry.detach(&selection);
    match (custody, end) {
        (Some(custody), End::Hangup) => custody.release(),
        (Some(custody), End::Failed) => {
            tracing::warn!("{label}: handed to the keeper, which answers its calls from now on");
            custody.give_back();
        }
        (None, _) => {}
    }
    tracing::info!(
        "{label}: done: {} notifications, {} signals, skipped {}",
        stats.notifications,
        stats.signals,
        stats.skipped.iter().map(|(why, n)| format!("{why}: {n}")).collect::<Vec<_>>().join(", ")
    );
    stats
}

/// Said once per container whose filter cannot take a signal: which runtime
/// loaded it so, and the way to precise signals.
fn not_killable_note(runtime: Option<&str>) -> String {
    let runtime = runtime.filter(|r| *r != "sigvisor-launch");
    format!(
        "observe only: {} loaded the filter without SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV \
         (runc before 1.5 cannot set it); for precise signals run the container through the shim, \
         which wraps its entrypoint: sigvisor oci runtime --runtime {} (docs/containers.md)",
        runtime.unwrap_or("the runtime"),
        runtime.unwrap_or("RUNTIME")
    )
}
