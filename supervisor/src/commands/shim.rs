//! `sigvisor oci runtime`: the runtime shim that docker, containerd and
//! podman call in place of runc or crun. On `create` (and `run`) it patches
//! the bundle (`oci::patch`); on `exec` into a wrapped container it puts
//! the launcher in front of the new process too; then it becomes the real
//! runtime with the same arguments.
//!
//! Two things a shim must get right that a runtime's caller never tells it:
//! - **Which runtime is real.** The shim is installed behind a wrapper that
//!   often bears the runtime's own name (`/usr/local/bin/runc`), so `runc`
//!   on PATH may be the wrapper, which calls the shim again, for ever. Each
//!   shim passes on, in `SIGVISOR_SHIM_SEEN`, the paths it resolved; a shim
//!   called again skips them, so the second one finds the real runc.
//! - **Where errors go.** docker and containerd read a failed runtime's
//!   error from its `--log` file (in runc's JSON form with `--log-format
//!   json`), not from its stderr: the shim writes its error there too.

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use oci_spec::runtime::Spec;

use super::oci::{self, PatchOptions};

/// The runtimes earlier shims resolved, as a PATH-like list: each led back
/// to a shim.
const SEEN: &str = "SIGVISOR_SHIM_SEEN";

/// Where a runtime is looked for when the caller gives no PATH at all, as
/// podman does for `delete` (a shell wrapper then sees its own default
/// PATH, which it does not export).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Patches the bundle on `create` and `run`, and the process on `exec`
/// into a wrapped container; then execs the real runtime.
pub fn run(
    runtime: &str,
    docker: &str,
    mut opts: PatchOptions,
    args: &[String],
) -> Result<std::convert::Infallible> {
    let seen: Vec<PathBuf> =
        std::env::var_os(SEEN).map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let real = resolve(runtime, &path, &seen)?;
    // Asked for its version by the patch: the real one, not a wrapper.
    opts.runtime = real.display().to_string();
    let mut args = args.to_vec();
    if let Some(at) = args.iter().position(|a| a == "create" || a == "run") {
        let (bundle, id) = bundle_and_id(&args[at + 1..])?;
        if let Some(id) = id.as_deref().filter(|id| super::docker::owns(&bundle, id)) {
            // Without them the container is still supervised, by its id.
            match super::docker::annotations(docker, id) {
                Ok(found) => opts.annotations = found,
                Err(e) => tracing::warn!("container {id}: no name or labels from docker: {e:#}"),
            }
        }
        opts.bundle = bundle;
        opts.container_id = id;
        let (mode, why) = oci::patch(&opts)?;
        tracing::info!("patched {} ({mode:?}: {why}) for {runtime}", opts.bundle.display());
    } else if let Some(at) = args.iter().position(|a| a == "exec") {
        wrap_exec(&real, &mut args, at, opts)?;
    }
    let mut passed = seen;
    passed.push(real.clone());
    let passed = std::env::join_paths(passed).context("a runtime path holds ':'")?;
    Err(std::process::Command::new(&real).args(&args).env(SEEN, passed).exec())
        .with_context(|| format!("executing {}", real.display()))
}

/// `exec` into a wrapped container: the new process goes through the
/// launcher too, as the container's own did (`docker exec`, `kubectl
/// exec`, exec probes). A listener-mode container needs nothing: the
/// runtime gives every process of it the container's filter.
fn wrap_exec(real: &Path, args: &mut Vec<String>, at: usize, mut opts: PatchOptions) -> Result<()> {
    let Some(exec) = exec_args(&args[at + 1..]) else { bail!("exec: no container id") };
    let bundle = bundle_of(real, &args[..at], &exec.id)?;
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).with_context(|| format!("reading {}", config.display()))?;
    let wrapped = spec.annotations().as_ref().and_then(|a| a.get(oci::PATCHED)).is_some_and(|m| m == "wrap");
    if !wrapped {
        return Ok(());
    }
    opts.bundle = bundle;
    opts.container_id = Some(exec.id);
    match exec.process {
        Some(file) => {
            let text = std::fs::read(&file).with_context(|| format!("reading the process {file}"))?;
            let mut process: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&text).with_context(|| format!("{file} is not a JSON object"))?;
            let args = process.remove("args").unwrap_or_default();
            let command: Vec<String> = serde_json::from_value(args)
                .with_context(|| format!("{file}: args is not a list of strings"))?;
            let command = if command.first().is_some_and(|c| c == oci::LAUNCHER_INSIDE) {
                command
            } else {
                oci::launcher_in_front(&spec, &opts, command)
            };
            process.insert("args".to_owned(), serde_json::to_value(command)?);
            std::fs::write(&file, serde_json::to_vec(&process)?)
                .with_context(|| format!("writing {file}"))?;
        }
        None => {
            let command = args.split_off(at + 1 + exec.command_at);
            args.extend(oci::launcher_in_front(&spec, &opts, command));
        }
    }
    tracing::info!("exec into wrapped container {}: through the launcher", opts.bundle.display());
    Ok(())
}

