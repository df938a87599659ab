//! The x86_64 family of ABIs one filter has to cover.
//!
//! A process on x86_64 can enter the kernel through three ABIs: native x86_64,
//! x32 (x86_64's audit arch with bit 30 set in the syscall number) and i386
//! (`int $0x80`, a different audit arch and its own numbers). seccompiler
//! compiles for one audit arch and kills every other, so rt:
//! - adds a small *gate* filter that kills any ABI the profile does not list
//!   (as libseccomp's bad-arch action does) and allows the others through;
//! - compiles the rules once per listed ABI with that ABI's syscall table, and
//!   rewrites the arch check at the head of each compiled filter so that a
//!   call from another ABI passes it (the gate has already judged it).
//!
//! x32 numbers share the x86_64 audit arch, so they go into the x86_64
//! filters: a name maps to both numbers there.

use oci_spec::runtime::Arch;
use seccompiler::{sock_filter, BpfProgram};

use super::{x32, x86, x86_64};

/// `AUDIT_ARCH_X86_64` and `AUDIT_ARCH_I386` (linux/audit.h).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// Set in the syscall number of every x32 call.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

// Classic BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// The ABIs a profile lets in, besides native x86_64 (always allowed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Abis {
    pub x86: bool,
    pub x32: bool,
}

impl Abis {
    /// Reads `architectures`; ABIs of other machines cannot occur on x86_64
    /// and are ignored, as libseccomp ignores them on this host.
    pub fn from_spec(arches: &[Arch]) -> Self {
        Abis {
            x86: arches.contains(&Arch::ScmpArchX86),
            x32: arches.contains(&Arch::ScmpArchX32),
        }
    }
}

/// Which table a filter is compiled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// x86_64, plus x32 numbers when x32 is allowed.
    Native {
        x32: bool,
    },
    I386,
}

/// Slots of an [`Index`]: a power of two over twice the largest table.
const SLOTS: usize = 1024;

/// An open-addressing hash index of one table's names (FNV-1a, linear
/// probing), built by the compiler: a name costs a hash and, mostly, one
/// comparison. A binary search per name and table was two thirds of
/// compiling the default profile (some 350 names, in up to three tables, for
/// every container). Written out rather than taken from `phf`, whose maps
/// are literals in a macro: these tables are plain lists generated from the
/// kernel's headers.
struct Index {
    table: &'static [(&'static str, i64)],
    /// 1 + the entry's position in `table`; 0 is empty.
    slots: [u16; SLOTS],
}

const fn fnv1a(bytes: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h as usize
}

impl Index {
    const fn of(table: &'static [(&'static str, i64)]) -> Index {
        assert!(
            table.len() * 2 <= SLOTS,
            "syscall table too large for its index"
        );
        let mut slots = [0u16; SLOTS];
        let mut i = 0;
        while i < table.len() {
            let mut h = fnv1a(table[i].0.as_bytes()) & (SLOTS - 1);
            while slots[h] != 0 {
                h = (h + 1) & (SLOTS - 1);
            }
            slots[h] = (i + 1) as u16;
            i += 1;
        }
        Index { table, slots }
    }

    /// `name`'s number.
    fn get(&self, name: &str) -> Option<i64> {
        let mut h = fnv1a(name.as_bytes()) & (SLOTS - 1);
        loop {
            let at = usize::from(self.slots[h]).checked_sub(1)?;
            let (n, nr) = self.table[at];
            if n == name {
                return Some(nr);
            }
            h = (h + 1) & (SLOTS - 1);
        }
    }
}

static NATIVE: Index = Index::of(x86_64::SYSCALLS);
static X32: Index = Index::of(x32::SYSCALLS);
static I386: Index = Index::of(x86::SYSCALLS);

/// The numbers `name` has in `table`; none when the ABI lacks the call (it
/// is then skipped, as libseccomp does).
pub fn numbers(table: Table, name: &str) -> impl Iterator<Item = i64> {
    let (first, x32) = match table {
        Table::Native { x32 } => (
            NATIVE.get(name),
            x32.then(|| X32.get(name))
                .flatten()
                .map(|n| n | i64::from(X32_SYSCALL_BIT)),
        ),
        Table::I386 => (I386.get(name), None),
    };
    first.into_iter().chain(x32)
}

