//! The node agent's watch on the LAN, on a thread of its own (it blocks in poll and keeps
//! ARP sockets in many namespaces; the agent's loop never waits on it). It reads what to do
//! from the plugin's membership records, as the agent's holder does, and writes what it
//! finds into the agent's directory (`agent::lan_state`), where ADD, CHECK and doctor read
//! it:
//!
//! - **Probing ahead.** For every network whose attachments ask for it (host-local with
//!   duplicate detection, on a master in this namespace), the addresses ADD will hand out
//!   next are ARP-probed on the master every `REPROBE`, with the network's own probe count
//!   and interval, and every ARP packet the master receives in between is heard: anyone
//!   claiming one of them is noted at once. ADD then takes a freshly probed address without
//!   probing it itself.
//! - **Watching after ADD.** Each attachment's IPv4 addresses are probed from its own
//!   interface in the pod every `REPROBE`, and every ARP packet that interface receives is
//!   heard: another MAC answering for, or announcing, the pod's address is a conflict,
//!   logged naming the pod and kept on file for CHECK and doctor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::agent::budget::{Lease, Pool, AHEAD_SOCKET, MAX_AHEAD, POD_WATCHED};
use crate::agent::lan_state::{now_ms, Conflict, LanState, Probed, Probes, FRESH, REPROBE};
use crate::agent::records::{ListingHealth, MembershipRecord, ProbeAhead, RecordDir};
use crate::ipam::host_local::HostLocalConf;
use crate::node::duplicate::{ArpSocket, Claim, Detection};
use crate::sys::confine::{Readable, Roots};
use crate::sys::netlink::format_mac;
use crate::sys::netns::{Netns, Presence};
use crate::sys::stable_hash::stable_hash;

/// How many upcoming addresses of each range set are kept probed: a burst of ADDs beyond
/// them probes for itself.
pub const AHEAD: usize = 8;
/// How long a network is probed ahead after its last attachment went.
pub const REMEMBER: Duration = Duration::from_secs(600);
/// How often the records are read again.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The watch's thread, and what tells it to stop.
pub struct LanWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LanWatch {
    /// Starts the watch; it runs until `join`.
    pub fn spawn(
        records: RecordDir,
        lan: LanState,
        descriptors: Arc<Pool>,
    ) -> std::io::Result<LanWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lan-watch".into())
            .spawn(move || Watch::new(records, lan, descriptors).run(&stopped))?;
        Ok(LanWatch {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the thread has ended by itself (it only does by panicking).
    pub fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the thread (within one turn of its loop, a few tens of milliseconds) and
    /// waits for it; a panic that ended it is logged.
    pub fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                log::error!("agent: lan watch: it had stopped: {why}");
            }
        }
    }
}

/// One network probed ahead on its master.
struct Ahead {
    /// What the records said of the network when this was opened.
    spec: ProbeAhead,
    socket: ArpSocket,
    master_mac: [u8; 6],
    conf: HostLocalConf,
    detection: Detection,
    probes: Probes,
    /// The round under way: when it started and when it ends.
    round: Option<(u64, Instant)>,
    /// Probes of the round still to send, and when the next goes.
    sends_left: u32,
    next_send: Instant,
    last_round: Option<Instant>,
    /// When an attachment of the network was last held.
    last_held: Instant,
    /// The descriptor of its socket.
    _lease: Lease,
}

/// One attachment watched in its pod.
struct PodWatch {
    /// The record it watches for: a new attachment under the same key is watched anew.
    record: MembershipRecord,
    socket: ArpSocket,
    _netns: Netns,
    /// The descriptors of its socket and its namespace handle.
    _lease: Lease,
    addresses: Vec<Ipv4Addr>,
    mac: [u8; 6],
    pod: String,
    next_probe: Instant,
    reported: bool,
}

struct Watch {
    /// The agent's descriptors, leased for each socket the watch keeps open.
    descriptors: Arc<Pool>,
    records: RecordDir,
    /// Whether the records could be listed whole at the last sync.
    listing: ListingHealth,
    lan: LanState,
    ahead: HashMap<String, Ahead>,
    pods: HashMap<String, PodWatch>,
    /// What was said once and need not be said every sync.
    said: HashSet<String>,
}

