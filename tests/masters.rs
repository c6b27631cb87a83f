//! A master is a LAN uplink, nothing else (README, Security: tenant rules). With no node
//! policy, ADD refuses (106) every master that switches or tunnels frames into another
//! network namespace, as a hostile namespace admin would try them on a flannel, k3s or
//! KubeVirt node, and passthru refuses a master through which the node routes anything, in
//! whatever table or nexthop shape. Each refusal leaves nothing in the pod and no claim, the
//! victims keep their links and the node keeps its gateway; the guide's config on the plain
//! LAN master works on the same node throughout.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const NODE: &str = "198.51.100.2";
const GATEWAY: &str = "198.51.100.1";

/// A node with its address and default route on `lan0`, a gateway host on the LAN
/// (198.51.100.1 and fe80::1), and the node reaching it.
struct Scene {
    lan: Lan,
    node: Node,
    gateway: Node,
    data: DataDir,
    agent: TestAgent,
}

impl Scene {
    fn new() -> Scene {
        let lan = Lan::create();
        let gateway = Node::new(&lan);
        gateway
            .ns
            .ip(&["addr", "add", "198.51.100.1/24", "dev", "lan0"]);
        gateway
            .ns
            .ip(&["addr", "add", "fe80::1/64", "dev", "lan0", "nodad"]);
        let node = Node::new(&lan);
        node.ns
            .ip(&["addr", "add", "198.51.100.2/24", "dev", "lan0"]);
        node.ns
            .ip(&["route", "add", "default", "via", GATEWAY, "dev", "lan0"]);
        // A fresh veth needs a moment before ARP crosses the switch (DESIGN §4).
        let start = Instant::now();
        while !pings(&node.ns, GATEWAY) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the LAN never carried a ping"
            );
        }
        Scene {
            lan,
            node,
            gateway,
            data: DataDir::create(),
            agent: start_agent(),
        }
    }

    /// A pod on the cluster network, as Calico makes it: its host end (returned) is a routed
    /// veth, and the node routes the pod's address through it.
    fn cluster_pod(&self, n: u8) -> (Pod, String) {
        let before = self.node.ns.link_names();
        let pod = self.node.pod(n);
        let host_end = self
            .node
            .ns
            .link_names()
            .into_iter()
            .find(|l| !before.contains(l) && l.starts_with("cali"))
            .expect("the pod's host end");
        self.node.ns.ip(&[
            "route",
            "add",
            &format!("203.0.113.{n}/32"),
            "dev",
            &host_end,
        ]);
        (pod, host_end)
    }

    fn conf(&self, master: &str, mode: &str) -> Value {
        let mut conf = with_agent(guide(&self.data), &self.agent);
        conf["master"] = json!(master);
        conf["mode"] = json!(mode);
        conf
    }

    /// ADD of `conf` into `pod` under `policy` is refused with 106, naming `says`, and
    /// leaves nothing behind; the node still reaches its gateway.
    fn refused(&self, policy: &NodePolicy, pod: &Pod, conf: &Value, says: &str) {
        let r = policy.cni("ADD", &self.node, pod, conf);
        assert_eq!(r.err_code(), 106, "{says}: {}", r.json);
        assert!(r.msg().contains(says), "{says}: {}", r.msg());
        assert!(!has_net1(pod), "{says}: net1 was made");
        assert!(
            self.data.claims("ros-net").is_empty(),
            "{says}: a claim was left"
        );
        assert!(
            pings(&self.node.ns, GATEWAY),
            "{says}: the node lost its gateway"
        );
    }

    /// The guide's config on the LAN master works on this node, with no policy.
    fn guide_works(&self, pod: &Pod) {
        let none = NodePolicy::new(None);
        let conf = self.conf("lan0", "bridge");
        let r = none.cni("ADD", &self.node, pod, &conf);
        assert_eq!(r.code, 0, "the guide's config: {}", r.json);
        assert!(has_net1(pod));
        none.cni("DEL", &self.node, pod, &conf).ok();
        assert!(!has_net1(pod));
    }
}

