//! The Kubernetes API as a source of Traces (`serve --kubernetes`): the
//! node agent Inspektor Gadget was. It watches the Traces of its node (by
//! the selectable field `spec.node`), applies and deletes them in the
//! registry, performs their operation annotation and removes it, and writes
//! their status back through the status subresource; and keeps the labels
//! of its pods, which `spec.filter.labels` selects by.
//!
//! The API is never on the syscall path: every container stays supervised
//! as before while the API server is down or slow; the watch starts again
//! with a backoff, re-lists, and the status catches up.

mod pods;
mod status;
mod traces;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use kube::core::{ApiResource, GroupVersionKind};

use crate::control::registry::Registry;

/// The Trace resource (deploy/crd.yaml).
pub fn trace_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gadget.kinvolk.io", "v1alpha1", "Trace"),
        "traces",
    )
}

/// A client from `kubeconfig`, else the user's (`KUBECONFIG`,
/// `~/.kube/config`), else the pod's in-cluster configuration.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: not in a pod, and no KUBECONFIG or ~/.kube/config; give --kubeconfig",
        )?,
    };
    kube::Client::try_from(config).context("a Kubernetes client")
}

/// Runs the agent for `node` until the process ends: the watch of its
/// Traces, the writer of their status, and the pods' labels.
pub async fn run(client: kube::Client, registry: Arc<Registry>, node: String) {
    let (labels, feed) = pods::watch(client.clone(), &node);
    registry.pod_labels_from(labels);
    tokio::spawn(feed);
    let known = Arc::new(traces::Known::restored(&registry));
    let writer = status::Writer::new(client.clone(), Arc::clone(&registry), Arc::clone(&known));
    tokio::spawn(writer.run());
    traces::watch(client, registry, known, node).await;
}
