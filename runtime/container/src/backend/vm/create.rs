//! `create` of a VM container, and what `restore` shares with it: the
//! host cgroup and the supervisor's launch.

use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::stand_in::{host_pty, spawn_stand_in};
use super::supervisor::{self, Transport};
use super::{binaries, boot_timeout, cpus, files, memory_floor, memory_mib, share, VmError};
use super::{QEMU_OVERHEAD_MIB, ROOTFS};
use crate::error::{Error, Result};
use crate::sandbox::{Created, Options, Sandbox};
use crate::state::{self, ContainerDir, State, Status};

/// The network a VM container gets from rt (`run.rt.network`): host is
/// refused, none is the guest rt's own business (it brings `lo` up), the
/// bridge modes are attached to the supervisor's namespace.
pub(super) fn own_network(
    network: Option<&crate::network::Plan>,
) -> Result<Option<&crate::network::Plan>> {
    match network {
        Some(p) if p.config.mode == rt_netns::Mode::Host => Err(Error::Vm(VmError::Unsupported(
            "run.rt.network=host (the host's network namespace)".into(),
        ))),
        Some(p) if p.config.mode.uses_bridge() => Ok(Some(p)),
        _ => Ok(None),
    }
}

/// Options of the caller's that have no meaning across the VM boundary:
/// refused rather than ignored.
pub(super) fn refuse_options(opts: &Options, restore: bool) -> Result<()> {
    let op = match (opts.preserve_fds > 0, opts.no_pivot, restore) {
        (true, _, false) => "create --preserve-fds",
        (true, _, true) => "restore --preserve-fds",
        (_, true, false) => "create --no-pivot",
        (_, true, true) => "restore --no-pivot",
        _ => return Ok(()),
    };
    Err(Error::NotSupported { backend: "vm", op })
}

/// Whether the spec's process has a terminal (`process.terminal`).
pub(super) fn wants_terminal(spec: &oci_spec::runtime::Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// The rootfs transport the spec asks for (`run.rt.vm.rootfs`).
pub(super) fn transport(spec: &oci_spec::runtime::Spec) -> Result<Transport> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ROOTFS))
        .map(String::as_str)
    {
        None | Some("share") => Ok(Transport::Share),
        Some("block") => Ok(Transport::Block),
        Some(other) => Err(Error::Vm(VmError::Annotation {
            key: ROOTFS,
            value: other.to_string(),
            why: "share (virtiofs, the default) or block (an ext4 image that migrates)",
        })),
    }
}

/// The block transport copies bind sources into the disk at create: a
/// file is fine (podman's /etc/hosts, resolv.conf, hostname), a directory
/// (a volume) would silently stop being shared, so it is refused.
fn check_block_binds(binds: &[share::Bind]) -> Result<()> {
    for b in binds {
        if b.source.is_dir() {
            return Err(Error::Vm(VmError::Unsupported(format!(
                "bind-mounting the directory {} with run.rt.vm.rootfs=block (the disk holds a \
                 copy, not the directory: use the share transport for volumes)",
                b.source.display()
            ))));
        }
    }
    Ok(())
}

/// podman bind-mounts a host tmpfs on /dev/shm (its pod's shared
/// memory), which cannot be shared with a VM through a disk anyway: on the
/// block transport the guest's container gets a tmpfs of its own there,
/// as Kata gives it.
fn own_shm(spec: &mut serde_json::Value) {
    let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) else {
        return;
    };
    for m in mounts.iter_mut() {
        let bind = m["type"] == "bind"
            || m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
        if m["destination"] == "/dev/shm" && bind {
            *m = serde_json::json!({
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            });
        }
    }
}

