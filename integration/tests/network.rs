//! Networking with real traffic: nat (between containers, to the gateway,
//! out to an "external" host, published ports from localhost, the host's
//! address, outside and hairpin), host-only, bridged (dnsmasq DHCP in the
//! external namespace, lease renewal, a fixed address), none and host; IPAM
//! under concurrency and a full subnet; a create killed half-way; refusals.
//!
//! Every packet goes to loopback or to a namespace the test makes. Each
//! test uses its own bridges, subnets and ports, so they run in parallel,
//! and ends with a leak check: no link, bridge, nft table, network record,
//! keeper or container of its own is left.

use std::net::TcpListener;

use rt_integration::net::*;
use rt_testsupport::{eventually, output_via_files, root_or_skip, unique_id, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

#[test]
fn nat_containers_reach_each_other_the_gateway_and_outside() {
    need_root!();
    let ext = Ext::new("rttu1", Some("198.51.100.1/24"), "198.51.100.2/24", None);
    let root = Root::new();
    let b = bundle("sleep 1000");
    let flags = net_flags("nat", "rtt-n1", "10.231.1.0/24");
    let a = run_detached(&root, &b, &flags);
    let c = run_detached(&root, &b, &flags);
    let (ip_a, ip_c) = (ip_of(&root, &a), ip_of(&root, &c));
    // Forwarding is on, and recorded as held by this network.
    assert_eq!(sh_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    let holders = std::fs::read_to_string("/run/rt-net/forwarding.json").unwrap();
    let record = root.dir.path().join(".networks/rtt-n1.json");
    assert!(holders.contains(record.to_str().unwrap()), "{holders}");
    assert_eq!(ip_a, "10.231.1.2");
    assert_eq!(ip_c, "10.231.1.3");
    // The container's end is eth0 with the MAC rt recorded.
    let mac = attached(&root, &a)["mac"].as_str().unwrap().to_string();
    let link = exec_ok(&root, &a, "ip -o link show eth0");
    assert!(link.contains(&mac), "{link}");
    exec_ok(&root, &a, &format!("ping -c1 -W3 {ip_c}"));
    exec_ok(&root, &c, "ping -c1 -W3 10.231.1.1");
    // Out through NAT: the external host sees the host's address.
    let listener = ext.within(|| TcpListener::bind("198.51.100.2:9000").unwrap());
    let mut sender = root.cmd();
    sender.args([
        "exec",
        &a,
        "sh",
        "-c",
        "echo hi | nc -w 3 198.51.100.2 9000",
    ]);
    let sender = std::thread::spawn(move || output_via_files(&mut sender));
    let (conn, peer) = listener.accept().unwrap();
    // (busybox nc keeps the connection open after its stdin ends.)
    let mut got = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut got).unwrap();
    drop(conn);
    assert_eq!(got.trim(), "hi");
    assert_eq!(peer.ip().to_string(), "198.51.100.1");
    assert!(sender.join().unwrap().status.success());
    delete_and_check(&root, &[a, c], &["rtt-n1"]);
}

#[test]
fn published_port_from_localhost_host_address_outside_and_hairpin() {
    need_root!();
    let ext = Ext::new("rttu2", Some("198.51.100.65/26"), "198.51.100.66/26", None);
    let root = Root::new();
    let web = bundle("echo hello-from-web > /dev/shm/index.html && httpd -f -p 80 -h /dev/shm");
    let flags = net_flags("nat", "rtt-n2", "10.231.2.0/24");
    let mut web_flags = flags.to_vec();
    web_flags.extend(["-p", "18082:80"]);
    let w = run_detached(&root, &web, &web_flags);
    // From the host, through 127.0.0.1 and through the host's addresses.
    for addr in ["127.0.0.1:18082", "198.51.100.65:18082"] {
        assert!(
            eventually(5, || http_get(addr)
                .is_some_and(|b| b.contains("hello-from-web"))),
            "{addr}: {:?}",
            http_get(addr)
        );
    }
    // From another host, through the host's address.
    // (The host's static busybox wget crashes: the test's own client.)
    let body = ext.within(|| http_get("198.51.100.65:18082"));
    assert!(
        body.as_ref().is_some_and(|b| b.contains("hello-from-web")),
        "{body:?}"
    );
    // Hairpin: a container of the same network, and the server itself.
    let other = run_detached(&root, &bundle("sleep 1000"), &flags);
    for id in [&other, &w] {
        // (busybox wget crashes here: nc speaks HTTP/1.0 well enough.)
        let body = exec_ok(
            &root,
            id,
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 198.51.100.65 18082",
        );
        assert!(body.contains("hello-from-web"), "{body}");
    }
    // Without the port, the container is not reachable from outside.
    let ip = ip_of(&root, &w);
    ext.sh_ok("ip route add 10.231.2.0/24 via 198.51.100.65");
    let direct = ext.within(|| http_get(&format!("{ip}:80")));
    assert!(
        direct.is_none(),
        "reached {ip} directly from outside: {direct:?}"
    );
    delete_and_check(&root, &[w, other], &["rtt-n2"]);
    assert!(http_get("127.0.0.1:18082").is_none());
}

#[test]
fn host_only_reaches_the_host_not_the_outside() {
    need_root!();
    let ext = Ext::new(
        "rttu3",
        Some("198.51.100.129/26"),
        "198.51.100.130/26",
        Some("198.51.100.129"),
    );
    let root = Root::new();
    // A nat network turns forwarding on: host-only must still keep in.
    let nat = run_detached(
        &root,
        &bundle("sleep 1000"),
        &net_flags("nat", "rtt-n3", "10.231.3.0/24"),
    );
    exec_ok(&root, &nat, "ping -c1 -W3 198.51.100.130");
    let web = bundle("echo host-only-web > /dev/shm/index.html && httpd -f -p 80 -h /dev/shm");
    let flags = net_flags("host-only", "rtt-h3", "10.231.4.0/24");
    let h = run_detached(&root, &web, &flags);
    let h2 = run_detached(&root, &bundle("sleep 1000"), &flags);
    exec_ok(&root, &h, "ping -c1 -W3 10.231.4.1");
    exec_ok(&root, &h2, &format!("ping -c1 -W3 {}", ip_of(&root, &h)));
    let addr = format!("{}:80", ip_of(&root, &h));
    assert!(eventually(5, || http_get(&addr)
        .is_some_and(|b| b.contains("host-only-web"))));
    let out = exec(&root, &h, "ping -c1 -W2 198.51.100.130");
    assert_no_reply(&out, "host-only container reached the outside");
    // Nor does the outside reach it, even with a route.
    ext.sh_ok("ip route add 10.231.4.0/24 via 198.51.100.129");
    let out = ext.exec(&format!("busybox ping -c1 -W2 {}", ip_of(&root, &h)));
    assert_no_reply(&out, "the outside reached a host-only container");
    let table = sh_ok("nft list table ip rt-rtt-h3");
    assert!(!table.contains("nat"), "{table}");
    delete_and_check(&root, &[h, h2, nat], &["rtt-h3", "rtt-n3"]);
}

#[test]
fn bridged_dhcp_lease_from_the_external_network_and_a_fixed_address() {
    need_root!();
    let ext = Ext::new("rttu5", None, "203.0.113.1/24", None);
    let dnsmasq = Dnsmasq::start(
        &ext,
        "203.0.113.50,203.0.113.60,255.255.255.0",
        "203.0.113.1",
    );
    let root = Root::new();
    let mut b = bundle("sleep 1000");
    b.edit(|c| c["annotations"] = json!({"run.rt.network.uplink": "rttu5"}));
    let d = run_detached(&root, &b, &["--network", "bridged", "--bridge", "rtt-b5"]);
    let ip = ip_of(&root, &d);
    assert!(
        ip.starts_with("203.0.113.5") || ip == "203.0.113.60",
        "{ip}"
    );
    assert_eq!(attached(&root, &d)["lease"]["server"], "203.0.113.1");
    // A peer on the external segment: reachable from there directly.
    let out = ext.exec(&format!("busybox ping -c1 -W3 {ip}"));
    assert!(
        out.status.success(),
        "{out:?}\ncontainer: {}\nexternal: {:?}\nbridge: {:?}",
        exec_ok(&root, &d, "ip addr; ip route; ip neigh"),
        ext.exec("ip addr; ip neigh"),
        sh("bridge link; bridge fdb show br rtt-b5"),
    );
    exec_ok(&root, &d, "ping -c1 -W3 203.0.113.1");
    let in_leases = |what: &str| dnsmasq.holds(what);
    assert!(in_leases(&ip));
    // The keeper renews at T1 (2 s) while the container runs.
    let lease_file = root.dir.path().join(format!(".networks/leases/{d}.json"));
    let renewals = || {
        std::fs::read(&lease_file)
            .ok()
            .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
            .and_then(|v| v["renewals"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        eventually(15, || renewals() >= 2),
        "renewals: {}",
        renewals()
    );
    exec_ok(
        &root,
        &d,
        &format!("ip -4 -o addr show eth0 | grep -q {ip}"),
    );
    // A fixed address on the same bridge, from the subnet named.
    let f = run_detached(
        &root,
        &b,
        &[
            "--network",
            "bridged",
            "--bridge",
            "rtt-b5",
            "--subnet",
            "203.0.113.0/24",
            "--ip",
            "203.0.113.9",
        ],
    );
    assert!(ext
        .exec("busybox ping -c1 -W3 203.0.113.9")
        .status
        .success());
    exec_ok(&root, &f, &format!("ping -c1 -W3 {ip}"));
    // When the container's process ends, its keeper releases the lease and
    // exits, before any delete.
    let root_s = root.dir.path().to_string_lossy().into_owned();
    let keeper = format!("pgrep -f '[d]hcp-keeper {root_s}/.networks/leases/{d}'");
    assert!(sh(&keeper).status.success(), "no keeper runs");
    root.ok(&["kill", &d, "KILL"]);
    assert!(
        eventually(10, || !in_leases(&ip)),
        "lease of {ip} not released"
    );
    assert!(
        eventually(10, || !sh(&keeper).status.success()),
        "keeper still running"
    );
    delete_and_check(&root, &[d, f], &["rtt-b5"]);
    // The uplink is out of the (gone) bridge.
    let link = sh_ok("ip -o link show rttu5");
    assert!(!link.contains("master"), "{link}");
}

#[test]
fn none_and_host_modes() {
    need_root!();
    let root = Root::new();
    let b = bundle("cat /sys/class/net/lo/operstate; ls /sys/class/net | tr '\\n' ' '");
    let out = root.ok(&[
        "run",
        "--network",
        "none",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("none"),
    ]);
    assert_eq!(out, "unknown\nlo ");
    let up = sh_ok(&format!(
        "ip -o link show lo | grep -c UP; true # {}",
        root.dir.path().display()
    ));
    assert_eq!(up.trim(), "1");
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let b = bundle("readlink /proc/self/ns/net; ls /sys/class/net");
    let out = root.ok(&[
        "run",
        "--network",
        "host",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("host"),
    ]);
    assert!(
        out.starts_with(&format!("{}\n", host_ns.display())),
        "{out}"
    );
    let host_links = sh_ok("ls /sys/class/net");
    assert!(
        host_links.lines().all(|l| out.contains(l)),
        "{out} vs {host_links}"
    );
}

#[test]
fn dns_is_written_to_resolv_conf() {
    need_root!();
    let root = Root::new();
    let mut b = bundle("cat /etc/resolv.conf");
    b.edit(|c| {
        c["annotations"] =
            json!({"run.rt.network": "none", "run.rt.network.dns": "10.0.0.53, 10.0.0.54"});
    });
    let out = root.ok(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("dns"),
    ]);
    assert_eq!(out, "nameserver 10.0.0.53\nnameserver 10.0.0.54\n");
}

#[test]
fn concurrent_creates_get_distinct_addresses_and_a_full_subnet_is_refused() {
    need_root!();
    let root = Root::new();
    let b = bundle("sleep 1000");
    let flags = net_flags("nat", "rtt-n6", "10.231.6.0/29");
    // A /29 holds the gateway and five containers.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|_| s.spawn(|| run_detached(&root, &b, &flags)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = ids.iter().map(|id| ip_of(&root, id)).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 5, "{ips:?}");
    let sixth = unique_id("full");
    let mut args = vec!["run", "-d", "--bundle", b.path().to_str().unwrap()];
    args.extend_from_slice(&flags);
    args.push(&sixth);
    let out = root.rt(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no free address in subnet 10.231.6.0/29 of network rtt-n6"),
        "{err}"
    );
    assert!(!root.dir.path().join(&sixth).exists());
    let rec: Value = serde_json::from_slice(
        &std::fs::read(root.dir.path().join(".networks/rtt-n6.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["members"].as_object().unwrap().len(), 5);
    delete_and_check(&root, &ids, &["rtt-n6"]);
}

#[test]
fn killed_mid_create_then_delete_leaves_nothing() {
    need_root!();
    let root = Root::new();
    let mut b = bundle("sleep 1000");
    let marker = unique_id("hookwait");
    // The createRuntime hook runs after the network is built: rt is killed
    // while it waits.
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", format!("sleep 60 # {marker}")]}]});
    });
    let id = unique_id("killed");
    let mut child = root
        .cmd()
        .args([
            "create",
            "--network",
            "nat",
            "--bridge",
            "rtt-n7",
            "--subnet",
            "10.231.7.0/24",
            "-p",
            "18087:80",
        ])
        .args(["--bundle", b.path().to_str().unwrap(), &id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // ("[s]leep" keeps pgrep from finding its own shell.)
    let hook_running = || {
        sh(&format!("pgrep -f '[s]leep 60 # {marker}'"))
            .status
            .success()
    };
    assert!(eventually(10, hook_running), "the hook never ran");
    let veth = attached(&root, &id)["veth"].as_str().unwrap().to_string();
    assert!(link_exists(&veth) && link_exists("rtt-n7"));
    assert!(sh("nft list table ip rt-rtt-n7").status.success());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let _ = sh(&format!("pkill -f '[s]leep 60 # {marker}'"));
    root.ok(&["delete", "--force", &id]);
    assert_clean(&root, "rtt-n7", &[veth]);
}

#[test]
fn bad_network_settings_are_refused_and_leave_nothing() {
    need_root!();
    let root = Root::new();
    let b = bundle("true");
    let cases: &[(&[&str], &str)] = &[
        (&["--network", "warp"], "is not a network mode"),
        (
            &["--network", "host-only", "-p", "80:80"],
            "run.rt.network.ports does not apply to network mode host-only",
        ),
        (
            &[
                "--network",
                "nat",
                "--subnet",
                "10.231.8.0/24",
                "--ip",
                "10.231.9.5",
            ],
            "is not a host address of subnet",
        ),
        (
            &["--network", "bridged", "--bridge", "rtt-b8"],
            "bridge rtt-b8 does not exist",
        ),
        (
            &["--network", "nat", "--bridge", "lo"],
            "lo exists and is not a bridge",
        ),
    ];
    for (flags, want) in cases {
        let id = unique_id("bad");
        let mut args = vec!["run", "--bundle", b.path().to_str().unwrap()];
        args.extend_from_slice(flags);
        args.push(&id);
        let out = root.rt(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{flags:?}: {err}"
        );
        assert!(!root.dir.path().join(&id).exists(), "{flags:?}: state left");
    }
    assert_clean(&root, "rtt-b8", &[]);
    assert_clean(&root, "lo-never", &[]);
    assert!(!root.dir.path().join(".networks/lo.json").exists());
}
