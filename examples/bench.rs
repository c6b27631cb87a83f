//! `cargo run --release --example bench` (root): times ros-macvlan against the reference
//! macvlan + host-local pair (Debian's containernetworking-plugins) in the same run, on the
//! same config and the same kind of namespaces, and prints a table of ratios ours/reference.
//! Figures: ADD and DEL latency (min, median, p95), 50 ADDs at once (wall time), DEL with
//! 1, 100 and 1000 claims in the store, peak memory (max RSS) per invocation, and the floor:
//! the same kernel operations done by `ip -batch`. `--only lan-cost` runs duplicate
//! detection's cost on the LAN alone; `--only agent-cost` the node agent's memory and
//! descriptors beside the DaemonSet's limits alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ros_macvlan::sys::netlink::{Netlink, Rtnl};
use ros_macvlan::tools::demo::scene::{Agent, Lan, Node, Ns, Pod};
use serde_json::{json, Value};

// Zenoh relay (issue 24): its cost against a direct connection.
#[path = "support/relay.rs"]
mod relay;
// Duplicate detection's cost on the LAN (issue 32).
#[path = "support/lan_cost.rs"]
mod lan_cost;
// The node agent's memory and descriptors (issue 31), on the tests' stand-in routers.
#[path = "support/agent_cost.rs"]
mod agent_cost;
#[path = "../tests/support/routers.rs"]
mod routers;

const CYCLES: usize = 50;
const LAN_COST: &str = "duplicate detection's cost";
const AGENT_COST: &str = "the node agent's cost, and its limits";
const REFERENCE: &str = "/usr/lib/cni";

/// One finished invocation: how long it took, what it printed.
struct Run {
    took: Duration,
    ok: bool,
    stdout: String,
    /// The log line (and the plugin's notes on what it passed over).
    stderr: String,
}

fn plugin_command(bin: &Path, verb: &str, pod: &Pod) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", pod.ns.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", REFERENCE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `bin` inside `node`'s namespace (a child starts in the namespace of the thread that
/// spawns it), feeds the config, and times it until it exits and its output closes, as a
/// runtime waits for it.
fn invoke(node: &Node, bin: &Path, verb: &str, pod: &Pod, conf: &Value) -> Run {
    let input = conf.to_string();
    let mut cmd = plugin_command(bin, verb, pod);
    node.ns
        .handle()
        .run(move || {
            let start = Instant::now();
            let mut child = cmd.spawn().expect("spawn plugin");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                // A plugin may answer without reading its config (the reference's VERSION
                // does), and be gone before it is written: its answer is what counts.
                .ok();
            let out = child.wait_with_output().unwrap();
            Run {
                took: start.elapsed(),
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .unwrap()
}

/// The peak resident memory (VmHWM, KiB) of one invocation of `bin` itself. wait4's
/// ru_maxrss cannot tell it: a spawned child inherits its parent's peak at exec. So the
/// child is traced, and its VmHWM read when it stops on its way out.
#[allow(clippy::zombie_processes)] // reaped by waitpid in the loop, which std cannot do
fn peak_rss(node: &Node, bin: &Path, verb: &str, pod: &Pod, conf: &Value) -> u64 {
    use nix::sys::ptrace;
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::os::unix::process::CommandExt;
    let input = conf.to_string();
    let mut cmd = plugin_command(bin, verb, pod);
    // SAFETY: between fork and exec only ptrace(PTRACE_TRACEME), async-signal-safe.
    unsafe {
        cmd.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
    }
    node.ns
        .handle()
        .run(move || {
            let mut child = cmd.spawn().expect("spawn plugin");
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // Stopped at exec: the config fits the pipe, so it goes in before it runs.
            waitpid(pid, None).unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                // A plugin may answer without reading its config (the reference's VERSION
                // does), and be gone before it is written: its answer is what counts.
                .ok();
            ptrace::setoptions(pid, ptrace::Options::PTRACE_O_TRACEEXIT).unwrap();
            ptrace::cont(pid, None).unwrap();
            let mut peak = 0;
            loop {
                match waitpid(pid, None).unwrap() {
                    WaitStatus::PtraceEvent(_, _, _) => {
                        peak = status_kib(pid.as_raw() as u32, "VmHWM:");
                        ptrace::cont(pid, None).unwrap();
                    }
                    WaitStatus::Stopped(_, sig) => ptrace::cont(pid, Some(sig)).unwrap(),
                    WaitStatus::Exited(..) | WaitStatus::Signaled(..) => break,
                    _ => {}
                }
            }
            peak
        })
        .unwrap()
}

/// A figure in KiB of `pid`'s /proc status (`VmHWM:`, `VmRSS:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A node agent of `bin` in `node`'s namespace, as the DaemonSet runs one in the node's.
fn agent_in(node: &Node, bin: &Path) -> Agent {
    let mut agent = Agent::vacant();
    let mut in_node = Command::new("ip");
    in_node.args(["netns", "exec", &node.ns.name]).arg(bin);
    agent.launch(in_node, &[]);
    agent
}

/// The node agent's socket, as the DaemonSet runs one beside the plugin: an ADD hands it the
/// membership, a DEL tells it to let go (the reference ignores the key).
static AGENT_SOCKET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn conf(kind: &str, name: &str, data: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": name, "type": kind, "master": "lan0", "mode": "bridge",
        "agentSocket": AGENT_SOCKET.get().expect("the agent started first"),
        "ipam": { "type": "host-local", "dataDir": data,
          "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.10", "rangeEnd": "198.51.100.250" }]] },
        // Off for the comparison (the reference has nothing like it); its cost has a row of
        // its own. The multicast setup stays on: it is part of what a ros-macvlan ADD does.
        "duplicateDetection": false,
    })
}

