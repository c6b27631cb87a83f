//! A real node: Debian's containerd with its CRI plugin and runc, driven over CRI as kubelet
//! drives it (tests/support/node.rs). The DaemonSet's container runs from the image
//! scripts/build-image.sh builds, as install/base/daemonset.yaml describes it; the guide's
//! pods (conf/example4-*, conf/example5-*) run as CRI sandboxes and containers, eth0 from
//! the reference ptp, net1 from the NAD of conf/ros-net.yaml through a stand-in for Multus
//! thin (tests/support/multus-thin, which says what Multus does that it does not). The pods'
//! containers run the DDS judges (Fast DDS talker and listener, CycloneDDS' ddsperf) in
//! place of the guide's ros:humble images, with no DDS configuration.
//!
//! What only a real cluster shows: Multus reading pods and NADs from the API server, the
//! kubelet's own restart back-off and probe timing, images pulled from a registry, and
//! several nodes (the namespace scenes of tests/discovery.rs cover two nodes).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::node::*;
use support::*;

fn real_node(nad: Nad) -> Option<RealNode> {
    if !require_root() || !runtime_installed() {
        return None;
    }
    Some(RealNode::start(nad))
}

/// A real node with the DaemonSet's container running, as most scenes start.
fn node_with_agent(nad: Nad) -> Option<RealNode> {
    let mut node = real_node(nad)?;
    node.start_agent(&[]);
    Some(node)
}

#[test]
fn daemonset_container_installs_the_plugin_and_answers_its_readiness_probe() {
    let Some(mut node) = real_node(Nad::RosMacvlan) else {
        return;
    };
    node.start_agent(&[]);
    let agent = node.agent.as_ref().unwrap();
    let installed = agent.cni_bin.join("ros-macvlan");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(release_bin()).unwrap(),
        "the DaemonSet's container did not install the plugin into the node's CNI bin dir"
    );
    let probe = agent.probe.clone();
    let (code, out) = node.exec_in_agent(&probe);
    assert_eq!(code, 0, "readiness probe {probe:?} failed: {out}");
    let log = node.agent_log();
    assert!(
        log.contains("agent: listening on /run/ros-macvlan/agent.sock"),
        "{log}"
    );
}

