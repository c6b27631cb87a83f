//! What the node agent knows of the LAN, as files in its directory that ADD, CHECK and
//! doctor read without asking it (nothing waits on the agent):
//!
//! - `probes/<identity>.json`: the addresses each network will hand out next, ARP-probed
//!   ahead of time by the agent on the master while the network is busy (`ACTIVE` after its
//!   last ADD), and whether anyone claimed one since. ADD takes an address whose probe is
//!   fresh (`FRESH`) without probing it itself, so duplicate detection costs a burst of pod
//!   starts nothing. The file is named by the network's identity (`ProbeAhead::identity`),
//!   not its name alone, so no second config under the same name reads or overrides it.
//! - `conflicts/<attachment key>.json`: someone else on the LAN claims a pod's address
//!   (announces it, sends from it, answers for it), seen by the agent's watch after ADD. A
//!   conflict counts while someone keeps confirming it (`Conflict::is_current`): heard is not
//!   true, and a spoofer who falls silent stops failing the pod.
//!
//! Both are written whole and renamed into place by the agent (`agent::lan_watch`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::sys::confine::ConfinedPath;
use crate::sys::netlink::format_mac;

/// How old a probe may be for ADD to rely on it. The agent probes each upcoming address
/// every `reprobe_every`, and hears every ARP packet on the master in between: a claim made
/// since the probe is in the file within milliseconds.
pub const FRESH: Duration = Duration::from_secs(5);

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
/// The directories the LAN state keeps beside the agent's socket.
pub const DIRS: &[&str] = &[PROBES, CONFLICTS];

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
}

/// What ADD may conclude from the agent's probes of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Probed with no answer within `FRESH`, and claimed by nobody since.
    Free,
    /// Someone claimed it within `FRESH`.
    Claimed([u8; 6]),
    /// Nothing fresh is known: ADD probes itself.
    Unknown,
}

impl Probes {
    /// The verdict on `ip` for a link on the master with `master_mac`, at `now_ms`.
    pub fn verdict(&self, master_mac: [u8; 6], ip: Ipv4Addr, now_ms: u64) -> Verdict {
        if self.master_mac != master_mac {
            return Verdict::Unknown;
        }
        let Some(p) = self.addresses.get(&ip) else {
            return Verdict::Unknown;
        };
        if let Some(mac) = p.held_here_by {
            return Verdict::Claimed(mac);
        }
        let fresh = |at: u64| at > 0 && now_ms.saturating_sub(at) <= FRESH.as_millis() as u64;
        match p.claimed_by {
            Some(mac) if fresh(p.claimed_at_ms) => Verdict::Claimed(mac),
            _ if fresh(p.free_at_ms) && p.free_at_ms >= p.claimed_at_ms => Verdict::Free,
            _ => Verdict::Unknown,
        }
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

    fn write<T: Serialize>(&self, kind: &str, name: &str, value: &T) -> std::io::Result<()> {
        let dir = self
            .0
            .join(kind)
            .create_dir()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
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
        assert_eq!(p.verdict(mac, ip, now), Verdict::Unknown, "never probed");
        p.addresses.insert(
            ip,
            Probed {
                free_at_ms: now - 1000,
                claimed_by: None,
                claimed_at_ms: 0,
                held_here_by: None,
            },
        );
        assert_eq!(p.verdict(mac, ip, now), Verdict::Free);
        assert_eq!(
            p.verdict([2, 0, 0, 0, 0, 2], ip, now),
            Verdict::Unknown,
            "another master's probes say nothing of this one's LAN"
        );
        assert_eq!(
            p.verdict(mac, ip, now + FRESH.as_millis() as u64),
            Verdict::Unknown,
            "stale"
        );
        let other = [2, 0, 0, 0, 0, 9];
        p.addresses.get_mut(&ip).unwrap().claimed_by = Some(other);
        p.addresses.get_mut(&ip).unwrap().claimed_at_ms = now - 10;
        assert_eq!(p.verdict(mac, ip, now), Verdict::Claimed(other));
        // Held by a pod of this node: claimed however old every probe is.
        let pod = [2, 0, 0, 0, 0, 7];
        let held = p.addresses.get_mut(&ip).unwrap();
        (held.claimed_by, held.free_at_ms, held.held_here_by) = (None, now, Some(pod));
        assert_eq!(
            p.verdict(mac, ip, now + 10 * FRESH.as_millis() as u64),
            Verdict::Claimed(pod)
        );
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
