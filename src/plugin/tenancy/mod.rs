//! What a tenant's config may do with the node's interfaces. A NetworkAttachmentDefinition
//! is written by a namespace admin, while the plugin runs as root on every node: with no
//! node policy the defaults must be safe, and the policy widens them only where the node's
//! admin says so. Checked before ADD changes anything.
//!
//! - The mode must be one the node allows (`policy::check_mode`): `passthru` only where the
//!   policy lists it.
//! - `passthru` never on a master that carries anything of the node's, whatever the policy
//!   says: the pod would take the node's link and the node goes offline (`node_use`).
//! - The master must be a LAN uplink (`uplink`): nothing that switches or tunnels frames into
//!   another network namespace, such as another pod's veth, a cluster bridge or an overlay.
//!   The node's admin vouches for any other link by listing it by its exact name under
//!   `masters`.
//!
//! A master inside the pod (`linkInContainer`) is the pod's own interface: only the mode rule
//! applies to it.

mod node_use;
mod uplink;

use crate::cni::{Error, Kind, Result};
use crate::node::policy::{self, Policy};
use crate::sys::netlink::MacvlanMode;
use crate::sys::netlink::{Link, Rtnl};

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
    let file = || policy.map_or_else(policy::policy_file, |p| p.path().to_owned());
    if mode == MacvlanMode::Passthru {
        let node_use = node_use::node_use(nl, master).map_err(|e| {
            Error::new(Kind::PolicyRefused, format!(
                "mode passthru on master {}: cannot tell whether the node uses it ({e}), so it is refused",
                master.name
            ))
        })?;
        if let Some(what) = node_use {
            return Err(Error::new(Kind::PolicyRefused, format!(
                "mode passthru on master {} would hand the node's own link to the pod: {what}. Use passthru only on an interface dedicated to pods (no node address, no route of the node's in any table); no node policy allows it here",
                master.name
            )));
        }
    }
    if policy.is_some_and(|p| p.names_master(&master.name)) {
        return Ok(());
    }
    if let Some(why) = uplink::why_not_uplink(nl, master) {
        return Err(Error::new(Kind::PolicyRefused, format!(
            "master {} is not a LAN uplink: {why}. A macvlan on it would reach into another network namespace (another pod's); use the node's LAN interface. If {} is one, the cluster admin lists it by its exact name under \"masters\" in the node policy {}",
            master.name,
            master.name,
            file().display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testing::Fake;
    use crate::sys::netlink::{route_out, Link};
    use netlink_packet_route::link::{InfoKind, LinkFlags};
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
        switch_port(&nl, uplink, 4);
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

    /// Makes `index` a veth whose peer `swp1` is a port of bridge `br0` in namespace `nsid`:
    /// a LAN switch's port, or a pod's end that the pod bridges.
    fn switch_port(nl: &Fake, index: u32, nsid: i32) {
        peer_held_by(nl, index, nsid, InfoKind::Bridge);
    }

    /// Makes `index` a veth whose peer `swp1` in namespace `nsid` has a controller of `kind`.
    fn peer_held_by(nl: &Fake, index: u32, nsid: i32, kind: InfoKind) {
        nl.with_peer_elsewhere(
            index,
            nsid,
            Link {
                index: 7,
                name: "swp1".into(),
                controller: Some(1),
                ..Link::default()
            },
        );
        nl.with_elsewhere(
            nsid,
            Link {
                index: 1,
                name: "upper".into(),
                kind: Some(kind),
                ..Link::default()
            },
        );
    }

    fn shaped(nl: &Fake, name: &str, kind: Option<InfoKind>) -> Link {
        let index = nl.with_link(name, kind, up());
        nl.link_by_index(index).unwrap().unwrap()
    }

    fn stacked(nl: &Fake, name: &str, kind: InfoKind, lower: &Link) -> Link {
        let index = nl.with_shaped(Link {
            name: name.into(),
            kind: Some(kind),
            flags: up(),
            lower_here: Some(lower.index),
            ..Link::default()
        });
        nl.link_by_index(index).unwrap().unwrap()
    }

    fn port_of(nl: &Fake, port: &Link, controller: &Link) -> Link {
        let index = nl.with_shaped(Link {
            controller: Some(controller.index),
            ..port.clone()
        });
        nl.link_by_index(index).unwrap().unwrap()
    }

    /// The refusal of `master` in bridge mode with no policy: code 106, naming the link and
    /// the policy key that would allow it.
    fn refused(nl: &Fake, master: &Link) -> String {
        let e = check_master(None, nl, master, MacvlanMode::Bridge, false).unwrap_err();
        assert_eq!(e.code(), 106, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("master {} is not a LAN uplink", master.name))
                && msg.contains("\"masters\""),
            "{msg}"
        );
        // The admin's exact word allows it.
        let named = policy(&format!(r#"{{"masters": ["{}"]}}"#, master.name));
        check_master(Some(&named), nl, master, MacvlanMode::Bridge, false).unwrap();
        msg
    }

    fn allowed(nl: &Fake, master: &Link) {
        check_master(None, nl, master, MacvlanMode::Bridge, false)
            .unwrap_or_else(|e| panic!("{} refused: {e}", master.name));
    }

    #[test]
    fn a_pod_that_bridges_its_end_is_told_by_the_route_the_node_keeps_for_it() {
        let nl = Fake::new();
        let cali = nl.with_link("cali1", None, up());
        switch_port(&nl, cali, 3);
        let cali = nl.link_by_index(cali).unwrap().unwrap();
        // Without a route it is a switch's port (a node on a host bridge).
        allowed(&nl, &cali);
        nl.with_route(route_out(
            cali.index,
            "203.0.113.5/32".parse().unwrap(),
            None,
        ));
        let msg = refused(&nl, &cali);
        assert!(msg.contains("203.0.113.5/32"), "{msg}");

        // Routes with a gateway, or to its own address, are the LAN's, not a pod's.
        let lan = nl.with_link("lan0", None, up());
        switch_port(&nl, lan, 4);
        nl.with_address(lan, "198.51.100.2/24".parse().unwrap());
        for route in [
            route_out(lan, "198.51.100.0/24".parse().unwrap(), None),
            route_out(
                lan,
                "0.0.0.0/0".parse().unwrap(),
                Some("198.51.100.1".parse().unwrap()),
            ),
            route_out(
                lan,
                "203.0.113.9/32".parse().unwrap(),
                Some("198.51.100.9".parse().unwrap()),
            ),
            route_out(lan, "fe80::/64".parse().unwrap(), None),
        ] {
            nl.with_route(route);
        }
        allowed(&nl, &nl.link_by_index(lan).unwrap().unwrap());
    }

    #[test]
    fn a_peer_held_by_anything_but_a_bridge_is_no_switch_port() {
        let nl = Fake::new();
        for (n, holder) in [
            InfoKind::Vrf,
            InfoKind::Bond,
            InfoKind::Team,
            InfoKind::Other("openvswitch".into()),
        ]
        .into_iter()
        .enumerate()
        {
            let veth = nl.with_link(&format!("veth{n}"), None, up());
            peer_held_by(&nl, veth, 10 + n as i32, holder);
            let msg = refused(&nl, &nl.link_by_index(veth).unwrap().unwrap());
            assert!(msg.contains("is no bridge port"), "{msg}");
        }
    }

    #[test]
    fn a_cluster_bridge_and_its_ports_are_no_master_a_lan_bridge_is() {
        let nl = Fake::new();
        // flannel's or k3s' cni0: a pod's veth is a port.
        let cni0 = shaped(&nl, "cni0", Some(InfoKind::Bridge));
        let pod_end = nl.with_link("veth1", None, up());
        nl.with_peer_elsewhere(
            pod_end,
            5,
            Link {
                index: 2,
                name: "eth0".into(),
                ..Link::default()
            },
        );
        let pod_end = port_of(&nl, &nl.link_by_index(pod_end).unwrap().unwrap(), &cni0);
        let msg = refused(&nl, &cni0);
        assert!(msg.contains("bridge with port veth1"), "{msg}");
        // A port of any bridge switches to the others.
        let msg = refused(&nl, &pod_end);
        assert!(msg.contains("a port of bridge cni0"), "{msg}");

        // A host bridge of NICs and taps (the node's VMs) is the LAN.
        let br = shaped(&nl, "br-lan", Some(InfoKind::Bridge));
        let nic = port_of(&nl, &shaped(&nl, "enp1s0", None), &br);
        port_of(&nl, &shaped(&nl, "tap0", Some(InfoKind::Tun)), &br);
        let vlan_on_nic = stacked(
            &nl,
            "enp2s0.7",
            InfoKind::Vlan,
            &shaped(&nl, "enp2s0", None),
        );
        port_of(&nl, &vlan_on_nic, &br);
        allowed(&nl, &br);
        refused(&nl, &nic);
        // One overlay port makes it a cluster bridge too.
        port_of(&nl, &shaped(&nl, "vx0", Some(InfoKind::Vxlan)), &br);
        let msg = refused(&nl, &br);
        assert!(msg.contains("overlay or tunnel"), "{msg}");
    }

    #[test]
    fn overlays_pair_devices_and_unknown_kinds_need_the_policy() {
        let nl = Fake::new();
        for (name, kind, says) in [
            ("flannel.1", InfoKind::Vxlan, "overlay or tunnel"),
            ("genev_sys_6081", InfoKind::Geneve, "overlay or tunnel"),
            ("tunl0", InfoKind::IpIp, "overlay or tunnel"),
            ("gre1", InfoKind::GreTap, "overlay or tunnel"),
            ("wg0", InfoKind::Wireguard, "overlay or tunnel"),
            ("lxc123", InfoKind::Netkit, "netkit"),
            ("vrf-blue", InfoKind::Vrf, "not known to be a LAN uplink"),
            ("tap9", InfoKind::Tun, "not known to be a LAN uplink"),
            ("ovs-br", InfoKind::Other("openvswitch".into()), "not known"),
        ] {
            let msg = refused(&nl, &shaped(&nl, name, Some(kind)));
            assert!(msg.contains(says), "{name}: {msg}");
        }
        // A veth whose peer is here too ends in the node's stack, unless that peer is a port.
        let paired_with = |name: &str, peer: &Link| stacked(&nl, name, InfoKind::Veth, peer);
        allowed(
            &nl,
            &paired_with("wan0", &shaped(&nl, "wanpeer", Some(InfoKind::Veth))),
        );
        let cni0 = shaped(&nl, "cni0", Some(InfoKind::Bridge));
        let port = port_of(&nl, &shaped(&nl, "vethC", Some(InfoKind::Veth)), &cni0);
        let msg = refused(&nl, &paired_with("vethB", &port));
        assert!(msg.contains("is a port of cni0"), "{msg}");
    }

    #[test]
    fn stacked_links_are_judged_by_what_they_stand_on() {
        let nl = Fake::new();
        let nic = shaped(&nl, "enp1s0", None);
        allowed(&nl, &stacked(&nl, "enp1s0.7", InfoKind::Vlan, &nic));
        allowed(&nl, &stacked(&nl, "shim", InfoKind::MacVlan, &nic));
        let vx = shaped(&nl, "vx0", Some(InfoKind::Vxlan));
        refused(&nl, &stacked(&nl, "vx0.7", InfoKind::Vlan, &vx));
        // A bond of NICs is an uplink; one of a pod's veth is not.
        let bond = shaped(&nl, "bond0", Some(InfoKind::Bond));
        port_of(&nl, &shaped(&nl, "enp3s0", None), &bond);
        allowed(&nl, &bond);
        allowed(&nl, &stacked(&nl, "bond0.9", InfoKind::Vlan, &bond));
        let veth = nl.with_link("veth9", None, up());
        nl.with_peer_elsewhere(
            veth,
            6,
            Link {
                index: 2,
                name: "eth0".into(),
                ..Link::default()
            },
        );
        port_of(&nl, &nl.link_by_index(veth).unwrap().unwrap(), &bond);
        refused(&nl, &bond);
    }

    #[test]
    fn passthru_counts_every_route_and_whatever_goes_with_the_master() {
        let allows = policy(r#"{"modes": ["bridge", "passthru"]}"#);
        let passthru = |nl: &Fake, master: &Link| {
            check_master(Some(&allows), nl, master, MacvlanMode::Passthru, false)
        };
        // Nothing of the node's: passthru is allowed.
        let nl = Fake::new();
        let spare = shaped(&nl, "eth1", None);
        nl.with_address(spare.index, "fe80::1/64".parse().unwrap());
        nl.with_route(route_out(spare.index, "fe80::/64".parse().unwrap(), None));
        passthru(&nl, &spare).unwrap();

        let case = |what: &str, add: &dyn Fn(&Fake, &Link)| {
            let nl = Fake::new();
            let master = shaped(&nl, "eth1", None);
            add(&nl, &master);
            let master = nl.link_by_index(master.index).unwrap().unwrap();
            let e = passthru(&nl, &master).unwrap_err();
            assert_eq!(e.code(), 106, "{what}: {e}");
            assert!(e.to_string().contains("node's own link"), "{what}: {e}");
            e.to_string()
        };
        let msg = case("a route in another table", &|nl, m| {
            let mut r = route_out(m.index, "10.0.0.0/8".parse().unwrap(), None);
            r.table = 100;
            nl.with_route(r);
        });
        assert!(msg.contains("10.0.0.0/8 (table 100)"), "{msg}");
        let msg = case("an IPv6 default", &|nl, m| {
            nl.with_route(route_out(
                m.index,
                "::/0".parse().unwrap(),
                Some("fe80::1".parse().unwrap()),
            ))
        });
        assert!(msg.contains("default route to ::/0"), "{msg}");
        let msg = case("a VLAN child's address", &|nl, m| {
            let vlan = stacked(nl, "eth1.7", InfoKind::Vlan, m);
            nl.with_address(vlan.index, "198.51.100.7/24".parse().unwrap());
        });
        assert!(
            msg.contains("eth1.7") && msg.contains("198.51.100.7/24"),
            "{msg}"
        );
        let msg = case("a VLAN on a VLAN child's route", &|nl, m| {
            let vlan = stacked(nl, "eth1.7", InfoKind::Vlan, m);
            let inner = stacked(nl, "eth1.7.8", InfoKind::Vlan, &vlan);
            nl.with_route(route_out(
                inner.index,
                "203.0.113.0/24".parse().unwrap(),
                None,
            ));
        });
        assert!(msg.contains("eth1.7.8"), "{msg}");
        let msg = case("its VRF's route", &|nl, m| {
            let vrf = shaped(nl, "vrf-blue", Some(InfoKind::Vrf));
            nl.set_controller(m.index, vrf.index);
            nl.with_route(route_out(vrf.index, "0.0.0.0/0".parse().unwrap(), None));
        });
        assert!(msg.contains("vrf-blue"), "{msg}");
    }
}
