//! Host access: the node's own processes (ROS 2 tools on the robot's host, hostNetwork pods)
//! reach the pods on the node's macvlan network. A macvlan's master never delivers to its own
//! macvlan children (a kernel property of macvlan), so the node talks to its pods through a
//! "shim": a macvlan of its own on the same master, in bridge mode, with an address of its own
//! and a route for each pod range through it.
//!
//! The shim only adds: it never takes the node's own address, default route or DNS, and the
//! LAN keeps reaching the node's own address on the master. `ensure` makes a node match a
//! `Spec` and says what it changed (nothing, when run again); `remove` takes it all back.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

use crate::cni::{Error, Kind, Result};
use crate::sys::netlink::MacvlanMode;
use crate::sys::netlink::{
    format_mac, read_back, Ipv4Setting, Link, LinkChange, NewMacvlan, Op, RouteEntry, Rtnl,
    TABLE_MAIN,
};

/// Host access on one master, as `ros-macvlan host-access` takes it and as the node
/// configuration's `hostAccess` list holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// The LAN interface the pods' macvlans hang off.
    pub master: String,
    /// The shim's own LAN address. Only the address is put on the shim (as a /32): the LAN
    /// subnet's route stays on the master, so the node's other traffic is unchanged.
    pub address: Ipv4Network,
    /// The ranges the pods' addresses come from; each is routed through the shim.
    pub pod_ranges: Vec<Ipv4Network>,
    /// Clear the master's MULTICAST flag, so CycloneDDS on the node picks the shim.
    #[serde(default)]
    pub exclusive_multicast: bool,
}

/// The shim carries this alias followed by its pod ranges, so `doctor --host` and `remove`
/// know it for ours.
const SHIM_MARK: &str = "ros-macvlan:host-access:";

/// A master whose MULTICAST flag host access cleared carries this alias followed by the
/// alias it had before, so `remove` gives back exactly what was there.
const MASTER_MARK: &str = "ros-macvlan:host-access-multicast-off;";

/// ARP on the shim: answer only for the shim's own address (arp_ignore 1), so the node's own
/// address stays bound to the master's MAC on the LAN; announce the address when the shim
/// comes up (arp_notify), so neighbours that knew an earlier shim update at once.
const SHIM_IPV4_CONF: [Ipv4Setting; 2] = [Ipv4Setting::ArpIgnore(1), Ipv4Setting::ArpNotify(1)];

impl Spec {
    /// Refuses a spec that cannot work, before any change.
    pub fn validate(&self) -> Result<()> {
        if self.pod_ranges.is_empty() {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "host access on {} needs at least one pod range (--pod-range CIDR)",
                    self.master
                ),
            ));
        }
        if let Some(r) = self
            .pod_ranges
            .iter()
            .find(|r| r.contains(self.address.ip()))
        {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                "the shim's address {} lies inside pod range {r}: IPAM could hand it to a pod; \
                 give the shim a LAN address outside every pod range",
                self.address.ip()
            ),
            ));
        }
        let ip = self.address.ip();
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!("{ip} cannot be the shim's address: give it a unicast LAN address"),
            ));
        }
        if let Some(problem) = crate::sys::netlink::ifname_problem(&self.master) {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!("{:?} is not an interface name: {problem}", self.master),
            ));
        }
        Ok(())
    }

    pub fn shim_name(&self) -> String {
        shim_name(&self.master)
    }

    fn host_address(&self) -> IpNetwork {
        IpNetwork::V4(Ipv4Network::from(self.address.ip()))
    }

    fn shim_alias(&self) -> String {
        let ranges: Vec<String> = self.pod_ranges.iter().map(ToString::to_string).collect();
        format!("{SHIM_MARK}{}", ranges.join(","))
    }
}

/// The shim's name on `master`: `rmshim-<master>` when that fits an interface name, else
/// `rmshim-` and a hash of the master's name.
pub fn shim_name(master: &str) -> String {
    let plain = format!("rmshim-{master}");
    if plain.len() <= 15 {
        plain
    } else {
        format!(
            "rmshim-{:08x}",
            crate::sys::stable_hash::stable_hash(master.as_bytes()) as u32
        )
    }
}

