//! Issue 13: sigvisor captures the closing thread's stack itself, for
//! programs with no handler at all (`signal: none`, `stacks: "true"`).

use std::path::Path;
use std::process::Command;

use sigvisor_tests::*;

/// Runs `cmd` under a Trace that observes and takes stacks; returns the
/// run and its stacks as lists of frame lines.
fn stacks_of(name: &str, cmd: &[&str]) -> (Run, Vec<Vec<String>>) {
    let (run, stacks) = stacks_of_any(name, cmd);
    assert_eq!(run.code, 0, "{}", run.stderr);
    (run, stacks)
}

/// The same, whatever CMD's exit status. Every selected call has its stack
/// or is counted as missed.
fn stacks_of_any(name: &str, cmd: &[&str]) -> (Run, Vec<Vec<String>>) {
    let profile = profile_with(name, &[("signal", "none"), ("stacks", "true")]);
    stacks_under(&profile, name, cmd)
}

fn stacks_under(profile: &Path, name: &str, cmd: &[&str]) -> (Run, Vec<Vec<String>>) {
    let status = scratch(name).join("status.yaml");
    let child = run_command(&status, profile, &[]).args(cmd).spawn().expect("spawn sigvisor run");
    let run = Run::from_output(wait_bounded(child, name), &status);
    assert_eq!(run.count("signalsSent"), 0, "signal: none sends nothing");
    assert_eq!(run.count("errors"), 0, "{}", run.stderr);
    let summary = run.summary();
    let captured: u64 =
        summary["stacks"].as_sequence().map_or(0, |s| s.iter().filter_map(|s| s["count"].as_u64()).sum());
    let missed = summary["stacksMissed"]["count"].as_u64().unwrap_or(0);
    assert_eq!(
        captured + missed,
        run.skipped("signal-none"),
        "every selected call has its stack or is missed: {summary:?}"
    );
    let stacks = summary["stacks"]
        .as_sequence()
        .unwrap_or_else(|| panic!("no stacks in the status: {summary:?}"))
        .iter()
        .map(|s| {
            let frames = s["frames"].as_sequence().expect("frames");
            frames.iter().map(|f| f.as_str().unwrap_or_default().to_owned()).collect()
        })
        .collect();
    (run, stacks)
}

/// Whether some stack has these functions, in this order (innermost first),
/// each frame line starting with its name.
fn has_chain(stacks: &[Vec<String>], chain: &[&str]) -> bool {
    stacks.iter().any(|frames| {
        let mut rest = frames.iter();
        chain.iter().all(|want| rest.any(|f| f.starts_with(&format!("{want} "))))
    })
}

fn show(stacks: &[Vec<String>]) -> String {
    stacks.iter().map(|s| s.join("\n")).collect::<Vec<_>>().join("\n\n")
}

/// The Go demo's question, for a plain Go program with no handler: the
/// finalizer closed one file, `os.ReadFile` in `main.main` another.
#[test]
fn go_program_without_handler_unstripped_and_stripped() {
    let Some(plaingo) = plaingo() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build the Go fixture (make test installs golang-go)"
        );
        eprintln!("SKIPPED: no Go");
        return;
    };
    let stripped = scratch("plaingo-stripped").join("plaingo");
    std::fs::copy(plaingo, &stripped).expect("copy plaingo");
    let out = Command::new("strip").arg(&stripped).output().expect("strip");
    assert!(out.status.success(), "strip: {}", String::from_utf8_lossy(&out.stderr));
    for (name, binary) in [("go-stacks", Path::new(plaingo)), ("go-stacks-stripped", stripped.as_path())] {
        let binary = binary.to_str().expect("path");
        let (_, stacks) = stacks_of(name, &[binary]);
        // Go's finalizer goroutine runs `runtime.runfinq` (to Go 1.24) or
        // `runtime.runFinalizers` (Go 1.25 on).
        let finalizer = |runner| ["syscall.Close", "os.(*file).close", runner, "runtime.goexit"];
        assert!(
            has_chain(&stacks, &finalizer("runtime.runfinq"))
                || has_chain(&stacks, &finalizer("runtime.runFinalizers")),
            "{name}: the finalizer's stack:\n{}",
            show(&stacks)
        );
        let read_file = ["syscall.Close", "os.ReadFile", "main.main", "runtime.main", "runtime.goexit"];
        assert!(has_chain(&stacks, &read_file), "{name}: os.ReadFile's stack:\n{}", show(&stacks));
        // Go's tables carry lines: the ReadFile call in main.go.
        assert!(
            stacks.iter().flatten().any(|f| f.starts_with("main.main (") && f.contains("plaingo/main.go:")),
            "{name}: main.main with its line:\n{}",
            show(&stacks)
        );
    }
}

