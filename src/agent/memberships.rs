//! The agent's duty of the memberships (see `plugin::membership` for why a socket holds
//! them): the sockets ADD hands over, let go on DEL, re-created from the records after the
//! agent's own restart (and for attachments added while it was not running), and let go
//! when the pod's netns path is gone or names another namespace, since a socket keeps its
//! namespace (and the macvlan in it, which would still answer ARP for a released address)
//! alive.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use socket2::{InterfaceIndexOrAddress, SockRef};

use crate::agent::budget::{
    beyond_share, Lease, Pool, MAX_HELD, MAX_HELD_PER_NAMESPACE, MAX_HELD_PER_POD, MEMBERSHIP,
};
use crate::agent::protocol::Reply;
use crate::agent::records::{ListingHealth, MembershipRecord, RecordDir};
use crate::sys::netns::Netns;

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

/// A membership held: the record it was made for and the socket that holds it.
struct Held {
    record: MembershipRecord,
    _socket: OwnedFd,
    /// Its descriptors: the socket's, and the LAN watch's in its pod.
    _lease: Lease,
}

/// The memberships the agent holds, and the records that say which it should.
pub struct Memberships {
    records: RecordDir,
    /// Whether the records could be listed whole at the last sweep.
    listing: ListingHealth,
    held: HashMap<String, Held>,
    /// Keys whose re-creation failed once, so the log says so once, not every sweep.
    failing: HashSet<String>,
    /// Keys whose netns could not be told present or gone, said once likewise.
    unsure: HashSet<String>,
    descriptors: Arc<Pool>,
}

impl Memberships {
    pub fn new(records: RecordDir, descriptors: Arc<Pool>) -> Memberships {
        Memberships {
            records,
            descriptors,
            listing: ListingHealth::default(),
            held: HashMap::new(),
            failing: HashSet::new(),
            unsure: HashSet::new(),
        }
    }

    /// `Request::Hold`: holds the socket ADD passed along, within the bound.
    pub fn take(&mut self, record: MembershipRecord, mut fds: Vec<OwnedFd>) -> Reply {
        match fds.pop() {
            Some(socket) => match self.room_for(&record) {
                Ok(lease) => {
                    self.hold(record, socket, lease, "handed over by ADD");
                    Reply::accepted()
                }
                Err(why) => Reply::refused(format!("{why}; not held")),
            },
            None => Reply::refused("hold needs the socket passed with the request".into()),
        }
    }

    /// `Request::Drop`: DEL lets go of an attachment's socket.
    pub fn drop_key(&mut self, key: &str) -> Reply {
        self.let_go(key, "DEL");
        Reply::accepted()
    }

    /// `Request::List`: the memberships held now; `Request::HeldIn`: those in the namespace
    /// of `netns_inode`.
    pub fn listing(&self, netns_inode: Option<u64>) -> Reply {
        Reply {
            held: self
                .held
                .values()
                .filter(|h| netns_inode.is_none_or(|i| h.record.netns_inode == i))
                .map(|h| h.record.clone())
                .collect(),
            ..Reply::accepted()
        }
    }

    /// The descriptors of one more membership (or of a new socket for a held key), within
    /// the bound; or why not.
    fn room_for(&self, record: &MembershipRecord) -> Result<Lease, String> {
        let key = &record.key();
        if self.held.len() >= MAX_HELD && !self.held.contains_key(key) {
            return Err(format!(
                "the agent holds {MAX_HELD} memberships already, its bound"
            ));
        }
        let shares = (MAX_HELD_PER_POD, MAX_HELD_PER_NAMESPACE);
        let held = self.held.values().map(|h| &h.record);
        if let Some(why) = beyond_share(held, record, shares, "memberships") {
            return Err(why);
        }
        self.descriptors
            .lease(MEMBERSHIP)
            .ok_or_else(|| "the agent's descriptors are all in use (its RLIMIT_NOFILE)".to_owned())
    }

    fn hold(&mut self, record: MembershipRecord, socket: OwnedFd, lease: Lease, why: &str) {
        let key = record.key();
        log::info!(
            "agent: holding {key}: {:?} on {} in {} ({why})",
            record.groups,
            record.ifname,
            record.netns
        );
        self.failing.remove(&key);
        // A socket already held for the key (a repeated ADD) closes only after the new one
        // joined, so the membership never lapses.
        self.held.insert(
            key,
            Held {
                record,
                _socket: socket,
                _lease: lease,
            },
        );
    }

    fn let_go(&mut self, key: &str, why: &str) {
        if self.held.remove(key).is_some() {
            log::info!("agent: let go of {key} ({why})");
        }
    }

