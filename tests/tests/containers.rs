//! Containers with the real runtimes (runc 1.1, crun 1.8) against a real
//! `sigvisor serve`: the runtimes' own listenerPath, `sigvisor oci patch`,
//! the runtime shim, a hand-wrapped entrypoint, and faults.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::json;
use sigvisor_tests::containers::*;
use sigvisor_tests::*;

const CLOSER: &[&str] = &["/bin/closer", "--threads", "2", "--closes", "200"];

/// The one container line of the `all` trace, checked for `id`.
fn container_line(traces: &[yaml_serde::Value], id: &str) -> yaml_serde::Value {
    let summary = summary(&traces[0]);
    summary["containers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("container {id} not in the status: {summary:?}"))
        .clone()
}

#[test]
fn runc_listener_path_is_observed_and_warned_about() {
    if !require_tools() {
        return;
    }
    let server = Server::start("runc-listener", &[]);
    let bundle = bundle("runc-listener", CLOSER);
    let socket = server.socket.clone();
    edit_config(&bundle, |c| c["linux"]["seccomp"] = notify_close(&socket, false));
    let id = container_id("runc-listener");
    let out = runc_run(&bundle, &id);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_untouched(&report(&out));
    let (traces, log) = server.stop();
    let line = container_line(&traces, &id);
    assert!(line["notifications"].as_u64() >= Some(400), "{line:?}");
    // No signal at all, so runc's init (a Go program) was never signalled.
    assert_eq!(line["signals"], 0, "{log}");
    assert_eq!(line["skipped"]["filter-not-killable"], line["notifications"]);
    let warning = traces[0]["status"]["operationWarning"].as_str().unwrap_or_default();
    assert!(warning.contains("WAIT_KILLABLE_RECV"), "{warning:?}");
    // Once for the container: which runtime, and the way to precise signals.
    assert_eq!(line["filter"], "config.json", "{line:?}");
    let note = line["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("runc loaded the filter") && note.contains("sigvisor oci runtime --runtime runc"),
        "{note:?}"
    );
}

/// `sigvisor oci runtime --runtime runc --socket S -- ARGS`, as docker's
/// wrapper calls it.
fn runc_shim(server: &Server) -> std::process::Command {
    let mut cmd = sigvisor();
    cmd.args(["oci", "runtime", "--runtime", "runc", "--socket"]).arg(&server.socket).arg("--");
    cmd
}

/// `runc run` of the closer through the shim: wrapped, every close precise.
fn runc_run_wrapped(server: &Server, bundle: &std::path::Path, id: &str) {
    let out = output_bounded(runc_shim(server).args(["run", "--bundle"]).arg(bundle).arg(id), "shim");
    let _ = std::process::Command::new("runc").args(["delete", "-f", id]).output();
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    assert_eq!(config(bundle)["annotations"]["io.sigvisor.patched"], "wrap");
}

#[test]
fn runc_through_the_shim_is_wrapped_and_precise() {
    if !require_tools() {
        return;
    }
    let server = Server::start("runc-shim", &[]);
    let bundle = bundle("runc-shim", CLOSER);
    let id = container_id("runc-shim");
    runc_run_wrapped(&server, &bundle, &id);
    let (traces, _) = server.stop();
    assert_eq!(container_line(&traces, &id)["signals"], 400);
}

/// Wrap mode passes the bundle's annotations on, as a runtime passes them
/// to a listener's supervisor: the CRI's pod names select and attribute,
/// for a container whose process is not root too (`runAsUser: 1000`): the
/// agent socket lets it connect, and serve believes its claims because its
/// bundle proves them.
#[test]
fn runc_wrapped_is_selected_by_its_cri_annotations() {
    if !require_tools() {
        return;
    }
    let filtered = |name: &str, namespace: &str| {
        auto_trace(name, &format!("  filter:\n    namespace: {namespace}\n    podname: web-0\n"))
    };
    let server = Server::with_profiles(
        "runc-cri",
        &[],
        &[("a.yaml", &filtered("other-team", "team-b")), ("b.yaml", &filtered("this-pod", "team-a"))],
    );
    let bundle = bundle("runc-cri", CLOSER);
    edit_config(&bundle, |c| {
        c["annotations"] = serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "closer",
            "io.kubernetes.cri.sandbox-name": "web-0",
            "io.kubernetes.cri.sandbox-namespace": "team-a",
        });
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    });
    let id = container_id("runc-cri");
    runc_run_wrapped(&server, &bundle, &id);
    let selected = summary(&server.get("this-pod"));
    let line = selected["containers"].as_sequence().and_then(|c| c.first()).cloned().unwrap_or_default();
    assert_eq!(line["signals"], 400, "{selected:?}");
    assert_eq!(
        (line["pod"].as_str(), line["namespace"].as_str()),
        (Some("web-0"), Some("team-a")),
        "{line:?}"
    );
    assert_eq!((line["name"].as_str(), line["id"].as_str()), (Some("closer"), Some(id.as_str())), "{line:?}");
    assert_eq!(summary(&server.get("other-team"))["notifications"], 0);
}

