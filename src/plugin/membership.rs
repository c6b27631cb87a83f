//! The pod's membership of the discovery groups on its macvlan, held by a socket.
//!
//! A membership must never be an interface address (the kernel's "auto-join"
//! address): Fast DDS lists the pod's addresses, finds the group among them, takes its
//! multicast discovery locator for a local address and sends every announcement to
//! 127.0.0.1. So ADD opens a UDP socket in the pod, joins the groups on the macvlan with it
//! (the kernel sends the IGMP report and puts the group's MAC on the macvlan's filter), and
//! hands the socket to the node agent (`agent`), which holds it for the attachment's life.
//! Nothing runs in the pod and nothing shows in its addresses or routes.
//!
//! Beside each handed socket the plugin writes a record (what to join, in which netns); the
//! agent re-creates the memberships from the records after its own restart, and the records
//! of attachments added while no agent ran. This file is the plugin's side and the wire
//! protocol both sides speak; `agent` is the holder.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, socket, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use socket2::{InterfaceIndexOrAddress, SockRef};

use crate::cni::env::CniEnv;
use crate::cni::{Error, Kind, Result};
use crate::plugin::config::MacvlanConf;
use crate::sys::confine::{ConfinedPath, Dir, Roots};
use crate::sys::netns::{self, Netns, Presence};

/// How long ADD and DEL wait for the agent at most: a pod start is never held up longer.
pub const AGENT_WAIT: Duration = Duration::from_millis(1000);

/// A request or reply is one JSON line; anything longer is not ours.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One attachment's memberships: what to join, on which interface of which netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipRecord {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// The pod's netns path, and the inode of the namespace it named at ADD: a path that is
    /// gone or names another namespace (its pod is gone, a DEL was lost) ends the membership.
    pub netns: String,
    pub netns_inode: u64,
    pub groups: Vec<Ipv4Addr>,
    /// What the node agent watches on the LAN for this attachment (`lan_watch`): absent in
    /// records of earlier versions.
    #[serde(default, flatten)]
    pub lan: Watched,
}

/// What the agent needs to watch an attachment's addresses on the LAN, and to probe ahead
/// the addresses its network hands out next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watched {
    /// The interface's IPv4 addresses and MAC.
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
    /// `namespace/name` of the pod, for the agent's log.
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub probe_ahead: Option<ProbeAhead>,
}

/// A network whose next addresses the agent probes: its host-local `ipam` object (as ADD
/// validated it), the master it hangs off and that master's MAC, and how hard to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeAhead {
    pub ipam: serde_json::Value,
    pub master: String,
    pub master_mac: [u8; 6],
    pub detection: crate::plugin::duplicate::Detection,
}

/// What the agent keeps a record of beside its socket, one JSON file a key: memberships
/// here, the Zenoh relays (`zenoh_relay`) in a directory of their own.
pub trait Stored: Serialize + DeserializeOwned {
    /// The directory of these records, beside the agent's socket.
    const DIR: &'static str;
    fn key(&self) -> String;
    /// Whether the record's namespace is still there.
    fn presence(&self) -> Presence;
}

impl Stored for MembershipRecord {
    const DIR: &'static str = RECORDS;
    fn key(&self) -> String {
        MembershipRecord::key(self)
    }
    fn presence(&self) -> Presence {
        MembershipRecord::presence(self)
    }
}

/// What a sweep of the records finds against what an agent holds (`RecordDir::due`).
#[derive(Debug)]
pub struct Due<R> {
    /// Held, but with no record left (the DEL's message was lost): to let go of.
    pub unrecorded: Vec<String>,
    /// Records whose namespace is positively gone, with why: removed by the sweep already.
    pub gone: Vec<(String, String)>,
    /// Records whose namespace cannot be told there or gone, with why: kept, not touched.
    pub unsure: Vec<(String, String)>,
    /// Records whose namespace is there and that are not held: to re-create.
    pub missing: Vec<R>,
}

impl MembershipRecord {
    /// The record's namespace, if its path still names the namespace ADD saw (the agent
    /// re-creates what the record says only there).
    pub fn open_netns(&self) -> io::Result<Netns> {
        let ns = Netns::open(&self.netns).map_err(|e| io::Error::other(e.to_string()))?;
        if ns.inode()? != self.netns_inode {
            return Err(io::Error::other(
                "the netns path names another namespace now",
            ));
        }
        Ok(ns)
    }

