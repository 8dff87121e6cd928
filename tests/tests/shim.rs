//! The runtime shim as engines install it: behind a wrapper that bears the
//! runtime's own name, with errors read from the runtime's `--log` file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sigvisor_tests::*;

/// A wrapper script at `DIR/runc` that calls the shim for `runtime`.
fn wrapper(dir: &Path, runtime: &str) -> PathBuf {
    let path = dir.join("runc");
    let script = format!(
        "#!/bin/sh\nexec '{}' oci runtime --runtime '{runtime}' --socket /nonexistent/agent.sock -- \"$@\"\n",
        bin("sigvisor").display()
    );
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The docs' wrapper, taken literally: `/usr/local/bin/runc` calling the
/// shim with `--runtime runc`, first on PATH. The shim skips it and runs
/// the real runc.
#[test]
fn a_wrapper_named_like_the_runtime_never_runs_itself() {
    let dir = scratch("shim-wrapper");
    let runc = wrapper(&dir, "runc");
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = output_bounded(Command::new(&runc).arg("--version").env("PATH", &path), "the wrapped runc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("runc version"), "the real runc answered: {stdout}");

    // A wrapper whose --runtime is its own path is refused, not looped.
    let runc = wrapper(&dir, &dir.join("runc").to_string_lossy());
    let out = output_bounded(Command::new(&runc).arg("--version"), "a wrapper naming itself");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 125, "{stderr}");
    assert!(stderr.contains("leads back to this shim"), "{stderr}");
}

/// podman runs the runtime's `delete` with no PATH at all (a shell
/// wrapper then has a PATH of its own that it does not export): the shim
/// still finds the runtime where runtimes live.
#[test]
fn a_caller_without_path_still_reaches_the_runtime() {
    let dir = scratch("shim-no-path");
    let runc = wrapper(&dir, "runc");
    let out = output_bounded(Command::new(&runc).arg("--version").env_clear(), "the shim with no PATH");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("runc version"));
}

/// docker and containerd show the runtime's `--log` (runc's JSON lines),
/// not its stderr: the shim's error is there.
#[test]
fn the_shim_s_error_reaches_the_runtime_s_log() {
    let dir = scratch("shim-log");
    let log = dir.join("log.json");
    let out = output_bounded(
        Command::new(bin("sigvisor"))
            .args(["oci", "runtime", "--runtime", "runc", "--socket", "/nonexistent/agent.sock", "--"])
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(&dir)
            .arg("c1"),
        "the shim",
    );
    assert_eq!(exit_code(&out), 125, "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).expect("the shim wrote the runtime's log");
    let line: Value = serde_json::from_str(text.trim_end()).expect("one JSON line, as runc writes");
    assert_eq!(line["level"], "error", "{line}");
    let msg = line["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("no supervisor is listening on /nonexistent/agent.sock"), "{msg}");
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
}
