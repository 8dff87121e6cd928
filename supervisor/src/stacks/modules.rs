//! Which binary holds an address in a process, and what each binary gives
//! an unwinder: Go's `.gopclntab`, or the DWARF CFI (`.eh_frame`), symbols
//! and lines of C, C++ and Rust code.
//!
//! A binary is the target's: any byte of it may be hostile. Only the parts
//! used are read (headers, then named sections, by `pread`), never the
//! whole file; a section larger than the file, larger than its limit, or
//! in a sparse file is refused with the reason; the parts kept count
//! against the binary's limit. Loading happens off the answer path, with a
//! deadline (`loader.rs`).

use std::fs::File;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use super::gopclntab::Pclntab;
use super::loader;
use crate::shared;

/// The most bytes one binary may keep (its code, unwind tables, symbols
/// and lines together). Real binaries keep far less: libc about 3 MiB, a
/// large Go program about 30 MiB, libjvm about 40 MiB.
pub const MAX_KEPT: u64 = 256 << 20;
/// The most bytes of any one section read.
const MAX_SECTION: u64 = 192 << 20;
/// A file this large that has less than an eighth of its bytes on disk is
/// sparse: it claims sections it does not hold.
const SPARSE_CHECK: u64 = 64 << 20;
/// Symbols kept per binary, and the longest name kept.
const MAX_SYMBOLS: usize = 1 << 20;
const MAX_NAME: usize = 1024;

/// A section's address (as linked) and bytes.
pub type Section = (Range<u64>, Arc<[u8]>);

/// What unwinding a native frame needs from its binary.
pub struct Unwind {
    pub text: Option<Section>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub got: Option<Range<u64>>,
}

pub struct Binary {
    /// The path the process maps it from (in its own mount namespace).
    pub path: Arc<str>,
    pub go: Option<Pclntab>,
    /// Function symbols (`.symtab`, else `.dynsym`): (address, size, name),
    /// sorted by address, names demangled.
    symbols: Vec<(u64, u64, Arc<str>)>,
    /// Its DWARF line tables, if it carries them (built with `-g`).
    lines: Option<Mutex<Lines>>,
    pub unwind: Unwind,
    /// (vaddr, file offset, size) of each executable loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// The bytes it keeps, for the cache's limit.
    pub kept: u64,
    /// Its ELF entry point (as linked): `_start`, which nobody calls.
    entry: u64,
}

/// Reads a binary's sections within its limits.
struct Reader<'a, R: object::ReadRef<'a>> {
    elf: object::File<'a, R>,
    /// The file's length: no section reaches past it.
    len: u64,
    kept: u64,
}

impl<'a, R: object::ReadRef<'a>> Reader<'a, R> {
    /// A section's bytes, if it is there and within the limits; Err names
    /// the section that broke one.
    fn section(&mut self, name: &str) -> Result<Option<Section>, String> {
        let Some(s) = self.elf.section_by_name(name) else { return Ok(None) };
        // A NOBITS section (.bss, or a stripped debug section) has no bytes.
        let Some((offset, size)) = s.file_range() else { return Ok(None) };
        if offset.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(format!("its {name} claims {size} bytes past the file's end"));
        }
        if size > MAX_SECTION {
            return Err(format!("its {name} is {} MiB (the limit is {} MiB)", size >> 20, MAX_SECTION >> 20));
        }
        keep(&mut self.kept, size, name)?;
        let data = s.data().map_err(|e| format!("reading its {name}: {e}"))?;
        let end = s.address().saturating_add(s.size());
        Ok(Some((s.address()..end, Arc::from(data))))
    }
}

/// Every section within the limit, before anything is parsed: the full
/// parse reads the symbol tables whole, whatever size they claim.
fn check_sections<'a, R: object::ReadRef<'a>>(data: R) -> Result<(), String> {
    use object::read::elf::{FileHeader, SectionHeader};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|e| format!("not a 64-bit ELF binary: {e}"))?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let sections = header.section_headers(endian, data).map_err(|e| e.to_string())?;
    for section in sections {
        let size = section.sh_size(endian);
        if section.sh_type(endian) != object::elf::SHT_NOBITS && size > MAX_SECTION {
            return Err(format!("a section of {} MiB (the limit is {} MiB)", size >> 20, MAX_SECTION >> 20));
        }
    }
    Ok(())
}

