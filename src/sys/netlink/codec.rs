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

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoKind, LinkFlags, LinkHeader, MacVlanMode};
    use netlink_packet_route::route::{RouteScope, RouteType};

    use crate::sys::netlink::{TABLE_LOCAL, TABLE_MAIN};

    const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;
    const CREATE: u16 = CHANGE | NLM_F_CREATE | NLM_F_EXCL;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn address(op: Op) -> (AddressMessage, u16, bool) {
        match message_of(&op) {
            (RouteNetlinkMessage::NewAddress(m), flags) => (m, flags, true),
            (RouteNetlinkMessage::DelAddress(m), flags) => (m, flags, false),
            other => panic!("{other:?}"),
        }
    }

    fn route(op: Op) -> (RouteMessage, u16, bool) {
        match message_of(&op) {
            (RouteNetlinkMessage::NewRoute(m), flags) => (m, flags, true),
            (RouteNetlinkMessage::DelRoute(m), flags) => (m, flags, false),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_address_is_sent_as_local_and_peer_with_the_subnet_broadcast() {
        let (m, flags, new) = address(Op::add_address(7, net("198.51.100.9/24")));
        assert!(new);
        assert_eq!(flags, CREATE, "an address that exists is refused (EEXIST)");
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert_eq!((m.header.index, m.header.prefix_len), (7, 24));
        let ip = IpAddr::V4(v4("198.51.100.9"));
        assert_eq!(
            m.attributes,
            vec![
                AddressAttribute::Local(ip),
                AddressAttribute::Address(ip),
                AddressAttribute::Broadcast(v4("198.51.100.255")),
            ]
        );

        // No broadcast for a /31 or /32, nor for IPv6, nor on removal.
        for (op, family) in [
            (
                Op::add_address(7, net("198.51.100.8/31")),
                AddressFamily::Inet,
            ),
            (
                Op::add_address(7, net("2001:db8::9/64")),
                AddressFamily::Inet6,
            ),
            (
                Op::del_address(7, net("198.51.100.9/24")),
                AddressFamily::Inet,
            ),
        ] {
            let (m, _, _) = address(op.clone());
            assert_eq!(m.header.family, family, "{op:?}");
            assert_eq!(m.attributes.len(), 2, "{op:?}: {:?}", m.attributes);
        }
        let (_, flags, new) = address(Op::del_address(7, net("198.51.100.9/24")));
        assert_eq!((flags, new), (CHANGE, false));
    }

    #[test]
    fn routes_carry_table_scope_protocol_and_the_masked_destination() {
        // A link-scoped route, its destination as the network address.
        let (m, flags, new) = route(Op::add_route(4, net("224.1.2.3/4"), None));
        assert!(new);
        assert_eq!(flags, CREATE);
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 4);
        assert_eq!(u32::from(m.header.table), TABLE_MAIN);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.protocol, RouteProtocol::Static);
        assert_eq!(
            m.attributes,
            vec![
                RouteAttribute::Table(TABLE_MAIN),
                RouteAttribute::Destination(RouteAddress::Inet(v4("224.0.0.0"))),
                RouteAttribute::Oif(4),
            ]
        );

        // Through a gateway: scope universe.
        let gw = IpAddr::V4(v4("198.51.100.1"));
        let (m, _, _) = route(Op::add_route(4, net("203.0.113.0/24"), Some(gw)));
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(m
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(v4(
                "198.51.100.1"
            )))));

        // Prepended as IPAM's routes are: protocol boot, no EXCL, scope universe.
        let (m, flags, _) = route(Op::prepend_route(4, net("0.0.0.0/0"), None));
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(m.header.protocol, RouteProtocol::Boot);
        assert_eq!(m.header.scope, RouteScope::Universe);

        // With a preferred source.
        let src = IpAddr::V4(v4("198.51.100.3"));
        let (m, _, _) = route(Op::add_route_from(9, net("198.51.100.160/27"), src));
        assert!(m
            .attributes
            .contains(&RouteAttribute::PrefSource(RouteAddress::Inet(v4(
                "198.51.100.3"
            )))));

        // A table above 255 fits the attribute only; no interface, no Oif.
        let entry = RouteEntry {
            dst: net("2001:db8::/32"),
            gw: None,
            oif: None,
            table: 1000,
            kind: RouteType::Unicast,
            scope: RouteScope::Universe,
        };
        let (m, flags, new) = route(Op::del_route(&entry));
        assert_eq!((flags, new), (CHANGE, false));
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(_))));
    }

    #[test]
    fn a_link_change_sets_only_the_flags_it_names() {
        let change = LinkChange::of(5)
            .up()
            .multicast(false)
            .name("net1")
            .alias("ros-macvlan:x")
            .ipv4_conf(&[Ipv4Setting::RpFilter(2), Ipv4Setting::ArpNotify(1)]);
        let (RouteNetlinkMessage::SetLink(m), flags) = message_of(&change.op()) else {
            panic!("SetLink")
        };
        assert_eq!(flags, CHANGE);
        assert_eq!(m.header.index, 5);
        assert_eq!(m.header.change_mask, LinkFlags::Up | LinkFlags::Multicast);
        assert_eq!(m.header.flags, LinkFlags::Up, "up, multicast off");
        assert!(m.attributes.contains(&LinkAttribute::IfName("net1".into())));
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfAlias("ros-macvlan:x".into())));
        let conf = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(|s| match s {
                    AfSpecUnspec::Inet(inet) => inet.iter().find_map(|i| match i {
                        AfSpecInet::DevConfRequest(conf) => Some(*conf),
                        _ => None,
                    }),
                    _ => None,
                }),
                _ => None,
            })
            .expect("the IPv4 settings");
        assert_eq!((conf.rp_filter, conf.arp_notify), (2, 1));

        // Only the alias: no flag changes, no IPv4 settings.
        let link = link_message(&LinkChange::of(5).alias(""));
        assert_eq!(link.header.change_mask, LinkFlags::empty());
        assert_eq!(link.attributes, vec![LinkAttribute::IfAlias(String::new())]);

        let (RouteNetlinkMessage::DelLink(m), flags) = message_of(&Op::del_link(5)) else {
            panic!("DelLink")
        };
        assert_eq!((m.header.index, flags), (5, CHANGE));
    }

    #[test]
    fn a_new_macvlan_names_master_mode_and_what_the_spec_sets() {
        let spec = NewMacvlan {
            name: "net1",
            master_index: 2,
            mode: MacVlanMode::Bridge,
            mtu: Some(1400),
            mac: Some([2, 0, 0, 0, 0, 9]),
            bc_queue_len: Some(100),
            target_netns: Some(42),
        };
        let m = macvlan_message(&spec);
        for wanted in [
            LinkAttribute::IfName("net1".into()),
            LinkAttribute::Link(2),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
            LinkAttribute::NetNsFd(42),
        ] {
            assert!(
                m.attributes.contains(&wanted),
                "{wanted:?} in {:?}",
                m.attributes
            );
        }
        let info = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(info) => Some(info.clone()),
                _ => None,
            })
            .expect("link info");
        assert!(info.contains(&LinkInfo::Kind(InfoKind::MacVlan)));
        let Some(LinkInfo::Data(InfoData::MacVlan(data))) =
            info.iter().find(|i| matches!(i, LinkInfo::Data(_)))
        else {
            panic!("macvlan data in {info:?}")
        };
        assert!(data.contains(&InfoMacVlan::Mode(MacVlanMode::Bridge)));
        assert!(data.contains(&InfoMacVlan::BcQueueLen(100)));

        // Unset: none of them.
        let plain = macvlan_message(&NewMacvlan {
            mtu: None,
            mac: None,
            bc_queue_len: None,
            target_netns: None,
            ..spec
        });
        assert!(!plain.attributes.iter().any(|a| matches!(
            a,
            LinkAttribute::Mtu(_) | LinkAttribute::Address(_) | LinkAttribute::NetNsFd(_)
        )));
    }

    fn link_answer(attributes: Vec<LinkAttribute>) -> RouteNetlinkMessage {
        let mut m = LinkMessage::default();
        m.header = LinkHeader {
            index: 6,
            flags: LinkFlags::Up | LinkFlags::Multicast,
            ..LinkHeader::default()
        };
        m.attributes = attributes;
        RouteNetlinkMessage::NewLink(m)
    }

    #[test]
    fn links_are_read_with_kind_mode_and_where_their_lower_link_lives() {
        let link = link_of(link_answer(vec![
            LinkAttribute::IfName("net1".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 6]),
            LinkAttribute::Mtu(1500),
            LinkAttribute::IfAlias("note".into()),
            LinkAttribute::Link(3),
            LinkAttribute::Controller(9),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::MacVlan),
                LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                    MacVlanMode::Private,
                )])),
            ]),
        ]))
        .unwrap();
        assert_eq!(
            link,
            Link {
                index: 6,
                name: "net1".into(),
                kind: Some(InfoKind::MacVlan),
                macvlan_mode: Some(MacVlanMode::Private),
                mac: vec![2, 0, 0, 0, 0, 6],
                mtu: 1500,
                flags: LinkFlags::Up | LinkFlags::Multicast,
                alias: Some("note".into()),
                lower_here: Some(3),
                lower_elsewhere: None,
                controller: Some(9),
            }
        );

        // IFLA_LINK with IFLA_LINK_NETNSID: the index is of another namespace's link.
        let veth = link_of(link_answer(vec![
            LinkAttribute::Link(11),
            LinkAttribute::LinkNetNsId(2),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ]))
        .unwrap();
        assert_eq!(
            (veth.lower_here, veth.lower_elsewhere),
            (None, Some((2, 11)))
        );
        assert_eq!(veth.macvlan_mode, None);

        assert_eq!(
            link_of(RouteNetlinkMessage::DelLink(LinkMessage::default())),
            None
        );
    }

    fn address_answer(prefix: u8, attributes: Vec<AddressAttribute>) -> RouteNetlinkMessage {
        let mut m = AddressMessage::default();
        m.header.index = 4;
        m.header.prefix_len = prefix;
        m.attributes = attributes;
        RouteNetlinkMessage::NewAddress(m)
    }

    #[test]
    fn an_address_is_its_local_one_else_its_peer() {
        let (local, peer) = (IpAddr::V4(v4("10.0.0.1")), IpAddr::V4(v4("10.0.0.2")));
        let both = address_answer(
            32,
            vec![
                AddressAttribute::Address(peer),
                AddressAttribute::Local(local),
            ],
        );
        assert_eq!(address_of(both), Some((4, net("10.0.0.1/32"))));
        let only_peer = address_answer(24, vec![AddressAttribute::Address(peer)]);
        assert_eq!(address_of(only_peer), Some((4, net("10.0.0.2/24"))));
        assert_eq!(address_of(address_answer(24, vec![])), None);
        // A prefix longer than the family allows is no address.
        assert_eq!(
            address_of(address_answer(33, vec![AddressAttribute::Local(local)])),
            None
        );
        let removed = RouteNetlinkMessage::DelAddress(AddressMessage::default());
        assert_eq!(address_of(removed), None);
    }

    #[test]
    fn ipv6_flags_come_from_the_attribute_else_the_header() {
        let ip = IpAddr::V6("2001:db8::9".parse().unwrap());
        let mut answer = address_answer(
            64,
            vec![
                AddressAttribute::Local(ip),
                AddressAttribute::Flags(AddressFlags::Tentative | AddressFlags::Managetempaddr),
            ],
        );
        assert_eq!(
            address_flags_of(answer.clone()),
            Some((
                net("2001:db8::9/64"),
                AddressFlags::Tentative | AddressFlags::Managetempaddr
            ))
        );
        if let RouteNetlinkMessage::NewAddress(m) = &mut answer {
            m.attributes.pop();
            m.header.flags = netlink_packet_route::address::AddressHeaderFlags::Dadfailed;
        }
        assert_eq!(
            address_flags_of(answer),
            Some((net("2001:db8::9/64"), AddressFlags::Dadfailed))
        );
    }

    fn route_answer(
        family: AddressFamily,
        prefix: u8,
        attributes: Vec<RouteAttribute>,
    ) -> RouteNetlinkMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        m.header.destination_prefix_length = prefix;
        m.header.table = TABLE_MAIN as u8;
        m.header.kind = RouteType::Unicast;
        m.header.scope = RouteScope::Link;
        m.attributes = attributes;
        RouteNetlinkMessage::NewRoute(m)
    }

    #[test]
    fn routes_are_read_with_their_table_and_a_default_destination() {
        let r = route_of(route_answer(
            AddressFamily::Inet,
            4,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(v4("224.0.0.0"))),
                RouteAttribute::Oif(4),
            ],
        ))
        .unwrap();
        assert_eq!(r, route_out(4, net("224.0.0.0/4"), None));

        // No destination: the default route of its family; the table attribute wins.
        let r = route_of(route_answer(
            AddressFamily::Inet6,
            0,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet6("fe80::1".parse().unwrap())),
                RouteAttribute::Table(1000),
            ],
        ))
        .unwrap();
        assert_eq!(r.dst, net("::/0"));
        assert_eq!(r.gw, Some("fe80::1".parse().unwrap()));
        assert_eq!((r.oif, r.table), (None, 1000));
        let r = route_of(route_answer(AddressFamily::Inet, 0, vec![])).unwrap();
        assert_eq!(r.dst, net("0.0.0.0/0"));

        let mut local = route_answer(AddressFamily::Inet, 32, vec![]);
        if let RouteNetlinkMessage::NewRoute(m) = &mut local {
            m.header.table = TABLE_LOCAL as u8;
            m.header.kind = RouteType::Local;
        }
        let r = route_of(local).unwrap();
        assert_eq!((r.table, r.kind), (TABLE_LOCAL, RouteType::Local));

        assert_eq!(
            route_of(RouteNetlinkMessage::DelRoute(RouteMessage::default())),
            None
        );
    }

    /// An error's payload as the kernel sends it: the echoed request (its header, with a
    /// `body` unless capped), padded to 4 bytes, then the extended-ack attributes.
    fn error_payload(body: &[u8], capped: bool, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let length = 16 + body.len() as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&length.to_ne_bytes());
        out.extend_from_slice(&[0; 12]); // type, flags, sequence, port
        if !capped {
            out.extend_from_slice(body);
        }
        out.resize(out.len().next_multiple_of(4), 0);
        for (kind, value) in attributes {
            out.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(value);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    #[test]
    fn the_kernels_message_is_read_from_the_extended_ack() {
        let msg: &[u8] = b"Invalid MTU\0";
        // NLMSGERR_ATTR_OFFS (2) beside the message, which is attribute 1.
        let attributes: &[(u16, &[u8])] = &[(2, &[0, 0, 0, 0]), (NLMSGERR_ATTR_MSG, msg)];
        let body = [1u8, 2, 3, 4, 5, 6];
        let tlvs = NLM_F_ACK_TLVS;
        assert_eq!(
            ext_ack(tlvs, &error_payload(&body, false, attributes)).as_deref(),
            Some("Invalid MTU"),
            "after the whole echoed request, padded"
        );
        assert_eq!(
            ext_ack(tlvs | NLM_F_CAPPED, &error_payload(&body, true, attributes)).as_deref(),
            Some("Invalid MTU"),
            "after the echoed header only"
        );
        assert_eq!(
            ext_ack(0, &error_payload(&body, false, attributes)),
            None,
            "no attributes without NLM_F_ACK_TLVS"
        );
        assert_eq!(
            ext_ack(tlvs, &error_payload(&body, false, &[(2, &[0, 0, 0, 0])])),
            None,
            "no message attribute"
        );
        // A message without its NUL, and a payload cut short, are read as far as they go.
        assert_eq!(
            ext_ack(
                tlvs,
                &error_payload(&[], false, &[(NLMSGERR_ATTR_MSG, b"no nul")])
            )
            .as_deref(),
            Some("no nul")
        );
        assert_eq!(ext_ack(tlvs, &[0; 3]), None);
    }
}
