//! `linux.resources` translated to cgroup file writes, for v1 and for v2.
//!
//! Pure functions: the managers apply the writes in order, so the mapping is
//! tested here without a cgroup. Anything the layout cannot express is an
//! [`Error::Unsupported`] naming the field, never skipped.

use oci_spec::runtime::{LinuxBlockIo, LinuxResources, LinuxThrottleDevice};

use crate::{Error, Result};

/// Renames the runtime-spec's `throttleReadIOPSDevice` and
/// `throttleWriteIOPSDevice` in a raw `linux.resources` object to the
/// spelling oci-spec 0.7 expects (`...IopsDevice`); without this, the
/// spec's own spelling would be silently dropped when parsing.
pub fn normalize_json(resources: &mut serde_json::Value) {
    let Some(b) = resources.get_mut("blockIO").and_then(|b| b.as_object_mut()) else {
        return;
    };
    for (spec, ours) in [
        ("throttleReadIOPSDevice", "throttleReadIopsDevice"),
        ("throttleWriteIOPSDevice", "throttleWriteIopsDevice"),
    ] {
        if let Some(v) = b.remove(spec) {
            b.insert(ours.into(), v);
        }
    }
}

/// Whether `r` asks for any limit at all (on either cgroup version), zeros
/// meaning "unset" as in runc.
pub fn sets_limits(r: &LinuxResources) -> bool {
    !matches!(v1(r), Ok(s) if s.is_empty()) || !matches!(v2(r, &|_| false), Ok(s) if s.is_empty())
}

/// Parses a `LinuxResources` JSON document (as `rt update --resources` reads).
pub fn parse(text: &[u8]) -> serde_json::Result<LinuxResources> {
    let mut v: serde_json::Value = serde_json::from_slice(text)?;
    normalize_json(&mut v);
    serde_json::from_value(v)
}

/// One write: `value` to `file` in the directory of `controller`'s hierarchy
/// (on v2 all controllers share one directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

fn set(
    out: &mut Vec<Setting>,
    controller: &'static str,
    file: impl Into<String>,
    value: impl ToString,
) {
    out.push(Setting {
        controller,
        file: file.into(),
        value: value.to_string(),
    });
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// runc's conversion of cgroup v1 cpu.shares [2, 262144] to cgroup v2
/// cpu.weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.saturating_sub(2)) * 9999) / 262142
}

/// runc's conversion of a blkio weight [10, 1000] to io.weight [1, 10000].
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    if weight == 0 {
        return 0;
    }
    1 + (u64::from(weight).saturating_sub(10)) * 9999 / 990
}

/// The OCI swap value is memory+swap; cgroup v2's memory.swap.max is swap
/// alone. Follows runc: -1 is unlimited, 0 leaves it alone, and an unlimited
/// memory with no swap value means unlimited swap too.
pub fn swap_to_v2(swap: Option<i64>, limit: Option<i64>) -> Result<Option<String>> {
    let limit = limit.unwrap_or(0);
    match swap.unwrap_or(0) {
        0 if limit == -1 => Ok(Some("max".into())),
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        s if limit <= 0 => Err(Error::Invalid(format!(
            "memory.swap {s} needs a memory limit"
        ))),
        s if s < limit => Err(Error::Invalid(format!(
            "memory.swap {s} is below memory.limit {limit} (swap counts memory+swap)"
        ))),
        s => Ok(Some((s - limit).to_string())),
    }
}

/// A hugepage size as the kernel spells it in file names (`2MB`, `1GB`).
fn page_size(size: &str) -> Result<&str> {
    if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::Invalid(format!("hugepage size {size:?}")));
    }
    Ok(size)
}