/// The pod ranges a shim's alias names, if the link is a shim of ours.
pub fn shim_ranges(link: &Link) -> Option<Vec<Ipv4Network>> {
    let ranges = link.alias.as_deref()?.strip_prefix(SHIM_MARK)?;
    Some(ranges.split(',').filter_map(|r| r.parse().ok()).collect())
}

/// The shim's MAC: locally administered, unicast, derived from the node's identity and the
/// master's name and MAC, so a re-created shim (after a restart, or by the agent) has the
/// same one and the LAN neighbours' ARP caches stay right.
pub fn shim_mac(node: &[u8], master: &Link) -> [u8; 6] {
    let mut input = node.to_vec();
    input.push(0);
    input.extend_from_slice(master.name.as_bytes());
    input.push(0);
    input.extend_from_slice(&master.mac);
    let h = crate::sys::stable_hash::stable_hash(&input).to_le_bytes();
    let mut mac = [h[0], h[1], h[2], h[3], h[4], h[5]];
    mac[0] = (mac[0] | 0x02) & 0xfe;
    mac
}

/// The node's identity: /etc/machine-id, or the hostname where there is none.
pub fn node_identity() -> Vec<u8> {
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if !id.trim().is_empty() => id.trim().as_bytes().to_vec(),
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// Makes the node match `spec`; returns what was changed, one line each (none: it was so).
pub fn ensure(nl: &dyn Rtnl, spec: &Spec) -> Result<Vec<String>> {
    spec.validate()?;
    let name = spec.shim_name();
    let master = nl.link_by_name(&spec.master)?.ok_or_else(|| {
        Error::new(
            Kind::MasterNotFound,
            format!(
            "master {} does not exist on this node: name the LAN interface the pods' macvlans use",
            spec.master
        ),
        )
    })?;
    let address = spec.host_address();
    if let Some((index, _)) = nl
        .addresses(None)?
        .into_iter()
        .find(|(_, a)| a.ip() == address.ip())
    {
        let holder = nl.link_by_index(index)?.map(|l| l.name).unwrap_or_default();
        if holder != name {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "{} is already an address of {holder} on this node: the shim needs a LAN \
                 address of its own, never the node's",
                    address.ip()
                ),
            ));
        }
    }
    let mac = shim_mac(&node_identity(), &master);
    let mut changes = Vec::new();

    let shim = match nl.link_by_name(&name)? {
        Some(link) if is_current_shim(&link, &mac) => link,
        Some(link) => {
            if shim_ranges(&link).is_none() {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!(
                    "a link named {name} exists and is not a ros-macvlan shim; rename or remove it"
                ),
                ));
            }
            nl.apply(vec![Op::del_link(link.index)])?;
            changes.push(format!("removed {name}, a shim that no longer matched"));
            create_shim(nl, spec, &master, mac, &mut changes)?
        }
        None => create_shim(nl, spec, &master, mac, &mut changes)?,
    };

    // The shim is ours: only the spec's address, the spec's alias, up.
    let mut ops = Vec::new();
    let on_shim: Vec<IpNetwork> = nl
        .addresses(Some(shim.index))?
        .into_iter()
        .map(|(_, a)| a)
        .filter(IpNetwork::is_ipv4)
        .collect();
    for stale in on_shim.iter().filter(|a| **a != address) {
        ops.push(Op::del_address(shim.index, *stale));
        changes.push(format!("removed {stale} from {name}"));
    }
    if !on_shim.contains(&address) {
        ops.push(Op::add_address(shim.index, address));
        changes.push(format!("added {address} to {name}"));
    }
    if shim.alias.as_deref() != Some(spec.shim_alias().as_str()) {
        ops.push(LinkChange::of(shim.index).alias(&spec.shim_alias()).op());
        changes.push(format!("noted the pod ranges in {name}'s alias"));
    }
    if !shim.is_up() {
        ops.push(LinkChange::of(shim.index).up().op());
        changes.push(format!("set {name} up"));
    }
    nl.apply(ops)?;

    // Routes need the link up; a route for a pod range on another link is someone else's.
    let routes = nl.routes_v4(TABLE_MAIN)?;
    let mut ops = Vec::new();
    for range in &spec.pod_ranges {
        let dst = IpNetwork::V4(*range);
        if routes
            .iter()
            .any(|r| r.dst == dst && r.oif == Some(shim.index))
        {
            continue;
        }
        if let Some(other) = routes.iter().find(|r| r.dst == dst) {
            let via = other
                .oif
                .and_then(|i| nl.link_by_index(i).ok().flatten())
                .map(|l| l.name)
                .unwrap_or_else(|| "another route".into());
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "a route for pod range {range} already goes through {via}; remove it or leave \
                 the range out of host access"
                ),
            ));
        }
        ops.push(Op::add_route_from(
            shim.index,
            dst,
            IpAddr::V4(spec.address.ip()),
        ));
        changes.push(format!(
            "routed {range} through {name} from {}",
            spec.address.ip()
        ));
    }
    for stale in routes.iter().filter(|r| {
        r.oif == Some(shim.index)
            && !matches!(r.dst, IpNetwork::V4(d) if spec.pod_ranges.contains(&d))
    }) {
        ops.push(Op::del_route(stale));
        changes.push(format!("removed the route for {} from {name}", stale.dst));
    }
    nl.apply(ops)?;

    changes.extend(set_exclusive_multicast(
        nl,
        &master,
        spec.exclusive_multicast,
    )?);
    Ok(changes)
}

