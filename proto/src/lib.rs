//! What the launcher and the supervisor agree on.
//!
//! A seccomp listener fd reaches the supervisor the way OCI runtimes hand it
//! to a seccomp agent at `linux.seccomp.listenerPath`: one connection on an
//! AF_UNIX stream socket carrying one `ContainerProcessState` JSON document,
//! with the fds as SCM_RIGHTS on the first message. The index of
//! `"seccompFd"` in `fds` is the index of the listener among those fds.
//! `sigvisor-launch` speaks the same protocol as runc and crun, so the
//! supervisor has a single way in.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

pub use oci_spec::runtime::{ContainerProcessState, ContainerState, State};
use serde::{Deserialize, Serialize};

/// Exit statuses shared by `sigvisor` and `sigvisor-launch`, as `env` and
/// `timeout` use them; a command that runs a program (`sigvisor run`,
/// `sigvisor-launch`) otherwise exits with the program's own status (128+N
/// if signal N killed it).
pub mod exit {
    /// A request the supervisor refused (a control verb's operationError).
    pub const REFUSED: u8 = 1;
    /// A bad profile or bad arguments; the message names file, field, value
    /// and what is accepted.
    pub const USAGE: u8 = 2;
    /// sigvisor or the launcher failed (the supervisor unreachable, say).
    pub const FAILED: u8 = 125;
    /// The program exists but cannot be executed.
    pub const CANNOT_EXECUTE: u8 = 126;
    /// The program was not found.
    pub const NOT_FOUND: u8 = 127;
}

/// The name of the listener in `ContainerProcessState::fds`.
pub const SECCOMP_FD_NAME: &str = "seccompFd";

/// Upper bound on one handoff document. runc and crun send well under 4 KiB
/// (the state plus annotations); anything past this is not a seccomp agent
/// client.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Upper bound on fds accepted with one handoff (the OCI protocol sends one).
pub const MAX_FDS: usize = 16;

/// Syscalls that must never be trapped: the launcher calls them after its
/// filter is loaded and before the supervisor holds the listener, so a
/// notification for them would never be answered.
pub const NEVER_TRAPPED: &[&str] = &["sendmsg", "recvfrom", "execve", "execveat", "exit", "exit_group"];

/// What the supervisor answers a launcher once it holds the listener; any
/// other answer (`error: ...`), or none within the launcher's deadline, and
/// the launcher fails fast instead of waiting in its trapped `execve` for a
/// supervisor that never got the listener
/// (docs/design.md#what-one-tenant-cannot-do).
pub const ACK: &[u8] = b"ok\n";

/// A call that sets a signal's handler, the signal its first argument. The
/// one table of them: the launcher's filter and `sigvisor oci patch` trap
/// each where it sets a watched signal's handler, and the supervisor reads
/// what the trapped call does by the same kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerSetter {
    /// `rt_sigaction(signal, act, oact, size)`.
    RtSigaction,
    /// i386's `sigaction(signal, act, oact)` (struct old_sigaction).
    OldSigaction,
    /// i386's `signal(signal, handler)`.
    Signal,
}

impl HandlerSetter {
    pub const ALL: [HandlerSetter; 3] =
        [HandlerSetter::RtSigaction, HandlerSetter::OldSigaction, HandlerSetter::Signal];

    pub const fn name(self) -> &'static str {
        match self {
            HandlerSetter::RtSigaction => "rt_sigaction",
            HandlerSetter::OldSigaction => "sigaction",
            HandlerSetter::Signal => "signal",
        }
    }

    /// Whether a NULL second argument makes it a query, which changes
    /// nothing and is not trapped (`signal`'s second argument is the
    /// handler itself: SIG_DFL is 0).
    pub fn has_act(self) -> bool {
        self != HandlerSetter::Signal
    }
}

/// The calls that reset every caught handler to its default: trapped
/// always, where handlers are watched.
pub const EXECS: [&str; 2] = ["execve", "execveat"];

/// Syscalls sigvisor traps for itself, so that a profile cannot name them:
/// the handler changes it watches (see `watched_signals`).
pub const HANDLER_SYSCALLS: [&str; 3] =
    [HandlerSetter::RtSigaction.name(), HandlerSetter::OldSigaction.name(), HandlerSetter::Signal.name()];

