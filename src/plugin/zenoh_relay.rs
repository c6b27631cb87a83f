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
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::cni::env::CniEnv;
use crate::cni::{Error, Kind, Result};
use crate::plugin::config::{MacvlanConf, ZENOH_DEFAULT_PORT};
use crate::plugin::membership::{self, AgentClient, AgentPlace, MembershipRecord, Stored};
use crate::sys::netns::{Netns, Presence};

/// One attachment's relay: the attachment (as a membership record names it, with no
/// groups) and the addresses it listens on in the pod's netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayRecord {
    #[serde(flatten)]
    pub attachment: MembershipRecord,
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

/// The relays the agent at `client` holds.
pub fn held(client: &AgentClient) -> io::Result<Vec<RelayRecord>> {
    client
        .call(&RelayRequest::Relays, &[])
        .map(|r: RelayReply| r.held)
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
            SocketAddr::from((Ipv4Addr::LOCALHOST, ZENOH_DEFAULT_PORT)),
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
        attachment: MembershipRecord::of_attachment(conf, env, ns, Vec::new(), Default::default())?,
        listen: bound.iter().map(|(a, _)| *a).collect(),
        router: None,
    };
    // The record first: an agent restarting between the two still finds it.
    agent.records::<RelayRecord>().write(&record)?;
    let fds: Vec<RawFd> = bound.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let request = RelayRequest::Relay(Box::new(record));
    match agent.client().exchange::<_, RelayReply>(&request, &fds) {
        Ok(reply) => match reply.into_result() {
            Ok(_) => Ok(None),
            Err(why) => Err(Error::new(
                Kind::TryAgainLater,
                format!("the node agent refused the Zenoh relay: {why}"),
            )),
        },
        Err(e) => Ok(Some(format!(
            "Zenoh relay not held: no node agent at {} ({e}); the agent opens it from its record once it runs",
            agent.client().socket().display()
        ))),
    }
}

/// DEL (and a failed ADD's undo): the record goes and the agent closes the listeners and
/// their connections. Found by its record, whatever the config says now (DEL's config keeps
/// no `zenoh`); no record, no relay (ADD writes it before handing the listeners over), so
/// a DEL of a network that never opted in asks the agent nothing.
pub fn release(conf: &MacvlanConf, env: &CniEnv, agent: &AgentPlace) {
    let key = membership::key_of(&conf.name, &env.container_id, &env.ifname);
    if agent.records::<RelayRecord>().remove(&key) {
        let _ = agent
            .client()
            .call::<_, RelayRecord>(&RelayRequest::DropRelay { key }, &[]);
    }
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

    #[test]
    fn a_relay_record_is_a_membership_record_with_addresses() {
        let r = RelayRecord {
            attachment: MembershipRecord {
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
        assert!(membership::parse_request::<membership::Request>(line.as_bytes()).is_err());
        assert!(matches!(
            membership::parse_request::<RelayRequest>(line.as_bytes()).unwrap(),
            RelayRequest::DropRelay { key } if key == "a:b:c"
        ));
        assert!(membership::parse_request::<RelayRequest>(br#"{"list":null}"#).is_err());
    }
}
