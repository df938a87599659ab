//! `rt create`.

use std::path::PathBuf;

use rt_container::Options;
use rt_container::{CreateRequest, Runtime};

use crate::Global;

/// Flags shared by `create` and `run`.
#[derive(Debug, clap::Args)]
pub struct CreateFlags {
    /// Bundle directory (holds config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket to send the pty master to (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Write the init's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Use MS_MOVE and chroot instead of pivot_root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility: rt never creates a session keyring.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass fds 3 .. 3+N-1 into the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Isolation backend (overrides the run.rt.isolation annotation).
    #[arg(long)]
    pub isolation: Option<String>,
    /// Run an image from the store instead of a bundle: it is unpacked into
    /// a bundle under the state root, removed on delete.
    #[arg(long, conflicts_with = "bundle")]
    pub image: Option<String>,
    /// With --image: an overlayfs rootfs over layers shared in the store.
    #[arg(long, requires = "image")]
    pub overlay: bool,
    #[command(flatten)]
    pub network: NetworkFlags,
    /// Container id.
    pub id: String,
}

impl CreateFlags {
    /// With `--image`, unpacks the image into `<root>/.bundles/<id>` and
    /// points `bundle` there.
    pub fn prepare_image(&mut self, g: &Global) -> anyhow::Result<()> {
        let Some(reference) = &self.image else {
            return Ok(());
        };
        rt_container::spec::validate_id(&self.id)?;
        let bundle = rt_container::container::image_bundle_dir(&g.root, &self.id);
        anyhow::ensure!(
            !bundle.exists() && !g.root.join(&self.id).exists(),
            "container {} already exists",
            self.id
        );
        let store = super::image::store(g)?;
        super::image::unpack_bundle(&store, reference, &bundle, self.overlay, g.rootless)?;
        self.bundle = bundle;
        Ok(())
    }

    /// Removes what `prepare_image` made, after a failed create.
    pub fn discard_image(&self, g: &Global) {
        if self.image.is_some() {
            let bundle = rt_container::container::image_bundle_dir(&g.root, &self.id);
            if let Err(e) = rt_container::container::remove_image_bundle(&bundle) {
                tracing::warn!("{e}");
            }
        }
    }

    pub fn request(&self, keep_terminal: bool) -> CreateRequest {
        CreateRequest {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            options: Options {
                console_socket: self.console_socket.clone(),
                no_pivot: self.no_pivot,
                preserve_fds: self.preserve_fds,
                keep_terminal,
                starts_at_once: false,
            },
            isolation: self.isolation.clone(),
            isolation_by_name: crate::invoked_as_vm().then(|| "vm".to_string()),
            annotations: self.network.annotations(),
        }
    }
}

/// The network flags: each sets a `run.rt.network*` annotation over the
/// bundle's (see docs/networking.md).
#[derive(Debug, clap::Args)]
pub struct NetworkFlags {
    /// Network mode: none, host, bridged, nat or host-only (run.rt.network).
    #[arg(long)]
    pub network: Option<String>,
    /// Publish a port (nat): [hostIP:]hostPort:containerPort[/tcp|udp].
    /// Repeatable (run.rt.network.ports).
    #[arg(short = 'p', long)]
    pub publish: Vec<String>,
    /// A fixed address on the network's subnet (run.rt.network.ip).
    #[arg(long)]
    pub ip: Option<String>,
    /// The bridge to attach to (run.rt.network.bridge).
    #[arg(long)]
    pub bridge: Option<String>,
    /// The network's subnet, as a CIDR (run.rt.network.subnet).
    #[arg(long)]
    pub subnet: Option<String>,
}

impl NetworkFlags {
    fn annotations(&self) -> Vec<(String, String)> {
        use rt_netns::config::{BRIDGE, IP, MODE, PORTS, SUBNET};
        let mut out = Vec::new();
        let mut set = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push((k.to_string(), v.clone()));
            }
        };
        set(MODE, &self.network);
        set(IP, &self.ip);
        set(BRIDGE, &self.bridge);
        set(SUBNET, &self.subnet);
        if !self.publish.is_empty() {
            out.push((PORTS.to_string(), self.publish.join(",")));
        }
        out
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub flags: CreateFlags,
}

pub fn run(g: &Global, mut a: Args) -> anyhow::Result<()> {
    let rt = Runtime::new(&g.root)
        .with_cgroups(g.cgroups)
        .systemd_cgroup(g.systemd_cgroup)
        .rootless(g.rootless);
    a.flags.prepare_image(g)?;
    if let Err(e) = rt.create(&a.flags.request(false)) {
        a.flags.discard_image(g);
        return Err(e.into());
    }
    Ok(())
}
