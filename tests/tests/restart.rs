//! Issue 11: the supervisor dies, stops or is restarted while its targets
//! close files at full rate; the keeper answers their calls meanwhile and
//! the restarted serve takes everything back. Every close returns 0, no fd
//! leaks, and every signal that arrives is precise.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sigvisor_tests::containers::*;
use sigvisor_tests::*;

/// Closes for 3 s on 2 threads: serve dies and comes back in the middle.
const CLOSING: &[&str] = &["--threads", "2", "--duration-ms", "3000"];

/// Lets the target close under serve, kills serve, lets the keeper answer
/// alone, then starts serve again; returns the new serve's view of `all`
/// while the target still runs.
fn kill_and_restart(server: &mut Server) -> yaml_serde::Value {
    thread::sleep(Duration::from_millis(700));
    server.kill();
    thread::sleep(Duration::from_millis(500));
    server.restart();
    thread::sleep(Duration::from_millis(700));
    server.get("all")
}

/// The target ran to the end, every close fine, signalled before and after
/// (`after`: the restarted serve's view); the restarted serve took its
/// listener back. Returns the keeper's log.
fn taken_back(server: &mut Server, target: std::process::Child, after: &yaml_serde::Value) -> String {
    let out = wait_bounded(target, "closer");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise_where_signalled(&report(&out));
    assert!(signals_sent(after) > 0, "the restarted serve signals: {after:?}");
    let (_, log) = server.terminate();
    assert!(log.contains("took 1 listeners back from the keeper"), "{log}");
    std::fs::read_to_string(server.state.join("keeper.log")).unwrap_or_default()
}

fn signals_sent(trace: &yaml_serde::Value) -> u64 {
    let output = trace["status"]["output"].as_str().expect("status.output");
    let summary: yaml_serde::Value = yaml_serde::from_str(output).expect("summary YAML");
    summary["signalsSent"].as_u64().expect("signalsSent")
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// How many seccomp listeners process `pid` holds.
fn holds_listeners(pid: i32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("seccomp notify"))
        })
        .count()
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A program wrapped by sigvisor-launch (as an entrypoint is), on the host.
#[test]
fn kill_9_of_serve_under_a_wrapped_program() {
    let mut server = Server::start("restart-launch", &[]);
    let keeper = server.keeper_pid();
    let target = launch(&server, CLOSING);
    let after = kill_and_restart(&mut server);
    let keeper_log = taken_back(&mut server, target, &after);
    assert!(keeper_log.contains("supervisor gone"), "{keeper_log}");
    // Nothing left to keep, no supervisor: the keeper is gone too.
    // It holds the agent socket a grace period longer, for a restart.
    assert!(wait_gone(keeper, Duration::from_secs(15)), "keeper {keeper} outlived everything");
}

/// A runc container whose entrypoint is wrapped by the static launcher.
#[test]
fn kill_9_of_serve_under_a_wrapped_container_entrypoint() {
    if !require_tools() {
        return;
    }
    let mut server = Server::start("restart-wrapped", &[]);
    let args: Vec<&str> = ["/bin/closer"].iter().chain(CLOSING).copied().collect();
    let bundle = wrapped_bundle("restart-wrapped", &args, &server.socket);
    let id = container_id("restart-wrapped");
    container_survives(&mut server, move || runc_run(&bundle, &id));
}

/// Runs a container on another thread while serve is killed and started
/// again: it completes, and the new serve signals it.
fn container_survives(server: &mut Server, run: impl FnOnce() -> std::process::Output + Send + 'static) {
    let container = thread::spawn(run);
    let after = kill_and_restart(server);
    let out = container.join().expect("container thread");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise_where_signalled(&report(&out));
    assert!(signals_sent(&after) > 0, "the new serve signals: {after:?}");
}

/// A crun container whose own filter notifies serve (listener mode).
#[test]
fn kill_9_of_serve_under_a_crun_container() {
    if !require_tools() {
        return;
    }
    let mut server = Server::start("restart-crun", &[]);
    let mut args = vec!["/bin/closer"];
    args.extend(CLOSING);
    let bundle = bundle("restart-crun", &args);
    patch(&bundle, &server.socket, &["--runtime", "crun"]);
    let id = container_id("restart-crun");
    container_survives(&mut server, move || crun_run(&bundle, &id));
}

