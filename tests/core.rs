//! The plugin core through the built binary, as a runtime drives it: ADD, CHECK, DEL,
//! results per version, the host-local store, rollback, and bad input.

mod support;

use serde_json::{json, Value};
use support::*;

fn check(node: &Node, pod: &Pod, conf: &Value, prev: &Value) -> Reply {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    cni("CHECK", node, pod, &c)
}

/// The pod's net1 as `ip -d -j link` sees it.
fn net1(pod: &Pod) -> Value {
    pod.ns.ip_json(&["-d", "link", "show", "net1"])[0].clone()
}

fn v4_addrs(pod: &Pod, dev: &str) -> Vec<String> {
    pod.ns.ip_json(&["-4", "addr", "show", "dev", dev])[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn add_check_del_round_trip() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(11);
    let data = DataDir::create();
    let mut conf = guide(&data);
    conf["ipam"]["routes"] =
        json!([{"dst": "203.0.113.128/25"}, {"dst": "198.51.100.0/25", "gw": "198.51.100.1"}]);

    let result = add(&node, &pod, &conf).ok().clone();
    // A fresh store's first pick depends on the node (RangeSet::spread_resume_point).
    let addr = result["ips"][0]["address"].as_str().unwrap().to_owned();
    let ip = addr.trim_end_matches("/24").to_owned();
    let last_octet: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        addr.starts_with("198.51.100.") && (160..=180).contains(&last_octet),
        "{addr}"
    );
    let link = net1(&pod);
    assert_eq!(link["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "bridge");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(
        v4_addrs(&pod, "net1").first().map(String::as_str),
        Some(addr.as_str())
    );
    // The default route stays on the cluster network; IPAM routes go out net1.
    let routes = pod.ns.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    // A route without gw goes through the range's gateway, as with the reference.
    assert!(
        routes.contains("203.0.113.128/25 via 198.51.100.1 dev net1"),
        "{routes}"
    );
    assert!(
        routes.contains("198.51.100.0/25 via 198.51.100.1 dev net1"),
        "{routes}"
    );

    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], "net1");
    assert_eq!(result["interfaces"][0]["mac"], link["address"]);
    assert_eq!(result["interfaces"][0]["sandbox"], pod.ns.path());
    assert_eq!(result["ips"][0]["gateway"], "198.51.100.1");
    assert_eq!(result["ips"][0]["interface"], 0);
    assert!(result["ips"][0].get("version").is_none());

    let claim = std::fs::read(data.0.join("ros-net").join(&ip)).unwrap();
    assert_eq!(claim, format!("{}\r\nnet1", pod.container_id).as_bytes());
    assert_eq!(
        std::fs::read(data.0.join("ros-net/last_reserved_ip.0")).unwrap(),
        ip.as_bytes()
    );

    check(&node, &pod, &conf, &result).ok();

    // CHECK notices what changed behind the plugin's back.
    pod.ns.ip(&["addr", "del", &addr, "dev", "net1"]);
    let r = check(&node, &pod, &conf, &result);
    assert_eq!(r.err_code(), 104);
    assert!(r.msg().contains(&addr), "{}", r.msg());

    del(&node, &pod, &conf).ok();
    assert_eq!(pod.ns.link_names_after_removal(), ["lo", "eth0"]);
    assert!(data.claims("ros-net").is_empty());
    // A second DEL has nothing to do and succeeds.
    del(&node, &pod, &conf).ok();
}

#[test]
fn check_is_refused_before_0_4_0_and_needs_prev_result() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(12);
    let data = DataDir::create();
    let conf = guide_config(
        Some("0.3.1"),
        "lan0",
        &data,
        "198.51.100.160",
        "198.51.100.180",
    );
    let r = run_in(
        &node.ns.name,
        &plugin_bin(),
        &cni_env("CHECK", &pod, "net1", &pod.ns.path()),
        &conf.to_string(),
    );
    assert_eq!(r.err_code(), 1);
    assert_eq!(r.json["cniVersion"], "0.3.1");
    let conf = guide(&data);
    let r = run_in(
        &node.ns.name,
        &plugin_bin(),
        &cni_env("CHECK", &pod, "net1", &pod.ns.path()),
        &conf.to_string(),
    );
    assert_eq!(r.err_code(), 7);
    assert!(r.msg().contains("prevResult"), "{}", r.msg());
}

