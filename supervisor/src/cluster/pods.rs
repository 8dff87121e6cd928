//! The pods of this node (`spec.nodeName`), for the labels `spec.filter`
//! selects by: a runtime never sees a pod's labels (the CRI passes its name
//! and namespace as annotations, not its labels), so they come from the
//! API. A reflector keeps them in memory; a container arriving looks its
//! pod up there, never in the API.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt as _};

use crate::control::registry::PodLabels;

/// Keeps the pods of `node` in a store until the process ends; returns the
/// lookup and the task that feeds it.
pub fn watch(client: kube::Client, node: &str) -> (PodLabels, impl std::future::Future<Output = ()>) {
    let api: Api<Pod> = Api::all(client);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let events = watcher::watcher(api, config).default_backoff().reflect(writer);
    let feed = async move {
        let mut events = events.boxed();
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                tracing::warn!("watching the pods of this node: {e}");
            }
        }
    };
    (Box::new(move |namespace: &str, pod: &str| labels(&store, namespace, pod)), feed)
}

fn labels(store: &Store<Pod>, namespace: &str, pod: &str) -> Option<BTreeMap<String, String>> {
    if pod.is_empty() {
        return None;
    }
    store.get(&ObjectRef::new(pod).within(namespace)).and_then(|p| p.metadata.labels.clone())
}
