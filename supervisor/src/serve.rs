//! `sigvisor serve`: a long-running supervisor on a unix socket speaking the
//! OCI seccomp agent protocol, for runc, crun, youki and `sigvisor-launch`.
//!
//! Every connection is its own task: a bad or silent client is logged and
//! dropped, a listener that fails ends alone, and the server keeps serving.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::container::Origin;
use crate::events::Describer;
use crate::notify::{self, Context, Handler, LoopMode};
use crate::profile::{Policy, Trace};
use crate::registry::Registry;
use crate::stats::Stats;
use crate::sys::seccomp::Listener;
use sigvisor_proto::Handoff;

pub const DEFAULT_SOCKET: &str = "/run/sigvisor/agent.sock";
pub const DEFAULT_CONTROL: &str = "/run/sigvisor/control.sock";

pub struct ServeOptions {
    pub socket: PathBuf,
    pub control: PathBuf,
    pub node: String,
    pub traces: Vec<(Trace, Policy)>,
    pub status_file: Option<PathBuf>,
    pub handoff_timeout: Duration,
    pub loop_mode: LoopMode,
}

/// Serves until SIGINT or SIGTERM, then writes every Trace's status.
pub async fn serve(opts: ServeOptions) -> Result<i32> {
    let registry = Arc::new(Registry::new(opts.node.clone(), false));
    for (trace, policy) in opts.traces {
        let applied = registry.apply(trace, policy);
        let status = applied.status.unwrap_or_default();
        tracing::info!(
            "trace {}: state {:?}{}",
            applied.metadata.name,
            status.state,
            if status.operation_error.is_empty() {
                String::new()
            } else {
                format!(", {}", status.operation_error)
            }
        );
    }
    let (listener, _agent_file) = bind(&opts.socket)?;
    let (control, _control_file) = bind(&opts.control)?;
    tokio::spawn(crate::control::serve(control, Arc::clone(&registry)));
    let ctx = Context::new(opts.loop_mode);
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tracing::info!(
        "serving on {} (node {}), control on {}",
        opts.socket.display(),
        opts.node,
        opts.control.display()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let peer = stream.peer_cred().map(|c| format!("peer pid {} uid {}", c.pid().unwrap_or(0), c.uid()))
                        .unwrap_or_else(|_| "unknown peer".into());
                    let fd = match stream.into_std() {
                        Ok(s) => OwnedFd::from(s),
                        Err(e) => { tracing::warn!("{peer}: {e}"); continue }
                    };
                    tokio::spawn(connection(fd, peer, Arc::clone(&registry), Arc::clone(&ctx), opts.handoff_timeout));
                }
                // Out of fds, say: wait, rather than spin on the error.
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    crate::run::write_status(&registry.list(), opts.status_file.as_deref())?;
    Ok(0)
}

/// One client: receive its listener, then serve it to the end.
async fn connection(
    fd: OwnedFd,
    peer: String,
    registry: Arc<Registry>,
    ctx: Arc<Context>,
    timeout: Duration,
) {
    match tokio::time::timeout(timeout, crate::handoff::receive(fd)).await {
        Err(_) => tracing::warn!("{peer}: no complete handoff within {timeout:?}; dropped"),
        // A probe (`sigvisor oci patch` checks the socket) or an aborted start.
        Ok(Err(e @ sigvisor_proto::HandoffError::Empty)) => tracing::info!("{peer}: {e}"),
        Ok(Err(e)) => tracing::warn!("{peer}: {e}; dropped"),
        Ok(Ok(handoff)) => drop(supervise(handoff, &peer, &registry, ctx).await),
    }
}

/// Serves a handed-over listener, under the Trace that selects its
/// container if any, until no process uses its filter any more.
pub async fn supervise(handoff: Handoff, peer: &str, registry: &Registry, ctx: Arc<Context>) -> Stats {
    let origin = Origin::of(&handoff);
    let wait_killable = handoff.metadata.wait_killable;
    let watched = handoff.metadata.watched_signals;
    let selected = registry.select(&origin, wait_killable, watched);
    let label = origin.label();
    match &selected {
        Some((trace, _)) => tracing::info!(
            "{label}: listener from {peer}, trace {}, {}",
            trace.name,
            if wait_killable { "precise" } else { "filter not killable: observe only" }
        ),
        None => tracing::info!("{label}: listener from {peer}, selected by no trace: answered at once"),
    }
    // An OCI runtime's init runs under the filter until it execs the
    // container's process; sigvisor-launch makes no trapped call before.
    let runtime_init = (!handoff.metadata.launcher).then_some(origin.pid);
    let describer = Describer::new(registry.node.clone(), origin);
    let retire = selected.clone();
    let handler = Handler::new(selected, wait_killable, watched, runtime_init, describer);
    let stats = notify::supervise(Listener::new(handoff.listener), handler, ctx).await;
    if let Some((trace, counters)) = retire {
        registry.retire(&trace.name, &counters);
    }
    tracing::info!(
        "{label}: done: {} notifications, {} signals, skipped {}",
        stats.notifications,
        stats.signals,
        stats.skipped.iter().map(|(why, n)| format!("{why}: {n}")).collect::<Vec<_>>().join(", ")
    );
    stats
}

/// Removes a socket file this process bound, however the process leaves
/// the scope that holds it (errors included).
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the socket: its directory made if missing (0700), a stale socket
/// replaced, a live one refused, the socket itself mode 0600. The file goes
/// when the returned `SocketFile` is dropped.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another supervisor is already serving on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok((listener, file))
}

/// This machine's name, the default `--node`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

/// Profiles from files and directories (their *.yaml and *.yml, sorted).
pub fn load_profiles(paths: &[PathBuf]) -> Result<Vec<(Trace, Policy)>, crate::profile::ProfileError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| crate::profile::ProfileError {
                    file: path.clone(),
                    field: "(directory)".into(),
                    message: format!("cannot read: {e}"),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut loaded: Vec<(Trace, Policy)> = Vec::new();
    for file in files {
        let (trace, policy) = crate::profile::load(&file)?;
        if loaded.iter().any(|(t, _)| t.metadata.name == trace.metadata.name) {
            return Err(crate::profile::ProfileError {
                file,
                field: "metadata.name".into(),
                message: format!(
                    "a trace named {:?} is already loaded; names must be unique",
                    trace.metadata.name
                ),
            });
        }
        loaded.push((trace, policy));
    }
    Ok(loaded)
}