    /// Makes what is held match the records: a record whose netns is positively gone (or
    /// is another namespace now) is removed with its membership; a held membership without
    /// a record (its DEL's message was lost) ends; a record not held is joined again. A
    /// netns that cannot be told gone is kept, and said once. Records that cannot be
    /// listed whole change nothing (and make it false).
    pub fn reconcile(&mut self) -> bool {
        let held: HashSet<String> = self.held.keys().cloned().collect();
        let Some(mut due) = self
            .listing
            .whole("membership records", self.records.due(&held))
        else {
            return false;
        };
        for (key, why) in due.to_let_go() {
            self.let_go(&key, &why);
            self.failing.remove(&key);
        }
        // Said once while a namespace cannot be told present or gone, again if it comes back.
        let unsure: HashSet<&String> = due.unsure.iter().map(|(key, _)| key).collect();
        self.unsure.retain(|key| unsure.contains(key));
        for (key, why) in &due.unsure {
            if self.unsure.insert(key.clone()) {
                log::warn!("agent: keeping {key}: {why}");
            }
        }
        for record in due.missing {
            let key = record.key();
            let lease = match self.room_for(&record) {
                Ok(lease) => lease,
                Err(why) => {
                    if self.failing.insert(key.clone()) {
                        log::warn!("agent: not re-creating {key}: {why}");
                    }
                    continue;
                }
            };
            match rejoin(&record) {
                Ok(socket) => self.hold(record, socket, lease, "re-created from its record"),
                Err(e) => {
                    if self.failing.insert(key.clone()) {
                        log::warn!("agent: cannot re-create {key}: {e} (retrying)");
                    }
                }
            }
        }
        true
    }
}

/// Joins a record's groups again, in its namespace, on its interface.
fn rejoin(record: &MembershipRecord) -> io::Result<OwnedFd> {
    let ns = record.open_netns()?;
    let ifname = record.ifname.clone();
    let index = ns
        .run(|| nix::net::if_::if_nametoindex(ifname.as_str()))
        .map_err(|e| io::Error::other(e.to_string()))?
        .map_err(|e| io::Error::other(format!("{}: {e}", record.ifname)))?;
    join(&ns, index, &record.groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::records::tests::record;

    /// A socket standing in for a membership's: what is held, not what it joined.
    fn a_socket() -> OwnedFd {
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn in_this_netns(container_id: &str) -> MembershipRecord {
        MembershipRecord {
            container_id: container_id.into(),
            netns: "/proc/self/ns/net".into(),
            netns_inode: crate::sys::netns::inode_of(std::path::Path::new("/proc/self/ns/net"))
                .unwrap(),
            ..record()
        }
    }

    /// A record that cannot be read (here a symlink, never followed) makes the listing
    /// fail: the sweep lets go of nothing, also not the held membership whose record is
    /// gone, and once the listing is whole again it does.
    #[test]
    fn a_listing_that_fails_lets_nothing_go() {
        let dir = std::env::temp_dir().join(format!("rm-failed-listing-{}", std::process::id()));
        let records = RecordDir::beside(&dir.join("agent.sock"));
        let (kept, lost) = (in_this_netns("kept"), in_this_netns("lost"));
        records.write(&kept).unwrap();
        let mut memberships = Memberships::new(records.clone(), Pool::leasing(2));
        for record in [&kept, &lost] {
            // `lost`: its DEL's message was lost: held, with no record.
            let lease = memberships.room_for(record).unwrap();
            memberships.hold(record.clone(), a_socket(), lease, "test");
        }
        assert!(
            memberships.room_for(&in_this_netns("third")).is_err(),
            "past the descriptors leasable"
        );
        let unreadable = records.path().join("unreadable.json");
        std::os::unix::fs::symlink("/etc/hostname", &unreadable).unwrap();
        assert!(
            records.list().is_err(),
            "a listing with an unreadable record"
        );

        memberships.reconcile();
        let held: HashSet<String> = memberships.held.keys().cloned().collect();
        assert_eq!(held, [kept.key(), lost.key()].into(), "nothing let go");

        std::fs::remove_file(&unreadable).unwrap();
        memberships.reconcile();
        let held: HashSet<String> = memberships.held.keys().cloned().collect();
        assert_eq!(
            held,
            [kept.key()].into(),
            "whole again: the unrecorded one goes"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// CHECK's and doctor's question names one namespace: the reply holds its attachments
    /// only, however many the node has (a whole listing of 110 fills a request line).
    #[test]
    fn a_listing_in_one_namespace_holds_only_its_attachments() {
        let dir = std::env::temp_dir().join(format!("rm-listing-in-{}", std::process::id()));
        let mut memberships =
            Memberships::new(RecordDir::beside(&dir.join("agent.sock")), Pool::leasing(8));
        let here = in_this_netns("here");
        let elsewhere = MembershipRecord {
            container_id: "elsewhere".into(),
            netns_inode: here.netns_inode + 1,
            ..here.clone()
        };
        for record in [&here, &elsewhere] {
            let lease = memberships.room_for(record).unwrap();
            memberships.hold(record.clone(), a_socket(), lease, "test");
        }
        assert_eq!(memberships.listing(None).held.len(), 2);
        let inode = here.netns_inode;
        assert_eq!(memberships.listing(Some(inode)).held, vec![here]);
        assert!(memberships.listing(Some(inode + 2)).held.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
