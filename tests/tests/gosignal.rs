//! The gosignal demo end to end: a real Go program, built with Debian's Go,
//! run under `sigvisor run profiles/gosignal.yaml`, 20 times.

use std::path::{Path, PathBuf};
use std::process::Command;

use sigvisor_tests::*;

/// Builds examples/gosignal, once for the tests of this file, which run in
/// parallel: each building into the same place would remove the binary
/// the other runs. On CI a missing Go fails the test: `make test`
/// installs it, so its absence is a broken setup, not a reason to skip.
fn build_demo() -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_once).clone()
}

fn build_once() -> Option<PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "go is missing on CI: `make test` should have installed golang-go"
        );
        eprintln!("SKIPPED: go is not installed (run `make test`, which installs golang-go)");
        return None;
    }
    let out = scratch("gosignal-build").join("gosignal");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(repo().join("examples/gosignal"))
        .env("CGO_ENABLED", "1")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", repo().join("target/go-build"))
        .output()
        .expect("run go build");
    assert!(built.status.success(), "go build failed:\n{}", String::from_utf8_lossy(&built.stderr));
    Some(out)
}

/// The goroutine in state [syscall] under syscall.Close, in one dump.
fn closing_goroutine(dump: &str) -> Option<&str> {
    dump.split("\n\n").find(|g| g.contains(" [syscall") && g.contains("syscall.Close("))
}

fn run_demo(demo: &Path, profile: &Path, env: &[(&str, &str)], name: &str) -> (Run, String) {
    let status = scratch(name).join("status.yaml");
    let mut cmd = run_command(&status, profile, &[]);
    // Its log, should a round ever hang: which listener attached, and when.
    cmd.arg(demo).envs(env.iter().copied()).env("RUST_LOG", "sigvisor=info");
    let out = wait_bounded(cmd.spawn().expect("spawn sigvisor"), name);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (Run::from_output(out, &status), stdout)
}

#[test]
fn demo_shows_both_closers_twenty_times_in_a_row() {
    let Some(demo) = build_demo() else { return };
    let profile = repo().join("profiles/gosignal.yaml");
    for round in 1..=20 {
        let (run, stdout) = run_demo(&demo, &profile, &[], "gosignal");
        assert_eq!(run.code, 0, "round {round}: exit {}\n{stdout}\n{}", run.code, run.stderr);
        assert!(stdout.contains("gosignal: done; every close closed its file"), "round {round}:\n{stdout}");
        let dumps: Vec<&str> = stdout.split("=== SIGILL #").skip(1).collect();
        assert_eq!(dumps.len(), 2, "round {round}: one dump per close:\n{stdout}\n{:?}", run.summary());
        let closers: Vec<&str> =
            dumps.iter().map(|d| closing_goroutine(d).expect("a closing goroutine")).collect();
        for closer in &closers {
            for frame in ["syscall.Close(", "internal/poll.(*FD).destroy(", "os.(*file).close("] {
                assert!(closer.contains(frame), "round {round}: no {frame} in\n{closer}");
            }
        }
        // The finalizer's close has no caller of ours; os.ReadFile's is main's.
        assert!(closers.iter().any(|c| !c.contains("main.")), "round {round}: no finalizer close:\n{stdout}");
        assert!(
            closers.iter().any(|c| c.contains("os.ReadFile(") && c.contains("main.main()")),
            "round {round}: no os.ReadFile close:\n{stdout}"
        );
        assert_eq!(run.count("signalsSent"), 2, "round {round}");
        assert_eq!(run.count("errors"), 0, "round {round}");
    }
}

/// A close in a package initializer comes after Go's runtime installed its
/// own SIGILL handler (which crashes on a sent SIGILL) and before main
/// installs the program's. sigvisor follows both rt_sigaction calls: the
/// first is the runtime's handler for every fault signal, a crash handler,
/// so that close is skipped and the demo still shows both dumps.
#[test]
fn init_close_is_skipped_as_a_crash_handler() {
    let Some(demo) = build_demo() else { return };
    let env = [("GOSIGNAL_INIT_CLOSE", "1")];
    let (run, stdout) = run_demo(&demo, &repo().join("profiles/gosignal.yaml"), &env, "gosignal-init");
    assert_eq!(run.code, 0, "{stdout}\n{}", run.stderr);
    assert!(!run.stderr.contains("SIGILL: illegal instruction"), "{}", run.stderr);
    assert_eq!(stdout.matches("=== SIGILL #").count(), 2, "{stdout}");
    assert!(run.skipped("crash-handler") >= 1, "{}", run.stderr);
    assert_eq!(run.count("signalsSent"), 2);
}
