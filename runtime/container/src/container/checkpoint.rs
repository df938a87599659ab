//! The engine's checkpoint, restore and live migration: status rules, the
//! new container's state and pid file, and clean-up on failure; the
//! mechanism is the backend's (only the VM backend has one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// What a live migration measured.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationReport {
    /// QEMU's figures: `downtime_ms`, `total_ms`, `transferred`.
    pub qemu: serde_json::Value,
    /// From the request to the destination running and the source gone.
    pub total: Duration,
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
        crate::backend::vm::checkpoint::read_image(&req.image_path)?;
        let mut bundle = Bundle::load(&req.bundle)?;
        let backend: Box<dyn backend::Isolation> = Box::new(backend::vm::Vm);
        let layout = rt_cgroups::Layout::detect()?;
        let (dir, mut state) = self.new_state(&req.id, &bundle, backend.as_ref(), &layout)?;
        let result = (|| -> Result<Created> {
            dir.save(&state)?;
            let network =
                network::prepare(&mut bundle.spec, &self.store.dir(&req.id))?.map(|config| {
                    network::Plan {
                        config,
                        networking: network::networking(self.store.root()),
                    }
                });
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

    /// Live-migrates a running container to the state root `to` (under
    /// `new_id`, or its own id): the destination is started with `rt
    /// restore --incoming` from this binary, the VM copied while it runs,
    /// and the source deleted once the destination runs. The destination's
    /// supervisor has this command's stdio.
    pub fn migrate(&self, id: &str, to: &Path, new_id: Option<&str>) -> Result<MigrationReport> {
        let started = Instant::now();
        let c = self.open(id)?;
        if c.status != Status::Running {
            return Err(Error::NotRunning);
        }
        let dest_id = new_id.unwrap_or(id);
        spec::validate_id(dest_id)?;
        if to.join(dest_id).exists() {
            return Err(crate::state::Error::AlreadyExists(dest_id.to_string()).into());
        }
        let image = to.join(format!(".migrate-{dest_id}"));
        let _ = std::fs::remove_dir_all(&image);
        c.backend.describe_migration(&c.st, &image)?;
        let socket = incoming_socket(&image);
        let uri = format!("unix:{}", socket.display());
        let exe = std::env::current_exe().map_err(|source| Error::Io {
            what: "finding rt's own binary",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        let mut dest = std::process::Command::new(&exe)
            .arg("--root")
            .arg(to)
            .arg("restore")
            .arg("--detach")
            .arg("--incoming")
            .arg(&uri)
            .arg("--image-path")
            .arg(&image)
            .arg("--bundle")
            .arg(&c.st.bundle)
            .arg(dest_id)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|source| Error::Io {
                what: "running",
                path: exe.clone(),
                source,
            })?;
        let outcome = (|| -> Result<serde_json::Value> {
            wait_for_listener(&socket, &mut dest)?;
            c.backend.migrate(&c.st, &uri)
        })();
        let restored = dest.wait().map(|s| s.success()).unwrap_or(false);
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_dir_all(&image);
        let qemu = match (outcome, restored) {
            (Ok(q), true) => q,
            (Ok(_), false) => {
                c.backend.finish_migration(&c.st, true)?;
                return Err(Error::Migration(
                    "the destination did not start (see its error above); the source resumed"
                        .into(),
                ));
            }
            (Err(e), _) => return Err(e),
        };
        c.backend.finish_migration(&c.st, false)?;
        // Within one host the destination may have the same cgroup (the
        // same id and cgroupsPath): it is the destination's now, and the
        // source's delete must not empty and remove it.
        let mut c = c;
        let dest = Runtime::new(to)
            .state(dest_id)
            .ok()
            .and_then(|(s, _)| s.cgroup);
        if dest.is_some() && dest.as_ref().map(|r| &r.path) == c.st.cgroup.as_ref().map(|r| &r.path)
        {
            c.st.cgroup = None;
            c.dir.save(&c.st)?;
        }
        drop(c);
        self.delete(id, true)?;
        Ok(MigrationReport {
            qemu,
            total: started.elapsed(),
        })
    }
}

/// The destination QEMU's listening socket: in the image directory when
/// its path fits `sun_path`, else in /run.
fn incoming_socket(image: &Path) -> PathBuf {
    let p = image.join("in.sock");
    if p.as_os_str().len() < 100 {
        p
    } else {
        PathBuf::from(format!("/run/rt-migrate-{}.sock", std::process::id()))
    }
}

/// Waits for the destination's QEMU to listen (or the destination to fail).
fn wait_for_listener(socket: &Path, dest: &mut std::process::Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !socket.exists() {
        if let Ok(Some(st)) = dest.try_wait() {
            return Err(Error::Migration(format!(
                "the destination's restore ended ({st}) before it listened"
            )));
        }
        if Instant::now() > deadline {
            let _ = dest.kill();
            return Err(Error::Migration(
                "the destination did not listen within 120 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
