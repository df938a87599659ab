//! The unit properties of a container's transient unit: what systemd has a
//! property for, derived from the same cgroup writes the cgroupfs driver
//! makes ([`crate::resources`]), so one conversion serves both drivers.
//!
//! Every write also goes to the cgroup files afterwards, as runc's systemd
//! driver does; the properties are what keeps a `systemctl daemon-reload`
//! from putting systemd's own (unset) values back.

use crate::devices::Rule;
use crate::resources::Setting;
use crate::{Error, Result};

/// One property value, in the D-Bus types systemd declares for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `s`
    Str(String),
    /// `as`
    Strs(Vec<String>),
    /// `b`
    Bool(bool),
    /// `t` (`u64::MAX` is systemd's "infinity")
    U64(u64),
    /// `y`, `n`, `q`, `i`, `u`, `x` (from `org.systemd.property.*`
    /// annotations)
    Byte(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    /// `at`, `ai`, `ax`
    U64s(Vec<u64>),
    I32s(Vec<i32>),
    I64s(Vec<i64>),
    /// `au` (pids, or an annotation's array)
    Pids(Vec<u32>),
    /// `ay`: a CPU or NUMA-node bitmask, lowest bit first (or an
    /// annotation's bytes).
    Mask(Vec<u8>),
    /// `a(ss)`: DeviceAllow's (device, access) pairs.
    Devices(Vec<(String, String)>),
    /// `a(st)`: (device path, value) pairs of the IO limits.
    PerDevice(Vec<(String, u64)>),
}

pub type Property = (String, Value);

fn prop(name: &str, value: Value) -> Property {
    (name.to_string(), value)
}

/// The properties every container unit gets, before its resources: a scope
/// in `slice` (or a slice, which names its parent through Wants=), with
/// every controller accounted and the cgroup delegated to rt.
pub fn base(slice: &str, unit: &str, description: &str, pids: &[u32]) -> Vec<Property> {
    let mut out = vec![prop("Description", Value::Str(description.to_string()))];
    if unit.ends_with(".slice") {
        out.push(prop("Wants", Value::Strs(vec![slice.to_string()])));
    } else {
        out.push(prop("Slice", Value::Str(slice.to_string())));
        out.push(prop("Delegate", Value::Bool(true)));
    }
    out.push(prop("DefaultDependencies", Value::Bool(false)));
    for p in [
        "MemoryAccounting",
        "CPUAccounting",
        "IOAccounting",
        "TasksAccounting",
    ] {
        out.push(prop(p, Value::Bool(true)));
    }
    if !pids.is_empty() {
        out.push(prop("PIDs", Value::Pids(pids.to_vec())));
    }
    out
}

/// `max` is systemd's infinity; anything else must be a number.
fn amount(file: &str, v: &str) -> Result<u64> {
    let v = v.trim();
    if v == "max" || v == "-1" {
        return Ok(u64::MAX);
    }
    v.parse()
        .map_err(|_| Error::Invalid(format!("{file} value {v:?} for a systemd property")))
}

/// runc's CPUQuotaPerSecUSec: quota per second of wall time, rounded up to
/// a multiple of 10 ms (systemd's own granularity for it); `u64::MAX`
/// (no quota) stays infinity.
fn quota_per_sec(quota: u64, period: u64) -> u64 {
    if quota == u64::MAX || period == 0 {
        return u64::MAX;
    }
    let per_sec = quota.saturating_mul(1_000_000) / period;
    per_sec.div_ceil(10_000) * 10_000
}

/// CPUQuotaPerSecUSec and CPUQuotaPeriodUSec, for either hierarchy.
fn push_quota(out: &mut Vec<Property>, quota: u64, period: u64) {
    out.push(prop(
        "CPUQuotaPerSecUSec",
        Value::U64(quota_per_sec(quota, period)),
    ));
    out.push(prop("CPUQuotaPeriodUSec", Value::U64(period)));
}

/// A cpuset list (`0-2,5`) as systemd's bitmask bytes.
pub fn mask(list: &str) -> Result<Vec<u8>> {
    let bad = || Error::Invalid(format!("cpuset list {list:?}"));
    let mut bytes = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let n: usize = part.parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if lo > hi || hi >= 8192 {
            return Err(bad());
        }
        for bit in lo..=hi {
            if bytes.len() <= bit / 8 {
                bytes.resize(bit / 8 + 1, 0);
            }
            bytes[bit / 8] |= 1 << (bit % 8);
        }
    }
    Ok(bytes)
}

