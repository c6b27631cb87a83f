//! One attachment as ADD, DEL and CHECK see it: the borrowed context each works on (the
//! config, the environment, the IPAM, the node agent's place) and the namespaces with their
//! netlink connections (behind `Rtnl`, so the verbs run on the fake in unit tests).

use crate::cni::env::CniEnv;
use crate::cni::{Error, Kind, Result};
use crate::ipam::Ipam;
use crate::plugin::config::MacvlanConf;
use crate::plugin::membership::AgentPlace;
use crate::sys::netlink::{Link, Netlink, Rtnl};
use crate::sys::netns::Netns;

/// What one invocation attaches, and with what: borrowed by ADD, DEL and CHECK.
#[derive(Clone, Copy)]
pub struct Attachment<'a> {
    pub conf: &'a MacvlanConf,
    pub env: &'a CniEnv,
    pub ipam: &'a Ipam,
    pub agent: &'a AgentPlace,
}

/// The namespaces and netlink connections one invocation works with.
pub struct Namespaces {
    /// Where the master lives: the plugin's own namespace, or the pod's with `linkInContainer`.
    pub master_nl: Box<dyn Rtnl>,
    pub pod_ns: Netns,
    pub pod_nl: Box<dyn Rtnl>,
    pub master_in_pod: bool,
}

impl Namespaces {
    pub fn open(conf: &MacvlanConf, netns_path: &str) -> Result<Namespaces> {
        let pod_ns = open_pod_netns(netns_path)?;
        let pod_nl = Netlink::connect(&pod_ns)?;
        let master_nl = if conf.link_in_container {
            Netlink::connect(&pod_ns)?
        } else {
            Netlink::here()?
        };
        Ok(Namespaces {
            master_nl: Box::new(master_nl),
            pod_ns,
            pod_nl: Box::new(pod_nl),
            master_in_pod: conf.link_in_container,
        })
    }
}

/// Opens the pod's namespace, refusing the plugin's own: ADD there would clear the
/// MULTICAST flag of every node interface and route multicast away from the node.
pub fn open_pod_netns(path: &str) -> Result<Netns> {
    let ns = Netns::open(path)?;
    if ns.is_current()? {
        return Err(Error::new(Kind::InvalidEnvironment, format!(
            "CNI_NETNS {path} is the plugin's own network namespace (the node's), not a pod's: refusing to change the node's interfaces"
        )));
    }
    Ok(ns)
}

impl Namespaces {
    /// The master's index when it lives in the pod (`linkInContainer`): it is the LAN
    /// itself, so it keeps its multicast.
    pub fn master_in_pod(&self, master: &Link) -> Option<u32> {
        self.master_in_pod.then_some(master.index)
    }
}

