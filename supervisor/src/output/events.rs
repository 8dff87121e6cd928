//! Stream and File output: one JSON line per notification.
//!
//! Built only when someone reads it (a `sigvisor stream` client, or a File
//! output), so Status traces pay nothing for it on the notification path.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Component, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use libseccomp::ScmpSyscall;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::callers::Caller;
use crate::output::skip::Skip;
use crate::stacks::Stack;
use crate::sys::seccomp::{Listener, Notification};
use crate::trace::container::Origin;
use crate::trace::policy::OutputMode;

/// The directory serve writes File outputs in (`--output-dir`).
pub struct OutputDir {
    pub path: PathBuf,
    fd: OwnedFd,
}

impl OutputDir {
    /// Opens it, made 0700 if missing.
    pub fn open(path: &std::path::Path) -> std::io::Result<OutputDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        let fd =
            nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(OutputDir { path: path.to_owned(), fd })
    }
}

/// Events a slow `stream` client may fall behind by before it loses some.
const STREAM_BACKLOG: usize = 4096;

/// Where a Trace's events go.
#[derive(Clone, Default)]
pub enum Sink {
    /// Status output: no events.
    #[default]
    None,
    Stream(broadcast::Sender<Arc<str>>),
    File(Arc<Mutex<File>>),
}

impl Sink {
    /// The sink for an output mode, before the Trace starts: a Stream can
    /// be followed at once; a File is opened by `open` at start.
    pub fn prepare(output_mode: OutputMode) -> Sink {
        match output_mode {
            OutputMode::Stream => Sink::Stream(broadcast::channel(STREAM_BACKLOG).0),
            _ => Sink::None,
        }
    }

    /// Opens a File output for appending; the error is an operationError.
    /// Inside `dir` when given (serve's output directory, since whoever
    /// may create a Trace must not choose where root writes): a relative
    /// path below it, resolved with no symbolic link at all. Anywhere
    /// else (`sigvisor run`, the user's own path): the last component is
    /// never a symbolic link. Created 0600 either way.
    pub fn open_file(path: &str, dir: Option<&OutputDir>) -> Result<Sink, String> {
        if path.is_empty() {
            return Err("outputMode File needs spec.output, the path to append events to".into());
        }
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        let opened = match dir {
            Some(dir) => {
                let inside = !path.starts_with('/')
                    && std::path::Path::new(path).components().all(|c| matches!(c, Component::Normal(_)));
                if !inside {
                    return Err(format!(
                        "spec.output {path:?} must be a relative path inside the output directory {} \
                         (no leading '/', no '..')",
                        dir.path.display()
                    ));
                }
                let how = OpenHow::new()
                    .flags(flags)
                    .mode(mode)
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                openat2(&dir.fd, path, how)
            }
            None => nix::fcntl::open(path, flags, mode),
        };
        let shown = match dir {
            Some(dir) => dir.path.join(path).display().to_string(),
            None => path.to_owned(),
        };
        opened.map(|fd| Sink::File(Arc::new(Mutex::new(File::from(fd))))).map_err(|e| match e {
            nix::errno::Errno::ELOOP => {
                format!("the output file {shown:?} is a symbolic link (or passes one): refused")
            }
            e => format!("cannot open the output file {shown:?}: {e}"),
        })
    }

    pub fn wants_events(&self) -> bool {
        match self {
            Sink::None => false,
            Sink::Stream(tx) => tx.receiver_count() > 0,
            Sink::File(_) => true,
        }
    }

    /// A receiver of this Trace's events; one that ends at once if the
    /// Trace does not stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        match self {
            Sink::Stream(tx) => tx.subscribe(),
            _ => broadcast::channel(1).1,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Sink::Stream(_))
    }

    pub fn send(&self, line: String) {
        match self {
            Sink::None => {}
            // No receiver is not an error: nobody is following right now.
            Sink::Stream(tx) => drop(tx.send(line.into())),
            Sink::File(file) => {
                let mut file = crate::shared::lock(file);
                if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.write_all(b"\n")) {
                    tracing::warn!("appending an event to the output file: {e}");
                }
            }
        }
    }
}

