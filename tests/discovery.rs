//! ROS-aware behaviour: with the original guide's config and nothing set in the pods, DDS
//! discovery works over net1. Judged by the kernel's own state, by a snooping bridge, by
//! plain multicast sockets, by a real DDS (CycloneDDS ddsperf) and by tshark.

mod support;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

fn attach(node: &Node, pod: &Pod, conf: &Value) -> Value {
    add(node, pod, conf).ok().clone()
}

fn detach(node: &Node, pod: &Pod, conf: &Value) {
    del(node, pod, conf).ok();
}

fn flags(pod: &Pod, dev: &str) -> Vec<String> {
    pod.ns.ip_json(&["link", "show", dev])[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn membership_route_rp_filter_and_marking_then_del_restores() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    pod.ns.sysctl("net.ipv4.conf.all.rp_filter", "1");
    pod.ns.sysctl("net.ipv4.conf.default.rp_filter", "1");
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    let report = Capture::start(&node.ns, "lan0", &["igmp"]);
    let result = attach(&node, &pod, &conf);
    let net1_addr = net1_addr(&result);

    // The membership is the kernel's, held by the agent's socket: nothing in the pod shows
    // it but /proc/net/igmp. No group address (Fast DDS would take it for a local one).
    assert!(
        joined(&pod.ns, "net1").contains(&GROUP),
        "239.255.0.1 not joined on net1"
    );
    let addrs = pod.ns.ip(&["-4", "-o", "addr", "show", "dev", "net1"]);
    assert_eq!(
        addrs.lines().count(),
        1,
        "net1 has more than its own address:\n{addrs}"
    );
    assert!(addrs.contains(&format!("{net1_addr}/24")), "{addrs}");
    assert!(!pod.ns.ip(&["addr"]).contains("239.255.0.1"));
    let local = pod.ns.ip(&["route", "show", "table", "local"]);
    assert!(
        !local.contains("239.255.0.1"),
        "a local route would loop sends back:\n{local}"
    );
    // The IGMP report for the group left net1 with the pod's net1 address as its source.
    std::thread::sleep(Duration::from_millis(300));
    let report = report.stop();
    assert!(
        report.contains(&format!("{net1_addr} > ")) && report.contains("239.255.0.1"),
        "no IGMP report for 239.255.0.1 from {net1_addr} on the LAN:\n{report}"
    );
    let main = pod.ns.ip(&["route", "show"]);
    assert!(
        main.contains("224.0.0.0/4 dev net1 proto static scope link"),
        "{main}"
    );
    assert!(main.contains("default via 169.254.1.1 dev eth0"), "{main}");
    assert_eq!(
        pod.ns.read("/proc/sys/net/ipv4/conf/net1/rp_filter").trim(),
        "2"
    );
    assert!(
        !flags(&pod, "eth0").contains(&"MULTICAST".into()),
        "eth0 still offers multicast to DDS"
    );
    assert!(flags(&pod, "net1").contains(&"MULTICAST".into()));

    // The membership report reached the snooping switch, which now forwards the group to us.
    let mut learned = false;
    for _ in 0..20 {
        let mdb = sh(&["bridge", "-n", &lan.switch.name, "mdb", "show"]);
        if mdb.contains("239.255.0.1") {
            learned = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(learned, "no IGMP membership report reached the switch");

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result;
    let check = |what: &str| {
        run_in(
            &node.ns.name,
            &plugin_bin(),
            &cni_env("CHECK", &pod, "net1", &pod.ns.path()),
            &with_prev.to_string(),
        )
        .err_code_or_ok(what)
    };
    assert_eq!(check("healthy"), 0);
    pod.ns.ip(&["link", "set", "eth0", "multicast", "on"]);
    assert_eq!(check("eth0 multicast"), 104);
    pod.ns.ip(&["link", "set", "eth0", "multicast", "off"]);
    pod.ns.ip(&["route", "del", "224.0.0.0/4", "dev", "net1"]);
    assert_eq!(check("route gone"), 104);

    detach(&node, &pod, &conf);
    assert!(
        flags(&pod, "eth0").contains(&"MULTICAST".into()),
        "DEL gives eth0 its multicast flag back"
    );
    assert!(pod
        .ns
        .ip(&["-d", "link", "show", "eth0"])
        .find("alias")
        .is_none());
}

trait ErrCodeOrOk {
    fn err_code_or_ok(&self, what: &str) -> u64;
}

impl ErrCodeOrOk for Reply {
    fn err_code_or_ok(&self, what: &str) -> u64 {
        eprintln!("CHECK {what}: {} {}", self.code, self.json);
        if self.code == 0 {
            0
        } else {
            self.err_code()
        }
    }
}

#[test]
fn every_pod_sends_to_and_hears_every_other_both_ways() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    let pods: Vec<Pod> = (0..3).map(|i| node.pod(11 + i)).collect();
    let mut addrs = Vec::new();
    for pod in &pods {
        // Hardened nodes: strict reverse-path filtering inherited by new interfaces.
        pod.ns.sysctl("net.ipv4.conf.all.rp_filter", "1");
        pod.ns.sysctl("net.ipv4.conf.default.rp_filter", "1");
        addrs.push(net1_addr(&attach(&node, pod, &conf)));
    }
    let exchange = |round: &str| {
        for (i, from) in pods.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                if i == j {
                    continue;
                }
                for via in [None, Some(addrs[i])] {
                    let port = 7400;
                    let rx = group_receiver(&to.ns, port);
                    let payload = format!("{round} {i}->{j} via {via:?}");
                    send_to_group(&from.ns, GROUP, port, payload.as_bytes(), via);
                    assert!(
                        hears(&rx, payload.as_bytes()),
                        "pod {j} did not hear: {payload}"
                    );
                }
            }
        }
    };
    exchange("first");
    node.ns.ip(&["link", "set", "lan0", "down"]);
    std::thread::sleep(Duration::from_millis(200));
    node.ns.ip(&["link", "set", "lan0", "up"]);
    std::thread::sleep(Duration::from_millis(300));
    exchange("after a carrier flap of the master");
    for pod in &pods {
        detach(&node, pod, &conf);
    }
}

