//! The test bench, built on the demo's namespace scenes (`ros_macvlan::tools::demo::scene`):
//! throwaway namespaces standing in for a LAN switch, nodes and pods, a runner that invokes
//! the built plugin exactly as a runtime does (environment + stdin), node agents, judges.
//! Everything is uniquely named and removed on drop, also when a test fails.
// Each tests/*.rs is its own crate including this module and uses only part of it.
#![allow(dead_code)]

mod agent;
mod cluster;
pub mod cri;
mod lan;
pub mod node;
mod routers;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use agent::TestAgent;
#[allow(unused_imports)] // a tests/*.rs crate may use none of it
pub use cluster::*;
#[allow(unused_imports)] // a tests/*.rs crate may use none of it
pub use lan::*;
pub use ros_macvlan::tools::demo::scene::*;
#[allow(unused_imports)] // a tests/*.rs crate may use none of it
pub use routers::{serve_sink, StandInRouters};

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

/// What the tests ask of an agent beyond what the demo's scene needs.
pub trait AgentExt {
    /// Where the plugin keeps this agent's membership records.
    fn records(&self) -> ros_macvlan::agent::records::RecordDir;
}

impl AgentExt for Agent {
    fn records(&self) -> ros_macvlan::agent::records::RecordDir {
        ros_macvlan::agent::records::RecordDir::beside(&self.socket())
    }
}

/// What the tests ask of a namespace beyond what the demo's scene needs.
pub trait NsExt {
    fn ip_json(&self, args: &[&str]) -> Value;
    fn link_names(&self) -> Vec<String>;
    fn link_names_after_removal(&self) -> Vec<String>;
    fn sysctl(&self, key: &str, value: &str);
    fn read(&self, path: &str) -> String;
}

impl NsExt for Ns {
    /// `ip -j` output as JSON.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut v = vec!["-j"];
        v.extend_from_slice(args);
        serde_json::from_str(&self.ip(&v)).unwrap_or(Value::Array(vec![]))
    }
    fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }
    /// The link names once the kernel has finished removing the links DEL retired (DEL
    /// leaves that to a detached process; see `macvlan::del`); fails after 2 s.
    fn link_names_after_removal(&self) -> Vec<String> {
        let start = std::time::Instant::now();
        loop {
            let names = self.link_names();
            if !names
                .iter()
                .any(|n| n.starts_with(ros_macvlan::plugin::del::RETIRED_PREFIX))
            {
                return names;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "retired links still there after 2 s: {names:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    fn sysctl(&self, key: &str, value: &str) {
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
    fn read(&self, path: &str) -> String {
        let p = path.to_owned();
        self.handle()
            .run(move || std::fs::read_to_string(p))
            .unwrap()
            .unwrap()
    }
}

/// What listens on TCP `port` in `ns` (`ss -Hltn` lines; empty when nothing does).
pub fn tcp_listeners(ns: &Ns, port: u16) -> String {
    let filter = format!("sport = :{port}");
    sh(&["ip", "netns", "exec", &ns.name, "ss", "-Hltn", &filter])
}

/// Waits (10 s at most) until something listens on TCP `port` in `ns`.
pub fn wait_listening(ns: &Ns, port: u16) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(10) {
        if !tcp_listeners(ns, port).trim().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("nothing listens on {port} in {} after 10 s", ns.name);
}

/// Whether `rx` receives `payload` within about a second.
pub fn hears(rx: &std::net::UdpSocket, payload: &[u8]) -> bool {
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

/// A third-party tool the tests use as a judge. Missing, the test prints SKIPPED, unless
/// ROS_MACVLAN_REQUIRE_PRIVILEGED=1 (CI), where it fails: scripts/test.sh installs them all.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools")
        .join(name);
    let found = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .or_else(|| local.is_file().then_some(local));
    if found.is_none() {
        missing(name);
    }
    found
}

/// A judge that is not installed: SKIPPED, or a failure under ROS_MACVLAN_REQUIRE_PRIVILEGED=1.
fn missing(name: &str) {
    if std::env::var("ROS_MACVLAN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{name} is not installed: scripts/test.sh installs it");
    }
    println!("SKIPPED (needs {name}: scripts/test.sh installs it)");
}

pub fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ros-macvlan"))
}

