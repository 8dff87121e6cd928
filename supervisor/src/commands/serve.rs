//! `sigvisor serve`: a long-running supervisor on a unix socket speaking the
//! OCI seccomp agent protocol, for runc, crun, youki and `sigvisor-launch`.
//!
//! Every connection is its own task: a bad or silent client is logged and
//! dropped, a listener that fails goes to the keeper, and the server keeps
//! serving. The keeper (keeper/mod.rs) holds a copy of every listener, so
//! that stopping, restarting or killing serve never fails a container's
//! call; at start, serve takes back whatever the keeper holds, and the
//! Traces from its state directory.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use super::instance::Instance;
use crate::control::registry::Registry;
use crate::intake::attach::{self, Keeping};
use crate::keeper::link::{Link, Taken};
use crate::path::notify::{Context, LoopMode};
use crate::sys::socket;
use crate::trace::peer::Peer;
use crate::trace::policy::Policy;
use crate::trace::profile::Trace;
use crate::trace::state::{Saved, Source, StateDir};

pub struct ServeOptions {
    /// Its sockets and state directory.
    pub instance: Instance,
    pub node: String,
    pub traces: Vec<(Trace, Policy)>,
    pub status_file: Option<PathBuf>,
    pub handoff_timeout: Duration,
    /// Where File outputs go; STATE_DIR/outputs by default.
    pub output_dir: Option<PathBuf>,
    /// The keeper serve starts answers a call serve leaves waiting this long.
    pub answer_within: Duration,
    pub loop_mode: LoopMode,
    /// Traces from the Kubernetes API too, with this kubeconfig (None:
    /// the user's, else in-cluster).
    pub kubernetes: Option<Option<PathBuf>>,
}

