//! Starting the VM supervisor's helpers: virtiofsd (the share) and QEMU
//! (the VM), both with their logs in the state directory and dying with
//! the supervisor.

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::supervisor::{Config, Transport};
use super::{files, VmError};

fn log_file(path: &Path) -> Result<File, VmError> {
    File::create(path).map_err(|source| VmError::Io {
        what: "creating",
        path: path.to_path_buf(),
        source,
    })
}

/// The virtiofsd binary: $RT_VIRTIOFSD, or Debian's C daemon, or the Rust
/// one's usual place.
fn virtiofsd() -> PathBuf {
    if let Some(p) = std::env::var_os("RT_VIRTIOFSD").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/lib/qemu/virtiofsd"))
}

/// Starts virtiofsd on the container's share, listening on its socket in
/// `dir`.
pub(super) fn spawn_virtiofsd(dir: &Path) -> Result<Child, VmError> {
    let log = log_file(&dir.join(files::VIRTIOFSD_LOG))?;
    let bin = virtiofsd();
    let mut cmd = Command::new(&bin);
    // The supervisor binds the socket (by a path of any length: see
    // `socket_path`) and hands virtiofsd the listener: with
    // --socket-path, virtiofsd names its pid file after the path.
    let sock = super::socket_path(dir, files::FS_SOCKET)?;
    let listener = UnixListener::bind(&sock.path).map_err(|source| VmError::Io {
        what: "binding",
        path: dir.join(files::FS_SOCKET),
        source,
    })?;
    rt_sys::spawn::inherit_fd(&mut cmd, std::os::fd::OwnedFd::from(listener), VIRTIOFSD_FD);
    cmd.arg(format!("--fd={VIRTIOFSD_FD}"))
        .arg("-o")
        .arg(format!("source={}", dir.join(files::SHARE).display()))
        .args(["-o", "cache=auto"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    rt_sys::spawn::die_with_parent(&mut cmd);
    cmd.spawn().map_err(|source| VmError::Spawn {
        program: bin,
        source,
    })
}

/// The descriptor number of the vhost-user listener in virtiofsd.
const VIRTIOFSD_FD: i32 = 3;

/// The descriptor number of the tap in QEMU.
const TAP_FD: i32 = 10;

/// Starts QEMU with the VM `cfg` describes (and the tap of `wired`).
pub(super) fn spawn_qemu(
    dir: &Path,
    cfg: &Config,
    wired: Option<super::net::Wired>,
) -> Result<Child, VmError> {
    use rt_vm::qemu::RootDevice;
    let fs_socket = qemu_socket(dir, files::FS_SOCKET);
    let disk = qemu_socket(dir, files::DISK);
    let mut cmdline = rt_vm::qemu::FAST_BOOT.to_string();
    if cfg.transport == Transport::Block {
        cmdline = format!("{cmdline} {}", rt_vm::qemu::BLOCK_ROOT_ARG);
    }
    if cfg.tools.is_some() {
        cmdline = format!("{cmdline} {}", rt_vm::guest::TOOLS_ARG);
    }
    // $RT_VM_KERNEL_ARGS adds to it (`loglevel=7` to debug a guest).
    if let Ok(extra) = std::env::var("RT_VM_KERNEL_ARGS") {
        if !extra.is_empty() {
            cmdline = format!("{cmdline} {extra}");
        }
    }
    let machine = rt_vm::qemu::Machine {
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        cmdline,
        memory_mib: cfg.memory_mib,
        cpus: cfg.cpus,
        accel: if cfg.kvm {
            rt_vm::qemu::Accel::Kvm
        } else {
            rt_vm::qemu::Accel::Tcg
        },
        pcie: true,
        extra: rt_vm::qemu::container_devices(
            cfg.memory_mib,
            match cfg.transport {
                Transport::Share => RootDevice::Share(&fs_socket),
                Transport::Block => RootDevice::Block(&disk),
            },
            &qemu_socket(dir, files::AGENT_SOCKET),
            &qemu_socket(dir, files::QMP_SOCKET),
            cfg.free_page_reporting,
            cfg.tools.as_deref(),
        ),
        tcg_tb_mib: Some(rt_vm::qemu::CONTAINER_TB_MIB),
    };
    let mut cmd = machine.command();
    cmd.current_dir(dir);
    if let Some(inc) = &cfg.incoming {
        // Loaded, then left paused until the supervisor has the channel.
        cmd.args(["-S", "-incoming", &inc.uri]);
    }
    if let Some(w) = wired {
        cmd.arg("-netdev")
            .arg(format!("tap,id=net0,fd={TAP_FD}"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=net0,mac={}", w.guest.mac));
        rt_sys::spawn::inherit_fd(&mut cmd, w.tap, TAP_FD);
    }
    let log = log_file(&dir.join(files::CONSOLE))?;
    let err = log.try_clone().map_err(|source| VmError::Io {
        what: "duplicating",
        path: dir.join(files::CONSOLE),
        source,
    })?;
    cmd.stdout(log).stderr(err);
    rt_sys::spawn::die_with_parent(&mut cmd);
    cmd.spawn().map_err(|source| VmError::Spawn {
        program: rt_vm::qemu::program(),
        source,
    })
}

/// A socket's path for QEMU, which runs in the state directory: the full
/// path when it fits `sun_path` (so QEMU's command line names the
/// container's state, as leak checks look for), else the bare name.
fn qemu_socket(dir: &Path, name: &str) -> PathBuf {
    let full = dir.join(name);
    if full.as_os_str().len() < 100 {
        full
    } else {
        PathBuf::from(name)
    }
}

/// Waits (10 s at most) for virtiofsd's socket at `path`; an error with
/// its log's tail if it exits first.
pub(super) fn wait_for_socket(path: &Path, helper: &mut Child) -> Result<(), VmError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if let Ok(Some(st)) = helper.try_wait() {
            // Its log is beside the socket.
            let log = path.with_file_name(files::VIRTIOFSD_LOG);
            return Err(VmError::Helper(format!(
                "virtiofsd exited ({st}): {}",
                super::console::tail(&log)
            )));
        }
        if Instant::now() > deadline {
            return Err(VmError::Helper(
                "virtiofsd opened no socket within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
