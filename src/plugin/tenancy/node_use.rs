//! What of the node's own a passthru master carries. passthru hands the whole link to one
//! pod: whatever the node sends through it is gone with it. So any node address on it, and
//! any route of any table through it, counts, whichever way the route names the link: its
//! own device, one leg of a multipath route, a nexthop object or group (the kernel matches
//! those for us, whatever `nexthop_compat_mode` says), in both families. Links stacked on the
//! master (VLAN children, a host shim) and the link that holds it (a VRF, a bond) go with it,
//! so theirs count too. Only what every IPv6 interface has (link-local addresses, the
//! link-local and multicast routes) is not the node's.

use crate::sys::netlink::{Family, Link, Result, Rtnl};

use super::uplink::is_link_scoped;

/// What of the node's the master (or a link that goes with it) carries, if anything.
pub fn node_use(nl: &dyn Rtnl, master: &Link) -> Result<Option<String>> {
    for link in going_with(nl, master)? {
        let whose = if link.index == master.index {
            "it".to_owned()
        } else {
            format!("{}, which goes with it,", link.name)
        };
        let own = nl
            .addresses(Some(link.index))?
            .into_iter()
            .map(|(_, a)| a)
            .find(|a| !is_link_scoped(a));
        if let Some(a) = own {
            return Ok(Some(format!("{whose} holds the node's address {a}")));
        }
        for family in [Family::V4, Family::V6] {
            let route = nl
                .routes_through(family, link.index)?
                .into_iter()
                .find(|r| !is_link_scoped(&r.dst));
            if let Some(r) = route {
                let what = if r.dst.prefix() == 0 {
                    "default route"
                } else {
                    "route"
                };
                return Ok(Some(format!(
                    "{whose} carries the node's {what} to {} (table {})",
                    r.dst, r.table
                )));
            }
        }
    }
    Ok(None)
}

/// The master, every link stacked on it (and on those), and the link that holds it.
fn going_with(nl: &dyn Rtnl, master: &Link) -> Result<Vec<Link>> {
    let links = nl.links()?;
    let mut with = vec![master.clone()];
    let mut next = 0;
    while next < with.len() {
        let below = with[next].index;
        for upper in links.iter().filter(|l| l.lower_here == Some(below)) {
            if !with.iter().any(|w| w.index == upper.index) {
                with.push(upper.clone());
            }
        }
        next += 1;
    }
    if let Some(holder) = master
        .controller
        .and_then(|c| links.iter().find(|l| l.index == c))
    {
        with.push(holder.clone());
    }
    Ok(with)
}
