//! The node agent's bounds against a tenant that takes all it can (README: Security): a pod
//! with five Zenoh attachments opening connection after connection to its relays, with the
//! agent's descriptor limit at 1024, never runs the agent out of descriptors; a second
//! tenant's membership and relay (its connection open before, and a new one) go on working.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ros_macvlan::agent::client::AgentClient;
use serde_json::json;
use support::*;

const GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(239, 255, 0, 1);
/// The node's routers for pods, as the agent's --zenoh-routers names them.
const ROUTERS: std::ops::RangeInclusive<u16> = 7448..=7463;

/// A router serving each connection on a thread of its own: `answer` gets what was read
/// and the stream; the connection closes when it returns false.
fn serve_each(
    listener: TcpListener,
    stop: &Arc<AtomicBool>,
    answer: fn(&mut TcpStream, &[u8]) -> bool,
) {
    let mut served = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let stop = Arc::clone(stop);
                served.push(std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = vec![0u8; 64 * 1024];
                    while !stop.load(Ordering::SeqCst) {
                        match s.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if !answer(&mut s, &buf[..n]) {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => return,
                        }
                    }
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for s in served {
        let _ = s.join();
    }
}

/// A router that echoes what it gets.
fn serve_echo(listener: TcpListener, stop: &Arc<AtomicBool>) {
    serve_each(listener, stop, |s, got| s.write_all(got).is_ok());
}

/// A router that takes all it gets and throws it away: a pod pushing to it is held back by
/// nothing but the agent's relay.
fn serve_drain(listener: TcpListener, stop: &Arc<AtomicBool>) {
    serve_each(listener, stop, |_, _| true);
}

/// A connection from inside `pod` to its 127.0.0.1:`port` (the relay's listener).
fn connect(pod: &Pod, port: u16) -> std::io::Result<TcpStream> {
    connect_to(pod, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn connect_to(pod: &Pod, addr: SocketAddr) -> std::io::Result<TcpStream> {
    pod.ns
        .handle()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Whether `stream` echoes `what` back within 3 s (through the relay and a router).
fn echoes(stream: &mut TcpStream, what: &[u8]) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    if stream.write_all(what).is_err() {
        return false;
    }
    let mut got = vec![0u8; what.len()];
    stream.read_exact(&mut got).is_ok() && got == what
}

/// A network of `name` with the Zenoh relay on `port`, its own range.
fn zenoh_net(
    data: &DataDir,
    agent: &TestAgent,
    name: &str,
    port: u16,
    first: u8,
) -> serde_json::Value {
    let (start, end) = (
        format!("198.51.100.{first}"),
        format!("198.51.100.{}", first + 4),
    );
    let mut conf = with_agent(
        guide_config(Some("1.0.0"), "lan0", data, &start, &end),
        agent,
    );
    conf["name"] = json!(name);
    conf["zenoh"] = json!({ "port": port });
    conf
}

#[test]
fn a_pod_opening_all_it_can_leaves_the_agent_descriptors_and_the_other_tenant_its_relay() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let (attacker, tenant) = (node.pod(11), node.pod(12));
    for pod in [&attacker, &tenant] {
        pod.ns.ip(&["link", "set", "lo", "up"]);
    }
    let pool = format!("127.0.0.1:{}-{}", ROUTERS.start(), ROUTERS.end());
    // The node's policy lets a pod have five relays (one is the default).
    let policy = NodePolicy::new(Some(json!({ "zenohRelaysPerPod": 5 })));
    let policy_env = format!("ROS_MACVLAN_POLICY_FILE={}", policy.file());
    let agent = TestAgent::start_under(
        &["env", &policy_env, "prlimit", "--nofile=1024:1024"],
        Some(&node.ns.name),
        &["--zenoh-routers", &pool],
    );
    let _routers = StandInRouters::start(&node.ns, ROUTERS, serve_echo);
    let data = DataDir::create();

    // The second tenant: one attachment, a membership and a relay, a connection open.
    let tenant_conf = zenoh_net(&data, &agent, "tenant-net", 7447, 100);
    add(&node, &tenant, &tenant_conf).ok();
    let mut before = connect(&tenant, 7447).expect("the tenant's relay");
    assert!(echoes(&mut before, b"before"), "{}", agent.log());

    // The attacker: five attachments, each with a relay on a port of its own.
    let attacker_confs: Vec<_> = (0..5u8)
        .map(|i| {
            let conf = zenoh_net(
                &data,
                &agent,
                &format!("attack-{i}"),
                7447 + u16::from(i),
                110 + 5 * i,
            );
            let ifname = format!("net{}", i + 1);
            cni_with("ADD", &node, &attacker, &conf, &[("CNI_IFNAME", &ifname)]).ok();
            (conf, ifname)
        })
        .collect();
    // Connection after connection to every listener of every relay (127.0.0.1 and ::1),
    // each saying something so it is relayed.
    let mut opened = Vec::new();
    for port in 7447..7452u16 {
        for ip in [
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ] {
            for _ in 0..150 {
                if let Ok(mut s) = connect_to(&attacker, SocketAddr::new(ip, port)) {
                    let _ = s.write_all(b"x");
                    opened.push(s);
                }
            }
        }
    }
    assert!(
        opened.len() > 1000,
        "the attack opened {} connections",
        opened.len()
    );
    std::thread::sleep(Duration::from_secs(1));

    let pid = agent.pid().expect("the agent runs");
    let in_use = std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count);
    let log = agent.log();
    assert!(
        !log.contains("os error 24") && !log.contains("Too many open files"),
        "the agent ran out of descriptors:\n{log}"
    );
    assert!(
        in_use.as_ref().is_ok_and(|n| *n < 1024),
        "the agent has {in_use:?} descriptors open"
    );
    assert!(
        log.contains("closing new connections"),
        "the attacker's connections were not bounded:\n{log}"
    );
    assert!(
        echoes(&mut before, b"during"),
        "the tenant's open connection:\n{log}"
    );
    let mut new = connect(&tenant, 7447).expect("the tenant's relay accepts");
    assert!(
        echoes(&mut new, b"new"),
        "a new connection of the tenant:\n{log}"
    );
    assert!(
        joined(&tenant.ns, "net1").contains(&GROUP),
        "the tenant's membership"
    );

    drop(opened);
    for (conf, ifname) in &attacker_confs {
        cni_with("DEL", &node, &attacker, conf, &[("CNI_IFNAME", ifname)]);
    }
    del(&node, &tenant, &tenant_conf).ok();
}

/// Shares of the node's routers (README: Security): one relay per pod unless the node policy
/// says more, half of the routers at most for one Kubernetes namespace, and a clear refusal
/// (code 11) past them, while a second tenant still gets its relay.
#[test]
fn one_relay_per_pod_and_half_the_routers_per_namespace() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pods: Vec<Pod> = (11..15).map(|n| node.pod(n)).collect();
    let agent = TestAgent::start_in(
        Some(&node.ns.name),
        &["--zenoh-routers", "127.0.0.1:7448-7451"],
    );
    let data = DataDir::create();
    let conf = zenoh_net(&data, &agent, "zenoh-net", 7447, 100);
    let second = zenoh_net(&data, &agent, "zenoh-net-2", 7448, 110);
    let args = |namespace: &str, name: &str| {
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
    };
    let add_as = |pod: &Pod, conf: &serde_json::Value, ifname: &str, args: &str| {
        cni_with(
            "ADD",
            &node,
            pod,
            conf,
            &[("CNI_IFNAME", ifname), ("CNI_ARGS", args)],
        )
    };

    add_as(&pods[0], &conf, "net1", &args("team-a", "p0")).ok();
    let again = add_as(&pods[0], &second, "net2", &args("team-a", "p0"));
    assert_eq!(again.err_code(), 11, "{}", again.stderr);
    assert!(
        again.msg().contains("the pod has 1 Zenoh relays already"),
        "{}",
        again.msg()
    );
    add_as(&pods[1], &conf, "net1", &args("team-a", "p1")).ok();
    let third = add_as(&pods[2], &conf, "net1", &args("team-a", "p2"));
    assert_eq!(third.err_code(), 11, "{}", third.stderr);
    assert!(
        third
            .msg()
            .contains("Kubernetes namespace team-a has 2 Zenoh relays already"),
        "{}",
        third.msg()
    );
    // The second tenant still gets a router of its own.
    add_as(&pods[3], &conf, "net1", &args("team-b", "p3")).ok();
    assert!(
        !tcp_listeners(&pods[3].ns, 7447).is_empty(),
        "team-b's pod has no relay"
    );
    let given: Vec<_> = AgentClient::new(&agent.socket())
        .relays()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.router)
        .collect();
    assert_eq!(given.len(), 3, "{given:?}");

    for (pod, name) in [(&pods[0], "p0"), (&pods[1], "p1"), (&pods[3], "p3")] {
        let namespace = if name == "p3" { "team-b" } else { "team-a" };
        cni_with(
            "DEL",
            &node,
            pod,
            &conf,
            &[("CNI_ARGS", &args(namespace, name))],
        )
        .ok();
    }
}

