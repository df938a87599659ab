//! `Stats`: rt's own statistics (`rt events --stats ID`, runc's JSON,
//! which for a VM container are the guest cgroup's) in containerd's cgroup
//! metrics types: `io.containerd.cgroups.v1.Metrics` on a host whose
//! memory controller is on cgroup v1 (v1 and hybrid), and
//! `io.containerd.cgroups.v2.Metrics` on a unified host, as `ctr task
//! metrics` expects from the runc shim there. One source for both
//! isolations, rather than reading the host cgroup (for a VM that holds
//! QEMU, not the workload).

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rt's statistics are not JSON")]
    Json(#[source] serde_json::Error),
    #[error("encoding the metrics")]
    Encode(#[source] containerd_shim_protos::protobuf::Error),
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Whether the host's memory controller is on cgroup v1.
fn host_is_v1() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

pub fn from_rt_stats(text: &str) -> Result<Any, Error> {
    let v: Value = serde_json::from_str(text.trim()).map_err(Error::Json)?;
    encode(&v["data"], host_is_v1())
}

fn encode(d: &Value, v1_host: bool) -> Result<Any, Error> {
    let mut any = Any::new();
    if v1_host {
        let m = to_v1(d);
        any.type_url = "io.containerd.cgroups.v1.Metrics".into();
        any.value = m.write_to_bytes().map_err(Error::Encode)?;
    } else {
        let m = to_v2(d);
        any.type_url = "io.containerd.cgroups.v2.Metrics".into();
        any.value = m.write_to_bytes().map_err(Error::Encode)?;
    }
    Ok(any)
}

fn entry(e: &Value) -> v1::MemoryEntry {
    v1::MemoryEntry {
        limit: n(&e["limit"]),
        usage: n(&e["usage"]),
        max: n(&e["max"]),
        failcnt: n(&e["failcnt"]),
        ..Default::default()
    }
}

fn to_v1(d: &Value) -> v1::Metrics {
    let cpu = &d["cpu"];
    let mem = &d["memory"];
    let raw = &mem["raw"];
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: n(&d["pids"]["current"]),
            limit: n(&d["pids"]["limit"]),
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: n(&cpu["usage"]["total"]),
                kernel: n(&cpu["usage"]["kernel"]),
                user: n(&cpu["usage"]["user"]),
                per_cpu: cpu["usage"]["percpu"]
                    .as_array()
                    .map(|a| a.iter().map(n).collect())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: n(&cpu["throttling"]["periods"]),
                throttled_periods: n(&cpu["throttling"]["throttled_periods"]),
                throttled_time: n(&cpu["throttling"]["throttled_time"]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            cache: n(&mem["cache"]),
            rss: n(&raw["rss"]),
            mapped_file: n(&raw["mapped_file"]),
            pg_fault: n(&raw["pgfault"]),
            pg_maj_fault: n(&raw["pgmajfault"]),
            usage: MessageField::some(entry(&mem["usage"])),
            swap: MessageField::some(entry(&mem["swap"])),
            kernel: MessageField::some(entry(&mem["kernel"])),
            kernel_tcp: MessageField::some(entry(&mem["kernelTCP"])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn to_v2(d: &Value) -> v2::Metrics {
    let cpu = &d["cpu"];
    let mem = &d["memory"];
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: n(&d["pids"]["current"]),
            limit: n(&d["pids"]["limit"]),
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: n(&cpu["usage"]["total"]) / 1000,
            user_usec: n(&cpu["usage"]["user"]) / 1000,
            system_usec: n(&cpu["usage"]["kernel"]) / 1000,
            nr_periods: n(&cpu["throttling"]["periods"]),
            nr_throttled: n(&cpu["throttling"]["throttled_periods"]),
            throttled_usec: n(&cpu["throttling"]["throttled_time"]) / 1000,
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            usage: n(&mem["usage"]["usage"]),
            usage_limit: n(&mem["usage"]["limit"]),
            max_usage: n(&mem["usage"]["max"]),
            swap_usage: n(&mem["swap"]["usage"]),
            swap_limit: n(&mem["swap"]["limit"]),
            file: n(&mem["cache"]),
            anon: n(&mem["raw"]["anon"]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_stats_become_both_metrics_types() {
        let d = serde_json::json!({
            "cpu": {"usage": {"total": 8_000_000u64, "percpu": [5, 3], "kernel": 2000, "user": 6000}},
            "memory": {"cache": 4096, "usage": {"limit": 1u64 << 26, "usage": 970_752, "max": 1_089_536}},
            "pids": {"current": 2, "limit": 64}
        });
        let any = encode(&d, true).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((m.pids.current, m.pids.limit), (2, 64));
        assert_eq!(m.cpu.usage.total, 8_000_000);
        assert_eq!(m.cpu.usage.per_cpu, [5, 3]);
        assert_eq!(
            (m.memory.usage.usage, m.memory.usage.limit),
            (970_752, 1 << 26)
        );
        let any = encode(&d, false).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(
            (m.cpu.usage_usec, m.memory.usage, m.pids.current),
            (8000, 970_752, 2)
        );
    }
}
