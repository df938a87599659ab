//! Loading and validating a bundle's config.json.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Errors of bundle loading and spec validation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported spec version {0:?}: rt supports OCI runtime-spec 1.x")]
    Version(String),
    #[error("rootfs ({0}) does not exist")]
    NoRootfs(PathBuf),
    #[error("config.json has no {0}")]
    Missing(&'static str),
    #[error("{0} is not supported by rt")]
    Unsupported(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A bundle: its directory, its parsed spec and its absolute rootfs path.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
    /// `linux.timeOffsets`: (clock, seconds, nanoseconds).
    pub time_offsets: Vec<(String, i64, u32)>,
}

/// Removes capability names this build does not know, or this kernel does
/// not have, from a raw `process` object, with one warning worded as runc's
/// (`ignoring unknown or unavailable capabilities: [CAP_A CAP_B]`, sorted):
/// a spec written for a newer kernel still runs. oci-spec would otherwise
/// reject the whole document.
pub fn drop_unknown_capabilities(process: &mut serde_json::Value) {
    let dropped = drop_capabilities_beyond(process, last_cap());
    if !dropped.is_empty() {
        tracing::warn!(
            "ignoring unknown or unavailable capabilities: [{}]",
            dropped.join(" ")
        );
    }
}

/// The kernel's highest capability number (every name this build knows,
/// if the kernel will not say).
fn last_cap() -> u8 {
    rt_sys::last_cap().unwrap_or(u8::MAX)
}

/// Whether capability `name` is one this build knows, numbered at most
/// `last` (the kernel's highest).
fn on_this_kernel(name: &str, last: u8) -> bool {
    name.parse::<caps::Capability>()
        .is_ok_and(|c| c.index() <= last)
}

/// Drops names that are unknown or numbered above `last`; returns them,
/// sorted and unique.
fn drop_capabilities_beyond(process: &mut serde_json::Value, last: u8) -> Vec<String> {
    let mut dropped = std::collections::BTreeSet::new();
    let Some(caps) = process
        .get_mut("capabilities")
        .and_then(|c| c.as_object_mut())
    else {
        return Vec::new();
    };
    for names in caps.values_mut() {
        let Some(list) = names.as_array_mut() else {
            continue;
        };
        list.retain(|name| {
            let text = name.as_str().unwrap_or_default();
            let known = serde_json::from_value::<oci_spec::runtime::Capability>(name.clone())
                .is_ok()
                && on_this_kernel(text, last);
            if !known {
                dropped.insert(text.to_string());
            }
            known
        });
    }
    dropped.into_iter().collect()
}

/// The common case of [`Bundle::parse`]: the text straight into the typed
/// spec (half the time of going through a `serde_json::Value`, some 25 µs
/// for a spec with a seccomp profile). None where the raw path would change
/// something: `timeOffsets` or the runtime-spec's IOPS spellings anywhere in
/// the text, a capability this build or kernel lacks, or any error (whose
/// report is then the raw path's).
fn parse_typed(text: &[u8]) -> Option<Spec> {
    let mentions = |word: &[u8]| memchr::memmem::find(text, word).is_some();
    if mentions(b"timeOffsets") || mentions(b"IOPSDevice") {
        return None;
    }
    let spec: Spec = serde_json::from_slice(text).ok()?;
    if let Some(c) = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
    {
        let last = last_cap();
        let sets = [
            c.bounding(),
            c.effective(),
            c.inheritable(),
            c.permitted(),
            c.ambient(),
        ];
        let beyond = sets.into_iter().flatten().flatten().any(|cap| {
            serde_json::to_string(cap)
                .is_ok_and(|name| !on_this_kernel(name.trim_matches('"'), last))
        });
        if beyond {
            return None;
        }
    }
    Some(spec)
}

fn parse_time_offsets(v: &serde_json::Value) -> Result<Vec<(String, i64, u32)>> {
    let bad = |reason: String| Error::Invalid {
        field: "linux.timeOffsets",
        reason,
    };
    let map = v.as_object().ok_or_else(|| bad("not an object".into()))?;
    let mut out = Vec::new();
    for (clock, o) in map {
        if clock != "monotonic" && clock != "boottime" {
            return Err(bad(format!("unknown clock {clock:?}")));
        }
        let secs = o.get("secs").and_then(|s| s.as_i64()).unwrap_or(0);
        let nanos = o.get("nanosecs").and_then(|s| s.as_u64()).unwrap_or(0);
        if nanos >= 1_000_000_000 {
            return Err(bad(format!("{clock}: nanosecs out of range")));
        }
        out.push((clock.clone(), secs, nanos as u32));
    }
    Ok(out)
}

/// What `create` reads of config.json before the full parse (see
/// [`crate::backend::Isolation::head_start`]): the annotations and the
/// namespaces. serde skips the rest without building it; a text this
/// cannot read is left to the full parse to refuse.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Skim {
    #[serde(default)]
    pub annotations: Option<std::collections::HashMap<String, String>>,
    #[serde(default)]
    pub linux: Option<SkimLinux>,
}