/// The agent socket lets a container process of any uid connect, but one
/// that is not root cannot pass for another container: it claims another
/// bundle, container id and pod, and is served as its own pid, by the
/// Trace that selects what it truly is, never by the victim's.
#[test]
fn a_process_that_is_not_root_cannot_pass_for_another_container() {
    if !require_tools() {
        return;
    }
    let victim = auto_trace("victim", "  filter:\n    podname: victim-0\n");
    let server = Server::with_profiles(
        "spoof",
        &[],
        &[("a.yaml", &victim), ("b.yaml", &auto_trace("zz-everyone", ""))],
    );
    let theirs = bundle("spoof-victim", CLOSER);
    edit_config(&theirs, |c| c["annotations"] = json!({"io.kubernetes.cri.sandbox-name": "victim-0"}));
    let bundle = bundle("spoof", CLOSER);
    patch(&bundle, &server.socket, &["--mode", "wrap", "--container-id", "honest"]);
    let theirs = theirs.to_str().expect("path").to_owned();
    // What the patch put in front, with every claim pointing at the victim.
    let mut lying =
        vec!["/.sigvisor/sigvisor-launch", "--socket", "/.sigvisor/agent.sock", "--bundle", &theirs];
    lying.extend([
        "--container-id",
        "victim",
        "--annotation",
        "io.kubernetes.cri.sandbox-name=victim-0",
        "--",
    ]);
    lying.extend(CLOSER);
    edit_config(&bundle, |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        c["process"]["args"] = json!(lying);
    });
    let id = container_id("spoof");
    let out = runc_run(&bundle, &id);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    assert_eq!(summary(&server.get("victim"))["notifications"], 0);
    let (traces, log) = server.stop();
    let everyone = summary(traces.iter().find(|t| t["metadata"]["name"] == "zz-everyone").expect("trace"));
    assert_eq!(everyone["signalsSent"], 400, "{everyone:?}");
    // Served as a plain process: no container is named at all.
    assert!(everyone["containers"].is_null(), "{everyone:?}");
    assert!(log.contains("is not believed (its root directory is not the bundle's root"), "{log}");
}