/// A cgroup of the test's own under one controller of cgroups v1 (`memory`, `cpu`), with
/// its limits written; removed on drop, once the processes put in it are gone.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn create(controller: &str, limits: &[(&str, String)]) -> Cgroup {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(unique("rmtest"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!("create a {controller} cgroup (cgroups v1) at {dir:?}: {e}")
        });
        let group = Cgroup(dir);
        for (file, value) in limits {
            std::fs::write(group.0.join(file), value).unwrap();
        }
        group
    }

    /// `limit` bytes of memory.
    fn memory(limit: u64) -> Cgroup {
        Cgroup::create("memory", &[("memory.limit_in_bytes", limit.to_string())])
    }

    /// `millicores` thousandths of a CPU, as a container's CPU limit is enforced: a CFS
    /// quota per 100 ms period.
    fn cpu(millicores: u64) -> Cgroup {
        Cgroup::create(
            "cpu",
            &[
                ("cpu.cfs_period_us", "100000".into()),
                ("cpu.cfs_quota_us", (millicores * 100).to_string()),
            ],
        )
    }

    /// An agent in the group, in `node`'s namespace, with the stand-in routers as its pool.
    fn agent(&self, node: &Node) -> TestAgent {
        // A shell that moves itself into the group and runs the agent.
        let under = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", self.0.display());
        let pool = format!("127.0.0.1:{}-{}", ROUTERS.start(), ROUTERS.end());
        TestAgent::start_under(
            &["sh", "-c", &under, "sh"],
            Some(&node.ns.name),
            &["--zenoh-routers", &pool],
        )
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The agent in the DaemonSet's memory limit (32 MiB): sixteen pods each relaying as many
/// connections as they may (the node's 1024 in all), each pushing data that the routers do
/// not take, leave the agent alive and answering.
#[test]
fn the_agent_lives_in_32_mib_with_every_connection_pushing_data() {
    if !require_root() {
        return;
    }
    let cgroup = Cgroup::memory(32 << 20);
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pods: Vec<Pod> = (11..27).map(|n| node.pod(n)).collect();
    let agent = cgroup.agent(&node);
    let _routers = StandInRouters::start(&node.ns, ROUTERS, serve_sink);
    let data = DataDir::create();
    let conf = zenoh_net(&data, &agent, "zenoh-net", 7447, 100);
    let mut conf = conf;
    conf["ipam"]["ranges"][0][0]["rangeEnd"] = json!("198.51.100.140");
    let mut streams = Vec::new();
    for pod in &pods {
        pod.ns.ip(&["link", "set", "lo", "up"]);
        add(&node, pod, &conf).ok();
        for _ in 0..64 {
            let s = connect(pod, 7447).expect("a relayed connection");
            s.set_nonblocking(true).unwrap();
            streams.push(s);
        }
    }
    let chunk = vec![7u8; 64 * 1024];
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        for s in &mut streams {
            let _ = s.write(&chunk);
        }
    }
    std::thread::sleep(Duration::from_millis(500));

    let pid = agent.pid().expect("the agent runs");
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    let answers = AgentClient::new(&agent.socket()).list().is_ok();
    let (peak, oom) = (
        cgroup.read("memory.max_usage_in_bytes"),
        cgroup.read("memory.oom_control"),
    );
    assert!(
        alive && answers,
        "the agent did not survive (peak {peak}, {oom}):\n{}",
        agent.log()
    );
    assert!(oom.contains("oom_kill 0"), "{oom}");
    eprintln!("the agent's memory cgroup peaked at {} bytes", peak.trim());
    drop(streams);
    for pod in &pods {
        del(&node, pod, &conf).ok();
    }
}