/// Assertions on a plugin reply.
pub trait ReplyExt {
    fn ok(&self) -> &Value;
    fn err_code(&self) -> u64;
    fn msg(&self) -> String;
}

impl ReplyExt for Reply {
    fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "plugin failed: {} {}", self.json, self.stderr);
        &self.json
    }
    fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "plugin unexpectedly succeeded: {}", self.json);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {}", self.json))
    }
    fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_owned()
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

/// A throwaway directory, removed with what it holds on drop.
pub struct DataDir(pub PathBuf);

/// Where the plugin allows host-local's dataDir with no node policy (tmpfs: a leak is gone
/// at the next boot).
pub const DATA_ROOT: &str = "/run/cni";
/// Where the plugin allows logFile with no node policy.
pub const LOG_ROOT: &str = "/var/log/ros-macvlan";

impl DataDir {
    /// A host-local data dir, in a directory the plugin allows for it by default.
    pub fn create() -> DataDir {
        DataDir::under(Path::new(DATA_ROOT), "ros-macvlan-test")
    }

    /// A directory for log files, in the one the plugin allows for them by default.
    pub fn logs() -> DataDir {
        // As the plugin itself creates it, should the test be first.
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(LOG_ROOT)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .unwrap();
        DataDir::under(Path::new(LOG_ROOT), "test")
    }

    /// A scratch directory, for tests that run no plugin with it.
    pub fn scratch() -> DataDir {
        DataDir::under(&std::env::temp_dir(), "rmdata")
    }

    pub fn under(parent: &Path, tag: &str) -> DataDir {
        let d = parent.join(unique(tag));
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

impl DataDir {
    /// A place for a node agent that belongs to this test (none listens unless the test
    /// starts one there): the plugin's membership records for the test's configs go there,
    /// and go with the DataDir.
    pub fn agent_socket(&self) -> String {
        let name = self.0.file_name().unwrap().to_string_lossy();
        format!("{AGENT_ROOT}/{name}/agent.sock")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(name) = self.0.file_name() {
            let _ = std::fs::remove_dir_all(Path::new(AGENT_ROOT).join(name));
        }
    }
}

/// Where the plugin allows `agentSocket` by default.
pub const AGENT_ROOT: &str = "/run/ros-macvlan";

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
        "isDefaultgateway": true, "agentSocket": data.agent_socket(),
        "ipam": { "type": "host-local", "dataDir": data.path(),
          "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": start,
                        "rangeEnd": end, "gateway": "198.51.100.1" }]] }
    });
    if let Some(v) = version {
        c["cniVersion"] = Value::String(v.into());
    }
    c
}

/// The guide's config as most tests use it: 1.0.0, master lan0, .160 to .180.
pub fn guide(data: &DataDir) -> Value {
    guide_config(
        Some("1.0.0"),
        "lan0",
        data,
        "198.51.100.160",
        "198.51.100.180",
    )
}

/// The address host-local hands out after `ip` in the guide's range (.160 to .180): the
/// next one, wrapping from the end to the start.
pub fn guide_next(ip: std::net::Ipv4Addr) -> std::net::Ipv4Addr {
    if ip == std::net::Ipv4Addr::new(198, 51, 100, 180) {
        std::net::Ipv4Addr::new(198, 51, 100, 160)
    } else {
        std::net::Ipv4Addr::from(u32::from(ip) + 1)
    }
}

/// The first address of an ADD result (net1's IPv4 address in the guide's configs).
pub fn net1_addr(result: &Value) -> std::net::Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs the plugin for `verb` on the pod's net1, as a runtime does.
pub fn cni(verb: &str, node: &Node, pod: &Pod, conf: &Value) -> Reply {
    cni_with(verb, node, pod, conf, &[])
}

