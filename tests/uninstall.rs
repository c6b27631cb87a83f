//! `ros-macvlan uninstall`: it never breaks the DEL of an attached pod. With one attachment
//! made by a real ADD in a node namespace, it refuses, names the pod, and removes nothing;
//! once DEL has run it removes the binary, the agent's records and state, and its records in
//! the host-local store, and a second run finds nothing left.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn uninstall(bin_dir: &Path, socket: &Path, data: &DataDir) -> Output {
    Command::new(plugin_bin())
        .arg("uninstall")
        .arg("--cni-bin-dir")
        .arg(bin_dir)
        .arg("--agent-socket")
        .arg(socket)
        .args(["--data-dir", data.path()])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn uninstall_refuses_while_a_pod_is_attached_and_removes_everything_after_its_del() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    let data = DataDir::create();
    let mut agent = TestAgent::start_in(Some(&node.ns.name), &[]);
    let conf = with_agent(guide(&data), &agent);
    let socket = agent.socket();
    let agent_dir = socket.parent().unwrap().to_owned();

    let bins = DataDir::scratch();
    let bin_dir = bins.0.join("cni-bin");
    let installed = Command::new(plugin_bin())
        .args(["install", "--cni-bin-dir"])
        .arg(&bin_dir)
        .status()
        .unwrap();
    assert!(installed.success());
    let binary = bin_dir.join("ros-macvlan");

    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=t1";
    cni_with("ADD", &node, &pod, &conf, &[("CNI_ARGS", args)]).ok();
    let records = agent_dir.join("memberships");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 1);
    let claims = data.claims("ros-net");
    assert_eq!(claims.len(), 1);

    let refused = uninstall(&bin_dir, &socket, &data);
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    for named in [
        "uninstall refused: 1 attachment(s)",
        "pod default/t1",
        &pod.container_id,
        &pod.ns.path(),
        "net1 of network ros-net",
        "membership record",
        &format!("host-local claim {}", claims[0]),
    ] {
        assert!(said.contains(named), "{named:?} not in:\n{said}");
    }
    assert!(binary.is_file(), "the binary went while a pod is attached");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 1);
    assert_eq!(data.claims("ros-net"), claims);
    let leftovers: Vec<_> = std::fs::read_dir(&bin_dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "the binary put aside was not put back");

    // A record of a pod whose netns is gone (a lost DEL) is named as such, with what
    // clears it. (The agent stops first, or its sweep would drop that record at once.)
    agent.stop();
    let mine = std::fs::read_dir(&records)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut ghost: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mine).unwrap()).unwrap();
    ghost["containerID"] = "ghost".into();
    ghost["netns"] = format!("/run/netns/rmgone-{}", std::process::id()).into();
    let ghost_file = records.join("ghost:ros-net:net1.json");
    std::fs::write(&ghost_file, ghost.to_string()).unwrap();
    let said = text(&uninstall(&bin_dir, &socket, &data));
    let ghost_line = said.lines().find(|l| l.contains("container ghost"));
    assert!(
        ghost_line.is_some_and(|l| l.contains("a lost DEL")),
        "{said}"
    );
    assert!(
        !said
            .lines()
            .any(|l| l.contains(&pod.container_id) && l.contains("lost DEL")),
        "{said}"
    );
    std::fs::remove_file(&ghost_file).unwrap();

    // The pod's DEL still works: the plugin and its records are there.
    cni_with("DEL", &node, &pod, &conf, &[("CNI_ARGS", args)]).ok();

    let done = uninstall(&bin_dir, &socket, &data);
    let said = text(&done);
    assert!(done.status.success(), "{said}");
    assert!(
        said.contains(&format!("removed {}", binary.display())),
        "{said}"
    );
    assert!(!binary.exists());
    assert_eq!(std::fs::read_dir(&bin_dir).unwrap().count(), 0);
    assert!(!records.exists(), "{said}");
    assert!(!agent_dir.join("probes").exists(), "{said}");
    assert!(!socket.exists(), "{said}");
    let store = data.0.join("ros-net");
    assert!(!store.join(".ros-macvlan").exists(), "{said}");
    // The store itself is shared with the reference host-local: it stays, with no claim.
    assert!(store.join("lock").exists());
    assert!(data.claims("ros-net").is_empty());

    let again = uninstall(&bin_dir, &socket, &data);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("nothing of ros-macvlan is left"),
        "{}",
        text(&again)
    );
}

/// A record that cannot be read may be a pod's: uninstall refuses and names the file, as it
/// does for host access the agent still keeps. No root needed: only files.
#[test]
fn uninstall_refuses_on_an_unreadable_record_and_on_host_access_kept() {
    let dir = DataDir::scratch();
    let agent_dir = dir.0.join("agent");
    let records = agent_dir.join("memberships");
    std::fs::create_dir_all(&records).unwrap();
    std::fs::write(records.join("x:net1.json"), b"{half a rec").unwrap();
    std::fs::write(
        agent_dir.join("host-access.json"),
        br#"[{"master": "lan0", "address": "198.51.100.20/24", "podRanges": []}]"#,
    )
    .unwrap();
    let bin_dir = dir.0.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::write(bin_dir.join("ros-macvlan"), b"plugin").unwrap();
    let data = DataDir::scratch();

    let out = uninstall(&bin_dir, &agent_dir.join("agent.sock"), &data);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("x:net1.json cannot be read as a record"),
        "{said}"
    );
    assert!(
        said.contains("host access kept by the node agent on lan0"),
        "{said}"
    );
    assert!(bin_dir.join("ros-macvlan").is_file());

    std::fs::remove_file(records.join("x:net1.json")).unwrap();
    std::fs::write(agent_dir.join("host-access.json"), b"[]").unwrap();
    let out = uninstall(&bin_dir, &agent_dir.join("agent.sock"), &data);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!bin_dir.join("ros-macvlan").exists());
    assert!(!agent_dir.exists(), "{}", text(&out));
}
