//! Profiles: Inspektor Gadget `Trace` resources (gadget.kinvolk.io/v1alpha1).
//!
//! Enum-like fields are read as strings and checked here rather than by
//! serde, so that every refusal names the file, the field, the bad value
//! and what is accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "gadget.kinvolk.io/v1alpha1";
pub const KIND: &str = "Trace";
pub const GADGETS: &[&str] = &["signal"];
pub const RUN_MODES: &[&str] = &["Auto", "Manual"];
pub const OUTPUT_MODES: &[&str] = &["Status", "Stream", "File"];

/// `spec.runMode`: Auto starts when the Trace is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Auto,
    Manual,
}

/// `spec.outputMode`: where what a Trace sees goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// A summary in `status.output`, kept current.
    Status,
    /// JSON lines to `sigvisor stream` followers.
    Stream,
    /// JSON lines appended to `spec.output`.
    File,
}

impl RunMode {
    /// From a value `parse` checked.
    fn of(value: &str) -> RunMode {
        if value == "Auto" {
            RunMode::Auto
        } else {
            RunMode::Manual
        }
    }
}

impl OutputMode {
    /// From a value `parse` checked.
    fn of(value: &str) -> OutputMode {
        match value {
            "Stream" => OutputMode::Stream,
            "File" => OutputMode::File,
            _ => OutputMode::Status,
        }
    }
}
/// Accepted keys of `spec.parameters`, documented in docs/profiles.md.
pub const PARAMETERS: &[&str] = &["signal", "handler", "syscalls", "min-threads", "comm", "when", "stacks"];
/// Values of `spec.parameters.handler`.
pub const HANDLERS: &[&str] = &["own", "any"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trace {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TraceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TraceStatus>,
}

/// The parts of Kubernetes' ObjectMeta a Trace carries; what a cluster adds
/// on its own (uid, resourceVersion, …) is accepted and kept as is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    pub gadget: String,
    #[serde(default = "default_run_mode")]
    pub run_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ContainerFilter>,
    #[serde(default = "default_output_mode")]
    pub output_mode: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, serde_yaml::Value>,
}

fn default_run_mode() -> String {
    "Manual".into()
}

fn default_output_mode() -> String {
    "Status".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerFilter {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub podname: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_warning: String,
}

/// What a validated Trace asks the supervisor to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub run_mode: RunMode,
    pub output_mode: OutputMode,
    /// Signal sent to the calling thread (and whose handler the filter
    /// watches); with `send_signal` false (`signal: none`), none is sent.
    pub signal: i32,
    pub send_signal: bool,
    /// `stacks: "true"`: sigvisor captures the calling thread's stack.
    pub stacks: bool,
    /// `handler: any`: crash handlers are signalled too (the user knows
    /// better); by default only a handler meant for this signal is.
    pub any_handler: bool,
    /// Syscall names the filter traps.
    pub syscalls: Vec<String>,
    /// Only processes with at least this many threads are signalled.
    pub min_threads: u32,
    /// Only processes whose name (comm) matches this glob are signalled.
    pub comm: Option<glob::Pattern>,
    /// Which of a process's signallable calls are signalled.
    pub when: Option<When>,
}

/// strace's `first[..last][+step]`: calls first, first+step, … up to last
/// (1-based, inclusive). `N` alone is the N-th call only; `N..` or `N+S`
/// without a last goes on for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    pub first: u64,
    pub last: Option<u64>,
    pub step: u64,
}

