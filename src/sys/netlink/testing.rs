//! A namespace in memory for tests without root: links, addresses and routes that the
//! requests change as the kernel would, and the list of every change requested, in order.
//! Compiled for the crate's unit tests and, with the `fake-netlink` feature (which the
//! crate's integration tests turn on), for tests of their own; never in a release build.
//!
//! A test can make the fake refuse requests (`refuse`) as the kernel would, and name the
//! fake a creation with a target namespace lands in (`creates_into`), as ADD creates the
//! macvlan from the master's namespace straight into the pod's.

use std::cell::RefCell;
use std::rc::Rc;

use ipnetwork::IpNetwork;
use netlink_packet_route::link::{InfoKind, LinkFlags, MacVlanMode};
use nix::errno::Errno;

use super::{
    route_out, route_prepended, AddressFlags, Error, Family, Link, NewMacvlan, Op, Result,
    RouteEntry, Rtnl,
};

/// A change the fake was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `NewMacvlan` as asked; `into_other_netns` says it named a target namespace.
    AddMacvlan {
        name: String,
        master_index: u32,
        mode: MacVlanMode,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        bc_queue_len: Option<u32>,
        into_other_netns: bool,
    },
    Op(Op),
}

impl Request {
    /// The op, for a request that is one.
    pub fn op(&self) -> Option<&Op> {
        match self {
            Request::Op(op) => Some(op),
            Request::AddMacvlan { .. } => None,
        }
    }
}

/// Which requests the fake refuses, and with what errno.
type Refusal = (Rc<dyn Fn(&Request) -> bool>, Errno);

#[derive(Default)]
struct State {
    links: Vec<Link>,
    addresses: Vec<(u32, IpNetwork)>,
    routes: Vec<RouteEntry>,
    requests: Vec<Request>,
    /// Links of other namespaces, by the id this one knows each namespace by.
    elsewhere: Vec<(i32, Link)>,
    refusals: Vec<Refusal>,
    /// Where a macvlan created with a target namespace lands.
    target: Option<Fake>,
}

impl State {
    fn refusal(&self, request: &Request) -> Option<Errno> {
        self.refusals
            .iter()
            .find(|(matches, _)| matches(request))
            .map(|(_, errno)| *errno)
    }
}

/// One namespace in memory. Clones are handles on the same namespace (as two connections
/// into one namespace are): a test keeps one to look at what the code under test did with
/// the other.
#[derive(Default, Clone)]
pub struct Fake {
    state: Rc<RefCell<State>>,
}

impl Fake {
    pub fn new() -> Fake {
        Fake::default()
    }

    /// From now on, refuses every request `matches` picks with `errno`, changing nothing,
    /// as the kernel refuses one (its "already so" errnos still count as done for `apply`).
    pub fn refuse(&self, errno: Errno, matches: impl Fn(&Request) -> bool + 'static) {
        self.state
            .borrow_mut()
            .refusals
            .push((Rc::new(matches), errno));
    }

    /// Accepts every request again.
    pub fn refuse_nothing(&self) {
        self.state.borrow_mut().refusals.clear();
    }

    /// Macvlans created with a target namespace (`NewMacvlan::target_netns`) land in
    /// `target`, whatever the descriptor.
    pub fn creates_into(&self, target: &Fake) {
        self.state.borrow_mut().target = Some(target.clone());
    }

    /// Adds a link with the next free index; returns that index.
    pub fn with_link(&self, name: &str, kind: Option<InfoKind>, flags: LinkFlags) -> u32 {
        let mut state = self.state.borrow_mut();
        let index = state.links.iter().map(|l| l.index).max().unwrap_or(0) + 1;
        state.links.push(Link {
            index,
            name: name.to_owned(),
            kind,
            flags,
            mtu: 1500,
            mac: vec![2, 0, 0, 0, 0, index as u8],
            ..Link::default()
        });
        index
    }

    /// Makes link `index` a veth whose peer, `peer`, lives in the namespace known as `nsid`.
    pub fn with_peer_elsewhere(&self, index: u32, nsid: i32, peer: Link) {
        let mut state = self.state.borrow_mut();
        if let Some(l) = state.links.iter_mut().find(|l| l.index == index) {
            l.kind = Some(InfoKind::Veth);
            l.lower_elsewhere = Some((nsid, peer.index));
        }
        state.elsewhere.push((nsid, peer));
    }

    /// Adds a link of any shape (its index is chosen here, the rest is `link`'s).
    pub fn with_shaped(&self, mut link: Link) -> u32 {
        let mut state = self.state.borrow_mut();
        link.index = state.links.iter().map(|l| l.index).max().unwrap_or(0) + 1;
        let index = link.index;
        state.links.push(link);
        index
    }

    /// Adds a link of another namespace (a veth's peer, its bridge, that bridge's ports).
    pub fn with_elsewhere(&self, nsid: i32, link: Link) {
        self.state.borrow_mut().elsewhere.push((nsid, link));
    }

