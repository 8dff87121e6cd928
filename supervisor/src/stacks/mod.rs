//! The calling thread's user stack, captured by sigvisor itself while the
//! thread waits for the answer: no signal, no handler, no cooperation. The
//! thread is frozen inside the trapped call, so its SP and PC
//! (`/proc/TID/syscall`) and its stack (`process_vm_readv`) hold still.
//!
//! - Go code unwinds by `.gopclntab` (`gopclntab.rs`): each function's frame
//!   size at each PC, as Go's own traceback does; it survives `strip`.
//! - C, C++ and Rust code unwinds by DWARF CFI (`.eh_frame`), with
//!   `framehop`, and is named by the binary's symbols (and a separate
//!   debug file's; Rust names demangled), with file:line from its DWARF
//!   when it was built with `-g`.
//! - The frame pointer, RBP, is not in `/proc/TID/syscall`: for a frame
//!   whose CFA is RBP-based it comes from the function's prologue
//!   (`prologue.rs`), checked against the stack.
//! - A frame that cannot be unwound ends the stack, and the stack says why:
//!   never a made-up frame.
//!
//! Binaries are read once per binary (`modules.rs`), and the addresses they
//! map to once per listener.

pub mod gopclntab;
pub mod modules;
pub mod prologue;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use serde::Serialize;

use crate::sys::memory;
use modules::ProcessMap;

/// The RBP unwinding starts with: unknown, and unreadable on purpose.
const UNKNOWN_RBP: u64 = 0x10;

const NEEDS_RBP: &str = "a frame that needs the frame pointer: RBP is not known from outside, \
                         and this function's prologue does not give it (alloca, a realigned stack, \
                         or no symbol for the function)";

/// Frames kept per stack.
const MAX_FRAMES: usize = 128;
/// Stack bytes read from SP at first, and at most (clipped to the stack's
/// mapping).
const FIRST_READ: u64 = 8 * 1024;
const STACK_BYTES: u64 = 256 * 1024;

/// One frame: where it is, and what it is called.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub module: Arc<str>,
    /// Its address in the process, and in its module as linked.
    #[serde(serialize_with = "hex")]
    pub address: u64,
    #[serde(serialize_with = "hex_opt", skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

fn hex<S: serde::Serializer>(address: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{address:#x}"))
}

fn hex_opt<S: serde::Serializer>(address: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{:#x}", address.unwrap_or_default()))
}

impl Frame {
    /// `function (file:line)`, as the status lists frames.
    pub fn text(&self) -> String {
        let function = self.function.as_deref().unwrap_or("??");
        match (&self.file, self.line, self.offset) {
            (Some(file), Some(line), _) => format!("{function} ({file}:{line})"),
            (_, _, Some(offset)) => format!("{function} ({}+{offset:#x})", self.module),
            _ => format!("{function} ({:#x})", self.address),
        }
    }
}

/// A captured stack, innermost frame first.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// Why unwinding stopped before a thread's first frame, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

impl Stack {
    /// The lines the status shows: a frame per line, then the stop.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.frames.iter().map(Frame::text).collect();
        if let Some(why) = &self.truncated {
            lines.push(format!("... (unwinding stopped: {why})"));
        }
        lines
    }
}

/// A process as the unwinder sees it.
struct View {
    start: u64,
    map: ProcessMap,
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    /// `/proc/PID/pagemap`, kept open.
    pagemap: Option<File>,
}

/// Threads' `/proc/TID/syscall` files kept open (a kept-open file names its
/// thread, never a later one with its tid), at most this many.
const MAX_THREAD_FILES: usize = 256;
/// Processes' views kept per listener.
const MAX_PROCESSES: usize = 64;
/// Stacks kept named, by their addresses, per listener.
const MAX_NAMED: usize = 4096;

/// A captured stack: its lines for the status (shared by every capture of
/// the same addresses), and its frames.
pub struct Captured {
    pub lines: Arc<[String]>,
    pub stack: Arc<Stack>,
}

/// A stack's lines for the status, and its frames.
type Named = (Arc<[String]>, Arc<Stack>);

/// Stack capture for one listener's callers.
pub struct Stacks {
    processes: HashMap<i32, View>,
    threads: HashMap<i32, File>,
    cache: CacheX86_64,
    /// Stacks already named, by process and frame addresses: a repeated
    /// call path costs a hash lookup, not a symbolization.
    named: HashMap<(i32, Vec<u64>), Named>,
}

impl Default for Stacks {
    fn default() -> Self {
        Stacks {
            processes: HashMap::new(),
            threads: HashMap::new(),
            cache: CacheX86_64::new(),
            named: HashMap::new(),
        }
    }
}

/// The stack memory read at capture: reads outside it, or in a page that
/// was not in memory (and so not read), fail.
struct Memory {
    base: u64,
    bytes: Vec<u8>,
    /// Per page from `base`'s page: read or not.
    read: Vec<bool>,
}

impl Memory {
    fn word(&self, at: u64) -> Result<u64, ()> {
        let i = usize::try_from(at.checked_sub(self.base).ok_or(())?).map_err(|_| ())?;
        // Addresses come from the target's memory: any value, no overflow.
        let bytes = self.bytes.get(i..i.checked_add(8).ok_or(())?).ok_or(())?;
        // In range now: base <= at and at + 8 <= base + len.
        let page = memory::page_size();
        let (first, last) =
            ((at / page - self.base / page) as usize, ((at + 7) / page - self.base / page) as usize);
        if !(first..=last).all(|p| self.read.get(p).copied().unwrap_or(false)) {
            return Err(());
        }
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    }

    fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }
}