/// What an `exec`'s arguments say: the container, and the process as a
/// `--process` file or as the arguments after the id.
struct Exec {
    id: String,
    process: Option<String>,
    /// Where the command starts, after the id.
    command_at: usize,
}

fn exec_args(rest: &[String]) -> Option<Exec> {
    // runc's and crun's exec options that take a value.
    const VALUED: &[&str] = &[
        "--console-socket",
        "--cwd",
        "--env",
        "-e",
        "--user",
        "-u",
        "--additional-gids",
        "-g",
        "--process",
        "-p",
        "--process-label",
        "--apparmor",
        "--pid-file",
        "--cgroup",
        "--preserve-fds",
        "--cap",
        "-c",
    ];
    let (options, at) = leading_options(rest, VALUED);
    let at = at?;
    let process = last_value(&options, &["--process", "-p"]);
    Some(Exec { id: rest[at].clone(), process, command_at: at + 1 })
}

/// The options before the first positional argument, as runc reads them:
/// a flag in `valued` takes a value (`--flag value` or `--flag=value`),
/// the others stand alone. Each flag with its value, and where the first
/// positional argument is, if there is one.
fn leading_options<'a>(
    args: &'a [String],
    valued: &[&str],
) -> (Vec<(&'a str, Option<String>)>, Option<usize>) {
    let mut options = Vec::new();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if !a.starts_with('-') {
            return (options, Some(i));
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (a.as_str(), None),
        };
        let value = match inline {
            None if valued.contains(&flag) => {
                i += 1;
                args.get(i).cloned()
            }
            inline => inline,
        };
        options.push((flag, value));
        i += 1;
    }
    (options, None)
}

/// The value of the last of `flags` given (a later one overrides).
fn last_value(options: &[(&str, Option<String>)], flags: &[&str]) -> Option<String> {
    options.iter().rev().find(|(f, _)| flags.contains(f)).and_then(|(_, v)| v.clone())
}