    /// The record of the attachment ADD is making in `ns`, holding `groups`, watched on the
    /// LAN as `lan` says.
    pub fn of_attachment(
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
            groups,
            lan,
        })
    }

    /// The attachment's identity. Network names, container IDs and interface names never
    /// hold ':' (the CNI spec's and the kernel's rules), so keys never collide.
    pub fn key(&self) -> String {
        key_of(&self.network, &self.container_id, &self.ifname)
    }

    /// Whether the record's netns path still names the namespace it named at ADD.
    /// Whether the record's namespace is still there (see `netns::presence`).
    pub fn presence(&self) -> Presence {
        netns::presence(&self.netns, Some(self.netns_inode))
    }
}

pub fn key_of(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{}{network}:{ifname}", pod_prefix(container_id))
}

/// How the keys of one pod's attachments start: the container first, so a pod's records
/// are found by their names alone.
pub(crate) fn pod_prefix(container_id: &str) -> String {
    format!("{container_id}:")
}

/// The records live beside the agent's socket, in a directory both sides know. Every file
/// in it is opened relative to it, never through a symlink (`confine`).
#[derive(Debug, Clone)]
pub struct RecordDir<R = MembershipRecord>(ConfinedPath, std::marker::PhantomData<R>);

impl RecordDir {
    /// The membership records beside a socket the operator named (the agent's `--socket`).
    pub fn beside(agent_socket: &Path) -> RecordDir {
        RecordDir::kept_beside(agent_socket)
    }
}

impl<R: Stored> RecordDir<R> {
    /// The records of kind `R` beside a socket the operator named (the agent's `--socket`).
    pub fn kept_beside(agent_socket: &Path) -> RecordDir<R> {
        RecordDir::in_dir(crate::node::policy::agent_dir(agent_socket))
    }

    /// The records beside a socket in a directory that passed `Roots::confine`.
    pub(crate) fn in_dir(socket_dir: ConfinedPath) -> RecordDir<R> {
        RecordDir(socket_dir.join(R::DIR), std::marker::PhantomData)
    }

    pub fn path(&self) -> PathBuf {
        self.0.path()
    }

    fn file(key: &str) -> OsString {
        OsString::from(format!("{key}.json"))
    }

    /// Written whole and renamed into place: a reader never sees half a record.
    pub fn write(&self, record: &R) -> Result<()> {
        RecordDir::write_in(&self.0.create_dir()?, record)
    }

    /// `write`, in the records' directory already open.
    pub(crate) fn write_in(dir: &Dir, record: &R) -> Result<()> {
        let key = record.key();
        let bytes = serde_json::to_vec(record).map_err(|e| Error::new(Kind::Io, e.to_string()))?;
        dir.write_whole(&RecordDir::<R>::file(&key), &bytes)
            .map_err(|e| Error::io(format!("{} record {key}", R::DIR), e))
    }

    /// Removes the record of `key`; whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        match self.0.open_dir() {
            Ok(Some(dir)) => dir.remove(&RecordDir::<R>::file(key)).is_ok(),
            _ => false,
        }
    }

    /// Compares the records with the keys an agent holds: a record whose namespace is
    /// positively gone is removed here; the rest is for the caller to act on.
    pub fn due(&self, held: &HashSet<String>) -> Due<R> {
        let records: Vec<R> = self.list();
        let recorded: HashSet<String> = records.iter().map(Stored::key).collect();
        let mut due = Due {
            unrecorded: held.difference(&recorded).cloned().collect(),
            gone: Vec::new(),
            unsure: Vec::new(),
            missing: Vec::new(),
        };
        for record in records {
            let key = record.key();
            match record.presence() {
                Presence::Here if held.contains(&key) => {}
                Presence::Here => due.missing.push(record),
                Presence::Gone(why) => {
                    self.remove(&key);
                    due.gone.push((key, why));
                }
                Presence::Unknown(why) => due.unsure.push((key, why)),
            }
        }
        due
    }

    /// Every readable record; unreadable files are skipped (and left for an operator).
    pub fn list(&self) -> Vec<R> {
        self.list_starting("")
    }

    /// The readable records whose key starts with `prefix`; only those files are read.
    pub(crate) fn list_starting(&self, prefix: &str) -> Vec<R> {
        let Ok(Some(dir)) = self.0.open_dir() else {
            return Vec::new();
        };
        dir.entries()
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, is_dir)| {
                let name = name.to_string_lossy();
                !is_dir && name.starts_with(prefix) && name.ends_with(".json")
            })
            .filter_map(|(name, _)| dir.read(&name).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }
}

