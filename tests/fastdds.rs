//! Fast DDS, ROS 2's default middleware, as the judge: a ROS 2 talker and listener on Fast
//! DDS' default settings (tests/fastdds, built into target/tools by
//! scripts/build-fastdds-judge.sh) in the guide's scenes. Every scene runs with ros-macvlan
//! and with the reference macvlan (+ host-local) as the control: where the reference passes,
//! ros-macvlan must pass too.

mod support;

use std::collections::BTreeMap;
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

/// The Fast DDS judge when the test can run (as root, with the judge built); None, after
/// the SKIPPED line, when it cannot.
fn judge() -> Option<FastDds> {
    if !require_root() {
        return None;
    }
    FastDds::find()
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
    let scene = Cluster::new(plugin, &[3]);
    let _attached = scene.attach_all();
    let listener = dds.listener(scene.pod(2), &[]);
    let talkers = vec![dds.talker(scene.pod(0), "a"), dds.talker(scene.pod(1), "b")];
    listen_until_talkers_finish(listener, talkers).assert_every_talker_heard(plugin, &["a", "b"]);
}

/// The guide's example 5: two talkers in one pod (one network namespace), each in its own
/// PID namespace as PID 1 like two containers, and a listener pod.
fn guide_example_5(dds: &FastDds, plugin: Plugin) {
    let scene = Cluster::new(plugin, &[2]);
    let _attached = scene.attach_all();
    let listener = dds.listener(scene.pod(1), &[]);
    let talkers = vec![
        dds.talker_as_pid_1(scene.pod(0), "a"),
        dds.talker_as_pid_1(scene.pod(0), "b"),
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
    let scene = Cluster::new(plugin, &[1, 1]);
    let _attached = scene.attach_all();
    let listener = dds.listener(scene.pod(1), &[]);
    let talkers = vec![dds.talker(scene.pod(0), "a")];
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
    let scene = Cluster::new(plugin, &[2]);
    let _attached = scene.attach_all();
    let listener = dds.listener(scene.pod(1), &["--user-data", DDSPERF_TAG]);
    // ddsperf starts after the listener and runs for 3 s: its start-up announcements reach a
    // listener already there, and Fast DDS announces itself every 3 s.
    let ddsperf = ddsperf.to_str().unwrap();
    let (_, ddsperf_log) = dds
        .start(&scene.pod(0).ns, &[ddsperf, "-D", "3", "pub", "10Hz"])
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
