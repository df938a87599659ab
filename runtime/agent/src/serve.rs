//! Serving the host: requests on the channel run the guest's `rt`, and the
//! stdio of the container's processes is relayed as channel streams.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rt_vm::channel::{self, Frame, Kind, Op, Reply, ToGuest, ToHost};

use crate::reaper::Reaper;

/// The guest rt's state root, and where the agent keeps bundles.
const RT_ROOT: &str = "/run/rt";
const BUNDLES: &str = "/run/rt-bundles";

/// A process whose stdio the agent relays.
struct Proc {
    /// Bytes for its stdin (or terminal); `None` closes it.
    input: Option<mpsc::Sender<Option<Vec<u8>>>>,
    tty: Option<Arc<File>>,
    pid: u32,
}

/// The channel's writing end, and whether the host asked for quiet
/// ([`Op::Quiesce`]): writers then wait on [`Agent::thawed`].
struct Out {
    port: File,
    held: bool,
}

struct Agent {
    out: Mutex<Out>,
    thawed: Condvar,
    reaper: Reaper,
    procs: Mutex<HashMap<u32, Proc>>,
    /// The container's id, once created.
    id: Mutex<Option<String>>,
}

pub fn serve(port: File) -> Result<()> {
    let reader = port.try_clone().context("duplicating the port")?;
    let agent = Arc::new(Agent {
        out: Mutex::new(Out { port, held: false }),
        thawed: Condvar::new(),
        reaper: Reaper::start(),
        procs: Mutex::new(HashMap::new()),
        id: Mutex::new(None),
    });
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    agent.send(&Frame::message(&ToHost::Ready { kernel }));
    let mut input = BufReader::new(reader);
    loop {
        let f = match Frame::read_from(&mut input) {
            Ok(f) => f,
            // The host closed or reset its end: keep reading (a supervisor
            // may reconnect); a real read error ends the guest.
            Err(channel::Error::Closed) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(e).context("reading the channel"),
        };
        match f.kind {
            Kind::Message => match f.parse::<ToGuest>() {
                // Handled in order, here: every frame the host sent before
                // them has been taken.
                Ok(ToGuest::Request {
                    req,
                    op: Op::Quiesce,
                }) => agent.quiesce(req),
                Ok(ToGuest::Request {
                    req,
                    op: Op::Thaw { unix_ns, network },
                }) => agent.thaw(req, unix_ns, network.as_ref()),
                Ok(ToGuest::Request { req, op }) => {
                    let a = agent.clone();
                    std::thread::spawn(move || {
                        let reply = a.handle(op);
                        a.send(&Frame::message(&ToHost::Reply { req, reply }));
                    });
                }
                Ok(ToGuest::Resize { proc, rows, cols }) => agent.resize(proc, rows, cols),
                Ok(ToGuest::Shutdown) => {
                    eprintln!("rt-agent: shutdown requested");
                    return Ok(());
                }
                Err(e) => eprintln!("rt-agent: {e}"),
            },
            Kind::Data => agent.input(f.stream, Some(f.payload)),
            Kind::Eof => agent.input(f.stream, None),
        }
    }
}

