//! `linux.seccomp` compiled to BPF.
//!
//! [`compile`] makes one program (program.rs): a dispatch on the ABI, then
//! a binary search on the syscall number, every action and argument
//! comparison of the profile in it, loaded once. A profile whose program
//! would not fit classic BPF's jumps falls back to [`compile_stack`]:
//! seccompiler gives each filter one match action, so that is a small stack
//! of filters, one "default" filter (a syscall matching any rule is
//! allowed, anything else gets `defaultAction`) plus one per distinct
//! non-allow action, each compiled once per ABI the profile lists behind a
//! gate that kills unlisted ABIs (arch.rs); the kernel keeps the most
//! restrictive answer, which is the profile's meaning.
//!
//! `SCMP_ACT_NOTIFY` (with `listenerPath`): seccompiler has no notify
//! action, so its rules are compiled as a trace with a `data` value no rule
//! of the profile uses, which is then rewritten to `SECCOMP_RET_USER_NOTIF`.
//! The notify filters of every ABI are chained into one program, since the
//! kernel gives one process a single listener; see [`listener`] for its
//! hand-off.

mod arch;
mod interp;
pub mod listener;
mod profile;
mod program;
mod x32;
mod x86;
mod x86_64;

pub use arch::Abis;
use arch::Table;
pub use profile::default_profile;

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Errors of seccomp translation and loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccompiler's filter head changed: rt cannot retarget it to other ABIs")]
    Retarget,
    #[error("SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath")]
    NotifyWithoutListener,
    #[error("SCMP_ACT_NOTIFY cannot be the defaultAction: rt's own last steps would wait on the listener")]
    NotifyDefault,
    #[error("SCMP_ACT_NOTIFY on {0}: rt hands the listener its descriptor with that syscall")]
    NotifyRtSyscall(String),
    #[error("seccomp rule for {syscall}: argument index {index} out of range")]
    ArgIndex { syscall: String, index: usize },
    #[error("compiling the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("loading the seccomp filter")]
    Load(#[source] rt_sys::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The syscall number of `name` on x86_64, if the kernel headers know it.
pub fn syscall_nr(name: &str) -> Option<i64> {
    arch::native(name)
}

/// Syscalls rt makes after the notify filter is loaded and before the
/// listener has its descriptor: notifying them would wait forever.
const NOTIFY_REFUSED: &[&str] = &["sendmsg", "sendto", "write"];

/// Refuses, by name, what rt cannot enforce. Called at validation time.
pub fn check(s: &LinuxSeccomp) -> Result<()> {
    let notify = LinuxSeccompAction::ScmpActNotify;
    if s.default_action() == notify {
        return Err(Error::NotifyDefault);
    }
    let rules = s.syscalls().as_deref().unwrap_or_default();
    let notifies = rules.iter().filter(|r| r.action() == notify);
    if notifies.clone().next().is_some() && s.listener_path().is_none() {
        return Err(Error::NotifyWithoutListener);
    }
    for rule in notifies {
        if let Some(name) = rule
            .names()
            .iter()
            .find(|n| NOTIFY_REFUSED.contains(&n.as_str()))
        {
            return Err(Error::NotifyRtSyscall(name.clone()));
        }
    }
    for rule in rules {
        for arg in rule.args().as_deref().unwrap_or_default() {
            if arg.index() > 5 {
                return Err(Error::ArgIndex {
                    syscall: rule.names().join(","),
                    index: arg.index(),
                });
            }
        }
    }
    Ok(())
}

/// The rule's action; `notify` is the trace `data` that stands for
/// SCMP_ACT_NOTIFY (see the module docs).
fn action(a: LinuxSeccompAction, errno: Option<u32>, notify: u32) -> SeccompAction {
    match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => SeccompAction::Trace(notify),
    }
}

fn op(o: LinuxSeccompOperator, mask: u64) -> SeccompCmpOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
        LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
        LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
        LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
        LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
        LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
        LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(mask),
    }
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Adds `rule` to `rules`: no args means "match unconditionally", which is an
/// empty rule list in seccompiler and wins over conditional rules.
fn add_rule(rules: &mut Rules, rule: &LinuxSyscall, table: Table) -> Result<()> {
    let mut conditions = Vec::new();
    for arg in rule.args().as_deref().unwrap_or_default() {
        let (mask, value) = match arg.op() {
            // OCI: value is the mask, valueTwo the datum.
            LinuxSeccompOperator::ScmpCmpMaskedEq => (arg.value(), arg.value_two().unwrap_or(0)),
            _ => (0, arg.value()),
        };
        let c = SeccompCondition::new(
            arg.index() as u8,
            SeccompCmpArgLen::Qword,
            op(arg.op(), mask),
            value,
        )
        .map_err(Error::Compile)?;
        conditions.push(c);
    }
    for name in rule.names() {
        // A syscall unknown on this architecture is skipped, as libseccomp does.
        for nr in arch::numbers(table, name) {
            add_numbered(rules, nr, &conditions)?;
        }
    }
    Ok(())
}

