//! The engine's checkpoint and restore (live migration is `migrate` and
//! `receive`): status rules, the new container's state and pid file, the
//! image's annotations and network identity, and clean-up on failure; the
//! mechanism is the backend's (only the VM backend has one).

use std::path::PathBuf;

use super::{write_pid_file, Runtime};
use crate::backend::{self, CheckpointOptions, RestoreFrom};
use crate::error::{Error, Result};
use crate::network;
use crate::sandbox::{Created, Options, Sandbox};
use crate::spec::{self, Bundle};
use crate::state::Status;

/// How `restore` is asked for by the CLI.
#[derive(Debug, Default)]
pub struct RestoreRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub image_path: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub options: Options,
    /// A live migration's QEMU URI to receive on, instead of the image's
    /// saved state.
    pub incoming: Option<String>,
}

impl Runtime {
    /// Saves a running or paused container (runc's `checkpoint`).
    pub fn checkpoint(&self, id: &str, opts: &CheckpointOptions) -> Result<()> {
        let c = self.open(id)?;
        if !matches!(c.status, Status::Running | Status::Paused) {
            return Err(Error::NotRunning);
        }
        c.backend.checkpoint(&c.st, opts)
    }

    /// Brings a checkpointed container back under `req.id`, running; on
    /// any failure nothing is left behind.
    pub fn restore(&self, req: &RestoreRequest) -> Result<Created> {
        spec::validate_id(&req.id)?;
        // The image is checked before anything is made.
        let image = crate::backend::vm::checkpoint::read_image(&req.image_path)?;
        let mut bundle = Bundle::load(&req.bundle)?;
        carry_annotations(&mut bundle.spec, &image.container.config);
        let backend: Box<dyn backend::Isolation> = Box::new(backend::vm::Vm);
        let layout = rt_cgroups::Layout::detect()?;
        let (dir, mut state) = self.new_state(&req.id, &bundle, backend.as_ref(), &layout)?;
        let result = (|| -> Result<Created> {
            dir.save(&state)?;
            let network = match network::prepare(&mut bundle.spec, &self.store.dir(&req.id))? {
                Some(mut config) => {
                    if let Some(saved) = &image.container.network {
                        let networks = rt_netns::ipam::Networks::new(self.store.root());
                        let kept = rt_netns::ipam::keep_identity(&networks, &mut config, saved)
                            .map_err(network::Error::Identity)?;
                        tracing::debug!(kept, "the checkpoint's network identity");
                    }
                    Some(network::Plan {
                        config,
                        networking: network::networking(self.store.root()),
                    })
                }
                None => None,
            };
            state.config = bundle.spec.clone();
            let mut cgroup = match &state.cgroup {
                Some(rec) => rt_cgroups::open(&layout, rec.clone()),
                None => rt_cgroups::disabled(),
            };
            let sandbox = Sandbox {
                dir: &dir,
                bundle: &bundle,
                opts: &req.options,
                cgroup: cgroup.as_mut(),
                layout: &layout,
                network: network.as_ref(),
                head_start: Default::default(),
            };
            let from = match &req.incoming {
                Some(uri) => RestoreFrom::Incoming {
                    image: &req.image_path,
                    uri,
                },
                None => RestoreFrom::Image(&req.image_path),
            };
            let created = backend.restore(sandbox, &mut state, &from)?;
            if let Some(path) = &req.pid_file {
                write_pid_file(path, created.pid)?;
            }
            Ok(created)
        })();
        if result.is_err() {
            let _ = self.teardown(backend.as_ref(), &state, &layout);
            let _ = dir.remove();
        }
        result
    }
}

/// The bundle's annotations, with rt's own (`run.rt.*`) that the
/// checkpointed container had and the bundle lacks: those `rt create`'s
/// flags set (`--network`, `-p`, `--isolation`…) live only in rt's state,
/// and the image carries it. The bundle's own values win.
fn carry_annotations(spec: &mut oci_spec::runtime::Spec, saved: &oci_spec::runtime::Spec) {
    let Some(saved) = saved.annotations() else {
        return;
    };
    let mut all = spec.annotations().clone().unwrap_or_default();
    for (k, v) in saved {
        if k.starts_with("run.rt.") && !all.contains_key(k) {
            all.insert(k.clone(), v.clone());
        }
    }
    spec.set_annotations(Some(all));
}
