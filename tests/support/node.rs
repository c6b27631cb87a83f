//! A real node: Debian's containerd (CRI plugin, runc) started in a node namespace of the
//! scenes (`Node`, its `lan0` on the test LAN), with a CRI client playing kubelet. It runs
//! the DaemonSet's container as install/base/daemonset.yaml describes it, from the image
//! scripts/build-image.sh builds, and the guide's pods from conf/ as CRI sandboxes and
//! containers. `eth0` comes from the reference `ptp` (a routed veth, like Calico); `net1`
//! from the NAD of conf/ros-net.yaml through tests/support/multus-thin, a delegating step
//! that does what Multus thin does (see that file for what it does not).
//!
//! Host paths: every hostPath of the DaemonSet is moved below a directory of the test (the
//! NAD's dataDir and agentSocket with it, as for every other test), except the pods'
//! namespaces: containerd creates them in /run/netns, the node's, so the DaemonSet's netns
//! volume is mounted from where the manifest says. Everything (containers, sandboxes, the
//! runtime, its image store and mounts, the namespaces) is removed on drop, also when a test
//! fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use serde_json::{json, Value};

use super::cri::Cri;
use super::{plugin_bin, require_tool, unique, DataDir, Lan, Node, AGENT_ROOT};

/// One real node at a time: the scenes time DDS discovery, and the machine has 2 cores.
static ONE_NODE: Mutex<()> = Mutex::new(());

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The sandbox (pause) image: catatonit in pause mode.
const PAUSE: &str = "localhost/rmtest-pause:1";
pub const AGENT_IMAGE: &str = "localhost/rmtest-ros-macvlan:test";
pub const FASTDDS_IMAGE: &str = "localhost/rmtest-fastdds:1";
pub const DDSPERF_IMAGE: &str = "localhost/rmtest-ddsperf:1";

/// Which plugin the NAD's config names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nad {
    /// conf/ros-net.yaml as it is (type ros-macvlan).
    RosMacvlan,
    /// The same config with the reference macvlan's type: the control.
    Reference,
}

pub struct RealNode {
    pub dir: DataDir,
    /// The NAD's host-local store (the DaemonSet's /var/lib/cni/networks).
    pub data: DataDir,
    /// The DaemonSet's /run/ros-macvlan: the agent's socket and the membership records.
    pub agent_dir: PathBuf,
    /// The plugin's log file (the NAD's logFile).
    pub log: DataDir,
    cri: Option<Cri>,
    containerd: Option<Child>,
    pub node: Node,
    _lan: Lan,
    /// Namespaces containerd made for our sandboxes, removed on drop if left.
    netns: Vec<String>,
    pub agent: Option<AgentContainer>,
    _one: std::sync::MutexGuard<'static, ()>,
}

/// The DaemonSet's container as started on the node.
pub struct AgentContainer {
    pub sandbox: String,
    pub sandbox_config: PodSandboxConfig,
    pub config: ContainerConfig,
    pub id: String,
    pub probe: Vec<String>,
    /// The host's CNI bin dir it installs into.
    pub cni_bin: PathBuf,
}

/// A pod of the guide as a sandbox.
pub struct PodSandbox {
    pub name: String,
    pub id: String,
    pub config: PodSandboxConfig,
    /// The netns containerd made (CNI_NETNS).
    pub netns: String,
    /// The containers of its manifest: name, and the PID namespace mode they share.
    pub containers: Vec<String>,
    pub pid_mode: i32,
}

fn read_yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(REPO).join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The test's image archives, built once per test process with scripts/oci-image.sh.
fn image_archive(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("real-node-{name}.tar"));
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        build(&out);
        built.push(name.to_owned());
    }
    out
}

fn oci_image(out: &Path, reference: &str, args: &[&str]) {
    let status = Command::new(Path::new(REPO).join("scripts/oci-image.sh"))
        .args(["-o", out.to_str().unwrap(), "-n", reference])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "scripts/oci-image.sh failed for {reference}"
    );
}

/// The plugin as the image ships it: `cargo build --release` (scripts/test.sh builds it
/// before the tests; the debug build, 60 MB, would not fit the DaemonSet's memory limit,
/// as the agent reads the binary to install it).
pub fn release_bin() -> PathBuf {
    let bin = plugin_bin();
    bin.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("release/ros-macvlan")
}

