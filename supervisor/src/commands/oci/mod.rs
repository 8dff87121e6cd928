//! `sigvisor oci`: putting a container under sigvisor through its OCI bundle,
//! without touching its image.
//!
//! Two ways, because runtimes differ in what their filter can do:
//! - **listener**: add `SCMP_ACT_NOTIFY` rules to the container's own
//!   seccomp profile, with `listenerPath` pointing at `sigvisor serve` and
//!   `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (crun, youki, runc >= 1.5).
//! - **wrap**: runc before 1.5 rejects every seccomp flag, and without that
//!   one no signal can be precise (docs/design.md). So the launcher and the
//!   agent socket are bind-mounted into the container and the launcher is put
//!   in front of `process.args`: it loads its own filter, with the flag,
//!   inside the container.

//!
//! `listener` and `wrap` make the two patches; this module decides which,
//! and edits `config.json` losslessly.

mod listener;
mod wrap;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use oci_spec::runtime::Spec;
use serde_json::{Map, Value};

use crate::trace::peer::CONTAINER_ID;
/// A second patch of a bundle so marked changes nothing.
pub use crate::trace::peer::PATCHED;
pub use wrap::{launcher_in_front, LAUNCHER_INSIDE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// listener if the runtime can make the filter wait killable, else wrap.
    Auto,
    /// The runtime's own filter notifies sigvisor (listenerPath).
    Listener,
    /// sigvisor-launch is put in front of the container's process.
    Wrap,
}

pub struct PatchOptions {
    pub bundle: PathBuf,
    pub socket: PathBuf,
    pub syscalls: Vec<String>,
    /// The signal the Trace sends (the filter watches its handler).
    pub signal: i32,
    pub mode: Mode,
    /// The runtime that will run the bundle (for `Mode::Auto`).
    pub runtime: String,
    /// A statically linked sigvisor-launch (wrap mode).
    pub launcher: Option<PathBuf>,
    pub container_id: Option<String>,
    /// Annotations to add where the bundle has none of that key: what the
    /// engine knows of the container and the bundle does not (docker's
    /// name and labels).
    pub annotations: Vec<(String, String)>,
}

/// Patches `BUNDLE/config.json`; returns the mode used, and why.
///
/// Lossless: the document is validated with oci-spec, but edited and
/// written as JSON, so every field oci-spec does not model (vendor
/// extensions, fields newer than it) keeps its value and its place; only
/// `linux.seccomp`, or in wrap mode `process.args` and `mounts`, and the
/// `io.sigvisor.patched` annotation change.
pub fn patch(opts: &PatchOptions) -> Result<(Mode, String)> {
    ensure_served(&opts.socket)?;
    let config = opts.bundle.join("config.json");
    let text = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    let mut doc: Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", config.display()))?;
    let mut spec: Spec = serde_json::from_value(doc.clone())
        .with_context(|| format!("{} is not an OCI runtime configuration", config.display()))?;
    if let Some(done) = spec.annotations().as_ref().and_then(|a| a.get(PATCHED)) {
        tracing::info!("{} is already patched ({done}); unchanged", config.display());
        let mode = if done == "wrap" { Mode::Wrap } else { Mode::Listener };
        return Ok((mode, "already patched".into()));
    }
    if !opts.annotations.is_empty() {
        let annotations = object(&mut doc, "annotations")?;
        for (key, value) in &opts.annotations {
            annotations.entry(key.clone()).or_insert_with(|| Value::from(value.as_str()));
        }
        let merged = annotations.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())));
        spec.set_annotations(Some(merged.collect()));
    }
    let (mode, why) = match opts.mode {
        Mode::Auto => runtime_mode(&runtime_version(&opts.runtime)),
        m => (m, "as asked".into()),
    };
    match mode {
        Mode::Wrap => wrap::wrap_entrypoint(&mut doc, &spec, opts)?,
        _ => listener::add_listener(&mut doc, &spec, opts)?,
    }
    let name = if mode == Mode::Wrap { "wrap" } else { "listener" };
    let annotations = object(&mut doc, "annotations")?;
    annotations.insert(PATCHED.to_owned(), Value::from(name));
    // What serve believes of a wrapped container whose process is not
    // root comes from this file alone (trace/peer.rs), and only the
    // runtime's command line names the container.
    if let (Mode::Wrap, Some(id)) = (mode, &opts.container_id) {
        annotations.insert(CONTAINER_ID.to_owned(), Value::from(id.as_str()));
    }
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    std::fs::write(&config, bytes).with_context(|| format!("writing {}", config.display()))?;
    Ok((mode, why))
}

