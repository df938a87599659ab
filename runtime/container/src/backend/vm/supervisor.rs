//! The VM supervisor (`rt vm-supervisor DIR`): the host process that stands
//! for a VM container's init. Its pid is the container's in `state` and
//! `--pid-file`, its stdio is the workload's, it exits with the workload's
//! code or dies of its signal, and QEMU and virtiofsd die with it (they are
//! spawned with PR_SET_PDEATHSIG), so SIGKILL of the supervisor takes the
//! whole VM.
//!
//! Steps: join the host cgroup; assemble the share in a private mount
//! namespace; start virtiofsd and QEMU; wait for the agent's `ready`; have
//! the agent create the container; answer `rt create` on the sync socket;
//! then route frames between the agent, its own stdio and the clients of
//! its control socket (`rt start`, `kill`, `exec`, …) until the init ends.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rt_vm::channel::{self, Frame, Kind, Op, Reply, ToGuest, ToHost};
use serde::{Deserialize, Serialize};

use super::launch::{spawn_qemu, spawn_virtiofsd, wait_for_socket};
use super::share::{self, Bind};
use super::stdio::{self, Received};
use super::{files, VmError};

/// Everything the supervisor needs, written by `create` to `vm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kvm: bool,
    pub cpus: u32,
    pub memory_mib: u32,
    pub rootfs: PathBuf,
    pub binds: Vec<Bind>,
    /// The guest's config.json.
    pub guest: serde_json::Value,
    pub terminal: bool,
    /// The caller's network namespace, wired to the VM with a tap.
    pub netns: Option<PathBuf>,
    /// rt's own network (`run.rt.network` nat, host-only, bridged): the
    /// supervisor makes a network namespace of its own, which `rt create`
    /// attaches as it does a namespace container's (see [`own_network`]).
    #[serde(default)]
    pub own_network: bool,
    pub cgroup: Option<rt_cgroups::Record>,
    pub boot_timeout_secs: u64,
    /// How the rootfs reaches the guest (`run.rt.vm.rootfs`).
    #[serde(default)]
    pub transport: Transport,
    /// A restore or an incoming migration: the VM is loaded, not booted.
    #[serde(default)]
    pub incoming: Option<Incoming>,
    /// A virtio-balloon for free page reporting (every VM since
    /// 2026-12-06; a restored one has it if its image says so).
    #[serde(default)]
    pub free_page_reporting: bool,
    /// The read-only disk with rt ([`rt_vm::guest::RtFrom::Disk`]); none
    /// when rt is in the initramfs.
    #[serde(default)]
    pub tools: Option<PathBuf>,
}

/// The rootfs transport of a VM container: the bundle's directory shared
/// with virtiofs (writes land in it; QEMU cannot migrate the device), or
/// an ext4 image made from it at create on virtio-blk (migrates; writes
/// stay in the image).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Share,
    Block,
}

/// Where a restored VM comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incoming {
    /// QEMU's `-incoming` URI: `exec:cat FILE` for a checkpoint,
    /// `unix:PATH` or `tcp:HOST:PORT` for a live migration.
    pub uri: String,
    /// The init's pid in the guest.
    pub guest_pid: i32,
    /// How long the state may take to arrive (a live migration's copy).
    pub timeout_secs: u64,
}

/// The supervisor's answer to `rt create` (and the exec relay's to
/// `rt exec`) on the sync socket.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    pub error: Option<String>,
    pub guest_pid: Option<i32>,
    pub kernel: Option<String>,
}

/// The descriptor number of the sync socket in the supervisor and relay.
pub const SYNC_FD: i32 = 3;

