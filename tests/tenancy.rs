//! A namespace admin's NetworkAttachmentDefinition must not hurt the node or another
//! tenant (docs/security.md): on a node with no policy file (the default install) passthru
//! and another pod's interface as master are refused, files a config names are read
//! safely, every number is bounded, GC keeps what is not its network's, and gc and the
//! agent release nothing whose pod they cannot see gone.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A node whose LAN master `lan0` carries its address and default route, as the guide's
/// `eth0` does, and another LAN host that pings it.
struct OneNicNode {
    lan: Lan,
    node: Node,
    neighbour: Node,
}

impl OneNicNode {
    const NODE: &'static str = "198.51.100.2";
    fn new() -> OneNicNode {
        let lan = Lan::create();
        let node = Node::new(&lan);
        node.ns
            .ip(&["addr", "add", "198.51.100.2/24", "dev", "lan0"]);
        node.ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
            "dev",
            "lan0",
        ]);
        let neighbour = Node::new(&lan);
        neighbour
            .ns
            .ip(&["addr", "add", "198.51.100.3/24", "dev", "lan0"]);
        // A fresh veth needs a moment before ARP crosses the switch (DESIGN §4).
        let start = Instant::now();
        while !pings(&neighbour.ns, Self::NODE) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the LAN never carried a ping"
            );
        }
        OneNicNode {
            lan,
            node,
            neighbour,
        }
    }
}

#[test]
fn passthru_needs_the_policy_and_never_takes_the_nodes_own_link() {
    if !require_root() {
        return;
    }
    let scene = OneNicNode::new();
    let (node, data) = (&scene.node, DataDir::create());
    let agent = start_agent();
    let pod = node.pod(31);
    let mut passthru = with_agent(guide(&data), &agent);
    passthru["mode"] = json!("passthru");

    // No policy: refused, naming what the policy must say; the node stays online.
    let none = NodePolicy::new(None);
    let r = none.cni("ADD", node, &pod, &passthru);
    assert_eq!(r.err_code(), 106, "{}", r.json);
    assert!(
        r.msg().contains("\"passthru\" under \"modes\""),
        "{}",
        r.msg()
    );
    assert!(!has_net1(&pod) && data.claims("ros-net").is_empty());
    assert!(
        pings(&scene.neighbour.ns, OneNicNode::NODE),
        "the node went offline"
    );

    // Allowed by the policy, but this master carries the node's own address: refused still.
    let allows = NodePolicy::new(Some(json!({"modes": ["bridge", "passthru"]})));
    let r = allows.cni("ADD", node, &pod, &passthru);
    assert_eq!(r.err_code(), 106, "{}", r.json);
    assert!(r.msg().contains("198.51.100.2/24"), "{}", r.msg());
    assert!(!has_net1(&pod) && data.claims("ros-net").is_empty());
    assert!(pings(&scene.neighbour.ns, OneNicNode::NODE));

    // The guide's bridge config still works on this master with no policy.
    let guide = with_agent(guide(&data), &agent);
    none.cni("ADD", node, &pod, &guide).ok();
    assert!(has_net1(&pod));
    none.cni("DEL", node, &pod, &guide).ok();

    // A dedicated master (no node address, no default route): the policy makes it work.
    node.plug(&scene.lan, "lan1");
    let mut dedicated = passthru.clone();
    dedicated["master"] = json!("lan1");
    let r = none.cni("ADD", node, &pod, &dedicated);
    assert_eq!(r.err_code(), 106, "no policy, no passthru: {}", r.json);
    allows.cni("ADD", node, &pod, &dedicated).ok();
    let net1 = pod.ns.ip_json(&["-d", "link", "show", "net1"]);
    assert_eq!(net1[0]["linkinfo"]["info_data"]["mode"], "passthru");
    allows.cni("DEL", node, &pod, &dedicated).ok();
    assert!(pings(&scene.neighbour.ns, OneNicNode::NODE));
}

#[test]
fn another_pods_cluster_veth_is_no_master() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let _victim = node.pod(32);
    // The victim's cluster-network veth is the node's only `cali*` link.
    let host_end = node
        .ns
        .link_names()
        .into_iter()
        .find(|n| n.starts_with("cali"))
        .expect("the victim's host end");
    let attacker = node.pod(33);
    let data = DataDir::create();
    let agent = start_agent();
    let none = NodePolicy::new(None);
    for mode in ["bridge", "private", "vepa"] {
        let mut conf = with_agent(guide(&data), &agent);
        conf["master"] = json!(host_end);
        conf["mode"] = json!(mode);
        let r = none.cni("ADD", &node, &attacker, &conf);
        assert_eq!(r.err_code(), 106, "{mode}: {}", r.json);
        assert!(
            r.msg().contains("another pod's interface")
                && r.msg()
                    .contains(&format!("\"masters\" in the node policy {}", none.file())),
            "{}",
            r.msg()
        );
        assert!(!has_net1(&attacker) && data.claims("ros-net").is_empty());
    }
    // The node's LAN uplink (a veth into a bridge) is a master as before.
    let guide = with_agent(guide(&data), &agent);
    none.cni("ADD", &node, &attacker, &guide).ok();
    none.cni("DEL", &node, &attacker, &guide).ok();
    // The admin vouches for an interface by naming it exactly.
    let vouched = NodePolicy::new(Some(json!({"masters": ["lan0", host_end]})));
    let mut conf = guide.clone();
    conf["master"] = json!(host_end);
    vouched.cni("ADD", &node, &attacker, &conf).ok();
    vouched.cni("DEL", &node, &attacker, &conf).ok();
}

