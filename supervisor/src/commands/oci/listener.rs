//! Listener mode: `SCMP_ACT_NOTIFY` rules added to the container's own
//! seccomp profile, which the runtime loads with `listenerPath` pointing at
//! `sigvisor serve` and the flag that makes signals precise.

use anyhow::{bail, Context as _, Result};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder, Spec,
};
use serde_json::Value;
use sigvisor_proto::Metadata;

use super::{array, object, PatchOptions};

fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> Result<LinuxSeccompArg> {
    Ok(LinuxSeccompArgBuilder::default().index(index).op(op).value(value).build()?)
}

/// `args[0]` is `signal`, compared on its low 32 bits as the kernel reads
/// an int (junk above them must not set a handler unseen).
fn signal_is(signal: i32) -> Result<LinuxSeccompArg> {
    Ok(LinuxSeccompArgBuilder::default()
        .index(0_usize)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .value(0xffff_ffff_u64)
        .value_two(signal as u64)
        .build()?)
}

fn rule(name: &str, action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall> {
    let mut builder = LinuxSyscallBuilder::default().names(vec![name.to_owned()]).action(action);
    if !args.is_empty() {
        builder = builder.args(args);
    }
    Ok(builder.build()?)
}

/// The ABIs this machine runs: its own and its compat ones.
fn native_abis() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

/// Whether an action lets the call run (the only calls sigvisor traps: a
/// CONTINUE must never run a call the profile refused).
fn runs(action: &LinuxSeccompAction) -> bool {
    matches!(action, LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog)
}

/// The action a profile gives every call of `name`: its rule's, else the
/// default; None where a rule with argument checks decides.
fn action_of(seccomp: &LinuxSeccomp, rules: &[LinuxSyscall], name: &str) -> Option<LinuxSeccompAction> {
    let naming: Vec<&LinuxSyscall> = rules.iter().filter(|r| r.names().iter().any(|n| n == name)).collect();
    if naming.iter().any(|r| r.args().as_ref().is_some_and(|a| !a.is_empty())) {
        return None;
    }
    Some(naming.first().map_or(seccomp.default_action(), |r| r.action()))
}

/// The rules that tell sigvisor every handler change of the `watched`
/// signals (handlers.rs): `rt_sigaction` (and i386's `sigaction` and
/// `signal`) notify when they set one of them, `execve` and `execveat`
/// always; and the signals they can watch (0 where the profile decides
/// those calls with argument checks of its own).
///
/// Only calls the profile lets run are trapped (a CONTINUE must never run
/// a call the container's profile refused). libseccomp drops conditional
/// rules for a syscall that also has an unconditional one, so
/// rt_sigaction's other calls get the action they had by rules of their own.
fn handler_rules(
    seccomp: &LinuxSeccomp,
    rules: &[LinuxSyscall],
    watched: u64,
) -> Result<(Vec<LinuxSyscall>, u64)> {
    use LinuxSeccompAction::{ScmpActErrno, ScmpActKill, ScmpActKillProcess, ScmpActKillThread};
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpNe};
    let notify = LinuxSeccompAction::ScmpActNotify;
    let refused = |a: &LinuxSeccompAction| {
        matches!(a, ScmpActErrno | ScmpActKill | ScmpActKillProcess | ScmpActKillThread)
    };
    let mut added = Vec::new();
    let mut watchable = watched;
    for name in sigvisor_proto::EXECS {
        match action_of(seccomp, rules, name) {
            Some(a) if runs(&a) => added.push(rule(name, notify, vec![])?),
            // A process that cannot exec keeps its handlers.
            Some(a) if refused(&a) => {}
            _ => watchable = 0,
        }
    }
    // rt_sigaction(sig, act, ...), i386's sigaction(sig, act, ...) and
    // signal(sig, handler): those that set a watched signal's handler.
    for setter in sigvisor_proto::HandlerSetter::ALL {
        let (name, has_act) = (setter.name(), setter.has_act());
        match action_of(seccomp, rules, name) {
            Some(other) if runs(&other) => {
                for signal in sigvisor_proto::signals_in(watched) {
                    let mut sets = vec![signal_is(signal)?];
                    if has_act {
                        sets.push(arg(1, ScmpCmpNe, 0)?);
                    }
                    added.push(rule(name, notify, sets)?);
                }
                if other != seccomp.default_action() {
                    // Queries and other signals keep their action. A number
                    // that is no signal gets the default's error, not EINVAL.
                    if has_act {
                        added.push(rule(name, other, vec![arg(1, ScmpCmpEq, 0)?])?);
                    }
                    for signal in (1..=64).filter(|&s| watched & sigvisor_proto::signal_bit(s) == 0) {
                        added.push(rule(name, other, vec![signal_is(signal)?])?);
                    }
                }
            }
            Some(a) if refused(&a) => {}
            _ => watchable = 0,
        }
    }
    if watchable == 0 {
        return Ok((Vec::new(), 0));
    }
    Ok((added, watchable))
}

