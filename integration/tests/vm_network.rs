//! microVM containers on rt's own networks, with real traffic, under TCG
//! (or KVM where a probe boot works): a published port reached from the
//! host and from a namespace container; a VM and a namespace container on
//! one nat network pinging each other; host-only isolation for a VM;
//! bridged with a DHCP lease taken, renewed and released for the VM's MAC;
//! `none`; refusals, and kills mid-create and of the supervisor, each
//! followed by the leak check (no tap, veth, bridge, nft table, record,
//! lease, keeper, QEMU or state left).
//!
//! Bridges, subnets and ports are this suite's own (network.rs uses
//! 10.231.1–9.0/24, rtt-n*, rttu1–5), so both suites can run at once.
//! Timeouts are sized for several TCG boots at once on 2 cores.

use std::process::Stdio;

use rt_integration::net::*;
use rt_testsupport::{eventually, need_root, unique_id, Bundle, Root};
use serde_json::{json, Value};

/// `rt run -d --isolation vm` with network flags; the container id.
fn run_vm_detached(root: &Root, b: &Bundle, flags: &[&str]) -> String {
    let mut f = vec!["--isolation", "vm"];
    f.extend_from_slice(flags);
    run_detached(root, b, &f)
}

/// The leak check, and no QEMU, virtiofsd, supervisor or relay either.
fn delete_vms_and_check(root: &Root, ids: &[String], bridges: &[&str]) {
    delete_and_check(root, ids, bridges);
    assert!(
        eventually(10, || processes_naming(root.dir.path()).is_empty()),
        "processes left: {:?}",
        processes_naming(root.dir.path())
    );
}

fn web(text: &str) -> Bundle {
    bundle(&format!(
        "echo {text} > /dev/shm/index.html && exec httpd -f -p 80 -h /dev/shm"
    ))
}

#[test]
fn published_port_and_a_namespace_neighbour_on_one_nat_network() {
    need_root!();
    let root = Root::new();
    let flags = net_flags("nat", "rtt-v1", "10.231.61.0/24");
    let mut w = web("hello-from-the-vm");
    w.edit(|c| c["annotations"] = json!({"run.rt.network.dns": "10.231.61.53"}));
    let mut vm_flags = flags.to_vec();
    vm_flags.extend(["-p", "18091:80", "--ip", "10.231.61.77"]);
    let vm = run_vm_detached(&root, &w, &vm_flags);
    let ns = run_detached(&root, &bundle("sleep 1000"), &flags);
    let (vm_ip, ns_ip) = (ip_of(&root, &vm), ip_of(&root, &ns));
    assert_eq!(vm_ip, "10.231.61.77");
    // The guest's eth0 has the address and MAC rt's IPAM recorded.
    let a = attached(&root, &vm);
    let guest = exec_ok(
        &root,
        &vm,
        "ip -o addr show eth0; ip -o link show eth0; ip route",
    );
    assert!(
        guest.contains(&format!("inet {}", a["address"].as_str().unwrap()))
            && guest.contains(a["mac"].as_str().unwrap())
            && guest.contains("default via 10.231.61.1"),
        "{guest}\n{a}"
    );
    assert_eq!(
        exec_ok(&root, &vm, "cat /etc/resolv.conf"),
        "nameserver 10.231.61.53\n"
    );
    // The published port, from the host through 127.0.0.1.
    assert!(
        eventually(30, || http_get("127.0.0.1:18091")
            .is_some_and(|b| b.contains("hello-from-the-vm"))),
        "127.0.0.1:18091: {:?}",
        http_get("127.0.0.1:18091")
    );
    // From another namespace: directly, and through the published port on
    // the gateway's address.
    for to in [format!("{vm_ip} 80"), "10.231.61.1 18091".to_string()] {
        let body = exec_ok(
            &root,
            &ns,
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {to}"),
        );
        assert!(body.contains("hello-from-the-vm"), "{to}: {body}");
    }
    // Both ways by address.
    exec_ok(&root, &ns, &format!("ping -c1 -W5 {vm_ip}"));
    exec_ok(&root, &vm, &format!("ping -c1 -W5 {ns_ip}"));
    exec_ok(&root, &vm, "ping -c1 -W5 10.231.61.1");
    delete_vms_and_check(&root, &[vm, ns], &["rtt-v1"]);
    assert!(http_get("127.0.0.1:18091").is_none());
}