/// SIGTERM hands over cleanly; the Traces applied through the control
/// socket come back with their states.
#[test]
fn sigterm_hands_over_and_applied_traces_come_back() {
    let mut server = Server::start("restart-term", &[]);
    let apply = |name: &str, run_mode: &str| {
        let file = scratch("restart-term-profiles").join(format!("{name}.yaml"));
        let text = format!(
            "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: {name}\n\
             spec:\n  gadget: signal\n  runMode: {run_mode}\n  outputMode: Status\n  \
             filter:\n    containerName: nothing-here\n"
        );
        std::fs::write(&file, text).expect("profile");
        let out = output_bounded(
            sigvisor().args(["apply", "-f"]).arg(&file).arg("--control").arg(&server.control),
            "sigvisor apply",
        );
        assert_eq!(exit_code(&out), 0, "apply: {}", String::from_utf8_lossy(&out.stderr));
    };
    apply("started-by-hand", "Manual");
    apply("stopped-by-hand", "Auto");
    apply("never-started", "Manual");
    for (name, op) in [("started-by-hand", "start"), ("stopped-by-hand", "stop")] {
        let out = output_bounded(
            sigvisor().args(["operation", name, op, "--control"]).arg(&server.control),
            "sigvisor operation",
        );
        assert_eq!(exit_code(&out), 0, "{name} {op}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let target = launch(&server, CLOSING);
    thread::sleep(Duration::from_millis(700));
    server.terminate();
    thread::sleep(Duration::from_millis(500));
    server.restart();
    thread::sleep(Duration::from_millis(700));
    let after = server.get("all");
    let out = wait_bounded(target, "closer");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise_where_signalled(&report(&out));
    assert!(signals_sent(&after) > 0, "the new serve signals: {after:?}");
    for (name, state) in [
        ("all", "Started"),
        ("started-by-hand", "Started"),
        ("stopped-by-hand", "Stopped"),
        ("never-started", ""),
    ] {
        let trace = server.get(name);
        let got = trace["status"]["state"].as_str().unwrap_or_default();
        assert_eq!(got, state, "{name} after the restart: {trace:?}");
    }
}

/// `kill -9` of `sigvisor run`: CMD carries on, every close working, and
/// the keeper goes when CMD does.
#[test]
fn kill_9_of_run_leaves_cmd_working() {
    let status = scratch("run-killed").join("status.yaml");
    let mut run = run_command(&status, &seed_profile(), &[])
        .arg(closer())
        .args(["--threads", "2", "--duration-ms", "2000"])
        .spawn()
        .expect("spawn sigvisor run");
    thread::sleep(Duration::from_millis(700));
    let (cmd, keeper) = run_children(run.id() as i32);
    run.kill().expect("kill -9 sigvisor run");
    let _ = run.wait();
    // CMD writes its report to the pipe it shares with the dead sigvisor.
    let mut stdout = run.stdout.take().expect("stdout");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).expect("read CMD's output");
    assert!(wait_gone(cmd, Duration::from_secs(10)), "CMD {cmd} did not finish");
    let report = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no report from CMD: {text}"));
    assert_precise_where_signalled(&report);
    assert!(wait_gone(keeper, Duration::from_secs(5)), "keeper {keeper} outlived CMD");
}

/// The keeper holds nothing of a container whose processes are all gone.
#[test]
fn keeper_lets_go_of_finished_listeners() {
    let server = Server::start("keeper-fds", &[]);
    let keeper = server.keeper_pid();
    let fds = || std::fs::read_dir(format!("/proc/{keeper}/fd")).map_or(0, |d| d.count());
    let before = fds();
    let mut during = 0;
    for _ in 0..5 {
        let mut target = Command::new(bin("sigvisor-launch"))
            .arg("--socket")
            .arg(&server.socket)
            .arg("--")
            .arg(closer())
            .args(["--threads", "1", "--duration-ms", "300"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sigvisor-launch");
        thread::sleep(Duration::from_millis(150));
        during = during.max(fds());
        assert!(target.wait().expect("wait").success());
    }
    assert!(during > before, "the keeper held a copy while the target ran ({before} -> {during})");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fds() != before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fds(), before, "keeper fds before and after five finished targets");
}

/// A listener whose task panics (a failpoint, mid-notification) goes to
/// the keeper, which answers that call and the rest; serve keeps serving
/// the next target.
#[test]
fn a_panicking_listener_goes_to_the_keeper() {
    let server = Server::with_env("restart-panic", &[("SIGVISOR_FAILPOINT", "listener-panic:500")]);
    let launch = |args: &[&str]| {
        let out = output_bounded(
            Command::new(bin("sigvisor-launch"))
                .arg("--socket")
                .arg(&server.socket)
                .arg("--")
                .arg(closer())
                .args(args),
            "closer",
        );
        assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        report(&out)
    };
    assert_precise_where_signalled(&launch(&["--threads", "2", "--closes", "2000"]));
    // The failpoint fired once: the next target is served as usual.
    assert_precise(&launch(&["--threads", "2", "--closes", "200"]));
    let (_, log) = server.stop();
    assert!(log.contains("handed to the keeper"), "{log}");
}

/// A container started while serve is down hands its listener to the
/// keeper (which holds serve's agent socket); the next serve takes it.
#[test]
fn a_container_started_while_serve_is_down_is_kept() {
    if !require_tools() {
        return;
    }
    let mut server = Server::start("restart-gap", &[]);
    let mut args = vec!["/bin/closer"];
    args.extend(CLOSING);
    let bundle = bundle("restart-gap", &args);
    patch(&bundle, &server.socket, &["--runtime", "crun"]);
    server.kill();
    let id = container_id("restart-gap");
    let container = thread::spawn(move || crun_run(&bundle, &id));
    thread::sleep(Duration::from_millis(1000));
    server.restart();
    thread::sleep(Duration::from_millis(700));
    let after = server.get("all");
    let out = container.join().expect("crun thread");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise_where_signalled(&report(&out));
    assert!(signals_sent(&after) > 0, "the new serve signals the container: {after:?}");
    let keeper_log = std::fs::read_to_string(server.state.join("keeper.log")).unwrap_or_default();
    assert!(keeper_log.contains("while no supervisor is attached"), "{keeper_log}");
}

/// serve SIGKILLed right after a RECV returns, before it did anything with
/// the notification (a failpoint): the kernel had written its id into the
/// region the keeper shares, so the keeper answers that call, whichever it
/// was. The 1st RECV is the launcher's own exec, the 300th a close.
#[test]
fn kill_9_right_after_a_recv_leaves_no_call_unanswered() {
    for at in [1, 300] {
        let name = format!("restart-recv-{at}");
        let failpoint = format!("kill-after-recv:{at}");
        let mut server = Server::with_env(&name, &[("SIGVISOR_FAILPOINT", &failpoint)]);
        let pid = server.pid();
        let out = wait_bounded(launch(&server, &["--threads", "2", "--closes", "1000"]), "closer");
        assert_eq!(exit_code(&out), 0, "at {at}: {}", String::from_utf8_lossy(&out.stderr));
        let report = report(&out);
        if at == 1 {
            assert_untouched(&report);
        } else {
            assert_precise_where_signalled(&report);
        }
        assert_eq!(report["closes"], 2000, "at {at}: {report}");
        assert!(wait_gone(pid, Duration::from_secs(5)), "at {at}: the failpoint killed serve");
        server.kill();
        let keeper_log = std::fs::read_to_string(server.state.join("keeper.log")).unwrap_or_default();
        assert!(
            keeper_log.contains("1 calls it had received and not answered were answered by their id"),
            "at {at}: {keeper_log}"
        );
        assert!(!keeper_log.contains("still unanswered"), "at {at}: {keeper_log}");
    }
}

/// kill -9 of the keeper: serve starts another at once and gives it a copy
/// of every listener and the agent socket; then kill -9 of serve: the new
/// keeper answers every call, and the next serve takes it all back.
#[test]
fn kill_9_of_the_keeper_then_of_serve_loses_nothing() {
    let mut server = Server::start("restart-keeper", &[]);
    let target = launch(&server, &["--threads", "2", "--duration-ms", "4000"]);
    thread::sleep(Duration::from_millis(700));
    let old = server.keeper_pid();
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(old, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let new = loop {
        let live: Vec<i32> =
            children_of(server.pid()).into_iter().filter(|&p| p != old && pid_alive(p)).collect();
        if let Some(&new) = live.first() {
            break new;
        }
        assert!(Instant::now() < deadline, "serve started no keeper in place of {old}");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(wait_gone(old, Duration::from_secs(2)), "the dead keeper {old} was reaped");
    // A keeper that got them: not serve's child between fork and exec,
    // which still has a copy of every fd of serve's (killing serve then
    // leaves no one holding the listener: a double fault inside the
    // replacement, which no keeper can cover).
    let exec_d = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"keeper"))
    };
    while holds_listeners(new) == 0 || !exec_d(new) {
        assert!(Instant::now() < deadline, "the new keeper {new} got no listener");
        thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(new), "the new keeper {new} outlives serve");
    server.restart();
    thread::sleep(Duration::from_millis(700));
    let after = server.get("all");
    let keeper_log = taken_back(&mut server, target, &after);
    assert!(keeper_log.contains("answering 1 listeners' calls until one attaches"), "{keeper_log}");
}

/// SIGTERM of the keeper while serve is attached: it stays as long as serve
/// needs it and leaves serve's agent socket alone (the file is serve's):
/// a new target still reaches serve and is signalled at every close.
#[test]
fn a_keeper_told_to_stop_leaves_serve_s_socket() {
    let server = Server::start("restart-keeper-term", &[]);
    let keeper = server.keeper_pid();
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(keeper, libc::SIGTERM) };
    thread::sleep(Duration::from_millis(300));
    assert!(server.socket.exists(), "serve's agent socket {} is still there", server.socket.display());
    assert!(pid_alive(keeper), "the keeper stays while serve is attached");
    assert_precise(&report(&wait_bounded(launch(&server, &["--closes", "50"]), "closer")));
}