    /// Makes link `index` a port of `controller` (a bridge, bond or VRF) as the admin would.
    pub fn set_controller(&self, index: u32, controller: u32) {
        if let Some(l) = self.state.borrow_mut().link_mut(index) {
            l.controller = Some(controller);
        }
    }

    /// Sets a link's alias as someone else (not a request) would.
    pub fn set_alias(&self, index: u32, alias: &str) {
        if let Some(l) = self.state.borrow_mut().link_mut(index) {
            l.alias = Some(alias.to_owned());
        }
    }

    /// Sets a link's flags as someone else (not a request) would: takes it down, say.
    pub fn set_flags(&self, index: u32, flags: LinkFlags) {
        if let Some(l) = self.state.borrow_mut().link_mut(index) {
            l.flags = flags;
        }
    }

    /// Puts a route in place as someone else (not a request) would: one of any table and
    /// type, such as the local route the kernel adds beside an address.
    pub fn with_route(&self, route: RouteEntry) {
        self.state.borrow_mut().routes.push(route);
    }

    /// Adds an address as someone else (not a request) would.
    pub fn with_address(&self, index: u32, addr: IpNetwork) {
        self.state.borrow_mut().addresses.push((index, addr));
    }

    pub fn link(&self, index: u32) -> Option<Link> {
        self.state
            .borrow()
            .links
            .iter()
            .find(|l| l.index == index)
            .cloned()
    }

    pub fn all_routes(&self) -> Vec<RouteEntry> {
        self.state.borrow().routes.clone()
    }

    /// Every address of every link, as `addresses(None)` without the `Result`.
    pub fn all_addresses(&self) -> Vec<(u32, IpNetwork)> {
        self.state.borrow().addresses.clone()
    }

    /// Every change requested so far, in order (refused ones too).
    pub fn requests(&self) -> Vec<Request> {
        self.state.borrow().requests.clone()
    }

    /// The ops requested so far, in order: `requests` without the creations.
    pub fn ops(&self) -> Vec<Op> {
        self.requests()
            .iter()
            .filter_map(Request::op)
            .cloned()
            .collect()
    }

    /// Forgets the requests so far (the scene set up before the part under test).
    pub fn clear_requests(&self) {
        self.state.borrow_mut().requests.clear();
    }
}

fn refused(op: &Op, errno: Errno) -> Error {
    Error::Refused {
        what: op.describe(),
        errno,
        ext_ack: None,
    }
}

impl State {
    fn link_mut(&mut self, index: u32) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.index == index)
    }

    /// Carries out one op as the kernel would, refusing with the kernel's errno.
    fn carry_out(&mut self, op: &Op) -> Result<()> {
        let link_exists = |s: &State, index: u32| s.links.iter().any(|l| l.index == index);
        match op {
            Op::AddAddress { index, addr } => {
                if !link_exists(self, *index) {
                    return Err(refused(op, Errno::ENODEV));
                }
                if self.addresses.contains(&(*index, *addr)) {
                    return Err(refused(op, Errno::EEXIST));
                }
                self.addresses.push((*index, *addr));
            }
            Op::DelAddress { index, addr } => {
                let before = self.addresses.len();
                self.addresses.retain(|a| a != &(*index, *addr));
                if self.addresses.len() == before {
                    return Err(refused(op, Errno::EADDRNOTAVAIL));
                }
            }
            Op::AddRoute { index, dst, .. } | Op::AddRouteFrom { index, dst, .. } => {
                if !link_exists(self, *index) {
                    return Err(refused(op, Errno::ENODEV));
                }
                let gw = match op {
                    Op::AddRoute { gw, .. } => *gw,
                    _ => None,
                };
                let route = route_out(*index, *dst, gw);
                if self
                    .routes
                    .iter()
                    .any(|r| r.dst == route.dst && r.table == route.table)
                {
                    return Err(refused(op, Errno::EEXIST));
                }
                self.routes.push(route);
            }
            Op::PrependRoute { index, dst, gw } => {
                if !link_exists(self, *index) {
                    return Err(refused(op, Errno::ENODEV));
                }
                let route = route_prepended(*index, *dst, *gw);
                if self.routes.contains(&route) {
                    return Err(refused(op, Errno::EEXIST));
                }
                self.routes.insert(0, route);
            }
            Op::DelRoute(route) => {
                let before = self.routes.len();
                self.routes.retain(|r| {
                    !(r.dst == route.dst
                        && r.table == route.table
                        && (route.oif.is_none() || r.oif == route.oif))
                });
                if self.routes.len() == before {
                    return Err(refused(op, Errno::ESRCH));
                }
            }
            Op::SetLink(change) => {
                let Some(link) = self.link_mut(change.index) else {
                    return Err(refused(op, Errno::ENODEV));
                };
                if change.up {
                    link.flags |= LinkFlags::Up;
                }
                if let Some(on) = change.multicast {
                    link.flags.set(LinkFlags::Multicast, on);
                }
                if let Some(name) = &change.name {
                    link.name.clone_from(name);
                }
                if let Some(alias) = &change.alias {
                    // An empty alias is no alias, as the kernel reports it.
                    link.alias = (!alias.is_empty()).then(|| alias.clone());
                }
            }
            Op::DelLink(index) => {
                if !link_exists(self, *index) {
                    return Err(refused(op, Errno::ENODEV));
                }
                self.links.retain(|l| l.index != *index);
                self.addresses.retain(|(i, _)| i != index);
                self.routes.retain(|r| r.oif != Some(*index));
            }
        }
        Ok(())
    }
}