/// The object at `key` in `parent` (made empty if missing).
fn object<'a>(parent: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>> {
    let parent = parent.as_object_mut().context("config.json: expected an object")?;
    parent
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .with_context(|| format!("config.json: {key} is not an object"))
}

/// The array at `key` in `parent` (made empty if missing).
fn array<'a>(parent: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>> {
    parent
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .with_context(|| format!("config.json: {key} is not an array"))
}

/// What `RUNTIME --version` prints (nothing if it cannot be run).
fn runtime_version(runtime: &str) -> String {
    let version = std::process::Command::new(runtime).arg("--version").output();
    version.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Which mode a runtime's filter allows, from its `--version`, and why.
/// crun and youki take `WAIT_KILLABLE_RECV`. runc does from 1.5, and only
/// when built with libseccomp 2.6 or later (the first to set that flag):
/// it prints the version it was built with.
fn runtime_mode(version: &str) -> (Mode, String) {
    let first = version.lines().next().unwrap_or_default();
    if first.starts_with("crun") || first.starts_with("youki") {
        return (Mode::Listener, format!("{first} takes the filter's flags"));
    }
    let numbers = |v: &str| {
        let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
        Some((parts.next()?, parts.next()?))
    };
    let Some(runc) = first.strip_prefix("runc version ").and_then(numbers) else {
        return (Mode::Wrap, "a runtime sigvisor cannot tell: wrap works in all".into());
    };
    if runc < (1, 5) {
        return (Mode::Wrap, format!("runc {}.{} refuses every seccomp flag", runc.0, runc.1));
    }
    let libseccomp = version.lines().find_map(|l| l.strip_prefix("libseccomp: ")).and_then(numbers);
    match libseccomp {
        Some(v) if v >= (2, 6) => (Mode::Listener, format!("runc {}.{} with libseccomp {}.{}", runc.0, runc.1, v.0, v.1)),
        Some(v) => (
            Mode::Wrap,
            format!("runc {}.{} is built with libseccomp {}.{}, which cannot make the filter wait killable (2.6 can)", runc.0, runc.1, v.0, v.1),
        ),
        None => (Mode::Wrap, format!("runc {}.{} does not say its libseccomp", runc.0, runc.1)),
    }
}

/// runc blocks for ever on a listenerPath nobody serves; refuse at once.
pub fn ensure_served(socket: &Path) -> Result<()> {
    if let Err(e) = std::os::unix::net::UnixStream::connect(socket) {
        bail!(
            "no supervisor is listening on {}: {e}; start one with `sigvisor serve --socket {}` first",
            socket.display(),
            socket.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_by_runtime() {
        let mode = |v: &str| runtime_mode(v).0;
        assert_eq!(mode(&runtime_version("/nonexistent-runtime")), Mode::Wrap);
        assert_eq!(mode("crun version 1.8.1\ncommit: x\n"), Mode::Listener);
        let runc = |v: &str, lib: &str| {
            format!("runc version {v}\ncommit: x\nspec: 1.2.0\ngo: go1.22\nlibseccomp: {lib}\n")
        };
        assert_eq!(mode(&runc("1.1.5+ds1", "2.5.4")), Mode::Wrap);
        assert_eq!(mode(&runc("1.5.0", "2.6.0")), Mode::Listener);
        assert_eq!(mode(&runc("1.5.0", "2.5.5")), Mode::Wrap);
        assert!(runtime_mode(&runc("1.5.0", "2.5.5")).1.contains("libseccomp 2.5"));
        assert_eq!(mode("runc version 1.6.0\n"), Mode::Wrap, "no libseccomp line");
    }
}
