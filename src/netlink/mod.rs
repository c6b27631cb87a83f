//! Links, addresses, routes and multicast joins in one namespace, over a plain blocking
//! rtnetlink socket. A `Netlink` is bound to the namespace its socket was opened in.
//!
//! Requests that change state are `Op`s; `Netlink::apply` sends several in one datagram and
//! reads their acknowledgements together, so a step of ADD or DEL costs one round trip
//! into the kernel however many changes it makes. There is no async runtime: a plugin
//! process lives for a few milliseconds, and a runtime costs more than the work.

mod wire;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ipnetwork::IpNetwork;
use nix::errno::Errno;

use crate::cni::config::MacvlanMode as ConfMode;
use crate::cni::{Error, Kind, Result};
use crate::netns::Netns;
use wire::*;

/// Routing tables by number (linux/rtnetlink.h).
pub const TABLE_MAIN: u32 = 254;
pub const TABLE_LOCAL: u32 = 255;

/// Route types and scopes (linux/rtnetlink.h), as `RouteEntry` carries them.
pub const ROUTE_UNICAST: u8 = 1;
pub const ROUTE_LOCAL: u8 = 2;
pub const SCOPE_UNIVERSE: u8 = 0;
pub const SCOPE_LINK: u8 = 253;
pub const SCOPE_HOST: u8 = 254;
const PROTOCOL_UNSPEC: u8 = 0;
const PROTOCOL_BOOT: u8 = 3;
const PROTOCOL_STATIC: u8 = 4;

/// IPv4 per-interface settings (linux/ip.h IPV4_DEVCONF_*), set over netlink rather than
/// through /proc/sys, which would need the caller inside the namespace.
pub const DEVCONF_RP_FILTER: u16 = 8;
pub const DEVCONF_ARP_IGNORE: u16 = 19;
pub const DEVCONF_ARP_NOTIFY: u16 = 22;

/// Interface flags (linux/if.h).
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_MULTICAST: u32 = 0x1000;

/// What the plugin needs to know of a link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The link kind ("macvlan", "veth", ...); none for plain devices.
    pub kind: Option<String>,
    /// The kernel's macvlan mode (see `kernel_mode`).
    pub macvlan_mode: Option<u32>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub flags: u32,
    pub alias: Option<String>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
    pub fn is_multicast(&self) -> bool {
        self.flags & IFF_MULTICAST != 0
    }
    pub fn is_loopback(&self) -> bool {
        self.flags & IFF_LOOPBACK != 0
    }
    pub fn is_macvlan(&self) -> bool {
        self.kind.as_deref() == Some("macvlan")
    }
}

/// A route as read back from the kernel (IPv4 and IPv6, main or local table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    /// ROUTE_UNICAST, ROUTE_LOCAL, ...
    pub kind: u8,
    /// SCOPE_UNIVERSE, SCOPE_LINK, SCOPE_HOST, ...
    pub scope: u8,
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

/// The kernel's value for a macvlan mode (linux/if_link.h MACVLAN_MODE_*).
pub fn kernel_mode(mode: ConfMode) -> u32 {
    match mode {
        ConfMode::Private => 1,
        ConfMode::Vepa => 2,
        ConfMode::Bridge => 4,
        ConfMode::Passthru => 8,
    }
}

/// A kernel macvlan mode by name, for messages.
pub fn mode_name(mode: Option<u32>) -> &'static str {
    match mode {
        Some(1) => "private",
        Some(2) => "vepa",
        Some(4) => "bridge",
        Some(8) => "passthru",
        Some(16) => "source",
        _ => "unknown",
    }
}

/// One change to send: the message, and how its outcome reads.
pub struct Op {
    msg: MessageBuilder,
    flags: u16,
    /// Errors that mean "already so" (joining a joined group, deleting what is gone).
    already: &'static [Errno],
    what: String,
}

impl Op {
    fn new(msg: MessageBuilder, flags: u16, what: impl Into<String>) -> Op {
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
        let mut msg = address_message(RTM_NEWADDR, index, addr.ip(), addr.prefix());
        if let IpAddr::V4(ip) = addr.ip() {
            // As `ip addr add ... brd +` and the reference plugin: the subnet's broadcast.
            if addr.prefix() < 31 {
                let brd = u32::from(ip) | (u32::MAX >> addr.prefix());
                msg.ip(IFA_BROADCAST, IpAddr::V4(Ipv4Addr::from(brd)));
            }
        }
        Op::new(
            msg,
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add address {addr}"),
        )
    }

