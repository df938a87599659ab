//! Runs rt's systemd cgroup driver tests (integration/tests/systemd.rs)
//! inside a QEMU guest whose PID 1 is Debian's systemd, with cgroup v2
//! unified: this host runs no systemd.
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

fn script(test: &Path, rt: &Path) -> String {
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
        "echo \"guest: systemd $(systemctl --version | head -n1), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)\"\n\
         mkdir -p /root/bin && cp {rt} /root/bin/rt\n\
         export RT_BIN=/root/bin/rt HOME=/root RUST_BACKTRACE=0 PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         for t in $({test} --list 2>/dev/null | sed -n 's/: test$//p'); do\n\
           start=$(date +%s)\n\
           {test} --exact \"$t\" --test-threads=1\n\
           echo \"guest: $t took $(( $(date +%s) - start )) s\"\n\
         done\n\
         echo {END}\n\
         systemctl poweroff --force --force\n",
        rt = rt.display(),
        test = test.display(),
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
    // cannot be made (Debian 12's 6.1 kernel refuses a detached layer) rt
    // protects itself with a sealed copy per command, slow under TCG.
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
    let kernel = rt_vm::guest::kernel(&assets)
        .context("no guest kernel: run integration/vm/install-guest")?;
    let accel = rt_vm::qemu::cached_accel(&kernel, &assets).unwrap_or(Accel::Tcg);
    eprintln!("systemd-suite: kernel {}, {accel:?}", kernel.version);

    let mut initrd = Initramfs::new();
    initrd.busybox(&rt_testsupport::busybox())?;
    initrd.modules(&kernel.modules_for(&["virtio_pci", "virtiofs", "overlay"])?)?;
    initrd.data("/init", INIT, 0o755)?;
    initrd.data("/suite.service", UNIT, 0o644)?;
    initrd.data("/suite.target", TARGET, 0o644)?;
    initrd.data("/suite.sh", script(&test, &rt), 0o755)?;
    let image = work.join("initrd");
    initrd.write(&image)?;

    let socket = work.join("fs.sock");
    let _ = std::fs::remove_file(&socket);
    let mut virtiofsd = spawn_virtiofsd(&socket, &work.join("virtiofsd.log"))?;
    let memory_mib = 2048;
    let mut extra = rt_vm::qemu::container_devices(memory_mib, &socket, &work.join("unused.sock"));
    // The share's tag is `host` here; the agent channel is not used.
    for a in extra.iter_mut() {
        if a == "vhost-user-fs-pci,chardev=fs,tag=share" {
            *a = "vhost-user-fs-pci,chardev=fs,tag=host".into();
        }
    }
    let machine = Machine {
        kernel: kernel.vmlinuz.clone(),
        initrd: image,
        cmdline: format!("{} loglevel=3", rt_vm::qemu::FAST_BOOT),
        memory_mib,
        cpus: 2,
        accel,
        pcie: true,
        extra,
    };
    let timeout = Duration::from_secs(if accel == Accel::Kvm { 300 } else { 900 });
    let out = machine.boot(END, timeout, |l| println!("guest| {l}"));
    let _ = virtiofsd.kill();
    let _ = virtiofsd.wait();
    let _ = std::fs::remove_file(&socket);
    let out = out?;
    let (passed, failed) = tally(&out.lines);
    if !out.reached {
        eprintln!("systemd-suite: the guest stopped before finishing the suite");
    }
    println!("{passed} passed, {failed} failed");
    if !out.reached || failed > 0 || passed == 0 {
        std::process::exit(1);
    }
    Ok(())
}
