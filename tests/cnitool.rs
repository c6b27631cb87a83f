//! libcni's cnitool drives the plugin the way Multus does: a conflist in NETCONFPATH,
//! ros-macvlan and the reference plugins in CNI_PATH; add, check and del into a pod.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::*;

fn cnitool(
    node: &Node,
    tool: &std::path::Path,
    conf_dir: &str,
    cni_path: &str,
    verb: &str,
    pod: &Pod,
) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(tool)
        .args([verb, "ros-net", &pod.ns.path()])
        .env_clear()
        .env("NETCONFPATH", conf_dir)
        .env("CNI_PATH", cni_path)
        .env("CNI_IFNAME", "net1")
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=listener",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "cnitool {verb}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn cnitool_adds_checks_and_deletes_like_multus() {
    if !require_root() {
        return;
    }
    let Some(tool) = require_tool("cnitool") else {
        return;
    };
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    let data = DataDir::create();
    // CNI_PATH: ros-macvlan beside the reference plugins, as on a node.
    let bin_dir = data.0.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(plugin_bin(), bin_dir.join("ros-macvlan")).unwrap();
    let cni_path = format!("{}:{REFERENCE_DIR}", bin_dir.display());
    let conf_dir = data.0.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let mut plugin = guide_config(None, "lan0", &data, "198.51.100.160", "198.51.100.180");
    plugin.as_object_mut().unwrap().remove("name");
    let conflist = json!({"cniVersion": "1.0.0", "name": "ros-net", "plugins": [plugin]});
    std::fs::write(conf_dir.join("10-ros-net.conflist"), conflist.to_string()).unwrap();
    let conf_dir = conf_dir.to_str().unwrap();

    let (code, out) = cnitool(&node, &tool, conf_dir, &cni_path, "add", &pod);
    assert_eq!(code, 0, "cnitool add: {out}");
    let result: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let addr = result["ips"][0]["address"].as_str().unwrap();
    let on_link = pod.ns.ip(&["-4", "-o", "addr", "show", "dev", "net1"]);
    assert!(
        on_link.contains(addr),
        "cnitool printed {addr}, net1 has {on_link}"
    );
    let mac = pod.ns.ip_json(&["link", "show", "net1"])[0]["address"].clone();
    assert_eq!(result["interfaces"][0]["mac"], mac);
    assert_eq!(data.claims("ros-net").len(), 1);

    let (code, out) = cnitool(&node, &tool, conf_dir, &cni_path, "check", &pod);
    assert_eq!(code, 0, "cnitool check: {out}");
    pod.ns.ip(&["link", "set", "eth0", "multicast", "on"]);
    let (code, out) = cnitool(&node, &tool, conf_dir, &cni_path, "check", &pod);
    assert_ne!(
        code, 0,
        "cnitool check passed with eth0 multicast-capable: {out}"
    );
    pod.ns.ip(&["link", "set", "eth0", "multicast", "off"]);

    let (code, out) = cnitool(&node, &tool, conf_dir, &cni_path, "del", &pod);
    assert_eq!(code, 0, "cnitool del: {out}");
    assert_eq!(pod.ns.link_names_after_removal(), ["lo", "eth0"]);
    assert!(data.claims("ros-net").is_empty());
}