/// The writes of `resources` on cgroup v2. `has_file` tells whether the
/// container's directory has a file (io.bfq.weight is preferred to io.weight
/// when the BFQ scheduler is there, as runc does).
pub fn v2(r: &LinuxResources, has_file: &dyn Fn(&str) -> bool) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(swap) = swap_to_v2(m.swap(), m.limit())? {
            set(&mut out, "memory", "memory.swap.max", swap);
        }
        if let Some(limit) = nonzero(m.limit()) {
            set(&mut out, "memory", "memory.max", max_or(limit));
        }
        if let Some(res) = nonzero(m.reservation()) {
            set(&mut out, "memory", "memory.low", max_or(res));
        }
        if m.swappiness().is_some_and(|s| s <= 100) {
            return Err(Error::Unsupported("memory.swappiness on cgroup v2"));
        }
        if m.disable_oom_killer() == Some(true) {
            return Err(Error::Unsupported("memory.disableOOMKiller on cgroup v2"));
        }
        kernel_memory_warning(m.kernel(), m.kernel_tcp());
    }
    if let Some(c) = r.cpu() {
        if c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(Error::Unsupported(
                "cpu.realtimeRuntime/realtimePeriod on cgroup v2",
            ));
        }
        if nonzero(c.quota()).is_some() || nonzero(c.period()).is_some() {
            let quota = c
                .quota()
                .filter(|q| *q > 0)
                .map_or("max".into(), |q| q.to_string());
            let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
            set(&mut out, "cpu", "cpu.max", format!("{quota} {period}"));
        }
        if let Some(burst) = c.burst() {
            set(&mut out, "cpu", "cpu.max.burst", burst);
        }
        if let Some(shares) = c.shares().filter(|s| *s > 0) {
            set(&mut out, "cpu", "cpu.weight", shares_to_weight(shares));
        }
        if let Some(idle) = c.idle() {
            set(&mut out, "cpu", "cpu.idle", idle);
        }
        cpuset(&mut out, c);
    }
    if let Some(p) = r.pids().as_ref().filter(|p| p.limit() != 0) {
        set(&mut out, "pids", "pids.max", pids_value(p.limit()));
    }
    if let Some(b) = r.block_io() {
        io_v2(&mut out, b, has_file)?;
    }
    for h in r.hugepage_limits().iter().flatten() {
        let file = format!("hugetlb.{}.max", page_size(h.page_size())?);
        set(&mut out, "hugetlb", file, max_or(h.limit()));
    }
    rdma(&mut out, r)?;
    if r.network().as_ref().is_some_and(|n| {
        nonzero(n.class_id()).is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty())
    }) {
        return Err(Error::Unsupported("linux.resources.network on cgroup v2"));
    }
    for (key, value) in r.unified().iter().flatten() {
        if key.is_empty() || key.contains('/') || key.starts_with('.') || !key.contains('.') {
            return Err(Error::Invalid(format!("unified key {key:?}")));
        }
        let controller = match key.split('.').next() {
            Some("cgroup") => "cgroup",
            _ => "unified",
        };
        set(&mut out, controller, key.as_str(), value);
    }
    Ok(out)
}

/// cpuset.cpus and cpuset.mems: the same files on v1 and v2.
fn cpuset(out: &mut Vec<Setting>, c: &oci_spec::runtime::LinuxCpu) {
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        set(out, "cpuset", "cpuset.cpus", cpus);
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        set(out, "cpuset", "cpuset.mems", mems);
    }
}

fn kernel_memory_warning(kernel: Option<i64>, tcp: Option<i64>) {
    if kernel.is_some() || tcp.is_some() {
        // Deprecated by the runtime-spec and removed from the kernel (6.x
        // has no kmem limit files): runc and crun ignore it too.
        tracing::warn!("memory.kernel and memory.kernelTCP are deprecated and not applied");
    }
}

/// runc's rule for the fields where zero means "not set" (weights, shares,
/// limits, quota and period, pids): Docker sends `0` for every one it does
/// not set, and a write of 0 would either fail (blkio.weight on hosts without
/// BFQ) or impose a limit nobody asked for.
fn nonzero<T: Default + PartialEq>(v: Option<T>) -> Option<T> {
    v.filter(|v| *v != T::default())
}

fn pids_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".into()
    }
}

fn device(d: &LinuxThrottleDevice) -> String {
    format!("{}:{}", d.major(), d.minor())
}