/// Frames as unwound: (address, address to look its function up at), and
/// why unwinding stopped early, with the address it could not read if that
/// was why.
type Unwound = (Vec<(u64, u64)>, Option<(String, Option<u64>)>);

impl Stacks {
    /// The stack of thread `tid` of process `tgid`, which waits inside a
    /// trapped call; Err says why none could be taken.
    pub fn capture(&mut self, tid: i32, tgid: i32, start: u64) -> Result<Captured, String> {
        let (sp, pc) = self.registers(tid)?;
        // Read again when the process is another, or has mapped code or
        // stack since (a goroutine's stack is in Go's heap).
        let stale = self
            .processes
            .get(&tgid)
            .is_none_or(|v| v.start != start || v.map.find(pc).is_none() || v.map.find(sp).is_none());
        if stale {
            let map = ProcessMap::read(tgid).ok_or("its maps cannot be read")?;
            let unwinder = unwinder(&map);
            let pagemap = File::open(format!("/proc/{tgid}/pagemap")).ok();
            if self.processes.len() >= MAX_PROCESSES && !self.processes.contains_key(&tgid) {
                // The gone go first; the live are read again when next seen.
                self.processes.retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
                if self.processes.len() >= MAX_PROCESSES {
                    self.processes.clear();
                }
            }
            self.processes.insert(tgid, View { start, map, unwinder, pagemap });
            // Its addresses may mean other code now (an exec, another
            // process with the pid).
            self.named.retain(|(pid, _), _| *pid != tgid);
        }
        let view = self.processes.get(&tgid).ok_or("no view")?;
        let limit = view.map.find(sp).ok_or("SP is in no mapping")?.end;
        // A small read first (a stack of 30 C frames is about 1 KiB); the
        // whole window only if unwinding ran past it.
        let mut unwound = None;
        for want in [FIRST_READ, STACK_BYTES] {
            let memory = read_stack(view, tid, sp, want.min(limit - sp))?;
            let (addresses, stop) = unwind(view, &mut self.cache, pc, sp, &memory);
            let ran_out = matches!(&stop, Some((_, Some(at))) if *at >= memory.end() && memory.end() < limit);
            unwound = Some((addresses, stop));
            if !ran_out || want == STACK_BYTES {
                break;
            }
        }
        let (addresses, stop) = unwound.ok_or("nothing read")?;
        let key = (tgid, addresses.iter().map(|(a, _)| *a).collect::<Vec<u64>>());
        if let Some((lines, stack)) = self.named.get(&key) {
            return Ok(Captured { lines: Arc::clone(lines), stack: Arc::clone(stack) });
        }
        let frames =
            addresses.into_iter().map(|(address, lookup)| self.frame(tgid, address, lookup)).collect();
        let stack = Stack { frames, truncated: stop.map(|(why, _)| why) };
        let lines: Arc<[String]> = Arc::from(stack.lines());
        let stack = Arc::new(stack);
        if self.named.len() >= MAX_NAMED {
            self.named.clear();
        }
        self.named.insert(key, (Arc::clone(&lines), Arc::clone(&stack)));
        Ok(Captured { lines, stack })
    }

