//! The node agent's watch on the LAN, on a thread of its own (it blocks in poll and keeps
//! ARP sockets in many namespaces; the agent's loop never waits on it). It reads what to do
//! from the plugin's membership records, as the agent's holder does, and writes what it
//! finds into the agent's directory (`agent::lan_state`), where ADD, CHECK and doctor read
//! it:
//!
//! - **Probing ahead: in rounds while busy, one address at a time while idle.** For every
//!   network whose attachments ask for it (host-local with duplicate detection, on a master
//!   in this namespace), the addresses ADD will hand out next are ARP-probed on the master
//!   every `reprobe_every`, with the network's own probe count and interval, for `ACTIVE`
//!   after the network's last ADD; after that, each is probed once more about every
//!   `recheck` (±20 %, one frame), as the pods' own addresses are. Every ARP packet the
//!   master receives is heard all along, busy or not: anyone claiming one of them is noted
//!   at once. ADD takes an address whose probe holds without probing it itself: a fresh one
//!   (`lan_state::FRESH`), or one this watch probed within `lan_state::holds_for(recheck)`
//!   and has listened since (it holds `lan_state::Listening`). Addresses held by the
//!   node's own pods (of any network and store, as the agent's records say) count as
//!   claimed: the master never hears its own macvlans.
//! - **Watching after ADD, mostly by listening.** Every ARP packet each attachment's
//!   interface receives is heard: another MAC announcing the pod's address, sending from
//!   it or answering for it is a conflict, logged naming the pod and kept on file for CHECK
//!   and doctor. Another MAC probing for it makes the agent ask at once. Otherwise each
//!   address is asked for once every `recheck` (±20 %), which finds a host that took it and
//!   stays silent but for answering.
//! - **Heard is not true.** While a conflict is on file the agent asks every
//!   `VERIFY_EVERY` whether that MAC still answers; a conflict nobody confirms for its
//!   expiry is cleared.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::agent::budget::{Lease, Pool, AHEAD_SOCKET, MAX_AHEAD, POD_WATCHED};
use crate::agent::lan_state::{
    holds_for, now_ms, reprobe_every, Conflict, LanState, Listening, Probed, Probes, ACTIVE,
    CONFLICT_EXPIRY, FRESH, RECHECK, VERIFY_EVERY,
};
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
/// How many addresses ahead the node keeps probed while idle, all networks together, in
/// equal shares (each once a re-check period): with 110 pods' own re-checks, at most about
/// 0.9 frames/s by default, whatever number of networks tenants make.
pub const MAX_IDLE_AHEAD: usize = 150;
/// How long a network is probed ahead after its last attachment went.
pub const REMEMBER: Duration = Duration::from_secs(600);
/// When the records are read again: at once when the kernel says their directory changed
/// (inotify: an ADD or a DEL renames in or removes a record), so the first ADD of a busy
/// spell starts the probes ahead at once and the next ADD, 0.3 s later, finds them (with
/// a look every second, the next two probed for themselves); when a look (one stat, every
/// `SYNC_EVERY`) finds its mtime moved, where inotify cannot watch it; and in any case every
/// `RESYNC_EVERY` (a pod whose interface could not be opened yet is tried again). Reading
/// 110 records every second was most of an idle agent's CPU.
const SYNC_EVERY: Duration = Duration::from_secs(1);
const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// How long the loop waits for packets while something is timed (a round of probes ahead,
/// a conflict's verification): the finest step of `intervalMs` it keeps.
const TICK: Duration = Duration::from_millis(50);
/// How long it waits at most otherwise (packets and record changes wake it at once): few
/// wake-ups while idle, and a stop heard within this.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// How the watch paces what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// How often each pod's address is asked for (±20 %).
    pub recheck: Duration,
    /// How long a conflict counts after it was last confirmed.
    pub conflict_expiry: Duration,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            recheck: RECHECK,
            conflict_expiry: CONFLICT_EXPIRY,
        }
    }
}

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
        pace: Pace,
    ) -> std::io::Result<LanWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lan-watch".into())
            .spawn(move || Watch::new(records, lan, descriptors, pace).run(&stopped))?;
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
                let why = crate::agent::supervise::panic_message(&*panic);
                log::error!("agent: lan watch: it had stopped: {why}");
            }
        }
    }
}

