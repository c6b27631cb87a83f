//! The agent's duty of the Zenoh relays (`plugin::zenoh_relay` is the plugin's side): for each pod
//! of a network that opts in, the agent holds the listening sockets ADD opened on the pod's
//! localhost:7447, accepts the pod's rmw_zenoh sessions on them and forwards each
//! connection, a bidirectional byte copy, to a Zenoh router of the node's own: one of the
//! pool `--zenoh-routers` names, each given to one pod at a time.
//!
//! Why a router per pod: rmw_zenoh's sessions are peers, and a Zenoh 1.10 router puts all
//! its peers in one south region that it takes for a full mesh: it routes no sample from
//! one of its peers to another (`hat/peer/pubsub.rs`, `compute_data_route`: only faces of
//! another region get them; `routing.router.peers_failover_brokering`, which used to
//! broker between peers that cannot reach each other, is deprecated and does nothing).
//! Peers of different pods cannot mesh (each listens on its own pod's localhost), so two
//! pods sharing a router never meet. Each on a router of its own, the routers route
//! between themselves (router to router, linkstate) through the node's hub router, which
//! also meets the other nodes' hubs on the LAN (conf/zenoh-router-daemonset.yaml).
//!
//! The relays follow their records as the memberships do: re-opened after the agent's
//! restart, closed with their connections when the record goes (DEL) or the pod's netns is
//! positively gone.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::agent::budget::{
    beyond_share, Lease, Pool, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_POD, MAX_ROUTERS,
    PER_CONNECTION,
};
use crate::agent::protocol::Reply;
use crate::agent::records::{ListingHealth, MembershipRecord, RecordDir, RelayRecord, Stored};
use crate::agent::supervise;
use crate::node::policy::Policy;
use crate::sys::netns::Netns;

/// The agent's answer to a relay request (`held`: the relays).
type RelayReply = Reply<RelayRecord>;

/// The node's routers for pods unless `--zenoh-routers` says otherwise: the router
/// DaemonSet's (host network) on the node's loopback, ports 7448 to 7463 (its hub, which
/// the pods' routers connect to, listens on 7447).
pub const DEFAULT_ROUTERS: &str = "127.0.0.1:7448-7463";

/// The node's routers for pods (`--zenoh-routers HOST:FIRST-LAST`, or `HOST:PORT` for
/// one): one address, consecutive ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterPool {
    pub host: IpAddr,
    pub first: u16,
    pub last: u16,
}

impl std::str::FromStr for RouterPool {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<RouterPool, String> {
        let usage =
            || format!("{s:?} is not HOST:PORT or HOST:FIRST-LAST (like {DEFAULT_ROUTERS})");
        let (host, ports) = s.rsplit_once(':').ok_or_else(usage)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host: IpAddr = host.parse().map_err(|_| usage())?;
        let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(usage);
        let (first, last) = (port(first)?, port(last)?);
        if last < first || usize::from(last - first) >= MAX_ROUTERS {
            return Err(format!(
                "{s:?}: the ports must rise, and at most {MAX_ROUTERS} routers are allowed"
            ));
        }
        Ok(RouterPool { host, first, last })
    }
}

impl std::fmt::Display for RouterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = SocketAddr::new(self.host, self.first);
        if self.first == self.last {
            write!(f, "{host}")
        } else {
            write!(f, "{host}-{}", self.last)
        }
    }
}

impl RouterPool {
    fn size(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// The first router no relay in `taken` forwards to.
    fn free(&self, taken: &HashSet<SocketAddr>) -> Option<SocketAddr> {
        (self.first..=self.last)
            .map(|port| SocketAddr::new(self.host, port))
            .find(|a| !taken.contains(a))
    }
}

/// How long a relayed connection waits for the node's router to accept.
pub const ROUTER_WAIT: Duration = Duration::from_secs(2);
/// How long a pod's connection may stay silent before its first bytes: rmw_zenoh's session
/// speaks first (its InitSyn) at once; the router is connected only then, so a pod that
/// opens connections and sends nothing holds one descriptor each, briefly.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);
/// How long a relayed connection may carry nothing either way: Zenoh sessions send
/// keep-alives every few seconds (a lease of 10 s), so a silent one is dead.
pub const IDLE_WAIT: Duration = Duration::from_secs(60);
/// The most one read of a relayed connection takes in: a buffer of this size exists only
/// while bytes are under way (read, then written on), never for an idle connection.
pub const CHUNK: usize = 4 * 1024;

/// One attachment's relay: its record (with the router it was given), and the tasks
/// accepting on its listeners; dropping it closes the listeners and every connection
/// relayed through them, and frees its router.
struct Relay {
    record: RelayRecord,
    acceptors: Vec<JoinHandle<()>>,
    /// The descriptors of its listeners.
    _listeners: Lease,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.acceptors {
            task.abort();
        }
    }
}

