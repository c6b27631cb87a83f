//! Fast DDS, ROS 2's default middleware, as the judge: a ROS 2 talker and listener on Fast
//! DDS' default settings (tests/fastdds, built into target/tools by
//! scripts/build-fastdds-judge.sh) in the guide's scenes. Every scene runs with ros-macvlan
//! and with the reference macvlan (+ host-local) as the control: where the reference passes,
//! ros-macvlan must pass too.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};
use support::*;

/// Samples each talker publishes, at TALKER_RATE Hz: 2.5 s of talk.
const TALKER_SAMPLES: u32 = 25;
const TALKER_RATE: &str = "10";
/// Samples the listener must get from each talker. Samples written before the talker has
/// matched the listener are lost by design (volatile durability, as in ROS 2); matching
/// takes milliseconds here (one sample lost at most), so 20 leaves half a second of slack
/// for a loaded machine, while a broken path yields none.
const MIN_SAMPLES: u32 = 20;
/// The listener's own time limit: only a backstop, the scenes stop it once the talkers are
/// done (after 2.5 s of talk and at most 2 s waiting for acknowledgements).
const LISTENER_LIMIT: &str = "10";

/// The plugins every scene runs with.
#[derive(Clone, Copy, Debug)]
enum Plugin {
    /// ros-macvlan with its node agent holding the memberships.
    RosMacvlan,
    /// ros-macvlan with no agent reachable: ADD succeeds and Fast DDS joins by itself.
    RosMacvlanWithoutAgent,
    /// The control: the reference macvlan from /usr/lib/cni with the same config.
    Reference,
}

impl Plugin {
    fn binary(self) -> PathBuf {
        match self {
            Plugin::RosMacvlan | Plugin::RosMacvlanWithoutAgent => plugin_bin(),
            Plugin::Reference => PathBuf::from(REFERENCE_DIR).join("macvlan"),
        }
    }

    /// The node agent a node runs with this plugin: none listens for the variant without.
    fn agent(self) -> TestAgent {
        match self {
            Plugin::RosMacvlan => start_agent(),
            Plugin::RosMacvlanWithoutAgent | Plugin::Reference => no_agent(),
        }
    }

    /// The one place the scenes' network config is built: the guide's config (host-local
    /// IPAM on 198.51.100.0/24, master lan0) with this plugin's type, an address range of
    /// its own per node, and the node's agent (`agent`).
    fn config(self, data: &DataDir, agent: &Agent, first: &str, last: &str) -> Value {
        let mut conf = with_agent(
            guide_config(Some("1.0.0"), "lan0", data, first, last),
            agent,
        );
        if let Plugin::Reference = self {
            conf["type"] = json!("macvlan");
        }
        conf
    }

    /// ADDs net1 to the pod as a runtime does; DEL on drop.
    fn attach<'a>(self, node: &'a Node, pod: &'a Pod, conf: &'a Value) -> Attachment<'a> {
        let attachment = Attachment {
            plugin: self,
            node,
            pod,
            conf,
        };
        attachment.run("ADD").ok();
        attachment
    }
}

/// A pod's net1 from one plugin; the plugin's DEL runs on drop, also when a test fails.
struct Attachment<'a> {
    plugin: Plugin,
    node: &'a Node,
    pod: &'a Pod,
    conf: &'a Value,
}

impl Attachment<'_> {
    fn run(&self, verb: &str) -> Reply {
        run_in(
            &self.node.ns.name,
            &self.plugin.binary(),
            &cni_env(verb, self.pod, "net1", &self.pod.ns.path()),
            &self.conf.to_string(),
        )
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        let _ = self.run("DEL");
    }
}

/// The Fast DDS judge when the test can run (as root, with the judge built); None, after
/// the SKIPPED line, when it cannot.
fn judge() -> Option<FastDds> {
    if !require_root() {
        return None;
    }
    FastDds::find()
}

/// Pods on one node of a LAN, with one config for them all.
struct OneNode {
    plugin: Plugin,
    pods: Vec<Pod>,
    node: Node,
    _lan: Lan,
    conf: Value,
    _data: DataDir,
    _agent: TestAgent,
}

impl OneNode {
    fn new(plugin: Plugin, pods: u8) -> OneNode {
        let lan = Lan::create();
        let node = Node::new(&lan);
        let data = DataDir::create();
        let agent = plugin.agent();
        OneNode {
            plugin,
            pods: (0..pods).map(|i| node.pod(11 + i)).collect(),
            node,
            _lan: lan,
            conf: plugin.config(&data, &agent, "198.51.100.160", "198.51.100.180"),
            _data: data,
            _agent: agent,
        }
    }

