//! The ROS-aware part: multicast leaves through the macvlan, its rp_filter is loose, and
//! the pod's interfaces that cannot carry multicast stop claiming they can (so DDS
//! implementations that rank interfaces pick this one), and DEL of all that. The group
//! memberships are `membership`'s; CHECK's reading of it all is `diagnosis`'s.

use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;

use crate::cni::{Error, Result};
use crate::plugin::config::MulticastConf;
use crate::sys::netlink::{route_out, Ipv4Setting, Link, LinkChange, Op, Rtnl};
use crate::sys::netns::Netns;

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

/// rp_filter 2 (loose): 1 (strict) drops discovery from peers whose route points elsewhere.
const RP_FILTER_LOOSE: i32 = 2;

/// The IPv4 settings of the new interface this part asks for.
pub fn interface_settings(mc: &MulticastConf) -> Vec<Ipv4Setting> {
    if mc.loose_rp_filter {
        vec![Ipv4Setting::RpFilter(RP_FILTER_LOOSE)]
    } else {
        Vec::new()
    }
}

/// The routes that send multicast out the new interface, once it is up and addressed.
/// Present already means a first ros-macvlan attachment in this pod carries them.
pub fn route_ops(index: u32, mc: &MulticastConf) -> Vec<Op> {
    mc.routes
        .iter()
        .map(|dst| Op::add_route(index, IpNetwork::V4(*dst), None))
        .collect()
}

/// Takes the multicast routes off a link that stays up a little while longer (see
/// `macvlan::del`), so they can move to another attachment at once.
pub fn route_removal_ops(index: u32, mc: &MulticastConf) -> Vec<Op> {
    mc.routes
        .iter()
        .map(|dst| Op::del_route(&route_out(index, IpNetwork::V4(*dst), None)))
        .collect()
}

/// The interfaces DDS could wrongly choose: not loopback, not a macvlan (ours or another
/// attachment's), not the attachment itself, not its master when that lives in the pod
/// (`linkInContainer`: the master is on the LAN too).
pub(crate) fn is_candidate(link: &Link, ifname: &str, master: Option<u32>) -> bool {
    link.name != ifname && !link.is_loopback() && !link.is_macvlan() && master != Some(link.index)
}

pub fn mark_other_interfaces(nl: &dyn Rtnl, ifname: &str, master: Option<u32>) -> Result<()> {
    let mut ops = Vec::new();
    for link in nl.links()? {
        if !is_candidate(&link, ifname, master) {
            continue;
        }
        let alias = link.alias.clone().unwrap_or_default();
        match parse_mark(&alias) {
            // Marked by another attachment of this pod: count this one in too.
            Some((mut owners, previous)) if !owners.contains(&ifname) => {
                owners.push(ifname);
                ops.push(
                    LinkChange::of(link.index)
                        .alias(&mark_alias(&owners, previous))
                        .op(),
                );
            }
            Some(_) => {}
            None if link.is_multicast() => ops.push(
                LinkChange::of(link.index)
                    .alias(&mark_alias(&[ifname], &alias))
                    .multicast(false)
                    .op(),
            ),
            None => {}
        }
    }
    Ok(nl.apply(ops)?)
}

/// Takes this attachment off every mark; an interface no attachment wants off multicast any
/// more gets its MULTICAST flag and alias back.
pub fn restore_ops(links: &[Link], ifname: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    for link in links {
        let Some((mut owners, previous)) = link.alias.as_deref().and_then(parse_mark) else {
            continue;
        };
        if !owners.contains(&ifname) {
            continue;
        }
        owners.retain(|o| *o != ifname);
        ops.push(if owners.is_empty() {
            LinkChange::of(link.index)
                .multicast(true)
                .alias(previous)
                .op()
        } else {
            LinkChange::of(link.index)
                .alias(&mark_alias(&owners, previous))
                .op()
        });
    }
    ops
}