/// The x86_64 number of `name`.
pub fn native(name: &str) -> Option<i64> {
    NATIVE.get(name)
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The gate: kills calls through an ABI the profile does not list.
pub fn gate(abis: Abis) -> BpfProgram {
    let verdict = |allowed: bool| if allowed { RET_ALLOW } else { RET_KILL_PROCESS };
    vec![
        stmt(LD_W_ABS, ARCH_OFFSET),
        jump(JEQ_K, AUDIT_ARCH_I386, 0, 1),
        stmt(RET_K, verdict(abis.x86)),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR_OFFSET),
        jump(JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, verdict(abis.x32)),
        stmt(RET_K, RET_ALLOW),
    ]
}

/// Rewrites the arch check seccompiler put at the head of `prog` (compiled
/// for x86_64): the filter judges calls of `table`'s audit arch and lets the
/// others through. Returns None if the head is not the expected sequence
/// (a seccompiler change), so that rt refuses rather than filters wrongly.
pub fn retarget(mut prog: BpfProgram, table: Table) -> Option<BpfProgram> {
    let head_ok = prog.len() > 3
        && prog[0].code == LD_W_ABS
        && prog[0].k == ARCH_OFFSET
        && prog[1].code == JEQ_K
        && prog[1].k == AUDIT_ARCH_X86_64
        && (prog[1].jt, prog[1].jf) == (1, 0)
        && prog[2].code == RET_K;
    if !head_ok {
        return None;
    }
    if table == Table::I386 {
        prog[1].k = AUDIT_ARCH_I386;
    }
    prog[2].k = RET_ALLOW;
    Some(prog)
}

const JA: u16 = 0x05;
/// SECCOMP_RET_TRACE and SECCOMP_RET_USER_NOTIF.
pub const RET_TRACE: u32 = 0x7ff0_0000;
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;

/// Chains retargeted programs into one: where a program lets a call of
/// another ABI through (its head's third instruction), it jumps to the next
/// program instead. Classic BPF only jumps forward and every program ends in
/// a return, so appending keeps each program's own jumps inside it. Used for
/// the one filter that may carry a user-notification listener (the kernel
/// allows one listener per process).
pub fn chain(progs: Vec<BpfProgram>) -> BpfProgram {
    let mut out: BpfProgram = Vec::new();
    let n = progs.len();
    for (i, mut p) in progs.into_iter().enumerate() {
        if i + 1 < n {
            // prog[2] is `ret ALLOW` for the other ABIs (see retarget): jump
            // past the end of this program, where the next one starts.
            let past_end = (p.len() - 3) as u32;
            p[2] = stmt(JA, past_end);
        }
        out.extend(p);
    }
    out
}

/// Whether `prog` can return `k`.
pub fn returns(prog: &[sock_filter], k: u32) -> bool {
    prog.iter().any(|i| i.code == RET_K && i.k == k)
}

/// Turns every `ret TRACE|data` into `ret USER_NOTIF`: seccompiler has no
/// notify action, so rt compiles it as a trace with an unused `data`.
pub fn trace_to_notify(prog: &mut BpfProgram, data: u32) {
    for i in prog.iter_mut() {
        if i.code == RET_K && i.k == RET_TRACE | data {
            i.k = RET_USER_NOTIF;
        }
    }
}