/// `cni`, with more environment variables than a runtime sets.
pub fn cni_with(verb: &str, node: &Node, pod: &Pod, conf: &Value, extra: &[(&str, &str)]) -> Reply {
    let netns = pod.ns.path();
    let mut env = cni_env(verb, pod, "net1", &netns);
    env.extend_from_slice(extra);
    run_in(&node.ns.name, &plugin_bin(), &env, &conf.to_string())
}

pub fn add(node: &Node, pod: &Pod, conf: &Value) -> Reply {
    cni("ADD", node, pod, conf)
}

pub fn del(node: &Node, pod: &Pod, conf: &Value) -> Reply {
    cni("DEL", node, pod, conf)
}

/// A node policy of the test's own; `None` writes no file (the default install), and the
/// plugin is pointed at where it would be, so the machine's own file never counts.
pub struct NodePolicy {
    dir: DataDir,
}

impl NodePolicy {
    pub fn new(policy: Option<Value>) -> NodePolicy {
        let dir = DataDir::scratch();
        if let Some(p) = policy {
            std::fs::write(dir.0.join("policy.json"), p.to_string()).unwrap();
        }
        NodePolicy { dir }
    }
    pub fn file(&self) -> String {
        self.dir
            .0
            .join("policy.json")
            .to_string_lossy()
            .into_owned()
    }
    /// `verb` for the pod's net1 with `conf`, as a runtime runs it, under this policy.
    pub fn cni(&self, verb: &str, node: &Node, pod: &Pod, conf: &Value) -> Reply {
        cni_with(
            verb,
            node,
            pod,
            conf,
            &[("ROS_MACVLAN_POLICY_FILE", &self.file())],
        )
    }
}

/// A node agent of the test's own (see `Agent`): the plugin hands memberships to it.
pub fn start_agent() -> TestAgent {
    TestAgent::start_in(None, &[])
}

/// A place for an agent where none listens (removed on drop, records included).
pub fn no_agent() -> TestAgent {
    TestAgent::not_started()
}

/// `conf` pointing the plugin at `agent`.
pub fn with_agent(mut conf: Value, agent: &Agent) -> Value {
    conf["agentSocket"] = Value::String(agent.socket().to_str().unwrap().to_owned());
    conf
}

