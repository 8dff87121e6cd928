//! `sigvisor serve`'s Traces across restarts, as an API server keeps its
//! objects: `DIR/traces/NAME.yaml` holds each Trace as last applied, with
//! its state (`status.state`: Started, Stopped or none). Written after every
//! change through the control socket (write to a temporary file, then
//! rename: a crash leaves the old file or the new one, never half of one).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::trace::policy::Policy;
use crate::trace::profile::{self, Trace, TraceStatus};

pub struct StateDir {
    traces: PathBuf,
}

/// A Trace found in the state directory, and the state it was left in.
pub struct Saved {
    pub trace: Trace,
    pub policy: Policy,
    pub state: String,
}

impl StateDir {
    /// Opens `dir` (made 0700 if missing).
    pub fn open(dir: &Path) -> Result<StateDir> {
        let traces = dir.join("traces");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&traces)
            .with_context(|| format!("creating the state directory {}", traces.display()))?;
        Ok(StateDir { traces })
    }

    /// The Traces saved; one that no longer loads (a profile rule changed
    /// since it was saved) is reported, named, left out and kept aside.
    pub fn load(&self) -> Vec<Saved> {
        let Ok(entries) = std::fs::read_dir(&self.traces) else { return Vec::new() };
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
                    saved.push(Saved { trace, policy, state });
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
    pub fn save(&self, traces: &[Trace]) -> BTreeMap<String, String> {
        let mut failed = BTreeMap::new();
        let mut names = Vec::new();
        for trace in traces {
            let name = &trace.metadata.name;
            // Names come from profiles, which refuse path separators;
            // skip anything that would leave the directory anyway.
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                continue;
            }
            let mut kept = trace.clone();
            let state = kept.status.take().map(|s| s.state).unwrap_or_default();
            kept.status = (!state.is_empty()).then(|| TraceStatus { state, ..TraceStatus::default() });
            let file = self.traces.join(format!("{name}.yaml"));
            if let Err(e) = write_atomically(&file, &kept) {
                tracing::error!("saving trace {name} to {}: {e:#}", file.display());
                failed.insert(name.clone(), format!("{e:#}"));
            }
            names.push(format!("{name}.yaml"));
        }
        if let Ok(entries) = std::fs::read_dir(&self.traces) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".yaml") && !names.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
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
        state.save(&[trace("a", "Started"), trace("b", "Stopped"), trace("c", "")]);
        let saved = state.load();
        let names: Vec<(&str, &str)> =
            saved.iter().map(|s| (s.trace.metadata.name.as_str(), s.state.as_str())).collect();
        assert_eq!(names, [("a", "Started"), ("b", "Stopped"), ("c", "")]);
        assert_eq!(saved[0].policy.signal, libc::SIGUSR1);
        // The status output is not state: only the state is kept.
        let text = std::fs::read_to_string(dir.join("traces/a.yaml")).expect("a.yaml");
        assert!(!text.contains("counts"), "{text}");
        state.save(&[trace("b", "Started")]);
        let names: Vec<String> = state.load().into_iter().map(|s| s.trace.metadata.name).collect();
        assert_eq!(names, ["b"]);
        std::fs::write(dir.join("traces/bad.yaml"), "kind: Nope").expect("write");
        assert_eq!(state.load().len(), 1, "a file that no longer loads is left out");
        assert!(dir.join("traces/bad.yaml.unloadable").exists(), "and kept aside");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