/// The fault signals. A handler a process installed for one of these is a
/// crash handler (Go's runtime, HotSpot, faulthandler, crash reporters all
/// install one function for several of them), which a sent signal kills.
pub const FAULT_SIGNALS: [i32; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGABRT];

/// The signals whose handlers the filter watches when the supervisor sends
/// `signal`: that one and the fault signals. A set of signals is a mask,
/// bit N-1 for signal N.
pub fn watched_signals(signal: i32) -> u64 {
    FAULT_SIGNALS.iter().chain([&signal]).fold(0, |mask, &s| mask | signal_bit(s))
}

/// Signal `signal`'s bit in a mask; 0 for a number that is no signal.
pub fn signal_bit(signal: i32) -> u64 {
    if (1..=64).contains(&signal) {
        1 << (signal - 1)
    } else {
        0
    }
}

/// The signals of a mask, in order.
pub fn signals_in(mask: u64) -> impl Iterator<Item = i32> {
    (1..=64).filter(move |&s| mask & signal_bit(s) != 0)
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The name sigvisor prints for a signal number.
pub fn signal_name(signal: i32) -> String {
    match SIGNALS.iter().find(|(_, n)| *n == signal) {
        Some((name, _)) => format!("SIG{name}"),
        None => format!("signal {signal}"),
    }
}

/// `SIGILL`, `ILL` (any case) or a number; SIGKILL and SIGSTOP cannot be
/// caught, so they could only ever kill or stop the target.
pub fn parse_signal(value: &str) -> Result<i32, String> {
    let accepted = "accepted: a signal name such as SIGILL or ILL, or a number from 1 to 64 \
                    other than 9 (SIGKILL) and 19 (SIGSTOP)";
    let upper = value.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = match SIGNALS.iter().find(|(name, _)| *name == bare) {
        Some((_, n)) => *n,
        None => match value.trim().parse::<i32>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => return Err(format!("invalid value {value:?}; {accepted}")),
        },
    };
    if number == libc::SIGKILL || number == libc::SIGSTOP {
        return Err(format!(
            "invalid value {value:?}: it cannot be caught, so it could only kill or stop the target; {accepted}"
        ));
    }
    Ok(number)
}

/// `listenerMetadata` as written by sigvisor (the launcher, or an OCI config
/// that sigvisor patched). Runtimes pass the configured string through
/// untouched; any string that is not this JSON object is treated as opaque
/// user text about a filter whose flags are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The filter was loaded with `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`.
    /// Only then may a signal be sent before CONTINUE
    /// (docs/design.md#the-order-recv-signal-continue).
    pub wait_killable: bool,
    /// Sent by `sigvisor-launch` (not by an OCI runtime, whose init would
    /// run under the filter until it execs the container's process).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub launcher: bool,
    /// Free text the user attached (`sigvisor-launch --metadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The signals (a mask, see `signal_bit`) whose handler changes the
    /// filter traps, with `execve` and `execveat`; 0 for a filter that
    /// traps none of them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub watched_signals: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Metadata {
    /// Reads `listenerMetadata`. Anything that is not sigvisor's JSON is
    /// user text with `wait_killable: false`, the assumption that never makes
    /// the supervisor interrupt a syscall.
    pub fn parse(raw: Option<&str>) -> Metadata {
        match raw {
            None => Metadata::default(),
            Some(s) => serde_json::from_str(s).unwrap_or_else(|_| Metadata {
                user: (!s.is_empty()).then(|| s.to_owned()),
                ..Metadata::default()
            }),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing a struct of a bool and a string cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A handoff as it arrived: the state document and the listener it names.
#[derive(Debug)]
pub struct Handoff {
    pub state: ContainerProcessState,
    pub metadata: Metadata,
    /// Whether `metadata` is sigvisor's JSON (else it says nothing of the
    /// filter: the supervisor has to find out from the runtime's config).
    pub metadata_is_ours: bool,
    pub listener: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("reading the connection: {0}")]
    Io(#[from] io::Error),
    #[error("empty connection: no message and no fds (a runtime that aborted its start?)")]
    Empty,
    #[error("message is not a ContainerProcessState JSON document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("`fds` does not name \"{SECCOMP_FD_NAME}\" (names: {0:?})")]
    NoSeccompFd(Vec<String>),
    #[error(
        "`fds` names \"{SECCOMP_FD_NAME}\" at index {index} but only {received} fds came with the message"
    )]
    MissingFd { index: usize, received: usize },
}