fn add_numbered(rules: &mut Rules, nr: i64, conditions: &[SeccompCondition]) -> Result<()> {
    {
        if conditions.is_empty() {
            rules.insert(nr, Vec::new());
            return Ok(());
        }
        let rule = SeccompRule::new(conditions.to_vec()).map_err(Error::Compile)?;
        match rules.get_mut(&nr) {
            Some(existing) if existing.is_empty() => {} // already unconditional
            Some(existing) => existing.push(rule),
            None => {
                rules.insert(nr, vec![rule]);
            }
        }
    }
    Ok(())
}

/// A compiled profile: the filters to load, in order, the one with the
/// notify rules (loaded with a listener), and the seccomp(2) flags.
#[derive(Debug, Default)]
pub struct Filters {
    programs: Vec<BpfProgram>,
    notify: Option<BpfProgram>,
    flags: u32,
}

/// [`Filters`] as a channel message carries them: each instruction packed
/// into one number (code, jt, jf, k from the high bits down).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Wire {
    programs: Vec<Vec<u64>>,
    notify: Option<Vec<u64>>,
    flags: u32,
}

fn pack(p: &BpfProgram) -> Vec<u64> {
    p.iter()
        .map(|i| {
            (u64::from(i.code) << 48)
                | (u64::from(i.jt) << 40)
                | (u64::from(i.jf) << 32)
                | u64::from(i.k)
        })
        .collect()
}

fn unpack(p: &[u64]) -> BpfProgram {
    p.iter()
        .map(|&w| sock_filter {
            code: (w >> 48) as u16,
            jt: (w >> 40) as u8,
            jf: (w >> 32) as u8,
            k: w as u32,
        })
        .collect()
}

impl From<&Filters> for Wire {
    fn from(f: &Filters) -> Wire {
        Wire {
            programs: f.programs.iter().map(pack).collect(),
            notify: f.notify.as_ref().map(pack),
            flags: f.flags,
        }
    }
}

impl From<Wire> for Filters {
    fn from(w: Wire) -> Filters {
        Filters {
            programs: w.programs.iter().map(|p| unpack(p)).collect(),
            notify: w.notify.as_deref().map(unpack),
            flags: w.flags,
        }
    }
}

impl Filters {
    /// Loads the filters into the calling thread (no_new_privs or
    /// CAP_SYS_ADMIN required). Each program is applied on its own; the
    /// notify filter's listener descriptor is returned.
    pub fn load(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        for p in &self.programs {
            rt_sys::seccomp_set_mode_filter(&arch::to_libc(p), self.flags).map_err(Error::Load)?;
        }
        self.notify
            .as_ref()
            .map(|p| rt_sys::seccomp_set_mode_filter_listener(&arch::to_libc(p), self.flags))
            .transpose()
            .map_err(Error::Load)
    }

    /// Moves the notify filter out into filters of its own (to be loaded
    /// earlier than the rest, so that its listener can be handed over).
    pub fn split_notify(&mut self) -> Filters {
        Filters {
            programs: Vec::new(),
            notify: self.notify.take(),
            flags: self.flags,
        }
    }

    /// Whether the filters let each of `calls` through (every one answers
    /// SECCOMP_RET_ALLOW): x86-64 syscalls by name, with the first argument
    /// given (a descriptor) or not, every other argument tried as 0 and as
    /// all ones. False for a notify filter, a name the table lacks or a
    /// program the interpreter does not model: the answer must be certain.
    pub fn allows(&self, calls: &[(&str, Option<u64>)]) -> bool {
        if self.notify.is_some() {
            return false;
        }
        calls.iter().all(|&(name, first)| {
            let Some(nr) = arch::native(name).and_then(|n| u32::try_from(n).ok()) else {
                return false;
            };
            [0, u64::MAX].into_iter().all(|rest| {
                let mut args = [rest; 6];
                if let Some(first) = first {
                    args[0] = first;
                }
                self.programs.iter().all(|p| {
                    interp::run(p, arch::AUDIT_ARCH_X86_64, nr, &args) == Some(arch::RET_ALLOW)
                })
            })
        })
    }

