//! Runs rt's systemd cgroup driver tests (integration/tests/systemd.rs)
//! inside QEMU guests whose PID 1 is Debian's systemd: this host runs no
//! systemd. Two boots: cgroup v2 unified (every test but the v1 ones),
//! then cgroup v1 (`systemd.unified_cgroup_hierarchy=0`, systemd's hybrid
//! layout; the tests named `…cgroup_v1…`).
//!
//! The guest's root is the host's own filesystem, shared read-only by
//! virtiofsd, under a tmpfs overlay: it boots the host's systemd, dbus,
//! podman and rt without an image to build. The initramfs's /init mounts
//! that overlay, writes the suite's unit (and an empty fstab) into it and
//! switches to systemd, which starts only the suite's unit and what it
//! needs (dbus). The unit runs the test binary on the serial console and
//! powers the guest off. Ends with `N passed, N failed`, exiting 0 only if
//! every test passed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rt_integration::suite::{build_test, tally, workspace};
use rt_vm::initramfs::Initramfs;
use rt_vm::qemu::{Accel, Machine};

const END: &str = "RT-SYSTEMD-SUITE-END";

/// The guest's /init: the overlay root, the suite's unit, then systemd.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "$m" || echo "insmod $m failed"; done < /etc/modules-load
mkdir -p /lower /upper /newroot
mount -t virtiofs -o ro host /lower || { echo "mounting the host's root failed"; poweroff -f; }
mount -t tmpfs -o size=75% tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot
: > /newroot/etc/fstab
cp /suite.service /newroot/etc/systemd/system/rt-systemd-suite.service
cp /suite.target /newroot/etc/systemd/system/rt-systemd-suite.target
cp /suite.sh /newroot/run-suite.sh
for d in tmp var/tmp var/lib/containers root; do mkdir -p "/newroot/$d"; mount -t tmpfs tmpfs "/newroot/$d"; done
# The host may be a container (its /.dockerenv): the guest is not.
rm -f /newroot/.dockerenv /newroot/run/.containerenv
umount /proc /sys /dev
exec switch_root /newroot /lib/systemd/systemd --unit=rt-systemd-suite.target --show-status=0 --log-level=warning
"#;

/// The boot target (systemd isolates it, so it must allow that): the
/// suite's service and what that needs, nothing of the host's own units.
const TARGET: &str = "[Unit]
Description=rt systemd cgroup driver suite
AllowIsolate=yes
Requires=rt-systemd-suite.service
";

/// The suite's unit: after dbus, the tests on the console, then power off.
const UNIT: &str = "[Unit]
Description=rt systemd cgroup driver suite
Requires=dbus.service
After=dbus.service

[Service]
Type=oneshot
ExecStart=/bin/sh /run-suite.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
";

/// Which of the suite's tests a boot runs.
#[derive(Clone, Copy, PartialEq)]
enum Hierarchy {
    Unified,
    V1,
}

impl Hierarchy {
    /// The kernel command line's word for it.
    fn cmdline(self) -> &'static str {
        match self {
            Hierarchy::Unified => "systemd.unified_cgroup_hierarchy=1",
            Hierarchy::V1 => "systemd.unified_cgroup_hierarchy=0",
        }
    }

    /// A sed filter on the test list: the v1 tests or the others.
    fn select(self) -> &'static str {
        match self {
            Hierarchy::Unified => "/cgroup_v1/d",
            Hierarchy::V1 => "/cgroup_v1/!d",
        }
    }
}

fn script(test: &Path, rt: &Path, hierarchy: Hierarchy) -> String {
    // $RT_SYSTEMD_SUITE_SCRIPT: a shell script of the host's to run in the
    // guest instead of the tests (to look around while debugging).
    if let Some(debug) = std::env::var_os("RT_SYSTEMD_SUITE_SCRIPT") {
        return format!(
            "mkdir -p /root/bin && cp {rt} /root/bin/rt\nexport RT_BIN=/root/bin/rt PATH=/usr/sbin:/usr/bin:/sbin:/bin\nsh {}\necho {END}\nsystemctl poweroff --force --force\n",
            std::path::Path::new(&debug).display(),
            rt = rt.display()
        );
    }
    // rt runs from the guest's tmpfs: executing it through the overlay
    // and virtiofs is several times slower under TCG.
    format!(
        "echo \"guest: systemd $(systemctl --version | head -n1), /sys/fs/cgroup: $(stat -f -c %T /sys/fs/cgroup), $(ls /sys/fs/cgroup | head -n 20 | tr '\\n' ' ')\"\n\
         mkdir -p /root/bin && cp {rt} /root/bin/rt\n\
         export RT_BIN=/root/bin/rt HOME=/root RUST_BACKTRACE=0 PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         for t in $({test} --list 2>/dev/null | sed -n 's/: test$//p' | sed '{select}'); do\n\
           start=$(date +%s)\n\
           {test} --exact \"$t\" --test-threads=1\n\
           echo \"guest: $t took $(( $(date +%s) - start )) s\"\n\
         done\n\
         echo {END}\n\
         systemctl poweroff --force --force\n",
        rt = rt.display(),
        test = test.display(),
        select = hierarchy.select(),
    )
}

