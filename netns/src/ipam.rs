//! The networks of a state root and the addresses handed out on them.
//!
//! Each bridge rt uses has one record, `<root>/.networks/<bridge>.json`,
//! read and rewritten (write, rename) only under the exclusive lock
//! `<root>/.networks/<bridge>.lock`; both go with the last container. A container's entry is written before
//! anything is made for it, so a create killed half-way leaves a record that
//! `delete` finds and undoes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode, PortMap};
use crate::lockfile::LockFile;

/// Errors of the network records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::lockfile::Error),
    #[error("network record {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no free address in subnet {subnet} of network {bridge}")]
    Full { bridge: String, subnet: Ipv4Net },
    #[error("address {ip} on network {bridge} is already used by container {by}")]
    AddressInUse {
        ip: Ipv4Addr,
        bridge: String,
        by: String,
    },
    #[error("port {port} on network {bridge} is already published by container {by}")]
    PortInUse {
        port: PortMap,
        bridge: String,
        by: String,
    },
    #[error("bridge {bridge} is already used as a {mode} network with {what}; this container asks for {wanted}")]
    Mismatch {
        bridge: String,
        mode: Mode,
        what: String,
        wanted: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// One container's place on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// None while a DHCP lease is pending (bridged without a subnet).
    pub ip: Option<Ipv4Addr>,
    pub mac: String,
    /// The host end of its veth pair.
    pub veth: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMap>,
}

/// A network: a bridge and what rt did to the host for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub mode: Mode,
    pub bridge: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// rt made the bridge, and deletes it with its last container.
    #[serde(default)]
    pub created_bridge: bool,
    /// The uplink rt made a port of a bridge it did not create.
    #[serde(default)]
    pub enslaved_uplink: Option<String>,
    /// The previous `route_localnet` of a bridge rt did not create.
    #[serde(default)]
    pub route_localnet: Option<String>,
    /// The digest of the nftables rules last applied (see firewall::sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<String>,
    /// The last address handed out: the next search starts after it, so a
    /// released address is not reused at once (stale ARP caches).
    pub last: Option<Ipv4Addr>,
    pub members: BTreeMap<String, Member>,
}

impl Network {
    fn new(config: &Config) -> Network {
        Network {
            mode: config.mode,
            bridge: config.bridge.clone(),
            subnet: config.subnet,
            gateway: config.gateway(),
            created_bridge: false,
            enslaved_uplink: None,
            route_localnet: None,
            firewall: None,
            last: None,
            members: BTreeMap::new(),
        }
    }

    /// Refuses a container whose network settings differ from the network's.
    /// On a bridged network, DHCP containers (no subnet) and fixed-address
    /// ones share the bridge; the first subnet named becomes the network's.
    fn check(&mut self, config: &Config) -> Result<()> {
        let mismatch = |what: String, wanted: String| Error::Mismatch {
            bridge: self.bridge.clone(),
            mode: self.mode,
            what,
            wanted,
        };
        if self.mode != config.mode {
            return Err(mismatch(
                "its containers".into(),
                format!("mode {}", config.mode),
            ));
        }
        if self.mode == Mode::Bridged && (self.subnet.is_none() || config.subnet.is_none()) {
            if self.subnet.is_none() && config.subnet.is_some() {
                self.subnet = config.subnet;
                self.gateway = config.gateway();
            }
            return Ok(());
        }
        let show =
            |s: Option<Ipv4Net>| s.map_or("no subnet (DHCP)".into(), |s| format!("subnet {s}"));
        if self.subnet != config.subnet {
            return Err(mismatch(show(self.subnet), show(config.subnet)));
        }
        if self.gateway != config.gateway() {
            let g = |g: Option<Ipv4Addr>| {
                format!("gateway {}", g.map_or("none".into(), |g| g.to_string()))
            };
            return Err(mismatch(g(self.gateway), g(config.gateway())));
        }
        Ok(())
    }

    /// Picks `fixed`, or the next free host address after the last one
    /// handed out; records it for `id`.
    fn allocate(&mut self, id: &str, config: &Config) -> Result<Option<Ipv4Addr>> {
        let (Some(subnet), Some(_)) = (self.subnet, config.subnet) else {
            return Ok(None); // DHCP
        };
        let fixed = config.ip;
        let used = |ip: Ipv4Addr| {
            self.members
                .iter()
                .find(|(other, m)| m.ip == Some(ip) && other.as_str() != id)
                .map(|(other, _)| other.clone())
        };
        if let Some(ip) = fixed {
            if let Some(by) = used(ip) {
                return Err(Error::AddressInUse {
                    ip,
                    bridge: self.bridge.clone(),
                    by,
                });
            }
            return Ok(Some(ip));
        }
        let hosts: Vec<Ipv4Addr> = subnet
            .hosts()
            .filter(|h| Some(*h) != self.gateway)
            .collect();
        let start = self
            .last
            .and_then(|l| hosts.iter().position(|h| *h == l))
            .map_or(0, |i| i + 1);
        let pick = (0..hosts.len())
            .map(|i| hosts[(start + i) % hosts.len()])
            .find(|h| used(*h).is_none())
            .ok_or_else(|| Error::Full {
                bridge: self.bridge.clone(),
                subnet,
            })?;
        self.last = Some(pick);
        Ok(Some(pick))
    }

