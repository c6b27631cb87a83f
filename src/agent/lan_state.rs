//! What the node agent knows of the LAN, as files in its directory that ADD, CHECK and
//! doctor read without asking it (nothing waits on the agent):
//!
//! - `probes/<identity>.json`: the addresses each network will hand out next, ARP-probed
//!   by the agent on the master (in rounds while the network is busy, `ACTIVE` after its
//!   last ADD; one address at a time, each about once a re-check period, while it is idle),
//!   and whether anyone claimed one since. ADD takes an address whose probe holds
//!   (`Probes::verdict`) without probing it itself, so duplicate detection costs a burst
//!   of pod starts nothing, after a quiet spell too. The file is named by the network's
//!   identity (`ProbeAhead::identity`), not its name alone, so no second config under the
//!   same name reads or overrides it.
//! - `listening`: held locked by the agent's LAN watch while it hears every ARP packet on
//!   the masters, and naming that watch. A probe holds for `FRESH` on its own, and for as
//!   long as its file says (`Probes::holds_ms`) while the watch that made it still listens:
//!   what it would have heard claim the address since would be in the file.
//! - `conflicts/<attachment key>.json`: someone else on the LAN claims a pod's address
//!   (announces it, sends from it, answers for it), seen by the agent's watch after ADD. A
//!   conflict counts while someone keeps confirming it (`Conflict::is_current`): heard is not
//!   true, and a spoofer who falls silent stops failing the pod.
//!
//! The JSON files are written whole and renamed into place by the agent (`agent::lan_watch`).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg, OFlag};
use serde::{Deserialize, Serialize};

use crate::sys::confine::ConfinedPath;
use crate::sys::netlink::format_mac;

/// How old a probe may be for ADD to rely on it whoever listens: while a network is busy the
/// agent probes each upcoming address every `reprobe_every`, and hears every ARP packet on
/// the master in between (a claim made since the probe is in the file within milliseconds).
pub const FRESH: Duration = Duration::from_secs(5);

/// How long a probe holds while the watch that made it still listens (`Probes::holds_ms`),
/// for a watch that re-probes each idle upcoming address once every `recheck` (±20 %): the
/// slowest re-probe, with room for one answer's wait. RFC 5227's model, as for the pods'
/// own addresses: a claim is heard, and the rare probe finds a host that stays silent but
/// for answering.
pub fn holds_for(recheck: Duration) -> Duration {
    recheck.mul_f64(1.5).max(FRESH)
}

/// How often, while a network is busy, the agent probes its upcoming addresses again: as
/// seldom as keeps them fresh (a round's verdict dates from its start, and the round takes
/// `probes` × `intervalMs`), with half a second to spare; with the default 100 ms round,
/// every 4.4 s, so two rounds cover the busy spell.
pub fn reprobe_every(detection: &crate::node::duplicate::Detection) -> Duration {
    FRESH
        .saturating_sub(detection.cost() + Duration::from_millis(500))
        .max(Duration::from_secs(1))
}
/// How long after a network's last ADD its upcoming addresses are probed ahead: a burst of
/// pod starts finds them fresh, and an idle node sends nothing for it (every ARP request is a
/// broadcast every host of the segment takes).
pub const ACTIVE: Duration = Duration::from_secs(8);
/// How often, by default, each pod's address is asked for once on the LAN, with ±20 % jitter
/// so that nodes do not ask in step: finds a host that took the address and stays silent
/// but for answering (RFC 5227's ongoing detection is otherwise all listening).
pub const RECHECK: Duration = Duration::from_secs(300);
/// How long a conflict counts after it was last confirmed (the other MAC announced the
/// address, sent from it, or answered the agent's probe for it).
pub const CONFLICT_EXPIRY: Duration = Duration::from_secs(60);
/// How often, while a conflict is on file, the agent asks whether the other MAC still
/// answers for the address.
pub const VERIFY_EVERY: Duration = Duration::from_secs(5);

