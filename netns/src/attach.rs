//! Attaching a container to its network, and detaching it.
//!
//! Attach, for the bridge modes, in order:
//! 1. under the network's lock, record the container (address, MAC, veth,
//!    ports) before making anything, so a teardown finds it;
//! 2. make the bridge if it is missing (gateway address, pinned MAC), put
//!    the uplink in it (bridged), turn on forwarding (nat);
//! 3. create the veth pair, its container end made directly in the
//!    container's namespace as `eth0`; the host end joins the bridge;
//! 4. rebuild the network's nftables table;
//! 5. with a socket opened in the container's namespace: `lo` and `eth0` up,
//!    the address, the default route; bridged without a subnet: a DHCP lease
//!    first, then a keeper process that renews it while the container runs.
//!
//! Detach undoes each step whether or not it was done, keeps going past
//! failures, and reports them all.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{format_mac, Config, Mode};
use crate::dhcp::{self, Lease};
use crate::ipam::Network;
use crate::netlink::{self, Link, Netlink};
use crate::{firewall, keeper, Error, Networking, Result, TeardownError};

/// The container's end of its veth pair.
pub const IFNAME: &str = "eth0";

/// How long a DHCP server has to answer at create.
const DHCP_TIMEOUT: Duration = Duration::from_secs(20);

/// What attach did, recorded in the container's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `ip/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

impl Attached {
    fn plain(mode: Mode) -> Attached {
        Attached {
            mode,
            bridge: None,
            veth: None,
            mac: None,
            address: None,
            gateway: None,
            lease: None,
        }
    }
}

