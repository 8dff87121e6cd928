//! Unwinding a snapshot, after the answer: Go code by its tables, native
//! code by its CFI (`framehop`), frame-pointer frames by their prologue.
//! Every step is bounded: frames, table steps (`Budget`) and time.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use super::gopclntab::Budget;
use super::modules::{Binary, ProcessMap};
use super::prologue;
use super::snapshot::Memory;

/// Frames kept per stack.
pub const MAX_FRAMES: usize = 128;
/// Table steps one unwinding may take (Go's pcsp scans): real stacks take
/// a few thousand.
pub const STEPS: u64 = 1 << 22;
/// Time one unwinding may take.
pub const TIME: Duration = Duration::from_millis(50);

/// The RBP unwinding starts with: unknown, and unreadable on purpose.
const UNKNOWN_RBP: u64 = 0x10;

const NEEDS_RBP: &str = "a frame that needs the frame pointer: RBP is not known from outside, \
                         and this function's prologue does not give it (alloca, a realigned stack, \
                         or no symbol for the function)";

/// A process as the unwinder sees it.
pub struct View {
    pub start: u64,
    /// Its exec count when its mappings were read.
    pub image: u64,
    pub map: ProcessMap,
    pub unwinder: UnwinderX86_64<Arc<[u8]>>,
    /// Its root directory, through which its binaries are opened.
    pub root: Option<Arc<OwnedFd>>,
    /// The maps it was made from, and when, if a binary of it could not be
    /// loaded in time: made again later, when the load may have finished.
    pub retry: Option<(Arc<str>, Instant)>,
}

impl View {
    pub fn new(start: u64, image: u64, maps: &str, pid: i32, root: Option<Arc<OwnedFd>>) -> View {
        let map = ProcessMap::new(pid, maps, root.as_ref());
        let late = map
            .mappings
            .iter()
            .any(|m| m.binary.as_ref().err().is_some_and(|why| why.contains(super::loader::OVERRAN)));
        let unwinder = unwinder(&map);
        let retry = late.then(|| (Arc::from(maps), Instant::now()));
        View { start, image, map, unwinder, root, retry }
    }

    /// A view of mappings made by hand (the fuzzers').
    pub fn of(map: ProcessMap) -> View {
        let unwinder = unwinder(&map);
        View { start: 0, image: 0, map, unwinder, root: None, retry: None }
    }

    /// Whether it should be made again from its maps: a load overran its
    /// deadline a while ago.
    pub fn retry_due(&self) -> Option<Arc<str>> {
        self.retry
            .as_ref()
            .filter(|(_, when)| when.elapsed() > super::loader::DEADLINE)
            .map(|(m, _)| Arc::clone(m))
    }

    /// Why a frame at `pc` could not be unwound further, when its mapping's
    /// binary is not loaded; else the reason given.
    fn stop_at(&self, pc: u64, why: String) -> String {
        match self.map.find(pc).map(|m| (&m.path, &m.binary)) {
            Some((Some(path), Err(not))) => format!("{path} was not loaded: {not}"),
            _ => why,
        }
    }
}

/// Frames as unwound: (address, address to look its function up at), and
/// why unwinding stopped early, if it did.
pub type Unwound = (Vec<(u64, u64)>, Option<String>);

/// Unwinds from PC and SP over the snapshot's memory.
pub fn unwind(view: &View, cache: &mut CacheX86_64, pc: u64, sp: u64, memory: &Memory) -> Unwound {
    let go = view.map.find(pc).and_then(|m| m.loaded()).is_some_and(|b| b.go.is_some());
    let deadline = Instant::now() + TIME;
    let (frames, stop) = if go {
        go_unwind(view, pc, sp, memory, deadline)
    } else {
        native_unwind(view, cache, pc, sp, memory, deadline)
    };
    let stop = stop.map(|(why, at)| match at {
        Some(at) if at >= memory.end() => {
            format!("the stack goes on past the {} KiB copied", memory.bytes.len() >> 10)
        }
        _ => why,
    });
    (frames, stop)
}

/// A stop, with the address that could not be read if that was why.
type Stop = Option<(String, Option<u64>)>;

