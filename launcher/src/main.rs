//! `sigvisor-launch`: the first step of the data path.
//!
//! Loads a seccomp filter that turns the named syscalls into user
//! notifications, hands the listener to a supervisor over the OCI seccomp
//! agent protocol, and execs CMD. Small and tokio-free on purpose: it also
//! runs inside containers as a static binary in front of an entrypoint.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod exec;
mod filter;

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sigvisor_proto::exit::FAILED;
use sigvisor_proto::{Metadata, HANDLER_SYSCALLS, NEVER_TRAPPED};

/// What an error message on stderr may call (formatting can allocate).
const PRINTING_NEEDS: &[&str] = &["write", "writev", "brk", "mmap", "munmap", "mremap", "futex"];

/// Run CMD with syscalls trapped by seccomp and supervised by sigvisor.
///
/// The listener fd goes to the supervisor as an OCI ContainerProcessState
/// message (the protocol runc and crun use for `linux.seccomp.listenerPath`).
/// CMD and every process it starts inherit the filter. Exit status: CMD's
/// own once it runs; 125 if the launcher fails; 126 if CMD cannot be
/// executed; 127 if CMD is not found.
#[derive(Parser)]
#[command(version, max_term_width = 100)]
#[command(group = clap::ArgGroup::new("to").required(true).args(["socket", "socket_fd"]))]
struct Args {
    /// Supervisor socket to connect to (e.g. `sigvisor serve`'s).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// An already connected socket inherited as this fd (`sigvisor run` uses this).
    #[arg(long, value_name = "N")]
    socket_fd: Option<i32>,
    /// A syscall to trap; repeat for several. Default: close.
    #[arg(long = "syscall", value_name = "NAME")]
    syscalls: Vec<String>,
    /// The signal the supervisor will send (a name such as SIGILL, or a
    /// number). The filter also traps the calls that change its handler and
    /// the fault signals' (rt_sigaction, execve), so the supervisor knows
    /// which processes can take it without dying.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGILL", value_parser = sigvisor_proto::parse_signal)]
    signal: i32,
    /// Trap no handler changes (tests of the supervisor's /proc fallback).
    #[arg(long, hide = true)]
    no_handler_rules: bool,
    /// Free text passed to the supervisor with the listener.
    #[arg(long, value_name = "TEXT")]
    metadata: Option<String>,
    /// The container this runs in, for the supervisor's attribution
    /// (`sigvisor oci patch` sets it when it wraps an entrypoint).
    #[arg(long, value_name = "ID", default_value = "")]
    container_id: String,
    /// The container's bundle, likewise.
    #[arg(long, value_name = "PATH", default_value = "")]
    bundle: String,
    /// One of the container's annotations (the CRI's pod and container
    /// names among them), likewise; repeat for each.
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    annotations: Vec<(String, String)>,
    /// Load the filter without WAIT_KILLABLE_RECV, as runc does (for tests
    /// of the supervisor's policy for such filters).
    #[arg(long, hide = true)]
    no_wait_killable: bool,
    /// How long to wait for the supervisor to say it holds the listener
    /// before failing (exit 125) rather than starting CMD unsupervised.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    ack_timeout: f64,
    /// The program to run, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<OsString>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sigvisor-launch: {message}");
    ExitCode::from(FAILED)
}

fn connect(args: &Args) -> Result<OwnedFd, String> {
    if let Some(path) = &args.socket {
        return UnixStream::connect(path).map(OwnedFd::from).map_err(|e| {
            format!(
                "cannot reach the supervisor at {}: {e}; is `sigvisor serve` running there? \
                 CMD was not started",
                path.display()
            )
        });
    }
    let n = args.socket_fd.unwrap_or(-1);
    // SAFETY: stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on any integer writes into the stat buffer only.
    let statted = n >= 0 && unsafe { libc::fstat(n, &mut st) } == 0;
    if !statted || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("--socket-fd {n}: not an open socket"));
    }
    // SAFETY: fd n is open (fstat succeeded) and was handed to us to own.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    // CLOEXEC, so the exec closes it and CMD never needs to call close().
    // SAFETY: plain fcntl on an fd we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// Waits for the supervisor's word that it holds the listener. Nothing is