/// `period` stretched or shrunk by up to 20 %, differently on every node and for every key:
/// nodes and pods do not ask in step.
fn jittered(period: Duration, salt: &str) -> Duration {
    period.mul_f64(0.8 + 0.4 * spread(salt))
}

/// A fraction in [0, 1) from `salt` and the clock.
fn spread(salt: &str) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = stable_hash(format!("{salt}/{nanos}").as_bytes());
    (h % 1_000_000) as f64 / 1_000_000.0
}

/// One network probed ahead on its master.
struct Ahead {
    /// The network's name and identity (`ProbeAhead::identity`: its probes' file).
    network: String,
    identity: String,
    /// What the records said of the network when this was opened.
    spec: ProbeAhead,
    socket: ArpSocket,
    master_mac: [u8; 6],
    conf: HostLocalConf,
    detection: Detection,
    probes: Probes,
    /// The round under way (while busy).
    round: Option<Asking>,
    /// While idle, the one address being probed again.
    reprobe: Option<Asking>,
    /// The addresses ADD would take next, in the order it would take them.
    upcoming: Vec<Ipv4Addr>,
    /// Probes of the round still to send, and when the next goes.
    sends_left: u32,
    next_send: Instant,
    last_round: Option<Instant>,
    /// When an attachment of the network was last held.
    last_held: Instant,
    /// Until when it is busy (an ADD lately): probed ahead till then, only heard after.
    active_until: Instant,
    /// The descriptor of its socket.
    _lease: Lease,
}

/// Probes out on the master: the addresses they asked for (each probe sent), when the first
/// went, and when the answers are due.
struct Asking {
    addresses: Vec<Ipv4Addr>,
    started_ms: u64,
    ends: Instant,
}

/// What an idle network probes again, as the watch decides for all of them
/// (`Watch::idle_probes`): its first `share` upcoming addresses, each once every `recheck`
/// (±20 %).
#[derive(Debug, Clone, Copy)]
struct IdleProbes {
    recheck: Duration,
    share: usize,
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
    /// When its addresses are next asked for (the rare re-check).
    next_probe: Instant,
    /// When it last asked for them (any reason).
    last_probe: Option<Instant>,
    /// The conflict on file for it, if any, and when it is next verified.
    conflict: Option<Conflict>,
    next_verify: Instant,
}

struct Watch {
    /// The agent's descriptors, leased for each socket the watch keeps open.
    descriptors: Arc<Pool>,
    records: RecordDir,
    /// Whether the records could be listed whole at the last sync.
    listing: ListingHealth,
    lan: LanState,
    pace: Pace,
    /// By network identity.
    ahead: HashMap<String, Ahead>,
    pods: HashMap<String, PodWatch>,
    /// The records seen so far: a new one is an ADD, which makes its network busy.
    seen: HashSet<String>,
    /// The IPv4 addresses the node's own attachments hold, with their MACs.
    held_here: HashMap<Ipv4Addr, [u8; 6]>,
    /// Whether a sync has run: the records it found were there before the watch.
    synced_once: bool,
    /// What was said once and need not be said every sync.
    said: HashSet<String>,
    /// The kernel's word when the records' directory changes, once it could be watched.
    record_changes: Option<Inotify>,
    /// Held while the watch runs: the probes it writes hold while it listens.
    listening: Option<Listening>,
}

impl Watch {
    fn new(records: RecordDir, lan: LanState, descriptors: Arc<Pool>, pace: Pace) -> Watch {
        Watch {
            descriptors,
            records,
            listing: ListingHealth::default(),
            lan,
            pace,
            ahead: HashMap::new(),
            pods: HashMap::new(),
            seen: HashSet::new(),
            held_here: HashMap::new(),
            synced_once: false,
            said: HashSet::new(),
            record_changes: None,
            listening: None,
        }
    }