/// `exec` into a wrapped container (`docker exec`, `kubectl exec`, exec
/// probes) goes through the launcher too: with a `--process` file, as
/// docker and containerd give it, and with the command after the id.
#[test]
fn exec_into_a_wrapped_runc_container_is_supervised() {
    if !require_tools() {
        return;
    }
    let server = Server::start("runc-exec", &[]);
    let bundle = bundle("runc-exec", &["/bin/sleep", "30"]);
    let id = container_id("runc-exec");
    let shim = || runc_shim(&server);
    // Detached, its stdio is the container's: nothing to collect.
    let started = shim()
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the shim");
    assert_eq!(exit_code(&wait_bounded(started, "runc run --detach")), 0);
    let process = bundle.join("../exec.json");
    std::fs::write(
        &process,
        json!({"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
               "args": ["/bin/closer", "--closes", "100"]})
        .to_string(),
    )
    .expect("process file");
    let by_file =
        output_bounded(shim().arg("exec").arg("--process").arg(&process).arg(&id), "exec --process");
    let by_args = output_bounded(shim().args(["exec", &id, "/bin/closer", "--closes", "50"]), "exec CMD");
    let _ = std::process::Command::new("runc").args(["delete", "-f", &id]).output();
    for out in [&by_file, &by_args] {
        assert_eq!(exit_code(out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert_precise(&report(out));
    }
    // One line per process handed over: the container's own and each exec's.
    let (traces, _) = server.stop();
    let summary = summary(&traces[0]);
    let lines: Vec<&yaml_serde::Value> =
        summary["containers"].as_sequence().expect("containers").iter().filter(|c| c["id"] == id).collect();
    let signals: Vec<u64> = lines.iter().map(|c| c["signals"].as_u64().unwrap_or(0)).collect();
    assert_eq!(signals.len(), 3, "{summary:?}");
    assert_eq!(signals.iter().sum::<u64>(), 150, "{summary:?}");
}

#[test]
fn crun_patched_listener_is_precise_and_spares_crun_init() {
    if !require_tools() {
        return;
    }
    let server = Server::start("crun-patch", &[]);
    let bundle = bundle("crun-patch", CLOSER);
    patch(&bundle, &server.socket, &["--runtime", "crun"]);
    let seccomp = &config(&bundle)["linux"]["seccomp"];
    assert_eq!(seccomp["flags"], json!(["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]));
    assert_eq!(seccomp["listenerPath"], json!(server.socket));
    let id = container_id("crun-patch");
    let out = crun_run(&bundle, &id);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    let (traces, log) = server.stop();
    let line = container_line(&traces, &id);
    assert_eq!(line["signals"], 400);
    // crun's init closes fds under the filter before it execs the container.
    assert!(line["skipped"]["runtime-init"].as_u64() >= Some(1), "{line:?}\n{log}");
    assert_eq!(traces[0]["status"]["operationWarning"], yaml_serde::Value::Null);
}

#[test]
fn patch_keeps_the_existing_seccomp_profile_and_is_idempotent() {
    if !require_tools() {
        return;
    }
    let server = Server::start("patch-merge", &[]);
    let bundle = bundle("patch-merge", CLOSER);
    edit_config(&bundle, |c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["read", "close", "write"], "action": "SCMP_ACT_ALLOW"}],
        })
    });
    for _ in 0..2 {
        patch(&bundle, &server.socket, &["--mode", "listener"]);
    }
    let seccomp = &config(&bundle)["linux"]["seccomp"];
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(seccomp["architectures"], json!(["SCMP_ARCH_X86_64"]));
    assert_eq!(
        seccomp["syscalls"],
        json!([
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["close"], "action": "SCMP_ACT_NOTIFY"},
        ])
    );
    drop(server);
}