/// Converts to libc's instruction type for the seccomp(2) call.
pub fn to_libc(prog: &[sock_filter]) -> Vec<libc::sock_filter> {
    prog.iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let numbers = |t, n| numbers(t, n).collect::<Vec<_>>();
        assert_eq!(numbers(Table::Native { x32: false }, "read"), vec![0]);
        assert_eq!(
            numbers(Table::Native { x32: true }, "read"),
            vec![0, 0x4000_0000]
        );
        assert_eq!(numbers(Table::I386, "read"), vec![3]);
        assert_eq!(numbers(Table::I386, "mkdir"), vec![39]);
        // socketcall exists on i386 only; newfstatat on x86_64 only.
        assert!(numbers(Table::Native { x32: true }, "socketcall").is_empty());
        assert_eq!(numbers(Table::I386, "socketcall"), vec![102]);
        assert!(numbers(Table::I386, "newfstatat").is_empty());
        for (t, index) in [
            (x86_64::SYSCALLS, &NATIVE),
            (x86::SYSCALLS, &I386),
            (x32::SYSCALLS, &X32),
        ] {
            // Sorted and unique (one number per name).
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "table sorted");
            for (name, nr) in t {
                assert_eq!(index.get(name), Some(*nr), "{name}");
                // A name of the table with one byte more or less is none.
                assert_eq!(index.get(&format!("{name}_")), None, "{name}_");
                assert_eq!(
                    index.get(&name[..name.len() - 1]).is_some(),
                    t.iter().any(|(n, _)| *n == &name[..name.len() - 1])
                );
            }
            assert_eq!(index.get(""), None);
            assert_eq!(index.get("zzz"), None);
        }
    }

    /// Runs a classic-BPF seccomp program over (arch, nr): the subset of
    /// instructions gate() and seccompiler's head use.
    fn run(prog: &[sock_filter], arch: u32, nr: u32) -> u32 {
        super::super::interp::run(prog, arch, nr, &[0; 6])
            .expect("a program the interpreter models")
    }

    #[test]
    fn gate_verdicts() {
        let only_native = gate(Abis::default());
        assert_eq!(run(&only_native, AUDIT_ARCH_X86_64, 0), RET_ALLOW);
        assert_eq!(
            run(&only_native, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT),
            RET_KILL_PROCESS
        );
        assert_eq!(run(&only_native, AUDIT_ARCH_I386, 3), RET_KILL_PROCESS);
        assert_eq!(run(&only_native, 0xc000_00b7, 0), RET_KILL_PROCESS);
        let all = gate(Abis {
            x86: true,
            x32: true,
        });
        assert_eq!(run(&all, AUDIT_ARCH_I386, 3), RET_ALLOW);
        assert_eq!(run(&all, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1), RET_ALLOW);
        assert_eq!(run(&all, 0xc000_00b7, 0), RET_KILL_PROCESS);
    }

    #[test]
    fn retarget_head() {
        let prog = vec![
            stmt(LD_W_ABS, ARCH_OFFSET),
            jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(RET_K, RET_KILL_PROCESS),
            stmt(RET_K, 0x0005_0001),
        ];
        let native = retarget(prog.clone(), Table::Native { x32: false }).unwrap();
        assert_eq!(run(&native, AUDIT_ARCH_X86_64, 0), 0x0005_0001);
        assert_eq!(run(&native, AUDIT_ARCH_I386, 0), RET_ALLOW);
        let i386 = retarget(prog.clone(), Table::I386).unwrap();
        assert_eq!(run(&i386, AUDIT_ARCH_I386, 0), 0x0005_0001);
        assert_eq!(run(&i386, AUDIT_ARCH_X86_64, 0), RET_ALLOW);
        assert!(retarget(prog[1..].to_vec(), Table::I386).is_none());
    }

    #[test]
    fn chained_programs_judge_each_abi() {
        let prog = |ret: u32| {
            vec![
                stmt(LD_W_ABS, ARCH_OFFSET),
                jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
                stmt(RET_K, RET_KILL_PROCESS),
                stmt(LD_W_ABS, NR_OFFSET),
                jump(JEQ_K, 83, 0, 1),
                stmt(RET_K, ret),
                stmt(RET_K, RET_ALLOW),
            ]
        };
        let mut native = retarget(prog(RET_TRACE | 7), Table::Native { x32: false }).unwrap();
        let mut i386 = retarget(prog(RET_TRACE | 7), Table::I386).unwrap();
        trace_to_notify(&mut native, 7);
        trace_to_notify(&mut i386, 7);
        let both = chain(vec![native, i386]);
        assert_eq!(run(&both, AUDIT_ARCH_X86_64, 83), RET_USER_NOTIF);
        assert_eq!(run(&both, AUDIT_ARCH_X86_64, 84), RET_ALLOW);
        assert_eq!(run(&both, AUDIT_ARCH_I386, 83), RET_USER_NOTIF);
        assert_eq!(run(&both, AUDIT_ARCH_I386, 3), RET_ALLOW);
        assert_eq!(run(&both, 0xc000_00b7, 83), RET_ALLOW);
    }
}