/// The directory of the records, beside the agent's socket.
const RECORDS: &str = "memberships";

/// Where a config's attachments find the node agent and keep their records: `agentSocket`,
/// confined to the agent's directory, since a NAD names it and the plugin writes there.
pub struct AgentPlace {
    client: AgentClient,
    records: RecordDir,
    lan: crate::plugin::lan_state::LanState,
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
            client: AgentClient::new(Path::new(&conf.agent_socket)),
            lan: crate::plugin::lan_state::LanState::in_dir(dir.clone()),
            records: RecordDir::in_dir(dir.clone()),
            socket_dir: dir,
            prepared: OnceCell::new(),
        })
    }

    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// What the node agent knows of the LAN (`lan_state`).
    pub fn lan(&self) -> &crate::plugin::lan_state::LanState {
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
        let dir = self.records.0.create_dir()?;
        Ok(self.prepared.get_or_init(|| dir))
    }
}

/// Opens a UDP socket inside `ns` and joins `groups` on interface `index` with it. The
/// memberships last as long as the socket (and any copy of it) stays open.
pub fn join(ns: &Netns, index: u32, groups: &[Ipv4Addr]) -> io::Result<OwnedFd> {
    let sock = ns
        .run(|| {
            socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
        })
        .map_err(|e| io::Error::other(e.to_string()))??;
    for group in groups {
        add_membership(&sock, *group, index)?;
    }
    Ok(sock)
}

/// IP_ADD_MEMBERSHIP naming the interface by index (an `ip_mreqn`), not by address: the
/// macvlan may have no IPv4 address.
fn add_membership(sock: &OwnedFd, group: Ipv4Addr, index: u32) -> io::Result<()> {
    SockRef::from(sock)
        .join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(index))
        .map_err(|e| io::Error::new(e.kind(), format!("join {group} on interface {index}: {e}")))
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
    let socket = join(ns, index, groups).map_err(|e| {
        Error::new(
            Kind::Io,
            format!("cannot join the multicast groups on {}: {e}", env.ifname),
        )
    })?;
    let record = MembershipRecord::of_attachment(conf, env, ns, groups.clone(), lan)?;
    if let Err(e) = agent
        .records_dir()
        .and_then(|dir| RecordDir::write_in(dir, &record))
    {
        return Ok(Some(format!("membership not held: {e}")));
    }
    Ok(agent.client.hold(&record, &socket).err().map(|e| {
        format!(
            "membership not held: no node agent at {} ({e}); DDS processes join the groups themselves, and the agent holds it once it runs",
            agent.client.socket().display()
        )
    }))
}

/// DEL (and a failed ADD's undo): the record goes, and the agent lets go of the socket at
/// once (the IGMP leave goes out). An agent that does not answer finds the record gone
/// at its next sweep.
pub fn release(conf: &MacvlanConf, env: &CniEnv, agent: &AgentPlace) {
    if conf.multicast.groups.is_empty() {
        return;
    }
    let key = key_of(&conf.name, &env.container_id, &env.ifname);
    agent.records.remove(&key);
    agent.lan.remove_conflict(&key);
    let _ = agent.client.drop_key(&key);
}

/// The interfaces of the pod's other attachments (of any network) that hold memberships of
/// any of the same groups: the heirs of the multicast routes when this one goes.
pub fn other_members(conf: &MacvlanConf, env: &CniEnv, agent: &AgentPlace) -> Vec<String> {
    if conf.multicast.groups.is_empty() {
        return Vec::new();
    }
    // Keys start with the container: DEL reads this pod's records only, however many
    // attachments the node has.
    agent
        .records
        .list_starting(&pod_prefix(&env.container_id))
        .into_iter()
        .filter(|r| r.container_id == env.container_id && r.ifname != env.ifname)
        .filter(|r| r.groups.iter().any(|g| conf.multicast.groups.contains(g)))
        .map(|r| r.ifname)
        .collect()
}

