//! Who handed a listener over, and which of its claims to believe.
//!
//! The agent socket takes a connection from any uid that reaches it: wrap
//! mode mounts it into containers whose processes run as any user, while
//! the host's users cannot reach it, its directory being root's alone
//! (sys/socket.rs). What a peer sends about itself decides which Trace
//! selects it and whose name its events carry, so a claim is believed only
//! from a peer that could not lie for gain:
//! - a root peer (a runtime, `sigvisor run`, a root launcher) is believed:
//!   root can do anything a false claim could (a launcher's pid is still
//!   the kernel's: the one it knows is its container's);
//! - any other peer is attributed to its own pid (SO_PEERCRED), and its
//!   claim to be a container only when that container's bundle proves it:
//!   a directory and `config.json` that only root can write, whose root
//!   filesystem is the peer's own root directory. The container's id and
//!   annotations are then read from that `config.json`, never from the
//!   peer; a claim that fails is dropped with the reason, and the listener
//!   is served as the peer's own.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sigvisor_proto::Handoff;

/// Annotation the shim writes into a wrapped bundle: the runtime's id for
/// the container, which only the runtime's command line carries.
pub const CONTAINER_ID: &str = "io.sigvisor.container-id";
/// Annotation marking a patched bundle (commands/oci/mod.rs; its value: the
/// mode), which says nothing of the container.
pub const PATCHED: &str = "io.sigvisor.patched";

/// The kernel's word on who is connected (SO_PEERCRED at connect time).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

/// Keeps what `handoff` claims where `peer` may claim it; otherwise
/// attributes it to the peer alone. Returns why a claim was dropped.
/// A peer the kernel could not name (`None`) proves nothing.
pub fn vet(handoff: &mut Handoff, peer: Option<Peer>) -> Option<String> {
    if let Some(root) = peer.filter(|p| p.uid == 0) {
        // A launcher tells its pid in its container's pid namespace; the
        // kernel's is in serve's, where /proc names it. (A runtime tells
        // its container's init, not itself.)
        if handoff.metadata.launcher {
            *handoff.state.pid_mut() = root.pid;
            *handoff.state.state_mut().pid_mut() = Some(root.pid);
        }
        return None;
    }
    let claimed_pid = handoff.state.state().pid().unwrap_or_default();
    let bundle = handoff.state.state().bundle().to_owned();
    let claimed = handoff.state.state().id().clone();
    let proven = match peer {
        None => Err("the kernel does not say who it is".to_owned()),
        Some(_) if bundle.as_os_str().is_empty() => Err("it names no bundle".to_owned()),
        Some(p) => proof(&bundle, p.pid),
    };
    let pid = peer.map_or(claimed_pid, |p| p.pid);
    *handoff.state.pid_mut() = pid;
    let state = handoff.state.state_mut();
    *state.pid_mut() = Some(pid);
    match proven {
        Ok(Bundle { id, annotations }) => {
            *state.id_mut() = id;
            *state.annotations_mut() = Some(annotations);
            None
        }
        Err(why) => {
            *state.id_mut() = String::new();
            *state.bundle_mut() = PathBuf::new();
            *state.annotations_mut() = None;
            let who = peer.map_or_else(|| format!("pid {pid}"), |p| format!("pid {} uid {}", p.pid, p.uid));
            let lied =
                if claimed_pid != pid { format!(" (claimed pid {claimed_pid})") } else { String::new() };
            let said = if claimed.is_empty() { String::new() } else { format!(" container {claimed}") };
            Some(format!(
                "{who}{lied}: its claim to be{said} in bundle {} is not believed ({why}): served as pid {pid} alone",
                bundle.display()
            ))
        }
    }
}

/// What a proven bundle says of its container.
struct Bundle {
    id: String,
    annotations: HashMap<String, String>,
}

