//! The node agent: it holds each attachment's group membership for as long as the pod
//! lives, re-creates them after its own restart, lets go when a pod's netns is gone (a lost
//! DEL), and is never needed for an ADD to succeed.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ros_macvlan::agent::client::AgentClient;
use support::*;

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

/// Polls `what` every 100 ms until it holds or `limit` passes; returns how long it took.
fn within(limit: Duration, mut what: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if what() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Two tenants on one node with one agent: pods 11 and 12, each attached by a NAD of its
/// own namespace (the guide's, and `other-tenant-net` with a store of its own). Dropped in
/// order: the agent, the pods, the stores, the node, the LAN.
struct TwoTenants {
    agent: TestAgent,
    conf: serde_json::Value,
    other_conf: serde_json::Value,
    first: Pod,
    second: Pod,
    _data: (DataDir, DataDir),
    node: Node,
    _lan: Lan,
}

impl TwoTenants {
    fn new() -> TwoTenants {
        let lan = Lan::create();
        let node = Node::new(&lan);
        let (first, second) = (node.pod(11), node.pod(12));
        let data = (DataDir::create(), DataDir::create());
        let agent = start_agent();
        let conf = with_agent(guide(&data.0), &agent);
        let mut other_conf = with_agent(guide(&data.1), &agent);
        other_conf["name"] = "other-tenant-net".into();
        TwoTenants {
            agent,
            conf,
            other_conf,
            first,
            second,
            _data: data,
            node,
            _lan: lan,
        }
    }
}

fn held_keys(agent: &Agent) -> Vec<String> {
    AgentClient::new(&agent.socket())
        .list()
        .unwrap()
        .iter()
        .map(|r| r.key())
        .collect()
}

#[test]
fn memberships_come_back_after_the_agent_restarts() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pods = [node.pod(11), node.pod(12)];
    let data = DataDir::create();
    let mut agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    for pod in &pods {
        add(&node, pod, &conf).ok();
        assert!(joined(&pod.ns, "net1").contains(&GROUP));
    }
    // The memberships are the agent's sockets: they end with it...
    agent.kill();
    for pod in &pods {
        assert!(
            !joined(&pod.ns, "net1").contains(&GROUP),
            "the membership outlived the agent's sockets"
        );
    }
    // ...and the next agent re-creates them from the records.
    agent.restart();
    for pod in &pods {
        assert!(
            within(Duration::from_secs(3), || joined(&pod.ns, "net1")
                .contains(&GROUP))
            .is_some(),
            "239.255.0.1 not joined again on net1 after the agent's restart"
        );
    }
    assert_eq!(held_keys(&agent).len(), 2);
    for pod in &pods {
        del(&node, pod, &conf).ok();
        assert!(!joined(&pod.ns, "net1").contains(&GROUP));
    }
    assert!(held_keys(&agent).is_empty());
}

/// No agent: ADD still succeeds and its log line says why no membership is held; an agent
/// started later holds the membership of the pod attached before it.
#[test]
fn add_succeeds_without_an_agent_and_a_later_agent_takes_over() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    let data = DataDir::create();
    let mut agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    agent.kill();

    let started = Instant::now();
    let r = add(&node, &pod, &conf);
    r.ok();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ADD waited {:?} for a missing agent",
        started.elapsed()
    );
    assert!(
        r.stderr.contains("no node agent at") && r.stderr.contains("ADD"),
        "the log line does not say the membership is not held: {}",
        r.stderr
    );
    assert!(!joined(&pod.ns, "net1").contains(&GROUP));

    agent.restart();
    assert!(
        within(Duration::from_secs(3), || joined(&pod.ns, "net1")
            .contains(&GROUP))
        .is_some(),
        "the agent did not take over the membership of a pod attached before it started"
    );
    del(&node, &pod, &conf).ok();
    assert!(held_keys(&agent).is_empty());
}