const PROBES: &str = "probes";
const CONFLICTS: &str = "conflicts";
const LISTENING: &str = "listening";
/// The directories the LAN state keeps beside the agent's socket.
pub const DIRS: &[&str] = &[PROBES, CONFLICTS];
/// The files it keeps there.
pub const FILES: &[&str] = &[LISTENING];

/// Milliseconds since the epoch: the files' clock (wall time, as two processes share it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the agent found of one upcoming address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probed {
    /// When it was last probed with no answer (0: never).
    pub free_at_ms: u64,
    /// Who claimed it, when someone did (an answer to a probe, or any ARP packet since).
    pub claimed_by: Option<[u8; 6]>,
    pub claimed_at_ms: u64,
    /// The MAC of a pod of this node that holds it (any network, any store), as the agent's
    /// records say: a fact, not a claim heard, so it does not age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_here_by: Option<[u8; 6]>,
}

/// One network's upcoming addresses, probed on the master whose MAC it names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    pub master_mac: [u8; 6],
    pub addresses: BTreeMap<Ipv4Addr, Probed>,
    /// The watch that probed them and listens since (`Listening::id`; 0: none named, as in
    /// the files of earlier agents).
    #[serde(default)]
    pub listener: u64,
    /// How long its probes hold while that watch still listens (`holds_for`).
    #[serde(default)]
    pub holds_ms: u64,
}

/// What ADD may conclude from the agent's probes of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Probed with no answer lately (within `FRESH`, or `holds_ms` while its listener
    /// listens), and claimed by nobody since.
    Free,
    /// Someone claimed it since it was last probed free, that lately.
    Claimed([u8; 6]),
    /// Nothing fresh is known: ADD probes itself.
    Unknown,
}

impl Probes {
    /// The verdict on `ip` for a link on the master with `master_mac`, at `now_ms`, when
    /// `listening` is the watch that listens now (`LanState::listener`).
    pub fn verdict(
        &self,
        master_mac: [u8; 6],
        ip: Ipv4Addr,
        now_ms: u64,
        listening: Option<u64>,
    ) -> Verdict {
        if self.master_mac != master_mac {
            return Verdict::Unknown;
        }
        let Some(p) = self.addresses.get(&ip) else {
            return Verdict::Unknown;
        };
        if let Some(mac) = p.held_here_by {
            return Verdict::Claimed(mac);
        }
        // Heard all along by the watch that probed: what it heard since is in the file. A
        // watch that stopped (the agent restarted, say) may have missed a claim meanwhile.
        let heard_since = self.listener != 0 && listening == Some(self.listener);
        let holds = if heard_since {
            self.holds_ms.max(FRESH.as_millis() as u64)
        } else {
            FRESH.as_millis() as u64
        };
        // A time ahead of the clock (stepped back since) vouches for nothing.
        let fresh = |at: u64| at > 0 && at <= now_ms && now_ms - at <= holds;
        // A probe that went unanswered after the last claim heard outweighs it (the agent
        // dates a probe free only when nothing claimed the address while it waited).
        match p.claimed_by {
            _ if fresh(p.free_at_ms) && p.free_at_ms > p.claimed_at_ms => Verdict::Free,
            Some(mac) if fresh(p.claimed_at_ms) => Verdict::Claimed(mac),
            _ => Verdict::Unknown,
        }
    }
    /// Marks `addresses` (those probed from `started_ms` on) free as of then, each unless
    /// someone claimed it since; returns whether anything changed. An address that became
    /// upcoming after the probes went out is not among them: nothing asked for it.
    pub fn mark_free(&mut self, addresses: &[Ipv4Addr], started_ms: u64) -> bool {
        let mut changed = false;
        for ip in addresses {
            if let Some(p) = self.addresses.get_mut(ip) {
                if p.claimed_at_ms < started_ms && p.free_at_ms != started_ms {
                    p.free_at_ms = started_ms;
                    changed = true;
                }
            }
        }
        changed
    }