fn io_v2(out: &mut Vec<Setting>, b: &LinuxBlockIo, has_file: &dyn Fn(&str) -> bool) -> Result<()> {
    if nonzero(b.leaf_weight()).is_some()
        || b.weight_device()
            .iter()
            .flatten()
            .any(|w| nonzero(w.leaf_weight()).is_some())
    {
        return Err(Error::Unsupported("blockIO.leafWeight on cgroup v2"));
    }
    let bfq = has_file("io.bfq.weight");
    let weight = |w: u16| {
        if bfq {
            u64::from(w)
        } else {
            blkio_to_io_weight(w)
        }
    };
    let file = if bfq { "io.bfq.weight" } else { "io.weight" };
    if let Some(w) = nonzero(b.weight()) {
        set(out, "io", file, weight(w));
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = nonzero(d.weight()) {
            set(
                out,
                "io",
                file,
                format!("{}:{} {}", d.major(), d.minor(), weight(w)),
            );
        }
    }
    let throttles = [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ];
    for (key, devices) in throttles {
        for d in devices.iter().flatten() {
            // 0 means no limit, as in v1.
            let rate = if d.rate() == 0 {
                "max".to_string()
            } else {
                d.rate().to_string()
            };
            set(out, "io", "io.max", format!("{} {key}={rate}", device(d)));
        }
    }
    Ok(())
}

fn rdma(out: &mut Vec<Setting>, r: &LinuxResources) -> Result<()> {
    for (dev, limit) in r.rdma().iter().flatten() {
        if dev.is_empty() || dev.contains(char::is_whitespace) {
            return Err(Error::Invalid(format!("rdma device {dev:?}")));
        }
        let mut line = dev.clone();
        if let Some(h) = limit.hca_handles() {
            line.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = limit.hca_objects() {
            line.push_str(&format!(" hca_object={o}"));
        }
        if line.len() > dev.len() {
            set(out, "rdma", "rdma.max", line);
        }
    }
    Ok(())
}

/// The writes of `resources` on cgroup v1, in the order they must happen.
/// memory.limit_in_bytes and memory.memsw.limit_in_bytes depend on each other;
/// see [`crate::v1`] for how the manager orders them.
pub fn v1(r: &LinuxResources) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(limit) = nonzero(m.limit()) {
            set(&mut out, "memory", "memory.limit_in_bytes", limit);
        }
        if let Some(swap) = nonzero(m.swap()) {
            set(&mut out, "memory", "memory.memsw.limit_in_bytes", swap);
        }
        if let Some(res) = nonzero(m.reservation()) {
            set(&mut out, "memory", "memory.soft_limit_in_bytes", res);
        }
        if let Some(sw) = m.swappiness().filter(|s| *s <= 100) {
            set(&mut out, "memory", "memory.swappiness", sw);
        }
        // As runc: only `true` is written; `false` (Docker sends it in
        // every spec) leaves the kernel's default.
        if m.disable_oom_killer() == Some(true) {
            set(&mut out, "memory", "memory.oom_control", 1);
        }
        kernel_memory_warning(m.kernel(), m.kernel_tcp());
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s > 0) {
            set(&mut out, "cpu", "cpu.shares", shares);
        }
        if let Some(period) = c.period().filter(|p| *p > 0) {
            set(&mut out, "cpu", "cpu.cfs_period_us", period);
        }
        if let Some(quota) = c.quota().filter(|q| *q != 0) {
            set(&mut out, "cpu", "cpu.cfs_quota_us", quota);
        }
        if let Some(burst) = c.burst() {
            set(&mut out, "cpu", "cpu.cfs_burst_us", burst);
        }
        if let Some(idle) = c.idle() {
            set(&mut out, "cpu", "cpu.idle", idle);
        }
        if let Some(p) = c.realtime_period().filter(|p| *p > 0) {
            set(&mut out, "cpu", "cpu.rt_period_us", p);
        }
        if let Some(rt) = c.realtime_runtime().filter(|r| *r != 0) {
            set(&mut out, "cpu", "cpu.rt_runtime_us", rt);
        }
        cpuset(&mut out, c);
    }
    if let Some(p) = r.pids().as_ref().filter(|p| p.limit() != 0) {
        set(&mut out, "pids", "pids.max", pids_value(p.limit()));
    }
    if let Some(b) = r.block_io() {
        blkio_v1(&mut out, b);
    }
    for h in r.hugepage_limits().iter().flatten() {
        let file = format!("hugetlb.{}.limit_in_bytes", page_size(h.page_size())?);
        set(&mut out, "hugetlb", file, h.limit());
    }
    rdma(&mut out, r)?;
    if let Some(n) = r.network() {
        if let Some(id) = nonzero(n.class_id()) {
            set(&mut out, "net_cls", "net_cls.classid", id);
        }
        for p in n.priorities().iter().flatten() {
            set(
                &mut out,
                "net_prio",
                "net_prio.ifpriomap",
                format!("{} {}", p.name(), p.priority()),
            );
        }
    }
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(Error::Unsupported("linux.resources.unified on cgroup v1"));
    }
    Ok(out)
}