/// virtiofsd sharing the host's `/` (the guest mounts it read-only).
fn spawn_virtiofsd(socket: &Path, log: &Path) -> anyhow::Result<Child> {
    let bin = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("virtiofsd not found: integration/install-deps installs qemu-system-x86")?;
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .args(["-o", "source=/", "-o", "cache=auto", "-o", "sandbox=chroot"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?);
    rt_sys::spawn::die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    for _ in 0..100 {
        if socket.exists() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("virtiofsd made no socket at {}", socket.display())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let root = workspace();
    let work = root.join("target/systemd-suite");
    std::fs::create_dir_all(&work)?;
    eprintln!("systemd-suite: building rt and the tests");
    let debug_rt = rt_integration::suite::build_rt()?;
    // Stripped: a debug rt is ~180 MB, and where its read-only overlay
    // cannot be made rt protects itself with a sealed copy per command,
    // slow under TCG. (Debian 12's 6.1 kernel refuses a detached layer;
    // the overlay's layers there are /dev or an empty directory.)
    let rt = work.join("rt");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&rt)
        .arg(&debug_rt)
        .status()
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip failed");
    }
    let test = build_test("rt-integration", "test", "systemd")?;

    let assets = rt_vm::guest::dir();
    // Debian's cloud kernel: the guest boots the host's systemd and podman,
    // which want a general kernel (rt's own guest kernel is minimal).
    let kernel = rt_vm::guest::cloud_kernel(&assets)
        .context("no guest kernel: run integration/vm/install-guest")?;
    let accel = rt_vm::qemu::cached_accel(&kernel, &assets).unwrap_or(Accel::Tcg);
    eprintln!("systemd-suite: kernel {}, {accel:?}", kernel.version);
    let mut passed = 0;
    let mut failed = 0;
    let mut finished = true;
    // `--only v1` or `--only unified`: one boot (while debugging).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let boots: Vec<Hierarchy> = match only.map(String::as_str) {
        None => vec![Hierarchy::Unified, Hierarchy::V1],
        Some("v1") => vec![Hierarchy::V1],
        Some("unified") => vec![Hierarchy::Unified],
        Some(other) => bail!("--only {other}: expected v1 or unified"),
    };
    for hierarchy in boots {
        eprintln!("systemd-suite: booting with {}", hierarchy.cmdline());
        let (reached, p, f) = boot(&work, &kernel, accel, &test, &rt, hierarchy)?;
        if !reached {
            eprintln!(
                "systemd-suite: the guest ({}) stopped before finishing the suite",
                hierarchy.cmdline()
            );
        }
        finished &= reached && p > 0;
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    if !finished || failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// One guest boot running the tests for `hierarchy`: whether it reached
/// the end, and the passed and failed counts.
fn boot(
    work: &Path,
    kernel: &rt_vm::kernel::Kernel,
    accel: Accel,
    test: &Path,
    rt: &Path,
    hierarchy: Hierarchy,
) -> anyhow::Result<(bool, u64, u64)> {
    let mut initrd = Initramfs::new();
    initrd.busybox(&rt_testsupport::busybox())?;
    initrd.modules(&kernel.modules_for(&["virtio_pci", "virtiofs", "overlay", "virtio_blk"])?)?;
    initrd.data("/init", INIT, 0o755)?;
    initrd.data("/suite.service", UNIT, 0o644)?;
    initrd.data("/suite.target", TARGET, 0o644)?;
    initrd.data("/suite.sh", script(test, rt, hierarchy), 0o755)?;
    let image = work.join("initrd");
    initrd.write(&image)?;

    let socket = work.join("fs.sock");
    let _ = std::fs::remove_file(&socket);
    let mut virtiofsd = spawn_virtiofsd(&socket, &work.join("virtiofsd.log"))?;
    let memory_mib = 2048;
    let mut extra = rt_vm::qemu::container_devices(
        memory_mib,
        rt_vm::qemu::RootDevice::Share(&socket),
        &work.join("unused.sock"),
        &work.join("unused-qmp.sock"),
        false,
        None,
    );
    // The share's tag is `host` here; the agent channel is not used.
    for a in extra.iter_mut() {
        if a == "vhost-user-fs-pci,chardev=fs,tag=share" {
            *a = "vhost-user-fs-pci,chardev=fs,tag=host".into();
        }
    }
    // A block device (empty, never mounted) for the IO limits' tests.
    let disk = work.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .with_context(|| format!("creating {}", disk.display()))?;
    extra.extend([
        "-drive".into(),
        format!("file={},if=none,id=disk,format=raw", disk.display()),
        "-device".into(),
        "virtio-blk-pci,drive=disk".into(),
    ]);
    let machine = Machine {
        kernel: kernel.vmlinuz.clone(),
        initrd: image,
        cmdline: format!(
            "{} loglevel=3 {}",
            rt_vm::qemu::FAST_BOOT,
            hierarchy.cmdline()
        ),
        memory_mib,
        cpus: 2,
        accel,
        pcie: true,
        extra,
        tcg_tb_mib: None,
    };
    let timeout = Duration::from_secs(if accel == Accel::Kvm { 300 } else { 900 });
    let out = machine.boot(END, timeout, |l| println!("guest| {l}"));
    let _ = virtiofsd.kill();
    let _ = virtiofsd.wait();
    let _ = std::fs::remove_file(&socket);
    let out = out?;
    let (passed, failed) = tally(&out.lines);
    Ok((out.reached, passed, failed))
}