impl When {
    pub fn selects(&self, n: u64) -> bool {
        n >= self.first
            && self.last.is_none_or(|last| n <= last)
            && (n - self.first).is_multiple_of(self.step)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ProfileError {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

struct Check<'a> {
    file: &'a Path,
}

impl Check<'_> {
    fn err(&self, field: &str, message: impl fmt::Display) -> ProfileError {
        ProfileError { file: self.file.to_owned(), field: field.to_owned(), message: message.to_string() }
    }

    fn one_of(&self, field: &str, value: &str, accepted: &[&str]) -> Result<(), ProfileError> {
        if accepted.contains(&value) {
            return Ok(());
        }
        Err(self.err(field, format_args!("invalid value {value:?}; accepted: {}", accepted.join(", "))))
    }
}

/// Reads and validates a profile file.
pub fn load(file: &Path) -> Result<(Trace, Policy), ProfileError> {
    let check = Check { file };
    let text =
        std::fs::read_to_string(file).map_err(|e| check.err("(file)", format_args!("cannot read: {e}")))?;
    parse(&text, file)
}

pub fn parse(text: &str, file: &Path) -> Result<(Trace, Policy), ProfileError> {
    let check = Check { file };
    let trace: Trace = serde_yaml::from_str(text).map_err(|e| {
        // serde_yaml puts the field path first ("spec.runMode: ..."); keep
        // it as the field so every error reads the same way.
        let text = e.to_string();
        match text.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => check.err(path, rest),
            _ => check.err("(document)", text),
        }
    })?;
    check.one_of("apiVersion", &trace.api_version, &[API_VERSION])?;
    check.one_of("kind", &trace.kind, &[KIND])?;
    if let Err(why) = check_name(&trace.metadata.name) {
        return Err(check.err("metadata.name", why));
    }
    check.one_of("spec.gadget", &trace.spec.gadget, GADGETS)?;
    check.one_of("spec.runMode", &trace.spec.run_mode, RUN_MODES)?;
    if trace.spec.output_mode == "ExternalResource" {
        return Err(check.err(
            "spec.outputMode",
            format_args!(
                "\"ExternalResource\" is not supported by sigvisor; supported: {}",
                OUTPUT_MODES.join(", ")
            ),
        ));
    }
    check.one_of("spec.outputMode", &trace.spec.output_mode, OUTPUT_MODES)?;
    let mut policy = policy(&check, &trace.spec.parameters)?;
    policy.run_mode = RunMode::of(&trace.spec.run_mode);
    policy.output_mode = OutputMode::of(&trace.spec.output_mode);
    Ok((trace, policy))
}

fn policy(check: &Check, parameters: &BTreeMap<String, serde_yaml::Value>) -> Result<Policy, ProfileError> {
    let mut policy = Policy {
        run_mode: RunMode::Manual,
        output_mode: OutputMode::Status,
        signal: libc::SIGILL,
        send_signal: true,
        stacks: false,
        any_handler: false,
        syscalls: vec!["close".into()],
        min_threads: 1,
        comm: None,
        when: None,
    };
    for (key, value) in parameters {
        let field = format!("spec.parameters.{key}");
        let value = match value {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => return Err(check.err(&field, "must be a string (parameters are a map of string to string)")),
        };
        match key.as_str() {
            "signal" if value == "none" => policy.send_signal = false,
            "signal" => {
                policy.signal = parse_signal(&value).map_err(|m| {
                    check.err(&field, format_args!("{m}; or none (observe only, never signal)"))
                })?
            }
            "stacks" => {
                check.one_of(&field, &value, &["true", "false"])?;
                policy.stacks = value == "true";
            }
            "handler" => {
                check.one_of(&field, &value, HANDLERS)?;
                policy.any_handler = value == "any";
            }
            "syscalls" => policy.syscalls = parse_syscalls(&value).map_err(|m| check.err(&field, m))?,
            "min-threads" => {
                policy.min_threads = parse_min_threads(&value).map_err(|m| check.err(&field, m))?
            }
            "comm" => policy.comm = Some(parse_comm(&value).map_err(|m| check.err(&field, m))?),
            "when" => policy.when = Some(parse_when(&value).map_err(|m| check.err(&field, m))?),
            _ => {
                return Err(
                    check.err(&field, format_args!("unknown parameter; accepted: {}", PARAMETERS.join(", ")))
                )
            }
        }
    }
    Ok(policy)
}

pub use sigvisor_proto::{parse_signal, signal_name};

/// A Trace's name follows Kubernetes' rule for object names (an RFC 1123
/// subdomain): it is also the file the Trace is saved as, so it can
/// never be a path.
pub fn check_name(name: &str) -> Result<(), String> {
    const RULE: &str = "accepted: an RFC 1123 subdomain, as Kubernetes names objects: at most 253 \
                        characters of lowercase letters, digits, '-' and '.', starting and ending \
                        with a letter or digit (e.g. seccomp, who-closed.v2)";
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum);
    if ok {
        Ok(())
    } else {
        Err(format!("invalid value {name:?}; {RULE}"))
    }
}

/// Comma-separated syscall names known to libseccomp, minus those the
/// launcher itself must call after loading the filter.
pub fn parse_syscalls(value: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> =
        value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Err(format!(
            "invalid value {value:?}; accepted: comma-separated syscall names, e.g. close,openat"
        ));
    }
    for name in &names {
        if sigvisor_proto::HANDLER_SYSCALLS.contains(&name.as_str()) {
            return Err(format!(
                "invalid value {name:?}: sigvisor traps it itself, to know each process's signal handlers \
                 (reserved: {})",
                sigvisor_proto::HANDLER_SYSCALLS.join(", ")
            ));
        }
        if sigvisor_proto::NEVER_TRAPPED.contains(&name.as_str()) {
            return Err(format!(
                "invalid value {name:?}: the launcher needs it to start the target; it cannot be trapped \
                 (never trapped: {})",
                sigvisor_proto::NEVER_TRAPPED.join(", ")
            ));
        }
        if libseccomp::ScmpSyscall::from_name(name).is_err() {
            return Err(format!("invalid value {name:?}: not a syscall name on this system; accepted: names such as close, openat, read"));
        }
    }
    Ok(names)
}