    /// Marks this watch as listening (`lan_state::Listening`), under a name no earlier
    /// watch of this directory had; tried again at every sync while another watch holds it
    /// (an agent of an earlier version still running beside this one, in an upgrade). The
    /// networks probed ahead meanwhile take the name from then on.
    fn listen(&mut self) {
        if self.listening.is_some() {
            return;
        }
        // A watch restarted in the same process (a duty restarted after a panic) is another.
        static WATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WATCHES.fetch_add(1, Ordering::Relaxed);
        let id = stable_hash(format!("{}/{}/{n}", std::process::id(), now_ms()).as_bytes()).max(1);
        match self.lan.listen(id) {
            Ok(l) => {
                // Their idle probes and how long they hold follow in this sync.
                for a in self.ahead.values_mut() {
                    a.probes.listener = l.id;
                }
                log::info!(
                    "agent: lan watch: listening as watch {}: its probes ahead hold while it runs",
                    l.id
                );
                self.listening = Some(l);
            }
            Err(e) => self.say_once(format!(
                "agent: lan watch: probes ahead hold for {} s only until it can listen: {e}",
                FRESH.as_secs()
            )),
        }
    }

    /// Watches the records' directory for records renamed in or removed, once it exists
    /// (the first ADD makes it); without inotify, the looks every `SYNC_EVERY` do.
    fn watch_records(&mut self) {
        if self.record_changes.is_some() {
            return;
        }
        let Ok(inotify) = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) else {
            return;
        };
        let changes =
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE;
        if inotify.add_watch(&self.records.path(), changes).is_ok() {
            self.record_changes = Some(inotify);
        }
    }

    /// How long to wait for packets before something is due: a `TICK` while a network is
    /// probed ahead or a conflict is on file, else until the next pod's re-check, at most
    /// `IDLE_WAIT`.
    fn wait(&self, now: Instant) -> Duration {
        let timed = self
            .ahead
            .values()
            .any(|a| a.round.is_some() || a.reprobe.is_some() || now < a.active_until)
            || self.pods.values().any(|w| w.conflict.is_some());
        if timed {
            return TICK;
        }
        let now_ms = now_ms();
        let idle = self.idle_probes();
        self.pods
            .values()
            .map(|w| w.next_probe.saturating_duration_since(now))
            .chain(self.ahead.values().filter_map(|a| {
                let due = a.next_reprobe(idle?)?.1;
                Some(Duration::from_millis(due.saturating_sub(now_ms)))
            }))
            .fold(IDLE_WAIT, Duration::min)
    }

    fn run(mut self, stop: &AtomicBool) {
        if let Err(e) = self.lan.prepare() {
            log::warn!("agent: lan watch: cannot make the directories it writes in: {e}");
        }
        let mut last_sync: Option<Instant> = None;
        let mut last_look = Instant::now();
        let mut seen_change: Option<std::time::SystemTime> = None;
        let mut records_changed = false;
        while !stop.load(Ordering::SeqCst) {
            if records_changed || last_look.elapsed() >= SYNC_EVERY || last_sync.is_none() {
                last_look = Instant::now();
                self.watch_records();
                // The directory's mtime moves with every record written (renamed into
                // place) or removed; one that cannot be read counts as changed.
                let changed = std::fs::metadata(self.records.path())
                    .and_then(|m| m.modified())
                    .ok();
                if records_changed
                    || changed.is_none()
                    || changed != seen_change
                    || last_sync.is_none_or(|t| t.elapsed() >= RESYNC_EVERY)
                {
                    seen_change = changed;
                    self.sync();
                    last_sync = Some(Instant::now());
                }
            }
            self.send_due();
            records_changed = self.hear(self.wait(Instant::now()));
            self.conclude_rounds();
        }
    }

    /// Makes what is watched match the records; records that cannot be listed whole
    /// change nothing (no watch ends, no conflict is forgotten).
    fn sync(&mut self) {
        self.listen();
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
        self.held_here = records
            .iter()
            .filter_map(|r| Some((r, r.lan.mac?)))
            .flat_map(|(r, mac)| r.lan.addresses.iter().map(move |a| (*a, mac)))
            .collect();
        // By identity: the network's name, whether an ADD of it is new, what to probe.
        let mut networks: BTreeMap<String, (String, bool, ProbeAhead)> = BTreeMap::new();
        for r in &records {
            let added = self.seen.insert(r.key());
            if let Some(p) = &r.lan.probe_ahead {
                let entry = networks
                    .entry(p.identity(&r.network))
                    .or_insert_with(|| (r.network.clone(), false, p.clone()));
                entry.1 |= added;
            }
            if !self.pods.contains_key(&r.key()) {
                self.watch_pod(r);
            }
        }
        self.seen.retain(|k| current.contains_key(k));
        // A network is heard while attachments of it are held, and for a while after the
        // last one goes: a pod that restarts finds a claim heard meanwhile.
        let now = Instant::now();
        let mut dropped = Vec::new();
        self.ahead.retain(|identity, a| {
            let kept = match networks.get(identity) {
                Some((_, _, spec)) => *spec == a.spec,
                None => now.duration_since(a.last_held) < REMEMBER,
            };
            if !kept {
                dropped.push(identity.clone());
            }
            kept
        });
        // Nobody hears a dropped network's master for it now: its probes must not hold for
        // its next ADD.
        for identity in dropped {
            self.lan.remove_probes(&identity);
        }
        for (identity, (network, added, p)) in networks {
            if !self.ahead.contains_key(&identity) {
                if let Some(a) = self.open_ahead(&network, &identity, &p) {
                    self.ahead.insert(identity.clone(), a);
                }
            }
            if let Some(a) = self.ahead.get_mut(&identity) {
                a.last_held = now;
                if added {
                    a.active_until = now + ACTIVE;
                }
            }
        }
        let holds_ms = self
            .idle_probes()
            .map_or(0, |i| holds_for(i.recheck).as_millis() as u64);
        for a in self.ahead.values_mut() {
            a.refresh_upcoming();
            let mut changed = a.note_held_here(&self.held_here);
            if a.probes.holds_ms != holds_ms {
                a.probes.holds_ms = holds_ms;
                changed = true;
            }
            if changed {
                let _ = self.lan.write_probes(&a.identity, &a.probes);
            }
        }
        self.synced_once = true;
        if !self.ahead.is_empty() {
            test_fault();
        }
    }

    /// What each idle network probes again, while the watch listens (else its probes hold
    /// for `FRESH` only and idle probes would buy nothing). The node's idle probes of
    /// addresses ahead keep within one budget however many networks its tenants make
    /// (`MAX_IDLE_AHEAD` addresses a period), shared equally: each network keeps its next
    /// few addresses probed, the one or two next at the least.
    fn idle_probes(&self) -> Option<IdleProbes> {
        self.listening.as_ref().map(|_| IdleProbes {
            recheck: self.pace.recheck,
            share: (MAX_IDLE_AHEAD / self.ahead.len().max(1)).max(1),
        })
    }

    fn say_once(&mut self, what: String) {
        if self.said.insert(what.clone()) {
            log::warn!("{what}");
        }
    }

    /// Starts probing `network` ahead on its master, when the master is here (the agent
    /// runs in the node's namespace) and is the one ADD used (same index and MAC).
    fn open_ahead(&mut self, network: &str, identity: &str, p: &ProbeAhead) -> Option<Ahead> {
        let Some(index) = here_with_mac(&p.master, p.master_mac)
            .filter(|i| p.master_index == 0 || *i == p.master_index)
        else {
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
            network: network.to_owned(),
            identity: identity.to_owned(),
            spec: p.clone(),
            socket,
            master_mac: p.master_mac,
            conf,
            detection: p.detection,
            probes: Probes {
                master_mac: p.master_mac,
                listener: self.listening.as_ref().map_or(0, |l| l.id),
                // Set with the node's budget of idle probes, at each sync.
                holds_ms: 0,
                ..Probes::default()
            },
            round: None,
            reprobe: None,
            upcoming: Vec::new(),
            sends_left: 0,
            next_send: Instant::now(),
            last_round: None,
            last_held: Instant::now(),
            active_until: Instant::now() + ACTIVE,
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
                // An attachment made while the watch runs is asked for once as soon as it is
                // watched: a host that took the address between ADD's probe and now, and
                // said so once, is found then rather than a period later (one frame per
                // ADD). The attachments found at start (an agent restarting) are not: their
                // first re-check comes anywhere within the period, so they do not ask in step.
                let now = Instant::now();
                let first = if self.synced_once {
                    Duration::ZERO
                } else {
                    self.pace.recheck.mul_f64(spread(&r.key()))
                };
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
                        next_probe: now + first,
                        last_probe: None,
                        conflict: self.lan.conflict_on_file(&r.key()),
                        next_verify: now,
                    },
                );
            }
            Ok((_, Err(e))) => {
                self.say_once(format!("agent: lan watch: cannot watch {}: {e}", r.key()))
            }
            Err(e) => self.say_once(format!("agent: lan watch: cannot watch {}: {e}", r.key())),
        }
    }

    /// Sends the probes that are due: the rounds of probing ahead of busy networks, the
    /// pods' rare re-checks, and the verification of conflicts on file.
    fn send_due(&mut self) {
        let now = Instant::now();
        let idle = self.idle_probes();
        for a in self.ahead.values_mut() {
            a.send_due(now, idle);
        }
        for (key, w) in self.pods.iter_mut() {
            if now >= w.next_probe {
                w.ask(now);
                w.next_probe = now + jittered(self.pace.recheck, key);
            }
            if let Some(c) = &w.conflict {
                if !c.is_current(now_ms()) {
                    log::info!(
                        "agent: lan watch: address {} of pod {} ({key}): MAC {} has not claimed it for {} s; the conflict is cleared",
                        c.address,
                        w.pod,
                        format_mac(&c.mac),
                        c.expiry_ms / 1000
                    );
                    self.lan.remove_conflict(key);
                    w.conflict = None;
                } else if now >= w.next_verify {
                    let _ = w.socket.probe(w.mac, c.address);
                    w.last_probe = Some(now);
                    // Several asks within one expiry: one lost answer does not clear it.
                    w.next_verify = now + VERIFY_EVERY.min(self.pace.conflict_expiry / 4);
                }
            }
        }
    }

    /// Waits up to `at_most` for ARP packets or a change of the records, and takes in what
    /// the packets claim; returns whether the records changed.
    fn hear(&mut self, at_most: Duration) -> bool {
        let mut fds: Vec<PollFd> = self
            .record_changes
            .iter()
            .map(|i| i.as_fd())
            .chain(self.ahead.values().map(|a| a.socket.as_fd()))
            .chain(self.pods.values().map(|w| w.socket.as_fd()))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        if fds.is_empty() {
            std::thread::sleep(at_most);
            return false;
        }
        let timeout = PollTimeout::try_from(at_most).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout).unwrap_or(0) == 0 {
            return false;
        }
        drop(fds);
        // Every event read (none left to wake the next poll); what they say is only that
        // the records are to be read again, or that the directory itself went (removed and
        // made anew, say): then it is watched again at the next look.
        let events = self
            .record_changes
            .as_ref()
            .and_then(|i| i.read_events().ok())
            .unwrap_or_default();
        if events
            .iter()
            .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
        {
            self.record_changes = None;
        }
        let records_changed = !events.is_empty();
        for a in self.ahead.values_mut() {
            let claims = a.socket.claims();
            let mut changed = a.take_claims(&claims);
            // Packets the kernel dropped for want of room may have claimed an address: what
            // was found free is not vouched for until probed again.
            if a.socket.dropped().unwrap_or(0) > 0 && a.probes.forget_free() {
                log::warn!(
                    "agent: lan watch: ARP packets on {} were dropped before the agent read them; its addresses ahead are probed again",
                    a.spec.master
                );
                changed = true;
            }
            if changed {
                let _ = self.lan.write_probes(&a.identity, &a.probes);
            }
        }
        let now = Instant::now();
        for (key, w) in self.pods.iter_mut() {
            for c in w.socket.claims() {
                if c.mac == w.mac || !w.addresses.contains(&c.ip) {
                    continue;
                }
                if c.probe {
                    // Someone asks whether the address is free (another node's agent
                    // probing ahead does, too): ask back whether that MAC also answers
                    // for it, at most once every VERIFY_EVERY.
                    if w.last_probe.is_none_or(|t| now - t >= VERIFY_EVERY) {
                        w.ask(now);
                    }
                    continue;
                }
                w.claimed(key, c, self.pace.conflict_expiry, &self.lan);
            }
        }
        records_changed
    }

    fn conclude_rounds(&mut self) {
        let now = Instant::now();
        for a in self.ahead.values_mut() {
            if a.conclude(now) {
                let _ = self.lan.write_probes(&a.identity, &a.probes);
            }
        }
    }
}

