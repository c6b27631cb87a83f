//! Links, addresses and routes in one namespace: what the plugin needs of them, the changes
//! it makes (`Op`, plain data), and `Rtnl`, the seam between the attachment logic and the
//! kernel. `Netlink` (client.rs) carries it out over rtnetlink; `testing::Fake` keeps an
//! in-memory namespace and records every request, for unit tests without root.
//!
//! This layer knows nothing of CNI: it returns its own `Error`, which keeps the kernel's
//! errno and extended-ack message; the plugin maps it to a CNI error code (cni::error).

mod client;
mod codec;
#[cfg(any(test, feature = "fake-netlink"))]
pub mod testing;

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::link::{InfoKind, LinkFlags, MacVlanMode};
use netlink_packet_route::route::{RouteScope, RouteType};
use nix::errno::Errno;

pub use client::Netlink;
pub use netlink_packet_route::address::AddressFlags;

/// Why `name` cannot be a Linux interface name, or None when it can: 1 to 15 bytes
/// (IFNAMSIZ less the NUL), not `.` or `..`, no `/`, `:` or whitespace (dev_valid_name).
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 characters")
    } else if name == "." || name == ".." {
        Some("it cannot be '.' or '..'")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("it cannot contain '/', ':' or whitespace")
    } else {
        None
    }
}

/// A link just created (or changed), read back: it must be there. A link gone between the
/// request and the lookup means someone else removed it.
pub fn read_back(found: Option<Link>, name: &str) -> Result<Link> {
    found.ok_or_else(|| Error::Connection {
        what: format!("read back {name}"),
        detail: "it vanished right after its creation".into(),
    })
}

/// Routing tables by number, as the kernel's headers name them.
pub const TABLE_MAIN: u32 = nix::libc::RT_TABLE_MAIN as u32;
pub const TABLE_LOCAL: u32 = nix::libc::RT_TABLE_LOCAL as u32;

/// A failure of the netlink layer. A refusal keeps the kernel's errno (matched by value,
/// never by message) and its explanation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {}{}", errno.desc(), ext_ack.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        what: String,
        errno: Errno,
        ext_ack: Option<String>,
    },
    #[error("{what}: the kernel did not answer within {} s", client::TIMEOUT.as_secs())]
    Timeout { what: String },
    /// The socket could not be opened (or set up) in the namespace.
    #[error("cannot open netlink in {ns}: {source}")]
    Socket {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    /// The namespace could not be entered to open the socket there.
    #[error("{0}")]
    Namespace(String),
    /// The connection to the kernel closed, or answered with something unexpected.
    #[error("{what}: {detail}")]
    Connection { what: String, detail: String },
}

impl Error {
    /// The kernel's errno, for a refusal.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the plugin needs to know of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The link kind (macvlan, veth, ...); none for plain devices.
    pub kind: Option<InfoKind>,
    /// The macvlan mode, for a macvlan only.
    pub macvlan_mode: Option<MacVlanMode>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub flags: LinkFlags,
    pub alias: Option<String>,
    /// The link this one is stacked on (a macvlan's master), when it is in the same
    /// namespace: a `linkInContainer` attachment's master, seen from the pod.
    pub lower_here: Option<u32>,
    /// The link this one is stacked on or paired with when it lives in another namespace
    /// (a veth's peer): that namespace's id as this one knows it, and the link's index there.
    pub lower_elsewhere: Option<(i32, u32)>,
    /// The bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
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
    pub fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
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

/// Which routes to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The macvlan to create.
pub struct NewMacvlan<'a> {
    pub name: &'a str,
    pub master_index: u32,
    pub mode: MacVlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub bc_queue_len: Option<u32>,
    /// Where the link is created; `None` keeps it in the connection's namespace.
    pub target_netns: Option<std::os::fd::RawFd>,
}

/// The macvlan modes the reference plugin accepts (`source` is not one of them), by the
/// names configs and the node policy use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Bridge,
    Private,
    Vepa,
    Passthru,
}

/// A mode name that is none of `MacvlanMode`'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mode {0:?} is unknown: use bridge, private, vepa or passthru")]
pub struct UnknownMode(pub String);

