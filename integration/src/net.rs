//! What the network suites share (namespace and microVM containers on
//! rt's networks): shell helpers, a namespace playing the external
//! network, HTTP over TCP, what rt recorded, and the leak check.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::time::Duration;

use rt_testsupport::{eventually, output_via_files, unique_id, Bundle, Root};
use serde_json::{json, Value};

pub fn sh(script: &str) -> Output {
    output_via_files(Command::new("sh").args(["-c", script]))
}

pub fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace playing the external network, joined to the host by a veth
/// pair (`host_if` here, `eth0` there). A `sleep` holds it (no `ip netns`
/// name, so nothing is mounted under /run/netns); killed on drop, which
/// takes the namespace and its links with it.
#[derive(Debug)]
pub struct Ext {
    pub holder: std::process::Child,
    pub host_if: String,
}

impl Ext {
    /// With `host_addr`, the host end gets that address (a routed uplink);
    /// without, it stays bare (a bridged uplink).
    pub fn new(
        host_if: &str,
        host_addr: Option<&str>,
        ext_addr: &str,
        ext_gw: Option<&str>,
    ) -> Ext {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .spawn()
            .unwrap();
        let ns = format!("/proc/{}/ns/net", holder.id());
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert!(
            eventually(5, || std::fs::read_link(&ns).is_ok_and(|n| n != ours)),
            "the holder never entered its namespace"
        );
        let ext = Ext {
            holder,
            host_if: host_if.into(),
        };
        let pid = ext.holder.id();
        sh_ok(&format!("ip link add {host_if} type veth peer name eth0 netns {pid} && ip link set {host_if} up"));
        ext.sh_ok(&format!(
            "ip addr add {ext_addr} dev eth0 && ip link set eth0 up && ip link set lo up"
        ));
        if let Some(a) = host_addr {
            sh_ok(&format!("ip addr add {a} dev {host_if}"));
        }
        if let Some(gw) = ext_gw {
            ext.sh_ok(&format!("ip route add default via {gw}"));
        }
        ext
    }

    pub fn exec(&self, script: &str) -> Output {
        sh(&format!(
            "nsenter --net=/proc/{}/ns/net sh -c '{script}'",
            self.holder.id()
        ))
    }

    pub fn sh_ok(&self, script: &str) -> String {
        sh_ok(&format!(
            "nsenter --net=/proc/{}/ns/net sh -c '{script}'",
            self.holder.id()
        ))
    }

    /// Runs `f` on a thread inside the namespace (sockets it makes stay
    /// there).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.holder.id())).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Ext {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = sh(&format!("ip link del {}", self.host_if));
    }
}

/// A bundle running `script`, with CAP_NET_RAW for ping.
pub fn bundle(script: &str) -> Bundle {
    let mut b = Bundle::new(&["sh", "-c", script]);
    b.edit(|c| {
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_NET_RAW"));
        }
    });
    b
}

/// `--network MODE --bridge BRIDGE --subnet SUBNET`.
pub fn net_flags<'a>(mode: &'a str, bridge: &'a str, subnet: &'a str) -> [&'a str; 6] {
    ["--network", mode, "--bridge", bridge, "--subnet", subnet]
}

/// `rt run -d` with extra flags; returns the container id.
pub fn run_detached(root: &Root, b: &Bundle, flags: &[&str]) -> String {
    let id = unique_id("net");
    let mut args = vec!["run", "-d", "--bundle", b.path().to_str().unwrap()];
    args.extend_from_slice(flags);
    args.push(&id);
    root.ok(&args);
    id
}

/// What rt recorded of a container's network.
pub fn attached(root: &Root, id: &str) -> Value {
    let text = std::fs::read_to_string(root.dir.path().join(id).join("state.json")).unwrap();
    let st: Value = serde_json::from_str(&text).unwrap();
    st["network"].clone()
}

pub fn ip_of(root: &Root, id: &str) -> String {
    let a = attached(root, id)["address"].as_str().unwrap().to_string();
    a.split('/').next().unwrap().to_string()
}

pub fn exec(root: &Root, id: &str, script: &str) -> Output {
    root.rt(&["exec", id, "sh", "-c", script])
}

