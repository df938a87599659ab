//! containerd's task service (API v2) over rt: each request becomes one
//! rt command on the container (see [`crate::rt`]), its result recorded in
//! the [`Table`] and announced as a task event. rt decides the isolation
//! (its binary name, `--isolation`'s annotation): the shim does the same
//! for a namespace container and a microVM one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::api::Status;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, Code};

use crate::exits::{self, Exits};
use crate::options::Options;
use crate::pod;
use crate::rt::Runner;
use crate::stdio::{self, Paths, Prepared};
use crate::table::{Container, Proc, Table};

#[derive(Clone)]
pub struct Service {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    exits: Exits,
    table: Arc<Table>,
}

fn error(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        error(Code::NOT_FOUND, format!("container {id} not found"))
    } else {
        error(
            Code::NOT_FOUND,
            format!("process {exec_id} of container {id} not found"),
        )
    }
}

fn failed(e: impl std::error::Error) -> ttrpc::Error {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    error(Code::UNKNOWN, s)
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace: namespace.into(),
            publisher: Arc::new(publisher),
            exit,
            exits: Exits::start().expect("subscribing to the reaper"),
            table: Arc::default(),
        }
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = ttrpc::context::Context::default();
        if let Err(e) = self.publisher.publish(ctx, topic, &self.namespace, event) {
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    /// The runner of container `id`.
    fn runner(&self, id: &str) -> TtrpcResult<Runner> {
        self.table
            .lock()
            .get(id)
            .map(|c| c.runner.clone())
            .ok_or_else(|| not_found(id, ""))
    }

    /// Waits in a thread for `pid`'s exit: records it, announces TaskExit.
    fn watch(&self, id: &str, exec_id: &str, pid: u32) {
        let rx = self.exits.expect(pid as i32);
        let (me, id, exec_id) = (self.clone(), id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            let Ok(code) = rx.recv() else { return };
            let at = exits::now();
            if !me.table.exited(&id, &exec_id, code as u32, at.clone()) {
                return;
            }
            let ev = TaskExit {
                container_id: id.clone(),
                id: if exec_id.is_empty() { id } else { exec_id },
                pid,
                exit_status: code as u32,
                exited_at: MessageField::some(at),
                ..Default::default()
            };
            me.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev));
        });
    }

    /// `rt events ID`, streaming: every `oom` line becomes a TaskOOM.
    fn watch_oom(&self, runner: &Runner, id: &str) -> Option<std::process::Child> {
        use std::io::BufRead;
        let mut cmd = runner.command(&["events", "--interval", "3600s", id]);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().ok()?;
        let out = child.stdout.take()?;
        let (me, name, id) = (self.clone(), id.to_string(), id.to_string());
        let (ready, is_ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                // rt's first line: its OOM watch is in place.
                let _ = ready.send(());
                if line.contains("\"type\":\"oom\"") {
                    let ev = TaskOOM {
                        container_id: id.clone(),
                        ..Default::default()
                    };
                    me.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev));
                }
            }
        });
        // Before the container starts, so that no OOM kill comes too early
        // to be seen (a VM's relayed `rt events` takes longest).
        if is_ready
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_err()
        {
            tracing::warn!("rt events of {name} did not start: no OOM events for it");
        }
        Some(child)
    }

    /// `rt create`, or `rt exec --detach`: spawns with the process's stdio
    /// and returns its pid (from the pid file) and the shim's side of its
    /// I/O.
    fn spawn(
        &self,
        runner: &Runner,
        args: &[&str],
        pid_file: &Path,
        paths: &Paths,
    ) -> TtrpcResult<(u32, stdio::Io)> {
        let mut prepared = Prepared::new(paths).map_err(failed)?;
        let mut full: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let id = full.pop().unwrap_or_default();
        full.push("--pid-file".into());
        full.push(pid_file.display().to_string());
        if let Some(sock) = prepared.console_socket() {
            full.push("--console-socket".into());
            full.push(sock.display().to_string());
        }
        full.push(id);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let mut cmd = runner.command(&refs);
        prepared.apply(&mut cmd);
        runner.run_with(&refs, cmd).map_err(failed)?;
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                error(
                    Code::UNKNOWN,
                    format!("rt wrote no pid to {}", pid_file.display()),
                )
            })?;
        let io = prepared.finish().map_err(failed)?;
        Ok((pid, io))
    }

    /// A container of a pod on a VM handler (see [`pod`]): the sandbox
    /// runs as a namespace container; an app container's config.json gets
    /// its own IPC and UTS namespaces and the pod's hostname.
    fn vm_pod_member(&self, bundle: &Path, opts: &mut Options) -> TtrpcResult<()> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(failed)?;
        let mut spec: serde_json::Value = serde_json::from_slice(&text).map_err(failed)?;
        match pod::role(&spec) {
            pod::Role::Sandbox => {
                opts.binary = pod::namespaces_binary(&opts.binary);
                tracing::info!("pod sandbox on a VM handler: a namespace container");
            }
            pod::Role::Container { sandbox } => {
                let sandbox_bundle = self.table.lock().get(&sandbox).map(|c| c.bundle.clone());
                let hostname = sandbox_bundle.as_deref().and_then(pod::hostname_of);
                let changed = pod::adapt_for_vm(&mut spec, hostname.as_deref());
                if !changed.is_empty() {
                    tracing::info!("container of a VM pod: {}", changed.join(", "));
                    std::fs::write(&path, spec.to_string()).map_err(failed)?;
                }
            }
            pod::Role::Plain => {}
        }
        Ok(())
    }

    fn create_task(&self, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        let bundle = PathBuf::from(&req.bundle);
        let mut opts = Options::from_any(req.options.as_ref()).map_err(failed)?;
        if pod::is_vm_binary(&opts.binary) {
            self.vm_pod_member(&bundle, &mut opts)?;
        }
        opts.save(&bundle).map_err(failed)?;
        let runner = Runner::new(&opts, &self.namespace, &bundle, Some(&self.exits));
        let rootfs = bundle.join("rootfs");
        for m in &req.rootfs {
            if let Err(e) = containerd_shim::mount::mount_rootfs(
                Some(m.type_.as_str()),
                Some(m.source.as_str()),
                &m.options,
                &rootfs,
            ) {
                stdio::unmount_rootfs(&bundle);
                return Err(error(Code::UNKNOWN, format!("mounting the rootfs: {e}")));
            }
        }
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let bundle_arg = bundle.display().to_string();
        let pid_file = bundle.join("init.pid");
        let created = self.spawn(
            &runner,
            &["create", "--bundle", &bundle_arg, &req.id],
            &pid_file,
            &paths,
        );
        let (pid, io) = match created {
            Ok(x) => x,
            Err(e) => {
                stdio::unmount_rootfs(&bundle);
                return Err(e);
            }
        };
        let mut init = Proc::new(paths);
        init.pid = pid;
        init.io = io;
        let events = self.watch_oom(&runner, &req.id);
        self.table.lock().insert(
            req.id.clone(),
            Container {
                bundle,
                runner,
                init,
                execs: Default::default(),
                events,
            },
        );
        self.watch(&req.id, "", pid);
        Ok(pid)
    }
}

