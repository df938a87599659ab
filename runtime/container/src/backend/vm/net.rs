//! A VM's network: a tap device in a network namespace, joined to that
//! namespace's interface with tc mirred redirects both ways (Kata's
//! default, chosen for CNI compatibility; see rt_netns::tc), and the
//! guest's eth0 taking the interface's MAC, addresses, routes and MTU.
//! Whatever the interface's network does (the caller's bridge and
//! published ports, or rt's own nat, host-only and bridged networks), the
//! packets that reach the interface go to the guest and the guest's leave
//! by it.
//!
//! Two namespaces are wired this way:
//! - the caller's (podman's and CNI's `linux.namespaces` path), entered by
//!   a short-lived thread; its interface is read with `ip -j` (iproute2),
//!   which reports every address family and route the caller set;
//! - the supervisor's own, for rt's networks (`run.rt.network`): rt-netns
//!   attached it exactly as for a namespace container, so its record
//!   ([`rt_netns::Attached`]) is the guest's address.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use rt_vm::channel::{GuestNet, Route};
use serde_json::Value;

use super::VmError;

/// The tap's name in the caller's namespace (and rt's own); a second VM
/// in the same namespace (a live migration's destination) takes the next
/// free `tapN_rt`.
pub const TAP: &str = "tap0_rt";

fn is_rt_tap(name: &str) -> bool {
    name.starts_with("tap") && name.ends_with("_rt")
}

/// What [`wire`] made.
#[derive(Debug)]
pub struct Wired {
    pub tap: OwnedFd,
    pub guest: GuestNet,
    /// The interface the tap is joined to.
    pub ifname: String,
    /// The tap's name.
    pub tap_name: String,
}

/// Runs `f` in the network namespace at `netns`, on a thread of its own.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, VmError> + Send + 'static,
) -> Result<T, VmError> {
    let ns = std::fs::File::open(netns).map_err(|source| VmError::Io {
        what: "opening network namespace",
        path: netns.to_path_buf(),
        source,
    })?;
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| VmError::Sys("joining the network namespace", e))?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(VmError::Helper("the network thread panicked".into())))
}

fn run(program: &str, args: &[&str]) -> Result<String, VmError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| VmError::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::Network(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first Ethernet interface with an address, from `ip -j addr`.
fn pick(links: &Value) -> Option<(String, GuestNet)> {
    for l in links.as_array()? {
        if l["ifname"] == "lo"
            || l["link_type"] != "ether"
            || l["ifname"].as_str().is_some_and(is_rt_tap)
        {
            continue;
        }
        let addrs: Vec<String> = l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"] == "global" && (a["family"] == "inet" || a["family"] == "inet6"))
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect();
        if addrs.is_empty() {
            continue;
        }
        return Some((
            l["ifname"].as_str()?.to_string(),
            GuestNet {
                mac: l["address"].as_str()?.to_string(),
                mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
                addrs,
                routes: Vec::new(),
            },
        ));
    }
    None
}

/// Routes through a gateway, from `ip -j route show dev IF` (the link's own
/// prefix route comes with its address).
fn routes(list: &Value) -> Vec<Route> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(Route {
                dst: r["dst"].as_str()?.to_string(),
                gateway: Some(r["gateway"].as_str()?.to_string()),
            })
        })
        .collect()
}

/// Creates the tap and, with `join`, the redirects in the namespace at
/// `netns`. A live migration's destination joins later ([`hand_over`]),
/// when the VM is about to run: until then the source keeps the traffic.
pub fn wire(netns: &Path, join: bool) -> Result<Wired, VmError> {
    in_netns(netns, move || {
        let links: Value =
            serde_json::from_str(&run("ip", &["-j", "addr", "show"])?).map_err(VmError::Config)?;
        let (ifname, mut guest) = pick(&links).ok_or_else(|| {
            VmError::Network(
                "the network namespace has no Ethernet interface with an address".into(),
            )
        })?;
        let list: Value =
            serde_json::from_str(&run("ip", &["-j", "route", "show", "dev", &ifname])?)
                .map_err(VmError::Config)?;
        guest.routes = routes(&list);
        let (tap, tap_name) = free_tap()?;
        set_up_tap(&tap_name, &ifname, guest.mtu, false, join)?;
        Ok(Wired {
            tap,
            guest,
            ifname,
            tap_name,
        })
    })
}

/// The interface's traffic moves to `tap_name` (a restored or migrated
/// VM's new tap) without a gap (`rt_netns::tc::take_over`).
pub fn hand_over(netns: &Path, ifname: &str, tap_name: &str) -> Result<(), VmError> {
    let (ifname, tap_name) = (ifname.to_string(), tap_name.to_string());
    in_netns(netns, move || {
        let mut nl = rt_netns::netlink::Netlink::host().map_err(network)?;
        let outer = nl.require(&ifname).map_err(network)?;
        let tap = nl.require(&tap_name).map_err(network)?;
        rt_netns::tc::take_over(&mut nl, &outer, &tap).map_err(network)
    })
}

