//! The messages of the netlink layer, to and from the kernel: an `Op`, a new macvlan and a
//! link change as netlink-packet-route messages with their header flags, and the kernel's
//! answers (links, addresses, routes, the extended-ack message of a refusal) as this layer's
//! plain data. No socket and no runtime here: client.rs carries the messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use linux_raw_sys::netlink::nlmsgerr_attrs;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoMacVlan, LinkAttribute, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NetlinkBuffer, NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use rtnetlink::{LinkMacVlan, LinkUnspec};

use super::{
    broadcast_of, route_out, route_prepended, Ipv4Setting, Link, LinkChange, NewMacvlan, Op,
    RouteEntry,
};

/// The extended-ack attribute that carries the kernel's message: netlink's own, not an
/// rtnetlink one, so netlink-packet-core does not model it; linux-raw-sys has the kernel header.
const NLMSGERR_ATTR_MSG: u16 = nlmsgerr_attrs::NLMSGERR_ATTR_MSG as u16;

/// The kernel's message in an error's extended-ack attributes, which follow the echoed
/// request (only its header when the kernel capped it).
pub(super) fn ext_ack(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        std::mem::size_of::<[u32; 4]>()
    } else {
        NetlinkBuffer::new_checked(payload).ok()?.length() as usize
    };
    let attributes = payload.get(echoed.next_multiple_of(4)..)?;
    NlasIterator::new(attributes)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let value = nla.value();
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end]).into_owned()
        })
}

/// The netlink message for an op, and its header flags.
pub(super) fn message_of(op: &Op) -> (RouteNetlinkMessage, u16) {
    const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;
    const CREATE: u16 = CHANGE | NLM_F_CREATE | NLM_F_EXCL;
    match op {
        Op::AddAddress { index, addr } => (
            RouteNetlinkMessage::NewAddress(address_message(*index, *addr, true)),
            CREATE,
        ),
        Op::DelAddress { index, addr } => (
            RouteNetlinkMessage::DelAddress(address_message(*index, *addr, false)),
            CHANGE,
        ),
        Op::AddRoute { index, dst, gw } => {
            let mut message = route_message(&route_out(*index, *dst, *gw));
            message.header.protocol = RouteProtocol::Static;
            (RouteNetlinkMessage::NewRoute(message), CREATE)
        }
        Op::PrependRoute { index, dst, gw } => {
            let mut message = route_message(&route_prepended(*index, *dst, *gw));
            message.header.protocol = RouteProtocol::Boot;
            // Create without EXCL: beside routes to the same destination, ahead of them.
            (
                RouteNetlinkMessage::NewRoute(message),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            )
        }
        Op::AddRouteFrom { index, dst, src } => {
            let mut message = route_message(&route_out(*index, *dst, None));
            message.header.protocol = RouteProtocol::Static;
            message
                .attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(*src)));
            (RouteNetlinkMessage::NewRoute(message), CREATE)
        }
        Op::DelRoute(route) => (RouteNetlinkMessage::DelRoute(route_message(route)), CHANGE),
        Op::SetLink(change) => (RouteNetlinkMessage::SetLink(link_message(change)), CHANGE),
        Op::DelLink(index) => (
            RouteNetlinkMessage::DelLink(LinkUnspec::new_with_index(*index).build()),
            CHANGE,
        ),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// An address message naming the address both as local and peer, as `ip addr` does.
fn address_message(index: u32, addr: IpNetwork, with_broadcast: bool) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family_of(addr.ip());
    message.header.prefix_len = addr.prefix();
    message.header.index = index;
    message.attributes = vec![
        AddressAttribute::Local(addr.ip()),
        AddressAttribute::Address(addr.ip()),
    ];
    if let Some(brd) = broadcast_of(addr).filter(|_| with_broadcast) {
        message.attributes.push(AddressAttribute::Broadcast(brd));
    }
    message
}

