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
//! alone (`agent::relays` says why one each); the routers reach each other through the
//! node's hub router, and the hubs of the nodes over the LAN. Nothing runs in the pod.
//!
//! Beside the handed sockets the plugin writes a record (which addresses, in which netns),
//! so an agent that restarts (or starts after the ADD) binds the same listeners again; DEL
//! removes the record and has the agent close them. The port is taken only where the
//! network opts in, and never from a pod that already has something on it (ADD then skips
//! the relay with a note in its log line).

use std::os::fd::{AsRawFd, RawFd};

use crate::agent::client::CallError;
use crate::agent::records::{key_of, RelayRecord, Watched};
use crate::agent::relays::{bind, Unbound};
use crate::cni::env::CniEnv;
use crate::cni::{Error, Kind, Result};
use crate::plugin::config::MacvlanConf;
use crate::plugin::membership::{pod_of, record_of_attachment, AgentPlace};
use crate::sys::netns::Netns;

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
        attachment: record_of_attachment(
            conf,
            env,
            ns,
            Vec::new(),
            Watched {
                pod: pod_of(env),
                ..Watched::default()
            },
        )?,
        listen: bound.iter().map(|(a, _)| *a).collect(),
        router: None,
    };
    // The record first: an agent restarting between the two still finds it.
    agent.records::<RelayRecord>().write(&record)?;
    let fds: Vec<RawFd> = bound.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    match agent.client().relay(&record, &fds) {
        Ok(()) => Ok(None),
        Err(CallError::Refused(why)) => Err(Error::new(
            Kind::TryAgainLater,
            format!("the node agent refused the Zenoh relay: {why}"),
        )),
        Err(unreachable) => Ok(Some(format!(
            "Zenoh relay not held: {unreachable}; the agent opens it from its record once it runs"
        ))),
    }
}

/// DEL (and a failed ADD's undo): the record goes and the agent closes the listeners and
/// their connections. Found by its record, whatever the config says now (DEL's config keeps
/// no `zenoh`); no record, no relay (ADD writes it before handing the listeners over), so
/// a DEL of a network that never opted in asks the agent nothing. An agent that does not
/// answer closes the relay at its next sweep; a record that cannot be removed is an error.
pub fn release(conf: &MacvlanConf, env: &CniEnv, agent: &AgentPlace) -> Result<()> {
    let key = key_of(&conf.name, &env.container_id, &env.ifname);
    if agent.records::<RelayRecord>().remove(&key)? {
        let _ = agent.client().drop_relay(&key);
    }
    Ok(())
}
