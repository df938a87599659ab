//! A small synchronous rtnetlink client: one socket per network namespace.
//!
//! A socket belongs to the namespace it was created in, whatever thread
//! later uses it. [`Netlink::in_netns`] creates one on a short-lived thread
//! that joins the target namespace and exits: no thread of rt is ever left
//! switched into a container's namespace, and rt is single-threaded again
//! when it returns.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Errors of netlink requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket")]
    Socket(#[source] io::Error),
    #[error("entering the container's network namespace")]
    Setns(#[source] nix::errno::Errno),
    #[error("{op}")]
    Request {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: bad netlink reply")]
    Decode { op: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What rt needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, …; empty for a device without a kind (ethernet).
    pub kind: String,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    pub up: bool,
}

/// One rtnetlink socket, in the namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in rt's own (the host's) namespace.
    pub fn host() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// A socket in the namespace `netns` (an open `/proc/PID/ns/net`).
    pub fn in_netns(netns: BorrowedFd<'_>) -> Result<Netlink> {
        in_netns(netns, Netlink::host).map_err(Error::Setns)?
    }

    /// Sends one request and collects the replies up to its ACK (or, for a
    /// dump, its DONE).
    pub(crate) fn request(
        &mut self,
        op: impl Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let fail = |source| Error::Request { op: op(), source };
        self.socket.send(&buf, 0).map_err(fail)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(fail)?;
            let mut at = 0;
            while at < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                    .map_err(|_| Error::Decode { op: op() })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode { op: op() });
                }
                at += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(_) => return Err(fail(e.to_io())),
                        None if !dump => return Ok(out),
                        None => {}
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        let op = || format!("looking up link {name}");
        match self.request(op, RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })),
            Err(Error::Request { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The link called `name`; an error naming it when there is none.
    pub fn require(&mut self, name: &str) -> Result<Link> {
        self.link(name)?.ok_or_else(|| Error::Request {
            op: format!("link {name}"),
            source: io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    /// Every link whose bridge is `master`.
    pub fn ports(&mut self, master: u32) -> Result<Vec<Link>> {
        let op = || "listing links".to_string();
        let msg = RouteNetlinkMessage::GetLink(LinkMessage::default());
        Ok(self
            .request(op, msg, NLM_F_DUMP)?
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })
            .filter(|l| l.master == Some(master))
            .collect())
    }

    /// Creates a bridge with a fixed MAC address (otherwise a bridge takes
    /// its lowest port's, and changes it as ports come and go).
    pub fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        let op = || format!("creating bridge {name}");
        self.request(op, RouteNetlinkMessage::NewLink(msg), create_flags())?;
        Ok(())
    }

    /// Creates a veth pair: `host` here, `peer` (with `mac`) made directly in
    /// the namespace `peer_ns`, so the peer's name never clashes here.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        mac: [u8; 6],
        peer_ns: BorrowedFd<'_>,
    ) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.into()));
        peer_msg
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.into()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        let op = || format!("creating veth pair {host} (peer {peer} in the container)");
        self.request(op, RouteNetlinkMessage::NewLink(msg), create_flags())?;
        Ok(())
    }

    /// Sets a link up, and with `master` makes it a port of that bridge
    /// (`Some(0)` releases it from its bridge).
    pub fn set_link(&mut self, link: &Link, up: bool, master: Option<u32>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        if let Some(m) = master {
            msg.attributes.push(LinkAttribute::Controller(m));
        }
        let op = || format!("setting link {} up={up} master={master:?}", link.name);
        self.request(op, RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, link: &Link, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        let op = || format!("setting the MTU of {} to {mtu}", link.name);
        self.request(op, RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    /// Deletes the link `name`; `false` when there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        let op = || format!("deleting link {name}");
        match self.request(op, RouteNetlinkMessage::DelLink(msg), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(Error::Request { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The IPv4 addresses (with prefix lengths) of a link.
    pub fn addresses(&mut self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let op = || format!("listing addresses of {}", link.name);
        Ok(self
            .request(op, RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == link.index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `ip/prefix` to a link (its broadcast address set, as `ip addr
    /// add … brd +` does).
    pub fn add_address(&mut self, link: &Link, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut msg = address(link, ip, prefix);
        let net = ipnet::Ipv4Net::new(ip, prefix).map_err(|e| Error::Request {
            op: format!("adding {ip}/{prefix}"),
            source: io::Error::other(e),
        })?;
        if prefix < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(net.broadcast()));
        }
        let op = || format!("adding address {ip}/{prefix} to {}", link.name);
        self.request(op, RouteNetlinkMessage::NewAddress(msg), create_flags())?;
        Ok(())
    }

    /// Removes `ip/prefix` from a link.
    pub fn delete_address(&mut self, link: &Link, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let msg = address(link, ip, prefix);
        let op = || format!("removing address {ip}/{prefix} from {}", link.name);
        self.request(op, RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK)?;
        Ok(())
    }

    /// Adds the default route via `gateway` on `link`.
    pub fn add_default_route(&mut self, link: &Link, gateway: Ipv4Addr) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = libc::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(link.index));
        let op = || format!("adding default route via {gateway} on {}", link.name);
        self.request(op, RouteNetlinkMessage::NewRoute(msg), create_flags())?;
        Ok(())
    }
}

/// Runs `f` on a thread that first joins the network namespace `netns`, and
/// exits with it: sockets `f` makes stay in that namespace, rt does not.
pub fn in_netns<T: Send>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send,
) -> std::result::Result<T, nix::errno::Errno> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or(Err(nix::errno::Errno::EIO))
    })
}

fn create_flags() -> u16 {
    NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
}

fn address(link: &Link, ip: Ipv4Addr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix;
    msg.header.index = link.index;
    msg.attributes
        .push(AddressAttribute::Local(std::net::IpAddr::V4(ip)));
    msg.attributes
        .push(AddressAttribute::Address(std::net::IpAddr::V4(ip)));
    msg
}

fn to_link(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: String::new(),
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    link
}
