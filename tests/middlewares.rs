//! The ROS 2 middlewares of 2026 as judges: CycloneDDS 11 (the `cyclonedds` wheel) and
//! Zenoh 1.10 (the `eclipse-zenoh` wheel) in the shapes ROS 2 users run them, through the
//! Python judges in tests/judges. Every scene runs with ros-macvlan and with the reference
//! macvlan (+ host-local, same config) as the control, on pods whose Calico-like eth0
//! carries unicast between pods (routed through the nodes) but no multicast: three pods on
//! one node, and pods on two nodes through the IGMP-snooping switch. The tests assert what
//! a user sees: samples received, or none.

mod support;

use std::collections::BTreeMap;

use support::*;

/// How long a reader or subscriber waits for its samples: generous, as CycloneDDS repeats
/// its SPDP slowly and the machine is shared; a reader that has them all exits at once.
const READER_SECONDS: &str = "15";
/// Writers, publishers and routers outlive the readers; the scene stops them.
const WRITER_SECONDS: &str = "25";
/// Samples a reader must get from each writer (10 Hz: a second of data).
const SAMPLES: &str = "10";

/// The judges when the test can run (as root, with the wheels installed).
fn judges() -> Option<PyJudges> {
    if !require_root() {
        return None;
    }
    PyJudges::find()
}

/// A scene's cluster with net1 attached in every pod and eth0 routed between pods.
fn cluster(plugin: Plugin, pods_per_node: &[u8]) -> Cluster {
    let c = Cluster::new(plugin, pods_per_node);
    c.route_eth0_between_pods();
    c
}

/// What the readers of a scene reported.
struct Outcome {
    /// Per reader (in pod order): whether it got SAMPLES from every writer.
    readers: Vec<bool>,
    log: String,
}

impl Outcome {
    fn all(&self) -> bool {
        !self.readers.is_empty() && self.readers.iter().all(|ok| *ok)
    }
    fn none(&self) -> bool {
        !self.readers.iter().any(|ok| *ok)
    }
}

/// Waits for every reader, then stops the others (writers, routers) and collects all logs.
fn collect(readers: Vec<(String, Spawned)>, others: Vec<(String, Spawned)>) -> Outcome {
    let mut log = String::new();
    let mut oks = Vec::new();
    for (name, reader) in readers {
        let (ok, out) = reader.wait();
        oks.push(ok);
        log += &format!("--- {name} (ok: {ok}):\n{out}");
    }
    for (_, other) in &others {
        other.terminate();
    }
    for (name, other) in others {
        let (_, out) = other.wait();
        log += &format!("--- {name}:\n{out}");
    }
    Outcome { readers: oks, log }
}

/// CycloneDDS 11 with no configuration: a writer in the first pod, a reader in every other.
fn cyclonedds(j: &PyJudges, scene: &Cluster) -> Outcome {
    let _attached = scene.attach_all();
    let script = "cyclonedds11.py";
    let readers: Vec<(String, Spawned)> = (1..scene.pods.len())
        .map(|i| {
            let args = [
                "reader",
                "--expect",
                "a",
                "--samples",
                SAMPLES,
                "--seconds",
                READER_SECONDS,
            ];
            (
                format!("reader in pod {i}"),
                j.start(&scene.pod(i).ns, script, &args),
            )
        })
        .collect();
    let writer = j.start(
        &scene.pod(0).ns,
        script,
        &["writer", "a", "--seconds", WRITER_SECONDS],
    );
    collect(readers, vec![("writer a in pod 0".into(), writer)])
}

/// Zenoh sessions configured by `override_` (ZENOH_CONFIG_OVERRIDE's syntax) on `base`: a
/// publisher in the first pod, a subscriber in every other; with `router`, a router in
/// every pod first (rmw_zenohd's defaults with `router` on top), as the pod's sidecar.
fn zenoh(
    j: &PyJudges,
    scene: &Cluster,
    base: &str,
    override_: &str,
    router: Option<&str>,
) -> Outcome {
    let _attached = scene.attach_all();
    let script = "zenoh_peer.py";
    let mut others = Vec::new();
    if let Some(router_override) = router {
        for (i, (_, pod)) in scene.pods.iter().enumerate() {
            others.push((
                format!("router in pod {i}"),
                rmw_router(j, pod, router_override),
            ));
        }
        for (_, pod) in &scene.pods {
            wait_listening(&pod.ns, 7447);
        }
    }
    let session = ["--base", base, "--override", override_];
    let readers: Vec<(String, Spawned)> = (1..scene.pods.len())
        .map(|i| {
            let mut args = vec!["sub", "--expect", "a", "--samples", SAMPLES];
            args.extend(["--seconds", READER_SECONDS]);
            args.extend(session);
            (
                format!("subscriber in pod {i}"),
                j.start(&scene.pod(i).ns, script, &args),
            )
        })
        .collect();
    let mut args = vec!["pub", "a", "--seconds", WRITER_SECONDS];
    args.extend(session);
    others.push((
        "publisher a in pod 0".into(),
        j.start(&scene.pod(0).ns, script, &args),
    ));
    collect(readers, others)
}