/// What the unit tests of ADD, DEL and CHECK build their attachments from.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    use netlink_packet_route::link::{InfoKind, LinkFlags};

    use super::Namespaces;
    use crate::cni::env::CniEnv;
    use crate::ipam::Ipam;
    use crate::plugin::config::MacvlanConf;
    use crate::plugin::membership::AgentPlace;
    use crate::sys::confine::{Readable, Roots};
    use crate::sys::netlink::testing::Fake;
    use crate::sys::netlink::{Link, RouteEntry, Rtnl};
    use crate::sys::netns::Netns;
    use ipnetwork::IpNetwork;

    pub fn env(container: &str, ifname: &str) -> CniEnv {
        env_with(container, ifname, &[])
    }

    /// The environment with more variables (`ROS_MACVLAN_TEST_FAULT`, CNI_ARGS).
    pub fn env_with(container: &str, ifname: &str, more: &[(&str, &str)]) -> CniEnv {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", "/var/run/netns/pod"),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        CniEnv::from_lookup(|k| {
            vars.iter()
                .chain(more)
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    /// A node and a pod in memory: the node's LAN interface `lan0`; the pod's `lo` and a
    /// Calico-like `eth0` (up, multicast, with an alias of its own). A macvlan the node
    /// creates into another namespace lands in the pod.
    pub struct Scene {
        pub node: Fake,
        pub pod: Fake,
        pub lan0: u32,
        pub eth0: u32,
    }

    impl Scene {
        pub fn new() -> Scene {
            let (node, pod) = (Fake::new(), Fake::new());
            let up = LinkFlags::Up | LinkFlags::Multicast;
            let lan0 = node.with_link("lan0", None, up);
            pod.with_link("lo", None, LinkFlags::Up | LinkFlags::Loopback);
            let eth0 = pod.with_link("eth0", Some(InfoKind::Veth), up);
            pod.set_alias(eth0, "uplink");
            node.creates_into(&pod);
            Scene {
                node,
                pod,
                lan0,
                eth0,
            }
        }

        /// The namespaces as the verbs get them, on the fakes. The pod's namespace handle
        /// is the test's own namespace: opening it needs no root, and the verbs hand it
        /// only to the fakes (which ignore it) and to the membership part (which touches it
        /// only with groups configured).
        pub fn namespaces(&self) -> Namespaces {
            Namespaces {
                master_nl: Box::new(self.node.clone()),
                pod_ns: Netns::current().unwrap(),
                pod_nl: Box::new(self.pod.clone()),
                master_in_pod: false,
            }
        }
    }

    /// One invocation's attachment, owned: the config, the environment, the config's IPAM
    /// and the agent's place.
    pub struct Call {
        pub conf: MacvlanConf,
        pub env: CniEnv,
        pub ipam: Ipam,
        pub agent: AgentPlace,
    }

    impl Call {
        pub fn new(conf: MacvlanConf, env: CniEnv) -> Call {
            let ipam = ipam(&conf, &env);
            let agent = agent(&conf);
            Call {
                conf,
                env,
                ipam,
                agent,
            }
        }

        pub fn at(&self) -> super::Attachment<'_> {
            super::Attachment {
                conf: &self.conf,
                env: &self.env,
                ipam: &self.ipam,
                agent: &self.agent,
            }
        }
    }

    /// An attachment on `lan0` with host-local addresses from `range` (first-last), a
    /// route of its own, the default multicast part but for the membership (no groups: a
    /// unit test has no agent and no root to join in a namespace), no duplicate detection
    /// (its probes need the pod's namespace), and DEL waiting for the links' removal (no
    /// forked reaper in a test).
    pub fn conf_with(dir: &std::path::Path, range: (&str, &str)) -> MacvlanConf {
        let raw = serde_json::json!({
            "cniVersion": "1.0.0", "name": "seam", "type": "ros-macvlan", "master": "lan0",
            "multicast": {"groups": []}, "duplicateDetection": false, "waitForLinkRemoval": true,
            "agentSocket": "/tmp/ros-macvlan-unit/agent.sock",
            "ipam": {"type": "host-local", "dataDir": dir,
                     "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": range.0,
                                  "rangeEnd": range.1, "gateway": "198.51.100.1"}]],
                     "routes": [{"dst": "203.0.113.0/24"}]}
        });
        MacvlanConf::parse(raw.to_string().as_bytes()).unwrap()
    }

    /// The node's and the pod's links and the pod's addresses and routes: what a failed ADD
    /// and a DEL must give back.
    pub struct Snapshot {
        node: Vec<Link>,
        pod: Vec<Link>,
        addresses: Vec<(u32, IpNetwork)>,
        routes: Vec<RouteEntry>,
    }

    impl Snapshot {
        pub fn of(s: &Scene) -> Snapshot {
            Snapshot {
                node: s.node.links().unwrap(),
                pod: s.pod.links().unwrap(),
                addresses: s.pod.all_addresses(),
                routes: s.pod.all_routes(),
            }
        }

        pub fn still(&self, s: &Scene, case: &str) {
            assert_eq!(
                s.node.links().unwrap(),
                self.node,
                "{case}: the node's links"
            );
            assert_eq!(s.pod.links().unwrap(), self.pod, "{case}: the pod's links");
            assert_eq!(s.pod.all_addresses(), self.addresses, "{case}: addresses");
            assert_eq!(s.pod.all_routes(), self.routes, "{case}: routes");
        }
    }

    /// A store directory of the test's own under the temporary directory, empty.
    pub fn data_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rmv-unit-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The config's IPAM as the plugin builds it, with stores allowed under the temporary
    /// directory.
    pub fn ipam(conf: &MacvlanConf, env: &CniEnv) -> Ipam {
        let data = Roots::new(vec![std::env::temp_dir()], 0o755, "");
        let readable = Readable::new(vec![], Roots::new(vec![], 0o755, ""));
        Ipam::from_conf(conf, env, &data, &readable).unwrap()
    }

    pub fn names(links: &[Link]) -> Vec<&str> {
        links.iter().map(|l| l.name.as_str()).collect()
    }

    /// `conf` with its agent's place in a directory of the test's own, the agent asked
    /// through `fake` (which records the calls).
    pub fn with_fake_agent(
        test: &str,
        mut conf: MacvlanConf,
        fake: &crate::agent::client::fake::FakeAgent,
    ) -> (MacvlanConf, AgentPlace) {
        let dir = data_dir(test);
        conf.agent_socket = dir.join("agent.sock").to_string_lossy().into_owned();
        let place = agent(&conf).with_client(Box::new(fake.clone()));
        (conf, place)
    }

    /// The agent's place; with no groups configured nothing of it is touched.
    pub fn agent(conf: &MacvlanConf) -> AgentPlace {
        let roots = crate::sys::confine::Roots::new(vec![std::env::temp_dir()], 0o755, "");
        AgentPlace::of_config(conf, &roots).unwrap()
    }
}