#[test]
fn host_only_keeps_a_vm_in() {
    need_root!();
    let ext = Ext::new(
        "rttu6",
        Some("198.51.100.193/26"),
        "198.51.100.194/26",
        Some("198.51.100.193"),
    );
    let root = Root::new();
    // A nat network turns forwarding on: host-only must still keep in.
    let nat = run_detached(
        &root,
        &bundle("sleep 1000"),
        &net_flags("nat", "rtt-v2", "10.231.62.0/24"),
    );
    exec_ok(&root, &nat, "ping -c1 -W3 198.51.100.194");
    let flags = net_flags("host-only", "rtt-v3", "10.231.63.0/24");
    let vm = run_vm_detached(&root, &web("host-only-vm"), &flags);
    let ns = run_detached(&root, &bundle("sleep 1000"), &flags);
    let vm_ip = ip_of(&root, &vm);
    exec_ok(&root, &vm, "ping -c1 -W5 10.231.63.1");
    exec_ok(&root, &ns, &format!("ping -c1 -W5 {vm_ip}"));
    let addr = format!("{vm_ip}:80");
    assert!(eventually(30, || http_get(&addr)
        .is_some_and(|b| b.contains("host-only-vm"))));
    let out = exec(&root, &vm, "ping -c1 -W2 198.51.100.194");
    assert_no_reply(&out, "a host-only VM reached the outside");
    ext.sh_ok("ip route add 10.231.63.0/24 via 198.51.100.193");
    let out = ext.exec(&format!("busybox ping -c1 -W2 {vm_ip}"));
    assert_no_reply(&out, "the outside reached a host-only VM");
    delete_vms_and_check(&root, &[vm, ns, nat], &["rtt-v3", "rtt-v2"]);
}

