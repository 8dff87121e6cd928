//! Harness for the end-to-end tests: runs the real binaries against the
//! real kernel and parses what they print.

pub mod cluster;
pub mod containers;
pub mod engines;
pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// No single run in these tests takes more than a few seconds; a run that
/// reaches this has hung, and the test fails instead of CI timing out.
pub const HANG: Duration = Duration::from_secs(60);

/// `target/<profile>/`, where cargo put the workspace binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first (`make test` does)",
        path.display()
    );
    path
}

pub fn sigvisor() -> Command {
    Command::new(bin("sigvisor"))
}

/// The C fixture target (tests/fixtures/closer.c).
pub fn closer() -> &'static str {
    env!("SIGVISOR_FIXTURE_CLOSER")
}

/// The C fixture that changes its handlers adversarially (tests/fixtures/adversary.c).
pub fn adversary() -> &'static str {
    env!("SIGVISOR_FIXTURE_ADVERSARY")
}

/// The Go fixture target (tests/fixtures/plaingo), if Go was installed
/// when the tests were built.
pub fn plaingo() -> Option<&'static str> {
    option_env!("SIGVISOR_FIXTURE_PLAINGO")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_owned()
}

/// A scratch directory unique to this test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sigvisor-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Whether what a test needs is `present`: on CI its absence fails the
/// test (`make test` provides it: `how`); elsewhere the test is skipped.
pub fn needed(present: bool, what: &str, how: &str) -> bool {
    assert!(present || std::env::var_os("CI").is_none(), "{what} is missing on CI: {how}");
    if !present {
        eprintln!("SKIPPED: {what} is missing ({how})");
    }
    present
}

/// Waits for a child, killing it and failing the test if it hangs. Its
/// pipes are read meanwhile: a chatty child must not block on a full pipe
/// and look hung.
pub fn wait_bounded(mut child: Child, what: &str) -> Output {
    use std::sync::{Arc, Mutex};
    type Sink = Arc<Mutex<Vec<u8>>>;
    fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> (Sink, std::thread::JoinHandle<()>) {
        let sink = Sink::default();
        let filled = Arc::clone(&sink);
        let reader = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                filled.lock().expect("sink").extend_from_slice(&chunk[..n]);
            }
        });
        (sink, reader)
    }
    let taken = |sink: &Sink| std::mem::take(&mut *sink.lock().expect("sink"));
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + HANG;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                // Until every writer is gone, a keeper sharing the pipes too.
                let _ = (stdout.1.join(), stderr.1.join());
                return Output { status, stdout: taken(&stdout.0), stderr: taken(&stderr.0) };
            }
            None if Instant::now() > deadline => {
                let tree = process_tree(child.id() as i32);
                let _ = child.kill();
                let _ = child.wait();
                // What its descendants still write is not waited for long.
                let until = Instant::now() + Duration::from_secs(5);
                while !(stdout.1.is_finished() && stderr.1.is_finished()) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                panic!(
                    "{what} hung for {HANG:?}\nstdout:\n{}\nstderr:\n{}\nprocesses when it hung:\n{tree}",
                    String::from_utf8_lossy(&taken(&stdout.0)),
                    String::from_utf8_lossy(&taken(&stderr.0))
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What a hung process and its descendants were doing: each thread's
/// state, where it sleeps in the kernel, and each process's open files.
/// A hang seen once on CI is then explained by its own report.
pub fn process_tree(root: i32) -> String {
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let parent = |pid: i32| -> Option<i32> {
        let stat = read(format!("/proc/{pid}/stat"));
        stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
    };
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let descends = |mut pid: i32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parent(pid) {
                Some(p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let mut report = String::new();
    for pid in pids.into_iter().filter(|&p| descends(p)) {
        let cmdline = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
        report += &format!("pid {pid} (ppid {:?}): {}\n", parent(pid), cmdline.trim_end());
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        for task in tasks {
            let tid = task.file_name().to_string_lossy().into_owned();
            let dir = format!("/proc/{pid}/task/{tid}");
            let state = read(format!("{dir}/status"))
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or_default()
                .to_owned();
            let stack = read(format!("{dir}/stack")).lines().take(6).collect::<Vec<_>>().join(" < ");
            report += &format!(
                "  tid {tid} {} {state} wchan {} {stack}\n",
                read(format!("{dir}/comm")).trim_end(),
                read(format!("{dir}/wchan"))
            );
        }
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
        let fds: Vec<String> = fds
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!("{}->{}", e.file_name().to_string_lossy(), target.display()))
            })
            .collect();
        report += &format!("  fds: {}\n", fds.join(" "));
    }
    report
}

pub fn output_bounded(cmd: &mut Command, what: &str) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    wait_bounded(child, what)
}

/// What one `sigvisor run` printed.
pub struct Run {
    pub code: i32,
    /// The fixture's `"event":"done"` lines, one per process.
    pub reports: Vec<Value>,
    /// The fixture's `"event":"started"` lines.
    pub started: Vec<Value>,
    /// The Trace printed at the end, if any.
    pub trace: Option<yaml_serde::Value>,
    pub stderr: String,
}

impl Run {
    pub fn from_output(out: Output, status_file: &Path) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let event = |name: &str| lines.iter().filter(|v| v["event"] == name).cloned().collect();
        let trace = std::fs::read_to_string(status_file)
            .ok()
            .map(|t| yaml_serde::from_str(&t).expect("status is YAML"));
        Run {
            code: exit_code(&out),
            reports: event("done"),
            started: event("started"),
            trace,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `status.output`, itself a YAML document.
    pub fn summary(&self) -> yaml_serde::Value {
        let trace =
            self.trace.as_ref().unwrap_or_else(|| panic!("no status printed; stderr:\n{}", self.stderr));
        let output = trace["status"]["output"].as_str().expect("status.output is a string");
        yaml_serde::from_str(output).expect("status.output is YAML")
    }

    pub fn count(&self, key: &str) -> u64 {
        self.summary()[key].as_u64().unwrap_or_else(|| panic!("summary has no {key}"))
    }

    pub fn skipped(&self, why: &str) -> u64 {
        self.summary()["skipped"][why].as_u64().unwrap_or(0)
    }
}

pub fn exit_code(out: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0))
}

