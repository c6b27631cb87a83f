//! `ros-macvlan agent`: the node agent, the DaemonSet's one long-running process. It keeps
//! what must outlive a plugin call:
//! - the sockets that hold each attachment's group memberships (see `membership`): handed
//!   over by ADD, let go on DEL, re-created from the records after the agent's own restart
//!   (and for attachments added while it was not running), and let go when the pod's netns
//!   path is gone or names another namespace, since a socket keeps its namespace (and the
//!   macvlan in it, which would still answer ARP for a released address) alive;
//! - optionally the DaemonSet's other duties: the plugin copied into the CNI bin dir at
//!   start, the node policy mirrored from its ConfigMap, and the periodic `gc`;
//! - host access (`host_keeper`): the shims in the node configuration's `hostAccess` list,
//!   put back on every sweep when a shim, its address or a route is gone.
//!
//! One task on the process's current-thread runtime (sys::runtime) owns all state, so
//! nothing is shared or locked; every request is small and answered within the plugin's
//! bounded wait. Host access, the one netlink work, runs on the runtime's blocking pool.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::plugin::membership::{
    self, MembershipRecord, RecordDir, Reply, Request, AGENT_WAIT, MAX_MESSAGE,
};

/// How often the agent compares what it holds with the records and the pods' namespaces.
/// A lost DEL is noticed within this (the issue asks for 10 s at most).
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The most memberships one agent holds (a socket each): a node runs far fewer pods, and
/// the bound keeps a flood of ADDs (or records) from exhausting the agent's descriptors.
pub const MAX_HELD: usize = 4096;

/// How often the node policy is mirrored from the ConfigMap's mount.
const POLICY_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// Copy the plugin into this CNI bin dir at start.
    pub cni_bin_dir: Option<PathBuf>,
    /// Mirror this policy file (a ConfigMap mount) into this directory.
    pub policy: Option<(PathBuf, PathBuf)>,
    /// Release orphaned host-local claims under this data dir, this often.
    pub gc: Option<(PathBuf, Duration)>,
    /// Zenoh relay (issue 24): the node's Zenoh routers for pods, one per relay.
    pub zenoh_routers: crate::tools::relay::RouterPool,
}

