//! What a tenant's config may do with the node's interfaces. A NetworkAttachmentDefinition
//! is written by a namespace admin, while the plugin runs as root on every node: with no
//! node policy the defaults must be safe, and the policy widens them only where the node's
//! admin says so. Checked before ADD changes anything.
//!
//! - The mode must be one the node allows (`policy::check_mode`): `passthru` only where the
//!   policy lists it.
//! - `passthru` never on a master that carries the node's own addresses or default route,
//!   whatever the policy says: the pod would take the node's link and the node goes offline.
//! - The master must not be another pod's interface: a veth whose peer lives in another
//!   network namespace and is no bridge port there is the host end of a pod's
//!   cluster-network link (Calico's `cali*`, Cilium's `lxc*`, the `ptp` plugin's veths); a
//!   macvlan on it sends frames straight into that pod. A veth whose peer is a bridge port
//!   is an uplink into a bridged LAN (nodes that are containers or VMs, the test LANs), and
//!   is allowed. The node's admin vouches for any other veth by listing it by its exact name
//!   under `masters`.
//!
//! A master inside the pod (`linkInContainer`) is the pod's own interface: only the mode rule
//! applies to it.

use ipnetwork::IpNetwork;

use crate::cni::{Error, Kind, Result};
use crate::node::policy::{self, Policy};
use crate::sys::netlink::MacvlanMode;
use crate::sys::netlink::{Link, Rtnl, TABLE_MAIN};

/// Refuses a master and mode that would hurt the node or another tenant (code 106).
pub fn check_master(
    policy: Option<&Policy>,
    nl: &dyn Rtnl,
    master: &Link,
    mode: MacvlanMode,
    master_in_pod: bool,
) -> Result<()> {
    if let Some(p) = policy {
        p.check_master(&master.name)?;
    }
    policy::check_mode(policy, mode)?;
    if master_in_pod {
        return Ok(());
    }
    if mode == MacvlanMode::Passthru {
        if let Some(what) = node_use(nl, master)? {
            return Err(Error::new(Kind::PolicyRefused, format!(
                "mode passthru on master {} would hand the node's own link to the pod: {what}. Use passthru only on an interface dedicated to pods (no node address, no default route); no node policy allows it here",
                master.name
            )));
        }
    }
    if let Some(why) = pod_interface(nl, master)? {
        if !policy.is_some_and(|p| p.names_master(&master.name)) {
            let file = policy.map_or_else(policy::policy_file, |p| p.path().to_owned());
            return Err(Error::new(Kind::PolicyRefused, format!(
                "master {} is {why}: another pod's interface, and a macvlan on it would reach straight into that pod. Use the node's LAN interface; if {} is one, the cluster admin lists it by its exact name under \"masters\" in the node policy {}",
                master.name,
                master.name,
                file.display()
            )));
        }
    }
    Ok(())
}

/// What of the node's own the master carries: an address (not IPv6 link-local, which every
/// interface has) or a default route.
fn node_use(nl: &dyn Rtnl, master: &Link) -> Result<Option<String>> {
    let own = nl
        .addresses(Some(master.index))?
        .into_iter()
        .map(|(_, a)| a)
        .find(|a| !is_ipv6_link_local(a));
    if let Some(a) = own {
        return Ok(Some(format!("it holds the node's address {a}")));
    }
    let routes = nl
        .routes_v4(TABLE_MAIN)?
        .into_iter()
        .chain(nl.routes_v6(TABLE_MAIN)?);
    for r in routes {
        if r.dst.prefix() == 0 && r.oif == Some(master.index) {
            return Ok(Some(format!(
                "it carries the node's default route ({})",
                r.dst
            )));
        }
    }
    Ok(None)
}

fn is_ipv6_link_local(a: &IpNetwork) -> bool {
    match a {
        IpNetwork::V6(v6) => v6.ip().segments()[0] & 0xffc0 == 0xfe80,
        IpNetwork::V4(_) => false,
    }
}

