//! The agent's bounds, and its descriptors counted: every duty that keeps descriptors open
//! for a tenant
//! (a membership's socket, a pod watched on the LAN, a relay's listeners and connections, a
//! client being answered) takes a lease on them first, and is refused when none is left.
//! The agent raises its soft RLIMIT_NOFILE to what its bounds need together (up to the hard
//! limit) and keeps `HEADROOM` below it for what is not leased (the runtime, the socket, its
//! listings), so the limit itself is never hit: an agent out of descriptors would fail
//! every tenant at once (no listing, no accept, no re-join).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::agent::records::MembershipRecord;

/// The most memberships one agent holds (a socket each): a node runs far fewer pods, and
/// the bound keeps a flood of ADDs (or records) from exhausting the agent's descriptors.
pub const MAX_HELD: usize = 4096;
/// The most routers a pool may name (one per pod of the node at a time).
pub const MAX_ROUTERS: usize = 1024;
/// The most connections one pod may have relayed at once (rmw_zenoh opens one per
/// process), and the most for the whole node.
pub const MAX_CONNECTIONS_PER_POD: usize = 64;
pub const MAX_CONNECTIONS: usize = 1024;

/// Descriptors never leased: the runtime (epoll, its wakers, the signal pipe), stdio and the
/// log, the agent's socket, the records' listings in progress (a few directories and a file
/// each), host access's netlink sockets, and one accepted connection being refused.
pub const HEADROOM: usize = 64;
/// The most memberships one pod may have held (one per attachment: a pod spec that lists
/// a network a thousand times gets 16), and one Kubernetes namespace (where the records
/// name it): a quarter of the node's.
pub const MAX_HELD_PER_POD: usize = 16;
pub const MAX_HELD_PER_NAMESPACE: usize = MAX_HELD / 4;

/// Clients answered at once (each one descriptor while its request is read and answered).
pub const MAX_CLIENTS: usize = 64;
/// Metrics scrapes served at once (each one descriptor while it is answered).
pub const MAX_SCRAPES: usize = 4;
/// Networks probed ahead on their masters at once (an ARP socket each, `AHEAD_SOCKET`).
pub const MAX_AHEAD: usize = 64;
pub const AHEAD_SOCKET: usize = 1;
/// What one membership costs: its socket.
pub const MEMBERSHIP: usize = 1;
/// What one pod watched on the LAN costs: an ARP socket and a handle of its namespace.
pub const POD_WATCHED: usize = 2;
/// What one relayed connection costs: the pod's end and the router's.
pub const PER_CONNECTION: usize = 2;
/// The most listeners one relay has (127.0.0.1 and ::1).
pub const LISTENERS_PER_RELAY: usize = 2;

/// The agent's memory: the DaemonSet's container limit (install/base/daemonset.yaml), which
/// the worst case of every bound together fits in (tests/agent_bounds.rs).
pub const MEMORY_LIMIT: u64 = 32 * 1024 * 1024;

/// Every bound's descriptors together, and the headroom: the soft limit the agent asks for.
pub const NEEDED: usize = HEADROOM
    + MAX_CLIENTS
    + MAX_SCRAPES
    + AHEAD_SOCKET * MAX_AHEAD
    + (MEMBERSHIP + POD_WATCHED) * MAX_HELD
    + LISTENERS_PER_RELAY * MAX_ROUTERS
    + PER_CONNECTION * MAX_CONNECTIONS;

/// Why one more of `new`'s kind would take more than its share, when it would: more than
/// `per_pod` held for its pod (its container), or more than `per_namespace` for its
/// Kubernetes namespace where its record names one. `held` is what is held now (`new`'s
/// own key, held already, does not count: a repeated ADD replaces it).
pub fn beyond_share<'a>(
    held: impl Iterator<Item = &'a MembershipRecord>,
    new: &MembershipRecord,
    (per_pod, per_namespace): (usize, usize),
    what: &str,
) -> Option<String> {
    let key = new.key();
    let namespace = new.k8s_namespace();
    let (mut of_pod, mut of_namespace) = (0, 0);
    for r in held.filter(|r| r.key() != key) {
        of_pod += usize::from(r.container_id == new.container_id);
        of_namespace += usize::from(namespace.is_some() && r.k8s_namespace() == namespace);
    }
    if of_pod >= per_pod {
        return Some(format!(
            "the pod has {of_pod} {what} already, its share of the node's"
        ));
    }
    if of_namespace >= per_namespace {
        return Some(format!(
            "Kubernetes namespace {} has {of_namespace} {what} already, its share of the node's",
            namespace.unwrap_or("-")
        ));
    }
    None
}