    /// How many BPF programs the profile became.
    pub fn len(&self) -> usize {
        self.programs.len() + usize::from(self.notify.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.notify.is_none()
    }
}

fn flags(s: &LinuxSeccomp) -> u32 {
    let mut bits = 0;
    for f in s.flags().as_deref().unwrap_or_default() {
        bits |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
        } as u32;
    }
    bits
}

/// Compiles the profile into one program ([`program`]: arch dispatch, then
/// a binary search on the syscall number), and the notify filter apart. A
/// profile whose program does not fit classic BPF's jumps gets the stack of
/// filters instead ([`compile_stack`]).
pub fn compile(s: &LinuxSeccomp) -> Result<Filters> {
    check(s)?;
    let abis = Abis::from_spec(s.architectures().as_deref().unwrap_or_default());
    let Some(program) = program::compile(s, abis, notify_data(s)) else {
        return compile_stack(s);
    };
    let has_notify = s
        .syscalls()
        .iter()
        .flatten()
        .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify);
    Ok(Filters {
        programs: vec![program],
        notify: if has_notify {
            compile_stack(s)?.notify
        } else {
            None
        },
        flags: flags(s),
    })
}

/// The ABI gate, then the stack of seccompiler filters for each ABI the
/// profile lists.
pub fn compile_stack(s: &LinuxSeccomp) -> Result<Filters> {
    check(s)?;
    let abis = Abis::from_spec(s.architectures().as_deref().unwrap_or_default());
    let notify = notify_data(s);
    let mut programs = vec![arch::gate(abis)];
    let mut notifies = Vec::new();
    let mut tables = vec![Table::Native { x32: abis.x32 }];
    if abis.x86 {
        tables.push(Table::I386);
    }
    for table in tables {
        for p in compile_table(s, table, notify)? {
            if arch::returns(&p, arch::RET_TRACE | notify) {
                notifies.push(p);
            } else {
                programs.push(p);
            }
        }
    }
    let notify = (!notifies.is_empty()).then(|| {
        let mut p = arch::chain(notifies);
        arch::trace_to_notify(&mut p, notify);
        p
    });
    Ok(Filters {
        programs,
        notify,
        flags: flags(s),
    })
}

/// A trace `data` value that no SCMP_ACT_TRACE rule of the profile uses.
fn notify_data(s: &LinuxSeccomp) -> u32 {
    let used: Vec<u32> = s
        .syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActTrace)
        .map(|r| r.errno_ret().unwrap_or(0) & 0xffff)
        .chain(
            (s.default_action() == LinuxSeccompAction::ScmpActTrace)
                .then(|| s.default_errno_ret().unwrap_or(0) & 0xffff),
        )
        .collect();
    (0..=0xffffu32)
        .rev()
        .find(|d| !used.contains(d))
        .unwrap_or(0xffff)
}