/// Runs ADD with `conf` and waits at most `limit`; returns the reply and how long it took.
fn add_within(
    policy: &NodePolicy,
    node: &Node,
    pod: &Pod,
    conf: &Value,
    limit: Duration,
) -> (Reply, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(policy.cni("ADD", node, pod, conf));
        });
        match rx.recv_timeout(limit) {
            Ok(r) => (r, start.elapsed()),
            Err(_) => {
                // Unblock a hung plugin so the scope can end, then fail.
                let _ = Command::new("pkill")
                    .args(["-9", "-f", plugin_bin().to_str().unwrap()])
                    .status();
                panic!("ADD did not answer within {limit:?}");
            }
        }
    })
}

/// The largest peak RSS of any child this test process has waited for, in bytes.
fn children_peak_rss() -> u64 {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    usage.max_rss() as u64 * 1024
}

#[test]
fn resolv_conf_is_read_only_from_allowed_regular_files_and_bounded() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(34);
    let data = DataDir::create();
    let agent = start_agent();
    let files = DataDir::scratch();
    let fifo = files.0.join("fifo");
    sh(&["mkfifo", fifo.to_str().unwrap()]);
    std::fs::write(files.0.join("big"), vec![b'#'; 65 * 1024]).unwrap();
    std::fs::write(files.0.join("resolv.conf"), "nameserver 198.51.100.53\n").unwrap();
    // The files' directory and /dev are allowed, so that the plugin really opens them.
    let policy = NodePolicy::new(Some(json!({"resolvConfDirs": [files.path(), "/dev"]})));
    let with = |path: &str| {
        let mut c = with_agent(guide(&data), &agent);
        c["ipam"]["resolvConf"] = json!(path);
        c
    };
    for (path, what) in [
        ("/dev/zero".to_owned(), "not a regular file"),
        (fifo.to_string_lossy().into_owned(), "not a regular file"),
        (
            files.0.join("big").to_string_lossy().into_owned(),
            "larger than 65536 bytes",
        ),
    ] {
        let (r, took) = add_within(&policy, &node, &pod, &with(&path), Duration::from_secs(5));
        assert_eq!(r.err_code(), 7, "{path}: {}", r.json);
        assert!(r.msg().contains(what), "{path}: {}", r.msg());
        assert!(took < Duration::from_secs(5));
        assert!(!has_net1(&pod), "{path}: net1 left behind");
        assert!(
            data.claims("ros-net").is_empty(),
            "{path}: claim left behind"
        );
    }
    let peak = children_peak_rss();
    assert!(peak < 64 << 20, "a plugin run peaked at {} MiB", peak >> 20);

    // An allowed regular file works.
    policy
        .cni(
            "ADD",
            &node,
            &pod,
            &with(&files.0.join("resolv.conf").to_string_lossy()),
        )
        .ok();
    policy
        .cni("DEL", &node, &pod, &with("/etc/resolv.conf"))
        .ok();

    // Outside the allowed places, the refusal is decided by the text alone: it reads the
    // same whether the file exists or not, and nothing is opened.
    let none = NodePolicy::new(None);
    let msg_for = |path: &str| {
        let r = none.cni("ADD", &node, &pod, &with(path));
        assert_eq!(r.err_code(), 7, "{path}: {}", r.json);
        r.msg().replace(path, "PATH")
    };
    assert_eq!(msg_for("/etc/shadow"), msg_for("/etc/no-such-file"));
    assert!(msg_for("/dev/zero").contains("/etc/resolv.conf"));
    // The reference's usual path works with no policy.
    none.cni("ADD", &node, &pod, &with("/etc/resolv.conf")).ok();
    none.cni("DEL", &node, &pod, &with("/etc/resolv.conf")).ok();
}