/// Serves until SIGINT or SIGTERM, then writes every Trace's status and
/// exits, leaving the listeners to the keeper.
pub async fn serve(opts: ServeOptions) -> Result<i32> {
    let registry = Arc::new(Registry::new(opts.node.clone(), false));
    let Instance { socket: agent, control, keeper, state_dir } = &opts.instance;
    let state = StateDir::open(state_dir)?;
    let outputs = opts.output_dir.clone().unwrap_or_else(|| state_dir.join("outputs"));
    let outputs = crate::output::events::OutputDir::open(&outputs)
        .with_context(|| format!("opening the output directory {}", outputs.display()))?;
    registry.keep_outputs_in(outputs);
    let given: Vec<String> = opts.traces.iter().map(|(t, _)| t.metadata.name.clone()).collect();
    for (trace, policy) in opts.traces {
        registry.declare(trace, policy);
    }
    restore(&registry, state.load(), &given, opts.kubernetes.is_some());
    for trace in registry.list() {
        let status = trace.status.unwrap_or_default();
        let error = status.operation_error;
        let error = if error.is_empty() { error } else { format!(", {error}") };
        tracing::info!("trace {}: state {:?}{error}", trace.metadata.name, status.state);
    }
    registry.keep_state_in(state);
    // sigvisor's own directory, whoever made it (a DaemonSet's host path).
    if let Some(dir) = Path::new(super::instance::DEFAULT_SOCKET).parent().filter(|d| agent.starts_with(d)) {
        socket::claim_dir(dir)?;
    }
    let (control_socket, _control_file) = socket::bind(control, socket::Access::Owner)?;
    let log = state_dir.join("keeper.log");
    let Taken { link: keeper, adopted, agent: held_agent } = Link::connect(keeper, &log, opts.answer_within)?;
    let listener = agent_socket(agent, held_agent, &keeper)?;
    tokio::spawn(crate::control::serve(control_socket, Arc::clone(&registry)));
    if let Some(kubeconfig) = &opts.kubernetes {
        let client = crate::cluster::client(kubeconfig.as_deref()).await?;
        tokio::spawn(crate::cluster::run(client, Arc::clone(&registry), opts.node.clone()));
    }
    let ctx = Context::new(opts.loop_mode);
    if !adopted.is_empty() {
        tracing::info!("took {} listeners back from the keeper", adopted.len());
    }
    for a in adopted {
        let Some(custody) = keeper.custody(a.slot) else { continue };
        let (registry, ctx) = (Arc::clone(&registry), Arc::clone(&ctx));
        tokio::spawn(async move {
            let keeping = Keeping::Adopted(custody, a.known);
            attach::supervise(a.handoff, "the keeper", a.runtime.as_deref(), &registry, ctx, keeping).await
        });
    }
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tracing::info!(
        "serving on {} (node {}), control on {}, state in {}",
        agent.display(),
        opts.node,
        control.display(),
        state_dir.display()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let cred = stream.peer_cred().ok();
                    let peer = cred.and_then(|c| Some(Peer { pid: c.pid()?, uid: c.uid() }));
                    // Now: runc has exited by the time its handoff is read.
                    let runtime = peer.and_then(|p| crate::trace::container::runtime_name(p.pid));
                    let fd = match stream.into_std() {
                        Ok(s) => OwnedFd::from(s),
                        Err(e) => { tracing::warn!("{}: {e}", describe(peer)); continue }
                    };
                    let shared = (Arc::clone(&registry), Arc::clone(&ctx), Arc::clone(&keeper));
                    tokio::spawn(connection(fd, peer, runtime, shared, opts.handoff_timeout));
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
    keeper.stopping();
    tracing::info!("stopping: the keeper answers the listeners' calls until serve is started again");
    crate::stacks::settle_all(attach::STACKS_SETTLE).await;
    crate::output::status::write_status(&registry.list(), opts.status_file.as_deref())?;
    Ok(0)
}

fn describe(peer: Option<Peer>) -> String {
    peer.map_or_else(|| "unknown peer".into(), |p| format!("peer pid {} uid {}", p.pid, p.uid))
}

/// One client: receive its listener, then serve it to the end.
async fn connection(
    fd: OwnedFd,
    peer: Option<Peer>,
    runtime: Option<String>,
    (registry, ctx, keeper): (Arc<Registry>, Arc<Context>, Arc<Link>),
    timeout: Duration,
) {
    let who = describe(peer);
    match tokio::time::timeout(timeout, crate::intake::handoff::receive(fd)).await {
        Err(_) => tracing::warn!("{who}: no complete handoff within {timeout:?}; dropped"),
        // A probe (`sigvisor oci patch` checks the socket) or an aborted start.
        Ok(Err(e @ sigvisor_proto::HandoffError::Empty)) => tracing::debug!("{who}: {e}"),
        Ok(Err(e)) => tracing::warn!("{who}: {e}; dropped"),
        Ok(Ok(mut handoff)) => {
            if let Some(why) = crate::trace::peer::vet(&mut handoff, peer) {
                tracing::warn!("{why}");
            }
            let keeping = Keeping::New(keeper);
            drop(attach::supervise(handoff, &who, runtime.as_deref(), &registry, ctx, keeping).await)
        }
    }
}

/// The agent socket: the keeper's, if it holds the one at `path` (it
/// accepted on it while no supervisor was attached); else bound anew, and
/// a copy given to the keeper, so that the socket outlives this process.
fn agent_socket(path: &Path, held: Option<(PathBuf, OwnedFd)>, keeper: &Link) -> Result<UnixListener> {
    if let Some((_, socket)) = held.filter(|(p, _)| p == path && path.exists()) {
        let socket = std::os::unix::net::UnixListener::from(socket);
        socket.set_nonblocking(true)?;
        tracing::info!("took the agent socket {} back from the keeper", path.display());
        return Ok(UnixListener::from_std(socket)?);
    }
    let (listener, file) = socket::bind(path, socket::Access::Mounted)?;
    if keeper.give_agent(path, listener.as_fd()) {
        // The keeper removes it when it exits.
        file.leave();
    }
    Ok(listener)
}

/// Traces saved by an earlier serve of this instance. The declared ones
/// (given on the command line now) keep their given spec and take back
/// their state; applied ones (`sigvisor apply`) come back whole; a Trace
/// that was declared then and is not now stays gone: the command line is
/// the declared set. The Kubernetes API's come back to a serve that takes
/// Traces from it, until it says otherwise.
fn restore(registry: &Registry, saved: Vec<Saved>, given: &[String], kubernetes: bool) {
    for Saved { trace, policy, state, source } in saved {
        let name = trace.metadata.name.clone();
        if !given.contains(&name) {
            match source {
                Source::Declared => {
                    tracing::info!(
                        "trace {name}: declared by an earlier serve and not by this one, left out"
                    );
                    continue;
                }
                Source::Cluster if !kubernetes => {
                    tracing::info!(
                        "trace {name}: from the Kubernetes API, and this serve has no --kubernetes: left out"
                    );
                    continue;
                }
                Source::Cluster => registry.apply_from_cluster(trace, policy),
                Source::Applied => registry.apply(trace, policy),
            };
        }
        let operations: &[&str] = match state.as_str() {
            "Started" => &["start"],
            "Stopped" => &["start", "stop"],
            _ => &[],
        };
        for op in operations {
            let _ = registry.operation(&name, op);
        }
    }
}

/// Profiles from files and directories (their *.yaml and *.yml, sorted).
pub fn load_profiles(paths: &[PathBuf]) -> Result<Vec<(Trace, Policy)>, crate::trace::profile::ProfileError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| crate::trace::profile::ProfileError {
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
        let (trace, policy) = crate::trace::profile::load(&file)?;
        if loaded.iter().any(|(t, _)| t.metadata.name == trace.metadata.name) {
            return Err(crate::trace::profile::ProfileError {
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
