//! The demo's throwaway network scenes, built from namespaces: a LAN switch (a Linux bridge
//! doing IGMP snooping with a querier), nodes plugged into it, pods with a Calico-like eth0,
//! and a node agent. Only what `ros-macvlan demo` runs; the benchmark and the integration
//! tests build on these types (the tests' own helpers are in tests/support). Everything is
//! uniquely named and removed on drop. Needs root and iproute2.

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::sys::netns::Netns;

/// A short name unique to this process and call: fits interface names (15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{:x}{}",
        std::process::id() % 0xffff,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `args` (program first) and returns what it printed; a failure panics with its
/// stderr, as a scene that cannot be built is no scene.
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

fn ip(ns: &str, args: &[&str]) -> String {
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
    pub fn handle(&self) -> Netns {
        Netns::open(&self.path()).expect("open scene netns")
    }
    pub fn ip(&self, args: &[&str]) -> String {
        ip(&self.name, args)
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
        // Already gone is fine: a test may have removed it on purpose.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The LAN: a switch namespace with a Linux bridge doing IGMP snooping with a querier, like
/// a managed switch.
pub struct Lan {
    pub switch: Ns,
}

impl Lan {
    pub fn create() -> Lan {
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
        let node = Node {
            ns: Ns::new("rmnode"),
            master: "lan0".into(),
        };
        node.plug(lan, "lan0");
        node
    }

    /// Adds a LAN interface `name` (a veth whose other end is a switch port).
    pub fn plug(&self, lan: &Lan, name: &str) {
        let port = unique("swp");
        self.ns.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &lan.switch.name,
        ]);
        self.ns.ip(&["link", "set", name, "up"]);
        lan.switch.ip(&["link", "set", &port, "master", "br0"]);
        lan.switch.ip(&["link", "set", &port, "up"]);
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

/// Runs a CNI plugin inside `node` with exactly the given environment and stdin.
pub fn run_in(node: &str, bin: &Path, env: &[(&str, &str)], stdin: &str) -> Reply {
    let mut program = Command::new("ip");
    program.args(["netns", "exec", node]).arg(bin);
    invoke(program, env, stdin)
}

/// Runs `program` (a CNI plugin, or a command that runs one) with exactly the given
/// environment and stdin, as a runtime does.
pub fn invoke(mut program: Command, env: &[(&str, &str)], stdin: &str) -> Reply {
    let mut child = program
        .env_clear()
        .envs(env.iter().copied())
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
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone().into_owned()))
        },
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A UDP socket opened inside a namespace (it stays bound to that namespace's stack).
fn udp_in(ns: &Ns, bind: &str) -> UdpSocket {
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
        socket2::SockRef::from(&sock)
            .set_multicast_if_v4(&addr)
            .expect("IP_MULTICAST_IF");
    }
    for _ in 0..3 {
        sock.send_to(payload, (group, port)).expect("send to group");
    }
}

/// The original guide's example 4 in CycloneDDS ddsperf's arguments: a talker publishes at
/// 10 Hz for 8 s; the listener succeeds once it has matched both talkers and received 10
/// samples, and gives up after 6 s.
pub const DDSPERF_TALKER: &[&str] = &["-D", "8", "pub", "10Hz"];
pub const DDSPERF_LISTENER: &[&str] = &[
    "-D",
    "6",
    "-Qminmatch:2",
    "-Qmaxwait:5",
    "-Qsamples:10",
    "sub",
];

/// A node agent (`ros-macvlan agent`) of its own, listening on a unique socket under
/// /run/ros-macvlan; stopped, with its socket, records and log removed, on drop.
pub struct Agent {
    dir: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// The agent `bin` runs, started in the caller's network namespace.
    pub fn start(bin: &Path) -> Agent {
        let mut agent = Agent::vacant();
        agent.launch(Command::new(bin), &[]);
        agent
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// An agent's place with nobody listening yet: plugins pointed at it find no agent.
    pub fn vacant() -> Agent {
        Agent {
            dir: Path::new("/run/ros-macvlan").join(unique("agent")),
            child: None,
        }
    }

    /// Starts `program agent --socket SOCKET ARGS...` at this place (ending the one running
    /// here, if any), its output appended to `log()`, and waits until it answers. `program`
    /// is the binary, or a command that runs it (`ip netns exec NODE BIN`).
    pub fn launch(&mut self, mut program: Command, args: &[String]) {
        self.end(Signal::SIGTERM);
        std::fs::create_dir_all(&self.dir).expect("create the agent's dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the agent's log");
        let child = program
            .args(["agent", "--socket"])
            .arg(self.socket())
            .args(args)
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .spawn()
            .expect("start ros-macvlan agent");
        self.child = Some(child);
        let client = crate::agent::client::AgentClient::new(&self.socket());
        for _ in 0..200 {
            if client.list().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the agent did not answer on {}", self.socket().display());
    }

    /// Ends the running agent with `signal` (SIGTERM as the DaemonSet's pod ending would,
    /// SIGKILL to give it no chance to tidy up) and waits for it; its place stays.
    pub fn end(&mut self, signal: Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
            let _ = c.wait();
        }
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the agent printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.end(Signal::SIGTERM);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
