//! `probe --pod` and `doctor --pod` (issue 33): a pod attached with Kubernetes' CNI_ARGS
//! (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, as Multus and containerd pass them) is found by its
//! name in the node agent's records; an unknown name is refused, naming the pods known.

mod support;

use std::process::Command;

use support::*;

/// The CNI_ARGS containerd sends for pod `namespace/name`.
fn pod_args(namespace: &str, name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=x")
}

/// The tool run in the node's namespace (as in the agent's container): exit code, stdout
/// and stderr together.
fn tool(node: &Node, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(plugin_bin())
        .args(args)
        .output()
        .expect("run the tool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A child killed and reaped on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pod's net1 IPv4 address.
fn net1_of(pod: &Pod) -> String {
    net1_ipv4(&pod.ns).expect("net1 has an IPv4 address")
}

#[test]
fn probe_and_doctor_find_a_pod_by_name_and_refuse_an_unknown_one() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let agent = TestAgent::start_in(Some(&node.ns.name), &[]);
    let data = DataDir::create();
    let conf = with_agent(guide(&data), &agent);
    let t1 = node.pod(1);
    let t2 = node.pod(2);
    let args1 = pod_args("default", "t1");
    let args2 = pod_args("robots", "t2");
    cni_with("ADD", &node, &t1, &conf, &[("CNI_ARGS", &args1)]).ok();
    cni_with("ADD", &node, &t2, &conf, &[("CNI_ARGS", &args2)]).ok();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();

    // doctor by name checks t2's namespace: its membership is held there, its net1 found.
    let (code, out) = tool(
        &node,
        &[
            "doctor",
            "--pod",
            "robots/t2",
            "--agent-socket",
            socket,
            "--seconds",
            "1",
        ],
    );
    let netns2 = t2.ns.path();
    assert!(
        out.lines()
            .any(|l| l.starts_with("PASS") && l.contains("interface")),
        "doctor --pod did not find t2's net1 (exit {code}):\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("PASS") && l.contains("membership")),
        "doctor --pod did not see t2's membership:\n{out}"
    );

    // probe by name listens on t1's net1: it hears t2 (probing by its netns, announcing)
    // from t2's net1 address, as one pod hears another on the LAN.
    let t2_addr = net1_of(&t2);
    let announcer = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(plugin_bin())
        .args(["probe", "--netns", &netns2, "--seconds", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Killed)
        .expect("start t2's probe");
    let (code, out) = tool(
        &node,
        &[
            "probe",
            "--pod",
            "default/t1",
            "--agent-socket",
            socket,
            "--seconds",
            "2",
            "--json",
        ],
    );
    drop(announcer);
    assert_eq!(code, 0, "probe --pod failed:\n{out}");
    assert!(
        out.contains(&format!("\"source\":\"{t2_addr}:")),
        "probe --pod on t1 did not hear t2 ({t2_addr}):\n{out}"
    );

    // An unknown pod: refused with exit 2, naming the pods the records know.
    for verb in ["probe", "doctor"] {
        let (code, out) = tool(
            &node,
            &[verb, "--pod", "default/nope", "--agent-socket", socket],
        );
        assert_eq!(code, 2, "{verb} --pod default/nope:\n{out}");
        assert!(
            out.contains("no attachment of pod default/nope")
                && out.contains("default/t1 (net1)")
                && out.contains("robots/t2 (net1)"),
            "{verb}: the error does not name the known pods:\n{out}"
        );
    }
    // A pod of a network that joins no group but relays Zenoh: found by its relay's record.
    let mut zenoh_only = with_agent(
        guide_config(
            Some("1.0.0"),
            "lan0",
            &data,
            "198.51.100.200",
            "198.51.100.210",
        ),
        &agent,
    );
    zenoh_only["name"] = serde_json::json!("ros-zenoh");
    zenoh_only["zenoh"] = serde_json::json!(true);
    zenoh_only["multicast"] = serde_json::json!({ "groups": [] });
    let t3 = node.pod(3);
    let args3 = pod_args("robots", "t3");
    cni_with("ADD", &node, &t3, &zenoh_only, &[("CNI_ARGS", &args3)]).ok();
    let (code, out) = tool(
        &node,
        &[
            "doctor",
            "--pod",
            "robots/t3",
            "--agent-socket",
            socket,
            "--seconds",
            "1",
        ],
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("PASS") && l.contains("interface")),
        "doctor --pod did not find t3's net1 by its relay (exit {code}):\n{out}"
    );
    cni_with("DEL", &node, &t3, &zenoh_only, &[("CNI_ARGS", &args3)]).ok();

    // Not a pod name at all, and a name beside a netns: clap refuses both.
    let (code, _) = tool(&node, &["probe", "--pod", "t1"]);
    assert_eq!(code, 2);
    let (code, out) = tool(
        &node,
        &["doctor", "--pod", "default/t1", "--netns", &netns2],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot be used with"), "{out}");

    // Once DEL has run, the pod is no longer known.
    cni_with("DEL", &node, &t1, &conf, &[("CNI_ARGS", &args1)]).ok();
    let (code, out) = tool(
        &node,
        &["probe", "--pod", "default/t1", "--agent-socket", socket],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("known pods: robots/t2 (net1) ("), "{out}");
    cni_with("DEL", &node, &t2, &conf, &[("CNI_ARGS", &args2)]).ok();
}
