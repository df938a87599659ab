//! Traffic control over rtnetlink: joining two links of one namespace so
//! that whatever enters one leaves by the other. This is how a microVM's
//! tap meets the network rt (or the caller) built for it: an ingress qdisc
//! on each link and a u32 match-all filter whose mirred action redirects
//! to the other's egress (Kata's "tcfilter" model). The kernels rt runs on
//! have u32 and mirred but not always matchall or flower, so u32 it is.
//!
//! When a DHCP keeper holds the lease from the namespace (bridged without
//! a subnet), two filters go before the redirect on the outer link: DHCP
//! replies (UDP to port 68) stay in the namespace for the keeper, and ARP
//! is mirrored, not redirected, so both the keeper's stack and the guest
//! resolve their neighbours.

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::{Error, Link, Netlink, Result};

/// `ffff:`, the ingress qdisc's handle (and its filters' parent).
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

/// A u32 key: `mask` and `val` of the 32-bit word at byte `off` of the
/// network header.
fn key(off: i32, mask: u32, val: u32) -> TcU32Key {
    let mut k = TcU32Key::default();
    (k.off, k.mask, k.val) = (off, mask, val);
    k
}

/// The mirred action: `redirect` takes the packet, otherwise a copy goes
/// and the packet carries on (`pipe`).
fn mirred(to: &Link, redirect: bool) -> TcAction {
    let mut generic = TcActionGeneric::default();
    generic.action = if redirect {
        TcActionType::Stolen
    } else {
        TcActionType::Pipe
    };
    let mut parms = TcMirror::default();
    parms.generic = generic;
    parms.eaction = if redirect {
        TcMirrorActionType::EgressRedir
    } else {
        TcMirrorActionType::EgressMirror
    };
    parms.ifindex = to.index;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            parms,
        ))]),
    ];
    action
}

impl Netlink {
    /// `tc qdisc add dev LINK ingress`.
    pub fn add_ingress(&mut self, link: &Link) -> Result<()> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.handle = INGRESS_HANDLE;
        msg.header.parent = TcHandle::INGRESS;
        msg.attributes = vec![
            TcAttribute::Kind("ingress".into()),
            TcAttribute::Options(Vec::new()),
        ];
        let op = || format!("adding an ingress qdisc to {}", link.name);
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.request(op, RouteNetlinkMessage::NewQueueDiscipline(msg), flags)?;
        Ok(())
    }

    /// `tc qdisc del dev LINK ingress` (its filters go with it); `false`
    /// when there was none.
    pub fn delete_ingress(&mut self, link: &Link) -> Result<bool> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.handle = INGRESS_HANDLE;
        msg.header.parent = TcHandle::INGRESS;
        let op = || format!("removing the ingress qdisc of {}", link.name);
        match self.request(op, RouteNetlinkMessage::DelQueueDiscipline(msg), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(Error::Request { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The priorities of the filters on `link`'s ingress.
    fn filter_prios(&mut self, link: &Link) -> Result<Vec<u16>> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = INGRESS_HANDLE;
        let op = || format!("listing the filters of {}", link.name);
        Ok(self
            .request(op, RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP)?
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewTrafficFilter(f) => Some((f.header.info >> 16) as u16),
                _ => None,
            })
            .collect())
    }

    /// `tc filter del dev LINK ingress prio PRIO protocol PROTOCOL`;
    /// `false` when there was none.
    fn delete_filter(&mut self, link: &Link, prio: u16, protocol: u16) -> Result<bool> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = INGRESS_HANDLE;
        msg.header.info = (u32::from(prio) << 16) | u32::from(protocol.to_be());
        let op = || format!("removing filter {prio} of {}", link.name);
        match self.request(op, RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(Error::Request { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A u32 filter on `link`'s ingress: packets of ethertype `protocol`
    /// matching every key get `action`, or with none go on to the stack.
    fn add_u32(
        &mut self,
        link: &Link,
        prio: u16,
        protocol: u16,
        keys: Vec<TcU32Key>,
        action: Option<TcAction>,
        what: &str,
    ) -> Result<()> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = INGRESS_HANDLE;
        msg.header.info = (u32::from(prio) << 16) | u32::from(protocol.to_be());
        let mut sel = TcU32Selector::default();
        // Terminal: a match ends the classification with this filter's
        // result (without it a leaf that matches falls through).
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = keys.len() as u8;
        sel.keys = keys;
        let mut options = vec![TcOption::U32(TcFilterU32Option::Selector(sel))];
        match action {
            Some(a) => options.push(TcOption::U32(TcFilterU32Option::Action(vec![a]))),
            // A class id and no action: "ok", the packet goes up the stack.
            None => options.push(TcOption::U32(TcFilterU32Option::ClassId(TcHandle {
                major: 0xffff,
                minor: 1,
            }))),
        }
        msg.attributes = vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(options),
        ];
        let op = || format!("adding a filter on {} ({what})", link.name);
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.request(op, RouteNetlinkMessage::NewTrafficFilter(msg), flags)?;
        Ok(())
    }
}