pub(super) fn create(sandbox: Sandbox<'_>, state: &mut State) -> Result<Created> {
    let Sandbox {
        dir,
        bundle,
        opts,
        cgroup,
        network,
        ..
    } = sandbox;
    let network = own_network(network)?;
    refuse_options(opts, false)?;
    let mut spec_json =
        serde_json::to_value(&bundle.spec).map_err(|e| Error::Vm(VmError::Config(e)))?;
    share::check(&spec_json)?;
    let transport = transport(&bundle.spec)?;
    if transport == Transport::Block {
        own_shm(&mut spec_json);
    }
    let (guest, binds) = share::guest_config(&spec_json, &bundle.dir, network.is_some())?;
    if transport == Transport::Block {
        check_block_binds(&binds)?;
    }
    let cpus = cpus(&bundle.spec)?;
    let memory_mib = memory_mib(&bundle.spec)?;
    // A block-transport VM can be checkpointed and moved: its RAM must hold
    // all it runs, so rt rides in its initramfs. A shared-rootfs VM reads
    // rt from the tools disk.
    let from = match transport {
        Transport::Share => rt_vm::guest::RtFrom::Disk,
        Transport::Block => rt_vm::guest::RtFrom::Initramfs,
    };
    let GuestAssets {
        kernel,
        initrd,
        tools,
        kvm,
    } = guest_assets(from)?;
    let memory_mib = memory_mib.max(memory_floor(&initrd));
    let terminal = wants_terminal(&bundle.spec);
    host_cgroup(dir, state, cgroup, &bundle.spec, memory_mib)?;
    let cfg = supervisor::Config {
        id: state.id.clone(),
        kernel,
        initrd,
        kvm,
        cpus,
        memory_mib,
        rootfs: bundle.rootfs.clone(),
        binds,
        guest,
        terminal,
        netns: share::netns_path(&spec_json),
        own_network: network.is_some(),
        cgroup: state.cgroup.clone(),
        boot_timeout_secs: boot_timeout(),
        transport,
        incoming: None,
        free_page_reporting: true,
        tools,
    };
    let created = launch(dir, state, &cfg, opts, network)?;
    // The created marker `status` reads, removed at start.
    let fifo = dir.fifo();
    std::fs::write(&fifo, b"").map_err(|source| Error::Io {
        what: "writing the created marker",
        path: fifo,
        source,
    })?;
    let json = serde_json::to_vec(&state.oci(Status::Creating)).unwrap_or_default();
    crate::hooks::run(
        bundle.spec.hooks().as_ref(),
        crate::hooks::Kind::Prestart,
        &json,
    )?;
    crate::hooks::run(
        bundle.spec.hooks().as_ref(),
        crate::hooks::Kind::CreateRuntime,
        &json,
    )?;
    state.stored_status = Status::Created;
    dir.save(state)?;
    Ok(created)
}

/// What a VM boots from.
pub(super) struct GuestAssets {
    pub kernel: PathBuf,
    /// The initramfs for this rt (built once and cached).
    pub initrd: PathBuf,
    /// The tools disk when rt comes [`rt_vm::guest::RtFrom::Disk`].
    pub tools: Option<PathBuf>,
    /// Whether the accelerator probe found KVM.
    pub kvm: bool,
}

pub(super) fn guest_assets(from: rt_vm::guest::RtFrom) -> Result<GuestAssets> {
    let assets = rt_vm::guest::dir();
    let kernel = rt_vm::guest::kernel(&assets).map_err(VmError::from)?;
    let (rt, agent) = binaries()?;
    let initrd =
        rt_vm::guest::initrd(&assets, &kernel, &agent, &rt, from).map_err(VmError::from)?;
    let tools = match from {
        rt_vm::guest::RtFrom::Disk => {
            Some(rt_vm::guest::tools_disk(&assets, &rt).map_err(VmError::from)?)
        }
        rt_vm::guest::RtFrom::Initramfs => None,
    };
    let kvm = rt_vm::qemu::cached_accel(&kernel, &assets) == Some(rt_vm::qemu::Accel::Kvm);
    Ok(GuestAssets {
        kernel: kernel.vmlinuz,
        initrd,
        tools,
        kvm,
    })
}

