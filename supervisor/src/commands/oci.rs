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

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder, Mount, Spec,
};
use serde_json::{Map, Value};
use sigvisor_proto::Metadata;

/// Annotation marking a patched bundle (its value: the mode), so a second
/// patch of the same bundle changes nothing.
pub const PATCHED: &str = "io.sigvisor.patched";
/// Where wrap mode mounts the launcher and the socket's directory.
const IN_CONTAINER: &str = "/.sigvisor";
/// The launcher, as a wrapped container's processes see it.
pub const LAUNCHER_INSIDE: &str = "/.sigvisor/sigvisor-launch";

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
    let spec: Spec = serde_json::from_value(doc.clone())
        .with_context(|| format!("{} is not an OCI runtime configuration", config.display()))?;
    if let Some(done) = spec.annotations().as_ref().and_then(|a| a.get(PATCHED)) {
        tracing::info!("{} is already patched ({done}); unchanged", config.display());
        let mode = if done == "wrap" { Mode::Wrap } else { Mode::Listener };
        return Ok((mode, "already patched".into()));
    }
    let (mode, why) = match opts.mode {
        Mode::Auto => runtime_mode(&runtime_version(&opts.runtime)),
        m => (m, "as asked".into()),
    };
    match mode {
        Mode::Wrap => wrap_entrypoint(&mut doc, &spec, opts)?,
        _ => add_listener(&mut doc, &spec, opts)?,
    }
    let name = if mode == Mode::Wrap { "wrap" } else { "listener" };
    object(&mut doc, "annotations")?.insert(PATCHED.to_owned(), Value::from(name));
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

fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> Result<LinuxSeccompArg> {
    Ok(LinuxSeccompArgBuilder::default().index(index).op(op).value(value).build()?)
}

/// `args[0]` is `signal`, compared on its low 32 bits as the kernel reads
/// an int (junk above them must not set a handler unseen).
fn signal_is(signal: i32) -> Result<LinuxSeccompArg> {
    Ok(LinuxSeccompArgBuilder::default()
        .index(0_usize)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .value(0xffff_ffff_u64)
        .value_two(signal as u64)
        .build()?)
}