    /// Every pod gets its net1; each is DEL'd when the returned attachments are dropped.
    fn attach_all(&self) -> Vec<Attachment<'_>> {
        self.pods
            .iter()
            .map(|pod| self.plugin.attach(&self.node, pod, &self.conf))
            .collect()
    }
}

/// The judge's roles in these scenes (`FastDds` itself is in tests/support).
impl FastDds {
    /// A talker named `name` in the pod, its command prefixed with `wrapper` (if any).
    fn talker_via(&self, wrapper: &[&str], pod: &Pod, name: &str) -> Spawned {
        let count = TALKER_SAMPLES.to_string();
        let mut command = wrapper.to_vec();
        command.extend([self.talker.to_str().unwrap(), "--name", name]);
        command.extend(["--count", &count, "--rate", TALKER_RATE]);
        self.start(&pod.ns, &command)
    }

    fn talker(&self, pod: &Pod, name: &str) -> Spawned {
        self.talker_via(&[], pod, name)
    }

    /// A talker in its own PID namespace, as PID 1: a container of the guide's example 5.
    fn talker_as_pid_1(&self, pod: &Pod, name: &str) -> Spawned {
        let unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
        self.talker_via(&unshare, pod, name)
    }

    fn listener(&self, pod: &Pod, extra: &[&str]) -> Spawned {
        let mut command = vec![
            self.listener.to_str().unwrap(),
            "--duration",
            LISTENER_LIMIT,
        ];
        command.extend_from_slice(extra);
        self.start(&pod.ns, &command)
    }
}

/// What the listener reported (its summary lines), with the scene's logs for messages.
struct Heard {
    samples: BTreeMap<String, u32>,
    /// Vendor id ("01.0f" eProsima, "01.10" Eclipse CycloneDDS) of each remote participant.
    vendors: Vec<String>,
    log: String,
}

impl Heard {
    fn parse(listener_log: &str, other_logs: &str) -> Heard {
        let mut samples = BTreeMap::new();
        let mut vendors = Vec::new();
        for line in listener_log.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["summary", "heard", talker, n] => {
                    samples.insert(talker.to_string(), n.parse().unwrap());
                }
                ["summary", "participant", _, "vendor", vendor, ..] => {
                    vendors.push(vendor.to_string())
                }
                _ => {}
            }
        }
        Heard {
            samples,
            vendors,
            log: format!("{other_logs}\n--- listener:\n{listener_log}"),
        }
    }

    /// The listener got at least MIN_SAMPLES from each of `talkers`.
    fn assert_every_talker_heard(&self, plugin: Plugin, talkers: &[&str]) {
        for talker in talkers {
            let n = self.samples.get(*talker).copied().unwrap_or(0);
            assert!(
                n >= MIN_SAMPLES,
                "with {plugin:?}, the listener heard {n} of {TALKER_SAMPLES} samples from \
                 {talker} (at least {MIN_SAMPLES} expected):\n{}",
                self.log
            );
        }
    }
}

/// Lets the talkers finish, then stops the listener and reads its summary.
fn listen_until_talkers_finish(listener: Spawned, talkers: Vec<Spawned>) -> Heard {
    let mut talker_logs = String::new();
    for talker in talkers {
        let (_, log) = talker.wait();
        talker_logs += &log;
    }
    listener.terminate();
    let (_, listener_log) = listener.wait();
    Heard::parse(&listener_log, &talker_logs)
}

/// The guide's example 4: two talkers and a listener in three pods on one node.
fn guide_example_4(dds: &FastDds, plugin: Plugin) {
    let scene = OneNode::new(plugin, 3);
    let _attached = scene.attach_all();
    let pods = &scene.pods;
    let listener = dds.listener(&pods[2], &[]);
    let talkers = vec![dds.talker(&pods[0], "a"), dds.talker(&pods[1], "b")];
    listen_until_talkers_finish(listener, talkers).assert_every_talker_heard(plugin, &["a", "b"]);
}

/// The guide's example 5: two talkers in one pod (one network namespace), each in its own
/// PID namespace as PID 1 like two containers, and a listener pod.
fn guide_example_5(dds: &FastDds, plugin: Plugin) {
    let scene = OneNode::new(plugin, 2);
    let _attached = scene.attach_all();
    let pods = &scene.pods;
    let listener = dds.listener(&pods[1], &[]);
    let talkers = vec![
        dds.talker_as_pid_1(&pods[0], "a"),
        dds.talker_as_pid_1(&pods[0], "b"),
    ];
    let heard = listen_until_talkers_finish(listener, talkers);
    for talker in ["a", "b"] {
        let announced = format!("talker {talker}: participant");
        assert!(
            heard
                .log
                .lines()
                .any(|l| l.starts_with(&announced) && l.ends_with(" pid 1")),
            "talker {talker} did not run as PID 1:\n{}",
            heard.log
        );
    }
    heard.assert_every_talker_heard(plugin, &["a", "b"]);
}

