//! The status of this agent's Traces, written back through the status
//! subresource: a change of state or of an operation's error or warning at
//! once (within a tick), the counters at most every `COUNTERS_EVERY`, so
//! that a busy Trace costs the API server a write every few seconds, not
//! one per signal. A merge patch of the status needs no resourceVersion,
//! so it never conflicts with the user's edits of the spec; a write that
//! fails (the API server down) is tried again at the next tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};

use super::traces::Known;
use crate::control::registry::Registry;

const TICK: Duration = Duration::from_millis(500);
const COUNTERS_EVERY: Duration = Duration::from_secs(2);

pub struct Writer {
    client: kube::Client,
    registry: Arc<Registry>,
    known: Arc<Known>,
    written: BTreeMap<String, (Value, Instant)>,
}

impl Writer {
    pub fn new(client: kube::Client, registry: Arc<Registry>, known: Arc<Known>) -> Writer {
        Writer { client, registry, known, written: BTreeMap::new() }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.once().await;
        }
    }

    async fn once(&mut self) {
        let known = self.known.snapshot();
        self.written.retain(|name, _| known.contains_key(name));
        for (name, place) in known {
            let status = match &place.error {
                Some(error) => {
                    json!({"state": "", "output": "", "operationError": error, "operationWarning": ""})
                }
                None => match self.registry.get(&name) {
                    Ok(trace) => of(trace.status.unwrap_or_default()),
                    Err(_) => continue,
                },
            };
            let due = match self.written.get(&name) {
                None => true,
                Some((last, _)) if *last == status => false,
                Some((last, at)) => {
                    let moved = |key: &str| last.get(key) != status.get(key);
                    moved("state")
                        || moved("operationError")
                        || moved("operationWarning")
                        || at.elapsed() >= COUNTERS_EVERY
                }
            };
            if !due {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &place.namespace, &super::trace_resource());
            let patch = json!({"status": status});
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.written.insert(name, (status, Instant::now()));
                }
                Err(e) => tracing::debug!("trace {}/{name}: writing its status: {e}", place.namespace),
            }
        }
    }
}

/// A Trace's status as the resource holds it, with the signals sent so far
/// (the `Signals` column) read from its output.
fn of(status: crate::trace::profile::TraceStatus) -> Value {
    let signals = yaml_serde::from_str::<yaml_serde::Value>(&status.output)
        .ok()
        .and_then(|o| o.get("signalsSent").and_then(yaml_serde::Value::as_u64))
        .unwrap_or(0);
    json!({
        "state": status.state,
        "output": status.output,
        "operationError": status.operation_error,
        "operationWarning": status.operation_warning,
        "signals": signals,
    })
}
