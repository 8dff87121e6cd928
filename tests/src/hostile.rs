//! Hostile tenants, as the tests and the benchmark make them: a static
//! program (tests/fixtures/hostile.c) and crafted copies of it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The hostile fixture.
pub fn program() -> &'static str {
    env!("SIGVISOR_FIXTURE_HOSTILE")
}

/// A copy of the hostile fixture in `dir` with a `.gopclntab` whose
/// frame-size table is `table` bytes of steps that never reach a PC.
pub fn with_crafted_pclntab(dir: &Path, table: usize) -> PathBuf {
    let section = dir.join("pclntab.bin");
    std::fs::write(&section, crafted_pclntab(table)).expect("write the table");
    let binary = dir.join("hostile-pclntab");
    let out = Command::new("objcopy")
        .arg("--add-section")
        .arg(format!(".gopclntab={}", section.display()))
        .arg(program())
        .arg(&binary)
        .output()
        .expect("objcopy (binutils)");
    assert!(out.status.success(), "objcopy: {}", String::from_utf8_lossy(&out.stderr));
    binary
}

/// A sparse copy of the hostile fixture in `dir` (3 GiB long, a few MiB on
/// disk) whose `.eh_frame` claims 1000 MiB.
pub fn sparse(dir: &Path) -> PathBuf {
    let binary = dir.join("hostile-sparse");
    std::fs::copy(program(), &binary).expect("copy");
    claim_huge_eh_frame(&binary);
    binary
}

/// A Go 1.20 `.gopclntab` of one function covering all text, named
/// `main.hostile`, whose frame-size table holds `table` bytes of +1/-1
/// steps with no PC advance: a scan for any PC runs to its end.
fn crafted_pclntab(table: usize) -> Vec<u8> {
    let name = b"main.hostile\0";
    let (funcnames, functab) = (72usize, 72 + name.len());
    let record = 16; // from functab: two (entry, offset) pairs
    let func_len = 44; // eleven u32 fields
    let pctab = functab + record + func_len;
    let mut t = Vec::with_capacity(pctab + table + 1);
    t.extend_from_slice(&0xffff_fff1u32.to_le_bytes());
    t.extend_from_slice(&[0, 0, 1, 8]); // pad, minLC 1, pointers of 8
    for field in [1u64, 0, 0, funcnames as u64, 0, 0, pctab as u64, functab as u64] {
        t.extend_from_slice(&field.to_le_bytes());
    }
    t.extend_from_slice(name);
    // functab: function 0 at text offset 0, its record; the end of text.
    for word in [0u32, record as u32, u32::MAX, 0] {
        t.extend_from_slice(&word.to_le_bytes());
    }
    // _func: entry 0, name 0, args, deferreturn, pcsp 1, pcfile 0, pcln 0, ...
    for word in [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0] {
        t.extend_from_slice(&word.to_le_bytes());
    }
    t.push(0);
    // (value +1, pc +0), (value -1, pc +0), ... : never past the PC.
    t.extend(std::iter::repeat_n([2u8, 0, 1, 0], table / 4).flatten());
    t
}

/// Makes `binary` 3 GiB long by a hole at its end, and points its
/// `.eh_frame` section header at 1000 MiB of that hole. The kernel loads it
/// by its program headers, which do not change: it still runs.
fn claim_huge_eh_frame(binary: &Path) {
    let mut elf = std::fs::read(binary).expect("read");
    let u16_at = |e: &[u8], at: usize| u16::from_le_bytes([e[at], e[at + 1]]) as usize;
    let u64_at =
        |e: &[u8], at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes")) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(&elf, 0x28), u16_at(&elf, 0x3a), u16_at(&elf, 0x3c), u16_at(&elf, 0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(&elf, header(shstrndx) + 24);
    let named = (0..shnum).find(|&i| {
        let name = strtab + u32::from_le_bytes(elf[header(i)..header(i) + 4].try_into().expect("4")) as usize;
        elf[name..].starts_with(b".eh_frame\0")
    });
    let at = header(named.expect("the binary has .eh_frame"));
    elf[at + 24..at + 32].copy_from_slice(&(1u64 << 30).to_le_bytes());
    elf[at + 32..at + 40].copy_from_slice(&(1000u64 << 20).to_le_bytes());
    std::fs::write(binary, &elf).expect("write");
    std::fs::File::options().write(true).open(binary).and_then(|f| f.set_len(3 << 30)).expect("extend");
}