#[test]
fn unreachable_supervisor_fails_at_once() {
    if !require_tools() {
        return;
    }
    let bundle = bundle("unreachable", CLOSER);
    let before = config(&bundle);
    let socket = scratch("unreachable-sock").join("nobody.sock");
    let out =
        output_bounded(sigvisor().args(["oci", "patch", "--socket"]).arg(&socket).arg(&bundle), "patch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 125, "{stderr}");
    assert!(stderr.contains("no supervisor is listening") && stderr.contains("nobody.sock"), "{stderr}");
    assert_eq!(config(&bundle), before, "the bundle must stay as it was");
}

/// The Dockerfile way: the static launcher copied into the image in front of
/// the entrypoint, the agent socket shared as a volume.
#[test]
fn hand_wrapped_entrypoint_in_a_busybox_image() {
    if !require_tools() {
        return;
    }
    let server = Server::start("wrapped", &[]);
    let bundle = wrapped_bundle("wrapped", CLOSER, &server.socket);
    let id = container_id("wrapped");
    let out = runc_run(&bundle, &id);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    let (traces, _) = server.stop();
    assert_eq!(summary(&traces[0])["signalsSent"], 400);
}

/// Bad clients, a container killed mid-syscall and 20 containers at once
/// against one server: all handled, the server keeps serving, no fd leaks.
#[test]
fn faults_and_concurrency_leave_the_server_serving() {
    if !require_tools() {
        return;
    }
    let server = Server::start("faults", &["--handoff-timeout", "1"]);
    let run_one = |name: &str| {
        let bundle = bundle(name, &["/bin/closer", "--threads", "2", "--closes", "100"]);
        patch(&bundle, &server.socket, &["--mode", "listener"]);
        bundle
    };
    let warm = run_one("faults-warm");
    let out = crun_run(&warm, &container_id("faults-warm"));
    assert_precise(&report(&out));
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = server.open_fds();

    // Connects and says nothing (held open past the timeout); connects and
    // closes; garbage; a message naming no seccompFd, with an fd attached.
    let silent = UnixStream::connect(&server.socket).expect("connect");
    drop(UnixStream::connect(&server.socket).expect("connect"));
    UnixStream::connect(&server.socket).expect("connect").write_all(b"{not json at all").expect("write");
    let other = UnixStream::connect(&server.socket).expect("connect");
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let message = br#"{"ociVersion":"1","fds":["other"],"pid":1,"state":{"ociVersion":"1","id":"x","status":"creating","bundle":"/"}}"#;
    sigvisor_proto::send_with_fd(other.as_fd(), message, devnull.as_fd()).expect("send");
    drop(other);
    // Over the 1 MiB limit, and never a whole document: dropped unread.
    let mut long = UnixStream::connect(&server.socket).expect("connect");
    let _ = long.write_all(&vec![b'['; (1 << 20) + 4096]);
    drop(long);

    // A container killed while its threads sit in trapped closes.
    let doomed = bundle("faults-doomed", &["/bin/closer", "--threads", "4", "--duration-ms", "0"]);
    patch(&doomed, &server.socket, &["--mode", "listener"]);
    let doomed_id = container_id("faults-doomed");
    let child = crun_command(&doomed, &doomed_id).stdout(std::process::Stdio::piped()).spawn().expect("crun");
    std::thread::sleep(Duration::from_millis(700));
    let _ = std::process::Command::new("crun").args(["kill", &doomed_id, "KILL"]).output();
    let killed = wait_bounded(child, "killed container");
    let _ = std::process::Command::new("crun").args(["delete", "-f", &doomed_id]).output();
    assert_ne!(exit_code(&killed), 0, "the container was killed");

    // Twenty containers at once.
    let bundles: Vec<_> = (0..20).map(|i| run_one(&format!("faults-many-{i}"))).collect();
    let children: Vec<_> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let id = container_id(&format!("faults-many-{i}"));
            (id.clone(), crun_command(b, &id).stdout(std::process::Stdio::piped()).spawn().expect("crun"))
        })
        .collect();
    for (id, child) in children {
        let out = wait_bounded(child, &id);
        let _ = std::process::Command::new("crun").args(["delete", "-f", &id]).output();
        assert_eq!(exit_code(&out), 0, "{id}: {}", String::from_utf8_lossy(&out.stderr));
        assert_precise(&report(&out));
    }
    std::thread::sleep(Duration::from_millis(1500)); // past the handoff timeout
    drop(silent);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.open_fds(), fds_before, "the server's open fds before and after");

    let (traces, log) = server.stop();
    // An empty connection is a runtime's aborted start, or the shim's
    // check that serve listens: nothing to tell at info.
    assert!(!log.contains("empty connection"), "{log}");
    for expected in [
        "no complete handoff within",
        "not a ContainerProcessState",
        "does not name \"seccompFd\"",
        "message longer than",
    ] {
        assert!(log.contains(expected), "log should mention {expected:?}:\n{log}");
    }
    let summary = summary(&traces[0]);
    let containers = summary["containers"].as_sequence().expect("containers").len();
    assert_eq!(containers, 22, "warm-up, the killed one and twenty: {summary:?}");
    assert_eq!(summary["errors"], 0, "{log}");
}