/// [`Skim`]'s part of `linux`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct SkimLinux {
    #[serde(default)]
    pub namespaces: Option<Vec<oci_spec::runtime::LinuxNamespace>>,
}

impl Skim {
    /// The skim of a config.json's text; None if it does not read as one.
    pub fn of(text: &[u8]) -> Option<Skim> {
        serde_json::from_slice(text).ok()
    }

    pub fn namespaces(&self) -> &[oci_spec::runtime::LinuxNamespace] {
        self.linux
            .as_ref()
            .and_then(|l| l.namespaces.as_deref())
            .unwrap_or_default()
    }
}

impl Bundle {
    /// Reads `<dir>/config.json` once and validates it.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let (dir, text) = Self::read(dir)?;
        Self::parse(dir, &text)
    }

    /// The bundle's absolute directory and the text of its config.json,
    /// for [`Bundle::parse`].
    pub fn read(dir: &Path) -> Result<(PathBuf, Vec<u8>)> {
        let dir = std::path::absolute(dir).map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        Ok((dir, text))
    }

    /// Parses and validates the text of `dir`'s config.json (what
    /// [`Bundle::load`] read). Also the entry point of the config fuzz target.
    pub fn parse(dir: PathBuf, text: &[u8]) -> Result<Bundle> {
        match parse_typed(text) {
            Some(spec) => Self::from_spec(dir, spec),
            None => Self::parse_raw(dir, text),
        }
    }

    /// [`Bundle::parse`] through a `serde_json::Value`, rewritten where
    /// oci-spec would read it otherwise.
    fn parse_raw(dir: PathBuf, text: &[u8]) -> Result<Bundle> {
        let path = dir.join("config.json");
        let mut raw: serde_json::Value =
            serde_json::from_slice(text).map_err(|source| Error::Parse {
                path: path.clone(),
                source,
            })?;
        // oci-spec types linux.timeOffsets as strings where the runtime-spec
        // has {"secs", "nanosecs"} objects: take them out before parsing.
        let offsets = raw
            .get_mut("linux")
            .and_then(|l| l.as_object_mut())
            .and_then(|l| l.remove("timeOffsets"));
        if let Some(p) = raw.get_mut("process") {
            drop_unknown_capabilities(p);
        }
        if let Some(r) = raw.pointer_mut("/linux/resources") {
            rt_cgroups::resources::normalize_json(r);
        }
        let spec: Spec = serde_json::from_value(raw).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
        let mut bundle = Self::from_spec(dir, spec)?;
        if let Some(o) = offsets {
            bundle.time_offsets = parse_time_offsets(&o)?;
            let time_ns = bundle
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().as_ref())
                .is_some_and(|ns| {
                    ns.iter()
                        .any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_none())
                });
            if !bundle.time_offsets.is_empty() && !time_ns {
                return Err(Error::Invalid {
                    field: "linux.timeOffsets",
                    reason: "offsets need a new time namespace".into(),
                });
            }
        }
        Ok(bundle)
    }

    pub fn from_spec(dir: PathBuf, spec: Spec) -> Result<Bundle> {
        validate(&spec)?;
        let root = spec.root().as_ref().ok_or(Error::Missing("root"))?.path();
        let rootfs = if root.is_absolute() {
            root.clone()
        } else {
            dir.join(root)
        };
        if !rootfs.is_dir() {
            return Err(Error::NoRootfs(rootfs));
        }
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            time_offsets: Vec::new(),
        })
    }
}

