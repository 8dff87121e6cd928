//! The watch of this node's Traces. Each one is read exactly as a profile
//! file is (`trace::profile::parse`: what a file may not say, the API may
//! not either) and applied to the registry, which performs its operation
//! annotation; the annotation is then removed from the object, as
//! Inspektor Gadget did. A deleted Trace stops at once. After a dropped
//! watch (or `410 Gone`) the watcher lists again; a Trace missing from
//! that list was deleted meanwhile, and is deleted here too.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use serde_json::{json, Value};

use crate::control::registry::{Registry, OPERATION_ANNOTATION};

/// Where one Trace of the cluster lives, and why it is not applied if it
/// is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub namespace: String,
    /// The Trace could not be read: its status says so.
    pub error: Option<String>,
    /// The spec's generation applied: the agent's own status writes come
    /// back as watch events of the same generation, and change nothing.
    pub generation: Option<i64>,
}

/// The Traces this agent took from the cluster, by name (the registry's
/// key): it owns their status.
pub struct Known(Mutex<BTreeMap<String, Place>>);

impl Known {
    /// Those an earlier serve kept (restored from the state directory): a
    /// re-list that lacks them deletes them.
    pub fn restored(registry: &Registry) -> Known {
        let places = registry.from_cluster().into_iter();
        Known(Mutex::new(
            places
                .map(|(name, namespace)| (name, Place { namespace, error: None, generation: None }))
                .collect(),
        ))
    }

    pub fn snapshot(&self) -> BTreeMap<String, Place> {
        crate::shared::lock(&self.0).clone()
    }
}

/// Watches the Traces whose `spec.node` is `node` until the process ends.
pub async fn watch(client: kube::Client, registry: Arc<Registry>, known: Arc<Known>, node: String) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &super::trace_resource());
    let config = watcher::Config::default().fields(&format!("spec.node={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed: Option<HashSet<String>> = None;
    tracing::info!("watching the Traces of node {node} in the Kubernetes API");
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(object)) => {
                if let (Some(listed), Some(name)) = (listed.as_mut(), object.metadata.name.clone()) {
                    listed.insert(name);
                }
                apply(&client, &registry, &known, object).await;
            }
            Ok(Event::InitDone) => {
                let listed = listed.take().unwrap_or_default();
                let gone: Vec<String> =
                    known.snapshot().into_keys().filter(|n| !listed.contains(n)).collect();
                for name in gone {
                    delete(&registry, &known, &name);
                }
            }
            Ok(Event::Apply(object)) => apply(&client, &registry, &known, object).await,
            Ok(Event::Delete(object)) => {
                if let Some(name) = object.metadata.name.as_deref() {
                    delete(&registry, &known, name);
                }
            }
            // The watcher tries again, with a backoff.
            Err(e) => tracing::warn!("watching Traces: {e}"),
        }
    }
}

async fn apply(client: &kube::Client, registry: &Registry, known: &Known, object: DynamicObject) {
    let (Some(name), Some(namespace)) = (object.metadata.name.clone(), object.metadata.namespace.clone())
    else {
        return;
    };
    let operation = object.metadata.annotations.as_ref().and_then(|a| a.get(OPERATION_ANNOTATION)).cloned();
    let generation = object.metadata.generation;
    {
        let known = crate::shared::lock(&known.0);
        let ours = known.get(&name);
        if operation.is_none() && generation.is_some() && ours.is_some_and(|p| p.generation == generation) {
            return;
        }
        if ours.is_some_and(|p| p.namespace != namespace) || (ours.is_none() && registry.get(&name).is_ok()) {
            tracing::warn!(
                "trace {namespace}/{name}: a Trace named {name} is already on this node (from another namespace \
                 or from serve's profiles): left alone; names are unique per node"
            );
            return;
        }
    }
    let text = profile_text(&object);
    let place = match crate::trace::profile::parse(&text, Path::new(&format!("trace {namespace}/{name}"))) {
        Ok((trace, policy)) => {
            let trace = registry.apply_from_cluster(trace, policy);
            let state = trace.status.unwrap_or_default().state;
            if let Some(op) = &operation {
                tracing::info!("trace {namespace}/{name}: operation {op}: state {state:?}");
            }
            Place { namespace: namespace.clone(), error: None, generation }
        }
        Err(e) => {
            // It acts no more: what it asks cannot be done.
            let _ = registry.delete(&name);
            tracing::warn!("{e}");
            Place { namespace: namespace.clone(), error: Some(e.to_string()), generation }
        }
    };
    crate::shared::lock(&known.0).insert(name.clone(), place);
    registry.save_state();
    if operation.is_some() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &super::trace_resource());
        let consumed = json!({"metadata": {"annotations": {OPERATION_ANNOTATION: null}}});
        if let Err(e) = api.patch(&name, &PatchParams::default(), &Patch::Merge(&consumed)).await {
            tracing::warn!("trace {namespace}/{name}: removing the operation annotation: {e}");
        }
    }
}

fn delete(registry: &Registry, known: &Known, name: &str) {
    if crate::shared::lock(&known.0).remove(name).is_some() {
        let _ = registry.delete(name);
        registry.save_state();
        tracing::info!("trace {name}: deleted in the cluster, stopped");
    }
}

/// The object as a profile: what the API server adds on its own (other
/// metadata, the status it holds) left out.
fn profile_text(object: &DynamicObject) -> String {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        let resource = super::trace_resource();
        map.insert("apiVersion".into(), resource.api_version.into());
        map.insert("kind".into(), resource.kind.into());
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            const KEPT: &[&str] = &[
                "name",
                "namespace",
                "labels",
                "annotations",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
            ];
            meta.retain(|k, _| KEPT.contains(&k.as_str()));
        }
    }
    value.to_string()
}
