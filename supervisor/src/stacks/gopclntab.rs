//! Go's own function table, `.gopclntab`, read from outside: every
//! function's entry, name, frame size at each PC (`pcsp`) and file:line.
//! It is how Go's runtime unwinds its own stacks from PC and SP alone, and
//! it survives `strip` (it is allocated, the runtime needs it). Formats of
//! Go 1.18 and 1.19 (magic 0xfffffff0) and of Go 1.20 on (0xfffffff1), for
//! 64-bit targets. Pure parsing, no syscalls: unit-tested as it is.

/// Where a module's table is, and its layout.
pub struct Pclntab {
    data: Vec<u8>,
    min_lc: u64,
    nfunc: usize,
    /// The address functions' entry offsets count from, as linked.
    text_start: u64,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
}

/// One function of the table.
#[derive(Debug, Clone, Copy)]
pub struct Func {
    /// Its entry, as linked.
    pub entry: u64,
    /// Where its `_func` record is in the table.
    record: usize,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

fn uvarint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn cstr(data: &[u8], at: usize) -> Option<&str> {
    let bytes = data.get(at..)?;
    let end = bytes.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&bytes[..end]).ok()
}

impl Pclntab {
    /// Parses a `.gopclntab` section's bytes; `text` is the `.text`
    /// section's address, for tables whose header leaves it 0.
    pub fn parse(data: Vec<u8>, text: u64) -> Option<Pclntab> {
        let magic = u32_at(&data, 0)?;
        // Go 1.18-1.19, and 1.20 on: the fields read here did not move.
        if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
            return None;
        }
        if data.get(7) != Some(&8) {
            return None; // 32-bit pointers: not a target sigvisor supervises
        }
        let min_lc = u64::from(*data.get(6)?);
        let field = |i: usize| u64_at(&data, 8 + 8 * i).and_then(|v| usize::try_from(v).ok());
        let nfunc = field(0)?;
        let text_start = u64_at(&data, 24).filter(|&t| t != 0).unwrap_or(text);
        // nfunc, nfiles, textStart, then the tables' offsets.
        let (funcnames, cutab, filetab, pctab, functab) =
            (field(3)?, field(4)?, field(5)?, field(6)?, field(7)?);
        if functab.checked_add((nfunc + 1) * 8)? > data.len() {
            return None;
        }
        Some(Pclntab { data, min_lc, nfunc, text_start, funcnames, cutab, filetab, pctab, functab })
    }

    /// The function whose code holds `pc` (as linked).
    pub fn func(&self, pc: u64) -> Option<Func> {
        let offset = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let entry = |i: usize| u32_at(&self.data, self.functab + 8 * i);
        // The table is sorted by entry; its last entry ends the text.
        if offset >= entry(self.nfunc)? {
            return None;
        }
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if entry(mid)? <= offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if entry(lo)? > offset {
            return None;
        }
        let record = self.functab + u32_at(&self.data, self.functab + 8 * lo + 4)? as usize;
        let entry = self.text_start + u64::from(u32_at(&self.data, record)?);
        Some(Func { entry, record })
    }

    fn field(&self, f: Func, index: usize) -> Option<u32> {
        u32_at(&self.data, f.record + 4 * index)
    }

    pub fn name(&self, f: Func) -> Option<&str> {
        cstr(&self.data, self.funcnames + self.field(f, 1)? as usize)
    }

    /// The frame's size at `pc`, return address excluded.
    pub fn sp_delta(&self, f: Func, pc: u64) -> Option<i64> {
        self.pcvalue(f, self.field(f, 4)?, pc)
    }

    /// The source file and line of `pc`.
    pub fn file_line(&self, f: Func, pc: u64) -> Option<(&str, u32)> {
        let file = self.pcvalue(f, self.field(f, 5)?, pc)?;
        let line = self.pcvalue(f, self.field(f, 6)?, pc)?;
        let cu = self.field(f, 8)? as usize;
        let index = cu.checked_add(usize::try_from(file).ok()?)?;
        let offset = u32_at(&self.data, self.cutab + 4 * index)?;
        let name = cstr(&self.data, self.filetab + offset as usize)?;
        Some((name, u32::try_from(line).ok()?))
    }

    /// Whether the function is one Go's own traceback stops at: a
    /// goroutine's or a thread's first frame. By name: the runtime's
    /// funcID numbers changed between Go versions.
    pub fn is_root(&self, f: Func) -> bool {
        matches!(self.name(f), Some("runtime.goexit" | "runtime.mstart" | "runtime.rt0_go"))
    }

    /// A `pcvalue` table: (value delta, pc delta) pairs, varint-encoded,
    /// starting at -1 and the function's entry.
    fn pcvalue(&self, f: Func, table: u32, target: u64) -> Option<i64> {
        if table == 0 {
            return None;
        }
        let mut at = self.pctab.checked_add(table as usize)?;
        let (mut pc, mut value, mut first) = (f.entry, -1i64, true);
        loop {
            let delta = uvarint(&self.data, &mut at)?;
            if delta == 0 && !first {
                return None;
            }
            first = false;
            value += ((delta >> 1) as i64) ^ -((delta & 1) as i64);
            pc += uvarint(&self.data, &mut at)? * self.min_lc;
            if target < pc {
                return Some(value);
            }
        }
    }
}
