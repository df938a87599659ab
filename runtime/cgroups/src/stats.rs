//! A container's resource usage, in the JSON shape of runc's `events`
//! (`{"type":"stats","id":..,"data":{"cpu":..,"memory":..,"pids":..,
//! "blkio":..,"hugetlb":..}}`), read from the v1 or v2 files.
//!
//! Statistics are best effort, as in runc: a file the kernel does not offer
//! reads as zero rather than failing the whole report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    pub hugetlb: BTreeMap<String, Hugetlb>,
    pub intel_rdt: serde_json::Map<String, serde_json::Value>,
    pub network_interfaces: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(rename = "throttledPeriods", skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    #[serde(rename = "throttledTime", skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Memory {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat, plus `oom` and `oom_kill`: how many times the cgroup hit
    /// its limit and how many processes the OOM killer killed in it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct BlkioEntry {
    #[serde(skip_serializing_if = "is_zero")]
    pub major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub minor: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub value: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Hugetlb {
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// A file's single number; `max` (no limit) reads as u64::MAX, as runc reports.
fn number(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.trim() {
        "max" => u64::MAX,
        t => t.parse().unwrap_or(0),
    }
}

/// A flat-keyed file (`key value` per line).
fn keyed(path: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn hugepage_sizes() -> Vec<String> {
    // /sys/kernel/mm/hugepages/hugepages-2048kB → 2MB, as the cgroup files say.
    let mut sizes: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(match kb {
                kb if kb >= 1 << 20 => format!("{}GB", kb >> 20),
                kb if kb >= 1 << 10 => format!("{}MB", kb >> 10),
                kb => format!("{kb}KB"),
            })
        })
        .collect();
    sizes.sort();
    sizes
}

/// Statistics from cgroup v1 files; `dir` gives a controller's directory.
pub fn v1(dir: &dyn Fn(&str) -> Option<PathBuf>) -> Stats {
    let mut s = Stats::default();
    if let Some(d) = dir("cpuacct") {
        s.cpu.usage.total = number(&d.join("cpuacct.usage"));
        s.cpu.usage.percpu = std::fs::read_to_string(d.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // cpuacct.stat counts clock ticks (USER_HZ, 100 on Linux).
        let ticks = keyed(&d.join("cpuacct.stat"));
        let ns = |k: &str| ticks.get(k).copied().unwrap_or(0) * 10_000_000;
        s.cpu.usage.user = ns("user");
        s.cpu.usage.kernel = ns("system");
    }
    if let Some(d) = dir("cpu") {
        let st = keyed(&d.join("cpu.stat"));
        s.cpu.throttling = Throttling {
            periods: st.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: st.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: st.get("throttled_time").copied().unwrap_or(0),
        };
    }
    if let Some(d) = dir("memory") {
        let entry = |prefix: &str| MemoryEntry {
            limit: number(&d.join(format!("{prefix}.limit_in_bytes"))),
            usage: number(&d.join(format!("{prefix}.usage_in_bytes"))),
            max: number(&d.join(format!("{prefix}.max_usage_in_bytes"))),
            failcnt: number(&d.join(format!("{prefix}.failcnt"))),
        };
        s.memory.usage = entry("memory");
        s.memory.swap = entry("memory.memsw");
        s.memory.kernel = entry("memory.kmem");
        s.memory.kernel_tcp = entry("memory.kmem.tcp");
        s.memory.raw = keyed(&d.join("memory.stat"));
        s.memory.cache = s.memory.raw.get("cache").copied().unwrap_or(0);
        let oom = keyed(&d.join("memory.oom_control"));
        s.memory
            .raw
            .insert("oom_kill".into(), oom.get("oom_kill").copied().unwrap_or(0));
        s.memory.raw.insert("oom".into(), s.memory.usage.failcnt);
    }
    if let Some(d) = dir("pids") {
        s.pids = pids(&d);
    }
    if let Some(d) = dir("blkio") {
        let pick = |cfq: &str, throttle: &str| {
            let entries = blkio_v1(&d.join(cfq));
            if entries.is_empty() {
                blkio_v1(&d.join(throttle))
            } else {
                entries
            }
        };
        s.blkio.io_service_bytes_recursive = pick(
            "blkio.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
        );
        s.blkio.io_serviced_recursive = pick(
            "blkio.io_serviced_recursive",
            "blkio.throttle.io_serviced_recursive",
        );
    }
    if let Some(d) = dir("hugetlb") {
        for size in hugepage_sizes() {
            let f = |n: &str| number(&d.join(format!("hugetlb.{size}.{n}")));
            let h = Hugetlb {
                usage: f("usage_in_bytes"),
                max: f("max_usage_in_bytes"),
                failcnt: f("failcnt"),
            };
            s.hugetlb.insert(size, h);
        }
    }
    s
}

fn pids(d: &Path) -> Pids {
    let limit = number(&d.join("pids.max"));
    Pids {
        current: number(&d.join("pids.current")),
        limit: if limit == u64::MAX { 0 } else { limit },
    }
}

/// `8:0 Read 4096` lines (the `Total` line is skipped).
fn blkio_v1(path: &Path) -> Vec<BlkioEntry> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, op, value) = (f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                op: op.to_string(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// Statistics from the cgroup v2 files of `d`.
pub fn v2(d: &Path) -> Stats {
    let mut s = Stats::default();
    let cpu = keyed(&d.join("cpu.stat"));
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    s.cpu.usage.total = get(&cpu, "usage_usec") * 1000;
    s.cpu.usage.user = get(&cpu, "user_usec") * 1000;
    s.cpu.usage.kernel = get(&cpu, "system_usec") * 1000;
    s.cpu.throttling = Throttling {
        periods: get(&cpu, "nr_periods"),
        throttled_periods: get(&cpu, "nr_throttled"),
        throttled_time: get(&cpu, "throttled_usec") * 1000,
    };
    let events = keyed(&d.join("memory.events"));
    s.memory.usage = MemoryEntry {
        limit: number(&d.join("memory.max")),
        usage: number(&d.join("memory.current")),
        max: number(&d.join("memory.peak")),
        failcnt: get(&events, "max"),
    };
    let swap = number(&d.join("memory.swap.current"));
    s.memory.swap = MemoryEntry {
        // As runc: swap is reported as memory+swap, like v1's memsw.
        limit: number(&d.join("memory.swap.max")),
        usage: swap.saturating_add(s.memory.usage.usage),
        max: 0,
        failcnt: get(&keyed(&d.join("memory.swap.events")), "max"),
    };
    s.memory.raw = keyed(&d.join("memory.stat"));
    s.memory.cache = get(&s.memory.raw, "file");
    s.memory.raw.insert("oom".into(), get(&events, "oom"));
    s.memory
        .raw
        .insert("oom_kill".into(), get(&events, "oom_kill"));
    s.pids = pids(d);
    for line in std::fs::read_to_string(d.join("io.stat"))
        .unwrap_or_default()
        .lines()
    {
        io_stat_line(&mut s.blkio, line);
    }
    for size in hugepage_sizes() {
        let h = Hugetlb {
            usage: number(&d.join(format!("hugetlb.{size}.current"))),
            max: 0,
            failcnt: get(&keyed(&d.join(format!("hugetlb.{size}.events"))), "max"),
        };
        s.hugetlb.insert(size, h);
    }
    s
}

/// One io.stat line: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`.
fn io_stat_line(b: &mut Blkio, line: &str) {
    let mut f = line.split_whitespace();
    let Some((major, minor)) = f.next().and_then(|d| d.split_once(':')) else {
        return;
    };
    let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
        return;
    };
    for kv in f {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let value = v.parse().unwrap_or(0);
        let (list, op) = match k {
            "rbytes" => (&mut b.io_service_bytes_recursive, "Read"),
            "wbytes" => (&mut b.io_service_bytes_recursive, "Write"),
            "rios" => (&mut b.io_serviced_recursive, "Read"),
            "wios" => (&mut b.io_serviced_recursive, "Write"),
            _ => continue,
        };
        list.push(BlkioEntry {
            major,
            minor,
            op: op.into(),
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_lines() {
        let mut b = Blkio::default();
        io_stat_line(
            &mut b,
            "253:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0",
        );
        assert_eq!(b.io_service_bytes_recursive.len(), 2);
        assert_eq!(b.io_service_bytes_recursive[1].value, 8192);
        assert_eq!(b.io_serviced_recursive[0].op, "Read");
    }

    #[test]
    fn json_shape_is_runcs() {
        let mut s = Stats::default();
        s.pids.current = 3;
        s.memory.usage.limit = 100;
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["pids"]["current"], 3);
        assert_eq!(v["memory"]["usage"]["limit"], 100);
        assert_eq!(v["memory"]["usage"]["failcnt"], 0);
        assert!(v["cpu"]["usage"].get("kernel").is_some());
        assert!(v["cpu"]["throttling"].is_object());
        assert!(v["hugetlb"].is_object());
        assert!(v["network_interfaces"].is_null());
        assert!(v["memory"].get("kernelTCP").is_some());
    }

    #[test]
    fn v1_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("pids.current"), "4\n").unwrap();
        std::fs::write(d.join("pids.max"), "max\n").unwrap();
        std::fs::write(d.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(
            d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(d.join("cpuacct.stat"), "user 3\nsystem 1\n").unwrap();
        let s = v1(&|_| Some(d.to_path_buf()));
        assert_eq!(
            s.pids,
            Pids {
                current: 4,
                limit: 0
            }
        );
        assert_eq!(s.memory.usage.usage, 1000);
        assert_eq!(s.memory.raw["oom_kill"], 2);
        assert_eq!(s.cpu.usage.user, 30_000_000);
    }
}
