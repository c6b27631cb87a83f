//! Duplicate detection that costs a pod start nothing, and keeps watching after ADD: the
//! node agent, running in the node's namespace as the DaemonSet's does, probes the addresses
//! a network hands out next and ADD takes a fresh one without probing; after ADD the agent
//! watches the pods' addresses and reports anyone else claiming one.

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn add_takes_an_address_the_agent_probed_ahead_without_probing_itself() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    let (first, second) = (s.node.pod(11), s.node.pod(12));
    // The first ADD of a network probes for itself; from its record the agent learns the
    // network and probes the next addresses ahead.
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    let next = guide_next(a);
    assert!(
        s.probed_free(next),
        "the agent never probed {next}: {}",
        probes(&s.agent, "ros-net")
    );
    // With link-level headers (-e): who sent each ARP packet.
    let arp = Capture::start(&s.lan.switch, "br0", &["-e", "arp"]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let b = net1_addr(add(&s.node, &second, &s.conf).ok());
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let seen = arp.stop();
    assert_eq!(b, next);
    let pod_mac = mac_of(&second.ns, "net1");
    println!("ADD with a fresh probe at hand took {took:?}");
    // ADD sent no probe of its own (sender 0.0.0.0) before its announcement; the probe
    // after it is the agent's first ask from the new pod's interface, once it watches it.
    let from_pod: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains(&format!("{pod_mac} >")))
        .collect();
    let announced = from_pod
        .iter()
        .position(|l| l.contains(&format!("who-has {b} tell {b}")));
    assert!(announced.is_some(), "ADD announced {b}: {seen}");
    assert!(
        !from_pod[..announced.unwrap()]
            .iter()
            .any(|l| l.contains("tell 0.0.0.0")),
        "ADD probed for itself: {from_pod:?}"
    );
    del(&s.node, &first, &s.conf).ok();
    del(&s.node, &second, &s.conf).ok();
}

#[test]
fn an_address_a_lan_host_answers_for_is_passed_over_from_the_agents_probes() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    let (first, second) = (s.node.pod(13), s.node.pod(14));
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    let next = guide_next(a);
    let host = s.lan_host_with(next);
    let heard = within(Duration::from_secs(5), || {
        probes(&s.agent, "ros-net")["addresses"][next.to_string()]["claimedBy"].is_array()
    });
    assert!(
        heard,
        "the agent never found {next} taken: {}",
        probes(&s.agent, "ros-net")
    );
    let r = add(&s.node, &second, &s.conf);
    let b = net1_addr(r.ok());
    assert_ne!(b, next, "ADD handed out an address a LAN host holds");
    // Heard is not true: ADD asks, and the host's answer is what passes the address over.
    let host_mac = mac_of(&host.ns, "lan0");
    assert!(
        r.stderr
            .contains(&format!("heard {host_mac} claim {next}; asking"))
            && r.stderr.contains(&format!(
                "{next} in use on the LAN ({host_mac} answered ARP)"
            )),
        "{}",
        r.stderr
    );
    del(&s.node, &first, &s.conf).ok();
    del(&s.node, &second, &s.conf).ok();
}

/// Two nodes, one config, each with its agent: the pods' addresses, four per node, ADDs
/// interleaved.
fn two_nodes_with_agents(lockstep: bool) -> Vec<Ipv4Addr> {
    let lan = Lan::create();
    let nodes = [Node::new(&lan), Node::new(&lan)];
    let agents = [
        TestAgent::start_in(Some(&nodes[0].ns.name), &[]),
        TestAgent::start_in(Some(&nodes[1].ns.name), &[]),
    ];
    let data = [DataDir::create(), DataDir::create()];
    let mut confs = Vec::new();
    for n in 0..2 {
        if lockstep {
            // Both stores resume from one point: the nodes walk the range in lockstep.
            let dir = data[n].0.join("ros-net");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("last_reserved_ip.0"), "198.51.100.159").unwrap();
        }
        let mut c = with_agent(guide(&data[n]), &agents[n]);
        c.as_object_mut().unwrap().remove("duplicateDetection");
        confs.push(c);
    }
    let mut addrs = Vec::new();
    let mut attached = Vec::new();
    for round in 0..4u8 {
        for (n, node) in nodes.iter().enumerate() {
            let pod = node.pod(20 + round * 2 + n as u8);
            addrs.push(net1_addr(add(node, &pod, &confs[n]).ok()));
            attached.push((n, pod));
        }
        // Time for the agents to probe ahead between rounds, as between pod starts.
        std::thread::sleep(Duration::from_millis(700));
    }
    for (n, pod) in &attached {
        del(&nodes[*n], pod, &confs[*n]).ok();
    }
    addrs
}

#[test]
fn two_nodes_sharing_one_range_get_distinct_addresses_with_their_agents() {
    if !require_root() {
        return;
    }
    // Store-less starts (each node's first pick its own), and stores in lockstep.
    for lockstep in [false, true] {
        let addrs = two_nodes_with_agents(lockstep);
        let distinct: HashSet<_> = addrs.iter().collect();
        assert_eq!(
            distinct.len(),
            addrs.len(),
            "duplicates (stores in lockstep: {lockstep}): {addrs:?}"
        );
    }
}

/// A host that takes a pod's address and only answers is found by the rare re-check
/// (`--recheck-every`, 300 s by default; 2 s here).
#[test]
fn a_silent_lan_host_taking_a_pods_address_is_found_by_the_recheck_and_check_fails() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::with_agent(&["--recheck-every", "2"]);
    let pod = s.node.pod(15);
    let netns = pod.ns.path();
    let mut env = cni_env("ADD", &pod, "net1", &netns);
    env.push(("CNI_ARGS", "K8S_POD_NAMESPACE=robots;K8S_POD_NAME=talker"));
    let result = run_in(&s.node.ns.name, &plugin_bin(), &env, &s.conf.to_string())
        .ok()
        .clone();
    let ip = net1_addr(&result);
    let mut check = s.conf.clone();
    check["prevResult"] = result;
    cni("CHECK", &s.node, &pod, &check).ok();

    // A laptop with a static address, say: it says nothing, it only answers ARP.
    let host = s.lan_host_with(ip);
    let host_mac = mac_of(&host.ns, "lan0");
    let started = Instant::now();
    // Within one period (2 s ± 20 %) and the answer.
    let reported = within(Duration::from_secs(4), || {
        s.agent
            .log()
            .contains(&format!("address {ip} of pod robots/talker"))
    });
    assert!(
        reported,
        "no report within the re-check period: {}",
        s.agent.log()
    );
    println!("reported {:?} after the claim", started.elapsed());
    assert!(s.agent.log().contains(&host_mac), "{}", s.agent.log());
    let r = cni("CHECK", &s.node, &pod, &check);
    assert_eq!(r.err_code(), 104, "{}", r.json);
    assert!(
        r.msg().contains(&ip.to_string()) && r.msg().contains(&host_mac),
        "{}",
        r.msg()
    );
    // DEL forgets the report with the attachment.
    del(&s.node, &pod, &s.conf).ok();
    let conflicts = s.agent.socket().parent().unwrap().join("conflicts");
    assert!(
        std::fs::read_dir(conflicts)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "a conflict report outlived its attachment"
    );
}
