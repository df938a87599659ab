//! The microVM backend: each container runs in its own QEMU microVM
//! (`-M microvm,pcie=on`), whose PID 1 is rt's agent (runtime/agent), and
//! inside it the guest's copy of rt creates the container with the
//! namespaces backend — the same spec validation, rootfs, cgroup v2 limits,
//! seccomp and hooks as on the host. See docs/microvm.md.
//!
//! Host processes: the supervisor ([`supervisor`]) stands for the init and
//! owns QEMU and virtiofsd; an exec relay ([`relay`]) stands for each
//! exec'd process. Every other operation (start, kill, pause, ps, …) is a
//! request on the supervisor's control socket ([`request`]), which the
//! supervisor routes to the agent over virtio-serial.

pub mod checkpoint;
mod console;
mod create;
mod launch;
mod memory;
pub mod net;
pub mod relay;
pub mod share;
mod snapshot;
mod stand_in;
mod stdio;
pub mod supervisor;

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};
use rt_vm::channel::{Frame, Kind, Op, Reply, ToGuest, ToHost};

use super::Isolation;
use crate::error::{Error, Result};
use crate::sandbox::{Created, ExecHow, Options, Sandbox};
use crate::state::{self, ContainerDir, State, Status};
use stand_in::{host_pty, spawn_stand_in};

/// Annotations for the VM's size.
pub const CPUS: &str = "run.rt.vm.cpus";
pub const MEMORY: &str = "run.rt.vm.memory";
/// The rootfs transport: `share` (virtiofs, the default) or `block` (an
/// ext4 image on virtio-blk, which checkpoint and migration need).
pub const ROOTFS: &str = "run.rt.vm.rootfs";
/// Guest memory when the spec sets no memory limit (MiB).
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// What the guest needs beyond the workload's limit: kernel, agent, rt.
pub const AGENT_MIB: u32 = 64;
/// QEMU's own memory beyond the guest's, added to the host cgroup's limit.
/// Measured here under TCG when a 168 MiB guest was OOM-killed by a limit
/// of guest + 160 MiB: 170 MB anonymous (the translation cache and QEMU's
/// heap), 59 MB of file pages, 164 MB of guest RAM (shmem). So 384 MiB
/// covers QEMU, virtiofsd and the supervisor with room to spare.
pub const QEMU_OVERHEAD_MIB: u64 = 384;

/// The files of a VM container in its state directory.
pub mod files {
    pub const CONFIG: &str = "vm.json";
    pub const SHARE: &str = "share";
    pub const FS_SOCKET: &str = "fs.sock";
    pub const AGENT_SOCKET: &str = "agent.sock";
    /// QEMU's monitor (QMP).
    pub const QMP_SOCKET: &str = "qmp.sock";
    /// The block transport's ext4 image of the rootfs.
    pub const DISK: &str = "rootfs.img";
    pub const CONTROL_SOCKET: &str = "vm.sock";
    pub const CONSOLE: &str = "console.log";
    pub const VIRTIOFSD_LOG: &str = "virtiofsd.log";
    pub const SUPERVISOR_LOG: &str = "supervisor.log";
    pub const HELPERS: &str = "helpers";
    pub const PAUSED: &str = "paused";
    /// The caller's network namespace and the interface joined to the tap.
    pub const NETWORK: &str = "network";
}

/// A path by which socket `name` in `dir` can be bound or connected to
/// whatever `dir`'s length: `sun_path` holds 108 bytes, and a caller's
/// state root can be longer (docker's, with its 64-hex ids). A long one
/// goes through an `O_PATH` descriptor of the directory, held by the
/// value: `/proc/self/fd/N/NAME`. (QEMU and virtiofsd instead run in the
/// directory and get the bare name.)
#[derive(Debug)]
pub struct SocketPath {
    pub path: PathBuf,
    _dir: Option<OwnedFd>,
}