/// `M:m` as the device path systemd parses without a lookup.
fn block_path(dev: &str) -> String {
    format!("/dev/block/{dev}")
}

fn push_device(out: &mut Vec<Property>, name: &str, dev: String, v: u64) {
    if let Some((_, Value::PerDevice(list))) = out.iter_mut().find(|(n, _)| n == name) {
        list.push((dev, v));
        return;
    }
    out.push(prop(name, Value::PerDevice(vec![(dev, v)])));
}

/// The properties for cgroup v2 writes. Files systemd has no property for
/// (hugetlb, rdma, cpu.idle, cpu.max.burst, other unified keys) are only
/// written to the cgroup.
pub fn from_v2(settings: &[Setting]) -> Result<Vec<Property>> {
    let mut out = Vec::new();
    for s in settings {
        let simple = match s.file.as_str() {
            "memory.max" => Some("MemoryMax"),
            "memory.low" => Some("MemoryLow"),
            "memory.high" => Some("MemoryHigh"),
            "memory.min" => Some("MemoryMin"),
            "memory.swap.max" => Some("MemorySwapMax"),
            "pids.max" => Some("TasksMax"),
            "cpu.weight" => Some("CPUWeight"),
            _ => None,
        };
        if let Some(name) = simple {
            out.push(prop(name, Value::U64(amount(&s.file, &s.value)?)));
            continue;
        }
        match s.file.as_str() {
            "cpu.max" => {
                let mut words = s.value.split_whitespace();
                let quota = amount(&s.file, words.next().unwrap_or("max"))?;
                let period = amount(&s.file, words.next().unwrap_or("100000"))?;
                push_quota(&mut out, quota, period);
            }
            "cpuset.cpus" => out.push(prop("AllowedCPUs", Value::Mask(mask(&s.value)?))),
            "cpuset.mems" => out.push(prop("AllowedMemoryNodes", Value::Mask(mask(&s.value)?))),
            "io.weight" | "io.bfq.weight" => io_weight(&mut out, &s.value)?,
            "io.max" => io_max(&mut out, &s.value)?,
            _ => {}
        }
    }
    Ok(out)
}

/// `N` (the default weight) or `M:m N` (one device's).
fn io_weight(out: &mut Vec<Property>, value: &str) -> Result<()> {
    match value.split_once(' ') {
        Some((dev, w)) => push_device(
            out,
            "IODeviceWeight",
            block_path(dev),
            amount("io.weight", w)?,
        ),
        None => out.push(prop("IOWeight", Value::U64(amount("io.weight", value)?))),
    }
    Ok(())
}

/// `M:m rbps=N` (one key per write, as [`crate::resources`] makes them).
fn io_max(out: &mut Vec<Property>, value: &str) -> Result<()> {
    let bad = || Error::Invalid(format!("io.max value {value:?}"));
    let (dev, kv) = value.split_once(' ').ok_or_else(bad)?;
    let (key, rate) = kv.split_once('=').ok_or_else(bad)?;
    let name = match key {
        "rbps" => "IOReadBandwidthMax",
        "wbps" => "IOWriteBandwidthMax",
        "riops" => "IOReadIOPSMax",
        "wiops" => "IOWriteIOPSMax",
        _ => return Err(bad()),
    };
    push_device(out, name, block_path(dev), amount("io.max", rate)?);
    Ok(())
}