#[test]
fn results_have_the_shape_of_each_version() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    for (i, version) in [
        None,
        Some("0.1.0"),
        Some("0.2.0"),
        Some("0.3.0"),
        Some("0.3.1"),
        Some("0.4.0"),
        Some("1.0.0"),
        Some("1.1.0"),
    ]
    .into_iter()
    .enumerate()
    {
        let pod = node.pod(20 + i as u8);
        let conf = guide_config(version, "lan0", &data, "198.51.100.160", "198.51.100.180");
        let r = add(&node, &pod, &conf).ok().clone();
        let expected_version = version.unwrap_or("0.1.0");
        assert_eq!(r["cniVersion"], expected_version);
        match expected_version {
            "0.1.0" | "0.2.0" => {
                assert!(
                    r["ip4"]["ip"].as_str().unwrap().starts_with("198.51.100."),
                    "{r}"
                );
                assert_eq!(r["ip4"]["gateway"], "198.51.100.1");
                assert!(
                    r.get("ips").is_none() && r.get("interfaces").is_none(),
                    "{r}"
                );
            }
            "0.3.0" | "0.3.1" | "0.4.0" => {
                assert_eq!(r["ips"][0]["version"], "4", "{r}");
                assert_eq!(r["interfaces"][0]["name"], "net1");
                assert!(r["interfaces"][0].get("mtu").is_none());
            }
            "1.0.0" => {
                assert!(r["ips"][0].get("version").is_none(), "{r}");
                assert!(r["interfaces"][0].get("mtu").is_none());
            }
            _ => {
                assert!(r["ips"][0].get("version").is_none(), "{r}");
                assert_eq!(r["interfaces"][0]["mtu"], 1500, "{r}");
            }
        }
        del(&node, &pod, &conf).ok();
    }
    assert!(data.claims("ros-net").is_empty());
}

#[test]
fn version_lists_every_supported_version() {
    let r = run_in_host(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(r.code, 0);
    assert_eq!(r.json["cniVersion"], "0.4.0");
    assert_eq!(
        r.json["supportedVersions"],
        json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // Podman sends VERSION with CNI_NETNS=dummy and may send no config at all.
    let r = run_in_host(&[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")], "");
    assert_eq!(r.code, 0);
    assert_eq!(r.json["cniVersion"], "1.1.0");
}

/// Runs the plugin in this process's namespace: only for verbs that touch no interface.
fn run_in_host(env: &[(&str, &str)], stdin: &str) -> Reply {
    invoke(std::process::Command::new(plugin_bin()), env, stdin)
}

#[test]
fn del_releases_the_claim_when_the_netns_is_gone() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let conf = guide(&data);
    let pod = node.pod(13);
    let addr = add(&node, &pod, &conf).ok()["ips"][0]["address"].clone();
    let ip = addr.as_str().unwrap().trim_end_matches("/24");
    assert_eq!(data.claims("ros-net"), [ip]);
    let gone = format!("/var/run/netns/{}", unique("gone"));
    let path = pod.ns.path();
    drop(pod.ns);
    let pod2 = Pod {
        ns: Ns::new("rmpod"),
        container_id: pod.container_id.clone(),
    };
    for netns in [gone.as_str(), path.as_str(), ""] {
        let r = run_in(
            &node.ns.name,
            &plugin_bin(),
            &cni_env("DEL", &pod2, "net1", netns),
            &conf.to_string(),
        );
        r.ok();
    }
    assert!(data.claims("ros-net").is_empty());
}

#[test]
fn mac_mtu_and_modes_are_applied() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let pod = node.pod(14);
    let mut conf = guide_config(
        Some("1.1.0"),
        "lan0",
        &data,
        "198.51.100.160",
        "198.51.100.180",
    );
    conf["mode"] = json!("private");
    conf["mtu"] = json!(1400);
    conf["mac"] = json!("02:00:00:00:00:03");
    conf["runtimeConfig"] = json!({"mac": "02:00:00:00:00:01"});
    let netns = pod.ns.path();
    let mut env = cni_env("ADD", &pod, "net1", &netns);
    env.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;MAC=02:00:00:00:00:02;K8S_POD_NAME=a;K8S_POD_NAME=b",
    ));
    let r = run_in(&node.ns.name, &plugin_bin(), &env, &conf.to_string());
    let result = r.ok().clone();
    let link = net1(&pod);
    assert_eq!(
        link["address"], "02:00:00:00:00:01",
        "runtimeConfig mac wins"
    );
    assert_eq!(link["mtu"], 1400);
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "private");
    assert_eq!(result["interfaces"][0]["mtu"], 1400);
    assert!(
        r.stderr.contains("pod=-/b"),
        "the log line names the pod: {}",
        r.stderr
    );
    del(&node, &pod, &conf).ok();

    conf.as_object_mut().unwrap().remove("runtimeConfig");
    conf["mode"] = json!("vepa");
    let r = run_in(&node.ns.name, &plugin_bin(), &env, &conf.to_string());
    r.ok();
    assert_eq!(
        net1(&pod)["address"],
        "02:00:00:00:00:02",
        "CNI_ARGS MAC comes next"
    );
    assert_eq!(net1(&pod)["linkinfo"]["info_data"]["mode"], "vepa");
    del(&node, &pod, &conf).ok();

    let r = run_in(
        &node.ns.name,
        &plugin_bin(),
        &cni_env("ADD", &pod, "net1", &netns),
        &conf.to_string(),
    );
    r.ok();
    assert_eq!(
        net1(&pod)["address"],
        "02:00:00:00:00:03",
        "then the config's mac"
    );
    del(&node, &pod, &conf).ok();

    // passthru takes the master's own MAC; lan0 here carries nothing of the node's, and
    // the node policy allows passthru (docs/security.md).
    conf["mode"] = json!("passthru");
    conf.as_object_mut().unwrap().remove("mac");
    let policy = NodePolicy::new(Some(json!({"modes": ["bridge", "passthru"]})));
    policy.cni("ADD", &node, &pod, &conf).ok();
    assert_eq!(net1(&pod)["linkinfo"]["info_data"]["mode"], "passthru");
    policy.cni("DEL", &node, &pod, &conf).ok();
}

