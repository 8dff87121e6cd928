//! Replays the fuzzers' saved corpus and every crash they found
//! (`fuzz/corpus/TARGET/`, `fuzz/regressions/TARGET/`) through the same
//! readers (`sigvisor::fuzzing`): a regression panics here, in `make test`,
//! with no fuzzer or nightly toolchain needed.

use std::path::Path;

#[test]
fn corpus_and_regressions_replay_without_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (target, read) in sigvisor::fuzzing::TARGETS {
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else { continue };
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).expect("read a corpus file");
                let caught = std::panic::catch_unwind(|| read(&bytes));
                assert!(caught.is_ok(), "{target}: {} panicked", entry.path().display());
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} inputs");
    assert!(replayed > 0, "no corpus under {}", fuzz.display());
}
