//! Host access: the node's own processes reach the pods on its macvlan network through the
//! shim `ros-macvlan host-access` sets up (and the node agent keeps). Judged by ping, by
//! CycloneDDS ddsperf and by the Fast DDS talker and listener, in namespaces: a node with
//! its pods, a second node, and a LAN host on the same snooping switch.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const NODE_ADDRESS: &str = "198.51.100.2/24";
const SHIM_ADDRESS: &str = "198.51.100.3";
/// Every pod of both nodes: node 1 hands out .160-.180, node 2 .181-.190.
const POD_RANGE: &str = "198.51.100.160/27";
const SHIM: &str = "rmshim-lan0";

/// The agent must put things back within this.
const RECONCILE_LIMIT: Duration = Duration::from_secs(5);

fn host_access(node: &Node, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(plugin_bin())
        .args(["host-access", "--master", "lan0"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn set_up(node: &Node, extra: &[&str]) -> String {
    let mut args = vec!["--address", "198.51.100.3/24", "--pod-range", POD_RANGE];
    args.extend_from_slice(extra);
    let (ok, out) = host_access(node, &args);
    assert!(ok, "host-access failed: {out}");
    out
}

fn ping(from: &Ns, to: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", &from.name, "ping", "-c", "1", "-W", "1", to,
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Pings until an answer comes, for at most `limit` from `since`.
fn ping_within(from: &Ns, to: &str, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        if ping(from, to) {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The node's links (with flags and aliases), addresses and routes (IPv4 and IPv6, every
/// table) as `ip -j` shows them, each list sorted, once no address is tentative any more.
fn dump(ns: &Ns) -> Vec<Vec<String>> {
    let start = Instant::now();
    while ns.ip(&["addr"]).contains("tentative") && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    [
        &["-d", "link", "show"][..],
        &["addr", "show"],
        &["-4", "route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ]
    .iter()
    .map(|args| {
        let mut items: Vec<String> = ns
            .ip_json(args)
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(Value::to_string)
            .collect();
        items.sort();
        items
    })
    .collect()
}

fn assert_same_node(before: &[Vec<String>], after: &[Vec<String>]) {
    for (what, (b, a)) in ["links", "addresses", "IPv4 routes", "IPv6 routes"]
        .iter()
        .zip(before.iter().zip(after))
    {
        let gone: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
        let new: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "{what} differ after --remove:\n before only: {gone:#?}\n after only: {new:#?}"
        );
    }
}

fn net1_address(reply: &Reply) -> String {
    let ip = reply.ok()["ips"][0]["address"].as_str().unwrap().to_owned();
    ip.split('/').next().unwrap().to_owned()
}

/// The shim's MAC, if it exists.
fn shim_mac(node: &Node) -> Option<String> {
    node.ns
        .ip_json(&["link", "show"])
        .as_array()?
        .iter()
        .find(|l| l["ifname"] == SHIM)
        .and_then(|l| l["address"].as_str().map(str::to_owned))
}

/// ddsperf (CycloneDDS) in a namespace with no DDS configuration.
fn ddsperf(ns: &Ns, args: &[&str]) -> Spawned {
    let mut command = vec!["ddsperf"];
    command.extend_from_slice(args);
    Spawned::start(ns, &command, |c| {
        c.env_remove("CYCLONEDDS_URI");
    })
}

/// `ddsperf sub` in `sub_ns` waiting for one publisher: whether it matched one and got data.
fn ddsperf_hears(pub_ns: &Ns, sub_ns: &Ns) -> (bool, String) {
    let _publisher = ddsperf(pub_ns, &["-D", "8", "pub", "10Hz"]);
    let sub = ddsperf(
        sub_ns,
        &[
            "-D",
            "6",
            "-Qminmatch:1",
            "-Qmaxwait:5",
            "-Qsamples:10",
            "sub",
        ],
    );
    sub.wait()
}

/// The judge's role here: one talker, one listener, how much got through.
impl FastDds {
    /// How many of the talker's 25 samples the listener got, and the logs.
    fn heard(&self, talker_ns: &Ns, listener_ns: &Ns, name: &str) -> (u32, String) {
        let listener = self.start(
            listener_ns,
            &[self.listener.to_str().unwrap(), "--duration", "10"],
        );
        let talker = self.start(
            talker_ns,
            &[
                self.talker.to_str().unwrap(),
                "--name",
                name,
                "--count",
                "25",
                "--rate",
                "10",
            ],
        );
        let (_, talker_log) = talker.wait();
        listener.terminate();
        let (_, log) = listener.wait();
        let n = log
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    ["summary", "heard", who, n] if *who == name => n.parse().ok(),
                    _ => None,
                }
            })
            .next()
            .unwrap_or(0);
        (n, format!("{talker_log}\n--- listener:\n{log}"))
    }

    fn assert_heard(&self, talker_ns: &Ns, listener_ns: &Ns, name: &str) {
        let (n, log) = self.heard(talker_ns, listener_ns, name);
        assert!(
            n >= 20,
            "{name}: the listener heard {n} of 25 samples:\n{log}"
        );
    }
}

/// A node with its LAN address and two pods on net1; the plugin hands memberships to `agent`
/// when there is one (else the DDS processes join by themselves).
struct Scene {
    lan: Lan,
    node: Node,
    data: DataDir,
    conf: Value,
    no_agent: TestAgent,
    pods: Vec<(Pod, String)>,
}

impl Scene {
    fn new() -> Scene {
        let lan = Lan::create();
        let node = Node::new(&lan);
        node.ns.ip(&["addr", "add", NODE_ADDRESS, "dev", "lan0"]);
        let data = DataDir::create();
        // No agent: the DDS processes join the group by themselves.
        let no_agent = no_agent();
        let conf = with_agent(guide(&data), &no_agent);
        Scene {
            no_agent,
            lan,
            node,
            data,
            conf,
            pods: Vec::new(),
        }
    }

    fn add_pods(&mut self, n: u8) {
        for i in 0..n {
            let pod = self.node.pod(11 + i);
            let ip = net1_address(&add(&self.node, &pod, &self.conf));
            self.pods.push((pod, ip));
        }
    }
}

impl Scene {
    /// The scene with two pods, and the Fast DDS judge; none when a test cannot run here.
    fn judged() -> Option<(FastDds, Scene)> {
        if !require_root() {
            return None;
        }
        let fastdds = FastDds::find()?;
        let mut scene = Scene::new();
        scene.add_pods(2);
        Some((fastdds, scene))
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for (pod, _) in &self.pods {
            del(&self.node, pod, &self.conf);
        }
        let _ = (&self.lan, &self.data, &self.no_agent);
    }
}

#[test]
fn refused_specs_change_nothing() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    node.ns.ip(&["addr", "add", NODE_ADDRESS, "dev", "lan0"]);
    let before = dump(&node.ns);
    for (args, says) in [
        (
            vec!["--address", "198.51.100.170/24", "--pod-range", POD_RANGE],
            "inside pod range 198.51.100.160/27",
        ),
        (
            vec!["--address", NODE_ADDRESS, "--pod-range", POD_RANGE],
            "already an address of lan0",
        ),
    ] {
        let (ok, out) = host_access(&node, &args);
        assert!(!ok, "{args:?} was accepted: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    let (ok, out) = std::process::Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(plugin_bin())
        .args([
            "host-access",
            "--master",
            "nosuch0",
            "--address",
            "198.51.100.3/24",
        ])
        .args(["--pod-range", POD_RANGE])
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert!(!ok && out.contains("nosuch0 does not exist"), "{out}");
    assert_same_node(&before, &dump(&node.ns));
}

/// The control first (no host access: no ping, no discovery), then host access from the
/// command line: ping both ways, Fast DDS both ways with no option, ddsperf both ways with
/// --exclusive-multicast, doctor --host; --remove leaves the node as it was.
#[test]
fn the_node_reaches_its_pods_only_through_host_access() {
    let Some((fastdds, scene)) = Scene::judged() else {
        return;
    };
    let node = &scene.node;
    let (pod0, ip0) = &scene.pods[0];
    let (pod1, ip1) = &scene.pods[1];
    let before = dump(&node.ns);

    // The control: a macvlan's master never delivers to its own macvlans.
    assert!(
        !ping(&node.ns, ip0),
        "the node reached {ip0} without host access"
    );
    let (matched, log) = ddsperf_hears(&pod0.ns, &node.ns);
    assert!(
        !matched,
        "ddsperf on the node matched a pod without host access:\n{log}"
    );

    let said = set_up(node, &[]);
    assert!(said.contains("created rmshim-lan0"), "{said}");
    assert!(said.contains("routed 198.51.100.160/27"), "{said}");
    let again = set_up(node, &[]);
    assert!(again.contains("nothing to change"), "run again: {again}");
    let route = node.ns.ip(&["route", "show", POD_RANGE]);
    assert!(
        route.contains(&format!("dev {SHIM}")) && route.contains(&format!("src {SHIM_ADDRESS}")),
        "{route}"
    );
    assert!(
        node.ns
            .read(&format!("/proc/sys/net/ipv4/conf/{SHIM}/arp_notify"))
            .trim()
            == "1",
        "arp_notify is off on the shim"
    );

    for ip in [ip0, ip1] {
        assert!(ping(&node.ns, ip), "the node does not reach {ip}");
    }
    for (pod, _) in &scene.pods {
        assert!(ping(&pod.ns, SHIM_ADDRESS), "a pod does not reach the node");
    }

    // Fast DDS uses every interface: no option needed.
    fastdds.assert_heard(&node.ns, &pod0.ns, "node-talker");
    fastdds.assert_heard(&pod1.ns, &node.ns, "pod-talker");

    // CycloneDDS needs the master's MULTICAST flag off to pick the shim.
    let said = set_up(node, &["--exclusive-multicast"]);
    assert!(said.contains("cleared lan0's MULTICAST flag"), "{said}");
    let (matched, log) = ddsperf_hears(&pod0.ns, &node.ns);
    assert!(
        matched,
        "ddsperf on the node did not match the pod's publisher:\n{log}"
    );
    let (matched, log) = ddsperf_hears(&node.ns, &pod1.ns);
    assert!(
        matched,
        "ddsperf in the pod did not match the node's publisher:\n{log}"
    );

    // doctor --host sees it all, and hears a pod's participant live.
    let _talker = ddsperf(&pod0.ns, &["-D", "6", "pub", "10Hz"]);
    let doctor = std::process::Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(plugin_bin())
        .args(["doctor", "--host", "--seconds", "3"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    for line in [
        "PASS shim ",
        "PASS shim up",
        "PASS shim address",
        "PASS pod routes",
    ] {
        assert!(
            report.contains(line),
            "doctor --host misses {line:?}:\n{report}"
        );
    }
    assert!(
        report.contains("PASS node DDS interface") && report.contains("PASS live probe"),
        "{report}"
    );
    assert!(
        report.contains(ip0.as_str()),
        "the probe did not hear {ip0}:\n{report}"
    );

    let (ok, out) = host_access(node, &["--remove"]);
    assert!(ok, "{out}");
    assert!(out.contains("gave lan0 its MULTICAST flag back"), "{out}");
    assert_same_node(&before, &dump(&node.ns));
    assert!(
        !ping(&node.ns, ip0),
        "host access still works after --remove"
    );
}

/// Host access from the node configuration (a `hostAccess` entry of the policy ConfigMap):
/// the agent sets it up and puts it back within 5 s after flaps and deletions; a LAN host
/// still reaches the node and the pods, a pod on a second node reaches the node's processes;
/// after all that --remove leaves the node as it was.
#[test]
fn the_agent_keeps_host_access_and_the_lan_keeps_working() {
    let Some((fastdds, scene)) = Scene::judged() else {
        return;
    };
    let node = &scene.node;
    let (pod0, ip0) = &scene.pods[0];

    // A second node on the switch (its pods from .181) and a LAN host.
    let node2 = Node::new(&scene.lan);
    node2
        .ns
        .ip(&["addr", "add", "198.51.100.4/24", "dev", "lan0"]);
    let data2 = DataDir::create();
    let conf2 = guide_config(
        Some("1.0.0"),
        "lan0",
        &data2,
        "198.51.100.181",
        "198.51.100.190",
    );
    let conf2 = with_agent(conf2, &scene.no_agent);
    let remote = node2.pod(21);
    let remote_ip = net1_address(&add(&node2, &remote, &conf2));
    let lan_host = Node::new(&scene.lan);
    lan_host
        .ns
        .ip(&["addr", "add", "198.51.100.9/24", "dev", "lan0"]);
    std::thread::sleep(Duration::from_secs(1));
    let before = dump(&node.ns);

    // The ConfigMap's file, mirrored by the agent into the node's policy dir.
    let config = DataDir::create();
    let source = config.0.join("configmap-policy.json");
    std::fs::write(
        &source,
        json!({"hostAccess": [{"master": "lan0", "address": "198.51.100.3/24",
                               "podRanges": [POD_RANGE]}]})
        .to_string(),
    )
    .unwrap();
    let policy_dir = config.0.join("etc");
    let mut agent = TestAgent::start_in(
        Some(&node.ns.name),
        &[
            "--policy",
            source.to_str().unwrap(),
            "--policy-dir",
            policy_dir.to_str().unwrap(),
        ],
    );
    let started = Instant::now();
    assert!(
        ping_within(&node.ns, ip0, started, RECONCILE_LIMIT).is_some(),
        "the agent did not set up host access within 5 s:\n{}",
        agent.log()
    );
    let mac = shim_mac(node).unwrap();

    // The LAN still reaches the node's own address, the shim and the pods.
    for to in [
        "198.51.100.2",
        SHIM_ADDRESS,
        ip0.as_str(),
        remote_ip.as_str(),
    ] {
        assert!(ping(&lan_host.ns, to), "the LAN host does not reach {to}");
    }
    // A pod on the second node reaches the node: its address, and its DDS processes.
    assert!(
        ping(&remote.ns, "198.51.100.2"),
        "the remote pod does not reach the node"
    );
    assert!(
        ping(&node.ns, &remote_ip),
        "the node does not reach the remote pod"
    );
    fastdds.assert_heard(&remote.ns, &node.ns, "remote-pod-talker");

    let disruptions: [(&str, Vec<Vec<&str>>); 4] = [
        ("the shim set down", vec![vec!["link", "set", SHIM, "down"]]),
        (
            "a flap of the master",
            vec![
                vec!["link", "set", "lan0", "down"],
                vec!["link", "set", "lan0", "up"],
            ],
        ),
        (
            "the pod-range route deleted",
            vec![vec!["route", "del", POD_RANGE]],
        ),
        ("the shim deleted", vec![vec!["link", "del", SHIM]]),
    ];
    for (what, commands) in disruptions {
        for c in &commands {
            node.ns.ip(c);
        }
        let since = Instant::now();
        if what != "a flap of the master" {
            assert!(
                !ping(&node.ns, ip0),
                "after {what}, ping still worked: no test"
            );
        }
        let took = ping_within(&node.ns, ip0, since, RECONCILE_LIMIT);
        assert!(
            took.is_some(),
            "after {what}, ping did not work again within 5 s:\n{}",
            agent.log()
        );
        println!("after {what}: ping works again after {:?}", took.unwrap());
    }
    assert_eq!(
        shim_mac(node).as_deref(),
        Some(mac.as_str()),
        "the re-created shim's MAC changed"
    );
    assert!(ping(&pod0.ns, SHIM_ADDRESS));

    agent.stop();
    let (ok, out) = host_access(node, &["--remove"]);
    assert!(ok && out.contains("removed rmshim-lan0"), "{out}");
    assert_same_node(&before, &dump(&node.ns));
    del(&node2, &remote, &conf2);
}