pub fn socket_path(dir: &Path, name: &str) -> std::result::Result<SocketPath, VmError> {
    let full = dir.join(name);
    if full.as_os_str().len() < 100 {
        return Ok(SocketPath {
            path: full,
            _dir: None,
        });
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|source| VmError::Io {
            what: "opening (O_PATH)",
            path: dir.to_path_buf(),
            source,
        })?
        .into();
    Ok(SocketPath {
        path: PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd())),
        _dir: Some(fd),
    })
}

/// Errors of the VM backend.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// rt's own message from inside the guest, passed on as it is.
    #[error("{0}")]
    Guest(String),
    #[error("{0} is not supported by the vm backend")]
    Unsupported(String),
    #[error("the VM did not boot: {why} (console: {console})")]
    Boot { why: String, console: String },
    #[error("VM helper: {0}")]
    Helper(String),
    #[error("the VM's network: {0}")]
    Network(String),
    /// rt's own network, attached to the supervisor's namespace: the same
    /// errors as a namespace container's.
    #[error(transparent)]
    Attach(#[from] rt_netns::Error),
    #[error("invalid annotation {key}={value:?}: {why}")]
    Annotation {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("isolation \"vm\" contradicts the binary's name {0}: it runs containers in VMs; drop the annotation or run rt")]
    Contradiction(String),
    #[error("the VM supervisor of {0} ended before it answered (see its console log)")]
    NoAnswer(String),
    #[error("the VM of container {0} is not running")]
    Gone(String),
    /// A system call of the VM's host side (`what` names it).
    #[error("{0}")]
    Sys(&'static str, #[source] nix::errno::Errno),
    #[error("bind-mounting {0} into the VM's share")]
    Bind(PathBuf, #[source] nix::errno::Errno),
    #[error("the VM's terminal")]
    Terminal(#[source] rt_sys::Error),
    #[error("running {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM's control socket")]
    Socket(#[source] std::io::Error),
    #[error("the VM's channel")]
    Channel(#[from] rt_vm::channel::Error),
    #[error("the VM's configuration")]
    Config(#[source] serde_json::Error),
    #[error("the guest's assets")]
    Assets(#[from] rt_vm::Error),
    #[error("the VM's monitor")]
    Qmp(#[from] rt_vm::qmp::Error),
    #[error("the VM's host cgroup")]
    Cgroup(#[from] rt_cgroups::Error),
}

/// The microVM backend.
#[derive(Debug)]
pub struct Vm;

impl Isolation for Vm {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn create(&self, sandbox: Sandbox<'_>, state: &mut State) -> Result<Created> {
        create::create(sandbox, state)
    }

    fn status(&self, dir: &ContainerDir, st: &State) -> Status {
        dir.status(st, || dir.path().join(files::PAUSED).exists())
    }

    fn checkpoint(&self, st: &State, opts: &super::CheckpointOptions) -> Result<()> {
        checkpoint::checkpoint(st, opts)
    }

    fn restore(
        &self,
        sandbox: Sandbox<'_>,
        state: &mut State,
        from: &super::RestoreFrom<'_>,
    ) -> Result<Created> {
        match from {
            super::RestoreFrom::Image(image) => {
                checkpoint::restore(sandbox, state, image, &checkpoint::Source::Image)
            }
            super::RestoreFrom::Incoming { image, uri } => checkpoint::restore(
                sandbox,
                state,
                image,
                &checkpoint::Source::Incoming(uri.to_string()),
            ),
        }
    }

    fn describe_migration(&self, st: &State) -> Result<serde_json::Value> {
        checkpoint::describe_for_migration(st)
    }

    fn migrate(&self, st: &State, uri: &str) -> Result<serde_json::Value> {
        checkpoint::migrate(st, uri)
    }

    fn finish_migration(&self, st: &State, end: crate::backend::MigrationEnd) -> Result<()> {
        checkpoint::finish(st, end)
    }

    fn start(&self, dir: &ContainerDir, st: &State) -> Result<()> {
        ok(request(dir.path(), &st.id, Op::Start)?)?;
        let fifo = dir.fifo();
        std::fs::remove_file(&fifo).map_err(|source| Error::Io {
            what: "removing the created marker",
            path: fifo,
            source,
        })
    }

    fn kill(&self, st: &State, signal: i32, all: bool) -> Result<()> {
        ok(request(&dir_of(st)?, &st.id, Op::Kill { signal, all })?)
    }

    fn exec(
        &self,
        st: &State,
        _status: Status,
        process: &Process,
        opts: &Options,
        how: &ExecHow,
    ) -> Result<Created> {
        if !how.cgroup.is_empty() {
            return Err(self.refuse("exec --cgroup"));
        }
        if opts.preserve_fds > 0 {
            return Err(self.refuse("exec --preserve-fds"));
        }
        exec(&dir_of(st)?, process, opts)
    }

    fn pause(&self, st: &State) -> Result<()> {
        let dir = dir_of(st)?;
        rt_op(&dir, &st.id, &["pause"], None)?;
        let marker = dir.join(files::PAUSED);
        std::fs::write(&marker, b"").map_err(|source| Error::Io {
            what: "writing",
            path: marker,
            source,
        })
    }

    fn resume(&self, st: &State) -> Result<()> {
        let dir = dir_of(st)?;
        rt_op(&dir, &st.id, &["resume"], None)?;
        let _ = std::fs::remove_file(dir.join(files::PAUSED));
        Ok(())
    }

    fn update(&self, st: &State, resources: &LinuxResources) -> Result<()> {
        let json = serde_json::to_string(resources).unwrap_or_default();
        rt_op(
            &dir_of(st)?,
            &st.id,
            &["update", "--resources", "-"],
            Some(json),
        )?;
        Ok(())
    }

    /// The host processes that make up the VM (supervisor, QEMU,
    /// virtiofsd): what the host's cgroup holds.
    fn pids(&self, st: &State) -> Result<Vec<Pid>> {
        let mut pids = vec![Pid::from_raw(st.pid)];
        if let Ok(text) = std::fs::read_to_string(dir_of(st)?.join(files::HELPERS)) {
            pids.extend(
                text.lines()
                    .filter_map(|l| l.parse().ok())
                    .map(Pid::from_raw),
            );
        }
        Ok(pids)
    }

    fn ps(&self, st: &State, json: bool, ps_args: &[String]) -> Result<Option<String>> {
        let mut a = vec![
            "ps",
            "--format",
            if json { "json" } else { "table" },
            "{id}",
        ];
        a.extend(ps_args.iter().map(String::as_str));
        Ok(Some(rt_op(&dir_of(st)?, &st.id, &a, None)?))
    }

    fn cgroup(&self, st: &State) -> Result<Box<dyn rt_cgroups::Manager>> {
        super::namespaces::cgroup_of(st)
    }

    /// The guest's `rt events`: its cgroup v2 statistics and OOM events,
    /// relayed to our stdout until it ends; its exit code.
    fn events(&self, st: &State, args: &[String]) -> Result<Option<i32>> {
        let mut a = vec!["events".to_string()];
        a.extend(args.iter().cloned());
        let op = Op::Stream { proc: 1, args: a };
        let created = relay(&dir_of(st)?, &op, false, &Options::default(), true)?;
        let status = nix::sys::wait::waitpid(created.pid, None)
            .map_err(|e| Error::Vm(VmError::Sys("waiting for the relay", e)))?;
        Ok(Some(match status {
            nix::sys::wait::WaitStatus::Exited(_, c) => c,
            nix::sys::wait::WaitStatus::Signaled(_, s, _) => 128 + s as i32,
            _ => 1,
        }))
    }

    fn destroy(&self, st: &State, layout: &rt_cgroups::Layout) -> Vec<String> {
        let mut errors = Vec::new();
        // The supervisor's helpers die with it (PR_SET_PDEATHSIG); any left
        // (a supervisor killed between spawning and recording) are killed by
        // the pids it recorded and through the host cgroup.
        let helpers = helper_pids(st);
        // Only this container's processes: on one host a migration's
        // destination has the source's id and so its host cgroup, and a
        // failed destination must not take the running source with it.
        let dir = dir_of(st).ok();
        let own = |pid: Pid| dir.as_deref().is_none_or(|d| !of_another_vm(pid, d));
        if let Err(e) = super::namespaces::kill_own_and_remove_cgroup(st, layout, own) {
            errors.push(crate::process::chain(&e));
        }
        if let Some(text) = dir_of(st)
            .ok()
            .and_then(|d| std::fs::read_to_string(d.join(files::NETWORK)).ok())
        {
            if let Some((netns, ifname)) = text.split_once('\n') {
                if let Err(e) = net::unwire(Path::new(netns), ifname.trim()) {
                    errors.push(crate::process::chain(&e));
                }
            }
        }
        for pid in helpers {
            if state::proc_stat(pid).is_some_and(|(s, _)| s != 'Z') && is_helper(pid) {
                let _ = rt_sys::kill(pid, libc::SIGKILL);
            }
        }
        errors
    }
}

/// The pids of QEMU and virtiofsd, as the supervisor recorded them.
fn helper_pids(st: &State) -> Vec<Pid> {
    dir_of(st)
        .ok()
        .and_then(|d| std::fs::read_to_string(d.join(files::HELPERS)).ok())
        .map(|t| {
            t.lines()
                .filter_map(|l| l.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` is another VM container's: the supervisor of a
/// state directory other than `dir` (`rt vm-supervisor DIR`), or a child
/// of one (its QEMU, its virtiofsd). Anything else in a container's host
/// cgroup is its own, even a process caught between fork and exec.
fn of_another_vm(pid: Pid, dir: &Path) -> bool {
    let supervises_another = |p: Pid| {
        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|cmdline| {
            let mut args = cmdline.split(|b| *b == 0);
            args.by_ref().any(|a| a == b"vm-supervisor")
                && args
                    .next()
                    .is_some_and(|d| Path::new(std::ffi::OsStr::from_bytes(d)) != dir)
        })
    };
    supervises_another(pid) || parent_of(pid).is_some_and(supervises_another)
}

/// A process's parent, from `/proc/PID/stat`.
fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
    ppid.parse().ok().map(Pid::from_raw)
}

/// Whether `pid` is still a QEMU or virtiofsd (not a reused number).
fn is_helper(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.starts_with("qemu") || c.starts_with("virtiofsd"))
}

/// The container's state directory (where the supervisor's sockets live).
pub(super) fn dir_of(st: &State) -> Result<PathBuf> {
    st.vm_dir
        .clone()
        .ok_or_else(|| Error::Vm(VmError::Gone(st.id.clone())))
}

fn ok(reply: Reply) -> Result<()> {
    match reply.error {
        Some(e) => Err(Error::Vm(VmError::Guest(e))),
        None => Ok(()),
    }
}

/// `rt ARGS` run by the guest's agent on the container; its stdout.
fn rt_op(dir: &Path, id: &str, args: &[&str], input: Option<String>) -> Result<String> {
    let reply = request(
        dir,
        id,
        Op::Rt {
            args: args.iter().map(|a| a.to_string()).collect(),
            input,
        },
    )?;
    match (reply.error, reply.code) {
        (Some(e), _) => Err(Error::Vm(VmError::Guest(e))),
        (None, Some(c)) if c != 0 => Err(Error::Vm(VmError::Guest(format!(
            "rt {} failed ({c})",
            args[0]
        )))),
        _ => Ok(reply.output.unwrap_or_default()),
    }
}

/// One request on the supervisor's control socket.
pub fn request(dir: &Path, id: &str, op: Op) -> std::result::Result<Reply, VmError> {
    let sock = socket_path(dir, files::CONTROL_SOCKET)?;
    let mut conn = UnixStream::connect(&sock.path).map_err(|_| VmError::Gone(id.to_string()))?;
    conn.set_read_timeout(Some(Duration::from_secs(90)))
        .map_err(VmError::Socket)?;
    let mut w = conn.try_clone().map_err(VmError::Socket)?;
    Frame::message(&ToGuest::Request { req: 1, op }).write_to(&mut w)?;
    loop {
        let f = Frame::read_from(&mut conn)?;
        if f.kind == Kind::Message {
            if let Ok(ToHost::Reply { req: 1, reply }) = f.parse() {
                return Ok(reply);
            }
        }
    }
}

/// The guest's vCPUs: the annotation, or the cpu quota/period (rounded up),
/// or the cpuset's size; at least 1.
pub(super) fn cpus(spec: &oci_spec::runtime::Spec) -> std::result::Result<u32, VmError> {
    if let Some(v) = spec.annotations().as_ref().and_then(|a| a.get(CPUS)) {
        return match v.parse::<u32>() {
            Ok(n) if (1..=256).contains(&n) => Ok(n),
            _ => Err(VmError::Annotation {
                key: CPUS,
                value: v.clone(),
                why: "a vCPU count from 1 to 256",
            }),
        };
    }
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().clone());
    let from_quota = cpu.as_ref().and_then(|c| match (c.quota(), c.period()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p) as u32),
        _ => None,
    });
    let from_set = cpu
        .as_ref()
        .and_then(|c| c.cpus().clone())
        .map(|s| cpuset_size(&s));
    Ok(from_quota.or(from_set).unwrap_or(1).max(1))
}

/// How many CPUs a cpuset list (`0-3,6`) names.
fn cpuset_size(list: &str) -> u32 {
    list.split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some(b.parse::<u32>().ok()? - a.parse::<u32>().ok()? + 1),
                None => part.parse::<u32>().ok().map(|_| 1),
            }
        })
        .sum()
}

/// The guest's memory (MiB): the annotation, or the memory limit plus what
/// the agent needs, or [`DEFAULT_MEMORY_MIB`].
pub(super) fn memory_mib(spec: &oci_spec::runtime::Spec) -> std::result::Result<u32, VmError> {
    if let Some(v) = spec.annotations().as_ref().and_then(|a| a.get(MEMORY)) {
        return match v.parse::<u32>() {
            Ok(n) if (64..=1 << 20).contains(&n) => Ok(n),
            _ => Err(VmError::Annotation {
                key: MEMORY,
                value: v.clone(),
                why: "MiB, at least 64",
            }),
        };
    }
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    Ok(match limit {
        Some(l) => ((l as u64).div_ceil(1 << 20) as u32 + AGENT_MIB).max(128),
        None => DEFAULT_MEMORY_MIB,
    })
}

/// The least guest memory that boots `initrd`: the kernel unpacks it into
/// a tmpfs (half the memory at most) and the agent copies it once more
/// into the root it pivots to, so twice its size, plus the kernel's own.
/// A debug build of rt needs about 170 MiB, a release build 128.
pub(super) fn memory_floor(initrd: &Path) -> u32 {
    let mib = std::fs::metadata(initrd).map_or(0, |m| m.len().div_ceil(1 << 20)) as u32;
    (2 * mib + 96).max(128)
}

/// The rt binary (its path before rt re-executed itself from a protected
/// copy) and the agent beside it ($RT_VM_AGENT overrides).
pub(super) fn binaries() -> std::result::Result<(PathBuf, PathBuf), VmError> {
    let rt = std::env::var_os("RT_EXE")
        .map(PathBuf::from)
        .or_else(|| std::fs::read_link("/proc/self/exe").ok())
        .ok_or_else(|| VmError::Helper("cannot find rt's own binary".into()))?;
    let agent = std::env::var_os("RT_VM_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| rt.with_file_name("rt-agent"));
    if !agent.exists() {
        return Err(VmError::Helper(format!(
            "the guest agent {} is missing (install rt-agent beside rt, or set RT_VM_AGENT)",
            agent.display()
        )));
    }
    Ok((rt, agent))
}

/// Seconds a guest may take to boot to its agent ($RT_VM_BOOT_TIMEOUT).
pub(super) fn boot_timeout() -> u64 {
    std::env::var("RT_VM_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90)
}

fn exec(dir: &Path, process: &Process, opts: &Options) -> std::result::Result<Created, Error> {
    let terminal = process.terminal().unwrap_or(false);
    let op = Op::Exec {
        proc: 1,
        process: serde_json::to_value(process).map_err(|e| Error::Vm(VmError::Config(e)))?,
        terminal,
    };
    relay(dir, &op, terminal, opts, false)
}

/// Starts an exec relay for `op` (an exec, or a streamed guest rt). A
/// `tied` relay dies with the thread that spawned it (`events`'s: it ends
/// with the command); an exec's outlives `rt exec -d`.
fn relay(dir: &Path, op: &Op, terminal: bool, opts: &Options, tied: bool) -> Result<Created> {
    let json = serde_json::to_vec(op).map_err(|e| Error::Vm(VmError::Config(e)))?;
    let file = tempfile_in(dir, &json)?;
    let (master, slave) = if terminal {
        let (m, s) = host_pty(opts)?;
        (m, Some(s))
    } else {
        (None, None)
    };
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["vm-exec".as_ref(), dir.as_os_str(), file.as_os_str()];
    if terminal {
        args.push("--tty".as_ref());
    }
    let (pid, answer) = spawn_stand_in(
        &args,
        slave.as_ref(),
        &dir.join(files::SUPERVISOR_LOG),
        &mut |_| Ok(()),
        None,
        Duration::from_secs(120),
        tied,
    )?;
    let _ = std::fs::remove_file(&file);
    if let Some(e) = answer.error {
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(Error::Vm(VmError::Guest(e)));
    }
    Ok(Created {
        unsaved: false,
        pid,
        terminal: master,
        netns: None,
    })
}

/// A uniquely named file in `dir` holding `bytes`.
fn tempfile_in(dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    for n in 0..1000u32 {
        let path = dir.join(format!("exec-{}-{n}.json", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                std::io::Write::write_all(&mut f, bytes).map_err(|source| Error::Io {
                    what: "writing",
                    path: path.clone(),
                    source,
                })?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(Error::Io {
                    what: "creating",
                    path,
                    source,
                })
            }
        }
    }
    Err(Error::Vm(VmError::Helper("no free exec file name".into())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_another_vm_s_supervisor_and_its_children_are_not_a_container_s_own() {
        use std::process::{Command, Stdio};
        let dir = std::env::temp_dir().join(format!("rt-vm-own-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in supervisor of another directory, with a child.
        let mut other = Command::new("sh")
            .args(["-c", "sleep 60 & wait", "vm-supervisor", "/run/rt/another"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // Its argv: sh -c SCRIPT vm-supervisor /run/rt/another.
        let sup = Pid::from_raw(other.id() as i32);
        let child = (0..100)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let kids =
                    std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).ok()?;
                kids.split_whitespace()
                    .next()?
                    .parse()
                    .ok()
                    .map(Pid::from_raw)
            })
            .expect("the stand-in's child");
        let verdicts = (
            of_another_vm(sup, &dir),
            of_another_vm(child, &dir),
            of_another_vm(sup, Path::new("/run/rt/another")),
            of_another_vm(Pid::this(), &dir),
        );
        let _ = other.kill();
        let _ = other.wait();
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(verdicts, (true, true, false, false));
    }

    use super::*;

    fn spec(json: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn vm_size_from_annotations_and_limits() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        assert_eq!(
            (cpus(&s).unwrap(), memory_mib(&s).unwrap()),
            (1, DEFAULT_MEMORY_MIB)
        );
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
            "cpu": {"quota": 150000, "period": 100000}, "memory": {"limit": 100 << 20}}}}),
        );
        assert_eq!((cpus(&s).unwrap(), memory_mib(&s).unwrap()), (2, 164));
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
            "cpu": {"cpus": "0-2,5"}}}}),
        );
        assert_eq!(cpus(&s).unwrap(), 4);
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"run.rt.vm.cpus": "3", "run.rt.vm.memory": "512"}}));
        assert_eq!((cpus(&s).unwrap(), memory_mib(&s).unwrap()), (3, 512));
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"run.rt.vm.cpus": "0", "run.rt.vm.memory": "12"}}));
        assert!(cpus(&s).unwrap_err().to_string().contains("run.rt.vm.cpus"));
        assert!(memory_mib(&s)
            .unwrap_err()
            .to_string()
            .contains("run.rt.vm.memory"));
    }
}
