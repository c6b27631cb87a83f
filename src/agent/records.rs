//! What the plugin writes beside the agent's socket for the agent, one JSON file per
//! attachment: the memberships to hold (`MembershipRecord`) and the Zenoh relays to open
//! (`RelayRecord`), each kind in a directory of its own. The agent re-creates what they say
//! after its own restart (and for attachments added while no agent ran), and lets go of
//! what a record no longer backs (`RecordDir::due`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cni::{Error, Kind, Result};
use crate::sys::confine::{ConfinedPath, Dir};
use crate::sys::netns::{self, Netns, Presence};

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
    /// The pid namespace `/proc` showed at ADD (`netns::proc_pid_ns`): a netns path of a
    /// process (`/proc/<pid>/ns/net`) is gone once that process is, seen in the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_pid_ns: Option<u64>,
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
    /// The master's index in the node's namespace (0 in records written before it was kept).
    #[serde(default)]
    pub master_index: u32,
    pub master_mac: [u8; 6],
    pub detection: crate::node::duplicate::Detection,
}

impl ProbeAhead {
    /// What the probes of a network are kept under: the network's name and a hash of all
    /// that ADD itself will use (the master by index, name and MAC, the ipam object with its
    /// ranges and store). A name is the tenant's to choose: two configs under one name, on
    /// other masters or with other ranges or stores, never share or override probe state.
    pub fn identity(&self, network: &str) -> String {
        let what = serde_json::json!([
            network,
            self.master_index,
            self.master,
            self.master_mac,
            self.ipam
        ]);
        format!(
            "{network}.{:016x}",
            crate::sys::stable_hash::stable_hash(what.to_string().as_bytes())
        )
    }
}

/// What the agent keeps a record of beside its socket, one JSON file a key: memberships
/// here, the Zenoh relays (`RelayRecord`) in a directory of their own.
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

impl<R> Due<R> {
    /// What a holder lets go of, each with why: what it holds with no record left, and what
    /// it held for a record whose namespace is positively gone.
    pub fn to_let_go(&mut self) -> Vec<(String, String)> {
        let unrecorded = self.unrecorded.drain(..);
        unrecorded
            .map(|key| (key, "its record is gone".to_owned()))
            .chain(self.gone.drain(..))
            .collect()
    }
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

    /// The attachment's identity. Network names, container IDs and interface names never
    /// hold ':' (the CNI spec's and the kernel's rules), so keys never collide.
    pub fn key(&self) -> String {
        key_of(&self.network, &self.container_id, &self.ifname)
    }

    /// The pod's Kubernetes namespace, where ADD was told it (CNI_ARGS).
    pub fn k8s_namespace(&self) -> Option<&str> {
        let (namespace, _) = self.lan.pod.as_deref()?.split_once('/')?;
        (namespace != "-").then_some(namespace)
    }

    /// Whether the record's namespace is still there (see `netns::presence`).
    pub fn presence(&self) -> Presence {
        netns::presence(&self.netns, Some(self.netns_inode), self.proc_pid_ns)
    }
}

pub fn key_of(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{}{network}:{ifname}", pod_prefix(container_id))
}

/// The network an attachment's key names (`key_of`'s middle part).
pub fn network_of_key(key: &str) -> Option<&str> {
    let mut parts = key.splitn(3, ':');
    let (_container, network) = (parts.next()?, parts.next()?);
    parts.next().map(|_ifname| network)
}

/// How the keys of one pod's attachments start: the container first, so a pod's records
/// are found by their names alone.
pub(crate) fn pod_prefix(container_id: &str) -> String {
    format!("{container_id}:")
}

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

/// The records live beside the agent's socket, in a directory both sides know. Every file
/// in it is opened relative to it, never through a symlink (`confine`).
#[derive(Debug, Clone)]
pub struct RecordDir<R = MembershipRecord>(ConfinedPath, std::marker::PhantomData<R>);

/// The directory of the membership records, beside the agent's socket.
const RECORDS: &str = "memberships";

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

    /// Opens the records' directory, creating what is missing (never through a symlink).
    pub(crate) fn create_dir(&self) -> Result<Dir> {
        Ok(self.0.create_dir()?)
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

    /// Removes the record of `key`; whether there was one. A record that is there and
    /// cannot be removed is an error: the agent would go on holding what it says.
    pub fn remove(&self, key: &str) -> Result<bool> {
        let Some(dir) = self.0.open_dir()? else {
            return Ok(false);
        };
        match dir.remove(&RecordDir::<R>::file(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("remove the {} record {key}", R::DIR), e)),
        }
    }

    /// Compares the records with the keys an agent holds: a record whose namespace is
    /// positively gone is removed here; the rest is for the caller to act on. A listing
    /// that cannot be made whole is an error, never fewer records: a held key whose record
    /// was not read would be taken for one whose record is gone.
    pub fn due(&self, held: &HashSet<String>) -> io::Result<Due<R>> {
        let records: Vec<R> = self.list()?;
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
                Presence::Gone(why) => match self.remove(&key) {
                    Ok(_) => due.gone.push((key, why)),
                    // Kept (and said) until it can be removed: let go of, it would be
                    // re-created at the next sweep.
                    Err(e) => due.unsure.push((key, format!("{why}, but {e}"))),
                },
                Presence::Unknown(why) => due.unsure.push((key, why)),
            }
        }
        Ok(due)
    }

    /// Every record, or why they cannot all be read (see `list_starting`).
    pub fn list(&self) -> io::Result<Vec<R>> {
        self.list_starting("")
    }

    /// The records whose key starts with `prefix` (only those files are read): all of them,
    /// or an error naming what could not be read. A directory that cannot be opened or
    /// listed, a record file that cannot be read (out of descriptors, say) or is not a
    /// record makes the listing fail as a whole. A file removed while the listing is made
    /// (by a DEL) is no record any more, and is not missed.
    pub fn list_starting(&self, prefix: &str) -> io::Result<Vec<R>> {
        let place = self.path();
        let dir = match self.0.open_dir() {
            Ok(Some(dir)) => dir,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(io::Error::other(format!("cannot open them: {e}"))),
        };
        let names = dir.entries().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot list {}: {e}", place.display()))
        })?;
        let mut records = Vec::new();
        for (name, is_dir) in names {
            let shown = name.to_string_lossy();
            if is_dir || !shown.starts_with(prefix) || !shown.ends_with(".json") {
                continue;
            }
            let bytes = match dir.read(&name) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot read {}/{shown}: {e}", place.display()),
                    ))
                }
            };
            let record = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}/{shown} is not a record: {e}", place.display()),
                )
            })?;
            records.push(record);
        }
        Ok(records)
    }
}

