//! `ros-macvlan uninstall`: takes ros-macvlan off a node, but never while a pod is attached.
//! An attached pod's DEL runs the plugin from the CNI bin dir and reads its records: without
//! them the runtime retries that DEL for ever and the pod's address and macvlan leak. So
//! uninstall first lists every attachment the node still knows of (the agent's membership
//! and Zenoh relay records, host-local's claim records in each data dir, the host access the
//! agent keeps) and refuses, naming each, while there is one; otherwise it removes the
//! binary, the agent's records and state, and ros-macvlan's record directories in the
//! host-local stores (the stores themselves, shared with the reference host-local, stay).
//!
//! A pod whose ADD began before the binary was removed could still write its records: the
//! binary is moved aside first, the attachments listed again, and the binary put back (and
//! the uninstall refused) when one appeared.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::agent::records::{MembershipRecord, RecordDir, RelayRecord, Stored};
use crate::ipam::store::{ClaimRecord, RECORD_DIR};
use crate::node::install::BINARY_NAME;

/// What `ros-macvlan uninstall` was asked to take off.
pub struct Options {
    /// The node's CNI bin dir the plugin was installed into.
    pub cni_bin_dir: PathBuf,
    /// The node agent's socket: its records and state live beside it.
    pub agent_socket: PathBuf,
    /// host-local data dirs the networks use (their claims are attachments).
    pub data_dirs: Vec<PathBuf>,
    /// Where the node policy was mirrored (`install --policy-dir`), to remove it too.
    pub policy_dir: Option<PathBuf>,
}

/// One attachment the node still holds, as its records name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub network: String,
    pub netns: String,
    /// `namespace/name`, where a record names the pod.
    pub pod: Option<String>,
    /// What holds it: a membership record, a Zenoh relay, addresses claimed.
    pub held_by: Vec<String>,
}

/// What keeps the node from being uninstalled.
#[derive(Debug, Default)]
pub struct Blockers {
    pub attachments: Vec<Attachment>,
    /// Files and state that cannot be read or are not attachments but must go first (an
    /// unreadable record, host access the agent keeps): each with what to do.
    pub other: Vec<String>,
}

impl Blockers {
    pub fn is_empty(&self) -> bool {
        self.attachments.is_empty() && self.other.is_empty()
    }

    /// The lines an operator reads: one per attachment, then the rest.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .attachments
            .iter()
            .map(|a| {
                // A pod whose netns is gone lost its DEL: the agent drops such records
                // within a sweep and gc releases such claims, and they then no longer
                // stop the uninstall.
                let gone = match crate::sys::netns::presence(&a.netns, None, None) {
                    crate::sys::netns::Presence::Gone(why) => format!(
                        " [{why}: a lost DEL; a running agent drops its records within 2 s, `ros-macvlan gc` releases its claims]"
                    ),
                    _ => String::new(),
                };
                format!(
                    "  pod {}, container {}, netns {}, {} of network {} ({}){gone}",
                    a.pod.as_deref().unwrap_or("(not recorded)"),
                    a.container_id,
                    a.netns,
                    a.ifname,
                    a.network,
                    a.held_by.join(", ")
                )
            })
            .collect();
        lines.extend(self.other.iter().map(|o| format!("  {o}")));
        lines
    }
}