/// After a read of `n` more bytes of a handoff: whether the message is
/// complete, too long, or not yet (None). It ends at EOF or as soon as the
/// bytes hold one whole JSON document, whichever comes first: a sender whose
/// filter is already loaded may block in a trapped close() of this very
/// socket, and waiting for its EOF would wait for the supervisor's answer.
pub fn message_complete(n: usize, bytes: &[u8]) -> Option<Result<(), HandoffError>> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Some(Err(HandoffError::TooLong));
    }
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    (n == 0 || matches!(values.next(), Some(Ok(_)))).then_some(Ok(()))
}

/// The supervisor's answer to a handoff: `ACK`, or `error: ...`.
pub fn reply_text<T>(received: &Result<T, HandoffError>) -> Vec<u8> {
    match received {
        Ok(_) => ACK.to_vec(),
        Err(e) => format!("error: {e}\n").into_bytes(),
    }
}

/// Decodes one complete handoff. Fds not named `seccompFd` are dropped
/// (closed) here, so a sloppy client cannot make the supervisor leak.
pub fn decode(bytes: &[u8], mut fds: Vec<OwnedFd>) -> Result<Handoff, HandoffError> {
    if bytes.iter().all(u8::is_ascii_whitespace) && fds.is_empty() {
        return Err(HandoffError::Empty);
    }
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(HandoffError::TooLong);
    }
    let state: ContainerProcessState = serde_json::from_slice(bytes)?;
    let index = state
        .fds()
        .iter()
        .position(|name| name == SECCOMP_FD_NAME)
        .ok_or_else(|| HandoffError::NoSeccompFd(state.fds().clone()))?;
    if index >= fds.len() {
        return Err(HandoffError::MissingFd { index, received: fds.len() });
    }
    let listener = fds.swap_remove(index);
    let raw = state.metadata().as_deref();
    let metadata_is_ours = raw.is_some_and(|m| serde_json::from_str::<Metadata>(m).is_ok());
    let metadata = Metadata::parse(raw);
    Ok(Handoff { state, metadata, metadata_is_ours, listener })
}

/// Encodes the launcher's handoff: its own pid, the listener as `seccompFd`,
/// the metadata, and the container it runs in when it was told
/// (`sigvisor oci patch` wraps entrypoints with `--container-id`).
pub fn encode(
    pid: i32,
    metadata: &Metadata,
    container_id: &str,
    bundle: &str,
    annotations: &[(String, String)],
) -> Vec<u8> {
    let mut state = State::default();
    if !annotations.is_empty() {
        *state.annotations_mut() = Some(annotations.iter().cloned().collect());
    }
    *state.version_mut() = oci_spec::runtime::VERSION.to_owned();
    *state.id_mut() = container_id.to_owned();
    *state.status_mut() = ContainerState::Creating;
    *state.pid_mut() = Some(pid);
    *state.bundle_mut() = bundle.into();
    let mut message = ContainerProcessState::default();
    *message.version_mut() = oci_spec::runtime::VERSION.to_owned();
    *message.fds_mut() = vec![SECCOMP_FD_NAME.to_owned()];
    *message.pid_mut() = pid;
    *message.metadata_mut() = Some(metadata.to_json());
    *message.state_mut() = state;
    // Serializing plain strings and integers cannot fail.
    serde_json::to_vec(&message).unwrap_or_default()
}