fn blkio_v1(out: &mut Vec<Setting>, b: &LinuxBlockIo) {
    if let Some(w) = nonzero(b.weight()) {
        set(out, "blkio", "blkio.weight", w);
    }
    if let Some(w) = nonzero(b.leaf_weight()) {
        set(out, "blkio", "blkio.leaf_weight", w);
    }
    for d in b.weight_device().iter().flatten() {
        let dev = format!("{}:{}", d.major(), d.minor());
        if let Some(w) = nonzero(d.weight()) {
            set(out, "blkio", "blkio.weight_device", format!("{dev} {w}"));
        }
        if let Some(w) = nonzero(d.leaf_weight()) {
            set(
                out,
                "blkio",
                "blkio.leaf_weight_device",
                format!("{dev} {w}"),
            );
        }
    }
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ];
    for (file, devices) in throttles {
        for d in devices.iter().flatten() {
            set(out, "blkio", file, format!("{} {}", device(d), d.rate()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        parse(json.as_bytes()).unwrap()
    }

    fn lines(s: &[Setting]) -> Vec<String> {
        s.iter()
            .map(|s| format!("{}={}", s.file, s.value))
            .collect()
    }

    #[test]
    fn conversions_match_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10000);
        assert_eq!(
            swap_to_v2(Some(200), Some(100)).unwrap().as_deref(),
            Some("100")
        );
        assert_eq!(swap_to_v2(None, Some(-1)).unwrap().as_deref(), Some("max"));
        assert_eq!(
            swap_to_v2(Some(-1), Some(100)).unwrap().as_deref(),
            Some("max")
        );
        assert_eq!(swap_to_v2(None, Some(100)).unwrap(), None);
        assert!(swap_to_v2(Some(50), Some(100)).is_err());
        assert!(swap_to_v2(Some(50), None).is_err());
    }

    #[test]
    fn every_v2_field() {
        let r = res(r#"{
            "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 10000, "idle": 0, "cpus": "0", "mems": "0"},
            "pids": {"limit": 32},
            "blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                        "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 0}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
            "unified": {"memory.high": "90000000"}
        }"#);
        let got = lines(&v2(&r, &|_| false).unwrap());
        assert_eq!(
            got,
            [
                "memory.swap.max=104857600",
                "memory.max=104857600",
                "memory.low=52428800",
                "cpu.max=50000 100000",
                "cpu.max.burst=10000",
                "cpu.weight=39",
                "cpu.idle=0",
                "cpuset.cpus=0",
                "cpuset.mems=0",
                "pids.max=32",
                "io.weight=4950",
                "io.weight=8:0 910",
                "io.max=8:0 rbps=1048576",
                "io.max=8:0 wiops=max",
                "hugetlb.2MB.max=4194304",
                "rdma.max=mlx5_1 hca_handle=3 hca_object=10000",
                "memory.high=90000000",
            ]
        );
        let bfq = lines(
            &v2(&res(r#"{"blockIO": {"weight": 500}}"#), &|f| {
                f == "io.bfq.weight"
            })
            .unwrap(),
        );
        assert_eq!(bfq, ["io.bfq.weight=500"]);
    }

    #[test]
    fn v2_refuses_what_it_cannot_express() {
        for json in [
            r#"{"memory": {"swappiness": 10}}"#,
            r#"{"memory": {"disableOOMKiller": true}}"#,
            r#"{"cpu": {"realtimeRuntime": 950000}}"#,
            r#"{"blockIO": {"leafWeight": 10}}"#,
            r#"{"network": {"classID": 1}}"#,
            r#"{"unified": {"../../etc/passwd": "x"}}"#,
            r#"{"unified": {"memory.max/x": "x"}}"#,
            r#"{"hugepageLimits": [{"pageSize": "../2MB", "limit": 1}]}"#,
        ] {
            assert!(v2(&res(json), &|_| false).is_err(), "{json}");
        }
        // Unset values and a swappiness of "unset" (> 100, as podman sends) pass.
        assert!(v2(
            &res(r#"{"memory": {"swappiness": 18446744073709551615, "disableOOMKiller": false}}"#),
            &|_| false
        )
        .is_ok());
    }

    #[test]
    fn every_v1_field() {
        let r = res(r#"{
            "memory": {"limit": 100, "swap": 200, "reservation": 50, "swappiness": 0, "disableOOMKiller": true},
            "cpu": {"shares": 512, "quota": 20000, "period": 100000, "burst": 1000, "idle": 1, "realtimePeriod": 1000000, "realtimeRuntime": 1000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": -1},
            "blockIO": {"weight": 10, "throttleWriteBpsDevice": [{"major": 253, "minor": 0, "rate": 4096}]},
            "hugepageLimits": [{"pageSize": "1GB", "limit": 0}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]}
        }"#);
        assert_eq!(
            lines(&v1(&r).unwrap()),
            [
                "memory.limit_in_bytes=100",
                "memory.memsw.limit_in_bytes=200",
                "memory.soft_limit_in_bytes=50",
                "memory.swappiness=0",
                "memory.oom_control=1",
                "cpu.shares=512",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=20000",
                "cpu.cfs_burst_us=1000",
                "cpu.idle=1",
                "cpu.rt_period_us=1000000",
                "cpu.rt_runtime_us=1000",
                "cpuset.cpus=0-1",
                "cpuset.mems=0",
                "pids.max=max",
                "blkio.weight=10",
                "blkio.throttle.write_bps_device=253:0 4096",
                "hugetlb.1GB.limit_in_bytes=0",
                "net_cls.classid=1048577",
                "net_prio.ifpriomap=eth0 5",
            ]
        );
        assert!(v1(&res(r#"{"unified": {"memory.high": "1"}}"#)).is_err());
    }

    /// What Docker 20.10 puts in every spec: zeros meaning "not set". runc
    /// writes none of them; rt did, and blkio.weight does not exist on hosts
    /// without BFQ, so every `docker run --runtime rt` failed.
    const DOCKER_ZEROS: &str = r#"{
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"limit": 0, "reservation": 0, "swap": 0, "disableOOMKiller": false},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimePeriod": 0, "realtimeRuntime": 0, "cpus": "", "mems": ""},
        "pids": {"limit": 0},
        "blockIO": {"weight": 0, "leafWeight": 0, "weightDevice": [{"major": 8, "minor": 0, "weight": 0, "leafWeight": 0}]},
        "network": {"classID": 0}
    }"#;

    #[test]
    fn zero_means_unset_as_in_runc() {
        let r = res(DOCKER_ZEROS);
        assert_eq!(lines(&v1(&r).unwrap()), Vec::<String>::new());
        assert_eq!(lines(&v2(&r, &|_| false).unwrap()), Vec::<String>::new());
        assert!(!sets_limits(&r));
        assert!(sets_limits(&res(r#"{"pids": {"limit": 5}}"#)));
        assert!(sets_limits(&res(r#"{"unified": {"memory.high": "1"}}"#)));
    }
}