    /// Forgets every probe that found an address free (what the agent may not have heard
    /// since: its master lost its link, or the kernel dropped packets); returns whether
    /// anything changed. Claims stay.
    pub fn forget_free(&mut self) -> bool {
        let mut changed = false;
        for p in self.addresses.values_mut().filter(|p| p.free_at_ms != 0) {
            p.free_at_ms = 0;
            changed = true;
        }
        changed
    }
}

/// Someone else claims a pod's address on the LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    /// When it was first heard.
    pub at_ms: u64,
    /// When the other MAC last claimed the address (announced it, sent from it, answered
    /// for it); a file without it counts from `at_ms`.
    #[serde(default)]
    pub confirmed_at_ms: u64,
    /// How long it counts after that, as the agent that wrote it was told.
    #[serde(default = "default_expiry_ms")]
    pub expiry_ms: u64,
}

fn default_expiry_ms() -> u64 {
    CONFLICT_EXPIRY.as_millis() as u64
}

impl Conflict {
    /// A conflict heard at `now_ms`, counting for `expiry` after each confirmation.
    pub fn heard(address: Ipv4Addr, mac: [u8; 6], now_ms: u64, expiry: Duration) -> Conflict {
        Conflict {
            address,
            mac,
            at_ms: now_ms,
            confirmed_at_ms: now_ms,
            expiry_ms: expiry.as_millis() as u64,
        }
    }

    fn last_confirmed_ms(&self) -> u64 {
        self.confirmed_at_ms.max(self.at_ms)
    }

    /// Whether it still counts at `now_ms`: confirmed within its expiry. CHECK and doctor
    /// read the file without the agent, so an agent that stopped confirming (or died) cannot
    /// keep a pod failing.
    pub fn is_current(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_confirmed_ms()) <= self.expiry_ms
    }

    /// What CHECK and doctor say of it.
    pub fn describe(&self, ifname: &str) -> String {
        let now = now_ms();
        format!(
            "address {} of {ifname} is also claimed on the LAN by MAC {} (the node agent first heard it {} s ago, last confirmed {} s ago): another host uses it. Remove it from that host, or keep the range clear of static and DHCP addresses; then delete and re-create the pod",
            self.address,
            format_mac(&self.mac),
            now.saturating_sub(self.at_ms) / 1000,
            now.saturating_sub(self.last_confirmed_ms()) / 1000
        )
    }
}

/// The agent's LAN watch, listening: held while it hears every ARP packet on the masters.
#[derive(Debug)]
pub struct Listening {
    _lock: Flock<File>,
    pub id: u64,
}

/// The agent's directory (where its socket lives), as ADD and the agent both name it.
#[derive(Debug, Clone)]
pub struct LanState(ConfinedPath);

impl LanState {
    pub fn in_dir(agent_dir: ConfinedPath) -> LanState {
        LanState(agent_dir)
    }

    /// Beside a socket the operator named (the agent's `--socket`, doctor's).
    pub fn beside(agent_socket: &std::path::Path) -> LanState {
        LanState(crate::node::policy::agent_dir(agent_socket))
    }

    /// The probes of the network with `identity` (`ProbeAhead::identity`); empty when there
    /// are none (or they cannot be read).
    pub fn probes(&self, identity: &str) -> Probes {
        self.read(PROBES, identity).unwrap_or_default()
    }

    pub fn write_probes(&self, identity: &str, probes: &Probes) -> std::io::Result<()> {
        self.write(PROBES, identity, probes)
    }

    /// Removes the probes of a network no longer probed ahead: nobody hears its master
    /// for it any more, so they must not hold for its next ADD.
    pub fn remove_probes(&self, identity: &str) {
        if let Ok(Some(dir)) = self.0.join(PROBES).open_dir() {
            let _ = dir.remove(&file(identity));
        }
    }