/// A name or MAC derived from the state root and the container id: stable,
/// so a teardown finds what a killed create made.
fn derived(root: &Path, id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(root.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    h.finalize().into()
}

/// The host end of a container's veth: `rtv` and 10 hex digits.
pub fn veth_name(root: &Path, id: &str) -> String {
    let d = derived(root, id);
    format!(
        "rtv{}",
        d[..5]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A locally administered unicast MAC from `seed`.
fn local_mac(seed: &[u8; 32]) -> [u8; 6] {
    [0x02, seed[0], seed[1], seed[2], seed[3], seed[4]]
}

impl Networking {
    /// Builds the network of container `id` whose init is `pid`.
    pub fn attach(&self, id: &str, config: &Config, pid: i32) -> Result<Attached> {
        config.check_caller()?;
        if !config.mode.uses_bridge() {
            // host: nothing to build; none: the init brings `lo` up itself
            // ([`loopback_up`]), which works rootless too.
            return Ok(Attached::plain(config.mode));
        }
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let netns = File::open(&path).map_err(|source| Error::Netns { pid, source })?;
        self.attach_bridged(id, config, pid, netns.as_fd())
    }

    fn attach_bridged(
        &self,
        id: &str,
        config: &Config,
        pid: i32,
        netns: BorrowedFd<'_>,
    ) -> Result<Attached> {
        let root = self.networks.dir();
        let veth = veth_name(root, id);
        let mac = config.mac.unwrap_or_else(|| local_mac(&derived(root, id)));
        let mut host = Netlink::host()?;
        let (ip, prefix, gateway) = {
            let mut locked = self.networks.lock(&config.bridge)?;
            let ip = locked
                .get_or_init(config)
                .join(id, config, &format_mac(&mac), &veth)?;
            locked.save()?;
            let net = locked.network.as_mut().expect("just joined");
            let before = net.clone();
            let made = self.ensure_bridge(&mut host, net, config);
            // What it changed on the host is recorded, even if it then failed.
            if *net != before {
                locked.save()?;
            }
            made?;
            let net = locked.network.as_mut().expect("just joined");
            if net.mode == Mode::Nat {
                self.forwarding.hold(&self.record_path(&net.bridge))?;
            }
            host.add_veth(&veth, IFNAME, mac, netns)?;
            let port = host.require(&veth)?;
            let bridge = host.require(&net.bridge)?;
            host.set_link(&port, true, Some(bridge.index))?;
            if net.mode == Mode::Nat {
                // A container reaching its own published port comes back
                // out of the port it went in by.
                sysctl(&format!("/sys/class/net/{veth}/brport/hairpin_mode"), "1")?;
            }
            let out = (ip, net.subnet.map(|s| s.prefix_len()), net.gateway);
            if firewall::sync(net)? {
                locked.save()?;
            }
            out
        };
        let mut inside = Netlink::in_netns(netns)?;
        let eth = inside.require(IFNAME)?;
        inside.set_link(&eth, true, None)?;
        let mut attached = Attached {
            mode: config.mode,
            bridge: Some(config.bridge.clone()),
            veth: Some(veth),
            mac: Some(format_mac(&mac)),
            address: None,
            gateway,
            lease: None,
        };
        if let (Some(ip), Some(prefix)) = (ip, prefix) {
            configure(&mut inside, &eth, ip, prefix, gateway)?;
            announce(netns, &eth, mac, ip)?;
            attached.address = Some(format!("{ip}/{prefix}"));
            return Ok(attached);
        }
        // bridged without a subnet: the external network's DHCP server.
        // The client's socket (port 68 in the namespace) is closed before
        // the keeper starts: the keeper binds the same port, and while
        // this one was still open a keeper that started quickly failed
        // with EADDRINUSE (seen once in a full test run, under load).
        let lease = dhcp::Client::in_netns(netns, IFNAME, mac)?.acquire(DHCP_TIMEOUT)?;
        configure(&mut inside, &eth, lease.ip, lease.prefix, lease.router)?;
        announce(netns, &eth, mac, lease.ip)?;
        self.record_lease(id, config, &lease)?;
        keeper::spawn(
            &self.keeper,
            &self.lease_dir(),
            id,
            pid,
            IFNAME,
            mac,
            &lease,
        )?;
        attached.address = Some(format!("{}/{}", lease.ip, lease.prefix));
        attached.gateway = lease.router;
        attached.lease = Some(lease);
        Ok(attached)
    }

    fn record_path(&self, bridge: &str) -> PathBuf {
        self.networks.dir().join(format!("{bridge}.json"))
    }

    fn record_lease(&self, id: &str, config: &Config, lease: &Lease) -> Result<()> {
        let mut locked = self.networks.lock(&config.bridge)?;
        if let Some(m) = locked.network.as_mut().and_then(|n| n.members.get_mut(id)) {
            m.ip = Some(lease.ip);
        }
        Ok(locked.save()?)
    }

    /// Makes the bridge (or checks the one there) and, bridged, puts the
    /// uplink in it. What it changes is recorded in `net`.
    fn ensure_bridge(&self, host: &mut Netlink, net: &mut Network, config: &Config) -> Result<()> {
        let name = net.bridge.clone();
        let bridge = match host.link(&name)? {
            Some(l) if l.kind != "bridge" => return Err(Error::NotABridge(name)),
            Some(l) => l,
            None => {
                if net.mode == Mode::Bridged && config.uplink.is_none() {
                    return Err(Error::NoUplink(name));
                }
                let seed = derived(Path::new("bridge"), &name);
                host.add_bridge(&name, local_mac(&seed))?;
                net.created_bridge = true;
                let l = host.require(&name)?;
                if let (Some(gw), Some(subnet)) = (net.gateway, net.subnet) {
                    if net.mode != Mode::Bridged {
                        host.add_address(&l, gw, subnet.prefix_len())?;
                    }
                }
                l
            }
        };
        if !net.created_bridge && net.mode != Mode::Bridged {
            let gw = net.gateway.expect("nat and host-only have a subnet");
            if !host.addresses(&bridge)?.iter().any(|(a, _)| *a == gw) {
                return Err(Error::NoGateway {
                    bridge: name,
                    gateway: gw,
                });
            }
        }
        if net.mode == Mode::Nat {
            // 127.0.0.1 DNATed to a container leaves through the bridge.
            let path = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
            if !net.created_bridge && net.route_localnet.is_none() {
                net.route_localnet = Some(read_sysctl(&path)?);
            }
            sysctl(&path, "1")?;
        }
        if let Some(uplink) = &config.uplink {
            let up = host.require(uplink)?;
            match up.master {
                Some(m) if m == bridge.index => {}
                Some(m) => {
                    return Err(Error::UplinkBusy {
                        uplink: uplink.clone(),
                        master: m,
                    })
                }
                None => {
                    host.set_link(&up, true, Some(bridge.index))?;
                    if !net.created_bridge {
                        net.enslaved_uplink = Some(uplink.clone());
                    }
                }
            }
        }
        if !bridge.up {
            host.set_link(&bridge, true, None)?;
        }
        Ok(())
    }

    /// Undoes attach for container `id`: keeper, veth, address, rules and,
    /// after the last container, the bridge, the uplink, the sysctls rt
    /// changed and the network's record. Safe to repeat.
    pub fn detach(&self, id: &str, config: &Config) -> std::result::Result<(), TeardownError> {
        let mut errors = Vec::new();
        if config.mode.uses_bridge() {
            self.detach_bridged(id, config, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TeardownError {
                id: id.to_string(),
                errors,
            })
        }
    }

    fn detach_bridged(&self, id: &str, config: &Config, errors: &mut Vec<String>) {
        let mut note = |r: std::result::Result<(), String>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        let err = |e: &dyn std::error::Error| crate::chain(e);
        note(keeper::stop(&self.lease_dir(), id).map_err(|e| err(&e)));
        let mut host = match Netlink::host() {
            Ok(h) => Some(h),
            Err(e) => {
                note(Err(err(&e)));
                None
            }
        };
        let veth = veth_name(self.networks.dir(), id);
        if let Some(h) = host.as_mut() {
            note(h.delete_link(&veth).map(drop).map_err(|e| err(&e)));
        }
        let mut locked = match self.networks.lock(&config.bridge) {
            Ok(l) => l,
            Err(e) => return note(Err(err(&e))),
        };
        let Some(net) = locked.network.as_mut() else {
            // Nothing recorded (torn down already): drop the lock file
            // this call made.
            return note(locked.save().map_err(|e| err(&e)));
        };
        net.members.remove(id);
        if !net.members.is_empty() {
            note(firewall::sync(net).map(drop).map_err(|e| err(&e)));
            return note(locked.save().map_err(|e| err(&e)));
        }
        let net = locked.network.take().expect("checked");
        note(firewall::remove(&net.bridge).map_err(|e| err(&e)));
        if let Some(h) = host.as_mut() {
            note(release_bridge(h, &net).map_err(|e| err(&e)));
        }
        if net.mode == Mode::Nat {
            let holder = self.record_path(&net.bridge);
            note(self.forwarding.release(&holder).map_err(|e| err(&e)));
        }
        note(locked.save().map_err(|e| err(&e)));
    }
}

/// After a network's last container: deletes the bridge rt made, or gives
/// back what rt changed on one it did not.
fn release_bridge(host: &mut Netlink, net: &Network) -> Result<()> {
    if net.created_bridge {
        host.delete_link(&net.bridge)?;
        return Ok(());
    }
    if let Some(uplink) = &net.enslaved_uplink {
        if let Some(l) = host.link(uplink)? {
            host.set_link(&l, l.up, Some(0))?;
        }
    }
    if let Some(prev) = &net.route_localnet {
        sysctl(
            &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge),
            prev,
        )?;
    }
    Ok(())
}

/// Sets `lo` up in the calling process's network namespace: the container's
/// init does it for every mode with a namespace of its own.
pub fn loopback_up() -> Result<()> {
    let mut nl = Netlink::host()?;
    let lo = nl.require("lo")?;
    Ok(nl.set_link(&lo, true, None)?)
}

/// Address and default route on the container's interface.
pub(crate) fn configure(
    nl: &mut Netlink,
    eth: &Link,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    nl.add_address(eth, ip, prefix)?;
    if let Some(gw) = gateway {
        nl.add_default_route(eth, gw)?;
    }
    Ok(())
}

/// Announces the address (gratuitous ARP) from inside the namespace: the
/// host's and the segment's neighbour caches may still hold it as failed
/// (a DHCP server's probe) or as a deleted container's MAC (a reused
/// address), and would lose the first packets until they probe again.
fn announce(netns: BorrowedFd<'_>, eth: &Link, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
    netlink::in_netns(netns, || rt_sys::arp_announce(eth.index, mac, ip.octets()))
        .map_err(netlink::Error::Setns)?
        .map_err(|e| Error::Announce(ip, e))
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Io {
        what: "writing",
        path: path.into(),
        source,
    })
}

fn read_sysctl(path: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Io {
            what: "reading",
            path: path.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A teardown of what was never built (or was torn down already)
    /// succeeds and leaves no lock file behind.
    #[test]
    fn detach_is_idempotent_and_leaves_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (netlink)");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let n = Networking::new(root.path(), vec![]);
        let annotations = [
            ("run.rt.network", "nat"),
            ("run.rt.network.bridge", "rtt-never0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = Config::from_annotations(&annotations).unwrap().unwrap();
        for _ in 0..2 {
            n.detach("gone", &config).unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(root.path().join(".networks"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn derived_names_fit_and_differ_per_root() {
        let a = veth_name(Path::new("/run/rt"), "web");
        let b = veth_name(Path::new("/tmp/other"), "web");
        assert!(a.len() < libc::IFNAMSIZ && a.starts_with("rtv"));
        assert_ne!(a, b);
        assert_eq!(a, veth_name(Path::new("/run/rt"), "web"));
        let mac = local_mac(&derived(Path::new("/run/rt"), "web"));
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered unicast");
    }
}
