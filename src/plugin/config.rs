//! The macvlan attachment's config: the common keys (`cni::config::NetConf`, embedded as
//! the reference macvlan embeds `types.NetConf`) and the plugin's own (master, mode, mtu,
//! mac, linkInContainer, multicast, zenoh, duplicateDetection, agentSocket, waitForLinkRemoval,
//! logFile, logLevel), decoded, defaulted and validated before the plugin touches anything.

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::cni::config::{decode, parse_mac, NetConf};
use crate::cni::{Error, Kind, Result};
use crate::node::duplicate::Detection;
use crate::sys::netlink::MacvlanMode;

/// The ROS-aware part, all on by default; an empty list turns its part off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastConf {
    /// Groups joined on the interface with a membership the kernel holds.
    pub groups: Vec<Ipv4Addr>,
    /// Destinations routed out the interface (link scope).
    pub routes: Vec<Ipv4Network>,
    /// Clear the MULTICAST flag of the pod's other interfaces (the cluster network's eth0)
    /// so DDS implementations that rank interfaces pick this one.
    pub mark_other_interfaces: bool,
    /// Set rp_filter on the interface to loose (2).
    pub loose_rp_filter: bool,
    /// Length of the macvlan broadcast/multicast queue (IFLA_MACVLAN_BC_QUEUE_LEN).
    pub bc_queue_len: Option<u32>,
}

pub const ROS_DISCOVERY_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

/// Bounds of the `multicast` numbers (docs/security.md). The kernel gives every macvlan of a
/// master the largest broadcast queue any of them asked for, so one config's `bcQueueLen` is
/// every pod's on that master: it is bounded.
pub const MAX_BC_QUEUE_LEN: u32 = 4096;
/// Each group is a membership the node agent holds, each route one more on every ADD.
pub const MAX_GROUPS: usize = 16;
pub const MAX_MULTICAST_ROUTES: usize = 16;