/// Sends `message` with `fd` attached as SCM_RIGHTS, in one `sendmsg(2)`.
///
/// Allocation-free and a single syscall on purpose: the launcher calls this
/// after its filter is loaded, when any other syscall (a `brk` from malloc
/// included) might be one the profile traps, with nobody yet to answer it.
pub fn send_with_fd(socket: BorrowedFd<'_>, message: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    const SPACE: usize = unsafe { libc::CMSG_SPACE(INT_LEN) } as usize;
    const INT_LEN: u32 = std::mem::size_of::<libc::c_int>() as u32;
    #[repr(C)]
    union ControlBuffer {
        bytes: [u8; SPACE],
        _align: libc::cmsghdr,
    }
    let mut control = ControlBuffer { bytes: [0; SPACE] };
    let mut sent = 0;
    while sent < message.len() {
        let rest = &message[sent..];
        let mut iov = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
        // SAFETY: msghdr is plain old data; all-zero is its empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // The fd travels with the first byte only.
        if sent == 0 {
            msg.msg_control = &mut control as *mut ControlBuffer as *mut libc::c_void;
            msg.msg_controllen = SPACE as _;
            // SAFETY: msg_control points at SPACE bytes, room for one cmsghdr
            // carrying one int, so CMSG_FIRSTHDR is non-null and its data in bounds.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(INT_LEN) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, fd.as_raw_fd());
            }
        }
        // SAFETY: msg points at the live iov and control buffers above.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            sent += n as usize;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip_and_foreign_text() {
        let m = Metadata { wait_killable: true, launcher: true, user: Some("x".into()), watched_signals: 5 };
        assert_eq!(Metadata::parse(Some(&m.to_json())), m);
        let foreign = Metadata::parse(Some("set by an operator"));
        assert!(!foreign.wait_killable);
        assert_eq!(foreign.user.as_deref(), Some("set by an operator"));
        assert_eq!(Metadata::parse(None), Metadata::default());
    }

    #[test]
    fn watched_signals_are_the_fault_signals_and_the_sent_one() {
        let watched: Vec<i32> = signals_in(watched_signals(libc::SIGUSR1)).collect();
        assert_eq!(watched, [4, 6, 7, 8, 10, 11]);
        assert_eq!(watched_signals(libc::SIGILL).count_ones(), 5);
        assert_eq!(parse_signal("usr1"), Ok(libc::SIGUSR1));
        assert_eq!(signal_name(libc::SIGILL), "SIGILL");
    }

    #[test]
    fn signal_forms() {
        assert_eq!(parse_signal("SIGUSR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("ill"), Ok(libc::SIGILL));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("SIGKILL").is_err());
        assert!(parse_signal("9").is_err());
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("65").is_err());
    }

    #[test]
    fn decode_accepts_runc_and_crun_shapes() {
        let runc = br#"{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":42,"metadata":"m","state":{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":42,"bundle":"/b"}}"#;
        let crun = b"{\n  \"ociVersion\": \"0.2.0\",\n  \"fds\": [\n    \"seccompFd\"\n  ],\n  \"pid\": 7,\n  \"metadata\": \"\",\n  \"state\": {\n    \"ociVersion\": \"0.2.0\",\n    \"id\": \"c2\",\n    \"status\": \"creating\",\n    \"pid\": 7,\n    \"bundle\": \"/b\",\n    \"annotations\": {}\n  }\n}\n";
        for raw in [&runc[..], &crun[..]] {
            let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
            let h = decode(raw, vec![fd]).unwrap();
            assert!(!h.metadata.wait_killable);
            assert!(!h.metadata_is_ours);
        }
    }

    #[test]
    fn decode_refuses_bad_messages() {
        assert!(matches!(decode(b"", vec![]), Err(HandoffError::Empty)));
        assert!(matches!(decode(b"garbage", vec![]), Err(HandoffError::Json(_))));
        let no_fd = br#"{"ociVersion":"1","fds":["other"],"pid":1,"state":{"ociVersion":"1","id":"","status":"creating","bundle":""}}"#;
        assert!(matches!(decode(no_fd, vec![]), Err(HandoffError::NoSeccompFd(_))));
        let missing = br#"{"ociVersion":"1","fds":["seccompFd"],"pid":1,"state":{"ociVersion":"1","id":"","status":"creating","bundle":""}}"#;
        assert!(matches!(decode(missing, vec![]), Err(HandoffError::MissingFd { .. })));
    }

    #[test]
    fn encode_decodes() {
        let m = Metadata { wait_killable: true, launcher: true, user: None, watched_signals: 0 };
        let annotations = [("io.kubernetes.cri.sandbox-name".to_owned(), "web-0".to_owned())];
        let bytes = encode(1234, &m, "c1", "/b", &annotations);
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let h = decode(&bytes, vec![fd]).unwrap();
        assert_eq!(*h.state.pid(), 1234);
        assert_eq!(h.metadata, m);
        assert!(h.metadata_is_ours);
        let got = h.state.state().annotations().clone().unwrap_or_default();
        assert_eq!(got.get("io.kubernetes.cri.sandbox-name").map(String::as_str), Some("web-0"));
        let bytes = encode(1, &m, "", "", &[]);
        let h = decode(&bytes, vec![OwnedFd::from(std::fs::File::open("/dev/null").unwrap())]).unwrap();
        assert!(h.state.state().annotations().is_none(), "none given, none sent");
    }
}
