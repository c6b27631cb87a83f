//! The scenes the middleware judges run in (tests/fastdds.rs, tests/middlewares.rs): nodes
//! on one LAN, pods on them, net1 from ros-macvlan or from the reference macvlan (the
//! control) with the same config, and optionally a Calico-like eth0 that carries unicast
//! between pods (routed through the nodes) but never multicast.

use serde_json::{json, Value};

use super::*;

/// The plugins every scene runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// ros-macvlan with its node agent holding the memberships.
    RosMacvlan,
    /// ros-macvlan with no agent reachable: ADD succeeds and DDS joins by itself.
    RosMacvlanWithoutAgent,
    /// The control: the reference macvlan from /usr/lib/cni with the same config.
    Reference,
}

impl Plugin {
    pub fn binary(self) -> PathBuf {
        match self {
            Plugin::RosMacvlan | Plugin::RosMacvlanWithoutAgent => plugin_bin(),
            Plugin::Reference => PathBuf::from(REFERENCE_DIR).join("macvlan"),
        }
    }

    /// The node agent a node runs with this plugin: none listens for the variant without.
    pub fn agent(self) -> TestAgent {
        match self {
            Plugin::RosMacvlan => start_agent(),
            Plugin::RosMacvlanWithoutAgent | Plugin::Reference => no_agent(),
        }
    }

    /// The one place the scenes' network config is built: the guide's config (host-local
    /// IPAM on 198.51.100.0/24, master lan0) with this plugin's type, an address range of
    /// its own per node, and the node's agent (`agent`).
    pub fn config(self, data: &DataDir, agent: &Agent, first: &str, last: &str) -> Value {
        let mut conf = with_agent(
            guide_config(Some("1.0.0"), "lan0", data, first, last),
            agent,
        );
        if let Plugin::Reference = self {
            conf["type"] = json!("macvlan");
        }
        conf
    }

    /// ADDs net1 to the pod as a runtime does; DEL on drop.
    pub fn attach<'a>(self, node: &'a Node, pod: &'a Pod, conf: &'a Value) -> Attachment<'a> {
        let attachment = Attachment {
            plugin: self,
            node,
            pod,
            conf,
        };
        attachment.run("ADD").ok();
        attachment
    }
}

/// A pod's net1 from one plugin; the plugin's DEL runs on drop, also when a test fails.
pub struct Attachment<'a> {
    plugin: Plugin,
    node: &'a Node,
    pod: &'a Pod,
    conf: &'a Value,
}

impl Attachment<'_> {
    pub fn run(&self, verb: &str) -> Reply {
        run_in(
            &self.node.ns.name,
            &self.plugin.binary(),
            &cni_env(verb, self.pod, "net1", &self.pod.ns.path()),
            &self.conf.to_string(),
        )
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        let _ = self.run("DEL");
    }
}

/// A node of a `Cluster`: its namespace, agent, store and config.
pub struct ClusterNode {
    pub node: Node,
    pub conf: Value,
    _data: DataDir,
    /// Its agent, to restart while the pods stay attached.
    pub agent: std::cell::RefCell<TestAgent>,
}

/// Nodes on one LAN (through its IGMP-snooping switch), pods on them, one plugin for all,
/// each node with its own address range, store and agent.
pub struct Cluster {
    pub plugin: Plugin,
    /// Every pod, in node order, with the index of its node.
    pub pods: Vec<(usize, Pod)>,
    pub nodes: Vec<ClusterNode>,
    _lan: Lan,
}

impl Cluster {
    /// `pods_per_node[i]` pods on node i; pods are numbered 11, 12, ... across the cluster
    /// (eth0 203.0.113.11, ...), node i hands out 198.51.100.(160 + 10 i) to (169 + 10 i).
    pub fn new(plugin: Plugin, pods_per_node: &[u8]) -> Cluster {
        Cluster::with(plugin, pods_per_node, |_| plugin.agent(), |_| {})
    }

    /// `new`, with each node's agent started by `agent` and each node's config changed by
    /// `patch`.
    pub fn with(
        plugin: Plugin,
        pods_per_node: &[u8],
        agent: impl Fn(&Node) -> TestAgent,
        patch: impl Fn(&mut Value),
    ) -> Cluster {
        let lan = Lan::create();
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for (i, &count) in pods_per_node.iter().enumerate() {
            let node = Node::new(&lan);
            for _ in 0..count {
                pods.push((i, node.pod(11 + pods.len() as u8)));
            }
            let data = DataDir::create();
            let agent = agent(&node);
            let base = 160 + 10 * i;
            let mut conf = plugin.config(
                &data,
                &agent,
                &format!("198.51.100.{base}"),
                &format!("198.51.100.{}", base + 9),
            );
            patch(&mut conf);
            nodes.push(ClusterNode {
                node,
                conf,
                _data: data,
                agent: std::cell::RefCell::new(agent),
            });
        }
        Cluster {
            plugin,
            pods,
            nodes,
            _lan: lan,
        }
    }

    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i].1
    }

    /// Every pod gets its net1; each is DEL'd when the returned attachments are dropped.
    pub fn attach_all(&self) -> Vec<Attachment<'_>> {
        self.pods
            .iter()
            .map(|(n, pod)| {
                let node = &self.nodes[*n];
                self.plugin.attach(&node.node, pod, &node.conf)
            })
            .collect()
    }

    /// Makes every pod's eth0 carry unicast to every other pod, as Calico's routes do: each
    /// node forwards, answers for the pods' gateway 169.254.1.1 on their veths and routes
    /// each of its pods to its veth, and the other nodes' pods through that node's own LAN
    /// address (203.0.113.(200 + i) on lan0). Multicast is still forwarded nowhere.
    pub fn route_eth0_between_pods(&self) {
        let node_addr = |i: usize| format!("203.0.113.{}", 200 + i);
        for (i, n) in self.nodes.iter().enumerate() {
            n.node.ns.sysctl("net.ipv4.ip_forward", "1");
            n.node.ns.ip(&[
                "addr",
                "add",
                &format!("{}/32", node_addr(i)),
                "dev",
                "lan0",
            ]);
        }
        for (n, pod) in &self.pods {
            let eth0 = &pod.ns.ip_json(&["addr", "show", "eth0"])[0];
            let addr = eth0["addr_info"][0]["local"].as_str().unwrap().to_owned();
            let peer_index = eth0["link_index"].as_u64().unwrap();
            let node = &self.nodes[*n].node;
            let veth = node
                .ns
                .ip_json(&["link", "show"])
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["ifindex"].as_u64() == Some(peer_index))
                .and_then(|l| l["ifname"].as_str())
                .unwrap()
                .to_owned();
            node.ns.ip(&["addr", "add", "169.254.1.1/32", "dev", &veth]);
            node.ns
                .ip(&["route", "add", &format!("{addr}/32"), "dev", &veth]);
            for (other, o) in self.nodes.iter().enumerate() {
                if other != *n {
                    o.node.ns.ip(&[
                        "route",
                        "add",
                        &format!("{addr}/32"),
                        "via",
                        &node_addr(*n),
                        "dev",
                        "lan0",
                        "onlink",
                    ]);
                }
            }
        }
    }
}