/// SIGSTOP of the keeper while a target changes its SIGILL handler in loops
/// (each change is news for the keeper): serve waits at most 1 s for room
/// in the keeper's socket, then kills the stopped keeper and starts another
/// with a copy of every listener; kill -9 of serve then loses nothing.
#[test]
fn a_stopped_keeper_is_replaced() {
    let mut server = Server::start("restart-keeper-stop", &[]);
    let old = server.keeper_pid();
    let good = launch(&server, &["--threads", "2", "--duration-ms", "4000"]);
    thread::sleep(Duration::from_millis(300));
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(old, libc::SIGSTOP) };
    let changer = sigvisor_tests::containers::launch_program(
        &server,
        std::path::Path::new(adversary()),
        &["two-changers"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let live: Vec<i32> =
            children_of(server.pid()).into_iter().filter(|&p| p != old && pid_alive(p)).collect();
        if let Some(&new) = live.iter().find(|&&p| holds_listeners(p) > 0) {
            break new;
        }
        assert!(Instant::now() < deadline, "serve replaced no stopped keeper");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(wait_gone(old, Duration::from_secs(2)), "the stopped keeper {old} was killed");
    let changed = wait_bounded(changer, "two-changers");
    assert_eq!(exit_code(&changed), 0, "{}", String::from_utf8_lossy(&changed.stderr));
    server.kill();
    thread::sleep(Duration::from_millis(300));
    assert!(pid_alive(new), "the new keeper {new} outlives serve");
    server.restart();
    let out = wait_bounded(good, "closer");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let report = report(&out);
    assert_precise_where_signalled(&report);
    eprintln!("a stopped keeper: the good target's worst close {} µs", report["max_close_us"]);
}
