//! Checkpoint, restore and live migration of a VM container, on the side
//! of the rt command (the supervisor's side is `snapshot`).
//!
//! A checkpoint image is a directory:
//! - `rt-checkpoint.json`: [`Image`], with its format version, what rt
//!   needs to rebuild the same device set, the workload's guest pid, and
//!   rt's own state of the container (spec, annotations, network record);
//! - `vm.state`: QEMU's migration stream (devices and memory: the
//!   workload's whole state in the guest, its page cache included);
//! - `rootfs.img`: the block transport's disk, sparse;
//! - `inventory.img`: written last, it marks the image complete. podman
//!   restores only from a directory holding a file of that name (CRIU's
//!   inventory); rt's is JSON naming the format and the files, not a
//!   CRIU image.

use std::path::Path;
use std::time::{Duration, Instant};

use rt_vm::channel::Op;
use serde::{Deserialize, Serialize};

use super::create::{
    guest_assets, host_cgroup, launch, own_network, refuse_options, wants_terminal,
};
use super::supervisor::{self, Incoming, Transport};
use super::{dir_of, files, request, share, VmError};
use crate::backend::{CheckpointOptions, MigrationEnd};
use crate::error::{Error, Result};
use crate::sandbox::{Created, Sandbox};
use crate::state::{self, State, Status};

/// The image's description file.
pub const DESCRIPTION: &str = "rt-checkpoint.json";
/// The file whose presence marks a complete image (podman's check).
pub const INVENTORY: &str = "inventory.img";
/// The format of [`Image`]; a restore refuses any other. 2: the
/// container's state is in the description.
pub const FORMAT: u32 = 2;

/// What a checkpoint image says about the VM it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub format: u32,
    /// The rt that wrote it (informative: the format version decides).
    pub rt_version: String,
    pub backend: String,
    /// The container's id at checkpoint.
    pub id: String,
    /// When it was taken (RFC 3339).
    pub taken: String,
    /// QEMU's version line: its migration streams load only into a QEMU
    /// that understands them.
    pub qemu: String,
    /// The device set the stream needs on the loading side.
    pub cpus: u32,
    pub memory_mib: u32,
    pub kvm: bool,
    pub terminal: bool,
    /// A virtio-net device (the caller's namespace or rt's own network).
    pub network: bool,
    pub own_network: bool,
    /// The disk image's size in bytes.
    pub disk_bytes: u64,
    /// The init's pid in the guest.
    pub guest_pid: i32,
    /// A virtio-balloon with free page reporting (absent from images of
    /// rt before 2026-12-06, whose VMs had none).
    #[serde(default)]
    pub free_page_reporting: bool,
    /// rt's state of the container at checkpoint: its spec (with the
    /// annotations the command line set), its network record (MAC,
    /// address) and its cgroup record.
    pub container: State,
}

/// The QEMU version line (`QEMU emulator version 7.2.…`), asked once per
/// process (a restore reads its image in the engine and in the backend).
fn qemu_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(ask_qemu_version).clone()
}

