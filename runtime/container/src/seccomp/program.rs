//! A profile compiled to one classic-BPF program (what libseccomp's
//! optimisation level 2 does), instead of the stack of seccompiler filters:
//! dispatch on the architecture, then on the syscall number by binary search,
//! then the syscall's rules in the order the kernel would rank their actions.
//!
//! The program gives every (arch, nr, args) the answer the stack gives: the
//! gate's verdict for an unlisted ABI; otherwise, if any rule of a
//! non-default action matches, the most restrictive matching action (the
//! kernel keeps the most restrictive result of all filters; between equal
//! actions, the filter loaded last, i.e. the group that came last in the
//! profile); else `defaultAction`. Notify rules stay in their own filter (it
//! carries the listener): here they count as allowed, as in the stack's
//! default filter. `tests::equivalent_to_the_stack` runs both through a
//! userspace interpreter.
//!
//! Jumps: conditional jumps in classic BPF reach at most 255 instructions
//! ahead, so the search tree branches with `ja` (32-bit offsets); rule code
//! uses short jumps within its syscall's block, and a block too large for
//! them makes compilation fail (the caller then keeps the stack).

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{sock_filter, BpfProgram, SeccompAction};

use super::arch::{self, Abis, Table, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};

// Classic BPF opcodes (linux/filter.h).
pub(super) const LD_W_ABS: u16 = 0x20;
pub(super) const ALU_AND_K: u16 = 0x54;
pub(super) const JA: u16 = 0x05;
pub(super) const JEQ_K: u16 = 0x15;
pub(super) const JGT_K: u16 = 0x25;
pub(super) const JGE_K: u16 = 0x35;
pub(super) const JSET_K: u16 = 0x45;
pub(super) const RET_K: u16 = 0x06;
pub(super) const LD_IMM: u16 = 0x00;
pub(super) const TAX: u16 = 0x07;
pub(super) const ALU_LSH_X: u16 = 0x6c;
pub(super) const NR: u32 = 0;
pub(super) const ARCH: u32 = 4;
pub(super) const ARGS: u32 = 16;

pub(super) const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// The seccomp return value of an action.
pub(super) fn ret_of(a: &SeccompAction) -> u32 {
    match a {
        SeccompAction::Allow => 0x7fff_0000,
        SeccompAction::Errno(e) => 0x0005_0000 | (e & 0xffff),
        SeccompAction::KillThread => 0,
        SeccompAction::KillProcess => RET_KILL_PROCESS,
        SeccompAction::Trap => 0x0003_0000,
        SeccompAction::Trace(d) => 0x7ff0_0000 | (d & 0xffff),
        SeccompAction::Log => 0x7ffc_0000,
    }
}

/// The kernel's rank of a return value: lower is more restrictive
/// (`ACTION_ONLY` compared as a signed value).
pub(super) fn rank(ret: u32) -> i32 {
    (ret & 0xffff_0000) as i32
}

/// One argument comparison, 64-bit, as the runtime-spec defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cmp {
    index: u32,
    op: LinuxSeccompOperator,
    /// The datum (MASKED_EQ: `valueTwo`).
    value: u64,
    /// MASKED_EQ's mask (`value`).
    mask: u64,
}

/// A rule of one syscall: all comparisons hold (none: always). Small and
/// copied per number: the comparisons are the profile rule's, converted
/// once ([`comparisons`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule<'a> {
    ret: u32,
    /// The order of the rule's action group in the profile (ties go to the
    /// later group, as the later-loaded filter wins in the kernel).
    group: u32,
    cmps: &'a [Cmp],
}

/// A jump target, resolved by [`assemble`] (32 bits: instructions are
/// then 16 bytes).
type Label = u32;

/// Symbolic instructions, resolved by [`assemble`].
#[derive(Debug, Clone)]
enum Ins {
    Stmt(u16, u32),
    /// Conditional jump to labels (short: at most 255 ahead).
    Jump(u16, u32, Label, Label),
    /// Unconditional jump to a label (32-bit).
    Ja(Label),
    Label(Label),
}

#[derive(Debug, Default)]
struct Asm {
    code: Vec<Ins>,
    labels: Label,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }
    fn put(&mut self, i: Ins) {
        self.code.push(i);
    }
    fn ret(&mut self, k: u32) {
        self.put(Ins::Stmt(RET_K, k));
    }
    /// Instructions so far (labels take no room).
    fn len(&self) -> usize {
        self.code
            .iter()
            .filter(|i| !matches!(i, Ins::Label(_)))
            .count()
    }
}

