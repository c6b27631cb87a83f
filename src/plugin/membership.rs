//! The pod's membership of the discovery groups on its macvlan, held by a socket.
//!
//! A membership must never be an interface address (the kernel's "auto-join"
//! address): Fast DDS lists the pod's addresses, finds the group among them, takes its
//! multicast discovery locator for a local address and sends every announcement to
//! 127.0.0.1. So ADD opens a UDP socket in the pod, joins the groups on the macvlan with it
//! (the kernel sends the IGMP report and puts the group's MAC on the macvlan's filter), and
//! hands the socket to the node agent (`agent::memberships`), which holds it for the attachment's life.
//! Nothing runs in the pod and nothing shows in its addresses or routes.
//!
//! Beside each handed socket the plugin writes a record (what to join, in which netns); the
//! agent re-creates the memberships from the records after its own restart, and the records
//! of attachments added while no agent ran. This file is the plugin's side; the records, the
//! protocol and the holder are the agent's (`crate::agent`).

use std::cell::OnceCell;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::agent::client::{AgentCalls, AgentClient, CallError};
use crate::agent::lan_state::LanState;
use crate::agent::memberships;
use crate::agent::records::{key_of, pod_prefix, MembershipRecord, RecordDir, Stored, Watched};
use crate::cni::env::CniEnv;
use crate::cni::{Error, Kind, Result};
use crate::plugin::config::MacvlanConf;
use crate::sys::confine::{ConfinedPath, Dir, Roots};
use crate::sys::netns::Netns;

/// The record of the attachment ADD is making in `ns`, holding `groups`, watched on the
/// LAN as `lan` says.
pub fn record_of_attachment(
    conf: &MacvlanConf,
    env: &CniEnv,
    ns: &Netns,
    groups: Vec<Ipv4Addr>,
    lan: Watched,
) -> Result<MembershipRecord> {
    Ok(MembershipRecord {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        netns_inode: ns
            .inode()
            .map_err(|e| Error::io(format!("stat network namespace {}", env.netns), e))?,
        proc_pid_ns: crate::sys::netns::proc_pid_ns().ok(),
        groups,
        lan,
    })
}

/// `namespace/name` of the pod, as the runtime's CNI_ARGS say (Kubernetes' do): for the
/// agent's log, and its bounds per Kubernetes namespace.
pub fn pod_of(env: &CniEnv) -> Option<String> {
    env.arg("K8S_POD_NAME")
        .map(|name| format!("{}/{name}", env.arg("K8S_POD_NAMESPACE").unwrap_or("-")))
}

/// Where a config's attachments find the node agent and keep their records: `agentSocket`,
/// confined to the agent's directory, since a NAD names it and the plugin writes there.
pub struct AgentPlace {
    client: Box<dyn AgentCalls>,
    records: RecordDir,
    lan: LanState,
    /// The agent's directory as confined, where other kinds of records live too.
    socket_dir: ConfinedPath,
    /// The records' directory as `prepare` opened it, so ADD walks its path once.
    prepared: OnceCell<Dir>,
}

impl AgentPlace {
    /// Checks `agentSocket` by its text: below the agent's directory, no `..`.
    pub fn of_config(conf: &MacvlanConf, allowed: &Roots) -> Result<AgentPlace> {
        let (dir, _socket) = allowed.confine_file("agentSocket", &conf.agent_socket)?;
        Ok(AgentPlace {
            client: Box::new(AgentClient::new(Path::new(&conf.agent_socket))),
            lan: LanState::in_dir(dir.clone()),
            records: RecordDir::in_dir(dir.clone()),
            socket_dir: dir,
            prepared: OnceCell::new(),
        })
    }

    pub fn client(&self) -> &dyn AgentCalls {
        self.client.as_ref()
    }

    /// The same place, the agent asked through `client` (a fake, in unit tests).
    #[cfg(test)]
    pub fn with_client(self, client: Box<dyn AgentCalls>) -> AgentPlace {
        AgentPlace { client, ..self }
    }

    /// What the node agent knows of the LAN (`agent::lan_state`).
    pub fn lan(&self) -> &LanState {
        &self.lan
    }

