//! Instances: serves on different agent sockets, each with every other
//! path left to its default, run side by side and never see each other's
//! keeper, Traces or saved state; a saved Trace comes back only to its own
//! instance, and only if it was applied there or is declared again.

use std::path::Path;
use std::process::Command;

use sigvisor_tests::containers::{launch, report, summary, Server};
use sigvisor_tests::*;

fn trace(name: &str, run_mode: &str) -> String {
    format!(
        "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: {name}\n\
         spec:\n  gadget: signal\n  runMode: {run_mode}\n  outputMode: Status\n"
    )
}

/// `sigvisor get traces --socket S`: the names the instance on S lists.
fn names(socket: &Path) -> Vec<String> {
    let out = output_bounded(
        Command::new(bin("sigvisor")).args(["get", "traces", "--socket"]).arg(socket),
        "sigvisor get traces",
    );
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

fn signals_sent(server: &Server, name: &str) -> u64 {
    summary(&server.get(name))["signalsSent"].as_u64().unwrap_or(0)
}

/// Removes an instance's state directory when the test ends, however it ends.
struct StateDirs(Vec<std::path::PathBuf>);

impl Drop for StateDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn instances_side_by_side_never_mix() {
    let root = scratch("instances");
    let mut a = Server::instance(&root.join("a"), &[("alpha.yaml", &trace("alpha", "Auto"))]);
    let b = Server::instance(&root.join("b"), &[("beta.yaml", &trace("beta", "Auto"))]);
    let mut cleanup = StateDirs(vec![a.state.clone(), b.state.clone()]);

    // Each has the paths derived from its socket, and its own keeper.
    for server in [&a, &b] {
        assert!(server.control.exists() && server.keeper.exists(), "{:?}", server.keeper);
    }
    assert_ne!(a.keeper_pid(), b.keeper_pid());
    assert!(a.state.join("declared/alpha.yaml").exists(), "{}", a.state.display());
    assert!(b.state.join("declared/beta.yaml").exists(), "{}", b.state.display());
    assert_eq!(names(&a.socket), ["alpha"]);
    assert_eq!(names(&b.socket), ["beta"]);

    // A target launched against one is signalled by that one only.
    let out = wait_bounded(launch(&a, &["--closes", "50"]), "closer under a");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    assert_eq!(signals_sent(&a, "alpha"), 50);
    assert_eq!(signals_sent(&b, "beta"), 0);

    // A Trace applied to a, then a restarted with another declared set:
    // the applied one comes back, the one no longer declared does not.
    let file = root.join("applied.yaml");
    std::fs::write(&file, trace("applied-here", "Manual")).expect("profile");
    let out = output_bounded(
        Command::new(bin("sigvisor")).arg("apply").arg("-f").arg(&file).arg("--socket").arg(&a.socket),
        "sigvisor apply",
    );
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    a.terminate();
    let profiles = root.join("a/profiles");
    std::fs::remove_file(profiles.join("alpha.yaml")).expect("remove alpha");
    std::fs::write(profiles.join("alpha2.yaml"), trace("alpha2", "Auto")).expect("profile");
    a.restart();
    assert_eq!(names(&a.socket), ["alpha2", "applied-here"]);
    assert_eq!(names(&b.socket), ["beta"]);

    // A third instance, on another socket, starts with only its own.
    let c = Server::instance(&root.join("c"), &[("gamma.yaml", &trace("gamma", "Auto"))]);
    cleanup.0.push(c.state.clone());
    assert_eq!(names(&c.socket), ["gamma"]);
    let out = wait_bounded(launch(&c, &["--closes", "20"]), "closer under c");
    assert_precise(&report(&out));
    assert_eq!(signals_sent(&c, "gamma"), 20);
    assert_eq!(signals_sent(&a, "alpha2"), 0);
    assert_eq!(signals_sent(&b, "beta"), 0);
}
