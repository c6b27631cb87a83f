//! The Zenoh relay's cost (issue 24): round-trip latency and throughput of a TCP connection
//! to the pod's router on the node (127.0.0.1:7448, the first of the agent's default
//! --zenoh-routers), made from a pod through the agent's relay (the pod's own
//! localhost:7447, `"zenoh": true`) against the same connection made directly in the node. The router is stood in for by an echo server, so the figures are the relay's
//! alone, not Zenoh's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use ros_macvlan::tools::demo::scene::{Lan, Node, Ns};
use serde_json::json;

const ROUND_TRIPS: usize = 2000;
const MESSAGE: usize = 64;
const VOLUME: usize = 256 * 1024 * 1024;
/// Where the pod's sessions connect (the relay), and the router the agent gives the pod.
const IN_POD: &str = "127.0.0.1:7447";
const ROUTER: &str = "127.0.0.1:7448";

/// (figure, through the relay, direct) rows.
pub fn measure(lan: &Lan, bin: &Path, work: &Path) -> Vec<(String, f64, f64)> {
    let node = Node::new(lan);
    let pod = node.pod(40);
    let agent = super::agent_in(&node, bin);
    let listener = node
        .ns
        .handle()
        .run(|| TcpListener::bind(ROUTER))
        .expect("enter the node")
        .expect("bind the router's stand-in");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || echo(stream));
        }
    });
    let conf = json!({
        "cniVersion": "1.0.0", "name": "bench-zenoh", "type": "ros-macvlan", "master": "lan0",
        "agentSocket": agent.socket(), "zenoh": true, "duplicateDetection": false,
        "ipam": { "type": "host-local", "dataDir": work.join("zenoh"),
          "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.200", "rangeEnd": "198.51.100.209" }]] },
    });
    let added = super::invoke(&node, bin, "ADD", &pod, &conf);
    assert!(added.ok, "ADD with zenoh failed: {}", added.stdout);
    let (relay_rtt, direct_rtt) = (round_trip(&pod.ns, IN_POD), round_trip(&node.ns, ROUTER));
    let (relay_mb, direct_mb) = (throughput(&pod.ns, IN_POD), throughput(&node.ns, ROUTER));
    assert!(super::invoke(&node, bin, "DEL", &pod, &conf).ok);
    vec![
        (
            "Zenoh relay: RTT median, 64 B (us)".into(),
            relay_rtt.0,
            direct_rtt.0,
        ),
        (
            "Zenoh relay: RTT p95, 64 B (us)".into(),
            relay_rtt.1,
            direct_rtt.1,
        ),
        (
            "Zenoh relay: echo throughput (MB/s)".into(),
            relay_mb,
            direct_mb,
        ),
    ]
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut back = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = std::io::copy(&mut stream, &mut back);
}

/// A connection to `addr` made in `ns` (the pod's 7447: through the relay).
fn connect(ns: &Ns, addr: &str) -> TcpStream {
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    let stream = ns
        .handle()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Median and p95 of ROUND_TRIPS echoes of MESSAGE bytes, in microseconds.
fn round_trip(ns: &Ns, addr: &str) -> (f64, f64) {
    let mut s = connect(ns, addr);
    let out = [7u8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let mut times: Vec<Duration> = (0..ROUND_TRIPS)
        .map(|_| {
            let start = Instant::now();
            s.write_all(&out).unwrap();
            s.read_exact(&mut back).unwrap();
            start.elapsed()
        })
        .collect();
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(times[times.len() / 2]),
        us(times[times.len() * 95 / 100]),
    )
}

/// VOLUME bytes sent and echoed back, in MB/s of payload each way.
fn throughput(ns: &Ns, addr: &str) -> f64 {
    let s = connect(ns, addr);
    let mut reader = s.try_clone().unwrap();
    let start = Instant::now();
    let got = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while total < VOLUME {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    let chunk = vec![1u8; 64 * 1024];
    let mut w = s;
    for _ in 0..VOLUME / chunk.len() {
        w.write_all(&chunk).unwrap();
    }
    let total = got.join().unwrap();
    assert_eq!(total, VOLUME, "the echo came back short");
    VOLUME as f64 / 1e6 / start.elapsed().as_secs_f64()
}