#[test]
fn bridged_dhcp_lease_for_the_vm_is_renewed_and_released() {
    need_root!();
    let ext = Ext::new("rttu7", None, "203.0.113.129/25", None);
    let dnsmasq = Dnsmasq::start(
        &ext,
        "203.0.113.150,203.0.113.160,255.255.255.128",
        "203.0.113.129",
    );
    let root = Root::new();
    let mut b = bundle("sleep 1000");
    b.edit(|c| c["annotations"] = json!({"run.rt.network.uplink": "rttu7"}));
    let vm = run_vm_detached(&root, &b, &["--network", "bridged", "--bridge", "rtt-v4"]);
    let a = attached(&root, &vm);
    let ip = ip_of(&root, &vm);
    let in_range = ip
        .strip_prefix("203.0.113.")
        .and_then(|n| n.parse::<u8>().ok())
        .is_some_and(|n| (150..=160).contains(&n));
    assert!(in_range, "{ip}");
    assert_eq!(a["lease"]["server"], "203.0.113.129");
    let in_leases = |what: &str| dnsmasq.holds(what);
    // The lease is the VM's: dnsmasq holds it for the guest's MAC.
    let mac = a["mac"].as_str().unwrap().to_string();
    assert!(in_leases(&ip) && in_leases(&mac), "{a}");
    let guest = exec_ok(&root, &vm, "ip -o addr show eth0; ip -o link show eth0");
    assert!(
        guest.contains(&format!("inet {ip}/25")) && guest.contains(&mac),
        "{guest}"
    );
    // The external segment and the VM reach each other.
    assert!(
        ext.exec(&format!("busybox ping -c1 -W5 {ip}"))
            .status
            .success(),
        "{}",
        exec_ok(&root, &vm, "ip addr; ip route; ip neigh")
    );
    exec_ok(&root, &vm, "ping -c1 -W5 203.0.113.129");
    // The keeper renews at T1 (2 s) from the VM's namespace.
    let lease_file = root.dir.path().join(format!(".networks/leases/{vm}.json"));
    let renewals = || {
        std::fs::read(&lease_file)
            .ok()
            .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
            .and_then(|v| v["renewals"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        eventually(20, || renewals() >= 2),
        "renewals: {}; keeper log: {}",
        renewals(),
        std::fs::read_to_string(root.dir.path().join(format!(".networks/leases/{vm}.log")))
            .unwrap_or_default()
    );
    // The guest still has its address and still answers.
    assert!(ext
        .exec(&format!("busybox ping -c1 -W5 {ip}"))
        .status
        .success());
    // When the VM's workload ends, the keeper releases the lease.
    root.ok(&["kill", &vm, "KILL"]);
    assert!(
        eventually(30, || !in_leases(&ip)),
        "lease of {ip} not released"
    );
    delete_vms_and_check(&root, &[vm], &["rtt-v4"]);
    let link = sh_ok("ip -o link show rttu7");
    assert!(!link.contains("master"), "{link}");
}

#[test]
fn none_host_refusals_and_kills_leave_nothing() {
    need_root!();
    let root = Root::new();
    // none: only lo, and up.
    let b = bundle("cat /sys/class/net/lo/operstate; ls /sys/class/net | tr '\\n' ' '");
    let out = root.ok(&[
        "run",
        "--isolation",
        "vm",
        "--network",
        "none",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("none"),
    ]);
    assert_eq!(out, "unknown\nlo ");
    let sleeper = bundle("sleep 1000");
    let refused = |flags: &[&str], want: &str| {
        let id = unique_id("bad");
        let mut args = vec![
            "run",
            "-d",
            "--isolation",
            "vm",
            "--bundle",
            sleeper.path().to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        args.push(&id);
        let out = root.rt(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{flags:?}: {err}"
        );
        assert!(!root.dir.path().join(&id).exists(), "{flags:?}: state left");
        assert_eq!(
            rt_testsupport::cgroup_dirs_named(&id),
            Vec::<std::path::PathBuf>::new(),
            "{flags:?}: cgroups left"
        );
        assert!(
            eventually(10, || processes_naming(root.dir.path()).is_empty()),
            "{flags:?}: processes left: {:?}",
            processes_naming(root.dir.path())
        );
    };
    refused(&["--network", "host"], "run.rt.network=host");
    refused(
        &[
            "--network",
            "nat",
            "--subnet",
            "10.231.64.0/24",
            "--ip",
            "10.231.65.5",
        ],
        "is not a host address of subnet",
    );
    // A /30 holds the gateway and one container; a namespace container
    // takes it and publishes a port.
    let flags = net_flags("nat", "rtt-v5", "10.231.66.0/30");
    let mut ns_flags = flags.to_vec();
    ns_flags.extend(["-p", "18095:80"]);
    let ns = run_detached(&root, &sleeper, &ns_flags);
    let mut taken = flags.to_vec();
    taken.extend(["-p", "18095:80"]);
    refused(&taken, "is already published by container");
    refused(&flags, "no free address in subnet 10.231.66.0/30");
    delete_and_check(&root, &[ns], &["rtt-v5"]);

    // rt create killed while the VM's createRuntime hook runs (after the
    // network is built), then delete --force.
    let marker = unique_id("vmhook");
    let mut hooked = bundle("sleep 1000");
    hooked.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", format!("sleep 120 # {marker}")]}]});
    });
    let id = unique_id("killed");
    let mut child = root
        .cmd()
        .args(["create", "--isolation", "vm"])
        .args(net_flags("nat", "rtt-v6", "10.231.67.0/24"))
        .args([
            "-p",
            "18096:80",
            "--bundle",
            hooked.path().to_str().unwrap(),
            &id,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hook_running = || {
        sh(&format!("pgrep -f '[s]leep 120 # {marker}'"))
            .status
            .success()
    };
    assert!(eventually(120, hook_running), "the hook never ran");
    let veth = attached(&root, &id)["veth"].as_str().unwrap().to_string();
    assert!(link_exists(&veth) && link_exists("rtt-v6"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let _ = sh(&format!("pkill -f '[s]leep 120 # {marker}'"));
    root.ok(&["delete", "--force", &id]);
    assert_clean(&root, "rtt-v6", &[veth]);

    // SIGKILL of a running VM's supervisor: its namespace goes, and with
    // it the veth; delete --force takes the rest.
    let vm = run_vm_detached(
        &root,
        &sleeper,
        &net_flags("nat", "rtt-v7", "10.231.68.0/24"),
    );
    let veth = attached(&root, &vm)["veth"].as_str().unwrap().to_string();
    let st: Value = serde_json::from_str(&root.ok(&["state", &vm])).unwrap();
    let pid = st["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(10, || !link_exists(&veth)),
        "veth {veth} outlived the VM"
    );
    delete_vms_and_check(&root, &[vm], &["rtt-v7"]);
}
