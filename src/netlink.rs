//! Typed helpers over rtnetlink: links, addresses, routes and multicast joins in one
//! namespace. A `Netlink` is bound to the namespace its socket was opened in.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use nix::errno::Errno;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, RouteMessageBuilder};

use crate::cni::config::MacvlanMode as ConfMode;
use crate::cni::{Error, Result};
use crate::netns::Netns;

/// Routing tables by number (linux/rtnetlink.h).
pub const TABLE_MAIN: u32 = 254;
pub const TABLE_LOCAL: u32 = 255;

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

/// The errno behind a failed netlink request, if the kernel sent one.
pub fn errno_of(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(Errno::from_raw(msg.raw_code().abs())),
        _ => None,
    }
}

fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| match errno_of(&e) {
        Some(errno) => Error::Netlink(format!("{what}: {}", errno.desc())),
        None => Error::Netlink(format!("{what}: {e}")),
    }
}

/// A netlink connection into one namespace.
pub struct Netlink {
    handle: Handle,
}

/// The macvlan to create (always under a temporary name, renamed later).
pub struct NewMacvlan<'a> {
    pub temp_name: &'a str,
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

impl Netlink {
    /// Opens a netlink socket inside `ns` and drives it from the current tokio runtime.
    pub fn connect(ns: &Netns) -> Result<Netlink> {
        let socket = ns
            .run(|| Socket::new(NETLINK_ROUTE))?
            .map_err(|e| Error::Netns(format!("cannot open netlink in {}: {e}", ns.path())))?;
        // SAFETY: the descriptor was just created and is owned by nothing else.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(Link::from_message)
            .try_collect()
            .await
            .map_err(nl_err("list links"))
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(link) => Ok(link.map(Link::from_message)),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("look up link {name}"))(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(link) => Ok(link.map(Link::from_message)),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("look up link {index}"))(e)),
        }
    }

    /// The interface of the IPv4 default route, if there is one.
    pub async fn default_route_link(&self) -> Result<Option<u32>> {
        let routes = self.routes_v4(TABLE_MAIN).await?;
        Ok(routes
            .iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif))
    }

    pub async fn add_macvlan(&self, spec: &NewMacvlan<'_>) -> Result<()> {
        let mut builder =
            LinkMacVlan::new(spec.temp_name, spec.master_index, kernel_mode(spec.mode));
        if let Some(mtu) = spec.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = spec.mac {
            builder = builder.address(mac.to_vec());
        }
        if let Some(q) = spec.bc_queue_len {
            builder = builder.append_info_data(InfoMacVlan::BcQueueLen(q));
        }
        if let Some(fd) = spec.target_netns {
            builder = builder.setns_by_fd(fd);
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| match errno_of(&e) {
                Some(Errno::EBUSY) if spec.mode == ConfMode::Passthru => Error::Netlink(
                    "create macvlan: the master already has a passthru macvlan (only one is allowed)".into(),
                ),
                Some(Errno::EINVAL) if spec.mtu.is_some() => Error::InvalidConfig(format!(
                    "create macvlan: the kernel refused mtu {}; it must not exceed the master's MTU",
                    spec.mtu.unwrap_or_default()
                )),
                _ => nl_err("create macvlan")(e),
            })
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.to_owned())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("rename link to {name}")))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err("set link up"))
    }

    pub async fn set_multicast(&self, index: u32, on: bool) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).multicast(on).build())
            .execute()
            .await
            .map_err(nl_err("set multicast flag"))
    }

    /// Sets (or with "" clears) the interface alias, where the plugin notes what it changed.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .map_err(nl_err("set interface alias"))
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(()),
            other => other.map_err(nl_err("delete link")),
        }
    }

    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        self.handle
            .address()
            .add(index, addr.ip(), addr.prefix())
            .execute()
            .await
            .map_err(nl_err(format!("add address {addr}")))
    }

    /// Addresses on a link (or on all links with `None`), with their flags.
    pub async fn addresses(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<(u32, IpNetwork, AddressFlags)>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list addresses"))?;
        Ok(msgs
            .into_iter()
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

    /// Joins `group` on the link with a membership the kernel holds without any socket:
    /// the group as an address with IFA_F_MCAUTOJOIN. An existing join is kept.
    pub async fn join_group(&self, index: u32, group: Ipv4Addr) -> Result<()> {
        let mut msg = group_address(index, group);
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Mcautojoin));
        match self.request_ack(RouteNetlinkMessage::NewAddress(msg)).await {
            Err(e) if errno_of(&e) == Some(Errno::EEXIST) => Ok(()),
            other => other.map_err(nl_err(format!("join multicast group {group}"))),
        }
    }

    /// Leaves a group joined with `join_group`. This must happen before the link is deleted:
    /// the kernel drops an auto-join membership only when its address is deleted, and the
    /// memberships of a namespace are limited (igmp_max_memberships), so a link deleted with
    /// the address on it leaks one, and repeated ADD/DEL in one pod end in ENOBUFS.
    pub async fn leave_group(&self, index: u32, group: Ipv4Addr) -> Result<()> {
        match self
            .handle
            .address()
            .del(group_address(index, group))
            .execute()
            .await
        {
            Err(e) if matches!(errno_of(&e), Some(Errno::EADDRNOTAVAIL | Errno::ENODEV)) => Ok(()),
            other => other.map_err(nl_err(format!("leave multicast group {group}"))),
        }
    }

    async fn request_ack(
        &self,
        msg: RouteNetlinkMessage,
    ) -> std::result::Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(message) = response.next().await {
            if let NetlinkPayload::Error(err) = message.payload {
                if err.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(err));
                }
            }
        }
        Ok(())
    }

    /// Adds a route out `index`; without a gateway the route is link-scoped.
    /// An identical route that exists already counts as added.
    pub async fn add_route(&self, index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Result<bool> {
        let msg = route_message(index, dst, gw, TABLE_MAIN)?;
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(Errno::EEXIST) => Ok(false),
            Err(e) => Err(nl_err(format!("add route {dst}"))(e)),
        }
    }

    pub async fn del_route(&self, route: &RouteEntry) -> Result<()> {
        let oif = route.oif.unwrap_or(0);
        let mut msg = route_message(oif, route.dst, route.gw, route.table)?;
        msg.header.kind = route.kind;
        msg.header.scope = route.scope;
        msg.header.protocol = RouteProtocol::Unspec;
        match self.handle.route().del(msg).execute().await {
            Err(e) if errno_of(&e) == Some(Errno::ESRCH) => Ok(()),
            other => other.map_err(nl_err(format!("delete route {}", route.dst))),
        }
    }

    /// IPv4 routes of a table.
    pub async fn routes_v4(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(RouteMessageBuilder::<Ipv4Addr>::new().build(), table)
            .await
    }

    /// IPv6 routes of a table.
    pub async fn routes_v6(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            table,
        )
        .await
    }

    async fn routes(&self, query: RouteMessage, table: u32) -> Result<Vec<RouteEntry>> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list routes"))?;
        Ok(msgs
            .into_iter()
            .filter_map(RouteEntry::from_message)
            .filter(|r| r.table == table)
            .collect())
    }
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
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
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

/// The address message for a group joined on a link (rtnetlink's builder drops multicast
/// addresses, so it is built here).
fn group_address(index: u32, group: Ipv4Addr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = 32;
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(group)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(group)));
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
) -> Result<RouteMessage> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .map_err(|e| Error::InvalidConfig(format!("route {dst}: {e}")))?;
    if index != 0 {
        b = b.output_interface(index);
    }
    b = match gw {
        Some(gw) => b
            .gateway(gw)
            .map_err(|e| Error::InvalidConfig(format!("route {dst} via {gw}: {e}")))?,
        None => b.scope(RouteScope::Link),
    };
    let mut msg = b.table_id(table).build();
    if table > 255 {
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    }
    Ok(msg)
}