fn is_current_shim(link: &Link, mac: &[u8; 6]) -> bool {
    link.is_macvlan()
        && link.macvlan_mode == Some(MacvlanMode::Bridge.kernel())
        && link.mac == mac
        && shim_ranges(link).is_some()
}

/// Creates the shim down, with its ARP settings, alias and address, then brings it up, so
/// its first announcement already carries the address.
fn create_shim(
    nl: &dyn Rtnl,
    spec: &Spec,
    master: &Link,
    mac: [u8; 6],
    changes: &mut Vec<String>,
) -> Result<Link> {
    let name = spec.shim_name();
    nl.add_macvlan(&NewMacvlan {
        name: &name,
        master_index: master.index,
        mode: MacvlanMode::Bridge.kernel(),
        mtu: None,
        mac: Some(mac),
        bc_queue_len: None,
        target_netns: None,
    })?;
    let link = read_back(nl.link_by_name(&name)?, &name)?;
    let configured = nl.apply(vec![
        LinkChange::of(link.index)
            .ipv4_conf(&SHIM_IPV4_CONF)
            .alias(&spec.shim_alias())
            .op(),
        Op::add_address(link.index, spec.host_address()),
    ]);
    if let Err(e) = configured {
        let _ = nl.apply(vec![Op::del_link(link.index)]);
        return Err(e.into());
    }
    changes.push(format!(
        "created {name}: macvlan (bridge) on {} with MAC {}, arp_notify and arp_ignore on",
        spec.master,
        format_mac(&mac)
    ));
    changes.push(format!("added {} to {name}", spec.host_address()));
    // Read back with its alias and address, still down: `ensure` brings it up.
    Ok(read_back(nl.link_by_index(link.index)?, &name)?)
}

/// Clears (`on`) or gives back the master's MULTICAST flag; only a flag host access cleared
/// itself is given back.
fn set_exclusive_multicast(nl: &dyn Rtnl, master: &Link, on: bool) -> Result<Vec<String>> {
    let alias = master.alias.clone().unwrap_or_default();
    let previous = alias.strip_prefix(MASTER_MARK);
    let mut changes = Vec::new();
    match (on, previous) {
        (true, None) if master.is_multicast() => {
            nl.apply(vec![LinkChange::of(master.index)
                .multicast(false)
                .alias(&format!("{MASTER_MARK}{alias}"))
                .op()])?;
            changes.push(format!(
                "cleared {}'s MULTICAST flag (CycloneDDS on the node picks the shim)",
                master.name
            ));
        }
        (true, Some(_)) if master.is_multicast() => {
            nl.apply(vec![LinkChange::of(master.index).multicast(false).op()])?;
            changes.push(format!("cleared {}'s MULTICAST flag again", master.name));
        }
        (false, Some(previous)) => {
            nl.apply(vec![LinkChange::of(master.index)
                .multicast(true)
                .alias(previous)
                .op()])?;
            changes.push(format!("gave {} its MULTICAST flag back", master.name));
        }
        _ => {}
    }
    Ok(changes)
}

