//! The agent's Prometheus metrics (prometheus-client's registry and text encoding): what it
//! holds per pod, what duplicate detection found and sent, its sweeps, its descriptors and
//! memory against its budget, and the plugin's ADD and DEL as each call reports itself in
//! the hand-over. Served by `metrics_endpoint`.
//!
//! What the agent holds is read at each scrape from the duties' state and the records, and
//! the per-pod families are rebuilt from it: a pod's series go with its attachment, so the
//! label sets never outgrow what the agent holds (itself bounded, `budget`). Network names
//! are the tenants' to choose, so the per-network families take at most `MAX_NETWORKS`
//! names; the rest count under `OTHER_NETWORK`.

use std::collections::HashSet;
use std::path::Path;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::agent::budget::{Pool, MEMORY_LIMIT};
use crate::agent::lan_state::LanState;
use crate::agent::protocol::CallReport;
use crate::agent::records::{MembershipRecord, RecordDir, RelayRecord};

/// Where the agent serves its metrics unless told: the node's loopback only (the DaemonSet
/// runs in the node's network namespace), so the LAN never reaches it by default.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9470";

/// The most network names the per-network families keep apart.
pub const MAX_NETWORKS: usize = 64;
/// The network label of every name beyond `MAX_NETWORKS`.
pub const OTHER_NETWORK: &str = "(other)";

/// A pod's series: its Kubernetes namespace and name, as ADD's CNI_ARGS said ("-" where
/// the runtime said none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
}

impl PodLabels {
    fn of(record: &MembershipRecord) -> PodLabels {
        let (namespace, pod) = record
            .lan
            .pod
            .as_deref()
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("-", "-"));
        PodLabels {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    network: String,
    verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SenderLabels {
    by: String,
}

type CallHistograms = Family<CallLabels, Histogram, fn() -> Histogram>;

/// ADD and DEL take milliseconds; buckets from 1 ms to about 8 s.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// What the agent holds now, as a scrape reads it from the duties.
pub struct Held<'a> {
    /// The memberships held (`Memberships::listing`).
    pub memberships: &'a [MembershipRecord],
    /// The relays held, and the connections relayed per pod (`Relays::relayed`).
    pub relays: &'a [&'a MembershipRecord],
    pub relayed: &'a [(&'a MembershipRecord, usize)],
    pub descriptors: &'a Pool,
}

/// The agent's metrics and what they are read from beside its socket.
pub struct Metrics {
    registry: Registry,
    memberships_dir: RecordDir,
    relays_dir: RecordDir<RelayRecord>,
    lan: LanState,
    attachments: Family<PodLabels, Gauge>,
    memberships: Family<PodLabels, Gauge>,
    relays: Family<PodLabels, Gauge>,
    relayed_connections: Family<PodLabels, Gauge>,
    conflicts: Family<PodLabels, Gauge>,
    conflicts_found: Counter,
    arp_frames: Family<SenderLabels, Counter>,
    records: Family<KindLabels, Gauge>,
    sweeps: Counter,
    listing_failures: Family<KindLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    call_seconds: CallHistograms,
    open_fds: Gauge,
    fd_limit: Gauge,
    fds_leased: Gauge,
    fds_leasable: Gauge,
    rss: Gauge,
    memory_limit: Gauge,
    /// The network names the per-network families keep apart so far.
    networks: HashSet<String>,
    /// The process-wide counts as last read, so the counters grow by what was added since.
    counted_arp: u64,
    counted_conflicts: u64,
}

