//! `ros-macvlan agent`: the agent's lifecycle, which owns every duty (`agent`'s modules):
//! the memberships, the Zenoh relays, the LAN watch, host access and leak collection, and
//! the metrics of them all;
//! optionally also the DaemonSet's other jobs (the plugin copied into the CNI bin dir at
//! start, the node policy mirrored from its ConfigMap). It serves the socket and stops
//! them all.
//!
//! One task on the process's current-thread runtime (sys::runtime) owns the duties' state,
//! so nothing is shared or locked; each client is read and answered on a task of its own
//! and hands its request to that task, so a slow or silent client holds only itself.
//! Host access, the one netlink work, runs on the runtime's blocking pool; the LAN watch on
//! a thread of its own, stopped and joined when the agent stops.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::agent::budget::{Lease, Pool, MAX_CLIENTS};
use crate::agent::host_keeper::Keeper;
use crate::agent::lan_state::LanState;
use crate::agent::lan_watch::LanWatch;
use crate::agent::memberships::Memberships;
use crate::agent::metrics::{Held, Metrics};
use crate::agent::metrics_endpoint::{self, Scrape, SCRAPES_AT_ONCE};
use crate::agent::protocol::{self, Reply, Request, AGENT_WAIT, MAX_MESSAGE};
use crate::agent::records::{network_of_key, MembershipRecord, RecordDir};
use crate::agent::relays::{Relays, RouterPool};
use crate::agent::supervise;

/// How often the agent compares what it holds with the records and the pods' namespaces.
/// A lost DEL is noticed within this (the issue asks for 10 s at most).
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

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
    pub zenoh_routers: RouterPool,
    /// How duplicate detection paces what it sends.
    pub lan_pace: crate::agent::lan_watch::Pace,
    /// Where the metrics are served (`metrics_endpoint`).
    pub metrics_address: std::net::SocketAddr,
}

pub fn run(opts: Options) -> i32 {
    let runtime = match crate::sys::runtime::process() {
        Ok(r) => r,
        Err(e) => {
            log::error!("agent: cannot start: {e}");
            return 1;
        }
    };
    // The loop owns the memberships' and relays' state: a panic there (or in what it
    // calls) leaves it unknown, so the agent stops, said, and the DaemonSet starts it again;
    // the records bring back what it held (supervise, docs/agent.md).
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(serve(opts))
    }));
    match served {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            log::error!("agent: {e}");
            1
        }
        Err(panic) => {
            log::error!(
                "agent: its loop panicked ({}); stopping, to be started again",
                supervise::panic_message(&*panic)
            );
            1
        }
    }
}