fn native_unwind(
    view: &View,
    cache: &mut CacheX86_64,
    pc: u64,
    sp: u64,
    memory: &Memory,
    deadline: Instant,
) -> (Vec<(u64, u64)>, Stop) {
    // RBP is not in /proc/TID/syscall. An RBP of 0 would end a frame-pointer
    // frame as if the stack were whole; an address that cannot be read makes
    // it fail, and the stack says why.
    let mut regs = UnwindRegsX86_64::new(pc, sp, UNKNOWN_RBP);
    let mut read = |at: u64| memory.word(at);
    let mut address = FrameAddress::InstructionPointer(pc);
    let mut addresses = vec![(pc, pc)];
    let stop = loop {
        if addresses.len() >= MAX_FRAMES {
            break Some((format!("more than {MAX_FRAMES} frames"), None));
        }
        // The clock every few frames: a frame costs well under a µs.
        if addresses.len() % 8 == 0 && Instant::now() > deadline {
            break Some((format!("unwinding took over {TIME:?}"), None));
        }
        let lookup = address.address_for_lookup();
        let mut step = view.unwinder.unwind_frame(address, &mut regs, cache, &mut read);
        if matches!(step, Err(ref e) if needs_rbp(e)) && regs.bp() == UNKNOWN_RBP {
            // A frame-pointer frame, and RBP unknown: from its prologue.
            match frame_pointer(view, lookup, regs.sp(), memory) {
                Some(rbp) => {
                    regs.set_bp(rbp);
                    step = view.unwinder.unwind_frame(address, &mut regs, cache, &mut read);
                }
                None => break Some((view.stop_at(lookup, NEEDS_RBP.into()), None)),
            }
        }
        match step {
            Ok(Some(ret)) => {
                let at = locate(view, ret);
                let code = at.and_then(|(binary, linked)| binary.code(linked));
                // A signal handler returns into the kernel's sigreturn
                // trampoline; the frame above it holds every register of
                // the code the signal interrupted: unwinding goes on there.
                if code.is_some_and(|(_, from)| from.starts_with(SIGRETURN)) {
                    let Some((pc, sp, bp)) = interrupted(regs.sp(), memory) else {
                        break Some(("a signal frame that is not readable".into(), Some(regs.sp())));
                    };
                    regs = UnwindRegsX86_64::new(pc, sp, bp);
                    address = FrameAddress::InstructionPointer(pc);
                    addresses.push((pc, pc));
                    continue;
                }
                // A return address follows a call. One outside any text
                // known here (a binary not loaded, JIT code) cannot be
                // checked: framehop has no unwind information there either,
                // so the walk ends at it.
                let before =
                    code.map(|(before, _)| &before[before.len().saturating_sub(prologue::CALL_WINDOW)..]);
                if before.is_some_and(|b| !prologue::follows_call(b)) {
                    break Some((
                        format!(
                            "the caller found next is no caller: no call instruction precedes its return \
                             address {ret:#x} (a frame pointer guessed wrong: alloca, or a realigned stack?)"
                        ),
                        None,
                    ));
                }
                let Some(next) = FrameAddress::from_return_address(ret) else { break None };
                addresses.push((ret, ret - 1));
                // The program's (or ld.so's) entry: the stack is whole.
                if at
                    .is_some_and(|(binary, linked)| linked.checked_sub(1).is_some_and(|l| binary.in_entry(l)))
                {
                    break None;
                }
                address = next;
            }
            Ok(None) => break None,
            Err(e) if needs_rbp(&e) => break Some((view.stop_at(lookup, NEEDS_RBP.into()), None)),
            Err(framehop::Error::CouldNotReadStack(at)) => {
                break Some((format!("stack not readable at {at:#x}"), Some(at)))
            }
            Err(e) => break Some((view.stop_at(lookup, e.to_string()), None)),
        }
    };
    (addresses, stop)
}

/// x86_64's `__restore_rt`: `mov $15,%rax` (rt_sigreturn); `syscall`.
const SIGRETURN: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// Where the kernel's `rt_sigframe` saved the interrupted code's RIP, RSP
/// and RBP, given the SP just above the handler's return address (its
/// `pretcode`): then `struct ucontext` (flags, link, a 24-byte stack_t),
/// whose `sigcontext` keeps r8-r15, rdi, rsi, rbp, rbx, rdx, rax, rcx,
/// rsp, rip in that order.
fn interrupted(sp: u64, memory: &Memory) -> Option<(u64, u64, u64)> {
    let context = sp.checked_add(8 + 8 + 24)?;
    let register = |i: u64| memory.word(context.checked_add(8 * i)?).ok();
    Some((register(16)?, register(15)?, register(10)?))
}

/// `at`'s binary, and `at` there as linked.
fn locate(view: &View, at: u64) -> Option<(&Binary, u64)> {
    let mapping = view.map.find(at)?;
    let binary = mapping.loaded()?;
    Some((binary, at.checked_sub(binary.bias(mapping)?)?))
}