    /// Marks the agent's LAN watch as listening, for as long as the value lives (its lock
    /// goes with its descriptor, when the watch ends or the agent dies). `id` names it in
    /// the probes it writes; another watch listening here already is an error.
    pub fn listen(&self, id: u64) -> std::io::Result<Listening> {
        let dir = self
            .0
            .create_dir()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut file = dir.open(OsStr::new(LISTENING), OFlag::O_RDWR | OFlag::O_CREAT)?;
        // An ADD asking who listens holds a shared lock for microseconds: a few tries.
        let mut tries = 0;
        let mut lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((again, nix::errno::Errno::EWOULDBLOCK)) if tries < 5 => {
                    file = again;
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((_, e)) => {
                    return Err(std::io::Error::other(format!(
                        "another agent listens on this directory ({e})"
                    )))
                }
            }
        };
        lock.set_len(0)?;
        std::io::Write::write_all(&mut *lock, id.to_string().as_bytes())?;
        Ok(Listening { _lock: lock, id })
    }

    /// The watch that listens now, if one does: its file is locked (a lock this process
    /// cannot share), and names it.
    pub fn listener(&self) -> Option<u64> {
        let dir = self.0.open_dir().ok()??;
        let file = dir.open(OsStr::new(LISTENING), OFlag::O_RDONLY).ok()?;
        let mut file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // Nobody holds it: nobody listens (dropping the shared lock releases it).
            Ok(_) => return None,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
            Err(_) => return None,
        };
        let mut id = String::new();
        std::io::Read::read_to_string(&mut file, &mut id).ok()?;
        id.trim().parse().ok().filter(|id| *id != 0)
    }

    /// The conflict reported for an attachment, if one is on file and still counts.
    pub fn conflict(&self, key: &str) -> Option<Conflict> {
        self.conflict_on_file(key)
            .filter(|c| c.is_current(now_ms()))
    }

    /// The conflict on file for an attachment, current or not.
    pub fn conflict_on_file(&self, key: &str) -> Option<Conflict> {
        self.read(CONFLICTS, key)
    }

    pub fn write_conflict(&self, key: &str, c: &Conflict) -> std::io::Result<()> {
        self.write(CONFLICTS, key, c)
    }

    pub fn remove_conflict(&self, key: &str) {
        if let Ok(Some(dir)) = self.0.join(CONFLICTS).open_dir() {
            let _ = dir.remove(&file(key));
        }
    }

    /// The attachments with a conflict on file.
    pub fn conflicted(&self) -> Vec<String> {
        let Ok(Some(dir)) = self.0.join(CONFLICTS).open_dir() else {
            return Vec::new();
        };
        dir.entries()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(n, _)| n.to_str()?.strip_suffix(".json").map(str::to_owned))
            .collect()
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, kind: &str, name: &str) -> Option<T> {
        let dir = self.0.join(kind).open_dir().ok()??;
        serde_json::from_slice(&dir.read(&file(name)).ok()?).ok()
    }

    /// Makes the directories (`DIRS`), when the agent's watch starts. Writes go only into
    /// directories that exist: after `ros-macvlan uninstall` removed them, an agent still
    /// running (until its DaemonSet is deleted) leaves nothing behind.
    pub fn prepare(&self) -> std::io::Result<()> {
        for kind in DIRS {
            self.0
                .join(kind)
                .create_dir()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    fn write<T: Serialize>(&self, kind: &str, name: &str, value: &T) -> std::io::Result<()> {
        let dir = self
            .0
            .join(kind)
            .open_dir()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{kind}/ is gone (ros-macvlan uninstall removed it)"),
                )
            })?;
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        dir.write_whole(&file(name), &bytes)
    }
}