/// ddsperf (Debian cyclonedds-tools: scripts/test.sh installs it) in a pod, with no
/// CycloneDDS configuration; killed on drop.
fn ddsperf(pod: &Pod, args: &[&str]) -> Spawned {
    let command: Vec<&str> = std::iter::once("ddsperf")
        .chain(args.iter().copied())
        .collect();
    Spawned::start(&pod.ns, &command, |cmd| {
        cmd.env_remove("CYCLONEDDS_URI");
    })
}

/// The original guide's example 4: two talkers and a listener in three pods, with no DDS
/// configuration, and a node agent unless `agent` is false. Returns whether the listener
/// matched both talkers and got their samples.
fn guide_scene(
    plugin: &std::path::Path,
    plugin_type: &str,
    multicast: Option<Value>,
    agent: bool,
) -> (bool, String) {
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let agent = if agent { start_agent() } else { no_agent() };
    let mut conf = with_agent(guide(&data), &agent);
    conf["type"] = json!(plugin_type);
    if let Some(m) = multicast {
        conf["multicast"] = m;
    }
    let pods: Vec<Pod> = (0..3).map(|i| node.pod(11 + i)).collect();
    for pod in &pods {
        run_in(
            &node.ns.name,
            plugin,
            &cni_env("ADD", pod, "net1", &pod.ns.path()),
            &conf.to_string(),
        )
        .ok();
    }
    let _talkers: Vec<Spawned> = pods[..2]
        .iter()
        .map(|p| ddsperf(p, DDSPERF_TALKER))
        .collect();
    let listener = ddsperf(&pods[2], DDSPERF_LISTENER);
    let outcome = listener.wait();
    for pod in &pods {
        run_in(
            &node.ns.name,
            plugin,
            &cni_env("DEL", pod, "net1", &pod.ns.path()),
            &conf.to_string(),
        )
        .ok();
    }
    outcome
}

#[test]
fn ddsperf_listener_discovers_both_talkers() {
    if !require_root() {
        return;
    }
    let (ok, log) = guide_scene(&plugin_bin(), "ros-macvlan", None, true);
    assert!(
        ok,
        "ddsperf sub did not match both publishers over net1:\n{log}"
    );
}

/// No node agent: ADD succeeds, and DDS joins the group itself.
#[test]
fn ddsperf_discovers_without_a_node_agent() {
    if !require_root() {
        return;
    }
    let (ok, log) = guide_scene(&plugin_bin(), "ros-macvlan", None, false);
    assert!(
        ok,
        "ddsperf sub did not match both publishers without an agent:\n{log}"
    );
}

/// The control: the reference macvlan (no join, no multicast route, no marking) with the
/// same config and pods. Discovery fails: what ros-macvlan adds is what makes it work.
#[test]
fn ddsperf_fails_with_the_reference_macvlan() {
    if !require_root() {
        return;
    }
    let reference = std::path::PathBuf::from(REFERENCE_DIR).join("macvlan");
    let (ok, log) = guide_scene(&reference, "macvlan", None, true);
    assert!(
        !ok,
        "discovery unexpectedly worked with the reference macvlan:\n{log}"
    );
}

