//! CHECK against prevResult: the interface, its kind, mode, MAC, addresses and routes, then
//! the discovery path (`diagnosis`).

use ipnetwork::IpNetwork;

use crate::cni::result::CniResult;
use crate::cni::{Error, Kind, Result};
use crate::plugin::attachment::{Attachment, Namespaces};
use crate::plugin::diagnosis::Procfs;
use crate::plugin::master::resolve_master;
use crate::plugin::{diagnosis, membership};
use crate::sys::netlink::{format_mac, TABLE_MAIN};

/// CHECK against prevResult: the interface, its kind, mode, MAC, addresses and routes.
pub fn check(at: &Attachment<'_>, ns: &Namespaces) -> Result<()> {
    check_with(at, ns, &ns.pod_ns)
}

/// CHECK with the pod's /proc read through `proc`: the namespace's own, or a test's.
fn check_with(at: &Attachment<'_>, ns: &Namespaces, proc: &dyn Procfs) -> Result<()> {
    let prev_json = at.conf.prev_result.as_ref().ok_or_else(|| {
        Error::new(
            Kind::InvalidConfig,
            "CHECK needs prevResult in the network config",
        )
    })?;
    let prev = CniResult::from_json(prev_json).map_err(|e| e.context("prevResult"))?;
    at.ipam.check(at.conf, at.env, &prev)?;
    let link = ns.pod_nl.link_by_name(&at.env.ifname)?.ok_or_else(|| {
        Error::new(
            Kind::CheckFailed,
            format!(
                "interface {} not found in pod netns {}",
                at.env.ifname, at.env.netns
            ),
        )
    })?;
    if !link.is_macvlan() {
        return Err(Error::new(
            Kind::CheckFailed,
            format!("{} is not a macvlan interface", at.env.ifname),
        ));
    }
    if link.macvlan_mode != Some(at.conf.mode.kernel()) {
        return Err(Error::new(
            Kind::CheckFailed,
            format!(
                "{} is not in macvlan mode {} (kernel says {})",
                at.env.ifname,
                at.conf.mode.as_str(),
                crate::sys::netlink::mode_name(link.macvlan_mode)
            ),
        ));
    }
    let our_index = prev.interfaces.iter().position(|i| i.name == at.env.ifname);
    if let Some(expected) = our_index.map(|i| &prev.interfaces[i]) {
        if !expected.mac.is_empty() && !expected.mac.eq_ignore_ascii_case(&format_mac(&link.mac)) {
            return Err(Error::new(
                Kind::CheckFailed,
                format!(
                    "{} has MAC {}, prevResult says {}",
                    at.env.ifname,
                    format_mac(&link.mac),
                    expected.mac
                ),
            ));
        }
    }
    let present: Vec<IpNetwork> = ns
        .pod_nl
        .addresses(Some(link.index))?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == our_index)
    {
        if !present.contains(&ip.address) {
            return Err(Error::new(
                Kind::CheckFailed,
                format!("{} lacks address {}", at.env.ifname, ip.address),
            ));
        }
    }
    let mut routes = ns.pod_nl.routes_v4(TABLE_MAIN)?;
    routes.extend(ns.pod_nl.routes_v6(TABLE_MAIN)?);
    for r in &prev.routes {
        let found = routes.iter().any(|k| {
            k.dst == r.dst && k.oif == Some(link.index) && (r.gw.is_none() || k.gw == r.gw)
        });
        if !found {
            return Err(Error::new(
                Kind::CheckFailed,
                format!("route {} out {} is missing", r.dst, at.env.ifname),
            ));
        }
    }
    // Someone else on the LAN claims the pod's address (the node agent's watch).
    let key = crate::agent::records::key_of(&at.conf.name, &at.env.container_id, &at.env.ifname);
    if let Some(conflict) = at.agent.lan().conflict(&key) {
        return Err(Error::new(
            Kind::CheckFailed,
            conflict.describe(&at.env.ifname),
        ));
    }
    let master = if ns.master_in_pod {
        Some(resolve_master(&*ns.master_nl, at.conf, at.ipam)?.0)
    } else {
        None
    };
    let findings = diagnosis::diagnose(
        &*ns.pod_nl,
        proc,
        &diagnosis::Expected {
            ifname: &at.env.ifname,
            multicast: &at.conf.multicast,
            master_in_pod: master.map(|m| m.index),
            membership_held: !at.conf.multicast.groups.is_empty()
                && membership::held_by_agent(at.agent.client(), &ns.pod_ns, &at.env.ifname),
        },
    )?;
    diagnosis::first_failure(&findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::attachment::test_support::{conf_with, data_dir, env, Call, Scene};
    use crate::plugin::diagnosis::test_support::FakeProc;
    use crate::sys::netlink::testing::Fake;
    use crate::sys::netlink::{route_out, route_prepended, LinkChange, Op, Rtnl};
    use netlink_packet_route::link::{InfoKind, LinkFlags};

    const ADDRESS: &str = "198.51.100.10/24";

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// A pod as ADD (on the fake) left it, and CHECK's call for it: the config with ADD's
    /// result as prevResult, changed by `conf` (mode, groups), the result by `prev`.
    struct Checked {
        scene: Scene,
        call: Call,
        dir: std::path::PathBuf,
    }

    impl Checked {
        fn after_add(
            test: &str,
            conf: impl Fn(&mut serde_json::Value),
            prev: impl Fn(&mut serde_json::Value),
        ) -> Checked {
            let dir = data_dir(test);
            let added = Call::new(
                conf_with(&dir, ("198.51.100.10", "198.51.100.11")),
                env("ctr-check", "net1"),
            );
            let scene = Scene::new();
            let result = crate::plugin::add::add(&added.at(), &scene.namespaces(), Ok(None))
                .unwrap()
                .result;
            let mut raw = added.conf.raw.clone();
            let mut prev_result = result.to_json(&added.conf.version);
            prev(&mut prev_result);
            raw["prevResult"] = prev_result;
            conf(&mut raw);
            let conf =
                crate::plugin::config::MacvlanConf::parse(raw.to_string().as_bytes()).unwrap();
            let call = Call::new(conf, env("ctr-check", "net1"));
            Checked { scene, call, dir }
        }

        fn pod(&self) -> &Fake {
            &self.scene.pod
        }

        fn net1(&self) -> u32 {
            self.pod().link_by_name("net1").unwrap().unwrap().index
        }

        /// CHECK's answer: Ok, or the code and message.
        fn check(&self, proc: &FakeProc) -> std::result::Result<(), (u32, String)> {
            check_with(&self.call.at(), &self.scene.namespaces(), proc)
                .map_err(|e| (e.code(), e.to_string()))
        }
    }

    impl Drop for Checked {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn same(_: &mut serde_json::Value) {}

    #[test]
    fn check_passes_on_the_pod_add_made_and_names_each_difference() {
        // Each case: what changes after ADD, and what CHECK must answer (code, message).
        type Change = fn(&Checked, &FakeProc);
        let cases: [(&str, Change, u32, &str); 10] = [
            (
                "interface gone",
                |c, _| c.pod().apply(vec![Op::del_link(c.net1())]).unwrap(),
                104,
                "interface net1 not found in pod netns /var/run/netns/pod",
            ),
            (
                "not a macvlan",
                |c, _| {
                    c.pod().apply(vec![Op::del_link(c.net1())]).unwrap();
                    c.pod()
                        .with_link("net1", Some(InfoKind::Veth), LinkFlags::Up);
                },
                104,
                "net1 is not a macvlan interface",
            ),
            (
                "address gone",
                |c, _| {
                    let op = Op::del_address(c.net1(), net(ADDRESS));
                    c.pod().apply(vec![op]).unwrap()
                },
                104,
                "net1 lacks address 198.51.100.10/24",
            ),
            (
                "IPAM's route gone",
                |c, _| {
                    let gw = Some("198.51.100.1".parse().unwrap());
                    let route = route_prepended(c.net1(), net("203.0.113.0/24"), gw);
                    c.pod().apply(vec![Op::del_route(&route)]).unwrap()
                },
                104,
                "route 203.0.113.0/24 out net1 is missing",
            ),
            (
                "multicast route gone",
                |c, _| {
                    let route = route_out(c.net1(), net("224.0.0.0/4"), None);
                    c.pod().apply(vec![Op::del_route(&route)]).unwrap()
                },
                104,
                "route: multicast route 224.0.0.0/4 out net1 is missing",
            ),
            (
                "group held as an address",
                |c, _| c.pod().with_address(c.net1(), net("239.255.0.1/32")),
                104,
                "group address: net1 carries the multicast group 239.255.0.1/32 as an address",
            ),
            (
                "eth0 multicast again",
                |c, _| {
                    let op = LinkChange::of(c.scene.eth0).multicast(true).op();
                    c.pod().apply(vec![op]).unwrap()
                },
                104,
                "interface choice: eth0 also multicast-capable",
            ),
            (
                "rp_filter strict",
                |_, proc| proc.set_rp_filter("net1", 1),
                104,
                "rp_filter: rp_filter on net1 is strict",
            ),
            (
                "net1 down",
                |c, _| {
                    let flags = c.pod().link(c.net1()).unwrap().flags - LinkFlags::Up;
                    c.pod().set_flags(c.net1(), flags)
                },
                104,
                "interface: net1 is down",
            ),
            (
                "claim released",
                |c, _| c.call.ipam.del(&c.call.conf, &c.call.env).unwrap(),
                104,
                "host-local holds no claim for [198.51.100.10] of container ctr-check",
            ),
        ];
        let healthy = Checked::after_add("check-healthy", same, same);
        assert_eq!(healthy.check(&FakeProc::default()), Ok(()));
        drop(healthy);
        for (i, (case, change, code, message)) in cases.into_iter().enumerate() {
            let c = Checked::after_add(&format!("check-{i}"), same, same);
            let proc = FakeProc::default();
            change(&c, &proc);
            match c.check(&proc) {
                Ok(()) => panic!("{case}: CHECK passed"),
                Err((got, text)) => {
                    assert_eq!(got, code, "{case}: {text}");
                    assert!(text.starts_with(message), "{case}: {text}");
                }
            }
        }
    }

    #[test]
    fn check_compares_mode_and_mac_with_the_config_and_prev_result() {
        let c = Checked::after_add("check-mode", |raw| raw["mode"] = "private".into(), same);
        assert_eq!(
            c.check(&FakeProc::default()),
            Err((
                104,
                "net1 is not in macvlan mode private (kernel says bridge)".into()
            ))
        );
        let c = Checked::after_add("check-mac", same, |prev| {
            prev["interfaces"][0]["mac"] = "02:00:00:00:00:99".into()
        });
        let (code, text) = c.check(&FakeProc::default()).unwrap_err();
        assert_eq!(code, 104);
        assert!(
            text.starts_with("net1 has MAC ")
                && text.ends_with("prevResult says 02:00:00:00:00:99"),
            "{text}"
        );
        let c = Checked::after_add(
            "check-no-prev",
            |raw| drop(raw.as_object_mut().unwrap().remove("prevResult")),
            same,
        );
        let (code, text) = c.check(&FakeProc::default()).unwrap_err();
        assert_eq!(
            (code, text.as_str()),
            (7, "CHECK needs prevResult in the network config")
        );
    }

    /// A node agent at `socket` that answers `calls` requests, each with its holding the
    /// membership of net1 in this (the test's) namespace.
    fn agent_holding_net1(socket: &std::path::Path, calls: usize) -> std::thread::JoinHandle<()> {
        use crate::agent::protocol::Reply;
        use crate::agent::records::MembershipRecord;
        use std::io::{BufRead, Write};
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        let record = MembershipRecord {
            network: "seam".into(),
            container_id: "ctr-check".into(),
            ifname: "net1".into(),
            netns: "/var/run/netns/pod".into(),
            netns_inode: crate::sys::netns::Netns::current()
                .unwrap()
                .inode()
                .unwrap(),
            proc_pid_ns: None,
            groups: vec!["239.255.0.1".parse().unwrap()],
            lan: Default::default(),
        };
        std::thread::spawn(move || {
            for _ in 0..calls {
                let (stream, _) = listener.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&stream)
                    .read_line(&mut line)
                    .unwrap();
                assert!(line.contains("heldIn"), "{line}");
                let reply = Reply {
                    ok: true,
                    error: None,
                    held: vec![record.clone()],
                };
                (&stream)
                    .write_all(&serde_json::to_vec(&reply).unwrap())
                    .unwrap();
            }
        })
    }

    #[test]
    fn a_group_not_joined_fails_check_only_where_a_node_agent_holds_it() {
        let groups = |raw: &mut serde_json::Value| {
            raw["multicast"]["groups"] = serde_json::json!(["239.255.0.1"])
        };
        // No node agent at the config's socket: DDS processes join the group themselves,
        // so CHECK passes (doctor warns).
        let c = Checked::after_add("check-group", groups, same);
        let proc = FakeProc::default();
        assert_eq!(c.check(&proc), Ok(()));

        // A node agent that holds net1's membership: the group must be joined.
        let dir = data_dir("check-agent");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let agent = agent_holding_net1(&socket, 2);
        let at_socket = socket.to_str().unwrap().to_owned();
        let c = Checked::after_add(
            "check-group-held",
            move |raw| {
                groups(raw);
                raw["agentSocket"] = at_socket.clone().into();
            },
            same,
        );
        let (code, text) = c.check(&proc).unwrap_err();
        assert_eq!(code, 104, "{text}");
        assert!(
            text.starts_with("membership: the node agent holds net1's membership, yet net1 has not joined 239.255.0.1"),
            "{text}"
        );
        proc.set_joined("net1", &["239.255.0.1".parse().unwrap()]);
        assert_eq!(c.check(&proc), Ok(()));
        agent.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
