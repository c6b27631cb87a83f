//! Links, addresses, routes and multicast joins in one namespace, over a plain blocking
//! rtnetlink socket. A `Netlink` is bound to the namespace its socket was opened in.
//!
//! Requests that change state are `Op`s; `Netlink::apply` sends several in one datagram and
//! reads their acknowledgements together, so a step of ADD or DEL costs one round trip
//! into the kernel however many changes it makes. Messages are built and parsed with
//! netlink-packet-route; the socket is driven here, without an async runtime: a plugin
//! process lives for a few milliseconds, and a runtime costs more than the work.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ipnetwork::IpNetwork;
use netlink_packet_core::{DefaultNla, NLA_F_NESTED};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;

use crate::cni::config::MacvlanMode as ConfMode;
use crate::cni::{Error, Result};
use crate::netns::Netns;

/// Routing tables by number (linux/rtnetlink.h).
pub const TABLE_MAIN: u32 = 254;
pub const TABLE_LOCAL: u32 = 255;

/// IPv4 per-interface settings (linux/ip.h IPV4_DEVCONF_*), set over netlink rather than
/// through /proc/sys, which would need the caller inside the namespace.
pub const DEVCONF_RP_FILTER: u16 = 8;
pub const DEVCONF_ARP_NOTIFY: u16 = 22;
/// IFLA_INET_CONF (linux/if_link.h), the nest that carries them.
const IFLA_INET_CONF: u16 = 1;