/// A talker on one node and a listener on another, through the LAN's IGMP-snooping switch.
fn across_two_nodes(dds: &FastDds, plugin: Plugin) {
    let lan = Lan::create();
    let nodes = [Node::new(&lan), Node::new(&lan)];
    let data = [DataDir::create(), DataDir::create()];
    let agents = [plugin.agent(), plugin.agent()];
    let confs = [
        plugin.config(&data[0], &agents[0], "198.51.100.160", "198.51.100.169"),
        plugin.config(&data[1], &agents[1], "198.51.100.170", "198.51.100.179"),
    ];
    let pods = [nodes[0].pod(11), nodes[1].pod(12)];
    let _attached: Vec<Attachment> = (0..2)
        .map(|n| plugin.attach(&nodes[n], &pods[n], &confs[n]))
        .collect();
    let listener = dds.listener(&pods[1], &[]);
    let talkers = vec![dds.talker(&pods[0], "a")];
    listen_until_talkers_finish(listener, talkers).assert_every_talker_heard(plugin, &["a"]);
}

/// Runs each scene with both plugins: `<scene>::ros_macvlan` (with its node agent),
/// `<scene>::ros_macvlan_without_agent` and `<scene>::reference_macvlan` (the control).
macro_rules! with_both_plugins {
    ($($scene:ident),* $(,)?) => {$(
        mod $scene {
            use super::*;

            fn run(plugin: Plugin) {
                if let Some(dds) = judge() {
                    super::$scene(&dds, plugin);
                }
            }

            #[test]
            fn ros_macvlan() {
                run(Plugin::RosMacvlan);
            }

            #[test]
            fn ros_macvlan_without_agent() {
                run(Plugin::RosMacvlanWithoutAgent);
            }

            #[test]
            fn reference_macvlan() {
                run(Plugin::Reference);
            }
        }
    )*};
}

with_both_plugins!(guide_example_4, guide_example_5, across_two_nodes);

/// How ddsperf (CycloneDDS) reports a peer: it lists only participants whose USER_DATA
/// carries its tag "DDSPerf:<has data reader>:<pid>:<host name>", so the Fast DDS listener
/// announces one (USER_DATA changes nothing in how Fast DDS uses the network). ddsperf then
/// also looks for its ping/pong endpoints there and, not finding them, exits with an error:
/// its exit status says nothing here.
const DDSPERF_TAG: &str = "DDSPerf:0:0:fastdds-listener";
const DDSPERF_LISTS_FASTDDS: &str = "participant fastdds-listener:0: new";
const CYCLONEDDS_VENDOR: &str = "01.10";

/// A CycloneDDS participant (ddsperf) and a Fast DDS one in two pods: whether each listed
/// the other, with the logs; None when the test is skipped.
fn mixed_vendors(plugin: Plugin) -> Option<(bool, String)> {
    let dds = judge()?;
    let ddsperf = require_tool("ddsperf")?;
    let scene = OneNode::new(plugin, 2);
    let _attached = scene.attach_all();
    let pods = &scene.pods;
    let listener = dds.listener(&pods[1], &["--user-data", DDSPERF_TAG]);
    // ddsperf starts after the listener and runs for 3 s: its start-up announcements reach a
    // listener already there, and Fast DDS announces itself every 3 s.
    let ddsperf = ddsperf.to_str().unwrap();
    let (_, ddsperf_log) = dds
        .start(&pods[0].ns, &[ddsperf, "-D", "3", "pub", "10Hz"])
        .wait();
    listener.terminate();
    let (_, listener_log) = listener.wait();
    let heard = Heard::parse(&listener_log, &format!("--- ddsperf:\n{ddsperf_log}"));
    let both = ddsperf_log.contains(DDSPERF_LISTS_FASTDDS)
        && heard.vendors.iter().any(|v| v == CYCLONEDDS_VENDOR);
    Some((both, heard.log))
}

#[test]
fn cyclonedds_and_fastdds_discover_each_other_with_ros_macvlan() {
    let Some((both, log)) = mixed_vendors(Plugin::RosMacvlan) else {
        return;
    };
    assert!(
        both,
        "ddsperf should list the Fast DDS participant and Fast DDS vendor {CYCLONEDDS_VENDOR}:\n{log}"
    );
}

/// The control: with the reference macvlan CycloneDDS picks eth0 (both interfaces offer
/// multicast) and its discovery never reaches the Fast DDS pod.
#[test]
fn cyclonedds_and_fastdds_miss_each_other_with_the_reference_macvlan() {
    let Some((both, log)) = mixed_vendors(Plugin::Reference) else {
        return;
    };
    assert!(
        !both,
        "CycloneDDS and Fast DDS unexpectedly discovered each other with the reference macvlan:\n{log}"
    );
}