/// Checks what rt needs and refuses, by name, what it does not support.
pub fn validate(spec: &Spec) -> Result<()> {
    let v = spec.version();
    if !v.starts_with("1.") {
        return Err(Error::Version(v.clone()));
    }
    let process = spec.process().as_ref().ok_or(Error::Missing("process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Missing("process.args"));
    }
    if process.command_line().is_some() {
        return Err(Error::Unsupported("process.commandLine (Windows)".into()));
    }
    if process.scheduler().is_some() {
        return Err(Error::Unsupported("process.scheduler".into()));
    }
    if process.io_priority().is_some() {
        return Err(Error::Unsupported("process.ioPriority".into()));
    }
    if process.exec_cpu_affinity().is_some() {
        return Err(Error::Unsupported("process.execCPUAffinity".into()));
    }
    if process
        .selinux_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
        && !crate::lsm::selinux_enabled()
    {
        return Err(Error::Unsupported(
            "process.selinuxLabel (SELinux is not enabled on this host)".into(),
        ));
    }
    if spec.solaris().is_some() || spec.windows().is_some() || spec.vm().is_some() {
        return Err(Error::Unsupported(
            "a non-Linux platform section (solaris/windows/vm)".into(),
        ));
    }
    let linux = spec.linux().as_ref().ok_or(Error::Missing("linux"))?;
    if linux.intel_rdt().is_some() {
        return Err(Error::Unsupported("linux.intelRdt".into()));
    }
    if linux
        .mount_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
        && !crate::lsm::selinux_enabled()
    {
        return Err(Error::Unsupported(
            "linux.mountLabel (SELinux is not enabled on this host)".into(),
        ));
    }
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    if !has(LinuxNamespaceType::Mount) {
        if let Some(what) = crate::rootfs::needs_mount_namespace(spec) {
            return Err(Error::Unsupported(format!(
                "{what} without a mount namespace (linux.namespaces has no \"mount\": \
                 rt mounts nothing into the caller's tree)"
            )));
        }
    }
    for (i, a) in namespaces.iter().enumerate() {
        if namespaces[..i].iter().any(|b| b.typ() == a.typ()) {
            return Err(Error::Invalid {
                field: "linux.namespaces",
                reason: format!("{:?} namespace listed twice", a.typ()),
            });
        }
    }
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    let new_user = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if maps && !new_user {
        return Err(Error::Invalid {
            field: "linux.uidMappings",
            reason: "mappings need a new user namespace".into(),
        });
    }
    if new_user && !maps {
        return Err(Error::Invalid {
            field: "linux.uidMappings",
            reason: "a new user namespace needs uid and gid mappings".into(),
        });
    }
    if linux.sysctl().as_ref().is_some_and(|s| !s.is_empty()) {
        for key in linux
            .sysctl()
            .as_ref()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if key.contains("..") || key.starts_with('/') {
                return Err(Error::Invalid {
                    field: "linux.sysctl",
                    reason: format!("bad key {key:?}"),
                });
            }
        }
    }
    if let Some(seccomp) = linux.seccomp() {
        crate::seccomp::check(seccomp).map_err(|e| Error::Unsupported(e.to_string()))?;
    }
    if let Some(hooks) = spec.hooks() {
        for hook in crate::hooks::all(hooks) {
            if !hook.path().is_absolute() {
                return Err(Error::Invalid {
                    field: "hooks",
                    reason: format!("hook path {} is not absolute", hook.path().display()),
                });
            }
        }
    }
    Ok(())
}

