//! CHECK and `doctor` read a pod's discovery path with one diagnosis: on a real pod broken
//! on purpose, step by step, CHECK answers 104 naming the broken check and doctor FAILs
//! the same one; mended, both pass again.

mod support;

use std::net::Ipv4Addr;
use std::process::Command;

use ros_macvlan::agent::client::AgentClient;
use ros_macvlan::agent::{memberships, records};
use serde_json::Value;
use support::*;

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

struct Attached<'a> {
    node: &'a Node,
    pod: &'a Pod,
    agent: &'a Agent,
    /// The config with the ADD's result as prevResult.
    check_conf: Value,
}

impl<'a> Attached<'a> {
    /// ADDs `pod` on `node` with `conf`, keeping the result as CHECK's prevResult.
    fn add(node: &'a Node, pod: &'a Pod, agent: &'a Agent, conf: &Value) -> Attached<'a> {
        let mut check_conf = conf.clone();
        check_conf["prevResult"] = add(node, pod, conf).ok().clone();
        Attached {
            node,
            pod,
            agent,
            check_conf,
        }
    }

    /// CHECK's answer: Ok, or the error's code and message.
    fn check(&self) -> Result<(), (u64, String)> {
        let r = cni("CHECK", self.node, self.pod, &self.check_conf);
        if r.code == 0 {
            Ok(())
        } else {
            Err((r.err_code(), r.msg()))
        }
    }

    /// doctor's exit code and report (a short live part: no peer is expected to answer).
    fn doctor(&self) -> (i32, String) {
        self.doctor_listening("0.3")
    }

    /// doctor's exit code and report after a live part of `seconds`.
    fn doctor_listening(&self, seconds: &str) -> (i32, String) {
        let out = Command::new(plugin_bin())
            .args([
                "doctor",
                "--netns",
                &self.pod.ns.path(),
                "--agent-socket",
                self.agent.socket().to_str().unwrap(),
                "--seconds",
                seconds,
            ])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn assert_both_pass(&self, when: &str) {
        assert_eq!(self.check(), Ok(()), "{when}: CHECK failed");
        let (code, out) = self.doctor();
        assert_eq!(code, 0, "{when}: doctor failed:\n{out}");
        for check in [
            "interface",
            "group address",
            "membership",
            "route",
            "rp_filter",
            "interface choice",
        ] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("PASS") && l.contains(&format!(" {check} "))),
                "{when}: {check} did not pass:\n{out}"
            );
        }
    }

    /// CHECK answers 104 naming `check`; doctor FAILs `check` and nothing else, with a fix.
    fn assert_both_fail(&self, when: &str, check: &str) {
        let (code, msg) = self.check().expect_err(when);
        assert_eq!(code, 104, "{when}: {msg}");
        assert!(
            msg.starts_with(&format!("{check}: ")),
            "{when}: CHECK names another check: {msg}"
        );
        let (code, out) = self.doctor();
        assert_eq!(code, 1, "{when}: doctor passed:\n{out}");
        let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert_eq!(
            failed.len(),
            1,
            "{when}: doctor failed other checks:\n{out}"
        );
        assert!(
            failed[0].starts_with(&format!("FAIL {check:<18} ")),
            "{when}: doctor failed another check:\n{out}"
        );
        assert!(
            failed[0].contains(msg.trim_start_matches(&format!("{check}: "))),
            "{when}: CHECK and doctor say different things:\n{msg}\n{out}"
        );
        assert!(out.contains("fix: "), "{when}: no fix:\n{out}");
    }

    /// Hands the node agent a socket for this attachment that has joined `groups`, in
    /// place of the one it holds: with none, the agent holds the attachment while the
    /// kernel lists no membership (the old socket closes, the IGMP leave goes out).
    fn agent_holds_socket_joined_to(&self, groups: &[Ipv4Addr]) {
        let client = AgentClient::new(&self.agent.socket());
        let key = records::key_of("ros-net", &self.pod.container_id, "net1");
        let record = client
            .list()
            .unwrap()
            .into_iter()
            .find(|r| r.key() == key)
            .expect("the agent holds the attachment");
        let index = self.pod.ns.ip_json(&["link", "show", "net1"])[0]["ifindex"]
            .as_u64()
            .unwrap() as u32;
        let socket = memberships::join(&self.pod.ns.handle(), index, groups).unwrap();
        client.hold(&record, &socket).unwrap();
    }
}

/// A pod on a node of its own LAN, attached with the guide's config and a node agent.
/// Fields drop in order: the pod before its node, the node before the LAN.
struct GuidePod {
    pod: Pod,
    conf: Value,
    check_conf: Value,
    agent: TestAgent,
    _data: DataDir,
    node: Node,
    lan: Lan,
}

impl GuidePod {
    fn add(index: u8) -> GuidePod {
        let lan = Lan::create();
        let node = Node::new(&lan);
        let data = DataDir::create();
        let agent = start_agent();
        let conf = with_agent(guide(&data), &agent);
        let pod = node.pod(index);
        let check_conf = Attached::add(&node, &pod, &agent, &conf).check_conf;
        GuidePod {
            pod,
            conf,
            check_conf,
            agent,
            _data: data,
            node,
            lan,
        }
    }

    fn attached(&self) -> Attached<'_> {
        Attached {
            node: &self.node,
            pod: &self.pod,
            agent: &self.agent,
            check_conf: self.check_conf.clone(),
        }
    }

    fn del(&self) {
        del(&self.node, &self.pod, &self.conf).ok();
    }
}