/// The properties for cgroup v1 writes (systemd's v1 names). cpuset,
/// swap, and the rest are only written to the cgroup.
pub fn from_v1(settings: &[Setting]) -> Result<Vec<Property>> {
    let mut out = Vec::new();
    let mut quota = None;
    let mut period = 100_000;
    for s in settings {
        match s.file.as_str() {
            "memory.limit_in_bytes" => {
                out.push(prop("MemoryLimit", Value::U64(amount(&s.file, &s.value)?)))
            }
            "cpu.shares" => out.push(prop("CPUShares", Value::U64(amount(&s.file, &s.value)?))),
            "pids.max" => out.push(prop("TasksMax", Value::U64(amount(&s.file, &s.value)?))),
            "cpu.cfs_quota_us" => quota = Some(amount(&s.file, &s.value)?),
            "cpu.cfs_period_us" => period = amount(&s.file, &s.value)?,
            "blkio.weight" => out.push(prop(
                "BlockIOWeight",
                Value::U64(amount(&s.file, &s.value)?),
            )),
            "blkio.throttle.read_bps_device" | "blkio.throttle.write_bps_device" => {
                let (dev, rate) = s
                    .value
                    .split_once(' ')
                    .ok_or_else(|| Error::Invalid(format!("{} value {:?}", s.file, s.value)))?;
                let name = if s.file.contains("read") {
                    "BlockIOReadBandwidth"
                } else {
                    "BlockIOWriteBandwidth"
                };
                push_device(&mut out, name, block_path(dev), amount(&s.file, rate)?);
            }
            _ => {}
        }
    }
    if let Some(q) = quota {
        push_quota(&mut out, q, period);
    }
    Ok(out)
}

/// DevicePolicy and DeviceAllow for rt's device rules.
///
/// systemd can only allow (no deny entries), so the properties allow a
/// superset of what the rules allow: every device an allow rule names, or
/// everything when an allow-all rule is followed by denials. rt's own
/// device filter, attached to the same cgroup, enforces the exact rules;
/// the kernel grants an access only if every attached filter does.
pub fn devices(rules: &[Rule], proc_devices: &str) -> Vec<Property> {
    // The last allow-all or deny-all rule sets the default; the rules
    // after it add exceptions. A default of allow (or none at all) is
    // DevicePolicy=auto: systemd's filter then allows what rt's denies.
    let Some(start) = rules.iter().rposition(|r| r.kind == 'a' && !r.allow) else {
        return vec![prop("DevicePolicy", Value::Str("auto".into()))];
    };
    if rules[start..].iter().any(|r| r.kind == 'a' && r.allow) {
        return vec![prop("DevicePolicy", Value::Str("auto".into()))];
    }
    let mut allow = Vec::new();
    for r in rules[start..].iter().filter(|r| r.allow && r.kind != 'a') {
        let kind = if r.kind == 'b' { "block" } else { "char" };
        let entry = match (r.major, r.minor) {
            (Some(ma), Some(mi)) => format!("/dev/{kind}/{ma}:{mi}"),
            (Some(ma), None) => named_major(proc_devices, kind, ma)
                .map_or_else(|| format!("{kind}-*"), |n| format!("{kind}-{n}")),
            (None, _) => format!("{kind}-*"),
        };
        let access = if r.access.is_empty() {
            "rwm".to_string()
        } else {
            r.access.clone()
        };
        if !allow.contains(&(entry.clone(), access.clone())) {
            allow.push((entry, access));
        }
    }
    vec![
        prop("DevicePolicy", Value::Str("strict".into())),
        prop("DeviceAllow", Value::Devices(allow)),
    ]
}