/// allocated unless it failed.
fn acknowledged(socket: &OwnedFd, timeout: std::time::Duration) -> Result<(), String> {
    let mut answer = [0u8; 512];
    // SAFETY: recv writes at most answer.len() bytes into our buffer.
    let n = unsafe { libc::recv(socket.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
    match usize::try_from(n) {
        Ok(n) if answer[..n].starts_with(sigvisor_proto::ACK) => Ok(()),
        Ok(0) => Err("the supervisor closed the connection without taking the listener \
                      (see its log: is it short of file descriptors?)"
            .into()),
        Ok(n) => Err(format!(
            "the supervisor did not take the listener: {}",
            String::from_utf8_lossy(&answer[..n]).trim_end()
        )),
        Err(_) => Err(format!(
            "the supervisor did not confirm it holds the listener within {timeout:?} ({})",
            std::io::Error::last_os_error()
        )),
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.syscalls.is_empty() {
        args.syscalls.push("close".into());
    }
    if let Some(bad) = args.syscalls.iter().find(|s| NEVER_TRAPPED.contains(&s.as_str())) {
        return fail(format_args!(
            "--syscall {bad}: cannot be trapped (the launcher itself needs {} to start CMD)",
            NEVER_TRAPPED.join(", ")
        ));
    }
    if let Some(bad) = args.syscalls.iter().find(|s| HANDLER_SYSCALLS.contains(&s.as_str())) {
        return fail(format_args!("--syscall {bad}: reserved, sigvisor traps it itself to know handlers"));
    }
    let watched = if args.no_handler_rules { 0 } else { sigvisor_proto::watched_signals(args.signal) };
    let program = match filter::compile(&args.syscalls, watched) {
        Ok(p) => p,
        Err(e) => return fail(format_args!("{e:#}")),
    };
    let target = match exec::prepare(&args.cmd) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sigvisor-launch: {}", e.message);
            return ExitCode::from(e.status);
        }
    };
    let socket = match connect(&args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // The acknowledgement is read with a deadline (set now: nothing may
    // allocate after the load).
    let timeout = std::time::Duration::from_secs_f64(args.ack_timeout.clamp(0.001, 3600.0));
    let tv = libc::timeval { tv_sec: timeout.as_secs() as _, tv_usec: timeout.subsec_micros() as _ };
    // SAFETY: setsockopt reads a timeval we own, of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return fail(format_args!("setsockopt(SO_RCVTIMEO): {}", std::io::Error::last_os_error()));
    }
    // Rust's runtime ignores SIGPIPE, and an ignored signal stays ignored
    // across execve: give CMD the default disposition it expects.
    // SAFETY: restoring a default disposition has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Without CAP_SYS_ADMIN the kernel requires no_new_privs for a filter;
    // with it, leave setuid programs in CMD working.
    let admin = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_ADMIN);
    if !admin.unwrap_or(false) {
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return fail(format_args!("prctl(NO_NEW_PRIVS): {}", std::io::Error::last_os_error()));
        }
    }
    // Both possible messages are encoded now: after the load nothing may
    // allocate (a trapped brk or mmap would wait for an absent supervisor).
    let pid = std::process::id() as i32;
    let message = |wait_killable| {
        let metadata =
            Metadata { wait_killable, launcher: true, user: args.metadata.clone(), watched_signals: watched };
        sigvisor_proto::encode(pid, &metadata, &args.container_id, &args.bundle, &args.annotations)
    };
    let (killable_message, plain_message) = (message(true), message(false));

    let loaded = match filter::load(&program, !args.no_wait_killable) {
        Ok(l) => l,
        Err(e) => return fail(format_args!("seccomp(SET_MODE_FILTER): {e}")),
    };
    let chosen = if loaded.wait_killable { &killable_message } else { &plain_message };
    let sent = sigvisor_proto::send_with_fd(socket.as_fd(), chosen, loaded.listener.as_fd());
    let taken = match sent {
        Err(e) => Err(format!("handing the listener to the supervisor failed: {e}")),
        Ok(()) => acknowledged(&socket, timeout),
    };
    if let Err(why) = taken {
        // The listener may be ours alone, and then a trapped syscall (our
        // execve) would wait forever: speak only if printing needs nothing
        // trapped, and leave with _exit, since destructors would close()
        // the fds. CMD was not started.
        if !args.syscalls.iter().any(|s| PRINTING_NEEDS.contains(&s.as_str())) {
            eprintln!("sigvisor-launch: {why}; CMD was not started");
        }
        // SAFETY: ends the process without running anything else.
        unsafe { libc::_exit(FAILED.into()) };
    }
    // The supervisor holds the listener now; CLOEXEC drops both fds at exec.
    let err = target.exec();
    eprintln!("sigvisor-launch: {}", err.message);
    ExitCode::from(err.status)
}
