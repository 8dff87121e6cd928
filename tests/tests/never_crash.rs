//! Catching a signal is not surviving it
//! (docs/design.md#never-crash-a-target): a handler that is also the
//! process's handler for a fault signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
//! SIGABRT) is a crash handler, and sigvisor must never signal it. Real
//! programs nobody here wrote (Go's runtime, gofmt, CPython with
//! faulthandler, the JVM, bash) run under the seed profile and must do
//! exactly what they do without sigvisor; the C fixture shows the counts
//! (`skipped.crash-handler`), `handler: any`, handlers that come and go while
//! threads close, and the `si_value` every signal carries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;
use sigvisor_tests::*;

/// `sigvisor run --status-file F PROFILE -- PROGRAM ARGS` in `cwd`, bounded.
fn supervised(name: &str, profile: &Path, cwd: &Path, program: &str, args: &[&str]) -> (Run, String) {
    let status = scratch(&format!("{name}-status")).join("status.yaml");
    let mut cmd = run_command(&status, profile, &[]);
    cmd.arg(program).args(args).current_dir(cwd);
    let out = wait_bounded(cmd.spawn().expect("spawn sigvisor"), name);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (Run::from_output(out, &status), stdout)
}

/// The same command without sigvisor, bounded.
fn unsupervised(cwd: &Path, program: &str, args: &[&str]) -> Output {
    output_bounded(Command::new(program).args(args).current_dir(cwd), program)
}

/// `program` if it runs here (`probe` is an argument that makes it exit 0).
/// `make test` installs every program these tests use (Makefile PACKAGES),
/// so on CI a missing one fails the test; elsewhere the test is skipped.
fn installed(program: &str, probe: &str, package: &str) -> Option<String> {
    let runs = Command::new(program).arg(probe).output().is_ok_and(|o| o.status.success());
    if runs {
        return Some(program.to_owned());
    }
    assert!(std::env::var_os("CI").is_none(), "{program} is missing on CI: `make test` installs {package}");
    eprintln!("SKIPPED: {program} is not installed (Debian package {package}; `make test` installs it)");
    None
}