/// C built -O2, without frame pointers and with them (whose frames need
/// RBP, recovered from their prologues), dynamic and static: the function
/// that called close under libc's wrapper, and its callers up to `main` or
/// the thread's start.
#[test]
fn c_program_with_and_without_frame_pointers_dynamic_and_static() {
    for (name, binary) in [
        ("c-stacks", closer()),
        ("c-stacks-static", env!("SIGVISOR_FIXTURE_CLOSER_STATIC")),
        ("c-stacks-fp", env!("SIGVISOR_FIXTURE_CLOSER_FP")),
        ("c-stacks-fp-static", env!("SIGVISOR_FIXTURE_CLOSER_FP_STATIC")),
    ] {
        let (run, stacks) = stacks_of(name, &[binary, "--no-handler", "--threads", "2", "--closes", "50"]);
        assert_eq!(run.reports.len(), 1, "{}", run.stderr);
        assert_untouched(&run.reports[0]);
        // The threads' closes: 100 of them, one stack: libc's wrapper
        // (`__close`, or `__libc_close` in a static build), then `closer`.
        let closing = stacks
            .iter()
            .find(|s| s.len() >= 2 && s[0].contains("close (") && s[1].starts_with("closer "))
            .unwrap_or_else(|| panic!("{name}: no close <- closer stack:\n{}", show(&stacks)));
        let summary = run.summary();
        let count = summary["stacks"]
            .as_sequence()
            .and_then(|s| s.iter().find(|s| s["frames"][1].as_str() == Some(closing[1].as_str())))
            .and_then(|s| s["count"].as_u64());
        assert_eq!(count, Some(100), "{name}: every thread close has its stack:\n{}", show(&stacks));
        // The main thread's close of its fd directory, from main.
        // The main thread's close of its fd directory, from main, down to
        // the program's start.
        assert!(
            has_chain(&stacks, &["open_fds", "main", "_start"]),
            "{name}: main's stack:\n{}",
            show(&stacks)
        );
        // The threads' stack goes on under closer, to the thread's start.
        assert!(closing.len() >= 3, "{name}: the thread's start under closer:\n{}", show(&stacks));
        // The dynamic loader's closes at start-up end at its entry point,
        // unnamed in Debian's stripped ld.so: `_start`, a whole stack.
        for loader in stacks.iter().filter(|s| s.iter().any(|f| f.starts_with("_dl_start "))) {
            let last = loader.last().map(String::as_str).unwrap_or_default();
            assert!(
                last.starts_with("_start ("),
                "{name}: ld.so's stack ends at _start:\n{}",
                loader.join("\n")
            );
        }
    }
}

/// A caller whose stack pointer moved after its plain prologue (an
/// alloca'd table of function pointers below its frame): a caller guessed
/// from the prologue lands in the table, on `decoy`'s address, and was
/// shown as `frame_dummy` (the function before it), which never called
/// anything. Every caller is checked (its return address follows a call
/// instruction), so the stack ends at `dispatcher`, saying why.
#[test]
fn a_moved_stack_pointer_never_yields_a_caller_that_did_not_call() {
    let (_, stacks) = stacks_of("c-stacks-alloca", &[env!("SIGVISOR_FIXTURE_ALLOCA")]);
    let closing = stacks
        .iter()
        .find(|s| s.len() >= 2 && s[1].starts_with("dispatcher "))
        .unwrap_or_else(|| panic!("no close <- dispatcher stack:\n{}", show(&stacks)));
    for frame in &closing[2..] {
        assert!(
            frame.starts_with("outer ")
                || frame.starts_with("main ")
                || frame.starts_with("... (unwinding stopped"),
            "{frame}: not a caller of dispatcher:\n{}",
            show(&stacks)
        );
    }
}

/// A close in a signal handler: the stack goes through the kernel's
/// signal frame (its saved registers) on to the code the signal
/// interrupted, as strace -k shows it, where it used to end at the
/// sigreturn trampoline.
#[test]
fn a_close_in_a_signal_handler_goes_on_to_the_interrupted_code() {
    let (_, stacks) = stacks_of("c-stacks-handler", &[env!("SIGVISOR_FIXTURE_HANDLER")]);
    // raise is named gsignal in Debian's libc (an alias at the same address).
    let chain = ["on_usr1", "__pthread_kill_implementation", "busy_victim", "main", "_start"];
    assert!(has_chain(&stacks, &chain), "{}", show(&stacks));
}

/// The shipped profile, as the README gives it, on a program nobody here
/// wrote: Debian's tar, every close with its stack, none signalled.
#[test]
fn the_who_closed_profile_on_debians_tar() {
    let profile = repo().join("profiles/who-closed.yaml");
    let docs = repo().join("docs");
    let cmd = ["tar", "cf", "/dev/null", docs.to_str().expect("path")];
    let (run, stacks) = stacks_under(&profile, "who-closed-tar", &cmd);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.skipped("signal-none") >= 3, "{}", run.stderr);
    assert!(has_chain(&stacks, &["__close", "_start"]), "{}", show(&stacks));
}