    pub fn del_address(index: u32, addr: IpNetwork) -> Op {
        Op::new(
            address_message(RTM_DELADDR, index, addr.ip(), addr.prefix()),
            0,
            format!("remove address {addr}"),
        )
        .already(&[Errno::EADDRNOTAVAIL, Errno::ENODEV])
    }

    /// Adds a route out `index`; without a gateway the route is link-scoped.
    /// An identical route that exists already counts as added.
    pub fn add_route(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Op {
        let route = RouteEntry {
            dst,
            gw,
            oif: Some(index),
            table: TABLE_MAIN,
            kind: ROUTE_UNICAST,
            scope: if gw.is_some() {
                SCOPE_UNIVERSE
            } else {
                SCOPE_LINK
            },
        };
        Op::new(
            route_message(RTM_NEWROUTE, &route, PROTOCOL_STATIC),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add route {dst}"),
        )
        .already(&[Errno::EEXIST])
    }

    /// Adds a route out `index` the way the reference plugins install the routes IPAM
    /// returns (`netlink.RouteAddEcmp` in their ipam.ConfigureIface, like `ip route
    /// prepend`): scope universe, protocol boot, and beside any route to the same
    /// destination, ahead of it (a default route next to the pod's own default). The kernel
    /// refuses it with EEXIST only when an identical route exists, which counts as added.
    pub fn prepend_route(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Op {
        let route = RouteEntry {
            dst,
            gw,
            oif: Some(index),
            table: TABLE_MAIN,
            kind: ROUTE_UNICAST,
            scope: SCOPE_UNIVERSE,
        };
        let what = match gw {
            Some(gw) => format!("add route {dst} via {gw}"),
            None => format!("add route {dst}"),
        };
        Op::new(
            route_message(RTM_NEWROUTE, &route, PROTOCOL_BOOT),
            NLM_F_CREATE,
            what,
        )
        .already(&[Errno::EEXIST])
    }

    /// Adds a link-scoped route out `index` whose packets leave with `src` as their source
    /// (`ip route add <dst> dev <link> src <src>`); an identical route counts as added.
    pub fn add_route_from(index: u32, dst: IpNetwork, src: IpAddr) -> Op {
        let mut op = Op::add_route(index, dst, None);
        op.msg.ip(RTA_PREFSRC, src);
        op.what = format!("add route {dst} src {src}");
        op
    }

    pub fn del_route(route: &RouteEntry) -> Op {
        Op::new(
            route_message(RTM_DELROUTE, route, PROTOCOL_UNSPEC),
            0,
            format!("delete route {}", route.dst),
        )
        .already(&[Errno::ESRCH])
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub fn del_link(index: u32) -> Op {
        Op::new(
            MessageBuilder::new(RTM_DELLINK, &ifinfomsg(index, 0, 0)),
            0,
            "delete link",
        )
        .already(&[Errno::ENODEV])
    }
}

/// Changes to one existing link, sent as one RTM_SETLINK.
pub struct LinkChange {
    index: u32,
    flags: u32,
    change: u32,
    name: Option<String>,
    alias: Option<String>,
    ipv4_conf: Vec<(u16, u32)>,
    what: Vec<&'static str>,
}

impl LinkChange {
    pub fn of(index: u32) -> LinkChange {
        LinkChange {
            index,
            flags: 0,
            change: 0,
            name: None,
            alias: None,
            ipv4_conf: Vec::new(),
            what: Vec::new(),
        }
    }

    fn flag(mut self, flag: u32, on: bool, what: &'static str) -> LinkChange {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
        self.change |= flag;
        self.what.push(what);
        self
    }

    pub fn up(self) -> LinkChange {
        self.flag(IFF_UP, true, "set up")
    }

    pub fn multicast(self, on: bool) -> LinkChange {
        self.flag(IFF_MULTICAST, on, "set multicast flag")
    }

    pub fn name(mut self, name: &str) -> LinkChange {
        self.name = Some(name.to_owned());
        self.what.push("rename");
        self
    }

    /// Sets (or with "" clears) the interface alias, where the plugin notes what it changed.
    pub fn alias(mut self, alias: &str) -> LinkChange {
        self.alias = Some(alias.to_owned());
        self.what.push("set interface alias");
        self
    }

    /// Sets IPv4 per-interface settings (DEVCONF_*), as writing
    /// /proc/sys/net/ipv4/conf/<link>/<setting> would.
    pub fn ipv4_conf(mut self, settings: &[(u16, u32)]) -> LinkChange {
        if !settings.is_empty() {
            self.ipv4_conf.extend_from_slice(settings);
            self.what.push("set IPv4 interface settings");
        }
        self
    }

    pub fn op(self) -> Op {
        let mut msg =
            MessageBuilder::new(RTM_SETLINK, &ifinfomsg(self.index, self.flags, self.change));
        if let Some(name) = &self.name {
            msg.str(IFLA_IFNAME, name);
        }
        if let Some(alias) = &self.alias {
            // The alias is not NUL-terminated: an empty one clears it.
            msg.attr(IFLA_IFALIAS, alias.as_bytes());
        }
        if !self.ipv4_conf.is_empty() {
            msg.begin_nest(IFLA_AF_SPEC)
                .begin_nest(u16::from(AF_INET))
                .begin_nest(IFLA_INET_CONF);
            for (key, value) in &self.ipv4_conf {
                msg.u32(*key, *value);
            }
            msg.end_nest().end_nest().end_nest();
        }
        let what = format!("{} of link {}", self.what.join(", "), self.index);
        Op::new(msg, 0, what)
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

/// A request the kernel refused: the errno, and the kernel's explanation if it gave one.
struct Refusal {
    errno: Errno,
    explanation: Option<String>,
}

impl Refusal {
    fn describe(&self, what: &str) -> String {
        match &self.explanation {
            Some(x) => format!("{what}: {} ({x})", self.errno.desc()),
            None => format!("{what}: {}", self.errno.desc()),
        }
    }
}

/// What an acknowledgement or error reply says; `None` for other messages.
fn outcome_of(m: &wire::Received<'_>) -> Option<std::result::Result<(), Refusal>> {
    let (code, explanation) = m.error()?;
    Some(match code {
        0 => Ok(()),
        errno => Err(Refusal {
            errno: Errno::from_raw(errno),
            explanation,
        }),
    })
}

impl From<Errno> for Refusal {
    fn from(errno: Errno) -> Refusal {
        Refusal {
            errno,
            explanation: None,
        }
    }
}

impl Netlink {
    /// Opens a netlink socket inside `ns`; it keeps working in that namespace from anywhere.
    pub fn connect(ns: &Netns) -> Result<Netlink> {
        let fd = ns.run(open_socket)?.map_err(|e| {
            Error::new(
                Kind::Netns,
                format!("cannot open netlink in {}: {}", ns.path(), e.desc()),
            )
        })?;
        Ok(Netlink::over(fd))
    }

    /// Opens a netlink socket in the namespace the plugin runs in.
    pub fn here() -> Result<Netlink> {
        let fd = open_socket()
            .map_err(|e| Error::new(Kind::Netlink, format!("cannot open netlink: {}", e.desc())))?;
        Ok(Netlink::over(fd))
    }

    fn over(fd: OwnedFd) -> Netlink {
        Netlink {
            fd,
            seq: Cell::new(0),
            buf: RefCell::new(vec![0; RECV_BUFFER]),
        }
    }

    /// Sends all `ops` in one datagram and waits for every acknowledgement. The kernel
    /// carries out each message whatever became of the ones before; the first failure (in
    /// order) is the error returned.
    pub fn apply(&self, ops: Vec<Op>) -> Result<()> {
        match self.first_failure(&ops)? {
            Some((i, refusal)) => Err(Error::new(Kind::Netlink, refusal.describe(&ops[i].what))),
            None => Ok(()),
        }
    }

    /// The first op the kernel refused (not counting "already so"), by position.
    fn first_failure(&self, ops: &[Op]) -> Result<Option<(usize, Refusal)>> {
        if ops.is_empty() {
            return Ok(None);
        }
        let first = self.seq.get() + 1;
        self.send(ops.iter().map(|op| (&op.msg, op.flags)))
            .map_err(|e| Error::new(Kind::Netlink, format!("send to kernel: {}", e.desc())))?;
        let mut outcomes: Vec<Option<std::result::Result<(), Refusal>>> =
            (0..ops.len()).map(|_| None).collect();
        while outcomes.iter().any(Option::is_none) {
            self.receive(|msg| {
                let slot = msg
                    .seq
                    .checked_sub(first)
                    .and_then(|i| outcomes.get_mut(i as usize));
                if let (Some(slot), Some(outcome)) = (slot, outcome_of(msg)) {
                    *slot = Some(outcome);
                }
            })
            .map_err(|e| Error::new(Kind::Netlink, format!("read from kernel: {}", e.desc())))?;
        }
        Ok(ops
            .iter()
            .zip(outcomes)
            .enumerate()
            .find_map(|(i, (op, outcome))| match outcome {
                Some(Err(r)) if !op.already.contains(&r.errno) => Some((i, r)),
                _ => None,
            }))
    }

    /// One request and the messages that answer it: all of a dump, or the one reply to a
    /// get, each passed through `keep`.
    fn query<T>(
        &self,
        msg: MessageBuilder,
        dump: bool,
        mut keep: impl FnMut(&wire::Received<'_>) -> Option<T>,
    ) -> std::result::Result<Vec<T>, Refusal> {
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        self.send(std::iter::once((&msg, flags)))?;
        let seq = self.seq.get();
        let mut out = Vec::new();
        let mut end: Option<std::result::Result<(), Refusal>> = None;
        while end.is_none() {
            self.receive(|m| {
                if m.seq != seq || end.is_some() {
                    return;
                }
                if let Some(outcome) = outcome_of(m) {
                    end = Some(outcome);
                } else if m.kind == NLMSG_DONE {
                    end = Some(Ok(()));
                } else if let Some(item) = keep(m) {
                    out.push(item);
                }
            })?;
        }
        end.unwrap_or(Ok(())).map(|()| out)
    }

    fn send<'a>(
        &self,
        messages: impl Iterator<Item = (&'a MessageBuilder, u16)>,
    ) -> std::result::Result<(), Errno> {
        let mut bytes = Vec::new();
        for (msg, flags) in messages {
            let seq = self.seq.get() + 1;
            self.seq.set(seq);
            bytes.extend_from_slice(&msg.finish(flags, seq));
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

    /// Reads one datagram and hands each message in it to `each`.
    fn receive(&self, mut each: impl FnMut(&wire::Received<'_>)) -> std::result::Result<(), Errno> {
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
        for m in wire::messages(&buf[..len]) {
            each(&m);
        }
        Ok(())
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        let msg = MessageBuilder::new(RTM_GETLINK, &ifinfomsg(0, 0, 0));
        self.query(msg, true, |m| m.link())
            .map_err(|r| Error::new(Kind::Netlink, r.describe("list links")))
    }

    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut msg = MessageBuilder::new(RTM_GETLINK, &ifinfomsg(0, 0, 0));
        msg.str(IFLA_IFNAME, name);
        self.one_link(msg, &format!("look up link {name}"))
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let msg = MessageBuilder::new(RTM_GETLINK, &ifinfomsg(index, 0, 0));
        self.one_link(msg, &format!("look up link {index}"))
    }

    fn one_link(&self, msg: MessageBuilder, what: &str) -> Result<Option<Link>> {
        match self.query(msg, false, |m| m.link()) {
            Ok(mut links) => Ok(links.pop()),
            Err(r) if r.errno == Errno::ENODEV => Ok(None),
            Err(r) => Err(Error::new(Kind::Netlink, r.describe(what))),
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
        let mut msg = MessageBuilder::new(RTM_NEWLINK, &ifinfomsg(0, 0, 0));
        msg.str(IFLA_IFNAME, spec.name)
            .u32(IFLA_LINK, spec.master_index)
            .begin_nest(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "macvlan")
            .begin_nest(IFLA_INFO_DATA)
            .u32(IFLA_MACVLAN_MODE, kernel_mode(spec.mode));
        if let Some(q) = spec.bc_queue_len {
            msg.u32(IFLA_MACVLAN_BC_QUEUE_LEN, q);
        }
        msg.end_nest().end_nest();
        if let Some(mtu) = spec.mtu {
            msg.u32(IFLA_MTU, mtu);
        }
        if let Some(mac) = spec.mac {
            msg.attr(IFLA_ADDRESS, &mac);
        }
        if let Some(fd) = spec.target_netns {
            msg.u32(IFLA_NET_NS_FD, fd as u32);
        }
        let op = Op::new(msg, NLM_F_CREATE | NLM_F_EXCL, "create macvlan");
        let Some((_, refusal)) = self.first_failure(std::slice::from_ref(&op))? else {
            return Ok(());
        };
        Err(match refusal.errno {
            Errno::EBUSY if spec.mode == ConfMode::Passthru => Error::new(Kind::Netlink,
                "create macvlan: the master already has a passthru macvlan (only one is allowed)",
            ),
            Errno::EEXIST => Error::new(Kind::InvalidEnvironment, format!(
                "interface {} already exists in the pod; choose another CNI_IFNAME",
                spec.name
            )),
            Errno::EINVAL if spec.mtu.is_some() => Error::new(Kind::InvalidConfig, refusal.describe(
                &format!(
                    "create macvlan: the kernel refused mtu {}; it must not exceed the master's MTU",
                    spec.mtu.unwrap_or_default()
                ),
            )),
            _ => Error::new(Kind::Netlink, refusal.describe("create macvlan")),
        })
    }

    /// Addresses on a link (or on all links with `None`).
    pub fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNetwork)>> {
        let msg = MessageBuilder::new(RTM_GETADDR, &ifaddrmsg(0, 0, 0));
        let all = self
            .query(msg, true, |m| m.address())
            .map_err(|r| Error::new(Kind::Netlink, r.describe("list addresses")))?;
        Ok(all
            .into_iter()
            .filter(|(i, _, _)| index.is_none_or(|want| *i == want))
            .filter_map(|(i, ip, prefix)| Some((i, IpNetwork::new(ip, prefix).ok()?)))
            .collect())
    }

    /// IPv4 routes of a table.
    pub fn routes_v4(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(AF_INET, table)
    }

    /// IPv6 routes of a table.
    pub fn routes_v6(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(AF_INET6, table)
    }

    fn routes(&self, family: u8, table: u32) -> Result<Vec<RouteEntry>> {
        let query = RouteHeader {
            family,
            dst_len: 0,
            table: 0,
            protocol: 0,
            scope: 0,
            kind: 0,
        };
        let msg = MessageBuilder::new(RTM_GETROUTE, &query.bytes());
        let all = self
            .query(msg, true, |m| m.route().and_then(RouteEntry::from_wire))
            .map_err(|r| Error::new(Kind::Netlink, r.describe("list routes")))?;
        Ok(all.into_iter().filter(|r| r.table == table).collect())
    }
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
    // The kernel's reason for a refusal, where it gives one (NETLINK_EXT_ACK); without it
    // errors still carry their errno.
    let on: nix::libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to an int that outlives the call.
    unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::SOL_NETLINK,
            nix::libc::NETLINK_EXT_ACK,
            (&on as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    let kernel = nix::sys::socket::NetlinkAddr::new(0, 0);
    nix::sys::socket::connect(fd.as_raw_fd(), &kernel)?;
    Ok(fd)
}

impl RouteEntry {
    fn from_wire(r: wire::RouteRead) -> Option<RouteEntry> {
        let dst = r.dst.unwrap_or(if r.header.family == AF_INET {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
        Some(RouteEntry {
            dst: IpNetwork::new(dst, r.header.dst_len).ok()?,
            gw: r.gateway,
            oif: r.oif,
            table: r.table,
            kind: r.header.kind,
            scope: r.header.scope,
        })
    }
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// An address message naming `ip` both as local and peer address, as `ip addr` does.
fn address_message(kind: u16, index: u32, ip: IpAddr, prefix: u8) -> MessageBuilder {
    let mut msg = MessageBuilder::new(kind, &ifaddrmsg(family_of(ip), prefix, index));
    msg.ip(IFA_LOCAL, ip).ip(IFA_ADDRESS, ip);
    msg
}

fn route_message(kind: u16, route: &RouteEntry, protocol: u8) -> MessageBuilder {
    let header = RouteHeader {
        family: family_of(route.dst.ip()),
        dst_len: route.dst.prefix(),
        // Tables above 255 only fit the attribute; the header then says "unspecified".
        table: u8::try_from(route.table).unwrap_or(0),
        protocol,
        scope: route.scope,
        kind: route.kind,
    };
    let mut msg = MessageBuilder::new(kind, &header.bytes());
    msg.u32(RTA_TABLE, route.table)
        .ip(RTA_DST, route.dst.network());
    if let Some(oif) = route.oif.filter(|i| *i != 0) {
        msg.u32(RTA_OIF, oif);
    }
    if let Some(gw) = route.gw {
        msg.ip(RTA_GATEWAY, gw);
    }
    msg
}
