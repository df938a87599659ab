//! The isolation backend of a container, chosen per container.
//!
//! Everything around the backend — spec validation, state, cgroups, hooks,
//! the CLI — is shared; a backend only builds the sandbox and its init. The
//! host-kernel namespaces backend is [`Namespaces`]; the microVM backend (QEMU
//! with a guest agent that reuses this crate inside the guest) plugs in here.

use std::collections::HashMap;

use crate::process::parent::{self, Created, Options};
use crate::spec::Bundle;
use crate::state::{ContainerDir, State};

/// The annotation that selects the backend.
pub const ANNOTATION: &str = "run.rt.isolation";

/// Errors of backend selection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("isolation {0:?} (annotation run.rt.isolation) is not supported: rt supports \"container\"; the microVM backend is not built yet")]
    Unsupported(String),
}

/// What a backend builds a container from.
#[derive(Debug)]
pub struct Sandbox<'a> {
    pub dir: &'a ContainerDir,
    pub bundle: &'a Bundle,
    pub opts: &'a Options,
    pub cgroup: &'a mut dyn rt_cgroups::Manager,
    pub layout: &'a rt_cgroups::Layout,
    /// The network to build once the sandbox's namespace exists.
    pub network: Option<&'a crate::network::Plan>,
}

/// Builds a container's sandbox and its init, which then waits for `start`.
pub trait Isolation: std::fmt::Debug {
    /// The name recorded in the state (`container`, `vm`).
    fn name(&self) -> &'static str;
    /// Builds the sandbox, and its network when `network` is set; returns
    /// once the init waits on the exec fifo.
    fn create(&self, sandbox: Sandbox<'_>, state: &mut State) -> parent::Result<Created>;
}

/// Linux namespaces on the host kernel (runc's model).
#[derive(Debug)]
pub struct Namespaces;

impl Isolation for Namespaces {
    fn name(&self) -> &'static str {
        "container"
    }

    fn create(&self, sandbox: Sandbox<'_>, state: &mut State) -> parent::Result<Created> {
        parent::create(sandbox, state)
    }
}

/// The backend the annotations (or the CLI's override) ask for.
pub fn select(
    annotations: Option<&HashMap<String, String>>,
    over: Option<&str>,
) -> Result<Box<dyn Isolation>, Error> {
    let wanted = over
        .or_else(|| {
            annotations
                .and_then(|a| a.get(ANNOTATION))
                .map(String::as_str)
        })
        .unwrap_or("container");
    match wanted {
        "container" | "namespaces" => Ok(Box::new(Namespaces)),
        other => Err(Error::Unsupported(other.to_string())),
    }
}
