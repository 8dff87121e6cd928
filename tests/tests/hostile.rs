//! Issue 17: what one tenant controls (its files, its binaries) never takes
//! supervision away from the others. Each attack runs under one `serve`,
//! beside a well-behaved target that checks every close, under a Trace
//! that takes stacks: the good target's worst close stays under 1 s, `get
//! traces` and a newcomer's closes answer within 3 s, serve's memory stays
//! bounded, and every close of every target returns 0.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sigvisor_tests::containers::{launch, launch_program, report, Server};
use sigvisor_tests::*;

const WHO: &str = "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: who\nspec:\n  \
                   gadget: signal\n  runMode: Auto\n  outputMode: Status\n  parameters:\n    stacks: \"true\"\n";

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `attack` (a program under the same serve) beside a good target;
/// checks that nobody else noticed; returns the `who` Trace's status and
/// the attacker's stdout.
fn beside_a_good_target(name: &str, program: &Path, args: &[&str]) -> (yaml_serde::Value, String) {
    let server = Server::with_profiles(name, &[], &[("who.yaml", WHO)]);
    let good = launch(&server, &["--threads", "2", "--duration-ms", "3000"]);
    std::thread::sleep(Duration::from_millis(300));
    let bad = launch_program(&server, program, args);
    std::thread::sleep(Duration::from_millis(700));

    let asked = Instant::now();
    let traces = server.get("who");
    assert!(asked.elapsed() < Duration::from_secs(3), "get trace took {:?}", asked.elapsed());
    assert!(traces["status"]["state"] == "Started", "{traces:?}");

    let started = Instant::now();
    let newcomer = report(&wait_bounded(launch(&server, &["--closes", "5"]), "newcomer"));
    assert!(started.elapsed() < Duration::from_secs(3), "a newcomer took {:?}", started.elapsed());
    assert_precise(&newcomer);

    let bad = wait_bounded(bad, name);
    let stdout = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(exit_code(&bad), 0, "{stdout}{}", String::from_utf8_lossy(&bad.stderr));
    assert!(stdout.contains("\"failed\":0"), "every close of the attacker returned 0: {stdout}");

    let good = report(&wait_bounded(good, "good target"));
    assert_precise(&good);
    let worst = good["max_close_us"].as_i64().expect("max_close_us");
    assert!(worst < 1_000_000, "the good target's worst close took {worst} µs");
    let rss = rss_kib(server.pid());
    assert!(rss < 256 * 1024, "serve's RSS grew to {rss} KiB");
    eprintln!("{name}: good target's worst close {worst} µs, serve RSS {rss} KiB");

    let who = server.get("who");
    let status =
        yaml_serde::from_str(who["status"]["output"].as_str().unwrap_or("{}")).expect("status output");
    drop(server);
    (status, stdout)
}