fn file(name: &str) -> OsString {
    OsString::from(format!("{name}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_probe_on_the_same_master_is_relied_on() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(198, 51, 100, 161);
        let now = 1_000_000;
        let mut p = Probes {
            master_mac: mac,
            ..Probes::default()
        };
        assert_eq!(
            p.verdict(mac, ip, now, None),
            Verdict::Unknown,
            "never probed"
        );
        p.addresses.insert(
            ip,
            Probed {
                free_at_ms: now - 1000,
                claimed_by: None,
                claimed_at_ms: 0,
                held_here_by: None,
            },
        );
        assert_eq!(p.verdict(mac, ip, now, None), Verdict::Free);
        assert_eq!(
            p.verdict([2, 0, 0, 0, 0, 2], ip, now, None),
            Verdict::Unknown,
            "another master's probes say nothing of this one's LAN"
        );
        assert_eq!(
            p.verdict(mac, ip, now + FRESH.as_millis() as u64, None),
            Verdict::Unknown,
            "stale"
        );
        let other = [2, 0, 0, 0, 0, 9];
        p.addresses.get_mut(&ip).unwrap().claimed_by = Some(other);
        p.addresses.get_mut(&ip).unwrap().claimed_at_ms = now - 10;
        assert_eq!(p.verdict(mac, ip, now, None), Verdict::Claimed(other));
        // Held by a pod of this node: claimed however old every probe is.
        let pod = [2, 0, 0, 0, 0, 7];
        let held = p.addresses.get_mut(&ip).unwrap();
        (held.claimed_by, held.free_at_ms, held.held_here_by) = (None, now, Some(pod));
        assert_eq!(
            p.verdict(mac, ip, now + 10 * FRESH.as_millis() as u64, None),
            Verdict::Claimed(pod)
        );
    }

    #[test]
    fn a_probe_holds_longer_only_while_the_watch_that_made_it_listens() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(198, 51, 100, 161);
        let probed = 1_000_000;
        let holds = holds_for(RECHECK).as_millis() as u64;
        let mut p = Probes {
            master_mac: mac,
            listener: 7,
            holds_ms: holds,
            ..Probes::default()
        };
        p.addresses.insert(
            ip,
            Probed {
                free_at_ms: probed,
                claimed_by: None,
                claimed_at_ms: 0,
                held_here_by: None,
            },
        );
        let later = probed + 60_000;
        assert_eq!(p.verdict(mac, ip, later, Some(7)), Verdict::Free);
        assert_eq!(
            p.verdict(mac, ip, later, Some(8)),
            Verdict::Unknown,
            "another watch listens now: this one may have missed a claim while none did"
        );
        assert_eq!(p.verdict(mac, ip, later, None), Verdict::Unknown);
        assert_eq!(
            p.verdict(mac, ip, probed + holds + 1, Some(7)),
            Verdict::Unknown,
            "past what the file says it holds"
        );
        // A claim heard after the probe stands until a later probe finds it free again.
        let other = [2, 0, 0, 0, 0, 9];
        (
            p.addresses.get_mut(&ip).unwrap().claimed_by,
            p.addresses.get_mut(&ip).unwrap().claimed_at_ms,
        ) = (Some(other), probed + 1);
        assert_eq!(p.verdict(mac, ip, later, Some(7)), Verdict::Claimed(other));
        p.addresses.get_mut(&ip).unwrap().free_at_ms = probed + 2;
        assert_eq!(p.verdict(mac, ip, later, Some(7)), Verdict::Free);
        // A file of an earlier agent names no watch: its probes hold for FRESH only.
        p.listener = 0;
        assert_eq!(p.verdict(mac, ip, later, Some(0)), Verdict::Unknown);
    }

    #[test]
    fn only_the_addresses_asked_for_and_unclaimed_since_are_found_free() {
        let (a, b, c) = (
            Ipv4Addr::new(198, 51, 100, 161),
            Ipv4Addr::new(198, 51, 100, 162),
            Ipv4Addr::new(198, 51, 100, 163),
        );
        let never = Probed {
            free_at_ms: 0,
            claimed_by: None,
            claimed_at_ms: 0,
            held_here_by: None,
        };
        let mut p = Probes::default();
        for ip in [a, b, c] {
            p.addresses.insert(ip, never);
        }
        // b was claimed after the probes went out; c became upcoming after they went out.
        p.addresses.get_mut(&b).unwrap().claimed_at_ms = 1_500;
        assert!(p.mark_free(&[a, b], 1_000));
        assert_eq!(p.addresses[&a].free_at_ms, 1_000);
        assert_eq!(
            p.addresses[&b].free_at_ms, 0,
            "claimed while its probe waited"
        );
        assert_eq!(p.addresses[&c].free_at_ms, 0, "never asked for");
        assert!(!p.mark_free(&[a], 1_000), "nothing new");
        // A lost link or dropped packets: nothing found free stands; claims do.
        assert!(p.forget_free());
        assert!(p.addresses.values().all(|p| p.free_at_ms == 0));
        assert_eq!(p.addresses[&b].claimed_at_ms, 1_500);
        assert!(!p.forget_free());
    }

    #[test]
    fn a_probe_dated_ahead_of_the_clock_vouches_for_nothing() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(198, 51, 100, 161);
        let mut p = Probes {
            master_mac: mac,
            ..Probes::default()
        };
        p.addresses.insert(
            ip,
            Probed {
                free_at_ms: 2_000_000,
                claimed_by: None,
                claimed_at_ms: 0,
                held_here_by: None,
            },
        );
        // The clock was stepped back by a minute since the probe.
        assert_eq!(
            p.verdict(mac, ip, 2_000_000 - 60_000, None),
            Verdict::Unknown
        );
        assert_eq!(p.verdict(mac, ip, 2_000_000, None), Verdict::Free);
    }

    #[test]
    fn state_is_written_only_into_directories_the_watch_made() {
        let dir = std::env::temp_dir().join(format!("ros-macvlan-prepare-{}", std::process::id()));
        let lan = LanState::in_dir(ConfinedPath::trusted("test", &dir, 0o700));
        let probes = Probes::default();
        assert!(
            lan.write_probes("net.1", &probes).is_err(),
            "before prepare"
        );
        lan.prepare().unwrap();
        lan.write_probes("net.1", &probes).unwrap();
        assert_eq!(lan.probes("net.1"), probes);
        // Removed by `ros-macvlan uninstall` while the agent still runs: nothing comes back.
        std::fs::remove_dir_all(dir.join(PROBES)).unwrap();
        assert!(lan.write_probes("net.1", &probes).is_err());
        assert!(!dir.join(PROBES).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_listener_is_named_while_its_lock_is_held_and_not_after() {
        let dir =
            std::env::temp_dir().join(format!("ros-macvlan-listening-{}", std::process::id()));
        let lan = LanState::in_dir(ConfinedPath::trusted("test", &dir, 0o700));
        assert_eq!(lan.listener(), None, "no file: nobody listens");
        let listening = lan.listen(42).unwrap();
        assert_eq!(listening.id, 42);
        assert_eq!(lan.listener(), Some(42));
        assert!(
            lan.listen(43).is_err(),
            "one watch listens on a directory at a time"
        );
        drop(listening);
        assert_eq!(
            lan.listener(),
            None,
            "the file stays, unlocked: nobody listens"
        );
        let again = lan.listen(44).unwrap();
        assert_eq!(lan.listener(), Some(44));
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_conflict_counts_while_confirmed_and_expires_after() {
        let ip = Ipv4Addr::new(198, 51, 100, 161);
        let mut c = Conflict::heard(ip, [2, 0, 0, 0, 0, 9], 1_000_000, CONFLICT_EXPIRY);
        let expiry = CONFLICT_EXPIRY.as_millis() as u64;
        assert!(c.is_current(1_000_000 + expiry));
        assert!(
            !c.is_current(1_000_001 + expiry),
            "unconfirmed past its expiry"
        );
        c.confirmed_at_ms = 1_000_000 + expiry;
        assert!(
            c.is_current(1_000_000 + 2 * expiry),
            "a confirmation renews it"
        );
        // A file an older agent wrote (no confirmation, no expiry) counts from when it was heard.
        let old: Conflict = serde_json::from_str(
            r#"{"address":"198.51.100.161","mac":[2,0,0,0,0,9],"atMs":1000000}"#,
        )
        .unwrap();
        assert!(old.is_current(1_000_000 + expiry) && !old.is_current(1_000_001 + expiry));
    }
}
