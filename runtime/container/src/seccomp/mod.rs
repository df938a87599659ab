//! `linux.seccomp` compiled to BPF with seccompiler.
//!
//! seccompiler gives each filter one match action, while an OCI profile gives
//! each rule its own. rt therefore loads a small stack of filters: one "default"
//! filter (a syscall matching any rule is allowed, anything else gets
//! `defaultAction`) plus one filter per distinct non-allow rule action (a match
//! gets that action, anything else is allowed). The kernel runs every filter and
//! keeps the most restrictive answer, which is exactly the profile's meaning.
//! Every filter is compiled once per ABI the profile lists (x86_64 always,
//! x86 and x32 when named) behind a gate that kills unlisted ABIs; see arch.rs.

mod arch;
mod profile;
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
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors of seccomp translation and loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp action {0:?} is not supported")]
    Action(LinuxSeccompAction),
    #[error("seccompiler's filter head changed: rt cannot retarget it to other ABIs")]
    Retarget,
    #[error("seccomp listenerPath (SCMP_ACT_NOTIFY) is not supported")]
    Notify,
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

/// Refuses, by name, what rt cannot enforce. Called at validation time.
pub fn check(s: &LinuxSeccomp) -> Result<()> {
    if s.listener_path().is_some() {
        return Err(Error::Notify);
    }
    action(s.default_action(), s.default_errno_ret())?;
    for rule in s.syscalls().as_deref().unwrap_or_default() {
        action(rule.action(), rule.errno_ret())?;
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

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction> {
    Ok(match a {
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
        other => return Err(Error::Action(other)),
    })
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

/// A compiled profile: the filters to load, in order, and the seccomp(2)
/// flags to load them with.
#[derive(Debug, Default)]
pub struct Filters {
    programs: Vec<BpfProgram>,
    flags: u32,
}

impl Filters {
    /// Loads the filters into the calling thread (no_new_privs or
    /// CAP_SYS_ADMIN required). Each program is applied on its own.
    pub fn load(&self) -> Result<()> {
        for p in &self.programs {
            rt_sys::seccomp_set_mode_filter(&arch::to_libc(p), self.flags).map_err(Error::Load)?;
        }
        Ok(())
    }

    /// How many BPF programs the profile became.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
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

/// Compiles the profile: the ABI gate, then the stack of filters for each
/// ABI the profile lists.
pub fn compile(s: &LinuxSeccomp) -> Result<Filters> {
    check(s)?;
    let abis = Abis::from_spec(s.architectures().as_deref().unwrap_or_default());
    let mut programs = vec![arch::gate(abis)];
    programs.extend(compile_table(s, Table::Native { x32: abis.x32 })?);
    if abis.x86 {
        programs.extend(compile_table(s, Table::I386)?);
    }
    Ok(Filters {
        programs,
        flags: flags(s),
    })
}

/// The stack of filters for one syscall table.
fn compile_table(s: &LinuxSeccomp, table: Table) -> Result<Vec<BpfProgram>> {
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut all: Rules = BTreeMap::new();
    let mut groups: Vec<(SeccompAction, Rules)> = Vec::new();
    let syscalls = s.syscalls().as_deref().unwrap_or_default();
    for rule in syscalls {
        let a = action(rule.action(), rule.errno_ret())?;
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
        assert_eq!(compile(&p).unwrap().len(), 3);
        let mut p = p;
        p.set_architectures(Some(vec![
            oci_spec::runtime::Arch::ScmpArchX86_64,
            oci_spec::runtime::Arch::ScmpArchX86,
            oci_spec::runtime::Arch::ScmpArchX32,
        ]));
        // And the same two again for i386.
        assert_eq!(compile(&p).unwrap().len(), 5);
    }

    #[test]
    fn refuses_notify() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#);
        assert!(matches!(check(&p), Err(Error::Notify)));
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(check(&p).unwrap_err().to_string().contains("Notify"));
    }
}