/// Why `master` looks like another pod's interface, if it does: a veth whose peer is in
/// another namespace and is no bridge port there. A peer that cannot be looked up counts as
/// such (refusing is the safe side).
fn pod_interface(nl: &dyn Rtnl, master: &Link) -> Result<Option<String>> {
    let Some((nsid, peer_index)) = master.lower_elsewhere.filter(|_| master.is_veth()) else {
        return Ok(None);
    };
    let peer = match nl.link_elsewhere(nsid, peer_index) {
        Ok(peer) => peer,
        Err(e) => {
            return Ok(Some(format!(
                "a veth whose peer lives in another network namespace, which cannot be read ({e})"
            )))
        }
    };
    Ok(match peer {
        Some(p) if p.controller.is_some() => None,
        Some(p) => Some(format!(
            "a veth whose peer ({}) lives in another network namespace and is no bridge port",
            p.name
        )),
        None => Some("a veth whose peer lives in another network namespace".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testing::Fake;
    use crate::sys::netlink::{route_out, Link};
    use netlink_packet_route::link::LinkFlags;
    use std::path::PathBuf;

    fn policy(json: &str) -> Policy {
        Policy::parse(json.as_bytes(), PathBuf::from("/etc/p.json")).unwrap()
    }

    fn up() -> LinkFlags {
        LinkFlags::Up | LinkFlags::Multicast
    }

    #[test]
    fn passthru_needs_the_policy_and_never_takes_the_nodes_link() {
        let nl = Fake::new();
        let lan = nl.with_link("eth0", None, up());
        let spare = nl.with_link("eth1", None, up());
        nl.with_address(lan, "198.51.100.2/24".parse().unwrap());
        nl.with_address(spare, "fe80::1/64".parse().unwrap());
        let eth0 = nl.link_by_index(lan).unwrap().unwrap();
        let eth1 = nl.link_by_index(spare).unwrap().unwrap();

        let e = check_master(None, &nl, &eth1, MacvlanMode::Passthru, false).unwrap_err();
        assert_eq!(e.code(), 106);
        assert!(e.to_string().contains("\"modes\""), "{e}");
        for mode in [MacvlanMode::Bridge, MacvlanMode::Private, MacvlanMode::Vepa] {
            check_master(None, &nl, &eth0, mode, false).unwrap();
        }

        let allows = policy(r#"{"modes": ["bridge", "passthru"]}"#);
        check_master(Some(&allows), &nl, &eth1, MacvlanMode::Passthru, false).unwrap();
        let e = check_master(Some(&allows), &nl, &eth0, MacvlanMode::Passthru, false).unwrap_err();
        assert!(e.to_string().contains("198.51.100.2/24"), "{e}");
        // The list replaces the defaults.
        assert_eq!(
            check_master(Some(&allows), &nl, &eth0, MacvlanMode::Vepa, false)
                .unwrap_err()
                .code(),
            106
        );

        // The default route counts as the node's too.
        nl.with_route(route_out(spare, "0.0.0.0/0".parse().unwrap(), None));
        let e = check_master(Some(&allows), &nl, &eth1, MacvlanMode::Passthru, false).unwrap_err();
        assert!(e.to_string().contains("default route"), "{e}");
        // Inside the pod, the master is the pod's own.
        check_master(Some(&allows), &nl, &eth1, MacvlanMode::Passthru, true).unwrap();
    }

    #[test]
    fn another_pods_veth_is_refused_a_bridged_uplink_is_not() {
        let nl = Fake::new();
        let cali = nl.with_link("cali1234", None, up());
        nl.with_peer_elsewhere(
            cali,
            3,
            Link {
                index: 2,
                name: "eth0".into(),
                ..Link::default()
            },
        );
        let uplink = nl.with_link("lan0", None, up());
        nl.with_peer_elsewhere(
            uplink,
            4,
            Link {
                index: 7,
                name: "swp1".into(),
                controller: Some(1),
                ..Link::default()
            },
        );
        let cali = nl.link_by_index(cali).unwrap().unwrap();
        let uplink = nl.link_by_index(uplink).unwrap().unwrap();
        for mode in [MacvlanMode::Bridge, MacvlanMode::Private, MacvlanMode::Vepa] {
            let e = check_master(None, &nl, &cali, mode, false).unwrap_err();
            assert_eq!(e.code(), 106);
            assert!(
                e.to_string().contains("another pod's interface")
                    && e.to_string().contains("\"masters\""),
                "{e}"
            );
            check_master(None, &nl, &uplink, mode, false).unwrap();
        }
        // A prefix does not vouch for it; its exact name does.
        let prefix = policy(r#"{"masters": ["cali*"]}"#);
        assert!(check_master(Some(&prefix), &nl, &cali, MacvlanMode::Bridge, false).is_err());
        let named = policy(r#"{"masters": ["cali1234"]}"#);
        check_master(Some(&named), &nl, &cali, MacvlanMode::Bridge, false).unwrap();
    }
}
