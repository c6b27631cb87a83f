//! The operator's subcommands (`ros-macvlan <subcommand>`), as opposed to CNI invocations
//! (no arguments), which never come here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::ipam::host_local::DEFAULT_DATA_DIR;
use crate::plugin::config::DEFAULT_AGENT_SOCKET;
use crate::tools::rtps::MAX_DOMAIN;

#[derive(Parser)]
#[command(
    name = "ros-macvlan",
    version,
    about = "CNI plugin giving ROS 2 pods a macvlan net1 on which DDS discovery works; run with no arguments (CNI_COMMAND in the environment, config on stdin) it is the plugin"
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// (root) Build the guide's two-talkers-one-listener scene in namespaces and show discovery working
    Demo,
    /// The node agent, the DaemonSet's process: holds the pods' group memberships, and
    /// optionally installs the plugin, mirrors the node policy and runs gc
    Agent(AgentArgs),
    /// Copy this binary into the CNI bin dir atomically
    Install(InstallArgs),
    /// (root, on a node) Remove the plugin, the agent's records and state from this node;
    /// refuses, naming them, while any pod is attached
    Uninstall(UninstallArgs),
    /// Release host-local claims whose pod's netns is gone
    Gc {
        /// The host-local data dir
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Run again every SECONDS
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        every: Option<u64>,
    },
    /// List the DDS participants a pod hears (SPDP decoded), optionally announcing one
    Probe {
        #[command(flatten)]
        pod: PodArgs,
        /// Listen on every domain's discovery port
        #[arg(long, conflicts_with = "domain")]
        all_domains: bool,
        /// One JSON line per event and a final JSON report
        #[arg(long)]
        json: bool,
        /// Only listen: announce nothing (peers then show up only at their next periodic
        /// announcement, every 8 s or more for CycloneDDS). By default the probe announces a
        /// minimal participant every 0.5 s, which DDS peers answer at once
        #[arg(long)]
        silent: bool,
        /// Announce (the default; kept for scripts written for earlier versions)
        #[arg(long, hide = true, conflicts_with = "silent")]
        announce: bool,
    },
    /// Check a pod's discovery path and say how to fix what is broken
    Doctor {
        #[command(flatten)]
        pod: PodArgs,
        /// Check the node's host access instead (run on the node): shims, routes, which
        /// interface the node's DDS would pick, and a live probe from the shim
        #[arg(long, conflicts_with_all = ["netns", "pod", "iface", "agent_socket"])]
        host: bool,
    },
    /// (root, on a node) Let the node's own processes reach its pods: a shim macvlan on the
    /// master with an address of its own and a route for each pod range through it
    HostAccess(HostAccessArgs),
    /// The RTPS port mapping of a domain, for firewall rules
    Ports {
        #[arg(long, default_value_t = 0, value_parser = domain)]
        domain: u16,
    },
    /// Print the version
    Version,
}

/// Which pod and what to listen to: shared by probe and doctor.
#[derive(Args)]
struct PodArgs {
    /// The pod's netns (a path such as /var/run/netns/cni-1234 or /proc/PID/ns/net); default: this one
    #[arg(long)]
    netns: Option<String>,
    /// The pod by its name (NAMESPACE/NAME): its netns and interface are found in the node
    /// agent's records (run where they are: on the node, or in the agent's container)
    #[arg(long, conflicts_with = "netns", value_parser = crate::tools::pod::parse_name)]
    pod: Option<String>,
    /// The pod's macvlan interface (default: net1, or the one attachment of --pod)
    #[arg(long)]
    iface: Option<String>,
    /// Where the node agent answers (its --socket; a NAD's agentSocket): --pod reads its
    /// records; doctor expects a membership it holds for the pod's interface to be joined
    #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// ROS_DOMAIN_ID
    #[arg(long, default_value_t = 0, value_parser = domain)]
    domain: u16,
    /// How long to listen
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    seconds: f64,
}