impl Rtnl for Fake {
    fn links(&self) -> Result<Vec<Link>> {
        Ok(self.state.borrow().links.clone())
    }

    fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        Ok(self
            .state
            .borrow()
            .links
            .iter()
            .find(|l| l.name == name)
            .cloned())
    }

    fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        Ok(self.link(index))
    }

    fn link_elsewhere(&self, nsid: i32, index: u32) -> Result<Option<Link>> {
        Ok(self
            .state
            .borrow()
            .elsewhere
            .iter()
            .find(|(id, l)| *id == nsid && l.index == index)
            .map(|(_, l)| l.clone()))
    }

    fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNetwork)>> {
        Ok(self
            .state
            .borrow()
            .addresses
            .iter()
            .filter(|(i, _)| index.is_none_or(|want| *i == want))
            .copied()
            .collect())
    }

    /// The fake kernel runs no duplicate address detection: its addresses are settled at once.
    fn ipv6_address_flags(&self, index: u32) -> Result<Vec<(IpNetwork, AddressFlags)>> {
        Ok(self
            .addresses(Some(index))?
            .into_iter()
            .filter(|(_, a)| a.is_ipv6())
            .map(|(_, a)| (a, AddressFlags::Permanent))
            .collect())
    }

    fn routes(&self, family: Family, table: u32) -> Result<Vec<RouteEntry>> {
        Ok(self
            .state
            .borrow()
            .routes
            .iter()
            .filter(|r| r.table == table && r.dst.is_ipv4() == (family == Family::V4))
            .cloned()
            .collect())
    }

    fn routes_through(&self, family: Family, index: u32) -> Result<Vec<RouteEntry>> {
        Ok(self
            .state
            .borrow()
            .routes
            .iter()
            .filter(|r| r.oif == Some(index) && r.dst.is_ipv4() == (family == Family::V4))
            .cloned()
            .collect())
    }

    fn add_macvlan(&self, spec: &NewMacvlan<'_>) -> Result<()> {
        let request = Request::AddMacvlan {
            name: spec.name.to_owned(),
            master_index: spec.master_index,
            mode: spec.mode,
            mtu: spec.mtu,
            mac: spec.mac,
            bc_queue_len: spec.bc_queue_len,
            into_other_netns: spec.target_netns.is_some(),
        };
        let refused = |errno| Error::Refused {
            what: "create macvlan".into(),
            errno,
            ext_ack: None,
        };
        let (refusal, target) = {
            let mut state = self.state.borrow_mut();
            state.requests.push(request.clone());
            let master_here = state.links.iter().any(|l| l.index == spec.master_index);
            let refusal = state
                .refusal(&request)
                .or_else(|| (!master_here).then_some(Errno::ENODEV));
            let target = match spec.target_netns {
                Some(_) => state.target.clone(),
                None => None,
            };
            (refusal, target.unwrap_or_else(|| self.clone()))
        };
        if let Some(errno) = refusal {
            return Err(refused(errno));
        }
        if target.link_by_name(spec.name)?.is_some() {
            return Err(refused(Errno::EEXIST));
        }
        let index = target.with_link(spec.name, Some(InfoKind::MacVlan), LinkFlags::Multicast);
        if let Some(l) = target.state.borrow_mut().link_mut(index) {
            l.macvlan_mode = Some(spec.mode);
            l.mtu = spec.mtu.unwrap_or(l.mtu);
            if let Some(mac) = spec.mac {
                l.mac = mac.to_vec();
            }
        }
        Ok(())
    }

    /// The same namespace, as the real client's child connection is.
    fn child_connection(&self) -> Result<Box<dyn Rtnl>> {
        Ok(Box::new(self.clone()))
    }

    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let mut state = self.state.borrow_mut();
        let mut failure = None;
        for op in ops {
            let request = Request::Op(op.clone());
            let outcome = match state.refusal(&request) {
                Some(errno) => Err(refused(&op, errno)),
                None => state.carry_out(&op),
            };
            state.requests.push(request);
            match outcome {
                Err(e) if e.errno().is_some_and(|n| op.already().contains(&n)) => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }
}