/// The MicroK8s overlay's paths, where they differ from the base: its patch applied to the
/// manifest, the plugin lands in MicroK8s' CNI bin dir.
#[test]
fn microk8s_overlay_installs_into_microk8s_cni_bin_dir() {
    let Some(mut node) = real_node(Nad::RosMacvlan) else {
        return;
    };
    let overlay: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!(
            "{REPO}/install/overlays/microk8s/kustomization.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let ops: Vec<Value> =
        serde_yaml::from_str(overlay["patches"][0]["patch"].as_str().unwrap()).unwrap();
    let patch: Vec<(String, Value)> = ops
        .iter()
        .map(|op| {
            assert_eq!(op["op"], "replace");
            (
                format!(
                    "/spec/template{}",
                    op["path"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("/spec/template")
                ),
                op["value"].clone(),
            )
        })
        .collect();
    node.start_agent(&patch);
    let agent = node.agent.as_ref().unwrap();
    assert!(
        agent
            .cni_bin
            .ends_with("var/snap/microk8s/current/opt/cni/bin"),
        "{}",
        agent.cni_bin.display()
    );
    assert!(agent.cni_bin.join("ros-macvlan").is_file());
    let probe = agent.probe.clone();
    assert_eq!(node.exec_in_agent(&probe).0, 0);
}

/// Samples each Fast DDS talker sends (10 Hz: 6 s, so that a participant whose first
/// announcements were missed is found at the next one, 3 s later), and how many the listener must get
/// from each: samples sent before matching are lost by design (see tests/fastdds.rs).
const TALKER_SAMPLES: &str = "60";
const MIN_SAMPLES: u32 = 20;

/// Runs the Fast DDS listener in `listener` and a talker per (pod, container name), waits
/// for them, and returns the samples heard per talker and everyone's output.
fn fastdds_scene(
    node: &mut RealNode,
    listener: &PodSandbox,
    talkers: &[(&PodSandbox, &str)],
) -> (std::collections::BTreeMap<String, u32>, String) {
    let l = node.run(
        listener,
        "listener",
        FASTDDS_IMAGE,
        &["/fastdds-listener", "--duration", "12"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let running: Vec<_> = talkers
        .iter()
        .map(|(pod, name)| {
            node.run(
                pod,
                name,
                FASTDDS_IMAGE,
                &[
                    "/fastdds-talker",
                    "--name",
                    name,
                    "--count",
                    TALKER_SAMPLES,
                    "--rate",
                    "10",
                ],
            )
        })
        .collect();
    let mut logs = String::new();
    for t in &running {
        logs += &node.wait(t, Duration::from_secs(20)).1;
    }
    let (_, heard) = node.wait(&l, Duration::from_secs(20));
    let mut samples = std::collections::BTreeMap::new();
    for line in heard.lines() {
        if let ["summary", "heard", talker, n] = line.split_whitespace().collect::<Vec<_>>()[..] {
            samples.insert(talker.to_owned(), n.parse().unwrap());
        }
    }
    (samples, format!("{logs}\n--- listener:\n{heard}"))
}

fn assert_heard(samples: &std::collections::BTreeMap<String, u32>, talkers: &[&str], log: &str) {
    for t in talkers {
        let n = samples.get(*t).copied().unwrap_or(0);
        assert!(
            n >= MIN_SAMPLES,
            "the listener heard {n} samples from {t} (at least {MIN_SAMPLES} expected):\n{log}"
        );
    }
}

/// CycloneDDS' ddsperf as the guide's example 4: two publishers, a subscriber that succeeds
/// once it has matched both and got their samples. Whether it did, and its output.
fn ddsperf_scene(node: &mut RealNode, pods: &[PodSandbox]) -> (bool, String) {
    let cmd = |args: &[&'static str]| [&["/usr/bin/ddsperf"][..], args].concat();
    let talkers: Vec<_> = pods[..2]
        .iter()
        .map(|p| node.run(p, "ddsperf-pub", DDSPERF_IMAGE, &cmd(DDSPERF_TALKER)))
        .collect();
    let l = node.run(
        &pods[2],
        "ddsperf-sub",
        DDSPERF_IMAGE,
        &cmd(DDSPERF_LISTENER),
    );
    let (code, log) = node.wait(&l, Duration::from_secs(20));
    for t in &talkers {
        node.wait(t, Duration::from_secs(20));
    }
    (code == 0, log)
}

/// Example 4 with Fast DDS: a talker in each talker pod, the listener hears both.
fn example4_listener_hears_both_fastdds_talkers(node: &mut RealNode, pods: &[PodSandbox]) {
    let talkers = [(&pods[0], "talker-1"), (&pods[1], "talker-2")];
    let (samples, log) = fastdds_scene(node, &pods[2], &talkers);
    assert_heard(&samples, &["talker-1", "talker-2"], &log);
}

/// The pods of example 4: talker-1, talker-2, listener, in the manifest's order.
fn example4(node: &mut RealNode) -> Vec<PodSandbox> {
    node.import_dds_images();
    let pods = node.pods("conf/example4-talkers-listener.yaml");
    let names: Vec<_> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["talker-1", "talker-2", "listener"]);
    pods
}

fn memberships_held(pods: &[PodSandbox]) -> Vec<String> {
    pods.iter()
        .filter(|p| !member_of_discovery_group(&p.netns, "net1"))
        .map(|p| p.name.clone())
        .collect()
}

#[test]
fn example4_listener_hears_both_talkers_with_no_dds_configuration() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    let pods = example4(&mut node);
    // Before any DDS process runs: net1 is a member of 239.255.0.1 in every pod, held by
    // the agent in its container (it lists one attachment per pod).
    assert_eq!(
        memberships_held(&pods),
        Vec::<String>::new(),
        "pods without membership; plugin log:\n{}\nagent: {:?}\n{}",
        node.plugin_log(),
        ros_macvlan::agent::client::AgentClient::new(&node.agent_socket()).list(),
        pods.iter()
            .map(|p| format!(
                "{}: {:?}",
                p.netns,
                ros_macvlan::plugin::multicast::joined_groups(
                    &ros_macvlan::sys::netns::Netns::open(&p.netns).unwrap(),
                    "net1"
                )
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let held = ros_macvlan::agent::client::AgentClient::new(&node.agent_socket())
        .list()
        .unwrap();
    assert_eq!(held.len(), 3, "the agent holds {held:?}");
    // Duplicate detection in the agent's container (its packet sockets need the manifest's
    // NET_RAW): it probes the network's next addresses ahead on the node's master.
    let probes = node.agent_socket().parent().unwrap().join("probes");
    let probed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_dir(&probes)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| std::fs::read(f.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .any(|p| {
                p["addresses"].as_object().is_some_and(|a| {
                    a.values()
                        .any(|e| e["freeAtMs"].as_u64().is_some_and(|t| t > 0))
                })
            })
    });
    assert!(
        probed,
        "the agent in its container probed nothing ahead in {}",
        probes.display()
    );
    example4_listener_hears_both_fastdds_talkers(&mut node, &pods);
    let (ok, log) = ddsperf_scene(&mut node, &pods);
    assert!(ok, "ddsperf sub did not match both publishers:\n{log}");
}

/// The control: the reference macvlan with the same NAD on the same node. Fast DDS works
/// with it too (ros-macvlan is never worse); CycloneDDS picks eth0 and matches nobody, as on
/// the namespace scenes (tests/discovery.rs).
#[test]
fn example4_with_the_reference_macvlan_fastdds_only() {
    let Some(mut node) = node_with_agent(Nad::Reference) else {
        return;
    };
    let pods = example4(&mut node);
    assert_eq!(
        memberships_held(&pods).len(),
        3,
        "the reference joins no group"
    );
    example4_listener_hears_both_fastdds_talkers(&mut node, &pods);
    let (ok, log) = ddsperf_scene(&mut node, &pods);
    assert!(
        !ok,
        "with the reference macvlan ddsperf was expected to miss its peers:\n{log}"
    );
}

#[test]
fn example5_two_talker_containers_in_one_pod_and_a_listener_pod() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    node.import_dds_images();
    let pods = node.pods("conf/example5-two-talkers-one-pod.yaml");
    let (two, listener) = (&pods[0], &pods[1]);
    assert_eq!(two.containers, ["talker", "talker2"]);
    assert_eq!(
        two.pid_mode,
        k8s_cri::v1::NamespaceMode::Pod as i32,
        "shareProcessNamespace"
    );
    let talkers: Vec<(&PodSandbox, &str)> =
        two.containers.iter().map(|c| (two, c.as_str())).collect();
    let (samples, log) = fastdds_scene(&mut node, listener, &talkers);
    assert_heard(&samples, &["talker", "talker2"], &log);
}

#[test]
fn agent_container_killed_and_restarted_memberships_back_within_5s() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    let pods = example4(&mut node);
    assert!(memberships_held(&pods).is_empty());
    node.kill_agent();
    // Only the agent held them: with it dead, no pod is a member.
    assert_eq!(
        memberships_held(&pods).len(),
        3,
        "memberships outlived the agent"
    );
    let restarted = Instant::now();
    node.restart_agent();
    while !memberships_held(&pods).is_empty() {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "memberships not back 5 s after the restart: {:?}\n{}",
            memberships_held(&pods),
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    example4_listener_hears_both_fastdds_talkers(&mut node, &pods);
}

#[test]
fn pods_deleted_as_kubelet_does_leave_nothing_on_the_node() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    let pods = node.pods("conf/example4-talkers-listener.yaml");
    assert_eq!(node.data.claims("ros-net").len(), 3);
    let records = ros_macvlan::agent::records::RecordDir::beside(&node.agent_socket());
    assert_eq!(records.list().unwrap().len(), 3);
    let addresses: Vec<String> = pods.iter().map(|p| node.pod_address(p)).collect();
    let links_before = node.node.ns.link_names();
    for pod in &pods {
        node.delete(pod)
            .unwrap_or_else(|e| panic!("deleting {}: {e}\n{}", pod.name, node.plugin_log()));
    }
    let log = node.plugin_log();
    let dels: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("ros-macvlan DEL"))
        .collect();
    assert_eq!(dels.len(), 6, "two DELs per pod:\n{log}");
    assert!(dels.iter().all(|l| l.ends_with(" ok")), "{log}");
    // The first DEL (StopPodSandbox) names the address it released; the second has none.
    for (pod, address) in pods.iter().zip(&addresses) {
        let lines: Vec<&&str> = dels.iter().filter(|l| l.contains(&pod.id)).collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(lines[0].contains(&format!(" address={address} ")), "{log}");
        assert!(lines[1].contains(" address=- "), "{log}");
    }
    assert_eq!(
        node.data.claims("ros-net"),
        Vec::<String>::new(),
        "claims left"
    );
    assert!(
        records.list().unwrap().is_empty(),
        "membership records left"
    );
    for pod in &pods {
        assert!(
            !std::path::Path::new(&pod.netns).exists(),
            "{} left",
            pod.netns
        );
    }
    let links = node.node.ns.link_names();
    assert_eq!(
        links,
        ["lo", "lan0"],
        "links left on the node (before: {links_before:?})"
    );
    let held = ros_macvlan::agent::client::AgentClient::new(&node.agent_socket())
        .list()
        .unwrap();
    assert!(held.is_empty(), "the agent still holds {held:?}");
}

/// A pod whose sandbox went while the runtime was down (no DEL ever came): the agent's
/// periodic gc, run in its container (every second here: the manifest's --gc-every
/// patched), releases its claim; the live pods' claims stay.
#[test]
fn lost_del_claim_released_by_the_agents_gc_live_pods_kept() {
    let Some(mut node) = real_node(Nad::RosMacvlan) else {
        return;
    };
    let ds = std::fs::read_to_string(format!("{REPO}/install/base/daemonset.yaml")).unwrap();
    let ds: Value = serde_yaml::from_str(&ds).unwrap();
    let command = ds["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap();
    let at = command.iter().position(|a| a == "--gc-every").unwrap() + 1;
    node.start_agent(&[(
        format!("/spec/template/spec/containers/0/command/{at}"),
        json!("1"),
    )]);
    let pods = node.pods("conf/example4-talkers-listener.yaml");
    let claims = node.data.claims("ros-net");
    assert_eq!(claims.len(), 3);
    let victim = &pods[0];
    let victim_ip = node.pod_address(victim);
    node.kill_runtime();
    node.destroy_sandbox_behind_the_runtime(victim);
    node.start_runtime();
    let start = Instant::now();
    while node.data.claims("ros-net").contains(&victim_ip) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the lost pod's claim {victim_ip} is still there:\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let left = node.data.claims("ros-net");
    let expected: Vec<String> = claims.into_iter().filter(|c| *c != victim_ip).collect();
    assert_eq!(left, expected, "a live pod's claim was released");
}

/// README's `kubectl exec ... -- /ros-macvlan VERB ...` command for `verb`, as it runs in the
/// DaemonSet's container: the words after `--`.
fn readme_exec_command(verb: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.contains(&format!("-- /ros-macvlan {verb} ")))
        .unwrap_or_else(|| panic!("README runs {verb} through kubectl exec"));
    line.split(" -- ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// README's uninstall command, as it runs in the DaemonSet's container.
fn readme_uninstall_command() -> Vec<String> {
    readme_exec_command("uninstall")
}

/// README's doctor and probe by pod name (`--pod default/listener`), run in the DaemonSet's
/// container as `kubectl exec` runs them: the pod attached through containerd's CNI_ARGS and
/// the Multus stand-in is found in the agent's records, its net1 and membership pass; an
/// unknown name is refused, naming the pods the node has.
#[test]
fn readme_doctor_and_probe_find_a_pod_by_name_in_the_agents_container() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    let pods = node.pods("conf/example4-talkers-listener.yaml");
    let mut doctor = readme_exec_command("doctor");
    assert!(
        doctor.contains(&"default/listener".to_owned()),
        "{doctor:?}"
    );
    doctor.extend(["--seconds", "2"].map(String::from));
    let (code, out) = node.exec_in_agent(&doctor);
    for check in ["interface", "membership"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("PASS") && l.contains(check)),
            "{doctor:?} (exit {code}): {check} did not pass:\n{out}"
        );
    }
    let mut probe = readme_exec_command("probe");
    probe.extend(["--seconds", "1", "--json"].map(String::from));
    let (code, out) = node.exec_in_agent(&probe);
    assert_eq!(code, 0, "{probe:?}: {out}");

    let unknown = ["/ros-macvlan", "doctor", "--pod", "default/nope"].map(String::from);
    let (code, out) = node.exec_in_agent(&unknown);
    assert_eq!(code, 2, "{out}");
    for pod in ["default/listener", "default/talker-1", "default/talker-2"] {
        assert!(
            out.contains(&format!("{pod} (net1)")),
            "{pod} not named: {out}"
        );
    }
    for pod in &pods {
        node.delete(pod)
            .unwrap_or_else(|e| panic!("deleting {}: {e}\n{}", pod.name, node.plugin_log()));
    }
}

/// README's uninstall, run in the DaemonSet's container as `kubectl exec` runs it: with the
/// guide's pods attached it refuses, names them and removes nothing; once kubelet has
/// deleted them it removes the plugin from the node's CNI bin dir, the agent's records and
/// ros-macvlan's records in the host-local store, through the container's mounts.
#[test]
fn readme_uninstall_in_the_agents_container_waits_for_the_pods_then_removes_everything() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    let command = readme_uninstall_command();
    let installed = node.agent.as_ref().unwrap().cni_bin.join("ros-macvlan");
    let pods = node.pods("conf/example4-talkers-listener.yaml");
    let records = node.agent_socket().parent().unwrap().join("memberships");
    let store = node.data.0.join("ros-net");

    let (code, out) = node.exec_in_agent(&command);
    assert_eq!(code, 1, "{command:?}: {out}");
    assert!(out.contains("3 attachment(s)"), "{out}");
    for pod in &pods {
        assert!(out.contains(&pod.id), "{} not named: {out}", pod.id);
        assert!(out.contains(&pod.netns), "{} not named: {out}", pod.netns);
    }
    assert!(installed.is_file(), "the plugin went with pods attached");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 3);
    assert_eq!(node.data.claims("ros-net").len(), 3);

    for pod in &pods {
        node.delete(pod)
            .unwrap_or_else(|e| panic!("deleting {}: {e}\n{}", pod.name, node.plugin_log()));
    }
    let (code, out) = node.exec_in_agent(&command);
    assert_eq!(code, 0, "{command:?}: {out}");
    assert!(out.contains("removed /host/cni-bin/ros-macvlan"), "{out}");
    assert!(!installed.exists(), "{out}");
    assert!(!records.exists(), "{out}");
    assert!(!store.join(".ros-macvlan").exists(), "{out}");
    assert!(node.data.claims("ros-net").is_empty());
    let (code, out) = node.exec_in_agent(&command);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing of ros-macvlan is left"), "{out}");
}

