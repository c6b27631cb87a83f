//! Whether a master is a LAN uplink: a link whose frames go to the node's LAN and nowhere
//! else. A macvlan on anything that switches or tunnels frames into another network
//! namespace (a pod's veth or netkit, a cluster bridge such as flannel's and k3s' `cni0`,
//! an overlay such as `flannel.1` or `vxlan.calico`) gives the pod layer-2 access to the
//! pods behind it. The rule is a list of what is known to be an uplink; anything else needs
//! the node policy's word.
//!
//! Known uplinks:
//! - a NIC (a device with no kind);
//! - a bridge whose ports are NICs, taps (the node's VMs) or uplinks stacked on NICs;
//! - a VLAN, macvlan or ipvlan on an uplink, a bond or team of uplinks;
//! - a veth whose peer is in the node's namespace and a port of nothing (its frames end in
//!   the node's own stack);
//! - a veth whose peer is a port of a bridge in another namespace, while the node routes no
//!   other host's address through it: the node is itself a container or VM on a host bridge
//!   (and the LANs of this project's tests). A pod's end of a veth looks the same once the pod
//!   bridges its own `eth0` (KubeVirt's bridge binding does), but the pod cannot take away
//!   the route the node keeps for the pod's address through the host end (Calico, Cilium's
//!   legacy routing, the ptp plugin): that route, in the node's own tables, tells the two apart.

use ipnetwork::IpNetwork;
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::route::RouteType;

use crate::sys::netlink::{Family, Link, Rtnl};

/// How deep links may be stacked (a VLAN on a bond on a NIC is two) before the rule gives up
/// and refuses.
const MAX_DEPTH: usize = 4;

/// Why `link` is not known to be a LAN uplink, or `None` when it is one. Whatever cannot be
/// read counts against it: refusing is the safe side.
pub fn why_not_uplink(nl: &dyn Rtnl, link: &Link) -> Option<String> {
    let links = match nl.links() {
        Ok(links) => links,
        Err(e) => return Some(format!("the node's links cannot be listed ({e})")),
    };
    Judge { nl, links: &links }.why_not(link, 0)
}

struct Judge<'a> {
    nl: &'a dyn Rtnl,
    links: &'a [Link],
}