#[test]
fn master_defaults_to_the_lan_interface_then_the_default_route() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    // The node's default route leaves by another interface (Wi-Fi or LTE on a robot).
    node.ns.ip(&[
        "link", "add", "wan0", "type", "veth", "peer", "name", "wanpeer",
    ]);
    node.ns.ip(&["link", "set", "wan0", "up"]);
    node.ns
        .ip(&["addr", "add", "203.0.113.2/24", "dev", "wan0"]);
    node.ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "203.0.113.1",
        "dev",
        "wan0",
    ]);
    let data = DataDir::create();
    let pod = node.pod(15);
    let mut conf = guide(&data);
    conf.as_object_mut().unwrap().remove("master");
    let index = |name: &str| node.ns.ip_json(&["link", "show", name])[0]["ifindex"].as_u64();

    // The LAN interface holds an address in the range's subnet: it is the master.
    node.ns
        .ip(&["addr", "add", "198.51.100.2/24", "dev", "lan0"]);
    let r = add(&node, &pod, &conf);
    let host_side = &r.ok()["interfaces"][1];
    assert_eq!(
        host_side["name"], "lan0",
        "the result names the master taken"
    );
    assert!(host_side.get("sandbox").is_none(), "{host_side}");
    assert_eq!(net1(&pod)["link_index"].as_u64(), index("lan0"));
    assert!(
        r.stderr
            .contains("master lan0 taken: it holds 198.51.100.2/24"),
        "the log line does not say which master and why: {}",
        r.stderr
    );
    del(&node, &pod, &conf).ok();
    pod.ns.link_names_after_removal();

    // No interface in the subnet: the default route's.
    node.ns
        .ip(&["addr", "del", "198.51.100.2/24", "dev", "lan0"]);
    let r = add(&node, &pod, &conf);
    assert_eq!(r.ok()["interfaces"][1]["name"], "wan0");
    assert_eq!(net1(&pod)["link_index"].as_u64(), index("wan0"));
    assert!(
        r.stderr
            .contains("master wan0 taken: the interface of the default route"),
        "{}",
        r.stderr
    );
    del(&node, &pod, &conf).ok();
}

