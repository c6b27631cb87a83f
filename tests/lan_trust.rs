//! Duplicate detection to trust on a shared LAN and a shared node (README, Duplicate
//! detection): an idle node is quiet; a same-named config on another master steers nothing;
//! a second network of the node never hands out an address the node's own pods hold; a
//! spoofer's burst of announcements fails a pod only while someone confirms it; a host that
//! answers for every address is named. Each reproduces the attack on the commit before.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// ADD of `pod` with a pod name in CNI_ARGS, as Multus passes it; returns the result.
fn add_named(s: &WatchedLan, pod: &Pod, conf: &Value) -> Value {
    let netns = pod.ns.path();
    let mut env = cni_env("ADD", pod, "net1", &netns);
    env.push(("CNI_ARGS", "K8S_POD_NAMESPACE=robots;K8S_POD_NAME=talker"));
    run_in(&s.node.ns.name, &plugin_bin(), &env, &conf.to_string())
        .ok()
        .clone()
}

/// The number of ARP frames in a capture's text (`tcpdump -e`: one line each).
fn arp_frames(capture: &str) -> usize {
    capture
        .lines()
        .filter(|l| l.contains("ethertype ARP"))
        .count()
}

/// Three pods attached to `networks` networks (one network, or one each), then the node
/// left alone: its switch port carries at most 4 ARP frames in the 20 s that start 10 s
/// after the last ADD (the 0.2 frames/s).
fn an_idle_node_with_three_pods_on(networks: usize) {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    // Each network its own name and a range of its own on the LAN.
    let confs: Vec<Value> = (0..networks)
        .map(|i| {
            let mut c = s.conf.clone();
            if i > 0 {
                c["name"] = json!(format!("ros-net-{i}"));
                c["ipam"]["ranges"][0][0]["rangeStart"] =
                    json!(format!("198.51.100.{}", 20 + 40 * i));
                c["ipam"]["ranges"][0][0]["rangeEnd"] =
                    json!(format!("198.51.100.{}", 50 + 40 * i));
            }
            c
        })
        .collect();
    let busy = Capture::start(&s.lan.switch, "br0", &["-e", "arp"]);
    let pods: Vec<(Pod, &Value)> = (0..3)
        .map(|i| (s.node.pod(21 + i as u8), &confs[i % networks]))
        .collect();
    for (p, conf) in &pods {
        add(&s.node, p, conf).ok();
    }
    let last_add = Instant::now();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(last_add.elapsed()));
    let busy = arp_frames(&busy.stop());
    let idle = Capture::start(&s.lan.switch, "br0", &["-e", "arp"]);
    std::thread::sleep(Duration::from_secs(20));
    let seen = idle.stop();
    let frames = arp_frames(&seen);
    println!(
        "ARP frames from a node with 3 pods on {networks} network(s): {busy} in the 10 s after the ADDs, {frames} in the 20 s after that ({:.2}/s)",
        frames as f64 / 20.0
    );
    // The capture sees the node's frames: the busy spell had its probes and announcements.
    assert!(busy > 3, "the capture saw no ADD's frames");
    assert!(
        frames <= 4,
        "{frames} ARP frames from an idle node:\n{seen}"
    );
    for (p, conf) in &pods {
        del(&s.node, p, conf).ok();
    }
}

#[test]
fn an_idle_node_sends_almost_no_arp() {
    an_idle_node_with_three_pods_on(1);
}

#[test]
fn an_idle_node_with_three_networks_sends_almost_no_arp() {
    an_idle_node_with_three_pods_on(3);
}

/// Over time an idle node asks for each address once a period (`--recheck-every`, 300 s by
/// default; 5 s here): each pod's, and each of the 8 its network hands out next (the probes
/// ADD then takes without asking, however long the quiet spell). So with the default the
/// node sends (3 + 8) / 300 s = 0.04 frames/s for 3 pods, (110 + 8) / 300 s = 0.39 for 110.
#[test]
fn an_idle_node_asks_for_each_address_about_once_a_period() {
    if !require_root() {
        return;
    }
    const PERIOD: u64 = 5;
    let s = WatchedLan::with_agent(&["--recheck-every", &PERIOD.to_string()]);
    let pods: Vec<Pod> = (0..3).map(|i| s.node.pod(31 + i)).collect();
    for p in &pods {
        add(&s.node, p, &s.conf).ok();
    }
    std::thread::sleep(Duration::from_secs(10));
    let idle = Capture::start(&s.lan.switch, "br0", &["-e", "arp"]);
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let seen = idle.stop();
    let frames = arp_frames(&seen) as f64;
    let expected = (3.0 + 8.0) * window.as_secs_f64() / PERIOD as f64;
    println!(
        "ARP frames from an idle node with 3 pods, a period of {PERIOD} s: {frames} in {window:?} ({expected} expected)"
    );
    assert!(
        (0.7 * expected..=1.3 * expected).contains(&frames),
        "{frames} ARP frames where {expected} were expected:\n{seen}"
    );
    for p in &pods {
        del(&s.node, p, &s.conf).ok();
    }
}