/// A router with rmw_zenohd's defaults and `override_` on top, in `pod`, as its sidecar.
fn rmw_router(j: &PyJudges, pod: &Pod, override_: &str) -> Spawned {
    j.rmw_router(&pod.ns, WRITER_SECONDS, override_)
}

/// The ZENOH_CONFIG_OVERRIDE that conf/FILE gives the container NAME of its first pod: the
/// scenes run exactly the settings the manifests (and README) give users.
fn conf_override(file: &str, container: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let pod: serde_yaml::Value = serde_yaml::Deserializer::from_str(&text)
        .next()
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .unwrap();
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let c = containers.iter().find(|c| c["name"] == container).unwrap();
    let env = c["env"].as_sequence().unwrap();
    let v = env.iter().find(|e| e["name"] == "ZENOH_CONFIG_OVERRIDE");
    v.and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no ZENOH_CONFIG_OVERRIDE for {container} in {file}"))
        .to_owned()
}

/// The router-per-pod shape's sidecar: rmw_zenohd's defaults with multicast scouting on and
/// routers it finds connected to (conf/zenoh-router-per-pod.yaml).
fn scouting_router() -> String {
    conf_override("zenoh-router-per-pod.yaml", "zenoh-router")
}

/// rmw_zenoh sessions as peers that scout and listen on every address, connecting to no
/// router (conf/zenoh-peers-scouting.yaml).
fn scouting_peers() -> String {
    conf_override("zenoh-peers-scouting.yaml", "talker")
}

/// The same peers with rmw_zenoh's own `listen tcp/localhost:0` left in place.
fn scouting_peers_on_localhost() -> String {
    scouting_peers().replace(
        r#"listen/endpoints=["tcp/[::]:0"]"#,
        r#"listen/endpoints=["tcp/localhost:0"]"#,
    )
}

/// The scenes, each with both plugins: `<scene>::ros_macvlan` and `<scene>::reference_macvlan`
/// (the control), each asserting the outcome measured for that plugin.
macro_rules! scenes {
    ($($scene:ident: $pods:expr, $run:expr, ros_macvlan: $ours:ident, reference: $theirs:ident;)*) => {$(
        mod $scene {
            use super::*;

            fn run(plugin: Plugin) -> Option<Outcome> {
                let j = judges()?;
                let scene = cluster(plugin, $pods);
                #[allow(clippy::redundant_closure_call)]
                Some(($run)(&j, &scene))
            }

            #[test]
            fn ros_macvlan() {
                if let Some(o) = run(Plugin::RosMacvlan) {
                    assert!(o.$ours(), "with ros-macvlan, expected {} readers to get samples: {:?}\n{}", stringify!($ours), o.readers, o.log);
                }
            }

            #[test]
            fn reference_macvlan() {
                if let Some(o) = run(Plugin::Reference) {
                    assert!(o.$theirs(), "with the reference macvlan, expected {} readers to get samples: {:?}\n{}", stringify!($theirs), o.readers, o.log);
                }
            }
        }
    )*};
}

scenes! {
    // CycloneDDS 11 ranks net1 above an eth0 without MULTICAST; with the reference it
    // picks eth0, whose multicast goes nowhere.
    cyclonedds11_one_node: &[3], cyclonedds, ros_macvlan: all, reference: none;
    cyclonedds11_two_nodes: &[1, 2], cyclonedds, ros_macvlan: all, reference: none;
    // rmw_zenoh sessions turned into peers that scout by multicast and listen on every
    // address (conf/zenoh-peers-scouting.yaml).
    zenoh_scouting_peers_one_node: &[3], |j, s| zenoh(j, s, "rmw-session", &scouting_peers(), None), ros_macvlan: all, reference: all;
    zenoh_scouting_peers_two_nodes: &[1, 2], |j, s| zenoh(j, s, "rmw-session", &scouting_peers(), None), ros_macvlan: all, reference: all;
    // The same with rmw_zenoh's listen on localhost: each advertises only 127.0.0.1.
    zenoh_scouting_peers_listening_on_localhost: &[3], |j, s| zenoh(j, s, "rmw-session", &scouting_peers_on_localhost(), None), ros_macvlan: none, reference: none;
    // rmw_zenoh's defaults with a scouting router in every pod (conf/zenoh-router-per-pod.yaml).
    rmw_zenoh_defaults_with_a_router_per_pod_one_node: &[3], |j, s| zenoh(j, s, "rmw-session", "", Some(&scouting_router())), ros_macvlan: all, reference: all;
    rmw_zenoh_defaults_with_a_router_per_pod_two_nodes: &[1, 2], |j, s| zenoh(j, s, "rmw-session", "", Some(&scouting_router())), ros_macvlan: all, reference: all;
    // rmw_zenoh's defaults and no router at the pod's localhost: nothing is found.
    rmw_zenoh_defaults_without_a_router: &[3], |j, s| zenoh(j, s, "rmw-session", "", None), ros_macvlan: none, reference: none;
}

