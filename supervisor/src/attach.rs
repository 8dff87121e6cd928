//! A received listener, attached to the Trace that selects its container
//! and served until no process uses its filter any more: the step between
//! the handoff and the notification loop, for `serve` and `run` alike.

use std::sync::Arc;

use sigvisor_proto::Handoff;

use crate::container::{FilterFacts, Origin};
use crate::events::Describer;
use crate::notify::{self, Context};
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::stats::Stats;
use crate::sys::seccomp::Listener;

/// Serves a handed-over listener, under the Trace that selects its
/// container if any, until no process uses its filter any more. `runtime`:
/// the program that handed it over, when known (`runc`, `crun`).
pub async fn supervise(
    handoff: Handoff,
    peer: &str,
    runtime: Option<&str>,
    registry: &Registry,
    ctx: Arc<Context>,
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
    let handler = Pipeline::new(Arc::clone(&selection), wait_killable, watched, runtime_init, describer);
    let stats = notify::supervise(Listener::new(handoff.listener), handler, ctx).await;
    registry.detach(&selection);
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
