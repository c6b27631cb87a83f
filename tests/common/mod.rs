//! The test bench: throwaway namespaces standing in for a LAN switch, nodes and pods, and
//! a runner that invokes the built plugin exactly as a runtime does (environment + stdin).
//! Everything is uniquely named and removed on drop, also when a test fails.
#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

pub use ros_macvlan::netns::Netns as NsHandle;

/// Root is needed for namespaces. Without it a test prints SKIPPED and passes, unless
/// ROS_MACVLAN_REQUIRE_PRIVILEGED=1 (CI), where skipping would hide a failure.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("ROS_MACVLAN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("this test needs root and ROS_MACVLAN_REQUIRE_PRIVILEGED=1 forbids skipping it");
    }
    println!("SKIPPED (needs root)");
    false
}

/// A short name unique to this process and call: fits interface names (15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{:x}{}",
        std::process::id() % 0xffff,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// A named network namespace, deleted (with every process left in it) on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(prefix: &str) -> Ns {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        ip(&name, &["link", "set", "lo", "up"]);
        Ns { name }
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    pub fn handle(&self) -> NsHandle {
        NsHandle::open(&self.path()).expect("open test netns")
    }
    pub fn ip(&self, args: &[&str]) -> String {
        ip(&self.name, args)
    }
    /// `ip -j` output as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut v = vec!["-j"];
        v.extend_from_slice(args);
        serde_json::from_str(&self.ip(&v)).unwrap_or(Value::Array(vec![]))
    }
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }
    pub fn sysctl(&self, key: &str, value: &str) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]);
    }
    pub fn read(&self, path: &str) -> String {
        let p = path.to_owned();
        self.handle()
            .run(move || std::fs::read_to_string(p))
            .unwrap()
            .unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The LAN: a switch namespace with a Linux bridge doing IGMP snooping with a querier, like
/// a managed switch.
pub struct Lan {
    pub switch: Ns,
}

impl Lan {
    pub fn new() -> Lan {
        let switch = Ns::new("rmsw");
        switch.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "1",
            "mcast_querier",
            "1",
        ]);
        switch.ip(&["link", "set", "br0", "up"]);
        Lan { switch }
    }
}

/// A node: a namespace whose `lan0` (a veth end) is plugged into the switch; pods hang off it.
pub struct Node {
    pub ns: Ns,
    pub master: String,
}

impl Node {
    pub fn new(lan: &Lan) -> Node {
        let ns = Ns::new("rmnode");
        let port = unique("swp");
        ns.ip(&[
            "link",
            "add",
            "lan0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &lan.switch.name,
        ]);
        ns.ip(&["link", "set", "lan0", "up"]);
        lan.switch.ip(&["link", "set", &port, "master", "br0"]);
        lan.switch.ip(&["link", "set", &port, "up"]);
        Node {
            ns,
            master: "lan0".into(),
        }
    }

    /// A pod with a Calico-like eth0: a routed veth holding the default route, no multicast
    /// forwarding on the node side.
    pub fn pod(&self, n: u8) -> Pod {
        let ns = Ns::new("rmpod");
        let host_end = unique("cali");
        self.ns.ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.ns.ip(&["link", "set", &host_end, "up"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["addr", "add", &format!("203.0.113.{n}/32"), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        Pod {
            ns,
            container_id: unique("ctr"),
        }
    }
}

pub struct Pod {
    pub ns: Ns,
    pub container_id: String,
}

/// What a plugin invocation printed and returned.
#[derive(Debug)]
pub struct Reply {
    pub json: Value,
    pub code: i32,
    pub stderr: String,
}

impl Reply {
    pub fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "plugin failed: {} {}", self.json, self.stderr);
        &self.json
    }
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "plugin unexpectedly succeeded: {}", self.json);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {}", self.json))
    }
    pub fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_owned()
    }
}

pub fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ros-macvlan"))
}

/// Runs a CNI plugin inside `node` with exactly the given environment and stdin.
pub fn run_in(node: &str, bin: &Path, env: &[(&str, &str)], stdin: &str) -> Reply {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node]).arg(bin).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    Reply {
        json: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        },
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A CNI call of one verb for one pod: the environment a runtime sets.
pub fn cni_env<'a>(
    verb: &'a str,
    pod: &'a Pod,
    ifname: &'a str,
    netns: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", &pod.container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", REFERENCE_DIR),
    ]
}

/// A throwaway host-local data dir.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new() -> DataDir {
        let d = std::env::temp_dir().join(unique("rmdata"));
        std::fs::create_dir_all(&d).unwrap();
        DataDir(d)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
    /// Addresses with a claim file in the network's store.
    pub fn claims(&self, network: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.0.join(network))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The original guide's config with a test master, range and data dir.
pub fn guide_config(
    version: Option<&str>,
    master: &str,
    data: &DataDir,
    start: &str,
    end: &str,
) -> Value {
    let mut c = serde_json::json!({
        "name": "ros-net", "type": "ros-macvlan", "master": master, "mode": "bridge",
        "isDefaultgateway": true,
        "ipam": { "type": "host-local", "dataDir": data.path(),
          "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": start,
                        "rangeEnd": end, "gateway": "198.51.100.1" }]] }
    });
    if let Some(v) = version {
        c["cniVersion"] = Value::String(v.into());
    }
    c
}

/// A UDP socket opened inside a namespace (it stays bound to that namespace's stack).
pub fn udp_in(ns: &Ns, bind: &str) -> UdpSocket {
    let b = bind.to_owned();
    let s = ns
        .handle()
        .run(move || UdpSocket::bind(b))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// A receiver that does not join the group itself: it relies on the plugin's membership.
pub fn group_receiver(ns: &Ns, port: u16) -> UdpSocket {
    let s = ns
        .handle()
        .run(move || {
            let sock = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Datagram,
                nix::sys::socket::SockFlag::empty(),
                None,
            )?;
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReuseAddr, &true)?;
            let addr = nix::sys::socket::SockaddrIn::new(0, 0, 0, 0, port);
            nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr)?;
            Ok::<_, nix::Error>(UdpSocket::from(sock))
        })
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Sends `payload` to the group from `ns`, optionally pinning the interface with
/// IP_MULTICAST_IF (by its address), as DDS implementations do.
pub fn send_to_group(ns: &Ns, group: Ipv4Addr, port: u16, payload: &[u8], via: Option<Ipv4Addr>) {
    let sock = udp_in(ns, "0.0.0.0:0");
    if let Some(addr) = via {
        let a = nix::libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        };
        // SAFETY: IP_MULTICAST_IF takes an in_addr of the given size.
        let rc = unsafe {
            nix::libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                nix::libc::IPPROTO_IP,
                nix::libc::IP_MULTICAST_IF,
                &a as *const _ as *const nix::libc::c_void,
                std::mem::size_of::<nix::libc::in_addr>() as u32,
            )
        };
        assert_eq!(rc, 0, "IP_MULTICAST_IF");
    }
    for _ in 0..3 {
        sock.send_to(payload, (group, port)).expect("send to group");
    }
}

/// Whether `rx` receives `payload` within about a second.
pub fn hears(rx: &UdpSocket, payload: &[u8]) -> bool {
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        match rx.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == payload => return true,
            Ok(_) => continue,
            Err(_) => continue,
        }
    }
    false
}
