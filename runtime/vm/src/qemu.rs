//! QEMU's `microvm` machine: the command line, a boot that streams the
//! serial console until a marker line, and the accelerator probe.
//!
//! On some hosts /dev/kvm exists but a stock kernel hangs under it (nested
//! hypervisors), so KVM is used only after a test boot under it printed its
//! marker; otherwise TCG, whose guests need `tsc_early_khz` to calibrate
//! their clock. ACPI stays on: Debian kernels find virtio-mmio devices
//! through it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::initramfs::Initramfs;
use crate::kernel::Kernel;
use crate::{io, Error, Result};

/// The accelerator a guest runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// One guest: kernel, initramfs, command line, size.
#[derive(Debug, Clone)]
pub struct Machine {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to the console and accelerator arguments rt sets.
    pub cmdline: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// A PCIe bus (virtio-*-pci devices) instead of virtio-mmio only:
    /// vhost-user-fs needs it under TCG (it hangs on virtio-mmio).
    pub pcie: bool,
    /// Further QEMU arguments (devices).
    pub extra: Vec<String>,
    /// Under TCG, the size of QEMU's translation buffer in MiB (`tb-size`);
    /// `None` leaves QEMU's default of 1 GiB, filled as the guest runs new
    /// code and never returned. A full buffer is flushed and refilled.
    pub tcg_tb_mib: Option<u32>,
}

/// A container VM's translation buffer under TCG, in MiB. QEMU's default
/// (1 GiB) is never full here, so every block the guest ever ran stays
/// translated: 51 MB of QEMU's memory for an idle container, 48 MB of it
/// written by the boot and the container's creation, code that never runs
/// again. A buffer of 32 MiB is flushed about once, during the boot, and
/// bounds that memory whatever the workload runs (the host cgroup's
/// allowance for QEMU counts on a bound). Measured on this host
/// (docs/microvm.md): an idle container's QEMU 19 MB smaller, its first
/// line about 0.1 s later.
pub const CONTAINER_TB_MIB: u32 = 32;

/// The prefix of rt's own QEMU's directory in the assets' `qemu/`
/// (integration/vm/install-guest builds it from Debian's qemu source
/// package: the microvm machine and the virtio devices rt uses, nothing
/// else; docs/microvm.md has why and what it saves).
pub const OWN_QEMU_PREFIX: &str = "rt-qemu-";

/// The QEMU binary's file name, in rt's own build's directory as on PATH.
pub const QEMU: &str = "qemu-system-x86_64";

/// The QEMU rt runs: `$RT_VM_QEMU` if set, else rt's own build in the
/// assets directory if one is installed, else `qemu-system-x86_64` from
/// PATH (Debian's). Looked up once per process.
pub fn program() -> PathBuf {
    static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            std::env::var_os("RT_VM_QEMU")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .or_else(|| own_qemu(&crate::guest::dir()))
                .unwrap_or_else(|| PathBuf::from(QEMU))
        })
        .clone()
}

/// Whether `program` (QEMU `major.minor`) carries every guest write in a
/// live migration under TCG. Before 9.0, QEMU's bitmap sync cleared dirty
/// bits without re-arming TCG's TLB, so pages written through entries made
/// before the sync were not sent again and the destination ran on stale
/// memory; rt's own build carries the fix
/// (runtime/vm/qemu/patches/tcg-migration-dirty-tracking.patch). KVM
/// tracks writes itself and is not affected.
pub fn tcg_migration_carries_every_write(program: &Path, (major, minor): (u64, u64)) -> bool {
    let own = program
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d.to_string_lossy().starts_with(OWN_QEMU_PREFIX));
    own || (major, minor) >= (9, 0)
}

/// rt's own QEMU build in `assets`, if one is installed (the installer
/// leaves one: it removes the builds of older sources and options).
pub fn own_qemu(assets: &Path) -> Option<PathBuf> {
    let mut builds: Vec<PathBuf> = std::fs::read_dir(assets.join("qemu"))
        .ok()?
        .flatten()
        .filter(|e| {
            // Not `rt-qemu-<key>.partial`, a build cut short.
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(OWN_QEMU_PREFIX) && !name.contains('.')
        })
        .map(|e| e.path().join(QEMU))
        .filter(|p| p.is_file())
        .collect();
    builds.sort();
    builds.pop()
}

/// What a boot printed, and whether the marker was among it.
#[derive(Debug)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub reached: bool,
}

