//! A container's network as its annotations ask for it.
//!
//! Every `run.rt.network*` annotation is parsed and checked here, before
//! anything is made: a bad value, a key rt does not know, or an option the
//! mode does not take is refused with the annotation's name.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The annotation that selects the mode; the others share its prefix.
pub const MODE: &str = "run.rt.network";
pub const BRIDGE: &str = "run.rt.network.bridge";
pub const SUBNET: &str = "run.rt.network.subnet";
pub const GATEWAY: &str = "run.rt.network.gateway";
pub const UPLINK: &str = "run.rt.network.uplink";
pub const PORTS: &str = "run.rt.network.ports";
pub const MAC: &str = "run.rt.network.mac";
pub const IP: &str = "run.rt.network.ip";
pub const DNS: &str = "run.rt.network.dns";

const KEYS: [&str; 9] = [MODE, BRIDGE, SUBNET, GATEWAY, UPLINK, PORTS, MAC, IP, DNS];

/// Errors in the network annotations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{key}: {value:?} is not {what}")]
    Invalid {
        key: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("unknown network annotation {0} (rt knows {keys})", keys = KEYS.join(", "))]
    UnknownKey(String),
    #[error("{key} does not apply to network mode {mode}")]
    NotForMode { key: &'static str, mode: Mode },
    #[error("network annotations are set but {MODE} is not: name a mode (none, host, bridged, nat, host-only)")]
    NoMode,
    #[error("{IP} {ip} is not a host address of subnet {subnet} (or is its gateway)")]
    IpOutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error(
        "{SUBNET} {0} is too small: it needs room for a gateway and a container (at most /30)"
    )]
    SubnetTooSmall(Ipv4Net),
    #[error("{GATEWAY} {gateway} is not a host address of subnet {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error(
        "network mode bridged with {IP} needs {SUBNET} (the uplink's network), or neither for DHCP"
    )]
    IpWithoutSubnet,
    #[error("{PORTS}: port {0} is published twice")]
    DuplicatePort(PortMap),
    #[error("network mode {0} needs root (rootless containers can use none or host)")]
    NeedsRoot(Mode),
}

/// How a container is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Its own namespace with only `lo`, up.
    None,
    /// The host's namespace (cloned-host): no namespace of its own.
    Host,
    /// A peer on the uplink's segment, through a bridge holding the uplink.
    Bridged,
    /// A private subnet behind the host's address; published ports DNATed.
    Nat,
    /// A private subnet the host reaches; nothing forwarded in or out.
    HostOnly,
}

impl Mode {
    /// Whether the container gets a veth on a bridge.
    pub fn uses_bridge(self) -> bool {
        matches!(self, Mode::Bridged | Mode::Nat | Mode::HostOnly)
    }

