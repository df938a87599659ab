//! Kubernetes RuntimeClass, proven through containerd's CRI plugin: no
//! kubelet or crictl is packaged for Debian 12, so this test is the
//! kubelet, speaking CRI v1 (the k8s-cri crate's protos, tonic) to a
//! containerd of its own with two runtime handlers, the way two
//! RuntimeClass objects name them:
//!
//! - `rt`: containerd's runc shim with `BinaryName` = rt;
//! - `rt-shim`: containerd-shim-rt-v2 (`io.containerd.rt.v2`);
//! - `rt-vm`: containerd-shim-rt-v2 with a runtime config (`ConfigPath`)
//!   naming `rt-vm`: the pod's sandbox a namespace container, the app
//!   container a microVM on the pod's network (see shim/src/pod.rs).
//!
//! For each: RunPodSandbox (the pod's network by Debian's CNI bridge
//! plugin), CreateContainer, StartContainer, ExecSync, ContainerStatus,
//! the container's httpd reached by its pod IP from the host,
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox; then
//! nothing of the pod is left. The bridge, `net.ipv4.ip_forward` (the
//! bridge plugin turns it on) and /run/netns are put back as they were.

use std::path::Path;
use std::process::Command;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use rt_integration::containerd::Containerd;
use rt_integration::net::{http_get, processes_naming};
use rt_integration::podman::text;
use rt_testsupport::{eventually, root_or_skip, rt_bin};
use tonic::transport::{Channel, Endpoint, Uri};

const BRIDGE: &str = "rtcri0";
const IMAGE: &str = "docker.io/library/rt-busybox:latest";
const PAUSE: &str = "docker.io/library/rt-pause:latest";

/// What the pod network changes on the host, put back on drop.
struct HostState {
    forward: String,
    netns_mount: bool,
    netns: Vec<String>,
}

/// The named network namespaces (CRI's pods' are `cni-…`).
fn netns_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// CRI's namespace in containerd, and so the shims' state roots under it.
const CRI_NS: &str = "k8s.io";

impl HostState {
    fn now() -> HostState {
        HostState {
            forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            netns_mount: mounted("/run/netns"),
            netns: netns_names(),
        }
    }
}

fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(path))
}

impl Drop for HostState {
    fn drop(&mut self) {
        // A test that failed half-way leaves pods: rt deletes their
        // containers, and their namespaces go.
        for shim_root in ["/run/containerd/runc", "/run/containerd/rt"] {
            let root = Path::new(shim_root).join(CRI_NS);
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let _ = Command::new(rt_bin())
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
            let _ = std::fs::remove_dir(&root);
        }
        // The pods' parent cgroup (cgroupsPath /k8s.io/…), once empty.
        let mut parents = rt_testsupport::cgroup_dirs_named(CRI_NS);
        parents.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for dir in parents {
            let _ = std::fs::remove_dir(dir);
        }
        for name in netns_names() {
            if !self.netns.contains(&name) {
                let p = Path::new("/run/netns").join(&name);
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&p);
            }
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.forward);
        if !self.netns_mount && mounted("/run/netns") {
            let _ = nix::mount::umount2("/run/netns", nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// containerd's CRI configuration: the two handlers, CNI from Debian's
/// plugins on a subnet of the test's own.
fn cri_config() -> String {
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "rt"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rt]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rt.options]
        BinaryName = "{rt}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rt-shim]
      runtime_type = "io.containerd.rt.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rt-vm]
      runtime_type = "io.containerd.rt.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rt-vm.options]
        ConfigPath = "{{dir}}/rt-vm.json"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{{dir}}/cni"
"#,
        rt = rt_bin().display()
    )
}

fn write_cni(dir: &Path) {
    let conf = dir.join("cni");
    std::fs::create_dir_all(&conf).unwrap();
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "rtcri",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.237.0.0/24"}]],
                "dataDir": dir.join("ipam"),
            }
        }]
    });
    std::fs::write(conf.join("10-rtcri.conflist"), list.to_string()).unwrap();
}

async fn client(sock: &Path) -> RuntimeServiceClient<Channel> {
    let sock = sock.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
        .expect("connecting to containerd's CRI");
    RuntimeServiceClient::new(channel)
}

/// The serving containerd-shim-rt-v2 processes of this containerd.
fn serving_shims(c: &Containerd) -> usize {
    processes_naming(&c.dir.path().join("containerd.sock"))
        .iter()
        .filter(|p| p.contains("containerd-shim-rt-v2") && p.contains("-socket"))
        .count()
}

/// A pod on the rt-shim handler whose container writes a line every
/// 0.2 s; containerd is killed and started again: the container runs on,
/// and its CRI log gets lines again once containerd is back (the shim held
/// the fifos open meanwhile, so the container never saw EPIPE).
async fn logs_survive_a_containerd_restart(c: &mut Containerd) {
    let mut cri = client(&c.dir.path().join("containerd.sock")).await;
    let logs = c.dir.path().join("logs-restart");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox_config = sandbox("chatty", &logs);
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: "rt-shim".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let container = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(shell(
                "chatty",
                "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done".into(),
            )),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .unwrap();
    let log = logs.join("chatty.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(eventually(20, || lines() >= 3), "no log lines");
    drop(cri);
    c.restart_after(std::time::Duration::from_secs(2));
    let before = lines();
    assert!(
        eventually(30, || lines() >= before + 5),
        "the log stopped at {} lines after the restart",
        lines()
    );
    let mut cri = client(&c.dir.path().join("containerd.sock")).await;
    // The restarted CRI plugin answers "server is not initialized yet"
    // until it has recovered its pods: ask again for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let r = cri
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await;
        match r {
            Ok(r) => break r.into_inner(),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("ContainerStatus after the restart: {e}; again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => panic!("ContainerStatus after the restart: {e}"),
        }
    };
    let state = status.status.unwrap().state;
    assert_eq!(state, ContainerState::ContainerRunning as i32);
    // The numbering has no gap: nothing the container wrote was lost.
    let text = std::fs::read_to_string(&log).unwrap();
    let numbers: Vec<u64> = text
        .lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps in the log: {numbers:?}"
    );
    remove_pod(&mut cri, &container, &pod, 2).await;
}