#[derive(Serialize)]
struct Event<'a> {
    time: String,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerRef<'a>>,
    pid: i32,
    tid: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    comm: &'a str,
    syscall: &'a str,
    args: [u64; 6],
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    result: &'a str,
    /// The caller's stack, when the Trace asks for stacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<&'a Stack>,
}

#[derive(Serialize)]
struct ContainerRef<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pod: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
}

/// What became of a notification, for its event.
#[derive(Clone, Copy)]
pub struct Happened<'a> {
    pub caller: Option<&'a Caller>,
    pub skipped: Option<Skip>,
    pub stack: Option<&'a Stack>,
    pub result: &'a str,
}

/// What one listener needs to describe its notifications.
pub struct Describer {
    pub node: String,
    pub origin: Origin,
    names: HashMap<(u32, i32), Arc<str>>,
}

/// A notification's description, gathered before the answer.
pub struct Pending {
    syscall: Arc<str>,
    /// For close, the path its fd referred to.
    pub path: Option<String>,
}

impl Describer {
    pub fn new(node: String, origin: Origin) -> Describer {
        Describer { node, origin, names: HashMap::new() }
    }

    /// Before CONTINUE: the syscall's name and, for close, the path its fd
    /// refers to, read while the call still waits (and proven by ID_VALID
    /// after the read to belong to this call, not a later one).
    pub fn before_answer(&mut self, listener: &Listener, notif: &Notification) -> Pending {
        let key = (notif.data.arch, notif.data.nr);
        let syscall = Arc::clone(self.names.entry(key).or_insert_with(|| syscall_name(key.0, key.1).into()));
        let path = (&*syscall == "close")
            .then(|| {
                std::fs::read_link(crate::procfs::path(
                    notif.pid as i32,
                    &format!("fd/{}", notif.data.args[0] as i32),
                ))
                .ok()
            })
            .flatten()
            .filter(|_| listener.id_valid(notif.id))
            .map(|p| p.to_string_lossy().into_owned());
        Pending { syscall, path }
    }

    /// After CONTINUE: the event line, to the sink.
    pub fn emit(&self, sink: &Sink, notif: &Notification, pending: &Pending, happened: &Happened<'_>) {
        if let Some(event) = self.render(notif, pending, happened) {
            sink.send(event.to_string());
        }
    }

    /// The event, as JSON, for a sink (now, or once its stack is named).
    pub fn render(
        &self,
        notif: &Notification,
        pending: &Pending,
        happened: &Happened<'_>,
    ) -> Option<serde_json::Value> {
        let Happened { caller, skipped, stack, result } = *happened;
        let event = Event {
            time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            node: &self.node,
            container: (!self.origin.id.is_empty()).then(|| ContainerRef {
                id: &self.origin.id,
                name: self.origin.name(),
                pod: self.origin.pod(),
                namespace: self.origin.namespace(),
            }),
            pid: caller.map_or(0, |c| c.tgid),
            tid: notif.pid as i32,
            comm: caller.map_or("", |c| &*c.name),
            syscall: &pending.syscall,
            args: notif.data.args,
            path: pending.path.as_deref(),
            action: if skipped.is_some() { "skipped" } else { "signalled" },
            reason: skipped.map(|why| why.to_string()),
            result,
            stack,
        };
        serde_json::to_value(&event).map_err(|e| tracing::warn!("rendering an event: {e}")).ok()
    }
}

/// The name of syscall `nr` of the ABI `arch` (an AUDIT_ARCH_* value).
fn syscall_name(arch: u32, nr: i32) -> String {
    crate::sys::seccomp::abi(arch, nr)
        .and_then(|abi| ScmpSyscall::from(nr).get_name_by_arch(abi).ok())
        .unwrap_or_else(|| format!("syscall {nr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_syscalls_of_each_abi() {
        assert_eq!(syscall_name(0xC000_003E, 3), "close");
        assert_eq!(syscall_name(0x4000_0003, 6), "close");
        assert_eq!(syscall_name(0x1234, 3), "syscall 3");
    }
}