/// A lost DEL: the pod's netns path goes (or comes back as another namespace) and no DEL
/// comes. The agent's socket would keep the namespace, and the macvlan in it answering for
/// the released address, alive; the agent lets go within 10 s and the namespace is freed.
#[test]
fn the_agent_lets_go_when_a_pods_netns_is_gone() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    // A host on the same LAN that pings the pods.
    let host = Node::new(&lan);
    host.ns
        .ip(&["addr", "add", "198.51.100.2/24", "dev", "lan0"]);
    let (gone, reused) = (node.pod(11), node.pod(12));
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    let addr = |pod: &Pod| {
        add(&node, pod, &conf).ok()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let gone_addr = addr(&gone);
    addr(&reused);
    let answers = |ip: &str| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.ns.name,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                ip,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(
        within(Duration::from_secs(3), || answers(&gone_addr)).is_some(),
        "the pod does not answer before"
    );
    assert_eq!(held_keys(&agent).len(), 2);

    // One pod's netns path is removed; the other's now names a new namespace.
    sh(&["ip", "netns", "del", &gone.ns.name]);
    sh(&["ip", "netns", "del", &reused.ns.name]);
    sh(&["ip", "netns", "add", &reused.ns.name]);

    let freed = within(Duration::from_secs(10), || held_keys(&agent).is_empty());
    assert!(
        freed.is_some(),
        "the agent still holds {:?}",
        held_keys(&agent)
    );
    assert!(
        agent.records().list().unwrap().is_empty(),
        "the records of vanished pods are left"
    );
    // The namespace went with the last socket, and its macvlan with it.
    assert!(
        within(Duration::from_secs(3), || !answers(&gone_addr)).is_some(),
        "{gone_addr} still answers: the vanished pod's namespace is alive"
    );
}