impl Agent {
    fn send(&self, f: &Frame) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        while out.held {
            out = self.thawed.wait(out).unwrap_or_else(|e| e.into_inner());
        }
        if let Err(e) = f.write_to(&mut out.port) {
            eprintln!("rt-agent: writing the channel: {e}");
        }
    }

    /// Replies to `req`, then holds every further frame until a thaw.
    fn quiesce(&self, req: u64) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let reply = Frame::message(&ToHost::Reply {
            req,
            reply: Reply::default(),
        });
        if let Err(e) = reply.write_to(&mut out.port) {
            eprintln!("rt-agent: writing the channel: {e}");
        }
        out.held = true;
        crate::trace("quiesced");
    }

    /// Sets the clock, re-addresses eth0 when asked, releases the frames
    /// held since the quiesce (after the reply).
    fn thaw(&self, req: u64, unix_ns: u64, network: Option<&rt_vm::channel::GuestNet>) {
        let mut errors = Vec::new();
        let ts = nix::sys::time::TimeSpec::new(
            (unix_ns / 1_000_000_000) as i64,
            (unix_ns % 1_000_000_000) as i64,
        );
        if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
            errors.push(format!("setting the guest's clock: {e}"));
        }
        if let Some(net) = network {
            if let Err(e) = self.readdress(net) {
                errors.push(format!("re-addressing the guest's eth0: {e}"));
            }
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let reply = Reply {
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            ..Reply::default()
        };
        if let Err(e) = Frame::message(&ToHost::Reply { req, reply }).write_to(&mut out.port) {
            eprintln!("rt-agent: writing the channel: {e}");
        }
        out.held = false;
        self.thawed.notify_all();
        crate::trace("thawed");
    }

    /// `/bin/ip ARGS` (iproute2's, in the initramfs) to completion.
    fn ip(&self, args: &[&str]) -> std::result::Result<(), String> {
        let mut cmd = Command::new("/bin/ip");
        cmd.args(args);
        match self.capture(cmd, None) {
            (0, _, _) => Ok(()),
            (_, _, err) => Err(format!("ip {}: {}", args.join(" "), err.trim())),
        }
    }

    /// eth0 of a restored VM takes `net` (its new namespace's interface),
    /// unless it already has it.
    fn readdress(&self, net: &rt_vm::channel::GuestNet) -> std::result::Result<(), String> {
        let mac = std::fs::read_to_string("/sys/class/net/eth0/address").unwrap_or_default();
        let ip = |args: &[&str]| self.ip(args);
        let have = {
            let mut cmd = Command::new("/bin/ip");
            cmd.args(["-o", "addr", "show", "dev", "eth0"]);
            self.capture(cmd, None).1
        };
        let same = mac.trim().eq_ignore_ascii_case(&net.mac)
            && net.addrs.iter().all(|a| have.contains(&format!(" {a} ")));
        if same {
            return Ok(());
        }
        ip(&["link", "set", "eth0", "down"])?;
        ip(&["link", "set", "eth0", "address", &net.mac])?;
        ip(&["addr", "flush", "dev", "eth0"])?;
        self.configure_net(net)
    }

    fn handle(self: &Arc<Self>, op: Op) -> Reply {
        crate::trace(&format!("request {}", op.name()));
        let reply = self.dispatch(op);
        crate::trace("replied");
        reply
    }

    fn dispatch(self: &Arc<Self>, op: Op) -> Reply {
        match op {
            Op::Create {
                id,
                config,
                terminal,
                network,
            } => {
                if let Some(net) = network {
                    if let Err(e) = self.configure_net(&net) {
                        return Reply::failed(format!("configuring the guest's eth0: {e}"));
                    }
                }
                self.create(&id, &config, terminal)
            }
            Op::Exec {
                proc,
                process,
                terminal,
            } => self.exec(proc, &process, terminal),
            Op::Start => self.simple(&["start"], None),
            Op::Stream { proc, args } => self.stream(proc, &args),
            Op::Signal { proc, signal } => {
                let pid = self
                    .procs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&proc)
                    .map(|p| p.pid);
                match pid {
                    Some(pid) => match rt_sys::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
                    {
                        Ok(()) => Reply::default(),
                        Err(e) => Reply::failed(e.to_string()),
                    },
                    None => Reply::failed(format!("no process {proc}")),
                }
            }
            Op::Kill { signal, all } => {
                let sig = signal.to_string();
                let mut args = vec!["kill"];
                if all {
                    args.push("--all");
                }
                args.push("--");
                self.simple(&args, Some(&sig))
            }
            // Taken by the read loop, in order.
            Op::Quiesce | Op::Thaw { .. } => Reply::failed("quiesce and thaw are not threaded"),
            op @ (Op::Save { .. } | Op::Migrate { .. } | Op::Finish { .. }) => Reply::failed(
                format!("{} is the VM supervisor's, not the guest's", op.name()),
            ),
            Op::Rt { args, input } => {
                let Some(id) = self.id() else {
                    return Reply::failed("no container in this VM");
                };
                // The id goes where `{id}` stands, or last.
                let mut cmd = rt();
                if args.iter().any(|a| a == "{id}") {
                    cmd.args(
                        args.iter()
                            .map(|a| if a == "{id}" { id.as_str() } else { a }),
                    );
                } else {
                    cmd.args(&args).arg(&id);
                }
                let (code, out, err) = self.capture(cmd, input);
                Reply {
                    error: (code != 0).then(|| non_empty(err, code)),
                    code: Some(code),
                    output: Some(out),
                    ..Reply::default()
                }
            }
        }
    }

    /// The guest's eth0 takes the host interface's MAC (already the
    /// virtio-net device's), MTU, addresses and routes.
    fn configure_net(&self, net: &rt_vm::channel::GuestNet) -> std::result::Result<(), String> {
        let name = std::fs::read_dir("/sys/class/net")
            .map_err(|e| e.to_string())?
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("address"))
                    .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&net.mac))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .ok_or_else(|| format!("no interface with MAC {}", net.mac))?;
        let ip = |args: &[&str]| self.ip(args);
        ip(&["link", "set", "lo", "up"])?;
        if name != "eth0" {
            ip(&["link", "set", "dev", &name, "name", "eth0"])?;
        }
        ip(&["link", "set", "eth0", "mtu", &net.mtu.to_string(), "up"])?;
        for a in &net.addrs {
            ip(&["addr", "add", a, "dev", "eth0"])?;
        }
        for r in &net.routes {
            let mut args = vec!["route", "add", r.dst.as_str()];
            if let Some(gw) = &r.gateway {
                args.extend(["via", gw.as_str()]);
            }
            args.extend(["dev", "eth0"]);
            ip(&args)?;
        }
        Ok(())
    }

    fn id(&self) -> Option<String> {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `rt ARGS ID [TAIL]`, its failure as the reply's error.
    fn simple(&self, args: &[&str], tail: Option<&str>) -> Reply {
        let Some(id) = self.id() else {
            return Reply::failed("no container in this VM");
        };
        let mut cmd = rt();
        cmd.args(args).arg(&id).args(tail);
        match self.capture(cmd, None) {
            (0, _, _) => Reply::default(),
            (code, _, err) => Reply::failed(non_empty(err, code)),
        }
    }

    /// Runs a short rt command to completion: exit code (128+N for signal
    /// N), stdout, stderr.
    fn capture(&self, mut cmd: Command, input: Option<String>) -> (i32, String, String) {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return (127, String::new(), format!("running /bin/rt: {e}")),
        };
        let mut stdin = child.stdin.take();
        if let (Some(w), Some(text)) = (stdin.as_mut(), input) {
            let _ = w.write_all(text.as_bytes());
        }
        drop(stdin);
        let read = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = read(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let err = read(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let status = self.reaper.wait(child.id());
        (
            code_of(status),
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    }

    fn create(self: &Arc<Self>, id: &str, config: &serde_json::Value, terminal: bool) -> Reply {
        let dir = Path::new(BUNDLES).join(id);
        let result = (|| -> Result<Reply> {
            std::fs::create_dir_all(&dir).context("creating the bundle")?;
            std::fs::write(dir.join("config.json"), serde_json::to_vec(config)?)
                .context("writing config.json")?;
            let args = ["create".as_ref(), "--bundle".as_ref(), dir.as_os_str()];
            self.launch(&args, id, 1, &dir.join("init"), terminal)
        })();
        match result {
            Ok(r) => {
                if r.error.is_none() {
                    *self.id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
                }
                r
            }
            Err(e) => Reply::failed(format!("{e:#}")),
        }
    }

    fn exec(self: &Arc<Self>, proc: u32, process: &serde_json::Value, terminal: bool) -> Reply {
        let Some(id) = self.id() else {
            return Reply::failed("no container in this VM");
        };
        let base = Path::new(BUNDLES).join(&id).join(format!("exec-{proc}"));
        let result = (|| -> Result<Reply> {
            let json = base.with_extension("json");
            std::fs::write(&json, serde_json::to_vec(process)?).context("writing the process")?;
            let mut args = vec![
                "exec".as_ref(),
                "--detach".as_ref(),
                "--process".as_ref(),
                json.as_os_str(),
            ];
            if terminal {
                args.push("--tty".as_ref());
            }
            self.launch(&args, &id, proc, &base, terminal)
        })();
        result.unwrap_or_else(|e| Reply::failed(format!("{e:#}")))
    }

    /// Runs `rt create` or `rt exec -d` (`args`, given `--pid-file`,
    /// `--log` and `--console-socket` here) for process `proc`, whose stdio
    /// is then relayed; `base` names its files.
    fn launch(
        self: &Arc<Self>,
        args: &[&std::ffi::OsStr],
        id: &str,
        proc: u32,
        base: &Path,
        terminal: bool,
    ) -> Result<Reply> {
        let pid_file = base.with_extension("pid");
        let log = base.with_extension("log");
        let console = base.with_extension("sock");
        let _ = std::fs::remove_file(&console);
        // rt's errors go to the log: its stderr is the process's.
        let mut full = rt();
        full.arg("--log").arg(&log).args(args);
        let listener = if terminal {
            let l = std::os::unix::net::UnixListener::bind(&console)
                .with_context(|| format!("binding {}", console.display()))?;
            full.arg("--console-socket").arg(&console);
            Some(l)
        } else {
            None
        };
        full.arg("--pid-file").arg(&pid_file).arg(id);
        if terminal {
            full.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        } else {
            full.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = full.spawn().context("running /bin/rt")?;
        let status = self.reaper.wait(child.id());
        if status != 0 {
            return Ok(Reply::failed(log_error(&log).unwrap_or_else(|| {
                format!("rt failed with status {}", code_of(status))
            })));
        }
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse()
            .context("parsing the pid file")?;
        let mut outputs = Vec::new();
        let input = if let Some(l) = listener {
            l.set_nonblocking(true)?;
            let (conn, _) = l.accept().context("rt sent no terminal")?;
            conn.set_nonblocking(false)?;
            let master = rt_sys::recv_fd(conn.as_fd())?.context("rt sent no terminal")?;
            let master = Arc::new(File::from(master));
            outputs.push(self.relay_out(proc, 1, Box::new(SharedFile(master.clone()))));
            let w = SharedFile(master.clone());
            self.procs.lock().unwrap_or_else(|e| e.into_inner()).insert(
                proc,
                Proc {
                    input: Some(writer(Box::new(w))),
                    tty: Some(master),
                    pid,
                },
            );
            None
        } else {
            if let Some(out) = child.stdout.take() {
                outputs.push(self.relay_out(proc, 1, Box::new(out)));
            }
            if let Some(err) = child.stderr.take() {
                outputs.push(self.relay_out(proc, 2, Box::new(err)));
            }
            child.stdin.take()
        };
        if let Some(stdin) = input {
            self.procs.lock().unwrap_or_else(|e| e.into_inner()).insert(
                proc,
                Proc {
                    input: Some(writer(Box::new(stdin))),
                    tty: None,
                    pid,
                },
            );
        }
        self.watch_exit(proc, pid, outputs);
        Ok(Reply {
            pid: Some(pid as i32),
            ..Reply::default()
        })
    }

    /// Runs `rt ARGS ID` as process `proc`, its output streamed (`rt
    /// events` for the host's `rt events`).
    fn stream(self: &Arc<Self>, proc: u32, args: &[String]) -> Reply {
        let Some(id) = self.id() else {
            return Reply::failed("no container in this VM");
        };
        let mut cmd = rt();
        cmd.args(args)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Reply::failed(format!("running /bin/rt: {e}")),
        };
        let pid = child.id();
        let mut outputs = Vec::new();
        if let Some(out) = child.stdout.take() {
            outputs.push(self.relay_out(proc, 1, Box::new(out)));
        }
        if let Some(err) = child.stderr.take() {
            outputs.push(self.relay_out(proc, 2, Box::new(err)));
        }
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).insert(
            proc,
            Proc {
                input: None,
                tty: None,
                pid,
            },
        );
        self.watch_exit(proc, pid, outputs);
        Reply {
            pid: Some(pid as i32),
            ..Reply::default()
        }
    }

    /// Sends process `proc`'s exit once it ended and its output is relayed.
    fn watch_exit(self: &Arc<Self>, proc: u32, pid: u32, outputs: Vec<mpsc::Receiver<()>>) {
        let a = self.clone();
        std::thread::spawn(move || {
            let status = a.reaper.wait(pid);
            // Output written before the exit reaches the host first; a
            // daemon that keeps the pipe open does not hold the exit back.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            for rx in outputs {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let _ = rx.recv_timeout(left);
            }
            a.procs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&proc);
            a.send(&Frame::message(&ToHost::Exited { proc, status }));
        });
    }

    /// Copies `r` to stream (proc, fd) until its end; the receiver hears
    /// when it is done.
    fn relay_out(
        self: &Arc<Self>,
        proc: u32,
        fd: u32,
        mut r: Box<dyn Read + Send>,
    ) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let a = self.clone();
        std::thread::spawn(move || {
            let stream = channel::stream(proc, fd);
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => a.send(&Frame::data(stream, &buf[..n])),
                }
            }
            a.send(&Frame::eof(stream));
            let _ = tx.send(());
        });
        rx
    }

    fn input(&self, stream: u32, bytes: Option<Vec<u8>>) {
        let (proc, fd) = channel::split(stream);
        if fd != 0 {
            return;
        }
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = procs.get_mut(&proc) else {
            return;
        };
        match (bytes, p.tty.is_some()) {
            (Some(b), _) => {
                if let Some(tx) = &p.input {
                    let _ = tx.send(Some(b));
                }
            }
            // A terminal stays open for output when the host's input ends.
            (None, true) => {}
            (None, false) => {
                if let Some(tx) = p.input.take() {
                    let _ = tx.send(None);
                }
            }
        }
    }

    fn resize(&self, proc: u32, rows: u16, cols: u16) {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tty) = procs.get(&proc).and_then(|p| p.tty.as_ref()) {
            let _ = rt_sys::set_window_size(tty.as_fd(), rows, cols);
        }
    }
}