fn ask_qemu_version() -> String {
    std::process::Command::new(rt_vm::qemu::program())
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// The supervisor's configuration, from the state directory.
fn config_of(dir: &Path) -> Result<supervisor::Config> {
    let path = dir.join(files::CONFIG);
    let text = std::fs::read(&path).map_err(io("reading", &path))?;
    serde_json::from_slice(&text).map_err(|e| Error::Vm(VmError::Config(e)))
}

/// The init's pid in the guest, from the guest's `rt state`.
fn guest_pid(dir: &Path, id: &str) -> Result<i32> {
    let reply = request(
        dir,
        id,
        Op::Rt {
            args: vec!["state".into()],
            input: None,
        },
    )?;
    if let Some(e) = reply.error {
        return Err(Error::Vm(VmError::Guest(e)));
    }
    let v: serde_json::Value = serde_json::from_str(reply.output.as_deref().unwrap_or(""))
        .map_err(|e| Error::Vm(VmError::Config(e)))?;
    v["pid"]
        .as_i64()
        .map(|p| p as i32)
        .ok_or_else(|| Error::Vm(VmError::Guest("the guest's rt state has no pid".into())))
}

/// The description of the VM of `st` (state directory `dir`).
fn describe(st: &State, dir: &Path, cfg: &supervisor::Config) -> Result<Image> {
    let disk = dir.join(files::DISK);
    Ok(Image {
        format: FORMAT,
        rt_version: env!("CARGO_PKG_VERSION").to_string(),
        backend: "vm".into(),
        id: st.id.clone(),
        taken: state::now_rfc3339(),
        qemu: qemu_version(),
        cpus: cfg.cpus,
        memory_mib: cfg.memory_mib,
        kvm: cfg.kvm,
        terminal: cfg.terminal,
        network: cfg.netns.is_some() || cfg.own_network,
        own_network: cfg.own_network,
        disk_bytes: std::fs::metadata(&disk)
            .map_err(io("reading", &disk))?
            .len(),
        guest_pid: guest_pid(dir, &st.id)?,
        free_page_reporting: cfg.free_page_reporting,
        container: st.clone(),
    })
}

/// Refuses what a whole-VM save cannot do, by name. `--tcp-established`,
/// `--file-locks`, `--ext-unix-sk`, `--shell-job` and the cgroup and
/// namespace modes are CRIU's ways of saving what a VM save holds anyway
/// (the guest's sockets, locks, terminal and cgroups are in its memory),
/// so they are accepted.
fn refuse_unsupported(o: &CheckpointOptions) -> Result<()> {
    let op = if o.pre_dump {
        "checkpoint --pre-dump"
    } else if o.parent_path.is_some() {
        "checkpoint --parent-path"
    } else if o.page_server.is_some() {
        "checkpoint --page-server"
    } else if o.lazy_pages {
        "checkpoint --lazy-pages"
    } else {
        return Ok(());
    };
    Err(Error::NotSupported { backend: "vm", op })
}

/// Saves a running (or paused) VM container into `o.image_path`; without
/// `--leave-running` the VM ends and the container is stopped.
pub fn checkpoint(st: &State, o: &CheckpointOptions) -> Result<()> {
    refuse_unsupported(o)?;
    let dir = dir_of(st)?;
    let cfg = config_of(&dir)?;
    if cfg.transport != Transport::Block {
        return Err(Error::Vm(VmError::Unsupported(format!(
            "checkpoint of a VM whose rootfs is a virtiofs share (QEMU cannot migrate \
             vhost-user-fs): create the container with the annotation {}=block",
            super::ROOTFS
        ))));
    }
    let image = &o.image_path;
    std::fs::create_dir_all(image).map_err(io("creating the image directory", image))?;
    let inventory = image.join(INVENTORY);
    if inventory.exists() {
        return Err(Error::Vm(VmError::Helper(format!(
            "the image directory {} already holds a checkpoint",
            image.display()
        ))));
    }
    let description = describe(st, &dir, &cfg)?;
    let written = (|| -> Result<()> {
        write_json(&image.join(DESCRIPTION), &description)?;
        let reply = request(
            &dir,
            &st.id,
            Op::Save {
                dir: image.clone(),
                leave_running: o.leave_running,
            },
        )?;
        if let Some(e) = reply.error {
            return Err(Error::Vm(VmError::Guest(e)));
        }
        write_json(
            &inventory,
            &serde_json::json!({
                "rt-checkpoint": FORMAT,
                "description": DESCRIPTION,
                "files": [DESCRIPTION, super::snapshot::STATE_FILE, files::DISK],
            }),
        )
    })();
    if let Err(e) = written {
        for f in [
            DESCRIPTION,
            super::snapshot::STATE_FILE,
            files::DISK,
            INVENTORY,
        ] {
            let _ = std::fs::remove_file(image.join(f));
        }
        return Err(e);
    }
    if !o.leave_running {
        wait_gone(st, Duration::from_secs(30));
    }
    Ok(())
}

/// Waits for the supervisor to be gone (after a save that ended the VM).
fn wait_gone(st: &State, timeout: Duration) {
    let pid = nix::unistd::Pid::from_raw(st.pid);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match state::proc_stat(pid) {
            Some((s, t)) if s != 'Z' && t == st.start_time => {}
            _ => return,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::Vm(VmError::Config(e)))?;
    std::fs::write(path, bytes).map_err(io("writing", path))
}

/// Reads and checks an image's description.
pub fn read_image(image: &Path) -> Result<Image> {
    let bad = |why: String| {
        Error::Vm(VmError::Helper(format!(
            "{} is not a usable rt checkpoint: {why}",
            image.display()
        )))
    };
    if !image.join(INVENTORY).exists() {
        return Err(bad(format!(
            "no {INVENTORY} (an incomplete or missing image)"
        )));
    }
    let path = image.join(DESCRIPTION);
    let text = std::fs::read(&path).map_err(|e| bad(format!("reading {DESCRIPTION}: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("{DESCRIPTION}: {e}")))?;
    if v["format"].as_u64() != Some(FORMAT as u64) {
        return Err(bad(format!(
            "its format is {}, this rt reads format {FORMAT}",
            v["format"]
        )));
    }
    let img: Image = serde_json::from_value(v).map_err(|e| bad(format!("{DESCRIPTION}: {e}")))?;
    if img.backend != "vm" {
        return Err(bad(format!("backend {:?}", img.backend)));
    }
    let here = qemu_version();
    if img.qemu != here {
        return Err(bad(format!(
            "it was saved by {:?}, this host has {here:?}",
            img.qemu
        )));
    }
    Ok(img)
}

/// How a restore's VM state arrives.
#[derive(Debug, Clone)]
pub enum Source {
    /// A checkpoint image's `vm.state` and `rootfs.img`.
    Image,
    /// A live migration's stream at this QEMU URI (`unix:…`, `tcp:…`),
    /// the disk with it (an empty image of the same size is made).
    Incoming(String),
}

/// Restores a VM container from `image` (its description, and for
/// [`Source::Image`] its state and disk) under the sandbox's id.
pub fn restore(
    sandbox: Sandbox<'_>,
    state: &mut State,
    image: &Path,
    source: &Source,
) -> Result<Created> {
    let Sandbox {
        dir,
        bundle,
        opts,
        cgroup,
        network,
        ..
    } = sandbox;
    let network = own_network(network)?;
    refuse_options(opts, true)?;
    let img = read_image(image)?;
    let spec_json =
        serde_json::to_value(&bundle.spec).map_err(|e| Error::Vm(VmError::Config(e)))?;
    share::check(&spec_json)?;
    let netns = share::netns_path(&spec_json);
    let has_network = netns.is_some() || network.is_some();
    if has_network != img.network {
        return Err(Error::Vm(VmError::Unsupported(format!(
            "restoring a VM {} a network device into a bundle {} a network (the device set \
             must match the checkpoint's)",
            if img.network { "with" } else { "without" },
            if has_network { "with" } else { "without" },
        ))));
    }
    let terminal = wants_terminal(&bundle.spec);
    if terminal != img.terminal {
        return Err(Error::Vm(VmError::Unsupported(format!(
            "restoring a VM {} a terminal into a bundle whose process.terminal is {terminal}",
            if img.terminal { "with" } else { "without" },
        ))));
    }
    // A checkpointed VM's rt was in its initramfs (block transport).
    let assets = guest_assets(rt_vm::guest::RtFrom::Initramfs)?;
    let (kernel, initrd) = (assets.kernel, assets.initrd);
    let disk = dir.path().join(files::DISK);
    let (uri, timeout_secs) = match source {
        Source::Image => {
            super::snapshot::copy_sparse(&image.join(files::DISK), &disk)?;
            let state_file = image.join(super::snapshot::STATE_FILE);
            if !state_file.is_file() {
                return Err(Error::Vm(VmError::Helper(format!(
                    "{} is missing from the checkpoint",
                    state_file.display()
                ))));
            }
            (
                format!("exec:cat {}", super::snapshot::shell_quote(&state_file)),
                120,
            )
        }
        Source::Incoming(uri) => {
            let f = std::fs::File::create(&disk).map_err(io("creating", &disk))?;
            f.set_len(img.disk_bytes).map_err(io("sizing", &disk))?;
            (uri.clone(), 600)
        }
    };
    host_cgroup(dir, state, cgroup, &bundle.spec, img.memory_mib)?;
    let cfg = supervisor::Config {
        id: state.id.clone(),
        kernel,
        initrd,
        kvm: img.kvm,
        cpus: img.cpus,
        memory_mib: img.memory_mib,
        rootfs: bundle.rootfs.clone(),
        binds: Vec::new(),
        guest: serde_json::Value::Null,
        terminal,
        netns,
        own_network: network.is_some(),
        cgroup: state.cgroup.clone(),
        boot_timeout_secs: super::boot_timeout(),
        transport: Transport::Block,
        incoming: Some(Incoming {
            uri,
            guest_pid: img.guest_pid,
            timeout_secs,
        }),
        free_page_reporting: img.free_page_reporting,
        tools: None,
    };
    let created = launch(dir, state, &cfg, opts, network)?;
    state.stored_status = Status::Running;
    dir.save(state)?;
    Ok(created)
}

/// Live migration, the sending side: the destination QEMU waits at `uri`;
/// returns QEMU's figures once the destination has the whole VM (the
/// source is left stopped: [`finish`] ends or resumes it).
pub fn migrate(st: &State, uri: &str) -> Result<serde_json::Value> {
    let dir = dir_of(st)?;
    let cfg = config_of(&dir)?;
    if cfg.transport != Transport::Block {
        return Err(Error::Vm(VmError::Unsupported(format!(
            "migration of a VM whose rootfs is a virtiofs share: create the container with \
             the annotation {}=block",
            super::ROOTFS
        ))));
    }
    let reply = request(
        &dir,
        &st.id,
        Op::Migrate {
            uri: uri.to_string(),
        },
    )?;
    match reply.error {
        Some(e) => Err(Error::Vm(VmError::Guest(e))),
        None => Ok(reply
            .output
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or(serde_json::Value::Null)),
    }
}

/// After [`migrate`]: resume the source (the destination failed) or end it.
pub fn finish(st: &State, end: MigrationEnd) -> Result<()> {
    let dir = dir_of(st)?;
    let resume = end == MigrationEnd::Resume;
    let reply = request(&dir, &st.id, Op::Finish { resume })?;
    if let Some(e) = reply.error {
        return Err(Error::Vm(VmError::Guest(e)));
    }
    if !resume {
        wait_gone(st, Duration::from_secs(30));
    }
    if end == (MigrationEnd::Moved { same_host: true }) {
        // The interface's redirects are the destination's now: the
        // source's delete must not remove them.
        let _ = std::fs::remove_file(dir.join(files::NETWORK));
    }
    Ok(())
}

/// The description a migration's destination restores from (see
/// [`write_incoming_image`]).
pub fn describe_for_migration(st: &State) -> Result<serde_json::Value> {
    let dir = dir_of(st)?;
    let cfg = config_of(&dir)?;
    serde_json::to_value(describe(st, &dir, &cfg)?).map_err(|e| Error::Vm(VmError::Config(e)))
}

/// Writes a migration's description (the sender's, perhaps received over
/// the network) as the image a destination's `restore --incoming` reads.
pub fn write_incoming_image(image: &Path, description: &impl Serialize) -> Result<()> {
    std::fs::create_dir_all(image).map_err(io("creating", image))?;
    write_json(&image.join(DESCRIPTION), description)?;
    write_json(
        &image.join(INVENTORY),
        &serde_json::json!({"rt-checkpoint": FORMAT, "description": DESCRIPTION, "files": [DESCRIPTION]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_of_another_format_or_incomplete_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = read_image(d.path()).unwrap_err().to_string();
        assert!(e.contains("no inventory.img"), "{e}");
        std::fs::write(d.path().join(INVENTORY), "{}").unwrap();
        std::fs::write(d.path().join(DESCRIPTION), r#"{"format": 99}"#).unwrap();
        let e = read_image(d.path()).unwrap_err().to_string();
        assert!(e.contains("format is 99"), "{e}");
        std::fs::write(d.path().join(DESCRIPTION), "not json").unwrap();
        let e = read_image(d.path()).unwrap_err().to_string();
        assert!(e.contains("rt-checkpoint.json"), "{e}");
    }

    #[test]
    fn images_of_older_rt_restore_without_a_balloon() {
        let mut v = serde_json::json!({
            "format": FORMAT, "rt_version": "0.1.0", "backend": "vm", "id": "c",
            "taken": "now", "qemu": "QEMU emulator version 7.2.0", "cpus": 1,
            "memory_mib": 128, "kvm": false, "terminal": false, "network": false,
            "own_network": false, "disk_bytes": 1, "guest_pid": 7,
            "container": {"id": "c", "pid": 0, "stored_status": "running",
                "bundle": "/b", "rootfs": "/b/r", "created": "now", "owner": "root",
                "backend": "vm", "config": {"ociVersion": "1.0.0"}}
        });
        let old: Image = serde_json::from_value(v.clone()).unwrap();
        assert!(!old.free_page_reporting);
        v["free_page_reporting"] = true.into();
        let new: Image = serde_json::from_value(v).unwrap();
        assert!(new.free_page_reporting);
    }

    #[test]
    fn options_a_vm_save_cannot_honour_are_refused_by_name() {
        let o = CheckpointOptions {
            pre_dump: true,
            ..CheckpointOptions::default()
        };
        assert_eq!(
            refuse_unsupported(&o).unwrap_err().to_string(),
            "checkpoint --pre-dump is not supported by the vm backend"
        );
        let o = CheckpointOptions {
            tcp_established: true,
            file_locks: true,
            ..CheckpointOptions::default()
        };
        refuse_unsupported(&o).unwrap();
    }
}