impl Watch {
    fn new(records: RecordDir, lan: LanState, descriptors: Arc<Pool>) -> Watch {
        Watch {
            descriptors,
            records,
            listing: ListingHealth::default(),
            lan,
            ahead: HashMap::new(),
            pods: HashMap::new(),
            said: HashSet::new(),
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut last_sync: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            if last_sync.is_none_or(|t| t.elapsed() >= SYNC_EVERY) {
                self.sync();
                last_sync = Some(Instant::now());
            }
            self.send_due();
            self.hear(Duration::from_millis(50));
            self.conclude_rounds();
        }
    }

    /// Makes what is watched match the records; records that cannot be listed whole
    /// change nothing (no watch ends, no conflict is forgotten).
    fn sync(&mut self) {
        let listed = self.records.list();
        let Some(records) = self.listing.whole("membership records (LAN watch)", listed) else {
            return;
        };
        let current: HashMap<String, &MembershipRecord> =
            records.iter().map(|r| (r.key(), r)).collect();
        self.pods
            .retain(|key, w| current.get(key).is_some_and(|r| **r == w.record));
        let keys: HashSet<&String> = current.keys().collect();
        for key in self.lan.conflicted() {
            if !keys.contains(&key) {
                self.lan.remove_conflict(&key);
            }
        }
        let mut networks: BTreeMap<String, ProbeAhead> = BTreeMap::new();
        for r in &records {
            if let Some(p) = &r.lan.probe_ahead {
                networks.insert(r.network.clone(), p.clone());
            }
            if !self.pods.contains_key(&r.key()) {
                self.watch_pod(r);
            }
        }
        // A network is probed ahead while attachments of it are held, and for a while after
        // the last one goes: a pod that restarts finds its next address fresh.
        let now = Instant::now();
        self.ahead.retain(|network, a| match networks.get(network) {
            Some(spec) => *spec == a.spec,
            None => now.duration_since(a.last_held) < REMEMBER,
        });
        for (network, p) in networks {
            if !self.ahead.contains_key(&network) {
                if let Some(a) = self.open_ahead(&network, &p) {
                    self.ahead.insert(network.clone(), a);
                }
            }
            if let Some(a) = self.ahead.get_mut(&network) {
                a.last_held = now;
            }
        }
        for (network, a) in self.ahead.iter_mut() {
            a.refresh_upcoming(network);
        }
    }

    fn say_once(&mut self, what: String) {
        if self.said.insert(what.clone()) {
            log::warn!("{what}");
        }
    }

    /// Starts probing `network` ahead on its master, when the master is here (the agent
    /// runs in the node's namespace) and is the one ADD used (same MAC).
    fn open_ahead(&mut self, network: &str, p: &ProbeAhead) -> Option<Ahead> {
        let Some(index) = here_with_mac(&p.master, p.master_mac) else {
            self.say_once(format!(
                "agent: lan watch: not probing network {network} ahead: its master {} ({}) is not in the agent's namespace",
                p.master,
                format_mac(&p.master_mac)
            ));
            return None;
        };
        // The ipam object passed ADD's checks; its dataDir is read as it was then.
        let data_dir = p
            .ipam
            .get("dataDir")
            .and_then(|d| d.as_str())
            .unwrap_or(crate::ipam::host_local::DEFAULT_DATA_DIR);
        let roots = Roots::new(
            vec![data_dir.into()],
            crate::node::policy::DATA_DIR_MODE,
            "",
        );
        let nothing = Readable::new(Vec::new(), Roots::new(Vec::new(), 0o700, ""));
        let conf = match HostLocalConf::parse(&p.ipam, &roots, &nothing) {
            Ok(c) => c,
            Err(e) => {
                self.say_once(format!(
                    "agent: lan watch: not probing network {network} ahead: {e}"
                ));
                return None;
            }
        };
        if self.ahead.len() >= MAX_AHEAD {
            self.say_once(format!(
                "agent: lan watch: not probing network {network} ahead: {MAX_AHEAD} networks are, the bound"
            ));
            return None;
        }
        let Some(lease) = self.descriptors.lease(AHEAD_SOCKET) else {
            self.say_once(format!(
                "agent: lan watch: not probing network {network} ahead: the agent's descriptors are all in use"
            ));
            return None;
        };
        let socket = match ArpSocket::open(index) {
            Ok(s) => s,
            Err(e) => {
                self.say_once(format!(
                    "agent: lan watch: cannot listen on {}: {e}",
                    p.master
                ));
                return None;
            }
        };
        log::info!(
            "agent: lan watch: probing network {network} ahead on {} (up to {AHEAD} addresses of each range set)",
            p.master
        );
        Some(Ahead {
            spec: p.clone(),
            socket,
            master_mac: p.master_mac,
            conf,
            detection: p.detection,
            probes: Probes {
                master_mac: p.master_mac,
                ..Probes::default()
            },
            round: None,
            sends_left: 0,
            next_send: Instant::now(),
            last_round: None,
            last_held: Instant::now(),
            _lease: lease,
        })
    }

