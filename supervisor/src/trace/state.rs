//! `sigvisor serve`'s Traces across restarts, as an API server keeps its
//! objects: `DIR/traces/NAME.yaml` holds each Trace applied through the
//! API (`sigvisor apply`) as last applied, with its state (`status.state`:
//! Started, Stopped or none); `DIR/declared/NAME.yaml` the same for each
//! Trace of the declared set (serve's profiles), which comes back only
//! while it is still declared. Written after every change (write to a
//! temporary file, then rename: a crash leaves the old file or the new
//! one, never half of one).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::trace::policy::Policy;
use crate::trace::profile::{self, Trace, TraceStatus};

pub struct StateDir {
    root: PathBuf,
}

/// Where a Trace came from, which decides whether it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A profile given to serve or run: the command line is the declared
    /// set, so a restarted serve has it back only if it is still given.
    Declared,
    /// `sigvisor apply`: it lives until deleted, across restarts.
    Applied,
    /// The Kubernetes API (`serve --kubernetes`): it comes back to a serve
    /// that takes Traces from the API, which keeps its containers under it
    /// while the API server is away, until the API says it is gone.
    Cluster,
}

impl Source {
    const ALL: [Source; 3] = [Source::Declared, Source::Applied, Source::Cluster];

    /// Its folder in the state directory.
    fn folder(self) -> &'static str {
        match self {
            Source::Declared => "declared",
            Source::Applied => "traces",
            Source::Cluster => "cluster",
        }
    }
}

/// A Trace found in the state directory, and the state it was left in.
pub struct Saved {
    pub trace: Trace,
    pub policy: Policy,
    pub state: String,
    pub source: Source,
}

impl StateDir {
    /// Opens `dir` (made 0700 if missing).
    pub fn open(dir: &Path) -> Result<StateDir> {
        let state = StateDir { root: dir.to_owned() };
        for source in Source::ALL {
            let dir = state.dir(source);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
        }
        Ok(state)
    }

    fn dir(&self, source: Source) -> PathBuf {
        self.root.join(source.folder())
    }

    /// The Traces saved; one that no longer loads (a profile rule changed
    /// since it was saved) is reported, named, left out and kept aside.
    pub fn load(&self) -> Vec<Saved> {
        Source::ALL.into_iter().flat_map(|source| self.load_from(source)).collect()
    }

    fn load_from(&self, source: Source) -> Vec<Saved> {
        let Ok(entries) = std::fs::read_dir(self.dir(source)) else { return Vec::new() };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        let mut saved = Vec::new();
        for file in files {
            match profile::load(&file) {
                Ok((mut trace, policy)) => {
                    let state = trace.status.take().map(|s| s.state).unwrap_or_default();
                    saved.push(Saved { trace, policy, state, source });
                }
                Err(e) => {
                    // Kept aside, not overwritten or removed by the next save.
                    let aside = file.with_extension("yaml.unloadable");
                    let _ = std::fs::rename(&file, &aside);
                    tracing::error!(
                        "a saved Trace no longer loads, left out (kept as {}): {e}",
                        aside.display()
                    );
                }
            }
        }
        saved
    }

    /// Saves `traces` (as the registry lists them) and removes the files of
    /// Traces that are gone. Failures are logged and returned (by Trace
    /// name): serving goes on.
    pub fn save(&self, traces: &[(Trace, Source)]) -> BTreeMap<String, String> {
        let mut failed = BTreeMap::new();
        let mut names = Vec::new();
        for (trace, source) in traces {
            let name = &trace.metadata.name;
            // Names come from profiles, which refuse path separators;
            // skip anything that would leave the directory anyway.
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                continue;
            }
            let mut kept = trace.clone();
            let state = kept.status.take().map(|s| s.state).unwrap_or_default();
            kept.status = (!state.is_empty()).then(|| TraceStatus { state, ..TraceStatus::default() });
            let file = self.dir(*source).join(format!("{name}.yaml"));
            if let Err(e) = write_atomically(&file, &kept) {
                tracing::error!("saving trace {name} to {}: {e:#}", file.display());
                failed.insert(name.clone(), format!("{e:#}"));
            }
            names.push(file);
        }
        // A Trace deleted, or gone from one source to the other.
        for source in Source::ALL {
            let Ok(entries) = std::fs::read_dir(self.dir(source)) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "yaml") && !names.contains(&path) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        failed
    }
}

fn write_atomically(file: &Path, trace: &Trace) -> Result<()> {
    let text = yaml_serde::to_string(trace)?;
    let temporary = file.with_extension("yaml.new");
    let written = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    Ok(written?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(name: &str, state: &str) -> Trace {
        let text = format!(
            "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: {name}\n\
             spec:\n  gadget: signal\n  runMode: Manual\n  outputMode: Status\n  parameters:\n    signal: USR1\n"
        );
        let (mut trace, _) = profile::parse(&text, Path::new("t.yaml")).expect("profile");
        trace.status =
            Some(TraceStatus { state: state.into(), output: "counts".into(), ..TraceStatus::default() });
        trace
    }

    #[test]
    fn saves_loads_and_forgets_deleted_traces() {
        let dir = std::env::temp_dir().join(format!("sigvisor-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).expect("open");
        let applied = |name, state| (trace(name, state), Source::Applied);
        state.save(&[applied("a", "Started"), applied("b", "Stopped"), applied("c", "")]);
        let saved = state.load();
        let names: Vec<(&str, &str)> =
            saved.iter().map(|s| (s.trace.metadata.name.as_str(), s.state.as_str())).collect();
        assert_eq!(names, [("a", "Started"), ("b", "Stopped"), ("c", "")]);
        assert_eq!(saved[0].policy.signal, libc::SIGUSR1);
        // The status output is not state: only the state is kept.
        let text = std::fs::read_to_string(dir.join("traces/a.yaml")).expect("a.yaml");
        assert!(!text.contains("counts"), "{text}");
        state.save(&[applied("b", "Started")]);
        let names: Vec<String> = state.load().into_iter().map(|s| s.trace.metadata.name).collect();
        assert_eq!(names, ["b"]);
        // A Trace keeps its source, and moves when its source changes.
        state.save(&[(trace("b", "Started"), Source::Declared), applied("d", "")]);
        let sources: Vec<(String, Source)> =
            state.load().into_iter().map(|s| (s.trace.metadata.name, s.source)).collect();
        assert_eq!(sources, [("b".into(), Source::Declared), ("d".into(), Source::Applied)]);
        assert!(dir.join("declared/b.yaml").exists() && !dir.join("traces/b.yaml").exists());
        std::fs::write(dir.join("traces/bad.yaml"), "kind: Nope").expect("write");
        assert_eq!(state.load().len(), 2, "a file that no longer loads is left out");
        assert!(dir.join("traces/bad.yaml.unloadable").exists(), "and kept aside");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