/// Takes host access off `master`: the shim (its address and routes go with it) and the
/// MULTICAST flag host access cleared. Returns what was changed.
pub fn remove(nl: &dyn Rtnl, master: &str) -> Result<Vec<String>> {
    let name = shim_name(master);
    let mut changes = Vec::new();
    if let Some(link) = nl.link_by_name(&name)? {
        if shim_ranges(&link).is_none() {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!("{name} is not a ros-macvlan shim; it was left alone"),
            ));
        }
        nl.apply(vec![Op::del_link(link.index)])?;
        changes.push(format!(
            "removed {name} with its address and pod-range routes"
        ));
    }
    if let Some(link) = nl.link_by_name(master)? {
        changes.extend(set_exclusive_multicast(nl, &link, false)?);
    }
    Ok(changes)
}

/// What `doctor --host` reads of one shim.
pub struct ShimState {
    pub link: Link,
    pub addresses: Vec<Ipv4Addr>,
    /// The pod ranges its alias names, each with whether a route sends it through the shim.
    pub ranges: Vec<(Ipv4Network, bool)>,
}

/// Every shim of ours on this node.
pub fn shims(nl: &dyn Rtnl) -> Result<Vec<ShimState>> {
    let routes: Vec<RouteEntry> = nl.routes_v4(TABLE_MAIN)?;
    let mut out = Vec::new();
    for link in nl.links()? {
        let Some(ranges) = shim_ranges(&link) else {
            continue;
        };
        let addresses = nl
            .addresses(Some(link.index))?
            .into_iter()
            .filter_map(|(_, a)| match a {
                IpNetwork::V4(v4) => Some(v4.ip()),
                IpNetwork::V6(_) => None,
            })
            .collect();
        let ranges = ranges
            .into_iter()
            .map(|r| {
                let routed = routes
                    .iter()
                    .any(|e| e.dst == IpNetwork::V4(r) && e.oif == Some(link.index));
                (r, routed)
            })
            .collect();
        out.push(ShimState {
            link,
            addresses,
            ranges,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(address: &str, ranges: &[&str]) -> Spec {
        Spec {
            master: "eth0".into(),
            address: address.parse().unwrap(),
            pod_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            exclusive_multicast: false,
        }
    }

    #[test]
    fn a_shim_address_inside_a_pod_range_is_refused() {
        let e = spec("198.51.100.170/24", &["198.51.100.160/27"])
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("inside pod range 198.51.100.160/27"),
            "{e}"
        );
        assert!(spec("198.51.100.3/24", &["198.51.100.160/27"])
            .validate()
            .is_ok());
        assert!(spec("198.51.100.3/24", &[]).validate().is_err());
    }

    #[test]
    fn names_fit_an_interface_name() {
        assert_eq!(shim_name("eth0"), "rmshim-eth0");
        let long = shim_name("enp0s31f6longer");
        assert_eq!(long.len(), 15);
        assert_ne!(long, shim_name("enp0s31f6longest"));
    }

    #[test]
    fn the_mac_is_stable_local_unicast_and_depends_on_node_and_master() {
        let master = Link {
            name: "eth0".into(),
            mac: vec![0x52, 0x54, 0, 1, 2, 3],
            ..Link::default()
        };
        let mac = shim_mac(b"node-a", &master);
        assert_eq!(mac, shim_mac(b"node-a", &master));
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        assert_ne!(mac, shim_mac(b"node-b", &master));
        let other = Link {
            mac: vec![0x52, 0x54, 0, 1, 2, 4],
            ..master.clone()
        };
        assert_ne!(mac, shim_mac(b"node-a", &other));
    }

    #[test]
    fn the_config_form_reads_camel_case() {
        let s: Spec = serde_json::from_str(
            r#"{"master": "eth0", "address": "198.51.100.3/24", "podRanges": ["198.51.100.160/27"], "exclusiveMulticast": true}"#,
        )
        .unwrap();
        assert!(s.exclusive_multicast);
        assert_eq!(s.pod_ranges.len(), 1);
        assert!(serde_json::from_str::<Spec>(r#"{"master": "eth0"}"#).is_err());
    }
}