/// Every attachment and blocker the node's records show. A directory that exists but cannot
/// be read is an error: a listing that fails is not an empty one.
pub fn blockers(opts: &Options) -> io::Result<Blockers> {
    let mut found: BTreeMap<(String, String, String), Attachment> = BTreeMap::new();
    let mut other = Vec::new();
    let mut note =
        |network: &str, id: &str, ifname: &str, netns: &str, pod: Option<String>, what: String| {
            let a = found
                .entry((id.to_owned(), ifname.to_owned(), network.to_owned()))
                .or_insert_with(|| Attachment {
                    container_id: id.to_owned(),
                    ifname: ifname.to_owned(),
                    network: network.to_owned(),
                    netns: netns.to_owned(),
                    pod: None,
                    held_by: Vec::new(),
                });
            if a.pod.is_none() {
                a.pod = pod;
            }
            a.held_by.push(what);
        };

    // The agent's records: memberships, and Zenoh relays (a membership record inside).
    type Parse = fn(&[u8]) -> serde_json::Result<MembershipRecord>;
    let agent_records: [(PathBuf, &str, Parse); 2] = [
        (memberships(opts), "membership record", |b| {
            serde_json::from_slice(b)
        }),
        (relays(opts), "Zenoh relay", |b| {
            serde_json::from_slice::<RelayRecord>(b).map(|r| r.attachment)
        }),
    ];
    for (dir, what, parse) in agent_records {
        for (path, bytes) in record_files(&dir)? {
            let record = parse(&bytes);
            match record {
                Ok(r) => note(
                    &r.network,
                    &r.container_id,
                    &r.ifname,
                    &r.netns,
                    r.lan.pod.clone(),
                    what.into(),
                ),
                Err(e) => other.push(unreadable(&path, e)),
            }
        }
    }
    for data_dir in &opts.data_dirs {
        for (network, records) in claim_record_dirs(data_dir)? {
            for (path, bytes) in record_files(&records)? {
                match serde_json::from_slice::<ClaimRecord>(&bytes) {
                    Ok(r) => {
                        let ips: Vec<String> = r.ips.iter().map(|ip| ip.to_string()).collect();
                        let pod = r.pod_namespace.as_ref().zip(r.pod_name.as_ref());
                        note(
                            &network,
                            &r.container_id,
                            &r.ifname,
                            &r.netns,
                            pod.map(|(ns, name)| format!("{ns}/{name}")),
                            format!(
                                "host-local claim {} in {}",
                                ips.join(" "),
                                data_dir.display()
                            ),
                        )
                    }
                    Err(e) => other.push(unreadable(&path, e)),
                }
            }
        }
    }
    let kept = host_access_kept(&agent_dir(opts))?;
    if !kept.is_empty() {
        other.push(format!(
            "host access kept by the node agent on {}: take the hostAccess entries out of the ros-macvlan-policy ConfigMap and let the agent remove the shims (or `ros-macvlan host-access --master MASTER --remove`) first",
            kept.join(", ")
        ));
    }
    Ok(Blockers {
        attachments: found.into_values().collect(),
        other,
    })
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> String {
    format!(
        "{} cannot be read as a record ({e}): look at it, and remove it if no pod needs it",
        path.display()
    )
}

fn agent_dir(opts: &Options) -> PathBuf {
    crate::node::policy::agent_dir(&opts.agent_socket).path()
}

fn memberships(opts: &Options) -> PathBuf {
    RecordDir::<MembershipRecord>::kept_beside(&opts.agent_socket).path()
}

fn relays(opts: &Options) -> PathBuf {
    RecordDir::<RelayRecord>::kept_beside(&opts.agent_socket).path()
}

/// The record directories the agent keeps beside its socket, and its LAN state's.
fn agent_state_dirs(opts: &Options) -> Vec<PathBuf> {
    let dir = agent_dir(opts);
    [MembershipRecord::DIR, RelayRecord::DIR]
        .into_iter()
        .chain(crate::agent::lan_state::DIRS.iter().copied())
        .map(|d| dir.join(d))
        .collect()
}

/// The files of a record directory (none when it does not exist), with their contents;
/// a writer's temporary file (`.NAME.tmp-PID`) is not a record.
fn record_files(dir: &Path) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(at(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| !n.starts_with('.')) {
            let bytes = fs::read(&path).map_err(|e| at(&path, e))?;
            files.push((path, bytes));
        }
    }
    files.sort();
    Ok(files)
}