fn route_message(route: &RouteEntry) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = family_of(route.dst.ip());
    message.header.destination_prefix_length = route.dst.prefix();
    // Tables above 255 only fit the attribute; the header then says "unspecified".
    message.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.header.scope = route.scope;
    message.header.kind = route.kind;
    message.attributes = vec![
        RouteAttribute::Table(route.table),
        RouteAttribute::Destination(RouteAddress::from(route.dst.network())),
    ];
    if let Some(oif) = route.oif.filter(|i| *i != 0) {
        message.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(gw) = route.gw {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    message
}

fn link_message(change: &LinkChange) -> LinkMessage {
    let mut link = LinkUnspec::new_with_index(change.index);
    if change.up {
        link = link.up();
    }
    if let Some(on) = change.multicast {
        link = link.multicast(on);
    }
    if let Some(name) = &change.name {
        link = link.name(name.clone());
    }
    if let Some(alias) = &change.alias {
        link = link.alias(alias.clone());
    }
    if !change.ipv4.is_empty() {
        let mut conf = InetDevConf::default();
        for setting in &change.ipv4 {
            match *setting {
                Ipv4Setting::RpFilter(v) => conf.rp_filter = v,
                Ipv4Setting::ArpIgnore(v) => conf.arp_ignore = v,
                Ipv4Setting::ArpNotify(v) => conf.arp_notify = v,
            }
        }
        link = link.append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(
            vec![AfSpecInet::DevConfRequest(conf)],
        )]));
    }
    link.build()
}

pub(super) fn link_of(message: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(m) = message else {
        return None;
    };
    let mut link = Link {
        index: m.header.index,
        flags: m.header.flags,
        ..Link::default()
    };
    let (mut lower, mut lower_nsid) = (None, None);
    for attribute in m.attributes {
        match attribute {
            LinkAttribute::Link(index) => lower = Some(index),
            // The index in IFLA_LINK is of another namespace's link.
            LinkAttribute::LinkNetNsId(nsid) => lower_nsid = Some(nsid),
            LinkAttribute::Controller(index) => link.controller = Some(index),
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(mac) => link.mac = mac,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind),
                        LinkInfo::Data(InfoData::MacVlan(data)) => {
                            link.macvlan_mode = data.iter().find_map(|d| match d {
                                InfoMacVlan::Mode(mode) => Some(*mode),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link.lower_here = lower.filter(|_| lower_nsid.is_none());
    link.lower_elsewhere = lower_nsid.zip(lower);
    Some(link)
}

pub(super) fn address_of(message: RouteNetlinkMessage) -> Option<(u32, IpNetwork)> {
    let RouteNetlinkMessage::NewAddress(m) = message else {
        return None;
    };
    let (mut local, mut peer) = (None, None);
    for attribute in &m.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => peer = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(peer)?;
    Some((
        m.header.index,
        IpNetwork::new(ip, m.header.prefix_len).ok()?,
    ))
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

pub(super) fn route_of(message: RouteNetlinkMessage) -> Option<RouteEntry> {
    let RouteNetlinkMessage::NewRoute(m) = message else {
        return None;
    };
    let header = &m.header;
    let mut dst = match header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let mut route = RouteEntry {
        dst: IpNetwork::new(dst, 0).ok()?,
        gw: None,
        oif: None,
        table: u32::from(header.table),
        kind: header.kind,
        scope: header.scope,
    };
    for attribute in &m.attributes {
        match attribute {
            RouteAttribute::Destination(a) => dst = ip_of(a)?,
            RouteAttribute::Gateway(a) => route.gw = ip_of(a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            _ => {}
        }
    }
    route.dst = IpNetwork::new(dst, header.destination_prefix_length).ok()?;
    Some(route)
}

/// The request that creates the macvlan `spec` describes.
pub(super) fn macvlan_message(spec: &NewMacvlan<'_>) -> LinkMessage {
    let mut link = LinkMacVlan::new(spec.name, spec.master_index, spec.mode);
    if let Some(q) = spec.bc_queue_len {
        link = link.append_info_data(InfoMacVlan::BcQueueLen(q));
    }
    if let Some(mtu) = spec.mtu {
        link = link.mtu(mtu);
    }
    if let Some(mac) = spec.mac {
        link = link.address(mac.to_vec());
    }
    if let Some(fd) = spec.target_netns {
        link = link.setns_by_fd(fd);
    }
    link.build()
}

/// An IPv6 address of a dump with its flags.
pub(super) fn address_flags_of(answer: RouteNetlinkMessage) -> Option<(IpNetwork, AddressFlags)> {
    let RouteNetlinkMessage::NewAddress(m) = &answer else {
        return None;
    };
    // IFA_FLAGS carries all 32 bits; the header's byte only the low 8.
    let flags = m
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(m.header.flags.bits().into()));
    Some((address_of(answer)?.1, flags))
}