/// README's first install steps on a real containerd: `scripts/build-image.sh` as README
/// runs it, its archive imported as README imports it (`ctr -n k8s.io images import`), and
/// the image both rendered DaemonSets name (kubectl's kustomize) is the one now in the
/// node's image store.
#[test]
fn readme_image_built_and_imported_is_the_one_the_rendered_daemonsets_name() {
    let Some(node) = real_node(Nad::RosMacvlan) else {
        return;
    };
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).unwrap();
    let import = readme
        .lines()
        .find(|l| l.contains("sudo ctr -n k8s.io images import"))
        .expect("README imports the image into containerd");
    let archive = import
        .split_whitespace()
        .find(|w| w.ends_with(".oci.tar"))
        .unwrap();
    let built = std::process::Command::new(format!("{REPO}/scripts/build-image.sh"))
        .current_dir(REPO)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "scripts/build-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let said = String::from_utf8_lossy(&built.stdout).into_owned();
    let reference = said
        .lines()
        .last()
        .and_then(|l| l.split_once(": "))
        .map(|(out, r)| {
            assert_eq!(
                out, archive,
                "README imports another archive than the one built"
            );
            r.to_owned()
        })
        .unwrap_or_else(|| panic!("scripts/build-image.sh said {said}"));
    node.import(&std::path::Path::new(REPO).join(archive));
    let images = node.images();
    assert!(images.contains(&reference), "{reference} not in {images:?}");
    let Some(kubectl) = require_tool("kubectl") else {
        return;
    };
    for dir in ["install/base", "install/overlays/microk8s"] {
        let rendered = std::process::Command::new(&kubectl)
            .args(["kustomize", &format!("{REPO}/{dir}")])
            .output()
            .unwrap();
        assert!(rendered.status.success(), "kubectl kustomize {dir}");
        let docs: Vec<Value> = serde_yaml::Deserializer::from_slice(&rendered.stdout)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        let image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap();
        assert_eq!(
            image, reference,
            "{dir} names another image than the one imported"
        );
    }
}

