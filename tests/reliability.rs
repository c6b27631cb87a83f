//! Under load, crashes and leaks: concurrency, kill at every step of ADD, garbage
//! collection of claims whose pod vanished, GC and STATUS verbs, and the node policy.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn wide(data: &DataDir, name: &str) -> Value {
    let mut c = guide_config(
        Some("1.1.0"),
        "lan0",
        data,
        "198.51.100.10",
        "198.51.100.250",
    );
    c["name"] = json!(name);
    c
}

#[test]
fn a_hundred_concurrent_adds_get_distinct_addresses_and_dels_leave_nothing() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let conf = wide(&data, "ros-net");
    let pods: Vec<Pod> = (0..100).map(|i| node.pod(i as u8 + 1)).collect();
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| add(&node, p, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: HashSet<String> = replies
        .iter()
        .map(|r| r.ok()["ips"][0]["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(addrs.len(), 100, "some address was handed out twice");
    assert_eq!(data.claims("ros-net").len(), 100);
    std::thread::scope(|s| {
        for p in &pods {
            let (node, conf) = (&node, &conf);
            s.spawn(move || del(node, p, conf).ok().clone());
        }
    });
    assert!(
        data.claims("ros-net").is_empty(),
        "claims left: {:?}",
        data.claims("ros-net")
    );
    for p in &pods {
        assert_eq!(p.ns.link_names_after_removal(), ["lo", "eth0"]);
    }
}

/// A network's store is locked while an ADD allocates; another network must not wait.
#[test]
fn two_networks_never_wait_for_each_other() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let (a, b) = (wide(&data, "net-a"), wide(&data, "net-b"));
    let lock_dir = data.0.join("net-a");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_dir.join("lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).unwrap();

    let (pa, pb) = (node.pod(11), node.pod(12));
    std::thread::scope(|s| {
        let blocked = s.spawn(|| {
            let start = Instant::now();
            add(&node, &pa, &a).ok();
            start.elapsed()
        });
        let start = Instant::now();
        add(&node, &pb, &b).ok();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "net-b waited for net-a's lock"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(!blocked.is_finished(), "net-a's ADD ignored the store lock");
        drop(held);
        assert!(blocked.join().unwrap() >= Duration::from_millis(500));
    });
    del(&node, &pa, &a).ok();
    del(&node, &pb, &b).ok();
}

/// Where the fault tests run: a node on a LAN, its store and agent, and the config.
struct FaultScene {
    node: Node,
    data: DataDir,
    agent: TestAgent,
    conf: Value,
    _lan: Lan,
}

/// ADD with `fault@<step>` for every step of ADD, each in a fresh pod, handing `check` the
/// reply.
fn for_each_add_step(fault: &str, pod_n: u8, check: impl Fn(&str, &FaultScene, &Pod, &Reply)) {
    let lan = Lan::create();
    let data = DataDir::create();
    let agent = start_agent();
    let s = FaultScene {
        node: Node::new(&lan),
        conf: with_agent(wide(&data, "ros-net"), &agent),
        data,
        agent,
        _lan: lan,
    };
    for step in ros_macvlan::plugin::add::ADD_STEPS {
        let pod = s.node.pod(pod_n);
        let netns = pod.ns.path();
        let mut env = cni_env("ADD", &pod, "net1", &netns);
        let fault = format!("{fault}@{step}");
        env.push(("ROS_MACVLAN_TEST_FAULT", &fault));
        let r = run_in(&s.node.ns.name, &plugin_bin(), &env, &s.conf.to_string());
        check(step, &s, &pod, &r);
    }
}

/// After a failed ADD (and the runtime's DEL, where one comes): no link, no claim, eth0 as
/// it was, no membership held by the agent and no record of one.
fn assert_nothing_left(step: &str, pod: &Pod, data: &DataDir, agent: &Agent) {
    assert_eq!(
        pod.ns.link_names_after_removal(),
        ["lo", "eth0"],
        "{step}: a link is left"
    );
    assert!(
        data.claims("ros-net").is_empty(),
        "{step}: claims left {:?}",
        data.claims("ros-net")
    );
    let eth0 = pod.ns.ip(&["link", "show", "eth0"]);
    assert!(eth0.contains("MULTICAST"), "{step}: eth0 left marked");
    let held = ros_macvlan::agent::client::AgentClient::new(&agent.socket())
        .list()
        .unwrap();
    assert!(held.is_empty(), "{step}: the agent still holds {held:?}");
    assert!(
        agent.records().list().unwrap().is_empty(),
        "{step}: membership records left"
    );
}

/// SIGKILL at every step of ADD; the DEL the runtime sends next cleans everything, and a
/// repeated ADD succeeds.
#[test]
fn killed_at_any_step_of_add_the_next_del_cleans_up() {
    if !require_root() {
        return;
    }
    for_each_add_step("kill", 50, |step, s, pod, r| {
        assert_eq!(r.code, -1, "{step}: the plugin was not killed: {}", r.json);
        del(&s.node, pod, &s.conf).ok();
        assert_nothing_left(step, pod, &s.data, &s.agent);
        add(&s.node, pod, &s.conf).ok();
        del(&s.node, pod, &s.conf).ok();
    });
}

/// A panic at any step of ADD (a bug, such as an overflow in a build with overflow checks)
/// is answered with the error JSON (code 999), and ADD's own undo runs on the unwind: no
/// link, no claim, no membership, eth0 as it was, with no DEL needed.
#[test]
fn a_panic_at_any_step_of_add_is_answered_and_undone() {
    if !require_root() {
        return;
    }
    for_each_add_step("panic", 51, |step, s, pod, r| {
        assert_eq!(r.err_code(), 999, "{step}: {}", r.json);
        assert!(r.msg().contains("internal error"), "{step}: {}", r.json);
        assert_nothing_left(step, pod, &s.data, &s.agent);
    });
}

#[test]
fn gc_subcommand_releases_claims_of_pods_that_vanished() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let conf = wide(&data, "ros-net");
    let (gone, alive) = (node.pod(11), node.pod(12));
    let netns = gone.ns.path();
    let mut env = cni_env("ADD", &gone, "net1", &netns);
    env.push(("CNI_ARGS", "K8S_POD_NAMESPACE=robots;K8S_POD_NAME=talker"));
    let lost = run_in(&node.ns.name, &plugin_bin(), &env, &conf.to_string()).ok()["ips"][0]
        ["address"]
        .clone();
    let kept = add(&node, &alive, &conf).ok()["ips"][0]["address"].clone();
    // A reboot or a lost DEL: the pod's netns goes, no DEL comes.
    drop(gone);
    let out = std::process::Command::new(plugin_bin())
        .args(["gc", "--data-dir", data.path()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("robots/talker"), "gc names the pod: {text}");
    let claims = data.claims("ros-net");
    let ip = |v: &Value| v.as_str().unwrap().split('/').next().unwrap().to_owned();
    assert_eq!(
        claims,
        [ip(&kept)],
        "lost {lost} should be released, kept {kept} not"
    );
    del(&node, &alive, &conf).ok();
}

#[test]
fn gc_verb_releases_what_is_not_valid_and_status_reports_readiness() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let conf = guide_config(
        Some("1.1.0"),
        "lan0",
        &data,
        "198.51.100.160",
        "198.51.100.161",
    );
    let pods = [node.pod(11), node.pod(12)];
    for p in &pods {
        add(&node, p, &conf).ok();
    }
    let plain = |verb: &'static str, conf: &Value| {
        run_in(
            &node.ns.name,
            &plugin_bin(),
            &[("CNI_COMMAND", verb), ("CNI_PATH", REFERENCE_DIR)],
            &conf.to_string(),
        )
    };
    // The range is full: STATUS says no addresses left.
    assert_eq!(plain("STATUS", &conf).err_code(), 51);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": pods[0].container_id, "ifname": "net1"}]);
    plain("GC", &gc).ok();
    assert_eq!(data.claims("ros-net").len(), 1);
    assert_eq!(plain("STATUS", &conf).code, 0);
    // The older key is read too.
    let mut old = conf.clone();
    old["cni.dev/attachments"] = json!([]);
    plain("GC", &old).ok();
    assert!(data.claims("ros-net").is_empty());
    // A master that is down or missing: not available.
    node.ns.ip(&["link", "set", "lan0", "down"]);
    assert_eq!(plain("STATUS", &conf).err_code(), 50);
    node.ns.ip(&["link", "set", "lan0", "up"]);
    let mut missing = conf.clone();
    missing["master"] = json!("enp9s9");
    assert_eq!(plain("STATUS", &missing).err_code(), 50);
    // GC and STATUS are 1.1 verbs.
    let mut v1 = conf.clone();
    v1["cniVersion"] = json!("1.0.0");
    assert_eq!(plain("STATUS", &v1).err_code(), 1);
    for p in &pods {
        del(&node, p, &conf).ok();
    }
}

