//! Duplicate detection's cost (issue 32), against the reference's nothing: the ARP frames an
//! idle node sends on its uplink with 3, 30 and 110 pods attached (counted on the switch from
//! 10 s after the last ADD, for 20 s), the frames one ADD on a quiet network brings, the
//! agent's CPU while idle, and ADD with the default config after a quiet spell, pods 0.3 s
//! apart, ten at once, and ten at once while the network is busy, each against the reference
//! doing the same.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ros_macvlan::tools::demo::scene::{Lan, Node, Pod};
use serde_json::{json, Value};

/// From the last ADD to the start of counting: the busy spell (8 s) and a margin.
const SETTLE: Duration = Duration::from_secs(10);
const COUNT_FOR: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_secs(12);

/// (figure, ros-macvlan, reference) rows; the reference sends no frame and uses no agent.
pub fn measure(bin: &Path, reference: &Path, work: &Path) -> Vec<(String, f64, f64)> {
    let lan = Lan::create();
    let node = Node::new(&lan);
    let agent = super::agent_in(&node, bin);
    let conf = |kind: &str, name: &str| {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": kind, "master": "lan0",
            "agentSocket": agent.socket(),
            "ipam": { "type": "host-local", "dataDir": work.join("lan-cost"),
              "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.10",
                            "rangeEnd": "198.51.100.250" }]] },
        })
    };
    let ours = conf("ros-macvlan", "lan-cost");
    let mut rows = Vec::new();

    // Frames one ADD brings on a quiet network: its probes, its announcement, the busy spell.
    let first = node.pod(1);
    let capture = Counter::start(&lan);
    assert!(add(&node, bin, &first, &ours), "ADD failed");
    std::thread::sleep(SETTLE);
    rows.push((
        "ARP frames per ADD on a quiet network".into(),
        capture.stop() as f64,
        0.0,
    ));

    // Idle nodes of 3, 30 and 110 pods.
    let mut pods: Vec<Pod> = vec![first];
    for target in [3usize, 30, 110] {
        while pods.len() < target {
            let pod = node.pod(pods.len() as u8 + 1);
            assert!(add(&node, bin, &pod, &ours), "ADD failed");
            pods.push(pod);
        }
        std::thread::sleep(SETTLE);
        let cpu = CpuTime::of(agent.pid().expect("the agent runs"));
        let capture = Counter::start(&lan);
        std::thread::sleep(COUNT_FOR);
        let frames = capture.stop();
        let cpu = cpu.share_since();
        rows.push((
            format!("idle ARP frames/s, {target} pods"),
            frames as f64 / COUNT_FOR.as_secs_f64(),
            0.0,
        ));
        rows.push((
            format!("agent CPU idle, {target} pods (% of a core)"),
            cpu * 100.0,
            0.0,
        ));
    }

    // ADD after a quiet spell (a pod of the network attached all along): ten pods 0.3 s
    // apart, then ten at once; then ten at once again 1 s after the last of those, while the
    // network is busy (the agent probes ahead); the reference the same, right after.
    let spaced: Vec<Pod> = (0..10).map(|i| node.pod(200 + i)).collect();
    let burst: Vec<Pod> = (0..10).map(|i| node.pod(220 + i)).collect();
    let busy_burst: Vec<Pod> = (0..10).map(|i| node.pod(240 + i)).collect();
    let rows_of = [
        "ADD median after a quiet spell, 0.3 s apart (ms)",
        "ADD median after a quiet spell, 10 at once (ms)",
        "ADD median while busy (1 s after an ADD), 10 at once (ms)",
    ];
    for (kind, plugin) in [
        ("ros-macvlan", bin),
        ("macvlan", &reference.join("macvlan")),
    ] {
        let c = if kind == "macvlan" {
            conf(kind, "lan-cost-reference")
        } else {
            ours.clone()
        };
        let at_once = |pods: &[Pod]| -> f64 {
            let took: Vec<Duration> = std::thread::scope(|s| {
                let handles: Vec<_> = pods
                    .iter()
                    .map(|p| {
                        let (c, node) = (&c, &node);
                        s.spawn(move || {
                            let started = Instant::now();
                            assert!(add(node, plugin, p, c), "{kind} ADD failed");
                            started.elapsed()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            median_ms(took)
        };
        std::thread::sleep(QUIET);
        let mut took = Vec::new();
        for p in &spaced {
            let started = Instant::now();
            assert!(add(&node, plugin, p, &c), "{kind} ADD failed");
            took.push(started.elapsed());
            std::thread::sleep(Duration::from_millis(300));
        }
        let spaced_median = median_ms(took);
        std::thread::sleep(QUIET);
        let burst_median = at_once(&burst);
        std::thread::sleep(Duration::from_secs(1));
        let busy_median = at_once(&busy_burst);
        let medians = [spaced_median, burst_median, busy_median];
        for p in spaced.iter().chain(&burst).chain(&busy_burst) {
            del(&node, plugin, p, &c);
        }
        for (row, median) in rows_of.iter().zip(medians) {
            if kind == "macvlan" {
                rows.iter_mut()
                    .filter(|r| r.0 == *row)
                    .for_each(|r| r.2 = median);
            } else {
                rows.push(((*row).into(), median, f64::NAN));
            }
        }
    }
    for p in &pods {
        del(&node, bin, p, &ours);
    }
    rows
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn cni(node: &Node, plugin: &Path, verb: &str, pod: &Pod, conf: &Value) -> bool {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(plugin)
        .env_clear()
        .envs([
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", pod.container_id.as_str()),
            ("CNI_NETNS", &pod.ns.path()),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the plugin");
    use std::io::Write;
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    child.wait().is_ok_and(|s| s.success())
}

fn add(node: &Node, plugin: &Path, pod: &Pod, conf: &Value) -> bool {
    cni(node, plugin, "ADD", pod, conf)
}

fn del(node: &Node, plugin: &Path, pod: &Pod, conf: &Value) {
    cni(node, plugin, "DEL", pod, conf);
}

/// tcpdump on the switch's bridge, counting ARP frames (every node's frames reach it).
struct Counter {
    child: Child,
}

impl Counter {
    fn start(lan: &Lan) -> Counter {
        let child = Command::new("ip")
            .args(["netns", "exec", &lan.switch.name])
            .args(["tcpdump", "-n", "-l", "-p", "-i", "br0", "arp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump must be installed: run scripts/test.sh");
        std::thread::sleep(Duration::from_millis(700));
        Counter { child }
    }

    fn stop(mut self) -> usize {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let out = out.wait_with_output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| l.contains("ARP,"))
            .count()
    }
}

/// A process's CPU time (user and system), to take its share of one core over a while.
struct CpuTime {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl CpuTime {
    fn of(pid: u32) -> CpuTime {
        CpuTime {
            pid,
            ticks: ticks(pid),
            at: Instant::now(),
        }
    }

    fn share_since(&self) -> f64 {
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        (ticks(self.pid) - self.ticks) as f64 / hz / self.at.elapsed().as_secs_f64()
    }
}

/// utime + stime of `pid`, in clock ticks (proc(5)), its threads included.
fn ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line; `after_name` starts at field 3.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}