/// ros-macvlan's claim record directory in each network's store under `data_dir`, by
/// network name. Stores without one are other plugins' (the reference host-local's).
fn claim_record_dirs(data_dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(at(data_dir, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        let records = entry.path().join(RECORD_DIR);
        if entry.file_type()?.is_dir() && records.is_dir() {
            dirs.push((entry.file_name().to_string_lossy().into_owned(), records));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The masters the agent keeps host access on, as its state file says.
fn host_access_kept(agent_dir: &Path) -> io::Result<Vec<String>> {
    let path = agent_dir.join(crate::agent::host_keeper::STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(at(&path, e)),
    };
    let specs: Vec<serde_json::Value> = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(specs
        .iter()
        .map(|s| s["master"].as_str().unwrap_or("?").to_owned())
        .collect())
}

/// What uninstall did, or why it refused.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing is attached: what was removed (nothing when nothing was left), and what
    /// could not be, with why (every removal is tried).
    Removed {
        removed: Vec<String>,
        failed: Vec<String>,
    },
    /// Attachments remain: nothing was removed.
    Refused(Blockers),
}

/// Lists the attachments; with none, removes what ros-macvlan left on the node. An error
/// is one met before anything was removed.
pub fn uninstall(opts: &Options) -> io::Result<Outcome> {
    let found = blockers(opts)?;
    if !found.is_empty() {
        return Ok(Outcome::Refused(found));
    }
    // Moved aside, not deleted: an ADD that began before could still write its records.
    let binary = opts.cni_bin_dir.join(BINARY_NAME);
    let aside = opts
        .cni_bin_dir
        .join(format!(".{BINARY_NAME}.uninstall-{}", std::process::id()));
    let moved = match fs::rename(&binary, &aside) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(at(&binary, e)),
    };
    let again = blockers(opts);
    if !matches!(&again, Ok(b) if b.is_empty()) {
        if moved {
            fs::rename(&aside, &binary).map_err(|e| at(&binary, e))?;
        }
        return again.map(Outcome::Refused);
    }

    let mut done = Removal::default();
    if moved {
        done.note(&binary, fs::remove_file(&aside));
    }
    for dir in agent_state_dirs(opts) {
        done.note(&dir, fs::remove_dir_all(&dir));
    }
    let agent_dir = agent_dir(opts);
    for file in [crate::agent::host_keeper::STATE_FILE]
        .iter()
        .chain(crate::agent::lan_state::FILES)
    {
        let state = agent_dir.join(file);
        done.note(&state, fs::remove_file(&state));
    }
    done.note(&opts.agent_socket, fs::remove_file(&opts.agent_socket));
    // The directory itself only when empty, and not when it is a mount point (the
    // DaemonSet's hostPath, whose parent is the container's read-only root): the kernel
    // refuses those (ENOTEMPTY, EBUSY, EROFS), which leaves the directory as it is.
    match fs::remove_dir(&agent_dir) {
        Err(e)
            if e.raw_os_error().is_some_and(|n| {
                [nix::libc::EBUSY, nix::libc::ENOTEMPTY, nix::libc::EROFS].contains(&n)
            }) => {}
        result => done.note(&agent_dir, result),
    }
    for data_dir in &opts.data_dirs {
        match claim_record_dirs(data_dir) {
            Ok(dirs) => {
                for (_, records) in dirs {
                    done.note(&records, fs::remove_dir(&records));
                }
            }
            Err(e) => done.failed.push(e.to_string()),
        }
    }
    if let Some(dir) = &opts.policy_dir {
        let policy = crate::node::install::mirrored_policy(dir);
        done.note(&policy, fs::remove_file(&policy));
    }
    Ok(Outcome::Removed {
        removed: done.removed,
        failed: done.failed,
    })
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// What the removals did: a path already gone is neither removed nor failed.
#[derive(Default)]
struct Removal {
    removed: Vec<String>,
    failed: Vec<String>,
}

impl Removal {
    fn note(&mut self, path: &Path, result: io::Result<()>) {
        match result {
            Ok(()) => self.removed.push(path.display().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.failed.push(at(path, e).to_string()),
        }
    }
}

/// `ros-macvlan uninstall`: prints what it removed, or refuses (exit 1) naming what is
/// still attached.
pub fn main(opts: &Options) -> i32 {
    match uninstall(opts) {
        Ok(Outcome::Removed { removed, failed }) => {
            if removed.is_empty() && failed.is_empty() {
                println!("uninstall: nothing of ros-macvlan is left on this node");
            }
            for r in &removed {
                println!("removed {r}");
            }
            for f in &failed {
                log::error!("uninstall: cannot remove {f}");
            }
            i32::from(!failed.is_empty())
        }
        Ok(Outcome::Refused(b)) => {
            eprintln!(
                "uninstall refused: {} attachment(s) still on this node, whose DEL needs the plugin and its records; delete these pods first (nothing was removed):",
                b.attachments.len()
            );
            for line in b.lines() {
                eprintln!("{line}");
            }
            1
        }
        Err(e) => {
            log::error!("uninstall: cannot tell what is attached, nothing was removed: {e}");
            1
        }
    }
}