pub fn parse_min_threads(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("invalid value {value:?}; accepted: a whole number of threads, 1 or more")),
    }
}

/// A glob (`*`, `?`, `[...]`) matched against the whole process name; the
/// kernel keeps at most 15 bytes of it.
pub fn parse_comm(value: &str) -> Result<glob::Pattern, String> {
    let accepted = "accepted: a glob matched against the whole process name (comm, at most 15 bytes), \
                    e.g. gosignal or gosi*";
    if value.is_empty() {
        return Err(format!("invalid value {value:?}; {accepted}"));
    }
    glob::Pattern::new(value).map_err(|e| format!("invalid value {value:?}: {e}; {accepted}"))
}

pub fn parse_when(value: &str) -> Result<When, String> {
    let bad = || {
        format!(
            "invalid value {value:?}; accepted: first[..last][+step] as in strace, counting from 1, \
             e.g. 3 (the 3rd only), 2..5, 10.. (10th on), 1+10 (every 10th), 5..50+5"
        )
    };
    let number = |s: &str| s.parse::<u64>().ok().filter(|n| *n >= 1);
    let (range, step) = match value.trim().split_once('+') {
        Some((range, step)) => (range, Some(number(step).ok_or_else(bad)?)),
        None => (value.trim(), None),
    };
    let (first, last) = match range.split_once("..") {
        Some((first, "")) => (number(first).ok_or_else(bad)?, None),
        Some((first, last)) => (number(first).ok_or_else(bad)?, Some(number(last).ok_or_else(bad)?)),
        // `N` alone is the N-th only; `N+S` runs on.
        None => {
            let first = number(range).ok_or_else(bad)?;
            (first, if step.is_some() { None } else { Some(first) })
        }
    };
    if last.is_some_and(|last| last < first) {
        return Err(bad());
    }
    Ok(When { first, last, step: step.unwrap_or(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "apiVersion: gadget.kinvolk.io/v1alpha1
kind: Trace
metadata:
  name: seccomp
  namespace: gadget
spec:
  node: minikube
  gadget: signal
  runMode: Manual
  outputMode: Status
";

    fn err(text: &str) -> ProfileError {
        parse(text, Path::new("p.yaml")).unwrap_err()
    }

    #[test]
    fn seed_loads_with_defaults() {
        let (trace, policy) = parse(SEED, Path::new("seed.yaml")).unwrap();
        assert_eq!(trace.metadata.name, "seccomp");
        assert_eq!(trace.spec.node, "minikube");
        assert_eq!(policy.signal, libc::SIGILL);
        assert_eq!(policy.syscalls, vec!["close"]);
    }

    #[test]
    fn when_forms() {
        let picks = |w: &str| (1..=30).filter(|n| parse_when(w).unwrap().selects(*n)).collect::<Vec<_>>();
        assert_eq!(picks("3"), vec![3]);
        assert_eq!(picks("2..4"), vec![2, 3, 4]);
        assert_eq!(picks("28.."), vec![28, 29, 30]);
        assert_eq!(picks("1+10"), vec![1, 11, 21]);
        assert_eq!(picks("5..20+5"), vec![5, 10, 15, 20]);
        for bad in ["", "0", "x", "3..2", "1+0", "..3", "1..2..3"] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signal_forms() {
        assert_eq!(parse_signal("SIGUSR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("ill"), Ok(libc::SIGILL));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("SIGKILL").is_err());
        assert!(parse_signal("9").is_err());
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("65").is_err());
    }

    #[test]
    fn errors_name_field_value_and_accepted() {
        let e = err(&SEED.replace("Manual", "Sometimes"));
        assert_eq!(e.field, "spec.runMode");
        assert!(e.message.contains("\"Sometimes\"") && e.message.contains("Auto, Manual"), "{e}");
        let e = err(&SEED.replace("  node: minikube\n", "  node: minikube\n  colour: red\n"));
        assert_eq!(e.field, "spec");
        assert!(e.message.contains("colour"), "{e}");
        let e = err(&format!("{SEED}  parameters:\n    syscalls: close,nosuch\n"));
        assert_eq!(e.field, "spec.parameters.syscalls");
        let e = err(&format!("{SEED}  parameters:\n    syscalls: execve\n"));
        assert!(e.message.contains("cannot be trapped"), "{e}");
        let e = err(&format!("{SEED}  parameters:\n    colour: red\n"));
        assert!(e.message.contains("accepted: signal, handler, syscalls, min-threads, comm, when"), "{e}");
    }
}
