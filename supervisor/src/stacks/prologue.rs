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
//!
//! And the check every recovered caller passes: a return address is only
//! ever pushed by a call, so the bytes just before it decode as one
//! (`follows_call`). A guess that lands elsewhere on the stack (a table of
//! function pointers, saved data) almost never does.

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

/// Bytes before a return address that `follows_call` looks at: the
/// longest call form is 9 (`3e 41 ff 94 24` and a disp32).
pub const CALL_WINDOW: usize = 10;

/// Whether `before` (the bytes that end just before a return address) ends
/// with a call instruction: `call rel32`, or `call r/m64` (`ff /2`, any
/// addressing form) after optional prefixes (REX, `notrack`, segment,
/// operand and address size).
pub fn follows_call(before: &[u8]) -> bool {
    let n = before.len();
    if n >= 5 && before[n - 5] == 0xe8 {
        return true;
    }
    (2..=n).any(|len| {
        let insn = &before[n - len..];
        let prefixes = insn
            .iter()
            .take_while(|b| matches!(b, 0x40..=0x4f | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67))
            .count();
        let rest = &insn[prefixes..];
        match rest {
            [0xff, modrm, ..] if (modrm >> 3) & 7 == 2 => {
                rm_length(*modrm, rest.get(2).copied()) == Some(rest.len() - 1)
            }
            _ => false,
        }
    })
}

/// Length of a ModRM operand: the ModRM byte, its SIB byte and displacement.
fn rm_length(modrm: u8, sib: Option<u8>) -> Option<usize> {
    let (mode, rm) = (modrm >> 6, modrm & 7);
    let sib_len = usize::from(mode != 3 && rm == 4);
    Some(
        1 + sib_len
            + match mode {
                0 if rm == 5 => 4,
                0 if rm == 4 && sib? & 7 == 5 => 4,
                0 | 3 => 0,
                1 => 1,
                _ => 4,
            },
    )
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

    #[test]
    fn calls_are_recognised_before_their_return_address() {
        let calls: &[&[u8]] = &[
            &[0xe8, 0x5d, 0xf2, 0xff, 0xff],             // call rel32
            &[0xff, 0xd0],                               // call *%rax
            &[0x41, 0xff, 0xd4],                         // call *%r12
            &[0x3e, 0xff, 0xd2],                         // notrack call *%rdx
            &[0xff, 0x15, 0x10, 0x20, 0x30, 0x00],       // call *disp32(%rip)
            &[0xff, 0x50, 0x18],                         // call *0x18(%rax)
            &[0xff, 0x14, 0x24],                         // call *(%rsp)
            &[0x41, 0xff, 0x54, 0x24, 0x08],             // call *0x8(%r12)
            &[0xff, 0x94, 0xc8, 0x00, 0x01, 0x00, 0x00], // call *0x100(%rax,%rcx,8)
            &[0xff, 0x14, 0xc5, 0x00, 0x10, 0x00, 0x00], // call *0x1000(,%rax,8)
        ];
        for call in calls {
            // Whatever precedes it in the window.
            let before = [&[0x90u8, 0x48, 0x89, 0xc7][..], call].concat();
            assert!(follows_call(&before), "{call:x?}");
        }
    }

    #[test]
    fn other_code_before_an_address_is_no_call() {
        // The end of a function and padding (what precedes the next
        // function's start, a function pointer's value).
        assert!(!follows_call(&[0x5d, 0xc3, 0x0f, 0x1f, 0x44, 0x00, 0x00]));
        assert!(!follows_call(&[0xc3, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0]));
        assert!(!follows_call(&[0xcc, 0xcc, 0xcc, 0xcc]));
        // jmp *%rax (ff /4), and a push: not calls.
        assert!(!follows_call(&[0x90, 0xff, 0xe0]));
        assert!(!follows_call(&[0x90, 0x55]));
        assert!(!follows_call(&[]));
    }
}