/// The stack of filters for one syscall table.
fn compile_table(s: &LinuxSeccomp, table: Table, notify: u32) -> Result<Vec<BpfProgram>> {
    let default = action(s.default_action(), s.default_errno_ret(), notify);
    let mut all: Rules = BTreeMap::new();
    let mut groups: Vec<(SeccompAction, Rules)> = Vec::new();
    let syscalls = s.syscalls().as_deref().unwrap_or_default();
    for rule in syscalls {
        let a = action(rule.action(), rule.errno_ret(), notify);
        if a == default {
            continue;
        }
        add_rule(&mut all, rule, table)?;
        if a != SeccompAction::Allow {
            let i = match groups.iter().position(|(g, _)| *g == a) {
                Some(i) => i,
                None => {
                    groups.push((a.clone(), BTreeMap::new()));
                    groups.len() - 1
                }
            };
            add_rule(&mut groups[i].1, rule, table)?;
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(build(all, default, SeccompAction::Allow, table)?);
    }
    for (a, rules) in groups {
        programs.push(build(rules, SeccompAction::Allow, a, table)?);
    }
    Ok(programs)
}

fn build(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
    table: Table,
) -> Result<BpfProgram> {
    let filter =
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64).map_err(Error::Compile)?;
    let prog: BpfProgram = filter.try_into().map_err(Error::Compile)?;
    arch::retarget(prog, table).ok_or(Error::Retarget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lookup() {
        assert_eq!(syscall_nr("read"), Some(0));
        assert_eq!(syscall_nr("mkdir"), Some(83));
        assert_eq!(syscall_nr("clone3"), Some(435));
        assert_eq!(syscall_nr("no_such_call"), None);
    }

    #[test]
    fn filters_cross_the_channel_unchanged() {
        let p = default_profile(&["CAP_KILL".into()]);
        let f = compile(&p).unwrap();
        let text = serde_json::to_vec(&Wire::from(&f)).unwrap();
        let back = Filters::from(serde_json::from_slice::<Wire>(&text).unwrap());
        let flat = |f: &Filters| -> Vec<(u16, u8, u8, u32)> {
            f.programs
                .iter()
                .chain(&f.notify)
                .flatten()
                .map(|i| (i.code, i.jt, i.jf, i.k))
                .collect()
        };
        assert!(!flat(&f).is_empty());
        assert_eq!(flat(&back), flat(&f));
        assert_eq!(
            (back.programs.len(), back.flags),
            (f.programs.len(), f.flags)
        );
        assert_eq!(back.notify.is_some(), f.notify.is_some());
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compiles_stack_per_action() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[
            {"names":["read","write","bogus_call"],"action":"SCMP_ACT_ALLOW"},
            {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}
        ]}"#,
        );
        // The gate, the default filter and the ERRNO(1) filter.
        assert_eq!(compile_stack(&p).unwrap().len(), 3);
        // One program.
        assert_eq!(compile(&p).unwrap().len(), 1);
        let mut p = p;
        p.set_architectures(Some(vec![
            oci_spec::runtime::Arch::ScmpArchX86_64,
            oci_spec::runtime::Arch::ScmpArchX86,
            oci_spec::runtime::Arch::ScmpArchX32,
        ]));
        // And the same two again for i386.
        assert_eq!(compile_stack(&p).unwrap().len(), 5);
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn notify_rules() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock",
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_NOTIFY"},
                        {"names":["chmod"],"action":"SCMP_ACT_TRACE","errnoRet":65535}]}"#,
        );
        // One program, and the notify filter for both ABIs apart.
        let one = compile(&p).unwrap();
        assert_eq!(one.programs.len(), 1);
        assert!(one.notify.is_some());
        let f = compile_stack(&p).unwrap();
        // The gate and the two trace filters; one notify filter for both ABIs.
        assert_eq!(f.programs.len(), 3);
        let n = f.notify.as_ref().unwrap();
        assert!(arch::returns(n, arch::RET_USER_NOTIF));
        // The real trace rule keeps its data.
        assert!(f
            .programs
            .iter()
            .any(|p| arch::returns(p, arch::RET_TRACE | 0xffff)));
        assert!(!f
            .programs
            .iter()
            .any(|p| arch::returns(p, arch::RET_USER_NOTIF)));
        for bad in [
            r#"{"defaultAction":"SCMP_ACT_NOTIFY","listenerPath":"/x"}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/x","syscalls":[{"names":["sendmsg"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ] {
            assert!(check(&profile(bad)).is_err(), "{bad}");
        }
    }

    /// `allows` answers for the one program and for the stack alike, and
    /// only when it is sure.
    #[test]
    fn allows_only_what_every_filter_lets_through() {
        let calls = [("read", Some(5)), ("execve", None), ("exit_group", None)];
        let default = default_profile(&[]);
        for f in [compile(&default).unwrap(), compile_stack(&default).unwrap()] {
            assert!(f.allows(&calls));
            assert!(!f.allows(&[("mount", None)]));
            assert!(!f.allows(&[("no-such-call", None)]));
        }
        // read refused from descriptor 3 up: rt's fifo is there.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":3,"op":"SCMP_CMP_GE"}]}]}"#,
        );
        for f in [compile(&p).unwrap(), compile_stack(&p).unwrap()] {
            assert!(f.allows(&[("read", Some(0))]));
            assert!(!f.allows(&[("read", Some(5))]));
            assert!(!f.allows(&calls));
        }
        // A rule on a later argument: unknown values, so not allowed.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
            "action":"SCMP_ACT_LOG","args":[{"index":2,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(!compile(&p).unwrap().allows(&[("read", Some(5))]));
        // A notify filter: never early.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock",
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(!compile(&p).unwrap().allows(&[("read", Some(5))]));
    }
}
