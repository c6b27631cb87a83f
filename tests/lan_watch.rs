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
    let b = add_seen(&s.lan, &s.node, &second, &s.conf);
    assert_eq!(b.ip, next);
    println!("ADD with a fresh probe at hand took {:?}", b.took);
    assert!(!b.probed_itself, "{}", b.arp);
    del(&s.node, &first, &s.conf).ok();
    del(&s.node, &second, &s.conf).ok();
}

/// The agent's busy spell (`lan_state::ACTIVE`, 8 s) and `lan_state::FRESH` (5 s) over,
/// with a margin: what the probes ahead hold now, they hold because the agent listened.
const QUIET_SPELL: Duration = Duration::from_secs(15);

/// With the default re-check period (300 s) the idle agent probes nothing again within the
/// quiet spell: the probes, 7 s or more old, hold because the agent listened all along.
#[test]
fn after_a_quiet_spell_a_burst_of_adds_takes_addresses_the_agent_probed_ahead() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    let first = s.node.pod(16);
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    assert!(
        s.probed_free(guide_next(a)),
        "{}",
        probes(&s.agent, "ros-net")
    );
    std::thread::sleep(QUIET_SPELL);
    let burst: Vec<Pod> = (0..5).map(|i| s.node.pod(17 + i)).collect();
    let arp = Capture::start(&s.lan.switch, "br0", &["-e", "arp"]);
    let addrs: Vec<Ipv4Addr> = std::thread::scope(|scope| {
        let adds: Vec<_> = burst
            .iter()
            .map(|pod| scope.spawn(|| net1_addr(add(&s.node, pod, &s.conf).ok())))
            .collect();
        adds.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::thread::sleep(Duration::from_millis(300));
    let seen = arp.stop();
    let distinct: HashSet<_> = addrs.iter().chain([&a]).collect();
    assert_eq!(distinct.len(), 6, "{addrs:?} beside {a}");
    for (pod, ip) in burst.iter().zip(&addrs) {
        assert!(
            !probed_for_itself(&seen, &mac_of(&pod.ns, "net1"), *ip),
            "an ADD after a quiet spell probed {ip} for itself, though the agent listened all along: {seen}"
        );
        del(&s.node, pod, &s.conf).ok();
    }
    del(&s.node, &first, &s.conf).ok();
}

#[test]
fn probes_ahead_hold_past_a_few_seconds_only_while_the_agent_listens() {
    if !require_root() {
        return;
    }
    let mut s = WatchedLan::new();
    let (first, second) = (s.node.pod(22), s.node.pod(23));
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    let next = guide_next(a);
    assert!(s.probed_free(next), "{}", probes(&s.agent, "ros-net"));
    // Gone without a word: what it would have heard since, nobody wrote down.
    s.agent.kill();
    std::thread::sleep(Duration::from_secs(6));
    let b = add_seen(&s.lan, &s.node, &second, &s.conf);
    assert_eq!(b.ip, next);
    assert!(
        b.probed_itself,
        "ADD took {} on the word of an agent that no longer listens: {}",
        b.ip, b.arp
    );
    del(&s.node, &first, &s.conf).ok();
    del(&s.node, &second, &s.conf).ok();
}

/// While its master has no link the agent hears nothing and nothing can answer it: it stops
/// vouching for the addresses ahead, and vouches again once the link is back and it probed
/// them (`--recheck-every 3`: its idle probes come every 3 s ± 20 % for each address).
#[test]
fn the_agent_vouches_for_no_address_while_its_master_has_no_link() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::with_agent(&["--recheck-every", "3"]);
    let first = s.node.pod(26);
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    assert!(
        s.probed_free(guide_next(a)),
        "{}",
        probes(&s.agent, "ros-net")
    );
    let vouched = || {
        let p = probes(&s.agent, "ros-net");
        p["addresses"]
            .as_object()
            .unwrap()
            .values()
            .filter(|v| v["freeAtMs"].as_u64().is_some_and(|t| t > 0))
            .count()
    };
    // The switch's port down: the node's uplink loses its carrier.
    let peer = s.node.ns.ip_json(&["link", "show", "lan0"])[0]["link_index"].clone();
    let port = s
        .lan
        .switch
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifindex"] == peer)
        .and_then(|l| l["ifname"].as_str())
        .expect("the node's port on the switch")
        .to_owned();
    s.lan.switch.ip(&["link", "set", &port, "down"]);
    let forgot = within(Duration::from_secs(6), || vouched() == 0);
    s.lan.switch.ip(&["link", "set", &port, "up"]);
    assert!(
        forgot,
        "still vouched for while the link was down: {}",
        probes(&s.agent, "ros-net")
    );
    assert!(
        within(Duration::from_secs(8), || vouched() > 0),
        "never vouched again once the link was back: {}",
        probes(&s.agent, "ros-net")
    );
    del(&s.node, &first, &s.conf).ok();
}

