//! The cgroup v2 device filter: device rules compiled to an eBPF program of
//! type `BPF_PROG_TYPE_CGROUP_DEVICE`, which the kernel runs on every open and
//! mknod of a device node by a process in the cgroup.
//!
//! The rules are checked from the last to the first and the first that
//! matches decides, so a later rule overrides an earlier one, as when the
//! same list is written line by line to the v1 devices cgroup. An allow rule
//! matches when it grants every access asked for; a deny rule when it names
//! any of them. No match denies.

use rt_sys::bpf::Insn;

use crate::devices::Rule;

// The program's context, `struct bpf_cgroup_dev_ctx`: access_type (the
// device type in the low 16 bits, the access in the high 16), major, minor.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

// Registers: r1 = context on entry, r0 = result.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

// Opcodes (class | op | source).
const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The access bits of a rule's `rwm` string.
fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |acc, c| match c {
        'r' => acc | ACC_READ,
        'w' => acc | ACC_WRITE,
        'm' => acc | ACC_MKNOD,
        _ => acc,
    })
}

/// Compiles `rules` (see [`crate::devices::rules`]) to the filter program.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut out = vec![
        insn(LDX_W, TYPE, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_AND_K, TYPE, 0, 0, 0xffff),
        insn(LDX_W, ACCESS, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_W, MAJOR, R1, CTX_MAJOR, 0),
        insn(LDX_W, MINOR, R1, CTX_MINOR, 0),
    ];
    for rule in rules.iter().rev() {
        out.extend(rule_block(rule));
    }
    out.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    out.push(insn(EXIT, 0, 0, 0, 0));
    out
}

/// One rule: a run of tests that each jump past the block when they fail,
/// then `return allow`.
fn rule_block(rule: &Rule) -> Vec<Insn> {
    // Tests, as (opcode, register, immediate): jump out when true.
    let mut tests: Vec<Insn> = Vec::new();
    match rule.kind {
        'c' => tests.push(insn(JNE_K, TYPE, 0, 0, DEV_CHAR)),
        'b' => tests.push(insn(JNE_K, TYPE, 0, 0, DEV_BLOCK)),
        _ => {}
    }
    let bits = access_bits(&rule.access);
    let mut block = Vec::new();
    block.push(insn(ALU64_MOV_X, SCRATCH, ACCESS, 0, 0));
    if rule.allow {
        // Every access asked for must be granted: (access & !bits) == 0.
        block.push(insn(ALU32_AND_K, SCRATCH, 0, 0, !bits & 0x7));
        tests.push(insn(JNE_K, SCRATCH, 0, 0, 0));
    } else {
        // Any access named denies: (access & bits) != 0.
        block.push(insn(ALU32_AND_K, SCRATCH, 0, 0, bits));
        tests.push(insn(JEQ_K, SCRATCH, 0, 0, 0));
    }
    if let (true, Some(major)) = (rule.kind != 'a', rule.major) {
        tests.push(insn(JNE_K, MAJOR, 0, 0, major as i32));
    }
    if let (true, Some(minor)) = (rule.kind != 'a', rule.minor) {
        tests.push(insn(JNE_K, MINOR, 0, 0, minor as i32));
    }
    // The type test comes before the scratch computation; the rest after.
    let (type_test, rest) = if matches!(rule.kind, 'c' | 'b') {
        (Some(tests.remove(0)), tests)
    } else {
        (None, tests)
    };
    let mut seq: Vec<Insn> = type_test.into_iter().collect();
    seq.extend(block);
    seq.extend(rest);
    seq.push(insn(ALU64_MOV_K, R0, 0, 0, i32::from(rule.allow)));
    seq.push(insn(EXIT, 0, 0, 0, 0));
    // Each conditional jump lands just past the block.
    let len = seq.len();
    for (i, ins) in seq.iter_mut().enumerate() {
        if ins.code == JNE_K || ins.code == JEQ_K {
            ins.off = (len - i - 1) as i16;
        }
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for exactly the instructions [`program`] emits, so
    /// the rule semantics are tested without the kernel.
    fn run(prog: &[Insn], kind: i32, access: i32, major: i32, minor: i32) -> u64 {
        let ctx = [((access << 16) | kind) as u32, major as u32, minor as u32];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_MOV_X => r[dst] = r[src],
                JEQ_K if r[dst] == i.imm as i64 as u64 => pc += i.off as usize,
                JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JEQ_K | JNE_K => {}
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rule(allow: bool, kind: char, major: Option<i64>, minor: Option<i64>, access: &str) -> Rule {
        Rule {
            allow,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    #[test]
    fn default_rules_allow_null_and_deny_the_rest() {
        let rules = crate::devices::rules(&[], &[]);
        let p = program(&rules);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 1); // null
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 136, 7), 1); // pts/7
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 10, 229), 0); // fuse
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0); // sda
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 1); // mknod any
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD | ACC_READ, 8, 0), 0);
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let rules = vec![
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), None, "rw"),
            rule(false, 'c', Some(1), Some(5), "w"),
        ];
        let p = program(&rules);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 5), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 3), 0);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn allow_all() {
        let p = program(&[rule(true, 'a', None, None, "rwm")]);
        assert_eq!(
            run(&p, DEV_BLOCK, ACC_READ | ACC_WRITE | ACC_MKNOD, 8, 1),
            1
        );
    }
}

/// The filter attached for real, on whatever cgroup2 directory the host has
/// (on a hybrid host, the unified hierarchy; the kernel checks the eBPF
/// filter there before the v1 devices cgroup).
#[cfg(test)]
mod kernel_tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    fn cgroup2_root() -> Option<PathBuf> {
        match crate::Layout::detect().ok()? {
            crate::Layout::Unified(root) => Some(root),
            crate::Layout::V1 { unified, .. } => unified,
        }
    }

    /// Runs `cmd` in a shell that first moves itself into `dir`.
    fn run_in(dir: &std::path::Path, cmd: &str) -> std::process::Output {
        let script = format!("echo $$ > {}/cgroup.procs && {cmd}", dir.display());
        Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap()
    }

    #[test]
    fn denied_device_cannot_be_opened() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to load eBPF programs");
            return;
        }
        let Some(root) = cgroup2_root() else {
            eprintln!("skipped: no cgroup2 hierarchy mounted");
            return;
        };
        let dir = root.join(format!("rt-ebpf-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let rules = vec![
            Rule {
                allow: false,
                kind: 'a',
                major: None,
                minor: None,
                access: "rwm".into(),
            },
            Rule {
                allow: true,
                kind: 'c',
                major: Some(1),
                minor: Some(3),
                access: "rwm".into(),
            },
        ];
        let attached = crate::attach_device_filter(&dir, &rules);
        let null = run_in(&dir, "exec cat /dev/null");
        let zero = run_in(&dir, "exec head -c1 /dev/zero");
        let _ = std::fs::remove_dir(&dir);
        attached.unwrap();
        assert!(null.status.success(), "{null:?}");
        assert!(!zero.status.success(), "{zero:?}");
        assert!(
            String::from_utf8_lossy(&zero.stderr).contains("Operation not permitted"),
            "{zero:?}"
        );
    }
}