    /// Refuses host ports another container of this network publishes.
    fn check_ports(&self, id: &str, ports: &[PortMap]) -> Result<()> {
        for p in ports {
            for (other, m) in self.members.iter().filter(|(o, _)| o.as_str() != id) {
                let clash = m.ports.iter().any(|q| {
                    q.host_port == p.host_port
                        && q.proto == p.proto
                        && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
                });
                if clash {
                    return Err(Error::PortInUse {
                        port: *p,
                        bridge: self.bridge.clone(),
                        by: other.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Records container `id` on this network: its address (fixed, from the
    /// subnet, or none yet for DHCP), MAC, veth and published ports.
    pub fn join(
        &mut self,
        id: &str,
        config: &Config,
        mac: &str,
        veth: &str,
    ) -> Result<Option<Ipv4Addr>> {
        self.check(config)?;
        self.check_ports(id, &config.ports)?;
        let ip = self.allocate(id, config)?;
        self.members.insert(
            id.to_string(),
            Member {
                ip,
                mac: mac.to_string(),
                veth: veth.to_string(),
                ports: config.ports.clone(),
            },
        );
        Ok(ip)
    }
}

/// The networks of one state root.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
}

/// A network's record, held under its lock until dropped.
#[derive(Debug)]
pub struct Locked {
    lock: LockFile,
    path: PathBuf,
    /// None: no container uses the bridge (yet).
    pub network: Option<Network>,
}

impl Networks {
    pub fn new(state_root: &Path) -> Networks {
        Networks {
            dir: state_root.join(".networks"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Locks and loads the record of the network on `bridge`.
    pub fn lock(&self, bridge: &str) -> Result<Locked> {
        let lock = LockFile::acquire(&self.dir.join(format!("{bridge}.lock")))?;
        let path = self.dir.join(format!("{bridge}.json"));
        let network = match std::fs::read(&path) {
            Ok(data) => Some(
                serde_json::from_slice(&data).map_err(|source| Error::Corrupt {
                    path: path.clone(),
                    source,
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::Io {
                    what: "reading",
                    path,
                    source,
                })
            }
        };
        Ok(Locked {
            lock,
            path,
            network,
        })
    }

    /// The bridges this root has records for.
    pub fn bridges(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_string)
            })
            .collect()
    }
}

impl Locked {
    /// The network record, made from `config` when it is the first member.
    pub fn get_or_init(&mut self, config: &Config) -> &mut Network {
        self.network.get_or_insert_with(|| Network::new(config))
    }

    /// Writes the record (or, with no record left, removes it and its
    /// lock file).
    pub fn save(&self) -> Result<()> {
        let Some(network) = &self.network else {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        what: "removing",
                        path: self.path.clone(),
                        source: e,
                    })
                }
                _ => {}
            }
            return Ok(self.lock.remove()?);
        };
        Ok(crate::lockfile::write_json(&self.path, network)?)
    }
}

/// A restored container's network identity: `config` is pinned to the MAC
/// and address of `saved` (its record at checkpoint) when the restore's
/// network is the same mode, the address is on its subnet, and no member
/// of `networks`' record of the bridge holds either; otherwise `config` is
/// left as it is and the container gets a new identity (the checkpointed
/// one still runs, say). The annotations' own `mac` and `ip` win. Returns
/// whether the identity was kept.
pub fn keep_identity(
    networks: &Networks,
    config: &mut Config,
    saved: &crate::Attached,
) -> Result<bool> {
    if saved.mode != config.mode || config.mac.is_some() || config.ip.is_some() {
        return Ok(false);
    }
    let Some(mac) = saved.mac.as_deref() else {
        return Ok(false);
    };
    let Ok(mac_bytes) = crate::config::parse_mac(mac) else {
        return Ok(false);
    };
    let ip = saved
        .address
        .as_deref()
        .and_then(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok());
    let ip = match (config.subnet, ip) {
        (Some(subnet), Some(ip)) if subnet.contains(&ip) => Some(ip),
        (Some(_), _) => return Ok(false),
        (None, _) => None, // DHCP: the MAC keeps the lease
    };
    // No record: no member (and no lock file made just to look).
    let record = networks.dir().join(format!("{}.json", config.bridge));
    let taken = record.exists() && {
        let locked = networks.lock(&config.bridge)?;
        let taken = locked.network.as_ref().is_some_and(|n| {
            n.members
                .values()
                .any(|m| m.mac.eq_ignore_ascii_case(mac) || (ip.is_some() && m.ip == ip))
        });
        if locked.network.is_none() {
            locked.save()?;
        }
        taken
    };
    if taken {
        return Ok(false);
    }
    config.mac = Some(mac_bytes);
    config.ip = ip;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_annotations(&map).unwrap().unwrap()
    }

    #[test]
    fn allocates_round_robin_and_reports_full() {
        let c = config(&[
            ("run.rt.network", "nat"),
            ("run.rt.network.subnet", "10.9.0.0/29"),
        ]);
        let mut n = Network::new(&c);
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                n.join(&format!("c{i}"), &c, "02:00:00:00:00:01", "v")
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(got[0], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 9, 0, 6));
        let err = n.join("c5", &c, "m", "v").unwrap_err().to_string();
        assert_eq!(
            err,
            "no free address in subnet 10.9.0.0/29 of network rtnat0"
        );
        // A released address is reused only after the others.
        n.members.remove("c1");
        assert_eq!(
            n.join("c6", &c, "m", "v").unwrap(),
            Some(Ipv4Addr::new(10, 9, 0, 3))
        );
    }

    #[test]
    fn refuses_taken_address_port_and_other_settings() {
        let c = config(&[
            ("run.rt.network", "nat"),
            ("run.rt.network.subnet", "10.9.0.0/24"),
            ("run.rt.network.ip", "10.9.0.9"),
            ("run.rt.network.ports", "8080:80"),
        ]);
        let mut n = Network::new(&c);
        n.join("a", &c, "m", "v").unwrap();
        assert!(matches!(
            n.join("b", &c, "m", "v"),
            Err(Error::PortInUse { .. })
        ));
        let c2 = config(&[
            ("run.rt.network", "nat"),
            ("run.rt.network.subnet", "10.9.0.0/24"),
            ("run.rt.network.ip", "10.9.0.9"),
        ]);
        assert!(matches!(
            n.join("b", &c2, "m", "v"),
            Err(Error::AddressInUse { .. })
        ));
        let c3 = config(&[
            ("run.rt.network", "nat"),
            ("run.rt.network.subnet", "10.8.0.0/24"),
        ]);
        let err = n.join("b", &c3, "m", "v").unwrap_err().to_string();
        assert!(
            err.contains("subnet 10.9.0.0/24") && err.contains("10.8.0.0/24"),
            "{err}"
        );
    }

    #[test]
    fn concurrent_joins_get_distinct_addresses() {
        let root = tempfile::tempdir().unwrap();
        let nets = Networks::new(root.path());
        let c = config(&[
            ("run.rt.network", "nat"),
            ("run.rt.network.subnet", "10.9.0.0/24"),
        ]);
        let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let (nets, c) = (&nets, &c);
                    s.spawn(move || {
                        let mut l = nets.lock("rtnat0").unwrap();
                        let ip = l
                            .get_or_init(c)
                            .join(&format!("c{i}"), c, "m", "v")
                            .unwrap();
                        l.save().unwrap();
                        ip.unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 16);
        let l = nets.lock("rtnat0").unwrap();
        assert_eq!(l.network.unwrap().members.len(), 16);
    }

    #[test]
    fn a_restore_keeps_its_identity_only_while_no_one_holds_it() {
        let d = tempfile::tempdir().unwrap();
        let networks = Networks::new(d.path());
        let c = config(&[
            ("run.rt.network", "nat"),
            ("run.rt.network.bridge", "rtk0"),
            ("run.rt.network.subnet", "10.9.3.0/24"),
        ]);
        let saved = crate::Attached {
            mode: Mode::Nat,
            bridge: Some("rtk0".into()),
            veth: None,
            mac: Some("02:aa:00:00:00:07".into()),
            address: Some("10.9.3.7/24".into()),
            gateway: None,
            lease: None,
        };
        let mut fresh = c.clone();
        assert!(keep_identity(&networks, &mut fresh, &saved).unwrap());
        assert_eq!(fresh.ip, Some(Ipv4Addr::new(10, 9, 3, 7)));
        assert_eq!(fresh.mac, Some([2, 0xaa, 0, 0, 0, 7]));
        // Someone on the bridge holds the address: a new identity.
        let mut l = networks.lock("rtk0").unwrap();
        l.get_or_init(&fresh)
            .join("other", &fresh, "02:bb:00:00:00:01", "v")
            .unwrap();
        l.save().unwrap();
        drop(l);
        let mut again = c.clone();
        assert!(!keep_identity(&networks, &mut again, &saved).unwrap());
        assert_eq!((again.ip, again.mac), (None, None));
        // Another mode, or an address off the subnet: a new identity too.
        let mut other = config(&[
            ("run.rt.network", "host-only"),
            ("run.rt.network.bridge", "rtk1"),
            ("run.rt.network.subnet", "10.9.4.0/24"),
        ]);
        assert!(!keep_identity(&networks, &mut other, &saved).unwrap());
        let mut off = config(&[
            ("run.rt.network", "nat"),
            ("run.rt.network.bridge", "rtk2"),
            ("run.rt.network.subnet", "10.9.5.0/24"),
        ]);
        assert!(!keep_identity(&networks, &mut off, &saved).unwrap());
    }
}