/// A LAN watch that panics (a test fault, as a bug would) lets go of its `listening` lock as
/// it unwinds; the agent starts a new one at its next sweep, which probes ahead under a
/// name of its own, and the next ADD takes its probes without probing for itself.
#[test]
fn a_lan_watch_that_panics_is_started_again_and_its_successor_is_relied_on() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::with_agent_under(&["env", "ROS_MACVLAN_TEST_FAULT=panic@lan-watch"], &[]);
    let (first, second) = (s.node.pod(27), s.node.pod(28));
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    let restarted = within(Duration::from_secs(5), || {
        s.agent.log().contains("starting the lan watch again")
    });
    assert!(restarted, "{}", s.agent.log());
    assert!(
        s.agent.log().contains("test fault: panic in the lan watch"),
        "the panic was not said: {}",
        s.agent.log()
    );
    // Two watches, each under a name of its own; the probes name the second.
    let watches = || -> Vec<u64> {
        s.agent
            .log()
            .lines()
            .filter_map(|l| {
                l.split("listening as watch ")
                    .nth(1)?
                    .split(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let renamed = within(Duration::from_secs(5), || {
        let w = watches();
        w.len() == 2
            && w[0] != w[1]
            && probes(&s.agent, "ros-net")["listener"].as_u64() == Some(w[1])
    });
    assert!(
        renamed,
        "watches {:?}; probes {}",
        watches(),
        probes(&s.agent, "ros-net")
    );
    let next = guide_next(a);
    assert!(s.probed_free(next), "{}", probes(&s.agent, "ros-net"));
    let b = add_seen(&s.lan, &s.node, &second, &s.conf);
    assert_eq!(b.ip, next);
    assert!(!b.probed_itself, "{}", b.arp);
    del(&s.node, &first, &s.conf).ok();
    del(&s.node, &second, &s.conf).ok();
}

/// The kernel counts the ARP packets it drops for a listener that reads too slowly, and
/// the agent asks for that count (`ArpSocket::dropped`) to stop vouching for what it may
/// have missed: a flood the node's socket never reads is counted, once.
#[test]
fn arp_packets_dropped_for_a_full_socket_are_counted() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let host = Node::new(&lan);
    let ifindex = ifindex_of(&node.ns, "lan0");
    let listener =
        ros_macvlan::node::duplicate::ArpSocket::open_in(&node.ns.handle(), ifindex).unwrap();
    assert_eq!(listener.dropped().unwrap(), 0);
    announce_from(&host, Ipv4Addr::new(198, 51, 100, 99), 3000, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(200));
    let dropped = listener.dropped().unwrap();
    println!("{dropped} of 3000 announcements dropped, the socket unread");
    assert!(
        dropped > 0,
        "a socket never read dropped nothing of 3000 frames"
    );
    assert_eq!(
        listener.dropped().unwrap(),
        0,
        "the count starts again once read"
    );
}

/// A host that takes an upcoming address while the network is idle, and only answers, is
/// found by the agent's rare probe of it (`--recheck-every`, 300 s by default; 3 s here),
/// and the next ADD passes it over.
#[test]
fn a_silent_lan_host_taking_an_upcoming_address_while_idle_is_found_before_add() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::with_agent(&["--recheck-every", "3"]);
    let (first, second) = (s.node.pod(24), s.node.pod(25));
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    let next = guide_next(a);
    assert!(s.probed_free(next), "{}", probes(&s.agent, "ros-net"));
    // After the busy spell, when only the rare probes ask.
    std::thread::sleep(Duration::from_secs(9));
    let host = s.lan_host_with(next);
    let host_mac = mac_of(&host.ns, "lan0");
    let claimed =
        || probes(&s.agent, "ros-net")["addresses"][next.to_string()]["claimedBy"].is_array();
    let started = Instant::now();
    // Within the period and its jitter (3 s + 20 %), and the answer.
    assert!(
        within(Duration::from_secs(5), claimed),
        "the agent's rare probe never found {next} taken: {}",
        probes(&s.agent, "ros-net")
    );
    println!("found {:?} after the host took it", started.elapsed());
    let r = add(&s.node, &second, &s.conf);
    assert_ne!(
        net1_addr(r.ok()),
        next,
        "ADD handed out an address a LAN host holds"
    );
    assert!(
        r.stderr.contains(&format!(
            "{next} in use on the LAN ({host_mac} answered ARP)"
        )),
        "{}",
        r.stderr
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