/// Counts `bytes` more kept by a binary; Err past its limit.
fn keep(kept: &mut u64, bytes: u64, what: &str) -> Result<(), String> {
    *kept = kept.saturating_add(bytes);
    if *kept > MAX_KEPT {
        return Err(format!("with its {what} it keeps over {} MiB", MAX_KEPT >> 20));
    }
    Ok(())
}

impl Binary {
    /// Reads what unwinding and naming need from an opened binary; Err
    /// says why it cannot be used.
    pub fn load(file: File, path: Arc<str>) -> Result<Binary, String> {
        let meta = file.metadata().map_err(|e| e.to_string())?;
        let len = meta.len();
        if len > SPARSE_CHECK && meta.blocks().saturating_mul(512) < len / 8 {
            return Err(format!(
                "a sparse file: {} MiB long, {} KiB on disk",
                len >> 20,
                meta.blocks().saturating_mul(512) >> 10
            ));
        }
        let cache = ReadCache::new(file);
        Binary::parse(&cache, len, path)
    }

    /// The same, from any bytes that hold a binary of `len` bytes (a
    /// file's, or a fuzzer's).
    pub fn parse<'a, R: object::ReadRef<'a>>(data: R, len: u64, path: Arc<str>) -> Result<Binary, String> {
        check_sections(data)?;
        let elf = object::File::parse(data).map_err(|e| format!("not a binary sigvisor reads: {e}"))?;
        let mut reader = Reader { elf, len, kept: 0 };
        let text = reader.section(".text")?;
        let go = match reader.section(".gopclntab")? {
            Some((_, data)) => Pclntab::parse(data.to_vec(), text.as_ref().map_or(0, |(r, _)| r.start)),
            None => None,
        };
        let unwind = Unwind {
            text,
            eh_frame: reader.section(".eh_frame")?,
            eh_frame_hdr: reader.section(".eh_frame_hdr")?,
            got: reader
                .elf
                .section_by_name(".got")
                .map(|s| s.address()..s.address().saturating_add(s.size())),
        };
        let mut symbols = function_symbols(&reader.elf);
        // A separate debug file (a distribution's -dbg package) holds the
        // symbols and lines a stripped binary lacks, at the same addresses.
        let debug = debug_file(&reader.elf);
        let debug_elf = debug.as_ref().and_then(|cache| object::File::parse(cache).ok());
        if let Some(debug) = &debug_elf {
            symbols.extend(function_symbols(debug));
        }
        symbols.sort_by_key(|s| s.0);
        symbols.dedup_by_key(|s| s.0);
        symbols.truncate(MAX_SYMBOLS);
        let names: u64 = symbols.iter().map(|s| s.2.len() as u64 + 24).sum();
        keep(&mut reader.kept, names, "symbols")?;
        // Only code is looked up: a non-executable segment may share the
        // code's first page (its page-aligned range overlaps), and would
        // give the wrong bias.
        let segments = reader
            .elf
            .segments()
            .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0))
            .map(|s| {
                let (offset, size) = s.file_range();
                (s.address(), offset, size)
            })
            .collect();
        let lines = match lines(&reader.elf, len, &mut reader.kept)? {
            Some(lines) => Some(lines),
            None => match &debug_elf {
                Some(debug) => lines(debug, u64::MAX, &mut reader.kept)?,
                None => None,
            },
        };
        let kept = reader.kept;
        let entry = reader.elf.entry();
        Ok(Binary { path, go, symbols, lines: lines.map(Mutex::new), unwind, segments, kept, entry })
    }

    /// The source file and line of `linked`, from DWARF.
    /// addr2line 0.25 can overflow on hostile DWARF (found by the `binary`
    /// fuzz target: fuzz/regressions/binary): such a lookup gives no line.
    pub fn line(&self, linked: u64) -> Option<(Arc<str>, u32)> {
        let lines = shared::lock(self.lines.as_ref()?);
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let location = lines.find_location(linked).ok()??;
            Some((Arc::from(location.file?), location.line?))
        }));
        found.ok().flatten()
    }

    /// Where the function symbol holding `linked` starts.
    pub fn symbol_start(&self, linked: u64) -> Option<u64> {
        let i = self.symbols.partition_point(|s| s.0 <= linked).checked_sub(1)?;
        self.symbol(linked).map(|_| self.symbols[i].0)
    }

    /// The function symbol holding `linked` (an address as linked).
    pub fn symbol(&self, linked: u64) -> Option<&Arc<str>> {
        let i = self.symbols.partition_point(|s| s.0 <= linked).checked_sub(1)?;
        let (address, size, name) = &self.symbols[i];
        // A symbol without a size runs to the next one.
        let end = if *size > 0 {
            address.saturating_add(*size)
        } else {
            self.symbols.get(i + 1).map_or(u64::MAX, |s| s.0)
        };
        (linked < end).then_some(name)
    }

    /// Its text's bytes before `linked` and from it, where `linked` is in
    /// its text.
    pub fn code(&self, linked: u64) -> Option<(&[u8], &[u8])> {
        let (text, code) = self.unwind.text.as_ref()?;
        let at = usize::try_from(linked.checked_sub(text.start)?).ok()?;
        (at <= code.len()).then(|| code.split_at(at))
    }

    /// Whether `linked` is in the function at the binary's entry point, the
    /// first a thread of a process runs (`_start`): nothing called it, so
    /// a stack ends there. Without a symbol for it (ld.so's is stripped),
    /// its first bytes: every `_start` calls on within a few instructions.
    pub fn in_entry(&self, linked: u64) -> bool {
        // A library's entry is 0: it has none.
        if self.entry == 0 {
            return false;
        }
        match self.symbol_start(linked) {
            Some(start) => start == self.entry,
            None => linked.checked_sub(self.entry).is_some_and(|into| into < 64),
        }
    }

    /// How far the binary is loaded from its linked addresses, given one of
    /// its code mappings: the address of linked address 0. A mapping starts
    /// on a page, its segment anywhere in it.
    pub fn bias(&self, mapping: &Mapping) -> Option<u64> {
        let page = |x: u64| x & !0xfff;
        let (vaddr, offset, _) = self.segments.iter().find(|(_, off, size)| {
            (page(*off)..off.saturating_add(*size.max(&1))).contains(&mapping.offset)
        })?;
        let into = mapping.offset.checked_sub(page(*offset))?;
        Some(mapping.start.wrapping_sub(page(*vaddr).wrapping_add(into)))
    }
}