/// `sigvisor run --status-file STATUS [extra] PROFILE --`, ready for CMD.
pub fn run_command(status: &Path, profile: &Path, extra: &[&str]) -> Command {
    let mut cmd = sigvisor();
    cmd.arg("run").arg("--status-file").arg(status).args(extra).arg(profile).arg("--");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// `sigvisor run [extra] PROFILE -- closer ARGS`, bounded.
pub fn run_closer(name: &str, profile: &Path, extra: &[&str], args: &[&str]) -> Run {
    let status = scratch(name).join("status.yaml");
    let child =
        run_command(&status, profile, extra).arg(closer()).args(args).spawn().expect("spawn sigvisor");
    Run::from_output(wait_bounded(child, name), &status)
}

fn field(report: &Value, key: &str) -> i64 {
    report[key].as_i64().unwrap_or_else(|| panic!("report has no {key}: {report}"))
}

/// Asserts the fixture's report shows sigvisor's promise kept: one signal
/// per close, each after the close completed and at its return site, every
/// close returned 0, no fd leaked.
pub fn assert_precise(report: &Value) {
    assert!(field(report, "closes") > 0, "no closes: {report}");
    assert_signalled(report, field(report, "closes"));
    assert_eq!(field(report, "mismatched_threads"), 0, "one signal per close in every thread: {report}");
}

/// Asserts exactly `n` signals arrived, each precise and naming its call
/// (SI_QUEUE, the fd and the syscall number in `si_value`), and no close
/// suffered.
pub fn assert_signalled(report: &Value, n: i64) {
    assert_eq!(field(report, "signals"), n, "signals: {report}");
    assert_eq!(
        field(report, "precise"),
        n,
        "every signal after its close, at the syscall's return: {report}"
    );
    for bad in ["early", "outside", "bad_pc", "bad_value", "close_errors", "eintr", "leaked"] {
        assert_eq!(field(report, bad), 0, "{bad}: {report}");
    }
}

/// Asserts that every signal that arrived was precise and no close
/// suffered, where some closes went unsignalled (answered by the keeper
/// while no supervisor was attached): some signals, fewer than closes.
pub fn assert_precise_where_signalled(report: &Value) {
    let (closes, signals) = (field(report, "closes"), field(report, "signals"));
    assert!(signals > 0 && signals < closes, "some closes signalled, not all: {report}");
    assert_signalled(report, signals);
}

/// Asserts closes were left alone: no signal, every close returned 0, no leak.
pub fn assert_untouched(report: &Value) {
    let n = |k: &str| field(report, k);
    assert!(n("closes") > 0, "no closes: {report}");
    for zero in ["signals", "close_errors", "eintr", "leaked"] {
        assert_eq!(n(zero), 0, "{zero}: {report}");
    }
}

pub fn seed_profile() -> PathBuf {
    repo().join("profiles/signal.yaml")
}

/// Pids whose parent is `pid`, from /proc/*/stat.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            if let Some(child) = head.split_whitespace().next().and_then(|p| p.parse().ok()) {
                children.push(child);
            }
        }
    }
    children
}

/// `sigvisor run`'s two children: (CMD, the launcher having exec'd into
/// it; its keeper), once both are up.
pub fn run_children(sigvisor: i32) -> (i32, i32) {
    let is_keeper = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("keeper"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let children = children_of(sigvisor);
        let keeper = children.iter().copied().find(is_keeper);
        let cmd = children.iter().copied().find(|pid| !is_keeper(pid));
        if let (Some(cmd), Some(keeper)) = (cmd, keeper) {
            return (cmd, keeper);
        }
        assert!(std::time::Instant::now() < deadline, "sigvisor run {sigvisor}'s children: {children:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes the seed profile with `parameters` added, for one test.
pub fn profile_with(name: &str, parameters: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(seed_profile()).expect("seed profile");
    text.push_str("  parameters:\n");
    for (key, value) in parameters {
        text.push_str(&format!("    {key}: \"{value}\"\n"));
    }
    let path = scratch(&format!("{name}-profile")).join("profile.yaml");
    std::fs::write(&path, text).expect("write profile");
    path
}

/// A script that runs sigvisor-launch with `flag` (a hidden test option),
/// for `sigvisor run --launcher`.
pub fn launcher_with(name: &str, flag: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = scratch(name).join("launch");
    let script = format!("#!/bin/sh\nexec '{}' {flag} \"$@\"\n", bin("sigvisor-launch").display());
    std::fs::write(&path, script).expect("write launcher wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hang_report_shows_each_descendant_and_where_it_sleeps() {
        use std::os::unix::process::CommandExt as _;
        let mut shell =
            Command::new("sh").args(["-c", "sleep 30 & exec sleep 31"]).process_group(0).spawn().expect("sh");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut report = String::new();
        while Instant::now() < deadline && report.matches("sleep 3").count() < 2 {
            std::thread::sleep(Duration::from_millis(20));
            report = process_tree(shell.id() as i32);
        }
        let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", shell.id())]).status();
        let _ = shell.wait();
        assert!(report.contains("sleep 31") && report.contains("sleep 30"), "{report}");
        assert!(report.contains("State:\tS (sleeping)") && report.contains("wchan "), "{report}");
        assert!(report.contains("fds: 0->"), "{report}");
    }
}
