//! Runs rt's cgroup v2 tests inside a QEMU guest, where cgroup2 is mounted
//! with every controller (the CI host has cgroup v1 controllers).
//!
//! Builds rt and the test binaries, fetches Debian's kernel, packs an
//! initramfs (busybox, rt, the tests, the brd module for a block device),
//! boots it under KVM if a probe boot works there and under TCG otherwise,
//! and prints the guest's console. The guest runs each test binary; this
//! program sums their `test result` lines and ends with `N passed, N failed`,
//! exiting 0 only if every test passed.

use std::time::Duration;

use anyhow::Context;
use rt_integration::suite::{build_test, tally, workspace};
use rt_vm::initramfs::Initramfs;
use rt_vm::kernel::Kernel;
use rt_vm::qemu::{probe_accel, Accel, Machine};

const END: &str = "RT-SUITE-END";

/// The test binaries that run in the guest: (cargo package, target kind, name).
const TESTS: [(&str, &str, &str); 2] = [
    ("rt-integration", "test", "cgroups"),
    ("rt-cgroups", "lib", "rt_cgroups"),
];

/// The guest's /init. Stage 1 copies the initramfs into a tmpfs and switches
/// to it (pivot_root, which containers need, refuses the initramfs itself);
/// stage 2 mounts the API filesystems and cgroup2, loads the modules and runs
/// every test binary.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
if [ "$1" != stage2 ]; then
  mount -t proc proc /proc
  mkdir -p /newroot
  mount -t tmpfs -o size=90% tmpfs /newroot
  for d in /*; do
    case "$d" in /newroot|/proc|/sys|/dev) mkdir -p "/newroot$d" ;; *) cp -a "$d" /newroot/ ;; esac
  done
  umount /proc
  exec switch_root /newroot /init stage2
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
while read -r m; do insmod "$m" rd_nr=1 rd_size=16384 2>/dev/null || insmod "$m" || echo "insmod $m failed"; done < /etc/modules-load
echo "guest: kernel $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
export RT_BIN=/bin/rt HOME=/root RUST_BACKTRACE=0
for t in /suite/deps/*; do
  echo "== $t"
  "$t" --test-threads=2
done
echo RT-SUITE-END
poweroff -f
"#;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let root = workspace();
    let cache = root.join("target/vm");
    std::fs::create_dir_all(&cache)?;

    eprintln!("vm-suite: building rt and the tests");
    let rt = rt_integration::suite::build_rt()?;
    let tests = TESTS
        .iter()
        .map(|(p, k, n)| build_test(p, k, n))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let kernel = Kernel::debian(&cache).context("fetching the guest kernel")?;
    eprintln!("vm-suite: kernel {}", kernel.version);
    let busybox = rt_testsupport::busybox();
    let accel = probe_accel(&kernel, &busybox, &cache, Duration::from_secs(30))?;
    eprintln!("vm-suite: accelerator {accel:?}");

    let mut initrd = Initramfs::new();
    initrd.busybox(&busybox)?;
    initrd.executable("/bin/rt", &rt)?;
    for t in &tests {
        let name = t
            .file_name()
            .context("test name")?
            .to_string_lossy()
            .into_owned();
        initrd.executable(&format!("/suite/deps/{name}"), t)?;
    }
    initrd.modules(&kernel.modules_for(&["brd"])?)?;
    initrd.data("/init", INIT, 0o755)?;
    let image = cache.join("suite.initrd");
    initrd.write(&image)?;

    let machine = Machine {
        kernel: kernel.vmlinuz.clone(),
        initrd: image,
        cmdline: "loglevel=4".into(),
        memory_mib: 2048,
        cpus: 2,
        accel,
        pcie: false,
        extra: Vec::new(),
        tcg_tb_mib: None,
    };
    let timeout = Duration::from_secs(if accel == Accel::Kvm { 600 } else { 1500 });
    let out = machine.boot(END, timeout, |l| println!("guest| {l}"))?;
    let (passed, failed) = tally(&out.lines);
    if !out.reached {
        eprintln!("vm-suite: the guest stopped before finishing the suite");
    }
    println!("{passed} passed, {failed} failed");
    if !out.reached || failed > 0 || passed == 0 {
        std::process::exit(1);
    }
    Ok(())
}