/// A tenant who makes many networks on a node cannot make it probe more while idle than
/// its budget (150 addresses ahead a period, in equal shares), nor take another tenant's
/// share: tenant B's network, the first and least lately busy, keeps its next address
/// probed, and B's ADD after the quiet spell takes it without probing for itself.
#[test]
fn many_networks_keep_the_idle_probes_within_the_nodes_budget_and_each_its_share() {
    if !require_root() {
        return;
    }
    const PERIOD: u64 = 2;
    const NETWORKS: usize = 38;
    let s = WatchedLan::with_agent(&["--recheck-every", &PERIOD.to_string()]);
    // Six addresses each: five ahead once its pod holds one.
    let confs: Vec<Value> = (0..NETWORKS)
        .map(|i| {
            let mut c = s.conf.clone();
            c["name"] = json!(format!("ros-net-{i}"));
            c["ipam"]["ranges"][0][0]["rangeStart"] = json!(format!("198.51.100.{}", 10 + 6 * i));
            c["ipam"]["ranges"][0][0]["rangeEnd"] = json!(format!("198.51.100.{}", 15 + 6 * i));
            c
        })
        .collect();
    let pods: Vec<Pod> = (0..NETWORKS).map(|i| s.node.pod(100 + i as u8)).collect();
    for (p, conf) in pods.iter().zip(&confs) {
        add(&s.node, p, conf).ok();
    }
    std::thread::sleep(Duration::from_secs(10));
    let idle = Capture::start(&s.lan.switch, "br0", &["-e", "arp"]);
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let frames = arp_frames(&idle.stop()) as f64;
    let periods = window.as_secs_f64() / PERIOD as f64;
    // Each pod's own address, and each network's share: 150 / 38 = 3 of its 5 ahead.
    let budgeted = (NETWORKS + NETWORKS * 3) as f64 * periods;
    let unbounded = (NETWORKS + NETWORKS * 5) as f64 * periods;
    println!("idle ARP frames with {NETWORKS} networks: {frames} in {window:?} ({budgeted} within the budget, {unbounded} without)");
    assert!(
        frames <= 1.2 * budgeted,
        "{frames} frames: more than the budget's {budgeted}"
    );
    // Tenant B: network 0, its ADD first of all.
    let b = s.node.pod(99);
    let seen = add_seen(&s.lan, &s.node, &b, &confs[0]);
    assert!(
        !seen.probed_itself,
        "B's ADD after the quiet spell probed {} for itself: its share of idle probes was taken:\n{}",
        seen.ip,
        seen.arp
    );
    del(&s.node, &b, &confs[0]).ok();
    for (p, conf) in pods.iter().zip(&confs) {
        del(&s.node, p, conf).ok();
    }
}

