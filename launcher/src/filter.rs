//! The seccomp filter: named syscalls return USER_NOTIF, everything else runs.

use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use sigvisor_proto::{signals_in, HandlerSetter, EXECS};

const WAIT_KILLABLE_RECV: libc::c_ulong = libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;

/// The ABIs the kernel will run for a process of the native ABI. A filter
/// that covers only the native one would let `int 0x80` (i386) or an x32
/// syscall close a file unseen; libseccomp kills the caller on an ABI the
/// filter does not list, which is worse.
fn abis() -> Vec<ScmpArch> {
    let native = ScmpArch::native();
    let compat: &[ScmpArch] = match native {
        ScmpArch::X8664 => &[ScmpArch::X86, ScmpArch::X32],
        ScmpArch::Aarch64 => &[ScmpArch::Arm],
        ScmpArch::Ppc64 | ScmpArch::Ppc64Le => &[ScmpArch::Ppc],
        ScmpArch::S390X => &[ScmpArch::S390],
        ScmpArch::Mips64 => &[ScmpArch::Mips, ScmpArch::Mips64N32],
        ScmpArch::Mipsel64 => &[ScmpArch::Mipsel, ScmpArch::Mipsel64N32],
        _ => &[],
    };
    std::iter::once(native).chain(compat.iter().copied()).collect()
}

/// The rules that tell the supervisor every handler change of the `watched`
/// signals (docs/design.md#never-crash-a-target): `rt_sigaction` that sets
/// one (a non-NULL `act`; queries and other signals run untrapped), i386's
/// older `sigaction` and `signal` likewise, and `execve`/`execveat`, which
/// reset caught handlers.
fn add_handler_rules(ctx: &mut ScmpFilterContext, watched: u64) -> Result<()> {
    if watched == 0 {
        return Ok(());
    }
    for name in EXECS {
        ctx.add_rule(ScmpAction::Notify, ScmpSyscall::from_name(name)?)
            .with_context(|| format!("libseccomp: add notify rule for {name}"))?;
    }
    for signal in signals_in(watched) {
        // The kernel takes the signal as an int: compare its low 32 bits
        // only, or junk above them would set a handler unseen.
        let is_signal = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(0xffff_ffff), signal as u64);
        let sets = ScmpArgCompare::new(1, ScmpCompareOp::NotEqual, 0);
        for setter in HandlerSetter::ALL {
            let name = setter.name();
            let conditions = if setter.has_act() { &[is_signal, sets][..] } else { &[is_signal][..] };
            // On an ABI without the syscall (x86_64's `signal`) libseccomp
            // leaves that ABI's program alone.
            ctx.add_rule_conditional(ScmpAction::Notify, ScmpSyscall::from_name(name)?, conditions)
                .with_context(|| format!("libseccomp: add notify rule for {name}({signal}, ...)"))?;
        }
    }
    Ok(())
}

/// Compiles the filter to classic BPF: a `sock_filter` array as bytes.
/// `watched`: the signals whose handler changes are trapped too (a mask).
pub fn compile(syscalls: &[String], watched: u64) -> Result<Vec<u8>> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).context("libseccomp: new filter")?;
    // no_new_privs is the launcher's decision (it depends on CAP_SYS_ADMIN),
    // not libseccomp's; we load the program ourselves anyway.
    ctx.set_ctl_nnp(false).context("libseccomp: clear NNP attribute")?;
    for arch in abis() {
        if arch != ScmpArch::native() {
            ctx.add_arch(arch).with_context(|| format!("libseccomp: add ABI {arch:?}"))?;
        }
    }
    for name in syscalls {
        let syscall = ScmpSyscall::from_name(name)
            .with_context(|| format!("--syscall {name}: not a syscall name libseccomp knows"))?;
        ctx.add_rule(ScmpAction::Notify, syscall)
            .with_context(|| format!("libseccomp: add notify rule for {name}"))?;
    }
    add_handler_rules(&mut ctx, watched)?;
    // libseccomp 2.5 exports only to an fd; a memfd keeps it off the disk.
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let raw = unsafe { libc::memfd_create(c"sigvisor-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: memfd_create just returned this fd and nothing else owns it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    ctx.export_bpf(&file).context("libseccomp: export BPF")?;
    let mut program = Vec::new();
    file.rewind()?;
    file.read_to_end(&mut program)?;
    if program.is_empty() || program.len() % std::mem::size_of::<libc::sock_filter>() != 0 {
        bail!("libseccomp exported {} bytes, not a BPF program", program.len());
    }
    Ok(program)
}

/// A loaded filter's listener, and whether the kernel took WAIT_KILLABLE_RECV.
pub struct Loaded {
    pub listener: OwnedFd,
    pub wait_killable: bool,
}

/// Loads `program` with `NEW_LISTENER | WAIT_KILLABLE_RECV`, or with
/// `NEW_LISTENER` alone on a kernel older than 5.19 (EINVAL for the flag).
///
/// From the moment this returns Ok, the caller must make no syscall the
/// filter traps until the listener is with the supervisor.
pub fn load(program: &[u8], wait_killable: bool) -> std::io::Result<Loaded> {
    let prog = libc::sock_fprog {
        len: (program.len() / std::mem::size_of::<libc::sock_filter>()) as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    let attempt = |flags: libc::c_ulong| {
        // SAFETY: prog points at `program`, a whole number of sock_filter
        // entries that outlives the call; the kernel copies it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: NEW_LISTENER returns a fresh fd (O_CLOEXEC) that we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        }
    };
    let listener_only = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    if !wait_killable {
        return Ok(Loaded { listener: attempt(listener_only)?, wait_killable: false });
    }
    match attempt(listener_only | WAIT_KILLABLE_RECV) {
        Ok(listener) => Ok(Loaded { listener, wait_killable: true }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok(Loaded { listener: attempt(listener_only)?, wait_killable: false })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_for_every_abi() {
        let one = compile(&["close".into()], 0).unwrap();
        let two = compile(&["close".into(), "openat".into()], 0).unwrap();
        assert!(two.len() > one.len());
        let watching = compile(&["close".into()], sigvisor_proto::watched_signals(libc::SIGILL)).unwrap();
        assert!(watching.len() > one.len());
        assert!(compile(&["no_such_syscall".into()], 0).is_err());
    }
}