#[test]
fn link_in_container_uses_a_master_inside_the_pod() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(16);
    // A second LAN leg that lives in the pod itself (as with an SR-IOV VF moved into it).
    let peer = unique("inpod");
    pod.ns.ip(&[
        "link", "add", "uplink", "type", "veth", "peer", "name", &peer,
    ]);
    pod.ns.ip(&["link", "set", "uplink", "up"]);
    let data = DataDir::create();
    let mut conf = guide_config(
        Some("1.0.0"),
        "uplink",
        &data,
        "198.51.100.160",
        "198.51.100.180",
    );
    conf["linkInContainer"] = json!(true);
    add(&node, &pod, &conf).ok();
    assert_eq!(net1(&pod)["linkinfo"]["info_kind"], "macvlan");
    del(&node, &pod, &conf).ok();
    assert!(!pod.ns.link_names().contains(&"net1".to_string()));
}

#[test]
fn delegates_to_another_ipam_plugin() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(17);
    let records = DataDir::scratch();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ros-static", "type": "ros-macvlan", "master": "lan0",
        "agentSocket": records.agent_socket(),
        "ipam": {"type": "static", "addresses": [{"address": "198.51.100.77/24", "gateway": "198.51.100.1"}],
                 "routes": [{"dst": "203.0.113.0/24"}]}
    });
    let r = add(&node, &pod, &conf).ok().clone();
    assert_eq!(r["ips"][0]["address"], "198.51.100.77/24");
    assert_eq!(
        v4_addrs(&pod, "net1").first().map(String::as_str),
        Some("198.51.100.77/24")
    );
    // No gw: through the gateway of the address's family, as with the reference.
    assert!(pod
        .ns
        .ip(&["route"])
        .contains("203.0.113.0/24 via 198.51.100.1 dev net1"));
    check(&node, &pod, &conf, &r).ok();
    del(&node, &pod, &conf).ok();
    let mut bad = conf.clone();
    bad["ipam"]["type"] = json!("../../bin/sh");
    assert_eq!(add(&node, &pod, &bad).err_code(), 7);
    bad["ipam"]["type"] = json!("no-such-ipam");
    let r = add(&node, &pod, &bad);
    assert_eq!(r.err_code(), 7);
    assert!(r.msg().contains("no-such-ipam"), "{}", r.msg());
    assert_eq!(pod.ns.link_names(), ["lo", "eth0"]);
}

/// CNI_NETNS naming the plugin's own namespace (the node's) is refused before any change:
/// every interface keeps its flags, addresses and routes (ADD there used to clear the
/// MULTICAST flag of the master and route multicast away from the node).
#[test]
fn the_plugins_own_netns_is_refused() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    node.ns
        .ip(&["addr", "add", "198.51.100.2/24", "dev", "lan0"]);
    let data = DataDir::create();
    let conf = guide(&data);
    let state = || {
        (
            node.ns.ip(&["-d", "link", "show"]),
            node.ns.ip(&["addr", "show"]),
            node.ns.ip(&["route", "show", "table", "all"]),
        )
    };
    let before = state();
    let own = node.ns.path();
    let pod = Pod {
        ns: Ns::new("rmunused"),
        container_id: unique("ctr"),
    };
    for verb in ["ADD", "CHECK", "DEL"] {
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = json!({"cniVersion": "1.0.0"});
        let r = run_in(
            &node.ns.name,
            &plugin_bin(),
            &cni_env(verb, &pod, "net1", &own),
            &with_prev.to_string(),
        );
        assert_eq!(r.err_code(), 4, "{verb}: {}", r.json);
        assert!(r.msg().contains("own network namespace"), "{}", r.msg());
    }
    assert_eq!(state(), before, "the node's network changed");
    assert!(data.claims("ros-net").is_empty());
}