fn rule(name: &str, action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall> {
    let mut builder = LinuxSyscallBuilder::default().names(vec![name.to_owned()]).action(action);
    if !args.is_empty() {
        builder = builder.args(args);
    }
    Ok(builder.build()?)
}

/// The ABIs this machine runs: its own and its compat ones.
fn native_abis() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

/// Whether an action lets the call run (the only calls sigvisor traps: a
/// CONTINUE must never run a call the profile refused).
fn runs(action: &LinuxSeccompAction) -> bool {
    matches!(action, LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog)
}

/// The action a profile gives every call of `name`: its rule's, else the
/// default; None where a rule with argument checks decides.
fn action_of(seccomp: &LinuxSeccomp, rules: &[LinuxSyscall], name: &str) -> Option<LinuxSeccompAction> {
    let naming: Vec<&LinuxSyscall> = rules.iter().filter(|r| r.names().iter().any(|n| n == name)).collect();
    if naming.iter().any(|r| r.args().as_ref().is_some_and(|a| !a.is_empty())) {
        return None;
    }
    Some(naming.first().map_or(seccomp.default_action(), |r| r.action()))
}

/// The rules that tell sigvisor every handler change of the `watched`
/// signals (handlers.rs): `rt_sigaction` (and i386's `sigaction` and
/// `signal`) notify when they set one of them, `execve` and `execveat`
/// always; and the signals they can watch (0 where the profile decides
/// those calls with argument checks of its own).
///
/// Only calls the profile lets run are trapped (a CONTINUE must never run
/// a call the container's profile refused). libseccomp drops conditional
/// rules for a syscall that also has an unconditional one, so
/// rt_sigaction's other calls get the action they had by rules of their own.
fn handler_rules(
    seccomp: &LinuxSeccomp,
    rules: &[LinuxSyscall],
    watched: u64,
) -> Result<(Vec<LinuxSyscall>, u64)> {
    use LinuxSeccompAction::{ScmpActErrno, ScmpActKill, ScmpActKillProcess, ScmpActKillThread};
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpNe};
    let notify = LinuxSeccompAction::ScmpActNotify;
    let refused = |a: &LinuxSeccompAction| {
        matches!(a, ScmpActErrno | ScmpActKill | ScmpActKillProcess | ScmpActKillThread)
    };
    let mut added = Vec::new();
    let mut watchable = watched;
    for name in sigvisor_proto::EXECS {
        match action_of(seccomp, rules, name) {
            Some(a) if runs(&a) => added.push(rule(name, notify, vec![])?),
            // A process that cannot exec keeps its handlers.
            Some(a) if refused(&a) => {}
            _ => watchable = 0,
        }
    }
    // rt_sigaction(sig, act, ...), i386's sigaction(sig, act, ...) and
    // signal(sig, handler): those that set a watched signal's handler.
    for setter in sigvisor_proto::HandlerSetter::ALL {
        let (name, has_act) = (setter.name(), setter.has_act());
        match action_of(seccomp, rules, name) {
            Some(other) if runs(&other) => {
                for signal in sigvisor_proto::signals_in(watched) {
                    let mut sets = vec![signal_is(signal)?];
                    if has_act {
                        sets.push(arg(1, ScmpCmpNe, 0)?);
                    }
                    added.push(rule(name, notify, sets)?);
                }
                if other != seccomp.default_action() {
                    // Queries and other signals keep their action. A number
                    // that is no signal gets the default's error, not EINVAL.
                    if has_act {
                        added.push(rule(name, other, vec![arg(1, ScmpCmpEq, 0)?])?);
                    }
                    for signal in (1..=64).filter(|&s| watched & sigvisor_proto::signal_bit(s) == 0) {
                        added.push(rule(name, other, vec![signal_is(signal)?])?);
                    }
                }
            }
            Some(a) if refused(&a) => {}
            _ => watchable = 0,
        }
    }
    if watchable == 0 {
        return Ok((Vec::new(), 0));
    }
    Ok((added, watchable))
}

/// Listener mode: the syscalls notify, taken out of every other rule (a
/// syscall named by two rules is an error in libseccomp), with the rules
/// that tell handler changes, and the rest of the profile (default action,
/// architectures, other rules, fields oci-spec does not know) kept.
fn add_listener(doc: &mut Value, spec: &Spec, opts: &PatchOptions) -> Result<()> {
    let existing = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let fresh = existing.is_none();
    let seccomp = match existing {
        Some(s) => s,
        // No seccomp before: every ABI ran. A filter lists the ABIs it
        // covers, and kills callers of any other.
        None => LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(native_abis())
            .build()?,
    };
    let rules = seccomp.syscalls().clone().unwrap_or_default();
    let (handler_rules, watched) =
        handler_rules(&seccomp, &rules, sigvisor_proto::watched_signals(opts.signal))?;
    // Only calls the profile lets run are trapped: a CONTINUE must never
    // run a call the container's profile refused (or decides by arguments).
    let (trapped, refused): (Vec<String>, Vec<String>) = opts
        .syscalls
        .iter()
        .cloned()
        .partition(|name| action_of(&seccomp, &rules, name).is_some_and(|a| runs(&a)));
    if !refused.is_empty() {
        tracing::warn!(
            "the container's seccomp profile does not simply allow {}: not trapped (nothing of them to observe)",
            refused.join(", ")
        );
    }
    if trapped.is_empty() {
        bail!(
            "the container's seccomp profile does not simply allow any of {}: there is nothing to trap",
            opts.syscalls.join(", ")
        );
    }
    let taken = |name: &str| {
        trapped.iter().any(|s| s == name) || handler_rules.iter().any(|r| r.names().iter().any(|n| n == name))
    };
    let linux = object(doc, "linux")?;
    if fresh {
        linux.insert("seccomp".to_owned(), serde_json::to_value(&seccomp)?);
    }
    let section =
        linux.get_mut("seccomp").and_then(Value::as_object_mut).context("linux.seccomp is not an object")?;
    let syscalls = array(section, "syscalls")?;
    for rule in syscalls.iter_mut() {
        if let Some(names) = rule.get_mut("names").and_then(Value::as_array_mut) {
            names.retain(|n| !n.as_str().is_some_and(taken));
        }
    }
    syscalls.retain(|r| r.get("names").and_then(Value::as_array).is_none_or(|n| !n.is_empty()));
    let notify = LinuxSyscallBuilder::default()
        .names(trapped.clone())
        .action(LinuxSeccompAction::ScmpActNotify)
        .build()?;
    syscalls.push(serde_json::to_value(notify)?);
    for rule in handler_rules {
        syscalls.push(serde_json::to_value(rule)?);
    }
    section.insert("listenerPath".to_owned(), Value::from(opts.socket.display().to_string()));
    let metadata = Metadata { wait_killable: true, launcher: false, user: None, watched_signals: watched };
    section.insert("listenerMetadata".to_owned(), Value::from(metadata.to_json()));
    let flag = Value::from("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV");
    let flags = array(section, "flags")?;
    if !flags.contains(&flag) {
        flags.push(flag);
    }
    Ok(())
}