#[test]
fn node_policy_bounds_masters_and_ranges() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    node.plug(&lan, "lan1");
    let data = DataDir::create();
    let policy = data.0.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"masters": ["lan0"], "ranges": ["198.51.100.0/25"]}"#,
    )
    .unwrap();
    let pod = node.pod(11);
    let netns = pod.ns.path();
    let policy_path = policy.to_str().unwrap().to_owned();
    let run = |conf: &Value| {
        let mut env = cni_env("ADD", &pod, "net1", &netns);
        env.push(("ROS_MACVLAN_POLICY_FILE", &policy_path));
        run_in(&node.ns.name, &plugin_bin(), &env, &conf.to_string())
    };
    let allowed = guide_config(
        Some("1.0.0"),
        "lan0",
        &data,
        "198.51.100.10",
        "198.51.100.20",
    );
    run(&allowed).ok();
    del(&node, &pod, &allowed).ok();

    let other_master = guide_config(
        Some("1.0.0"),
        "lan1",
        &data,
        "198.51.100.10",
        "198.51.100.20",
    );
    let r = run(&other_master);
    assert_eq!(r.err_code(), 106);
    assert!(
        r.msg().contains("lan1") && r.msg().contains(&policy_path),
        "{}",
        r.msg()
    );

    let other_range = guide_config(
        Some("1.0.0"),
        "lan0",
        &data,
        "198.51.100.200",
        "198.51.100.210",
    );
    let r = run(&other_range);
    assert_eq!(r.err_code(), 106);
    assert!(r.msg().contains("198.51.100.200"), "{}", r.msg());
    assert_eq!(
        pod.ns.link_names(),
        ["lo", "eth0"],
        "a refused ADD leaves no link"
    );
    assert!(
        data.claims("ros-net").is_empty(),
        "a refused ADD leaves no claim"
    );

    std::fs::write(&policy, "{not json").unwrap();
    assert_eq!(
        run(&allowed).err_code(),
        106,
        "a broken policy refuses everything"
    );
}