/// The first free `tapN_rt` in the current namespace.
fn free_tap() -> Result<(OwnedFd, String), VmError> {
    for n in 0..16 {
        let name = format!("tap{n}_rt");
        match rt_sys::open_tap(&name) {
            Ok(fd) => return Ok((fd, name)),
            Err(rt_sys::Error::Syscall(_, nix::errno::Errno::EBUSY)) => continue,
            Err(e) => return Err(VmError::Network(format!("creating {name}: {e}"))),
        }
    }
    Err(VmError::Network(
        "no free tap name (tap0_rt … tap15_rt are taken)".into(),
    ))
}

/// Removes the redirect from the interface (the tap goes with the VM's
/// descriptor). Idempotent: a namespace or qdisc already gone is fine.
pub fn unwire(netns: &Path, ifname: &str) -> Result<(), VmError> {
    if !netns.exists() {
        return Ok(());
    }
    let ifname = ifname.to_string();
    in_netns(netns, move || {
        let mut nl = rt_netns::netlink::Netlink::host().map_err(network)?;
        if let Some(link) = nl.link(&ifname).map_err(network)? {
            rt_netns::tc::unjoin(&mut nl, &link).map_err(network)?;
        }
        Ok(())
    })
}

/// Sets the tap `name` (open in the current namespace) up with `mtu` and,
/// with `join`, joins it to `ifname`.
fn set_up_tap(
    name: &str,
    ifname: &str,
    mtu: u32,
    keep_dhcp: bool,
    join: bool,
) -> Result<(), VmError> {
    let mut nl = rt_netns::netlink::Netlink::host().map_err(network)?;
    let link = nl.require(name).map_err(network)?;
    if mtu != 1500 {
        nl.set_mtu(&link, mtu).map_err(network)?;
    }
    nl.set_link(&link, true, None).map_err(network)?;
    if join {
        let outer = nl.require(ifname).map_err(network)?;
        rt_netns::tc::join(&mut nl, &outer, &link, keep_dhcp).map_err(network)?;
    }
    Ok(())
}

fn network(e: impl std::error::Error) -> VmError {
    VmError::Network(crate::process::chain(&e))
}

/// The tap for rt's own network, in the supervisor's namespace, where
/// rt-netns made `eth0` (see `Networking::attach`); the guest gets what
/// attach recorded. With a DHCP lease, its keeper renews from this
/// namespace: its replies and ARP stay visible here.
pub fn wire_own(attached: &rt_netns::Attached) -> Result<Wired, VmError> {
    let (Some(mac), Some(address)) = (&attached.mac, &attached.address) else {
        return Err(VmError::Network(format!(
            "network mode {} recorded no address for the VM",
            attached.mode
        )));
    };
    let ifname = rt_netns::attach::IFNAME;
    // Persistent: QEMU's exit does not unregister it; the namespace's
    // clean-up takes it with the veth end, off every process's path.
    let tap =
        rt_sys::open_tap(TAP).map_err(|e| VmError::Network(format!("creating {TAP}: {e}")))?;
    rt_sys::persist_tap(tap.as_fd())
        .map_err(|e| VmError::Network(format!("making {TAP} persistent: {e}")))?;
    set_up_tap(TAP, ifname, 1500, attached.lease.is_some(), true)?;
    let routes = attached
        .gateway
        .filter(|g| !g.is_unspecified())
        .map(|gw| Route {
            dst: "default".into(),
            gateway: Some(gw.to_string()),
        })
        .into_iter()
        .collect();
    Ok(Wired {
        tap,
        guest: GuestNet {
            mac: mac.clone(),
            mtu: 1500,
            addrs: vec![address.clone()],
            routes,
        },
        ifname: ifname.into(),
        tap_name: TAP.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_and_gateway_routes_are_read_from_ip_json() {
        let links = serde_json::json!([
            {"ifname": "lo", "link_type": "loopback", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
            {"ifname": "eth0", "link_type": "ether", "address": "aa:bb:cc:00:11:22", "mtu": 1400,
             "addr_info": [{"family": "inet", "local": "10.88.0.5", "prefixlen": 16, "scope": "global"},
                           {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]}
        ]);
        let (ifname, g) = pick(&links).unwrap();
        assert_eq!(ifname, "eth0");
        assert_eq!(
            (g.mac.as_str(), g.mtu, g.addrs.clone()),
            ("aa:bb:cc:00:11:22", 1400, vec!["10.88.0.5/16".to_string()])
        );
        let r = routes(&serde_json::json!([
            {"dst": "default", "gateway": "10.88.0.1", "dev": "eth0"},
            {"dst": "10.88.0.0/16", "dev": "eth0", "protocol": "kernel", "scope": "link"}
        ]));
        assert_eq!(
            r,
            [Route {
                dst: "default".into(),
                gateway: Some("10.88.0.1".into())
            }]
        );
        assert!(pick(&serde_json::json!([{"ifname": "lo", "link_type": "loopback"}])).is_none());
    }
}