/// The broadcast queue length the kernel gives the pod's net1.
fn bc_queue_len(pod: &Pod) -> u64 {
    let link = pod.ns.ip_json(&["-d", "link", "show", "net1"]);
    link[0]["linkinfo"]["info_data"]["bcqueuelen"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bcqueuelen in {link}"))
}

#[test]
fn numbers_from_a_config_are_bounded() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let (other, tenant) = (node.pod(35), node.pod(36));
    let data = DataDir::create();
    let agent = start_agent();
    let none = NodePolicy::new(None);
    let guide = with_agent(guide(&data), &agent);
    none.cni("ADD", &node, &other, &guide).ok();
    let before = bc_queue_len(&other);

    let edit = |key: &str, value: Value| {
        let mut c = guide.clone();
        match key.split_once('.') {
            Some((a, b)) => c[a][b] = value,
            None => c[key] = value,
        }
        c
    };
    let refused = [
        edit("multicast.bcQueueLen", json!(4294967295u32)),
        edit("multicast.groups", json!(vec!["239.255.0.1"; 17])),
        edit("multicast.routes", json!(vec!["224.0.0.0/4"; 17])),
        edit("duplicateDetection", json!({"probes": 4294967295u32})),
        edit("duplicateDetection", json!({"intervalMs": 86400000})),
        edit("duplicateDetection", json!({"maxConflicts": 4294967295u32})),
        edit(
            "duplicateDetection",
            json!({"probes": 10, "intervalMs": 1000, "maxConflicts": 16}),
        ),
    ];
    for conf in &refused {
        let start = Instant::now();
        let r = none.cni("ADD", &node, &tenant, conf);
        assert_eq!(r.err_code(), 7, "{}: {}", conf, r.json);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!has_net1(&tenant));
    }
    assert_eq!(
        bc_queue_len(&other),
        before,
        "the other pod's queue was changed"
    );
    // Within the bound the key works (and the kernel shows it).
    let bounded = edit("multicast.bcQueueLen", json!(2000));
    none.cni("ADD", &node, &tenant, &bounded).ok();
    assert_eq!(bc_queue_len(&tenant), 2000);
    none.cni("DEL", &node, &tenant, &bounded).ok();
    none.cni("DEL", &node, &other, &guide).ok();
}

#[test]
fn gc_verb_keeps_claims_outside_its_own_ranges() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(37);
    let data = DataDir::create();
    let agent = start_agent();
    let none = NodePolicy::new(None);
    let mut conf = with_agent(guide(&data), &agent);
    conf["cniVersion"] = json!("1.1.0");
    let claimed = none.cni("ADD", &node, &pod, &conf).ok()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // Another config of the same name and store, whose range does not hold the claim.
    let mut other = conf.clone();
    other["ipam"]["ranges"][0][0]["rangeStart"] = json!("198.51.100.100");
    other["ipam"]["ranges"][0][0]["rangeEnd"] = json!("198.51.100.110");
    other["cni.dev/valid-attachments"] = json!([]);
    none.cni("GC", &node, &pod, &other).ok();
    assert_eq!(
        data.claims("ros-net"),
        std::slice::from_ref(&claimed),
        "GC released another range's claim"
    );
    // With its own range, the same GC releases it.
    let mut own = conf.clone();
    own["cni.dev/valid-attachments"] = json!([]);
    none.cni("GC", &node, &pod, &own).ok();
    assert!(data.claims("ros-net").is_empty());
    none.cni("DEL", &node, &pod, &conf).ok();
}

#[test]
fn gc_that_cannot_see_the_netns_directory_releases_nothing() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(38);
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    add(&node, &pod, &conf).ok();
    let claims = data.claims("ros-net");
    assert_eq!(claims.len(), 1);
    // gc in a mount namespace where an empty tmpfs hides the node's netns directory, as in
    // a container started without the netns mount.
    let script = format!(
        "mount -t tmpfs tmpfs /run/netns && exec {} gc --data-dir {}",
        plugin_bin().display(),
        data.path()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        data.claims("ros-net"),
        claims,
        "gc released a live pod's claim: {text}"
    );
    assert!(
        text.contains("kept") && text.contains("shows no network namespace"),
        "gc says why it kept the claim: {text}"
    );
    // Where it sees the directory, the live pod is kept and a gone one released.
    let gone = node.pod(39);
    add(&node, &gone, &conf).ok();
    drop(gone);
    let out = Command::new(plugin_bin())
        .args(["gc", "--data-dir", data.path()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(data.claims("ros-net"), claims);
    del(&node, &pod, &conf).ok();
}

#[test]
fn the_agent_answers_root_only() {
    if !require_root() {
        return;
    }
    let agent = start_agent();
    let socket = agent.socket();
    // A socket reachable by mistake: the directory and the file opened to everyone.
    for (path, mode) in [(socket.parent().unwrap(), 0o755), (socket.as_path(), 0o666)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let client = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b'"list"\n')
print(s.recv(4096).decode())
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            client,
        ])
        .arg(&socket)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("only root"),
        "{reply}"
    );
    assert!(
        agent.log().contains("refused a client with uid 65534"),
        "{}",
        agent.log()
    );
    // Root still is answered.
    assert!(ros_macvlan::agent::client::AgentClient::new(&socket)
        .list()
        .is_ok());
}