/// A delegated IPAM plugin's error reaches the runtime as it answered: whereabouts' 11
/// "try again later" stays 11 (the runtime retries), with its msg and details; it also
/// receives CNI_ARGS, which whereabouts reads the pod's name from.
#[test]
fn a_delegated_ipam_error_passes_through_with_its_code() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(18);
    let dir = DataDir::create();
    let seen_args = dir.0.join("args");
    let plugin = dir.0.join("busy-ipam");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\ncat >/dev/null\nprintf '%s' \"$CNI_ARGS\" > {}\necho '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"leader election in progress\",\"details\":\"retry shortly\"}}'\nexit 1\n",
            seen_args.display()
        ),
    )
    .unwrap();
    sh(&["chmod", "755", plugin.to_str().unwrap()]);
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ros-busy", "type": "ros-macvlan", "master": "lan0",
        "agentSocket": dir.agent_socket(),
        "ipam": {"type": "busy-ipam"}
    });
    let netns = pod.ns.path();
    let mut env = cni_env("ADD", &pod, "net1", &netns);
    env.retain(|(k, _)| *k != "CNI_PATH");
    env.push(("CNI_PATH", dir.path()));
    env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=talker"));
    let r = run_in(&node.ns.name, &plugin_bin(), &env, &conf.to_string());
    assert_eq!(r.err_code(), 11, "{}", r.json);
    assert_eq!(r.msg(), "leader election in progress");
    assert_eq!(r.json["details"], "retry shortly");
    assert_eq!(
        std::fs::read_to_string(&seen_args).unwrap(),
        "IgnoreUnknown=1;K8S_POD_NAME=talker"
    );
    assert_eq!(pod.ns.link_names_after_removal(), ["lo", "eth0"]);
}

/// The reference host-local and ours share one store: alternating, they never hand out an
/// address twice, and each releases the other's claims.
#[test]
fn shares_the_store_with_the_reference_host_local() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let conf = guide(&data);
    let reference = std::path::PathBuf::from(REFERENCE_DIR).join("host-local");
    let mut pods = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..8u8 {
        let pod = node.pod(30 + i);
        let addr = if i % 2 == 0 {
            add(&node, &pod, &conf).ok()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_owned()
        } else {
            let mut ipam_conf = conf.clone();
            ipam_conf["type"] = json!("host-local");
            let r = run_in(
                &node.ns.name,
                &reference,
                &cni_env("ADD", &pod, "net1", &pod.ns.path()),
                &ipam_conf.to_string(),
            );
            r.ok()["ips"][0]["address"].as_str().unwrap().to_owned()
        };
        assert!(seen.insert(addr.clone()), "{addr} handed out twice");
        pods.push(pod);
    }
    assert_eq!(data.claims("ros-net").len(), 8);
    // Each releases the claims the other made.
    for (i, pod) in pods.iter().enumerate() {
        if i % 2 == 1 {
            del(&node, pod, &conf).ok();
        } else {
            let mut ipam_conf = conf.clone();
            ipam_conf["type"] = json!("host-local");
            run_in(
                &node.ns.name,
                &reference,
                &cni_env("DEL", pod, "net1", &pod.ns.path()),
                &ipam_conf.to_string(),
            );
        }
    }
    assert!(
        data.claims("ros-net").is_empty(),
        "left: {:?}",
        data.claims("ros-net")
    );
}

/// Our result and the reference macvlan's for the same config have the same shape.
#[test]
fn result_shape_matches_the_reference_macvlan() {
    if !require_root() {
        return;
    }
    fn shape(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().take(1).map(shape).collect()),
            Value::String(_) => json!("string"),
            Value::Number(_) => json!("number"),
            other => other.clone(),
        }
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let ours_pod = node.pod(40);
        let ref_pod = node.pod(41);
        let conf = guide_config(
            Some(version),
            "lan0",
            &data,
            "198.51.100.160",
            "198.51.100.180",
        );
        let mut ref_conf = conf.clone();
        ref_conf["type"] = json!("macvlan");
        let ours = add(&node, &ours_pod, &conf).ok().clone();
        let reference = run_in(
            &node.ns.name,
            &std::path::PathBuf::from(REFERENCE_DIR).join("macvlan"),
            &cni_env("ADD", &ref_pod, "net1", &ref_pod.ns.path()),
            &ref_conf.to_string(),
        );
        assert_eq!(shape(&ours), shape(reference.ok()), "version {version}");
        del(&node, &ours_pod, &conf).ok();
    }
}