type Lines = addr2line::Context<gimli::EndianArcSlice<gimli::RunTimeEndian>>;

/// Function symbols (`.symtab` and `.dynsym`), Rust names demangled.
fn function_symbols<'a, R: object::ReadRef<'a>>(elf: &object::File<'a, R>) -> Vec<(u64, u64, Arc<str>)> {
    elf.symbols()
        .chain(elf.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .take(MAX_SYMBOLS)
        .filter_map(|s| {
            let name = s.name().ok()?;
            let name = name.get(..MAX_NAME).unwrap_or(name);
            // `{:#}`: Rust names without their hash suffix.
            Some((s.address(), s.size(), Arc::from(format!("{:#}", rustc_demangle::demangle(name)))))
        })
        .collect()
}

/// The binary's separate debug file, found by its build id under
/// `/usr/lib/debug/.build-id` on this machine (the host's, never the
/// target's: the id is only hex).
fn debug_file<'a, R: object::ReadRef<'a>>(elf: &object::File<'a, R>) -> Option<ReadCache<File>> {
    let id = elf.build_id().ok()??;
    let (first, rest) = id.split_first()?;
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("/usr/lib/debug/.build-id/{first:02x}/{rest}.debug");
    let file = loader::open_nonblocking(std::path::Path::new(&path)).ok()?;
    Some(ReadCache::new(file))
}

/// A binary's DWARF, for its lines; None without `.debug_info`. Its
/// sections count against the binary's limit.
fn lines<'a, R: object::ReadRef<'a>>(
    elf: &object::File<'a, R>,
    len: u64,
    kept: &mut u64,
) -> Result<Option<Lines>, String> {
    if elf.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let endian =
        if elf.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let dwarf = gimli::Dwarf::load(|id| -> Result<_, String> {
        let data = match elf.section_by_name(id.name()) {
            Some(s) => {
                let size = s.file_range().map_or(0, |(_, size)| size);
                if size > MAX_SECTION || size > len {
                    return Err(format!("its {} is {} MiB", id.name(), size >> 20));
                }
                keep(kept, size, id.name())?;
                s.uncompressed_data().ok()
            }
            None => None,
        };
        Ok(gimli::EndianArcSlice::new(Arc::from(data.as_deref().unwrap_or_default()), endian))
    })?;
    Ok(addr2line::Context::from_dwarf(dwarf).ok())
}

/// A mapped range of a process.
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// The path it maps, for an executable file mapping.
    pub path: Option<Arc<str>>,
    /// Its binary, or why it was not loaded.
    pub binary: Result<Arc<Binary>, Arc<str>>,
}