/// The id rules runc applies: letters, digits, `_`, `+`, `-`, `.`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "container id",
            reason: format!("{id:?} (use letters, digits, '_', '+', '-', '.')"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"ociVersion":"1.3.0","root":{"path":"rootfs"},
        "process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"},
        "linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#;

    #[test]
    fn the_skim_reads_annotations_and_namespaces_only() {
        let text = r#"{"ociVersion":"1.3.0","process":{"args":5},
            "annotations":{"a":"b"},
            "linux":{"namespaces":[{"type":"network"},{"type":"mount","path":"/x"}],
                     "seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#;
        let skim = Skim::of(text.as_bytes()).expect("a skim");
        assert_eq!(skim.annotations.unwrap()["a"], "b");
        let ns = skim.linux.as_ref().unwrap().namespaces.as_ref().unwrap();
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0].typ(), LinuxNamespaceType::Network);
        assert_eq!(ns[1].path().as_deref(), Some(Path::new("/x")));
        // `process` is not the skim's to judge; the full parse refuses it.
        assert!(Bundle::parse(PathBuf::from("/b"), text.as_bytes()).is_err());
        // No linux: no namespaces.
        assert!(Skim::of(b"{}").unwrap().namespaces().is_empty());
        // Not a config: nothing.
        assert!(Skim::of(b"{not json").is_none());
        assert!(Skim::of(br#"{"linux":{"namespaces":[{"type":"bogus"}]}}"#).is_none());
    }

    #[test]
    fn unknown_capabilities_are_dropped() {
        let mut p = serde_json::json!({"capabilities": {
            "bounding": ["CAP_KILL", "CAP_NOT_A_THING", "CAP_BPF"],
            "effective": ["CAP_FUTURE"]
        }});
        let dropped = drop_capabilities_beyond(&mut p, 40);
        assert_eq!(dropped, ["CAP_FUTURE", "CAP_NOT_A_THING"]);
        assert_eq!(
            p["capabilities"]["bounding"],
            serde_json::json!(["CAP_KILL", "CAP_BPF"])
        );
        assert_eq!(p["capabilities"]["effective"], serde_json::json!([]));
        // A kernel without CAP_BPF (39): unavailable, dropped too.
        let mut p = serde_json::json!({"capabilities": {"bounding": ["CAP_KILL", "CAP_BPF"]}});
        assert_eq!(drop_capabilities_beyond(&mut p, 38), ["CAP_BPF"]);
    }

    #[test]
    fn accepts_any_1x_version() {
        validate(&spec(BASE)).unwrap();
        let s = BASE.replace("1.3.0", "2.0.0");
        assert!(matches!(validate(&spec(&s)), Err(Error::Version(_))));
    }

    #[test]
    fn refuses_unsupported_by_name() {
        let s = BASE.replace(r#""linux":{"#, r#""linux":{"intelRdt":{"closID":"x"},"#);
        let e = validate(&spec(&s)).unwrap_err().to_string();
        assert!(e.contains("linux.intelRdt"), "{e}");
    }

    #[test]
    fn needs_mount_namespace_and_args() {
        // Without a mount namespace: fine with nothing to mount...
        let s = BASE.replace(r#"{"type":"mount"},"#, "");
        validate(&spec(&s)).unwrap();
        // ...and refused, by name, with mounts.
        let s = s.replace(
            r#""linux":{"#,
            r#""mounts":[{"destination":"/proc","type":"proc","source":"proc"}],"linux":{"#,
        );
        let e = validate(&spec(&s)).unwrap_err().to_string();
        assert!(e.contains("mounts without a mount namespace"), "{e}");
        let s = BASE.replace(r#""args":["sh"],"#, "");
        assert!(validate(&spec(&s)).is_err());
    }

    #[test]
    fn user_namespace_needs_mappings() {
        let s = BASE.replace(r#"{"type":"pid"}"#, r#"{"type":"pid"},{"type":"user"}"#);
        assert!(validate(&spec(&s)).is_err());
    }

    #[test]
    fn missing_rootfs_is_named() {
        let dir = std::env::temp_dir().join(format!("rt-spec-test-{}", std::process::id()));
        let e = Bundle::from_spec(dir.clone(), spec(BASE))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist") && e.contains("rootfs"), "{e}");
    }

    #[test]
    fn the_typed_parse_reads_what_the_raw_one_does_or_declines() {
        let dir = std::env::temp_dir().join(format!("rt-spec-typed-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let default = serde_json::to_string(&crate::defaults::default_spec(false)).unwrap();
        assert!(default.contains(r#""CAP_KILL""#) && default.contains(r#""linux":{"#));
        assert!(default.contains("seccomp"));
        let raw = |text: &str| {
            Bundle::parse_raw(dir.clone(), text.as_bytes())
                .unwrap()
                .spec
        };
        // Taken: the same spec as the raw path's.
        for text in [
            default.clone(),
            default.replace(r#""CAP_KILL""#, r#""CAP_KILL","CAP_SYS_ADMIN""#),
        ] {
            assert_eq!(parse_typed(text.as_bytes()), Some(raw(&text)));
        }
        // Declined: what the raw path rewrites, and what oci-spec refuses.
        let offsets = default.replace(
            r#""linux":{"#,
            r#""linux":{"timeOffsets":{"monotonic":{"secs":1,"nanosecs":0}},"#,
        );
        let iops = default.replace(
            r#""linux":{"#,
            r#""linux":{"resources":{"blockIO":{"throttleReadIOPSDevice":[{"major":8,"minor":0,"rate":10}]}},"#,
        );
        let unknown = default.replace(r#""CAP_KILL""#, r#""CAP_KILL","CAP_NONSENSE""#);
        let beyond = default.replace(r#""CAP_KILL""#, r#""CAP_KILL","CAP_CHECKPOINT_RESTORE""#);
        let duplicate = default.replacen('{', r#"{"hostname":"a","#, 1);
        for text in [&offsets, &iops, &unknown, &duplicate] {
            assert!(text != &default);
            assert_eq!(parse_typed(text.as_bytes()), None, "{text}");
        }
        // A capability above the kernel's last is declined (and dropped by
        // the raw path) only where the kernel lacks it.
        let cr = "CAP_CHECKPOINT_RESTORE"
            .parse::<caps::Capability>()
            .unwrap();
        assert_eq!(
            parse_typed(beyond.as_bytes()).is_none(),
            cr.index() > last_cap()
        );
        let _ = raw(&iops);
        let _ = raw(&unknown);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids() {
        validate_id("abc-1.2_x+y").unwrap();
        assert!(validate_id("../x").is_err());
        assert!(validate_id("..").is_err());
        assert!(validate_id("").is_err());
    }
}