/// Whether framehop failed for want of RBP (it started unreadable).
fn needs_rbp(e: &framehop::Error) -> bool {
    matches!(
        e,
        framehop::Error::CouldNotReadStack(..0x1000) | framehop::Error::FramepointerUnwindingMovedBackwards
    )
}

/// RBP of the frame-pointer function holding `lookup`, whose SP at its call
/// is `sp`: from its prologue, then checked against the stack: RBP is
/// 16-aligned, and just above it lies a return address into mapped code.
fn frame_pointer(view: &View, lookup: u64, sp: u64, memory: &Memory) -> Option<u64> {
    let (binary, linked) = locate(view, lookup)?;
    let (_, function) = binary.code(binary.symbol_start(linked)?)?;
    let rbp = sp.checked_add(prologue::frame_pointer_distance(function)?)?;
    let ret = memory.word(rbp.checked_add(8)?).ok()?;
    let into_code = view.map.find(ret).is_some_and(|m| m.loaded().is_some());
    (rbp.is_multiple_of(16) && into_code).then_some(rbp)
}

/// Go frames, by each function's frame size at its PC: the return address
/// is just above the frame.
fn go_unwind(
    view: &View,
    mut pc: u64,
    mut sp: u64,
    memory: &Memory,
    deadline: Instant,
) -> (Vec<(u64, u64)>, Stop) {
    let mut frames = Vec::new();
    let mut budget = Budget::new(STEPS);
    for depth in 0..MAX_FRAMES {
        let lookup = if depth == 0 { pc } else { pc.wrapping_sub(1) };
        frames.push((pc, lookup));
        if depth % 8 == 0 && Instant::now() > deadline {
            return (frames, Some((format!("unwinding took over {TIME:?}"), None)));
        }
        let found = view.map.find(lookup).and_then(|m| {
            let binary = m.loaded()?;
            let go = binary.go.as_ref()?;
            let linked = lookup.wrapping_sub(binary.bias(m)?);
            let f = go.func(linked)?;
            Some((go.is_root(f), go.sp_delta(f, linked, &mut budget)))
        });
        let (root, delta) = match found {
            Some(found) => found,
            None => {
                return (frames, Some((view.stop_at(lookup, format!("no Go function at {pc:#x}")), None)))
            }
        };
        if root {
            return (frames, None);
        }
        if budget.spent() {
            return (frames, Some((format!("its tables took over {STEPS} steps"), None)));
        }
        let Some(delta) = delta.and_then(|d| u64::try_from(d).ok()) else {
            return (frames, Some((format!("no frame size at {pc:#x}"), None)));
        };
        // The frame size comes from the binary's table: any value.
        let Some(fp) = sp.checked_add(delta).and_then(|f| f.checked_add(8)) else {
            return (frames, Some((format!("a frame size past the address space at {pc:#x}"), None)));
        };
        match memory.word(fp - 8) {
            Ok(ret) if ret != 0 => {
                pc = ret;
                sp = fp;
            }
            Ok(_) => return (frames, None),
            Err(()) => return (frames, Some((format!("stack not readable at {:#x}", fp - 8), Some(fp - 8)))),
        }
    }
    (frames, Some((format!("more than {MAX_FRAMES} frames"), None)))
}

/// framehop's view of a process's native binaries.
fn unwinder(map: &ProcessMap) -> UnwinderX86_64<Arc<[u8]>> {
    let mut unwinder = UnwinderX86_64::new();
    for mapping in &map.mappings {
        let Some(binary) = mapping.loaded() else { continue };
        let Some(bias) = binary.bias(mapping) else { continue };
        let u = &binary.unwind;
        if u.eh_frame.is_none() {
            continue;
        }
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: u.text.as_ref().map(|(r, _)| r.clone()),
            text: u.text.as_ref().map(|(_, d)| Arc::clone(d)),
            got_svma: u.got.clone(),
            eh_frame_svma: u.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: u.eh_frame.as_ref().map(|(_, d)| Arc::clone(d)),
            eh_frame_hdr_svma: u.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: u.eh_frame_hdr.as_ref().map(|(_, d)| Arc::clone(d)),
            ..ExplicitModuleSectionInfo::default()
        };
        let module = Module::new(binary.path.to_string(), mapping.start..mapping.end, bias, info);
        unwinder.add_module(module);
    }
    unwinder
}