    /// The records of another kind kept beside the same agent (the Zenoh relays').
    pub fn records<R: Stored>(&self) -> RecordDir<R> {
        RecordDir::in_dir(self.socket_dir.clone())
    }

    /// Opens (creating what is missing) the records' directory before ADD changes anything,
    /// so a symlink on its way is refused (code 7) while there is nothing to undo.
    pub fn prepare(&self) -> Result<()> {
        self.records_dir().map(|_| ())
    }

    fn records_dir(&self) -> Result<&Dir> {
        if let Some(dir) = self.prepared.get() {
            return Ok(dir);
        }
        let dir = self.records.create_dir()?;
        Ok(self.prepared.get_or_init(|| dir))
    }
}

/// ADD: joins the configured groups on the attachment's interface (`index` in `ns`) and
/// hands the membership to the node agent. Without a reachable agent the ADD still
/// succeeds (DDS processes join the groups themselves) and the returned note says so for
/// the log line; the record stays, so an agent that starts later holds it.
pub fn hold(
    conf: &MacvlanConf,
    env: &CniEnv,
    agent: &AgentPlace,
    ns: &Netns,
    index: u32,
    lan: Watched,
) -> Result<Option<String>> {
    let groups = &conf.multicast.groups;
    if groups.is_empty() {
        return Ok(None);
    }
    let socket = memberships::join(ns, index, groups).map_err(|e| {
        Error::new(
            Kind::Io,
            format!("cannot join the multicast groups on {}: {e}", env.ifname),
        )
    })?;
    let record = record_of_attachment(conf, env, ns, groups.clone(), lan)?;
    if let Err(e) = agent
        .records_dir()
        .and_then(|dir| RecordDir::write_in(dir, &record))
    {
        return Ok(Some(format!("membership not held: {e}")));
    }
    Ok(match agent.client.hold(&record, &socket) {
        Ok(()) => None,
        Err(CallError::Refused(why)) => Some(format!(
            "membership not held: the node agent refused it ({why}); DDS processes join the groups themselves"
        )),
        Err(unreachable) => Some(format!(
            "membership not held: {unreachable}; DDS processes join the groups themselves, and the agent holds it once it runs"
        )),
    })
}

/// DEL (and a failed ADD's undo): the record goes, and the agent lets go of the socket at
/// once (the IGMP leave goes out). An agent that does not answer is no failure: it finds
/// the record gone at its next sweep. A record that cannot be removed is one (the agent
/// would hold the membership on): the caller reports it, and the runtime's retry removes it.
pub fn release(conf: &MacvlanConf, env: &CniEnv, agent: &AgentPlace) -> Result<()> {
    if conf.multicast.groups.is_empty() {
        return Ok(());
    }
    let key = key_of(&conf.name, &env.container_id, &env.ifname);
    let removed = agent.records.remove(&key);
    agent.lan.remove_conflict(&key);
    // Asked in any case: a record removed by an earlier, failed DEL may still be held.
    let _ = agent.client.drop_key(&key);
    removed.map(drop)
}

/// The interfaces of the pod's other attachments (of any network) that hold memberships of
/// any of the same groups: the heirs of the multicast routes when this one goes. Records
/// that cannot be read whole are an error: an heir not seen would lose its routes.
pub fn other_members(conf: &MacvlanConf, env: &CniEnv, agent: &AgentPlace) -> Result<Vec<String>> {
    if conf.multicast.groups.is_empty() {
        return Ok(Vec::new());
    }
    // Keys start with the container: DEL reads this pod's records only, however many
    // attachments the node has.
    let records = agent
        .records
        .list_starting(&pod_prefix(&env.container_id))
        .map_err(|e| {
            Error::io(
                "read the membership records (for the heirs of the multicast routes)",
                e,
            )
        })?;
    Ok(records
        .into_iter()
        .filter(|r| r.container_id == env.container_id && r.ifname != env.ifname)
        .filter(|r| r.groups.iter().any(|g| conf.multicast.groups.contains(g)))
        .map(|r| r.ifname)
        .collect())
}