impl Metrics {
    /// The metrics of the agent whose socket is `agent_socket`.
    pub fn new(agent_socket: &Path) -> Metrics {
        let mut registry = Registry::with_prefix("ros_macvlan");
        let mut m = Metrics {
            memberships_dir: RecordDir::beside(agent_socket),
            relays_dir: RecordDir::kept_beside(agent_socket),
            lan: LanState::beside(agent_socket),
            attachments: Family::default(),
            memberships: Family::default(),
            relays: Family::default(),
            relayed_connections: Family::default(),
            conflicts: Family::default(),
            conflicts_found: Counter::default(),
            arp_frames: Family::default(),
            records: Family::default(),
            sweeps: Counter::default(),
            listing_failures: Family::default(),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(call_histogram),
            open_fds: Gauge::default(),
            fd_limit: Gauge::default(),
            fds_leased: Gauge::default(),
            fds_leasable: Gauge::default(),
            rss: Gauge::default(),
            memory_limit: Gauge::default(),
            networks: HashSet::new(),
            counted_arp: 0,
            counted_conflicts: 0,
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "attachments",
            "Attachments on this node (membership records ADD wrote), per pod",
            m.attachments.clone(),
        );
        r.register(
            "memberships_held",
            "Group memberships the agent holds (a socket each), per pod",
            m.memberships.clone(),
        );
        r.register(
            "zenoh_relays",
            "Zenoh relays the agent holds, per pod",
            m.relays.clone(),
        );
        r.register(
            "zenoh_relayed_connections",
            "Connections relayed now to the node's Zenoh routers, per pod",
            m.relayed_connections.clone(),
        );
        r.register(
            "address_conflicts",
            "Pod addresses another MAC claims on the LAN now (conflicts that still count), per pod",
            m.conflicts.clone(),
        );
        r.register(
            "address_conflicts_found",
            "Address conflicts the LAN watch has found since the agent started",
            m.conflicts_found.clone(),
        );
        r.register(
            "arp_frames_sent",
            "ARP frames broadcast by duplicate detection: by the agent (probing ahead, re-checks, verifying conflicts) and by ADD (as the plugin reports it)",
            m.arp_frames.clone(),
        );
        r.register(
            "records",
            "Records beside the agent's socket, by kind",
            m.records.clone(),
        );
        r.register(
            "sweeps",
            "Sweeps of the records against what the agent holds",
            m.sweeps.clone(),
        );
        r.register(
            "record_listing_failures",
            "Listings of the records that could not be made whole (nothing was acted on), by kind",
            m.listing_failures.clone(),
        );
        r.register(
            "cni_calls",
            "ADD and DEL calls that handed over to the agent or let go, per network, as the plugin reports them",
            m.calls.clone(),
        );
        r.register(
            "cni_call_duration_seconds",
            "Time of ADD and DEL up to their hand-over (near their end), per network, as the plugin reports it",
            m.call_seconds.clone(),
        );
        r.register(
            "agent_open_fds",
            "Descriptors the agent has open",
            m.open_fds.clone(),
        );
        r.register(
            "agent_fd_limit",
            "The agent's soft RLIMIT_NOFILE",
            m.fd_limit.clone(),
        );
        r.register(
            "agent_fds_leased",
            "Descriptors leased by the agent's duties for its tenants",
            m.fds_leased.clone(),
        );
        r.register(
            "agent_fds_leasable",
            "Descriptors the agent's duties may lease at most (its limit less its headroom)",
            m.fds_leasable.clone(),
        );
        r.register(
            "agent_resident_memory_bytes",
            "The agent's resident memory",
            m.rss.clone(),
        );
        r.register(
            "agent_memory_limit_bytes",
            "The memory the agent's bounds are made to fit (the DaemonSet's container limit)",
            m.memory_limit.clone(),
        );
        m.memory_limit
            .set(i64::try_from(MEMORY_LIMIT).unwrap_or(i64::MAX));
        // The families with a fixed label set show from the start, at zero.
        for by in ["agent", "add"] {
            let _ = m.arp_frames.get_or_create(&SenderLabels { by: by.into() });
        }
        for kind in KINDS {
            let _ = m.listing_failures.get_or_create(&kind_labels(kind));
        }
        m.registry = registry;
        m
    }

    /// A sweep of the records ran; `whole` per kind says whether its listing was whole.
    pub fn swept(&self, whole: &[(&str, bool)]) {
        self.sweeps.inc();
        for (kind, whole) in whole {
            if !whole {
                self.listing_failures
                    .get_or_create(&kind_labels(kind))
                    .inc();
            }
        }
    }

    /// A plugin call's report: ADD's with its hand-over, DEL's with its letting go.
    pub fn reported(&mut self, verb: &str, network: &str, report: &CallReport) {
        let labels = CallLabels {
            network: self.network_label(network),
            verb: verb.to_owned(),
        };
        self.calls.get_or_create(&labels).inc();
        let seconds = self.call_seconds.get_or_create(&labels);
        // Only root talks to the agent, but a report is still input: nothing odd is kept.
        if report.seconds.is_finite() && report.seconds >= 0.0 {
            seconds.observe(report.seconds);
        }
        self.arp_frames
            .get_or_create(&SenderLabels { by: "add".into() })
            .inc_by(report.arp_frames.min(MAX_REPORTED_ARP));
    }

    /// The network's label: its name while fewer than `MAX_NETWORKS` are kept apart.
    fn network_label(&mut self, network: &str) -> String {
        if self.networks.contains(network) {
            return network.to_owned();
        }
        if self.networks.len() < MAX_NETWORKS {
            self.networks.insert(network.to_owned());
            return network.to_owned();
        }
        OTHER_NETWORK.to_owned()
    }