/// The relays the agent holds, and the records that say which it should.
pub struct Relays {
    records: RecordDir<RelayRecord>,
    /// Whether the records could be listed whole at the last sweep.
    listing: ListingHealth,
    routers: RouterPool,
    /// The node policy's file, read at each new relay (`zenohRelaysPerPod`).
    policy: std::path::PathBuf,
    held: HashMap<String, Relay>,
    /// The agent's descriptors, the node's relayed connections, and each pod's (by its
    /// container, shared by all of its relays).
    descriptors: Arc<Pool>,
    connections: Arc<Pool>,
    pods: HashMap<String, Arc<Pool>>,
    /// Keys whose re-creation failed, or whose netns could not be told gone: said once.
    said: HashSet<String>,
}

impl Relays {
    pub fn new(
        agent_socket: &std::path::Path,
        routers: RouterPool,
        descriptors: Arc<Pool>,
        policy: std::path::PathBuf,
    ) -> Relays {
        Relays {
            policy,
            records: RecordDir::kept_beside(agent_socket),
            listing: ListingHealth::default(),
            routers,
            held: HashMap::new(),
            descriptors,
            connections: Pool::leasing(MAX_CONNECTIONS),
            pods: HashMap::new(),
            said: HashSet::new(),
        }
    }

    /// `Request::Relay`: relays the listeners ADD passed along (called from within the
    /// agent's runtime).
    pub fn take(&mut self, record: RelayRecord, fds: Vec<OwnedFd>) -> RelayReply {
        if fds.is_empty() || fds.len() != record.listen.len() {
            return RelayReply::refused(
                "relay needs one listening socket per address in listen".into(),
            );
        }
        match self.hold(record, fds, "handed over by ADD") {
            Ok(()) => RelayReply::accepted(),
            Err(e) => RelayReply::refused(format!("cannot relay: {e}")),
        }
    }

    /// `Request::DropRelay`: DEL closes an attachment's relay.
    pub fn drop_key(&mut self, key: &str) -> RelayReply {
        self.let_go(key, "DEL");
        RelayReply::accepted()
    }

    /// `Request::Relays`: the relays held now; `Request::RelaysIn`: those in the namespace
    /// of `netns_inode`.
    pub fn listing(&self, netns_inode: Option<u64>) -> RelayReply {
        RelayReply {
            held: self
                .held
                .values()
                .filter(|r| netns_inode.is_none_or(|i| r.record.attachment.netns_inode == i))
                .map(|r| r.record.clone())
                .collect(),
            ..RelayReply::accepted()
        }
    }

    /// The relays held (their attachments), and the connections relayed now for each pod
    /// (by one attachment of the pod: a pod's relays share its count), for the metrics.
    pub fn relayed(&self) -> (Vec<&MembershipRecord>, Vec<(&MembershipRecord, usize)>) {
        let held: Vec<&MembershipRecord> =
            self.held.values().map(|r| &r.record.attachment).collect();
        let per_pod = self
            .pods
            .iter()
            .filter_map(|(container, pool)| {
                let of_pod = held.iter().find(|a| &a.container_id == container)?;
                Some((*of_pod, pool.leased()))
            })
            .collect();
        (held, per_pod)
    }

    /// How many relays one pod may have, and one Kubernetes namespace: the node policy's
    /// `zenohRelaysPerPod` (1 when it says nothing or cannot be read) and
    /// `zenohRelaysPerNamespace` (half the routers).
    fn shares(&self) -> (usize, usize) {
        let policy = Policy::read(&self.policy).ok().flatten();
        let per_pod = policy.as_ref().and_then(Policy::zenoh_relays_per_pod);
        let per_namespace = policy.as_ref().and_then(Policy::zenoh_relays_per_namespace);
        (
            per_pod.unwrap_or(1),
            per_namespace.unwrap_or((self.routers.size() / 2).max(1)),
        )
    }

