//! Network devices and packets made by hand: tap devices for the VM
//! backend, and a gratuitous ARP announcement after a migration.

use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use crate::{Error, Result};

/// Sends one gratuitous ARP request (an RFC 5227 announcement: sender and
/// target address both `ip`) with hardware address `mac`, broadcast out of
/// interface `ifindex` of the calling thread's network namespace, so that
/// the segment's neighbour caches take the address's (new) owner at once.
pub fn arp_announce(ifindex: u32, mac: [u8; 6], ip: [u8; 4]) -> Result<()> {
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Packet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::Syscall("socket(AF_PACKET)", e))?;
    let mut arp = [0u8; 28];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&ip);
    arp[24..28].copy_from_slice(&ip);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `arp` and `to` are live, initialised values for the whole call,
    // and the lengths passed are theirs.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            arp.as_ptr().cast(),
            arp.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("sendto(ARP announcement)", e))
}

/// Creates tap device `name` in the calling thread's network namespace
/// (TUNSETIFF, IFF_TAP | IFF_NO_PI) and returns its queue's descriptor,
/// close-on-exec. The device lives as long as the descriptor (unless
/// [`persist_tap`] is called): when the VM that holds it ends, the device
/// goes.
pub fn open_tap(name: &str) -> Result<OwnedFd> {
    // _IOW('T', 202, int)
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let tun = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| Error::Syscall("open(/dev/net/tun)", crate::fds::io_errno(&e)))?;
    let fd = OwnedFd::from(tun);
    if name.len() >= libc::IFNAMSIZ {
        return Err(Error::Syscall("TUNSETIFF", Errno::ENAMETOOLONG));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and updates) the ifreq through the pointer,
    // which points to a live, initialised value on our stack for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr) };
    Errno::result(rc).map_err(|e| Error::Syscall("ioctl(TUNSETIFF)", e))?;
    Ok(fd)
}

/// Makes the tap of `fd` outlive its descriptors: closing the last one no
/// longer unregisters the device (a synchronous, RCU-waiting step on the
/// closing process's exit path); it goes with its network namespace, in
/// the kernel's batched clean-up of that namespace.
pub fn persist_tap(fd: BorrowedFd<'_>) -> Result<()> {
    // _IOW('T', 203, int)
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    // SAFETY: TUNSETPERSIST takes its flag by value (no pointer); `fd` is
    // an open descriptor for the call's duration.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
    Errno::result(rc).map_err(|e| Error::Syscall("ioctl(TUNSETPERSIST)", e))?;
    Ok(())
}
