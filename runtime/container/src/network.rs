//! The container's network as its `run.rt.network*` annotations ask for it:
//! the spec changes it implies (made at create, before anything else), and
//! the hand-off to `rt-netns`, which builds it once the init's namespace
//! exists and tears it down at delete.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Mount, MountBuilder, Spec};
use rt_netns::{Config, Mode, Networking};

/// Errors of the network plan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] rt_netns::config::Error),
    #[error("run.rt.network={0} needs a new network namespace, but linux.namespaces joins {1}")]
    JoinsNetns(Mode, PathBuf),
    #[error(
        "run.rt.network=host shares the host's network namespace, but linux.namespaces joins {0}"
    )]
    HostJoins(PathBuf),
    #[error("run.rt.network.dns: the bundle already mounts /etc/resolv.conf")]
    ResolvConfMounted,
    #[error("checking the checkpoint's network identity")]
    Identity(#[source] rt_netns::ipam::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A container's network, decided at create.
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    pub networking: Networking,
}

impl Plan {
    /// Builds the network of the container whose init is `pid`.
    pub fn attach(&self, id: &str, pid: i32) -> Result<rt_netns::Attached, rt_netns::Error> {
        self.networking.attach(id, &self.config, pid)
    }
}

/// The networking of a state root; `dhcp-keeper` is the rt subcommand that
/// keeps a bridged container's lease. rt runs from a sealed memfd copy
/// (see the CLI's `sealed`), which only `/proc/self/exe` names.
pub fn networking(root: &Path) -> Networking {
    Networking::new(root, vec!["/proc/self/exe".into(), "dhcp-keeper".into()])
}

/// In the container's init, in its new network namespace: `lo` up, for
/// every network mode that has a namespace of its own (rt's init has
/// CAP_NET_ADMIN there, rootless included).
pub fn init_side(spec: &Spec) -> Result<(), rt_netns::Error> {
    match config_of(spec) {
        Ok(Some(c)) if c.mode != Mode::Host => rt_netns::attach::loopback_up(),
        _ => Ok(()),
    }
}

/// Whether the container gets a new network namespace that rt's own
/// networking does not handle: its init then sets `lo` up, as runc and
/// crun do (`rt_sys::netns_helper::loopback_up`; a namespace the helper
/// made has it up already). A namespace joined by path is left as it is.
pub fn plain_new_netns(spec: &Spec) -> bool {
    let new_netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == oci_spec::runtime::LinuxNamespaceType::Network && n.path().is_none()
            })
        });
    new_netns && matches!(config_of(spec), Ok(None))
}

/// The network config of a container's annotations (None: rt does no
/// networking).
pub fn config_of(spec: &Spec) -> Result<Option<Config>, Error> {
    let empty = Default::default();
    Ok(Config::from_annotations(
        spec.annotations().as_ref().unwrap_or(&empty),
    )?)
}

/// Reads the annotations and changes `spec` to match: `host` drops the
/// network namespace, the other modes make sure there is a new one, and
/// `dns` adds a read-only bind of a resolv.conf written to `state_dir`.
pub fn prepare(spec: &mut Spec, state_dir: &Path) -> Result<Option<Config>, Error> {
    let Some(config) = config_of(spec)? else {
        return Ok(None);
    };
    config.check_caller()?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    let net = namespaces
        .iter()
        .position(|n| n.typ() == LinuxNamespaceType::Network);
    match (config.mode, net) {
        (Mode::Host, Some(i)) => {
            if let Some(p) = namespaces[i].path() {
                return Err(Error::HostJoins(p.clone()));
            }
            namespaces.remove(i);
        }
        (Mode::Host, None) => {}
        (mode, Some(i)) => {
            if let Some(p) = namespaces[i].path() {
                return Err(Error::JoinsNetns(mode, p.clone()));
            }
        }
        (_, None) => {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(LinuxNamespaceType::Network);
            namespaces.push(ns);
        }
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    if !config.dns.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        if mounts
            .iter()
            .any(|m| m.destination() == Path::new("/etc/resolv.conf"))
        {
            return Err(Error::ResolvConfMounted);
        }
        mounts.push(resolv_conf(&config, state_dir)?);
        spec.set_mounts(Some(mounts));
    }
    Ok(Some(config))
}

/// Writes `resolv.conf` in the state directory; the mount that shows it.
fn resolv_conf(config: &Config, state_dir: &Path) -> Result<Mount, Error> {
    let path = state_dir.join("resolv.conf");
    let text: String = config
        .dns
        .iter()
        .map(|ip| format!("nameserver {ip}\n"))
        .collect();
    std::fs::write(&path, text).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    Ok(MountBuilder::default()
        .destination("/etc/resolv.conf")
        .typ("bind")
        .source(path)
        .options(vec![
            "rbind".into(),
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
        ])
        .build()
        .expect("all fields set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(pairs: &[(&str, &str)]) -> Spec {
        let mut v = crate::defaults::default_spec(false);
        v["annotations"] = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        serde_json::from_value(v).unwrap()
    }

    fn has_netns(spec: &Spec) -> bool {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network)
    }

    #[test]
    fn host_drops_the_namespace_and_dns_mounts_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(&[("run.rt.network", "host")]);
        assert!(has_netns(&spec));
        assert_eq!(
            prepare(&mut spec, dir.path()).unwrap().unwrap().mode,
            Mode::Host
        );
        assert!(!has_netns(&spec));

        let mut spec = spec_with(&[
            ("run.rt.network", "none"),
            ("run.rt.network.dns", "10.0.0.53,10.0.0.54"),
        ]);
        prepare(&mut spec, dir.path()).unwrap();
        assert!(has_netns(&spec));
        let text = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
        assert_eq!(text, "nameserver 10.0.0.53\nnameserver 10.0.0.54\n");
        let m = spec.mounts().as_ref().unwrap().last().unwrap().clone();
        assert_eq!(m.destination(), Path::new("/etc/resolv.conf"));
        assert!(matches!(
            prepare(&mut spec, dir.path()),
            Err(Error::ResolvConfMounted)
        ));
    }

    #[test]
    fn absent_annotation_leaves_the_spec_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(&[]);
        let before = serde_json::to_string(&spec).unwrap();
        assert!(prepare(&mut spec, dir.path()).unwrap().is_none());
        assert_eq!(serde_json::to_string(&spec).unwrap(), before);
    }
}