#[test]
fn nothing_that_reaches_into_another_pod_is_a_master() {
    if !require_root() {
        return;
    }
    let scene = Scene::new();
    let none = NodePolicy::new(None);
    let (attacker, _) = scene.cluster_pod(41);
    let (victim, victim_end) = scene.cluster_pod(40);

    // A flannel- or bridge-plugin-style cluster bridge with a pod's veth as a port.
    let (bridged, bridged_end) = scene.cluster_pod(42);
    scene.node.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    scene.node.ns.ip(&["link", "set", "cni0", "up"]);
    scene
        .node
        .ns
        .ip(&["link", "set", &bridged_end, "master", "cni0"]);
    scene.refused(
        &none,
        &attacker,
        &scene.conf("cni0", "bridge"),
        "bridge with port",
    );
    // A port of it.
    scene.refused(
        &none,
        &attacker,
        &scene.conf(&bridged_end, "bridge"),
        "a port of bridge cni0",
    );
    assert!(bridged.ns.link_names().contains(&"eth0".to_owned()));

    // A routed veth into a pod, then the same pod bridging its own eth0 (KubeVirt's bridge
    // binding), with a "VM" behind the pod's bridge.
    let cali = scene.conf(&victim_end, "bridge");
    scene.refused(&none, &attacker, &cali, "no bridge port there");
    victim.ns.ip(&["link", "add", "br0", "type", "bridge"]);
    victim.ns.ip(&["link", "set", "eth0", "master", "br0"]);
    victim.ns.ip(&[
        "link", "add", "vm0", "type", "veth", "peer", "name", "tap-vm",
    ]);
    victim.ns.ip(&["link", "set", "tap-vm", "master", "br0"]);
    for l in ["br0", "vm0", "tap-vm"] {
        victim.ns.ip(&["link", "set", l, "up"]);
    }
    scene.refused(&none, &attacker, &cali, "routes 203.0.113.40/32 through it");
    for mode in ["private", "vepa"] {
        scene.refused(
            &none,
            &attacker,
            &scene.conf(&victim_end, mode),
            "routes 203.0.113.40/32 through it",
        );
    }

    // A flannel.1-like overlay.
    scene.node.ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "local",
        NODE,
        "dev",
        "lan0",
        "nolearning",
    ]);
    scene.node.ns.ip(&["link", "set", "flannel.1", "up"]);
    scene.refused(
        &none,
        &attacker,
        &scene.conf("flannel.1", "bridge"),
        "overlay or tunnel device (vxlan)",
    );

    // The node's admin vouches for a link by its exact name.
    let vouched = NodePolicy::new(Some(json!({"masters": ["lan0", "cni0"]})));
    let conf = scene.conf("cni0", "bridge");
    assert_eq!(vouched.cni("ADD", &scene.node, &attacker, &conf).code, 0);
    vouched.cni("DEL", &scene.node, &attacker, &conf).ok();

    // The LAN master (a veth into the switch, no pod route) works as before.
    scene.guide_works(&attacker);
    assert!(victim.ns.link_names().contains(&"eth0".to_owned()));
}

