//! Container networking for rt, wired with veth pairs and netlink.
//!
//! A container's network is chosen by its `run.rt.network*` annotations
//! ([`Config`]): `none`, `host` (cloned-host), `bridged`, `nat` or
//! `host-only`. [`Networking::attach`] builds it once the container's
//! namespace exists and before its process starts; [`Networking::detach`]
//! undoes it, and can be run any number of times, on a container whose
//! create was killed half-way included.
//!
//! The pieces, one module each: [`config`] (annotations), [`ipam`] (the
//! networks of a state root and their addresses, under a lock),
//! [`netlink`] (links, addresses, routes), [`firewall`] (one nftables table
//! per network), [`forwarding`] (the host's `ip_forward`), [`dhcp`] and
//! [`keeper`] (a bridged container's lease, renewed while it runs). The
//! container backend calls this crate; the microVM backend is to call it the
//! same way with a tap device in place of the veth.

pub mod attach;
pub mod config;
pub mod dhcp;
pub mod firewall;
pub mod forwarding;
pub mod ipam;
pub mod keeper;
pub mod lockfile;
pub mod netlink;
pub mod tc;

use std::path::{Path, PathBuf};

pub use attach::Attached;
pub use config::{Config, Mode};

/// Errors of attaching a container to its network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Ipam(#[from] ipam::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Firewall(#[from] firewall::Error),
    #[error(transparent)]
    Forwarding(#[from] forwarding::Error),
    #[error(transparent)]
    Dhcp(#[from] dhcp::Error),
    #[error(transparent)]
    File(#[from] lockfile::Error),
    #[error("opening the network namespace of pid {pid}")]
    Netns {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("network mode bridged: bridge {0} does not exist and run.rt.network.uplink names no interface for rt to put in a new one")]
    NoUplink(String),
    #[error("{0} exists and is not a bridge")]
    NotABridge(String),
    #[error("uplink {uplink} is already a port of another bridge (index {master})")]
    UplinkBusy { uplink: String, master: u32 },
    #[error("bridge {bridge} was not made by rt and lacks the gateway address {gateway}: add it, or name another bridge")]
    NoGateway {
        bridge: String,
        gateway: std::net::Ipv4Addr,
    },
    #[error("starting the DHCP keeper {path}")]
    Keeper {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("announcing {0} (gratuitous ARP)")]
    Announce(std::net::Ipv4Addr, #[source] rt_sys::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Errors of a teardown: every step is tried, every failure reported.
#[derive(Debug, thiserror::Error)]
#[error("tearing down the network of container {id}: {}", .errors.join("; "))]
pub struct TeardownError {
    pub id: String,
    pub errors: Vec<String>,
}

/// The networking of one state root.
#[derive(Debug, Clone)]
pub struct Networking {
    networks: ipam::Networks,
    forwarding: forwarding::Forwarding,
    /// The program (and its leading arguments) that runs [`keeper::run`].
    keeper: Vec<std::ffi::OsString>,
}

impl Networking {
    /// Networks recorded under `state_root`; `keeper` is the command that
    /// runs a bridged container's DHCP keeper (rt's own `dhcp-keeper`).
    pub fn new(state_root: &Path, keeper: Vec<std::ffi::OsString>) -> Networking {
        Networking {
            networks: ipam::Networks::new(state_root),
            forwarding: forwarding::Forwarding::default(),
            keeper,
        }
    }

    fn lease_dir(&self) -> PathBuf {
        self.networks.dir().join("leases")
    }
}

/// Renders an error with its sources, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