/// What the plugin needs to know of a link.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub macvlan_mode: Option<MacVlanMode>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub flags: LinkFlags,
    pub alias: Option<String>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }
    pub fn is_multicast(&self) -> bool {
        self.flags.contains(LinkFlags::Multicast)
    }
    pub fn is_loopback(&self) -> bool {
        self.flags.contains(LinkFlags::Loopback)
    }
    pub fn is_macvlan(&self) -> bool {
        self.kind == Some(InfoKind::MacVlan)
    }

    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            macvlan_mode: None,
            mac: Vec::new(),
            mtu: 0,
            flags: msg.header.flags,
            alias: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => link.mac = a,
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::IfAlias(a) => link.alias = Some(a),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k),
                            LinkInfo::Data(InfoData::MacVlan(data)) => {
                                for d in data {
                                    if let InfoMacVlan::Mode(m) = d {
                                        link.macvlan_mode = Some(m);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A route as read back from the kernel (IPv4 and IPv6, main or local table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub kind: RouteType,
    pub scope: RouteScope,
}

/// The macvlan to create.
pub struct NewMacvlan<'a> {
    pub name: &'a str,
    pub master_index: u32,
    pub mode: ConfMode,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub bc_queue_len: Option<u32>,
    /// Where the link is created; `None` keeps it in the socket's namespace.
    pub target_netns: Option<RawFd>,
}

pub fn kernel_mode(mode: ConfMode) -> MacVlanMode {
    match mode {
        ConfMode::Bridge => MacVlanMode::Bridge,
        ConfMode::Private => MacVlanMode::Private,
        ConfMode::Vepa => MacVlanMode::Vepa,
        ConfMode::Passthru => MacVlanMode::Passthrough,
    }
}

/// One change to send: the message, and how its outcome reads.
pub struct Op {
    msg: RouteNetlinkMessage,
    flags: u16,
    /// Errors that mean "already so" (joining a joined group, deleting what is gone).
    already: &'static [Errno],
    what: String,
}

impl Op {
    fn new(msg: RouteNetlinkMessage, flags: u16, what: impl Into<String>) -> Op {
        Op {
            msg,
            flags: NLM_F_REQUEST | NLM_F_ACK | flags,
            already: &[],
            what: what.into(),
        }
    }

    fn already(mut self, errnos: &'static [Errno]) -> Op {
        self.already = errnos;
        self
    }

    /// Adds an address to a link.
    pub fn add_address(index: u32, addr: IpNetwork) -> Op {
        let mut msg = address_message(index, addr.ip(), addr.prefix());
        if let IpAddr::V4(ip) = addr.ip() {
            // As `ip addr add ... brd +` and the reference plugin: the subnet's broadcast.
            if addr.prefix() < 31 {
                let brd = u32::from(ip) | (u32::MAX >> addr.prefix());
                msg.attributes
                    .push(AddressAttribute::Broadcast(Ipv4Addr::from(brd)));
            }
        }
        Op::new(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add address {addr}"),
        )
    }

    pub fn del_address(index: u32, addr: IpNetwork) -> Op {
        Op::new(
            RouteNetlinkMessage::DelAddress(address_message(index, addr.ip(), addr.prefix())),
            0,
            format!("remove address {addr}"),
        )
        .already(&[Errno::EADDRNOTAVAIL, Errno::ENODEV])
    }

    /// Joins `group` on the link with a membership the kernel holds without any socket:
    /// the group as an address with IFA_F_MCAUTOJOIN. An existing join is kept.
    pub fn join_group(index: u32, group: Ipv4Addr) -> Op {
        let mut msg = address_message(index, IpAddr::V4(group), 32);
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Mcautojoin));
        Op::new(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("join multicast group {group}"),
        )
        .already(&[Errno::EEXIST])
    }

    /// Leaves a group joined with `join_group`. This must happen before the link is deleted:
    /// the kernel drops an auto-join membership only when its address is deleted, and the
    /// memberships of a namespace are limited (igmp_max_memberships), so a link deleted with
    /// the address on it leaks one, and repeated ADD/DEL in one pod end in ENOBUFS.
    pub fn leave_group(index: u32, group: Ipv4Addr) -> Op {
        Op::new(
            RouteNetlinkMessage::DelAddress(address_message(index, IpAddr::V4(group), 32)),
            0,
            format!("leave multicast group {group}"),
        )
        .already(&[Errno::EADDRNOTAVAIL, Errno::ENODEV])
    }

    /// Adds a route out `index`; without a gateway the route is link-scoped.
    /// An identical route that exists already counts as added.
    pub fn add_route(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Op {
        let msg = route_message(index, dst, gw, TABLE_MAIN, RouteProtocol::Static);
        Op::new(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add route {dst}"),
        )
        .already(&[Errno::EEXIST])
    }

    pub fn del_route(route: &RouteEntry) -> Op {
        let mut msg = route_message(
            route.oif.unwrap_or(0),
            route.dst,
            route.gw,
            route.table,
            RouteProtocol::Unspec,
        );
        msg.header.kind = route.kind;
        msg.header.scope = route.scope;
        Op::new(
            RouteNetlinkMessage::DelRoute(msg),
            0,
            format!("delete route {}", route.dst),
        )
        .already(&[Errno::ESRCH])
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub fn del_link(index: u32) -> Op {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        Op::new(RouteNetlinkMessage::DelLink(msg), 0, "delete link").already(&[Errno::ENODEV])
    }
}

/// Changes to one existing link, sent as one RTM_SETLINK.
pub struct LinkChange {
    msg: LinkMessage,
    what: Vec<&'static str>,
}

impl LinkChange {
    pub fn of(index: u32) -> LinkChange {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        LinkChange {
            msg,
            what: Vec::new(),
        }
    }

    fn flag(mut self, flag: LinkFlags, on: bool, what: &'static str) -> LinkChange {
        if on {
            self.msg.header.flags |= flag;
        } else {
            self.msg.header.flags.remove(flag);
        }
        self.msg.header.change_mask |= flag;
        self.what.push(what);
        self
    }

    pub fn up(self, on: bool) -> LinkChange {
        self.flag(LinkFlags::Up, on, if on { "set up" } else { "set down" })
    }

    pub fn multicast(self, on: bool) -> LinkChange {
        self.flag(LinkFlags::Multicast, on, "set multicast flag")
    }

    pub fn name(mut self, name: &str) -> LinkChange {
        self.msg
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        self.what.push("rename");
        self
    }

    /// Sets (or with "" clears) the interface alias, where the plugin notes what it changed.
    pub fn alias(mut self, alias: &str) -> LinkChange {
        self.msg
            .attributes
            .push(LinkAttribute::IfAlias(alias.to_owned()));
        self.what.push("set interface alias");
        self
    }

    /// Sets IPv4 per-interface settings (DEVCONF_*), as writing
    /// /proc/sys/net/ipv4/conf/<link>/<setting> would.
    pub fn ipv4_conf(mut self, settings: &[(u16, u32)]) -> LinkChange {
        if settings.is_empty() {
            return self;
        }
        let mut nest = Vec::with_capacity(settings.len() * 8);
        for (key, value) in settings {
            nest.extend_from_slice(&8u16.to_ne_bytes());
            nest.extend_from_slice(&key.to_ne_bytes());
            nest.extend_from_slice(&value.to_ne_bytes());
        }
        let conf = DefaultNla::new(IFLA_INET_CONF | NLA_F_NESTED, nest);
        self.msg
            .attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::Other(conf),
            ])]));
        self.what.push("set IPv4 interface settings");
        self
    }

    pub fn op(self) -> Op {
        let what = format!("{} of link {}", self.what.join(", "), self.msg.header.index);
        Op::new(RouteNetlinkMessage::SetLink(self.msg), 0, what)
    }
}

