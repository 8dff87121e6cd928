//! Target selection parameters (min-threads, comm, when): the counts of
//! signals are exactly what each parameter promises, and every signal that
//! is sent is still precise.

use sigvisor_tests::*;

/// The fixture with one closing thread: two threads in all (main waits).
fn one_closer(name: &str, parameters: &[(&str, &str)], closes: &str) -> Run {
    let run = run_closer(name, &profile_with(name, parameters), &[], &["--threads", "1", "--closes", closes]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run
}

#[test]
fn min_threads() {
    let run = one_closer("min-threads-3", &[("min-threads", "3")], "200");
    assert_signalled(&run.reports[0], 0);
    assert_eq!(run.skipped("min-threads"), 200);
    let run = one_closer("min-threads-2", &[("min-threads", "2")], "200");
    assert_signalled(&run.reports[0], 200);
}

#[test]
fn comm_glob_on_the_process_name() {
    let run = one_closer("comm-match", &[("comm", "clos*")], "200");
    assert_signalled(&run.reports[0], 200);
    let run = one_closer("comm-exact", &[("comm", "closer")], "200");
    assert_signalled(&run.reports[0], 200);
    let run = one_closer("comm-other", &[("comm", "gosi*")], "200");
    assert_signalled(&run.reports[0], 0);
    assert_eq!(run.skipped("comm"), 200);
}

#[test]
fn when_selects_calls_by_number() {
    for (when, expected) in [("3", 1), ("2..4", 3), ("10..", 91), ("1+10", 10), ("5..50+5", 10)] {
        let run = one_closer(&format!("when-{when}"), &[("when", when)], "100");
        assert_signalled(&run.reports[0], expected);
        assert_eq!(run.count("signalsSent"), expected as u64, "when {when}");
        assert_eq!(run.skipped("when"), 100 - expected as u64, "when {when}");
    }
}

#[test]
fn when_counts_per_process() {
    let parameters = [("when", "1")];
    let args =
        ["--threads", "1", "--closes", "50", "--spawn", "2", "--child-threads", "1", "--child-closes", "50"];
    let run = run_closer("when-per-process", &profile_with("when-per-process", &parameters), &[], &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.reports.len(), 3);
    for report in &run.reports {
        assert_signalled(report, 1);
    }
}

#[test]
fn parameters_combine() {
    let parameters = [("comm", "closer"), ("min-threads", "2"), ("when", "1+2")];
    let run = one_closer("combined", &parameters, "100");
    assert_signalled(&run.reports[0], 50);
}

#[test]
fn bad_selection_values_are_refused() {
    for (key, value, says) in [
        ("min-threads", "0", "1 or more"),
        ("min-threads", "many", "1 or more"),
        ("comm", "[", "glob"),
        ("when", "0", "first[..last][+step]"),
        ("when", "5..2", "first[..last][+step]"),
    ] {
        let path = profile_with(&format!("bad-{key}"), &[(key, value)]);
        let out = output_bounded(sigvisor().arg("check").arg(&path), key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(exit_code(&out), 2, "{key}={value}: {stderr}");
        assert!(stderr.contains(&format!("spec.parameters.{key}")) && stderr.contains(says), "{stderr}");
    }
}