/// tcpdump in a namespace, decoding to text (`-v`), until `stop`; killed on drop.
pub struct Capture {
    child: std::process::Child,
    out: PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` of `ns` and waits until tcpdump listens.
    pub fn start(ns: &Ns, iface: &str, filter: &[&str]) -> Capture {
        let out = std::env::temp_dir().join(unique("rmcap"));
        let file = std::fs::File::create(&out).unwrap();
        let child = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "tcpdump", "-n", "-v", "-l", "-p", "-i", iface,
            ])
            .args(filter)
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump must be installed: run scripts/test.sh");
        std::thread::sleep(std::time::Duration::from_millis(700));
        Capture { child, out }
    }

    /// Stops the capture and returns what tcpdump decoded.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// The groups /proc/net/igmp of `ns` lists as joined on `ifname`.
pub fn joined(ns: &Ns, ifname: &str) -> Vec<std::net::Ipv4Addr> {
    ros_macvlan::plugin::multicast::joined_groups(&ns.handle(), ifname).unwrap()
}

/// A program started in a namespace with `ip netns exec` (which execs it: the child's pid is
/// the program's), with stdout and stderr captured; killed on drop, also when a test fails.
pub struct Spawned(Option<std::process::Child>);

impl Spawned {
    /// Starts `command` (program, then arguments) in `ns`; `prepare` sets its environment
    /// or working directory first.
    pub fn start(
        ns: &Ns,
        command: &[&str],
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Spawned {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .args(command)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        prepare(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?} in {}: {e}", ns.name));
        Spawned(Some(child))
    }

    /// Its process id (the program's: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    /// Asks it to finish (SIGTERM), as a user's Ctrl-C would; `wait` then collects it.
    pub fn terminate(&self) {
        if let Some(child) = &self.0 {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Waits for its exit: whether it succeeded, and its stdout followed by its stderr.
    pub fn wait(mut self) -> (bool, String) {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Fast DDS talker and listener (tests/fastdds, built into target/tools by
/// scripts/build-fastdds-judge.sh), started as a user would start them: Fast DDS' defaults
/// with no XML profile (an empty working directory, so no DEFAULT_FASTRTPS_PROFILES.xml) and
/// no environment setting at all.
pub struct FastDds {
    pub talker: PathBuf,
    pub listener: PathBuf,
    pub workdir: DataDir,
}

impl FastDds {
    pub fn find() -> Option<FastDds> {
        Some(FastDds {
            talker: require_tool("fastdds-talker")?,
            listener: require_tool("fastdds-listener")?,
            workdir: DataDir::create(),
        })
    }

    pub fn start(&self, ns: &Ns, command: &[&str]) -> Spawned {
        Spawned::start(ns, command, |cmd| {
            cmd.env_clear().current_dir(&self.workdir.0);
        })
    }
}

/// The Python judges in tests/judges, on the middlewares of PyPI's pinned wheels
/// (CycloneDDS 11 from `cyclonedds`, Zenoh 1.10 from `eclipse-zenoh`) in the virtual
/// environment scripts/test.sh makes at target/py-judges. They run with an empty
/// environment, in an empty working directory: no middleware configuration at all.
/// The longest any Python judge may run, in seconds: only a backstop, no scene waits as long.
const JUDGE_BACKSTOP: &str = "60";

pub struct PyJudges {
    python: PathBuf,
    scripts: PathBuf,
    workdir: DataDir,
}

impl PyJudges {
    pub fn find() -> Option<PyJudges> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("target/py-judges/bin/python3");
        if !python.is_file() {
            missing("the Python judges' venv target/py-judges (cyclonedds, eclipse-zenoh)");
            return None;
        }
        Some(PyJudges {
            python,
            scripts: root.join("tests/judges"),
            workdir: DataDir::create(),
        })
    }

    /// A Zenoh router with rmw_zenohd's defaults and `override_` (ZENOH_CONFIG_OVERRIDE's
    /// syntax) on top, in `ns`, for `seconds`.
    pub fn rmw_router(&self, ns: &Ns, seconds: &str, override_: &str) -> Spawned {
        let args = ["router", "--seconds", seconds, "--base", "rmw-router"];
        let mut args = args.to_vec();
        args.extend(["--override", override_]);
        self.start(ns, "zenoh_peer.py", &args)
    }

    /// Runs the judge `script` (tests/judges/SCRIPT) with `args` in `ns`, killed after
    /// JUDGE_BACKSTOP seconds whatever it waits for (a Zenoh session may block in open).
    pub fn start(&self, ns: &Ns, script: &str, args: &[&str]) -> Spawned {
        let script = self.scripts.join(script);
        let mut command = vec!["timeout", "-k", "2", JUDGE_BACKSTOP];
        command.extend([self.python.to_str().unwrap(), script.to_str().unwrap()]);
        command.extend_from_slice(args);
        Spawned::start(ns, &command, |cmd| {
            cmd.env_clear().current_dir(&self.workdir.0);
        })
    }
}

/// Whether `from` gets an answer to one ping of `to` within a second.
pub fn pings(from: &Ns, to: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", &from.name, "ping", "-c", "1", "-W", "1", to,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the pod has a `net1`.
/// The IPv4 address on `net1` in the namespace, if it has one.
pub fn net1_ipv4(ns: &Ns) -> Option<String> {
    ns.ip_json(&["-4", "addr", "show", "net1"])[0]["addr_info"][0]["local"]
        .as_str()
        .map(str::to_owned)
}

pub fn has_net1(pod: &Pod) -> bool {
    pod.ns.link_names().iter().any(|n| n == "net1")
}
