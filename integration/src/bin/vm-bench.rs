//! `integration/bench/vm`: the microVM backend's start time and memory,
//! side by side in one run with rt's namespaces container and the floor (a
//! bare QEMU boot of the same kernel, same machine and command line, to a
//! busybox initramfs that prints a line); for rt's own guest kernel and for
//! Debian's cloud kernel (through an assets directory of its own holding
//! only that kernel, as `RT_VM_DIR`).
//!
//! Every guest has 128 MiB (issue 14 sets its memory goal for that size).
//! Start time: from spawning `rt run` (or QEMU) to the workload's first
//! output line, median of N. Memory: a running idle VM container's host
//! processes (supervisor, QEMU, virtiofsd): RSS and PSS from
//! /proc/PID/smaps_rollup. Usage: vm-bench [N] (default 5).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rt_vm::initramfs::Initramfs;
use rt_vm::qemu::{Accel, Machine};

fn first_line(mut cmd: Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let d = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    anyhow::ensure!(!line.is_empty(), "no output");
    Ok(d)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (RSS, PSS) in KiB of `pid`.
fn memory(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// Every process below `root` (pid, command name), parents first.
fn descendants(root: i32) -> Vec<(i32, String)> {
    let mut procs: Vec<(i32, i32, String)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so split at ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
        if let Some(ppid) = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            procs.push((pid, ppid, comm));
        }
    }
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for (pid, ppid, comm) in &procs {
            if *ppid == parent {
                found.push((*pid, comm.clone()));
                parents.push(*pid);
            }
        }
    }
    found
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(5), |a| a.parse())?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("root")?
        .to_path_buf();
    let rt = std::env::var_os("RT").map_or_else(|| root.join("target/release/rt"), PathBuf::from);
    let work = tempfile::tempdir()?;
    let state = work.path().join("state");
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    rt_testsupport::make_rootfs(&bundle.join("rootfs"));
    let ok = Command::new(&rt)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()?;
    anyhow::ensure!(ok.success(), "rt spec");
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "echo ready; exec sleep 1000"]);
    cfg["annotations"] = serde_json::json!({"run.rt.vm.memory": "128"});
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;

    let run = |isolation: &str, id: &str, assets: &Path| {
        let mut c = Command::new(&rt);
        c.env("RT_VM_DIR", assets).arg("--root").arg(&state).args([
            "run",
            "--isolation",
            isolation,
            "--bundle",
        ]);
        c.arg(&bundle).arg(id);
        c
    };
    let delete = |id: &str| {
        let _ = Command::new(&rt)
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", id])
            .status();
    };

    let assets = rt_vm::guest::dir();
    let mut kernels = Vec::new();
    if let Ok(own) = rt_vm::guest::kernel(&assets) {
        if rt_vm::qemu::is_own_kernel(&own.vmlinuz) {
            kernels.push(("rt's kernel", own, assets.clone()));
        }
    }
    // The cloud kernel alone in an assets directory of its own (with its
    // accelerator record).
    let cloud = rt_vm::guest::cloud_kernel(&assets)?;
    let cloud_assets = work.path().join("cloud-assets");
    std::fs::create_dir_all(cloud_assets.join("kernel"))?;
    let pkg = cloud
        .vmlinuz
        .parent()
        .and_then(Path::parent)
        .context("cloud kernel dir")?;
    std::os::unix::fs::symlink(
        pkg,
        cloud_assets
            .join("kernel")
            .join(pkg.file_name().context("name")?),
    )?;
    for e in std::fs::read_dir(&assets)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("accel-{}", cloud.version))
        {
            std::fs::copy(e.path(), cloud_assets.join(e.file_name()))?;
        }
    }
    kernels.push(("cloud kernel", cloud, cloud_assets));

    let mut results = Vec::new();
    let mut times = Vec::new();
    for i in 0..n {
        let id = format!("container-{i}");
        times.push(first_line(run("container", &id, &assets))?);
        delete(&id);
    }
    results.push(("rt --isolation container".to_string(), median(times)));
    let mut accel = Accel::Tcg;
    for (label, kernel, dir) in &kernels {
        // One warm-up: the guest's initramfs is built on first use.
        first_line(run("vm", "warm", dir))?;
        delete("warm");
        let mut times = Vec::new();
        for i in 0..n {
            let id = format!("vm-{i}");
            times.push(first_line(run("vm", &id, dir))?);
            delete(&id);
        }
        results.push((format!("rt --isolation vm, {label}"), median(times)));
        accel = rt_vm::qemu::cached_accel(kernel, dir).unwrap_or(Accel::Tcg);
        results.push((
            format!("bare QEMU boot, {label}"),
            floor(kernel, accel, n, work.path())?,
        ));
    }
    println!("accelerator {accel:?}, N={n} (median)");
    for (label, kernel, _) in &kernels {
        println!("{label}: {}", kernel.version);
    }
    println!("{:<36} {:>14}", "", "first line, ms");
    for (name, d) in &results {
        println!("{name:<36} {:>14}", d.as_millis());
    }

    // Memory of an idle VM container (a 128 MiB guest, as issue 14 sets the
    // goal), with the first
    // kernel (rt's own where it is installed).
    let mut c = Command::new(&rt);
    c.env("RT_VM_DIR", &kernels[0].2)
        .arg("--root")
        .arg(&state)
        .args(["run", "-d", "--isolation", "vm", "--bundle"]);
    let ok = c.arg(&bundle).arg("idle").stdout(Stdio::null()).status()?;
    anyhow::ensure!(ok.success(), "rt run -d");
    std::thread::sleep(Duration::from_secs(5));
    let st = Command::new(&rt)
        .arg("--root")
        .arg(&state)
        .args(["state", "idle"])
        .output()?;
    let st: serde_json::Value = serde_json::from_slice(&st.stdout)?;
    let sup = st["pid"].as_i64().context("no supervisor pid")? as i32;
    let mut total = (0, 0);
    println!(
        "{:<26} {:>10} {:>10}",
        "idle VM container", "RSS KiB", "PSS KiB"
    );
    // The supervisor and every process below it (QEMU, virtiofsd and the
    // child virtiofsd forks to serve).
    for (pid, name) in std::iter::once((sup, "supervisor".to_string())).chain(descendants(sup)) {
        let (rss, pss) = memory(&pid.to_string());
        total = (total.0 + rss, total.1 + pss);
        println!("{name:<26} {rss:>10} {pss:>10}");
    }
    println!("{:<26} {:>10} {:>10}", "total", total.0, total.1);
    delete("idle");
    Ok(())
}

