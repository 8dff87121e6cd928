//! `sigvisor`: the command line of the supervisor library (lib.rs).

#![deny(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sigvisor::commands::instance::{self, Instance};
use sigvisor::commands::{self, oci, run, serve, shim};
use sigvisor::control::verbs;
use sigvisor::path::notify;
use sigvisor::trace::profile;
use sigvisor_proto::exit::{FAILED, USAGE};

/// Signal the thread that makes a trapped syscall, right at the syscall's
/// return site, and let the syscall run unchanged.
///
/// For every close(2) (or other syscall a profile names) a supervised
/// program makes, sigvisor sends a signal (SIGILL by default) to the calling
/// thread, timed so that its handler runs just after the syscall completed.
/// A program whose handler dumps its stacks then shows who made each call.
/// Profiles are Inspektor Gadget Trace resources: see docs/profiles.md.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=sigvisor=debug).
#[derive(Parser)]
#[command(version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD and its descendants under supervision.
    ///
    /// Exits with CMD's status (128+N if signal N killed it), after every
    /// process that inherited the filter is gone; 2 for a bad profile; 125
    /// if sigvisor itself fails; 126/127 if CMD cannot be run or found.
    /// Prints the Trace with its status to stderr (or --status-file) at the
    /// end; with outputMode Stream, its events too, as they happen.
    #[command(after_help = "Example:\n  sigvisor run profiles/signal.yaml -- ./my-program --its --args")]
    Run {
        /// The Trace profile (YAML).
        profile: PathBuf,
        /// Write the final Trace status here instead of stderr.
        #[arg(long, value_name = "PATH")]
        status_file: Option<PathBuf>,
        /// The sigvisor-launch binary (default: beside sigvisor, or on PATH).
        #[arg(long, value_name = "PATH")]
        launcher: Option<PathBuf>,
        /// Expose a control socket while CMD runs, so that `sigvisor
        /// operation NAME stop|start --control PATH` can switch the signals
        /// off and on from another terminal.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// How listeners wait (for benchmarks): adaptive, async or hot.
        #[arg(long = "loop", value_enum, default_value = "adaptive", hide = true)]
        loop_mode: notify::LoopMode,
        /// The program to run, and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Serve containers: the OCI seccomp agent socket for runc, crun, youki
    /// and sigvisor-launch.
    ///
    /// Each connection hands over one listener (an OCI ContainerProcessState
    /// with the fd as SCM_RIGHTS). Its container is matched against the
    /// started Traces (runMode Auto) by spec.node and spec.filter; a container
    /// no started Trace selects has its syscalls answered at once. On SIGINT
    /// or SIGTERM, prints every Trace with its status and exits 0; the
    /// containers' listeners stay with the keeper (--keeper), which answers
    /// their calls until serve is started again and takes them back.
    #[command(after_help = "Example:\n  sigvisor serve --socket /run/sigvisor/agent.sock profiles/\n\n\
        Then point a container's linux.seccomp.listenerPath at the socket (see docs/containers.md).")]
    Serve {
        /// Profiles, or directories of them (*.yaml, *.yml).
        profiles: Vec<PathBuf>,
        /// The socket to listen on (its directory made 0700 if missing;
        /// the socket 0666 when that directory is this user's alone, for
        /// wrapped containers of any uid, else 0600). It names this serve
        /// instance: the paths below follow
        /// from it unless given (for DIR/NAME.sock: DIR/NAME.control.sock,
        /// DIR/NAME.keeper.sock, /var/lib/sigvisor/instances/ESCAPED, as
        /// `systemd-escape --path` writes the socket's path; for the
        /// default socket, the defaults shown).
        #[arg(long, value_name = "PATH", default_value = instance::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The control socket for apply, get, operation, stream and delete
        /// [default: /run/sigvisor/control.sock].
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// This node's name, matched against spec.node (default: NODE_NAME,
        /// as a DaemonSet sets it from spec.nodeName, then the hostname).
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node: Option<String>,
        /// Take Traces from the Kubernetes API too: those whose spec.node is
        /// this node (docs/kubernetes.md).
        #[arg(long)]
        kubernetes: bool,
        /// The API's configuration for --kubernetes (default: KUBECONFIG or
        /// ~/.kube/config, else the pod's in-cluster configuration).
        #[arg(long, value_name = "PATH", requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// Write the Traces' statuses here at exit instead of stderr.
        #[arg(long, value_name = "PATH")]
        status_file: Option<PathBuf>,
        /// Drop a client that has not sent a whole handoff message by then.
        #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
        handoff_timeout: f64,
        /// The keeper's socket. The keeper holds a copy of every listener,
        /// so that when serve stops, restarts or dies, the containers' calls
        /// still complete (answered unsignalled) and a new serve takes them
        /// back; serve starts one here if none listens
        /// [default: /run/sigvisor/keeper.sock].
        #[arg(long, value_name = "PATH")]
        keeper: Option<PathBuf>,
        /// Where the Traces (and their states) are kept across restarts,
        /// and the keeper's log [default: /var/lib/sigvisor].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The one directory File outputs are written in: a Trace's
        /// spec.output is a relative path inside it (no '..', no symbolic
        /// link), created 0600. Default: STATE_DIR/outputs.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// A call serve leaves waiting this long (serve stopped or wedged)
        /// is answered by the keeper it starts, unsignalled, until serve
        /// answers again.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        answer_within: f64,
        #[arg(long = "loop", value_enum, default_value = "adaptive", hide = true)]
        loop_mode: notify::LoopMode,
    },
    /// The keeper of listeners, which `serve` and `run` start themselves.
    ///
    /// Holds a copy of every listener its supervisor serves; while no
    /// supervisor is attached it answers every call with CONTINUE (no
    /// signal), and the next supervisor to connect takes them all back.
    /// Run it yourself only to keep it apart from serve (its own systemd
    /// unit, or its own container in a DaemonSet: docs/containers.md). On
    /// SIGTERM it exits once no listener is left; SIGINT and SIGHUP are
    /// ignored. Logs go to stderr (serve points the keeper it starts at
    /// STATE_DIR/keeper.log); RUST_LOG as for serve.
    Keeper {
        /// Listen for supervisors here.
        #[arg(long, value_name = "PATH", required_unless_present = "fd")]
        socket: Option<PathBuf>,
        /// Serve a supervisor already connected on this fd: `sigvisor run`,
        /// or serve replacing a keeper that died (with --socket too, for
        /// the supervisors that come after it).
        #[arg(long, value_name = "FD")]
        fd: Option<i32>,
        /// Exit once no supervisor is attached and no listener is held (5 s
        /// later while it holds serve's agent socket, so that a restarted
        /// serve finds it). What serve and run start themselves.
        #[arg(long)]
        exit_when_idle: bool,
        /// A call the attached supervisor leaves waiting this long (it is
        /// stopped or wedged) is answered here, unsignalled, until the
        /// supervisor answers again.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        answer_within: f64,
    },
    /// Put OCI containers under sigvisor through their bundles (docs/containers.md).
    #[command(subcommand)]
    Oci(OciCommand),
    /// Create or update a Trace in a running sigvisor (its annotation
    /// gadget.kinvolk.io/operation is performed and consumed).
    Apply {
        /// The Trace profile (YAML).
        #[arg(short = 'f', long = "filename", value_name = "PROFILE")]
        file: PathBuf,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Exit 0 when something listens on each socket PATH (a keeper's, serve's
    /// control socket), else 1 naming the first that none does: for probes.
    Probe {
        #[arg(required = true, value_name = "PATH")]
        sockets: Vec<PathBuf>,
    },
    /// List the Traces (`get traces`), or show one (`get trace NAME -o yaml|json`).
    Get {
        /// `traces` or `trace`.
        #[arg(value_parser = ["traces", "trace"])]
        resource: String,
        name: Option<String>,
        /// Output format for one Trace.
        #[arg(short, long, value_parser = ["yaml", "json"], default_value = "yaml")]
        output: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Start or stop a Trace: stopped, its syscalls are answered at once, unsignalled.
    Operation {
        name: String,
        /// start or stop.
        operation: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Follow a Stream Trace's events (JSON lines) until Ctrl-C.
    Stream {
        name: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Delete a Trace: it stops acting at once.
    Delete {
        name: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Validate profiles without running anything; exits 2 on the first bad one.
    Check {
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ControlArg {
    /// The control socket of the sigvisor to talk to
    /// [default: /run/sigvisor/control.sock].
    #[arg(long = "control", value_name = "PATH")]
    control: Option<PathBuf>,
    /// Or: the serve instance listening on this agent socket (its control
    /// socket follows from it, as `serve --socket` says).
    #[arg(long, value_name = "PATH", conflicts_with = "control")]
    socket: Option<PathBuf>,
}

impl ControlArg {
    fn path(self) -> PathBuf {
        let socket = self.socket.unwrap_or_else(|| instance::DEFAULT_SOCKET.into());
        Instance::of(socket, self.control, None, None).control
    }
}

#[derive(clap::Args)]
struct OciArgs {
    /// The socket of the `sigvisor serve` that will supervise the container.
    #[arg(long, value_name = "PATH", default_value = instance::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Trap the syscalls this profile names, and watch the handler of its
    /// signal (default: close, SIGILL).
    #[arg(long, value_name = "PROFILE")]
    profile: Option<PathBuf>,
    /// listener: the runtime's filter notifies sigvisor; wrap: sigvisor-launch
    /// runs in front of the container's process; auto: listener where the
    /// runtime can make the filter wait killable (crun, youki, runc >= 1.5).
    #[arg(long, value_enum, default_value = "auto")]
    mode: oci::Mode,
    /// The statically linked launcher for wrap mode (default:
    /// sigvisor-launch-static beside sigvisor).
    #[arg(long, value_name = "PATH")]
    launcher: Option<PathBuf>,
}

#[derive(Subcommand)]
enum OciCommand {
    /// Rewrite BUNDLE/config.json so that the container runs under sigvisor.
    Patch {
        /// The bundle directory (holding config.json).
        bundle: PathBuf,
        #[command(flatten)]
        common: OciArgs,
        /// The runtime that will run it, for --mode auto.
        #[arg(long, value_name = "NAME", default_value = "runc")]
        runtime: String,
        /// The container's id, for attribution in wrap mode.
        #[arg(long, value_name = "ID")]
        container_id: Option<String>,
    },
    /// A runtime shim: patch the bundle on create/run, then exec the real
    /// runtime with the same arguments (register it with docker, containerd
    /// or podman; see docs/containers.md).
    Runtime {
        /// The real runtime.
        #[arg(long, value_name = "NAME", default_value = "runc")]
        runtime: String,
        #[command(flatten)]
        common: OciArgs,
        /// The Docker Engine API, asked for the name and labels of each
        /// container of docker's (`spec.filter.containerName`, `labels`).
        #[arg(long, value_name = "URL", default_value = "unix:///var/run/docker.sock")]
        docker_host: String,
        /// The runtime's arguments.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

fn patch_options(
    common: OciArgs,
    runtime: String,
    container_id: Option<String>,
) -> Result<oci::PatchOptions, ExitCode> {
    let (syscalls, signal) = match &common.profile {
        Some(path) => match profile::load(path) {
            Ok((_, policy)) => (policy.syscalls, policy.signal),
            Err(e) => {
                eprintln!("sigvisor: {e}");
                return Err(ExitCode::from(USAGE));
            }
        },
        None => (vec!["close".to_owned()], libc::SIGILL),
    };
    Ok(oci::PatchOptions {
        bundle: PathBuf::new(),
        socket: common.socket,
        syscalls,
        signal,
        mode: common.mode,
        runtime,
        launcher: common.launcher,
        container_id,
        annotations: Vec::new(),
    })
}

fn main() -> ExitCode {
    run::raise_fd_limit();
    let cli = Cli::parse();
    // The long-running commands say what they do; the others only warn.
    let level = match cli.command {
        // The client's own error per failed request would repeat what the
        // agent says once per retry (cluster/).
        Command::Serve { .. } | Command::Keeper { .. } => "warn,sigvisor=info,kube_client=off",
        _ => "warn",
    };
    if !matches!(cli.command, Command::Serve { .. } | Command::Keeper { .. } | Command::Run { .. }) {
        // A verb piped into `head` ends quietly, as other tools do.
        sigvisor::sys::process::default_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk) must not be reported
        // with eprintln!, which panics then: the keeper would die of it.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Check { profiles } => {
            for path in profiles {
                if let Err(e) = profile::load(&path) {
                    eprintln!("sigvisor: {e}");
                    return ExitCode::from(USAGE);
                }
                println!("{}: ok", path.display());
            }
            ExitCode::SUCCESS
        }
        Command::Probe { sockets } => {
            match sockets.iter().find(|p| sigvisor::sys::socket::stale(p).unwrap_or(true)) {
                Some(path) => {
                    eprintln!("sigvisor probe: nothing listens on {}", path.display());
                    ExitCode::FAILURE
                }
                None => ExitCode::SUCCESS,
            }
        }
        Command::Keeper { socket, fd, exit_when_idle, answer_within } => {
            // SAFETY: the number comes from this process's own command
            // line, put there by the supervisor that started it for exactly
            // this; nothing else in the process knows or owns that fd.
            #[allow(unsafe_code)]
            let connection = match fd.map(|raw| unsafe { sigvisor::sys::fd::inherited(raw) }).transpose() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sigvisor keeper: --fd: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            match sigvisor::keeper::hold::run(sigvisor::keeper::hold::Options {
                socket,
                connection,
                exit_when_idle,
                answer_within: seconds(answer_within),
            }) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("sigvisor keeper: {e:#}");
                    ExitCode::from(FAILED)
                }
            }
        }
        Command::Serve {
            profiles,
            socket,
            control,
            node,
            kubernetes,
            kubeconfig,
            status_file,
            handoff_timeout,
            keeper,
            state_dir,
            output_dir,
            answer_within,
            loop_mode,
        } => {
            let traces = match serve::load_profiles(&profiles) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("sigvisor: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            let opts = serve::ServeOptions {
                instance: Instance::of(socket, control, keeper, state_dir),
                node: node.unwrap_or_else(sigvisor::procfs::hostname),
                traces,
                status_file,
                handoff_timeout: std::time::Duration::from_secs_f64(handoff_timeout.max(0.001)),
                output_dir,
                answer_within: seconds(answer_within),
                loop_mode,
                kubernetes: kubernetes.then_some(kubeconfig),
            };
            commands::block_on(serve::serve(opts))
        }
        Command::Apply { file, control } => verbs::apply(&file, control.path()),
        Command::Get { resource, name, output, control } => {
            verbs::get(&resource, name, &output, control.path())
        }
        Command::Operation { name, operation, control } => {
            verbs::operation(&name, &operation, control.path())
        }
        Command::Stream { name, control } => verbs::stream(&name, control.path()),
        Command::Delete { name, control } => verbs::delete(&name, control.path()),
        Command::Oci(OciCommand::Patch { bundle, common, runtime, container_id }) => {
            let mut opts = match patch_options(common, runtime, container_id) {
                Ok(o) => o,
                Err(code) => return code,
            };
            opts.bundle = bundle;
            match oci::patch(&opts) {
                Ok((mode, why)) => {
                    println!("{}: patched ({mode:?}: {why})", opts.bundle.join("config.json").display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sigvisor: {e:#}");
                    ExitCode::from(FAILED)
                }
            }
        }
        Command::Oci(OciCommand::Runtime { runtime, common, docker_host, args }) => {
            let opts = match patch_options(common, runtime.clone(), None) {
                Ok(o) => o,
                Err(code) => return code,
            };
            match shim::run(&runtime, &docker_host, opts, &args) {
                Ok(never) => match never {},
                Err(e) => {
                    // docker and containerd show a runtime's --log, not its stderr.
                    if let Some(log) = shim::RuntimeLog::of(&args) {
                        log.error(&format!("{e:#}"));
                    }
                    eprintln!("sigvisor: {e:#}");
                    ExitCode::from(FAILED)
                }
            }
        }
        Command::Run { profile, status_file, launcher, control, loop_mode, cmd } => {
            let (trace, policy) = match profile::load(&profile) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("sigvisor: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            let opts = run::RunOptions { trace, policy, cmd, status_file, launcher, control, loop_mode };
            commands::block_on(run::run(opts))
        }
    }
}

/// Runs a command's future on a multi-threaded runtime; its Ok is the exit status.
/// A duration given in seconds on the command line, clamped to sense.
fn seconds(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(if s.is_finite() { s.clamp(0.01, 86_400.0) } else { 2.0 })
}