/// Wrap mode: the static launcher and the agent socket mounted read-only at
/// /.sigvisor, and the launcher in front of process.args.
fn wrap_entrypoint(doc: &mut Value, spec: &Spec, opts: &PatchOptions) -> Result<()> {
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
        annotations.into_iter().filter(|(k, _)| k != PATCHED).collect();
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

    fn profile(json: serde_json::Value) -> (LinuxSeccomp, Vec<LinuxSyscall>) {
        let seccomp: LinuxSeccomp = serde_json::from_value(json).expect("a seccomp section");
        let rules = seccomp.syscalls().clone().unwrap_or_default();
        (seccomp, rules)
    }

    fn names(rules: &[LinuxSyscall]) -> Vec<String> {
        rules.iter().map(|r| format!("{}/{:?}", r.names()[0], r.action())).collect()
    }

    #[test]
    fn handler_rules_trap_only_what_the_profile_lets_run() {
        let watched = sigvisor_proto::watched_signals(libc::SIGILL);
        // Everything allowed: exec and the five watched signals' rt_sigaction.
        let (seccomp, rules) = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert_eq!(got, watched);
        // exec, execveat; rt_sigaction, sigaction and signal for 5 signals.
        assert_eq!(added.len(), 2 + 3 * 5);
        assert!(added.iter().all(|r| r.action() == LinuxSeccompAction::ScmpActNotify));
        let sets = added.iter().find(|r| r.names()[0] == "rt_sigaction").unwrap().args().clone().unwrap();
        assert_eq!(sets[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!((sets[0].value(), sets[0].value_two()), (0xffff_ffff, Some(libc::SIGILL as u64)));
        assert_eq!((sets[1].index(), sets[1].op()), (1, LinuxSeccompOperator::ScmpCmpNe));

        // Docker's shape: deny by default, rt_sigaction and execve allowed by
        // a plain rule: rt_sigaction's other calls keep being allowed.
        let (seccomp, rules) = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["rt_sigaction", "execve", "close"], "action": "SCMP_ACT_ALLOW"}],
        }));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert_eq!(got, watched);
        let allowed = added.iter().filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow).count();
        // rt_sigaction's queries and the 59 other signals; sigaction and
        // signal are refused (the default), so nothing for them.
        assert_eq!(allowed, 1 + 59, "{:?}", names(&added));
        assert!(!names(&added).contains(&"execveat/ScmpActNotify".to_owned()), "execveat is refused");

        // A profile that refuses both: nothing trapped, nothing can change.
        let (seccomp, rules) = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO"}));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert!(added.is_empty());
        assert_eq!(got, watched);

        // rt_sigaction decided by argument checks of the profile's own: left alone.
        let (seccomp, rules) = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["rt_sigaction"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]}],
        }));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert!(added.is_empty());
        assert_eq!(got, 0);
    }
}
