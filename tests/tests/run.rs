//! `sigvisor run` against the real kernel, with the C fixture target.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sigvisor_tests::*;

#[test]
fn one_thread_every_close_signalled_after_it_completed() {
    let run = run_closer("one-thread", &seed_profile(), &[], &["--threads", "1", "--closes", "2000"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.reports.len(), 1);
    assert_precise(&run.reports[0]);
    assert_eq!(run.count("signalsSent"), 2000);
    // Closes before main installed the handler (ld.so) were not signalled.
    assert_eq!(run.count("notifications"), 2000 + run.skipped("no-handler"));
    assert_eq!(run.count("errors"), 0);
    assert_eq!(run.trace.as_ref().unwrap()["status"]["state"], "Completed");
}

#[test]
fn eight_threads_concurrently() {
    let run = run_closer("eight-threads", &seed_profile(), &[], &["--threads", "8", "--closes", "2000"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_precise(&run.reports[0]);
    assert_eq!(run.count("signalsSent"), 16000);
    // Per-thread counts: eight closing threads with 2000 signals each.
    let threads = run.summary()["threads"].as_sequence().expect("threads").clone();
    let busy = threads.iter().filter(|t| t["signals"].as_u64() == Some(2000)).count();
    assert_eq!(busy, 8, "{threads:?}");
}

/// More calling threads than the per-listener handle cache holds (256):
/// entries are evicted and reopened, and every signal still precise.
#[test]
fn more_threads_than_the_handle_cache() {
    let run = run_closer("300-threads", &seed_profile(), &[], &["--threads", "300", "--closes", "20"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_precise(&run.reports[0]);
    assert_eq!(run.count("signalsSent"), 6000);
}

/// A 32-bit program on x86_64 makes its syscalls through the i386 ABI: the
/// filter traps them too, and the signal lands on the vDSO's int $0x80
/// return pad.
#[test]
fn i386_closes_are_trapped_too() {
    let Some(closer_i386) = option_env!("SIGVISOR_FIXTURE_CLOSER_I386") else {
        assert!(
            std::env::var_os("CI").is_none() || !cfg!(target_arch = "x86_64"),
            "CI must build the i386 fixture: `make test` installs gcc-multilib"
        );
        return eprintln!("SKIPPED: no i386 fixture (install gcc-multilib)");
    };
    let status = scratch("i386").join("status.yaml");
    let child = run_command(&status, &seed_profile(), &[])
        .arg(closer_i386)
        .args(["--threads", "2", "--closes", "300"])
        .spawn()
        .expect("spawn sigvisor");
    let run = Run::from_output(wait_bounded(child, "i386"), &status);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_precise(&run.reports[0]);
    assert_eq!(run.count("signalsSent"), 600);
}

#[test]
fn handler_with_sa_restart() {
    for threads in ["1", "8"] {
        let run = run_closer(
            "restart",
            &seed_profile(),
            &[],
            &["--restart", "--threads", threads, "--closes", "1000"],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_precise(&run.reports[0]);
    }
}

#[test]
fn forked_and_execed_children_are_supervised() {
    let args = [
        "--threads",
        "2",
        "--closes",
        "300",
        "--spawn",
        "3",
        "--child-threads",
        "2",
        "--child-closes",
        "300",
    ];
    let run = run_closer("children", &seed_profile(), &[], &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.reports.len(), 4, "parent and three children report");
    let pids: std::collections::BTreeSet<_> = run.reports.iter().map(|r| r["pid"].as_i64()).collect();
    assert_eq!(pids.len(), 4);
    for report in &run.reports {
        assert_precise(report);
        assert_eq!(report["children_failed"], 0);
    }
    assert_eq!(run.count("signalsSent"), 600 + 3 * 600);
}

#[test]
fn target_without_handler_is_not_killed_and_its_closes_work() {
    let run = run_closer(
        "no-handler",
        &seed_profile(),
        &[],
        &["--no-handler", "--threads", "4", "--closes", "500"],
    );
    assert_eq!(run.code, 0, "a SIGILL would have killed it: {}", run.stderr);
    assert_untouched(&run.reports[0]);
    assert_eq!(run.count("signalsSent"), 0);
    assert_eq!(run.skipped("no-handler"), run.count("notifications"));
    assert!(run.skipped("no-handler") >= 2000);
}

#[test]
fn exit_status_is_the_targets() {
    let run = run_closer("exit-3", &seed_profile(), &[], &["--closes", "5", "--exit", "3"]);
    assert_eq!(run.code, 3);
    assert!(run.trace.is_some(), "status printed after a failing target");
    let run = run_closer("kill-self", &seed_profile(), &[], &["--closes", "5", "--kill-self"]);
    assert_eq!(run.code, 137, "128 + SIGKILL");
}

#[test]
fn launcher_failures_keep_envs_statuses() {
    let dir = scratch("launcher-statuses");
    let not_exec = dir.join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (cmd, code, says) in
        [("no-such-command-here", 127, "not found"), (not_exec.to_str().unwrap(), 126, "permission denied")]
    {
        let out = output_bounded(sigvisor().arg("run").arg(seed_profile()).arg("--").arg(cmd), cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(exit_code(&out), code, "{stderr}");
        assert!(stderr.contains(cmd) && stderr.contains(says), "{stderr}");
    }
}

#[test]
fn supervisor_unreachable_means_cmd_never_starts() {
    let dir = scratch("unreachable");
    let marker = dir.join("ran");
    let out = output_bounded(
        std::process::Command::new(bin("sigvisor-launch"))
            .arg("--socket")
            .arg(dir.join("nobody-listens.sock"))
            .args(["--", "touch"])
            .arg(&marker),
        "launcher",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 125, "{stderr}");
    assert!(
        stderr.contains("cannot reach the supervisor") && stderr.contains("nobody-listens.sock"),
        "{stderr}"
    );
    assert!(!marker.exists(), "CMD ran without a supervisor");
}

#[test]
fn launcher_refuses_syscalls_it_needs_itself() {
    let out = output_bounded(
        std::process::Command::new(bin("sigvisor-launch")).args([
            "--socket-fd",
            "0",
            "--syscall",
            "execve",
            "--",
            "true",
        ]),
        "launcher",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 125);
    assert!(stderr.contains("--syscall execve") && stderr.contains("cannot be trapped"), "{stderr}");
}

/// A filter without WAIT_KILLABLE_RECV (what runc installs): no order of
/// signal and CONTINUE is safe, so sigvisor must observe only, and say so.
#[test]
fn filter_that_cannot_wait_killable_is_observed_without_signals() {
    let wrapper = launcher_with("not-killable", "--no-wait-killable");
    let extra = ["--launcher", wrapper.to_str().unwrap()];
    for restart in [false, true] {
        let mut args = vec!["--threads", "4", "--closes", "1000"];
        if restart {
            args.push("--restart");
        }
        let run = run_closer("not-killable-run", &seed_profile(), &extra, &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_untouched(&run.reports[0]);
        assert_eq!(run.count("signalsSent"), 0);
        assert_eq!(run.skipped("filter-not-killable"), run.count("notifications"));
        let warning =
            run.trace.as_ref().unwrap()["status"]["operationWarning"].as_str().unwrap_or("").to_owned();
        assert!(warning.contains("WAIT_KILLABLE_RECV"), "operationWarning: {warning:?}");
    }
}

/// The target is killed while its threads sit in trapped closes; a child
/// that inherited the filter keeps being served, precisely, to the end.
#[test]
fn target_killed_mid_syscall_leaves_the_supervisor_serving() {
    let dir = scratch("killed-mid-close");
    let status = dir.join("status.yaml");
    let child = run_command(&status, &seed_profile(), &[])
        .arg(closer())
        .args(["--threads", "4", "--duration-ms", "0"])
        .args(["--spawn", "1", "--child-threads", "2", "--child-duration-ms", "1500"])
        .spawn()
        .expect("spawn sigvisor");
    std::thread::sleep(Duration::from_millis(500));
    let (target_pid, _keeper) = run_children(child.id() as i32);
    // SAFETY: kill takes plain integers.
    assert_eq!(unsafe { libc::kill(target_pid, libc::SIGKILL) }, 0);
    let run = Run::from_output(wait_bounded(child, "sigvisor run"), &status);
    assert_eq!(run.code, 137, "{}", run.stderr);
    let child_reports: Vec<_> =
        run.reports.iter().filter(|r| r["pid"].as_i64() != Some(target_pid.into())).collect();
    assert_eq!(child_reports.len(), 1, "the grandchild finished: {:?}", run.reports);
    assert_precise(child_reports[0]);
    assert_eq!(run.count("errors"), 0, "{}", run.stderr);
    assert!(run.count("signalsSent") > 0);
}

#[test]
fn sigterm_is_forwarded_to_the_target() {
    let dir = scratch("sigterm");
    let status = dir.join("status.yaml");
    let child =
        run_command(&status, &seed_profile(), &[]).args(["sleep", "30"]).spawn().expect("spawn sigvisor");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill takes plain integers.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let run = Run::from_output(wait_bounded(child, "sigvisor run sleep"), &status);
    assert_eq!(run.code, 128 + libc::SIGTERM, "{}", run.stderr);
}