/// A netlink connection into one namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: Cell<u32>,
    buf: RefCell<Vec<u8>>,
}

/// Large enough for any one datagram of a dump (the kernel fills up to 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;

impl Netlink {
    /// Opens a netlink socket inside `ns`; it keeps working in that namespace from anywhere.
    pub fn connect(ns: &Netns) -> Result<Netlink> {
        let fd = ns.run(open_socket)?.map_err(|e| {
            Error::Netns(format!(
                "cannot open netlink in {}: {}",
                ns.path(),
                e.desc()
            ))
        })?;
        Ok(Netlink {
            fd,
            seq: Cell::new(0),
            buf: RefCell::new(vec![0; RECV_BUFFER]),
        })
    }

    /// The descriptor, for a process that inherits the connection.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends all `ops` in one datagram and waits for every acknowledgement. The kernel
    /// carries out each message whatever became of the ones before; the first failure (in
    /// order) is the error returned.
    pub fn apply(&self, ops: Vec<Op>) -> Result<()> {
        match self.first_failure(&ops)? {
            Some((i, errno)) => Err(Error::Netlink(format!("{}: {}", ops[i].what, errno.desc()))),
            None => Ok(()),
        }
    }

    /// The first op the kernel refused (not counting "already so"), by position.
    fn first_failure(&self, ops: &[Op]) -> Result<Option<(usize, Errno)>> {
        if ops.is_empty() {
            return Ok(None);
        }
        let first = self.seq.get() + 1;
        let messages = ops.iter().map(|op| (op.msg.clone(), op.flags));
        self.send(messages)
            .map_err(|e| Error::Netlink(format!("send to kernel: {}", e.desc())))?;
        let mut outcomes: Vec<Option<std::result::Result<(), Errno>>> = vec![None; ops.len()];
        while outcomes.iter().any(Option::is_none) {
            let replies = self
                .receive()
                .map_err(|e| Error::Netlink(format!("read from kernel: {}", e.desc())))?;
            for (seq, reply) in replies {
                let slot = seq
                    .checked_sub(first)
                    .and_then(|i| outcomes.get_mut(i as usize));
                match (slot, reply) {
                    (Some(slot), Reply::Ack) => *slot = Some(Ok(())),
                    (Some(slot), Reply::Failed(errno)) => *slot = Some(Err(errno)),
                    _ => {}
                }
            }
        }
        Ok(ops
            .iter()
            .zip(outcomes)
            .enumerate()
            .find_map(|(i, (op, outcome))| match outcome {
                Some(Err(errno)) if !op.already.contains(&errno) => Some((i, errno)),
                _ => None,
            }))
    }