/// Resolves labels; None if a short jump cannot reach its target.
fn assemble(code: &[Ins], labels: Label) -> Option<BpfProgram> {
    let mut at = vec![usize::MAX; labels as usize];
    let mut pc = 0;
    for i in code {
        match i {
            Ins::Label(l) => at[*l as usize] = pc,
            _ => pc += 1,
        }
    }
    let mut out = Vec::with_capacity(pc);
    for i in code {
        let here = out.len();
        let off = |l: Label| at[l as usize].checked_sub(here + 1);
        let ins = match *i {
            Ins::Label(_) => continue,
            Ins::Stmt(code, k) => sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            Ins::Ja(l) => sock_filter {
                code: JA,
                jt: 0,
                jf: 0,
                k: u32::try_from(off(l)?).ok()?,
            },
            Ins::Jump(code, k, t, f) => sock_filter {
                code,
                jt: u8::try_from(off(t)?).ok()?,
                jf: u8::try_from(off(f)?).ok()?,
                k,
            },
        };
        out.push(ins);
    }
    (out.len() <= 4096).then_some(out)
}

/// Each rule of the profile's comparisons, converted once for the tables.
fn comparisons(s: &LinuxSeccomp) -> Vec<Vec<Cmp>> {
    s.syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            r.args()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|arg| {
                    let masked = arg.op() == LinuxSeccompOperator::ScmpCmpMaskedEq;
                    Cmp {
                        index: arg.index() as u32,
                        op: arg.op(),
                        value: if masked {
                            arg.value_two().unwrap_or(0)
                        } else {
                            arg.value()
                        },
                        mask: if masked { arg.value() } else { u64::MAX },
                    }
                })
                .collect()
        })
        .collect()
}