    /// Reads what the agent holds now and encodes every metric in the text format.
    pub fn scrape(&mut self, held: &Held) -> String {
        self.read(held);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::warn!("agent: metrics: cannot encode them: {e}");
        }
        out
    }

    fn read(&mut self, held: &Held) {
        let per_pod =
            |family: &Family<PodLabels, Gauge>,
             of: &mut dyn Iterator<Item = (&MembershipRecord, i64)>| {
                family.clear();
                for (record, n) in of {
                    family.get_or_create(&PodLabels::of(record)).inc_by(n);
                }
            };
        // A listing that fails is not an empty one: the series stay as last read.
        match self.memberships_dir.list() {
            Ok(records) => {
                per_pod(&self.attachments, &mut records.iter().map(|r| (r, 1)));
                self.set_records("memberships", records.len());
                let conflicted: HashSet<String> = self.lan.conflicted().into_iter().collect();
                self.set_records("conflicts", conflicted.len());
                per_pod(
                    &self.conflicts,
                    &mut records
                        .iter()
                        .filter(|r| conflicted.contains(&r.key()))
                        .filter(|r| self.lan.conflict(&r.key()).is_some())
                        .map(|r| (r, 1)),
                );
            }
            Err(_) => self.failed_listing("memberships"),
        }
        match self.relays_dir.list() {
            Ok(records) => self.set_records("zenoh-relays", records.len()),
            Err(_) => self.failed_listing("zenoh-relays"),
        }
        per_pod(
            &self.memberships,
            &mut held.memberships.iter().map(|r| (r, 1)),
        );
        per_pod(&self.relays, &mut held.relays.iter().map(|r| (*r, 1)));
        per_pod(
            &self.relayed_connections,
            &mut held
                .relayed
                .iter()
                .map(|(r, n)| (*r, i64::try_from(*n).unwrap_or(i64::MAX))),
        );
        let arp = crate::node::duplicate::arp_frames_sent();
        self.arp_frames
            .get_or_create(&SenderLabels { by: "agent".into() })
            .inc_by(arp.saturating_sub(self.counted_arp));
        self.counted_arp = arp;
        let found = crate::agent::lan_watch::conflicts_found();
        self.conflicts_found
            .inc_by(found.saturating_sub(self.counted_conflicts));
        self.counted_conflicts = found;
        let gauge = |g: &Gauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        gauge(&self.fds_leased, held.descriptors.leased());
        gauge(&self.fds_leasable, held.descriptors.leasable());
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(&self.open_fds, fds.count());
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            self.fd_limit.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
        if let Some(rss) = resident_bytes() {
            self.rss.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
    }

    fn set_records(&self, kind: &str, n: usize) {
        self.records
            .get_or_create(&kind_labels(kind))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn failed_listing(&self, kind: &str) {
        self.listing_failures
            .get_or_create(&kind_labels(kind))
            .inc();
    }
}

/// The kinds of records the metrics count.
const KINDS: [&str; 3] = ["memberships", "zenoh-relays", "conflicts"];

/// The most ARP frames one report counts: ADD sends a handful.
const MAX_REPORTED_ARP: u64 = 1024;

fn kind_labels(kind: &str) -> KindLabels {
    KindLabels { kind: kind.into() }
}

/// The process's resident memory (`/proc/self/statm`'s second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::records::tests::record;

    fn pod(name: &str) -> MembershipRecord {
        let mut r = record();
        r.lan.pod = Some(name.into());
        r.container_id = name.replace('/', "-");
        r
    }

    fn scrape(m: &mut Metrics, memberships: &[MembershipRecord]) -> String {
        let pool = Pool::leasing(10);
        m.scrape(&Held {
            memberships,
            relays: &[],
            relayed: &[],
            descriptors: &pool,
        })
    }

    #[test]
    fn a_pods_series_go_with_it() {
        let dir = std::env::temp_dir().join(format!("rm-metrics-{}", std::process::id()));
        let mut m = Metrics::new(&dir.join("agent.sock"));
        let text = scrape(&mut m, &[pod("default/t1"), pod("robots/t2")]);
        assert!(
            text.contains(r#"ros_macvlan_memberships_held{namespace="default",pod="t1"} 1"#),
            "{text}"
        );
        let text = scrape(&mut m, &[pod("robots/t2")]);
        assert!(!text.contains(r#"pod="t1""#), "{text}");
        assert!(text.contains(r#"pod="t2""#), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn network_names_are_bounded_and_reports_checked() {
        let dir = std::env::temp_dir().join(format!("rm-metrics-n-{}", std::process::id()));
        let mut m = Metrics::new(&dir.join("agent.sock"));
        let report = CallReport {
            seconds: 0.01,
            arp_frames: u64::MAX,
        };
        for i in 0..MAX_NETWORKS + 5 {
            m.reported("ADD", &format!("net{i}"), &report);
        }
        m.reported(
            "DEL",
            "net0",
            &CallReport {
                seconds: f64::NAN,
                arp_frames: 0,
            },
        );
        let text = scrape(&mut m, &[]);
        let networks: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("ros_macvlan_cni_calls_total{"))
            .filter_map(|l| l.split("network=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(networks.len(), MAX_NETWORKS + 1, "{text}");
        assert!(
            text.contains(r#"ros_macvlan_cni_calls_total{network="(other)",verb="ADD"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ros_macvlan_cni_call_duration_seconds_count{network="net0",verb="DEL"} 0"#
            ),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