struct Stats {
    min: f64,
    median: f64,
    p95: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Stats {
        min: ms(v[0]),
        median: ms(v[v.len() / 2]),
        p95: ms(v[(v.len() * 95 / 100).min(v.len() - 1)]),
    }
}

struct Side {
    name: &'static str,
    bin: PathBuf,
    kind: &'static str,
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the benchmark builds network namespaces: run it as root");
        std::process::exit(1);
    }
    let ours = Side {
        name: "ros-macvlan",
        bin: plugin_binary(),
        kind: "ros-macvlan",
    };
    let reference = Side {
        name: "reference",
        bin: PathBuf::from(REFERENCE).join("macvlan"),
        kind: "macvlan",
    };
    // `--only lan-cost`: duplicate detection's rows alone (a few minutes, for its tuning).
    if std::env::args().any(|a| a == "lan-cost") {
        let work =
            PathBuf::from("/var/lib/cni").join(format!("ros-macvlan-bench-{}", std::process::id()));
        let rows = lan_cost::measure(&ours.bin, Path::new(REFERENCE), &work);
        let _ = std::fs::remove_dir_all(&work);
        print_costs(LAN_COST, &rows);
        return;
    }
    // `--only agent-cost`: the node agent's memory and descriptors alone (about two minutes).
    if std::env::args().any(|a| a == "agent-cost") {
        let work =
            PathBuf::from("/var/lib/cni").join(format!("ros-macvlan-bench-{}", std::process::id()));
        let rows = agent_cost::measure(&ours.bin, &work);
        let _ = std::fs::remove_dir_all(&work);
        print_machine();
        print_costs(AGENT_COST, &rows);
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    // In the node's namespace, as the DaemonSet's agent runs in the node's: it probes the
    // networks' next addresses ahead on the master there.
    let mut agent = Agent::vacant();
    let mut in_node = Command::new("ip");
    in_node
        .args(["netns", "exec", &node.ns.name])
        .arg(&ours.bin);
    agent.launch(in_node, &[]);
    AGENT_SOCKET
        .set(agent.socket().display().to_string())
        .expect("set once");
    // Below the reference plugin's own store directory (one the plugin allows for dataDir),
    // on the filesystem a node's claims live on.
    let work =
        PathBuf::from("/var/lib/cni").join(format!("ros-macvlan-bench-{}", std::process::id()));
    let mut rows: Vec<(String, f64, f64, &str)> = Vec::new();

    // ADD/DEL latency over CYCLES cycles, alternating the two plugins cycle by cycle so that
    // machine noise hits both alike.
    let pods: Vec<Pod> = (0..2).map(|i| node.pod(10 + i)).collect();
    let mut add = [Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new()];
    let mut gone = [Vec::new(), Vec::new()];
    for _ in 0..CYCLES {
        for (i, side) in [&ours, &reference].iter().enumerate() {
            let c = conf(
                side.kind,
                &format!("bench-{}", side.kind),
                &work.join("latency"),
            );
            let a = invoke(&node, &side.bin, "ADD", &pods[i], &c);
            assert!(a.ok, "{} ADD failed: {}", side.name, a.stdout);
            let started = Instant::now();
            let d = invoke(&node, &side.bin, "DEL", &pods[i], &c);
            assert!(d.ok, "{} DEL failed", side.name);
            gone[i].push(until_no_macvlan(&pods[i], started));
            add[i].push(a.took);
            del[i].push(d.took);
        }
    }
    let (a0, a1) = (stats(add[0].clone()), stats(add[1].clone()));
    let (d0, d1) = (stats(del[0].clone()), stats(del[1].clone()));
    rows.push(("ADD min (ms)".into(), a0.min, a1.min, ""));
    rows.push((
        "ADD median (ms)".into(),
        a0.median,
        a1.median,
        "target <= 0.25",
    ));
    rows.push(("ADD p95 (ms)".into(), a0.p95, a1.p95, ""));
    rows.push(("DEL min (ms)".into(), d0.min, d1.min, ""));
    rows.push((
        "DEL median (ms)".into(),
        d0.median,
        d1.median,
        "target <= 0.25",
    ));
    rows.push(("DEL p95 (ms)".into(), d0.p95, d1.p95, ""));
    let (g0, g1) = (stats(gone[0].clone()), stats(gone[1].clone()));
    rows.push((
        "DEL start to link gone, median (ms)".into(),
        g0.median,
        g1.median,
        "ros-macvlan: removed after DEL returns",
    ));
    // Peak memory, the largest of ADD and DEL, over a few invocations each.
    let mut rss = [0u64, 0u64];
    for _ in 0..5 {
        for (i, side) in [&ours, &reference].iter().enumerate() {
            let c = conf(side.kind, &format!("rss-{}", side.kind), &work.join("rss"));
            let a = peak_rss(&node, &side.bin, "ADD", &pods[i], &c);
            let d = peak_rss(&node, &side.bin, "DEL", &pods[i], &c);
            rss[i] = rss[i].max(a).max(d);
        }
    }
    rows.push((
        "peak RSS per invocation (KiB)".into(),
        rss[0] as f64,
        rss[1] as f64,
        "target: not above the reference (its macvlan process; host-local is another)",
    ));

    // Process start alone: VERSION changes nothing, so its time is starting and ending one
    // process of each binary (a reference ADD starts two: macvlan, then host-local).
    let mut version = [Vec::new(), Vec::new()];
    for _ in 0..CYCLES {
        for (i, side) in [&ours, &reference].iter().enumerate() {
            let c = conf(side.kind, "version", &work.join("version"));
            let v = invoke(&node, &side.bin, "VERSION", &pods[i], &c);
            assert!(v.ok, "{} VERSION failed: {}", side.name, v.stdout);
            version[i].push(v.took);
        }
    }
    let (v0, v1) = (stats(version[0].clone()), stats(version[1].clone()));
    rows.push((
        "process start: VERSION median (ms)".into(),
        v0.median,
        v1.median,
        "one process each; of ADD's median: see the profile in docs/performance.md",
    ));

    // The default config (duplicate detection on). The first ADD of a network probes for
    // itself (the agent has not seen the network yet); after it, the agent probes the next
    // addresses ahead and ADD takes a fresh one. Pod starts a few hundred ms apart, as on
    // a node; the reference runs the same cycles, interleaved.
    let mut first = Vec::new();
    let mut seen = [Vec::new(), Vec::new()];
    // A pod of the network stays attached meanwhile, as pods run on a node.
    let keeper = node.pod(99);
    for n in 0..5 {
        let mut c = conf(ours.kind, &format!("bench-dad-{n}"), &work.join("dad"));
        c.as_object_mut().unwrap().remove("duplicateDetection");
        let a = invoke(&node, &ours.bin, "ADD", &keeper, &c);
        assert!(a.ok, "ADD with duplicate detection failed: {}", a.stdout);
        first.push(a.took);
        if n > 0 {
            invoke(&node, &ours.bin, "DEL", &keeper, &c);
            continue;
        }
        // The agent learns the network from the attachment and probes ahead.
        std::thread::sleep(Duration::from_millis(2500));
        for _ in 0..10 {
            for (i, side) in [&ours, &reference].iter().enumerate() {
                let c = match i {
                    0 => c.clone(),
                    _ => conf(side.kind, "bench-dad-reference", &work.join("dad")),
                };
                let a = invoke(&node, &side.bin, "ADD", &pods[i], &c);
                assert!(a.ok, "{} ADD failed: {}", side.name, a.stdout);
                seen[i].push(a.took);
                invoke(&node, &side.bin, "DEL", &pods[i], &c);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        invoke(&node, &ours.bin, "DEL", &keeper, &c);
    }
    let ms: Vec<String> = seen[0]
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "default-config ADDs on a network the agent has seen (ms): {}",
        ms.join(" ")
    );
    let (s0, s1) = (stats(seen[0].clone()), stats(seen[1].clone()));
    rows.push((
        "ADD median, default config, network seen (ms)".into(),
        s0.median,
        s1.median,
        "target <= 2: duplicate detection on, the agent's probes fresh",
    ));
    rows.push((
        "ADD median, first ADD of a network (ms)".into(),
        stats(first).median,
        s1.median,
        "probes for itself: 2 x 50 ms",
    ));
    rows.push((
        "LAN announcement of a pod's address to report (ms)".into(),
        claim_to_report(&lan, &node, &ours.bin, &pods[0], &agent, &work),
        f64::NAN,
        "a host takes the address and announces it; the agent's watch reports it (the reference: never)",
    ));

    // Three nodes on one switch with one config and fresh stores, ten pods each, ADDs
    // interleaved, duplicate detection on: how often a pick is in use on the LAN already.
    let (collisions, spread_add) = three_nodes_interleaved(&lan, &ours.bin, &work);

    // 50 ADDs started at once, one pod each.
    let many: Vec<Pod> = (0..50).map(|i| node.pod(100 + i as u8)).collect();
    let mut wall = [0.0, 0.0];
    for (i, side) in [&ours, &reference].iter().enumerate() {
        let c = conf(
            side.kind,
            &format!("burst-{}", side.kind),
            &work.join("burst"),
        );
        let start = Instant::now();
        let results: Vec<Run> = std::thread::scope(|s| {
            let handles: Vec<_> = many
                .iter()
                .map(|p| s.spawn(|| invoke(&node, &side.bin, "ADD", p, &c)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        wall[i] = start.elapsed().as_secs_f64() * 1000.0;
        let mut addrs: Vec<String> = results
            .iter()
            .map(|r| {
                assert!(r.ok, "{} concurrent ADD failed: {}", side.name, r.stdout);
                serde_json::from_str::<Value>(&r.stdout).unwrap()["ips"][0]["address"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 50, "{}: duplicate addresses", side.name);
        for p in &many {
            invoke(&node, &side.bin, "DEL", p, &c);
        }
    }
    rows.push((
        "50 concurrent ADDs, wall (ms)".into(),
        wall[0],
        wall[1],
        "target <= 0.5",
    ));

    // DEL with other claims already in the store (filler claims named by documentation IPv6
    // addresses: files only, never on an interface).
    let mut del_by_claims = [Vec::new(), Vec::new()];
    for claims in [1usize, 100, 1000] {
        for (i, side) in [&ours, &reference].iter().enumerate() {
            let data = work.join(format!("claims-{claims}"));
            let network = format!("claims-{}", side.kind);
            let c = conf(side.kind, &network, &data);
            std::fs::create_dir_all(data.join(&network)).unwrap();
            for n in 0..claims.saturating_sub(1) {
                std::fs::write(
                    data.join(&network).join(format!("2001:db8::{n:x}")),
                    format!("filler{n}\r\nnet1"),
                )
                .unwrap();
            }
            let mut times = Vec::new();
            for _ in 0..15 {
                assert!(invoke(&node, &side.bin, "ADD", &pods[i], &c).ok);
                times.push(invoke(&node, &side.bin, "DEL", &pods[i], &c).took);
            }
            del_by_claims[i].push(stats(times).median);
        }
        let last = del_by_claims[0].len() - 1;
        rows.push((
            format!("DEL median with {claims} claims (ms)"),
            del_by_claims[0][last],
            del_by_claims[1][last],
            "",
        ));
    }
    let flat = |v: &Vec<f64>| v[2] / v[0];
    rows.push((
        "DEL 1000 claims / 1 claim".into(),
        flat(&del_by_claims[0]),
        flat(&del_by_claims[1]),
        "target: ours <= 1.5",
    ));

    println!(
        "three nodes x ten pods, fresh stores, duplicate detection on: {collisions:.2} collisions per ADD, ADD median {spread_add:.1} ms (target: collisions < 0.1)"
    );

    // The floor: the same kernel operations by ip -batch.
    let (floor, del_floor, removal_floor) = ip_batch_floor(&node, &pods[0]);
    // Zenoh relay (issue 24).
    let relayed = relay::measure(&lan, &ours.bin, &work);
    let lan_cost = lan_cost::measure(&ours.bin, Path::new(REFERENCE), &work);
    let agent_cost = agent_cost::measure(&ours.bin, &work);
    let _ = std::fs::remove_dir_all(&work);

    print_machine();
    println!(
        "{:<40} {:>12} {:>12} {:>8}  note",
        "figure", "ros-macvlan", "reference", "ratio"
    );
    for (name, a, b, note) in &rows {
        println!("{name:<40} {a:>12.2} {b:>12.2} {:>8.2}  {note}", a / b);
    }
    for (name, value, ours) in [
        ("floor: ip -batch ADD ops (ms)", floor, a0.median),
        ("floor: ip -batch DEL ops (ms)", del_floor, d0.median),
        ("floor: ip link del (ms)", removal_floor, g0.median),
    ] {
        println!(
            "{name:<40} {value:>12.2} {:>12} {:>8.2}  ros-macvlan / floor",
            "-",
            ours / value
        );
    }
    println!("{:<40} {:>12} {:>12} {:>8}", "", "relay", "direct", "ratio");
    for (name, through, direct) in &relayed {
        println!(
            "{name:<40} {through:>12.2} {direct:>12.2} {:>8.2}  relay / direct",
            through / direct
        );
    }
    print_costs(LAN_COST, &lan_cost);
    print_costs(AGENT_COST, &agent_cost);
    println!("results row (docs/performance.md):");
    println!("{}", results_row(&rows, collisions));
}

fn print_machine() {
    println!(
        "machine: {} cores, {}; kernel {}",
        num_cpus(),
        cpu_model(),
        kernel()
    );
}

/// Rows of one cost against the reference's (NaN where it has no such thing).
fn print_costs(title: &str, rows: &[(String, f64, f64)]) {
    println!("{title:<60} {:>12} {:>12}", "ros-macvlan", "reference");
    for (name, ours, reference) in rows {
        println!("{name:<60} {ours:>12.2} {reference:>12.2}");
    }
}

/// The run as a row of docs/performance.md's results table: date, machine, then ros-macvlan
/// over the reference for the figures that have a target.
fn results_row(rows: &[(String, f64, f64, &str)], collisions: f64) -> String {
    let ratio = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map_or("-".to_owned(), |r| format!("{:.2}", r.1 / r.2))
    };
    let date = std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let flat = rows
        .iter()
        .find(|r| r.0 == "DEL 1000 claims / 1 claim")
        .map_or("-".to_owned(), |r| format!("{:.2}", r.1));
    format!(
        "| {date} | {} cores, {}, kernel {} | {} | {} | {} | {} | {} | {flat} | {} | {collisions:.2} |",
        num_cpus(),
        cpu_model(),
        kernel(),
        ratio("ADD median (ms)"),
        ratio("DEL median (ms)"),
        ratio("DEL start to link gone, median (ms)"),
        ratio("peak RSS per invocation (KiB)"),
        ratio("50 concurrent ADDs, wall (ms)"),
        ratio("ADD median, default config, network seen (ms)"),
    )
}

/// The median time from a LAN host taking a pod's address (and announcing it once) to the
/// agent's conflict report, over five pods.
fn claim_to_report(
    lan: &Lan,
    node: &Node,
    bin: &Path,
    pod: &Pod,
    agent: &Agent,
    work: &Path,
) -> f64 {
    let mut c = conf("ros-macvlan", "bench-claim", &work.join("claim"));
    c.as_object_mut().unwrap().remove("duplicateDetection");
    let host = Node::new(lan);
    let conflicts = agent.socket().parent().unwrap().join("conflicts");
    let mut took = Vec::new();
    for _ in 0..5 {
        let a = invoke(node, bin, "ADD", pod, &c);
        assert!(a.ok, "ADD failed: {}", a.stdout);
        let ip = serde_json::from_str::<Value>(&a.stdout).unwrap()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_owned();
        // The agent watches a new attachment within its sync (1 s).
        std::thread::sleep(Duration::from_millis(1500));
        let started = Instant::now();
        host.ns.ip(&["addr", "add", &ip, "dev", "lan0"]);
        // It says so once (a gratuitous ARP), as a host bringing the address up with
        // arp_notify does: heard at once. A host that stays silent is found by the re-check
        // (every 300 s by default), which this figure does not wait for.
        announce(&host, &ip);
        while std::fs::read_dir(&conflicts).map_or(true, |d| d.count() == 0) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no report of {ip}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        took.push(started.elapsed());
        host.ns.ip(&["addr", "del", &ip, "dev", "lan0"]);
        invoke(node, bin, "DEL", pod, &c);
    }
    stats(took).median
}

/// A gratuitous ARP for `ip` (an address/prefix) from `host`'s lan0.
fn announce(host: &Node, ip: &str) {
    let ip: std::net::Ipv4Addr = ip.split('/').next().unwrap().parse().unwrap();
    let netns = host.ns.handle();
    let (ifindex, mac) = netns
        .run(|| {
            let index = nix::net::if_::if_nametoindex("lan0").unwrap();
            let mac = nix::ifaddrs::getifaddrs()
                .unwrap()
                .filter(|a| a.interface_name == "lan0")
                .find_map(|a| {
                    a.address
                        .and_then(|s| s.as_link_addr().and_then(|l| l.addr()))
                })
                .unwrap();
            (index, mac)
        })
        .unwrap();
    ros_macvlan::node::duplicate::ArpSocket::open_in(&netns, ifindex)
        .and_then(|arp| arp.announce(mac, ip))
        .unwrap();
}

/// Three nodes sharing one range, ten ADDs each in turn (duplicate detection on): collisions
/// per ADD (picks another host answered ARP for, as the plugin logs them) and the ADD median.
fn three_nodes_interleaved(lan: &Lan, bin: &Path, work: &Path) -> (f64, f64) {
    let nodes: Vec<Node> = (0..3).map(|_| Node::new(lan)).collect();
    let confs: Vec<Value> = (0..3)
        .map(|n| {
            let mut c = conf("ros-macvlan", "spread", &work.join(format!("spread-{n}")));
            c.as_object_mut().unwrap().remove("duplicateDetection");
            c
        })
        .collect();
    // A fresh veth needs about a second before ARP crosses the switch (DESIGN: traps).
    std::thread::sleep(Duration::from_secs(1));
    let (mut collisions, mut times, mut attached) = (0usize, Vec::new(), Vec::new());
    for round in 0..10u8 {
        for (n, node) in nodes.iter().enumerate() {
            let pod = node.pod(150 + round * 3 + n as u8);
            let run = invoke(node, bin, "ADD", &pod, &confs[n]);
            assert!(run.ok, "ADD failed: {}", run.stdout);
            times.push(run.took);
            collisions += run
                .stderr
                .matches("in use on the LAN (ARP answered)")
                .count();
            attached.push((n, pod));
        }
    }
    for (n, pod) in &attached {
        invoke(&nodes[*n], bin, "DEL", pod, &confs[*n]);
    }
    let adds = times.len() as f64;
    (collisions as f64 / adds, stats(times).median)
}

/// The kernel operations of ros-macvlan done by `ip -batch` (one batch in the node, one in
/// the pod, as ip cannot change namespace within a batch): medians of ADD, of DEL's part
/// before it returns, and of the link removal it leaves to a detached process.
fn ip_batch_floor(node: &Node, pod: &Pod) -> (f64, f64, f64) {
    let mut add = Vec::new();
    let mut del = Vec::new();
    let mut removal = Vec::new();
    for _ in 0..CYCLES {
        let start = Instant::now();
        run_batch(
            &node.ns.name,
            &format!(
                "link add net1 link lan0 netns {} type macvlan mode bridge\n",
                pod.ns.name
            ),
        );
        run_batch(
            &pod.ns.name,
            "link set net1 up\naddr add 198.51.100.9/24 dev net1\naddr add 239.255.0.1/32 dev net1 autojoin\nroute del local 239.255.0.1 dev net1 table local\nroute add 224.0.0.0/4 dev net1 scope link\nlink set eth0 multicast off alias ros-macvlan:multicast-off-for:net1\\;\n",
        );
        add.push(start.elapsed());
        let start = Instant::now();
        run_batch(
            &pod.ns.name,
            "addr del 239.255.0.1/32 dev net1\nroute del 224.0.0.0/4 dev net1\naddr del 198.51.100.9/24 dev net1\nlink set net1 name rmvfloor\nlink set eth0 multicast on alias \"\"\n",
        );
        del.push(start.elapsed());
        let start = Instant::now();
        run_batch(&pod.ns.name, "link del rmvfloor\n");
        removal.push(start.elapsed());
    }
    (stats(add).median, stats(del).median, stats(removal).median)
}

/// Waits until the pod has no macvlan left; the time since `since`.
fn until_no_macvlan(pod: &Pod, since: Instant) -> Duration {
    let nl = Netlink::connect(&pod.ns.handle()).expect("netlink in pod");
    while nl
        .links()
        .expect("list links")
        .iter()
        .any(|l| l.is_macvlan())
    {
        assert!(since.elapsed() < Duration::from_secs(5), "link not removed");
        std::thread::sleep(Duration::from_micros(100));
    }
    since.elapsed()
}

fn run_batch(ns: &str, commands: &str) {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "ip -batch failed: {commands}"
    );
}

/// The plugin to measure: `--plugin PATH` (scripts/bench.sh passes the static build the
/// image ships), else the release build beside this benchmark.
fn plugin_binary() -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--plugin") {
        return PathBuf::from(args.get(i + 1).expect("--plugin PATH"));
    }
    let exe = std::env::current_exe().unwrap();
    // target/<host>/release/examples/bench -> target/<host>/release/ros-macvlan
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("ros-macvlan");
    assert!(
        bin.is_file(),
        "build the plugin first: cargo build --release"
    );
    bin
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}
