//! A well-behaved target's close latency under one `serve`, alone and with
//! three hostile tenants beside it, in the same run (`make bench` prints
//! the table). The tenants attack stack capture as tests/tests/hostile.rs
//! does: a write lease on a binary they map, a crafted `.gopclntab`, and a
//! sparse ELF whose `.eh_frame` claims 1000 MiB. Every close is signalled
//! and its stack taken (the `who` Trace).

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use sigvisor_tests::containers::{launch, launch_program, report, Server};
use sigvisor_tests::*;

const WHO: &str = "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: who\nspec:\n  \
                   gadget: signal\n  runMode: Auto\n  outputMode: Status\n  parameters:\n    stacks: \"true\"\n";
const ROUNDS: usize = 5;
const GOOD_CLOSES: &str = "20000";
/// Each tenant's closes, 1 ms apart: it outlasts the good target's run.
const TENANT_CLOSES: &str = "2500";

fn main() {
    let dir = scratch("bench-tenants");
    let pclntab = hostile::with_crafted_pclntab(&dir, 16 << 20);
    let sparse = hostile::sparse(&dir);
    let leased = dir.join("leased.bin");
    std::fs::copy(closer(), &leased).expect("copy a binary to lease");
    let leased = leased.to_str().expect("path");
    let server = Server::with_profiles("bench-tenants", &[], &[("who.yaml", WHO)]);
    println!(
        "{:<44} {:>12} {:>12}",
        format!("good target, {GOOD_CLOSES} closes ({ROUNDS} rounds)"),
        "median µs",
        "worst µs"
    );
    // Rounds alternate, alone then beside, so that drift hits both alike.
    let mut results = [(Vec::new(), 0), (Vec::new(), 0)];
    for _ in 0..ROUNDS {
        for (beside, (medians, worst)) in results.iter_mut().enumerate() {
            let tenants: Vec<Child> = if beside == 1 {
                vec![
                    launch_program(&server, Path::new(hostile::program()), &["lease", leased, TENANT_CLOSES]),
                    launch_program(&server, &pclntab, &["closes", TENANT_CLOSES]),
                    launch_program(&server, &sparse, &["closes", TENANT_CLOSES]),
                ]
            } else {
                Vec::new()
            };
            std::thread::sleep(Duration::from_millis(300));
            let good = report(&wait_bounded(launch(&server, &["--closes", GOOD_CLOSES]), "good target"));
            assert_precise(&good);
            medians.push(good["median_close_us"].as_i64().expect("median_close_us"));
            *worst = (*worst).max(good["max_close_us"].as_i64().expect("max_close_us"));
            for t in tenants {
                assert_eq!(exit_code(&wait_bounded(t, "tenant")), 0, "every tenant close returned 0");
            }
        }
    }
    for (label, (mut medians, worst)) in ["alone", "beside 3 hostile tenants"].into_iter().zip(results) {
        medians.sort_unstable();
        println!("{label:<44} {:>12} {:>12}", medians[ROUNDS / 2], worst);
    }
}
