//! `ros-macvlan demo`: the original guide's "two talkers, one listener, three pods" scene,
//! built in namespaces through the plugin itself, shown working, then removed. `scene` builds
//! the namespaces.

pub mod scene;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::plugin::config::ROS_DISCOVERY_GROUP;
use scene::{
    group_receiver, run_in, send_to_group, Agent, Lan, Node, Pod, Reply, DDSPERF_LISTENER,
    DDSPERF_TALKER,
};

/// SPDP for ROS_DOMAIN_ID 0 goes to 7400 + 250 × domain.
const DISCOVERY_PORT: u16 = 7400;

fn cni(verb: &str, node: &Node, pod: &Pod, conf: &Value, bin: &Path) -> Reply {
    let netns = pod.ns.path();
    let env = [
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", pod.container_id.as_str()),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "net1"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=demo"),
    ];
    run_in(&node.ns.name, bin, &env, &conf.to_string())
}

pub fn run() -> i32 {
    if !nix::unistd::geteuid().is_root() {
        log::error!("ros-macvlan demo builds network namespaces: run it as root (sudo)");
        return 1;
    }
    let bin = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            log::error!("cannot find my own binary: {e}");
            return 1;
        }
    };
    // In a directory the plugin allows for host-local's dataDir with no node policy.
    let data = Path::new("/run/cni").join(format!("ros-macvlan-demo-{}", std::process::id()));
    let outcome = std::panic::catch_unwind(|| play(&bin, &data));
    let _ = std::fs::remove_dir_all(&data);
    match outcome {
        Ok(true) => {
            println!("\nOK: the listener hears both talkers over net1. Everything the demo made is removed.");
            0
        }
        Ok(false) => {
            println!("\nFAILED: the listener did not hear both talkers (see above).");
            1
        }
        Err(_) => {
            log::error!("the demo could not build its namespaces (is iproute2 installed?)");
            1
        }
    }
}

fn play(bin: &Path, data: &Path) -> bool {
    println!(
        "Building the guide's scene in network namespaces: a LAN switch, one node, three pods"
    );
    println!(
        "(each pod has a Calico-like eth0 holding its default route, which carries no multicast)."
    );
    let lan = Lan::create();
    let node = Node::new(&lan);
    // The node agent the DaemonSet runs: it holds each pod's group membership.
    let agent = Agent::start(bin);
    println!(
        "  node agent: ros-macvlan agent --socket {}",
        agent.socket().display()
    );
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ros-net", "type": "ros-macvlan",
        "agentSocket": agent.socket(),
        "master": node.master, "mode": "bridge", "isDefaultgateway": true,
        "ipam": { "type": "host-local", "dataDir": data,
          "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.160",
                        "rangeEnd": "198.51.100.180", "gateway": "198.51.100.1" }]] }
    });
    let names = ["talker-1", "talker-2", "listener"];
    let pods: Vec<Pod> = (0..3).map(|i| node.pod(10 + i as u8)).collect();
    let made: Vec<&str> = [&lan.switch, &node.ns]
        .into_iter()
        .chain(pods.iter().map(|p| &p.ns))
        .map(|ns| ns.name.as_str())
        .collect();
    println!("  namespaces: {}", made.join(" "));
    let mut addrs = Vec::new();
    for (pod, name) in pods.iter().zip(names) {
        let r = cni("ADD", &node, pod, &conf, bin);
        if r.code != 0 {
            println!("ADD for {name} failed: {}", r.json);
            return false;
        }
        let addr = r.json["ips"][0]["address"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        println!("  {name:<9} net1 {addr:<18} (ros-macvlan ADD: multicast routed out net1, eth0 marked non-multicast)");
        addrs.push(addr);
    }
    println!("\nMemberships, as the kernel lists them in each pod's /proc/net/igmp (held by the agent's sockets; the pods' addresses show no group):");
    let mut all_joined = true;
    for (pod, name) in pods.iter().zip(names) {
        let ok = crate::plugin::multicast::joined_groups(&pod.ns.handle(), "net1")
            .is_ok_and(|joined| joined.contains(&ROS_DISCOVERY_GROUP));
        all_joined &= ok;
        println!(
            "  {name:<9} net1 {}",
            if ok {
                format!("joined {ROS_DISCOVERY_GROUP}")
            } else {
                format!("has NOT joined {ROS_DISCOVERY_GROUP}")
            }
        );
    }

    println!("\nPlain multicast, as DDS discovery sends it: each talker sends to {ROS_DISCOVERY_GROUP}:{DISCOVERY_PORT}, the listener joins nothing itself.");
    let rx = group_receiver(&pods[2].ns, DISCOVERY_PORT);
    for (i, pod) in pods[..2].iter().enumerate() {
        send_to_group(
            &pod.ns,
            ROS_DISCOVERY_GROUP,
            DISCOVERY_PORT,
            format!("hello from {}", names[i]).as_bytes(),
            None,
        );
    }
    let heard = heard_talkers(&rx);
    for (i, name) in names[..2].iter().enumerate() {
        let src: Ipv4Addr = addrs[i]
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let ok = heard.contains(&src);
        println!(
            "  listener {} {name} ({src})",
            if ok { "hears" } else { "does NOT hear" }
        );
    }
    let mut all_ok = all_joined && heard.len() == 2;

    if which("ddsperf") {
        println!("\nA real DDS (CycloneDDS ddsperf, no configuration): two `ddsperf pub 10Hz`, one `ddsperf sub`.");
        let talkers: Vec<_> = pods[..2]
            .iter()
            .filter_map(|p| {
                Command::new("ip")
                    .args(["netns", "exec", &p.ns.name, "ddsperf"])
                    .args(DDSPERF_TALKER)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        let sub = Command::new("ip")
            .args(["netns", "exec", &pods[2].ns.name, "ddsperf"])
            .args(DDSPERF_LISTENER)
            .output();
        for mut t in talkers {
            let _ = t.kill();
            let _ = t.wait();
        }
        let dds_ok = sub.as_ref().is_ok_and(|o| o.status.success());
        if let Ok(o) = &sub {
            if let Some(last) = String::from_utf8_lossy(&o.stdout)
                .lines()
                .rev()
                .find(|l| l.contains("total"))
            {
                println!("  {last}");
            }
        }
        println!(
            "  ddsperf sub {} both publishers",
            if dds_ok {
                "matched and received from"
            } else {
                "did NOT match"
            }
        );
        all_ok &= dds_ok;
    } else {
        println!("\n(ddsperf not installed: `apt-get install cyclonedds-tools` adds a real-DDS check to this demo)");
    }

    println!("\nCleaning up: ros-macvlan DEL for every pod, then the namespaces go.");
    for pod in &pods {
        let r = cni("DEL", &node, pod, &conf, bin);
        if r.code != 0 {
            println!("DEL failed: {}", r.json);
            all_ok = false;
        }
    }
    all_ok
}

/// The distinct talker addresses heard within a second.
fn heard_talkers(rx: &std::net::UdpSocket) -> Vec<Ipv4Addr> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline && seen.len() < 2 {
        if let Ok((_, std::net::SocketAddr::V4(src))) = rx.recv_from(&mut buf) {
            if !seen.contains(src.ip()) {
                seen.push(*src.ip());
            }
        }
    }
    seen
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