impl Judge<'_> {
    fn by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    fn ports_of(&self, controller: u32) -> impl Iterator<Item = &Link> {
        self.links
            .iter()
            .filter(move |l| l.controller == Some(controller))
    }

    fn why_not(&self, link: &Link, depth: usize) -> Option<String> {
        if let Some(bridge) = link
            .controller
            .and_then(|c| self.by_index(c))
            .filter(|c| c.kind == Some(InfoKind::Bridge))
        {
            return Some(format!(
                "{} is a port of bridge {}, which switches frames between all its ports",
                link.name, bridge.name
            ));
        }
        self.why_not_by_kind(link, depth)
    }

    /// The rule for `link`'s kind alone (a bridge's ports are judged by it too).
    fn why_not_by_kind(&self, link: &Link, depth: usize) -> Option<String> {
        if depth > MAX_DEPTH {
            return Some(format!(
                "{} is stacked too deep to tell where its frames go",
                link.name
            ));
        }
        let Some(kind) = &link.kind else {
            return link
                .is_loopback()
                .then(|| format!("{} is the loopback", link.name));
        };
        match kind {
            InfoKind::Bridge => self.ports_of(link.index).find_map(|port| {
                if port.kind == Some(InfoKind::Tun) {
                    return None;
                }
                self.why_not_by_kind(port, depth + 1).map(|why| {
                    format!("{} is a bridge with port {}: {why}", link.name, port.name)
                })
            }),
            InfoKind::Bond | InfoKind::Team => self
                .ports_of(link.index)
                .find_map(|port| self.why_not_by_kind(port, depth + 1)),
            InfoKind::Vlan
            | InfoKind::MacVlan
            | InfoKind::MacVtap
            | InfoKind::IpVlan
            | InfoKind::IpVtap => match link.lower_here.and_then(|l| self.by_index(l)) {
                Some(lower) => self.why_not(lower, depth + 1),
                None => Some(format!(
                    "{} is a {kind} device whose lower link is not in this namespace",
                    link.name
                )),
            },
            InfoKind::Veth => self.why_not_veth(link),
            InfoKind::Netkit => Some(format!(
                "{} is a netkit pair device (Cilium's link into a pod)",
                link.name
            )),
            k if is_tunnel(k) => Some(format!(
                "{} is an overlay or tunnel device ({k}): it carries frames to other nodes and their pods",
                link.name
            )),
            k => Some(format!(
                "{} is a {k} device, not known to be a LAN uplink",
                link.name
            )),
        }
    }

    /// A veth is an uplink only when its peer is a port of a bridge in another namespace
    /// and the node routes no other host's address through it (the module's comment).
    fn why_not_veth(&self, veth: &Link) -> Option<String> {
        let Some((nsid, peer_index)) = veth.lower_elsewhere else {
            // A pair within the node's namespace ends in the node's own stack, unless its
            // other end is a port of something that passes the frames on.
            let peer = veth.lower_here.and_then(|p| self.by_index(p));
            return match peer {
                Some(peer) => peer.controller.and_then(|c| self.by_index(c)).map(|c| {
                    format!(
                        "{} is a veth whose peer {} is a port of {}, which passes its frames on",
                        veth.name, peer.name, c.name
                    )
                }),
                None => Some(format!(
                    "{} is a veth whose peer cannot be found",
                    veth.name
                )),
            };
        };
        let peer = match self.nl.link_elsewhere(nsid, peer_index) {
            Ok(Some(peer)) => peer,
            Ok(None) => {
                return Some(format!(
                    "{} is a veth whose peer in another network namespace cannot be found",
                    veth.name
                ))
            }
            Err(e) => {
                return Some(format!(
                    "{} is a veth whose peer in another network namespace cannot be read ({e})",
                    veth.name
                ))
            }
        };
        let bridged = peer
            .controller
            .and_then(|c| self.nl.link_elsewhere(nsid, c).ok().flatten())
            .is_some_and(|c| c.kind == Some(InfoKind::Bridge));
        if !bridged {
            return Some(format!(
                "{} is a veth whose peer ({}) lives in another network namespace and is no bridge port there: another pod's interface",
                veth.name, peer.name
            ));
        }
        self.pod_route(veth).map(|dst| {
            format!(
                "{} is a veth into another network namespace, and the node routes {dst} through it as a cluster network routes a pod's address: another pod's interface, even though the pod bridges its end",
                veth.name
            )
        })
    }

    /// A host route without a gateway through `link` to an address that is not its own: the
    /// route a cluster network keeps for a pod behind the link. Unreadable routes count as one.
    fn pod_route(&self, link: &Link) -> Option<String> {
        let own = match self.nl.addresses(Some(link.index)) {
            Ok(own) => own,
            Err(e) => return Some(format!("an address (its addresses cannot be read: {e})")),
        };
        for family in [Family::V4, Family::V6] {
            let routes = match self.nl.routes_through(family, link.index) {
                Ok(routes) => routes,
                Err(e) => return Some(format!("an address (its routes cannot be read: {e})")),
            };
            let pod = routes.into_iter().find(|r| {
                r.gw.is_none()
                    && r.kind == RouteType::Unicast
                    && is_host_route(&r.dst)
                    && !is_link_scoped(&r.dst)
                    && !own.iter().any(|(_, a)| a.ip() == r.dst.ip())
            });
            if let Some(r) = pod {
                return Some(r.dst.to_string());
            }
        }
        None
    }
}

fn is_host_route(dst: &IpNetwork) -> bool {
    dst.prefix() == if dst.is_ipv4() { 32 } else { 128 }
}

/// IPv6 link-local and multicast destinations: every IPv6 interface has routes for them.
pub fn is_link_scoped(dst: &IpNetwork) -> bool {
    match dst {
        IpNetwork::V6(v6) => {
            let first = v6.ip().segments()[0];
            first & 0xffc0 == 0xfe80 || first & 0xff00 == 0xff00
        }
        IpNetwork::V4(_) => false,
    }
}

/// Devices that carry frames to other hosts inside another protocol.
fn is_tunnel(kind: &InfoKind) -> bool {
    matches!(
        kind,
        InfoKind::Vxlan
            | InfoKind::Geneve
            | InfoKind::GreTap
            | InfoKind::GreTap6
            | InfoKind::GreTun
            | InfoKind::GreTun6
            | InfoKind::IpIp
            | InfoKind::Ip6Tnl
            | InfoKind::SitTun
            | InfoKind::Vti
            | InfoKind::Vti6
            | InfoKind::Wireguard
            | InfoKind::Xfrm
            | InfoKind::BareUdp
            | InfoKind::Gtp
            | InfoKind::ErSpan
            | InfoKind::Ip6ErSpan
            | InfoKind::Amt
            | InfoKind::Pfcp
    )
}