/// Bad input: the right code, a message that says what to fix, no panic, nothing left.
#[test]
fn bad_input_table() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(50);
    let data = DataDir::create();
    let good = guide_config(
        Some("1.0.0"),
        "lan0",
        &data,
        "198.51.100.160",
        "198.51.100.160",
    );
    let netns = pod.ns.path();
    let base = cni_env("ADD", &pod, "net1", &netns);
    let with = |k: &'static str, v: &'static str| -> Vec<(&str, &str)> {
        let mut e: Vec<(&str, &str)> = base.iter().filter(|(key, _)| *key != k).copied().collect();
        if !v.is_empty() {
            e.push((k, v));
        }
        e
    };
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string()
    };
    // The range holds one address: a first pod takes it, so the table's last case is exhausted.
    let holder = node.pod(51);
    add(&node, &holder, &good).ok();

    // (case, environment, stdin, expected code, what the message must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            base.clone(),
            "{\"cniVersion\":".into(),
            6,
            "not valid JSON",
        ),
        (
            "unknown command",
            with("CNI_COMMAND", "FROB"),
            good.to_string(),
            4,
            "FROB",
        ),
        (
            "missing variable",
            with("CNI_IFNAME", ""),
            good.to_string(),
            4,
            "CNI_IFNAME",
        ),
        (
            "long ifname",
            with("CNI_IFNAME", "net1234567890123"),
            good.to_string(),
            4,
            "15 characters",
        ),
        (
            "bad container id",
            with("CNI_CONTAINERID", "../../x"),
            good.to_string(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "unknown version",
            base.clone(),
            edit(&|c| c["cniVersion"] = json!("0.9.9")),
            1,
            "0.9.9",
        ),
        (
            "range outside subnet",
            base.clone(),
            edit(&|c| c["ipam"]["ranges"][0][0]["rangeEnd"] = json!("203.0.113.9")),
            7,
            "outside subnet",
        ),
        (
            "IPv6 subnet /0",
            base.clone(),
            edit(&|c| c["ipam"]["ranges"] = json!([[{ "subnet": "::/0" }]])),
            7,
            "::/0 spans the whole address space",
        ),
        (
            "IPv4 subnet /0",
            base.clone(),
            edit(&|c| c["ipam"]["ranges"] = json!([[{ "subnet": "0.0.0.0/0" }]])),
            7,
            "0.0.0.0/0 spans the whole address space",
        ),
        (
            "path-traversing name",
            base.clone(),
            edit(&|c| c["name"] = json!("../../etc")),
            7,
            "network name",
        ),
        (
            "bad mode",
            base.clone(),
            edit(&|c| c["mode"] = json!("l3")),
            7,
            "mode",
        ),
        (
            "mtu above master",
            base.clone(),
            edit(&|c| c["mtu"] = json!(9000)),
            7,
            "exceeds master",
        ),
        (
            "missing master",
            base.clone(),
            edit(&|c| c["master"] = json!("enp9s9")),
            100,
            "enp9s9 not found on node",
        ),
        (
            "missing netns",
            with("CNI_NETNS", "/var/run/netns/does-not-exist"),
            good.to_string(),
            3,
            "does not exist",
        ),
        (
            "exhausted range",
            base.clone(),
            good.to_string(),
            102,
            "no free address",
        ),
    ];
    for (what, env, stdin, code, needle) in cases {
        let r = run_in(&node.ns.name, &plugin_bin(), &env, &stdin);
        assert_eq!(r.err_code(), code, "{what}: {}", r.json);
        assert!(
            r.msg().contains(needle),
            "{what}: message {:?} lacks {needle:?}",
            r.msg()
        );
        assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
        assert_eq!(
            pod.ns.link_names(),
            ["lo", "eth0"],
            "{what}: left a link behind"
        );
        assert_eq!(
            data.claims("ros-net"),
            ["198.51.100.160"],
            "{what}: left a claim behind"
        );
        let eth0 = pod.ns.ip_json(&["link", "show", "eth0"])[0]["flags"].clone();
        assert!(
            eth0.as_array().unwrap().iter().any(|f| f == "MULTICAST"),
            "{what}: eth0 left marked"
        );
    }
    del(&node, &holder, &good).ok();
}