/// The frame lines of the stacks whose frames mention `needle`.
fn stacks_with(status: &yaml_serde::Value, needle: &str) -> Vec<String> {
    status["stacks"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s["frames"].as_sequence())
        .map(|f| f.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n"))
        .filter(|text| text.contains(needle))
        .collect()
}

/// A write lease on a binary the attacker maps: opening it would wait out
/// the lease-break time (45 s), so sigvisor opens it O_NONBLOCK, fails at
/// once, and names the attacker's own frames from its other binary.
#[test]
fn a_leased_binary_delays_no_one() {
    let dir = scratch("hostile-lease");
    let leased = dir.join("leased.bin");
    std::fs::copy(closer(), &leased).expect("copy a binary to lease");
    let leased = leased.to_str().expect("path");
    let (status, _) = beside_a_good_target("lease", Path::new(hostile::program()), &["lease", leased, "200"]);
    let stacks = stacks_with(&status, "close_some");
    assert!(!stacks.is_empty(), "the attacker's stacks, named from its own binary: {status:?}");
}

/// A `.gopclntab` whose frame-size table is 16 MiB of steps that never
/// reach the PC: each stack costs at most the step budget, then ends with
/// the reason.
#[test]
fn a_crafted_gopclntab_costs_a_bounded_scan() {
    let binary = hostile::with_crafted_pclntab(&scratch("hostile-pclntab"), 16 << 20);
    let (status, _) = beside_a_good_target("pclntab", &binary, &["closes", "100"]);
    let text = format!("{status:?}");
    assert!(text.contains("its tables took over"), "the budget ended the attacker's stacks: {text}");
}

/// A sparse copy of the attacker's binary (3 GiB long, a few MiB on disk)
/// whose `.eh_frame` claims 1000 MiB: refused without being read, so serve
/// never grows.
#[test]
fn a_sparse_binary_is_refused_unread() {
    let binary = hostile::sparse(&scratch("hostile-sparse"));
    let (status, _) = beside_a_good_target("sparse", &binary, &["closes", "100"]);
    let text = format!("{status:?}");
    assert!(text.contains("a sparse file"), "its binary refused as sparse: {text}");
}

/// serve short of file descriptors (`prlimit --nofile=40:40`) and 40
/// containers at once: each ends supervised, or fails fast with the
/// launcher's message (it waits for serve's word that it holds the
/// listener); none hangs in its trapped `execve`.
#[test]
fn serve_short_of_fds_never_hangs_a_container() {
    let server = Server::with_profiles("fds", &[], &[("who.yaml", WHO)]);
    let limited = Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--nofile=40:40")
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let started = Instant::now();
    let targets: Vec<Child> = (0..40).map(|_| launch(&server, &["--closes", "20"])).collect();
    let (mut supervised, mut refused) = (0, 0);
    for target in targets {
        let out = wait_bounded(target, "a container under a serve short of fds");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match exit_code(&out) {
            0 => {
                let report: serde_json::Value = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .find(|v: &serde_json::Value| v["event"] == "done")
                    .expect("the closer's report");
                assert_eq!(report["close_errors"], 0, "every close returned 0: {report}");
                supervised += 1;
            }
            125 => {
                assert!(stderr.contains("CMD was not started"), "a clear message: {stderr}");
                refused += 1;
            }
            code => panic!("exit {code}: {stderr}"),
        }
    }
    eprintln!("40 containers: {supervised} supervised, {refused} refused fast, in {:?}", started.elapsed());
    assert!(supervised > 0, "some fit in serve's fds");
    assert!(started.elapsed() < Duration::from_secs(30), "nobody waited for ever");
    drop(server);
}

/// serve stopped (SIGSTOP) for 10 s while a target closes in two threads:
/// the keeper answers every call serve leaves waiting past the bound (2 s),
/// unsignalled; after SIGCONT serve answers again, precisely.
#[test]
fn a_stopped_serve_delays_a_call_at_most_the_bound() {
    let server = Server::start("sigstop", &[]);
    let good = launch(&server, &["--threads", "2", "--duration-ms", "13000"]);
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(server.pid(), libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(10));
    // SAFETY: as above.
    unsafe { libc::kill(server.pid(), libc::SIGCONT) };
    let report = report(&wait_bounded(good, "closer"));
    let worst = report["max_close_us"].as_i64().expect("max_close_us");
    eprintln!("SIGSTOP of serve for 10 s: worst close {worst} µs; {report}");
    // Every call is answered within the bound (2 s), but one that serve
    // stopped in the middle of signalling: stopped at the return of its
    // signal, the keeper sees the signal pending and answers; stopped just
    // before it (a few instructions; on kernels before 6.9 the return of
    // the ID_VALID before it too), the keeper cannot send it for serve
    // (serve, resumed, would send a second one, late) and leaves that call
    // to serve. Correctness is asserted in every case.
    if worst >= 2_200_000 {
        eprintln!("serve stopped inside its signalling window: that call waited {worst} µs");
        assert!(worst < 10_500_000, "a call waited {worst} µs, past SIGCONT");
    }
    for bad in ["close_errors", "leaked", "early", "outside", "bad_pc", "bad_value"] {
        assert_eq!(report[bad], 0, "{bad}: {report}");
    }
    let (signals, closes) = (report["signals"].as_i64().unwrap_or(0), report["closes"].as_i64().unwrap_or(0));
    assert!(signals > 0 && signals < closes, "signalled before and after, not while stopped: {report}");
    // serve answers again: a newcomer is signalled at every close.
    assert_precise(&report_of(launch(&server, &["--closes", "50"])));
    let keeper_log = std::fs::read_to_string(server.state.join("keeper.log")).unwrap_or_default();
    assert!(keeper_log.contains("left a call waiting"), "{keeper_log}");
    assert!(keeper_log.contains("answers again"), "{keeper_log}");
    drop(server);
}

fn report_of(child: Child) -> serde_json::Value {
    report(&wait_bounded(child, "closer"))
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full state directory (a 256 KiB tmpfs, filled to the last byte):
/// nothing dies. serve and its keeper go on, a target is signalled at every
/// close, a Trace applied says it was not saved, and kill -9 of serve, then
/// a restart with the disk still full, loses no call.
#[test]
fn a_full_state_dir_kills_nothing() {
    let mut mounted = None;
    let mut server = Server::with_state("full", |state| {
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(state).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount a tmpfs on {}", state.display());
        mounted = Some(Mount(state.to_owned()));
    });
    let keeper = server.keeper_pid();
    let mut fill = std::fs::File::create(server.state.join("fill")).expect("fill file");
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut fill, &block).is_ok() {}
    drop(fill);
    // tmpfs fills by pages: the keeper's log fills the rest of its last one.
    let mut log =
        std::fs::OpenOptions::new().append(true).open(server.state.join("keeper.log")).expect("log");
    while std::io::Write::write_all(&mut log, b"\n").is_ok() {}
    drop(log);
    assert_precise(&report_of(launch(&server, &["--closes", "50"])));
    let profile = server.state.parent().expect("scratch").join("second.yaml");
    std::fs::write(&profile, WHO.replace("name: who", "name: second")).expect("profile");
    let applied = output_bounded(
        sigvisor().arg("apply").arg("-f").arg(&profile).arg("--control").arg(&server.control),
        "sigvisor apply",
    );
    assert_eq!(exit_code(&applied), 0, "{}", String::from_utf8_lossy(&applied.stderr));
    let second = server.get("second");
    let warning = second["status"]["operationWarning"].as_str().unwrap_or_default();
    assert!(warning.contains("not saved"), "the Trace says it is not saved: {second:?}");
    let target = launch(&server, &["--threads", "2", "--duration-ms", "3000"]);
    std::thread::sleep(Duration::from_millis(700));
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let out = wait_bounded(target, "closer");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise_where_signalled(&report(&out));
    assert!(Path::new(&format!("/proc/{keeper}")).exists(), "the keeper {keeper} lives on a full disk");
    drop(server);
    drop(mounted);
}

/// Two tenants that block SIGILL in a closing thread and change SIGILL's
/// handler in another: each change makes serve wait (up to 200 ms) for a
/// signal that stays pending. All listeners async (`--loop async`), the
/// worst case: the waits must not hold tokio's workers, or every other
/// listener waits behind them.
#[test]
fn a_tenant_that_blocks_its_signal_holds_no_worker() {
    let server = Server::with_profiles(
        "blocker",
        &["--loop", "async"],
        &[("all.yaml", sigvisor_tests::containers::ALL)],
    );
    let program = Path::new(hostile::program());
    let bad: Vec<Child> = (0..2).map(|_| launch_program(&server, program, &["blocker", "30"])).collect();
    std::thread::sleep(Duration::from_millis(200));
    let good = report_of(launch(&server, &["--duration-ms", "2000"]));
    assert_precise(&good);
    for b in bad {
        let out = wait_bounded(b, "blocker");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(exit_code(&out), 0, "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    let worst = good["max_close_us"].as_i64().expect("max_close_us");
    eprintln!("beside two signal blockers: the good target's worst close {worst} µs");
    assert!(worst < 100_000, "the good target's worst close took {worst} µs");
}
