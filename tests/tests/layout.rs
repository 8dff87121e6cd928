//! The supervisor's folders are its architecture: each imports only the
//! folders below it (supervisor/src/lib.rs lists them in that order), and
//! no source file grows past what a reader takes in at once.

use std::path::{Path, PathBuf};

/// Bottom to top, as supervisor/src/lib.rs lists them. The loose files
/// (`shared`, `failpoint`) belong to the bottom layer; `fuzzing` reaches
/// into every reader of hostile input, and `main.rs` is the command line:
/// both may use anything.
const LAYERS: &[&[&str]] = &[
    &["sys", "shared", "failpoint"],
    &["procfs"],
    &["trace"],
    &["callers"],
    &["stacks"],
    &["output"],
    &["control"],
    &["keeper"],
    &["path"],
    &["intake"],
    &["cluster"],
    &["commands"],
];
const ABOVE_ALL: &[&str] = &["fuzzing", "main", "lib"];
const MAX_LINES: usize = 500;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_owned()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn each_folder_imports_only_the_folders_below_it() {
    let src = workspace().join("supervisor/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative.iter().next().and_then(|c| c.to_str()).expect("a name").trim_end_matches(".rs");
        if ABOVE_ALL.contains(&top) {
            continue;
        }
        let Some(own) = layer_of(top) else {
            wrong.push(format!(
                "{}: module {top:?} is in no layer of tests/tests/layout.rs",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let name: String =
                    code[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                match layer_of(&name) {
                    Some(used) if used > own => wrong.push(format!(
                        "{}:{}: `{top}` uses `crate::{name}`, a layer above it",
                        relative.display(),
                        n + 1
                    )),
                    None if !name.is_empty() && !ABOVE_ALL.contains(&name.as_str()) => wrong.push(format!(
                        "{}:{}: `crate::{name}` is in no layer",
                        relative.display(),
                        n + 1
                    )),
                    _ => {}
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_of_lib_rs_has_a_layer() {
    let lib = std::fs::read_to_string(workspace().join("supervisor/src/lib.rs")).expect("lib.rs");
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|l| l.strip_suffix(';')) {
            assert!(
                layer_of(name).is_some() || ABOVE_ALL.contains(&name),
                "lib.rs's `{name}` is in no layer"
            );
        }
    }
}

#[test]
fn no_source_file_is_over_500_lines() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["supervisor/src", "launcher/src", "proto/src"] {
        sources(&root.join(dir), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > MAX_LINES)
                .then(|| format!("{}: {lines} lines", f.strip_prefix(&root).unwrap_or(f).display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines (split them by concern):\n{}",
        long.join("\n")
    );
}