    fn default_bridge(self) -> &'static str {
        match self {
            Mode::Bridged => "rtbr0",
            Mode::HostOnly => "rthost0",
            _ => "rtnat0",
        }
    }

    fn default_subnet(self) -> Option<Ipv4Net> {
        let net = match self {
            Mode::Nat => Ipv4Net::new(Ipv4Addr::new(10, 213, 0, 0), 16),
            Mode::HostOnly => Ipv4Net::new(Ipv4Addr::new(10, 214, 0, 0), 16),
            _ => return None,
        };
        net.ok()
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode, Error> {
        Ok(match s {
            "none" => Mode::None,
            "host" => Mode::Host,
            "bridged" => Mode::Bridged,
            "nat" => Mode::Nat,
            "host-only" => Mode::HostOnly,
            _ => {
                return Err(Error::Invalid {
                    key: MODE,
                    value: s.into(),
                    what: "a network mode (none, host, bridged, nat, host-only)",
                })
            }
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::None => "none",
            Mode::Host => "host",
            Mode::Bridged => "bridged",
            Mode::Nat => "nat",
            Mode::HostOnly => "host-only",
        })
    }
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port: `[hostIP:]hostPort:containerPort[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    /// Only traffic to this host address is forwarded; any local one without.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

impl FromStr for PortMap {
    type Err = Error;
    fn from_str(s: &str) -> Result<PortMap, Error> {
        let bad = || Error::Invalid {
            key: PORTS,
            value: s.into(),
            what: "[hostIP:]hostPort:containerPort[/tcp|udp]",
        };
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some(_) => return Err(bad()),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host_ip, host, cont) = match parts[..] {
            [h, c] => (None, h, c),
            [ip, h, c] => (Some(ip.parse().map_err(|_| bad())?), h, c),
            _ => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        Ok(PortMap {
            host_ip,
            host_port: port(host)?,
            container_port: port(cont)?,
            proto,
        })
    }
}

/// A container's network, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub mode: Mode,
    /// The bridge (bridged, nat, host-only).
    pub bridge: String,
    /// nat and host-only: always (a default); bridged: with a fixed address.
    pub subnet: Option<Ipv4Net>,
    /// The subnet's gateway: its first host unless set.
    pub gateway: Option<Ipv4Addr>,
    /// bridged: the host interface the bridge holds.
    pub uplink: Option<String>,
    pub ports: Vec<PortMap>,
    pub mac: Option<[u8; 6]>,
    /// A fixed address instead of one from IPAM (or DHCP, when bridged).
    pub ip: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

impl Config {
    /// The network the annotations ask for; `None` when `run.rt.network` is
    /// absent (the caller wires the network itself).
    pub fn from_annotations(
        annotations: &HashMap<String, String>,
    ) -> Result<Option<Config>, Error> {
        for key in annotations.keys() {
            if key.starts_with(MODE) && !KEYS.contains(&key.as_str()) {
                return Err(Error::UnknownKey(key.clone()));
            }
        }
        let get = |k: &str| {
            annotations
                .get(k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let Some(mode) = get(MODE) else {
            return match KEYS.iter().find(|k| get(k).is_some()) {
                Some(_) => Err(Error::NoMode),
                None => Ok(None),
            };
        };
        let mode: Mode = mode.parse()?;
        let only = |key: &'static str, allowed: &[Mode]| match get(key) {
            Some(_) if !allowed.contains(&mode) => Err(Error::NotForMode { key, mode }),
            v => Ok(v),
        };
        let bridged = [Mode::Bridged, Mode::Nat, Mode::HostOnly];
        let bridge = match only(BRIDGE, &bridged)? {
            Some(b) => parse_ifname(BRIDGE, b)?,
            None => mode.default_bridge().to_string(),
        };
        let subnet = match only(SUBNET, &bridged)? {
            Some(s) => Some(parse_subnet(s)?),
            None => mode.default_subnet(),
        };
        let gateway = only(GATEWAY, &bridged)?
            .map(|g| parse_ip(GATEWAY, g))
            .transpose()?;
        let uplink = only(UPLINK, &[Mode::Bridged])?
            .map(|u| parse_ifname(UPLINK, u))
            .transpose()?;
        let ports = match only(PORTS, &[Mode::Nat])? {
            Some(p) => parse_ports(p)?,
            None => Vec::new(),
        };
        let mac = only(MAC, &bridged)?.map(parse_mac).transpose()?;
        let ip = only(IP, &bridged)?.map(|i| parse_ip(IP, i)).transpose()?;
        let dns = match only(DNS, &[Mode::None, Mode::Bridged, Mode::Nat, Mode::HostOnly])? {
            Some(d) => d
                .split(',')
                .map(|s| parse_ip(DNS, s.trim()))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let config = Config {
            mode,
            bridge,
            subnet,
            gateway,
            uplink,
            ports,
            mac,
            ip,
            dns,
        };
        config.check()?;
        Ok(Some(config))
    }

    fn check(&self) -> Result<(), Error> {
        let Some(subnet) = self.subnet else {
            if self.ip.is_some() || self.gateway.is_some() {
                return Err(Error::IpWithoutSubnet);
            }
            return Ok(());
        };
        if subnet.prefix_len() > 30 {
            return Err(Error::SubnetTooSmall(subnet));
        }
        let gateway = self.gateway();
        let host =
            |a: Ipv4Addr| subnet.contains(&a) && a != subnet.network() && a != subnet.broadcast();
        if !gateway.is_some_and(host) {
            return Err(Error::GatewayOutsideSubnet {
                gateway: gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                subnet,
            });
        }
        if let Some(ip) = self.ip {
            if !host(ip) || Some(ip) == gateway {
                return Err(Error::IpOutsideSubnet { ip, subnet });
            }
        }
        Ok(())
    }

    /// Refuses the bridge modes to a caller that is not root: they make
    /// links, rules and sysctls on the host.
    pub fn check_caller(&self) -> Result<(), Error> {
        if self.mode.uses_bridge() && !nix::unistd::geteuid().is_root() {
            return Err(Error::NeedsRoot(self.mode));
        }
        Ok(())
    }

    /// The gateway: the one set, or the subnet's first host.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
            .or_else(|| self.subnet.and_then(|s| s.hosts().next()))
    }

    /// Whether the address comes from the external network's DHCP server.
    pub fn dhcp(&self) -> bool {
        self.mode == Mode::Bridged && self.subnet.is_none()
    }
}

fn parse_ip(key: &'static str, s: &str) -> Result<Ipv4Addr, Error> {
    s.parse().map_err(|_| Error::Invalid {
        key,
        value: s.into(),
        what: "an IPv4 address",
    })
}

fn parse_subnet(s: &str) -> Result<Ipv4Net, Error> {
    let net: Ipv4Net = s.parse().map_err(|_| Error::Invalid {
        key: SUBNET,
        value: s.into(),
        what: "an IPv4 CIDR (IPv6 is not supported)",
    })?;
    if net.trunc() != net {
        return Err(Error::Invalid {
            key: SUBNET,
            value: s.into(),
            what: "a network address (host bits must be zero)",
        });
    }
    Ok(net)
}

/// An interface name: 1–15 bytes of letters, digits, `-`, `_`, `.`.
fn parse_ifname(key: &'static str, s: &str) -> Result<String, Error> {
    let ok = !s.is_empty()
        && s.len() < libc::IFNAMSIZ
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(Error::Invalid {
            key,
            value: s.into(),
            what: "an interface name (a letter, then up to 14 letters, digits, '-', '_' or '.')",
        })
    }
}

fn parse_ports(s: &str) -> Result<Vec<PortMap>, Error> {
    let mut ports: Vec<PortMap> = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p: PortMap = p.parse()?;
        if ports
            .iter()
            .any(|q| q.host_port == p.host_port && q.proto == p.proto && q.host_ip == p.host_ip)
        {
            return Err(Error::DuplicatePort(p));
        }
        ports.push(p);
    }
    Ok(ports)
}

/// A unicast MAC address, `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], Error> {
    let bad = || Error::Invalid {
        key: MAC,
        value: s.into(),
        what: "a unicast MAC address (aa:bb:cc:dd:ee:ff)",
    };
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| bad())?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<Config>, Error> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_annotations(&map)
    }

    #[test]
    fn absent_means_no_networking() {
        assert!(parse(&[("org.other", "x")]).unwrap().is_none());
        assert!(matches!(parse(&[(PORTS, "80:80")]), Err(Error::NoMode)));
    }

    #[test]
    fn nat_defaults_and_ports() {
        let c = parse(&[(MODE, "nat"), (PORTS, "8080:80, 127.0.0.1:53:53/udp")])
            .unwrap()
            .unwrap();
        assert_eq!(c.bridge, "rtnat0");
        assert_eq!(c.subnet.unwrap().to_string(), "10.213.0.0/16");
        assert_eq!(c.gateway(), Some(Ipv4Addr::new(10, 213, 0, 1)));
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[1].to_string(), "127.0.0.1:53:53/udp");
        assert_eq!(c.ports[0].proto, Proto::Tcp);
    }

    #[test]
    fn refusals_name_the_annotation() {
        let cases: &[&[(&str, &str)]] = &[
            &[(MODE, "bogus")],
            &[(MODE, "nat"), (PORTS, "80")],
            &[(MODE, "nat"), (PORTS, "0:80")],
            &[(MODE, "nat"), (PORTS, "80:80/sctp")],
            &[(MODE, "nat"), (PORTS, "80:80,80:81")],
            &[(MODE, "host-only"), (PORTS, "80:80")],
            &[(MODE, "host"), (BRIDGE, "br0")],
            &[(MODE, "nat"), (SUBNET, "10.0.0.1/24")],
            &[(MODE, "nat"), (SUBNET, "fd00::/64")],
            &[(MODE, "nat"), (SUBNET, "10.0.0.0/31")],
            &[(MODE, "nat"), (SUBNET, "10.0.0.0/24"), (IP, "10.0.1.5")],
            &[(MODE, "nat"), (SUBNET, "10.0.0.0/24"), (IP, "10.0.0.1")],
            &[(MODE, "nat"), (BRIDGE, "this-name-is-too-long")],
            &[(MODE, "nat"), (BRIDGE, "br;rm")],
            &[(MODE, "nat"), (MAC, "01:00:00:00:00:01")],
            &[(MODE, "bridged"), (IP, "192.168.1.5")],
            &[(MODE, "nat"), ("run.rt.network.bogus", "1")],
        ];
        for case in cases {
            let err = parse(case).expect_err(&format!("{case:?}")).to_string();
            assert!(err.contains("run.rt.network"), "{case:?}: {err}");
        }
    }

    #[test]
    fn bridged_is_dhcp_without_subnet() {
        let c = parse(&[(MODE, "bridged"), (UPLINK, "eth1")])
            .unwrap()
            .unwrap();
        assert!(c.dhcp());
        assert_eq!(c.bridge, "rtbr0");
        let c = parse(&[
            (MODE, "bridged"),
            (SUBNET, "198.51.100.0/24"),
            (IP, "198.51.100.7"),
            (MAC, "02:aa:bb:cc:dd:ee"),
        ])
        .unwrap()
        .unwrap();
        assert!(!c.dhcp());
        assert_eq!(format_mac(&c.mac.unwrap()), "02:aa:bb:cc:dd:ee");
    }
}