#[test]
fn a_burst_of_spoofed_announcements_fails_check_only_until_it_expires() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::with_agent(&["--conflict-expiry", "5"]);
    let pod = s.node.pod(25);
    let result = add_named(&s, &pod, &s.conf);
    let ip = net1_addr(&result);
    let mut check = s.conf.clone();
    check["prevResult"] = result;
    cni("CHECK", &s.node, &pod, &check).ok();

    // Three gratuitous ARPs over 0.4 s from a host that does not hold the address.
    let spoofer = Node::new(&s.lan);
    let spoofer_mac = mac_of(&spoofer.ns, "lan0");
    std::thread::sleep(Duration::from_secs(1));
    announce_from(&spoofer, ip, 3, Duration::from_millis(200));
    let failing = within(Duration::from_secs(5), || {
        cni("CHECK", &s.node, &pod, &check).code != 0
    });
    assert!(failing, "the burst was not reported: {}", s.agent.log());
    let r = cni("CHECK", &s.node, &pod, &check);
    assert_eq!(r.err_code(), 104);
    assert!(r.msg().contains(&spoofer_mac), "{}", r.msg());
    // Nobody confirms it (the spoofer does not answer the agent's probes): it expires.
    let started = Instant::now();
    let passes = within(Duration::from_secs(15), || {
        cni("CHECK", &s.node, &pod, &check).code == 0
    });
    assert!(passes, "the conflict never expired: {}", s.agent.log());
    println!("CHECK passes again {:?} after the burst", started.elapsed());
    // The agent clears it at the same expiry, within a turn of its loop.
    assert!(
        within(Duration::from_secs(2), || s
            .agent
            .log()
            .contains("the conflict is cleared")),
        "{}",
        s.agent.log()
    );

    // A host that really holds the address, and says so, keeps failing the pod past the
    // expiry: each verification finds it answering.
    let squatter = s.lan_host_with(ip);
    let squatter_mac = mac_of(&squatter.ns, "lan0");
    announce_from(&squatter, ip, 1, Duration::ZERO);
    assert!(within(Duration::from_secs(5), || {
        cni("CHECK", &s.node, &pod, &check).code != 0
    }));
    std::thread::sleep(Duration::from_secs(12));
    let r = cni("CHECK", &s.node, &pod, &check);
    assert_eq!(
        r.err_code(),
        104,
        "a confirmed conflict expired: {}",
        r.json
    );
    assert!(r.msg().contains(&squatter_mac), "{}", r.msg());
    del(&s.node, &pod, &s.conf).ok();
}

#[test]
fn a_same_named_config_on_another_master_with_the_same_mac_steers_nothing() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    // The attacker's master: another LAN, the same MAC (as a VLAN child has).
    let other_lan = Lan::create();
    s.node.plug(&other_lan, "lan1");
    let lan0_mac = mac_of(&s.node.ns, "lan0");
    s.node.ns.ip(&["link", "set", "lan1", "down"]);
    s.node.ns.ip(&["link", "set", "lan1", "address", &lan0_mac]);
    s.node.ns.ip(&["link", "set", "lan1", "up"]);

    let (first, second) = (s.node.pod(26), s.node.pod(27));
    let a = net1_addr(add(&s.node, &first, &s.conf).ok());
    let next = guide_next(a);
    let host = s.lan_host_with(next);
    let heard = within(Duration::from_secs(5), || {
        probes(&s.agent, "ros-net")["addresses"][next.to_string()]["claimedBy"].is_array()
    });
    assert!(heard, "the agent never heard {next} taken");

    // Same name, another master with the same MAC, a store of its own.
    let attacker = s.node.pod(28);
    let attacker_data = DataDir::create();
    let mut steer = with_agent(guide(&attacker_data), &s.agent);
    steer["master"] = json!("lan1");
    add(&s.node, &attacker, &steer).ok();
    // Its probes ahead run (on lan1, where nobody holds `next`) and conclude.
    std::thread::sleep(Duration::from_secs(3));
    let files = std::fs::read_dir(s.agent.socket().parent().unwrap().join("probes"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "two configs under one name share probe state");

    let r = add(&s.node, &second, &s.conf);
    let b = net1_addr(r.ok());
    assert_ne!(
        b, next,
        "ADD handed out an address a LAN host holds: {}",
        r.stderr
    );
    assert!(r.stderr.contains(&mac_of(&host.ns, "lan0")), "{}", r.stderr);
    for (pod, conf) in [(&first, &s.conf), (&second, &s.conf), (&attacker, &steer)] {
        del(&s.node, pod, conf).ok();
    }
}