/// A count of things leased, bounded: the agent's descriptors, the node's relayed
/// connections, one pod's.
#[derive(Debug)]
pub struct Pool {
    leasable: usize,
    leased: AtomicUsize,
}

impl Pool {
    /// Raises the process's soft RLIMIT_NOFILE to `NEEDED` (never above the hard limit, and
    /// never lowering it) and gives what lies below it, less `HEADROOM`, to lease.
    pub fn descriptors() -> std::io::Result<Arc<Pool>> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        let wanted = (NEEDED as u64).min(hard).max(soft);
        if wanted != soft {
            setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)?;
        }
        let limit = usize::try_from(wanted).unwrap_or(usize::MAX);
        if limit < NEEDED {
            log::warn!(
                "agent: the hard descriptor limit is {hard}, below the {NEEDED} the agent's bounds need together; memberships, relays and connections are refused once {} are in use",
                limit.saturating_sub(HEADROOM)
            );
        }
        Ok(Pool::leasing(limit.saturating_sub(HEADROOM)))
    }

    /// A pool of `leasable`.
    pub fn leasing(leasable: usize) -> Arc<Pool> {
        Arc::new(Pool {
            leasable,
            leased: AtomicUsize::new(0),
        })
    }

    /// A lease on `count`, or None when fewer are left.
    pub fn lease(self: &Arc<Pool>, count: usize) -> Option<Lease> {
        self.leased
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |leased| {
                let after = leased.checked_add(count)?;
                (after <= self.leasable).then_some(after)
            })
            .ok()?;
        Some(Lease {
            count,
            of: Arc::clone(self),
        })
    }

    /// How many are leased now.
    pub fn leased(&self) -> usize {
        self.leased.load(Ordering::SeqCst)
    }

    /// How many it leases at most.
    pub fn leasable(&self) -> usize {
        self.leasable
    }
}

/// Leased from a pool, given back on drop (with what holds it).
#[derive(Debug)]
pub struct Lease {
    count: usize,
    of: Arc<Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.of.leased.fetch_sub(self.count, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_and_a_namespace_take_no_more_than_their_share() {
        use crate::agent::records::tests::record;
        let of = |id: &str, pod: Option<&str>| MembershipRecord {
            container_id: id.into(),
            lan: crate::agent::records::Watched {
                pod: pod.map(str::to_owned),
                ..Default::default()
            },
            ..record()
        };
        let held = [of("a", Some("team/a")), of("b", Some("team/b"))];
        let shares = (1, 2);
        // Its own key again (a repeated ADD) is no more.
        assert_eq!(beyond_share(held.iter(), &held[0], shares, "x"), None);
        let same_pod = MembershipRecord {
            ifname: "net2".into(),
            ..held[0].clone()
        };
        assert!(beyond_share(held.iter(), &same_pod, shares, "x")
            .is_some_and(|w| w.contains("the pod")));
        let same_namespace = of("c", Some("team/c"));
        assert!(beyond_share(held.iter(), &same_namespace, shares, "x")
            .is_some_and(|w| w.contains("namespace team")));
        assert_eq!(
            beyond_share(held.iter(), &of("d", Some("other/d")), shares, "x"),
            None
        );
        // A namespace not known ("-", or no pod) shares with nobody.
        assert_eq!(
            beyond_share(held.iter(), &of("e", Some("-/e")), shares, "x"),
            None
        );
        assert_eq!(beyond_share(held.iter(), &of("f", None), shares, "x"), None);
    }

    #[test]
    fn leases_never_exceed_what_is_leasable_and_come_back_on_drop() {
        let d = Pool::leasing(5);
        let a = d.lease(3).unwrap();
        assert!(d.lease(3).is_none(), "3 + 3 > 5");
        let b = d.lease(2).unwrap();
        assert_eq!(d.leased(), 5);
        drop(a);
        assert_eq!(d.leased(), 2);
        assert!(d.lease(3).is_some());
        drop(b);
        assert_eq!(d.leased(), 0);
        assert!(d.lease(usize::MAX).is_none());
    }
}