/// A shape of the node's routing through `lan1`: how to make it and how to undo it.
struct Shape {
    name: &'static str,
    make: &'static [&'static [&'static str]],
    undo: &'static [&'static [&'static str]],
    says: &'static str,
}

const RESTORE_DEFAULT: &[&str] = &["route", "replace", "default", "via", GATEWAY, "dev", "lan0"];

const SHAPES: &[Shape] = &[
    Shape {
        name: "an IPv4 ECMP default with a leg on lan1",
        make: &[&[
            "route", "replace", "default", "nexthop", "via", GATEWAY, "dev", "lan0", "nexthop",
            "via", GATEWAY, "dev", "lan1", "onlink",
        ]],
        undo: &[RESTORE_DEFAULT],
        says: "default route to 0.0.0.0/0 (table 254)",
    },
    Shape {
        name: "an IPv6 ECMP default over link-local gateways",
        make: &[&[
            "-6", "route", "add", "default", "nexthop", "via", "fe80::1", "dev", "lan0", "nexthop",
            "via", "fe80::1", "dev", "lan1",
        ]],
        undo: &[&["-6", "route", "del", "default"]],
        says: "default route to ::/0",
    },
    Shape {
        name: "a default in a table chosen by a rule",
        make: &[
            &[
                "route", "add", "default", "via", GATEWAY, "dev", "lan1", "onlink", "table", "100",
            ],
            &["rule", "add", "pref", "100", "lookup", "100"],
        ],
        undo: &[
            &["rule", "del", "pref", "100"],
            &["route", "flush", "table", "100"],
        ],
        says: "(table 100)",
    },
    Shape {
        name: "a nexthop group",
        make: &[
            &["nexthop", "add", "id", "11", "via", GATEWAY, "dev", "lan0"],
            &[
                "nexthop", "add", "id", "12", "via", GATEWAY, "dev", "lan1", "onlink",
            ],
            &["nexthop", "add", "id", "10", "group", "11/12"],
            &["route", "replace", "default", "nhid", "10"],
        ],
        undo: &[RESTORE_DEFAULT, &["nexthop", "flush"]],
        says: "default route to 0.0.0.0/0",
    },
    Shape {
        name: "a single nexthop object under nexthop_compat_mode=0",
        make: &[
            &[
                "nexthop", "add", "id", "21", "via", GATEWAY, "dev", "lan1", "onlink",
            ],
            &["route", "replace", "default", "nhid", "21"],
        ],
        undo: &[RESTORE_DEFAULT, &["nexthop", "flush"]],
        says: "default route to 0.0.0.0/0",
    },
    Shape {
        name: "a split default (0/1 and 128/1)",
        make: &[
            &[
                "route",
                "add",
                "0.0.0.0/1",
                "via",
                GATEWAY,
                "dev",
                "lan1",
                "onlink",
            ],
            &[
                "route",
                "add",
                "128.0.0.0/1",
                "via",
                GATEWAY,
                "dev",
                "lan1",
                "onlink",
            ],
        ],
        undo: &[
            &["route", "del", "0.0.0.0/1"],
            &["route", "del", "128.0.0.0/1"],
        ],
        says: "route to 0.0.0.0/1",
    },
];

fn sysctl(ns: &Ns, setting: &str) {
    let ok = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl", "-q", "-w", setting])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "sysctl {setting}");
}

#[test]
fn passthru_refuses_a_master_the_node_routes_through_in_any_shape() {
    if !require_root() {
        return;
    }
    let scene = Scene::new();
    scene.node.plug(&scene.lan, "lan1");
    let allows = NodePolicy::new(Some(json!({"modes": ["bridge", "passthru"]})));
    let (pod, _) = scene.cluster_pod(43);
    let passthru = scene.conf("lan1", "passthru");
    for shape in SHAPES {
        let compat_off = shape.name.contains("compat_mode=0");
        if compat_off {
            sysctl(&scene.node.ns, "net.ipv4.nexthop_compat_mode=0");
        }
        for step in shape.make {
            scene.node.ns.ip(step);
        }
        assert!(
            pings(&scene.node.ns, GATEWAY),
            "{}: the scene's node does not reach its gateway",
            shape.name
        );
        scene.refused(&allows, &pod, &passthru, shape.says);
        for step in shape.undo {
            scene.node.ns.ip(step);
        }
        if compat_off {
            sysctl(&scene.node.ns, "net.ipv4.nexthop_compat_mode=1");
        }
        scene.guide_works(&pod);
    }
    // With none of them, lan1 is a dedicated interface and passthru takes it.
    let r = allows.cni("ADD", &scene.node, &pod, &passthru);
    assert_eq!(r.code, 0, "{}", r.json);
    let net1 = pod.ns.ip_json(&["-d", "link", "show", "net1"]);
    assert_eq!(net1[0]["linkinfo"]["info_data"]["mode"], "passthru");
    allows.cni("DEL", &scene.node, &pod, &passthru).ok();
    assert!(pings(&scene.node.ns, GATEWAY));
    let _ = &scene.gateway;
}