/// Whether the last listing of some records failed, so that a failure is logged once (not
/// at every sweep) and its end once: what cannot be listed whole is acted on not at all.
#[derive(Debug, Default)]
pub struct ListingHealth {
    failing: bool,
}

impl ListingHealth {
    /// The listing, or None when it failed; `what` names the records for the log.
    pub fn whole<T>(&mut self, what: &str, listed: io::Result<T>) -> Option<T> {
        match listed {
            Ok(listing) => {
                if std::mem::take(&mut self.failing) {
                    log::info!("agent: the {what} can be read whole again");
                }
                Some(listing)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!(
                        "agent: cannot read the {what} whole ({e}); nothing is let go until they can be"
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A membership record of a pod, for the agent's unit tests.
    pub(crate) fn record() -> MembershipRecord {
        MembershipRecord {
            network: "ros-net".into(),
            container_id: "abc".into(),
            ifname: "net1".into(),
            netns: "/var/run/netns/x".into(),
            netns_inode: 4026532000,
            proc_pid_ns: None,
            groups: vec![Ipv4Addr::new(239, 255, 0, 1)],
            lan: Watched::default(),
        }
    }

    #[test]
    fn records_round_trip_through_their_directory() {
        let dir = std::env::temp_dir().join(format!("rm-records-{}", std::process::id()));
        let records = RecordDir::beside(&dir.join("agent.sock"));
        records.write(&record()).unwrap();
        assert_eq!(records.list().unwrap(), vec![record()]);
        assert!(records.remove(&record().key()).unwrap());
        assert!(!records.remove(&record().key()).unwrap(), "removed already");
        assert!(records.list().unwrap().is_empty());
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
        let due = records.due(&held).unwrap();
        assert_eq!(due.unrecorded, vec!["lost:ros-net:net1".to_owned()]);
        assert_eq!(due.missing, vec![here("missing")]);
        assert_eq!(due.gone.len(), 1);
        assert_eq!(due.gone[0].0, gone.key());
        assert_eq!(due.unsure.len(), 1);
        assert_eq!(due.unsure[0].0, unsure.key());
        assert_eq!(
            records.list().unwrap().len(),
            3,
            "the gone record is removed, no other"
        );
        let _ = std::fs::remove_dir_all(&dir);
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

    /// A runtime may name the pod's netns by a process of it (`/proc/<pid>/ns/net`): once
    /// that process has exited, the path is gone for good, in the pid namespace it was
    /// recorded in; seen from another one (or unsaid), nothing can be told.
    #[test]
    fn a_process_netns_path_is_gone_once_its_process_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let path = format!("/proc/{}/ns/net", child.id());
        let task = format!("/proc/{0}/task/{0}/ns/net", child.id());
        let pid_ns = crate::sys::netns::proc_pid_ns().ok();
        let r = MembershipRecord {
            netns: path.clone(),
            netns_inode: crate::sys::netns::inode_of(Path::new(&path)).unwrap(),
            proc_pid_ns: pid_ns,
            ..record()
        };
        let of_task = MembershipRecord {
            netns: task,
            ..r.clone()
        };
        assert_eq!(r.presence(), Presence::Here);
        assert_eq!(of_task.presence(), Presence::Here);
        child.kill().unwrap();
        child.wait().unwrap();
        let p = r.presence();
        assert!(
            matches!(p, Presence::Gone(ref why) if why.contains("exited")),
            "{p:?}"
        );
        assert!(matches!(of_task.presence(), Presence::Gone(_)));
        let unsaid = MembershipRecord {
            proc_pid_ns: None,
            ..r.clone()
        };
        assert!(matches!(unsaid.presence(), Presence::Unknown(_)));
        let elsewhere = MembershipRecord {
            proc_pid_ns: pid_ns.map(|n| n + 1),
            ..r.clone()
        };
        assert!(
            matches!(elsewhere.presence(), Presence::Unknown(ref why) if why.contains("another pid namespace"))
        );
    }

    #[test]
    fn a_relay_record_is_a_membership_record_with_addresses() {
        let r = RelayRecord {
            attachment: MembershipRecord {
                network: "ros-net".into(),
                container_id: "abc".into(),
                ifname: "net1".into(),
                netns: "/var/run/netns/x".into(),
                ..record()
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
}