/// The rules of every syscall number of `table`: the numbers and their
/// rules in two parallel lists, sorted by number, each number's rules most
/// restrictive first (between equals, the later group). `cmps` is
/// [`comparisons`] of `s`.
///
/// Flat lists of small rules: a list per number (some 350 of them in the
/// default profile, each allocated for four rules of 40 bytes) grew the
/// heap by about 100 KiB, and every fresh page of it is a page fault.
fn rules_of<'a>(
    s: &LinuxSeccomp,
    cmps: &'a [Vec<Cmp>],
    table: Table,
    default: &SeccompAction,
    notify: u32,
) -> (Vec<u32>, Vec<Rule<'a>>) {
    let mut groups: Vec<SeccompAction> = Vec::new();
    // (number, the rule's place in the profile, rule).
    let mut by_nr: Vec<(u32, u32, Rule<'a>)> = Vec::with_capacity(512);
    let rules = s.syscalls().as_deref().unwrap_or_default();
    for (r, cmps) in rules.iter().zip(cmps) {
        let a = super::action(r.action(), r.errno_ret(), notify);
        if a == *default {
            continue;
        }
        // Notify rules live in the listener's filter; here they are allowed.
        let a = if r.action() == LinuxSeccompAction::ScmpActNotify {
            SeccompAction::Allow
        } else {
            a
        };
        let group = match groups.iter().position(|g| *g == a) {
            Some(i) => i,
            None => {
                groups.push(a.clone());
                groups.len() - 1
            }
        };
        let rule = Rule {
            ret: ret_of(&a),
            group: group as u32,
            cmps,
        };
        for name in r.names() {
            for nr in arch::numbers(table, name) {
                by_nr.push((nr as u32, by_nr.len() as u32, rule));
            }
        }
    }
    // Rules that tie keep the profile's order; an unstable sort on a key
    // that never ties (a stable one allocates half the list as scratch).
    by_nr.sort_unstable_by_key(|(nr, at, r)| (*nr, rank(r.ret), std::cmp::Reverse(r.group), *at));
    by_nr.into_iter().map(|(nr, _, r)| (nr, r)).unzip()
}

/// Compiles the profile to one program, or None where it does not fit
/// classic BPF's jumps (the caller keeps the stack of filters).
pub(super) fn compile(s: &LinuxSeccomp, abis: Abis, notify: u32) -> Option<BpfProgram> {
    let default = super::action(s.default_action(), s.default_errno_ret(), notify);
    let default_ret = ret_of(&default);
    // Room for the default profile's program (and its labels) at once.
    let mut asm = Asm {
        code: Vec::with_capacity(2048),
        labels: 0,
    };
    let native = asm.label();
    let i386 = asm.label();
    asm.put(Ins::Stmt(LD_W_ABS, ARCH));
    let (to_native, not_native) = (asm.label(), asm.label());
    asm.put(Ins::Jump(JEQ_K, AUDIT_ARCH_X86_64, to_native, not_native));
    asm.put(Ins::Label(to_native));
    asm.put(Ins::Ja(native));
    asm.put(Ins::Label(not_native));
    let (to_i386, not_i386) = (asm.label(), asm.label());
    asm.put(Ins::Jump(JEQ_K, AUDIT_ARCH_I386, to_i386, not_i386));
    asm.put(Ins::Label(to_i386));
    if abis.x86 {
        asm.put(Ins::Ja(i386));
    } else {
        asm.ret(RET_KILL_PROCESS);
    }
    asm.put(Ins::Label(not_i386));
    asm.ret(RET_KILL_PROCESS);

    asm.put(Ins::Label(native));
    asm.put(Ins::Stmt(LD_W_ABS, NR));
    if !abis.x32 {
        let (x32, plain) = (asm.label(), asm.label());
        asm.put(Ins::Jump(JSET_K, X32_SYSCALL_BIT, x32, plain));
        asm.put(Ins::Label(x32));
        asm.ret(RET_KILL_PROCESS);
        asm.put(Ins::Label(plain));
    }
    let cmps = comparisons(s);
    let (nrs, rules) = rules_of(s, &cmps, Table::Native { x32: abis.x32 }, &default, notify);
    search(&mut asm, &nrs, &rules, default_ret);

    asm.put(Ins::Label(i386));
    if abis.x86 {
        asm.put(Ins::Stmt(LD_W_ABS, NR));
        let (nrs, rules) = rules_of(s, &cmps, Table::I386, &default, notify);
        search(&mut asm, &nrs, &rules, default_ret);
    } else {
        asm.ret(RET_KILL_PROCESS);
    }
    let (shared, labels) = share_returns(&asm.code, asm.labels);
    assemble(&shared, labels).or_else(|| assemble(&asm.code, asm.labels))
}

/// How far (in instructions) the earliest jump to a shared return may be
/// left behind before [`share_returns`] places the returns: a conditional
/// jump reaches 255 ahead, and a point to place them at (one that no
/// instruction falls into) comes within a few instructions.
const POOL_AFTER: usize = 192;

/// Shares the return instructions that only jumps reach. Each such `ret k`
/// is dropped, and the jumps to it go to one `ret k` of a pool, placed at
/// the first point that nothing falls into once the earliest jump to the
/// pool is [`POOL_AFTER`] instructions back (and at the end). The kernel
/// turns each `ret` into two eBPF instructions and its JIT makes several
/// passes over all of them: the default profile goes from 535 instructions
/// (183 of them returns) to 359 (7), and its load from about 0.31 to 0.22
/// ms here. A jump the pools put out of reach makes [`assemble`] fail, and
/// the caller then assembles the code as it was.
fn share_returns(code: &[Ins], mut labels: Label) -> (Vec<Ins>, Label) {
    // Whether `ins` runs on into the next instruction (a jump names both
    // its targets).
    fn falls_through(ins: &Ins) -> bool {
        matches!(*ins, Ins::Stmt(code, _) if code != RET_K)
    }
    // The return value each label stands for, where the label sits right
    // before a `ret` that nothing falls into (that `ret` is dropped).
    let mut wants: Vec<Option<u32>> = vec![None; labels as usize];
    let mut dropped = vec![false; code.len()];
    // Whether the previous instruction falls into the next (the first
    // instruction is where the program starts).
    let mut falls = true;
    let mut before: Vec<Label> = Vec::new();
    for (j, ins) in code.iter().enumerate() {
        match *ins {
            Ins::Label(l) => {
                before.push(l);
                continue;
            }
            Ins::Stmt(RET_K, k) if !falls => {
                for &l in &before {
                    wants[l as usize] = Some(k);
                }
                dropped[j] = true;
            }
            _ => {}
        }
        falls = falls_through(ins);
        before.clear();
    }
    // The open pool: (value, its label, where its first jump is).
    let mut pool: Vec<(u32, Label, usize)> = Vec::new();
    let mut out = Vec::with_capacity(code.len());
    let mut emitted = 0usize;
    falls = true;
    let flush = |out: &mut Vec<Ins>, pool: &mut Vec<(u32, Label, usize)>| -> usize {
        for &(k, l, _) in pool.iter() {
            out.push(Ins::Label(l));
            out.push(Ins::Stmt(RET_K, k));
        }
        std::mem::take(pool).len()
    };
    let mut to = |l: Label, pool: &mut Vec<(u32, Label, usize)>, at: usize| -> Label {
        let Some(k) = wants[l as usize] else {
            return l;
        };
        if let Some(&(_, shared, _)) = pool.iter().find(|p| p.0 == k) {
            return shared;
        }
        labels += 1;
        pool.push((k, labels - 1, at));
        labels - 1
    };
    for (j, ins) in code.iter().enumerate() {
        if dropped[j] {
            continue;
        }
        if let Ins::Label(l) = *ins {
            if wants[l as usize].is_none() {
                before.push(l);
            }
            continue;
        }
        // The pool goes before this instruction and its labels, where
        // nothing falls into it, and before this instruction's own jumps
        // join a pool.
        let oldest = pool.iter().map(|p| p.2).min();
        if !falls && oldest.is_some_and(|o| emitted - o >= POOL_AFTER) {
            emitted += flush(&mut out, &mut pool);
        }
        out.extend(before.drain(..).map(Ins::Label));
        let ins = match *ins {
            Ins::Jump(op, k, t, f) => {
                Ins::Jump(op, k, to(t, &mut pool, emitted), to(f, &mut pool, emitted))
            }
            Ins::Ja(l) => Ins::Ja(to(l, &mut pool, emitted)),
            ref other => other.clone(),
        };
        falls = falls_through(&ins);
        out.push(ins);
        emitted += 1;
    }
    flush(&mut out, &mut pool);
    (out, labels)
}

/// A binary search with the number in A. The rules of [`rules_of`] (`nrs`
/// and `rules`, sorted by number) become segments covering every number, runs of numbers with the same rules
/// (an allow list is mostly runs) merged, numbers without rules in
/// segments of their own that answer `default`.
fn search(asm: &mut Asm, nrs: &[u32], rules: &[Rule<'_>], default: u32) {
    fn push<'a, 'b>(segs: &mut Vec<(u32, &'a [Rule<'b>])>, start: u32, block: &'a [Rule<'b>]) {
        if segs.last().is_none_or(|(_, b)| *b != block) {
            segs.push((start, block));
        }
    }
    let mut segs: Vec<(u32, &[Rule<'_>])> = Vec::new();
    // The first number no segment covers yet.
    let mut next: u64 = 0;
    let mut i = 0;
    while i < nrs.len() {
        let nr = nrs[i];
        let end = i + nrs[i..].iter().take_while(|n| **n == nr).count();
        if u64::from(nr) > next {
            push(&mut segs, next as u32, &[]);
        }
        push(&mut segs, nr, &rules[i..end]);
        next = u64::from(nr) + 1;
        i = end;
    }
    if next <= u64::from(u32::MAX) {
        push(&mut segs, next as u32, &[]);
    }
    let segs = with_bitmaps(&segs);
    // Each block's length, from a scratch assembly: the tree then knows
    // every subtree's length before emitting it, and emits straight into
    // `asm` (assembling each lower half aside and copying it, as it once
    // did, allocated about 200 KiB for the default profile: some fifty
    // page faults on every start).
    let mut scratch = Asm::default();
    let lens: Vec<usize> = segs
        .iter()
        .map(|(_, seg)| {
            scratch.code.clear();
            seg_block(&mut scratch, seg, default);
            scratch.len()
        })
        .collect();
    tree(asm, &segs, &lens, default);
}

/// What the search answers for a range of numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg<'a> {
    /// These rules, for every number of the range.
    Rules(&'a [Rule<'a>]),
    /// For the 32 numbers from the segment's (aligned) start: `ret` where
    /// the number's bit of `mask` is set, the default elsewhere.
    Bits { ret: u32, mask: u32 },
}