/// With eth0 left multicast-capable, CycloneDDS picks eth0 "arbitrarily" and discovery
/// fails: the marking is what steers it to net1.
#[test]
fn ddsperf_fails_when_eth0_keeps_its_multicast_flag() {
    if !require_root() {
        return;
    }
    let (ok, log) = guide_scene(
        &plugin_bin(),
        "ros-macvlan",
        Some(json!({"markOtherInterfaces": false})),
        true,
    );
    assert!(!ok, "discovery worked without the marking:\n{log}");
}

#[test]
fn pods_on_two_nodes_discover_each_other_through_a_snooping_switch() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let nodes = [Node::new(&lan), Node::new(&lan)];
    let data = [DataDir::create(), DataDir::create()];
    let agents = [start_agent(), start_agent()];
    let confs = [
        with_agent(
            guide_config(
                Some("1.0.0"),
                "lan0",
                &data[0],
                "198.51.100.160",
                "198.51.100.169",
            ),
            &agents[0],
        ),
        with_agent(
            guide_config(
                Some("1.0.0"),
                "lan0",
                &data[1],
                "198.51.100.170",
                "198.51.100.179",
            ),
            &agents[1],
        ),
    ];
    let pods: Vec<(usize, Pod)> = vec![
        (0, nodes[0].pod(11)),
        (1, nodes[1].pod(12)),
        (1, nodes[1].pod(13)),
    ];
    let mut addrs = Vec::new();
    for (n, pod) in &pods {
        addrs.push(net1_addr(&attach(&nodes[*n], pod, &confs[*n])));
    }
    // The switch forwards the group to a port once an IGMP report came in through it; the
    // first report can beat a fresh port to forwarding, and the kernel repeats it within a
    // second or so (or answers the querier).
    let learned = (0..50).any(|_| {
        let mdb = sh(&["bridge", "-n", &lan.switch.name, "mdb", "show"]);
        let ports = mdb.lines().filter(|l| l.contains("239.255.0.1")).count();
        ports >= 2 || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(learned, "the switch never learned both nodes' memberships");
    // Plain multicast across the nodes, both ways.
    for (i, (_, from)) in pods.iter().enumerate() {
        for (j, (_, to)) in pods.iter().enumerate() {
            if i != j {
                let rx = group_receiver(&to.ns, 7400);
                let payload = format!("node-crossing {i}->{j}");
                send_to_group(&from.ns, GROUP, 7400, payload.as_bytes(), None);
                assert!(
                    hears(&rx, payload.as_bytes()),
                    "{payload} not heard ({:?} -> {:?})",
                    addrs[i],
                    addrs[j]
                );
            }
        }
    }
    // And a real DDS: the listener on node 0 matches both talkers on node 1.
    let _talkers: Vec<Spawned> = pods[1..]
        .iter()
        .map(|(_, p)| ddsperf(p, DDSPERF_TALKER))
        .collect();
    let (ok, log) = ddsperf(&pods[0].1, DDSPERF_LISTENER).wait();
    assert!(ok, "cross-node discovery failed:\n{log}");
    for (n, pod) in &pods {
        detach(&nodes[*n], pod, &confs[*n]);
    }
}

#[test]
fn spdp_captured_on_net1_decodes_as_rtps() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    let pods: Vec<Pod> = (0..2).map(|i| node.pod(11 + i)).collect();
    for pod in &pods {
        attach(&node, pod, &conf);
    }
    let capture = data.0.join("spdp.pcap");
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pods[1].ns.name,
            "tcpdump",
            "-p",
            "-i",
            "net1",
            "-U",
            "-w",
        ])
        .arg(&capture)
        .args(["udp", "port", "7400"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump must be installed: run scripts/test.sh");
    std::thread::sleep(Duration::from_millis(700));
    let talker = ddsperf(&pods[0], &["-D", "3", "pub", "10Hz"]);
    let _ = talker.wait();
    let _ = tcpdump.kill();
    let _ = tcpdump.wait();
    let out = sh(&[
        "tshark",
        "-r",
        capture.to_str().unwrap(),
        "-Y",
        "rtps",
        "-T",
        "fields",
        "-e",
        "rtps.sm.wrEntityId",
    ]);
    // 0x000100c2: ENTITYID_SPDP_BUILTIN_PARTICIPANT_WRITER, the SPDP announcement.
    assert!(
        out.contains("0x000100c2"),
        "no SPDP DATA(p) decoded in the capture:\n{out}"
    );
    for pod in &pods {
        detach(&node, pod, &conf);
    }
}

#[test]
fn two_attachments_in_one_pod_both_work_and_del_keeps_the_other_going() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    node.plug(&lan, "lan1");
    let peer_node = Node::new(&lan);
    let data = DataDir::create();
    let (agent, peer_agent) = (start_agent(), start_agent());
    let conf1 = with_agent(
        guide_config(
            Some("1.0.0"),
            "lan0",
            &data,
            "198.51.100.160",
            "198.51.100.169",
        ),
        &agent,
    );
    let mut conf2 = with_agent(
        json!({
            "cniVersion": "1.0.0", "name": "ros-net-b", "type": "ros-macvlan", "master": "lan1",
            "multicast": {"bcQueueLen": 2000},
            "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "203.0.113.0/24", "rangeStart": "203.0.113.160", "rangeEnd": "203.0.113.169"}]]}
        }),
        &agent,
    );
    let pod = node.pod(11);
    let peer = peer_node.pod(12);
    attach(&node, &pod, &conf1);
    let netns = pod.ns.path();
    let r = run_in(
        &node.ns.name,
        &plugin_bin(),
        &cni_env("ADD", &pod, "net2", &netns),
        &conf2.to_string(),
    );
    let result2 = r.ok().clone();
    let net2 = pod.ns.ip(&["-d", "link", "show", "net2"]);
    assert!(net2.contains("bcqueuelen 2000"), "{net2}");
    let net2_addr = result2["ips"][0]["address"].as_str().unwrap();
    assert!(net2_addr.starts_with("203.0.113.16"), "{net2_addr}");
    assert!(pod
        .ns
        .ip(&["-4", "addr", "show", "net2"])
        .contains(net2_addr));
    let peer_conf = with_agent(
        guide_config(
            Some("1.0.0"),
            "lan0",
            &data,
            "198.51.100.170",
            "198.51.100.179",
        ),
        &peer_agent,
    );
    attach(&peer_node, &peer, &peer_conf);

    // net2's CHECK holds too (routes and marking are shared with net1).
    conf2["prevResult"] = result2;
    run_in(
        &node.ns.name,
        &plugin_bin(),
        &cni_env("CHECK", &pod, "net2", &netns),
        &conf2.to_string(),
    )
    .ok();

    // DEL of net1 leaves eth0 marked (net2 still wants it) and the multicast route moves to net2.
    detach(&node, &pod, &conf1);
    assert!(
        !flags(&pod, "eth0").contains(&"MULTICAST".into()),
        "eth0 unmarked while net2 is attached"
    );
    let routes = pod.ns.ip(&["route", "show"]);
    assert!(routes.contains("224.0.0.0/4 dev net2"), "{routes}");
    let rx = group_receiver(&peer.ns, 7400);
    send_to_group(&pod.ns, GROUP, 7400, b"via net2", None);
    assert!(hears(&rx, b"via net2"), "sends stopped after net1's DEL");

    run_in(
        &node.ns.name,
        &plugin_bin(),
        &cni_env("DEL", &pod, "net2", &netns),
        &conf2.to_string(),
    )
    .ok();
    assert!(
        flags(&pod, "eth0").contains(&"MULTICAST".into()),
        "the last DEL restores eth0"
    );
    assert_eq!(pod.ns.link_names_after_removal(), ["lo", "eth0"]);
    detach(&peer_node, &peer, &peer_conf);
}

/// Every ADD joins and every DEL lets go: 25 cycles in one pod never run into the kernel's
/// membership limits (an earlier version leaked one per cycle and failed with ENOBUFS at the
/// 21st), and after the last DEL neither the pod nor the agent holds the group.
#[test]
fn repeated_add_del_in_one_pod_does_not_exhaust_memberships() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    for cycle in 0..25 {
        let r = add(&node, &pod, &conf);
        assert_eq!(r.code, 0, "ADD number {} failed: {}", cycle + 1, r.json);
        assert!(joined(&pod.ns, "net1").contains(&GROUP));
        detach(&node, &pod, &conf);
    }
    assert!(!pod.ns.read("/proc/net/igmp").contains("0100FFEF"));
    let held = ros_macvlan::agent::client::AgentClient::new(&agent.socket())
        .list()
        .unwrap();
    assert!(held.is_empty(), "the agent still holds {held:?}");
}
