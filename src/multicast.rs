//! The ROS-aware part: the pod joins the DDS discovery group on the macvlan with a
//! membership the kernel holds, multicast leaves through it, its rp_filter is loose, and
//! the pod's interfaces that cannot carry multicast stop claiming they can (so DDS
//! implementations that rank interfaces pick this one). CHECK and DEL of all that.

use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;
use rtnetlink::packet_route::route::RouteType;

use crate::cni::config::MulticastConf;
use crate::cni::{Error, Result};
use crate::netlink::{Link, Netlink, RouteEntry, TABLE_LOCAL, TABLE_MAIN};
use crate::netns::Netns;

/// Interfaces whose MULTICAST flag the plugin cleared carry this alias, naming the
/// attachments that want it off (several ros-macvlan attachments may share a pod) and the
/// alias the interface had before, so the last DEL restores exactly what was changed.
const MARK_PREFIX: &str = "ros-macvlan:multicast-off-for:";

fn mark_alias(owners: &[&str], previous: &str) -> String {
    format!("{MARK_PREFIX}{};{previous}", owners.join(","))
}

/// The attachments and previous alias a mark names, if the alias is one of ours.
fn parse_mark(alias: &str) -> Option<(Vec<&str>, &str)> {
    let (owners, previous) = alias.strip_prefix(MARK_PREFIX)?.split_once(';')?;
    Some((
        owners.split(',').filter(|o| !o.is_empty()).collect(),
        previous,
    ))
}

/// The RP filter values: 1 strict (drops discovery from peers whose route points elsewhere).
const RP_FILTER_LOOSE: &str = "2";

fn rp_filter_path(ifname: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter")
}

/// Sets everything up on the freshly configured (up, addressed) interface.
pub async fn setup(nl: &Netlink, ns: &Netns, link: &Link, mc: &MulticastConf) -> Result<()> {
    if mc.loose_rp_filter {
        let path = rp_filter_path(&link.name);
        ns.run(|| std::fs::write(&path, RP_FILTER_LOOSE))?
            .map_err(|e| Error::io(format!("set {path}"), e))?;
    }
    for group in &mc.groups {
        nl.join_group(link.index, *group).await?;
    }
    if !mc.groups.is_empty() {
        drop_group_local_routes(nl, link.index, &mc.groups).await?;
    }
    crate::macvlan::crash_point("joined");
    for dst in &mc.routes {
        // Present already means a first ros-macvlan attachment in this pod carries it.
        nl.add_route(link.index, IpNetwork::V4(*dst), None).await?;
    }
    if mc.mark_other_interfaces {
        mark_other_interfaces(nl, &link.name).await?;
    }
    Ok(())
}

/// Joining a group through an auto-join address also installs `local <group>` in the local
/// table, which turns the pod's own sends to the group into loopback: they would never
/// leave on the LAN. The membership does not depend on that route, so it goes.
async fn drop_group_local_routes(nl: &Netlink, index: u32, groups: &[Ipv4Addr]) -> Result<()> {
    for route in group_local_routes(nl, index, groups).await? {
        nl.del_route(&route).await?;
    }
    Ok(())
}

async fn group_local_routes(
    nl: &Netlink,
    index: u32,
    groups: &[Ipv4Addr],
) -> Result<Vec<RouteEntry>> {
    Ok(nl
        .routes_v4(TABLE_LOCAL)
        .await?
        .into_iter()
        .filter(|r| r.kind == RouteType::Local && r.oif == Some(index))
        .filter(
            |r| matches!(r.dst, IpNetwork::V4(d) if d.prefix() == 32 && groups.contains(&d.ip())),
        )
        .collect())
}

/// The interfaces DDS could wrongly choose: not loopback, not a macvlan (ours or another
/// attachment's), not the attachment itself.
fn is_candidate(link: &Link, ifname: &str) -> bool {
    link.name != ifname && !link.is_loopback() && !link.is_macvlan()
}

/// A candidate that still offers multicast to DDS.
fn is_rival(link: &Link, ifname: &str) -> bool {
    is_candidate(link, ifname) && link.is_multicast()
}