    /// Starts watching an attachment's addresses from its interface in the pod.
    fn watch_pod(&mut self, r: &MembershipRecord) {
        let (Some(mac), false) = (r.lan.mac, r.lan.addresses.is_empty()) else {
            return;
        };
        if r.presence() != Presence::Here {
            return;
        }
        let Some(lease) = self.descriptors.lease(POD_WATCHED) else {
            self.say_once(format!(
                "agent: lan watch: not watching {}: the agent's descriptors are all in use",
                r.key()
            ));
            return;
        };
        let opened = Netns::open(&r.netns).and_then(|ns| {
            let ifname = r.ifname.clone();
            let socket = ns.run(move || {
                nix::net::if_::if_nametoindex(ifname.as_str())
                    .map_err(std::io::Error::from)
                    .and_then(ArpSocket::open)
            })?;
            Ok((ns, socket))
        });
        match opened {
            Ok((ns, Ok(socket))) => {
                self.pods.insert(
                    r.key(),
                    PodWatch {
                        record: r.clone(),
                        socket,
                        _netns: ns,
                        _lease: lease,
                        addresses: r.lan.addresses.clone(),
                        mac,
                        pod: r.lan.pod.clone().unwrap_or_else(|| "-/-".into()),
                        next_probe: Instant::now(),
                        reported: self.lan.conflict(&r.key()).is_some(),
                    },
                );
            }
            Ok((_, Err(e))) => {
                self.say_once(format!("agent: lan watch: cannot watch {}: {e}", r.key()))
            }
            Err(e) => self.say_once(format!("agent: lan watch: cannot watch {}: {e}", r.key())),
        }
    }

    /// Sends the probes that are due: the rounds of probing ahead, and the pods' addresses.
    fn send_due(&mut self) {
        let now = Instant::now();
        for a in self.ahead.values_mut() {
            a.send_due(now);
        }
        for w in self.pods.values_mut() {
            if now >= w.next_probe {
                for ip in &w.addresses {
                    let _ = w.socket.probe(w.mac, *ip);
                }
                w.next_probe = now + REPROBE;
            }
        }
    }

    /// Waits up to `at_most` for ARP packets, and takes in what they claim.
    fn hear(&mut self, at_most: Duration) {
        let mut fds: Vec<PollFd> = self
            .ahead
            .values()
            .map(|a| a.socket.as_fd())
            .chain(self.pods.values().map(|w| w.socket.as_fd()))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        if fds.is_empty() {
            std::thread::sleep(at_most);
            return;
        }
        let timeout = PollTimeout::try_from(at_most).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout).unwrap_or(0) == 0 {
            return;
        }
        drop(fds);
        for (network, a) in self.ahead.iter_mut() {
            let claims = a.socket.claims();
            if a.take_claims(&claims) {
                let _ = self.lan.write_probes(network, &a.probes);
            }
        }
        let mut found = Vec::new();
        for (key, w) in self.pods.iter_mut() {
            for c in w.socket.claims() {
                if !c.probe && c.mac != w.mac && w.addresses.contains(&c.ip) && !w.reported {
                    w.reported = true;
                    found.push((key.clone(), w.pod.clone(), c));
                }
            }
        }
        for (key, pod, c) in found {
            log::error!(
                "agent: lan watch: address {} of pod {pod} ({key}) is claimed on the LAN by {}: another host uses it",
                c.ip,
                format_mac(&c.mac)
            );
            let conflict = Conflict {
                address: c.ip,
                mac: c.mac,
                at_ms: now_ms(),
            };
            if let Err(e) = self.lan.write_conflict(&key, &conflict) {
                log::warn!("agent: lan watch: cannot record the conflict of {key}: {e}");
            }
        }
    }

    fn conclude_rounds(&mut self) {
        let now = Instant::now();
        for (network, a) in self.ahead.iter_mut() {
            if a.conclude(now) {
                let _ = self.lan.write_probes(network, &a.probes);
            }
        }
    }
}