/// One NetworkAttachmentDefinition for two nodes, a store per node: without detection both
/// nodes hand out the same addresses (the control); with it (the default) every pod on
/// both nodes gets a distinct one.
/// Makes a store resume after `ip`, as one the reference host-local last allocated from.
fn resume_store_at(data: &DataDir, network: &str, ip: &str) {
    let dir = data.0.join(network);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("last_reserved_ip.0"), ip).unwrap();
}

/// Nodes with one config and fresh stores start at picks of their own (derived from their
/// master's MAC) instead of walking the range in lockstep: with duplicate detection on,
/// three nodes adding ten pods each, interleaved, rarely collide. Stores that resume from
/// one point (as the reference host-local leaves them) collide once, then the node jumps to
/// a pick of its own instead of walking on into the other node's addresses. (Walking on in
/// lockstep, as before, collided 1.9 times per ADD here.)
#[test]
fn fresh_stores_on_several_nodes_rarely_collide() {
    if !require_root() {
        return;
    }
    const NODES: usize = 3;
    const PODS: u8 = 10;
    fn collisions_per_add(lockstep: bool) -> f64 {
        let lan = Lan::create();
        let nodes: Vec<Node> = (0..NODES).map(|_| Node::new(&lan)).collect();
        let data: Vec<DataDir> = (0..NODES).map(|_| DataDir::create()).collect();
        let confs: Vec<Value> = data.iter().map(|d| wide(d, "ros-net")).collect();
        if lockstep {
            for d in &data {
                resume_store_at(d, "ros-net", "198.51.100.9");
            }
        }
        let (mut collisions, mut adds) = (0, 0);
        let mut attached = Vec::new();
        for round in 0..PODS {
            for (n, node) in nodes.iter().enumerate() {
                let pod = node.pod(10 + round * NODES as u8 + n as u8);
                let r = add(node, &pod, &confs[n]);
                r.ok();
                adds += 1;
                collisions += r.stderr.matches("in use on the LAN (ARP answered)").count();
                attached.push((n, pod));
            }
        }
        for (n, pod) in &attached {
            del(&nodes[*n], pod, &confs[*n]).ok();
        }
        collisions as f64 / adds as f64
    }
    let fresh = collisions_per_add(false);
    let lockstep = collisions_per_add(true);
    println!("collisions per ADD: fresh stores {fresh:.2}, stores in lockstep {lockstep:.2}");
    assert!(fresh < 0.3, "fresh stores collide {fresh:.2} times per ADD");
    assert!(
        lockstep < 0.3,
        "stores in lockstep collide {lockstep:.2} times per ADD"
    );
}

#[test]
fn duplicate_detection_keeps_addresses_distinct_across_nodes() {
    if !require_root() {
        return;
    }
    fn scene(detection: Option<Value>) -> Vec<String> {
        let lan = Lan::create();
        let nodes = [Node::new(&lan), Node::new(&lan)];
        let data = [DataDir::create(), DataDir::create()];
        // Both stores resume from the same point (as stores the reference host-local used
        // do), so the nodes walk the range in lockstep: the worst case for duplicates.
        for d in &data {
            resume_store_at(d, "ros-net", "198.51.100.159");
        }
        let mut addrs = Vec::new();
        let mut attached = Vec::new();
        for round in 0..3u8 {
            for (n, node) in nodes.iter().enumerate() {
                let mut conf = guide_config(
                    Some("1.0.0"),
                    "lan0",
                    &data[n],
                    "198.51.100.160",
                    "198.51.100.180",
                );
                if let Some(d) = &detection {
                    conf["duplicateDetection"] = d.clone();
                }
                let pod = node.pod(10 + round * 2 + n as u8);
                let r = add(node, &pod, &conf);
                addrs.push(r.ok()["ips"][0]["address"].as_str().unwrap().to_owned());
                attached.push((n, pod, conf));
            }
        }
        for (n, pod, conf) in &attached {
            del(&nodes[*n], pod, conf).ok();
        }
        addrs
    }
    let distinct = |v: &Vec<String>| v.iter().collect::<HashSet<_>>().len();
    let without = scene(Some(json!(false)));
    assert!(
        distinct(&without) < without.len(),
        "the control should collide: {without:?}"
    );
    let with = scene(None);
    assert_eq!(
        distinct(&with),
        with.len(),
        "duplicates with detection on: {with:?}"
    );
}