    /// The router for `key`'s relay: the one it has (a repeated ADD), else a free one.
    fn router_for(&self, key: &str) -> io::Result<SocketAddr> {
        if let Some(router) = self.held.get(key).and_then(|r| r.record.router) {
            return Ok(router);
        }
        let taken: HashSet<SocketAddr> =
            self.held.values().filter_map(|r| r.record.router).collect();
        self.routers.free(&taken).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "all {} Zenoh routers of the node ({}, the agent's --zenoh-routers) serve a pod already, and two pods on one router never meet; run more routers (conf/zenoh-router-daemonset.yaml) or let a pod go",
                    self.routers.size(),
                    self.routers
                ),
            )
        })
    }

    fn hold(&mut self, mut record: RelayRecord, fds: Vec<OwnedFd>, why: &str) -> io::Result<()> {
        let key = record.key();
        let held = self.held.values().map(|r| &r.record.attachment);
        if let Some(why) = beyond_share(held, &record.attachment, self.shares(), "Zenoh relays") {
            return Err(io::Error::new(io::ErrorKind::ResourceBusy, why));
        }
        let router = self.router_for(&key)?;
        record.router = Some(router);
        let listeners = self.descriptors.lease(fds.len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the agent's descriptors are all in use (its RLIMIT_NOFILE); not relayed",
            )
        })?;
        // Every listener made the runtime's before anything is kept or spawned: a descriptor
        // that is no listener (or cannot be watched) refuses the relay whole, leaving no
        // acceptor running and no pod counted for it.
        let listeners_accepting = fds
            .into_iter()
            .map(|fd| {
                let std_listener = std::net::TcpListener::from(fd);
                std_listener.set_nonblocking(true)?;
                TcpListener::from_std(std_listener)
            })
            .collect::<io::Result<Vec<TcpListener>>>()?;
        let limits = Arc::new(Limits {
            router,
            descriptors: Arc::clone(&self.descriptors),
            node: Arc::clone(&self.connections),
            pod: Arc::clone(
                self.pods
                    .entry(record.attachment.container_id.clone())
                    .or_insert_with(|| Pool::leasing(MAX_CONNECTIONS_PER_POD)),
            ),
            router_down: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
        });
        let acceptors = listeners_accepting
            .into_iter()
            .map(|listener| tokio::spawn(accept(listener, Arc::clone(&limits))))
            .collect();
        log::info!(
            "agent: relaying {key}: {:?} in {} to the Zenoh router at {router} ({why})",
            record.listen,
            record.attachment.netns
        );
        self.said.remove(&key);
        // A relay held already for the key (a repeated ADD) closes when replaced.
        self.held.insert(
            key,
            Relay {
                record,
                acceptors,
                _listeners: listeners,
            },
        );
        Ok(())
    }

    fn let_go(&mut self, key: &str, why: &str) {
        if let Some(relay) = self.held.remove(key) {
            log::info!("agent: closed the Zenoh relay of {key} ({why})");
            // The pod's count goes with its last relay.
            let pod = &relay.record.attachment.container_id;
            if !self
                .held
                .values()
                .any(|r| &r.record.attachment.container_id == pod)
            {
                self.pods.remove(pod);
            }
        }
    }

    /// Makes the relays match the records, as `Memberships::reconcile` does for memberships:
    /// a relay without a record closes, a record whose netns is gone goes with its relay,
    /// a record not relayed is re-opened (retried every sweep, said once). Records that
    /// cannot be listed whole change nothing (and make it false).
    pub fn reconcile(&mut self) -> bool {
        self.let_go_of_ended();
        let held: HashSet<String> = self.held.keys().cloned().collect();
        let Some(mut due) = self
            .listing
            .whole("Zenoh relay records", self.records.due(&held))
        else {
            return false;
        };
        for (key, why) in due.to_let_go() {
            self.let_go(&key, &why);
            self.said.remove(&key);
        }
        for (key, why) in due.unsure {
            self.say_once(&key, format!("keeping the Zenoh relay of {key}: {why}"));
        }
        for record in due.missing {
            let key = record.key();
            let reopened =
                reopen(&record).and_then(|fds| self.hold(record, fds, "re-opened from its record"));
            if let Err(e) = reopened {
                self.say_once(
                    &key,
                    format!("cannot re-open the Zenoh relay of {key}: {e} (retrying)"),
                );
            }
        }
        true
    }

    /// Lets go of every relay one of whose acceptors ended (they only end by panicking; the
    /// listeners went with it), said: its record is still there, so `reconcile` re-opens it
    /// at once, in the same sweep.
    fn let_go_of_ended(&mut self) {
        let ended: Vec<String> = self
            .held
            .iter()
            .filter(|(_, r)| r.acceptors.iter().any(JoinHandle::is_finished))
            .map(|(key, _)| key.clone())
            .collect();
        for key in ended {
            if let Some(relay) = self.held.get_mut(&key) {
                for acceptor in relay.acceptors.iter_mut().filter(|a| a.is_finished()) {
                    if let Some(result) = acceptor.now_or_never() {
                        let what = format!("the Zenoh relay of {key}");
                        supervise::ended(&what, result, "re-opening it from its record");
                    }
                }
            }
            self.let_go(&key, "its acceptor had ended");
        }
    }

    fn say_once(&mut self, key: &str, line: String) {
        if self.said.insert(key.to_owned()) {
            log::warn!("agent: {line}");
        }
    }
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
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
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