/// The bundle of container `id`, from the runtime's own `state`.
fn bundle_of(real: &Path, global: &[String], id: &str) -> Result<PathBuf> {
    let out = std::process::Command::new(real)
        .args(global)
        .args(["state", id])
        .output()
        .with_context(|| format!("running {} state {id}", real.display()))?;
    if !out.status.success() {
        bail!("{} state {id}: {}", real.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let state: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the runtime's state is not JSON")?;
    let bundle = state["bundle"].as_str().context("the runtime's state names no bundle")?;
    Ok(PathBuf::from(bundle))
}

/// The bundle (`--bundle`, `-b`, default the working directory) and the
/// container id (the last positional argument) of a `create` or `run`.
fn bundle_and_id(rest: &[String]) -> Result<(PathBuf, Option<String>)> {
    let mut bundle = PathBuf::from(".");
    let mut id = None;
    let mut i = 0;
    while i < rest.len() {
        let a = &rest[i];
        if let Some(v) = a.strip_prefix("--bundle=") {
            bundle = v.into();
        } else if a == "--bundle" || a == "-b" {
            bundle = rest.get(i + 1).context("--bundle needs a value")?.into();
            i += 1;
        } else if !a.starts_with('-') {
            id = Some(a.clone());
        }
        i += 1;
    }
    Ok((bundle, id))
}

/// The runtime to exec: `runtime` itself if it is a path, else the first
/// executable of that name on `path`; never one an earlier shim resolved
/// (it led back to a shim).
fn resolve(runtime: &str, path: &std::ffi::OsStr, seen: &[PathBuf]) -> Result<PathBuf> {
    let led_back = |candidate: &Path| {
        let real = std::fs::canonicalize(candidate).unwrap_or_else(|_| candidate.to_owned());
        seen.iter().any(|s| s == candidate || std::fs::canonicalize(s).is_ok_and(|s| s == real))
    };
    if runtime.contains('/') {
        let candidate = PathBuf::from(runtime);
        if led_back(&candidate) {
            bail!(
                "{runtime} leads back to this shim (it is a wrapper that calls `sigvisor oci runtime`): \
                 give --runtime the real runtime's path"
            );
        }
        return Ok(candidate);
    }
    let dirs: Vec<PathBuf> = std::env::split_paths(path).collect();
    let found: Vec<PathBuf> = dirs.iter().map(|d| d.join(runtime)).filter(|c| executable(c)).collect();
    match found.iter().find(|c| !led_back(c)) {
        Some(real) => Ok(real.clone()),
        None if found.is_empty() => bail!("no {runtime} on PATH: give --runtime the runtime's path"),
        None => bail!(
            "every {runtime} on PATH ({}) leads back to this shim: install the real {runtime} elsewhere on \
             PATH, or give --runtime its path",
            found.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where the runtime's caller reads its errors: the global `--log FILE`
/// and `--log-format` options before the command, as runc takes them.
pub struct RuntimeLog {
    file: PathBuf,
    json: bool,
}

impl RuntimeLog {
    pub fn of(args: &[String]) -> Option<RuntimeLog> {
        // runc's and crun's global options that take a value.
        const VALUED: &[&str] =
            &["--log", "--log-format", "--log-level", "--root", "--criu", "--rootless", "--cgroup-manager"];
        let (options, _) = leading_options(args, VALUED);
        let file = PathBuf::from(last_value(&options, &["--log"])?);
        let json = last_value(&options, &["--log-format"]).is_some_and(|f| f == "json");
        Some(RuntimeLog { file, json })
    }

    /// Appends the error as runc would log it; best effort (the error also
    /// goes to stderr).
    pub fn error(&self, message: &str) {
        let line = if self.json {
            let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let entry =
                serde_json::json!({"level": "error", "msg": format!("sigvisor: {message}"), "time": time});
            format!("{entry}\n")
        } else {
            format!("sigvisor: {message}\n")
        };
        let mut open = std::fs::OpenOptions::new();
        open.create(true).append(true);
        if let Ok(mut file) = open.open(&self.file) {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bundle_and_id_of_create() {
        let (bundle, id) = bundle_and_id(&args(&["--bundle", "/b", "--pid-file", "/p", "c1"])).unwrap();
        // An option's value looks positional; the id comes last.
        assert_eq!((bundle, id.as_deref()), (PathBuf::from("/b"), Some("c1")));
        let (bundle, _) = bundle_and_id(&args(&["--bundle=/x", "c2"])).unwrap();
        assert_eq!(bundle, PathBuf::from("/x"));
        assert!(bundle_and_id(&args(&["-b"])).is_err());
    }

    #[test]
    fn exec_s_container_and_process() {
        let e = exec_args(&args(&["--process", "/p.json", "--detach", "--pid-file", "/pid", "c1"])).unwrap();
        assert_eq!((e.id.as_str(), e.process.as_deref()), ("c1", Some("/p.json")));
        let e = exec_args(&args(&["-e", "A=1", "--tty", "c2", "sh", "-c", "true"])).unwrap();
        assert_eq!((e.id.as_str(), e.process, e.command_at), ("c2", None, 4));
        let e = exec_args(&args(&["--process=/q.json", "c3"])).unwrap();
        assert_eq!(e.process.as_deref(), Some("/q.json"));
        assert!(exec_args(&args(&["--cwd"])).is_none());
    }

    #[test]
    fn the_log_options_before_the_command() {
        let log =
            RuntimeLog::of(&args(&["--root", "/r", "--log", "/l.json", "--log-format=json", "create", "x"]))
                .expect("a log");
        assert_eq!((log.file, log.json), (PathBuf::from("/l.json"), true));
        let log = RuntimeLog::of(&args(&["--log=/l", "start", "x"])).expect("a log");
        assert!(!log.json);
        assert!(RuntimeLog::of(&args(&["create", "--log", "/not-global"])).is_none());
    }

    #[test]
    fn a_runtime_that_led_back_is_skipped() {
        let dir = std::env::temp_dir().join(format!("sigvisor-shim-resolve-{}", std::process::id()));
        let (wrapper, real) = (dir.join("wrapper"), dir.join("real"));
        for d in [&wrapper, &real] {
            std::fs::create_dir_all(d).unwrap();
            let file = d.join("rt");
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = std::env::join_paths([&wrapper, &real]).unwrap();
        assert_eq!(resolve("rt", &path, &[]).unwrap(), wrapper.join("rt"));
        assert_eq!(resolve("rt", &path, &[wrapper.join("rt")]).unwrap(), real.join("rt"));
        let why = resolve("rt", &path, &[wrapper.join("rt"), real.join("rt")]).unwrap_err().to_string();
        assert!(why.contains("leads back to this shim"), "{why}");
        let why = resolve(&wrapper.join("rt").to_string_lossy(), "".as_ref(), &[wrapper.join("rt")])
            .unwrap_err()
            .to_string();
        assert!(why.contains("give --runtime the real runtime's path"), "{why}");
        assert!(resolve("nonexistent-rt", &path, &[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
