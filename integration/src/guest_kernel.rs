//! Builds rt's own microVM guest kernel (`integration/vm/install-guest`):
//! `make tinyconfig` of Debian's `linux-source-6.1`, plus the options in
//! runtime/vm/kernel/rt-guest.config, every driver built in, and the
//! patches in runtime/vm/kernel/patches/ applied. It boots in
//! about half the time of Debian's cloud kernel under TCG and needs no
//! modules in the initramfs (docs/microvm.md has the figures).
//!
//! The result goes into `$RT_VM_DIR/kernel/rt-guest-<key>/` in the layout
//! of an unpacked kernel package: `boot/vmlinux-<release>` (the stripped
//! ELF, booted directly through its PVH entry) and
//! `lib/modules/<release>/modules.builtin`. The key hashes the source
//! package's version, the config fragment and the patches, so a changed
//! fragment or patch builds a new kernel and a second run with the same ones
//! reuses it. The build tree is removed afterwards.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The options rt's guest needs, on top of tinyconfig.
pub const FRAGMENT: &str = include_str!("../../runtime/vm/kernel/rt-guest.config");

/// Patches applied to the source, in order (`patch -p1`): each says in its
/// own comment what it is for.
pub const PATCHES: &[(&str, &str)] = &[(
    // `lapic_timer_khz=`: skip the local APIC timer's calibration (about
    // 0.13 s of every boot under TCG); rt_vm::qemu passes it.
    "lapic-timer-khz.patch",
    include_str!("../../runtime/vm/kernel/patches/lapic-timer-khz.patch"),
)];

const SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
const PACKAGE: &str = "linux-source-6.1";

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `patches` (name, text) in order to the tree `src` with
/// `patch -p1`, writing each into `scratch` first; `what` names the tree in
/// errors.
pub(crate) fn apply_patches(
    src: &Path,
    scratch: &Path,
    patches: &[(&str, &str)],
    what: &str,
) -> anyhow::Result<()> {
    for (name, text) in patches {
        let file = scratch.join(name);
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        run(Command::new("patch")
            .args(["-p1", "--batch", "--forward", "-s", "-d"])
            .arg(src)
            .arg("-i")
            .arg(&file))
        .with_context(|| format!("applying {name} to {what}"))?;
    }
    Ok(())
}

/// The directory the kernel for this source and fragment goes to.
fn target(assets: &Path, version: &str) -> (String, PathBuf) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (version, FRAGMENT, PATCHES).hash(&mut h);
    let key = format!("{:08x}", h.finish() as u32);
    let dir = assets
        .join("kernel")
        .join(format!("{}{key}", rt_vm::guest::OWN_KERNEL_PREFIX));
    (key, dir)
}

/// Builds (or finds, already built) rt's guest kernel; `None` when
/// Debian's kernel source is not installed (the cloud kernel serves then).
pub fn install(assets: &Path) -> anyhow::Result<Option<rt_vm::kernel::Kernel>> {
    if !Path::new(SOURCE).exists() {
        eprintln!("install-guest: {SOURCE} missing ({PACKAGE} not installed): no kernel of rt's own, the cloud kernel is used");
        return Ok(None);
    }
    let version = run(Command::new("dpkg-query").args(["-W", "-f=${Version}", PACKAGE]))?;
    let (key, dir) = target(assets, version.trim());
    if let Some(k) = rt_vm::kernel::Kernel::unpacked(&dir)? {
        return Ok(Some(k));
    }
    let build = assets.join("build").join(format!("linux-{key}"));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    let started = std::time::Instant::now();
    eprintln!(
        "install-guest: building rt's guest kernel from {PACKAGE} {} in {} (several minutes, once)",
        version.trim(),
        build.display()
    );
    run(Command::new("tar")
        .args(["-xf", SOURCE, "--strip-components=1", "-C"])
        .arg(&build))?;
    apply_patches(&build, &build, PATCHES, PACKAGE)?;
    let fragment = build.join("rt-guest.config");
    std::fs::write(
        &fragment,
        format!("{FRAGMENT}\nCONFIG_LOCALVERSION=\"-rt-{key}\"\nCONFIG_LOCALVERSION_AUTO=n\n"),
    )?;
    let make = |args: &[&str]| run(Command::new("make").arg("-C").arg(&build).args(args));
    make(&["-s", "tinyconfig"])?;
    run(Command::new(build.join("scripts/kconfig/merge_config.sh"))
        .current_dir(&build)
        .args(["-m", ".config", "rt-guest.config"]))?;
    make(&["-s", "olddefconfig"])?;
    // Every option the fragment turns on must have survived (a dependency
    // missing in the fragment drops it silently otherwise).
    let config = std::fs::read_to_string(build.join(".config"))?;
    let lost: Vec<&str> = FRAGMENT
        .lines()
        .filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y"))
        .filter(|l| !config.lines().any(|c| c == *l))
        .chain(FRAGMENT.lines().filter(|l| {
            // `# CONFIG_X is not set` lines: X must stay off.
            l.strip_prefix("# ")
                .and_then(|o| o.strip_suffix(" is not set"))
                .is_some_and(|o| config.lines().any(|c| c == format!("{o}=y")))
        }))
        .collect();
    if !lost.is_empty() {
        bail!("the kernel config did not take {lost:?}: see what they depend on (or what selects them) and fix runtime/vm/kernel/rt-guest.config");
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get() + 1);
    make(&["-s", &format!("-j{jobs}"), "vmlinux"])?;
    let release = make(&["-s", "kernelrelease"])?.trim().to_string();
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let modules = partial.join("lib/modules").join(&release);
    std::fs::create_dir_all(&modules)?;
    std::fs::create_dir_all(partial.join("boot"))?;
    run(Command::new("strip")
        .arg("-o")
        .arg(partial.join(format!("boot/vmlinux-{release}")))
        .arg(build.join("vmlinux")))?;
    std::fs::copy(
        build.join("modules.builtin"),
        modules.join("modules.builtin"),
    )?;
    std::fs::copy(
        build.join(".config"),
        partial.join(format!("boot/config-{release}")),
    )?;
    std::fs::rename(&partial, &dir)?;
    let _ = std::fs::remove_dir_all(&build);
    // Kernels of older fragments are of no further use.
    for e in std::fs::read_dir(assets.join("kernel"))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(rt_vm::guest::OWN_KERNEL_PREFIX) && e.path() != dir {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    eprintln!(
        "install-guest: built {release} in {} s",
        started.elapsed().as_secs()
    );
    rt_vm::kernel::Kernel::unpacked(&dir)?
        .context("the built kernel is not where it was put")
        .map(Some)
}