/// Debian's program at `path` when it is there (pyenv or venv shims, or
/// another Go or JDK earlier in PATH, are not what the Makefile installs),
/// else whatever PATH finds by that name.
fn debian(path: &'static str) -> &'static str {
    if Path::new(path).exists() {
        path
    } else {
        path.rsplit('/').next().unwrap_or(path)
    }
}

fn python3() -> Option<String> {
    installed(debian("/usr/bin/python3"), "--version", "python3")
}

/// Everything a target's run must show when sigvisor left it alone because
/// its handler is a crash handler: no signal, and crash-handler skips.
fn assert_crash_handler_skipped(run: &Run, what: &str) {
    assert_eq!(run.count("signalsSent"), 0, "{what}: a crash handler was signalled\n{}", run.stderr);
    assert!(run.skipped("crash-handler") > 0, "{what}: no crash-handler skips: {:?}", run.summary());
    assert_eq!(run.count("errors"), 0, "{what}");
}

fn field(report: &Value, key: &str) -> i64 {
    report[key].as_i64().unwrap_or_else(|| panic!("report has no {key}: {report}"))
}

/// Every signal that arrived was precise and named its call; no close
/// suffered. For runs where some closes are rightly not signalled.
fn assert_every_arrival_precise(report: &Value) {
    assert!(field(report, "closes") > 0, "no closes: {report}");
    assert_eq!(field(report, "precise"), field(report, "signals"), "{report}");
    for bad in ["early", "outside", "bad_pc", "bad_value", "close_errors", "eintr", "leaked"] {
        assert_eq!(field(report, bad), 0, "{bad}: {report}");
    }
}

/// Our own Go program with no handler: Go's runtime handler is installed
/// for every signal at once, so it is a crash handler and never signalled.
#[test]
fn plain_go_program_is_never_signalled() {
    let Some(plaingo) = plaingo() else {
        assert!(std::env::var_os("CI").is_none(), "CI must build plaingo: `make test` installs golang-go");
        return eprintln!("SKIPPED: no plaingo fixture (go was not installed when the tests were built)");
    };
    let dir = scratch("plaingo");
    let (run, stdout) = supervised("plaingo", &seed_profile(), &dir, plaingo, &[]);
    assert_eq!(run.code, 0, "Go's runtime crashes on a sent SIGILL (exit 2):\n{stdout}\n{}", run.stderr);
    assert_eq!(stdout, "plaingo: ok 3\n", "{}", run.stderr);
    assert_crash_handler_skipped(&run, "plaingo");
    // Its three closes at least (the finalizer's, os.ReadFile's, f.Close's)
    // come after the runtime installed its handlers.
    assert!(run.skipped("crash-handler") >= 3, "{:?}", run.summary());
    // Every notification is a close (bookkeeping is not counted), and none
    // was signalled: the runtime's own start-up closes are no-handler.
    let skipped: u64 = run.summary()["skipped"]
        .as_mapping()
        .expect("skipped")
        .values()
        .map(|n| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(run.count("notifications"), skipped, "{:?}", run.summary());
}

/// Debian's gofmt: same exit status and output as without sigvisor.
#[test]
fn gofmt_behaves_as_without_sigvisor() {
    let Some(gofmt) = installed(debian("/usr/bin/gofmt"), "-l", "golang-go") else { return };
    let dir = scratch("gofmt");
    std::fs::write(dir.join("x.go"), "package main\nfunc main(){\nx:=1\n_=x}\n").unwrap();
    let plain = unsupervised(&dir, &gofmt, &["-l", "x.go"]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "x.go\n", "gofmt -l lists the unformatted file");
    let (run, stdout) = supervised("gofmt", &seed_profile(), &dir, &gofmt, &["-l", "x.go"]);
    assert_eq!(run.code, exit_code(&plain), "gofmt's exit status (2 = killed by SIGILL):\n{}", run.stderr);
    assert_eq!(stdout.as_bytes(), plain.stdout, "{}", run.stderr);
    assert!(!run.stderr.contains("SIGILL"), "{}", run.stderr);
    assert_crash_handler_skipped(&run, "gofmt");
}

/// `python3 -X faulthandler`: faulthandler's one fatal-error handler is
/// installed for SIGSEGV, SIGFPE, SIGABRT, SIGBUS and SIGILL.
#[test]
fn python_with_faulthandler_enabled() {
    let Some(python) = python3() else { return };
    let dir = scratch("python-faulthandler");
    let mut bytes = 0;
    for (i, text) in ["one\n", "two two\n", "three three three\n"].iter().enumerate() {
        std::fs::write(dir.join(format!("f{i}")), text).unwrap();
        bytes += text.len();
    }
    let script = "import os\n\
                  n = 0\n\
                  for name in ['f0', 'f1', 'f2']:\n    \
                      with open(name, 'rb') as f:\n        \
                          n += len(f.read())\n\
                  fd = os.open('f0', os.O_RDONLY)\n\
                  n += len(os.read(fd, 100))\n\
                  os.close(fd)\n\
                  print('python:', n, 'bytes')\n";
    let expected = format!("python: {} bytes\n", bytes + 4);
    let args = ["-X", "faulthandler", "-c", script];
    assert_eq!(String::from_utf8_lossy(&unsupervised(&dir, &python, &args).stdout), expected);
    let (run, stdout) = supervised("python-faulthandler", &seed_profile(), &dir, &python, &args);
    assert_eq!(run.code, 0, "Fatal Python error: Illegal instruction is exit 132:\n{}", run.stderr);
    assert_eq!(stdout, expected, "{}", run.stderr);
    assert!(!run.stderr.contains("Fatal Python error"), "{}", run.stderr);
    assert_crash_handler_skipped(&run, "python3 -X faulthandler");
}

/// OpenJDK's one `javaSignalHandler` serves SIGSEGV, SIGBUS, SIGFPE and
/// SIGILL. The test is skipped where `java` is absent (Debian package
/// openjdk-17-jdk-headless, which the Makefile installs; so not on CI).
/// `java C.java` (the source launcher compiles in memory) makes ~160 closes
/// and takes ~0.6 s on this 2-core machine without sigvisor.
#[test]
fn java_source_launcher() {
    let Some(java) = installed(debian("/usr/bin/java"), "-version", "openjdk-17-jdk-headless") else {
        return;
    };
    let dir = scratch("java");
    std::fs::write(
        dir.join("C.java"),
        "import java.nio.file.*;\n\
         public class C {\n    \
             public static void main(String[] args) throws Exception {\n        \
                 var lines = Files.readAllLines(Path.of(args[0]));\n        \
                 System.out.println(\"java: \" + lines.size() + \" lines, last \" + lines.get(lines.size() - 1));\n    \
             }\n\
         }\n",
    )
    .unwrap();
    std::fs::write(dir.join("input.txt"), "alpha\nbeta\ngamma\n").unwrap();
    let start = Instant::now();
    let (run, stdout) = supervised("java", &seed_profile(), &dir, &java, &["C.java", "input.txt"]);
    eprintln!("java C.java under sigvisor: {:?}", start.elapsed());
    // The JVM's fatal error report (exit 134) goes to stdout and hs_err_pid*.log.
    assert_eq!(run.code, 0, "{stdout}\n{}", run.stderr);
    assert_eq!(stdout, "java: 3 lines, last gamma\n", "{}", run.stderr);
    let hs_err: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("hs_err")))
        .collect();
    assert!(hs_err.is_empty(), "the JVM wrote a fatal error report: {hs_err:?}");
    assert_crash_handler_skipped(&run, "java");
}