impl Ahead {
    /// The addresses ADD would take next, from the store as it is now; what is no longer
    /// upcoming (taken since) is dropped, unless someone claimed it lately.
    fn refresh_upcoming(&mut self) {
        let seed = Some(stable_hash(&self.master_mac));
        let Ok(upcoming) = self.conf.upcoming(&self.network, seed, AHEAD) else {
            return;
        };
        self.upcoming = upcoming
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let recent = now_ms().saturating_sub(FRESH.as_millis() as u64);
        let upcoming = &self.upcoming;
        self.probes
            .addresses
            .retain(|ip, p| upcoming.contains(ip) || p.claimed_at_ms > recent);
        for &ip in upcoming {
            self.probes.addresses.entry(ip).or_insert(Probed {
                free_at_ms: 0,
                claimed_by: None,
                claimed_at_ms: 0,
                held_here_by: None,
            });
        }
    }

    /// Notes the upcoming addresses that the node's own pods hold (of another network or
    /// store) as claimed by them: the master never hears its own macvlans answer. Returns
    /// whether anything changed.
    fn note_held_here(&mut self, held_here: &HashMap<Ipv4Addr, [u8; 6]>) -> bool {
        let mut changed = false;
        for (ip, p) in self.probes.addresses.iter_mut() {
            let holder = held_here
                .get(ip)
                .filter(|m| **m != self.master_mac)
                .copied();
            if p.held_here_by != holder {
                p.held_here_by = holder;
                changed = true;
            }
        }
        changed
    }

