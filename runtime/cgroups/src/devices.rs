//! Device access rules: the spec's `linux.resources.devices`, then the
//! devices every container gets (runc's allow-list), then the nodes listed in
//! `linux.devices`. Written to the v1 devices cgroup; cgroup v2 needs an eBPF
//! program instead (not supported yet).

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

/// One rule, in the devices cgroup's syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `a`, `c` or `b`.
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl Rule {
    /// `c 1:3 rwm`, or `a` for every device.
    pub fn line(&self) -> String {
        if self.kind == 'a' {
            return "a".into();
        }
        let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

fn kind(t: Option<LinuxDeviceType>) -> char {
    match t {
        Some(LinuxDeviceType::B) => 'b',
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
        Some(LinuxDeviceType::P) => 'p',
        _ => 'a',
    }
}

const DEFAULTS: [(char, Option<i64>, Option<i64>, &str); 11] = [
    ('c', None, None, "m"),
    ('b', None, None, "m"),
    ('c', Some(1), Some(3), "rwm"),    // null
    ('c', Some(1), Some(8), "rwm"),    // random
    ('c', Some(1), Some(7), "rwm"),    // full
    ('c', Some(5), Some(0), "rwm"),    // tty
    ('c', Some(1), Some(5), "rwm"),    // zero
    ('c', Some(1), Some(9), "rwm"),    // urandom
    ('c', Some(136), None, "rwm"),     // pts/*
    ('c', Some(5), Some(2), "rwm"),    // ptmx
    ('c', Some(10), Some(200), "rwm"), // net/tun
];

/// The rules for a container, in the order they must be applied. Starts by
/// denying everything, as runc does.
pub fn rules(spec_rules: &[LinuxDeviceCgroup], nodes: &[LinuxDevice]) -> Vec<Rule> {
    let mut out = vec![Rule {
        allow: false,
        kind: 'a',
        major: None,
        minor: None,
        access: "rwm".into(),
    }];
    for r in spec_rules {
        out.push(Rule {
            allow: r.allow(),
            kind: kind(r.typ()),
            major: r.major(),
            minor: r.minor(),
            access: r.access().clone().unwrap_or_else(|| "rwm".into()),
        });
    }
    for (k, major, minor, access) in DEFAULTS {
        out.push(Rule {
            allow: true,
            kind: k,
            major,
            minor,
            access: access.into(),
        });
    }
    for d in nodes {
        out.push(Rule {
            allow: true,
            kind: kind(Some(d.typ())),
            major: Some(d.major()),
            minor: Some(d.minor()),
            access: "rwm".into(),
        });
    }
    // Pipes need no rule.
    out.retain(|r| r.kind != 'p');
    // A rule right after the same rule changes nothing (the spec's usual
    // leading deny-all repeats rt's own): one write fewer per container.
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_first_then_spec_then_defaults() {
        let spec: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":4,"minor":64,"access":"rw"}]"#).unwrap();
        let r = rules(&spec, &[]);
        assert_eq!(r[0].line(), "a");
        assert!(!r[0].allow);
        assert_eq!(r[1].line(), "c 4:64 rw");
        assert_eq!(r[2].line(), "c *:* m");
        assert!(r.iter().any(|x| x.line() == "c 136:* rwm"));
    }

    #[test]
    fn only_repeats_in_a_row_are_dropped() {
        // deny all, allow null, deny all again: the second deny undoes the
        // allow, so it stays; two allows in a row are one.
        let spec: Vec<LinuxDeviceCgroup> = serde_json::from_str(
            r#"[{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
                {"allow":false,"access":"rwm"}]"#,
        )
        .unwrap();
        let lines: Vec<(bool, String)> = rules(&spec, &[])
            .iter()
            .take(3)
            .map(|r| (r.allow, r.line()))
            .collect();
        assert_eq!(
            lines,
            [
                (false, "a".to_string()),
                (true, "c 1:3 rwm".to_string()),
                (false, "a".to_string())
            ]
        );
    }
}
