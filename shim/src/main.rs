//! `containerd-shim-rt-v2`: containerd's runtime v2 shim for rt (runtime
//! type `io.containerd.rt.v2`). Like containerd's runc shim, it runs the
//! rt binary as a process for every operation (`rt create --pid-file`,
//! `rt start`, `rt exec --detach`, `rt kill`, `rt delete`, …) and never
//! runs a second implementation of anything rt does: namespace and microVM
//! containers alike go through the same `rt`. It serves containerd's task
//! API over ttrpc (containerd-shim 0.11, task API v2), holds the
//! containers' stdio, reaps their processes as a subreaper and publishes
//! the task events. See docs/shim.md.
//!
//! Processes: `start` (run by containerd in the bundle) spawns the serving
//! shim and prints its address; the serving shim lives until containerd
//! shuts it down; `delete` (run by containerd when the serving shim is
//! gone) force-deletes what is left.

mod exits;
mod metrics;
mod options;
mod pod;
mod rt;
mod service;
mod stdio;
mod table;

use std::path::Path;
use std::sync::Arc;

use containerd_shim as shim;
use shim::api::DeleteResponse;
use shim::publisher::RemotePublisher;
use shim::{Config, ExitSignal, Flags, StartOpts};

/// The annotation CRI puts on every container of a pod: one shim serves
/// the whole pod sandbox.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

struct Shim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

impl shim::Shim for Shim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// Run by containerd in the bundle: a pod's containers share the
    /// sandbox's shim, others get one each.
    fn start_shim(&mut self, opts: StartOpts) -> shim::Result<String> {
        let grouping = sandbox_of(Path::new("config.json")).unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        shim::util::write_address(&address)?;
        Ok(address)
    }

    /// Run by containerd in the bundle once the serving shim is gone
    /// (killed, crashed): force-deletes the container with rt, unmounts the
    /// rootfs, and reports the container as killed.
    fn delete_shim(&mut self) -> shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?;
        let opts = options::Options::of_bundle(&bundle);
        let exits = exits::Exits::start().ok();
        let runner = rt::Runner::new(&opts, &self.namespace, &bundle, exits.as_ref());
        if let Err(e) = runner.run(&["delete", "--force", &self.id], None) {
            tracing::warn!("rt delete --force {}: {e}", self.id);
        }
        stdio::unmount_rootfs(&bundle);
        let mut resp = DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = protobuf::MessageField::some(exits::now());
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

/// The pod sandbox a bundle's container belongs to.
fn sandbox_of(config: &Path) -> Option<String> {
    let text = std::fs::read(config).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&text).ok()?;
    spec["annotations"][SANDBOX_ID].as_str().map(str::to_string)
}

use containerd_shim_protos::protobuf;

fn main() {
    shim::run::<Shim>("io.containerd.rt.v2", None)
}