pub fn run(opts: Options) -> i32 {
    let runtime = match crate::sys::runtime::process() {
        Ok(r) => r,
        Err(e) => {
            log::error!("agent: cannot start: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(opts)) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("agent: {e}");
            1
        }
    }
}

async fn serve(opts: Options) -> io::Result<()> {
    if let Some(dir) = &opts.cni_bin_dir {
        install_plugin(dir)?;
    }
    let listener = listen(&opts.socket)?;
    log::info!("agent: listening on {}", opts.socket.display());
    let mut memberships = Memberships::new(RecordDir::beside(&opts.socket));
    memberships.reconcile();
    crate::tools::lan_watch::spawn(
        RecordDir::beside(&opts.socket),
        crate::plugin::lan_state::LanState::beside(&opts.socket),
    )?;
    // Zenoh relay (issue 24): the relays follow their records like the memberships.
    let mut relays = crate::tools::relay::Relays::new(&opts.socket, opts.zenoh_routers);
    relays.reconcile();
    let node_config = match &opts.policy {
        Some((_, dir)) => crate::tools::install::mirrored_policy(dir),
        None => crate::node::policy::policy_file(),
    };
    let agent_dir = opts.socket.parent().unwrap_or(Path::new("/"));
    let mut host = crate::node::host_keeper::Keeper::new(node_config, agent_dir);

    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut policy = opts
        .policy
        .as_ref()
        .map(|_| tokio::time::interval(POLICY_EVERY));
    let mut gc = opts
        .gc
        .as_ref()
        .map(|(_, every)| tokio::time::interval(*every));
    let mut policy_said = None;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if tokio::time::timeout(AGENT_WAIT, answer(stream, &mut memberships, &mut relays)).await.is_err() {
                        log::warn!("agent: a client sent no complete request in time");
                    }
                }
                Err(e) => log::warn!("agent: accept: {e}"),
            },
            _ = sweep.tick() => {
                memberships.reconcile();
                relays.reconcile();
                host = reconcile_host(host).await;
            }
            _ = tick(&mut policy) => {
                if let Some((source, dir)) = &opts.policy {
                    policy_said = mirror_policy(source, dir, policy_said);
                    host = reconcile_host(host).await;
                }
            }
            _ = tick(&mut gc) => {
                if let Some((data_dir, _)) = &opts.gc {
                    match crate::tools::gc::once(data_dir) {
                        Ok(report) => report.iter().for_each(|l| log::info!("{l}")),
                        Err(e) => log::warn!("{e}"),
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // The memberships end with this process; the records stay, so the next agent re-creates
    // them. The socket file goes, so plugins see at once that no agent listens.
    let _ = std::fs::remove_file(&opts.socket);
    log::info!("agent: stopping");
    Ok(())
}

/// One round of host access, on the runtime's blocking pool: its netlink exchanges are
/// futures of this runtime, which the loop (waiting here) drives; no second runtime starts.
async fn reconcile_host(
    mut host: crate::node::host_keeper::Keeper,
) -> crate::node::host_keeper::Keeper {
    let round = tokio::task::spawn_blocking(move || {
        host.reconcile();
        host
    });
    round
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The next tick of an optional duty; never, when the duty is off.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Binds the socket, taking over a stale file from an agent that died, but never one that
/// another running agent answers on.
fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        // Root's only (README, Security): the socket and the plugin's records live here. A
        // hostPath the kubelet created has 0755; a shared sticky directory (/tmp) given by
        // hand is not the agent's to narrow.
        let mode = crate::node::policy::AGENT_DIR_MODE;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)?;
        let meta = std::fs::metadata(dir)?;
        if meta.uid() == 0 && meta.mode() & 0o1000 == 0 && meta.mode() & 0o777 != mode {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another agent already listens on {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // Only root (the plugin) may hand sockets over or drop them.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one request (with any descriptor passed along), acts on it, replies. Only root
/// (the plugin, run by the runtime) is answered: the peer's credentials are checked, not
/// only the socket file's mode, so a socket reachable by mistake (a hostPath mounted into
/// another container, a directory mode widened) still lets no one else hand sockets in,
/// drop a pod's membership or list the pods.
async fn answer(
    stream: UnixStream,
    memberships: &mut Memberships,
    relays: &mut crate::tools::relay::Relays,
) {
    // The peer's credentials are taken at connect; the request is read in any case, so a
    // refused client reads its refusal instead of a closed socket.
    let peer = stream.peer_cred();
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !line.contains(&b'\n') && line.len() < MAX_MESSAGE {
        let got = stream
            .async_io(Interest::READABLE, || {
                membership::receive_chunk(stream.as_raw_fd(), &mut buf, &mut fds)
            })
            .await;
        match got {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) => {
                log::warn!("agent: reading a request: {e}");
                return;
            }
        }
    }
    match peer {
        Ok(cred) if cred.uid() == 0 => {}
        Ok(cred) => {
            log::warn!(
                "agent: refused a client with uid {} (pid {}): only root may talk to the agent",
                cred.uid(),
                cred.pid().map_or_else(|| "?".to_owned(), |p| p.to_string())
            );
            // Any descriptor it passed is closed with `fds`, unused.
            let refusal =
                Reply::<MembershipRecord>::refused("only root may talk to the node agent".into());
            reply(stream, &refusal).await;
            return;
        }
        Err(e) => {
            log::warn!("agent: cannot read a client's credentials ({e}); refused");
            return;
        }
    }
    let first = line.split(|b| *b == b'\n').next().unwrap_or(&[]);
    match membership::parse_request(first) {
        Ok(request) => self::reply(stream, &memberships.handle(request, fds)).await,
        // Zenoh relay (issue 24): its requests ride the same socket.
        Err(e) => match membership::parse_request(first) {
            Ok(request) => self::reply(stream, &relays.handle(request, fds)).await,
            Err(_) => {
                self::reply(
                    stream,
                    &Reply::<MembershipRecord>::refused(format!("not a request: {e}")),
                )
                .await
            }
        },
    }
}

async fn reply(mut stream: UnixStream, reply: &impl serde::Serialize) {
    let mut out = serde_json::to_vec(reply).unwrap_or_default();
    out.push(b'\n');
    let _ = stream.write_all(&out).await;
}

/// A membership held: the record it was made for and the socket that holds it.
struct Held {
    record: MembershipRecord,
    _socket: OwnedFd,
}

/// The memberships the agent holds, and the records that say which it should.
struct Memberships {
    records: RecordDir,
    held: HashMap<String, Held>,
    /// Keys whose re-creation failed once, so the log says so once, not every sweep.
    failing: HashSet<String>,
    /// Keys whose netns could not be told present or gone, said once likewise.
    unsure: HashSet<String>,
}

impl Memberships {
    fn new(records: RecordDir) -> Memberships {
        Memberships {
            records,
            held: HashMap::new(),
            failing: HashSet::new(),
            unsure: HashSet::new(),
        }
    }

    fn handle(&mut self, request: Request, mut fds: Vec<OwnedFd>) -> Reply {
        match request {
            Request::Hold(record) => match fds.pop() {
                Some(socket) if self.has_room_for(&record.key()) => {
                    self.hold(*record, socket, "handed over by ADD");
                    Reply::accepted()
                }
                Some(_) => Reply::refused(format!(
                    "the agent holds {MAX_HELD} memberships already, its bound; not held"
                )),
                None => Reply::refused("hold needs the socket passed with the request".into()),
            },
            Request::Drop { key } => {
                self.let_go(&key, "DEL");
                Reply::accepted()
            }
            Request::List => Reply {
                held: self.held.values().map(|h| h.record.clone()).collect(),
                ..Reply::accepted()
            },
        }
    }

    /// Whether one more membership (or a new socket for a held key) fits the bound.
    fn has_room_for(&self, key: &str) -> bool {
        self.held.len() < MAX_HELD || self.held.contains_key(key)
    }

    fn hold(&mut self, record: MembershipRecord, socket: OwnedFd, why: &str) {
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
    /// netns that cannot be told gone is kept, and said once.
    fn reconcile(&mut self) {
        let held: HashSet<String> = self.held.keys().cloned().collect();
        let due = self.records.due(&held);
        for key in due.unrecorded {
            self.let_go(&key, "its record is gone");
        }
        for (key, why) in due.gone {
            self.let_go(&key, &why);
            log::info!("agent: forgetting {key}: {why}");
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
            if !self.has_room_for(&key) {
                if self.failing.insert(key.clone()) {
                    log::warn!(
                        "agent: not re-creating {key}: {MAX_HELD} memberships held, the bound"
                    );
                }
                continue;
            }
            match rejoin(&record) {
                Ok(socket) => self.hold(record, socket, "re-created from its record"),
                Err(e) => {
                    if self.failing.insert(key.clone()) {
                        log::warn!("agent: cannot re-create {key}: {e} (retrying)");
                    }
                }
            }
        }
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
    membership::join(&ns, index, &record.groups)
}

fn install_plugin(dir: &Path) -> io::Result<()> {
    let source = std::env::current_exe()?;
    let what = match crate::tools::install::install(&source, dir)? {
        crate::tools::install::Installed::Written => "installed",
        crate::tools::install::Installed::UpToDate => "already current",
    };
    log::info!(
        "agent: plugin {what} in {} (version {})",
        dir.display(),
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

/// Mirrors the policy; says what happened when it differs from what it said last time.
fn mirror_policy(source: &Path, dir: &Path, said: Option<&'static str>) -> Option<&'static str> {
    match crate::tools::install::sync_policy(source, dir) {
        Ok(what) => {
            if said != Some(what) {
                log::info!("agent: {what} ({})", dir.display());
            }
            Some(what)
        }
        Err(e) => {
            log::error!(
                "agent: cannot mirror the node policy into {}: {e}",
                dir.display()
            );
            None
        }
    }
}
