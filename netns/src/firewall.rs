//! nftables rules of a network, all in one table per bridge (`ip rt-BRIDGE`).
//!
//! The table is rebuilt from the network's record whenever a container joins
//! or leaves, in one `nft -f` transaction (create, delete, create again), so
//! it always matches the record, a half-applied change never shows, and
//! `nft delete table ip rt-BRIDGE` removes everything rt did for the network.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::config::Mode;
use crate::ipam::Network;

/// Errors of applying rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running nft (is nftables installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the rules of table {table}: {stderr}")]
    Nft { table: String, stderr: String },
}

/// The table of the network on `bridge`.
pub fn table(bridge: &str) -> String {
    format!("rt-{bridge}")
}

/// The ruleset of a network, or None for a mode without rules.
pub fn rules(net: &Network) -> Option<String> {
    let subnet = net.subnet?;
    let br = &net.bridge;
    let mut s = format!("table ip {} {{\n", table(br));
    match net.mode {
        Mode::Nat => {
            let mut dnat = String::new();
            for m in net.members.values() {
                let Some(ip) = m.ip else { continue };
                for p in &m.ports {
                    let dst = match p.host_ip {
                        Some(h) => format!("ip daddr {h}"),
                        None => "fib daddr type local".into(),
                    };
                    let _ = writeln!(
                        dnat,
                        "\t\t{dst} {} dport {} dnat to {ip}:{}",
                        p.proto, p.host_port, p.container_port
                    );
                }
            }
            // Published ports: from outside (prerouting) and from the host
            // itself (output), 127.0.0.1 included.
            // (nft takes the name `dstnat` for prerouting only: -100 is it.)
            for chain in ["prerouting", "output"] {
                let _ = write!(
                    s,
                    "\tchain {chain} {{\n\t\ttype nat hook {chain} priority -100; policy accept;\n{dnat}\t}}\n"
                );
            }
            // Leaving the subnet: the host's address. Hairpin (a container to
            // a published port of its own network) and localhost: the
            // gateway's, so the reply comes back through the host.
            let _ = write!(
                s,
                "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                 \t\tip saddr {subnet} oifname != \"{br}\" masquerade\n\
                 \t\toifname \"{br}\" ct status dnat ip saddr {{ {subnet}, 127.0.0.0/8 }} masquerade\n\t}}\n"
            );
            // Reachable only through published ports: new connections into
            // the subnet from elsewhere must have been DNATed.
            let _ = write!(
                s,
                "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
                 \t\toifname \"{br}\" iifname != \"{br}\" ct state new ct status & dnat == 0 drop\n\t}}\n"
            );
        }
        Mode::HostOnly => {
            // The host and the containers only: nothing forwarded in or out.
            let _ = write!(
                s,
                "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
                 \t\tiifname \"{br}\" oifname != \"{br}\" drop\n\
                 \t\toifname \"{br}\" iifname != \"{br}\" drop\n\t}}\n"
            );
        }
        _ => return None,
    }
    s.push_str("}\n");
    Some(s)
}

/// Brings the network's table up to date, unless the rules it would hold
/// are the ones last applied (a container without published ports joins
/// or leaves): `nft` is not run for nothing. Returns whether it ran (and
/// `net.firewall` changed).
pub fn sync(net: &mut Network) -> Result<bool, Error> {
    let digest = rules(net).map(|r| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(r.as_bytes()))
    });
    if digest == net.firewall {
        return Ok(false);
    }
    apply(net)?;
    net.firewall = digest;
    Ok(true)
}

/// Replaces the network's table with its current rules (or removes it, for
/// a mode without rules).
fn apply(net: &Network) -> Result<(), Error> {
    let t = table(&net.bridge);
    let mut script = format!("table ip {t}\ndelete table ip {t}\n");
    if let Some(r) = rules(net) {
        script.push_str(&r);
    }
    nft(&t, &script)
}

/// Removes the table of the network on `bridge`; no table is not an error.
pub fn remove(bridge: &str) -> Result<(), Error> {
    let t = table(bridge);
    nft(&t, &format!("table ip {t}\ndelete table ip {t}\n"))
}

fn nft(table: &str, script: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(Error::Spawn)?;
    }
    let out = child.wait_with_output().map_err(Error::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Nft {
            table: table.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PortMap, Proto};
    use crate::ipam::Member;

    fn net(mode: Mode) -> Network {
        let mut members = std::collections::BTreeMap::new();
        members.insert(
            "web".to_string(),
            Member {
                ip: Some("10.9.0.2".parse().unwrap()),
                mac: "02:00:00:00:00:02".into(),
                veth: "rtvx".into(),
                ports: vec![
                    PortMap {
                        host_ip: None,
                        host_port: 8080,
                        container_port: 80,
                        proto: Proto::Tcp,
                    },
                    PortMap {
                        host_ip: Some("127.0.0.1".parse().unwrap()),
                        host_port: 5353,
                        container_port: 53,
                        proto: Proto::Udp,
                    },
                ],
            },
        );
        Network {
            mode,
            bridge: "rtt0".into(),
            subnet: Some("10.9.0.0/24".parse().unwrap()),
            gateway: Some("10.9.0.1".parse().unwrap()),
            created_bridge: true,
            enslaved_uplink: None,
            route_localnet: None,
            firewall: None,
            last: None,
            members,
        }
    }

    #[test]
    fn nat_rules() {
        let r = rules(&net(Mode::Nat)).unwrap();
        assert!(r.starts_with("table ip rt-rtt0 {"));
        assert_eq!(
            r.matches("fib daddr type local tcp dport 8080 dnat to 10.9.0.2:80")
                .count(),
            2
        );
        assert_eq!(
            r.matches("ip daddr 127.0.0.1 udp dport 5353 dnat to 10.9.0.2:53")
                .count(),
            2
        );
        assert!(r.contains("ip saddr 10.9.0.0/24 oifname != \"rtt0\" masquerade"));
        assert!(r.contains("ct status dnat ip saddr { 10.9.0.0/24, 127.0.0.0/8 } masquerade"));
    }

    #[test]
    fn host_only_rules_drop_forwarding_only() {
        let r = rules(&net(Mode::HostOnly)).unwrap();
        assert!(!r.contains("nat hook"));
        assert!(r.contains("iifname \"rtt0\" oifname != \"rtt0\" drop"));
        assert!(rules(&net(Mode::Bridged)).is_none());
    }

    /// `nft -c` checks the rules against the kernel without applying them.
    #[test]
    fn nft_accepts_the_rules() {
        if !nix::unistd::geteuid().is_root() || Command::new("nft").arg("-v").output().is_err() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        for mode in [Mode::Nat, Mode::HostOnly] {
            let mut child = Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let script = rules(&net(mode)).unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{script}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
