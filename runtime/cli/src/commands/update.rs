//! `rt update`: change a running container's limits, from a LinuxResources
//! JSON (`--resources FILE`, `-` for stdin) or runc's single-value flags.

use std::io::Read;
use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;
use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// LinuxResources JSON file, or - for stdin.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k/m/g/t; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory soft limit.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPU CFS period (microseconds).
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota (microseconds; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_share: Option<u64>,
    /// CPUs allowed (0-3, 0,1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of pids (0 or -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU realtime period (microseconds; cgroup v1 only).
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime (microseconds; cgroup v1 only).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// Not supported (deprecated, and gone from the kernel, or Intel RDT):
    /// named so that asking for them fails clearly.
    #[arg(long)]
    pub kernel_memory: Option<String>,
    #[arg(long)]
    pub kernel_memory_tcp: Option<String>,
    #[arg(long)]
    pub l3_cache_schema: Option<String>,
    #[arg(long)]
    pub mem_bw_schema: Option<String>,
    pub id: String,
}

/// runc's (docker's) RAM sizes: `1024`, `512k`, `64m`, `1g`, `-1`.
fn bytes(s: &str) -> anyhow::Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    let lower = s.to_ascii_lowercase();
    let t = lower.trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size {s:?}"))?;
    Ok((n * mult as f64) as i64)
}

fn from_flags(a: &Args) -> anyhow::Result<LinuxResources> {
    let unsupported = [
        ("--kernel-memory", a.kernel_memory.is_some()),
        ("--kernel-memory-tcp", a.kernel_memory_tcp.is_some()),
        ("--l3-cache-schema", a.l3_cache_schema.is_some()),
        ("--mem-bw-schema", a.mem_bw_schema.is_some()),
    ];
    if let Some((flag, _)) = unsupported.iter().find(|(_, set)| *set) {
        anyhow::bail!("update {flag} is not supported by rt");
    }
    let mut r = serde_json::Map::new();
    let mem = [
        ("limit", &a.memory),
        ("reservation", &a.memory_reservation),
        ("swap", &a.memory_swap),
    ];
    let mut m = serde_json::Map::new();
    for (key, v) in mem {
        if let Some(v) = v {
            m.insert(key.into(), bytes(v)?.into());
        }
    }
    if !m.is_empty() {
        r.insert("memory".into(), m.into());
    }
    let mut c = serde_json::Map::new();
    let cpu: [(&str, Option<serde_json::Value>); 7] = [
        ("realtimePeriod", a.cpu_rt_period.map(Into::into)),
        ("realtimeRuntime", a.cpu_rt_runtime.map(Into::into)),
        ("period", a.cpu_period.map(Into::into)),
        ("quota", a.cpu_quota.map(Into::into)),
        ("shares", a.cpu_share.map(Into::into)),
        ("cpus", a.cpuset_cpus.clone().map(Into::into)),
        ("mems", a.cpuset_mems.clone().map(Into::into)),
    ];
    for (key, v) in cpu {
        if let Some(v) = v {
            c.insert(key.into(), v);
        }
    }
    if !c.is_empty() {
        r.insert("cpu".into(), c.into());
    }
    if let Some(w) = a.blkio_weight {
        r.insert("blockIO".into(), serde_json::json!({ "weight": w }));
    }
    if let Some(limit) = a.pids_limit {
        r.insert("pids".into(), serde_json::json!({ "limit": limit }));
    }
    Ok(serde_json::from_value(r.into())?)
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let resources = match &a.resources {
        Some(path) => {
            let mut text = Vec::new();
            if path.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut text)?;
            } else {
                text = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            }
            rt_cgroups::resources::parse(&text)
                .map_err(|e| anyhow::anyhow!("parsing resources: {e}"))?
        }
        None => from_flags(&a)?,
    };
    Runtime::new(&g.root).update(&a.id, &resources)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes("1024").unwrap(), 1024);
        assert_eq!(bytes("64m").unwrap(), 64 << 20);
        assert_eq!(bytes("1G").unwrap(), 1 << 30);
        assert_eq!(bytes("512kb").unwrap(), 512 << 10);
        assert_eq!(bytes("-1").unwrap(), -1);
        assert!(bytes("lots").is_err());
    }
}
