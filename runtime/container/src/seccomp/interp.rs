//! A classic-BPF interpreter for the instructions of the seccomp programs
//! rt and seccompiler emit, over one `seccomp_data`: what a filter answers
//! for a syscall without loading it. The equivalence tests run the one
//! program and the stack through it; the init asks it whether a profile
//! lets rt's own last syscalls through before it loads the profile early
//! ([`super::Filters::allows`]).

use seccompiler::sock_filter;

use super::program::{
    ALU_AND_K, ALU_LSH_X, ARCH, ARGS, JA, JEQ_K, JGE_K, JGT_K, JSET_K, LD_IMM, LD_W_ABS, NR, RET_K,
    TAX,
};

/// The return value of `prog` for the syscall `nr` of `arch` with `args`.
/// None for an instruction it does not model, a load outside
/// `seccomp_data`'s fields or a program that runs off its end (the kernel
/// would have refused to load such a program).
pub fn run(prog: &[sock_filter], arch: u32, nr: u32, args: &[u64; 6]) -> Option<u32> {
    let word = |off: u32| -> Option<u32> {
        match off {
            NR => Some(nr),
            ARCH => Some(arch),
            o if (ARGS..ARGS + 48).contains(&o) && (o - ARGS).is_multiple_of(4) => {
                let v = args[((o - ARGS) / 8) as usize];
                // Little-endian: the low half first.
                Some(if (o - ARGS).is_multiple_of(8) {
                    v as u32
                } else {
                    (v >> 32) as u32
                })
            }
            _ => None,
        }
    };
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    // Every jump goes forward, so the walk ends within `prog.len()` steps.
    loop {
        let i = prog.get(pc)?;
        pc += 1;
        let skip = |c: bool| usize::from(if c { i.jt } else { i.jf });
        match i.code {
            LD_W_ABS => a = word(i.k)?,
            LD_IMM => a = i.k,
            TAX => x = a,
            // The kernel's shift by X: x86 takes the count mod 32.
            ALU_LSH_X => a = a.wrapping_shl(x),
            ALU_AND_K => a &= i.k,
            JA => pc += i.k as usize,
            JEQ_K => pc += skip(a == i.k),
            JGT_K => pc += skip(a > i.k),
            JGE_K => pc += skip(a >= i.k),
            JSET_K => pc += skip(a & i.k != 0),
            RET_K => return Some(i.k),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
        sock_filter { code, jt, jf, k }
    }

    #[test]
    fn walks_jumps_and_reads_both_halves_of_an_argument() {
        // nr == 1 && args[0].hi == 2 ? ALLOW : ERRNO(1)
        let prog = [
            ins(LD_W_ABS, 0, 0, NR),
            ins(JEQ_K, 0, 3, 1),
            ins(LD_W_ABS, 0, 0, ARGS + 4),
            ins(JEQ_K, 0, 1, 2),
            ins(RET_K, 0, 0, 0x7fff_0000),
            ins(RET_K, 0, 0, 0x0005_0001),
        ];
        assert_eq!(
            run(&prog, 0, 1, &[2 << 32, 0, 0, 0, 0, 0]),
            Some(0x7fff_0000)
        );
        assert_eq!(run(&prog, 0, 1, &[2, 0, 0, 0, 0, 0]), Some(0x0005_0001));
        assert_eq!(
            run(&prog, 0, 2, &[2 << 32, 0, 0, 0, 0, 0]),
            Some(0x0005_0001)
        );
    }

    #[test]
    fn refuses_what_it_does_not_model() {
        // An unknown opcode, a load past seccomp_data, running off the end.
        assert_eq!(run(&[ins(0x61, 0, 0, 0)], 0, 0, &[0; 6]), None);
        assert_eq!(run(&[ins(LD_W_ABS, 0, 0, 64)], 0, 0, &[0; 6]), None);
        assert_eq!(run(&[ins(LD_IMM, 0, 0, 0)], 0, 0, &[0; 6]), None);
        assert_eq!(
            run(&[ins(JA, 0, 0, 5), ins(RET_K, 0, 0, 0)], 0, 0, &[0; 6]),
            None
        );
    }
}