    /// SP and PC of a thread inside a syscall, from its kept-open
    /// `/proc/TID/syscall` ("nr arg0..arg5 sp pc").
    fn registers(&mut self, tid: i32) -> Result<(u64, u64), String> {
        if self.threads.len() >= MAX_THREAD_FILES && !self.threads.contains_key(&tid) {
            self.threads.clear();
        }
        let file = match self.threads.entry(tid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(File::open(format!("/proc/{tid}/syscall")).map_err(|e| e.to_string())?)
            }
        };
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        let mut buf = [0u8; 256];
        // A waiting thread woken for a moment (a signal from elsewhere)
        // reads as "running" until it waits again.
        for _ in 0..3 {
            let n = match file.read_at(&mut buf, 0) {
                Ok(n) => n,
                Err(e) => {
                    // The thread this file named is gone.
                    self.threads.remove(&tid);
                    return Err(e.to_string());
                }
            };
            let text = std::str::from_utf8(&buf[..n]).map_err(|e| e.to_string())?;
            let fields: Vec<&str> = text.split_ascii_whitespace().collect();
            if let [_, _, _, _, _, _, _, sp, pc] = fields.as_slice() {
                return Ok((hex(sp).ok_or("bad SP")?, hex(pc).ok_or("bad PC")?));
            }
            std::thread::yield_now();
        }
        Err("not inside a syscall (running)".into())
    }

    /// Names a frame: `lookup` is the address inside its call instruction
    /// (a return address less one) or the PC itself.
    fn frame(&mut self, tgid: i32, address: u64, lookup: u64) -> Frame {
        let Some(view) = self.processes.get(&tgid) else { return unnamed(address) };
        let Some(mapping) = view.map.find(lookup) else { return unnamed(address) };
        let Some(binary) = mapping.binary.clone() else { return unnamed(address) };
        let module = Arc::clone(&binary.path);
        let bias = binary.bias(mapping);
        // Names by the call (`lookup`); the offset shown is the address's.
        let linked = bias.map(|bias| lookup.wrapping_sub(bias));
        let offset = bias.map(|bias| address.wrapping_sub(bias));
        if let (Some(go), Some(linked)) = (&binary.go, linked) {
            if let Some(f) = go.func(linked) {
                let (file, line) =
                    go.file_line(f, linked).map_or((None, None), |(f, l)| (Some(Arc::from(f)), Some(l)));
                let function = go.name(f).map(Arc::from);
                return Frame { function, file, line, module, address, offset };
            }
        }
        let function = linked.and_then(|l| binary.symbol(l)).cloned();
        let (file, line) =
            linked.and_then(|l| binary.line(l)).map_or((None, None), |(f, l)| (Some(f), Some(l)));
        Frame { function, file, line, module, address, offset }
    }
}

fn unnamed(address: u64) -> Frame {
    Frame { function: None, file: None, line: None, module: Arc::from("?"), address, offset: None }
}