impl Ahead {
    /// The addresses ADD would take next, from the store as it is now; what is no longer
    /// upcoming (taken since) is dropped, unless someone claimed it lately.
    fn refresh_upcoming(&mut self, network: &str) {
        let seed = Some(stable_hash(&self.master_mac));
        let Ok(upcoming) = self.conf.upcoming(network, seed, AHEAD) else {
            return;
        };
        let upcoming: HashSet<Ipv4Addr> = upcoming
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let recent = now_ms().saturating_sub(FRESH.as_millis() as u64);
        self.probes
            .addresses
            .retain(|ip, p| upcoming.contains(ip) || p.claimed_at_ms > recent);
        for ip in upcoming {
            self.probes.addresses.entry(ip).or_insert(Probed {
                free_at_ms: 0,
                claimed_by: None,
                claimed_at_ms: 0,
            });
        }
    }

    /// Starts a round when the last one is `REPROBE` old (or none ran), and sends its
    /// probes, `detection.probes` of them `intervalMs` apart, to every upcoming address.
    fn send_due(&mut self, now: Instant) {
        // An address that became upcoming since the last round (the store moved on) is
        // probed at once, not at the next round.
        let unprobed = self
            .probes
            .addresses
            .values()
            .any(|p| p.free_at_ms == 0 && p.claimed_by.is_none());
        if self.round.is_none() && (unprobed || self.last_round.is_none_or(|t| now - t >= REPROBE))
        {
            let d = Duration::from_millis(self.detection.interval_ms);
            self.round = Some((now_ms(), now + d * self.detection.probes));
            self.sends_left = self.detection.probes;
            self.next_send = now;
        }
        if self.round.is_some() && self.sends_left > 0 && now >= self.next_send {
            for ip in self.probes.addresses.keys() {
                let _ = self.socket.probe(self.master_mac, *ip);
            }
            self.sends_left -= 1;
            self.next_send = now + Duration::from_millis(self.detection.interval_ms);
        }
    }

    /// Notes who claims an address of the network (an answer, an announcement, any ARP
    /// packet sent from it); returns whether anything changed. Probes are not claims: the
    /// other nodes' agents probe the same addresses ahead.
    fn take_claims(&mut self, claims: &[Claim]) -> bool {
        let mut changed = false;
        for c in claims
            .iter()
            .filter(|c| !c.probe && c.mac != self.master_mac)
        {
            if let Some(p) = self.probes.addresses.get_mut(&c.ip) {
                p.claimed_by = Some(c.mac);
                p.claimed_at_ms = now_ms();
                changed = true;
            }
        }
        changed
    }

    /// Ends the round whose time is up: every address nobody claimed since it started is
    /// free as of its start.
    fn conclude(&mut self, now: Instant) -> bool {
        let Some((started_ms, ends)) = self.round else {
            return false;
        };
        if now < ends {
            return false;
        }
        for p in self.probes.addresses.values_mut() {
            if p.claimed_at_ms < started_ms {
                p.free_at_ms = started_ms;
            }
        }
        self.round = None;
        self.last_round = Some(now);
        true
    }
}

/// The index of interface `name` in this namespace, if it has MAC `mac`.
fn here_with_mac(name: &str, mac: [u8; 6]) -> Option<u32> {
    let index = nix::net::if_::if_nametoindex(name).ok()?;
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs.filter(|a| a.interface_name == name) {
        if let Some(link) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
            if link.addr() == Some(mac) {
                return Some(index);
            }
        }
    }
    None
}
