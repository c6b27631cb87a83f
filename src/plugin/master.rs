//! Master selection: the configured master, else the interface holding an address in the
//! IPAM range's subnet, else the default route's.

use ipnetwork::IpNetwork;

use crate::cni::{Error, Kind, Result};
use crate::ipam::Ipam;
use crate::plugin::config::MacvlanConf;
use crate::sys::netlink::{Link, Rtnl};

/// The master: the configured one; without one, the interface that holds an address in
/// the subnet of the IPAM range (the LAN the pods join: robots often route by default
/// through Wi-Fi or LTE while the ROS LAN is wired), else the interface of the default
/// route. For an omitted master it also says which was taken and why, for the log line.
pub fn resolve_master(
    nl: &dyn Rtnl,
    conf: &MacvlanConf,
    ipam: &Ipam,
) -> Result<(Link, Option<String>)> {
    if let Some(name) = &conf.master {
        let link = nl.link_by_name(name)?.ok_or_else(|| {
            Error::new(Kind::MasterNotFound, format!(
                "master interface {name} not found on node; set \"master\" to the node's LAN interface"
            ))
        })?;
        return Ok((link, None));
    }
    let subnets = ipam.subnets();
    if let Some((link, addr)) = lan_interface(nl, &subnets)? {
        let why = format!(
            "master {} taken: it holds {addr}, in the range's subnet",
            link.name
        );
        return Ok((link, Some(why)));
    }
    let index = nl.default_route_link()?.ok_or_else(|| {
        Error::new(
            Kind::MasterNotFound,
            "no \"master\" given, no interface holds an address in the range's subnet and the node has no default route to take it from; set \"master\"",
        )
    })?;
    let link = nl.link_by_index(index)?.ok_or_else(|| {
        Error::new(
            Kind::MasterNotFound,
            format!("default route interface {index} vanished"),
        )
    })?;
    let why = if subnets.is_empty() {
        format!(
            "master {} taken: the interface of the default route",
            link.name
        )
    } else {
        format!(
            "master {} taken: the interface of the default route (no interface holds an address in the range's subnet)",
            link.name
        )
    };
    Ok((link, Some(why)))
}

/// The interface (lowest index first) holding an address inside one of `subnets`: not
/// loopback, not a macvlan (a host shim on the LAN holds such an address too).
fn lan_interface(nl: &dyn Rtnl, subnets: &[IpNetwork]) -> Result<Option<(Link, IpNetwork)>> {
    if subnets.is_empty() {
        return Ok(None);
    }
    let mut held: Vec<(u32, IpNetwork)> = nl
        .addresses(None)?
        .into_iter()
        .filter(|(_, a)| subnets.iter().any(|s| s.contains(a.ip())))
        .collect();
    held.sort_by_key(|(index, _)| *index);
    for (index, addr) in held {
        if let Some(link) = nl.link_by_index(index)? {
            if !link.is_loopback() && !link.is_macvlan() {
                return Ok(Some((link, addr)));
            }
        }
    }
    Ok(None)
}