/// Zenoh's scouting rides net1: the Scouts of the other pods' sessions arrive on a pod's
/// net1 (captured without promiscuous mode, as the pod receives them), from their net1
/// addresses. With the reference too (issue 24 reported net1 only with ros-macvlan; measured
/// here, Zenoh 1.10's scouting reaches net1 with both plugins).
fn assert_scouting_rides_net1(plugin: Plugin) {
    let Some(j) = judges() else { return };
    let scene = cluster(plugin, &[3]);
    let (heard, others) = scouts_on_net1(&j, &scene);
    assert!(
        others.iter().all(|a| heard.contains_key(a)),
        "with {plugin:?}, Scouts from {others:?} expected on pod 2's net1, heard from {heard:?}"
    );
}

#[test]
fn zenoh_scouting_rides_net1_with_ros_macvlan() {
    assert_scouting_rides_net1(Plugin::RosMacvlan);
}

#[test]
fn zenoh_scouting_rides_net1_with_the_reference_macvlan_too() {
    assert_scouting_rides_net1(Plugin::Reference);
}

/// Each pod's net1 address.
fn net1_addrs(scene: &Cluster) -> Vec<String> {
    scene
        .pods
        .iter()
        .map(|(_, p)| net1_ipv4(&p.ns).unwrap_or_default())
        .collect()
}

/// Runs scouting peers (conf/zenoh-peers-scouting.yaml) in every pod, with a capture of UDP 7446 on the
/// last pod's net1 (its own session joins the scouting group there, or the macvlan's filter
/// would drop the group): the sources of the Scouts that arrived there, with how many, and
/// the other pods' net1 addresses.
fn scouts_on_net1(j: &PyJudges, scene: &Cluster) -> (BTreeMap<String, usize>, Vec<String>) {
    let _attached = scene.attach_all();
    let mut others = net1_addrs(scene);
    others.pop();
    let last = scene.pod(scene.pods.len() - 1);
    let capture = Capture::start(&last.ns, "net1", &["udp", "dst", "port", "7446"]);
    let peers = scouting_peers();
    let sessions: Vec<Spawned> = (0..scene.pods.len())
        .map(|i| {
            j.start(
                &scene.pod(i).ns,
                "zenoh_peer.py",
                &[
                    "sub",
                    "--seconds",
                    "4",
                    "--base",
                    "rmw-session",
                    "--override",
                    &peers,
                ],
            )
        })
        .collect();
    for s in sessions {
        let _ = s.wait();
    }
    let mut sources = BTreeMap::new();
    for line in capture.stop().lines() {
        // "    198.51.100.160.40321 > 224.0.0.224.7446: UDP, length 3"
        if let Some((src, _)) = line.trim().split_once(" > 224.0.0.224.7446") {
            let ip = src.rsplit_once('.').map(|(ip, _)| ip).unwrap_or(src);
            *sources.entry(ip.to_owned()).or_insert(0) += 1;
        }
    }
    (sources, others)
}

/// probe and doctor in a pod see a real Zenoh router scouting on net1 (in another pod,
/// rmw_zenohd's defaults with scouting on), and say nobody scouts before it starts.
#[test]
fn probe_and_doctor_see_a_zenoh_router_on_net1() {
    let Some(j) = judges() else { return };
    let scene = cluster(Plugin::RosMacvlan, &[2]);
    let _attached = scene.attach_all();
    let tool = |verb: &str| {
        let netns = scene.pod(1).ns.path();
        let out = std::process::Command::new(plugin_bin())
            .args([verb, "--netns", &netns, "--seconds", "3"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = tool("probe");
    assert!(
        before.contains("nobody scouts for Zenoh on net1 (224.0.0.224:7446)"),
        "{before}"
    );
    let router = rmw_router(&j, scene.pod(0), &scouting_router());
    wait_listening(&scene.pod(0).ns, 7447);
    let router_addr = net1_addrs(&scene)[0].clone();
    for verb in ["probe", "doctor"] {
        let out = tool(verb);
        let line = out
            .lines()
            .find(|l| l.contains("a Zenoh router is scouting here"))
            .unwrap_or_else(|| panic!("{verb} did not see the router:\n{out}"));
        assert!(
            line.contains(&format!("from {router_addr} "))
                && line.contains(&format!("tcp/{router_addr}:7447")),
            "{verb}: the router's net1 address and locator expected:\n{line}"
        );
    }
    router.terminate();
    let _ = router.wait();
}
