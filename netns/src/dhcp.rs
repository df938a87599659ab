//! A DHCPv4 client for bridged containers (RFC 2131): lease, renew, release.
//!
//! It talks through a UDP socket on port 68 made inside the container's
//! namespace and bound to its `eth0`. Before the container has an address,
//! messages go out as broadcasts and ask the server to broadcast its replies
//! (the BROADCAST flag), which the socket then receives; renewals and the
//! release go to the server directly. Messages are encoded by `dhcproto`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use serde::{Deserialize, Serialize};

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// Errors of the DHCP client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("making the DHCP socket on {ifname}")]
    Socket {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering the container's network namespace")]
    Setns(#[source] nix::errno::Errno),
    #[error("sending a DHCP {0:?}")]
    Send(MessageType, #[source] std::io::Error),
    #[error("encoding a DHCP message: {0}")]
    Encode(String),
    #[error("no DHCP server answered on {ifname} within {secs} s")]
    Timeout { ifname: String, secs: u64 },
    #[error("the DHCP server {0} refused the lease (DHCPNAK)")]
    Nak(Ipv4Addr),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A lease, as kept in the container's network record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    /// Seconds, from when it was granted.
    pub lease: u32,
    pub t1: u32,
    pub t2: u32,
}

/// A client on one interface.
#[derive(Debug)]
pub struct Client {
    socket: UdpSocket,
    ifname: String,
    mac: [u8; 6],
}

impl Client {
    /// A client on `ifname` of the namespace `netns`.
    pub fn in_netns(netns: BorrowedFd<'_>, ifname: &str, mac: [u8; 6]) -> Result<Client> {
        let socket = crate::netlink::in_netns(netns, || bind(ifname)).map_err(Error::Setns)??;
        Ok(Client {
            socket,
            ifname: ifname.into(),
            mac,
        })
    }

    /// A client on `ifname` of the namespace the process is in.
    pub fn here(ifname: &str, mac: [u8; 6]) -> Result<Client> {
        Ok(Client {
            socket: bind(ifname)?,
            ifname: ifname.into(),
            mac,
        })
    }

    /// DISCOVER, OFFER, REQUEST, ACK, retrying until `within` has passed.
    pub fn acquire(&self, within: Duration) -> Result<Lease> {
        let deadline = Instant::now() + within;
        let mut wait = Duration::from_secs(1);
        while Instant::now() < deadline {
            let xid = xid();
            let discover = self.message(xid, MessageType::Discover, Ipv4Addr::UNSPECIFIED, true);
            self.send(&discover, Ipv4Addr::BROADCAST)?;
            let Some(offer) = self.receive(xid, &[MessageType::Offer], wait)? else {
                wait = (wait * 2).min(Duration::from_secs(4));
                continue;
            };
            let Some(server) = server_id(&offer) else {
                continue;
            };
            let mut request = self.message(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
            request
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            request
                .opts_mut()
                .insert(DhcpOption::ServerIdentifier(server));
            self.send(&request, Ipv4Addr::BROADCAST)?;
            match self.receive(xid, &[MessageType::Ack, MessageType::Nak], wait)? {
                Some(m) if m.opts().msg_type() == Some(MessageType::Ack) => {
                    return Ok(lease(&m, server))
                }
                _ => continue,
            }
        }
        Err(Error::Timeout {
            ifname: self.ifname.clone(),
            secs: within.as_secs(),
        })
    }

    /// Renews `current` with its server (RENEWING: unicast, `ciaddr` set);
    /// with `rebind`, with any server (REBINDING: broadcast).
    pub fn renew(&self, current: &Lease, rebind: bool, within: Duration) -> Result<Lease> {
        let xid = xid();
        let request = self.message(xid, MessageType::Request, current.ip, false);
        let to = if rebind {
            Ipv4Addr::BROADCAST
        } else {
            current.server
        };
        self.send(&request, to)?;
        match self.receive(xid, &[MessageType::Ack, MessageType::Nak], within)? {
            Some(m) if m.opts().msg_type() == Some(MessageType::Ack) => {
                Ok(lease(&m, server_id(&m).unwrap_or(current.server)))
            }
            Some(_) => Err(Error::Nak(current.server)),
            None => Err(Error::Timeout {
                ifname: self.ifname.clone(),
                secs: within.as_secs(),
            }),
        }
    }

    /// Gives the lease back (no reply is expected).
    pub fn release(&self, lease: &Lease) -> Result<()> {
        let mut msg = self.message(xid(), MessageType::Release, lease.ip, false);
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        self.send(&msg, lease.server)
    }

    fn message(&self, xid: u32, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let zero = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(xid, ciaddr, zero, zero, zero, &self.mac);
        if broadcast {
            msg.set_flags(Flags::default().set_broadcast());
        }
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1];
        id.extend_from_slice(&self.mac);
        opts.insert(DhcpOption::ClientIdentifier(id));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        msg
    }

    fn send(&self, msg: &Message, to: Ipv4Addr) -> Result<()> {
        let kind = msg.opts().msg_type().unwrap_or(MessageType::Discover);
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf))
            .map_err(|e| Error::Encode(e.to_string()))?;
        self.socket
            .send_to(&buf, SocketAddrV4::new(to, SERVER_PORT))
            .map_err(|e| Error::Send(kind, e))?;
        Ok(())
    }

    /// The next reply to `xid` of one of the `kinds`, within `wait`.
    fn receive(&self, xid: u32, kinds: &[MessageType], wait: Duration) -> Result<Option<Message>> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = self.socket.set_read_timeout(Some(left));
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(Error::Socket {
                        ifname: self.ifname.clone(),
                        source: e,
                    })
                }
            };
            let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            let ours = m.opcode() == Opcode::BootReply
                && m.xid() == xid
                && m.chaddr().get(..6) == Some(&self.mac[..]);
            if ours && m.opts().msg_type().is_some_and(|t| kinds.contains(&t)) {
                return Ok(Some(m));
            }
        }
    }
}

/// A UDP socket on port 68 of `ifname`, able to broadcast.
fn bind(ifname: &str) -> Result<UdpSocket> {
    let fail = |source| Error::Socket {
        ifname: ifname.into(),
        source,
    };
    let socket =
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)).map_err(fail)?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )
    .map_err(|e| fail(e.into()))?;
    socket.set_broadcast(true).map_err(fail)?;
    Ok(socket)
}

fn xid() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// The lease an ACK grants, with RFC 2131's defaults for T1 and T2.
fn lease(m: &Message, server: Ipv4Addr) -> Lease {
    let opts = m.opts();
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).count_ones() as u8,
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => *s,
        _ => 3600,
    };
    let t1 = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(s)) => *s,
        _ => secs / 2,
    };
    let t2 = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(s)) => *s,
        _ => secs / 8 * 7,
    };
    Lease {
        ip: m.yiaddr(),
        prefix,
        router,
        server,
        dns,
        lease: secs,
        t1,
        t2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_becomes_a_lease_with_default_timers() {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(198, 51, 100, 50),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        m.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        m.opts_mut()
            .insert(DhcpOption::Router(vec![Ipv4Addr::new(198, 51, 100, 1)]));
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(120));
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        let back = Message::decode(&mut Decoder::new(&buf)).unwrap();
        let l = lease(&back, Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(l.ip, Ipv4Addr::new(198, 51, 100, 50));
        assert_eq!((l.prefix, l.lease, l.t1, l.t2), (24, 120, 60, 105));
        assert_eq!(l.router, Some(Ipv4Addr::new(198, 51, 100, 1)));
    }
}