/// The reference macvlan leaves net1 in the pod when its IPAM fails, and the next ADD into
/// that pod fails; ours leaves nothing and the next ADD succeeds.
#[test]
fn failed_ipam_leaves_no_link_unlike_the_reference() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let full = guide_config(
        Some("1.0.0"),
        "lan0",
        &data,
        "198.51.100.160",
        "198.51.100.160",
    );
    let holder = node.pod(60);
    add(&node, &holder, &full).ok();

    let ours = node.pod(61);
    assert_eq!(add(&node, &ours, &full).err_code(), 102);
    assert_eq!(ours.ns.link_names(), ["lo", "eth0"]);

    let mut ref_conf = full.clone();
    ref_conf["type"] = json!("macvlan");
    let theirs = node.pod(62);
    let macvlan = std::path::PathBuf::from(REFERENCE_DIR).join("macvlan");
    let r = run_in(
        &node.ns.name,
        &macvlan,
        &cni_env("ADD", &theirs, "net1", &theirs.ns.path()),
        &ref_conf.to_string(),
    );
    assert_ne!(r.code, 0);
    let leaked = theirs.ns.link_names().len() > 2;

    del(&node, &holder, &full).ok();
    add(&node, &ours, &full).ok();
    del(&node, &ours, &full).ok();
    eprintln!("reference macvlan leaked net1 on IPAM failure: {leaked}");
}

#[test]
fn runtime_ips_resolv_conf_arp_notify_log_file_and_del_with_prev_result() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(70);
    let data = DataDir::create();
    let resolv = data.0.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 198.51.100.53\nsearch ros.example\n").unwrap();
    let logs = DataDir::logs();
    let log = logs.0.join("ros-macvlan.log");
    let mut conf = guide(&data);
    conf["ipam"]["resolvConf"] = json!(resolv);
    conf["logFile"] = json!(log);
    conf["runtimeConfig"] = json!({"ips": ["198.51.100.175/24"]});
    conf["dns"] = json!({"nameservers": ["198.51.100.54"], "domain": "robots.example"});
    let netns = pod.ns.path();
    // The test's resolv.conf lies in a directory the node policy allows for it.
    let policy = NodePolicy::new(Some(json!({"resolvConfDirs": [data.path()]})));
    let policy_file = policy.file();
    let mut env = cni_env("ADD", &pod, "net1", &netns);
    env.push(("CNI_ARGS", "K8S_POD_NAMESPACE=robots;K8S_POD_NAME=listener"));
    env.push(("ROS_MACVLAN_POLICY_FILE", &policy_file));
    let r = run_in(&node.ns.name, &plugin_bin(), &env, &conf.to_string());
    let result = r.ok().clone();
    assert_eq!(
        result["ips"][0]["address"], "198.51.100.175/24",
        "runtimeConfig ips honoured"
    );
    // As the reference macvlan: the result's DNS is the config's `dns`, not resolvConf's.
    assert_eq!(
        result["dns"],
        json!({"nameservers": ["198.51.100.54"], "domain": "robots.example"})
    );
    assert_eq!(
        pod.ns
            .read("/proc/sys/net/ipv4/conf/net1/arp_notify")
            .trim(),
        "1"
    );
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains("ADD pod=robots/listener"), "{line}");
    assert!(
        line.contains("address=198.51.100.175/24") && line.contains(" ok"),
        "{line}"
    );
    assert!(
        r.stderr.is_empty(),
        "with logFile nothing goes to stderr: {}",
        r.stderr
    );

    // A requested address already taken is refused, naming it.
    let other = node.pod(71);
    let r = policy.cni("ADD", &node, &other, &conf);
    assert_eq!(r.err_code(), 7);
    assert!(r.msg().contains("198.51.100.175"), "{}", r.msg());
    assert_eq!(other.ns.link_names(), ["lo", "eth0"]);

    // DEL with prevResult releases the claim it names.
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = result;
    del(&node, &pod, &del_conf).ok();
    assert!(data.claims("ros-net").is_empty());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&format!(
            "DEL pod=-/- container={} if=net1",
            pod.container_id
        )),
        "{log}"
    );
}