async fn serve(opts: Options) -> io::Result<()> {
    if let Some(dir) = &opts.cni_bin_dir {
        install_plugin(dir)?;
    }
    // Before anything is opened: the bounds' descriptors, counted from here on.
    let descriptors = Pool::descriptors()?;
    let listener = listen(&opts.socket)?;
    log::info!("agent: listening on {}", opts.socket.display());
    let mut memberships = Memberships::new(RecordDir::beside(&opts.socket), descriptors.clone());
    memberships.reconcile();
    let watch_lan = || {
        LanWatch::spawn(
            RecordDir::beside(&opts.socket),
            LanState::beside(&opts.socket),
            descriptors.clone(),
            opts.lan_pace,
        )
    };
    let mut lan_watch = watch_lan()?;
    let node_config = match &opts.policy {
        Some((_, dir)) => crate::node::install::mirrored_policy(dir),
        None => crate::node::policy::policy_file(),
    };
    // Zenoh relay (issue 24): the relays follow their records like the memberships.
    let mut relays = Relays::new(
        &opts.socket,
        opts.zenoh_routers,
        descriptors.clone(),
        node_config.clone(),
    );
    relays.reconcile();
    let agent_dir = opts.socket.parent().unwrap_or(Path::new("/"));
    let keeper = || Keeper::new(node_config.clone(), agent_dir);
    let mut host = keeper();
    let mut metrics = Metrics::new(&opts.socket);
    let (scraping, mut scrapes) = mpsc::channel::<Scrape>(SCRAPES_AT_ONCE);
    let metrics_served = || serve_metrics(opts.metrics_address, &scraping, &descriptors);
    let mut endpoint = metrics_served().await;

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
    // Each client is read and answered on a task of its own (a client that sends nothing
    // holds only itself); what it asks is acted on here, where the duties' state lives.
    let clients_at_once = Pool::leasing(MAX_CLIENTS);
    let mut clients = JoinSet::new();
    let (asking, mut asked) = mpsc::channel::<Asked>(MAX_CLIENTS);
    let mut refusing_clients = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let leases = clients_at_once.lease(1).zip(descriptors.lease(1));
                    match leases {
                        Some(leases) => {
                            refusing_clients = false;
                            clients.spawn(client(stream, leases, asking.clone()));
                        }
                        None if !std::mem::replace(&mut refusing_clients, true) => log::warn!(
                            "agent: closing new clients: {MAX_CLIENTS} are being answered, or the agent's descriptors are all in use"
                        ),
                        None => {}
                    }
                }
                Err(e) => log::warn!("agent: accept: {e}"),
            },
            Some(done) = clients.join_next(), if !clients.is_empty() => {
                // Its client saw the connection close: the plugin fails, and the
                // runtime calls it again.
                supervise::ended("a client's task", done, "its client's connection closed");
            }
            Some(Asked { request, fds, answer: answered }) = asked.recv() => {
                let line = answer(request, fds, &mut memberships, &mut relays, &mut metrics);
                let _ = answered.send(line);
            }
            Some(scrape) = scrapes.recv() => {
                let held = memberships.listing(None).held;
                let (relays_held, relayed) = relays.relayed();
                let _ = scrape.send(metrics.scrape(&Held {
                    memberships: &held,
                    relays: &relays_held,
                    relayed: &relayed,
                    descriptors: &descriptors,
                }));
            }
            _ = sweep.tick() => {
                let whole = [
                    ("memberships", memberships.reconcile()),
                    ("zenoh-relays", relays.reconcile()),
                ];
                metrics.swept(&whole);
                host = reconcile_host(host).await.unwrap_or_else(keeper);
                if lan_watch.has_ended() {
                    lan_watch.join();
                    log::warn!("agent: starting the lan watch again");
                    lan_watch = watch_lan()?;
                }
                if let Some(ended) = endpoint.take_if(|e| e.is_finished()) {
                    let result = ended.await;
                    supervise::ended("the metrics endpoint", result, "serving it again");
                    endpoint = metrics_served().await;
                }
            }
            _ = tick(&mut policy) => {
                if let Some((source, dir)) = &opts.policy {
                    policy_said = supervise::round("the policy's mirror", || {
                        mirror_policy(source, dir, policy_said)
                    })
                    .flatten();
                    host = reconcile_host(host).await.unwrap_or_else(keeper);
                }
            }
            _ = tick(&mut gc) => {
                if let Some((data_dir, _)) = &opts.gc {
                    match supervise::round("leak collection", || crate::agent::leaks::once(data_dir)) {
                        Some(Ok(report)) => report.iter().for_each(|l| log::info!("{l}")),
                        Some(Err(e)) => log::warn!("{e}"),
                        None => {}
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Stopping: no new client (the socket file goes, so plugins see at once that no agent
    // listens), none answered any more, every relay and membership closed with its
    // descriptors, the LAN watch stopped and joined. The records stay: the next agent
    // re-creates what they say.
    log::info!("agent: stopping");
    if let Some(endpoint) = endpoint {
        endpoint.abort();
    }
    drop(scraping);
    drop(listener);
    let _ = std::fs::remove_file(&opts.socket);
    clients.shutdown().await;
    drop(relays);
    drop(memberships);
    lan_watch.join();
    log::info!("agent: stopped");
    Ok(())
}

/// What the agent does for a request a client sent (with the descriptors passed along), on
/// the duties it reaches: the reply line the client reads. Called in the agent's runtime
/// (a relay's listeners are accepted on it).
pub fn answer(
    request: Request,
    fds: Vec<OwnedFd>,
    memberships: &mut Memberships,
    relays: &mut Relays,
    metrics: &mut Metrics,
) -> Vec<u8> {
    match request {
        Request::Hold { record, report } => {
            if let Some(report) = report {
                metrics.reported("ADD", &record.network, &report);
            }
            reply_line(&memberships.take(*record, fds))
        }
        Request::Drop { key, report } => {
            if let Some((report, network)) = report.zip(network_of_key(&key)) {
                metrics.reported("DEL", network, &report);
            }
            reply_line(&memberships.drop_key(&key))
        }
        Request::List => reply_line(&memberships.listing(None)),
        Request::HeldIn { netns_inode } => reply_line(&memberships.listing(Some(netns_inode))),
        Request::Relay(record) => reply_line(&relays.take(*record, fds)),
        Request::DropRelay { key } => reply_line(&relays.drop_key(&key)),
        Request::Relays => reply_line(&relays.listing(None)),
        Request::RelaysIn { netns_inode } => reply_line(&relays.listing(Some(netns_inode))),
    }
}

/// Serves the metrics on `address` (`metrics_endpoint`). Metrics are for the operator: an
/// address that cannot be bound leaves the agent serving its tenants without them, said.
async fn serve_metrics(
    address: std::net::SocketAddr,
    scraping: &mpsc::Sender<Scrape>,
    descriptors: &std::sync::Arc<Pool>,
) -> Option<tokio::task::JoinHandle<()>> {
    match tokio::net::TcpListener::bind(address).await {
        Ok(l) => {
            log::info!("agent: metrics on http://{address}/metrics");
            Some(tokio::spawn(metrics_endpoint::serve(
                l,
                scraping.clone(),
                descriptors.clone(),
            )))
        }
        Err(e) => {
            log::error!("agent: cannot serve metrics on {address} ({e}); going on without them");
            None
        }
    }
}

/// A request a client task read, for the loop to act on, and where its reply line goes.
struct Asked {
    request: Request,
    fds: Vec<OwnedFd>,
    answer: oneshot::Sender<Vec<u8>>,
}

/// One round of host access, on the runtime's blocking pool: its netlink exchanges are
/// futures of this runtime, which the loop (waiting here) drives; no second runtime starts.
/// A round that panicked is logged and its keeper lost (the caller makes a new one).
async fn reconcile_host(mut host: Keeper) -> Option<Keeper> {
    let round = tokio::task::spawn_blocking(move || {
        host.reconcile();
        host
    });
    match round.await {
        Ok(host) => Some(host),
        Err(e) => {
            log::error!("agent: host access: its round failed ({e}); starting it afresh");
            None
        }
    }
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

/// One client: reads its request (with any descriptor passed along) within `AGENT_WAIT`,
/// has the loop act on it, and writes the reply. Only root (the plugin, run by the runtime)
/// is answered: the peer's credentials are checked, not only the socket file's mode, so a
/// socket reachable by mistake (a hostPath mounted into another container, a directory
/// mode widened) still lets no one else hand sockets in, drop a pod's membership or list
/// the pods. `_leases`: its place among the clients and its descriptor, while it lasts.
async fn client(stream: UnixStream, _leases: (Lease, Lease), asking: mpsc::Sender<Asked>) {
    let line = match tokio::time::timeout(AGENT_WAIT, read_request(&stream)).await {
        Ok(Some(read)) => read,
        Ok(None) => return,
        Err(_) => {
            log::warn!("agent: a client sent no complete request in time");
            return;
        }
    };
    let (line, fds) = line;
    let reply = match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => {
            match protocol::decode_request(&line) {
                Ok(request) => {
                    let (answer, answered) = oneshot::channel();
                    let asked = Asked {
                        request,
                        fds,
                        answer,
                    };
                    if asking.send(asked).await.is_err() {
                        return; // stopping
                    }
                    match answered.await {
                        Ok(line) => line,
                        Err(_) => return,
                    }
                }
                Err(e) => refusal(format!("not a request: {e}")),
            }
        }
        Ok(cred) => {
            log::warn!(
                "agent: refused a client with uid {} (pid {}): only root may talk to the agent",
                cred.uid(),
                cred.pid().map_or_else(|| "?".to_owned(), |p| p.to_string())
            );
            // Any descriptor it passed is closed with `fds`, unused.
            refusal("only root may talk to the node agent".into())
        }
        Err(e) => {
            log::warn!("agent: cannot read a client's credentials ({e}); refused");
            return;
        }
    };
    let mut stream = stream;
    let _ = tokio::time::timeout(AGENT_WAIT, stream.write_all(&reply)).await;
}

/// What a client sent, up to its first newline or `MAX_MESSAGE` bytes (a chunk more at
/// most; `protocol::decode_request` takes the line), and the descriptors passed along with
/// it; None when the client failed. The request is read in any case, so a refused client
/// reads its refusal instead of a closed socket.
async fn read_request(stream: &UnixStream) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !line.contains(&b'\n') && line.len() < MAX_MESSAGE {
        let got = stream
            .async_io(Interest::READABLE, || {
                protocol::receive_chunk(stream.as_raw_fd(), &mut buf, &mut fds)
            })
            .await;
        match got {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) => {
                log::warn!("agent: reading a request: {e}");
                return None;
            }
        }
    }
    Some((line, fds))
}

/// A reply as the line written back.
fn reply_line(reply: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(reply).unwrap_or_default();
    out.push(b'\n');
    out
}

fn refusal(why: String) -> Vec<u8> {
    reply_line(&Reply::<MembershipRecord>::refused(why))
}

fn install_plugin(dir: &Path) -> io::Result<()> {
    let source = std::env::current_exe()?;
    let what = match crate::node::install::install(&source, dir)? {
        crate::node::install::Installed::Written => "installed",
        crate::node::install::Installed::UpToDate => "already current",
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
    match crate::node::install::sync_policy(source, dir) {
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
