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
    use crate::cni::env::CniEnv;
    use crate::plugin::config::MacvlanConf;
    use crate::plugin::membership::AgentPlace;
    use crate::sys::netlink::Link;

    pub fn env(container: &str, ifname: &str) -> CniEnv {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", "/var/run/netns/pod"),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        CniEnv::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    pub fn names(links: &[Link]) -> Vec<&str> {
        links.iter().map(|l| l.name.as_str()).collect()
    }

    /// The agent's place; with no groups configured nothing of it is touched.
    pub fn agent(conf: &MacvlanConf) -> AgentPlace {
        let roots = crate::sys::confine::Roots::new(vec![std::env::temp_dir()], 0o755, "");
        AgentPlace::of_config(conf, &roots).unwrap()
    }
}
