//! Profiles: Inspektor Gadget `Trace` resources (gadget.kinvolk.io/v1alpha1).
//!
//! Enum-like fields are read as strings and checked here rather than by
//! serde, so that every refusal names the file, the field, the bad value
//! and what is accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sigvisor_proto::parse_signal;

use super::policy::{
    parse_comm, parse_min_threads, parse_syscalls, parse_when, OutputMode, Policy, RunMode, HANDLERS,
    PARAMETERS,
};

pub const API_VERSION: &str = "gadget.kinvolk.io/v1alpha1";
pub const KIND: &str = "Trace";
pub const GADGETS: &[&str] = &["signal"];
pub const RUN_MODES: &[&str] = &["Auto", "Manual"];
pub const OUTPUT_MODES: &[&str] = &["Status", "Stream", "File"];

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
    pub managed_fields: Option<yaml_serde::Value>,
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
    pub parameters: BTreeMap<String, yaml_serde::Value>,
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
    // Two steps, so that an error names its field without reading a
    // library's message text: the YAML document (a syntax error says where),
    // then the Trace out of it, the failing field's path kept by
    // serde_path_to_error (a document value carries no position, so the
    // message is the deserializer's own: what was found, what is expected).
    let mut document: yaml_serde::Value =
        yaml_serde::from_str(text).map_err(|e| check.err("(document)", e))?;
    unset_nulls(&mut document);
    let trace: Trace = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(document)" } else { path.as_str() };
        check.err(field, e.inner())
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

/// A field given as `~` or left empty (`node:`) is unset, as the
/// Kubernetes API server reads a custom resource: it takes its default,
/// or is missing if it has none.
fn unset_nulls(value: &mut yaml_serde::Value) {
    match value {
        yaml_serde::Value::Mapping(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(unset_nulls);
        }
        yaml_serde::Value::Sequence(items) => items.iter_mut().for_each(unset_nulls),
        yaml_serde::Value::Tagged(tagged) => unset_nulls(&mut tagged.value),
        _ => {}
    }
}

fn policy(check: &Check, parameters: &BTreeMap<String, yaml_serde::Value>) -> Result<Policy, ProfileError> {
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
            yaml_serde::Value::String(s) => s.clone(),
            yaml_serde::Value::Number(n) => n.to_string(),
            yaml_serde::Value::Bool(b) => b.to_string(),
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
    fn errors_name_field_value_and_accepted() {
        let e = err(&SEED.replace("Manual", "Sometimes"));
        assert_eq!(e.field, "spec.runMode");
        assert!(e.message.contains("\"Sometimes\"") && e.message.contains("Auto, Manual"), "{e}");
        let e = err(&SEED.replace("  node: minikube\n", "  node: minikube\n  colour: red\n"));
        assert_eq!(e.field, "spec.colour");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        let e = err(&SEED.replace("  gadget: signal\n", "  gadget:\n"));
        assert_eq!(e.field, "spec");
        assert!(e.message.contains("missing field `gadget`"), "{e}");
        let (trace, _) =
            parse(&SEED.replace("  node: minikube\n", "  node:\n"), Path::new("t.yaml")).unwrap();
        assert_eq!(trace.spec.node, "");
        let e = err(&format!("{SEED}  parameters:\n    syscalls: close,nosuch\n"));
        assert_eq!(e.field, "spec.parameters.syscalls");
        let e = err(&format!("{SEED}  parameters:\n    syscalls: execve\n"));
        assert!(e.message.contains("cannot be trapped"), "{e}");
        let e = err(&SEED.replace("runMode: Manual", "runMode: [Manual]"));
        assert_eq!(e.field, "spec.runMode");
        assert!(e.message.contains("expected a string"), "{e}");
        let e = err("{{{{");
        assert_eq!(e.field, "(document)");
        assert!(e.message.contains(" at line "), "{e}");
        let e = err(&format!("{SEED}  parameters:\n    colour: red\n"));
        assert!(e.message.contains("accepted: signal, handler, syscalls, min-threads, comm, when"), "{e}");
    }
}