/// Binds a record's listeners again, in its namespace.
fn reopen(record: &RelayRecord) -> io::Result<Vec<OwnedFd>> {
    let ns = record.attachment.open_netns()?;
    match bind(&ns, &record.listen, false) {
        Ok(bound) => Ok(bound.into_iter().map(|(_, fd)| fd).collect()),
        Err(Unbound::Taken(addr)) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr} is taken in the pod now"),
        )),
        Err(Unbound::Failed(addr, e)) => Err(io::Error::new(e.kind(), format!("{addr}: {e}"))),
    }
}

/// What bounds one relay's connections, and what it said of them.
struct Limits {
    router: SocketAddr,
    descriptors: Arc<Pool>,
    node: Arc<Pool>,
    pod: Arc<Pool>,
    router_down: AtomicBool,
    refusing: AtomicBool,
}

impl Limits {
    /// The leases one more connection needs: a place among the pod's and the node's
    /// connections, and its two descriptors; or why not.
    fn admit(&self) -> Result<[Lease; 3], String> {
        let pod = self.pod.lease(1).ok_or_else(|| {
            format!("the pod has {MAX_CONNECTIONS_PER_POD} connections relayed already, its bound")
        })?;
        let node = self.node.lease(1).ok_or_else(|| {
            format!("the node has {MAX_CONNECTIONS} connections relayed already, its bound")
        })?;
        let descriptors = self
            .descriptors
            .lease(PER_CONNECTION)
            .ok_or("the agent's descriptors are all in use (its RLIMIT_NOFILE)")?;
        Ok([pod, node, descriptors])
    }
}

/// Accepts the pod's connections and relays each; the connections are this task's, so
/// aborting it (the relay dropped) closes them all. A connection past a bound is closed at
/// once (said once while they are refused): the agent never runs out of descriptors.
async fn accept(listener: TcpListener, limits: Arc<Limits>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                // The pod's session sees its connection close, and connects again.
                supervise::ended("a relayed connection", done, "it is closed");
                continue;
            }
        };
        let pod = match accepted {
            Ok((pod, _)) => pod,
            Err(e) => {
                log::warn!("agent: Zenoh relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let leases = match limits.admit() {
            Ok(leases) => {
                limits.refusing.store(false, Ordering::SeqCst);
                leases
            }
            Err(why) => {
                if !limits.refusing.swap(true, Ordering::SeqCst) {
                    log::warn!(
                        "agent: Zenoh relay to {}: closing new connections: {why}",
                        limits.router
                    );
                }
                continue; // dropped: closed at once
            }
        };
        let limits = Arc::clone(&limits);
        connections.spawn(async move {
            let _leases = leases;
            forward(pod, &limits).await;
        });
    }
}