/// Whether a node agent answers at `client`'s socket and holds the membership of the
/// attachment `ifname` in the namespace `ns`: then the groups must be joined there (CHECK
/// and doctor fail when not); without one, DDS processes join them themselves. Looked up
/// by the namespace's inode, which doctor knows without the attachment's key.
pub fn held_by_agent(client: &AgentClient, ns: &Netns, ifname: &str) -> bool {
    let Ok(inode) = ns.inode() else {
        return false;
    };
    client.list().is_ok_and(|held| {
        held.iter()
            .any(|r| r.netns_inode == inode && r.ifname == ifname)
    })
}

/// What the plugin (or an operator tool) asks of the agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    /// Hold the socket passed with this message (SCM_RIGHTS) for this attachment.
    Hold(Box<MembershipRecord>),
    /// Let go of the attachment's socket: its memberships end (the IGMP leave goes out).
    Drop { key: String },
    /// The attachments held now.
    List,
}

/// The agent's answer: what it holds, of the kind asked (memberships, or relays).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply<T = MembershipRecord> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<T>,
}

impl<T> Reply<T> {
    /// Done (what is held, if asked, goes in `held`).
    pub fn accepted() -> Reply<T> {
        Reply {
            ok: true,
            error: None,
            held: Vec::new(),
        }
    }

    /// Not done, and why.
    pub fn refused(error: String) -> Reply<T> {
        Reply {
            ok: false,
            error: Some(error),
            ..Reply::accepted()
        }
    }

    /// The reply, or the agent's words for its refusal.
    pub fn into_result(self) -> std::result::Result<Reply<T>, String> {
        if self.ok {
            Ok(self)
        } else {
            Err(self.error.unwrap_or_else(|| "refused".into()))
        }
    }
}