/// Reads `len` bytes of stack from SP: only pages in memory (a missing one
/// could be a userfaultfd's, and the read would wait for it), one read per
/// run of them. A frame's untouched locals leave holes; the caller's own
/// frames are in memory: it ran on them.
fn read_stack(view: &View, tid: i32, sp: u64, len: u64) -> Result<Memory, String> {
    let len = len as usize;
    let read = match &view.pagemap {
        Some(pagemap) => crate::caller::resident_pages(pagemap, sp, len),
        None => vec![true; (len as u64 / memory::page_size() + 2) as usize],
    };
    if !read.first().copied().unwrap_or(false) {
        return Err("its stack is not in memory (reading could block)".into());
    }
    let page = memory::page_size();
    let mut bytes = vec![0u8; len];
    let mut p = 0;
    while p < read.len() {
        let run = read[p..].iter().take_while(|r| **r == read[p]).count();
        if read[p] {
            let from = ((sp / page + p as u64) * page).max(sp);
            let to = ((sp / page + (p + run) as u64) * page).min(sp + len as u64);
            if to > from {
                let range = (from - sp) as usize..(to - sp) as usize;
                memory::read(tid, from, &mut bytes[range]).map_err(|e| format!("reading its stack: {e}"))?;
            }
        }
        p += run;
    }
    Ok(Memory { base: sp, bytes, read })
}

/// Unwinds from PC and SP: Go code by its tables, native code by its CFI.
fn unwind(view: &View, cache: &mut CacheX86_64, pc: u64, sp: u64, memory: &Memory) -> Unwound {
    let go = view.map.find(pc).and_then(|m| m.binary.as_ref()).is_some_and(|b| b.go.is_some());
    if go {
        return go_unwind(&view.map, pc, sp, memory);
    }
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
        let mut step = view.unwinder.unwind_frame(address, &mut regs, cache, &mut read);
        if matches!(step, Err(ref e) if needs_rbp(e)) && regs.bp() == UNKNOWN_RBP {
            // A frame-pointer frame, and RBP unknown: from its prologue.
            match frame_pointer(view, address.address_for_lookup(), regs.sp(), memory) {
                Some(rbp) => {
                    regs.set_bp(rbp);
                    step = view.unwinder.unwind_frame(address, &mut regs, cache, &mut read);
                }
                None => break Some((NEEDS_RBP.into(), None)),
            }
        }
        match step {
            Ok(Some(ret)) => match FrameAddress::from_return_address(ret) {
                Some(next) => {
                    address = next;
                    addresses.push((ret, ret - 1));
                }
                None => break None,
            },
            Ok(None) => break None,
            Err(e) if needs_rbp(&e) => break Some((NEEDS_RBP.into(), None)),
            Err(framehop::Error::CouldNotReadStack(at)) => {
                break Some((format!("stack not readable at {at:#x}"), Some(at)))
            }
            Err(e) => break Some((e.to_string(), None)),
        }
    };
    (addresses, stop)
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
    let mapping = view.map.find(lookup)?;
    let binary = mapping.binary.as_ref()?;
    let bias = binary.bias(mapping)?;
    let entry = binary.symbol_start(lookup.wrapping_sub(bias))?;
    let (text, code) = binary.unwind.text.as_ref()?;
    let from = usize::try_from(entry.checked_sub(text.start)?).ok()?;
    let rbp = sp.checked_add(prologue::frame_pointer_distance(code.get(from..)?)?)?;
    let ret = memory.word(rbp.checked_add(8)?).ok()?;
    let into_code = view.map.find(ret).is_some_and(|m| m.binary.is_some());
    (rbp.is_multiple_of(16) && into_code).then_some(rbp)
}

/// Go frames, by each function's frame size at its PC: the return address
/// is just above the frame.
fn go_unwind(map: &ProcessMap, mut pc: u64, mut sp: u64, memory: &Memory) -> Unwound {
    let mut frames = Vec::new();
    for depth in 0..MAX_FRAMES {
        let lookup = if depth == 0 { pc } else { pc - 1 };
        frames.push((pc, lookup));
        let found = map.find(lookup).and_then(|m| {
            let binary = m.binary.as_ref()?;
            let go = binary.go.as_ref()?;
            let linked = lookup.wrapping_sub(binary.bias(m)?);
            let f = go.func(linked)?;
            Some((go.is_root(f), go.sp_delta(f, linked)))
        });
        let (root, delta) = match found {
            Some(found) => found,
            None => return (frames, Some((format!("no Go function at {pc:#x}"), None))),
        };
        if root {
            return (frames, None);
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
        let Some(binary) = &mapping.binary else { continue };
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