    /// One request and its replies: the messages of a dump, or the one answer to a get.
    fn query(
        &self,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, Errno> {
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        self.send(std::iter::once((msg, flags)))?;
        let seq = self.seq.get();
        let mut out = Vec::new();
        loop {
            for (s, reply) in self.receive()? {
                if s != seq {
                    continue;
                }
                match reply {
                    Reply::Message(m) => out.push(m),
                    Reply::Failed(errno) => return Err(errno),
                    Reply::Ack | Reply::Done => return Ok(out),
                    Reply::Other => {}
                }
            }
        }
    }

    fn send(
        &self,
        messages: impl Iterator<Item = (RouteNetlinkMessage, u16)>,
    ) -> std::result::Result<(), Errno> {
        let mut bytes = Vec::new();
        for (payload, flags) in messages {
            let seq = self.seq.get() + 1;
            self.seq.set(seq);
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
            msg.finalize();
            let start = bytes.len();
            bytes.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut bytes[start..]);
            // Messages in one datagram start on 4-byte boundaries (NLMSG_ALIGN).
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        let sent = nix::sys::socket::send(
            self.fd.as_raw_fd(),
            &bytes,
            nix::sys::socket::MsgFlags::empty(),
        )?;
        if sent != bytes.len() {
            return Err(Errno::EMSGSIZE);
        }
        Ok(())
    }

    /// Reads one datagram and splits it into its messages, by sequence number.
    fn receive(&self) -> std::result::Result<Vec<(u32, Reply)>, Errno> {
        let mut buf = self.buf.borrow_mut();
        let len = loop {
            match nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Err(Errno::EINTR) => continue,
                other => break other?,
            }
        };
        let mut replies = Vec::new();
        let mut offset = 0;
        while offset + 16 <= len {
            let msg_len =
                u32::from_ne_bytes(buf[offset..offset + 4].try_into().unwrap_or_default()) as usize;
            if msg_len < 16 || offset + msg_len > len {
                break;
            }
            let msg =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..offset + msg_len])
                    .map_err(|_| Errno::EBADMSG)?;
            let seq = msg.header.sequence_number;
            let reply = match msg.payload {
                NetlinkPayload::InnerMessage(m) => Reply::Message(m),
                NetlinkPayload::Done(_) => Reply::Done,
                NetlinkPayload::Error(e) => match e.code {
                    None => Reply::Ack,
                    Some(code) => Reply::Failed(Errno::from_raw(code.get().abs())),
                },
                _ => Reply::Other,
            };
            replies.push((seq, reply));
            offset += msg_len.next_multiple_of(4);
        }
        Ok(replies)
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        let replies = self
            .query(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)
            .map_err(|e| Error::Netlink(format!("list links: {}", e.desc())))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.one_link(msg, &format!("look up link {name}"))
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.one_link(msg, &format!("look up link {index}"))
    }

    fn one_link(&self, msg: LinkMessage, what: &str) -> Result<Option<Link>> {
        match self.query(RouteNetlinkMessage::GetLink(msg), false) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(Errno::ENODEV) => Ok(None),
            Err(e) => Err(Error::Netlink(format!("{what}: {}", e.desc()))),
        }
    }

    /// The interface of the IPv4 default route, if there is one.
    pub fn default_route_link(&self) -> Result<Option<u32>> {
        let routes = self.routes_v4(TABLE_MAIN)?;
        Ok(routes
            .iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif))
    }

    pub fn add_macvlan(&self, spec: &NewMacvlan<'_>) -> Result<()> {
        let mut data = vec![InfoMacVlan::Mode(kernel_mode(spec.mode))];
        if let Some(q) = spec.bc_queue_len {
            data.push(InfoMacVlan::BcQueueLen(q));
        }
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(spec.name.to_owned()),
            LinkAttribute::Link(spec.master_index),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::MacVlan),
                LinkInfo::Data(InfoData::MacVlan(data)),
            ]),
        ];
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(fd) = spec.target_netns {
            msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        let op = Op::new(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "create macvlan",
        );
        match self.first_failure(std::slice::from_ref(&op))? {
            None => Ok(()),
            Some((_, Errno::EBUSY)) if spec.mode == ConfMode::Passthru => Err(Error::Netlink(
                "create macvlan: the master already has a passthru macvlan (only one is allowed)"
                    .into(),
            )),
            Some((_, Errno::EEXIST)) => Err(Error::InvalidEnvironment(format!(
                "interface {} already exists in the pod's network namespace; choose another CNI_IFNAME",
                spec.name
            ))),
            Some((_, Errno::EINVAL)) if spec.mtu.is_some() => Err(Error::InvalidConfig(format!(
                "create macvlan: the kernel refused mtu {}; it must not exceed the master's MTU",
                spec.mtu.unwrap_or_default()
            ))),
            Some((_, errno)) => Err(Error::Netlink(format!("create macvlan: {}", errno.desc()))),
        }
    }

    /// Addresses on a link (or on all links with `None`), with their flags.
    pub fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNetwork, AddressFlags)>> {
        let replies = self
            .query(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                true,
            )
            .map_err(|e| Error::Netlink(format!("list addresses: {}", e.desc())))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .filter(|m| index.is_none_or(|i| m.header.index == i))
            .filter_map(|m| {
                let mut ip = None;
                let mut flags = AddressFlags::empty();
                for a in &m.attributes {
                    match a {
                        AddressAttribute::Local(l) => ip = Some(*l),
                        AddressAttribute::Address(l) if ip.is_none() => ip = Some(*l),
                        AddressAttribute::Flags(f) => flags = *f,
                        _ => {}
                    }
                }
                let net = IpNetwork::new(ip?, m.header.prefix_len).ok()?;
                Some((m.header.index, net, flags))
            })
            .collect())
    }

    /// IPv4 routes of a table.
    pub fn routes_v4(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(AddressFamily::Inet, table)
    }

    /// IPv6 routes of a table.
    pub fn routes_v6(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(AddressFamily::Inet6, table)
    }

    fn routes(&self, family: AddressFamily, table: u32) -> Result<Vec<RouteEntry>> {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let replies = self
            .query(RouteNetlinkMessage::GetRoute(query), true)
            .map_err(|e| Error::Netlink(format!("list routes: {}", e.desc())))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => RouteEntry::from_message(r),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }
}