/// Waits for the pod's first bytes, connects to the router and copies bytes both ways
/// until either side closes or both stay silent `IDLE_WAIT`. A router that does not answer
/// closes the pod's connection (rmw_zenoh retries); said once per outage.
async fn forward(pod: TcpStream, limits: &Limits) {
    if !matches!(
        tokio::time::timeout(HANDSHAKE_WAIT, pod.readable()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let (router, router_down) = (limits.router, &limits.router_down);
    let connected = tokio::time::timeout(ROUTER_WAIT, TcpStream::connect(router)).await;
    let upstream = match connected {
        Ok(Ok(s)) => {
            if router_down.swap(false, Ordering::SeqCst) {
                log::info!("agent: the Zenoh router at {router} answers again");
            }
            s
        }
        Ok(Err(e)) => return said_down(router, router_down, &e.to_string()),
        Err(_) => return said_down(router, router_down, "no answer in 2 s"),
    };
    let _ = pod.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let last_heard = Heard::now();
    let (pod_in, mut pod_out) = pod.into_split();
    let (router_in, mut router_out) = upstream.into_split();
    // Either direction ending (closed, failed, silent) ends the connection.
    tokio::select! {
        _ = pump(&pod_in, &mut router_out, &last_heard) => {}
        _ = pump(&router_in, &mut pod_out, &last_heard) => {}
    }
}

/// Copies what `from` sends to `to`, a chunk at a time, each chunk's buffer allocated when
/// bytes are there and freed once written on, one chunk a turn of the runtime's; ends when
/// `from` closes or fails, or when neither direction has carried anything for `IDLE_WAIT`
/// (`last_heard`, shared by both).
async fn pump(from: &OwnedReadHalf, to: &mut OwnedWriteHalf, last_heard: &Heard) -> io::Result<()> {
    loop {
        let deadline = last_heard.at() + IDLE_WAIT;
        match tokio::time::timeout_at(deadline, from.readable()).await {
            Ok(ready) => ready?,
            // The other direction may have been heard meanwhile.
            Err(_) if last_heard.at() + IDLE_WAIT > Instant::now() => continue,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
        }
        let mut chunk = Vec::with_capacity(CHUNK);
        match from.try_read_buf(&mut chunk) {
            Ok(0) => {
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(_) => {
                last_heard.set();
                to.write_all(&chunk).await?;
                // One chunk a turn. All relays, the clients (ADD, DEL) and the agent's
                // loop share one thread (sys::runtime); a connection whose bytes keep
                // coming would otherwise go on until tokio's budget ran out (128 reads and
                // writes: some 256 KiB) before any other task ran. One pod pushing on its
                // 64 connections then made every other task wait for rounds of megabytes:
                // in the DaemonSet's CPU limit another tenant's relay answered once a
                // second and its ADD took 2 s (tests/agent_bounds.rs). A round is now one
                // chunk per busy connection (at most 4 MiB for the node's 1024). Four
                // chunks a turn kept more of the pusher's rate but left the other tenant's
                // median round trip at 10 to 80 ms instead of 2 to 5 ms.
                tokio::task::yield_now().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// When a connection last carried bytes, either way (shared by its two directions).
struct Heard {
    start: Instant,
    millis: AtomicU64,
}

impl Heard {
    fn now() -> Heard {
        Heard {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn set(&self) {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(millis, Ordering::Relaxed);
    }

    fn at(&self) -> Instant {
        self.start + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

fn said_down(router: SocketAddr, router_down: &AtomicBool, why: &str) {
    if !router_down.swap(true, Ordering::SeqCst) {
        log::warn!("agent: the Zenoh router at {router} does not answer ({why}); relayed connections are closed until it does");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_pool_is_one_host_and_rising_ports() {
        let pool: RouterPool = DEFAULT_ROUTERS.parse().unwrap();
        assert_eq!((pool.first, pool.last, pool.size()), (7448, 7463, 16));
        assert_eq!(pool.to_string(), DEFAULT_ROUTERS);
        let one: RouterPool = "[::1]:7447".parse().unwrap();
        assert_eq!(
            (one.host, one.size()),
            (IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 1)
        );
        assert_eq!(one.to_string(), "[::1]:7447");
        for bad in [
            "7448",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:7449-7448",
            "h:7448",
            "127.0.0.1:1-2000",
        ] {
            assert!(bad.parse::<RouterPool>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_relay_gets_a_router_no_other_has() {
        let pool: RouterPool = "127.0.0.1:7448-7450".parse().unwrap();
        let mut taken = HashSet::new();
        for port in [7448, 7449, 7450] {
            let free = pool.free(&taken).unwrap();
            assert_eq!(free.port(), port);
            taken.insert(free);
        }
        assert_eq!(pool.free(&taken), None);
        taken.remove(&SocketAddr::new(pool.host, 7449));
        assert_eq!(pool.free(&taken).map(|a| a.port()), Some(7449));
    }

    #[test]
    fn a_relay_with_one_descriptor_no_listener_is_refused_whole() {
        let runtime = crate::sys::runtime::build().unwrap();
        let _in_it = runtime.enter();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good = listener.local_addr().unwrap();
        let no_listener = std::fs::File::open("/dev/null").unwrap();
        let record = RelayRecord {
            attachment: crate::agent::records::tests::record(),
            listen: vec![good, "[::1]:7447".parse().unwrap()],
            router: None,
        };
        let descriptors = Pool::leasing(16);
        let mut relays = Relays::new(
            Path::new("/dev/null/no-agent/agent.sock"),
            "127.0.0.1:7448".parse().unwrap(),
            descriptors.clone(),
            "/dev/null/no-policy".into(),
        );
        let fds = vec![OwnedFd::from(listener), OwnedFd::from(no_listener)];
        let reply = relays.take(record, fds);
        assert!(!reply.ok, "{:?}", reply.error);
        assert!(relays.held.is_empty() && relays.pods.is_empty());
        assert_eq!(descriptors.leased(), 0);
        // The good listener was closed with the refusal, not left to an acceptor.
        runtime.block_on(tokio::task::yield_now());
        assert!(
            std::net::TcpStream::connect(good).is_err(),
            "still listening"
        );
    }
}
