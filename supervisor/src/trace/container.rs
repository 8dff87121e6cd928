//! Where a listener comes from, and which Trace it falls under.
//!
//! The OCI state carries the container id, bundle, init pid and annotations.
//! Kubernetes' names reach the runtime only as annotations set by the CRI
//! runtime (containerd and CRI-O spell them differently); `spec.filter`
//! matches against those.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sigvisor_proto::Handoff;

use crate::trace::profile::{ContainerFilter, Trace};

/// The annotation the shim writes with the name an engine without the CRI
/// gives a container (docker's `--name`: commands/docker.rs).
pub const ENGINE_NAME: &str = "io.sigvisor.container-name";
/// Annotation keys, containerd's first, then CRI-O's, then the shim's.
const CONTAINER_NAME: &[&str] =
    &["io.kubernetes.cri.container-name", "io.kubernetes.container.name", ENGINE_NAME];
const POD_NAME: &[&str] = &["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"];
const POD_NAMESPACE: &[&str] = &["io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"];

/// Process names of OCI runtimes' init processes, which run under the
/// container's filter from the time it is loaded until they exec the
/// container's process. They must never be signalled: runc's init is a Go
/// program whose runtime handler dies of a sent SIGILL.
/// A trailing `*` makes a prefix.
const RUNTIME_INIT_NAMES: &[&str] = &["runc:[*", "runc", "crun", "youki*", "sigvisor-launch"];

/// What sigvisor knows of a listener's filter, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterFacts {
    /// Loaded with `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`: signals may be sent.
    pub wait_killable: bool,
    /// The signals whose handler changes it traps (a mask).
    pub watched: u64,
    /// Where this came from, for the status: `sigvisor` (the handoff's
    /// metadata), `config.json` (the runtime's own configuration), or
    /// `unknown`.
    pub source: &'static str,
    /// Why nothing could be learnt, for the Trace's operationWarning.
    pub warning: Option<String>,
}

impl FilterFacts {
    /// From the handoff's metadata when sigvisor wrote it; otherwise from
    /// the runtime's own `BUNDLE/config.json`, which the runtime loaded the
    /// filter from: `linux.seccomp.flags` says whether it waits killable.
    /// A bundle that cannot be read is observe-only, never a guess.
    pub fn of(handoff: &Handoff) -> FilterFacts {
        let meta = &handoff.metadata;
        if handoff.metadata_is_ours {
            return FilterFacts {
                wait_killable: meta.wait_killable,
                watched: meta.watched_signals,
                source: "sigvisor",
                warning: None,
            };
        }
        let bundle = handoff.state.state().bundle();
        let config = bundle.join("config.json");
        let read = Some(&config)
            .filter(|_| bundle.is_absolute())
            .ok_or_else(|| "no bundle is named".to_owned())
            .and_then(|config| read_config(config));
        match read {
            Ok((config, _)) => {
                let flags = config.pointer("/linux/seccomp/flags").and_then(|f| f.as_array());
                let killable = flags
                    .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV")));
                FilterFacts { wait_killable: killable, watched: 0, source: "config.json", warning: None }
            }
            Err(e) => FilterFacts {
                wait_killable: false,
                watched: 0,
                source: "unknown",
                warning: Some(format!(
                    "the handoff carries no sigvisor metadata and the runtime's {} cannot be read ({e}): \
                     whether the filter waits killable is unknown, so notifications are answered without a signal",
                    config.display()
                )),
            },
        }
    }
}

/// Runtimes write a few kilobytes; CRI annotations add a few more.
const MAX_CONFIG: u64 = 1 << 20;

/// A bundle's `config.json`, and who may write it (its metadata), read
/// within bounds: never through a link, never waiting on a FIFO, a regular
/// file of at most `MAX_CONFIG` bytes.
pub fn read_config(path: &Path) -> Result<(serde_json::Value, std::fs::Metadata), String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_CONFIG {
        return Err(format!("{} is not a regular file of at most {MAX_CONFIG} bytes", path.display()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let config = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((config, meta))
}

/// The origin of one listener.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Container id; empty for a plain `sigvisor-launch`.
    pub id: String,
    pub bundle: String,
    /// The container's init pid as the runtime saw it (the launcher's own pid).
    pub pid: i32,
    pub annotations: HashMap<String, String>,
    /// Its pod's labels, from the Kubernetes API (`serve --kubernetes`):
    /// pod labels never reach the runtime.
    pub pod_labels: BTreeMap<String, String>,
    /// Where what sigvisor knows of the filter came from (`FilterFacts::source`).
    pub filter: &'static str,
    /// What the status says once about this container (e.g. how to get
    /// precise signals where the runtime's filter cannot take one).
    pub note: String,
}

impl Origin {
    pub fn of(handoff: &Handoff) -> Origin {
        let state = handoff.state.state();
        Origin {
            id: state.id().clone(),
            bundle: state.bundle().display().to_string(),
            pid: state.pid().unwrap_or(*handoff.state.pid()),
            annotations: state.annotations().clone().unwrap_or_default(),
            pod_labels: BTreeMap::new(),
            filter: "",
            note: String::new(),
        }
    }

    fn annotation(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.annotations.get(*k)).map(String::as_str)
    }

    /// Its pod's name, from the CRI annotations; empty outside Kubernetes.
    pub fn pod(&self) -> &str {
        self.annotation(POD_NAME).unwrap_or_default()
    }

    /// Its pod's namespace, from the CRI annotations; empty outside Kubernetes.
    pub fn namespace(&self) -> &str {
        self.annotation(POD_NAMESPACE).unwrap_or_default()
    }

    /// The container's name: the CRI annotation, else its id.
    pub fn name(&self) -> &str {
        self.annotation(CONTAINER_NAME).unwrap_or(&self.id)
    }

    /// How logs and status name it.
    pub fn label(&self) -> String {
        if self.id.is_empty() {
            format!("pid {}", self.pid)
        } else {
            format!("container {} (pid {})", self.name(), self.pid)
        }
    }

    /// Whether `filter` selects this container; empty fields match anything,
    /// `labels` must all be present among its pod's labels or its
    /// annotations (docker's labels are there).
    pub fn matches(&self, filter: Option<&ContainerFilter>) -> bool {
        let Some(f) = filter else { return true };
        let field = |want: &str, keys: &[&str]| want.is_empty() || self.annotation(keys) == Some(want);
        (f.container_name.is_empty() || f.container_name == self.name() || f.container_name == self.id)
            && field(&f.podname, POD_NAME)
            && field(&f.namespace, POD_NAMESPACE)
            && f.labels.iter().all(|(k, v)| self.pod_labels.get(k).or(self.annotations.get(k)) == Some(v))
    }
}