/// The driver name of a major number in /proc/devices' section for `kind`.
fn named_major(proc_devices: &str, kind: &str, major: i64) -> Option<String> {
    let header = if kind == "block" {
        "Block devices:"
    } else {
        "Character devices:"
    };
    proc_devices
        .split("\n\n")
        .find(|s| s.trim_start().starts_with(header))?
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().split_once(' '))
        .find(|(n, _)| n.parse::<i64>().ok() == Some(major))
        .map(|(_, name)| name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(file: &str, value: &str) -> Setting {
        Setting {
            controller: "x",
            file: file.into(),
            value: value.into(),
        }
    }

    #[test]
    fn v2_writes_become_properties() {
        let p = from_v2(&[
            s("memory.max", "67108864"),
            s("memory.swap.max", "max"),
            s("pids.max", "10"),
            s("cpu.weight", "39"),
            s("cpu.max", "50000 100000"),
            s("cpuset.cpus", "0-1,3"),
            s("io.weight", "8:0 100"),
            s("io.max", "8:0 rbps=1048576"),
            s("io.max", "8:16 rbps=2048"),
            s("hugetlb.2MB.max", "0"),
        ])
        .unwrap();
        let get = |n: &str| p.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("MemoryMax"), Some(Value::U64(64 << 20)));
        assert_eq!(get("MemorySwapMax"), Some(Value::U64(u64::MAX)));
        assert_eq!(get("TasksMax"), Some(Value::U64(10)));
        assert_eq!(get("CPUWeight"), Some(Value::U64(39)));
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(Value::U64(500_000)));
        assert_eq!(get("CPUQuotaPeriodUSec"), Some(Value::U64(100_000)));
        assert_eq!(get("AllowedCPUs"), Some(Value::Mask(vec![0b1011])));
        assert_eq!(
            get("IODeviceWeight"),
            Some(Value::PerDevice(vec![("/dev/block/8:0".into(), 100)]))
        );
        assert_eq!(
            get("IOReadBandwidthMax"),
            Some(Value::PerDevice(vec![
                ("/dev/block/8:0".into(), 1_048_576),
                ("/dev/block/8:16".into(), 2048)
            ]))
        );
        assert_eq!(p.len(), 9, "hugetlb has no property: {p:?}");
    }

    #[test]
    fn quota_rounds_up_to_10ms_and_max_is_infinity() {
        assert_eq!(quota_per_sec(12_345, 100_000), 130_000);
        assert_eq!(quota_per_sec(200_000, 100_000), 2_000_000);
        let p = from_v2(&[s("cpu.max", "max 100000")]).unwrap();
        assert_eq!(p[0], prop("CPUQuotaPerSecUSec", Value::U64(u64::MAX)));
    }

    #[test]
    fn v1_writes_use_v1_names() {
        let p = from_v1(&[
            s("memory.limit_in_bytes", "1048576"),
            s("cpu.shares", "512"),
            s("cpu.cfs_quota_us", "25000"),
            s("cpu.cfs_period_us", "50000"),
            s("blkio.throttle.write_bps_device", "8:0 100"),
        ])
        .unwrap();
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "MemoryLimit",
                "CPUShares",
                "BlockIOWriteBandwidth",
                "CPUQuotaPerSecUSec",
                "CPUQuotaPeriodUSec"
            ]
        );
        assert_eq!(p[3].1, Value::U64(500_000));
    }

    #[test]
    fn masks_and_bad_lists() {
        assert_eq!(mask("0").unwrap(), [1]);
        assert_eq!(mask("8-9").unwrap(), [0, 3]);
        assert!(mask("3-1").is_err());
        assert!(mask("x").is_err());
    }

    fn rule(allow: bool, kind: char, major: Option<i64>, minor: Option<i64>) -> Rule {
        Rule {
            allow,
            kind,
            major,
            minor,
            access: "rwm".into(),
        }
    }

    #[test]
    fn device_rules_become_an_allow_list_or_auto() {
        let proc_devices = "Character devices:\n  1 mem\n136 pts\n\nBlock devices:\n  8 sd\n";
        let rules = [
            rule(false, 'a', None, None),
            rule(true, 'c', Some(1), Some(3)),
            rule(true, 'c', Some(136), None),
            rule(true, 'b', None, None),
            rule(true, 'c', Some(99), None),
        ];
        let p = devices(&rules, proc_devices);
        assert_eq!(p[0], prop("DevicePolicy", Value::Str("strict".into())));
        let Value::Devices(list) = &p[1].1 else {
            panic!("{p:?}")
        };
        let names: Vec<&str> = list.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(names, ["/dev/char/1:3", "char-pts", "block-*", "char-*"]);
        // Allow-all then denials: systemd allows everything, rt's filter denies.
        let p = devices(
            &[
                rule(true, 'a', None, None),
                rule(false, 'c', Some(1), Some(3)),
            ],
            proc_devices,
        );
        assert_eq!(p, [prop("DevicePolicy", Value::Str("auto".into()))]);
    }

    #[test]
    fn scopes_are_delegated_and_slices_want_their_parent() {
        let p = base("machine.slice", "libpod-x.scope", "d", &[42]);
        assert!(p.contains(&prop("Delegate", Value::Bool(true))));
        assert!(p.contains(&prop("Slice", Value::Str("machine.slice".into()))));
        assert!(p.contains(&prop("PIDs", Value::Pids(vec![42]))));
        let p = base("a.slice", "a-b.slice", "d", &[]);
        assert!(p.contains(&prop("Wants", Value::Strs(vec!["a.slice".into()]))));
        assert!(!p.iter().any(|(n, _)| n == "Delegate" || n == "PIDs"));
    }
}
