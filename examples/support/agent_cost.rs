//! The node agent's own cost (issue 31), beside the DaemonSet's limits: its resident memory
//! (VmRSS) and open descriptors idle with no attachment, idle with 110, and at the relay's
//! worst case (those 110, and sixteen pods each relaying as many connections as a pod may,
//! 64: the node's 1024, all pushing data that the routers never read, as
//! tests/agent_bounds.rs drives it: RSS sampled while they push, its largest), and the size
//! of its whole listing reply with 110 attachments against `MAX_REPLY`. The reference has no
//! agent: its column is empty. (VmHWM is not used: the kernel updates it lazily, and it read
//! below a VmRSS sampled before it.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ros_macvlan::agent::budget::{HEADROOM, MEMORY_LIMIT, NEEDED};
use ros_macvlan::agent::budget::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_POD};
use ros_macvlan::agent::protocol::MAX_REPLY;
use ros_macvlan::tools::demo::scene::{Lan, Node, Pod};
use serde_json::json;

use crate::routers::{serve_sink, StandInRouters};

/// From the last ADD to measuring: the LAN watch's busy spell (8 s) and a margin.
const SETTLE: Duration = Duration::from_secs(10);
const ATTACHMENTS: usize = 110;
/// The node's routers for pods, as the agent's default --zenoh-routers names them.
const ROUTERS: std::ops::RangeInclusive<u16> = 7448..=7463;
const PUSH_FOR: Duration = Duration::from_secs(4);

/// (figure, ros-macvlan, reference) rows; the reference has no agent (NaN).
pub fn measure(bin: &Path, work: &Path) -> Vec<(String, f64, f64)> {
    let lan = Lan::create();
    let node = Node::new(&lan);
    let agent = super::agent_in(&node, bin);
    let pid = agent.pid().expect("the agent runs");
    let network = |name: &str, first: u8, last: u8| {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": "ros-macvlan", "master": "lan0",
            "agentSocket": agent.socket(),
            "ipam": { "type": "host-local", "dataDir": work.join("agent-cost"),
              "ranges": [[{ "subnet": "198.51.100.0/24",
                            "rangeStart": format!("198.51.100.{first}"),
                            "rangeEnd": format!("198.51.100.{last}") }]] },
        })
    };
    let mut rows = Vec::new();
    let mut figures = |what: &str, (rss, fds): (u64, usize)| {
        rows.push((format!("agent RSS, {what} (KiB)"), rss as f64, f64::NAN));
        rows.push((format!("agent open fds, {what}"), fds as f64, f64::NAN));
    };

    std::thread::sleep(SETTLE);
    figures("idle, no attachment", now(pid));

    // 110 attachments, the default config (duplicate detection on: the LAN watch's too).
    let attached = network("agent-cost", 10, 130);
    let pods: Vec<Pod> = (1..=ATTACHMENTS).map(|n| node.pod(n as u8)).collect();
    for pod in &pods {
        let added = super::invoke(&node, bin, "ADD", pod, &attached);
        assert!(added.ok, "ADD failed: {}", added.stdout);
    }
    std::thread::sleep(SETTLE);
    figures(&format!("idle, {ATTACHMENTS} attachments"), now(pid));
    let listing = listing_bytes(&agent.socket());

    // The relay's worst case, on top: every connection the node relays, pushing data.
    let _routers = StandInRouters::start(&node.ns, ROUTERS, serve_sink);
    let mut relayed = network("agent-cost-zenoh", 140, 160);
    relayed["zenoh"] = json!(true);
    let relaying: Vec<Pod> = (0..MAX_CONNECTIONS / MAX_CONNECTIONS_PER_POD)
        .map(|i| node.pod(200 + i as u8))
        .collect();
    let mut streams = Vec::new();
    for pod in &relaying {
        pod.ns.ip(&["link", "set", "lo", "up"]);
        let added = super::invoke(&node, bin, "ADD", pod, &relayed);
        assert!(added.ok, "ADD with zenoh failed: {}", added.stdout);
        for _ in 0..MAX_CONNECTIONS_PER_POD {
            let s = connect(pod).expect("a relayed connection");
            s.set_nonblocking(true).unwrap();
            streams.push(s);
        }
    }
    let chunk = vec![7u8; 64 * 1024];
    let until = Instant::now() + PUSH_FOR;
    let mut most = 0;
    while Instant::now() < until {
        for s in &mut streams {
            let _ = s.write(&chunk);
        }
        most = most.max(now(pid).0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss, fds) = now(pid);
    let worst = format!("relay worst case ({} connections pushing)", streams.len());
    figures(&worst, (rss.max(most), fds));
    rows.push((
        format!("agent listing reply, {ATTACHMENTS} attachments (bytes)"),
        listing as f64,
        f64::NAN,
    ));
    drop(streams);
    for pod in &relaying {
        super::invoke(&node, bin, "DEL", pod, &relayed);
    }
    for pod in &pods {
        super::invoke(&node, bin, "DEL", pod, &attached);
    }

    // The limits they are measured against.
    rows.push((
        "limit: DaemonSet memory (KiB)".into(),
        (MEMORY_LIMIT / 1024) as f64,
        f64::NAN,
    ));
    rows.push((
        "limit: agent's RLIMIT_NOFILE (soft, as raised)".into(),
        nofile(pid) as f64,
        f64::NAN,
    ));
    rows.push((
        "limit: descriptors the agent leases (budget)".into(),
        (NEEDED - HEADROOM) as f64,
        f64::NAN,
    ));
    rows.push((
        "limit: a reply the client reads (MAX_REPLY, bytes)".into(),
        MAX_REPLY as f64,
        f64::NAN,
    ));
    rows
}

/// The agent's resident memory (KiB) and open descriptors now.
fn now(pid: u32) -> (u64, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (super::status_kib(pid, "VmRSS:"), fds)
}

/// The soft limit on open files of `pid` (proc(5), limits).
fn nofile(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

/// The bytes of the agent's answer to `list`, as its client reads them (unbounded here).
fn listing_bytes(socket: &Path) -> usize {
    let mut stream = UnixStream::connect(socket).expect("the agent's socket");
    stream
        .write_all(b"\"list\"\n")
        .expect("ask for the listing");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("the listing");
    reply.len()
}

/// A connection from inside `pod` to its localhost:7447 (the relay's listener).
fn connect(pod: &Pod) -> std::io::Result<TcpStream> {
    let relay = SocketAddr::from(([127, 0, 0, 1], 7447));
    pod.ns
        .handle()
        .run(|| TcpStream::connect_timeout(&relay, Duration::from_secs(2)))
        .map_err(|e| std::io::Error::other(e.to_string()))?
}
