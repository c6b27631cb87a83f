//! Host access on the netlink fake (`fake-netlink`), without root: the requests `ensure`
//! and `remove` make of the node's namespace, in order, and what they leave behind. The
//! same code on a real node is tests/host_access.rs.

use nix::errno::Errno;
use ros_macvlan::node::host_access::{self, node_identity, shim_mac, Spec};
use ros_macvlan::sys::netlink::testing::{Fake, Request};
use ros_macvlan::sys::netlink::{Ipv4Setting, LinkChange, MacvlanMode, Op, Rtnl};

use netlink_packet_route::link::{InfoKind, LinkFlags};

const SHIM: &str = "rmshim-lan0";

/// A node whose LAN interface `lan0` is up, multicast, with the node's own address.
fn node() -> (Fake, u32) {
    let nl = Fake::new();
    nl.with_link("lo", None, LinkFlags::Up | LinkFlags::Loopback);
    let lan0 = nl.with_link(
        "lan0",
        Some(InfoKind::Veth),
        LinkFlags::Up | LinkFlags::Multicast,
    );
    nl.set_alias(lan0, "uplink");
    nl.with_address(lan0, "198.51.100.2/24".parse().unwrap());
    (nl, lan0)
}

fn spec(address: &str, exclusive_multicast: bool) -> Spec {
    Spec {
        master: "lan0".into(),
        address: address.parse().unwrap(),
        pod_ranges: vec!["198.51.100.160/27".parse().unwrap()],
        exclusive_multicast,
    }
}

#[test]
fn ensure_creates_the_shim_in_order_and_then_has_nothing_to_change() {
    let (nl, lan0) = node();
    let master = nl.link(lan0).unwrap();
    let changes = host_access::ensure(&nl, &spec("198.51.100.3/24", true)).unwrap();
    assert!(!changes.is_empty());

    let shim = nl.link_by_name(SHIM).unwrap().expect("the shim exists");
    let mac = shim_mac(&node_identity(), &master);
    assert_eq!(
        shim.mac, mac,
        "a MAC of its own, stable across re-creations"
    );
    let alias = "ros-macvlan:host-access:198.51.100.160/27";
    let host: ipnetwork::IpNetwork = "198.51.100.3/32".parse().unwrap();
    assert_eq!(
        nl.requests(),
        vec![
            Request::AddMacvlan {
                name: SHIM.into(),
                master_index: lan0,
                mode: MacvlanMode::Bridge.kernel(),
                mtu: None,
                mac: Some(mac),
                bc_queue_len: None,
                into_other_netns: false,
            },
            // ARP settings, alias and address before it comes up: its first announcement
            // carries the address.
            Request::Op(
                LinkChange::of(shim.index)
                    .ipv4_conf(&[Ipv4Setting::ArpIgnore(1), Ipv4Setting::ArpNotify(1)])
                    .alias(alias)
                    .op()
            ),
            Request::Op(Op::add_address(shim.index, host)),
            Request::Op(LinkChange::of(shim.index).up().op()),
            Request::Op(Op::add_route_from(
                shim.index,
                "198.51.100.160/27".parse().unwrap(),
                "198.51.100.3".parse().unwrap(),
            )),
            Request::Op(
                LinkChange::of(lan0)
                    .multicast(false)
                    .alias("ros-macvlan:host-access-multicast-off;uplink")
                    .op()
            ),
        ]
    );
    assert!(shim.is_up());
    assert!(!nl.link(lan0).unwrap().is_multicast());

    nl.clear_requests();
    let again = host_access::ensure(&nl, &spec("198.51.100.3/24", true)).unwrap();
    assert_eq!(again, Vec::<String>::new(), "nothing to change");
    assert_eq!(nl.requests(), vec![], "and nothing asked");

    let shims = host_access::shims(&nl).unwrap();
    assert_eq!(shims.len(), 1);
    assert_eq!(
        shims[0].addresses,
        vec!["198.51.100.3".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert!(shims[0].ranges.iter().all(|(_, routed)| *routed));
}

#[test]
fn remove_gives_the_node_back_as_it_was() {
    let (nl, lan0) = node();
    let (links, addresses, routes) = (nl.links().unwrap(), nl.all_addresses(), nl.all_routes());
    host_access::ensure(&nl, &spec("198.51.100.3/24", true)).unwrap();

    let changes = host_access::remove(&nl, "lan0").unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        nl.links().unwrap(),
        links,
        "no shim; lan0's flag and alias back"
    );
    assert_eq!(nl.all_addresses(), addresses);
    assert_eq!(nl.all_routes(), routes);
    assert!(nl.link(lan0).unwrap().is_multicast());

    nl.clear_requests();
    assert_eq!(
        host_access::remove(&nl, "lan0").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(nl.requests(), vec![], "removing what is gone asks nothing");
}

#[test]
fn a_shim_that_cannot_be_configured_is_removed_again() {
    let (nl, _) = node();
    let links = nl.links().unwrap();
    nl.refuse(Errno::EACCES, |r| {
        matches!(r, Request::Op(Op::AddAddress { .. }))
    });
    let e = host_access::ensure(&nl, &spec("198.51.100.3/24", false)).unwrap_err();
    assert_eq!(e.code(), 101, "{e}");
    assert_eq!(nl.links().unwrap(), links, "no half-made shim left");
}

#[test]
fn the_nodes_own_address_is_never_the_shims() {
    let (nl, _) = node();
    let e = host_access::ensure(&nl, &spec("198.51.100.2/24", false)).unwrap_err();
    assert_eq!(e.code(), 7, "{e}");
    assert!(e.to_string().contains("already an address of lan0"), "{e}");
    assert_eq!(nl.requests(), vec![], "refused before any change");
}