impl Default for MulticastConf {
    fn default() -> Self {
        MulticastConf {
            groups: vec![ROS_DISCOVERY_GROUP],
            routes: vec![Ipv4Network::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("valid prefix")],
            mark_other_interfaces: true,
            loose_rp_filter: true,
            bc_queue_len: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMulticast {
    groups: Option<Vec<String>>,
    routes: Option<Vec<String>>,
    mark_other_interfaces: Option<bool>,
    loose_rp_filter: Option<bool>,
    bc_queue_len: Option<u32>,
}

impl RawMulticast {
    fn validate(self) -> Result<MulticastConf> {
        let d = MulticastConf::default();
        let too_many = |key: &str, len: usize, max: usize| {
            Error::new(
                Kind::InvalidConfig,
                format!("multicast.{key}: {len} given, at most {max} are allowed"),
            )
        };
        if let Some(g) = self.groups.as_ref().filter(|g| g.len() > MAX_GROUPS) {
            return Err(too_many("groups", g.len(), MAX_GROUPS));
        }
        if let Some(r) = self
            .routes
            .as_ref()
            .filter(|r| r.len() > MAX_MULTICAST_ROUTES)
        {
            return Err(too_many("routes", r.len(), MAX_MULTICAST_ROUTES));
        }
        if let Some(q) = self.bc_queue_len.filter(|q| *q > MAX_BC_QUEUE_LEN) {
            return Err(Error::new(Kind::InvalidConfig, format!(
                "multicast.bcQueueLen {q} is above {MAX_BC_QUEUE_LEN}: the kernel applies the largest queue any macvlan of the master asks for to all of them, so it is bounded; ask for at most {MAX_BC_QUEUE_LEN}"
            )));
        }
        let groups = match self.groups {
            None => d.groups,
            Some(list) => list
                .iter()
                .map(|g| match g.parse::<Ipv4Addr>() {
                    Ok(a) if a.is_multicast() => Ok(a),
                    _ => Err(Error::new(
                        Kind::InvalidConfig,
                        format!(
                            "multicast.groups: {g:?} is not an IPv4 multicast group (224.0.0.0/4)"
                        ),
                    )),
                })
                .collect::<Result<_>>()?,
        };
        let routes = match self.routes {
            None => d.routes,
            Some(list) => list
                .iter()
                .map(|r| {
                    r.parse::<Ipv4Network>().map_err(|_| {
                        Error::new(
                            Kind::InvalidConfig,
                            format!(
                                "multicast.routes: {r:?} is not an IPv4 prefix like 224.0.0.0/4"
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?,
        };
        Ok(MulticastConf {
            groups,
            routes,
            mark_other_interfaces: self
                .mark_other_interfaces
                .unwrap_or(d.mark_other_interfaces),
            loose_rp_filter: self.loose_rp_filter.unwrap_or(d.loose_rp_filter),
            bc_queue_len: self.bc_queue_len,
        })
    }
}

/// Where the node agent listens unless the config's `agentSocket` says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/ros-macvlan/agent.sock";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMacvlanConf {
    master: Option<String>,
    mode: Option<String>,
    mtu: Option<u32>,
    mac: Option<String>,
    #[serde(default)]
    link_in_container: bool,
    #[serde(default)]
    wait_for_link_removal: bool,
    agent_socket: Option<String>,
    multicast: Option<RawMulticast>,
    // Zenoh relay (issue 24): `ZenohConf` below reads it.
    zenoh: Option<Value>,
    log_file: Option<Value>,
    log_level: Option<Value>,
}

/// A validated macvlan network configuration.
#[derive(Debug, Clone)]
pub struct MacvlanConf {
    /// The common keys; `conf.name`, `conf.ipam` and the others read through (`Deref`), as
    /// Go's embedding reads them.
    pub net: NetConf,
    pub master: Option<String>,
    pub mode: MacvlanMode,
    /// 0 or absent: the master's MTU.
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub link_in_container: bool,
    /// DEL returns only once the kernel has removed the link (see `plugin::del`).
    pub wait_for_link_removal: bool,
    /// Where the node agent that holds the group memberships listens (confined to the
    /// agent's directory when used: `membership::AgentPlace`).
    pub agent_socket: String,
    pub multicast: MulticastConf,
    /// Zenoh relay (issue 24): a router at the pod's localhost, when the network opts in.
    pub zenoh: Option<ZenohConf>,
    /// ARP probing of new addresses on the LAN; `None` when turned off.
    pub duplicate_detection: Option<Detection>,
    /// `logFile` as given (checked and confined when the call opens it: `lifecycle::LogSink`).
    pub log_file: Option<Value>,
    /// `logLevel`: "info" (the default), "error" or "none".
    pub log_level: String,
}

impl MacvlanConf {
    /// What the claims made under this config are recorded as (`ClaimRecord::config`): the
    /// master as written and the whole `ipam` object (ranges, store), hashed. A second config
    /// under the same `name` and store, on another master or with other ranges, has another
    /// identity, and its GC leaves these claims alone.
    pub fn claim_identity(&self) -> String {
        let what = serde_json::json!([self.master, self.ipam]);
        format!(
            "{:016x}",
            crate::sys::stable_hash::stable_hash(what.to_string().as_bytes())
        )
    }
}

impl std::ops::Deref for MacvlanConf {
    type Target = NetConf;
    fn deref(&self) -> &NetConf {
        &self.net
    }
}

/// `logLevel` as the log line reads it: a string, else "info" (also for a config that was
/// refused, whose line still follows its `logLevel`).
pub fn log_level_of(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("info")
}

impl MacvlanConf {
    /// Decodes and validates the config. Only the version is checked first, so an unknown
    /// version is reported as such (code 1) whatever else is wrong.
    pub fn parse(bytes: &[u8]) -> Result<MacvlanConf> {
        MacvlanConf::from_value(&decode(bytes)?)
    }

    /// Validates a config already decoded by `cni::config::decode`.
    pub fn from_value(raw_value: &Value) -> Result<MacvlanConf> {
        let net = NetConf::from_value(raw_value)?;
        let raw = RawMacvlanConf::deserialize(raw_value)
            .map_err(|e| Error::new(Kind::Decode, format!("network config: {e}")))?;
        let mtu = match raw.mtu {
            Some(0) | None => None,
            Some(m) if m < 68 => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("mtu {m} is below the IPv4 minimum of 68"),
                ))
            }
            Some(m) => Some(m),
        };
        // An empty master is no master, as in the reference: the default route's interface.
        if let Some(master) = raw.master.as_deref().filter(|m| !m.is_empty()) {
            if let Some(problem) = crate::sys::netlink::ifname_problem(master) {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("master {master:?} is not a valid interface name: {problem}"),
                ));
            }
        }
        Ok(MacvlanConf {
            master: raw.master.filter(|m| !m.is_empty()),
            mode: MacvlanMode::parse(raw.mode.as_deref().unwrap_or(""))
                .map_err(|e| Error::new(Kind::InvalidConfig, e.to_string()))?,
            mtu,
            mac: raw
                .mac
                .as_deref()
                .map(|m| parse_mac(m, "mac"))
                .transpose()?,
            link_in_container: raw.link_in_container,
            wait_for_link_removal: raw.wait_for_link_removal,
            agent_socket: raw
                .agent_socket
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_owned()),
            multicast: raw.multicast.unwrap_or_default().validate()?,
            zenoh: ZenohConf::from_config(raw.zenoh.as_ref())?,
            duplicate_detection: Detection::from_config(raw_value.get("duplicateDetection"))?,
            log_file: raw.log_file,
            log_level: log_level_of(raw.log_level.as_ref()).to_owned(),
            net,
        })
    }

    /// DEL's view of the config: the keys that only shape a new link (mode, mac, mtu,
    /// runtimeConfig mac) are not read, so a config whose ADD was refused for one of them
    /// can still be deleted (a DEL that fails keeps the runtime retrying it), as with the
    /// reference. `zenoh` is not read either: DEL finds a relay by its record
    /// (`zenoh_relay::release`), whatever the config says now.
    pub fn for_del(raw_value: &Value) -> Result<MacvlanConf> {
        let mut c = raw_value.clone();
        if let Some(o) = c.as_object_mut() {
            for key in ["mode", "mac", "mtu", "zenoh"] {
                o.remove(key);
            }
            if let Some(rc) = o.get_mut("runtimeConfig").and_then(Value::as_object_mut) {
                rc.remove("mac");
            }
        }
        MacvlanConf::from_value(&c)
    }
}

/// rmw_zenoh's default router port: where its sessions connect (`tcp/localhost:7447`).
pub const ZENOH_DEFAULT_PORT: u16 = 7447;

/// The `zenoh` key of a network config, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZenohConf {
    /// The port the pod's sessions find the router at, on their localhost.
    pub port: u16,
}

impl ZenohConf {
    /// `true` or `{}` (rmw_zenoh's default port) or `{"port": N}`: the relay; absent, null or
    /// `false`: none. The routers are the node's (the agent's `--zenoh-routers`): a NAD is a
    /// tenant's and must not point the node's agent at an address of its choosing.
    pub fn from_config(value: Option<&Value>) -> Result<Option<ZenohConf>> {
        let invalid = |msg: String| Err(Error::new(Kind::InvalidConfig, msg));
        let object = match value {
            None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
            Some(Value::Bool(true)) => {
                return Ok(Some(ZenohConf {
                    port: ZENOH_DEFAULT_PORT,
                }))
            }
            Some(Value::Object(o)) => o,
            Some(other) => {
                return invalid(format!(
                    "zenoh must be true, false or an object like {{\"port\": 7447}}, not {other}"
                ))
            }
        };
        if let Some(key) = object.keys().find(|k| *k != "port") {
            let why = if key == "router" {
                "the routers are the node's: the node agent's --zenoh-routers names them (docs/zenoh.md)"
            } else {
                "the only key of zenoh is \"port\""
            };
            return invalid(format!("zenoh.{key} is not accepted: {why}"));
        }
        let port = match object.get("port") {
            None => ZENOH_DEFAULT_PORT,
            Some(p) => match p.as_u64().and_then(|p| u16::try_from(p).ok()) {
                Some(p) if p > 0 => p,
                _ => {
                    return invalid(format!(
                        "zenoh.port {p} is not a TCP port (1 to 65535); rmw_zenoh's default is {ZENOH_DEFAULT_PORT}"
                    ))
                }
            },
        };
        Ok(Some(ZenohConf { port }))
    }