#[test]
fn a_second_network_never_gets_an_address_the_nodes_own_pods_hold() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    let (a1, b1, a2) = (s.node.pod(29), s.node.pod(30), s.node.pod(31));
    let p = net1_addr(add(&s.node, &a1, &s.conf).ok());
    // Another network with a store of its own, whose one address is ros-net's next.
    let q = guide_next(p);
    let other_data = DataDir::create();
    let mut other = with_agent(
        guide_config(
            Some("1.0.0"),
            "lan0",
            &other_data,
            &q.to_string(),
            &q.to_string(),
        ),
        &s.agent,
    );
    other["name"] = json!("ros-net2");
    assert_eq!(net1_addr(add(&s.node, &b1, &other).ok()), q);
    // The agent's probes of ros-net count q as held by the node's own pod.
    let b1_mac = mac_of(&b1.ns, "net1");
    let noted = within(Duration::from_secs(5), || {
        probes(&s.agent, "ros-net")["addresses"][q.to_string()]["heldHereBy"]
            .as_array()
            .is_some_and(|m| {
                let text: Vec<String> = m
                    .iter()
                    .map(|b| format!("{:02x}", b.as_u64().unwrap()))
                    .collect();
                text.join(":") == b1_mac
            })
    });
    assert!(noted, "{}", probes(&s.agent, "ros-net"));
    let r = add(&s.node, &a2, &s.conf);
    let r2 = net1_addr(r.ok());
    assert!(r2 != p && r2 != q, "{r2} handed out twice: {}", r.stderr);
    for (pod, conf) in [(&a1, &s.conf), (&b1, &other), (&a2, &s.conf)] {
        del(&s.node, pod, conf).ok();
    }
}

#[test]
fn a_host_answering_for_every_address_is_named_when_add_gives_up() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    let host = Node::new(&s.lan);
    for last in 160..=180 {
        host.ns.ip(&[
            "addr",
            "add",
            &format!("198.51.100.{last}/24"),
            "dev",
            "lan0",
        ]);
    }
    let host_mac = mac_of(&host.ns, "lan0");
    std::thread::sleep(Duration::from_secs(1));
    let pod = s.node.pod(32);
    let r = add(&s.node, &pod, &s.conf);
    assert_eq!(r.err_code(), 102, "{}", r.json);
    assert!(
        r.msg().contains("answered for by one MAC") && r.msg().contains(&host_mac),
        "{}",
        r.msg()
    );
    assert!(!has_net1(&pod));
    assert!(s.data.claims("ros-net").is_empty(), "a claim was left");
}

#[test]
fn gc_under_a_same_named_config_on_another_master_keeps_the_claims() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    node.plug(&lan, "lan1");
    let pod = node.pod(33);
    let data = DataDir::create();
    let agent = start_agent();
    let mut conf = with_agent(guide(&data), &agent);
    conf["cniVersion"] = json!("1.1.0");
    let claimed = net1_addr(add(&node, &pod, &conf).ok()).to_string();
    // The same name, store and ranges on another master: another tenant's config.
    let mut other = conf.clone();
    other["master"] = json!("lan1");
    other["cni.dev/valid-attachments"] = json!([]);
    cni("GC", &node, &pod, &other).ok();
    assert_eq!(
        data.claims("ros-net"),
        std::slice::from_ref(&claimed),
        "another config's GC released the claim"
    );
    // Its own config's GC still releases what no attachment holds.
    let mut own = conf.clone();
    own["cni.dev/valid-attachments"] = json!([]);
    cni("GC", &node, &pod, &own).ok();
    assert!(data.claims("ros-net").is_empty());
    del(&node, &pod, &conf).ok();
}

#[test]
fn a_lan_host_asking_from_a_pods_address_is_reported_within_5_s() {
    if !require_root() {
        return;
    }
    let s = WatchedLan::new();
    let pod = s.node.pod(34);
    let result = add_named(&s, &pod, &s.conf);
    let ip = net1_addr(&result);
    let mut check = s.conf.clone();
    check["prevResult"] = result;
    // Past the agent's first ask of the new attachment: only listening can find it now
    // (the re-check is 300 s away).
    let host = Node::new(&s.lan);
    std::thread::sleep(Duration::from_secs(2));
    cni("CHECK", &s.node, &pod, &check).ok();
    // The host takes the address and asks the LAN for a neighbour from it (an ARP request
    // whose sender is the pod's address), as any host using it does.
    host.ns
        .ip(&["addr", "add", &format!("{ip}/24"), "dev", "lan0"]);
    let _ = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.ns.name,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "198.51.100.9",
        ])
        .output();
    let started = Instant::now();
    let reported = within(Duration::from_secs(5), || {
        cni("CHECK", &s.node, &pod, &check).code != 0
    });
    assert!(reported, "not reported within 5 s: {}", s.agent.log());
    println!("reported {:?} after the request", started.elapsed());
    let r = cni("CHECK", &s.node, &pod, &check);
    assert_eq!(r.err_code(), 104);
    assert!(r.msg().contains(&mac_of(&host.ns, "lan0")), "{}", r.msg());
    del(&s.node, &pod, &s.conf).ok();
}
