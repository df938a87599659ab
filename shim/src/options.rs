//! Which rt binary a container runs with, its state root and cgroup driver,
//! from the create request's options:
//!
//! - `containerd.runc.v1.Options` (what `ctr run --runc-binary` and the
//!   runc shim's `options` table carry): `BinaryName`, `Root`,
//!   `SystemdCgroup`; `BinaryName = "rt-vm"` runs the container in a VM;
//! - `runtimeoptions.v1.Options` (what containerd's CRI sends a runtime of
//!   any other type): `ConfigPath`, a JSON file with the same three keys,
//!   `{"binary_name": …, "root": …, "systemd_cgroup": …}`.
//!
//! Without options: `rt` beside the shim's own binary, state under
//! `/run/containerd/rt/<namespace>`. The options are saved in the bundle,
//! so the `delete` action (run without them) finds the same rt and root.

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::{self, well_known_types::any::Any, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use serde_json::{json, Value};

/// The default state root (the namespace is appended).
pub const DEFAULT_ROOT: &str = "/run/containerd/rt";
const SAVED: &str = "rt-shim.json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub binary: PathBuf,
    pub root: Option<PathBuf>,
    pub systemd_cgroup: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("decoding the runtime options ({0})")]
    Decode(String, #[source] protobuf::Error),
    #[error("reading the shim config {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the shim config {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("runtime options of type {0} are not supported: give containerd.runc.v1.Options or runtimeoptions.v1.Options")]
    Unknown(String),
    #[error("writing {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Default for Options {
    fn default() -> Options {
        Options {
            binary: beside_shim("rt"),
            root: None,
            systemd_cgroup: false,
        }
    }
}

/// `name` in the shim's own directory when it is there, else `name` (the
/// PATH's).
fn beside_shim(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A binary name as the runc shim takes it: a path, or a name looked up
/// beside the shim and then in PATH.
fn binary(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        beside_shim(name)
    }
}

impl Options {
    /// The options of a create request.
    pub fn from_any(any: Option<&Any>) -> Result<Options, Error> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(Options::default());
        };
        let kind = any.type_url.rsplit('/').next().unwrap_or_default();
        match kind {
            "containerd.runc.v1.Options" => {
                let o = RuncOptions::parse_from_bytes(&any.value)
                    .map_err(|e| Error::Decode(kind.into(), e))?;
                Ok(Options::from_fields(
                    &o.binary_name,
                    &o.root,
                    o.systemd_cgroup,
                ))
            }
            "runtimeoptions.v1.Options" => {
                let path = config_path(&any.value).map_err(|e| Error::Decode(kind.into(), e))?;
                match path {
                    Some(p) => Options::from_config(Path::new(&p)),
                    None => Ok(Options::default()),
                }
            }
            other => Err(Error::Unknown(other.into())),
        }
    }

    fn from_fields(binary_name: &str, root: &str, systemd_cgroup: bool) -> Options {
        let mut o = Options::default();
        if !binary_name.is_empty() {
            o.binary = binary(binary_name);
        }
        if !root.is_empty() {
            o.root = Some(PathBuf::from(root));
        }
        o.systemd_cgroup = systemd_cgroup;
        o
    }

    /// The shim's own config file (JSON).
    pub fn from_config(path: &Path) -> Result<Options, Error> {
        let text = std::fs::read(path).map_err(|source| Error::Config {
            path: path.into(),
            source,
        })?;
        let v: Value = serde_json::from_slice(&text).map_err(|source| Error::Parse {
            path: path.into(),
            source,
        })?;
        Ok(Options::from_fields(
            v["binary_name"].as_str().unwrap_or_default(),
            v["root"].as_str().unwrap_or_default(),
            v["systemd_cgroup"].as_bool().unwrap_or(false),
        ))
    }

    /// The options saved in `bundle` at create (the defaults if none).
    pub fn of_bundle(bundle: &Path) -> Options {
        Options::from_config(&bundle.join(SAVED)).unwrap_or_default()
    }

    pub fn save(&self, bundle: &Path) -> Result<(), Error> {
        let path = bundle.join(SAVED);
        let v = json!({
            "binary_name": self.binary,
            "root": self.root.as_ref().map(|r| r.display().to_string()).unwrap_or_default(),
            "systemd_cgroup": self.systemd_cgroup,
        });
        std::fs::write(&path, v.to_string()).map_err(|source| Error::Save { path, source })
    }
}

/// Field 2 (`config_path`) of a `runtimeoptions.v1.Options` message.
fn config_path(bytes: &[u8]) -> Result<Option<String>, protobuf::Error> {
    let mut input = protobuf::CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        if tag == (2 << 3) | 2 {
            path = Some(input.read_string()?);
        } else {
            input.skip_field(
                protobuf::rt::WireType::new(tag & 7)
                    .unwrap_or(protobuf::rt::WireType::LengthDelimited),
            )?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_options_and_the_cri_config_path_are_read() {
        let mut o = RuncOptions::new();
        o.binary_name = "/usr/local/bin/rt-vm".into();
        o.root = "/run/x".into();
        o.systemd_cgroup = true;
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = o.write_to_bytes().unwrap();
        assert_eq!(
            Options::from_any(Some(&any)).unwrap(),
            Options {
                binary: "/usr/local/bin/rt-vm".into(),
                root: Some("/run/x".into()),
                systemd_cgroup: true
            }
        );
        let dir = std::env::temp_dir().join(format!("rt-shim-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("rt-vm.json");
        std::fs::write(&cfg, r#"{"binary_name": "/opt/rt-vm"}"#).unwrap();
        // runtimeoptions.v1.Options{type_url: "x", config_path: cfg}
        let path = cfg.display().to_string();
        let mut value = vec![0x0a, 1, b'x', 0x12, path.len() as u8];
        value.extend_from_slice(path.as_bytes());
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = value;
        let o = Options::from_any(Some(&any)).unwrap();
        assert_eq!(o.binary, PathBuf::from("/opt/rt-vm"));
        o.save(&dir).unwrap();
        assert_eq!(Options::of_bundle(&dir), o);
        any.type_url = "other.Options".into();
        assert!(Options::from_any(Some(&any))
            .unwrap_err()
            .to_string()
            .contains("other.Options"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