#[test]
fn check_and_doctor_agree_on_each_broken_step() {
    if !require_root() {
        return;
    }
    let guide_pod = GuidePod::add(11);
    let (pod, a) = (&guide_pod.pod, guide_pod.attached());
    a.assert_both_pass("healthy");

    pod.ns.ip(&["route", "del", "224.0.0.0/4", "dev", "net1"]);
    a.assert_both_fail("no multicast route", "route");
    pod.ns.ip(&[
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "net1",
        "scope",
        "link",
    ]);
    a.assert_both_pass("route back");

    // The kernel applies the larger of all and net1: both strict, and all alone.
    pod.ns.sysctl("net.ipv4.conf.all.rp_filter", "1");
    pod.ns.sysctl("net.ipv4.conf.net1.rp_filter", "1");
    a.assert_both_fail("strict rp_filter (all=1, net1=1)", "rp_filter");
    pod.ns.sysctl("net.ipv4.conf.net1.rp_filter", "0");
    a.assert_both_fail("strict rp_filter (all=1, net1=0)", "rp_filter");
    pod.ns.sysctl("net.ipv4.conf.net1.rp_filter", "2");
    a.assert_both_pass("net1 loose again (2 beats all=1)");
    pod.ns.sysctl("net.ipv4.conf.all.rp_filter", "0");

    pod.ns.ip(&["link", "set", "eth0", "multicast", "on"]);
    a.assert_both_fail("eth0 multicast-capable", "interface choice");
    // A down interface is not one DDS chooses: neither counts it.
    pod.ns.ip(&["link", "set", "eth0", "down"]);
    a.assert_both_pass("eth0 multicast-capable but down");
    pod.ns.ip(&["link", "set", "eth0", "up"]);
    pod.ns.ip(&["link", "set", "eth0", "multicast", "off"]);
    a.assert_both_pass("eth0 marked again");

    a.agent_holds_socket_joined_to(&[]);
    assert!(
        !joined(&pod.ns, "net1").contains(&GROUP),
        "the membership outlived its socket"
    );
    a.assert_both_fail("group not joined", "membership");
    a.agent_holds_socket_joined_to(&[GROUP]);
    a.assert_both_pass("group joined again");

    // A pod attached by an earlier version: the group as an address (Fast DDS breaks).
    pod.ns
        .ip(&["addr", "add", "239.255.0.1/32", "dev", "net1", "autojoin"]);
    let (code, msg) = a.check().unwrap_err();
    assert_eq!(code, 104);
    assert!(msg.starts_with("group address: "), "{msg}");
    let (code, out) = a.doctor();
    assert_eq!(code, 1);
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("group address")),
        "{out}"
    );
    pod.ns.ip(&["addr", "del", "239.255.0.1/32", "dev", "net1"]);
    a.assert_both_pass("group address removed");

    guide_pod.del();
}

/// With `linkInContainer` the master lives in the pod, up and multicast-capable: it is the
/// LAN, not an interface DDS could wrongly pick, for CHECK (which knows it from the config)
/// and for doctor (which finds it under the attachment).
#[test]
fn a_master_inside_the_pod_is_no_rival_for_either() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(12);
    let peer = unique("inpod");
    pod.ns.ip(&[
        "link", "add", "uplink", "type", "veth", "peer", "name", &peer,
    ]);
    pod.ns.ip(&["link", "set", "uplink", "up"]);
    let data = DataDir::create();
    let agent = start_agent();
    let mut conf = with_agent(
        guide_config(
            Some("1.0.0"),
            "uplink",
            &data,
            "198.51.100.160",
            "198.51.100.180",
        ),
        &agent,
    );
    conf["linkInContainer"] = serde_json::json!(true);
    let a = Attached::add(&node, &pod, &agent, &conf);
    a.assert_both_pass("master in the pod");
    pod.ns.ip(&["link", "set", "eth0", "multicast", "on"]);
    a.assert_both_fail("eth0 multicast-capable", "interface choice");
    let (_, out) = a.doctor();
    assert!(
        !out.contains("uplink"),
        "the master is named a rival:\n{out}"
    );
    pod.ns.ip(&["link", "set", "eth0", "multicast", "off"]);
    del(&node, &pod, &conf).ok();
}

/// doctor names the LAN's IGMP querier from the queries that reach the pod: here the
/// switch's own (the Linux bridge's querier), sent every second from its address.
#[test]
fn doctor_names_the_querier_whose_queries_reach_the_pod() {
    if !require_root() {
        return;
    }
    let guide_pod = GuidePod::add(13);
    let a = guide_pod.attached();
    let (_, out) = a.doctor();
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN") && l.contains("igmp querier")),
        "a query seen before the switch was asked for one:\n{out}"
    );

    let switch = &guide_pod.lan.switch;
    switch.ip(&["addr", "add", "198.51.100.250/24", "dev", "br0"]);
    // Intervals in hundredths of a second; turning the querier off and on restarts it.
    for args in [
        &["mcast_query_use_ifaddr", "1", "mcast_query_interval", "100"][..],
        &["mcast_startup_query_interval", "100", "mcast_querier", "0"],
        &["mcast_querier", "1"],
    ] {
        let mut cmd = vec!["link", "set", "br0", "type", "bridge"];
        cmd.extend_from_slice(args);
        switch.ip(&cmd);
    }
    let (_, out) = a.doctor_listening("2.5");
    assert!(
        out.lines().any(|l| l.starts_with("PASS")
            && l.contains("igmp querier")
            && l.contains("queries seen from 198.51.100.250")),
        "the switch's queries were not seen:\n{out}"
    );
    guide_pod.del();
}