/// DEL returns with the link inert (no address, no membership, no route, name freed) and
/// the kernel removes it just after; `waitForLinkRemoval` makes DEL wait for that.
#[test]
fn del_leaves_the_link_inert_at_once_and_removed_shortly_after() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let pod = node.pod(12);
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);

    add(&node, &pod, &conf).ok();
    assert!(joined(&pod.ns, "net1").contains(&"239.255.0.1".parse().unwrap()));
    del(&node, &pod, &conf).ok();
    let names = pod.ns.link_names();
    assert!(!names.contains(&"net1".to_string()), "{names:?}");
    let v4 = pod.ns.ip(&["-4", "addr", "show"]);
    assert!(!v4.contains("198.51.100."), "an address outlives DEL: {v4}");
    let igmp = pod.ns.read("/proc/net/igmp");
    assert!(
        !igmp.contains("0100FFEF"),
        "239.255.0.1 still joined: {igmp}"
    );
    let routes = pod.ns.ip(&["route", "show"]);
    assert!(!routes.contains("224.0.0.0/4"), "{routes}");
    assert!(data.claims("ros-net").is_empty());
    // The runtime may ADD the same attachment again at once.
    add(&node, &pod, &conf).ok();
    del(&node, &pod, &conf).ok();
    assert_eq!(pod.ns.link_names_after_removal(), ["lo", "eth0"]);

    let mut waiting = conf.clone();
    waiting["waitForLinkRemoval"] = json!(true);
    add(&node, &pod, &waiting).ok();
    del(&node, &pod, &waiting).ok();
    assert_eq!(pod.ns.link_names(), ["lo", "eth0"]);
}

/// A request the kernel refuses reaches the operator with the kernel's own words (its
/// extended-ack message), and the failed ADD leaves nothing behind.
#[test]
fn a_kernel_refusal_carries_the_kernels_message() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let mut conf = guide_config(
        Some("1.0.0"),
        "lan0",
        &data,
        "198.51.100.170",
        "198.51.100.171",
    );
    // A gateway outside every subnet of net1: the kernel refuses the route.
    conf["ipam"]["routes"] = json!([{"dst": "203.0.113.0/24", "gw": "203.0.113.1"}]);
    let pod = node.pod(70);
    let reply = add(&node, &pod, &conf);
    reply.err_code();
    assert!(
        reply.msg().contains("Nexthop has invalid gateway"),
        "the kernel's message is missing: {}",
        reply.json
    );
    assert_eq!(pod.ns.link_names(), ["lo", "eth0"]);
    assert!(
        data.claims("ros-net").is_empty(),
        "{:?}",
        data.claims("ros-net")
    );
}

/// IPv6 addresses are settled when ADD returns, as with the reference: usable, not
/// tentative. One another host on the LAN already holds fails duplicate address detection:
/// ADD says which, and leaves nothing behind.
#[test]
fn ipv6_addresses_are_settled_and_a_taken_one_fails() {
    if !require_root() {
        return;
    }
    let lan = Lan::create();
    let node = Node::new(&lan);
    let other_host = Node::new(&lan);
    other_host
        .ns
        .ip(&["addr", "add", "2001:db8:1::100/64", "dev", "lan0", "nodad"]);
    let data = DataDir::create();
    let v6_only = |address: &str| {
        let mut conf = guide_config(
            Some("1.0.0"),
            "lan0",
            &data,
            "198.51.100.180",
            "198.51.100.180",
        );
        conf["ipam"]["ranges"] = json!([[{
            "subnet": "2001:db8:1::/64", "rangeStart": address, "rangeEnd": address
        }]]);
        conf
    };

    let taken = node.pod(80);
    let reply = add(&node, &taken, &v6_only("2001:db8:1::100"));
    reply.err_code();
    assert!(
        reply.msg().contains("2001:db8:1::100")
            && reply.msg().contains("failed duplicate address detection"),
        "{}",
        reply.json
    );
    assert_eq!(taken.ns.link_names(), ["lo", "eth0"]);
    assert!(
        data.claims("ros-net").is_empty(),
        "{:?}",
        data.claims("ros-net")
    );

    let free = node.pod(81);
    let conf = v6_only("2001:db8:1::101");
    add(&node, &free, &conf).ok();
    let shown = free.ns.ip(&["-6", "addr", "show", "dev", "net1"]);
    assert!(shown.contains("2001:db8:1::101/64"), "{shown}");
    assert!(
        !shown.contains("tentative"),
        "ADD returned before DAD ended: {shown}"
    );
    del(&node, &free, &conf).ok();
}