impl MacvlanMode {
    /// The kernel's value for this mode.
    pub fn kernel(self) -> MacVlanMode {
        match self {
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    /// A mode by name; "" is the default, bridge.
    pub fn parse(s: &str) -> std::result::Result<MacvlanMode, UnknownMode> {
        Ok(match s {
            "" | "bridge" => MacvlanMode::Bridge,
            "private" => MacvlanMode::Private,
            "vepa" => MacvlanMode::Vepa,
            "passthru" => MacvlanMode::Passthru,
            other => return Err(UnknownMode(other.to_owned())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

/// A MAC in `aa:bb:cc:dd:ee:ff` form, as results, records and messages write it.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A macvlan mode by name, for messages.
pub fn mode_name(mode: Option<MacVlanMode>) -> String {
    mode.map_or_else(|| "unknown".to_owned(), |m| m.to_string())
}

/// One IPv4 per-interface setting, as /proc/sys/net/ipv4/conf/<link>/<name> holds it; set
/// over netlink, which needs no one inside the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Setting {
    RpFilter(i32),
    ArpIgnore(i32),
    ArpNotify(i32),
}

/// One change to make. Plain data: the real client turns it into a netlink message, the
/// fake applies it to its in-memory namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds an address (IPv4 with the subnet's broadcast, as `ip addr add ... brd +`).
    AddAddress {
        index: u32,
        addr: IpNetwork,
    },
    DelAddress {
        index: u32,
        addr: IpNetwork,
    },
    /// A route out `index` in the main table; without a gateway it is link-scoped. An
    /// identical route that exists already counts as added.
    AddRoute {
        index: u32,
        dst: IpNetwork,
        gw: Option<IpAddr>,
    },
    /// A route out `index` the way the reference plugins install the routes IPAM returns
    /// (`netlink.RouteAddEcmp` in their ipam.ConfigureIface, like `ip route prepend`):
    /// scope universe, protocol boot, and beside any route to the same destination, ahead
    /// of it (a default route next to the pod's own default). The kernel refuses it with
    /// EEXIST only when an identical route exists, which counts as added.
    PrependRoute {
        index: u32,
        dst: IpNetwork,
        gw: Option<IpAddr>,
    },
    /// A link-scoped route out `index` whose packets leave with `src` as their source
    /// (`ip route add <dst> dev <link> src <src>`); an identical route counts as added.
    AddRouteFrom {
        index: u32,
        dst: IpNetwork,
        src: IpAddr,
    },
    DelRoute(RouteEntry),
    SetLink(LinkChange),
    DelLink(u32),
}

impl Op {
    pub fn add_address(index: u32, addr: IpNetwork) -> Op {
        Op::AddAddress { index, addr }
    }

    pub fn del_address(index: u32, addr: IpNetwork) -> Op {
        Op::DelAddress { index, addr }
    }

    pub fn add_route(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Op {
        Op::AddRoute { index, dst, gw }
    }

    pub fn prepend_route(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Op {
        Op::PrependRoute { index, dst, gw }
    }

    pub fn add_route_from(index: u32, dst: IpNetwork, src: IpAddr) -> Op {
        Op::AddRouteFrom { index, dst, src }
    }

    pub fn del_route(route: &RouteEntry) -> Op {
        Op::DelRoute(route.clone())
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub fn del_link(index: u32) -> Op {
        Op::DelLink(index)
    }

    /// The errnos that mean "already so": adding what is there, removing what is gone.
    pub fn already(&self) -> &'static [Errno] {
        match self {
            Op::AddAddress { .. } | Op::SetLink(_) => &[],
            Op::DelAddress { .. } => &[Errno::EADDRNOTAVAIL, Errno::ENODEV],
            Op::AddRoute { .. } | Op::PrependRoute { .. } | Op::AddRouteFrom { .. } => {
                &[Errno::EEXIST]
            }
            Op::DelRoute(_) => &[Errno::ESRCH],
            Op::DelLink(_) => &[Errno::ENODEV],
        }
    }

    /// What the op does, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Op::AddAddress { addr, .. } => format!("add address {addr}"),
            Op::DelAddress { addr, .. } => format!("remove address {addr}"),
            Op::AddRoute { dst, gw: None, .. } | Op::PrependRoute { dst, gw: None, .. } => {
                format!("add route {dst}")
            }
            Op::AddRoute {
                dst, gw: Some(gw), ..
            }
            | Op::PrependRoute {
                dst, gw: Some(gw), ..
            } => format!("add route {dst} via {gw}"),
            Op::AddRouteFrom { dst, src, .. } => format!("add route {dst} src {src}"),
            Op::DelRoute(r) => format!("delete route {}", r.dst),
            Op::SetLink(c) => c.describe(),
            Op::DelLink(index) => format!("delete link {index}"),
        }
    }
}

/// The main-table route `Op::AddRoute` makes.
pub fn route_out(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> RouteEntry {
    RouteEntry {
        dst,
        gw,
        oif: Some(index),
        table: TABLE_MAIN,
        kind: RouteType::Unicast,
        scope: if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        },
    }
}

/// The subnet broadcast of an IPv4 address, as `brd +` computes it (none for /31, /32).
pub fn broadcast_of(addr: IpNetwork) -> Option<Ipv4Addr> {
    match addr {
        IpNetwork::V4(v4) if v4.prefix() < 31 => Some(v4.broadcast()),
        _ => None,
    }
}

/// The main-table route `Op::PrependRoute` makes: scope universe whatever the gateway.
pub fn route_prepended(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> RouteEntry {
    RouteEntry {
        scope: RouteScope::Universe,
        ..route_out(index, dst, gw)
    }
}

/// Changes to one existing link, made in one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub index: u32,
    pub up: bool,
    pub multicast: Option<bool>,
    pub name: Option<String>,
    /// The interface alias; "" clears it.
    pub alias: Option<String>,
    pub ipv4: Vec<Ipv4Setting>,
}

impl LinkChange {
    pub fn of(index: u32) -> LinkChange {
        LinkChange {
            index,
            ..LinkChange::default()
        }
    }

    pub fn up(mut self) -> LinkChange {
        self.up = true;
        self
    }

    pub fn multicast(mut self, on: bool) -> LinkChange {
        self.multicast = Some(on);
        self
    }

    pub fn name(mut self, name: &str) -> LinkChange {
        self.name = Some(name.to_owned());
        self
    }

    /// Sets (or with "" clears) the interface alias, where the plugin notes what it changed.
    pub fn alias(mut self, alias: &str) -> LinkChange {
        self.alias = Some(alias.to_owned());
        self
    }

    pub fn ipv4_conf(mut self, settings: &[Ipv4Setting]) -> LinkChange {
        self.ipv4.extend_from_slice(settings);
        self
    }

    pub fn op(self) -> Op {
        Op::SetLink(self)
    }

    fn describe(&self) -> String {
        let mut what = Vec::new();
        if self.up {
            what.push("set up");
        }
        if self.multicast.is_some() {
            what.push("set multicast flag");
        }
        if self.name.is_some() {
            what.push("rename");
        }
        if self.alias.is_some() {
            what.push("set interface alias");
        }
        if !self.ipv4.is_empty() {
            what.push("set IPv4 interface settings");
        }
        format!("{} of link {}", what.join(", "), self.index)
    }
}

/// The requests the attachment logic makes of one namespace's links, addresses and routes.
pub trait Rtnl {
    fn links(&self) -> Result<Vec<Link>>;
    fn link_by_name(&self, name: &str) -> Result<Option<Link>>;
    fn link_by_index(&self, index: u32) -> Result<Option<Link>>;
    /// A link of another namespace, named by the id this namespace knows it by
    /// (IFLA_LINK_NETNSID): a veth's peer, read without entering its namespace.
    fn link_elsewhere(&self, nsid: i32, index: u32) -> Result<Option<Link>>;
    /// Addresses on a link (or on all links with `None`).
    fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNetwork)>>;
    /// A link's IPv6 addresses with their flags (tentative while duplicate address detection
    /// runs, dadfailed when another host holds the address).
    fn ipv6_address_flags(&self, index: u32) -> Result<Vec<(IpNetwork, AddressFlags)>>;
    /// The routes of one family in one table.
    fn routes(&self, family: Family, table: u32) -> Result<Vec<RouteEntry>>;
    /// Every route of one family, in every table (the local one too), that sends through
    /// link `index`. The kernel does the matching: a route's own device, each leg of a
    /// multipath route, and the devices of the nexthop objects and groups a route uses,
    /// whatever `nexthop_compat_mode` says (such a route may then carry no `oif` at all).
    fn routes_through(&self, family: Family, index: u32) -> Result<Vec<RouteEntry>>;
    fn add_macvlan(&self, spec: &NewMacvlan<'_>) -> Result<()>;
    /// Makes all `ops`, in order; the kernel carries out each whatever became of the ones
    /// before. The first failure (in order, "already so" not counted) is the error.
    fn apply(&self, ops: Vec<Op>) -> Result<()>;
    /// A connection into the same namespace for a forked child (DEL's reaper), which must
    /// not drive the parent's.
    fn child_connection(&self) -> Result<Box<dyn Rtnl>>;

    fn routes_v4(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(Family::V4, table)
    }

    fn routes_v6(&self, table: u32) -> Result<Vec<RouteEntry>> {
        self.routes(Family::V6, table)
    }

    /// The interface of the IPv4 default route, if there is one.
    fn default_route_link(&self) -> Result<Option<u32>> {
        Ok(self
            .routes_v4(TABLE_MAIN)?
            .iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif))
    }
}
