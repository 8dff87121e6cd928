//! Profiles: the seed loads verbatim; every bad field is refused before
//! anything runs, with exit status 2 and a message naming the file, the
//! field, the bad value and what is accepted.

use std::path::PathBuf;

use sigvisor_tests::*;

const SEED: &str = include_str!("../../profiles/signal.yaml");

#[test]
fn seed_profile_is_the_example_verbatim_and_loads() {
    assert_eq!(
        SEED,
        "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: seccomp\n  namespace: gadget\n\
         spec:\n  node: minikube\n  gadget: signal\n  runMode: Manual\n  outputMode: Status\n"
    );
    let out = output_bounded(sigvisor().arg("check").arg(seed_profile()), "check");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = scratch(&format!("{name}-profile")).join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `sigvisor run` on a bad profile: it must refuse before starting CMD.
fn refused(name: &str, text: &str, must_say: &[&str]) {
    let path = write(name, text);
    let marker = path.with_extension("ran");
    let out = output_bounded(sigvisor().arg("run").arg(&path).arg("--").arg("touch").arg(&marker), name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 2, "{name}: {stderr}");
    assert!(!marker.exists(), "{name}: CMD ran despite a bad profile");
    assert!(stderr.contains(path.to_str().unwrap()), "{name}: message names the file: {stderr}");
    for s in must_say {
        assert!(stderr.contains(s), "{name}: message should contain {s:?}: {stderr}");
    }
}

fn with_parameter(key: &str, value: &str) -> String {
    format!("{SEED}  parameters:\n    {key}: \"{value}\"\n")
}

#[test]
fn bad_fields_are_refused_with_field_value_and_accepted_values() {
    let seed = |from: &str, to: &str| SEED.replace(from, to);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "api-version",
            seed("gadget.kinvolk.io/v1alpha1", "gadget.kinvolk.io/v2"),
            vec!["apiVersion", "\"gadget.kinvolk.io/v2\"", "accepted: gadget.kinvolk.io/v1alpha1"],
        ),
        ("kind", seed("kind: Trace", "kind: Pod"), vec!["kind", "\"Pod\"", "accepted: Trace"]),
        (
            "gadget",
            seed("gadget: signal", "gadget: trace-exec"),
            vec!["spec.gadget", "\"trace-exec\"", "accepted: signal"],
        ),
        (
            "run-mode",
            seed("runMode: Manual", "runMode: Sometimes"),
            vec!["spec.runMode", "\"Sometimes\"", "accepted: Auto, Manual"],
        ),
        (
            "output-mode",
            seed("outputMode: Status", "outputMode: Printer"),
            vec!["spec.outputMode", "\"Printer\"", "accepted: Status, Stream, File"],
        ),
        (
            "external-resource",
            seed("outputMode: Status", "outputMode: ExternalResource"),
            vec!["spec.outputMode", "not supported", "supported: Status, Stream, File"],
        ),
        (
            "signal",
            with_parameter("signal", "SIGFOO"),
            vec!["spec.parameters.signal", "\"SIGFOO\"", "accepted: a signal name"],
        ),
        (
            "signal-kill",
            with_parameter("signal", "SIGKILL"),
            vec!["spec.parameters.signal", "\"SIGKILL\"", "cannot be caught"],
        ),
        (
            "syscall",
            with_parameter("syscalls", "close,clsoe"),
            vec!["spec.parameters.syscalls", "\"clsoe\"", "accepted: names such as close"],
        ),
        (
            "unknown-parameter",
            with_parameter("colour", "red"),
            vec![
                "spec.parameters.colour",
                "unknown parameter",
                "accepted: signal, handler, syscalls, min-threads, comm, when",
            ],
        ),
        (
            "unknown-field",
            seed("  node: minikube\n", "  node: minikube\n  colour: red\n"),
            vec!["spec", "unknown field `colour`", "expected one of"],
        ),
        ("not-yaml", "{{{{".to_owned(), vec!["(document)"]),
    ];
    for (name, text, must_say) in cases {
        refused(name, &text, &must_say);
    }
}

#[test]
fn missing_profile_file_is_refused() {
    let out = output_bounded(sigvisor().args(["run", "/nonexistent/p.yaml", "--", "true"]), "missing");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 2);
    assert!(stderr.contains("/nonexistent/p.yaml") && stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn parameters_change_signal_and_syscalls() {
    // SIGUSR1 is not what the fixture catches: every close is then skipped
    // as no-handler, which shows the parameter reached the decision.
    let text = format!("{SEED}  parameters:\n    signal: SIGUSR1\n    syscalls: close,dup2\n");
    let path = write("params", &text);
    let run = run_closer("params", &path, &[], &["--closes", "100"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_untouched(&run.reports[0]);
    let summary = run.summary();
    assert_eq!(summary["signal"], "SIGUSR1");
    // 100 closes and 100 dup2s (the fixture's way to make an fd), at least.
    assert!(run.count("notifications") >= 200, "{summary:?}");
    assert_eq!(run.count("signalsSent"), 0);
}