/// The floor for `kernel`: the same machine and command line as a VM
/// container, no agent, no virtiofs, a busybox init that prints a line.
fn floor(
    kernel: &rt_vm::kernel::Kernel,
    accel: Accel,
    n: usize,
    work: &Path,
) -> anyhow::Result<Duration> {
    let initrd = work.join("floor.cpio");
    let mut i = Initramfs::new();
    i.busybox(&rt_testsupport::busybox())?;
    i.data(
        "/init",
        "#!/bin/sh\necho floor-ready\nexec sleep 1000\n",
        0o755,
    )?;
    i.write(&initrd)?;
    let machine = Machine {
        kernel: kernel.vmlinuz.clone(),
        initrd,
        cmdline: rt_vm::qemu::FAST_BOOT.into(),
        memory_mib: 128,
        cpus: 1,
        accel,
        pcie: true,
        extra: Vec::new(),
        tcg_tb_mib: None,
    };
    let mut times = Vec::new();
    for _ in 0..n {
        let mut c = machine.command();
        c.stdin(Stdio::null());
        // The console prints kernel lines first (quiet keeps them few):
        // time to the init's line.
        let t = Instant::now();
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        for line in out.lines() {
            if line?.contains("floor-ready") {
                break;
            }
        }
        times.push(t.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(median(times))
}
