//! `sigvisor run`: a local launch. The supervisor runs in this process and
//! `sigvisor-launch` starts CMD over a socketpair, speaking the same
//! handoff protocol as every other client. A keeper of this run's own holds
//! a copy of the listener: if sigvisor dies, CMD carries on, its calls
//! answered unsignalled, and the keeper exits when CMD's processes have.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::control::registry::{Registry, OPERATION_ANNOTATION};
use crate::intake::attach::Keeping;
use crate::keeper::link::Link;
use crate::path::notify::{Context, LoopMode};
use crate::sys::fd::{self, SockType};
use crate::sys::process;
use crate::trace::policy::Policy;
use crate::trace::profile::Trace;
use sigvisor_proto::exit::FAILED;

pub use crate::sys::process::raise_fd_limit;

pub struct RunOptions {
    pub trace: Trace,
    pub policy: Policy,
    pub cmd: Vec<OsString>,
    pub status_file: Option<PathBuf>,
    pub launcher: Option<PathBuf>,
    pub control: Option<PathBuf>,
    pub loop_mode: LoopMode,
}

/// Runs CMD under supervision; returns the exit status sigvisor should
/// exit with: CMD's own, or 128+N if a signal N killed it.
pub async fn run(opts: RunOptions) -> Result<i32> {
    let launcher = find_launcher(opts.launcher.as_deref())?;
    // A local launch: the trace acts whatever its spec.node says.
    let registry = Arc::new(Registry::new(crate::procfs::hostname(), true));
    let name = opts.trace.metadata.name.clone();
    let mut trace = opts.trace;
    let annotated = trace.metadata.annotations.remove(OPERATION_ANNOTATION);
    registry.declare(trace, opts.policy.clone());
    // `run` performs the start operation itself; an annotated operation
    // comes after it (`stop` starts CMD with signals off, for `operation start`).
    let mut applied = registry.operation(&name, "start")?;
    if let Some(op) = annotated {
        applied = registry.operation(&name, &op)?;
    }
    let error = applied.status.map(|s| s.operation_error).unwrap_or_default();
    if !error.is_empty() {
        eprintln!("sigvisor: trace {name}: {error}");
    }
    let printer = registry.subscribe(&name).ok().map(|mut events| {
        tokio::spawn(async move {
            while let Ok(line) = events.recv().await {
                // Not eprintln!, which panics where stderr cannot be written.
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        })
    });
    let _control_file = match &opts.control {
        Some(path) => {
            let (control, file) = crate::sys::socket::bind(path, crate::sys::socket::Access::Owner)?;
            tokio::spawn(crate::control::serve(control, Arc::clone(&registry)));
            Some(file)
        }
        None => None,
    };

    // A keeper of our own: if this process dies, CMD's calls still complete.
    let keeping = match Link::private() {
        Ok(link) => Keeping::New(link),
        Err(e) => {
            tracing::warn!("no keeper ({e:#}): if sigvisor dies, CMD's trapped calls fail with ENOSYS");
            Keeping::None
        }
    };
    let (ours, theirs) = fd::socketpair_for_child(SockType::Stream).context("socketpair")?;
    let mut command = tokio::process::Command::new(&launcher);
    command.arg("--socket-fd").arg(theirs.as_raw_fd().to_string());
    for syscall in &opts.policy.syscalls {
        command.arg("--syscall").arg(syscall);
    }
    command.arg("--signal").arg(opts.policy.signal.to_string());
    command.arg("--").args(&opts.cmd);
    process::give_back_fd_limit(command.as_std_mut());
    let mut child =
        command.spawn().with_context(|| format!("cannot start the launcher {}", launcher.display()))?;
    drop(theirs);
    let pid = child.id().context("the launcher exited at once")? as i32;
    tokio::spawn(forward_signals(pid));

    let ctx = Context::new(opts.loop_mode);
    // The handoff ends when the launcher execs CMD (CLOEXEC) or exits.
    let supervision = match crate::intake::handoff::receive(ours).await {
        Ok(handoff) => {
            let registry = Arc::clone(&registry);
            Some(tokio::spawn(async move {
                crate::intake::attach::supervise(handoff, "sigvisor-launch", None, &registry, ctx, keeping)
                    .await
            }))
        }
        Err(e) => {
            // The launcher failed before the handoff and said why itself.
            tracing::debug!("no handoff from the launcher: {e}");
            None
        }
    };
    let status = child.wait().await.context("waiting for CMD")?;
    let code = exit_code(status);
    let Some(task) = supervision else {
        return Ok(code);
    };
    // CMD is gone; its descendants still hold the filter until they exit.
    if let Err(e) = task.await {
        tracing::error!("the notification loop failed: {e}");
    }
    registry.complete_all();
    let trace = registry.get(&name)?;
    // Deleting drops the event channel, so the printer drains and ends.
    registry.delete(&name)?;
    if let Some(printer) = printer {
        let _ = printer.await;
    }
    crate::output::status::write_status(&[trace], opts.status_file.as_deref())?;
    Ok(code)
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(FAILED.into())
}

/// SIGINT and SIGTERM sent to sigvisor go to CMD, which decides.
async fn forward_signals(pid: i32) {
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::warn!("cannot catch SIGINT/SIGTERM; they will not be forwarded to CMD");
        return;
    };
    loop {
        let sig = tokio::select! {
            Some(()) = int.recv() => libc::SIGINT,
            Some(()) = term.recv() => libc::SIGTERM,
            else => return,
        };
        process::kill(pid, sig);
    }
}

/// `--launcher`, else `$SIGVISOR_LAUNCH`, else `sigvisor-launch` beside this
/// binary, else on `$PATH`.
fn find_launcher(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) =
        given.map(Path::to_owned).or_else(|| std::env::var_os("SIGVISOR_LAUNCH").map(PathBuf::from))
    {
        return Ok(p);
    }
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("sigvisor-launch")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("sigvisor-launch"))
        .find(|p| p.is_file())
        .context("cannot find sigvisor-launch: install it beside sigvisor or on PATH, or give --launcher")
}