#[derive(Args)]
struct AgentArgs {
    /// Where plugins hand over memberships (the config key agentSocket points the plugin elsewhere)
    #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
    socket: PathBuf,
    /// Copy the plugin into this CNI bin dir at start
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Release orphaned host-local claims under this data dir periodically
    #[arg(long)]
    gc_data_dir: Option<PathBuf>,
    /// How often gc runs, in seconds
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    gc_every: u64,
    /// The node's Zenoh routers for pods (HOST:FIRST-LAST, or HOST:PORT for one, in the
    /// agent's network namespace): the relay of each pod of a network with "zenoh" forwards
    /// its localhost:7447 to one of them, a router of its own
    #[arg(long, default_value = crate::agent::relays::DEFAULT_ROUTERS)]
    zenoh_routers: crate::agent::relays::RouterPool,
    /// Duplicate detection: how often each pod's address, and each address an idle network
    /// hands out next, is asked for once on the LAN, in seconds (±20 %); everything else is
    /// heard without asking. ADD relies on the agent's probes for 1.5 times this while it
    /// listens
    #[arg(long, default_value_t = crate::agent::lan_state::RECHECK.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    recheck_every: u64,
    /// Duplicate detection: how long a conflict counts after the other MAC last claimed
    /// the address, in seconds (at most 120)
    #[arg(long, default_value_t = crate::agent::lan_state::CONFLICT_EXPIRY.as_secs(), value_parser = clap::value_parser!(u64).range(1..=120))]
    conflict_expiry: u64,
    /// Where Prometheus metrics are served (GET /metrics), in the agent's network namespace
    /// (the node's): the loopback by default, so the LAN does not reach them
    #[arg(long, default_value = crate::agent::metrics::DEFAULT_ADDRESS)]
    metrics_address: std::net::SocketAddr,
}

#[derive(Args)]
struct HostAccessArgs {
    /// The LAN interface the pods' macvlans use (the attachments' master)
    #[arg(long)]
    master: String,
    /// The shim's own LAN address (not the node's, outside every pod range)
    #[arg(long, required_unless_present = "remove")]
    address: Option<ipnetwork::Ipv4Network>,
    /// A range the pods' addresses come from (repeat for several)
    #[arg(long = "pod-range", required_unless_present = "remove")]
    pod_ranges: Vec<ipnetwork::Ipv4Network>,
    /// Clear the master's MULTICAST flag so CycloneDDS on the node picks the shim
    #[arg(long)]
    exclusive_multicast: bool,
    /// Take host access off the master: the node is left as before
    #[arg(long, conflicts_with_all = ["address", "pod_ranges", "exclusive_multicast"])]
    remove: bool,
}

#[derive(Args)]
struct InstallArgs {
    /// The node's CNI bin dir, e.g. /opt/cni/bin
    #[arg(long)]
    cni_bin_dir: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Only check that the installed binary is this one
    #[arg(long)]
    verify: bool,
    /// After installing, wait for SIGTERM
    #[arg(long)]
    stay: bool,
}

#[derive(Args)]
struct UninstallArgs {
    /// The node's CNI bin dir the plugin was installed into, e.g. /opt/cni/bin
    #[arg(long)]
    cni_bin_dir: PathBuf,
    /// The node agent's socket (its --socket): its records and state live beside it
    #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// A host-local data dir the networks use (repeat for several; a NAD's dataDir)
    #[arg(long = "data-dir", default_value = DEFAULT_DATA_DIR)]
    data_dirs: Vec<PathBuf>,
    /// Where the node policy was mirrored (the agent's --policy-dir): removed too
    #[arg(long)]
    policy_dir: Option<PathBuf>,
}

/// The node policy mirrored from a ConfigMap mount.
#[derive(Args)]
struct PolicyArgs {
    /// The policy file as the ConfigMap mount shows it
    #[arg(long, requires = "policy_dir")]
    policy: Option<PathBuf>,
    /// Where the plugin reads the node policy
    #[arg(long, requires = "policy")]
    policy_dir: Option<PathBuf>,
}

impl PodArgs {
    /// The netns (None: this one) and interface to look at: as given, or found by --pod.
    fn target(&self) -> Result<(Option<String>, String), String> {
        match &self.pod {
            Some(pod) => crate::tools::pod::find(&self.agent_socket, pod, self.iface.as_deref())
                .map(|found| (Some(found.netns), found.ifname)),
            None => Ok((
                self.netns.clone(),
                self.iface.clone().unwrap_or_else(|| DEFAULT_IFNAME.into()),
            )),
        }
    }
}

/// The interface probe and doctor look at unless told (the CNI_IFNAME Multus gives the
/// first secondary network).
const DEFAULT_IFNAME: &str = "net1";

/// A --pod that names no single attachment: said, and exit code 2 as for a bad argument.
fn unknown_pod(tool: &str, why: &str) -> i32 {
    log::error!("{tool}: {why}");
    2
}

impl PolicyArgs {
    fn pair(&self) -> Option<(PathBuf, PathBuf)> {
        self.policy.clone().zip(self.policy_dir.clone())
    }
}

fn domain(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|d| *d <= MAX_DOMAIN)
        .ok_or_else(|| format!("takes 0..{MAX_DOMAIN}"))
}