/// A window of 32 numbers that the segments cut into this many pieces or
/// more becomes one bitmap test (7 instructions, against about two per
/// piece).
const BITMAP_PIECES: usize = 4;

/// Replaces each aligned window of 32 numbers that `segs` cut into
/// [`BITMAP_PIECES`] or more pieces, every piece answering one action or the
/// default without looking at arguments, by a bitmap test. i386's table
/// scatters a profile's calls: the default profile's i386 half goes from 117
/// segments to about 50, and its program loads in about half the time.
fn with_bitmaps<'a>(segs: &[(u32, &'a [Rule<'a>])]) -> Vec<(u32, Seg<'a>)> {
    // A block's unconditional answer: Some(None) for the default.
    fn simple(block: &[Rule<'_>]) -> Option<Option<u32>> {
        match block {
            [] => Some(None),
            [r] if r.cmps.is_empty() => Some(Some(r.ret)),
            _ => None,
        }
    }
    let end_of = |i: usize| segs.get(i + 1).map_or(1u64 << 32, |s| u64::from(s.0));
    // The windows to test by bitmap: (base, ret, mask), in order.
    let mut chosen: Vec<(u64, u32, u32)> = Vec::new();
    let mut i = 0;
    while i < segs.len() {
        let base = u64::from(segs[i].0) & !31;
        let top = base + 32;
        // The segments meeting [base, top): i's, and those starting before top.
        let first = if u64::from(segs[i].0) > base && i > 0 {
            i - 1
        } else {
            i
        };
        let last = (i..segs.len())
            .take_while(|&j| u64::from(segs[j].0) < top)
            .last()
            .unwrap_or(i);
        let pieces = last - first + 1;
        let mut ret = None;
        let mut mask = 0u32;
        let eligible = pieces >= BITMAP_PIECES
            && (first..=last).all(|j| match simple(segs[j].1) {
                None => false,
                Some(None) => true,
                Some(Some(r)) => {
                    let same = *ret.get_or_insert(r) == r;
                    let from = u64::from(segs[j].0).max(base) - base;
                    let to = end_of(j).min(top) - base;
                    for bit in from..to {
                        mask |= 1 << bit;
                    }
                    same
                }
            });
        if let (true, Some(ret)) = (eligible, ret) {
            chosen.push((base, ret, mask));
        }
        // On to the first segment that starts in a later window.
        i = last + 1;
    }
    fn push<'a>(out: &mut Vec<(u32, Seg<'a>)>, start: u64, seg: Seg<'a>) {
        if out.last().is_none_or(|(_, s)| *s != seg) {
            out.push((start as u32, seg));
        }
    }
    let mut out: Vec<(u32, Seg<'a>)> = Vec::with_capacity(segs.len());
    let mut windows = chosen.iter().peekable();
    for (i, &(start, block)) in segs.iter().enumerate() {
        let end = end_of(i);
        let mut at = u64::from(start);
        while at < end {
            match windows.peek() {
                Some(&&(base, ret, mask)) if at >= base => {
                    // Inside a window: its one test stands for all of it.
                    if out.last().map(|(s, _)| u64::from(*s)) != Some(base) {
                        out.push((base as u32, Seg::Bits { ret, mask }));
                    }
                    at = end.min(base + 32);
                    if at == base + 32 {
                        windows.next();
                    }
                }
                Some(&&(base, _, _)) if base < end => {
                    push(&mut out, at, Seg::Rules(block));
                    at = base;
                }
                _ => {
                    push(&mut out, at, Seg::Rules(block));
                    at = end;
                }
            }
        }
    }
    out
}