/// A pod's sandbox config, as the kubelet sends one without
/// shareProcessNamespace.
fn sandbox(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(container_pid()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container running `sh -c SCRIPT`, logging to `NAME.log`.
fn shell(name: &str, script: String) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into()],
        args: vec![script],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(container_pid()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox.
async fn remove_pod(
    cri: &mut RuntimeServiceClient<Channel>,
    container: &str,
    pod: &str,
    stop_timeout: i64,
) {
    cri.stop_container(StopContainerRequest {
        container_id: container.into(),
        timeout: stop_timeout,
    })
    .await
    .unwrap();
    cri.remove_container(RemoveContainerRequest {
        container_id: container.into(),
    })
    .await
    .unwrap();
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
}

/// The kubelet's default: a PID namespace per container (pod-level
/// network and IPC).
fn container_pid() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// One pod on `handler`: the whole CRI lifecycle.
async fn pod_on(c: &Containerd, handler: &str) {
    let mut cri = client(&c.dir.path().join("containerd.sock")).await;
    let logs = c.dir.path().join(format!("logs-{handler}"));
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox_config = sandbox(&format!("web-{handler}"), &logs);
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox on {handler}: {e}\n{}", c.log()))
        .into_inner()
        .pod_sandbox_id;
    let status = cri
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.runtime_handler, handler);
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(ip.starts_with("10.237.0."), "pod IP {ip:?}");
    let container = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(shell(
                "httpd",
                format!("echo cri-{handler} > /tmp/index.html && exec httpd -f -p 80 -h /tmp"),
            )),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer on {handler}: {e}\n{}", c.log()))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer on {handler}: {e}"));
    if handler != "rt" {
        // One containerd-shim-rt-v2 serves the pod: sandbox and container.
        assert_eq!(serving_shims(c), 1, "{handler}");
    }
    let exec = cri
        .exec_sync(ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo from-exec; hostname; exit 3".into(),
            ],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync on {handler}: {e}"))
        .into_inner();
    assert_eq!(exec.exit_code, 3, "{exec:?}");
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        format!("from-exec\nweb-{handler}\n")
    );
    let state = cri
        .container_status(ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .state;
    assert_eq!(state, ContainerState::ContainerRunning as i32);
    // UpdateContainerResources reaches the container's cgroup (the
    // guest's, for a VM).
    cri.update_container_resources(UpdateContainerResourcesRequest {
        container_id: container.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources on {handler}: {e}"));
    let limit = cri
        .exec_sync(ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes".into(),
            ],
            timeout: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&limit.stdout).trim(),
        (96u64 << 20).to_string(),
        "{handler}: {limit:?}"
    );
    let addr = format!("{ip}:80");
    let want = format!("cri-{handler}");
    assert!(
        eventually(20, || http_get(&addr).is_some_and(|b| b.contains(&want))),
        "{addr}: {:?}",
        http_get(&addr)
    );
    remove_pod(&mut cri, &container, &pod, 5).await;
    let left = cri
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(left.iter().all(|p| p.id != pod), "pod {pod} left");
    assert!(http_get(&addr).is_none(), "{addr} still answers");
}

#[test]
fn runtime_classes_select_rt_through_the_cri() {
    if !root_or_skip("runtime_classes_select_rt_through_the_cri") {
        return;
    }
    let host = HostState::now();
    let c = Containerd::start_with(Some(&cri_config()));
    write_cni(c.dir.path());
    let link = c.dir.path().join("rt-vm");
    std::os::unix::fs::symlink(rt_bin(), &link).unwrap();
    std::fs::write(
        c.dir.path().join("rt-vm.json"),
        serde_json::json!({"binary_name": link}).to_string(),
    )
    .unwrap();
    // The images, unpacked for CRI's snapshotter, in CRI's namespace.
    for (name, cmd) in [(IMAGE, vec!["sh"]), (PAUSE, vec!["sleep", "1000000000"])] {
        let archive = c.dir.path().join("image.tar");
        rt_integration::image::busybox_oci_archive_running(&archive, name, &cmd);
        let out = c.ctr_in(
            CRI_NS,
            &[
                "images",
                "import",
                "--snapshotter",
                "native",
                archive.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "ctr import {name}: {}", text(&out));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for handler in ["rt", "rt-shim", "rt-vm"] {
        rt.block_on(pod_on(&c, handler));
    }
    let mut c = c;
    rt.block_on(logs_survive_a_containerd_restart(&mut c));
    let out = c.ctr_in(CRI_NS, &["task", "ls", "-q"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "tasks left: {}",
        text(&out)
    );
    // Nothing of the pods: no namespace, veth, VM or state.
    assert_eq!(netns_names(), host.netns, "pod network namespaces left");
    let veths = Command::new("ip")
        .args(["-br", "link", "show", "master", BRIDGE])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&veths.stdout).trim().is_empty(),
        "ports left on {BRIDGE}: {}",
        String::from_utf8_lossy(&veths.stdout)
    );
    assert!(
        eventually(10, || processes_naming(
            &Path::new("/run/containerd/rt").join(CRI_NS)
        )
        .is_empty()),
        "processes left: {:?}",
        processes_naming(&Path::new("/run/containerd/rt").join(CRI_NS))
    );
}
