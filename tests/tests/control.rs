//! The control plane with real processes and real sockets: Trace states and
//! operations, Stream and File output, and the CLI verbs against `serve`
//! and `run`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sigvisor_tests::containers::{launch, report, Server};
use sigvisor_tests::*;

fn trace_yaml(name: &str, run_mode: &str, output_mode: &str, extra_spec: &str, annotations: &str) -> String {
    format!(
        "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: {name}\n{annotations}\
         spec:\n  gadget: signal\n  runMode: {run_mode}\n  outputMode: {output_mode}\n{extra_spec}"
    )
}

/// `sigvisor VERB... --control PATH`, bounded.
fn verb(control: &Path, args: &[&str]) -> Output {
    output_bounded(sigvisor().args(args).arg("--control").arg(control), &args.join(" "))
}

fn ok(out: &Output) -> String {
    assert_eq!(exit_code(out), 0, "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `get trace NAME -o json`, with `status.output` parsed.
fn get(control: &Path, name: &str) -> (Value, yaml_serde::Value) {
    let trace: Value =
        serde_json::from_str(&ok(&verb(control, &["get", "trace", name, "-o", "json"]))).expect("JSON");
    let summary = yaml_serde::from_str(trace["status"]["output"].as_str().unwrap_or("{}")).expect("summary");
    (trace, summary)
}

fn apply(control: &Path, dir: &Path, file: &str, text: &str) -> Output {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write profile");
    output_bounded(sigvisor().arg("apply").arg("-f").arg(&path).arg("--control").arg(control), "apply")
}

#[test]
fn manual_trace_signals_only_between_start_and_stop() {
    let server = Server::with_profiles("manual", &[], &[]);
    let dir = scratch("manual-profiles");
    ok(&apply(&server.control, &dir, "m.yaml", &trace_yaml("manual", "Manual", "Status", "", "")));
    let (trace, _) = get(&server.control, "manual");
    assert_eq!(trace["status"]["state"], Value::Null, "not started: {trace}");

    let target = launch(&server, &["--threads", "1", "--duration-ms", "2500"]);
    std::thread::sleep(Duration::from_millis(500));
    let (_, before) = get(&server.control, "manual");
    assert_eq!(before["signalsSent"], 0, "a Manual trace signals nothing before start: {before:?}");
    assert!(before["skipped"]["not-started"].as_u64() > Some(0), "{before:?}");

    assert!(ok(&verb(&server.control, &["operation", "manual", "start"])).contains("Started"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(ok(&verb(&server.control, &["operation", "manual", "stop"])).contains("Stopped"));
    let (_, at_stop) = get(&server.control, "manual");
    std::thread::sleep(Duration::from_millis(500));
    let (trace, later) = get(&server.control, "manual");
    assert_eq!(trace["status"]["state"], "Stopped");
    let signals = at_stop["signalsSent"].as_u64().expect("signalsSent");
    assert!(signals > 0, "signals while started: {at_stop:?}");
    assert_eq!(later["signalsSent"].as_u64(), Some(signals), "stop takes effect at once");
    assert!(later["notifications"].as_u64() > at_stop["notifications"].as_u64(), "the target kept closing");

    let report = report(&wait_bounded(target, "closer"));
    assert_signalled(&report, signals as i64);
    assert!(report["closes"].as_i64() > Some(signals as i64));
    drop(server);
}

#[test]
fn annotation_operations_are_performed_and_consumed() {
    let server = Server::with_profiles("annotated", &[], &[]);
    let dir = scratch("annotated-profiles");
    let annotation = "  annotations:\n    gadget.kinvolk.io/operation: start\n";
    ok(&apply(&server.control, &dir, "a.yaml", &trace_yaml("annotated", "Manual", "Status", "", annotation)));
    let (trace, _) = get(&server.control, "annotated");
    assert_eq!(trace["status"]["state"], "Started");
    assert_eq!(trace["metadata"]["annotations"], Value::Null, "the annotation is consumed: {trace}");
    // Re-applying with stop stops it; the trace keeps its identity.
    let annotation = "  annotations:\n    gadget.kinvolk.io/operation: stop\n";
    ok(&apply(&server.control, &dir, "a.yaml", &trace_yaml("annotated", "Manual", "Status", "", annotation)));
    assert_eq!(get(&server.control, "annotated").0["status"]["state"], "Stopped");
    drop(server);
}

#[test]
fn operation_errors() {
    let server = Server::with_profiles("errors", &[], &[]);
    let dir = scratch("errors-profiles");
    ok(&apply(&server.control, &dir, "e.yaml", &trace_yaml("e", "Manual", "Status", "", "")));

    let out = verb(&server.control, &["operation", "e", "stop"]);
    assert_eq!(exit_code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not started"));
    assert_eq!(get(&server.control, "e").0["status"]["operationError"], "Not started");

    let out = verb(&server.control, &["operation", "e", "generate"]);
    assert_eq!(exit_code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("accepted: start, stop"));

    // A successful operation clears the previous error.
    ok(&verb(&server.control, &["operation", "e", "start"]));
    assert_eq!(get(&server.control, "e").0["status"]["operationError"], Value::Null);

    for args in [&["operation", "nosuch", "start"][..], &["get", "trace", "nosuch"], &["delete", "nosuch"]] {
        let out = verb(&server.control, args);
        assert_eq!(exit_code(&out), 1, "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no trace named \"nosuch\""), "{args:?}");
    }

    // File outputs cannot be aimed: only a relative path inside serve's
    // output directory, never through a symbolic link; each refusal is an
    // operationError, and the server goes on.
    let outputs = server.state.join("outputs");
    let victim = dir.join("root-only");
    std::fs::write(&victim, "untouched\n").expect("write");
    std::os::unix::fs::symlink(&victim, outputs.join("planted.jsonl")).expect("plant a symlink");
    std::fs::create_dir_all(outputs.join("sub")).expect("mkdir");
    std::os::unix::fs::symlink("/etc", outputs.join("sub/etc")).expect("plant a directory symlink");
    for (output, why) in [
        ("/proc/no/such/dir/events.jsonl", "must be a relative path inside the output directory"),
        ("../escape.jsonl", "must be a relative path inside the output directory"),
        ("planted.jsonl", "is a symbolic link"),
        ("sub/etc/passwd", "is a symbolic link"),
        ("no/such/dir/events.jsonl", "cannot open the output file"),
    ] {
        let aimed = trace_yaml("f", "Auto", "File", &format!("  output: {output}\n"), "");
        let out = apply(&server.control, &dir, "f.yaml", &aimed);
        assert_eq!(exit_code(&out), 1, "{output}");
        let (trace, _) = get(&server.control, "f");
        let error = trace["status"]["operationError"].as_str().unwrap_or("").to_owned();
        assert!(error.contains(why), "{output}: {trace}");
        assert_eq!(trace["status"]["state"], Value::Null);
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "untouched\n",
        "the symlink was not followed"
    );

    // A Trace's name is a Kubernetes object name: never a path.
    for name in ["a/b", "..", "Upper", "-x"] {
        let out = apply(&server.control, &dir, "n.yaml", &trace_yaml(name, "Auto", "Status", "", ""));
        assert_eq!(exit_code(&out), 2, "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("metadata.name") && stderr.contains("RFC 1123"), "{name}: {stderr}");
    }

    // A bad profile is refused with exit 2 and the usual message.
    let out = apply(&server.control, &dir, "bad.yaml", &trace_yaml("b", "Sometimes", "Status", "", ""));
    assert_eq!(exit_code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.runMode"));

    // A trace for another node is listed as such and never acts.
    ok(&apply(
        &server.control,
        &dir,
        "n.yaml",
        &trace_yaml("n", "Manual", "Status", "  node: elsewhere\n", ""),
    ));
    let (trace, _) = get(&server.control, "n");
    assert!(
        trace["status"]["operationWarning"].as_str().unwrap_or("").contains("never acts here"),
        "{trace}"
    );
    let out = verb(&server.control, &["operation", "n", "start"]);
    assert_eq!(exit_code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not this node"));

    let table = ok(&verb(&server.control, &["get", "traces"]));
    let header = table.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "GADGET", "NODE", "RUNMODE", "OUTPUTMODE", "STATE", "SIGNALS"]
    );
    assert!(table.lines().any(|l| l.starts_with("e ") && l.contains("Started")), "{table}");
    drop(server);
}

/// Follows `sigvisor stream NAME` in the background; its lines as JSON.
fn follow(control: &Path, name: &str) -> Child {
    sigvisor()
        .args(["stream", name, "--control"])
        .arg(control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stream")
}

#[test]
fn stream_and_file_output_with_fd_paths() {
    let server = Server::with_profiles("stream", &[], &[]);
    let dir = scratch("stream-profiles");
    ok(&apply(&server.control, &dir, "s.yaml", &trace_yaml("s", "Auto", "Stream", "", "")));
    let first = follow(&server.control, "s");
    let second = follow(&server.control, "s");
    std::thread::sleep(Duration::from_millis(300));

    let target = launch(&server, &["--threads", "1", "--closes", "50"]);
    // Meanwhile another client applies and deletes other traces.
    ok(&apply(&server.control, &dir, "t.yaml", &trace_yaml("t", "Manual", "Status", "", "")));
    ok(&verb(&server.control, &["delete", "t"]));
    assert_precise(&report(&wait_bounded(target, "closer")));
    std::thread::sleep(Duration::from_millis(300));
    // Deleting the streamed trace ends both streams.
    ok(&verb(&server.control, &["delete", "s"]));
    for stream in [first, second] {
        let out = wait_bounded(stream, "stream");
        let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        let signalled: Vec<&Value> = events.iter().filter(|e| e["action"] == "signalled").collect();
        assert_eq!(signalled.len(), 50, "one event per signalled close");
        for e in &signalled {
            assert_eq!(e["syscall"], "close");
            assert_eq!(e["args"][0], 1000, "the fixture closes fd 1000: {e}");
            assert_eq!(e["path"], "/dev/null", "{e}");
            assert_eq!(e["comm"], "closer");
            assert_eq!(e["result"], "continued");
            assert!(e["time"].is_string() && e["node"].is_string() && e["tid"].as_i64() > Some(0));
        }
        // ld.so's closes before main are skipped, and name what they closed.
        assert!(events
            .iter()
            .any(|e| e["reason"] == "no-handler" && e["path"].as_str().is_some_and(|p| p.starts_with('/'))));
    }

    // File output: the same lines, appended to spec.output inside serve's
    // output directory, in a file only root reads.
    let file = server.state.join("outputs/events.jsonl");
    ok(&apply(
        &server.control,
        &dir,
        "f.yaml",
        &trace_yaml("f", "Auto", "File", "  output: events.jsonl\n", ""),
    ));
    let file_report = report(&wait_bounded(launch(&server, &["--closes", "20"]), "closer"));
    assert_precise(&file_report);
    let mode = std::fs::metadata(&file).expect("events file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "created 0600");
    let text = std::fs::read_to_string(&file).expect("events file");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.iter().filter(|e| e["action"] == "signalled" && e["path"] == "/dev/null").count(), 20);
    drop(server);
}

#[test]
fn peers_that_are_not_root_are_refused() {
    let server = Server::with_profiles("peers", &[], &[]);
    let as_nobody = |control: &Path| {
        output_bounded(
            Command::new("setpriv")
                .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                .arg(bin("sigvisor"))
                .args(["get", "traces", "--control"])
                .arg(control),
            "as nobody",
        )
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs the tests as root");
        return eprintln!("SKIPPED: needs root to act as nobody");
    }
    // The socket is 0600 in a 0700 directory: nobody cannot even connect.
    let out = as_nobody(&server.control);
    assert_eq!(exit_code(&out), 125);
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    // Opened up by hand, the server still refuses the peer (SO_PEERCRED).
    let dir = server.control.parent().expect("dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&server.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&server.control);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 1, "{stderr}");
    assert!(stderr.contains("uid 65534 is neither root nor the server's"), "{stderr}");
    drop(server);
}

/// A second serve on the same sockets is refused, names the one running,
/// and leaves it serving.
#[test]
fn a_second_serve_on_the_same_sockets_is_refused() {
    let server = Server::start("twice", &[]);
    let out = server.second();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    let named = format!("already serving on {} (pid {})", server.control.display(), server.pid());
    assert!(stderr.contains(&named), "names the running serve ({named}): {stderr}");
    assert!(stderr.contains("--socket, --control, --keeper and --state-dir of its own"), "{stderr}");
    let (trace, _) = get(&server.control, "all");
    assert_eq!(trace["status"]["state"], "Started", "the first serves on");
    assert!(server.socket.exists() && server.control.exists(), "its sockets are left alone");
}

#[test]
fn no_server_says_how_to_start_one() {
    let out =
        output_bounded(sigvisor().args(["get", "traces", "--control", "/nonexistent/control.sock"]), "get");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 125);
    assert!(stderr.contains("no sigvisor is serving") && stderr.contains("sigvisor serve"), "{stderr}");
}

/// `sigvisor run --control`: the signals of a running program switched off
/// and on again from another terminal.
#[test]
fn run_exposes_the_control_socket() {
    let dir = scratch("run-control");
    let control = dir.join("control.sock");
    let status = dir.join("status.yaml");
    let child = run_command(&status, &seed_profile(), &["--control", control.to_str().unwrap()])
        .arg(closer())
        .args(["--threads", "1", "--duration-ms", "2000"])
        .spawn()
        .expect("spawn sigvisor run");
    std::thread::sleep(Duration::from_millis(500));
    ok(&verb(&control, &["operation", "seccomp", "stop"]));
    let (_, at_stop) = get(&control, "seccomp");
    std::thread::sleep(Duration::from_millis(400));
    let (_, later) = get(&control, "seccomp");
    assert_eq!(later["signalsSent"], at_stop["signalsSent"], "stopped: no more signals");
    ok(&verb(&control, &["operation", "seccomp", "start"]));
    let run = Run::from_output(wait_bounded(child, "sigvisor run"), &status);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.reports[0];
    let signals = report["signals"].as_i64().expect("signals");
    assert!(signals > at_stop["signalsSent"].as_i64().expect("n"), "signals again after start");
    assert_signalled(report, signals);
    assert!(run.skipped("not-started") > 0);
    assert_eq!(run.trace.as_ref().unwrap()["status"]["state"], "Completed");
    assert!(!control.exists(), "the control socket is removed at the end");
}

/// Selection follows the Traces, without restarting anything: a target
/// that connected when no Trace existed is selected by one applied later,
/// and released when that Trace is deleted. Every signal it got is precise.
#[test]
fn traces_applied_and_deleted_later_select_and_release_live_listeners() {
    let server = Server::with_profiles("late", &[], &[]);
    let dir = scratch("late-profiles");
    let target = launch(&server, &["--threads", "1", "--duration-ms", "2500"]);
    std::thread::sleep(Duration::from_millis(500));
    ok(&apply(&server.control, &dir, "late.yaml", &trace_yaml("late", "Auto", "Status", "", "")));
    std::thread::sleep(Duration::from_millis(500));
    let (_, while_selected) = get(&server.control, "late");
    let signals = while_selected["signalsSent"].as_u64().expect("signalsSent");
    assert!(signals > 0, "the later Trace selects the live listener: {while_selected:?}");
    ok(&verb(&server.control, &["delete", "late"]));
    let report = report(&wait_bounded(target, "closer"));
    // Signalled only while the Trace existed: fewer signals than closes,
    // every one precise.
    let got = report["signals"].as_i64().expect("signals");
    assert!(got >= signals as i64 && got < report["closes"].as_i64().unwrap_or(0), "{report}");
    assert_signalled(&report, got);
    drop(server);
}