/// Eight threads closing at once, each from a function of its own: every
/// stack is its own thread's. The process then execs itself (its mappings
/// change under sigvisor) and closes ten more times from close_from_0.
#[test]
fn eight_threads_each_from_its_own_function_then_an_exec() {
    let (_, stacks) = stacks_of(
        "c-8-threads",
        &[env!("SIGVISOR_FIXTURE_STACKS"), "--threads", "8", "--closes", "200", "--exec-self"],
    );
    for i in 0..8 {
        let function = format!("close_from_{i} ");
        // Built with -g: each frame has its line in stacks.c.
        let found = stacks
            .iter()
            .any(|s| s.get(1).is_some_and(|f| f.starts_with(&function) && f.contains("stacks.c:")));
        assert!(found, "no stack from close_from_{i} (stacks.c:LINE):\n{}", show(&stacks));
    }
    // The counts: read again from the status with their stacks.
    let (run, _) = stacks_of(
        "c-8-threads-counts",
        &[env!("SIGVISOR_FIXTURE_STACKS"), "--threads", "8", "--closes", "200"],
    );
    let summary = run.summary();
    for i in 0..8 {
        let count = summary["stacks"]
            .as_sequence()
            .and_then(|s| {
                s.iter().find(|s| {
                    s["frames"][1].as_str().is_some_and(|f| f.starts_with(&format!("close_from_{i} ")))
                })
            })
            .and_then(|s| s["count"].as_u64());
        assert_eq!(
            count,
            Some(200),
            "close_from_{i}'s closes, each with its own thread's stack: {summary:?}"
        );
    }
}

/// A Rust release build (no frame pointers): the call chain by name.
#[test]
fn rust_release_binary_by_function_name() {
    let (_, stacks) = stacks_of("rust-stacks", &[env!("SIGVISOR_FIXTURE_RUSTCLOSER")]);
    let chain = ["rustcloser::drop_the_file", "rustcloser::open_and_close", "rustcloser::main"];
    assert!(has_chain(&stacks, &chain), "the Rust call chain:\n{}", show(&stacks));
}

/// A target killed while its threads close at full rate: sigvisor stays
/// healthy, writes the status, and every selected call is captured or
/// counted as missed.
#[test]
fn target_killed_while_its_stacks_are_taken() {
    let (run, stacks) = stacks_of_any(
        "killed-stacks",
        &[closer(), "--no-handler", "--threads", "4", "--duration-ms", "300", "--kill-self"],
    );
    assert_eq!(run.code, 137, "{}", run.stderr);
    assert!(has_chain(&stacks, &["closer"]), "{}", show(&stacks));
}

/// Inside a container under `serve`: the process's binaries are the
/// container's (reached through /proc/PID/map_files), and the stack names
/// the container's path.
#[test]
fn container_process_stacks_under_serve() {
    use sigvisor_tests::containers::*;
    if !require_tools() {
        return;
    }
    let trace = "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: who\nspec:\n  gadget: signal\n  \
                 runMode: Auto\n  outputMode: Status\n  parameters:\n    signal: none\n    stacks: \"true\"\n";
    let server = Server::with_profiles("stacks-crun", &[], &[("who.yaml", trace)]);
    let bundle = bundle("stacks-crun", &["/bin/closer", "--no-handler", "--threads", "2", "--closes", "100"]);
    patch(&bundle, &server.socket, &["--runtime", "crun"]);
    let out = crun_run(&bundle, &container_id("stacks-crun"));
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_untouched(&report(&out));
    let (traces, log) = server.stop();
    let summary = summary(&traces[0]);
    let found = summary["stacks"].as_sequence().is_some_and(|stacks| {
        stacks.iter().any(|s| {
            s["count"].as_u64() == Some(200)
                && s["frames"][1].as_str().is_some_and(|f| f.starts_with("closer (/bin/closer+"))
        })
    });
    assert!(found, "the container's closes with their stack, named by its own path: {summary:?}\n{log}");
}

/// With a signal too, and Stream output: each event carries its stack, and
/// the signals stay precise (the capture happens while the caller waits,
/// after the signal is queued and before the answer).
#[test]
fn stream_events_carry_the_stack_with_a_signal() {
    let profile = scratch("stream-stacks-profile").join("stream.yaml");
    std::fs::write(
        &profile,
        "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: who\nspec:\n  gadget: signal\n  \
         runMode: Auto\n  outputMode: Stream\n  parameters:\n    stacks: \"true\"\n",
    )
    .expect("profile");
    let run = run_closer("stream-stacks", &profile, &[], &["--threads", "2", "--closes", "20"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_precise(&run.reports[0]);
    let events: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["action"] == "signalled")
        .collect();
    assert_eq!(events.len(), 40, "one event per signalled close:\n{}", run.stderr);
    for event in &events {
        let frames = event["stack"]["frames"].as_array().expect("stack.frames");
        let names: Vec<&str> = frames.iter().filter_map(|f| f["function"].as_str()).collect();
        assert!(names.contains(&"closer"), "the thread's function in its stack: {event}");
        assert!(frames.iter().all(|f| f["module"].is_string() && f["address"].is_string()), "{event}");
    }
}