/// The supervisor's whole life.
pub fn main(dir: &Path) -> ! {
    // Named for `ps` (it was exec'd as /proc/self/exe).
    let _ = nix::sys::prctl::set_name(c"rt-vm");
    let sync = match rt_sys::spawn::take_inherited_fd(SYNC_FD) {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("rt vm-supervisor: no sync socket: {e}");
            std::process::exit(1);
        }
    };
    match Vm::boot(dir, &sync) {
        Ok((vm, answer)) => {
            // rt create may have been killed meanwhile: then delete
            // --force cleans up; the VM runs until then.
            let _ = answer_on(sync, &answer);
            let status = vm.run();
            stdio::exit_as(status)
        }
        Err((e, helpers)) => {
            tracing::error!("{e}");
            let _ = answer_on(
                sync,
                &Answer {
                    error: Some(crate::process::chain(&e)),
                    ..Answer::default()
                },
            );
            for mut h in helpers {
                let _ = h.kill();
                let _ = h.wait();
            }
            std::process::exit(1)
        }
    }
}

/// The first line on the sync socket, when the supervisor has a network
/// namespace of its own to be attached: `N` from the supervisor.
pub const NETNS_READY: &[u8] = b"N\n";

/// rt's own network: a new network namespace for the supervisor (and so
/// for QEMU and virtiofsd, which it spawns), announced on the sync socket;
/// `rt create` attaches it with rt-netns, as it attaches a namespace
/// container's init, and answers with what it built (one JSON line). The
/// namespace lives as long as the supervisor: SIGKILL of the supervisor
/// takes the veth end and the tap with it.
fn own_network(sync: &UnixStream) -> Result<rt_netns::Attached, VmError> {
    use std::io::BufRead;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| VmError::Sys("unshare(CLONE_NEWNET)", e))?;
    let mut w = sync;
    w.write_all(NETNS_READY).map_err(VmError::Socket)?;
    let mut line = String::new();
    std::io::BufReader::new(sync)
        .read_line(&mut line)
        .map_err(VmError::Socket)?;
    if line.is_empty() {
        return Err(VmError::Network(
            "rt create ended before it attached the VM's network".into(),
        ));
    }
    serde_json::from_str(&line).map_err(VmError::Config)
}

pub fn answer_on(mut sync: UnixStream, a: &Answer) -> std::io::Result<()> {
    sync.write_all(&serde_json::to_vec(a).unwrap_or_default())
}

/// A running VM and the routes of its channel.
struct Vm {
    qemu: Child,
    virtiofsd: Option<Child>,
    router: Arc<Router>,
    reader: UnixStream,
    listener: UnixListener,
    terminal: bool,
}

type BootError = (VmError, Vec<Child>);

