//! A bundle's config.json from an image configuration, on top of rt's default
//! spec: entrypoint + cmd, environment, working directory, the user resolved
//! through the rootfs's /etc/passwd and /etc/group, and the image's exposed
//! ports, volumes, stop signal and labels as annotations.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, ResolveFlag};
use serde_json::{json, Map, Value};

use crate::types::{ImageConfig, RunConfig};

/// Errors of config generation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("user {user:?} of the image: {reason}")]
    User { user: String, reason: String },
    #[error("reading {path} in the rootfs")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub const ANNOTATION_PORTS: &str = "org.opencontainers.image.exposedPorts";
pub const ANNOTATION_STOP_SIGNAL: &str = "org.opencontainers.image.stopSignal";
pub const ANNOTATION_VOLUMES: &str = "run.rt.image.volumes";
pub const ANNOTATION_IMAGE: &str = "run.rt.image";

/// The config.json for `image`, whose layers are unpacked at `rootfs`.
/// `name` is recorded in the `run.rt.image` annotation.
pub fn config(
    image: &ImageConfig,
    rootfs: &Path,
    name: &str,
    rootless: bool,
) -> Result<Value, Error> {
    let rc = image.config.clone().unwrap_or_default();
    let mut spec = rt_container::defaults::default_spec(rootless);
    spec["root"] = json!({"path": "rootfs", "readonly": false});
    spec["process"]["terminal"] = json!(false);
    let args: Vec<String> = rc
        .entrypoint
        .iter()
        .flatten()
        .chain(rc.cmd.iter().flatten())
        .cloned()
        .collect();
    // An image with neither keeps the default spec's `sh`, as umoci does.
    if !args.is_empty() {
        spec["process"]["args"] = json!(args);
    }
    spec["process"]["env"] = json!(env(&rc));
    spec["process"]["cwd"] = json!(rc
        .working_dir
        .as_deref()
        .filter(|w| !w.is_empty())
        .unwrap_or("/"));
    let user = rc.user.as_deref().unwrap_or_default();
    let (uid, gid, extra) = resolve_user(rootfs, user)?;
    let mut u = json!({"uid": uid, "gid": gid});
    if !extra.is_empty() {
        u["additionalGids"] = json!(extra);
    }
    spec["process"]["user"] = u;
    spec["annotations"] = Value::Object(annotations(image, &rc, name));
    Ok(spec)
}

fn env(rc: &RunConfig) -> Vec<String> {
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "TERM=xterm".into(),
    ];
    for e in rc.env.iter().flatten() {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    env
}

fn annotations(image: &ImageConfig, rc: &RunConfig, name: &str) -> Map<String, Value> {
    let mut a = Map::new();
    for (k, v) in rc.labels.iter().flatten() {
        a.insert(k.clone(), json!(v));
    }
    let mut set = |k: &str, v: String| {
        a.insert(k.to_string(), json!(v));
    };
    set(ANNOTATION_IMAGE, name.to_string());
    set("org.opencontainers.image.os", image.os.clone());
    set(
        "org.opencontainers.image.architecture",
        image.architecture.clone(),
    );
    if let Some(x) = &image.author {
        set("org.opencontainers.image.author", x.clone());
    }
    if let Some(x) = &image.created {
        set("org.opencontainers.image.created", x.clone());
    }
    if let Some(p) = rc.exposed_ports.as_ref().filter(|p| !p.is_empty()) {
        set(
            ANNOTATION_PORTS,
            p.keys().cloned().collect::<Vec<_>>().join(","),
        );
    }
    if let Some(v) = rc.volumes.as_ref().filter(|v| !v.is_empty()) {
        set(
            ANNOTATION_VOLUMES,
            v.keys().cloned().collect::<Vec<_>>().join(","),
        );
    }
    if let Some(s) = &rc.stop_signal {
        set(ANNOTATION_STOP_SIGNAL, s.clone());
    }
    a
}