/// Joins `outer` (the namespace's interface) and `tap` both ways. With
/// `keep_dhcp`, DHCP replies to `outer` stay in the namespace and its ARP
/// is mirrored (see the module's doc).
pub fn join(nl: &mut Netlink, outer: &Link, tap: &Link, keep_dhcp: bool) -> Result<()> {
    nl.add_ingress(outer)?;
    nl.add_ingress(tap)?;
    if keep_dhcp {
        nl.add_u32(
            outer,
            1,
            ETH_P_IP,
            // The protocol byte (UDP) and the destination port (68) of an
            // IPv4 header without options.
            vec![key(8, 0x00ff_0000, 0x0011_0000), key(20, 0x0000_ffff, 68)],
            None,
            "DHCP replies stay",
        )?;
        nl.add_u32(
            outer,
            2,
            ETH_P_ARP,
            vec![key(0, 0, 0)],
            Some(mirred(tap, false)),
            "ARP is mirrored",
        )?;
    }
    let all = vec![key(0, 0, 0)];
    nl.add_u32(
        outer,
        3,
        ETH_P_ALL,
        all.clone(),
        Some(mirred(tap, true)),
        "to the tap",
    )?;
    nl.add_u32(
        tap,
        3,
        ETH_P_ALL,
        all,
        Some(mirred(outer, true)),
        "from the tap",
    )
}

/// Moves `outer`'s traffic onto `tap` (a live-migrated VM's new tap) with
/// no moment in which it reaches the namespace's own stack, which holds
/// the interface's address and would answer a SYN with a reset: the new
/// redirect goes in at whichever of priorities 2 and 3 the old one is not
/// at, then the old one is removed. The lower-numbered filter shadows the
/// other, so at every step each packet goes to one tap or the other.
/// Without redirects on `outer` yet (a restore into a new namespace) it is
/// a [`join`].
pub fn take_over(nl: &mut Netlink, outer: &Link, tap: &Link) -> Result<()> {
    let prios = nl.filter_prios(outer)?;
    let old = if prios.contains(&2) {
        2
    } else if prios.contains(&3) {
        3
    } else {
        let _ = nl.delete_ingress(outer);
        return join(nl, outer, tap, false);
    };
    let all = vec![key(0, 0, 0)];
    nl.add_ingress(tap)?;
    nl.add_u32(
        tap,
        3,
        ETH_P_ALL,
        all.clone(),
        Some(mirred(outer, true)),
        "from the tap",
    )?;
    nl.add_u32(
        outer,
        5 - old,
        ETH_P_ALL,
        all,
        Some(mirred(tap, true)),
        "to the new tap",
    )?;
    nl.delete_filter(outer, old, ETH_P_ALL).map(drop)
}