/// The DaemonSet's image of `binary`, named `image`, as scripts/build-image.sh builds it.
pub fn build_agent_image(binary: &Path, out: &Path, image: &str) {
    let status = Command::new(Path::new(REPO).join("scripts/build-image.sh"))
        .args(["--binary", binary.to_str().unwrap()])
        .args(["--output", out.to_str().unwrap(), "--name", image])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/build-image.sh failed");
}

/// What the real node needs besides root: containerd, runc, umoci, catatonit and the
/// reference plugins (scripts/test.sh installs them). Missing, the test skips, or fails
/// under ROS_MACVLAN_REQUIRE_PRIVILEGED=1.
pub fn runtime_installed() -> bool {
    [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "umoci",
        "ctr",
        "catatonit",
    ]
    .iter()
    .all(|t| require_tool(t).is_some())
        && Path::new(super::REFERENCE_DIR).join("ptp").exists()
        && (release_bin().exists() || {
            if std::env::var("ROS_MACVLAN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!(
                    "{} is missing: scripts/test.sh builds it",
                    release_bin().display()
                );
            }
            println!("SKIPPED (needs cargo build --release: scripts/test.sh builds it)");
            false
        })
}

impl RealNode {
    /// Starts containerd in a new node namespace on a new LAN, with the test's CNI config:
    /// `ptp` for eth0, then the Multus stand-in for the pod's annotation; `nad` says which
    /// plugin the NAD's config names. No DaemonSet yet (see `start_agent`).
    pub fn start(nad: Nad) -> RealNode {
        let one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
        let lan = Lan::create();
        let node = Node::new(&lan);
        // A fresh veth needs about a second before frames cross the switch (DESIGN §4).
        std::thread::sleep(Duration::from_secs(1));
        let dir = DataDir::scratch();
        let data = DataDir::create();
        let log = DataDir::logs();
        let agent_dir = Path::new(AGENT_ROOT).join(unique("rmnode"));
        let d = &dir.0;
        for sub in [
            "root",
            "state",
            "net.d",
            "opt/cni/bin",
            "logs",
            "cluster-ipam",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // The reference plugins the node's CNI bin dir has (ros-macvlan comes from the
        // DaemonSet), and the Multus stand-in.
        let bin = d.join("opt/cni/bin");
        for p in ["ptp", "host-local", "loopback", "macvlan"] {
            std::os::unix::fs::symlink(Path::new(super::REFERENCE_DIR).join(p), bin.join(p))
                .unwrap();
        }
        std::fs::copy(
            Path::new(REPO).join("tests/support/multus-thin"),
            bin.join("multus-thin"),
        )
        .unwrap();
        let mut node = RealNode {
            containerd: None,
            cri: None,
            node,
            _lan: lan,
            netns: Vec::new(),
            agent: None,
            agent_dir,
            data,
            log,
            dir,
            _one: one,
        };
        node.write_cni_config(nad);
        node.write_containerd_config();
        node.start_runtime();
        node.import(&image_archive("pause", |out| {
            oci_image(
                out,
                PAUSE,
                &[
                    "-e",
                    "/catatonit",
                    "-c",
                    "-P",
                    "/usr/bin/catatonit=/catatonit",
                ],
            )
        }));
        node
    }

    /// The CRI client, as kubelet holds one.
    pub fn cri(&mut self) -> &mut Cri {
        self.cri.as_mut().expect("containerd is running")
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("containerd.sock")
    }

    pub fn cni_bin(&self) -> PathBuf {
        self.dir.0.join("opt/cni/bin")
    }

    /// The NAD's config: conf/ros-net.yaml's, edited as a user edits it (master and range
    /// for this LAN), plus the places every test gives the plugin (dataDir, agentSocket
    /// where this node's DaemonSet listens, logFile).
    pub fn nad_config(&self, nad: Nad) -> Value {
        let docs = read_yaml_docs("conf/ros-net.yaml");
        let spec = docs[0]["spec"]["config"].as_str().unwrap();
        let mut c: Value = serde_json::from_str(spec).unwrap();
        c["master"] = json!(self.node.master);
        c["ipam"]["ranges"] = json!([[{ "subnet": "198.51.100.0/24",
            "rangeStart": "198.51.100.160", "rangeEnd": "198.51.100.180",
            "gateway": "198.51.100.1" }]]);
        c["ipam"]["dataDir"] = json!(self.data.path());
        c["agentSocket"] = json!(self.agent_dir.join("agent.sock"));
        c["logFile"] = json!(self.log.0.join("plugin.log"));
        if nad == Nad::Reference {
            c["type"] = json!("macvlan");
        }
        c
    }

    fn write_cni_config(&self, nad: Nad) {
        let nad_name = format!(
            "{}/{}",
            read_yaml_docs("conf/ros-net.yaml")[0]["metadata"]["namespace"]
                .as_str()
                .unwrap(),
            read_yaml_docs("conf/ros-net.yaml")[0]["metadata"]["name"]
                .as_str()
                .unwrap()
        );
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "plugins": [
                { "type": "ptp", "ipMasq": false, "mtu": 1500,
                  "ipam": { "type": "host-local", "dataDir": self.dir.0.join("cluster-ipam"),
                            "ranges": [[{ "subnet": "203.0.113.0/24" }]] } },
                { "type": "multus-thin",
                  "capabilities": { "io.kubernetes.cri.pod-annotations": true },
                  "networkAttachmentDefinitions": { nad_name: self.nad_config(nad) } }
            ]
        });
        std::fs::write(
            self.dir.0.join("net.d/10-k8s-pod-network.conflist"),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
    }