impl containerd_shim::Task for Service {
    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let t = self.table.lock();
        let c = t.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid,
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            ..Default::default()
        };
        resp.status = p.status.into();
        if let Some((code, at)) = &p.exit {
            resp.exit_status = *code;
            resp.exited_at = MessageField::some(at.clone());
        }
        Ok(resp)
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(error(
                Code::UNIMPLEMENTED,
                "restoring a checkpoint is not supported by containerd-shim-rt-v2",
            ));
        }
        if self.table.lock().contains_key(&req.id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let pid = self.create_task(&req)?;
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let runner = self.runner(&req.id)?;
        if req.exec_id.is_empty() {
            runner.run(&["start", &req.id], None).map_err(failed)?;
            let pid = {
                let mut t = self.table.lock();
                let c = t.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
                if c.init.status == Status::CREATED {
                    c.init.status = Status::RUNNING;
                }
                c.init.pid
            };
            let ev = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        let (bundle, paths, spec) = {
            let t = self.table.lock();
            let c = t.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            (c.bundle.clone(), p.paths.clone(), p.spec.clone())
        };
        let spec_file = bundle.join(format!("exec-{}.json", req.exec_id));
        std::fs::write(&spec_file, &spec).map_err(failed)?;
        let pid_file = bundle.join(format!("exec-{}.pid", req.exec_id));
        let spec_arg = spec_file.display().to_string();
        let mut args = vec!["exec", "--process", &spec_arg, "--detach"];
        if paths.terminal {
            args.push("--tty");
        }
        args.push(&req.id);
        let spawned = self.spawn(&runner, &args, &pid_file, &paths);
        let _ = std::fs::remove_file(&spec_file);
        let (pid, io) = spawned?;
        {
            let mut t = self.table.lock();
            if let Some(p) = t
                .get_mut(&req.id)
                .and_then(|c| c.execs.get_mut(&req.exec_id))
            {
                p.pid = pid;
                p.io = io;
                p.status = Status::RUNNING;
            }
        }
        self.watch(&req.id, &req.exec_id, pid);
        let ev = TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut t = self.table.lock();
            let c = t.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            let (code, at) = p.exit.unwrap_or_default();
            return Ok(api::DeleteResponse {
                pid: p.pid,
                exit_status: code,
                exited_at: MessageField::some(at),
                ..Default::default()
            });
        }
        let runner = self.runner(&req.id)?;
        runner
            .run(&["delete", "--force", &req.id], None)
            .map_err(failed)?;
        let c = self
            .table
            .lock()
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        if let Some(mut ev) = c.events {
            let _ = ev.kill();
        }
        stdio::unmount_rootfs(&c.bundle);
        let (code, at) = c.init.exit.clone().unwrap_or_else(|| (0, exits::now()));
        let ev = TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid: c.init.pid,
            exit_status: code,
            exited_at: MessageField::some(at.clone()),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        Ok(api::DeleteResponse {
            pid: c.init.pid,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let runner = self.runner(&req.id)?;
        let out = runner
            .run(&["ps", "--format", "json", &req.id], None)
            .map_err(failed)?;
        let pids: Vec<u32> = serde_json::from_str(&out).map_err(failed)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim_protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.runner(&req.id)?
            .run(&["pause", &req.id], None)
            .map_err(failed)?;
        if let Some(c) = self.table.lock().get_mut(&req.id) {
            c.init.status = Status::PAUSED;
        }
        let ev = TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.runner(&req.id)?
            .run(&["resume", &req.id], None)
            .map_err(failed)?;
        if let Some(c) = self.table.lock().get_mut(&req.id) {
            if c.init.status == Status::PAUSED {
                c.init.status = Status::RUNNING;
            }
        }
        let ev = TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        Ok(api::Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (runner, pid, stopped) = {
            let t = self.table.lock();
            let c = t.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .proc(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            (c.runner.clone(), p.pid, p.status == Status::STOPPED)
        };
        if stopped {
            return Err(error(Code::NOT_FOUND, "process already finished"));
        }
        if !req.exec_id.is_empty() {
            // An exec'd process (or its VM relay, which passes the signal
            // on) is the shim's own child: signalled directly, as runc's
            // shim does.
            rt_sys::kill(nix::unistd::Pid::from_raw(pid as i32), req.signal as i32)
                .map_err(failed)?;
            return Ok(api::Empty::new());
        }
        let sig = req.signal.to_string();
        let mut args = vec!["kill"];
        if req.all {
            args.push("--all");
        }
        args.extend([req.id.as_str(), sig.as_str()]);
        runner.run(&args, None).map_err(failed)?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        {
            let mut t = self.table.lock();
            let c = t.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            let mut p = Proc::new(Paths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.spec = spec;
            c.execs.insert(req.exec_id.clone(), p);
        }
        let ev = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev));
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let t = self.table.lock();
        let c = t.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        p.io.resize(req.width, req.height).map_err(failed)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let t = self.table.lock();
        let c = t.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "update without resources"))?;
        self.runner(&req.id)?
            .run(&["update", "--resources", "-", &req.id], Some(&resources))
            .map_err(failed)?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (code, at) = self
            .table
            .wait(&req.id, &req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let out = self
            .runner(&req.id)?
            .run(&["events", "--stats", &req.id], None)
            .map_err(failed)?;
        let any = crate::metrics::from_rt_stats(&out).map_err(failed)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.table.lock().get(&req.id).map_or(0, |c| c.init.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // A pod's shim serves several containers: it goes with the last.
        if self.table.lock().is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
