//! `cargo run --release --example bench` (root): times ros-macvlan against the reference
//! macvlan + host-local pair (Debian's containernetworking-plugins) in the same run, on the
//! same config and the same kind of namespaces, and prints a table of ratios ours/reference.
//! Figures: ADD and DEL latency (min, median, p95), 50 ADDs at once (wall time), DEL with
//! 1, 100 and 1000 claims in the store, peak memory (max RSS) per invocation, and the floor:
//! the same kernel operations done by `ip -batch`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ros_macvlan::scene::{Lan, Node, Pod};
use serde_json::{json, Value};

const CYCLES: usize = 50;
const REFERENCE: &str = "/usr/lib/cni";

/// One finished invocation: how long it took, its peak memory, what it printed.
struct Run {
    took: Duration,
    max_rss_kb: i64,
    ok: bool,
    stdout: String,
}

/// Spawns `bin` inside `node`'s namespace (the child inherits the namespace of the thread
/// that forks it), feeds the config, and reaps it with wait4 to read its max RSS.
#[allow(clippy::zombie_processes)] // reaped by wait4 in `reap`, which std cannot do
fn invoke(node: &Node, bin: &Path, verb: &str, pod: &Pod, conf: &Value) -> Run {
    let netns = pod.ns.path();
    let input = conf.to_string();
    let bin = bin.to_owned();
    let cid = pod.container_id.clone();
    let verb = verb.to_owned();
    node.ns
        .handle()
        .run(move || {
            let start = Instant::now();
            let mut child = Command::new(&bin)
                .env_clear()
                .env("CNI_COMMAND", &verb)
                .env("CNI_CONTAINERID", &cid)
                .env("CNI_NETNS", &netns)
                .env("CNI_IFNAME", "net1")
                .env("CNI_PATH", REFERENCE)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn plugin");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let mut stdout = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            let (status, rss) = reap(child.id() as i32);
            Run {
                took: start.elapsed(),
                max_rss_kb: rss,
                ok: status == 0,
                stdout,
            }
        })
        .unwrap()
}

fn reap(pid: i32) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills in; pid is our own unreaped child.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    (status, usage.ru_maxrss)
}

fn conf(kind: &str, name: &str, data: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": name, "type": kind, "master": "lan0", "mode": "bridge",
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
        bin: release_binary(),
        kind: "ros-macvlan",
    };
    let reference = Side {
        name: "reference",
        bin: PathBuf::from(REFERENCE).join("macvlan"),
        kind: "macvlan",
    };
    let lan = Lan::create();
    let node = Node::new(&lan);
    let work = std::env::temp_dir().join(format!("ros-macvlan-bench-{}", std::process::id()));
    let mut rows: Vec<(String, f64, f64, &str)> = Vec::new();

    // ADD/DEL latency over CYCLES cycles, alternating the two plugins cycle by cycle so that
    // machine noise hits both alike.
    let pods: Vec<Pod> = (0..2).map(|i| node.pod(10 + i)).collect();
    let mut add = [Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new()];
    let mut rss = [0i64, 0i64];
    for _ in 0..CYCLES {
        for (i, side) in [&ours, &reference].iter().enumerate() {
            let c = conf(
                side.kind,
                &format!("bench-{}", side.kind),
                &work.join("latency"),
            );
            let a = invoke(&node, &side.bin, "ADD", &pods[i], &c);
            assert!(a.ok, "{} ADD failed: {}", side.name, a.stdout);
            let d = invoke(&node, &side.bin, "DEL", &pods[i], &c);
            assert!(d.ok, "{} DEL failed", side.name);
            add[i].push(a.took);
            del[i].push(d.took);
            rss[i] = rss[i].max(a.max_rss_kb).max(d.max_rss_kb);
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
    rows.push((
        "max RSS per invocation (KiB)".into(),
        rss[0] as f64,
        rss[1] as f64,
        "target <= 0.5 (reference: macvlan process; host-local runs beside it)",
    ));

    // The cost of duplicate detection (default settings), on its own.
    let mut with_dad = Vec::new();
    let mut c = conf(ours.kind, "bench-dad", &work.join("dad"));
    c.as_object_mut().unwrap().remove("duplicateDetection");
    for _ in 0..10 {
        let a = invoke(&node, &ours.bin, "ADD", &pods[0], &c);
        assert!(a.ok, "ADD with duplicate detection failed: {}", a.stdout);
        with_dad.push(a.took);
        invoke(&node, &ours.bin, "DEL", &pods[0], &c);
    }
    let dad = stats(with_dad).median;
    rows.push((
        "ADD median, duplicate detection on (ms)".into(),
        dad,
        a1.median,
        "default probes: 2 x 50 ms",
    ));

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

    // The floor: the same kernel operations by ip -batch (one batch in the node, one in the pod).
    let (floor, del_floor) = ip_batch_floor(&node, &pods[0]);
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "machine: {} cores, {}; kernel {}",
        num_cpus(),
        cpu_model(),
        kernel()
    );
    println!(
        "{:<40} {:>12} {:>12} {:>8}  note",
        "figure", "ros-macvlan", "reference", "ratio"
    );
    for (name, a, b, note) in &rows {
        println!("{name:<40} {a:>12.2} {b:>12.2} {:>8.2}  {note}", a / b);
    }
    println!(
        "{:<40} {:>12.2} {:>12} {:>8.2}  ros-macvlan ADD median / floor",
        "floor: ip -batch ADD ops (ms)",
        floor,
        "-",
        a0.median / floor
    );
    println!(
        "{:<40} {:>12.2} {:>12} {:>8.2}  ros-macvlan DEL median / floor",
        "floor: ip -batch DEL ops (ms)",
        del_floor,
        "-",
        d0.median / del_floor
    );
}

/// Medians of (ADD, DEL) done by `ip -batch`.
fn ip_batch_floor(node: &Node, pod: &Pod) -> (f64, f64) {
    let mut times = Vec::new();
    let mut del_times = Vec::new();
    for _ in 0..CYCLES {
        let start = Instant::now();
        run_batch(
            &node.ns.name,
            &format!(
                "link add rmvtmp link lan0 netns {} type macvlan mode bridge\n",
                pod.ns.name
            ),
        );
        run_batch(
            &pod.ns.name,
            "link set rmvtmp name net1\naddr add 198.51.100.9/24 dev net1\nlink set net1 up\naddr add 239.255.0.1/32 dev net1 autojoin\nroute del local 239.255.0.1 dev net1 table local\nroute add 224.0.0.0/4 dev net1 scope link\nlink set eth0 multicast off\n",
        );
        times.push(start.elapsed());
        let start = Instant::now();
        run_batch(
            &pod.ns.name,
            "addr del 239.255.0.1/32 dev net1\nlink del net1\nlink set eth0 multicast on\n",
        );
        del_times.push(start.elapsed());
    }
    (stats(times).median, stats(del_times).median)
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

fn release_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/bench -> target/release/ros-macvlan
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
