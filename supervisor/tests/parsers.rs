//! The parsers that take input from outside, against generated and mutated
//! input: the profile loader, the control protocol, and the keeper's wire.
//! Never a panic; always an error that names the file, the field and what
//! is wrong.

use std::path::Path;

use proptest::prelude::*;
use sigvisor::control::registry::Registry;
use sigvisor::control::{self, Request};
use sigvisor::keeper::{ToKeeper, ToSupervisor};
use sigvisor::trace::profile::{self, ProfileError};

const SEED: &str = include_str!("../../profiles/signal.yaml");
const GOSIGNAL: &str = include_str!("../../profiles/gosignal.yaml");

const FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "spec",
    "gadget",
    "runMode",
    "outputMode",
    "node",
    "filter",
    "parameters",
    "signal",
    "handler",
    "syscalls",
    "min-threads",
    "comm",
    "when",
    "output",
];

const VALUES: &[&str] = &[
    "signal",
    "Auto",
    "Manual",
    "Status",
    "Stream",
    "File",
    "SIGILL",
    "9",
    "0",
    "-1",
    "close,read",
    "own",
    "any",
    "[]",
    "{}",
    "~",
    "''",
    "\"\"",
    "*",
    "first:3",
    "every:0",
    "gadget.kinvolk.io/v1alpha1",
    "Trace",
    "é",
    "\t",
];

fn check(
    result: Result<(profile::Trace, sigvisor::trace::policy::Policy), ProfileError>,
    file: &Path,
) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert_eq!(&e.file, file);
        prop_assert!(!e.field.is_empty(), "no field: {}", e);
        prop_assert!(!e.message.is_empty(), "no message: {}", e);
        prop_assert!(e.to_string().starts_with(&file.display().to_string()));
    }
    Ok(())
}

/// A line edit: delete, duplicate, re-indent, or replace what follows the
/// colon with another value.
fn mutate(text: &str, edits: &[(usize, u8, usize, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (at, op, pick, free) in edits {
        if lines.is_empty() {
            break;
        }
        let at = at % lines.len();
        match op % 6 {
            0 => {
                lines.remove(at);
            }
            1 => lines.insert(at, lines[at].clone()),
            2 => lines[at] = format!("  {}", lines[at]),
            3 => {
                let key = lines[at].split(':').next().unwrap_or_default().to_owned();
                lines[at] = format!("{key}: {}", VALUES[pick % VALUES.len()]);
            }
            4 => {
                let key = lines[at].split(':').next().unwrap_or_default().to_owned();
                lines[at] = format!("{key}: {free}");
            }
            _ => {
                let indent = lines[at].len() - lines[at].trim_start().len();
                lines.insert(at, format!("{}{}: {}", " ".repeat(indent), FIELDS[pick % FIELDS.len()], free));
            }
        }
    }
    lines.join("\n")
}

fn profile_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![proptest::sample::select(VALUES).prop_map(str::to_owned), ".{0,20}"];
    let parameters = proptest::collection::btree_map(proptest::sample::select(FIELDS), value.clone(), 0..4);
    (
        proptest::sample::select(&["gadget.kinvolk.io/v1alpha1", "v1", ""][..]),
        ".{0,12}",
        value.clone(),
        value.clone(),
        value,
        parameters,
    )
        .prop_map(|(api, name, run_mode, output_mode, gadget, parameters)| {
            let mut text = format!(
                "apiVersion: {api}\nkind: Trace\nmetadata:\n  name: {name:?}\nspec:\n  gadget: {gadget:?}\n  \
                 runMode: {run_mode:?}\n  outputMode: {output_mode:?}\n  parameters:\n"
            );
            for (k, v) in parameters {
                text.push_str(&format!("    {k}: {v:?}\n"));
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn profile_arbitrary_text(text in "(?s).{0,400}") {
        let file = Path::new("/etc/sigvisor/fuzz.yaml");
        check(profile::parse(&text, file), file)?;
    }

    #[test]
    fn profile_generated(text in profile_text()) {
        let file = Path::new("generated.yaml");
        check(profile::parse(&text, file), file)?;
    }

    #[test]
    fn profile_mutated(
        gosignal in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<usize>(), ".{0,16}"), 1..5),
    ) {
        let text = mutate(if gosignal { GOSIGNAL } else { SEED }, &edits);
        let file = Path::new("profiles/mutated.yaml");
        check(profile::parse(&text, file), file)?;
    }

    /// Any request line: refused with a reason that is the client's fault,
    /// or answered; the registry stays usable.
    #[test]
    fn control_arbitrary_lines(line in "(?s).{0,300}") {
        let registry = Registry::new("node".into(), false);
        match control::parse_request(&line) {
            Err(refusal) => {
                prop_assert!(!refusal.ok && refusal.usage);
                prop_assert!(refusal.error.starts_with("bad request: "), "{}", refusal.error);
            }
            Ok(Request::Stream { .. }) => {}
            Ok(request) => drop(control::respond(&registry, request)),
        }
    }

    #[test]
    fn control_generated_requests(
        verb in proptest::sample::select(&["apply", "get", "operation", "delete", "stream", "other"][..]),
        name in prop_oneof![Just("signal".to_owned()), ".{0,10}"],
        operation in prop_oneof![Just("start".to_owned()), Just("stop".to_owned()), ".{0,10}"],
        text in prop_oneof![profile_text(), Just(SEED.to_owned())],
    ) {
        let registry = Registry::new("node".into(), false);
        let line = serde_json::json!({
            "verb": verb, "name": name, "operation": operation, "file": "client.yaml", "text": text,
        })
        .to_string();
        let Ok(request) = control::parse_request(&line) else { return Ok(()) };
        if matches!(request, Request::Stream { .. }) {
            return Ok(());
        }
        let response = control::respond(&registry, request);
        if !response.ok {
            prop_assert!(!response.error.is_empty());
            // A bad profile is the client's fault and names its file.
            if verb == "apply" && response.usage {
                prop_assert!(response.error.starts_with("client.yaml: "), "{}", response.error);
            }
        }
        // Whatever came before, the registry answers a get.
        let listed = control::respond(&registry, Request::Get { name: None });
        prop_assert!(listed.ok);
    }

    #[test]
    fn keeper_wire_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<ToKeeper>(&bytes);
        let _ = serde_json::from_slice::<ToSupervisor>(&bytes);
    }

    /// Tables a keeper hands back may hold anything (a different build
    /// wrote them): out-of-range signals are ignored, not a panic.
    #[test]
    fn keeper_known_tables(entries in proptest::collection::vec((any::<i32>(), 0u8..4, any::<u64>()), 0..80)) {
        use sigvisor::callers::handlers::{Disposition, Table};
        let entries: Vec<(i32, Disposition)> = entries
            .into_iter()
            .map(|(s, d, address)| (s, match d {
                0 => Disposition::NotCaught,
                1 => Disposition::Caught,
                2 => Disposition::Unknown,
                _ => Disposition::Handler { address, once: address % 2 == 0, compat: false },
            }))
            .collect();
        let table = Table::from_entries(&entries);
        for (signal, _) in table.entries() {
            prop_assert!((1..=64).contains(&signal));
        }
        let mut callers = sigvisor::callers::Callers::new(u64::MAX);
        callers.import(vec![sigvisor::callers::KnownProcess { tgid: 1, start: 1, table: entries }]);
    }
}
