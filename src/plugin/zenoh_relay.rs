//! rmw_zenoh with no configuration in the pods: the plugin's side of the Zenoh relay, an
//! opt-in of the network config (`"zenoh": true`).
//!
//! rmw_zenoh's session connects to a router at `tcp/localhost:7447`, listens on localhost
//! only and scouts nothing: without a router at the pod's own localhost it finds nobody.
//! The node runs Zenoh routers for its pods (conf/zenoh-router-daemonset.yaml, host
//! network), and at ADD the plugin opens listening TCP sockets on 127.0.0.1:7447 (and
//! [::1]:7447 where the pod has IPv6) inside the pod and hands them to the node agent with
//! SCM_RIGHTS, exactly as it hands over membership sockets (`membership`). The agent
//! accepts on them and forwards each connection to a router of the node's given to this pod
//! alone (`tools::relay` says why one each); the routers reach each other through the
//! node's hub router, and the hubs of the nodes over the LAN. Nothing runs in the pod.
//!
//! Beside the handed sockets the plugin writes a record (which addresses, in which netns),
//! so an agent that restarts (or starts after the ADD) binds the same listeners again; DEL
//! removes the record and has the agent close them. The port is taken only where the
//! network opts in, and never from a pod that already has something on it (ADD then skips
//! the relay with a note in its log line).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

use crate::cni::env::CniEnv;
use crate::cni::{Error, Kind, Result};
use crate::plugin::config::MacvlanConf;
use crate::plugin::membership::{self, AgentClient, AgentPlace, Record, RecordDir, Stored};
use crate::sys::netns::{Netns, Presence};

/// rmw_zenoh's default router port: where its sessions connect (`tcp/localhost:7447`).
pub const DEFAULT_PORT: u16 = 7447;

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
            Some(Value::Bool(true)) => return Ok(Some(ZenohConf { port: DEFAULT_PORT })),
            Some(Value::Object(o)) => o,
            Some(other) => {
                return invalid(format!(
                    "zenoh must be true, false or an object like {{\"port\": 7447}}, not {other}"
                ))
            }
        };
        if let Some(key) = object.keys().find(|k| *k != "port") {
            let why = if key == "router" {
                "the routers are the node's: the node agent's --zenoh-routers names them (README: rmw_zenoh with no configuration)"
            } else {
                "the only key of zenoh is \"port\""
            };
            return invalid(format!("zenoh.{key} is not accepted: {why}"));
        }
        let port = match object.get("port") {
            None => DEFAULT_PORT,
            Some(p) => match p.as_u64().and_then(|p| u16::try_from(p).ok()) {
                Some(p) if p > 0 => p,
                _ => {
                    return invalid(format!(
                        "zenoh.port {p} is not a TCP port (1 to 65535); rmw_zenoh's default is {DEFAULT_PORT}"
                    ))
                }
            },
        };
        Ok(Some(ZenohConf { port }))
    }

    /// The addresses a relay listens on in the pod: its IPv4 and IPv6 localhost.
    fn addresses(&self) -> [SocketAddr; 2] {
        [
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, self.port)),
        ]
    }
}

/// One attachment's relay: the attachment (as a membership record names it, with no
/// groups) and the addresses it listens on in the pod's netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayRecord {
    #[serde(flatten)]
    pub attachment: Record,
    /// What ADD bound in the pod (127.0.0.1:PORT, and [::1]:PORT where the pod has IPv6).
    pub listen: Vec<SocketAddr>,
    /// The node's router the agent gave the relay (in the agent's answers; ADD's record
    /// has none: the agent chooses, again after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<SocketAddr>,
}

impl Stored for RelayRecord {
    const DIR: &'static str = "zenoh-relays";
    fn key(&self) -> String {
        self.attachment.key()
    }
    fn presence(&self) -> Presence {
        self.attachment.presence()
    }
}

/// What the plugin (or doctor) asks of the agent about relays, on the agent's socket beside
/// the membership requests (`membership::Request`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RelayRequest {
    /// Relay the listening sockets passed with this message (SCM_RIGHTS, in `listen`'s order).
    Relay(Box<RelayRecord>),
    /// Close the attachment's listeners and its connections.
    DropRelay { key: String },
    /// The relays held now.
    Relays,
}

/// The agent's answer to a relay request (`held`: the relays).
pub type RelayReply = membership::Reply<RelayRecord>;