enum Reply {
    Message(RouteNetlinkMessage),
    Ack,
    Failed(Errno),
    Done,
    /// Noop and overrun notices: nothing to act on.
    Other,
}

fn open_socket() -> std::result::Result<OwnedFd, Errno> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        nix::libc::socket(
            nix::libc::AF_NETLINK,
            nix::libc::SOCK_RAW | nix::libc::SOCK_CLOEXEC,
            nix::libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let kernel = nix::sys::socket::NetlinkAddr::new(0, 0);
    nix::sys::socket::connect(fd.as_raw_fd(), &kernel)?;
    Ok(fd)
}

impl RouteEntry {
    fn from_message(m: RouteMessage) -> Option<RouteEntry> {
        let v4 = m.header.address_family == AddressFamily::Inet;
        let mut dst: Option<IpAddr> = None;
        let mut gw = None;
        let mut oif = None;
        let mut table = u32::from(m.header.table);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = route_addr(d),
                RouteAttribute::Gateway(g) => gw = route_addr(g),
                RouteAttribute::Oif(o) => oif = Some(*o),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        let dst = dst.unwrap_or(if v4 {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
        Some(RouteEntry {
            dst: IpNetwork::new(dst, m.header.destination_prefix_length).ok()?,
            gw,
            oif,
            table,
            kind: m.header.kind,
            scope: m.header.scope,
        })
    }
}

/// An address message naming `ip` both as local and peer address, as `ip addr` does.
fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.header.flags = AddressHeaderFlags::empty();
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    msg
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_message(
    index: u32,
    dst: IpNetwork,
    gw: Option<IpAddr>,
    table: u32,
    protocol: RouteProtocol,
) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = match dst {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = dst.prefix();
    msg.header.protocol = protocol;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if gw.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    // Tables above 255 only fit the attribute; the header then says "unspecified".
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.attributes.push(RouteAttribute::Table(table));
    msg.attributes
        .push(RouteAttribute::Destination(match dst.network() {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
    if index != 0 {
        msg.attributes.push(RouteAttribute::Oif(index));
    }
    if let Some(gw) = gw {
        msg.attributes.push(RouteAttribute::Gateway(match gw {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
    }
    msg
}
