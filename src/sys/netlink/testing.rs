//! A namespace in memory for unit tests without root: links, addresses and routes that
//! the requests change as the kernel would, and the list of every change requested, in
//! order.

use std::cell::RefCell;

use ipnetwork::IpNetwork;
use netlink_packet_route::link::{InfoKind, LinkFlags};
use nix::errno::Errno;

use super::{
    route_out, route_prepended, AddressFlags, Error, Family, Link, NewMacvlan, Op, Result,
    RouteEntry, Rtnl,
};

/// A change the fake was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    AddMacvlan { name: String, master_index: u32 },
    Op(Op),
}

#[derive(Default)]
struct State {
    links: Vec<Link>,
    addresses: Vec<(u32, IpNetwork)>,
    routes: Vec<RouteEntry>,
    requests: Vec<Request>,
    /// Links of other namespaces, by the id this one knows each namespace by.
    elsewhere: Vec<(i32, Link)>,
}

#[derive(Default)]
pub struct Fake {
    state: RefCell<State>,
}

impl Fake {
    pub fn new() -> Fake {
        Fake::default()
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

    /// Sets a link's alias as someone else (not a request) would.
    pub fn set_alias(&self, index: u32, alias: &str) {
        if let Some(l) = self
            .state
            .borrow_mut()
            .links
            .iter_mut()
            .find(|l| l.index == index)
        {
            l.alias = Some(alias.to_owned());
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

    /// Every change requested so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.borrow().requests.clone()
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

    fn add_macvlan(&self, spec: &NewMacvlan<'_>) -> Result<()> {
        self.state.borrow_mut().requests.push(Request::AddMacvlan {
            name: spec.name.to_owned(),
            master_index: spec.master_index,
        });
        if self.link_by_name(spec.name)?.is_some() {
            return Err(Error::Refused {
                what: "create macvlan".into(),
                errno: Errno::EEXIST,
                ext_ack: None,
            });
        }
        let index = self.with_link(spec.name, Some(InfoKind::MacVlan), LinkFlags::Multicast);
        if let Some(l) = self.state.borrow_mut().link_mut(index) {
            l.macvlan_mode = Some(spec.mode);
        }
        Ok(())
    }

    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let mut state = self.state.borrow_mut();
        let mut failure = None;
        for op in ops {
            state.requests.push(Request::Op(op.clone()));
            match state.carry_out(&op) {
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
