//! Go's own function table, `.gopclntab`, read from outside: every
//! function's entry, name, frame size at each PC (`pcsp`) and file:line.
//! It is how Go's runtime unwinds its own stacks from PC and SP alone, and
//! it survives `strip` (it is allocated, the runtime needs it). Formats of
//! Go 1.18 and 1.19 (magic 0xfffffff0) and of Go 1.20 on (0xfffffff1), for
//! 64-bit targets. Pure parsing, no syscalls: unit-tested as it is.
//!
//! Every value here comes from a binary the target controls: offsets and
//! counts are checked (no arithmetic can wrap), names are bounded, and the
//! one scan that grows with the table (`pcvalue`) spends a `Budget`.

/// The longest function or file name read.
const MAX_NAME: usize = 4096;

/// How many table steps one capture may take: a table of any size (a
/// hostile pcsp table of 256 MiB) costs at most this much, then the stack
/// ends with the reason.
#[derive(Debug)]
pub struct Budget(u64);

impl Budget {
    pub const fn new(steps: u64) -> Budget {
        Budget(steps)
    }

    /// Takes one step; false once the budget is spent.
    fn step(&mut self) -> bool {
        self.0 = self.0.saturating_sub(1);
        self.0 > 0
    }

    pub fn spent(&self) -> bool {
        self.0 == 0
    }
}

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
    Some(u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// `base + 4 * index` (or 8), None if it overflows.
fn index(base: usize, index: usize, width: usize) -> Option<usize> {
    base.checked_add(index.checked_mul(width)?)
}

fn uvarint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at = at.checked_add(1)?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn cstr(data: &[u8], at: usize) -> Option<&str> {
    let bytes = data.get(at..)?;
    let end = bytes.iter().take(MAX_NAME).position(|&b| b == 0)?;
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
        if index(functab, nfunc.checked_add(1)?, 8)? > data.len() {
            return None;
        }
        Some(Pclntab { data, min_lc, nfunc, text_start, funcnames, cutab, filetab, pctab, functab })
    }

    /// The function whose code holds `pc` (as linked).
    pub fn func(&self, pc: u64) -> Option<Func> {
        let offset = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let entry = |i: usize| u32_at(&self.data, index(self.functab, i, 8)?);
        // The table is sorted by entry; its last entry ends the text.
        if offset >= entry(self.nfunc)? {
            return None;
        }
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if entry(mid)? <= offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if entry(lo)? > offset {
            return None;
        }
        let record = self
            .functab
            .checked_add(u32_at(&self.data, index(self.functab, lo, 8)?.checked_add(4)?)? as usize)?;
        let entry = self.text_start.checked_add(u64::from(u32_at(&self.data, record)?))?;
        Some(Func { entry, record })
    }

    fn field(&self, f: Func, index: usize) -> Option<u32> {
        u32_at(&self.data, self::index(f.record, index, 4)?)
    }

    pub fn name(&self, f: Func) -> Option<&str> {
        cstr(&self.data, self.funcnames.checked_add(self.field(f, 1)? as usize)?)
    }

    /// The frame's size at `pc`, return address excluded.
    pub fn sp_delta(&self, f: Func, pc: u64, budget: &mut Budget) -> Option<i64> {
        self.pcvalue(f, self.field(f, 4)?, pc, budget)
    }

    /// The source file and line of `pc`.
    pub fn file_line(&self, f: Func, pc: u64, budget: &mut Budget) -> Option<(&str, u32)> {
        let file = self.pcvalue(f, self.field(f, 5)?, pc, budget)?;
        let line = self.pcvalue(f, self.field(f, 6)?, pc, budget)?;
        let cu = self.field(f, 8)? as usize;
        let at = cu.checked_add(usize::try_from(file).ok()?)?;
        let offset = u32_at(&self.data, index(self.cutab, at, 4)?)?;
        let name = cstr(&self.data, self.filetab.checked_add(offset as usize)?)?;
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
    fn pcvalue(&self, f: Func, table: u32, target: u64, budget: &mut Budget) -> Option<i64> {
        if table == 0 {
            return None;
        }
        let mut at = self.pctab.checked_add(table as usize)?;
        let (mut pc, mut value, mut first) = (f.entry, -1i64, true);
        loop {
            if !budget.step() {
                return None;
            }
            let delta = uvarint(&self.data, &mut at)?;
            if delta == 0 && !first {
                return None;
            }
            first = false;
            value = value.wrapping_add(((delta >> 1) as i64) ^ -((delta & 1) as i64));
            pc = pc.checked_add(uvarint(&self.data, &mut at)?.checked_mul(self.min_lc)?)?;
            if target < pc {
                return Some(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: u64 = 0x40_1000;

    fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A pcvalue table: each (value, bytes of code it holds for).
    fn pcvalue_table(runs: &[(i64, u64)]) -> Vec<u8> {
        let (mut out, mut prev) = (Vec::new(), -1i64);
        for &(value, len) in runs {
            let delta = value - prev;
            put_uvarint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
            put_uvarint(&mut out, len);
            prev = value;
        }
        out.push(0);
        out
    }

    /// A Go 1.20 table of two functions, as the linker lays it out:
    /// `main.main` at TEXT (frame 0 for 4 bytes, then 0x18; lines 10, 11)
    /// and `runtime.goexit` at TEXT+0x40, text ending at TEXT+0x60.
    fn table(edit: impl FnOnce(&mut Vec<u8>)) -> Option<Pclntab> {
        let names = b"main.main\0runtime.goexit\0";
        let cutab = 0u32.to_le_bytes();
        let filetab = b"/src/main.go\0";
        let mut pctab = vec![0u8]; // offset 0 means "no table"
        let mut add = |t: Vec<u8>| {
            let at = pctab.len() as u32;
            pctab.extend(t);
            at
        };
        let sp = add(pcvalue_table(&[(0, 4), (0x18, 0x3c)]));
        let file = add(pcvalue_table(&[(0, 0x40)]));
        let line = add(pcvalue_table(&[(10, 8), (11, 0x38)]));
        let goexit_sp = add(pcvalue_table(&[(0, 0x20)]));
        let header = 8 + 8 * 8;
        let funcnames = header;
        let cu = funcnames + names.len();
        let files = cu + cutab.len();
        let pc = files + filetab.len();
        let functab = pc + pctab.len();
        let mut data = Vec::new();
        data.extend(0xffff_fff1u32.to_le_bytes());
        data.extend([0, 0, 1, 8]); // pad, pad, minLC, ptrSize
        for word in [2, 1, TEXT, funcnames as u64, cu as u64, files as u64, pc as u64, functab as u64] {
            data.extend(word.to_le_bytes());
        }
        data.extend(names);
        data.extend(cutab);
        data.extend(filetab);
        data.extend(&pctab);
        // functab: (entry offset, record offset) per function, then the end.
        let records = 3 * 8;
        let record_len = 9 * 4;
        for (i, entry) in [0u32, 0x40].into_iter().enumerate() {
            data.extend(entry.to_le_bytes());
            data.extend(((records + i * record_len) as u32).to_le_bytes());
        }
        data.extend(0x60u32.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        // _func: entryOff, nameOff, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset.
        for field in [0, 0, 0, 0, sp, file, line, 0, 0] {
            data.extend(field.to_le_bytes());
        }
        for field in [0x40, 10, 0, 0, goexit_sp, 0, 0, 0, 0] {
            data.extend(field.to_le_bytes());
        }
        edit(&mut data);
        Pclntab::parse(data, 0)
    }

    #[test]
    fn functions_frames_and_lines() {
        let t = table(|_| {}).expect("a valid table");
        let mut budget = Budget::new(1000);
        let main = t.func(TEXT + 0x10).expect("main.main holds it");
        assert_eq!((main.entry, t.name(main)), (TEXT, Some("main.main")));
        assert_eq!(t.sp_delta(main, TEXT, &mut budget), Some(0));
        assert_eq!(t.sp_delta(main, TEXT + 0x10, &mut budget), Some(0x18));
        assert_eq!(t.file_line(main, TEXT + 2, &mut budget), Some(("/src/main.go", 10)));
        assert_eq!(t.file_line(main, TEXT + 0x3f, &mut budget), Some(("/src/main.go", 11)));
        assert!(!t.is_root(main));
        let goexit = t.func(TEXT + 0x5f).expect("runtime.goexit holds it");
        assert_eq!(t.name(goexit), Some("runtime.goexit"));
        assert!(t.is_root(goexit));
        assert_eq!(t.file_line(goexit, TEXT + 0x41, &mut budget), None, "no line table");
        assert!(t.func(TEXT + 0x60).is_none(), "the text ends there");
        assert!(t.func(TEXT - 1).is_none());
        assert!(t.func(u64::MAX).is_none());
    }

    #[test]
    fn a_spent_budget_ends_the_scan() {
        let t = table(|_| {}).expect("a valid table");
        let main = t.func(TEXT).expect("main.main");
        let mut budget = Budget::new(2);
        assert_eq!(t.sp_delta(main, TEXT + 0x10, &mut budget), None);
        assert!(budget.spent());
    }

    #[test]
    fn hostile_headers_and_offsets_are_refused() {
        assert!(table(|d| d[0] = 0).is_none(), "not a pclntab magic");
        assert!(table(|d| d[7] = 4).is_none(), "32-bit pointers");
        assert!(table(|d| d[8..16].copy_from_slice(&u64::MAX.to_le_bytes())).is_none(), "nfunc overflows");
        assert!(
            table(|d| d[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes())).is_none(),
            "nfunc past the end"
        );
        assert!(table(|d| d.truncate(40)).is_none(), "a header cut short");
        // Offsets that point past the data give no name, frame or line.
        let t = table(|d| d[32..40].copy_from_slice(&u64::MAX.to_le_bytes())).expect("parses");
        let main = t.func(TEXT).expect("main.main");
        assert_eq!(t.name(main), None);
        let t = table(|d| d[56..64].copy_from_slice(&(u64::MAX / 2).to_le_bytes())).expect("parses");
        let main = t.func(TEXT).expect("main.main");
        assert_eq!(t.sp_delta(main, TEXT, &mut Budget::new(100)), None);
    }

    #[test]
    fn names_are_bounded() {
        let long = vec![b'x'; MAX_NAME + 10];
        assert_eq!(cstr(&long, 0), None, "no terminator within the limit");
        assert_eq!(cstr(b"ok\0", 0), Some("ok"));
        assert_eq!(cstr(b"\xff\0", 0), None, "not UTF-8");
        let mut at = 0;
        assert_eq!(uvarint(&[0xff; 11], &mut at), None, "a varint of over 64 bits");
    }
}