    /// While the network is busy, starts a round when the last one is `reprobe_every` old (or
    /// none ran), and sends its probes, `detection.probes` of them `intervalMs` apart, to
    /// every upcoming address. While it is idle, probes the upcoming address that is due
    /// again (`next_reprobe`), once.
    fn send_due(&mut self, now: Instant, idle: Option<IdleProbes>) {
        let wait = Duration::from_millis(self.detection.interval_ms);
        if self.round.is_none() && now >= self.active_until {
            if self.reprobe.is_none() {
                if let Some((ip, due)) = idle.and_then(|i| self.next_reprobe(i)) {
                    if due <= now_ms() {
                        let mut asking = Asking {
                            addresses: vec![ip],
                            started_ms: now_ms(),
                            ends: now + wait,
                        };
                        self.ask(&mut asking.addresses);
                        self.reprobe = Some(asking);
                    }
                }
            }
            return;
        }
        // An address that became upcoming since the last round (the store moved on) is
        // probed at once, not at the next round.
        let unprobed = self
            .probes
            .addresses
            .values()
            .any(|p| p.free_at_ms == 0 && p.claimed_by.is_none());
        if self.round.is_none()
            && (unprobed
                || self
                    .last_round
                    .is_none_or(|t| now - t >= reprobe_every(&self.detection)))
        {
            self.round = Some(Asking {
                addresses: self.probes.addresses.keys().copied().collect(),
                started_ms: now_ms(),
                ends: now + wait * self.detection.probes,
            });
            self.sends_left = self.detection.probes;
            self.next_send = now;
        }
        if self.sends_left > 0 && now >= self.next_send {
            if let Some(mut round) = self.round.take() {
                self.ask(&mut round.addresses);
                self.round = Some(round);
            }
            self.sends_left -= 1;
            self.next_send = now + wait;
        }
    }

