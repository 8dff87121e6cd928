//! Wrap mode: the static launcher and the agent socket mounted read-only
//! at /.sigvisor, and the launcher in front of the container's process, so
//! that it loads its own filter, with the flag, inside the container.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use oci_spec::runtime::{Mount, Spec};
use serde_json::Value;

use super::{array, object, PatchOptions, CONTAINER_ID, PATCHED};

/// Where wrap mode mounts the launcher and the socket's directory.
const IN_CONTAINER: &str = "/.sigvisor";
/// The launcher, as a wrapped container's processes see it.
pub const LAUNCHER_INSIDE: &str = "/.sigvisor/sigvisor-launch";

/// The launcher and the agent socket mounted, the launcher in front of
/// `process.args`.
pub(super) fn wrap_entrypoint(doc: &mut Value, spec: &Spec, opts: &PatchOptions) -> Result<()> {
    let launcher = match &opts.launcher {
        Some(p) => p.clone(),
        None => static_launcher()?,
    };
    let launcher = launcher.canonicalize().with_context(|| format!("the launcher {}", launcher.display()))?;
    let process = spec.process().as_ref().context("config.json has no process to wrap")?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        bail!("config.json's process.args is empty: nothing to wrap");
    }
    let inside = |rest: &str| format!("{IN_CONTAINER}/{rest}");
    let wrapped = launcher_in_front(spec, opts, args);
    object(doc, "process")?.insert("args".to_owned(), serde_json::to_value(wrapped)?);
    let root = doc.as_object_mut().context("config.json: expected an object")?;
    let mounts = array(root, "mounts")?;
    // The socket itself, not its directory: the control socket may live
    // beside it, and a container must not reach that.
    let socket = opts.socket.as_path();
    for (source, destination) in
        [(launcher.as_path(), inside("sigvisor-launch")), (socket, inside("agent.sock"))]
    {
        let mut mount = Mount::default();
        mount.set_destination(PathBuf::from(destination));
        mount.set_typ(Some("bind".to_owned()));
        mount.set_source(Some(source.to_owned()));
        mount.set_options(Some(vec!["rbind".to_owned(), "ro".to_owned()]));
        mounts.push(serde_json::to_value(mount)?);
    }
    Ok(())
}

/// `args` with the launcher mounted in wrap mode in front of them, told
/// the container's id, bundle and annotations (a runtime reports them to
/// a listener's supervisor; here the launcher does, and the CRI's pod and
/// container names select Traces).
pub fn launcher_in_front(spec: &Spec, opts: &PatchOptions, args: Vec<String>) -> Vec<String> {
    let mut wrapped = vec![
        LAUNCHER_INSIDE.to_owned(),
        "--socket".to_owned(),
        format!("{IN_CONTAINER}/agent.sock"),
        "--bundle".to_owned(),
        opts.bundle.canonicalize().unwrap_or_else(|_| opts.bundle.clone()).display().to_string(),
    ];
    if let Some(id) = &opts.container_id {
        wrapped.extend(["--container-id".to_owned(), id.clone()]);
    }
    let annotations = spec.annotations().clone().unwrap_or_default();
    let mut annotations: Vec<(String, String)> =
        annotations.into_iter().filter(|(k, _)| k != PATCHED && k != CONTAINER_ID).collect();
    annotations.sort();
    for (key, value) in annotations {
        wrapped.extend(["--annotation".to_owned(), format!("{key}={value}")]);
    }
    for syscall in &opts.syscalls {
        wrapped.extend(["--syscall".to_owned(), syscall.clone()]);
    }
    wrapped.extend(["--signal".to_owned(), opts.signal.to_string()]);
    wrapped.push("--".to_owned());
    wrapped.extend(args);
    wrapped
}

/// `sigvisor-launch-static` beside this binary (`make static-launcher`).
fn static_launcher() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating sigvisor")?;
    let path = exe.with_file_name("sigvisor-launch-static");
    if !path.is_file() {
        bail!(
            "wrap mode needs a statically linked launcher to run inside any image: {} is missing; \
             build it with `make static-launcher`, or give --launcher",
            path.display()
        );
    }
    Ok(path)
}