    fn write_containerd_config(&self) {
        let d = self.dir.path();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/opt/cni/bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#
        );
        std::fs::write(self.dir.0.join("config.toml"), config).unwrap();
    }

    /// Starts containerd in the node namespace (nsenter: `ip netns exec` would remount /sys
    /// and runc would then find no cgroup mount) and connects to its CRI service.
    pub fn start_runtime(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("containerd.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.ns.path()))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.0.join("config.toml"))
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.containerd = Some(child);
        self.cri = Some(Cri::connect(&self.socket()));
    }

    /// Kills containerd at once, as a crash would; its shims and pods live on.
    pub fn kill_runtime(&mut self) {
        self.cri = None;
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What containerd logged: for messages.
    pub fn runtime_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default()
    }

    /// The names of the images in the node's image store (containerd's k8s.io namespace).
    pub fn images(&self) -> Vec<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "ls", "-q"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr images ls");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn import(&self, archive: &Path) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr images import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The DDS judges' images: the Fast DDS talker and listener (target/tools), CycloneDDS'
    /// ddsperf, each with its shared libraries.
    pub fn import_dds_images(&self) {
        let fastdds = [
            require_tool("fastdds-talker").unwrap(),
            require_tool("fastdds-listener").unwrap(),
        ];
        self.import(&image_archive("fastdds", |out| {
            let t = format!("{}=/fastdds-talker", fastdds[0].display());
            let l = format!("{}=/fastdds-listener", fastdds[1].display());
            oci_image(out, FASTDDS_IMAGE, &["-l", &t, &l]);
            // The libraries: -l copies those of each file at their own paths.
        }));
        let ddsperf = require_tool("ddsperf").unwrap();
        self.import(&image_archive("ddsperf", |out| {
            oci_image(out, DDSPERF_IMAGE, &["-l", ddsperf.to_str().unwrap()])
        }));
    }

    /// The DaemonSet's container, from install/base/daemonset.yaml with `patch` applied
    /// (the MicroK8s overlay's), started as kubelet would, from the image
    /// scripts/build-image.sh builds of the tests' binary.
    pub fn start_agent(&mut self, patch: &[(String, Value)]) {
        let archive = image_archive("agent", |out| {
            build_agent_image(&release_bin(), out, AGENT_IMAGE);
        });
        self.import(&archive);
        self.start_agent_from(AGENT_IMAGE, patch);
    }

    /// A rolling update of the DaemonSet on this node: the agent's pod deleted as kubelet
    /// deletes it (StopPodSandbox: SIGTERM, then RemovePodSandbox), then a new one started
    /// from `image` (imported from `archive`), the manifest otherwise the same.
    pub fn upgrade_agent(&mut self, archive: &Path, image: &str) {
        self.import(archive);
        let old = self.agent.take().expect("an agent to upgrade").sandbox;
        self.cri().stop_sandbox(&old).unwrap();
        self.cri().remove_sandbox(&old).unwrap();
        self.start_agent_from(image, &[]);
    }

    /// The DaemonSet's container from `image` (already imported), `patch` applied.
    fn start_agent_from(&mut self, image: &str, patch: &[(String, Value)]) {
        let mut ds = read_yaml_docs("install/base/daemonset.yaml").remove(0);
        for (pointer, value) in patch {
            *ds.pointer_mut(pointer)
                .unwrap_or_else(|| panic!("the patch's path {pointer} is not in the manifest")) =
                value.clone();
        }
        let spec = &ds["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let mode = |host: bool| {
            if host {
                NamespaceMode::Node as i32
            } else {
                NamespaceMode::Pod as i32
            }
        };
        let ns = NamespaceOption {
            network: mode(spec["hostNetwork"].as_bool() == Some(true)),
            pid: if spec["hostPID"].as_bool() == Some(true) {
                NamespaceMode::Node as i32
            } else {
                NamespaceMode::Container as i32
            },
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        };
        let name = ds["metadata"]["name"].as_str().unwrap().to_owned();
        let namespace = ds["metadata"]["namespace"].as_str().unwrap().to_owned();
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("{name}-{}", unique("n")),
                uid: unique("uid"),
                namespace,
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: self.logs_dir("agent"),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(ns.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox = self
            .cri()
            .run_sandbox(sandbox_config.clone())
            .unwrap_or_else(|e| panic!("RunPodSandbox for the DaemonSet: {e}"));
        // Volumes: hostPath ones moved below the test's directory (but the pods' netns
        // dir), an absent optional configMap as kubelet mounts it: an empty directory.
        let mut host_of = BTreeMap::new();
        let mut cni_bin = PathBuf::new();
        for v in spec["volumes"].as_array().unwrap() {
            let vname = v["name"].as_str().unwrap().to_owned();
            let host = match v["hostPath"]["path"].as_str() {
                Some(p) => self.host_path(p),
                None => {
                    assert_eq!(v["configMap"]["optional"], json!(true), "volume {vname}");
                    self.dir.0.join("configmap").join(&vname)
                }
            };
            std::fs::create_dir_all(&host).unwrap();
            if vname == "cni-bin" {
                cni_bin = host.clone();
            }
            host_of.insert(vname, host);
        }
        let mounts = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Mount {
                container_path: m["mountPath"].as_str().unwrap().to_owned(),
                host_path: host_of[m["name"].as_str().unwrap()]
                    .to_str()
                    .unwrap()
                    .to_owned(),
                readonly: m["readOnly"].as_bool() == Some(true),
                propagation: match m["mountPropagation"].as_str() {
                    Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                    Some("Bidirectional") => MountPropagation::PropagationBidirectional,
                    _ => MountPropagation::PropagationPrivate,
                } as i32,
                ..Default::default()
            })
            .collect();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let sc = &c["securityContext"];
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: c["name"].as_str().unwrap().to_owned(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            command: strings(&c["command"]),
            args: strings(&c["args"]),
            log_path: "agent.log".to_owned(),
            mounts,
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: quantity(&c["resources"]["limits"]["memory"]),
                    cpu_period: 100_000,
                    cpu_quota: quantity(&c["resources"]["limits"]["cpu"]) * 100,
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: strings(&sc["capabilities"]["add"]),
                        drop_capabilities: strings(&sc["capabilities"]["drop"]),
                        ..Default::default()
                    }),
                    namespace_options: Some(ns),
                    run_as_user: sc["runAsUser"].as_i64().map(|value| Int64Value { value }),
                    readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
                    no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let id = self
            .cri()
            .start_container(&sandbox, config.clone(), &sandbox_config)
            .unwrap_or_else(|e| panic!("the DaemonSet's container did not start: {e}"));
        self.agent = Some(AgentContainer {
            sandbox,
            sandbox_config,
            config,
            id,
            probe: strings(&c["readinessProbe"]["exec"]["command"]),
            cni_bin,
        });
        self.wait_agent_listening();
    }

    /// Where the test puts a hostPath of the DaemonSet on this node.
    fn host_path(&self, path: &str) -> PathBuf {
        match path {
            // The pods' namespaces are the node's: containerd makes them there.
            "/run/netns" | "/var/run/netns" => PathBuf::from(path),
            "/run/ros-macvlan" => self.agent_dir.clone(),
            "/var/lib/cni/networks" => self.data.0.clone(),
            "/opt/cni/bin" => self.cni_bin(),
            other => self.dir.0.join(other.trim_start_matches('/')),
        }
    }

    fn logs_dir(&self, pod: &str) -> String {
        let d = self.dir.0.join("logs").join(pod);
        std::fs::create_dir_all(&d).unwrap();
        d.to_str().unwrap().to_owned()
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.agent_dir.join("agent.sock")
    }

    fn wait_agent_listening(&mut self) {
        let client = ros_macvlan::agent::client::AgentClient::new(&self.agent_socket());
        let start = Instant::now();
        while client.list().is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                let log = self.agent_log();
                let id = self.agent.as_ref().unwrap().id.clone();
                let status = self.cri().container_status(&id);
                panic!(
                    "the agent's container does not answer on {}: {:?}\n{log}",
                    self.agent_socket().display(),
                    status.status
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the agent's container printed (all its restarts).
    pub fn agent_log(&self) -> String {
        container_log(&self.dir.0.join("logs/agent/agent.log"))
    }

    /// Kills the agent's process (SIGKILL), as an OOM kill or a crash would, and waits until
    /// the runtime reports its container exited.
    pub fn kill_agent(&mut self) {
        let id = self.agent.as_ref().unwrap().id.clone();
        let status = self.cri().container_status(&id);
        let info: Value = serde_json::from_str(&status.info["info"]).unwrap();
        let pid = info["pid"].as_i64().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let start = Instant::now();
        while self.cri().container_status(&id).status.unwrap().state
            != ContainerState::ContainerExited as i32
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the agent did not die"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What kubelet does when a container died: removes it and starts it again in its pod,
    /// the same config, the next attempt; waits until the agent answers.
    pub fn restart_agent(&mut self) {
        let old = self.agent.as_ref().unwrap().id.clone();
        self.cri().remove_container(&old).unwrap();
        let a = self.agent.as_mut().unwrap();
        a.config.metadata.as_mut().unwrap().attempt += 1;
        let (sandbox, config, sc) = (
            a.sandbox.clone(),
            a.config.clone(),
            a.sandbox_config.clone(),
        );
        let id = self.cri().start_container(&sandbox, config, &sc).unwrap();
        self.agent.as_mut().unwrap().id = id;
        self.wait_agent_listening();
    }

    /// The address the pod's net1 claims in the NAD's store.
    pub fn pod_address(&self, pod: &PodSandbox) -> String {
        let store = self.data.0.join("ros-net");
        self.data
            .claims("ros-net")
            .into_iter()
            .find(|ip| {
                std::fs::read_to_string(store.join(ip)).is_ok_and(|c| c.starts_with(&pod.id))
            })
            .unwrap_or_else(|| panic!("no claim of {} in {}", pod.name, store.display()))
    }

    /// With the runtime down, the pod's sandbox goes as after a node crash: its processes
    /// killed and its netns removed; no DEL is run.
    pub fn destroy_sandbox_behind_the_runtime(&mut self, pod: &PodSandbox) {
        assert!(self.containerd.is_none(), "kill the runtime first");
        let inode = ros_macvlan::sys::netns::inode_of(Path::new(&pod.netns)).unwrap();
        for pid in std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        {
            let path = format!("/proc/{pid}/ns/net");
            if ros_macvlan::sys::netns::inode_of(Path::new(&path)).ok() == Some(inode) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        nix::mount::umount2(pod.netns.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
        std::fs::remove_file(&pod.netns).unwrap();
    }

    /// Runs `cmd` in the agent's container (ExecSync): exit code and output.
    pub fn exec_in_agent(&mut self, cmd: &[String]) -> (i32, String) {
        let id = self.agent.as_ref().unwrap().id.clone();
        let r = self.cri().exec(&id, cmd);
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr),
        )
    }

    /// The pods of a conf/ manifest, as sandboxes (each RunPodSandbox runs CNI ADD: eth0 from
    /// ptp, net1 through the Multus stand-in). Their containers are started by `run`.
    pub fn pods(&mut self, manifest: &str) -> Vec<PodSandbox> {
        read_yaml_docs(manifest)
            .into_iter()
            .filter(|d| d["kind"] == "Pod")
            .map(|d| self.pod(&d))
            .collect()
    }

    fn pod(&mut self, manifest: &Value) -> PodSandbox {
        let m = &manifest["metadata"];
        let name = m["name"].as_str().unwrap().to_owned();
        let annotations = m["annotations"]
            .as_object()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let shared = manifest["spec"]["shareProcessNamespace"].as_bool() == Some(true);
        let pid_mode = if shared {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        } as i32;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: unique("uid"),
                namespace: m["namespace"].as_str().unwrap_or("default").to_owned(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: self.logs_dir(&name),
            annotations,
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: pid_mode,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self.cri().run_sandbox(config.clone()).unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox {name}: {e}\n--- plugin log:\n{}",
                self.plugin_log()
            )
        });
        let status = self.cri().sandbox_status(&id);
        let info: Value = serde_json::from_str(&status.info["info"]).unwrap();
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap()
            .to_owned();
        self.netns.push(netns.clone());
        let containers = manifest["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        PodSandbox {
            name,
            id,
            config,
            netns,
            containers,
            pid_mode,
        }
    }

    /// Starts a container named `name` in `pod`, from `image` with `command`: the guide's
    /// container with a DDS judge in place of its ROS image (no registry here). No DDS
    /// setting at all: no environment, no XML profile, no config file.
    pub fn run(&mut self, pod: &PodSandbox, name: &str, image: &str, command: &[&str]) -> Running {
        let attempt = unique("");
        let log_path = format!("{name}-{attempt}.log");
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: format!("{name}-{attempt}"),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: log_path.clone(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: pod.pid_mode,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .cri()
            .start_container(&pod.id, config, &pod.config)
            .unwrap_or_else(|e| panic!("container {name} in {}: {e}", pod.name));
        Running {
            id,
            log: Path::new(&pod.config.log_directory).join(log_path),
        }
    }

    /// Waits for the container to exit (at most `limit`): its exit code and output.
    pub fn wait(&mut self, c: &Running, limit: Duration) -> (i32, String) {
        let start = Instant::now();
        loop {
            let s = self.cri().container_status(&c.id).status.unwrap();
            if s.state == ContainerState::ContainerExited as i32 {
                return (s.exit_code, container_log(&c.log));
            }
            if start.elapsed() > limit {
                return (-1, container_log(&c.log) + "\n(still running: time limit)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes the pod as kubelet does: StopPodSandbox (DEL with the netns), then
    /// RemovePodSandbox (DEL again without one).
    pub fn delete(&mut self, pod: &PodSandbox) -> Result<(), String> {
        self.cri().stop_sandbox(&pod.id)?;
        self.cri().remove_sandbox(&pod.id)
    }

    pub fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.log.0.join("plugin.log")).unwrap_or_default()
    }
}

/// A started container.
pub struct Running {
    pub id: String,
    log: PathBuf,
}

/// A CRI log file's lines without their timestamp and stream fields.
fn container_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Kubernetes quantity: memory in bytes ("32Mi"), CPU in millicores ("100m").
fn quantity(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or("0");
    if let Some(n) = s.strip_suffix("Mi") {
        n.parse::<i64>().unwrap() << 20
    } else if let Some(n) = s.strip_suffix('m') {
        n.parse().unwrap()
    } else {
        s.parse::<i64>().unwrap() * 1000
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if let (Some(_), Some(cri)) = (&self.containerd, self.cri.as_mut()) {
            for s in cri.sandboxes() {
                let _ = cri.stop_sandbox(&s.id);
                let _ = cri.remove_sandbox(&s.id);
            }
        }
        self.kill_runtime();
        let sock = self.socket();
        let sock = sock.to_str().unwrap();
        // Shims (and what they still run) outlive containerd: end those of this node.
        for pid in pids_with_cmdline(sock) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
        for netns in &self.netns {
            let _ = nix::mount::umount2(netns.as_str(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(netns);
        }
        unmount_below(&self.dir.0);
        let _ = std::fs::remove_dir_all(&self.agent_dir);
    }
}

/// Processes whose command line mentions `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<nix::unistd::Pid> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// Unmounts everything mounted below `dir` (the runtime's snapshots, shm, rootfs), deepest
/// first.
fn unmount_below(dir: &Path) {
    let prefix = dir.to_str().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Whether /proc/net/igmp of the namespace at `netns` lists 239.255.0.1 on `ifname`.
pub fn member_of_discovery_group(netns: &str, ifname: &str) -> bool {
    let ns = ros_macvlan::sys::netns::Netns::open(netns).unwrap();
    ros_macvlan::plugin::multicast::joined_groups(&ns, ifname)
        .unwrap_or_default()
        .contains(&std::net::Ipv4Addr::new(239, 255, 0, 1))
}