impl Mapping {
    pub fn loaded(&self) -> Option<&Arc<Binary>> {
        self.binary.as_ref().ok()
    }
}

/// Every mapping of one process, read at once.
pub struct ProcessMap {
    pub mappings: Vec<Mapping>,
}

impl ProcessMap {
    /// The mappings `maps` (the text of `/proc/PID/maps`) lists; binaries
    /// come from the loader's cache or are loaded (within its deadline),
    /// through the process's `root` where known.
    pub fn new(pid: i32, maps: &str, root: Option<&Arc<OwnedFd>>) -> ProcessMap {
        let mut mappings = Vec::new();
        for m in maps.lines().filter_map(crate::procfs::maps::parse_line) {
            let file = m.executable && m.inode != 0;
            let path = file.then(|| Arc::<str>::from(m.path));
            let binary = match &path {
                Some(path) => {
                    let mapped =
                        loader::Mapped { pid, start: m.start, end: m.end, dev: m.dev, inode: m.inode };
                    loader::binary(&mapped, path, root)
                }
                None => Err(Arc::from("not a file")),
            };
            mappings.push(Mapping { start: m.start, end: m.end, offset: m.offset, path, binary });
        }
        ProcessMap { mappings }
    }

    pub fn find(&self, address: u64) -> Option<&Mapping> {
        self.mappings.iter().find(|m| (m.start..m.end).contains(&address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(path: &str) -> Arc<str> {
        Arc::from(path)
    }

    /// Where section `name`'s header keeps its offset and size, in an
    /// ELF64 file's bytes.
    fn section_header(bytes: &[u8], name: &str) -> usize {
        let elf = object::File::parse(bytes).expect("an ELF file");
        let index = elf.section_by_name(name).expect("the section").index().0;
        let shoff = u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()) as usize;
        let entsize = u16::from_le_bytes(bytes[0x3a..0x3c].try_into().unwrap()) as usize;
        shoff + index * entsize
    }

    /// This test's own binary: built with symbols and lines.
    #[test]
    fn symbols_lines_and_unwind_tables_of_a_real_binary() {
        let file = File::open("/proc/self/exe").expect("own binary");
        let binary = Binary::load(file, named("self")).expect("loads");
        assert!(binary.unwind.text.is_some() && binary.unwind.eh_frame.is_some());
        assert!(binary.go.is_none());
        let (address, _, _) = binary
            .symbols
            .iter()
            .find(|(_, size, name)| *size > 1 && name.ends_with("modules::tests::named"))
            .expect("this file's own function is among the symbols")
            .clone();
        assert_eq!(binary.symbol(address + 1).map(|n| &**n), Some("sigvisor::stacks::modules::tests::named"));
        assert_eq!(binary.symbol_start(address + 1), Some(address));
        let (file, line) = binary.line(address).expect("a line from DWARF");
        assert!(file.ends_with("stacks/modules.rs") && line > 300, "{file}:{line}");
        assert!(binary.kept > 0 && binary.kept <= MAX_KEPT);
    }

    #[test]
    fn a_section_past_the_end_or_over_the_limit_is_refused() {
        let bytes = std::fs::read("/bin/true").expect("a small system binary");
        let len = bytes.len() as u64;
        assert!(Binary::parse(&bytes[..], len, named("/bin/true")).is_ok());
        let at = section_header(&bytes, ".eh_frame");
        let mut past = bytes.clone();
        past[at + 32..at + 40].copy_from_slice(&len.to_le_bytes());
        let why = Binary::parse(&past[..], len, named("past")).err().expect("refused");
        assert!(why.contains(".eh_frame claims") && why.contains("past the file's end"), "{why}");
        let mut huge = bytes.clone();
        huge[at + 32..at + 40].copy_from_slice(&(MAX_SECTION + 1).to_le_bytes());
        let why = Binary::parse(&huge[..], len, named("huge")).err().expect("refused");
        assert!(why.contains("MiB (the limit is 192 MiB)"), "{why}");
    }

    #[test]
    fn what_is_not_a_binary_is_refused() {
        for bytes in [&b""[..], b"#!/bin/sh\n", &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]] {
            assert!(Binary::parse(bytes, bytes.len() as u64, named("x")).is_err());
        }
        let bytes = std::fs::read("/bin/true").expect("a small system binary");
        for cut in [64, 1024, bytes.len() / 2] {
            // Cut short: its section headers (at the end) are gone.
            assert!(Binary::parse(&bytes[..cut], cut as u64, named("cut")).is_err(), "cut at {cut}");
        }
    }
}
