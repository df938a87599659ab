//! What the guest sees of the host: the container's rootfs and the sources
//! of its bind mounts, gathered in one directory that virtiofsd shares, and
//! the config.json the guest's rt runs, whose paths point into that share.
//!
//! The share is assembled in the supervisor's own mount namespace (a
//! tmpfs with bind mounts, none of them visible on the host), so nothing is
//! left mounted when the supervisor is gone, however it ends.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::VmError;

/// Where the guest's agent mounts the share.
pub const GUEST_SHARE: &str = "/run/rt-share";

/// A bind mount's host source, shared as `m/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    pub readonly: bool,
}

/// Annotations that are the host's business: the guest's rt runs the
/// container with namespaces and no rt network of its own.
fn host_only_annotation(key: &str) -> bool {
    key == crate::backend::ANNOTATION
        || key.starts_with("run.rt.vm.")
        || key == "run.rt.network"
        || key.starts_with("run.rt.network.")
}

/// The guest's config.json for `spec` (the bundle's, as JSON) and the bind
/// sources to share. Hooks that run in the runtime's namespace (prestart,
/// createRuntime, poststart, poststop) stay on the host; createContainer
/// and startContainer run in the guest's container.
pub fn guest_config(
    spec: &Value,
    bundle: &Path,
    own_network: bool,
) -> Result<(Value, Vec<Bind>), VmError> {
    let mut g = spec.clone();
    g["root"]["path"] = Value::String(format!("{GUEST_SHARE}/rootfs"));
    let mut binds = Vec::new();
    if let Some(mounts) = g.get_mut("mounts").and_then(Value::as_array_mut) {
        for m in mounts.iter_mut() {
            let opts: Vec<&str> = m["options"]
                .as_array()
                .map(|o| o.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let is_bind = m["type"] == "bind" || opts.iter().any(|o| *o == "bind" || *o == "rbind");
            if !is_bind {
                continue;
            }
            let Some(source) = m["source"].as_str() else {
                continue;
            };
            let source = bundle.join(source);
            let readonly = opts.contains(&"ro");
            m["source"] = Value::String(format!("{GUEST_SHARE}/m/{}", binds.len()));
            binds.push(Bind { source, readonly });
        }
    }
    // With the caller's network or rt's wired to the VM, the container
    // uses the guest's own namespace, where eth0 is.
    if own_network || netns_path(spec).is_some() {
        if let Some(ns) = g["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
    }
    if let Some(hooks) = g.get_mut("hooks").and_then(Value::as_object_mut) {
        hooks.retain(|k, _| k == "createContainer" || k == "startContainer");
    }
    // The host's cgroupsPath names the host's cgroup (or its systemd unit,
    // `slice:prefix:name`, which the guest's cgroupfs driver refuses): the
    // guest's one container takes the default, its id.
    if let Some(linux) = g.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("cgroupsPath");
    }
    if let Some(a) = g.get_mut("annotations").and_then(Value::as_object_mut) {
        // `none` is left to the guest's rt: a namespace with `lo` up.
        let none = a.get("run.rt.network").is_some_and(|v| v == "none");
        a.retain(|k, _| !host_only_annotation(k));
        if none {
            a.insert("run.rt.network".into(), "none".into());
        }
    }
    Ok((g, binds))
}

/// Checks what the VM backend cannot do with this spec, naming it.
pub fn check(spec: &Value) -> Result<(), VmError> {
    let namespaces = spec["linux"]["namespaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let net = namespaces.iter().find(|n| n["type"] == "network");
    if net.is_none() {
        return Err(VmError::Unsupported(
            "host networking (no network namespace in config.json)".into(),
        ));
    }
    // A network namespace path is the caller's network, wired to the VM.
    for n in namespaces.iter().filter(|n| n["type"] != "network") {
        if let Some(p) = n["path"].as_str().filter(|p| !p.is_empty()) {
            return Err(VmError::Unsupported(format!(
                "joining the host's {} namespace {p}",
                n["type"].as_str().unwrap_or("?")
            )));
        }
    }
    Ok(())
}

/// The caller's network namespace (`linux.namespaces` network path).
pub fn netns_path(spec: &Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Builds the share at `share` (a directory in the state dir): called by
/// the supervisor, single-threaded, before it starts virtiofsd.
pub fn assemble(share: &Path, rootfs: &Path, binds: &[Bind]) -> Result<(), VmError> {
    let sys = |what: &'static str| move |e: nix::errno::Errno| VmError::Sys(what, e);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(sys("unshare(CLONE_NEWNS)"))?;
    // Host mounts still propagate in; ours never out.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("making / a slave"))?;
    mount(
        Some("tmpfs"),
        share,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys("mounting the share's tmpfs"))?;
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| VmError::Io { what, path, source }
    };
    let root = share.join("rootfs");
    std::fs::create_dir(&root).map_err(io("creating", &root))?;
    bind(rootfs, &root, false)?;
    let m = share.join("m");
    std::fs::create_dir(&m).map_err(io("creating", &m))?;
    for (i, b) in binds.iter().enumerate() {
        let target = m.join(i.to_string());
        let meta = std::fs::metadata(&b.source).map_err(io("reading bind source", &b.source))?;
        if meta.is_dir() {
            std::fs::create_dir(&target).map_err(io("creating", &target))?;
        } else {
            std::fs::write(&target, b"").map_err(io("creating", &target))?;
        }
        bind(&b.source, &target, b.readonly)?;
    }
    Ok(())
}

/// The block transport: an ext4 image at `disk` holding the assembled
/// share (the rootfs and the bind sources, with owners, modes, links and
/// device nodes), made by mke2fs's `-d`; then the share is unmounted (the
/// bundle's rootfs stays mounted nowhere of ours). The image is sparse,
/// sized at twice the content plus 256 MiB (at least 512 MiB) so the
/// container has room to write.
pub fn make_disk(share: &Path, disk: &Path) -> Result<(), VmError> {
    let du = std::process::Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(share)
        .output()
        .map_err(|source| VmError::Spawn {
            program: "du".into(),
            source,
        })?;
    let used: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mib = ((2 * used) >> 20) + 256;
    let mib = mib.max(512);
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(share)
        .arg(disk)
        .arg(format!("{mib}M"))
        .output()
        .map_err(|source| VmError::Spawn {
            program: "mkfs.ext4".into(),
            source,
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(disk);
        return Err(VmError::Helper(format!(
            "mkfs.ext4 -d {} (the block rootfs): {}",
            share.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    nix::mount::umount2(share, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| VmError::Sys("unmounting the share", e))
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), VmError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| VmError::Bind(source.to_path_buf(), e))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| VmError::Bind(source.to_path_buf(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_config_points_into_the_share() {
        let spec = serde_json::json!({
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "type": "none", "source": "hosts", "options": ["bind"]}
            ],
            "hooks": {"prestart": [{"path": "/x"}], "createContainer": [{"path": "/y"}]},
            "annotations": {"run.rt.isolation": "vm", "run.rt.vm.cpus": "2", "keep": "me"},
            "linux": {"cgroupsPath": "machine.slice:libpod:x"}
        });
        let (g, binds) = guest_config(&spec, Path::new("/b"), false).unwrap();
        assert_eq!(g["linux"], serde_json::json!({}));
        assert_eq!(g["root"]["path"], "/run/rt-share/rootfs");
        assert_eq!(g["root"]["readonly"], true);
        assert_eq!(g["mounts"][0]["source"], "proc");
        assert_eq!(g["mounts"][1]["source"], "/run/rt-share/m/0");
        assert_eq!(g["mounts"][2]["source"], "/run/rt-share/m/1");
        assert_eq!(
            binds,
            [
                Bind {
                    source: "/srv/data".into(),
                    readonly: true
                },
                Bind {
                    source: "/b/hosts".into(),
                    readonly: false
                }
            ]
        );
        assert_eq!(
            g["hooks"],
            serde_json::json!({"createContainer": [{"path": "/y"}]})
        );
        assert_eq!(g["annotations"], serde_json::json!({"keep": "me"}));
    }

    #[test]
    fn host_networking_and_joined_namespaces_are_refused_by_name() {
        let with = |ns: Value| serde_json::json!({"linux": {"namespaces": ns}});
        let e = check(&with(serde_json::json!([{"type": "pid"}])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("host networking"), "{e}");
        let joined =
            with(serde_json::json!([{"type": "network", "path": "/run/netns/x"}, {"type": "pid"}]));
        check(&joined).unwrap();
        assert_eq!(netns_path(&joined), Some(PathBuf::from("/run/netns/x")));
        let (g, _) = guest_config(&joined, Path::new("/b"), false).unwrap();
        assert_eq!(
            g["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}])
        );
        let e = check(&with(
            serde_json::json!([{"type": "network"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("ipc namespace"), "{e}");
        check(&with(
            serde_json::json!([{"type": "network"}, {"type": "pid"}]),
        ))
        .unwrap();
    }

    /// rt's own network: the guest's container shares the guest's
    /// namespace (where eth0 is) and sees no rt network annotation; with
    /// `none` it keeps its own namespace, and the guest's rt brings lo up.
    #[test]
    fn rt_networks_stay_on_the_host_but_none() {
        let spec = |mode: &str| {
            serde_json::json!({
                "linux": {"namespaces": [{"type": "network"}, {"type": "pid"}]},
                "annotations": {"run.rt.network": mode, "run.rt.network.subnet": "10.0.0.0/24"}
            })
        };
        let (g, _) = guest_config(&spec("nat"), Path::new("/b"), true).unwrap();
        assert_eq!(
            g["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}])
        );
        assert_eq!(g["annotations"], serde_json::json!({}));
        let (g, _) = guest_config(&spec("none"), Path::new("/b"), false).unwrap();
        assert_eq!(
            g["linux"]["namespaces"],
            serde_json::json!([{"type": "network"}, {"type": "pid"}])
        );
        assert_eq!(
            g["annotations"],
            serde_json::json!({"run.rt.network": "none"})
        );
    }
}