/// Listener mode: the syscalls notify, taken out of every other rule (a
/// syscall named by two rules is an error in libseccomp), with the rules
/// that tell handler changes, and the rest of the profile (default action,
/// architectures, other rules, fields oci-spec does not know) kept.
pub(super) fn add_listener(doc: &mut Value, spec: &Spec, opts: &PatchOptions) -> Result<()> {
    let existing = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let fresh = existing.is_none();
    let seccomp = match existing {
        Some(s) => s,
        // No seccomp before: every ABI ran. A filter lists the ABIs it
        // covers, and kills callers of any other.
        None => LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(native_abis())
            .build()?,
    };
    let rules = seccomp.syscalls().clone().unwrap_or_default();
    let (handler_rules, watched) =
        handler_rules(&seccomp, &rules, sigvisor_proto::watched_signals(opts.signal))?;
    // Only calls the profile lets run are trapped: a CONTINUE must never
    // run a call the container's profile refused (or decides by arguments).
    let (trapped, refused): (Vec<String>, Vec<String>) = opts
        .syscalls
        .iter()
        .cloned()
        .partition(|name| action_of(&seccomp, &rules, name).is_some_and(|a| runs(&a)));
    if !refused.is_empty() {
        tracing::warn!(
            "the container's seccomp profile does not simply allow {}: not trapped (nothing of them to observe)",
            refused.join(", ")
        );
    }
    if trapped.is_empty() {
        bail!(
            "the container's seccomp profile does not simply allow any of {}: there is nothing to trap",
            opts.syscalls.join(", ")
        );
    }
    let taken = |name: &str| {
        trapped.iter().any(|s| s == name) || handler_rules.iter().any(|r| r.names().iter().any(|n| n == name))
    };
    let linux = object(doc, "linux")?;
    if fresh {
        linux.insert("seccomp".to_owned(), serde_json::to_value(&seccomp)?);
    }
    let section =
        linux.get_mut("seccomp").and_then(Value::as_object_mut).context("linux.seccomp is not an object")?;
    let syscalls = array(section, "syscalls")?;
    for rule in syscalls.iter_mut() {
        if let Some(names) = rule.get_mut("names").and_then(Value::as_array_mut) {
            names.retain(|n| !n.as_str().is_some_and(taken));
        }
    }
    syscalls.retain(|r| r.get("names").and_then(Value::as_array).is_none_or(|n| !n.is_empty()));
    let notify = LinuxSyscallBuilder::default()
        .names(trapped.clone())
        .action(LinuxSeccompAction::ScmpActNotify)
        .build()?;
    syscalls.push(serde_json::to_value(notify)?);
    for rule in handler_rules {
        syscalls.push(serde_json::to_value(rule)?);
    }
    section.insert("listenerPath".to_owned(), Value::from(opts.socket.display().to_string()));
    let metadata = Metadata { wait_killable: true, launcher: false, user: None, watched_signals: watched };
    section.insert("listenerMetadata".to_owned(), Value::from(metadata.to_json()));
    let flag = Value::from("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV");
    let flags = array(section, "flags")?;
    if !flags.contains(&flag) {
        flags.push(flag);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> (LinuxSeccomp, Vec<LinuxSyscall>) {
        let seccomp: LinuxSeccomp = serde_json::from_value(json).expect("a seccomp section");
        let rules = seccomp.syscalls().clone().unwrap_or_default();
        (seccomp, rules)
    }

    fn names(rules: &[LinuxSyscall]) -> Vec<String> {
        rules.iter().map(|r| format!("{}/{:?}", r.names()[0], r.action())).collect()
    }

    #[test]
    fn handler_rules_trap_only_what_the_profile_lets_run() {
        let watched = sigvisor_proto::watched_signals(libc::SIGILL);
        // Everything allowed: exec and the five watched signals' rt_sigaction.
        let (seccomp, rules) = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert_eq!(got, watched);
        // exec, execveat; rt_sigaction, sigaction and signal for 5 signals.
        assert_eq!(added.len(), 2 + 3 * 5);
        assert!(added.iter().all(|r| r.action() == LinuxSeccompAction::ScmpActNotify));
        let sets = added.iter().find(|r| r.names()[0] == "rt_sigaction").unwrap().args().clone().unwrap();
        assert_eq!(sets[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!((sets[0].value(), sets[0].value_two()), (0xffff_ffff, Some(libc::SIGILL as u64)));
        assert_eq!((sets[1].index(), sets[1].op()), (1, LinuxSeccompOperator::ScmpCmpNe));

        // Docker's shape: deny by default, rt_sigaction and execve allowed by
        // a plain rule: rt_sigaction's other calls keep being allowed.
        let (seccomp, rules) = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["rt_sigaction", "execve", "close"], "action": "SCMP_ACT_ALLOW"}],
        }));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert_eq!(got, watched);
        let allowed = added.iter().filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow).count();
        // rt_sigaction's queries and the 59 other signals; sigaction and
        // signal are refused (the default), so nothing for them.
        assert_eq!(allowed, 1 + 59, "{:?}", names(&added));
        assert!(!names(&added).contains(&"execveat/ScmpActNotify".to_owned()), "execveat is refused");

        // A profile that refuses both: nothing trapped, nothing can change.
        let (seccomp, rules) = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO"}));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert!(added.is_empty());
        assert_eq!(got, watched);

        // rt_sigaction decided by argument checks of the profile's own: left alone.
        let (seccomp, rules) = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["rt_sigaction"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]}],
        }));
        let (added, got) = handler_rules(&seccomp, &rules, watched).unwrap();
        assert!(added.is_empty());
        assert_eq!(got, 0);
    }
}