/// A bundle that had no seccomp section ran every ABI; the patched one must
/// too (a filter kills callers of an ABI it does not list): a 32-bit static
/// program in a crun container, trapped through the i386 ABI and precise.
#[test]
fn crun_patched_listener_runs_32_bit_programs() {
    let Some(closer_i386) = option_env!("SIGVISOR_FIXTURE_CLOSER_I386") else {
        return eprintln!("SKIPPED: no i386 fixture (install gcc-multilib)");
    };
    if !require_tools() {
        return;
    }
    let server = Server::start("crun-i386", &[]);
    let bundle = bundle("crun-i386", &["/bin/closer32", "--threads", "2", "--closes", "200"]);
    std::fs::copy(closer_i386, bundle.join("rootfs/bin/closer32")).expect("copy the i386 closer");
    assert!(config(&bundle)["linux"]["seccomp"].is_null(), "runc spec writes no seccomp section");
    patch(&bundle, &server.socket, &["--runtime", "crun"]);
    let arches = &config(&bundle)["linux"]["seccomp"]["architectures"];
    assert!(arches.as_array().is_some_and(|a| a.contains(&json!("SCMP_ARCH_X86"))), "{arches}");
    let id = container_id("crun-i386");
    let out = crun_run(&bundle, &id);
    assert_eq!(exit_code(&out), 0, "159 is SIGSYS: {}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    let (traces, _) = server.stop();
    assert_eq!(container_line(&traces, &id)["signals"], 400);
}

/// A config.json written by hand as the OCI runtime spec says, with the
/// flag and no sigvisor metadata: sigvisor believes the runtime's own
/// configuration (read from the state's bundle), and every close is
/// signalled precisely; the status says where that came from.
#[test]
fn crun_flag_written_by_hand_is_believed() {
    if !require_tools() {
        return;
    }
    let server = Server::start("crun-by-hand", &[]);
    let bundle = bundle("crun-by-hand", CLOSER);
    let socket = server.socket.clone();
    edit_config(&bundle, |c| {
        let mut seccomp = notify_close(&socket, true);
        seccomp.as_object_mut().expect("an object").remove("listenerMetadata");
        c["linux"]["seccomp"] = seccomp;
    });
    let id = container_id("crun-by-hand");
    let out = crun_run(&bundle, &id);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    let (traces, log) = server.stop();
    let line = container_line(&traces, &id);
    assert_eq!(line["signals"], 400, "{line:?}\n{log}");
    assert_eq!(line["filter"], "config.json", "{line:?}");
    // No handler rules in a hand-written profile: handlers come from /proc.
    let warning = traces[0]["status"]["operationWarning"].as_str().unwrap_or_default();
    assert!(warning.contains("/proc"), "{warning:?}");
}

/// `oci patch` loses nothing it does not understand: vendor extensions and
/// fields newer than oci-spec keep their values and their places, and so
/// does every list; only linux.seccomp and the patched annotation change.
#[test]
fn patch_is_lossless() {
    if !require_tools() {
        return;
    }
    let server = Server::start("patch-lossless", &[]);
    let bundle = bundle("patch-lossless", CLOSER);
    edit_config(&bundle, |c| {
        c["x-vendor-extension"] = json!({"zeta": 1, "alpha": [3, 2, 1]});
        c["linux"]["futureField"] = json!({"b": true, "a": "kept"});
        c["process"]["futureProcessField"] = json!(["z", "a"]);
        c["process"]["capabilities"]["bounding"] = json!(["CAP_SETUID", "CAP_CHOWN", "CAP_AUDIT_WRITE"]);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdirat", "close", "unlinkat"], "action": "SCMP_ACT_LOG"},
                {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"},
            ],
        });
    });
    let before = config(&bundle);
    patch(&bundle, &server.socket, &["--mode", "listener"]);
    let after = config(&bundle);
    let keys = |v: &serde_json::Value| v.as_object().expect("object").keys().cloned().collect::<Vec<_>>();
    // Every top-level field, in its place; only linux and annotations differ.
    assert_eq!(
        keys(&after).iter().filter(|k| *k != "annotations").collect::<Vec<_>>(),
        keys(&before).iter().filter(|k| *k != "annotations").collect::<Vec<_>>()
    );
    for (key, value) in before.as_object().unwrap() {
        if key != "linux" && key != "annotations" {
            assert_eq!(after[key].to_string(), value.to_string(), "{key} changed");
        }
    }
    for (key, value) in before["linux"].as_object().unwrap() {
        if key != "seccomp" {
            assert_eq!(after["linux"][key].to_string(), value.to_string(), "linux.{key} changed");
        }
    }
    let seccomp = &after["linux"]["seccomp"];
    assert_eq!(seccomp["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]));
    let rules = seccomp["syscalls"].as_array().unwrap();
    // The profile's own rules first, as they were, less the trapped close.
    assert_eq!(rules[0], json!({"names": ["mkdirat", "unlinkat"], "action": "SCMP_ACT_LOG"}));
    assert_eq!(rules[1], json!({"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}));
    assert_eq!(rules[2]["names"], json!(["close"]));
    assert_eq!(after["annotations"]["io.sigvisor.patched"], "listener");
    drop(server);
}

/// Kubernetes names reach the runtime as CRI annotations: a Trace selects
/// the container by them (`spec.filter`), and its events and status line
/// carry the pod, its namespace and the container's name.
#[test]
fn cri_names_select_and_attribute() {
    if !require_tools() {
        return;
    }
    // serve writes File outputs inside its output directory only.
    let trace = "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: shop\nspec:\n  gadget: signal\n  \
         runMode: Auto\n  outputMode: File\n  output: shop/events.jsonl\n  filter:\n    namespace: shop\n    podname: web-7d9\n    \
         containerName: web\n";
    let outputs = scratch("cri-events");
    std::fs::create_dir_all(outputs.join("shop")).expect("mkdir");
    let events = outputs.join("shop/events.jsonl");
    let dir = outputs.to_str().expect("path");
    let server = Server::with_profiles("cri", &["--output-dir", dir], &[("shop.yaml", trace)]);
    let bundle = bundle("cri", CLOSER);
    patch(&bundle, &server.socket, &["--runtime", "crun"]);
    edit_config(&bundle, |c| {
        c["annotations"]["io.kubernetes.cri.container-name"] = json!("web");
        c["annotations"]["io.kubernetes.cri.sandbox-name"] = json!("web-7d9");
        c["annotations"]["io.kubernetes.cri.sandbox-namespace"] = json!("shop");
    });
    let id = container_id("cri");
    let out = crun_run(&bundle, &id);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    let (traces, log) = server.stop();
    let line = container_line(&traces, &id);
    assert_eq!(
        (&line["name"], &line["pod"], &line["namespace"]),
        (&"web".into(), &"web-7d9".into(), &"shop".into())
    );
    assert_eq!(line["signals"], 400, "{line:?}\n{log}");
    let text = std::fs::read_to_string(&events).expect("the File output");
    let signalled: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["action"] == "signalled")
        .collect();
    assert_eq!(signalled.len(), 400);
    for event in &signalled {
        assert_eq!(
            event["container"],
            json!({"id": id, "name": "web", "pod": "web-7d9", "namespace": "shop"})
        );
    }
}

/// A crun container that connected when no Trace selected it is selected by
/// a Trace applied later through the control socket, and released when that
/// Trace is deleted, without restarting anything; every signal is precise.
#[test]
fn a_trace_applied_later_selects_a_running_container() {
    if !require_tools() {
        return;
    }
    let server = Server::with_profiles("late-crun", &[], &[]);
    let bundle = bundle("late-crun", &["/bin/closer", "--threads", "1", "--duration-ms", "2500"]);
    patch(&bundle, &server.socket, &["--runtime", "crun"]);
    let id = container_id("late-crun");
    let child = crun_command(&bundle, &id)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn crun");
    std::thread::sleep(Duration::from_millis(500));
    let dir = scratch("late-crun-profiles");
    let trace = dir.join("late.yaml");
    std::fs::write(&trace, ALL.replace("name: all", "name: late")).expect("write trace");
    let control = |args: &[&str]| {
        let out = output_bounded(sigvisor().args(args).arg("--control").arg(&server.control), "control");
        assert_eq!(exit_code(&out), 0, "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    control(&["apply", "-f", trace.to_str().expect("utf-8 path")]);
    std::thread::sleep(Duration::from_millis(700));
    control(&["delete", "late"]);
    let out = wait_bounded(child, "crun");
    let _ = std::process::Command::new("crun").args(["delete", "-f", &id]).output();
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let report = report(&out);
    let got = report["signals"].as_i64().expect("signals");
    assert!(
        got > 0 && got < report["closes"].as_i64().unwrap_or(0),
        "signalled only while selected: {report}"
    );
    assert_signalled(&report, got);
    drop(server);
}

/// A syscall the container's profile refuses is not trapped: a CONTINUE
/// must never run a call the profile denied.
#[test]
fn patch_never_traps_what_the_profile_refuses() {
    if !require_tools() {
        return;
    }
    let server = Server::start("patch-refused", &[]);
    let bundle = bundle("patch-refused", CLOSER);
    edit_config(&bundle, |c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["close"], "action": "SCMP_ACT_ERRNO"}],
        })
    });
    let before = config(&bundle);
    let out = output_bounded(
        sigvisor().args(["oci", "patch", "--mode", "listener", "--socket"]).arg(&server.socket).arg(&bundle),
        "oci patch",
    );
    assert_eq!(exit_code(&out), 125, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to trap"));
    assert_eq!(config(&bundle), before, "a refused patch changes nothing");
    drop(server);
}