/// The code of one segment.
fn seg_block(asm: &mut Asm, seg: &Seg<'_>, default: u32) {
    match *seg {
        Seg::Rules(rules) => block(asm, rules, default),
        Seg::Bits { ret, mask } => {
            // A holds the number: bit (number mod 32) of the mask decides.
            asm.put(Ins::Stmt(ALU_AND_K, 31));
            asm.put(Ins::Stmt(TAX, 0));
            asm.put(Ins::Stmt(LD_IMM, 1));
            asm.put(Ins::Stmt(ALU_LSH_X, 0));
            let (set, unset) = (asm.label(), asm.label());
            asm.put(Ins::Jump(JSET_K, mask, set, unset));
            asm.put(Ins::Label(set));
            asm.ret(ret);
            asm.put(Ins::Label(unset));
            asm.ret(default);
        }
    }
}

/// The number of instructions [`tree`] emits for blocks of lengths `lens`.
fn tree_len(lens: &[usize]) -> usize {
    if lens.len() == 1 {
        return lens[0];
    }
    let mid = lens.len() / 2;
    let lower = tree_len(&lens[..mid]);
    let branch = if lower <= usize::from(u8::MAX) { 1 } else { 2 };
    branch + lower + tree_len(&lens[mid..])
}

/// The lower half's code comes first, so the branch to the upper half jumps
/// over it: straight there when it is within a conditional jump's reach
/// (255 instructions, which holds for every node but the few near the
/// root), else through an unconditional jump. For the default profile that
/// is 272 instructions fewer (with the unreachable returns [`block`] no
/// longer emits, 1,073 -> 665).
fn tree(asm: &mut Asm, segs: &[(u32, Seg<'_>)], lens: &[usize], default: u32) {
    if segs.len() == 1 {
        seg_block(asm, &segs[0].1, default);
        return;
    }
    let mid = segs.len() / 2;
    let (lo, hi) = (asm.label(), asm.label());
    if tree_len(&lens[..mid]) <= usize::from(u8::MAX) {
        asm.put(Ins::Jump(JGE_K, segs[mid].0, hi, lo));
    } else {
        let to_hi = asm.label();
        asm.put(Ins::Jump(JGE_K, segs[mid].0, to_hi, lo));
        asm.put(Ins::Label(to_hi));
        asm.put(Ins::Ja(hi));
    }
    asm.put(Ins::Label(lo));
    tree(asm, &segs[..mid], &lens[..mid], default);
    asm.put(Ins::Label(hi));
    tree(asm, &segs[mid..], &lens[mid..], default);
}

/// One syscall's rules, most restrictive first; then `default`, unless a
/// rule without comparisons (which always holds) came before it.
fn block(asm: &mut Asm, rules: &[Rule<'_>], default: u32) {
    for r in rules {
        let fail = asm.label();
        for c in r.cmps {
            cmp(asm, c, fail);
        }
        asm.ret(r.ret);
        if r.cmps.is_empty() {
            return;
        }
        asm.put(Ins::Label(fail));
    }
    asm.ret(default);
}

/// Falls through when comparison `c` holds, jumps to `fail` otherwise.
fn cmp(asm: &mut Asm, c: &Cmp, fail: Label) {
    let lo_off = ARGS + 8 * c.index;
    let hi_off = lo_off + 4;
    let (vhi, vlo) = ((c.value >> 32) as u32, c.value as u32);
    let (mhi, mlo) = ((c.mask >> 32) as u32, c.mask as u32);
    let load = |asm: &mut Asm, off: u32, mask: u32| {
        asm.put(Ins::Stmt(LD_W_ABS, off));
        if mask != u32::MAX {
            asm.put(Ins::Stmt(ALU_AND_K, mask));
        }
    };
    let ok = asm.label();
    use LinuxSeccompOperator as Op;
    match c.op {
        Op::ScmpCmpEq | Op::ScmpCmpMaskedEq => {
            let next = asm.label();
            load(asm, hi_off, mhi);
            asm.put(Ins::Jump(JEQ_K, vhi & mhi, next, fail));
            asm.put(Ins::Label(next));
            load(asm, lo_off, mlo);
            asm.put(Ins::Jump(JEQ_K, vlo & mlo, ok, fail));
        }
        Op::ScmpCmpNe => {
            let next = asm.label();
            load(asm, hi_off, u32::MAX);
            asm.put(Ins::Jump(JEQ_K, vhi, next, ok));
            asm.put(Ins::Label(next));
            load(asm, lo_off, u32::MAX);
            asm.put(Ins::Jump(JEQ_K, vlo, fail, ok));
        }
        // arg > v: hi > vhi, or hi == vhi and lo > vlo (and so on).
        Op::ScmpCmpGt | Op::ScmpCmpGe | Op::ScmpCmpLt | Op::ScmpCmpLe => {
            let (eq, low) = (asm.label(), asm.label());
            let greater = matches!(c.op, Op::ScmpCmpGt | Op::ScmpCmpGe);
            load(asm, hi_off, u32::MAX);
            // hi > vhi?
            let (above, not_above) = (asm.label(), asm.label());
            asm.put(Ins::Jump(JGT_K, vhi, above, not_above));
            asm.put(Ins::Label(above));
            asm.put(Ins::Ja(if greater { ok } else { fail }));
            asm.put(Ins::Label(not_above));
            asm.put(Ins::Jump(JEQ_K, vhi, eq, low));
            asm.put(Ins::Label(low));
            asm.put(Ins::Ja(if greater { fail } else { ok }));
            asm.put(Ins::Label(eq));
            load(asm, lo_off, u32::MAX);
            match c.op {
                Op::ScmpCmpGt => asm.put(Ins::Jump(JGT_K, vlo, ok, fail)),
                Op::ScmpCmpGe => asm.put(Ins::Jump(JGE_K, vlo, ok, fail)),
                Op::ScmpCmpLt => asm.put(Ins::Jump(JGE_K, vlo, fail, ok)),
                _ => asm.put(Ins::Jump(JGT_K, vlo, fail, ok)),
            }
        }
    }
    asm.put(Ins::Label(ok));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: &[u64; 6]) -> u32 {
        super::super::interp::run(prog, arch, nr, args).expect("a program the interpreter models")
    }

    /// The kernel's answer for a stack of filters (loaded in order).
    fn run_stack(filters: &[BpfProgram], arch: u32, nr: u32, args: &[u64; 6]) -> u32 {
        let mut ret = 0x7fff_0000;
        for f in filters.iter().rev() {
            let cur = run(f, arch, nr, args);
            if rank(cur) < rank(ret) {
                ret = cur;
            }
        }
        ret
    }

    /// Argument vectors that exercise every comparison of `s`.
    fn arg_cases(s: &LinuxSeccomp) -> Vec<[u64; 6]> {
        let mut values = vec![0u64, 1, u64::MAX, 1 << 32, u32::MAX as u64];
        let mut rules: Vec<Vec<(usize, u64)>> = Vec::new();
        for r in s.syscalls().iter().flatten() {
            let mut tuple = Vec::new();
            for a in r.args().iter().flatten() {
                let v = if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    a.value_two().unwrap_or(0)
                } else {
                    a.value()
                };
                values.extend([v, v.wrapping_add(1), v.wrapping_sub(1), v ^ (1 << 40), !v]);
                if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    values.extend([v | !a.value(), a.value()]);
                }
                tuple.push((a.index(), v));
            }
            rules.push(tuple);
        }
        values.sort_unstable();
        values.dedup();
        let mut cases = vec![[0u64; 6]];
        for v in &values {
            for i in 0..6 {
                let mut c = [0u64; 6];
                c[i] = *v;
                cases.push(c);
            }
        }
        for t in rules.iter().filter(|t| t.len() > 1) {
            let mut c = [0u64; 6];
            for (i, v) in t {
                c[*i] = *v;
            }
            cases.push(c);
            for (i, _) in t {
                let mut d = c;
                d[*i] = d[*i].wrapping_add(1);
                cases.push(d);
            }
        }
        cases
    }

    fn equivalent(s: &LinuxSeccomp) {
        let stack = super::super::compile_stack(s).unwrap();
        let one = super::super::compile(s).unwrap();
        assert_eq!(one.programs.len(), 1, "the profile became one program");
        let cases = arg_cases(s);
        let mut checked = 0;
        for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0xc000_00b7] {
            let nrs: Vec<u32> = if arch == AUDIT_ARCH_X86_64 {
                (0..480)
                    .chain((0..560).map(|n| n | X32_SYSCALL_BIT))
                    .collect()
            } else {
                (0..480).collect()
            };
            for nr in nrs {
                for args in &cases {
                    let want = run_stack(&stack.programs, arch, nr, args);
                    let got = run(&one.programs[0], arch, nr, args);
                    assert_eq!(got, want, "arch {arch:#x} nr {nr:#x} args {args:x?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000);
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn equivalent_to_the_stack() {
        // The default profile with and without CAP_SYS_ADMIN (its clone rules differ).
        equivalent(&super::super::default_profile(&[]));
        equivalent(&super::super::default_profile(&["CAP_SYS_ADMIN".into()]));
        for json in [
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[
                {"names":["read","write","bogus_call"],"action":"SCMP_ACT_ALLOW"},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"args":[{"index":1,"value":448,"op":"SCMP_CMP_EQ"}]},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
                {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],"syscalls":[
                {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_KILL_PROCESS"},
                {"names":["getpid"],"action":"SCMP_ACT_TRAP"},
                {"names":["uname"],"action":"SCMP_ACT_LOG"},
                {"names":["kill"],"action":"SCMP_ACT_TRACE","errnoRet":7},
                {"names":["kill"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":9,"op":"SCMP_CMP_NE"}]},
                {"names":["mmap"],"action":"SCMP_ACT_KILL","args":[
                    {"index":2,"value":4,"op":"SCMP_CMP_GE"},{"index":3,"value":34359738368,"op":"SCMP_CMP_LT"}]},
                {"names":["munmap"],"action":"SCMP_ACT_ERRNO","errnoRet":22,"args":[
                    {"index":1,"value":4096,"op":"SCMP_CMP_GT"},{"index":0,"value":4294967296,"op":"SCMP_CMP_LE"}]}]}"#,
            r#"{"defaultAction":"SCMP_ACT_KILL","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X32"],"syscalls":[
                {"names":["read","write","exit","exit_group"],"action":"SCMP_ACT_ALLOW"},
                {"names":["openat"],"action":"SCMP_ACT_ERRNO","errnoRet":2}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/x","syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        ] {
            equivalent(&profile(json));
        }
    }

    #[test]
    fn scattered_windows_become_bitmaps() {
        let allow = [Rule {
            ret: 0x7fff_0000,
            group: 0,
            cmps: &[],
        }];
        let cond = [Rule {
            ret: 0x7fff_0000,
            group: 0,
            cmps: &[Cmp {
                index: 0,
                op: LinuxSeccompOperator::ScmpCmpEq,
                value: 0,
                mask: u64::MAX,
            }],
        }];
        let none: &[Rule<'_>] = &[];
        // Window 0 in five pieces, its last running on into window 32;
        // window 64 in four, one of them conditional: left as it is.
        let segs: Vec<(u32, &[Rule<'_>])> = vec![
            (0, none),
            (3, &allow),
            (5, none),
            (7, &allow),
            (9, none),
            (40, &allow),
            (41, none),
            (64, &allow),
            (66, &cond),
            (67, &allow),
            (68, none),
        ];
        let got = with_bitmaps(&segs);
        let mask = (1 << 3) | (1 << 4) | (1 << 7) | (1 << 8);
        assert_eq!(
            got,
            vec![
                (
                    0,
                    Seg::Bits {
                        ret: 0x7fff_0000,
                        mask
                    }
                ),
                (32, Seg::Rules(none)),
                (40, Seg::Rules(&allow)),
                (41, Seg::Rules(none)),
                (64, Seg::Rules(&allow)),
                (66, Seg::Rules(&cond)),
                (67, Seg::Rules(&allow)),
                (68, Seg::Rules(none)),
            ]
        );
    }

    #[test]
    fn the_default_profile_is_small() {
        let p = super::super::default_profile(&[]);
        let one = super::super::compile(&p).unwrap();
        let stack = super::super::compile_stack(&p).unwrap();
        let size = |f: &super::super::Filters| f.programs.iter().map(Vec::len).sum::<usize>();
        assert!(
            size(&one) * 3 < size(&stack),
            "{} vs {}",
            size(&one),
            size(&stack)
        );
        // A search node jumps straight to its upper half when it can, a
        // block ends at a rule that always holds, a window of 32 numbers
        // cut into many pieces is one bitmap test, and the returns are
        // shared: 359 instructions, 7 of them returns (535 and 183 before
        // the sharing, 665 without the bitmaps, 1,073 when every node went
        // through a JA and every block ended with an unreachable return).
        assert!(size(&one) < 380, "{}", size(&one));
        let rets = one.programs[0].iter().filter(|i| i.code == RET_K).count();
        assert!(rets < 12, "{rets} returns");
    }

    #[test]
    fn shared_returns_are_pooled_within_reach() {
        // Three returns that only jumps reach, then one that an
        // instruction falls into: the three become a pool of two after the
        // last jump, the fourth stays where it is.
        let mut asm = Asm::default();
        let l: Vec<Label> = (0..6).map(|_| asm.label()).collect();
        asm.put(Ins::Stmt(LD_W_ABS, NR));
        asm.put(Ins::Jump(JEQ_K, 1, l[0], l[1]));
        asm.put(Ins::Label(l[0]));
        asm.ret(7);
        asm.put(Ins::Label(l[1]));
        asm.put(Ins::Jump(JEQ_K, 2, l[2], l[3]));
        asm.put(Ins::Label(l[2]));
        asm.ret(7);
        asm.put(Ins::Label(l[3]));
        asm.put(Ins::Jump(JEQ_K, 3, l[4], l[5]));
        asm.put(Ins::Label(l[4]));
        asm.ret(9);
        asm.put(Ins::Label(l[5]));
        asm.put(Ins::Stmt(LD_W_ABS, ARGS));
        asm.ret(8);
        let (code, labels) = share_returns(&asm.code, asm.labels);
        let prog = assemble(&code, labels).unwrap();
        let rets: Vec<u32> = prog
            .iter()
            .filter(|i| i.code == RET_K)
            .map(|i| i.k)
            .collect();
        assert_eq!(rets, [8, 7, 9]);
        for (nr, want) in [(1, 7), (2, 7), (3, 9), (4, 8)] {
            assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr, &[0; 6]), want, "nr {nr}");
        }
        // A pool is placed once its first jump is POOL_AFTER behind: with
        // a long run of blocks, every conditional jump still reaches.
        let mut asm = Asm::default();
        asm.put(Ins::Stmt(LD_W_ABS, NR));
        for nr in 0..600 {
            let (hit, miss) = (asm.label(), asm.label());
            asm.put(Ins::Jump(JEQ_K, nr, hit, miss));
            asm.put(Ins::Label(hit));
            asm.ret(nr % 3);
            asm.put(Ins::Label(miss));
        }
        asm.ret(5);
        let (code, labels) = share_returns(&asm.code, asm.labels);
        let prog = assemble(&code, labels).expect("every jump within reach");
        assert!(prog.len() < 620, "{}", prog.len());
        for nr in [0, 1, 2, 299, 598, 599, 600, 1000] {
            let want = if nr < 600 { nr % 3 } else { 5 };
            assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr, &[0; 6]), want, "nr {nr}");
        }
    }
}