/// The program that connected (`runc`, `crun`, `sigvisor-launch`), from
/// its process name: runc's processes are named `runc:[1:CHILD]` and the like.
pub fn runtime_name(pid: i32) -> Option<String> {
    let comm = crate::procfs::comm(pid)?;
    let name = comm.split(":[").next()?.to_owned();
    (!name.is_empty()).then_some(name)
}

/// Whether a Trace is for this node: an empty `spec.node` is for any node.
pub fn on_node(trace: &Trace, node: &str) -> bool {
    trace.spec.node.is_empty() || trace.spec.node == node
}

/// Whether a process name is an OCI runtime's init (see RUNTIME_INIT_NAMES).
pub fn is_runtime_init(process_name: &str) -> bool {
    RUNTIME_INIT_NAMES.iter().any(|name| match name.strip_suffix('*') {
        Some(prefix) => process_name.starts_with(prefix),
        None => process_name == *name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime's handoff (no sigvisor metadata) for a bundle at `bundle`.
    fn runtime_handoff(bundle: &std::path::Path) -> Handoff {
        let message = serde_json::json!({
            "ociVersion": "1.0.2-dev", "fds": ["seccompFd"], "pid": 7, "metadata": "",
            "state": {"ociVersion": "1.0.2-dev", "id": "c1", "status": "creating", "pid": 7,
                      "bundle": bundle},
        });
        let fd = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        sigvisor_proto::decode(message.to_string().as_bytes(), vec![fd]).unwrap()
    }

    #[test]
    fn a_runtimes_own_config_is_believed_and_an_unreadable_one_never_guessed() {
        let bundle = std::env::temp_dir().join(format!("sigvisor-facts-{}", std::process::id()));
        std::fs::create_dir_all(&bundle).unwrap();
        let facts = FilterFacts::of(&runtime_handoff(&bundle));
        assert_eq!((facts.wait_killable, facts.source), (false, "unknown"));
        assert!(facts.warning.as_deref().is_some_and(|w| w.contains("config.json")), "{facts:?}");
        let config = |flags: serde_json::Value| {
            let text = serde_json::json!({"ociVersion": "1.0.2", "linux": {"seccomp": {"flags": flags}}});
            std::fs::write(bundle.join("config.json"), text.to_string()).unwrap();
            FilterFacts::of(&runtime_handoff(&bundle))
        };
        let killable = config(serde_json::json!(["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]));
        assert_eq!((killable.wait_killable, killable.source, killable.warning), (true, "config.json", None));
        assert!(!config(serde_json::json!([])).wait_killable);
        std::fs::remove_dir_all(&bundle).unwrap();
    }

    #[test]
    fn filters_match_cri_annotations() {
        let origin = Origin {
            id: "abc".into(),
            annotations: [
                ("io.kubernetes.cri.container-name", "web"),
                ("io.kubernetes.cri.sandbox-name", "web-7d9"),
                ("io.kubernetes.cri.sandbox-namespace", "shop"),
                ("team", "a"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Origin::default()
        };
        let mut f = ContainerFilter::default();
        assert!(origin.matches(Some(&f)));
        assert_eq!((origin.pod(), origin.namespace(), origin.name()), ("web-7d9", "shop", "web"));
        f.container_name = "web".into();
        f.namespace = "shop".into();
        f.labels.insert("team".into(), "a".into());
        assert!(origin.matches(Some(&f)));
        f.podname = "other".into();
        assert!(!origin.matches(Some(&f)));
        assert!(is_runtime_init("runc:[2:INIT]") && is_runtime_init("crun") && !is_runtime_init("gosignal"));
    }
}
