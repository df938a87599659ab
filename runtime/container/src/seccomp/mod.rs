//! `linux.seccomp` compiled to BPF with seccompiler.
//!
//! seccompiler gives each filter one match action, while an OCI profile gives
//! each rule its own. rt therefore loads a small stack of filters: one "default"
//! filter (a syscall matching any rule is allowed, anything else gets
//! `defaultAction`) plus one filter per distinct non-allow rule action (a match
//! gets that action, anything else is allowed). The kernel runs every filter and
//! keeps the most restrictive answer, which is exactly the profile's meaning.
//! Only the native x86_64 ABI is filtered; a process calling through the x86 or
//! x32 ABI is killed by seccompiler's architecture check.

mod x86_64;

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors of seccomp translation and loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp action {0:?} is not supported")]
    Action(LinuxSeccompAction),
    #[error("seccomp flag {0} is not supported")]
    Flag(String),
    #[error("seccomp listenerPath (SCMP_ACT_NOTIFY) is not supported")]
    Notify,
    #[error("seccomp rule for {syscall}: argument index {index} out of range")]
    ArgIndex { syscall: String, index: usize },
    #[error("compiling the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("loading the seccomp filter")]
    Load(#[source] seccompiler::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The syscall number of `name` on x86_64, if the kernel headers know it.
pub fn syscall_nr(name: &str) -> Option<i64> {
    x86_64::SYSCALLS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| x86_64::SYSCALLS[i].1)
}

/// Refuses, by name, what rt cannot enforce. Called at validation time.
pub fn check(s: &LinuxSeccomp) -> Result<()> {
    if s.listener_path().is_some() {
        return Err(Error::Notify);
    }
    for flag in s.flags().as_deref().unwrap_or_default() {
        let name = serde_json::to_string(flag).unwrap_or_default();
        if !name.contains("TSYNC") {
            return Err(Error::Flag(name.trim_matches('"').to_string()));
        }
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
fn add_rule(rules: &mut Rules, rule: &LinuxSyscall) -> Result<()> {
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
        let Some(nr) = syscall_nr(name) else { continue };
        if conditions.is_empty() {
            rules.insert(nr, Vec::new());
            continue;
        }
        let rule = SeccompRule::new(conditions.clone()).map_err(Error::Compile)?;
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

/// Compiles the profile into the stack of filters to load, in order.
pub fn compile(s: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    check(s)?;
    let default = action(s.default_action(), s.default_errno_ret())?;
    let arch = TargetArch::x86_64;
    let mut all: Rules = BTreeMap::new();
    let mut groups: Vec<(SeccompAction, Rules)> = Vec::new();
    let syscalls = s.syscalls().as_deref().unwrap_or_default();
    for rule in syscalls {
        let a = action(rule.action(), rule.errno_ret())?;
        if a == default {
            continue;
        }
        add_rule(&mut all, rule)?;
        if a != SeccompAction::Allow {
            let i = match groups.iter().position(|(g, _)| *g == a) {
                Some(i) => i,
                None => {
                    groups.push((a.clone(), BTreeMap::new()));
                    groups.len() - 1
                }
            };
            add_rule(&mut groups[i].1, rule)?;
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(build(all, default, SeccompAction::Allow, arch)?);
    }
    for (a, rules) in groups {
        programs.push(build(rules, SeccompAction::Allow, a, arch)?);
    }
    Ok(programs)
}

fn build(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(Error::Compile)?;
    filter.try_into().map_err(Error::Compile)
}

/// Loads the compiled filters into the calling thread (no_new_privs or
/// CAP_SYS_ADMIN required). Each program is applied on its own.
pub fn load(programs: &[BpfProgram]) -> Result<()> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(Error::Load)?;
    }
    Ok(())
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
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 2);
    }

    #[test]
    fn refuses_notify() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#);
        assert!(matches!(check(&p), Err(Error::Notify)));
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(check(&p).unwrap_err().to_string().contains("Notify"));
    }
}