impl Vm {
    fn boot(dir: &Path, sync: &UnixStream) -> Result<(Vm, Answer), BootError> {
        let fail = |e: VmError| (e, Vec::new());
        let text = std::fs::read(dir.join(files::CONFIG)).map_err(|source| {
            fail(VmError::Io {
                what: "reading",
                path: dir.join(files::CONFIG),
                source,
            })
        })?;
        let cfg: Config = serde_json::from_slice(&text).map_err(|e| fail(VmError::Config(e)))?;
        if let Some(rec) = &cfg.cgroup {
            let layout = rt_cgroups::Layout::detect().map_err(|e| fail(e.into()))?;
            rt_cgroups::open(&layout, rec.clone())
                .enter(true)
                .map_err(|e| fail(e.into()))?;
        }
        if cfg.terminal {
            stdio::own_terminal().map_err(fail)?;
        }
        stdio::block_signals().map_err(fail)?;
        let mut helpers = Vec::new();
        let with = |e: VmError, helpers: Vec<Child>| (e, helpers);
        match (cfg.transport, &cfg.incoming) {
            // A loaded VM brings its disk (copied into the state dir).
            (Transport::Block, Some(_)) => {}
            (Transport::Share, Some(_)) => {
                return Err(fail(VmError::Unsupported(
                    "restoring a VM whose rootfs is a virtiofs share".into(),
                )))
            }
            (Transport::Block, None) => {
                let share_dir = dir.join(files::SHARE);
                share::assemble(&share_dir, &cfg.rootfs, &cfg.binds).map_err(fail)?;
                share::make_disk(&share_dir, &dir.join(files::DISK)).map_err(fail)?;
            }
            (Transport::Share, None) => {
                share::assemble(&dir.join(files::SHARE), &cfg.rootfs, &cfg.binds).map_err(fail)?;
                helpers.push(spawn_virtiofsd(dir).map_err(fail)?);
                if let Err(e) = wait_for_socket(&dir.join(files::FS_SOCKET), &mut helpers[0]) {
                    return Err(with(e, helpers));
                }
            }
        }
        let wired = match (&cfg.netns, cfg.own_network) {
            (Some(ns), _) => match super::net::wire(ns, cfg.incoming.is_none()) {
                Ok(w) => {
                    let record = format!("{}\n{}", ns.display(), w.ifname);
                    let _ = std::fs::write(dir.join(files::NETWORK), record);
                    Some(w)
                }
                Err(e) => return Err(with(e, helpers)),
            },
            (None, true) => match own_network(sync).and_then(|a| super::net::wire_own(&a)) {
                Ok(w) => Some(w),
                Err(e) => return Err(with(e, helpers)),
            },
            (None, false) => None,
        };
        let guest_net = wired.as_ref().map(|w| w.guest.clone());
        // A loaded VM takes the caller's interface over when it runs.
        let hand_over = match (&cfg.netns, &wired) {
            (Some(ns), Some(w)) => Some((ns.clone(), w.ifname.clone(), w.tap_name.clone())),
            _ => None,
        };
        let qemu = match spawn_qemu(dir, &cfg, wired) {
            Ok(q) => q,
            Err(e) => return Err(with(e, helpers)),
        };
        helpers.insert(0, qemu);
        let pids: Vec<String> = helpers.iter().map(|c| c.id().to_string()).collect();
        let _ = std::fs::write(dir.join(files::HELPERS), pids.join("\n"));
        let shaken = match &cfg.incoming {
            Some(inc) => {
                super::snapshot::arrive(dir, &cfg, inc, (guest_net, hand_over), &mut helpers[0])
            }
            None => Self::handshake(dir, &cfg, guest_net, &mut helpers[0]),
        };
        match shaken {
            Ok((reader, router, answer, listener)) => {
                let mut it = helpers.into_iter();
                let qemu = it.next().expect("qemu");
                router.set_qemu(qemu.id() as i32);
                super::memory::release_boot_images(qemu.id(), &[&cfg.kernel, &cfg.initrd]);
                Ok((
                    Vm {
                        qemu,
                        virtiofsd: it.next(),
                        router,
                        reader,
                        listener,
                        terminal: cfg.terminal,
                    },
                    answer,
                ))
            }
            Err(e) => Err(with(e, helpers)),
        }
    }