/// The DaemonSet's metrics on a real node: with its command as written, the agent in its
/// container answers on the node's loopback at the declared port; the guide's pods show
/// under their names (from containerd's CNI_ARGS) with their ADDs counted, and are gone
/// from the metrics once kubelet has deleted them.
#[test]
fn the_daemonsets_metrics_show_the_pods_by_name_on_the_nodes_loopback() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    let Some(_) = require_tool("curl") else {
        return;
    };
    let node_ns = node.node.ns.name.clone();
    let scrape = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &node_ns, "curl", "-sf", "-m", "5"])
            .arg("http://127.0.0.1:9470/metrics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pods = node.pods("conf/example4-talkers-listener.yaml");
    let names = ["listener", "talker-1", "talker-2"];
    let held = |text: &str, pod: &str| {
        text.contains(&format!(
            "ros_macvlan_memberships_held{{namespace=\"default\",pod=\"{pod}\"}} 1\n"
        ))
    };
    let mut text = String::new();
    let shown = within(Duration::from_secs(10), || {
        text = scrape();
        names.iter().all(|p| held(&text, p))
    });
    assert!(shown, "the pods are not in the agent's metrics:\n{text}");
    assert!(
        text.contains("ros_macvlan_cni_calls_total{network=\"ros-net\",verb=\"ADD\"} 3\n"),
        "{text}"
    );
    for pod in &pods {
        node.delete(pod)
            .unwrap_or_else(|e| panic!("deleting {}: {e}\n{}", pod.name, node.plugin_log()));
    }
    let text = scrape();
    assert!(!text.contains("pod=\""), "{text}");
    assert!(
        text.contains("ros_macvlan_cni_calls_total{network=\"ros-net\",verb=\"DEL\"}"),
        "{text}"
    );
}