/// The host cgroup holds the supervisor, QEMU and virtiofsd, limited to
/// the guest's memory plus QEMU's own when the spec sets a limit.
pub(super) fn host_cgroup(
    dir: &ContainerDir,
    state: &mut State,
    cgroup: &mut dyn rt_cgroups::Manager,
    spec: &oci_spec::runtime::Spec,
    memory_mib: u32,
) -> Result<()> {
    if state.cgroup.is_none() {
        return Ok(());
    }
    cgroup.create()?;
    state.cgroup = Some(cgroup.record());
    dir.save(state)?;
    if let Some(limit) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
    {
        let host = (memory_mib as u64 + QEMU_OVERHEAD_MIB) << 20;
        let mem = oci_spec::runtime::LinuxMemoryBuilder::default()
            .limit(host.max(limit as u64) as i64)
            .build()
            .map_err(|e| Error::Vm(VmError::Helper(e.to_string())))?;
        let mut r = LinuxResources::default();
        r.set_memory(Some(mem));
        cgroup.set(&r)?;
    }
    Ok(())
}

/// Writes `cfg` and starts the supervisor, which boots (or loads) the VM;
/// returns once it answered, its pid and the terminal's master.
pub(super) fn launch(
    dir: &ContainerDir,
    state: &mut State,
    cfg: &supervisor::Config,
    opts: &Options,
    network: Option<&crate::network::Plan>,
) -> Result<Created> {
    let path = dir.path().join(files::CONFIG);
    std::fs::write(&path, serde_json::to_vec(cfg).unwrap_or_default()).map_err(|source| {
        Error::Io {
            what: "writing",
            path: path.clone(),
            source,
        }
    })?;
    let share_dir = dir.path().join(files::SHARE);
    if !share_dir.exists() {
        std::fs::create_dir(&share_dir).map_err(|source| Error::Io {
            what: "creating",
            path: share_dir.clone(),
            source,
        })?;
    }
    state.vm_dir = Some(dir.path().to_path_buf());
    let (master, slave) = if cfg.terminal {
        let (m, s) = host_pty(opts)?;
        (m, Some(s))
    } else {
        (None, None)
    };
    let dir_arg = dir.path().as_os_str();
    let state_id = state.id.clone();
    let mut attached = None;
    let wait = match &cfg.incoming {
        Some(inc) => inc.timeout_secs + 60,
        None => cfg.boot_timeout_secs + 150,
    };
    let (pid, answer) = spawn_stand_in(
        &["vm-supervisor".as_ref(), dir_arg],
        slave.as_ref(),
        &dir.path().join(files::SUPERVISOR_LOG),
        &mut |pid| {
            // Saved at once: a delete --force after a killed create finds
            // the supervisor (and through it the VM).
            state.pid = pid.as_raw();
            state.start_time = state::proc_stat(pid).map_or(0, |(_, t)| t);
            dir.save(state)?;
            Ok(())
        },
        network.is_some().then_some(&mut |pid: Pid| {
            let plan = network.expect("checked");
            let a = plan
                .attach(&state_id, pid.as_raw())
                .map_err(|e| Error::Vm(e.into()))?;
            let line = serde_json::to_vec(&a).map_err(|e| Error::Vm(VmError::Config(e)))?;
            attached = Some(a);
            Ok(line)
        }),
        Duration::from_secs(wait),
        false,
    )?;
    drop(slave);
    if attached.is_some() {
        state.network = attached;
        dir.save(state)?;
    }
    if let Some(e) = answer.error {
        return Err(Error::Vm(VmError::Guest(e)));
    }
    if answer.guest_pid.is_none() {
        return Err(Error::Vm(VmError::NoAnswer(state.id.clone())));
    }
    tracing::info!(
        kernel = answer.kernel.as_deref().unwrap_or(""),
        "VM container up"
    );
    Ok(Created {
        unsaved: false,
        pid,
        terminal: master,
        netns: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_dev_shm_becomes_the_guests_own_tmpfs() {
        let mut spec = serde_json::json!({"mounts": [
            {"destination": "/dev/shm", "type": "bind", "source": "/var/lib/x/shm", "options": ["rbind"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/h", "options": ["rbind"]}
        ]});
        own_shm(&mut spec);
        assert_eq!(spec["mounts"][0]["type"], "tmpfs");
        assert_eq!(spec["mounts"][1]["source"], "/h");
    }
}
