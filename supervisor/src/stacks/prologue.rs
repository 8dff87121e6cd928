//! The frame pointer of a function built with frame pointers, found from
//! its prologue, because `/proc/TID/syscall` does not give RBP.
//!
//! GCC's and Clang's prologue for such a function is `push %rbp; mov
//! %rsp,%rbp`, then pushes of callee-saved registers and `sub $N,%rsp`
//! (register moves scheduled between them); at
//! every call the function makes, RSP = RBP - 8·pushes - N (x86_64 passes
//! arguments in registers). So RBP = RSP at the call + that distance. Any
//! other shape (stack realignment, `alloca`) is refused: no guess.
//! Pure decoding, unit-tested as it is.

/// The distance from RSP at the function's call sites up to its RBP, from
/// the function's first bytes; None if the prologue is not the plain one.
/// Compilers interleave register moves with the pushes; those are stepped
/// over (a few instruction forms that never touch RSP), anything else ends
/// the decoding with no answer.
pub fn frame_pointer_distance(code: &[u8]) -> Option<u64> {
    let mut at = 0;
    // endbr64 (CET).
    if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        at += 4;
    }
    // push %rbp, first.
    if code.get(at) != Some(&0x55) {
        return None;
    }
    at += 1;
    // Pushes count once RBP is set (`mov %rsp,%rbp`): they are below it.
    let (mut framed, mut pushed) = (false, 0u64);
    // Bounded: a prologue is short.
    for _ in 0..32 {
        if code.get(at..at + 3)? == [0x48, 0x89, 0xe5] {
            framed = true;
            at += 3;
            continue;
        }
        let rex = matches!(code.get(at)?, 0x40..=0x4f);
        let rex_bits = if rex { code[at] } else { 0 };
        let op_at = at + usize::from(rex);
        let op = *code.get(op_at)?;
        let modrm = code.get(op_at + 1).copied();
        // REX.R and REX.B extend the two register numbers.
        let reg = modrm.map(|m| ((m >> 3) & 7) | ((rex_bits & 4) << 1));
        let rm = modrm.map(|m| (m & 7) | ((rex_bits & 1) << 3));
        let mode = modrm.map(|m| m >> 6);
        match op {
            // push %reg
            0x50..=0x57 => {
                pushed += u64::from(framed);
                at = op_at + 1;
            }
            // sub $imm,%rsp: the frame's size; the prologue is over.
            0x83 if modrm == Some(0xec) && framed => {
                let n = *code.get(op_at + 2)?;
                return (n < 0x80).then(|| 8 * pushed + u64::from(n));
            }
            0x81 if modrm == Some(0xec) && framed => {
                let imm = code.get(op_at + 2..op_at + 6)?;
                return Some(8 * pushed + u64::from(u32::from_le_bytes([imm[0], imm[1], imm[2], imm[3]])));
            }
            // An arithmetic immediate on another register.
            0x83 if mode == Some(3) && rm != Some(4) => at = op_at + 3,
            0x81 if mode == Some(3) && rm != Some(4) => at = op_at + 6,
            // Register to register: mov, xor, add, sub, and, or, cmp, test.
            0x89 | 0x8b | 0x31 | 0x33 | 0x01 | 0x03 | 0x29 | 0x2b | 0x21 | 0x23 | 0x09 | 0x0b | 0x39
            | 0x3b | 0x85
                if mode == Some(3) =>
            {
                let writes = if matches!(op, 0x8b | 0x33 | 0x03 | 0x2b | 0x23 | 0x0b) { reg } else { rm };
                if writes == Some(4) && !matches!(op, 0x39 | 0x3b | 0x85) {
                    return None;
                }
                at = op_at + 2;
            }
            // lea disp(%rip),%reg and lea disp(%reg),%reg (no SIB), never to RSP.
            0x8d if reg != Some(4) && modrm.is_some_and(|m| m & 7 != 4) => {
                at = op_at
                    + match mode? {
                        0 if modrm? & 7 == 5 => 6,
                        1 => 3,
                        2 => 6,
                        _ => return None,
                    };
            }
            // mov $imm32,%reg (never RSP: it is 0xbc)
            0xb8..=0xbb | 0xbd..=0xbf => at = op_at + if rex_bits & 8 != 0 { 9 } else { 5 },
            // The first call or jump: the frame is what the prologue made.
            0xe8 | 0xe9 | 0xeb | 0x70..=0x7f if framed => return Some(8 * pushed),
            0x0f if framed && code.get(op_at + 1).is_some_and(|b| (0x80..=0x8f).contains(b)) => {
                return Some(8 * pushed)
            }
            // Anything else: the distance is not known from here on.
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prologues() {
        // push %rbp; mov %rsp,%rbp; push %r12; push %rbx; sub $0x20,%rsp
        let code = [0x55, 0x48, 0x89, 0xe5, 0x41, 0x54, 0x53, 0x48, 0x83, 0xec, 0x20];
        assert_eq!(frame_pointer_distance(&code), Some(16 + 0x20));
        let endbr = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x48, 0x81, 0xec, 0x00, 0x01, 0, 0];
        assert_eq!(frame_pointer_distance(&endbr), Some(0x100));
        // A return before any call: not a prologue that reaches a call.
        assert_eq!(frame_pointer_distance(&[0x55, 0x48, 0x89, 0xe5, 0xc3]), None);
    }

    #[test]
    fn moves_between_pushes_as_gcc_schedules_them() {
        // push %rbp; mov %rsp,%rbp; push %r15; push %r14; push %r13;
        // mov %rdi,%r13; push %r12; xor %r12d,%r12d; push %rbx; sub $0x28,%rsp
        let code = [
            0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x41, 0x55, 0x49, 0x89, 0xfd, 0x41, 0x54, 0x45,
            0x31, 0xe4, 0x53, 0x48, 0x83, 0xec, 0x28,
        ];
        assert_eq!(frame_pointer_distance(&code), Some(5 * 8 + 0x28));
    }

    #[test]
    fn no_sub_and_a_lea_before_rbp_is_set() {
        // push %rbp; lea 0x11bc(%rip),%rdi; mov %rsp,%rbp; push %r12;
        // push %rbx; call opendir
        let code = [
            0x55, 0x48, 0x8d, 0x3d, 0xbc, 0x11, 0, 0, 0x48, 0x89, 0xe5, 0x41, 0x54, 0x53, 0xe8, 0x5d, 0xf2,
            0xff, 0xff,
        ];
        assert_eq!(frame_pointer_distance(&code), Some(16));
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(frame_pointer_distance(&[0x48, 0x83, 0xec, 0x08]), None);
        let realigned = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xe4, 0xf0];
        assert_eq!(frame_pointer_distance(&realigned), None);
        assert_eq!(frame_pointer_distance(&[0x55]), None);
    }
}