pub fn parse_request(line: &[u8]) -> io::Result<RelayRequest> {
    serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A request to the agent; its refusal is an error.
fn call(client: &AgentClient, request: &RelayRequest, fds: &[RawFd]) -> io::Result<RelayReply> {
    let reply: RelayReply = client.exchange(request, fds)?;
    if reply.ok {
        Ok(reply)
    } else {
        Err(io::Error::other(
            reply.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

/// The relays the agent at `client` holds.
pub fn held(client: &AgentClient) -> io::Result<Vec<RelayRecord>> {
    call(client, &RelayRequest::Relays, &[]).map(|r| r.held)
}

/// Why listeners could not be opened.
#[derive(Debug)]
pub enum Unbound {
    /// Something in the pod listens there already (its own router, another attachment's relay).
    Taken(SocketAddr),
    Failed(SocketAddr, io::Error),
}

/// Opens listening TCP sockets on `addrs` inside `ns`. An IPv6 address the pod cannot have
/// (IPv6 off) is passed over when `optional_v6`; the loopback need not be up yet (freebind:
/// the runtime may bring `lo` up after this ADD).
pub fn bind(
    ns: &Netns,
    addrs: &[SocketAddr],
    optional_v6: bool,
) -> std::result::Result<Vec<(SocketAddr, OwnedFd)>, Unbound> {
    let first = addrs.first().copied().ok_or_else(|| {
        Unbound::Failed(
            SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            io::Error::other("no address to listen on"),
        )
    })?;
    let addrs = addrs.to_vec();
    ns.run(move || {
        let mut bound = Vec::new();
        for addr in addrs {
            match listener(addr) {
                Ok(fd) => bound.push((addr, fd)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(Unbound::Taken(addr)),
                Err(_) if optional_v6 && addr.is_ipv6() => {}
                Err(e) => return Err(Unbound::Failed(addr, e)),
            }
        }
        Ok(bound)
    })
    .map_err(|e| Unbound::Failed(first, io::Error::other(e.to_string())))?
}

fn listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Re-binding after an agent restart must not wait for the old connections' TIME_WAIT.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// ADD: opens the relay's listeners in the pod and hands them to the node agent. A port
/// already taken in the pod skips the relay (the note says so); without a reachable agent
/// ADD still succeeds with a note, and the agent opens them from the record once it runs.
/// An agent that refuses the relay (every router of the node serves a pod already) fails
/// the ADD with code 11, and its undo removes the record.
pub fn hold(
    conf: &MacvlanConf,
    env: &CniEnv,
    agent: &AgentPlace,
    ns: &Netns,
) -> Result<Option<String>> {
    let Some(zenoh) = &conf.zenoh else {
        return Ok(None);
    };
    let bound = match bind(ns, &zenoh.addresses(), true) {
        Ok(bound) => bound,
        Err(Unbound::Taken(addr)) => {
            return Ok(Some(format!(
                "no Zenoh relay: {addr} is taken in the pod already (its own router, or another attachment's relay); the pod keeps it"
            )))
        }
        Err(Unbound::Failed(addr, e)) => {
            return Err(Error::new(
                Kind::Io,
                format!("cannot open the Zenoh relay's listener on {addr} in the pod: {e}"),
            ))
        }
    };
    let record = RelayRecord {
        attachment: Record::of_attachment(conf, env, ns, Vec::new(), Default::default())?,
        listen: bound.iter().map(|(a, _)| *a).collect(),
        router: None,
    };
    // The record first: an agent restarting between the two still finds it.
    agent.records::<RelayRecord>().write(&record)?;
    let fds: Vec<RawFd> = bound.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let request = RelayRequest::Relay(Box::new(record));
    match agent.client().exchange::<_, RelayReply>(&request, &fds) {
        Ok(reply) if reply.ok => Ok(None),
        Ok(reply) => Err(Error::new(
            Kind::TryAgainLater,
            format!(
                "the node agent refused the Zenoh relay: {}",
                reply.error.unwrap_or_else(|| "refused".into())
            ),
        )),
        Err(e) => Ok(Some(format!(
            "Zenoh relay not held: no node agent at {} ({e}); the agent opens it from its record once it runs",
            agent.client().socket().display()
        ))),
    }
}

/// DEL (and a failed ADD's undo): the record goes and the agent closes the listeners and
/// their connections. Also for a config that no longer opts in but whose ADD did.
pub fn release(conf: &MacvlanConf, env: &CniEnv, agent: &AgentPlace) {
    let key = membership::key_of(&conf.name, &env.container_id, &env.ifname);
    let records: RecordDir<RelayRecord> = agent.records();
    if conf.zenoh.is_none() && records.list_starting(&key).is_empty() {
        return;
    }
    records.remove(&key);
    let _ = call(agent.client(), &RelayRequest::DropRelay { key }, &[]);
}

/// The relay the agent at `client` holds in the namespace `ns`, if any (doctor's question).
pub fn held_in(client: &AgentClient, ns: &Netns) -> Option<RelayRecord> {
    let inode = ns.inode().ok()?;
    held(client)
        .ok()?
        .into_iter()
        .find(|r| r.attachment.netns_inode == inode)
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

    #[test]
    fn a_relay_record_is_a_membership_record_with_addresses() {
        let r = RelayRecord {
            attachment: Record {
                network: "ros-net".into(),
                container_id: "abc".into(),
                ifname: "net1".into(),
                netns: "/var/run/netns/x".into(),
                netns_inode: 1,
                groups: Vec::new(),
                lan: Default::default(),
            },
            listen: vec![
                "127.0.0.1:7447".parse().unwrap(),
                "[::1]:7447".parse().unwrap(),
            ],
            router: None,
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["containerID"], "abc");
        assert_eq!(json["listen"][1], "[::1]:7447");
        assert!(json.get("router").is_none(), "ADD's record names no router");
        assert_eq!(serde_json::from_value::<RelayRecord>(json).unwrap(), r);
        assert_eq!(r.key(), "abc:ros-net:net1");
        let given = RelayRecord {
            router: Some("127.0.0.1:7449".parse().unwrap()),
            ..r
        };
        let json = serde_json::to_value(&given).unwrap();
        assert_eq!(json["router"], "127.0.0.1:7449");
        assert_eq!(serde_json::from_value::<RelayRecord>(json).unwrap(), given);
    }

    #[test]
    fn requests_are_told_apart_from_membership_requests() {
        let line = serde_json::to_string(&RelayRequest::DropRelay {
            key: "a:b:c".into(),
        })
        .unwrap();
        assert!(membership::parse_request(line.as_bytes()).is_err());
        assert!(matches!(
            parse_request(line.as_bytes()).unwrap(),
            RelayRequest::DropRelay { key } if key == "a:b:c"
        ));
        assert!(parse_request(br#"{"list":null}"#).is_err());
    }
}