/// Undoes [`join`] on `outer` (the tap's qdisc goes with the tap).
pub fn unjoin(nl: &mut Netlink, outer: &Link) -> Result<()> {
    nl.delete_ingress(outer).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tc filter show dev DEV ingress`.
    fn ingress_filters(dev: &str) -> String {
        let out = std::process::Command::new("tc")
            .args(["filter", "show", "dev", dev, "ingress"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    use std::os::fd::AsFd;

    /// In a namespace of its own: a veth pair and a tap joined, with the
    /// DHCP filters; the kernel's own listing shows all four filters, and
    /// unjoin removes the outer link's.
    #[test]
    fn a_tap_is_joined_to_a_link_both_ways() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (a network namespace)");
            return;
        }
        let listing = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            let mut nl = Netlink::host().unwrap();
            nl.add_veth("rtto0", "rttp0", [2, 0, 0, 0, 0, 1], ns.as_fd())
                .unwrap();
            let _tap = rt_sys::open_tap("rttt0").unwrap();
            let (outer, tap) = (nl.require("rttp0").unwrap(), nl.require("rttt0").unwrap());
            join(&mut nl, &outer, &tap, true).unwrap();
            let show = ingress_filters;
            let before = (show("rttp0"), show("rttt0"));
            unjoin(&mut nl, &outer).unwrap();
            // Again: nothing there is not an error.
            unjoin(&mut nl, &outer).unwrap();
            (before, show("rttp0"))
        })
        .join()
        .unwrap();
        let ((outer, tap), after) = listing;
        assert!(
            outer.contains("protocol ip pref 1 u32")
                && outer.contains("match 00110000/00ff0000 at 8")
                && outer.contains("match 00000044/0000ffff at 20"),
            "{outer}"
        );
        assert!(
            outer.contains("protocol arp pref 2")
                && outer.contains("Egress Mirror to device rttt0"),
            "{outer}"
        );
        assert!(
            outer.contains("protocol all pref 3")
                && outer.contains("Egress Redirect to device rttt0"),
            "{outer}"
        );
        assert!(tap.contains("Egress Redirect to device rttp0"), "{tap}");
        assert!(after.trim().is_empty(), "{after}");
    }

    /// A migrated VM's tap takes the interface over, and a second move
    /// takes it back: each time the interface redirects to the new tap
    /// only, and the new tap's own redirect is in place.
    #[test]
    fn a_new_tap_takes_the_interface_over_without_a_gap() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (a network namespace)");
            return;
        }
        let shown = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            let mut nl = Netlink::host().unwrap();
            nl.add_veth("rtto1", "rttp1", [2, 0, 0, 0, 0, 2], ns.as_fd())
                .unwrap();
            let _a = rt_sys::open_tap("rtta1").unwrap();
            let _b = rt_sys::open_tap("rttb1").unwrap();
            let outer = nl.require("rttp1").unwrap();
            let (a, b) = (nl.require("rtta1").unwrap(), nl.require("rttb1").unwrap());
            let show = ingress_filters;
            // Onto an interface without redirects: a plain join.
            take_over(&mut nl, &outer, &a).unwrap();
            let first = show("rttp1");
            take_over(&mut nl, &outer, &b).unwrap();
            let second = (show("rttp1"), show("rttb1"));
            // Old filters are not re-used: the move back works too.
            let _ = nl.delete_ingress(&a);
            take_over(&mut nl, &outer, &a).unwrap();
            (first, second, show("rttp1"))
        })
        .join()
        .unwrap();
        let (first, (second, tap), third) = shown;
        assert!(first.contains("Redirect to device rtta1"), "{first}");
        assert!(
            second.contains("pref 2") && second.contains("Redirect to device rttb1"),
            "{second}"
        );
        assert!(!second.contains("rtta1"), "{second}");
        assert!(tap.contains("Redirect to device rttp1"), "{tap}");
        assert!(
            third.contains("pref 3")
                && third.contains("Redirect to device rtta1")
                && !third.contains("rttb1"),
            "{third}"
        );
    }
}