/// The agent's client end: one request per connection, bounded in time.
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: &Path) -> AgentClient {
        AgentClient {
            socket: socket.to_owned(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Hands `fd` to the agent for `record`'s attachment.
    pub fn hold(&self, record: &MembershipRecord, fd: &OwnedFd) -> io::Result<()> {
        self.call::<_, MembershipRecord>(
            &Request::Hold(Box::new(record.clone())),
            &[fd.as_raw_fd()],
        )
        .map(drop)
    }

    pub fn drop_key(&self, key: &str) -> io::Result<()> {
        self.call::<_, MembershipRecord>(
            &Request::Drop {
                key: key.to_owned(),
            },
            &[],
        )
        .map(drop)
    }

    pub fn list(&self) -> io::Result<Vec<MembershipRecord>> {
        self.call(&Request::List, &[]).map(|r| r.held)
    }

    /// One request, its refusal an error: a membership `Request`, or a relay one.
    pub fn call<Q: Serialize, T: DeserializeOwned>(
        &self,
        request: &Q,
        fds: &[RawFd],
    ) -> io::Result<Reply<T>> {
        self.exchange::<Q, Reply<T>>(request, fds)?
            .into_result()
            .map_err(io::Error::other)
    }

    /// One request line (with `fds` passed along) and its reply line, bounded in time: the
    /// transport every kind of request rides on.
    pub fn exchange<Q: Serialize, A: DeserializeOwned>(
        &self,
        request: &Q,
        fds: &[RawFd],
    ) -> io::Result<A> {
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(AGENT_WAIT))?;
        stream.set_write_timeout(Some(AGENT_WAIT))?;
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        // The descriptor rides on the first bytes; the rest of the line follows if needed.
        let sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&line)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
        (&stream).write_all(&line[sent..])?;
        let mut reply = Vec::new();
        (&stream).take(MAX_MESSAGE as u64).read_to_end(&mut reply)?;
        serde_json::from_slice(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Reads one request line from a connected stream, with any descriptors passed along.
/// Used by the agent on a non-blocking socket it has seen readable; returns what arrived.
pub fn receive_chunk(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel just installed these descriptors for this process.
            fds.extend(
                received
                    .into_iter()
                    .map(|r| unsafe { OwnedFd::from_raw_fd(r) }),
            );
        }
    }
    Ok(msg.bytes)
}

/// Parses a complete request line: a membership `Request`, or a `zenoh_relay::RelayRequest`.
pub fn parse_request<T: DeserializeOwned>(line: &[u8]) -> io::Result<T> {
    serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MembershipRecord {
        MembershipRecord {
            network: "ros-net".into(),
            container_id: "abc".into(),
            ifname: "net1".into(),
            netns: "/var/run/netns/x".into(),
            netns_inode: 4026532000,
            groups: vec![Ipv4Addr::new(239, 255, 0, 1)],
            lan: Watched::default(),
        }
    }

    #[test]
    fn records_round_trip_through_their_directory() {
        let dir = std::env::temp_dir().join(format!("rm-records-{}", std::process::id()));
        let records = RecordDir::beside(&dir.join("agent.sock"));
        records.write(&record()).unwrap();
        assert_eq!(records.list(), vec![record()]);
        records.remove(&record().key());
        assert!(records.list().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sweep_sorts_the_records_against_what_is_held() {
        let dir = std::env::temp_dir().join(format!("rm-due-{}", std::process::id()));
        let records = RecordDir::beside(&dir.join("agent.sock"));
        let here = |id: &str| MembershipRecord {
            container_id: id.into(),
            netns: "/proc/self/ns/net".into(),
            netns_inode: crate::sys::netns::inode_of(Path::new("/proc/self/ns/net")).unwrap(),
            ..record()
        };
        let gone = MembershipRecord {
            container_id: "gone".into(),
            netns: "/proc/self/ns/no-such-ns".into(),
            ..record()
        };
        let unsure = MembershipRecord {
            container_id: "unsure".into(),
            netns: "/nonexistent/netns".into(),
            ..record()
        };
        for r in [here("held"), here("missing"), gone.clone(), unsure.clone()] {
            records.write(&r).unwrap();
        }
        let held: HashSet<String> = [here("held").key(), "lost:ros-net:net1".to_owned()].into();
        let due = records.due(&held);
        assert_eq!(due.unrecorded, vec!["lost:ros-net:net1".to_owned()]);
        assert_eq!(due.missing, vec![here("missing")]);
        assert_eq!(due.gone.len(), 1);
        assert_eq!(due.gone[0].0, gone.key());
        assert_eq!(due.unsure.len(), 1);
        assert_eq!(due.unsure[0].0, unsure.key());
        assert_eq!(
            records.list().len(),
            3,
            "the gone record is removed, no other"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_are_one_json_line_each() {
        let line = serde_json::to_string(&Request::Hold(Box::new(record()))).unwrap();
        assert!(!line.contains('\n'));
        assert!(
            matches!(parse_request::<Request>(line.as_bytes()).unwrap(), Request::Hold(r) if *r == record())
        );
        assert!(matches!(
            parse_request::<Request>(br#"{"drop":{"key":"a:b:c"}}"#).unwrap(),
            Request::Drop { key } if key == "a:b:c"
        ));
        assert!(parse_request::<Request>(b"{\"hold\":").is_err());
    }

    #[test]
    fn only_a_positively_gone_netns_is_gone() {
        let mut r = record();
        r.netns = "/proc/self/ns/net".into();
        r.netns_inode = crate::sys::netns::inode_of(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(r.presence(), Presence::Here);
        r.netns_inode += 1;
        assert!(
            matches!(r.presence(), Presence::Gone(_)),
            "another namespace"
        );
        // Not found, in a directory that visibly holds namespaces.
        r.netns = "/proc/self/ns/no-such-ns".into();
        assert!(matches!(r.presence(), Presence::Gone(_)));
        // Not found where nothing shows it is a netns directory: kept.
        r.netns = "/nonexistent/netns".into();
        assert!(matches!(r.presence(), Presence::Unknown(_)));
        let empty = std::env::temp_dir().join(format!("rm-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        r.netns = empty.join("cni-1234").to_string_lossy().into_owned();
        let p = r.presence();
        std::fs::remove_dir(&empty).unwrap();
        assert!(
            matches!(p, Presence::Unknown(ref why) if why.contains("shows no network namespace")),
            "{p:?}"
        );
    }
}