/// Whether a node agent answers at `client`'s socket and holds the membership of the
/// attachment `ifname` in the namespace `ns`: then the groups must be joined there (CHECK
/// and doctor fail when not); without one, DDS processes join them themselves. Looked up
/// by the namespace's inode, which doctor knows without the attachment's key.
pub fn held_by_agent(client: &dyn AgentCalls, ns: &Netns, ifname: &str) -> bool {
    let Ok(inode) = ns.inode() else {
        return false;
    };
    client
        .held_in(inode)
        .is_ok_and(|held| held.iter().any(|r| r.ifname == ifname))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::client::fake::FakeAgent;
    use crate::plugin::attachment::test_support::{conf_with, data_dir, env, with_fake_agent};

    const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

    /// A network with the discovery group, its agent a fake, its records in a directory of
    /// the test's own.
    fn place(test: &str, fake: &FakeAgent) -> (MacvlanConf, AgentPlace) {
        let mut conf = conf_with(&data_dir(test), ("198.51.100.10", "198.51.100.20"));
        conf.multicast.groups = vec![GROUP];
        with_fake_agent(test, conf, fake)
    }

    fn record(container: &str, ifname: &str, groups: Vec<Ipv4Addr>) -> MembershipRecord {
        MembershipRecord {
            network: "seam".into(),
            container_id: container.into(),
            ifname: ifname.into(),
            netns: "/var/run/netns/pod".into(),
            netns_inode: 1,
            proc_pid_ns: None,
            groups,
            lan: Watched::default(),
        }
    }

    /// DEL removes the record and asks the agent to let go; an agent that does not answer
    /// is no failure of DEL (the record is gone: its sweep lets go).
    #[test]
    fn del_removes_the_record_and_asks_the_agent_to_let_go() {
        for unreachable in [false, true] {
            let fake = FakeAgent {
                unreachable,
                ..FakeAgent::default()
            };
            let (conf, place) = place(&format!("release-{unreachable}"), &fake);
            place
                .records
                .write(&record("ctr", "net1", vec![GROUP]))
                .unwrap();
            release(&conf, &env("ctr", "net1"), &place).unwrap();
            assert!(place.records.list().unwrap().is_empty());
            assert_eq!(fake.calls(), ["drop ctr:seam:net1"]);
        }
    }

    /// A record that cannot be removed (here a directory in its place) is a failure DEL
    /// reports, not one it swallows: the agent would hold the membership on.
    #[test]
    fn a_record_that_cannot_be_removed_fails_del() {
        let fake = FakeAgent::default();
        let (conf, place) = place("release-stuck", &fake);
        let stuck = place.records.path().join("ctr:seam:net1.json");
        std::fs::create_dir_all(stuck.join("inside")).unwrap();
        let e = release(&conf, &env("ctr", "net1"), &place).unwrap_err();
        assert_eq!(e.code(), 5, "{e}");
        assert_eq!(
            fake.calls(),
            ["drop ctr:seam:net1"],
            "the agent is asked anyway"
        );
    }

    #[test]
    fn the_heirs_are_the_pods_other_attachments_of_a_same_group() {
        let fake = FakeAgent::default();
        let (conf, place) = place("heirs", &fake);
        let other_group = Ipv4Addr::new(239, 255, 0, 2);
        for r in [
            record("ctr", "net1", vec![GROUP]),
            record("ctr", "net2", vec![other_group, GROUP]),
            record("ctr", "net3", vec![other_group]),
            record("other-ctr", "net2", vec![GROUP]),
        ] {
            place.records.write(&r).unwrap();
        }
        let heirs = other_members(&conf, &env("ctr", "net1"), &place).unwrap();
        assert_eq!(heirs, ["net2"]);
        // A record of the pod that cannot be read: no heirs guessed, DEL fails.
        std::os::unix::fs::symlink(
            "/etc/hostname",
            place.records.path().join("ctr:x:net9.json"),
        )
        .unwrap();
        assert!(other_members(&conf, &env("ctr", "net1"), &place).is_err());
        assert!(fake.calls().is_empty(), "heirs come from the records alone");
    }
}
