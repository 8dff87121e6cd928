//! The readers of hostile input, each as one function of bytes: what the
//! fuzz targets (`fuzz/`, `bench/fuzz.sh`) call, and what `make test`
//! replays the saved corpus through (`supervisor/tests/fuzz_corpus.rs`).
//! None may panic, loop without bound or allocate without bound, whatever
//! the bytes.

use std::path::Path;
use std::sync::Arc;

use crate::procfs::maps::parse_line as parse_maps_line;
use crate::stacks::gopclntab::{Budget, Pclntab};
use crate::stacks::modules::{Binary, Mapping, ProcessMap};
use crate::stacks::snapshot::Memory;
use crate::stacks::unwind::{self, View};
use crate::stacks::{prologue, Frame};

/// A reader of hostile input.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("gopclntab", gopclntab),
    ("binary", binary),
    ("unwind", unwind),
    ("prologue", prologue),
    ("sigaction", sigaction),
    ("maps", maps),
    ("handoff", handoff),
    ("control", control),
    ("profile", profile),
];

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(bytes) = data.get(at..at + 8) {
        word.copy_from_slice(bytes);
    }
    u64::from_le_bytes(word)
}

/// A Go function table: parsed, then looked up at PCs the bytes give.
pub fn gopclntab(data: &[u8]) {
    let (head, table) = data.split_at(data.len().min(16));
    let text = u64_at(head, 0);
    let Some(tab) = Pclntab::parse(table.to_vec(), text) else { return };
    let mut budget = Budget::new(unwind::STEPS);
    for i in 0..8 {
        let pc = text.wrapping_add(u64_at(head, 8) >> (i * 8));
        if let Some(f) = tab.func(pc) {
            let _ = (tab.name(f), tab.is_root(f));
            let _ = tab.sp_delta(f, pc, &mut budget);
            let _ = tab.file_line(f, pc, &mut budget);
        }
    }
}

/// An ELF binary, as the loader reads one, then named at a few addresses.
pub fn binary(data: &[u8]) {
    let Ok(binary) = Binary::parse(data, data.len() as u64, Arc::from("fuzz")) else { return };
    for i in 0..4 {
        let at = u64_at(data, 16 + 8 * i);
        let _ = (binary.symbol(at), binary.symbol_start(at));
        // addr2line's overflow on hostile DWARF (fuzz/regressions/binary)
        // is caught in `line`; libFuzzer aborts at any panic, caught or
        // not, so the fuzzer itself steps over it. make test replays it.
        if !cfg!(fuzzing) {
            let _ = binary.line(at);
        }
    }
    let mapping =
        Mapping { start: 0x40_0000, end: 0x50_0000, offset: 0, path: None, binary: Err(Arc::from("")) };
    let _ = binary.bias(&mapping);
}

/// A stack snapshot unwound over a binary: the first two bytes give the
/// binary's length, the next sixteen PC and SP, the rest is the stack.
pub fn unwind(data: &[u8]) {
    let len = usize::from(u16::from_le_bytes([*data.first().unwrap_or(&0), *data.get(1).unwrap_or(&0)]));
    let rest = data.get(2..).unwrap_or_default();
    let (elf, rest) = rest.split_at(len.min(rest.len()));
    let (regs, stack) = rest.split_at(rest.len().min(16));
    let Ok(binary) = Binary::parse(elf, elf.len() as u64, Arc::from("fuzz")) else { return };
    let start = 0x40_0000;
    let mapping = Mapping {
        start,
        end: start + 0x10_0000,
        offset: 0,
        path: Some(Arc::from("fuzz")),
        binary: Ok(Arc::new(binary)),
    };
    let view = View::of(ProcessMap { mappings: vec![mapping] });
    let pc = start.wrapping_add(u64_at(regs, 0) & 0xf_ffff);
    let sp = 0x7fff_0000_0000u64.wrapping_add(u64_at(regs, 8) & 0xfff8);
    let pages = stack.len() / 4096 + 2;
    let memory = Memory { base: sp, bytes: stack.to_vec(), read: vec![true; pages] };
    let mut cache = framehop::x86_64::CacheX86_64::new();
    let (frames, _) = unwind::unwind(&view, &mut cache, pc, sp, &memory);
    for (address, _) in frames {
        let _ = Frame::unnamed(address, None).text();
    }
}

/// A function's first bytes, decoded for its frame pointer.
pub fn prologue(data: &[u8]) {
    let _ = prologue::frame_pointer_distance(data);
    let _ = prologue::follows_call(data);
}

/// A bookkeeping call's arguments and the sigaction its caller's memory
/// holds.
pub fn sigaction(data: &[u8]) {
    use crate::callers::handlers::{decode, sigaction_of, HandlerCall};
    let calls = [HandlerCall::RtSigaction, HandlerCall::OldSigaction, HandlerCall::Signal, HandlerCall::Exec];
    let call = calls[usize::from(*data.first().unwrap_or(&0)) % calls.len()];
    let compat = data.get(1).is_some_and(|b| b & 1 == 1);
    let args: [u64; 6] = std::array::from_fn(|i| u64_at(data, 2 + 8 * i));
    let _ = sigaction_of(call, compat, &args);
    let _ = decode(call, compat, data.get(50..).unwrap_or_default());
}

/// `/proc/PID/maps` lines.
pub fn maps(data: &[u8]) {
    for line in String::from_utf8_lossy(data).lines() {
        let _ = parse_maps_line(line);
    }
}

/// A handoff message, as a runtime or the launcher sends one (no fds).
pub fn handoff(data: &[u8]) {
    let _ = sigvisor_proto::message_complete(data.len(), data);
    let _ = sigvisor_proto::decode(data, Vec::new());
}

/// A control request line, answered by a registry.
pub fn control(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    if let Ok(request) = crate::control::parse_request(&line) {
        let registry = crate::control::registry::Registry::new("fuzz".into(), true);
        let _ = crate::control::respond(&registry, request);
    }
}

/// A profile (a Trace in YAML).
pub fn profile(data: &[u8]) {
    let _ = crate::trace::profile::parse(&String::from_utf8_lossy(data), Path::new("fuzz.yaml"));
}