/// A handler the program installed for our signal alone is not a crash
/// handler, but `execve` resets it: what runs after the exec has none.
#[test]
fn exec_resets_the_handler() {
    let dir = scratch("exec-resets");
    let content = "first line\nsecond line\n";
    std::fs::write(dir.join("input.txt"), content).unwrap();
    // bash's trap handler, then exec: cat has no handler.
    let (run, stdout) =
        supervised("bash-trap", &seed_profile(), &dir, "bash", &["-c", "trap ':' ILL; exec cat input.txt"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(stdout, content, "{}", run.stderr);
    assert!(run.skipped("no-handler") > 0, "cat's closes: {:?}", run.summary());
    // bash itself puts trapped signals back to SIG_DFL before it execs; a
    // Python handler is left in place by os.execv, and only the kernel's
    // reset at execve takes it away.
    let Some(python) = python3() else { return };
    let script = "import os, signal\n\
                  signal.signal(signal.SIGILL, lambda *a: None)\n\
                  os.execv('/bin/cat', ['cat', 'input.txt'])\n";
    let (run, stdout) = supervised("python-exec", &seed_profile(), &dir, &python, &["-c", script]);
    assert_eq!(run.code, 0, "cat killed by a SIGILL is 132:\n{}", run.stderr);
    assert_eq!(stdout, content, "{}", run.stderr);
    assert!(run.skipped("no-handler") > 0, "cat's closes: {:?}", run.summary());
}

/// CPython's `faulthandler.register(SIGUSR1, all_threads=True)` installs a
/// handler for SIGUSR1 alone (even with `-X faulthandler`, whose fatal
/// handler is another function): it is ours, and it prints every thread's
/// Python stack right where `os.close` returned.
#[test]
fn faulthandler_register_prints_the_closing_line() {
    let Some(python) = python3() else { return };
    const CLOSES: usize = 5;
    let dir = scratch("faulthandler-register");
    let script = "import faulthandler, os, signal, sys, threading\n\
                  n = int(sys.argv[1])\n\
                  ready, done = threading.Event(), threading.Event()\n\
                  def idle():\n    \
                      ready.set()\n    \
                      done.wait()\n\
                  t = threading.Thread(target=idle)\n\
                  t.start()\n\
                  ready.wait()\n\
                  fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(n)]\n\
                  faulthandler.register(signal.SIGUSR1, all_threads=True)\n\
                  for fd in fds:\n    \
                      os.close(fd)  # CLOSE-HERE\n\
                  faulthandler.unregister(signal.SIGUSR1)\n\
                  done.set()\n\
                  t.join()\n\
                  print('closed', n)\n";
    let path = dir.join("register.py");
    std::fs::write(&path, script).unwrap();
    let marked = 1 + script.lines().position(|l| l.contains("# CLOSE-HERE")).unwrap();
    let innermost = format!("  File \"{}\", line {marked} in <module>", path.display());
    let profile = profile_with("faulthandler-register", &[("signal", "SIGUSR1")]);
    let n = CLOSES.to_string();
    for flags in [&[][..], &["-X", "faulthandler"][..]] {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend([path.to_str().unwrap(), n.as_str()]);
        let (run, stdout) = supervised("faulthandler-register", &profile, &dir, &python, &args);
        assert_eq!(run.code, 0, "{flags:?}: {}", run.stderr);
        assert_eq!(stdout, format!("closed {CLOSES}\n"), "{flags:?}: {}", run.stderr);
        // faulthandler prints "Current thread 0x... (most recent call
        // first):" and the frames, innermost first, for the signalled
        // thread, and "Thread 0x... ..." for each other one.
        let lines: Vec<&str> = run.stderr.lines().collect();
        let current: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("Current thread 0x") && l.ends_with("(most recent call first):"))
            .map(|(i, _)| lines.get(i + 1).copied().unwrap_or(""))
            .collect();
        assert_eq!(current.len(), CLOSES, "{flags:?}: one traceback per close:\n{}", run.stderr);
        for frame in &current {
            assert_eq!(*frame, innermost, "{flags:?}: innermost frame:\n{}", run.stderr);
        }
        let others = lines.iter().filter(|l| l.starts_with("Thread 0x")).count();
        assert_eq!(others, CLOSES, "{flags:?}: all_threads shows the idle thread too:\n{}", run.stderr);
        assert_eq!(run.count("signalsSent"), CLOSES as u64, "{flags:?}");
        assert_eq!(run.skipped("crash-handler"), 0, "{flags:?}: {:?}", run.summary());
    }
}

/// The fixture's SIGILL handler is also its SIGSEGV handler: under the seed
/// profile no close is signalled, each counted as `crash-handler`; with
/// `handler: any` every close is, precisely, and the Trace warns.
#[test]
fn fixture_crash_handler() {
    let args = ["--crash-handler", "--threads", "2", "--closes", "500"];
    for (name, profile) in [
        ("crash-handler-default", seed_profile()),
        ("crash-handler-own", profile_with("crash-handler-own", &[("handler", "own")])),
    ] {
        let run = run_closer(name, &profile, &[], &args);
        assert_eq!(run.code, 0, "{name}: a SIGILL to a crash handler: {}", run.stderr);
        let report = &run.reports[0];
        assert_untouched(report);
        assert_eq!(field(report, "closes"), 1000, "{report}");
        assert_eq!(run.count("signalsSent"), 0, "{name}");
        // Every close after the handlers were installed, and only those:
        // ld.so's closes and the fixture's own before and after (SIGILL back
        // to SIG_DFL) are no-handler; rt_sigaction is not a notification.
        assert_eq!(run.skipped("crash-handler"), 1000, "{name}: {:?}", run.summary());
        assert_eq!(
            run.count("notifications"),
            run.skipped("crash-handler") + run.skipped("no-handler"),
            "{name}: {:?}",
            run.summary()
        );
        let warning = run.trace.as_ref().unwrap()["status"]["operationWarning"].as_str().unwrap_or("");
        assert!(warning.is_empty(), "{name}: operationWarning {warning:?}");
    }

    let profile = profile_with("crash-handler-any", &[("handler", "any")]);
    let run = run_closer("crash-handler-any", &profile, &[], &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_precise(&run.reports[0]);
    assert_eq!(run.count("signalsSent"), 1000);
    assert_eq!(run.skipped("crash-handler"), 0);
    let warning = run.trace.as_ref().unwrap()["status"]["operationWarning"].as_str().unwrap_or("");
    assert!(!warning.is_empty(), "handler: any must warn in status.operationWarning");
}

#[test]
fn handler_parameter_values_are_checked() {
    let path = profile_with("bad-handler", &[("handler", "sometimes")]);
    let out = output_bounded(sigvisor().arg("check").arg(&path), "check handler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 2, "{stderr}");
    assert!(
        stderr.contains("spec.parameters.handler") && stderr.contains("own") && stderr.contains("any"),
        "{stderr}"
    );
    for value in ["own", "any"] {
        let path = profile_with(&format!("handler-{value}"), &[("handler", value)]);
        let out = output_bounded(sigvisor().arg("check").arg(&path), "check handler");
        assert_eq!(exit_code(&out), 0, "handler: {value}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// SIGILL goes SIG_DFL, SIG_IGN, handler, ... 200 times while two threads
/// close: a signal that lands in a SIG_DFL window kills the process.
#[test]
fn handler_dance_never_kills() {
    for round in 1..=3 {
        let start = Instant::now();
        let run = run_closer(
            "handler-dance",
            &seed_profile(),
            &[],
            &["--handler-dance", "200", "--threads", "2", "--duration-ms", "1500"],
        );
        eprintln!("handler dance round {round}: {:?}", start.elapsed());
        assert_eq!(run.code, 0, "round {round}: 132 = killed by SIGILL: {}", run.stderr);
        assert_eq!(run.reports.len(), 1, "round {round}");
        let report = &run.reports[0];
        assert!(field(report, "signals") > 0, "round {round}: {report}");
        assert_every_arrival_precise(report);
        // A signal sent just before SIG_IGN is discarded by the kernel.
        assert!(run.count("signalsSent") >= field(report, "signals") as u64, "round {round}");
        assert_eq!(run.count("errors"), 0, "round {round}");
    }
}

/// Every signal says which call it is about: SI_QUEUE, the fd in
/// `si_value.sival_int`, the syscall number in the high 32 bits.
#[test]
fn si_value_names_the_call() {
    for threads in ["1", "8"] {
        let run = run_closer("si-value", &seed_profile(), &[], &["--threads", threads, "--closes", "500"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let report = &run.reports[0];
        assert_eq!(field(report, "bad_value"), 0, "{threads} threads: {report}");
        assert_eq!(field(report, "signals"), field(report, "closes"), "{threads} threads: {report}");
        assert_precise(report);
    }
}

/// A filter without sigvisor's handler rules (a runtime's own, written by
/// hand): handlers are read from /proc at every call, a handler meant for
/// the signal is still signalled precisely, a crash handler is still
/// skipped (its process catches a fault signal too), and the Trace says so.
#[test]
fn filter_without_handler_rules_falls_back_to_proc() {
    let launcher = launcher_with("no-rules", "--no-handler-rules");
    let extra = ["--launcher", launcher.to_str().expect("utf-8 path")];
    let run = run_closer("no-rules-own", &seed_profile(), &extra, &["--threads", "2", "--closes", "500"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_precise(&run.reports[0]);
    assert_eq!(run.count("signalsSent"), 1000);
    assert!(run.summary()["handlers"]["procReads"].as_u64() >= Some(1000), "{:?}", run.summary());
    let warning = run.trace.as_ref().expect("status")["status"]["operationWarning"].as_str().unwrap_or("");
    assert!(warning.contains("/proc"), "{warning:?}");

    let args = ["--crash-handler", "--threads", "2", "--closes", "500"];
    let run = run_closer("no-rules-crash", &seed_profile(), &extra, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_untouched(&run.reports[0]);
    assert_eq!(run.skipped("crash-handler"), 1000, "{:?}", run.summary());
}

/// Handler changes that once killed their program under sigvisor (found by
/// trying to): a one-shot handler the program used up itself, a fork child
/// with an inherited one-shot handler, an `act` the kernel cannot read, and
/// two threads installing and removing the handler at once while two others
/// close. Each must run to exit 0 with every close returning 0.
#[test]
fn adversarial_handler_changes_never_kill() {
    for mode in ["oneshot-raise", "fork-oneshot", "efault-act", "two-changers"] {
        for round in 0..3 {
            let status = scratch(&format!("adversary-{mode}")).join("status.yaml");
            let mut cmd = run_command(&status, &seed_profile(), &[]);
            let out = wait_bounded(cmd.arg(adversary()).arg(mode).spawn().expect("spawn sigvisor"), mode);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let run = Run::from_output(out, &status);
            assert_eq!(
                run.code, 0,
                "{mode} round {round} (132: killed by SIGILL):\n{stdout}\n{}",
                run.stderr
            );
            assert!(stdout.contains("\"failed\":0"), "{mode}: {stdout}");
            assert_eq!(run.count("errors"), 0, "{mode}");
        }
    }
}

/// rt_sigaction with `act` pointers no one can read (near the top of the
/// address space, where `act + size` wraps; unmapped; misaligned), then a
/// real handler: the listener survives them all, and every later close is
/// signalled, precisely.
#[test]
fn bad_sigaction_pointers_then_a_real_handler() {
    let status = scratch("adversary-bad-pointers").join("status.yaml");
    let mut cmd = run_command(&status, &seed_profile(), &[]);
    let out = wait_bounded(cmd.arg(adversary()).arg("bad-pointers").spawn().expect("spawn sigvisor"), "bad");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let run = Run::from_output(out, &status);
    assert_eq!(run.code, 0, "{stdout}\n{}", run.stderr);
    assert!(stdout.contains("\"handled\":100,\"failed\":0"), "every close signalled once: {stdout}");
    assert_eq!(run.count("signalsSent"), 100, "{}", run.stderr);
    assert_eq!(run.count("errors"), 0, "{}", run.stderr);
}

/// Fork children are not signalled through a handler they inherited: a
/// shell's subshell re-raises a trapped signal with its default action, and
/// CPython's subprocess child blocks every signal and resets handlers
/// before it execs (a signal left pending would kill it then).
#[test]
fn fork_children_keep_their_output() {
    let dir = scratch("fork-children");
    std::fs::write(dir.join("input.txt"), "hello\n").unwrap();
    // From a file, bash keeps the script open as fd 255, and each forked
    // child closes it before it runs its command: a trapped close.
    let script = "trap ':' ILL\n(cat input.txt)\nx=$(cat input.txt)\necho \"sub: $x\"\n";
    std::fs::write(dir.join("script.sh"), script).unwrap();
    let native = unsupervised(&dir, "bash", &["script.sh"]);
    let (run, stdout) = supervised("bash-subshell", &seed_profile(), &dir, "bash", &["script.sh"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(stdout.as_bytes(), native.stdout, "{}", run.stderr);
    assert!(run.skipped("inherited") > 0, "{:?}", run.summary());

    let Some(python) = python3() else { return };
    let script = "import faulthandler, os, signal, subprocess\n\
                  faulthandler.register(signal.SIGUSR1, file=open(os.devnull, 'w'))\n\
                  r = subprocess.run(['cat', 'input.txt'], capture_output=True)\n\
                  print(r.returncode, r.stdout.decode().strip())\n";
    let profile = profile_with("fork-children-usr1", &[("signal", "SIGUSR1")]);
    let (run, stdout) = supervised("python-subprocess", &profile, &dir, &python, &["-c", script]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(stdout, "0 hello\n", "subprocess's child killed by SIGUSR1 is -10:\n{}", run.stderr);
    assert!(run.count("signalsSent") > 0, "the parent's own closes: {:?}", run.summary());
}