/// The DaemonSet's CPU limit for the agent (install/base/daemonset.yaml), in thousandths
/// of a core.
const CPU_LIMIT_MILLICORES: u64 = 100;

/// Round trips of 64 bytes through `stream` (a relay to an echoing router) for `during`,
/// one after the other: how long each took, and how many got no answer in 5 s.
fn round_trips(stream: &mut TcpStream, during: Duration) -> (Vec<Duration>, usize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.set_nodelay(true);
    let (ping, mut pong) = ([9u8; 64], [0u8; 64]);
    let (mut took, mut lost) = (Vec::new(), 0);
    let until = std::time::Instant::now() + during;
    while std::time::Instant::now() < until {
        let sent = std::time::Instant::now();
        if stream.write_all(&ping).is_err() || stream.read_exact(&mut pong).is_err() {
            lost += 1;
            continue;
        }
        took.push(sent.elapsed());
    }
    took.sort();
    (took, lost)
}

/// The median and the 99th percentile of sorted durations, in milliseconds.
fn percentiles(took: &[Duration]) -> (f64, f64) {
    let at = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.99))
}

/// The agent in the DaemonSet's CPU limit (100m, `cpu.cfs_quota_us`), two tenants on one
/// network (README: Security): tenant A's pod relays all the connections its share allows,
/// each pushing data at full speed to a router that takes it all, so the agent spends its
/// whole quota; meanwhile tenant B's relay keeps answering a request/response loop, and
/// B's ADD and DEL of a further pod complete. Figures are printed; the bounds asserted are
/// generous. Under a quota that A exhausts every period, B's round trip cannot beat the
/// period's throttled part (up to 90 ms), whatever the agent does: what is asked is that B
/// is served every period or so, not after every connection of A has had its fill.
#[test]
fn one_tenant_pushing_all_it_can_leaves_another_its_relay_and_calls_under_the_cpu_limit() {
    if !require_root() {
        return;
    }
    let cgroup = Cgroup::cpu(CPU_LIMIT_MILLICORES);
    let lan = Lan::create();
    let node = Node::new(&lan);
    let (a, b, b2) = (node.pod(11), node.pod(12), node.pod(13));
    for pod in [&a, &b, &b2] {
        pod.ns.ip(&["link", "set", "lo", "up"]);
    }
    let agent = cgroup.agent(&node);
    // Routers are given first free first: B's (added first) echoes, the others drain.
    let first = *ROUTERS.start();
    let _echo = StandInRouters::start(&node.ns, first..=first, serve_echo);
    let _drains = StandInRouters::start(&node.ns, first + 1..=*ROUTERS.end(), serve_drain);
    let data = DataDir::create();
    let conf = zenoh_net(&data, &agent, "zenoh-net", 7447, 100);
    let as_pod = |verb: &str, pod: &Pod, namespace: &str, name: &str| {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        let started = std::time::Instant::now();
        cni_with(verb, &node, pod, &conf, &[("CNI_ARGS", &args)]).ok();
        started.elapsed()
    };
    as_pod("ADD", &b, "tenant-b", "b");
    as_pod("ADD", &a, "tenant-a", "a");

    // B alone, in the same limit.
    let mut b_relay = connect(&b, 7447).expect("B's relay");
    let (quiet, quiet_lost) = round_trips(&mut b_relay, Duration::from_secs(3));
    let quiet_add = as_pod("ADD", &b2, "tenant-b", "b2");
    let quiet_del = as_pod("DEL", &b2, "tenant-b", "b2");

    // A: every connection its pod may have relayed, each pushing from a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pushers = Vec::new();
    for _ in 0..ros_macvlan::agent::budget::MAX_CONNECTIONS_PER_POD {
        let Ok(mut s) = connect(&a, 7447) else { break };
        let (stop, pushed) = (Arc::clone(&stop), Arc::clone(&pushed));
        pushers.push(std::thread::spawn(move || {
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let chunk = vec![7u8; 64 * 1024];
            while !stop.load(Ordering::SeqCst) {
                match s.write(&chunk) {
                    Ok(n) => {
                        pushed.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }));
    }
    let a_connections = pushers.len();
    std::thread::sleep(Duration::from_secs(1));
    let throttled_before = cgroup.read("cpu.stat");
    let (pushed_before, attack_started) =
        (pushed.load(Ordering::Relaxed), std::time::Instant::now());

    let (loaded, loaded_lost) = round_trips(&mut b_relay, Duration::from_secs(5));
    let loaded_add = as_pod("ADD", &b2, "tenant-b", "b2");
    let loaded_del = as_pod("DEL", &b2, "tenant-b", "b2");

    let a_rate = (pushed.load(Ordering::Relaxed) - pushed_before) as f64
        / attack_started.elapsed().as_secs_f64()
        / 1e6;
    let throttled_after = cgroup.read("cpu.stat");
    stop.store(true, Ordering::SeqCst);
    for p in pushers {
        let _ = p.join();
    }

    let throttled = |stat: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let periods_throttled = throttled(&throttled_after) - throttled(&throttled_before);
    let rate = |took: &[Duration], secs: f64| took.len() as f64 / secs;
    let ((quiet_median, quiet_p99), (loaded_median, loaded_p99)) =
        (percentiles(&quiet), percentiles(&loaded));
    eprintln!(
        "agent in {CPU_LIMIT_MILLICORES}m of CPU:\n\
         \x20 tenant A: {a_connections} connections pushing, {a_rate:.1} MB/s relayed; the agent throttled in {periods_throttled} periods of 100 ms meanwhile\n\
         \x20 tenant B alone:       {:.0} round trips/s, median {quiet_median:.2} ms, p99 {quiet_p99:.2} ms, {quiet_lost} lost; ADD {quiet_add:.2?}, DEL {quiet_del:.2?}\n\
         \x20 tenant B during A's:  {:.0} round trips/s, median {loaded_median:.2} ms, p99 {loaded_p99:.2} ms, {loaded_lost} lost; ADD {loaded_add:.2?}, DEL {loaded_del:.2?}",
        rate(&quiet, 3.0),
        rate(&loaded, 5.0),
    );
    assert_eq!(
        a_connections,
        ros_macvlan::agent::budget::MAX_CONNECTIONS_PER_POD,
        "A's connections"
    );
    assert!(
        periods_throttled > 10,
        "A did not take the agent to its CPU limit: {throttled_after}"
    );
    assert_eq!(loaded_lost, 0, "B's round trips lost:\n{}", agent.log());
    // An agent that let one connection copy until tokio's budget ran out: 1.2 s, 1 a second.
    assert!(
        loaded_median < 250.0 && rate(&loaded, 5.0) >= 4.0,
        "B's relay starved: median {loaded_median:.1} ms, {} round trips in 5 s",
        loaded.len()
    );
    // An agent that let one connection copy until tokio's budget ran out took 2 s.
    for (what, took) in [("ADD", loaded_add), ("DEL", loaded_del)] {
        assert!(
            took < Duration::from_millis(1500),
            "B's {what} took {took:?}"
        );
    }
    drop(b_relay);
    as_pod("DEL", &a, "tenant-a", "a");
    as_pod("DEL", &b, "tenant-b", "b");
}
