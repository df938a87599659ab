//! Pods on a microVM handler (a RuntimeClass whose binary is `rt-vm`).
//!
//! rt runs one VM per container, and CRI's containers join their pod
//! sandbox's namespaces (network by its netns path, IPC and UTS by the
//! sandbox's `/proc/PID/ns/…`). So on a VM handler:
//! - the sandbox (`io.kubernetes.cri.container-type=sandbox`, the pause
//!   process that only holds the pod's namespaces) runs as a namespace
//!   container, with the rt behind the `rt-vm` link;
//! - each app container runs in its own VM, its NIC a tap in the pod's
//!   network namespace (the VM backend's caller-netns path): the pod IP,
//!   its routes and the CNI network are the VM's. IPC and UTS namespaces on
//!   the host mean nothing inside a VM: the container gets the guest's own,
//!   with the pod's hostname. Containers of one VM pod therefore do not
//!   share IPC (System V, POSIX message queues) with each other, and one VM
//!   container per pod takes the pod's network (a second one's tap is
//!   refused). A shared PID namespace (`shareProcessNamespace`) is refused
//!   by the VM backend by name.

use std::path::{Path, PathBuf};

use serde_json::Value;

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What a container is to CRI.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// The pod's sandbox (pause).
    Sandbox,
    /// An app container of the pod `sandbox`.
    Container { sandbox: String },
    /// Not CRI's.
    Plain,
}

pub fn role(spec: &Value) -> Role {
    let a = &spec["annotations"];
    match a[CONTAINER_TYPE].as_str() {
        Some("sandbox") => Role::Sandbox,
        Some("container") => Role::Container {
            sandbox: a[SANDBOX_ID].as_str().unwrap_or_default().to_string(),
        },
        _ => Role::Plain,
    }
}

/// Whether `binary` runs its containers in VMs (rt under the name rt-vm).
pub fn is_vm_binary(binary: &Path) -> bool {
    binary.file_name().is_some_and(|n| n == "rt-vm")
}

/// The rt behind an `rt-vm` link (or `rt` beside it).
pub fn namespaces_binary(binary: &Path) -> PathBuf {
    match std::fs::canonicalize(binary) {
        Ok(real) if !is_vm_binary(&real) => real,
        _ => binary.with_file_name("rt"),
    }
}

/// An app container of a VM pod: its IPC and UTS namespaces become its
/// own (in the guest), with the pod's `hostname`. What changed, for the
/// log.
pub fn adapt_for_vm(spec: &mut Value, hostname: Option<&str>) -> Vec<String> {
    let mut changed = Vec::new();
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        for n in ns.iter_mut() {
            let kind = n["type"].as_str().unwrap_or_default().to_string();
            if (kind == "ipc" || kind == "uts") && n.get("path").is_some() {
                if let Some(o) = n.as_object_mut() {
                    o.remove("path");
                }
                changed.push(format!("the pod's {kind} namespace is the VM's own"));
            }
        }
    }
    if let Some(h) = hostname.filter(|h| !h.is_empty()) {
        if spec["hostname"].as_str().is_none_or(str::is_empty) {
            spec["hostname"] = Value::String(h.to_string());
            changed.push(format!("hostname {h} (the pod's)"));
        }
    }
    changed
}

/// The hostname in a bundle's config.json.
pub fn hostname_of(bundle: &Path) -> Option<String> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: Value = serde_json::from_slice(&text).ok()?;
    spec["hostname"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_container_of_a_vm_pod_gets_its_own_ipc_and_uts_with_the_pods_hostname() {
        let mut spec = serde_json::json!({
            "annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "s1"},
            "linux": {"namespaces": [
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "ipc", "path": "/proc/9/ns/ipc"},
                {"type": "uts", "path": "/proc/9/ns/uts"},
                {"type": "pid"}, {"type": "mount"}
            ]}
        });
        assert_eq!(
            role(&spec),
            Role::Container {
                sandbox: "s1".into()
            }
        );
        let changed = adapt_for_vm(&mut spec, Some("web"));
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert_eq!(
            spec["linux"]["namespaces"],
            serde_json::json!([
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "ipc"}, {"type": "uts"}, {"type": "pid"}, {"type": "mount"}
            ])
        );
        assert_eq!(spec["hostname"], "web");
        assert_eq!(
            role(&serde_json::json!({"annotations": {CONTAINER_TYPE: "sandbox"}})),
            Role::Sandbox
        );
        assert_eq!(role(&serde_json::json!({})), Role::Plain);
        assert!(is_vm_binary(Path::new("/usr/local/bin/rt-vm")));
        assert!(!is_vm_binary(Path::new("/usr/local/bin/rt")));
    }
}
