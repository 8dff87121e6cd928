//! Which binary holds an address in a process, and each binary's tables:
//! Go's `.gopclntab`, or the DWARF CFI (`.eh_frame`) and symbols of
//! C, C++ and Rust code, and its symbols. A binary is read once, by device and inode, for
//! every process that maps it, through `/proc/PID/map_files` (which reaches
//! into a container's filesystem as well as the host's).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use super::gopclntab::Pclntab;
use crate::shared;

/// Binaries kept loaded; past this, those no process uses are dropped.
const MAX_BINARIES: usize = 256;
/// The largest binary read for its tables (its frames show as addresses).
const MAX_BINARY_BYTES: u64 = 1 << 30;

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
}

impl Binary {
    fn load(mut file: File, path: Arc<str>) -> Option<Binary> {
        // Read whole, once; a binary past this size is not read at all.
        if file.metadata().ok()?.len() > MAX_BINARY_BYTES {
            return None;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let elf = object::File::parse(&*bytes).ok()?;
        let section = |name: &str| -> Option<Section> {
            let s = elf.section_by_name(name)?;
            let data = s.uncompressed_data().ok()?;
            Some((s.address()..s.address() + s.size(), Arc::from(&*data)))
        };
        let text = section(".text");
        let go = elf.section_by_name(".gopclntab").and_then(|s| {
            let data = s.uncompressed_data().ok()?.into_owned();
            Pclntab::parse(data, text.as_ref().map_or(0, |(r, _)| r.start))
        });
        let unwind = Unwind {
            text,
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            got: elf.section_by_name(".got").map(|s| s.address()..s.address() + s.size()),
        };
        // A separate debug file (a distribution's -dbg package) holds the
        // symbols and lines a stripped binary lacks, at the same addresses.
        let debug = debug_file(&elf);
        let debug_elf = debug.as_deref().and_then(|bytes| object::File::parse(bytes).ok());
        let mut symbols = function_symbols(&elf);
        if let Some(debug) = &debug_elf {
            symbols.extend(function_symbols(debug));
        }
        symbols.sort_by_key(|s| s.0);
        symbols.dedup_by_key(|s| s.0);
        // Only code is looked up: a non-executable segment may share the
        // code's first page (its page-aligned range overlaps), and would
        // give the wrong bias.
        let segments = elf
            .segments()
            .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0))
            .map(|s| {
                let (offset, size) = s.file_range();
                (s.address(), offset, size)
            })
            .collect();
        let lines = lines(&elf).or_else(|| lines(debug_elf.as_ref()?)).map(Mutex::new);
        Some(Binary { path, go, symbols, lines, unwind, segments })
    }

    /// The source file and line of `linked`, from DWARF.
    pub fn line(&self, linked: u64) -> Option<(Arc<str>, u32)> {
        let lines = shared::lock(self.lines.as_ref()?);
        let location = lines.find_location(linked).ok()??;
        Some((Arc::from(location.file?), location.line?))
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
        let end = if *size > 0 { address + size } else { self.symbols.get(i + 1).map_or(u64::MAX, |s| s.0) };
        (linked < end).then_some(name)
    }

    /// How far the binary is loaded from its linked addresses, given one of
    /// its code mappings: the address of linked address 0. A mapping starts
    /// on a page, its segment anywhere in it.
    pub fn bias(&self, mapping: &Mapping) -> Option<u64> {
        let page = |x: u64| x & !0xfff;
        let (vaddr, offset, _) = self
            .segments
            .iter()
            .find(|(_, off, size)| (page(*off)..off + size.max(&1)).contains(&mapping.offset))?;
        Some(mapping.start.wrapping_sub(page(*vaddr) + (mapping.offset - page(*offset))))
    }
}

type Lines = addr2line::Context<gimli::EndianArcSlice<gimli::RunTimeEndian>>;

/// Function symbols (`.symtab` and `.dynsym`), Rust names demangled.
fn function_symbols(elf: &object::File) -> Vec<(u64, u64, Arc<str>)> {
    elf.symbols()
        .chain(elf.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            // `{:#}`: Rust names without their hash suffix.
            Some((s.address(), s.size(), Arc::from(format!("{:#}", rustc_demangle::demangle(name)))))
        })
        .collect()
}

/// The bytes of the binary's separate debug file, found by its build id
/// under `/usr/lib/debug/.build-id` on this machine.
fn debug_file(elf: &object::File) -> Option<Vec<u8>> {
    let id = elf.build_id().ok()??;
    let (first, rest) = id.split_first()?;
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("/usr/lib/debug/.build-id/{first:02x}/{rest}.debug");
    let file = File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_BINARY_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    (&file).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// A binary's DWARF, for its lines; None without `.debug_info`.
fn lines(elf: &object::File) -> Option<Lines> {
    elf.section_by_name(".debug_info")?;
    let endian =
        if elf.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let dwarf = gimli::Dwarf::load(|id| -> Result<_, gimli::Error> {
        let data = elf.section_by_name(id.name()).and_then(|s| s.uncompressed_data().ok());
        Ok(gimli::EndianArcSlice::new(Arc::from(data.as_deref().unwrap_or_default()), endian))
    })
    .ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// A mapped range of a process.
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// The binary, for an executable file mapping.
    pub binary: Option<Arc<Binary>>,
}

/// Every mapping of one process, read at once.
pub struct ProcessMap {
    pub mappings: Vec<Mapping>,
}

impl ProcessMap {
    /// Reads `/proc/PID/maps`; binaries come from `cache` or are loaded.
    pub fn read(pid: i32) -> Option<ProcessMap> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let mut mappings = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (range, perms, offset, dev, inode) =
                (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            let path = fields.collect::<Vec<_>>().join(" ");
            let (start, end) = range.split_once('-')?;
            let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
            let offset = u64::from_str_radix(offset, 16).ok()?;
            let inode: u64 = inode.parse().ok()?;
            let binary = (perms.contains('x') && inode != 0)
                .then(|| binary(pid, start, end, dev, inode, &path))
                .flatten();
            mappings.push(Mapping { start, end, offset, binary });
        }
        Some(ProcessMap { mappings })
    }

    pub fn find(&self, address: u64) -> Option<&Mapping> {
        self.mappings.iter().find(|m| (m.start..m.end).contains(&address))
    }
}

/// The binary mapped at `range` in `pid`, from the cache or loaded.
fn binary(pid: i32, start: u64, end: u64, dev: &str, inode: u64, path: &str) -> Option<Arc<Binary>> {
    /// Binaries by device and inode.
    type Cache = Mutex<HashMap<(String, u64), Arc<Binary>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (dev.to_owned(), inode);
    if let Some(known) = shared::lock(CACHE.get_or_init(Default::default)).get(&key) {
        return Some(Arc::clone(known));
    }
    // Loaded without the lock: a binary is megabytes; another thread that
    // loads it meanwhile only duplicates work.
    // map_files names ranges without the leading zeros maps shows.
    let loaded = File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
        .ok()
        .and_then(|file| Binary::load(file, Arc::from(path)))
        .map(Arc::new);
    match &loaded {
        // Not remembered: it may be readable next time.
        None => tracing::debug!("stacks: cannot read {path} (pid {pid}): its frames show as addresses"),
        Some(binary) => {
            let mut cache = shared::lock(CACHE.get_or_init(Default::default));
            if cache.len() >= MAX_BINARIES {
                // Only binaries no process view holds any more go.
                cache.retain(|_, b| Arc::strong_count(b) > 1);
            }
            cache.insert(key, Arc::clone(binary));
        }
    }
    loaded
}