    /// Sends a probe for each of `addresses` and keeps those it could send: an address
    /// whose probe never went out is not found free for it.
    fn ask(&self, addresses: &mut Vec<Ipv4Addr>) {
        addresses.retain(|ip| self.socket.probe(self.master_mac, *ip).is_ok());
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

    /// The idle network's upcoming address due to be probed again soonest, and when (wall
    /// ms): each about `idle.recheck` after it was last probed or claimed, stretched or shrunk by
    /// up to 20 % for each node, address and probe, so that nodes do not probe in step and an
    /// idle network sends one frame at a time. Only the network's share of the node's idle
    /// probes (`idle.share`) is kept probed, the addresses ADD takes first. None when all
    /// are the node's own.
    fn next_reprobe(&self, idle: IdleProbes) -> Option<(Ipv4Addr, u64)> {
        self.upcoming
            .iter()
            .take(idle.share)
            .filter_map(|ip| Some((ip, self.probes.addresses.get(ip)?)))
            .filter(|(_, p)| p.held_here_by.is_none())
            .map(|(ip, p)| {
                let last = p.free_at_ms.max(p.claimed_at_ms);
                // Never probed, or dated ahead of a clock stepped back since: due now.
                if last == 0 || last > now_ms() {
                    return (*ip, 0);
                }
                let salt = format!("{}/{ip}/{last}", self.identity);
                let spread = (stable_hash(salt.as_bytes()) % 1_000_000) as f64 / 1_000_000.0;
                (
                    *ip,
                    last + idle.recheck.mul_f64(0.8 + 0.4 * spread).as_millis() as u64,
                )
            })
            .min_by_key(|(_, due)| *due)
    }

    /// Ends the round or the idle probe whose time is up: an address it asked for that
    /// nobody claimed since is free as of then; but while the master has no link, nothing
    /// is (nothing could answer, nothing was heard) and what was found before is forgotten.
    /// Returns whether anything changed.
    fn conclude(&mut self, now: Instant) -> bool {
        let reprobed = self.reprobe.take_if(|a| now >= a.ends);
        let rounded = self.round.take_if(|a| now >= a.ends);
        if rounded.is_some() {
            self.last_round = Some(now);
        }
        let mut changed = false;
        for asking in reprobed.iter().chain(&rounded) {
            changed |= if is_running(&self.spec.master) {
                self.probes.mark_free(&asking.addresses, asking.started_ms)
            } else {
                self.probes.forget_free()
            };
        }
        changed
    }
}

impl PodWatch {
    /// Asks once for each of the pod's addresses, from its own interface.
    fn ask(&mut self, now: Instant) {
        for ip in &self.addresses {
            let _ = self.socket.probe(self.mac, *ip);
        }
        self.last_probe = Some(now);
    }