fn seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && *s <= 86400.0)
        .ok_or_else(|| "takes a positive number of seconds (at most a day)".into())
}

pub fn main(args: &[String]) -> i32 {
    crate::sys::logging::init(log::LevelFilter::Info);
    // Like other Unix tools, end quietly when the reader goes away (`probe | head`).
    // SAFETY: restoring the default disposition of SIGPIPE installs no handler.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let cli = match Cli::try_parse_from(
        std::iter::once("ros-macvlan").chain(args.iter().map(String::as_str)),
    ) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli.command {
        Sub::Demo => crate::tools::demo::run(),
        Sub::Agent(a) => crate::agent::lifecycle::run(crate::agent::lifecycle::Options {
            socket: a.socket,
            cni_bin_dir: a.cni_bin_dir,
            policy: a.policy.pair(),
            gc: a.gc_data_dir.map(|d| (d, Duration::from_secs(a.gc_every))),
            zenoh_routers: a.zenoh_routers,
            lan_pace: crate::agent::lan_watch::Pace {
                recheck: Duration::from_secs(a.recheck_every),
                conflict_expiry: Duration::from_secs(a.conflict_expiry),
            },
            metrics_address: a.metrics_address,
        }),
        Sub::Install(a) => crate::tools::install::main(&crate::tools::install::Options {
            cni_bin_dir: a.cni_bin_dir,
            policy: a.policy.pair(),
            verify: a.verify,
            stay: a.stay,
        }),
        Sub::Uninstall(a) => crate::tools::uninstall::main(&crate::tools::uninstall::Options {
            cni_bin_dir: a.cni_bin_dir,
            agent_socket: a.agent_socket,
            data_dirs: a.data_dirs,
            policy_dir: a.policy_dir,
        }),
        Sub::Gc { data_dir, every } => crate::tools::gc::main(&data_dir, every),
        Sub::Probe {
            pod,
            all_domains,
            json,
            silent,
            announce: _,
        } => match pod.target() {
            Ok((netns, iface)) => probe(crate::tools::probe::Options {
                netns,
                iface,
                domains: if all_domains {
                    (0..=MAX_DOMAIN).collect()
                } else {
                    vec![pod.domain]
                },
                seconds: pod.seconds,
                json,
                announce: !silent,
                live: true,
            }),
            Err(e) => unknown_pod("probe", &e),
        },
        Sub::Doctor {
            pod, host: true, ..
        } => crate::tools::doctor::print(&crate::tools::doctor::host(
            pod.domain,
            pod.seconds.min(60.0),
        )),
        Sub::HostAccess(a) => host_access(a),
        Sub::Doctor { pod, host: false } => match pod.target() {
            Ok((netns, iface)) => crate::tools::doctor::print(&crate::tools::doctor::run(
                &crate::tools::doctor::Options {
                    netns,
                    iface,
                    agent_socket: pod.agent_socket,
                    domain: pod.domain,
                    seconds: pod.seconds.min(60.0),
                },
            )),
            Err(e) => unknown_pod("doctor", &e),
        },
        Sub::Ports { domain } => crate::tools::ports::print(domain),
        Sub::Version => {
            println!("ros-macvlan {}", env!("CARGO_PKG_VERSION"));
            0
        }
    }
}

/// `host-access`: sets up (or with --remove takes off) host access and says what it did.
fn host_access(a: HostAccessArgs) -> i32 {
    let done = crate::sys::netlink::Netlink::here()
        .map_err(crate::cni::Error::from)
        .and_then(|nl| match a.address {
            Some(address) if !a.remove => crate::node::host_access::ensure(
                &nl,
                &crate::node::host_access::Spec {
                    master: a.master.clone(),
                    address,
                    pod_ranges: a.pod_ranges,
                    exclusive_multicast: a.exclusive_multicast,
                },
            ),
            _ => crate::node::host_access::remove(&nl, &a.master),
        });
    match done {
        Ok(changes) if changes.is_empty() => {
            println!("host access on {}: nothing to change", a.master);
            0
        }
        Ok(changes) => {
            for c in changes {
                println!("host access on {}: {c}", a.master);
            }
            0
        }
        Err(e) => {
            log::error!("host-access: {e}");
            1
        }
    }
}

fn probe(opts: crate::tools::probe::Options) -> i32 {
    match crate::tools::probe::run(&opts) {
        Ok(report) => {
            crate::tools::probe::print_report(&opts, &report);
            0
        }
        Err(e) => {
            log::error!("probe: {e}");
            1
        }
    }
}
