//! `sigvisor`: a seccomp user-notification supervisor.
//!
//! The data path, one module per step: the launcher (`sigvisor-launch`)
//! loads the filter → `handoff` receives the listener → `notify` runs the
//! notification loop → `decision` → `signal` → `response` (CONTINUE) →
//! `stats` and `output` (the Trace status).

mod caller;
mod decision;
mod handoff;
mod notify;
mod output;
mod profile;
mod response;
mod run;
mod seccomp;
mod signal;
mod stats;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for a bad profile or bad arguments.
const USAGE: u8 = 2;

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
    /// With outputMode Status, prints the Trace with its status to stderr
    /// (or --status-file) at the end.
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
        /// How listeners wait (for benchmarks): adaptive, async or hot.
        #[arg(long = "loop", value_enum, default_value = "adaptive", hide = true)]
        loop_mode: notify::LoopMode,
        /// The program to run, and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Validate profiles without running anything; exits 2 on the first bad one.
    Check {
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
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
        Command::Run { profile, status_file, launcher, loop_mode, cmd } => {
            let (trace, policy) = match profile::load(&profile) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("sigvisor: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sigvisor: cannot start the async runtime: {e}");
                    return ExitCode::from(run::FAILED as u8);
                }
            };
            let opts = run::RunOptions { trace, policy, cmd, status_file, launcher, loop_mode };
            match runtime.block_on(run::run(opts)) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("sigvisor: {e:#}");
                    ExitCode::from(run::FAILED as u8)
                }
            }
        }
    }
}
