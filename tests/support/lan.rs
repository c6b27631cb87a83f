//! A node whose agent runs in its namespace, as the DaemonSet's does, and what the tests of
//! duplicate detection read of it (`tests/lan_watch.rs`, `tests/lan_trust.rs`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// The agent's probes of `network`, as ADD reads them (the one file of a network of that
/// name: `<network>.<identity hash>.json`).
pub fn probes(agent: &TestAgent, network: &str) -> Value {
    let dir = agent.socket().parent().unwrap().join("probes");
    let files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{network}.")) && n.ends_with(".json"))
        })
        .collect();
    match files.as_slice() {
        [file] => std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Waits up to `limit` for `what` to hold.
pub fn within(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}

pub fn mac_bytes(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// Sends `count` gratuitous ARPs for `ip` from `host`'s `lan0`, `gap` apart, as a pod with
/// NET_RAW on another node could.
pub fn announce_from(host: &Node, ip: Ipv4Addr, count: usize, gap: Duration) {
    let ifindex = ifindex_of(&host.ns, "lan0");
    let mac = mac_bytes(&mac_of(&host.ns, "lan0"));
    let arp = ros_macvlan::node::duplicate::ArpSocket::open_in(&host.ns.handle(), ifindex).unwrap();
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(gap);
        }
        arp.announce(mac, ip).unwrap();
    }
}

/// One ADD as the switch saw it: the address it took, how long it took, whether it probed
/// for the address itself, and the ARP capture (link-level headers: who sent each packet).
pub struct AddSeen {
    pub ip: Ipv4Addr,
    pub took: Duration,
    pub probed_itself: bool,
    pub arp: String,
}

/// ADD of `pod` with `conf` on `node`, the switch of `lan` capturing ARP meanwhile.
pub fn add_seen(lan: &Lan, node: &Node, pod: &Pod, conf: &Value) -> AddSeen {
    let capture = Capture::start(&lan.switch, "br0", &["-e", "arp"]);
    let started = Instant::now();
    let ip = net1_addr(add(node, pod, conf).ok());
    let took = started.elapsed();
    // The announcement, and the agent's first ask after it.
    std::thread::sleep(Duration::from_millis(300));
    let arp = capture.stop();
    AddSeen {
        ip,
        took,
        probed_itself: probed_for_itself(&arp, &mac_of(&pod.ns, "net1"), ip),
        arp,
    }
}

/// Whether the pod with `pod_mac` sent an ARP probe (sender 0.0.0.0) before announcing
/// `ip`, in a capture with link-level headers; panics when it never announced. A probe after
/// the announcement is the agent's first ask from the new pod's interface, once it watches it.
pub fn probed_for_itself(capture: &str, pod_mac: &str, ip: Ipv4Addr) -> bool {
    let from_pod: Vec<&str> = capture
        .lines()
        .filter(|l| l.contains(&format!("{pod_mac} >")))
        .collect();
    let announced = from_pod
        .iter()
        .position(|l| l.contains(&format!("who-has {ip} tell {ip}")))
        .unwrap_or_else(|| panic!("{pod_mac} never announced {ip}: {capture}"));
    from_pod[..announced]
        .iter()
        .any(|l| l.contains("tell 0.0.0.0"))
}

pub fn ifindex_of(ns: &Ns, dev: &str) -> u32 {
    ns.ip_json(&["link", "show", dev])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32
}

pub fn mac_of(ns: &Ns, dev: &str) -> String {
    ns.ip_json(&["link", "show", dev])[0]["address"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A node whose agent runs in its namespace, with the guide's config (duplicate detection
/// on, as by default) pointed at it.
pub struct WatchedLan {
    pub lan: Lan,
    pub node: Node,
    pub agent: TestAgent,
    /// The store, removed with the scene.
    pub data: DataDir,
    pub conf: Value,
}

impl WatchedLan {
    pub fn new() -> WatchedLan {
        WatchedLan::with_agent(&[])
    }

    /// The scene with the agent started with `args` added.
    pub fn with_agent(args: &[&str]) -> WatchedLan {
        WatchedLan::with_agent_under(&[], args)
    }

    /// The scene with the agent run under `under` (`env VAR=...`), `args` added.
    pub fn with_agent_under(under: &[&str], args: &[&str]) -> WatchedLan {
        let lan = Lan::create();
        let node = Node::new(&lan);
        let agent = TestAgent::start_under(under, Some(&node.ns.name), args);
        let data = DataDir::create();
        let mut conf = with_agent(guide(&data), &agent);
        conf.as_object_mut().unwrap().remove("duplicateDetection");
        WatchedLan {
            lan,
            node,
            agent,
            data,
            conf,
        }
    }

    /// Waits until the agent's probes say `ip` was probed free.
    pub fn probed_free(&self, ip: Ipv4Addr) -> bool {
        within(Duration::from_secs(5), || {
            probes(&self.agent, "ros-net")["addresses"][ip.to_string()]["freeAtMs"]
                .as_u64()
                .is_some_and(|t| t > 0)
        })
    }

    /// A host on the LAN holding `ip` (it answers ARP for it; it announces nothing).
    pub fn lan_host_with(&self, ip: Ipv4Addr) -> Node {
        let host = Node::new(&self.lan);
        host.ns
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", "lan0"]);
        host
    }
}