/// A terminal master shared by its reader and writer.
struct SharedFile(Arc<File>);

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A thread writing what it is sent to `w` (a process's stdin), so that a
/// process that does not read cannot stall the channel; `None` closes it.
fn writer(mut w: Box<dyn Write + Send>) -> mpsc::Sender<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        while let Ok(Some(bytes)) = rx.recv() {
            if w.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    tx
}

/// `/bin/rt` with the guest's state root and JSON logs (its errors on
/// stderr, or in `--log`, are JSON lines the agent reads the message from).
fn rt() -> Command {
    let mut c = Command::new(crate::boot::RT_BIN);
    c.arg("--root").arg(RT_ROOT).args(["--log-format", "json"]);
    c
}

/// Exit code of a raw wait status: the code, or 128+N for signal N.
fn code_of(status: i32) -> i32 {
    if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    }
}

/// rt's error message from its stderr (JSON log lines, or plain text).
fn non_empty(err: String, code: i32) -> String {
    if let Some(msg) = last_error(&err) {
        return msg;
    }
    let err = err.trim();
    if err.is_empty() {
        format!("rt failed with status {code}")
    } else {
        err.strip_prefix("rt: ").unwrap_or(err).to_string()
    }
}

fn last_error(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
}

/// The last error rt logged (`--log-format json`).
fn log_error(log: &PathBuf) -> Option<String> {
    last_error(&std::fs::read_to_string(log).ok()?)
}