pub fn exec_ok(root: &Root, id: &str, script: &str) -> String {
    let out = exec(root, id, script);
    assert!(
        out.status.success(),
        "exec {script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET / over TCP; the body, or None when nothing answers.
pub fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn link_exists(name: &str) -> bool {
    sh(&format!("ip link show {name}")).status.success()
}

/// Deletes the containers and checks that nothing of theirs or of the
/// networks on `bridges` is left.
pub fn delete_and_check(root: &Root, ids: &[String], bridges: &[&str]) {
    let veths: Vec<String> = ids
        .iter()
        .filter_map(|id| attached(root, id)["veth"].as_str().map(str::to_string))
        .collect();
    for id in ids {
        root.ok(&["delete", "--force", id]);
    }
    for bridge in bridges {
        assert_clean(root, bridge, &veths);
    }
}

pub fn assert_clean(root: &Root, bridge: &str, veths: &[String]) {
    for v in veths {
        assert!(!link_exists(v), "veth {v} left");
    }
    assert!(!link_exists(bridge), "bridge {bridge} left");
    assert!(
        !sh(&format!("nft list table ip rt-{bridge}"))
            .status
            .success(),
        "nft table rt-{bridge} left"
    );
    let net = root.dir.path().join(".networks");
    assert!(
        !net.join(format!("{bridge}.json")).exists(),
        "network record left"
    );
    let leases: Vec<_> = std::fs::read_dir(net.join("leases"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leases.is_empty(), "lease files left: {leases:?}");
    let root_s = root.dir.path().to_string_lossy().into_owned();
    let keepers = sh(&format!("pgrep -af '[d]hcp-keeper {root_s}' || true"));
    assert!(
        keepers.stdout.is_empty(),
        "keeper left: {}",
        String::from_utf8_lossy(&keepers.stdout)
    );
    let containers: Vec<_> = std::fs::read_dir(root.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name())
        .collect();
    assert!(containers.is_empty(), "containers left: {containers:?}");
}

/// Kills a process (by pid) on drop.
#[derive(Debug)]
pub struct Kill(pub String);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = sh(&format!("kill {}", self.0));
    }
}

/// Host processes whose command line names `needle` (a state root): QEMU,
/// virtiofsd, supervisors and relays all do.
pub fn processes_naming(needle: &std::path::Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            found.push(format!("{name}: {text}"));
        }
    }
    found
}

/// Nothing of a state root's VM or namespace containers is left: no
/// process naming it, no state, no cgroup of `ids` (microVM and migration
/// suites).
pub fn assert_root_clean(root: &rt_testsupport::Root, ids: &[&str]) {
    assert!(
        eventually(15, || processes_naming(root.dir.path()).is_empty()),
        "processes left: {:?}",
        processes_naming(root.dir.path())
    );
    let left: Vec<_> = std::fs::read_dir(root.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "state left: {left:?}");
    for id in ids {
        assert_eq!(
            rt_testsupport::cgroup_dirs_named(id),
            Vec::<std::path::PathBuf>::new(),
            "cgroups of {id} left"
        );
    }
}

/// dnsmasq handing out DHCP leases on the external namespace's `eth0`
/// (two-minute leases, T1 2 s, T2 4 s, `router` as the gateway); killed on
/// drop.
#[derive(Debug)]
pub struct Dnsmasq {
    pub leases: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _kill: Kill,
}

impl Dnsmasq {
    /// `range` is dnsmasq's `first,last,mask`.
    pub fn start(ext: &Ext, range: &str, router: &str) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("leases");
        let pid_file = dir.path().join("pid");
        let out = sh(&format!(
            "nsenter --net=/proc/{}/ns/net dnsmasq --conf-file=/dev/null --port=0 --interface=eth0 --bind-interfaces \
             --dhcp-range={range},2m --dhcp-option=option:router,{router} \
             --dhcp-option=option:T1,2 --dhcp-option=option:T2,4 --dhcp-leasefile={} --pid-file={} --dhcp-authoritative",
            ext.holder.id(),
            leases.display(),
            pid_file.display()
        ));
        assert!(out.status.success(), "{out:?}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        Dnsmasq {
            leases,
            _dir: dir,
            _kill: Kill(pid.trim().to_string()),
        }
    }

    /// Whether the lease file names `what` (an address or a MAC).
    pub fn holds(&self, what: &str) -> bool {
        std::fs::read_to_string(&self.leases)
            .unwrap_or_default()
            .contains(what)
    }
}

/// A one-packet ping's output that got no reply (`what` names who should
/// not have reached whom).
pub fn assert_no_reply(out: &Output, what: &str) {
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("100% packet loss"),
        "{what}: {out:?}"
    );
}