async fn mark_other_interfaces(nl: &Netlink, ifname: &str) -> Result<()> {
    for link in nl.links().await? {
        if !is_candidate(&link, ifname) {
            continue;
        }
        let alias = link.alias.clone().unwrap_or_default();
        match parse_mark(&alias) {
            // Marked by another attachment of this pod: count this one in too.
            Some((mut owners, previous)) if !owners.contains(&ifname) => {
                owners.push(ifname);
                nl.set_alias(link.index, &mark_alias(&owners, previous))
                    .await?;
            }
            Some(_) => {}
            None if link.is_multicast() => {
                nl.set_alias(link.index, &mark_alias(&[ifname], &alias))
                    .await?;
                nl.set_multicast(link.index, false).await?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Leaves the groups before the interface goes (see `Netlink::leave_group`).
pub async fn leave(nl: &Netlink, index: u32, mc: &MulticastConf) -> Result<()> {
    for group in &mc.groups {
        nl.leave_group(index, *group).await?;
    }
    Ok(())
}

/// Takes this attachment off every mark; an interface no attachment wants off multicast any
/// more gets its MULTICAST flag and alias back.
pub async fn restore(nl: &Netlink, links: &[Link], ifname: &str) -> Result<()> {
    for link in links {
        let Some((mut owners, previous)) = link.alias.as_deref().and_then(parse_mark) else {
            continue;
        };
        if !owners.contains(&ifname) {
            continue;
        }
        owners.retain(|o| *o != ifname);
        if owners.is_empty() {
            nl.set_multicast(link.index, true).await?;
            nl.set_alias(link.index, previous).await?;
        } else {
            nl.set_alias(link.index, &mark_alias(&owners, previous))
                .await?;
        }
    }
    Ok(())
}

/// DEL of one of several attachments: the multicast routes went with its link, so they move
/// to another attachment of the pod that joined the same groups, if one is left.
pub async fn hand_over_routes(
    nl: &Netlink,
    ns: &Netns,
    links: &[Link],
    mc: &MulticastConf,
) -> Result<()> {
    if mc.routes.is_empty() {
        return Ok(());
    }
    for link in links.iter().filter(|l| l.is_macvlan()) {
        let joined = joined_groups(ns, &link.name)?;
        if mc.groups.iter().any(|g| joined.contains(g)) {
            for dst in &mc.routes {
                nl.add_route(link.index, IpNetwork::V4(*dst), None).await?;
            }
            return Ok(());
        }
    }
    Ok(())
}

/// The groups the kernel lists as joined on `ifname` in the namespace's /proc/net/igmp.
pub fn joined_groups(ns: &Netns, ifname: &str) -> Result<Vec<Ipv4Addr>> {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/igmp"))?
        .map_err(|e| Error::io("read /proc/net/igmp", e))?;
    Ok(parse_igmp(&text, ifname))
}

/// /proc/net/igmp: a device line (`4\tnet1      :     2      V3`), then one indented line per
/// group: the address bytes as the kernel prints a __be32 with %08X (little-endian hosts).
fn parse_igmp(text: &str, ifname: &str) -> Vec<Ipv4Addr> {
    let mut current = String::new();
    let mut groups = Vec::new();
    for line in text.lines().skip(1) {
        if line.starts_with('\t') || line.starts_with(' ') {
            if current == ifname {
                if let Some(hex) = line.split_whitespace().next() {
                    if let Ok(n) = u32::from_str_radix(hex, 16) {
                        groups.push(Ipv4Addr::from(n.to_le_bytes()));
                    }
                }
            }
        } else {
            current = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_owned();
        }
    }
    groups
}

/// CHECK: the membership, the routes, rp_filter and the marking are as ADD left them.
pub async fn check(nl: &Netlink, ns: &Netns, link: &Link, mc: &MulticastConf) -> Result<()> {
    let joined = joined_groups(ns, &link.name)?;
    for g in &mc.groups {
        if !joined.contains(g) {
            return Err(Error::CheckFailed(format!(
                "{} has no membership of multicast group {g} (/proc/net/igmp)",
                link.name
            )));
        }
    }
    if let Some(r) = group_local_routes(nl, link.index, &mc.groups)
        .await?
        .first()
    {
        return Err(Error::CheckFailed(format!(
            "local route {} in the pod turns sends to the group into loopback",
            r.dst
        )));
    }
    let main = nl.routes_v4(TABLE_MAIN).await?;
    for dst in &mc.routes {
        if !main
            .iter()
            .any(|r| r.dst == IpNetwork::V4(*dst) && r.gw.is_none())
        {
            return Err(Error::CheckFailed(format!(
                "multicast route {dst} is missing"
            )));
        }
    }
    if mc.loose_rp_filter {
        let path = rp_filter_path(&link.name);
        let value = ns
            .run(|| std::fs::read_to_string(&path))?
            .map_err(|e| Error::io(format!("read {path}"), e))?;
        if value.trim() == "1" {
            return Err(Error::CheckFailed(format!(
                "{path} is strict (1); discovery from peers is dropped"
            )));
        }
    }
    if mc.mark_other_interfaces {
        if let Some(rival) = nl.links().await?.iter().find(|l| is_rival(l, &link.name)) {
            return Err(Error::CheckFailed(format!(
                "{} is multicast-capable; DDS may choose it instead of {}",
                rival.name, link.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn igmp_table_is_parsed_per_device() {
        let text = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
1\tlo        :     1      V3\n\t\t\t\t010000E0     1 0:00000000\t\t0\n\
4\tnet1      :     2      V3\n\t\t\t\t0100FFEF     1 0:00000000\t\t0\n\t\t\t\t010000E0     1 0:00000000\t\t0\n";
        assert_eq!(
            parse_igmp(text, "net1"),
            vec![Ipv4Addr::new(239, 255, 0, 1), Ipv4Addr::new(224, 0, 0, 1)]
        );
        assert_eq!(parse_igmp(text, "lo"), vec![Ipv4Addr::new(224, 0, 0, 1)]);
        assert!(parse_igmp(text, "eth0").is_empty());
    }

    #[test]
    fn marks_round_trip() {
        assert_eq!(
            parse_mark(&mark_alias(&["net1"], "")),
            Some((vec!["net1"], ""))
        );
        assert_eq!(
            parse_mark(&mark_alias(&["net1", "net2"], "uplink;x")),
            Some((vec!["net1", "net2"], "uplink;x"))
        );
        assert_eq!(parse_mark("something else"), None);
    }
}