/// Kernel arguments that cut a guest's boot (measured in
/// shared/microvm-facts.md: 3.3 s to 2.1 s under TCG), for guests that need
/// no hardware beyond virtio: no timer or TSC checks, no mitigations, no
/// audit or LSMs, no legacy serial ports or keyboard probing.
///
/// `noreplace-smp`: a guest with one vCPU otherwise rewrites every `lock`
/// prefix of its kernel text at boot, which under TCG took 0.05–0.06 s of
/// each boot here (the prefixes' cost on one vCPU is nil).
pub const FAST_BOOT: &str = "quiet tsc=reliable no_timer_check mitigations=off audit=0 \
apparmor=0 security=none cryptomgr.notests random.trust_cpu=on 8250.nr_uarts=1 \
i8042.noaux i8042.nopnp i8042.dumbkbd noreplace-smp";

/// The frequency of QEMU's emulated local APIC timer, in kHz (its bus cycle
/// is 1 ns; a guest's calibration measures 999.4 MHz here). rt's own guest
/// kernel takes it as `lapic_timer_khz` (runtime/vm/kernel/patches/) and
/// skips the timer's calibration, 0.13 s of every boot under TCG.
pub const TCG_APIC_KHZ: u32 = 1_000_000;

/// Whether `vmlinux` is rt's own guest kernel, which lives in
/// `kernel/rt-guest-<key>/boot/`: only that kernel knows `lapic_timer_khz`
/// (another would hand it to its init as an environment variable).
pub fn is_own_kernel(vmlinux: &Path) -> bool {
    vmlinux
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|n| {
            n.to_string_lossy()
                .starts_with(crate::guest::OWN_KERNEL_PREFIX)
        })
}

/// How a microVM container's rootfs (and its bind-mount sources) reach
/// the guest.
#[derive(Debug, Clone, Copy)]
pub enum RootDevice<'a> {
    /// A virtiofs share tagged `share`, served by virtiofsd on this
    /// vhost-user socket: the bundle's own directory, writes land there;
    /// QEMU cannot migrate it.
    Share(&'a Path),
    /// A raw ext4 image on virtio-blk: migrates with the VM.
    Block(&'a Path),
}

/// The kernel argument (an environment variable of PID 1: the kernel
/// passes unknown `name=value` words to init) that tells the agent its
/// rootfs is on the virtio-blk disk rather than the virtiofs share.
pub const BLOCK_ROOT_ARG: &str = "rt_rootfs=block";

/// The devices of a microVM container (on a [`Machine`] with `pcie`):
/// guest memory shareable with vhost-user (memfd), the rootfs device, the
/// agent's virtio-serial port `rt.agent` (a listening UNIX socket at
/// `agent_socket`), QEMU's monitor (QMP) at `qmp_socket`, and with
/// `free_page_reporting` a virtio-balloon through which the guest hands
/// back the pages it frees (QEMU punches them out of the memfd), and with
/// `tools` the read-only disk rt runs from in the guest
/// ([`crate::guest::RtFrom::Disk`]).
pub fn container_devices(
    memory_mib: u32,
    root: RootDevice<'_>,
    agent_socket: &Path,
    qmp_socket: &Path,
    free_page_reporting: bool,
    tools: Option<&Path>,
) -> Vec<String> {
    let mut d: Vec<String> = vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
        "-numa".into(),
        "node,memdev=mem".into(),
    ];
    match root {
        RootDevice::Share(fs_socket) => d.extend([
            "-chardev".into(),
            format!("socket,id=fs,path={}", fs_socket.display()),
            "-device".into(),
            "vhost-user-fs-pci,chardev=fs,tag=share".into(),
        ]),
        RootDevice::Block(image) => d.extend([
            "-drive".into(),
            format!(
                "file={},if=none,id=root,format=raw,cache=writeback,discard=unmap",
                image.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=root".into(),
        ]),
    }
    d.extend([
        "-device".into(),
        "virtio-serial-pci,id=vser".into(),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            agent_socket.display()
        ),
        "-device".into(),
        "virtserialport,bus=vser.0,chardev=agent,name=rt.agent".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_socket.display()),
    ]);
    if free_page_reporting {
        d.extend([
            "-device".into(),
            "virtio-balloon-pci,free-page-reporting=on".into(),
        ]);
    }
    if let Some(image) = tools {
        d.extend([
            "-drive".into(),
            format!(
                "file={},if=none,id=tools,format=raw,readonly=on",
                image.display()
            ),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive=tools,serial={}",
                crate::guest::TOOLS_SERIAL
            ),
        ]);
    }
    d
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo's `cpu MHz`.
pub fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