    /// Connects to the agent, waits for it, creates the container.
    pub(super) fn handshake(
        dir: &Path,
        cfg: &Config,
        network: Option<rt_vm::channel::GuestNet>,
        qemu: &mut Child,
    ) -> Result<(UnixStream, Arc<Router>, Answer, UnixListener), VmError> {
        let console = dir.join(files::CONSOLE);
        let failed = |why: String| VmError::Boot {
            why,
            console: super::console::tail(&console),
        };
        let agent = super::socket_path(dir, files::AGENT_SOCKET)?;
        let path = &agent.path;
        let deadline = Instant::now() + Duration::from_secs(cfg.boot_timeout_secs);
        let mut conn = loop {
            if let Ok(c) = UnixStream::connect(path) {
                break c;
            }
            if let Ok(Some(st)) = qemu.try_wait() {
                return Err(failed(format!("QEMU exited ({st})")));
            }
            if Instant::now() > deadline {
                return Err(failed("QEMU opened no agent socket".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(VmError::Socket)?;
        let kernel = loop {
            match Frame::read_from(&mut conn) {
                Ok(f) if f.kind == Kind::Message => {
                    if let Ok(ToHost::Ready { kernel }) = f.parse() {
                        break kernel;
                    }
                }
                Ok(_) => {}
                Err(channel::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(failed(format!(
                        "the guest's agent did not answer within {} s",
                        cfg.boot_timeout_secs
                    )))
                }
                Err(_) => {
                    // The channel closes as QEMU goes: give it a moment
                    // to be reaped, to report how it ended.
                    let mut st = None;
                    for _ in 0..100 {
                        st = qemu.try_wait().ok().flatten();
                        if st.is_some() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return Err(failed(match st {
                        Some(st) => format!("QEMU exited ({st}) before the agent answered"),
                        None => "the agent's channel closed".into(),
                    }));
                }
            }
        };
        tracing::info!(kernel, "guest agent ready");
        let router = Arc::new(Router::new(conn.try_clone().map_err(VmError::Socket)?, dir));
        conn.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(VmError::Socket)?;
        let create = Op::Create {
            id: cfg.id.clone(),
            config: cfg.guest.clone(),
            terminal: cfg.terminal,
            network,
        };
        router.to_agent(&Frame::message(&ToGuest::Request { req: 0, op: create }))?;
        let reply = loop {
            let f = Frame::read_from(&mut conn)
                .map_err(|e| failed(format!("creating the container: {e}")))?;
            match f.kind {
                Kind::Message => {
                    if let Ok(ToHost::Reply { req: 0, reply }) = f.parse() {
                        break reply;
                    }
                }
                Kind::Data => stdio::write_out(channel::split(f.stream).1, &f.payload),
                Kind::Eof => {}
            }
        };
        conn.set_read_timeout(None).map_err(VmError::Socket)?;
        if let Some(e) = reply.error {
            return Err(VmError::Guest(e));
        }
        let listener = bind_control(dir)?;
        let answer = Answer {
            error: None,
            guest_pid: reply.pid,
            kernel: Some(kernel),
        };
        Ok((conn, router, answer, listener))
    }

    /// Routes until the init ends; returns its raw wait status.
    fn run(mut self) -> i32 {
        let (tx, rx) = mpsc::channel();
        let router = self.router.clone();
        let reader = self.reader;
        std::thread::spawn(move || router.pump(reader, tx));
        let router = self.router.clone();
        let listener = self.listener;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let r = router.clone();
                std::thread::spawn(move || r.serve_client(conn));
            }
        });
        let router = self.router.clone();
        std::thread::spawn(move || pump_stdin(router.as_ref(), 1));
        let router = self.router.clone();
        let terminal = self.terminal;
        if terminal {
            router.resize(1);
        }
        std::thread::spawn(move || loop {
            match stdio::next_signal() {
                Received::Forward(signal) => {
                    let _ = router.request(Op::Kill { signal, all: false });
                }
                Received::Resize if terminal => router.resize(1),
                _ => {}
            }
        });
        // The channel closing without an exit means the VM is gone: the
        // workload died with it.
        let status = rx.recv().unwrap_or(libc::SIGKILL);
        // Requests in flight (the `kill` that ended the init) get their
        // replies before the VM goes.
        let drain = Instant::now() + Duration::from_secs(2);
        while Instant::now() < drain && !lock(&self.router.pending).is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.router.to_agent(&Frame::message(&ToGuest::Shutdown));
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.qemu.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in std::iter::once(&mut self.qemu).chain(self.virtiofsd.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        status
    }
}

/// Binds the control socket rt's other commands connect to.
pub(super) fn bind_control(dir: &Path) -> Result<UnixListener, VmError> {
    let sock = super::socket_path(dir, files::CONTROL_SOCKET)?;
    UnixListener::bind(&sock.path).map_err(|source| VmError::Io {
        what: "binding",
        path: dir.join(files::CONTROL_SOCKET),
        source,
    })
}

/// Copies our stdin to the stream of process `proc` until it ends.
pub(super) fn pump_stdin(router: &dyn ToAgent, proc: u32) {
    let stdin = std::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    let stream = channel::stream(proc, 0);
    loop {
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&stdin), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if router.send_frame(&Frame::data(stream, &buf[..n])).is_err() {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    let _ = router.send_frame(&Frame::eof(stream));
}

/// Anything frames can be sent to (the agent through the router, the
/// supervisor through a relay's connection).
pub(super) trait ToAgent: Send + Sync {
    fn send_frame(&self, f: &Frame) -> Result<(), VmError>;
}

impl ToAgent for Router {
    fn send_frame(&self, f: &Frame) -> Result<(), VmError> {
        self.to_agent(f)
    }
}

/// A client of the control socket.
struct Client {
    w: Mutex<UnixStream>,
    /// Its process numbers → the guest's.
    procs: Mutex<HashMap<u32, u32>>,
}

impl Client {
    fn send(&self, f: &Frame) {
        let mut w = self.w.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_to(&mut *w);
    }
}

enum Waiter {
    Own(mpsc::Sender<Reply>),
    Client(Arc<Client>, u64),
}

enum Sink {
    Own,
    Client(Arc<Client>, u32),
}

/// The channel's writing end. While `frozen` (between a quiesce and a
/// thaw, see [`super::snapshot`]) no frame goes to the agent: writers wait.
pub(super) struct Writer {
    pub(super) stream: UnixStream,
    pub(super) frozen: bool,
    /// The VM was ended on purpose (a save without --leave-running):
    /// writers waiting on a frozen channel give up.
    pub(super) ended: bool,
}

/// Who gets which reply and which stream.
pub(super) struct Router {
    pub(super) agent: Mutex<Writer>,
    pub(super) thawed: Condvar,
    next_req: AtomicU64,
    next_proc: AtomicU32,
    pending: Mutex<HashMap<u64, Waiter>>,
    procs: Mutex<HashMap<u32, Sink>>,
    /// The container's state directory (QEMU's monitor is there).
    pub(super) dir: PathBuf,
    /// QEMU's pid, once spawned: a save that stops the VM ends it.
    qemu: AtomicI32,
}

impl Router {
    pub(super) fn new(agent: UnixStream, dir: &Path) -> Router {
        let mut procs = HashMap::new();
        procs.insert(1, Sink::Own);
        Router {
            agent: Mutex::new(Writer {
                stream: agent,
                frozen: false,
                ended: false,
            }),
            thawed: Condvar::new(),
            next_req: AtomicU64::new(1),
            next_proc: AtomicU32::new(2),
            pending: Mutex::new(HashMap::new()),
            procs: Mutex::new(procs),
            dir: dir.to_path_buf(),
            qemu: AtomicI32::new(0),
        }
    }

    fn set_qemu(&self, pid: i32) {
        self.qemu.store(pid, Ordering::Relaxed);
    }

    /// Ends the VM: SIGKILL to QEMU. The channel closes, and the supervisor
    /// dies of SIGKILL as the workload was killed.
    pub(super) fn kill_qemu(&self) {
        lock(&self.agent).ended = true;
        self.thawed.notify_all();
        let pid = self.qemu.load(Ordering::Relaxed);
        if pid > 0 {
            let _ = rt_sys::kill(nix::unistd::Pid::from_raw(pid), libc::SIGKILL);
        }
    }

    fn to_agent(&self, f: &Frame) -> Result<(), VmError> {
        let mut w = lock(&self.agent);
        while w.frozen && !w.ended {
            w = self.thawed.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        if w.ended {
            return Err(VmError::Helper("the VM has ended".into()));
        }
        f.write_to(&mut w.stream).map_err(VmError::Channel)
    }

    /// Registers a request of the supervisor's own: its number and where
    /// its reply arrives.
    pub(super) fn expect_reply(&self) -> (u64, mpsc::Receiver<Reply>) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(req, Waiter::Own(tx));
        (req, rx)
    }

    /// A request of the supervisor's own.
    fn request(&self, op: Op) -> Result<Reply, VmError> {
        let (req, rx) = self.expect_reply();
        self.to_agent(&Frame::message(&ToGuest::Request { req, op }))?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| VmError::Guest("the guest's agent did not answer".into()))
    }

    fn resize(&self, proc: u32) {
        if let Some((rows, cols)) = stdio::terminal_size() {
            let _ = self.to_agent(&Frame::message(&ToGuest::Resize { proc, rows, cols }));
        }
    }

    /// Reads the agent's frames; sends the init's wait status on `exited`.
    fn pump(&self, mut reader: UnixStream, exited: mpsc::Sender<i32>) {
        loop {
            let f = match Frame::read_from(&mut reader) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!("the agent's channel: {}", crate::process::chain(&e));
                    return;
                }
            };
            match f.kind {
                Kind::Message => match f.parse::<ToHost>() {
                    Ok(ToHost::Reply { req, reply }) => match lock(&self.pending).remove(&req) {
                        Some(Waiter::Own(tx)) => {
                            let _ = tx.send(reply);
                        }
                        Some(Waiter::Client(c, local)) => {
                            c.send(&Frame::message(&ToHost::Reply { req: local, reply }))
                        }
                        None => {}
                    },
                    Ok(ToHost::Exited { proc, status }) => match lock(&self.procs).remove(&proc) {
                        Some(Sink::Own) => {
                            let _ = exited.send(status);
                        }
                        Some(Sink::Client(c, local)) => c.send(&Frame::message(&ToHost::Exited {
                            proc: local,
                            status,
                        })),
                        None => {}
                    },
                    _ => {}
                },
                Kind::Data | Kind::Eof => {
                    let (proc, fd) = channel::split(f.stream);
                    let procs = lock(&self.procs);
                    match procs.get(&proc) {
                        Some(Sink::Own) if f.kind == Kind::Data => stdio::write_out(fd, &f.payload),
                        Some(Sink::Client(c, local)) => c.send(&Frame {
                            stream: channel::stream(*local, fd),
                            ..f
                        }),
                        _ => {}
                    }
                }
            }
        }
    }

    /// One client of the control socket: its requests go to the agent with
    /// our numbers, its processes' streams both ways.
    fn serve_client(&self, conn: UnixStream) {
        let Ok(w) = conn.try_clone() else { return };
        let client = Arc::new(Client {
            w: Mutex::new(w),
            procs: Mutex::new(HashMap::new()),
        });
        let mut r = conn;
        while let Ok(f) = Frame::read_from(&mut r) {
            let global = |local: u32| lock(&client.procs).get(&local).copied();
            match f.kind {
                Kind::Message => match f.parse::<ToGuest>() {
                    Ok(ToGuest::Request {
                        req,
                        op: op @ (Op::Save { .. } | Op::Migrate { .. } | Op::Finish { .. }),
                    }) => {
                        let (reply, end) = super::snapshot::handle(self, op);
                        client.send(&Frame::message(&ToHost::Reply { req, reply }));
                        if end {
                            self.kill_qemu();
                        }
                    }
                    Ok(ToGuest::Request { req, mut op }) => {
                        match &mut op {
                            Op::Exec { proc, .. } | Op::Stream { proc, .. } => {
                                let g = self.next_proc.fetch_add(1, Ordering::Relaxed);
                                lock(&client.procs).insert(*proc, g);
                                lock(&self.procs).insert(g, Sink::Client(client.clone(), *proc));
                                *proc = g;
                            }
                            Op::Signal { proc, .. } => match global(*proc) {
                                Some(g) => *proc = g,
                                None => continue,
                            },
                            _ => {}
                        }
                        let ours = self.next_req.fetch_add(1, Ordering::Relaxed);
                        lock(&self.pending).insert(ours, Waiter::Client(client.clone(), req));
                        let _ = self.to_agent(&Frame::message(&ToGuest::Request { req: ours, op }));
                    }
                    Ok(ToGuest::Resize { proc, rows, cols }) => {
                        if let Some(g) = global(proc) {
                            let _ = self.to_agent(&Frame::message(&ToGuest::Resize {
                                proc: g,
                                rows,
                                cols,
                            }));
                        }
                    }
                    _ => {}
                },
                Kind::Data | Kind::Eof => {
                    let (proc, fd) = channel::split(f.stream);
                    if let Some(g) = global(proc) {
                        let _ = self.to_agent(&Frame {
                            stream: channel::stream(g, fd),
                            ..f
                        });
                    }
                }
            }
        }
        // The client is gone: its processes' stdin ends.
        for g in lock(&client.procs).values() {
            let _ = self.to_agent(&Frame::eof(channel::stream(*g, 0)));
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
