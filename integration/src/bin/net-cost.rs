//! `integration/bench/network`'s VM row: the network's own cost per
//! container on one rt nat network, as a namespace container gets it (the
//! veth pair, IPAM, bridge port, addresses) and as a microVM container gets
//! it (the same, plus the supervisor's tap and the tc redirects between
//! the tap and the veth end), N of each, in one run. The library calls are
//! the ones `rt create` and the VM supervisor make; what is left out is the
//! same for both (spawning rt, the container or the VM), so the difference
//! is the tap path's own cost. No published port: the nft table is built
//! once, with the network, and no container changes it.
//!
//! Each container's namespace is held by an `unshare --net sleep` made
//! before the clock starts. Usage: net-cost [N] (default 50).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;
use rt_netns::{Config, Networking};

/// `unshare --net sleep`, once its namespace is its own.
fn holder() -> anyhow::Result<Child> {
    let child = Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .spawn()?;
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    let ns = format!("/proc/{}/ns/net", child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(&ns).ok().is_none_or(|n| n == ours) {
        anyhow::ensure!(Instant::now() < deadline, "holder never unshared");
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child)
}

/// Runs `f` on a thread inside pid's network namespace (as the supervisor
/// runs in its own).
fn in_ns_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    rt_netns::netlink::in_netns(ns.as_fd(), f).context("joining the namespace")
}

/// (up, down) per container, in ms.
fn round(
    networking: &Networking,
    config: &Config,
    n: usize,
    tap: bool,
) -> anyhow::Result<(f64, f64)> {
    let mut holders = (0..n)
        .map(|_| holder())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut taps = Vec::new();
    let t = Instant::now();
    for (i, h) in holders.iter().enumerate() {
        let a = networking.attach(&format!("c{i}"), config, h.id() as i32)?;
        if tap {
            let wired = in_ns_of(h.id(), || rt_container::backend::vm::net::wire_own(&a))??;
            taps.push(wired.tap);
        }
    }
    let up = t.elapsed();
    let t = Instant::now();
    for i in 0..n {
        // The tap goes with its descriptor (the VM's end), as when QEMU
        // and the supervisor exit.
        if tap {
            drop(taps.remove(0));
        }
        networking.detach(&format!("c{i}"), config)?;
    }
    let down = t.elapsed();
    for h in &mut holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    Ok((ms(up), ms(down)))
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let root = tempfile::tempdir()?;
    let networking = Networking::new(root.path(), Vec::new());
    let annotations: HashMap<String, String> = [
        ("run.rt.network", "nat"),
        ("run.rt.network.bridge", "rtbench1"),
        ("run.rt.network.subnet", "10.234.0.0/16"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_annotations(&annotations)?.context("a nat config")?;
    println!(
        "{:<28} {:>16} {:>18}",
        "network path (library)", "up-ms/container", "down-ms/container"
    );
    // Twice each, alternating, so neither pays alone for a cold start.
    let mut rows = Vec::new();
    for _ in 0..2 {
        for (label, tap) in [
            ("rt nat: veth (namespaces)", false),
            ("rt nat: veth + tap (vm)", true),
        ] {
            rows.push((label, round(&networking, &config, n, tap)?));
        }
    }
    for (label, (up, down)) in &rows[2..] {
        println!("{label:<28} {up:>16.2} {down:>18.2}");
    }
    let (veth, vm) = (rows[2].1, rows[3].1);
    println!(
        "{:<28} {:>16.2} {:>18.2}",
        "tap path adds",
        vm.0 - veth.0,
        vm.1 - veth.1
    );
    Ok(())
}