/// Whether `bundle` is root's own and its root filesystem is `pid`'s root
/// directory; then its container's id and annotations.
fn proof(bundle: &Path, pid: i32) -> Result<Bundle, String> {
    if !bundle.is_absolute() {
        return Err("the path is not absolute".into());
    }
    let dir = std::fs::metadata(bundle).map_err(|e| e.to_string())?;
    root_only(&dir, "the bundle directory")?;
    if !dir.is_dir() {
        return Err("it is not a directory".into());
    }
    let (config, meta) = super::container::read_config(&bundle.join("config.json"))?;
    root_only(&meta, "config.json")?;
    let rootfs = config.pointer("/root/path").and_then(|p| p.as_str()).unwrap_or("rootfs");
    let rootfs = bundle.join(rootfs);
    let theirs = std::fs::metadata(format!("/proc/{pid}/root")).map_err(|e| format!("its root: {e}"))?;
    let ours = std::fs::metadata(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
        return Err(format!("its root directory is not the bundle's root {}", rootfs.display()));
    }
    let mut annotations: HashMap<String, String> = config
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    annotations.remove(PATCHED);
    let id = annotations.remove(CONTAINER_ID).unwrap_or_default();
    Ok(Bundle { id, annotations })
}

fn root_only(meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} is not root's alone (owner {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(bundle: &Path) -> Handoff {
        let message = serde_json::json!({
            "ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": 1, "metadata": "",
            "state": {"ociVersion": "1.0.2", "id": "claimed", "status": "creating", "pid": 1,
                      "bundle": bundle, "annotations": {"io.kubernetes.cri.sandbox-name": "claimed"}},
        });
        let fd = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        sigvisor_proto::decode(message.to_string().as_bytes(), vec![fd]).unwrap()
    }

    fn annotations(h: &Handoff) -> HashMap<String, String> {
        h.state.state().annotations().clone().unwrap_or_default()
    }

    #[test]
    fn claims_are_believed_from_root_and_from_a_bundle_that_proves_them() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let me = Peer { pid: std::process::id() as i32, uid: 1000 };
        let bundle = std::env::temp_dir().join(format!("sigvisor-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).unwrap();
        // This test's root is "/": a bundle whose root is "/" proves it.
        let config = serde_json::json!({"root": {"path": "/"}, "annotations":
            {CONTAINER_ID: "c9", PATCHED: "wrap", "io.kubernetes.cri.sandbox-name": "web-0"}});
        std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();

        let mut h = claim(&bundle);
        assert_eq!(vet(&mut h, Some(Peer { uid: 0, ..me })), None, "root is believed");
        assert_eq!((h.state.state().id().as_str(), *h.state.pid()), ("claimed", 1));

        let mut h = claim(&bundle);
        assert_eq!(vet(&mut h, Some(me)), None);
        assert_eq!(h.state.state().id(), "c9", "the id comes from config.json");
        assert_eq!(*h.state.pid(), me.pid, "the pid is the kernel's");
        let want = HashMap::from([("io.kubernetes.cri.sandbox-name".to_owned(), "web-0".to_owned())]);
        assert_eq!(annotations(&h), want);

        // Another root, a file others may write, a FIFO, a relative path,
        // no bundle: each claim dropped with its reason, never a wait.
        let other = serde_json::json!({"root": {"path": "rootfs"}});
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("config.json"), other.to_string()).unwrap();
        let refused = |bundle: &Path, why: &str| {
            let mut h = claim(bundle);
            let said = vet(&mut h, Some(me)).expect("refused");
            assert!(said.contains(why), "{said}");
            assert_eq!(h.state.state().id(), "");
            assert!(annotations(&h).is_empty());
        };
        refused(&bundle, "its root directory is not the bundle's root");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bundle.join("config.json"), std::fs::Permissions::from_mode(0o666)).unwrap();
        refused(&bundle, "config.json is not root's alone (owner 0, mode 666)");
        std::fs::remove_file(bundle.join("config.json")).unwrap();
        nix::unistd::mkfifo(&bundle.join("config.json"), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap();
        refused(&bundle, "is not a regular file");
        refused(Path::new("relative"), "not absolute");
        refused(Path::new(""), "names no bundle");
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}