/// DEL of one of several attachments: the multicast routes went with its link, so they move
/// to the first of `heirs` (the pod's other attachments that joined the same groups) that
/// is still there.
pub fn hand_over_routes(
    nl: &dyn Rtnl,
    links: &[Link],
    heirs: &[String],
    mc: &MulticastConf,
) -> Result<()> {
    if mc.routes.is_empty() {
        return Ok(());
    }
    match links
        .iter()
        .find(|l| l.is_macvlan() && heirs.contains(&l.name))
    {
        Some(heir) => Ok(nl.apply(route_ops(heir.index, mc))?),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testing::{Fake, Request};
    use netlink_packet_route::link::{InfoKind, LinkFlags};

    fn up_multicast() -> LinkFlags {
        LinkFlags::Up | LinkFlags::Multicast
    }

    /// A pod as the cluster network leaves it: lo, eth0 (a veth, multicast-capable), and
    /// two ros-macvlan attachments.
    fn pod() -> (Fake, [u32; 4]) {
        let nl = Fake::new();
        let lo = nl.with_link("lo", None, LinkFlags::Up | LinkFlags::Loopback);
        let eth0 = nl.with_link("eth0", Some(InfoKind::Veth), up_multicast());
        let net1 = nl.with_link("net1", Some(InfoKind::MacVlan), up_multicast());
        let net2 = nl.with_link("net2", Some(InfoKind::MacVlan), up_multicast());
        (nl, [lo, eth0, net1, net2])
    }

    #[test]
    fn marking_turns_off_multicast_on_eth0_only_and_each_attachment_counts_itself_in() {
        let (nl, [lo, eth0, net1, net2]) = pod();
        nl.set_alias(eth0, "uplink");

        mark_other_interfaces(&nl, "net1", None).unwrap();
        assert_eq!(
            nl.requests(),
            vec![Request::Op(
                LinkChange::of(eth0)
                    .alias(&mark_alias(&["net1"], "uplink"))
                    .multicast(false)
                    .op()
            )],
            "only eth0 changes: not lo, not the attachment, not another macvlan"
        );
        assert!(!nl.link(eth0).unwrap().is_multicast());
        for untouched in [lo, net1, net2] {
            assert_eq!(nl.link(untouched).unwrap().alias, None);
        }

        // A second attachment finds eth0 marked already: it adds itself, nothing else.
        nl.clear_requests();
        mark_other_interfaces(&nl, "net2", None).unwrap();
        assert_eq!(
            nl.requests(),
            vec![Request::Op(
                LinkChange::of(eth0)
                    .alias(&mark_alias(&["net1", "net2"], "uplink"))
                    .op()
            )]
        );
        // Marking again changes nothing.
        nl.clear_requests();
        mark_other_interfaces(&nl, "net2", None).unwrap();
        assert_eq!(nl.requests(), vec![]);

        // The first DEL leaves eth0 off for the second; the last one restores it all.
        nl.apply(restore_ops(&nl.links().unwrap(), "net1")).unwrap();
        let e = nl.link(eth0).unwrap();
        assert!(!e.is_multicast());
        assert_eq!(e.alias, Some(mark_alias(&["net2"], "uplink")));
        nl.apply(restore_ops(&nl.links().unwrap(), "net2")).unwrap();
        let e = nl.link(eth0).unwrap();
        assert!(e.is_multicast());
        assert_eq!(e.alias.as_deref(), Some("uplink"));
    }

    #[test]
    fn an_interface_without_multicast_is_left_alone() {
        let nl = Fake::new();
        let eth0 = nl.with_link("eth0", Some(InfoKind::Veth), LinkFlags::Up);
        nl.with_link("net1", Some(InfoKind::MacVlan), up_multicast());
        mark_other_interfaces(&nl, "net1", None).unwrap();
        assert_eq!(nl.requests(), vec![]);
        assert!(restore_ops(&nl.links().unwrap(), "net1").is_empty());
        assert_eq!(nl.link(eth0).unwrap().alias, None);
    }

    fn multicast_routes(nl: &Fake) -> Vec<(IpNetwork, Option<u32>)> {
        nl.all_routes().iter().map(|r| (r.dst, r.oif)).collect()
    }

    #[test]
    fn multicast_routes_move_to_the_remaining_attachment() {
        let (nl, [_, eth0, net1, net2]) = pod();
        let mc = MulticastConf::default();
        let dst = IpNetwork::V4(mc.routes[0]);

        // Both ADDs ask for the route; the second finds it there (EEXIST is "already so").
        nl.apply(route_ops(net1, &mc)).unwrap();
        nl.apply(route_ops(net2, &mc)).unwrap();
        assert_eq!(multicast_routes(&nl), vec![(dst, Some(net1))]);

        // DEL of net1: its route goes, and net2 (which joined the same groups) takes it.
        nl.apply(route_removal_ops(net1, &mc)).unwrap();
        assert_eq!(multicast_routes(&nl), vec![]);
        let remaining: Vec<Link> = nl
            .links()
            .unwrap()
            .into_iter()
            .filter(|l| l.index != net1)
            .collect();
        nl.clear_requests();
        hand_over_routes(&nl, &remaining, &["net2".to_owned()], &mc).unwrap();
        assert_eq!(
            nl.requests(),
            vec![Request::Op(Op::add_route(net2, dst, None))]
        );
        assert_eq!(multicast_routes(&nl), vec![(dst, Some(net2))]);

        // No heir (or an heir that is not a macvlan of the pod): nothing is asked.
        nl.clear_requests();
        hand_over_routes(&nl, &remaining, &[], &mc).unwrap();
        hand_over_routes(&nl, &remaining, &["eth0".to_owned()], &mc).unwrap();
        assert_eq!(nl.requests(), vec![]);
        assert!(nl.link(eth0).is_some());
    }

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