/// The DaemonSet's one container: the agent also installs the plugin, mirrors the node
/// policy and runs gc, as the flags in install/base/daemonset.yaml ask.
#[test]
fn the_agent_installs_mirrors_the_policy_and_runs_gc() {
    if !require_root() {
        return;
    }
    let dir = DataDir::create();
    let (bin_dir, policy_dir) = (dir.0.join("bin"), dir.0.join("policy"));
    let policy = dir.0.join("policy.json");
    std::fs::write(&policy, br#"{"masters": ["lan*"]}"#).unwrap();
    let socket = dir.0.join("agent.sock");
    let agent = std::process::Command::new(plugin_bin())
        .arg("agent")
        .arg("--socket")
        .arg(&socket)
        .arg("--cni-bin-dir")
        .arg(&bin_dir)
        .arg("--policy")
        .arg(&policy)
        .arg("--policy-dir")
        .arg(&policy_dir)
        .arg("--gc-data-dir")
        .arg(dir.0.join("networks"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = within(Duration::from_secs(3), || {
        AgentClient::new(&socket).list().is_ok()
    });
    let installed = std::fs::read(bin_dir.join("ros-macvlan")).unwrap_or_default();
    let mirrored = within(Duration::from_secs(3), || {
        policy_dir.join("policy.json").exists()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(ready.is_some(), "the agent did not answer:\n{log}");
    assert_eq!(installed, std::fs::read(plugin_bin()).unwrap(), "{log}");
    assert!(mirrored.is_some(), "the policy was not mirrored:\n{log}");
    assert!(log.contains("gc: 0 attachment(s) released"), "{log}");
    assert!(out.status.success(), "SIGTERM is a clean stop:\n{log}");
    assert!(!socket.exists(), "the socket file outlives the agent");
}

/// A listing that fails is not an empty listing: an agent out of descriptors cannot read
/// its records, and through its sweeps it lets go of no tenant's membership; once it can
/// read them again, it goes on as before.
#[test]
fn an_agent_that_cannot_list_its_records_lets_no_tenant_go() {
    if !require_root() {
        return;
    }
    let scene = TwoTenants::new();
    let (node, agent, conf, other_conf) =
        (&scene.node, &scene.agent, &scene.conf, &scene.other_conf);
    let (first, second) = (&scene.first, &scene.second);
    add(node, first, conf).ok();
    add(node, second, other_conf).ok();
    assert_eq!(held_keys(agent).len(), 2);

    let limit = agent.exhaust_descriptors();
    let said = within(Duration::from_secs(5), || {
        agent
            .log()
            .contains("cannot read the membership records whole")
    });
    assert!(said.is_some(), "the listing did not fail:\n{}", agent.log());
    // Three sweeps more: both memberships stay joined all along.
    let lapsed = within(3 * ros_macvlan::agent::lifecycle::SWEEP_EVERY, || {
        !joined(&first.ns, "net1").contains(&GROUP) || !joined(&second.ns, "net1").contains(&GROUP)
    });
    assert!(
        lapsed.is_none(),
        "a membership was let go while the records could not be listed:\n{}",
        agent.log()
    );

    drop(limit);
    assert!(
        within(Duration::from_secs(5), || agent
            .log()
            .contains("membership records can be read whole again"))
        .is_some(),
        "{}",
        agent.log()
    );
    assert_eq!(held_keys(agent).len(), 2);
    del(node, first, conf).ok();
    del(node, second, other_conf).ok();
    assert!(held_keys(agent).is_empty());
}

/// A runtime that names the pod's netns by a process of it (`/proc/<pid>/ns/net`): once that
/// process has exited the path is gone for good, and the agent lets go of its membership
/// within 10 s; another tenant's pod, named by its netns file, is kept.
#[test]
fn a_netns_named_by_a_process_that_exited_is_gone() {
    if !require_root() {
        return;
    }
    let scene = TwoTenants::new();
    let (node, agent, conf, other_conf) =
        (&scene.node, &scene.agent, &scene.conf, &scene.other_conf);
    let (by_process, other) = (&scene.first, &scene.second);
    let holder = Spawned::start(&by_process.ns, &["sleep", "60"], |_| {});
    let netns = format!("/proc/{}/ns/net", holder.pid());
    cni_with("ADD", node, by_process, conf, &[("CNI_NETNS", &netns)]).ok();
    add(node, other, other_conf).ok();
    assert!(joined(&by_process.ns, "net1").contains(&GROUP));
    assert_eq!(held_keys(agent).len(), 2);

    drop(holder);
    let let_go = within(Duration::from_secs(10), || {
        !joined(&by_process.ns, "net1").contains(&GROUP)
    });
    assert!(
        let_go.is_some(),
        "the membership outlived the process naming its netns:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("its process has exited"),
        "{}",
        agent.log()
    );
    assert_eq!(held_keys(agent).len(), 1);
    assert!(
        joined(&other.ns, "net1").contains(&GROUP),
        "the other tenant's membership went"
    );
    cni_with("DEL", node, by_process, conf, &[("CNI_NETNS", &netns)]);
    del(node, other, other_conf).ok();
}

/// Each client is answered on its own: clients that connect and send nothing do not hold
/// up another pod's ADD and DEL, which the agent answers at once.
#[test]
fn silent_clients_hold_no_other_pods_add_or_del() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    let silent: Vec<_> = (0..5)
        .map(|_| std::os::unix::net::UnixStream::connect(agent.socket()).unwrap())
        .collect();

    let started = Instant::now();
    let added = add(&node, &pod, &conf);
    let took = started.elapsed();
    added.ok();
    assert!(
        !added.stderr.contains("not held"),
        "ADD found no agent: {}",
        added.stderr
    );
    assert!(took < Duration::from_millis(900), "ADD took {took:?}");
    assert_eq!(held_keys(&agent).len(), 1);
    let started = Instant::now();
    del(&node, &pod, &conf).ok();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "DEL took {:?}",
        started.elapsed()
    );
    assert!(held_keys(&agent).is_empty(), "DEL's drop was not answered");
    drop(silent);
}

/// SIGTERM: the agent stops accepting, closes every relay and membership, stops and joins
/// its LAN watch, and exits within 2 s; the records stay, so the next agent holds it all
/// again.
#[test]
fn sigterm_stops_every_duty_within_2_s_and_keeps_the_records() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    pod.ns.ip(&["link", "set", "lo", "up"]);
    let data = DataDir::create();
    let mut agent =
        TestAgent::start_in(Some(&node.ns.name), &["--zenoh-routers", "127.0.0.1:7448"]);
    let mut conf = with_agent(guide(&data), &agent);
    conf["zenoh"] = true.into();
    add(&node, &pod, &conf).ok();
    assert!(joined(&pod.ns, "net1").contains(&GROUP));
    assert!(!tcp_listeners(&pod.ns, 7447).is_empty(), "no relay");

    let started = Instant::now();
    agent.stop();
    let took = started.elapsed();
    let log = agent.log();
    assert!(
        took < Duration::from_secs(2),
        "stopping took {took:?}:\n{log}"
    );
    assert!(log.contains("agent: stopped"), "not a clean stop:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !agent.socket().exists(),
        "the socket file outlives the agent"
    );
    assert!(
        tcp_listeners(&pod.ns, 7447).is_empty(),
        "the relay outlives the agent"
    );
    assert!(!joined(&pod.ns, "net1").contains(&GROUP));
    assert_eq!(agent.records().list().unwrap().len(), 1, "the records went");

    agent.restart();
    assert!(
        within(Duration::from_secs(3), || joined(&pod.ns, "net1")
            .contains(&GROUP)
            && !tcp_listeners(&pod.ns, 7447).is_empty())
        .is_some(),
        "the next agent did not take over:\n{}",
        agent.log()
    );
    del(&node, &pod, &conf).ok();
}
