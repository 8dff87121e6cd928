//! Every reference in the docs and in code comments resolves: a file they
//! name (`keeper/hold.rs`, `docs/stacks.md`) is in the repository, and a
//! section they name (`docs/design.md#if-the-supervisor-dies-the-keeper`,
//! a Markdown link's `#anchor`) is a heading of that file. A reference is
//! how a reader finds the why of a line; one that points nowhere is worse
//! than none.
//!
//! What is read: the comments of source files (`//`, `/* */`, `#`) and the
//! whole text of Markdown files. Not references: absolute paths and
//! `file.rs:12` locations (a program's output quoted in the docs), and
//! code (string literals are data).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use regex::Regex;

/// The kinds of file this repository's prose names as its own (a `.go` or
/// `.c` name in the docs is usually Go's or glibc's source).
const CHECKED: &[&str] = &["rs", "md", "sh"];

struct Repo {
    root: &'static Path,
    files: Vec<String>,
}

impl Repo {
    fn open() -> Repo {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
        let out =
            Command::new("git").arg("-C").arg(root).args(["ls-files", "-z"]).output().expect("git ls-files");
        assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
        let files = String::from_utf8(out.stdout)
            .expect("UTF-8 paths")
            .split('\0')
            .filter(|f| {
                !f.is_empty() && !f.starts_with("fuzz/corpus/") && !f.starts_with("fuzz/regressions/")
            })
            .map(str::to_owned)
            .collect();
        Repo { root, files }
    }

    /// The tracked files a reference may mean: the path itself, any file
    /// whose path ends with it (`hold.rs`, `keeper/hold.rs`), or the files
    /// of a folder it names.
    fn resolve(&self, reference: &str) -> Vec<&str> {
        let reference = reference.trim_start_matches("./");
        self.files
            .iter()
            .filter(|f| {
                *f == reference
                    || f.ends_with(&format!("/{reference}"))
                    || f.starts_with(&format!("{}/", reference.trim_end_matches('/')))
            })
            .map(String::as_str)
            .collect()
    }

    /// Why a reference to `target` (and its section `anchor`) points
    /// nowhere, if it does.
    fn unresolved(&self, target: &str, anchor: Option<&str>) -> Option<String> {
        let found = self.resolve(target);
        if found.is_empty() {
            return Some("no such file in the repository".to_owned());
        }
        let anchor = anchor?;
        let known: BTreeSet<String> =
            found.iter().filter(|f| f.ends_with(".md")).flat_map(|f| anchors(&self.read(f))).collect();
        (!known.contains(anchor)).then(|| format!("no heading #{anchor} there"))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.root.join(file)).unwrap_or_default()
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// made hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut anchors = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            anchors.insert(slug(line.trim_start_matches('#')));
        }
    }
    anchors
}

/// The text of a source file that is prose: its comments, by line.
fn comments(file: &str, text: &str) -> Vec<(usize, String)> {
    let hash = file.ends_with(".sh")
        || file.ends_with(".toml")
        || file.ends_with("Makefile")
        || file.ends_with(".yaml");
    let mut block = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let prose = if hash {
            line.find('#')
                .filter(|&at| at == 0 || line[..at].ends_with(char::is_whitespace))
                .map(|at| &line[at..])
        } else if block || trimmed.starts_with("/*") {
            block = !line.contains("*/");
            Some(trimmed)
        } else {
            line.find("//").map(|at| &line[at..])
        };
        if let Some(prose) = prose {
            out.push((n + 1, prose.to_owned()));
        }
    }
    out
}

#[test]
fn every_reference_in_docs_and_comments_resolves() {
    let repo = Repo::open();
    // A name with one of the checked endings, maybe a section, not part of
    // a longer path or word, nor a location (`file.rs:12`).
    let names = Regex::new(&format!(
        r"(?:^|[^A-Za-z0-9_./~…-])((?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-]+\.(?:{}))(#[A-Za-z0-9_-]+)?(:[0-9])?",
        CHECKED.join("|")
    ))
    .expect("regex");
    let links = Regex::new(r"\]\(([^)\s]*)\)").expect("regex");
    let sections = Regex::new(r"§\s*[0-9]").expect("regex");
    let mut broken = Vec::new();
    for file in &repo.files {
        let text = repo.read(file);
        let markdown = file.ends_with(".md");
        let prose: Vec<(usize, String)> = if markdown {
            text.lines().enumerate().map(|(n, l)| (n + 1, l.to_owned())).collect()
        } else if file.ends_with(".rs")
            || file.ends_with(".c")
            || file.ends_with(".go")
            || file.ends_with(".sh")
            || file.ends_with(".toml")
            || file.ends_with(".yaml")
            || file.ends_with("Makefile")
        {
            comments(file, &text)
        } else {
            continue;
        };
        let check = |line: usize, target: &str, anchor: Option<&str>| {
            if let Some(why) = repo.unresolved(target, anchor) {
                let anchor = anchor.map(|a| format!("#{a}")).unwrap_or_default();
                Some(format!("{file}:{line}: {target}{anchor}: {why}"))
            } else {
                None
            }
        };
        for (line, prose) in &prose {
            if sections.is_match(prose) {
                broken.push(format!(
                    "{file}:{line}: a numbered section (§N): name the section by its anchor (docs/design.md#…)"
                ));
            }
            for m in names.captures_iter(prose) {
                if m.get(3).is_some() {
                    continue;
                }
                broken.extend(check(*line, &m[1], m.get(2).map(|a| &a.as_str()[1..])));
            }
            if !markdown {
                continue;
            }
            for link in links.captures_iter(prose) {
                let target = &link[1];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target, None),
                };
                let base = Path::new(file).parent().unwrap_or(Path::new(""));
                let path = if path.is_empty() { file.clone() } else { normalize(&base.join(path)) };
                broken.extend(check(*line, &path, anchor));
            }
        }
    }
    assert!(broken.is_empty(), "references that point nowhere:\n{}", broken.join("\n"));
}

/// `docs/../README.md` → `README.md`, without touching the file system.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.iter().filter_map(|p| p.to_str()) {
        match part {
            "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[test]
fn slugs_are_github_s() {
    assert_eq!(slug(" If the supervisor dies: the keeper"), "if-the-supervisor-dies-the-keeper");
    assert_eq!(
        slug("Why RECV → signal → CONTINUE, and why it needs WAIT_KILLABLE_RECV"),
        "why-recv--signal--continue-and-why-it-needs-wait_killable_recv"
    );
    assert_eq!(
        slug("Never crash a target: handlers known from the kernel's own events"),
        "never-crash-a-target-handlers-known-from-the-kernels-own-events"
    );
}