/// Reads `path` of the rootfs with every symlink resolved inside it.
fn read_in_root(rootfs: &Path, path: &str) -> Result<Option<String>, Error> {
    let fail = |source| Error::Read {
        path: path.to_string(),
        source,
    };
    let root = std::fs::File::open(rootfs).map_err(fail)?;
    let fd = match rt_sys::openat2(
        root.as_fd(),
        Path::new(path),
        OFlag::O_RDONLY,
        ResolveFlag::RESOLVE_IN_ROOT,
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(fail(e.into())),
    };
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .map_err(fail)?;
    Ok(Some(text))
}

/// (uid, gid, additional gids) for the image's `User`: `name`, `uid`,
/// `name:group`, `uid:gid` and mixes, as Docker resolves them.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), Error> {
    if user.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let bad = |reason: &str| Error::User {
        user: user.to_string(),
        reason: reason.to_string(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_in_root(rootfs, "/etc/passwd")?.unwrap_or_default();
    let group = read_in_root(rootfs, "/etc/group")?.unwrap_or_default();
    // name:x:uid:gid:...
    let pw: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let gr: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();
    let entry = pw
        .iter()
        .find(|f| f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u));
    let uid = match (u.parse::<u32>(), entry) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| bad("bad uid in /etc/passwd"))?,
        (Err(_), None) => return Err(bad("no such user in the image's /etc/passwd")),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => gr
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| bad("no such group in the image's /etc/group"))?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let name = entry.map(|f| f[0]);
    let mut extra: Vec<u32> = match (g, name) {
        (None, Some(n)) => gr
            .iter()
            .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|x| x == n)))
            .filter_map(|f| f[2].parse().ok())
            .filter(|x| *x != gid)
            .collect(),
        _ => Vec::new(),
    };
    extra.sort_unstable();
    extra.dedup();
    Ok((uid, gid, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_through_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nweb:x:33:\nlog:x:4:web,root\nstaff:x:50:web\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user(dir.path(), u);
        assert_eq!(r("").unwrap(), (0, 0, vec![]));
        assert_eq!(r("web").unwrap(), (33, 33, vec![4, 50]));
        assert_eq!(r("web:log").unwrap(), (33, 4, vec![]));
        assert_eq!(r("1000").unwrap(), (1000, 0, vec![]));
        assert_eq!(r("33").unwrap(), (33, 33, vec![4, 50]));
        assert_eq!(r("1000:7").unwrap(), (1000, 7, vec![]));
        assert!(r("nobody")
            .unwrap_err()
            .to_string()
            .contains("no such user"));
        assert!(r("web:nogroup").is_err());
    }

    #[test]
    fn passwd_symlink_stays_in_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("passwd"),
            "evil:x:4242:4242::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), dir.path().join("etc/passwd"))
            .unwrap();
        // Resolved inside the rootfs, the absolute target does not exist.
        assert!(resolve_user(dir.path(), "evil").is_err());
    }

    #[test]
    fn config_from_image() {
        let dir = tempfile::tempdir().unwrap();
        let image: ImageConfig = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/httpd"], "Cmd": ["-f"], "Env": ["PATH=/bin", "A=1"],
                       "WorkingDir": "/srv", "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
                       "Volumes": {"/data": {}}, "Labels": {"x": "y"}, "StopSignal": "SIGQUIT"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let c = config(&image, dir.path(), "docker.io/library/web:1", false).unwrap();
        assert_eq!(c["process"]["args"], json!(["/bin/httpd", "-f"]));
        assert_eq!(
            c["process"]["env"],
            json!(["TERM=xterm", "PATH=/bin", "A=1"])
        );
        assert_eq!(c["process"]["cwd"], "/srv");
        assert_eq!(c["annotations"][ANNOTATION_PORTS], "53/udp,80/tcp");
        assert_eq!(c["annotations"][ANNOTATION_VOLUMES], "/data");
        assert_eq!(c["annotations"]["x"], "y");
        assert_eq!(c["annotations"][ANNOTATION_STOP_SIGNAL], "SIGQUIT");
        assert_eq!(c["root"], json!({"path": "rootfs", "readonly": false}));
        let empty = ImageConfig::default();
        let c = config(&empty, dir.path(), "x", false).unwrap();
        assert_eq!(
            c["process"]["args"],
            json!(["sh"]),
            "no Entrypoint or Cmd: sh, as umoci"
        );
    }
}