    /// The addresses a relay listens on in the pod: its IPv4 and IPv6 localhost.
    pub fn addresses(&self) -> [SocketAddr; 2] {
        [
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, self.port)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<Option<ZenohConf>> {
        ZenohConf::from_config(Some(&serde_json::from_str(v).unwrap()))
    }

    #[test]
    fn the_key_opts_in_and_is_bounded() {
        assert_eq!(ZenohConf::from_config(None).unwrap(), None);
        assert_eq!(parse("false").unwrap(), None);
        assert_eq!(parse("null").unwrap(), None);
        assert_eq!(parse("true").unwrap(), Some(ZenohConf { port: 7447 }));
        assert_eq!(parse("{}").unwrap(), Some(ZenohConf { port: 7447 }));
        assert_eq!(
            parse(r#"{"port": 7448}"#).unwrap(),
            Some(ZenohConf { port: 7448 })
        );
        for bad in [
            r#"{"port": 0}"#,
            r#"{"port": 70000}"#,
            r#"{"port": "7447"}"#,
            r#"{"router": "tcp/10.0.0.1:2379"}"#,
            r#"{"ports": 1}"#,
            r#""yes""#,
            "1",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}: {e}");
        }
        let e = parse(r#"{"router": "tcp/10.0.0.1:2379"}"#).unwrap_err();
        assert!(e.to_string().contains("--zenoh-routers"), "{e}");
    }

    const GUIDE: &str = r#"{
      "cniVersion": "1.0.0", "name": "ros-net", "type": "ros-macvlan",
      "master": "eth0", "mode": "bridge", "isDefaultgateway": false,
      "ipam": { "type": "host-local",
        "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.160",
                      "rangeEnd": "198.51.100.180", "gateway": "198.51.100.1" }]] } }"#;

    #[test]
    fn del_reads_past_the_keys_that_only_shape_a_new_link() {
        let mut v: Value = serde_json::from_str(GUIDE).unwrap();
        v["mtu"] = serde_json::json!(12);
        v["mac"] = serde_json::json!("not a mac");
        v["runtimeConfig"] = serde_json::json!({"mac": "ff:ff:ff:ff:ff:ff"});
        assert!(MacvlanConf::from_value(&v).is_err());
        let conf = MacvlanConf::for_del(&v).unwrap();
        assert_eq!(
            (conf.mtu, conf.mac, conf.runtime_config.mac),
            (None, None, None)
        );
        v["name"] = serde_json::json!("../x");
        assert!(
            MacvlanConf::for_del(&v).is_err(),
            "the name is still checked"
        );
    }

    /// As the reference: an empty master is the default route's interface; a name the
    /// kernel would refuse is refused with the reason.
    #[test]
    fn empty_master_is_no_master_and_bad_names_say_why() {
        let mut v: Value = serde_json::from_str(GUIDE).unwrap();
        v["master"] = serde_json::json!("");
        assert_eq!(MacvlanConf::from_value(&v).unwrap().master, None);
        v["master"] = serde_json::json!("a-name-too-long-1");
        let e = MacvlanConf::from_value(&v).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("longer than 15"), "{e}");
    }

    #[test]
    fn guide_config_parses_with_defaults() {
        let c = MacvlanConf::parse(GUIDE.as_bytes()).unwrap();
        assert_eq!(c.name, "ros-net");
        assert_eq!(c.mode, MacvlanMode::Bridge);
        assert_eq!(c.master.as_deref(), Some("eth0"));
        assert_eq!(c.ipam_type(), "host-local");
        assert_eq!(c.multicast, MulticastConf::default());
        assert_eq!(c.multicast.groups, vec![Ipv4Addr::new(239, 255, 0, 1)]);
    }

    #[test]
    fn multicast_can_be_turned_off_piecewise() {
        let c = MacvlanConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","multicast":{"groups":[],"routes":[],"markOtherInterfaces":false,"bcQueueLen":2000}}"#,
        )
        .unwrap();
        assert!(c.multicast.groups.is_empty() && c.multicast.routes.is_empty());
        assert!(!c.multicast.mark_other_interfaces);
        assert_eq!(c.multicast.bc_queue_len, Some(2000));
    }

    fn code_of(s: &str) -> u32 {
        MacvlanConf::parse(s.as_bytes()).unwrap_err().code()
    }

    #[test]
    fn bad_configs_have_their_codes() {
        assert_eq!(code_of("{not json"), 6);
        assert_eq!(code_of("[]"), 6);
        assert_eq!(code_of(r#"{"cniVersion":"0.9.0","name":"n"}"#), 1);
        assert_eq!(code_of(r#"{"cniVersion":"1.0.0","name":"../etc"}"#), 7);
        assert_eq!(code_of(r#"{"cniVersion":"1.0.0","name":"a/b"}"#), 7);
        assert_eq!(code_of(r#"{"cniVersion":"1.0.0"}"#), 7);
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","mode":"source"}"#),
            7
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","mac":"01:00:5e:00:00:01"}"#),
            7
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","master":"a/b"}"#),
            7
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","multicast":{"groups":["10.0.0.1"]}}"#),
            7
        );
        assert_eq!(code_of(r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#), 6);
    }
}