impl Machine {
    /// The kernel command line rt passes.
    pub fn kernel_cmdline(&self) -> String {
        let mut line = String::from("console=ttyS0 panic=-1 rdinit=/init");
        if self.accel == Accel::Tcg {
            if let Some(khz) = tsc_khz() {
                line.push_str(&format!(" tsc_early_khz={khz}"));
            }
            if is_own_kernel(&self.kernel) {
                line.push_str(&format!(" lapic_timer_khz={TCG_APIC_KHZ}"));
            }
        }
        if !self.cmdline.is_empty() {
            line.push(' ');
            line.push_str(&self.cmdline);
        }
        line
    }

    /// The qemu-system-x86_64 invocation, serial console on stdout.
    pub fn command(&self) -> Command {
        let mut c = Command::new(program());
        let pcie = if self.pcie { ",pcie=on" } else { "" };
        c.args(["-M", &format!("microvm,acpi=on,isa-serial=on,rtc=on{pcie}")]);
        match self.accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            // Without ERMS and FSRM the guest's kernel copies and clears
            // memory with 8-byte loops instead of `rep movsb`/`rep stosb`,
            // which TCG runs one byte per translated block (the
            // initramfs's unpacking, every page cleared at a fault).
            Accel::Tcg => c.args([
                "-accel",
                &match self.tcg_tb_mib {
                    Some(mib) => format!("tcg,tb-size={mib}"),
                    None => "tcg".into(),
                },
                "-cpu",
                "max,-erms,-fsrm",
            ]),
        };
        c.args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &self.kernel_cmdline()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        c
    }

    /// Boots the guest and streams its console to `echo` until a line
    /// containing `marker` (then the guest is stopped), the guest exits, or
    /// `timeout` passes.
    pub fn boot(
        &self,
        marker: &str,
        timeout: Duration,
        mut echo: impl FnMut(&str),
    ) -> Result<Outcome> {
        let mut child = self.command().spawn().map_err(|source| Error::Spawn {
            program: program().display().to_string(),
            source,
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .split(b'\n')
                .map_while(|l| l.ok())
            {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut out = Outcome {
            lines: Vec::new(),
            reached: false,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    echo(&line);
                    let hit = line.contains(marker);
                    out.lines.push(line);
                    if hit {
                        out.reached = true;
                        break;
                    }
                }
                // The guest exited (its console closed) or time ran out.
                Err(_) => break,
            }
        }
        // Give a guest that reached its marker a moment to power off.
        let grace = Instant::now() + Duration::from_secs(if out.reached { 5 } else { 0 });
        while Instant::now() < grace {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        Ok(out)
    }
}

/// Chooses the accelerator: KVM if /dev/kvm opens and a test boot under it
/// prints its marker within `timeout`, TCG otherwise. The answer is cached
/// in `cache` per guest kernel and host kernel.
pub fn probe_accel(
    kernel: &Kernel,
    busybox: &Path,
    cache: &Path,
    timeout: Duration,
) -> Result<Accel> {
    if let Some(accel) = cached_accel(kernel, cache) {
        return Ok(accel);
    }
    let record = accel_record(kernel, cache);
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let accel = if kvm_opens && test_boot(kernel, busybox, cache, timeout)? {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let word = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    std::fs::write(&record, word).map_err(io("writing", &record))?;
    Ok(accel)
}

/// The accelerator a probe recorded for `kernel` on this host kernel, if
/// one ran ([`probe_accel`]); containers never probe at create.
pub fn cached_accel(kernel: &Kernel, cache: &Path) -> Option<Accel> {
    match std::fs::read_to_string(accel_record(kernel, cache))
        .ok()?
        .trim()
    {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

/// Where the probe's answer for `kernel` on this host kernel is kept.
fn accel_record(kernel: &Kernel, cache: &Path) -> PathBuf {
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    cache.join(format!("accel-{}-on-{}", kernel.version, host.trim()))
}

const PROBE_MARKER: &str = "RT-KVM-PROBE-OK";

fn test_boot(kernel: &Kernel, busybox: &Path, cache: &Path, timeout: Duration) -> Result<bool> {
    let initrd = cache.join("probe.initrd");
    let mut i = Initramfs::new();
    i.busybox(busybox)?;
    i.data(
        "/init",
        format!("#!/bin/sh\necho {PROBE_MARKER}\npoweroff -f\n"),
        0o755,
    )?;
    i.write(&initrd)?;
    let m = Machine {
        kernel: kernel.vmlinuz.clone(),
        initrd: initrd.clone(),
        cmdline: "quiet".into(),
        memory_mib: 256,
        cpus: 1,
        accel: Accel::Kvm,
        pcie: false,
        extra: Vec::new(),
        tcg_tb_mib: None,
    };
    let out = m.boot(PROBE_MARKER, timeout, |_| {})?;
    let _ = std::fs::remove_file(&initrd);
    tracing::info!(kvm = out.reached, "KVM probe boot");
    Ok(out.reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_command_line_carries_the_tsc_frequency() {
        let m = Machine {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "quiet".into(),
            memory_mib: 512,
            cpus: 2,
            accel: Accel::Tcg,
            pcie: false,
            extra: vec![],
            tcg_tb_mib: None,
        };
        let line = m.kernel_cmdline();
        assert!(line.starts_with("console=ttyS0"));
        assert!(line.ends_with(" quiet"));
        assert_eq!(line.contains("tsc_early_khz="), tsc_khz().is_some());
        let kvm = Machine {
            accel: Accel::Kvm,
            ..m
        };
        assert!(!kvm.kernel_cmdline().contains("tsc_early_khz"));
        let args: Vec<String> = kvm
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.windows(2).any(|w| w == ["-accel", "kvm"]));
        assert!(args.iter().any(|a| a.starts_with("microvm,acpi=on")));
    }

    /// A 128 MiB, one-vCPU TCG guest of `kernel` on PCIe.
    fn tcg_guest(kernel: &str) -> Machine {
        Machine {
            kernel: kernel.into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            memory_mib: 128,
            cpus: 1,
            accel: Accel::Tcg,
            pcie: true,
            extra: vec![],
            tcg_tb_mib: None,
        }
    }

    #[test]
    fn only_rt_s_build_or_qemu_9_migrates_live_under_tcg() {
        let own = Path::new("/var/lib/rt/vm/qemu/rt-qemu-eb8a97dd/qemu-system-x86_64");
        let debian = Path::new("/usr/bin/qemu-system-x86_64");
        assert!(tcg_migration_carries_every_write(own, (7, 2)));
        assert!(!tcg_migration_carries_every_write(debian, (7, 2)));
        assert!(!tcg_migration_carries_every_write(debian, (8, 2)));
        assert!(tcg_migration_carries_every_write(debian, (9, 0)));
        assert!(!tcg_migration_carries_every_write(
            Path::new("qemu-system-x86_64"),
            (7, 2)
        ));
    }

    #[test]
    fn own_qemu_is_the_installed_build_and_only_that() {
        let assets = std::env::temp_dir().join(format!("rt-qemu-test-{}", std::process::id()));
        let qemu = assets.join("qemu");
        assert_eq!(own_qemu(&assets), None, "no qemu/ directory");
        // A build cut short, and a directory of another name.
        for dir in ["rt-qemu-1234abcd.partial", "other"] {
            std::fs::create_dir_all(qemu.join(dir)).unwrap();
            std::fs::write(qemu.join(dir).join(QEMU), "").unwrap();
        }
        std::fs::create_dir_all(qemu.join("rt-qemu-0000beef")).unwrap();
        assert_eq!(own_qemu(&assets), None, "a build without its binary");
        let built = qemu.join("rt-qemu-0000beef").join(QEMU);
        std::fs::write(&built, "").unwrap();
        let found = own_qemu(&assets);
        std::fs::remove_dir_all(&assets).unwrap();
        assert_eq!(found, Some(built));
    }

    #[test]
    fn a_tcg_guest_gets_the_translation_buffer_it_asks_for() {
        let args = |m: &Machine| -> Vec<String> {
            m.command()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let m = Machine {
            tcg_tb_mib: Some(32),
            ..tcg_guest("/k")
        };
        assert!(args(&m)
            .windows(2)
            .any(|w| w == ["-accel", "tcg,tb-size=32"]));
        let default = Machine {
            tcg_tb_mib: None,
            ..m.clone()
        };
        assert!(args(&default).windows(2).any(|w| w == ["-accel", "tcg"]));
        let kvm = Machine {
            accel: Accel::Kvm,
            ..m
        };
        assert!(args(&kvm).windows(2).any(|w| w == ["-accel", "kvm"]));
    }

    #[test]
    fn only_rt_s_own_kernel_under_tcg_skips_the_apic_calibration() {
        let own =
            tcg_guest("/var/lib/rt/vm/kernel/rt-guest-1234abcd/boot/vmlinux-6.1.192-rt-1234abcd");
        assert!(own
            .kernel_cmdline()
            .contains(&format!(" lapic_timer_khz={TCG_APIC_KHZ}")));
        let kvm = Machine {
            accel: Accel::Kvm,
            ..own.clone()
        };
        assert!(!kvm.kernel_cmdline().contains("lapic_timer_khz"));
        let cloud = Machine {
            kernel: "/var/lib/rt/vm/kernel/linux-image-6.1.0-57-cloud-amd64/boot/vmlinuz-6.1.0-57-cloud-amd64"
                .into(),
            ..own
        };
        assert!(!cloud.kernel_cmdline().contains("lapic_timer_khz"));
    }
}