/// An upgrade as README describes it: the guide's pods attached under image A, the
/// DaemonSet's pod replaced by one of image B (another build of the plugin), as a rolling
/// update replaces it. B's container installs its plugin over A's, its agent takes over
/// A's records: every pod's membership is back within 5 s and held by B; then the pods'
/// DELs, run by B's plugin, leave no claim, record, membership or link.
#[test]
fn upgrade_to_another_image_keeps_the_pods_and_their_del_cleans_up() {
    let Some(mut node) = node_with_agent(Nad::RosMacvlan) else {
        return;
    };
    let pods = node.pods("conf/example4-talkers-listener.yaml");
    for pod in &pods {
        assert!(
            member_of_discovery_group(&pod.netns, "net1"),
            "{}",
            pod.name
        );
    }
    // Image B: another build (trailing bytes change nothing of how it runs).
    let scratch = DataDir::scratch();
    let b_bin = scratch.0.join("ros-macvlan");
    let mut bytes = std::fs::read(release_bin()).unwrap();
    bytes.extend_from_slice(b"image B");
    std::fs::write(&b_bin, &bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&b_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b_archive = scratch.0.join("b.oci.tar");
    let b_image = "localhost/rmtest-ros-macvlan:b";
    build_agent_image(&b_bin, &b_archive, b_image);

    node.upgrade_agent(&b_archive, b_image);
    let installed = node.agent.as_ref().unwrap().cni_bin.join("ros-macvlan");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        bytes,
        "B's container did not install its plugin"
    );
    let client = ros_macvlan::agent::client::AgentClient::new(&node.agent_socket());
    let start = Instant::now();
    while client.list().map(|h| h.len()).unwrap_or(0) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B's agent did not take over A's memberships: {:?}\n{}",
            client.list(),
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for pod in &pods {
        assert!(
            member_of_discovery_group(&pod.netns, "net1"),
            "{}",
            pod.name
        );
    }

    for pod in &pods {
        node.delete(pod)
            .unwrap_or_else(|e| panic!("deleting {}: {e}\n{}", pod.name, node.plugin_log()));
    }
    assert!(node.data.claims("ros-net").is_empty(), "claims left");
    let records = ros_macvlan::agent::records::RecordDir::beside(&node.agent_socket());
    assert!(
        records.list().unwrap().is_empty(),
        "membership records left"
    );
    assert!(
        client.list().unwrap().is_empty(),
        "B's agent still holds some"
    );
    assert_eq!(node.node.ns.link_names(), ["lo", "lan0"], "links left");
}