    /// Another MAC announced the pod's address, sent from it, or answered for it: a new
    /// conflict is logged and put on file; a known one is confirmed (its file rewritten at
    /// most once a second, whatever a flood of frames does).
    fn claimed(&mut self, key: &str, c: Claim, expiry: Duration, lan: &LanState) {
        let now = now_ms();
        match &mut self.conflict {
            Some(known) if known.mac == c.mac && known.address == c.ip => {
                if now.saturating_sub(known.confirmed_at_ms) < 1000 {
                    return;
                }
                known.confirmed_at_ms = now;
            }
            _ => {
                CONFLICTS_FOUND.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "agent: lan watch: address {} of pod {} ({key}) is claimed on the LAN by {}: another host uses it",
                    c.ip,
                    self.pod,
                    format_mac(&c.mac)
                );
                self.conflict = Some(Conflict::heard(c.ip, c.mac, now, expiry));
            }
        }
        if let Some(conflict) = &self.conflict {
            if let Err(e) = lan.write_conflict(key, conflict) {
                log::warn!("agent: lan watch: cannot record the conflict of {key}: {e}");
            }
        }
    }
}

/// Conflicts the watch has found since the agent started (a new MAC claiming a pod's
/// address), for the agent's metrics.
static CONFLICTS_FOUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn conflicts_found() -> u64 {
    CONFLICTS_FOUND.load(Ordering::Relaxed)
}

/// A test-only fault (`ROS_MACVLAN_TEST_FAULT=panic@lan-watch` in the agent's environment):
/// the process's first watch panics once it probes a network ahead, as a bug would, so that
/// tests see the agent start the watch again (docs/agent.md, "When a duty fails").
fn test_fault() {
    static FIRED: AtomicBool = AtomicBool::new(false);
    if std::env::var("ROS_MACVLAN_TEST_FAULT").is_ok_and(|f| f == "panic@lan-watch")
        && !FIRED.swap(true, Ordering::SeqCst)
    {
        panic!("test fault: panic in the lan watch");
    }
}

/// Whether interface `name` of this namespace is up with a link (IFF_RUNNING).
fn is_running(name: &str) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
        addrs.any(|a| {
            a.interface_name == name && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_RUNNING)
        })
    })
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
