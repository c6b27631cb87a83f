//! Differential conformance: each config of the table runs through the reference macvlan +
//! host-local (Debian's containernetworking-plugins in /usr/lib/cni) and through ros-macvlan,
//! into twin pods (same layout, same eth0, same CNI_IFNAME and container ID, a fresh store
//! each). What a runtime and a user can see is compared: the exit status, the result or
//! error, and the pod's links (with macvlan details), addresses, routes of every table,
//! per-link sysctls and IGMP memberships after ADD, after CHECK and after each of two DELs.
//!
//! The differences ros-macvlan means to have are listed once, in `DIFFERENCES` (and in
//! docs/differences.md), each applied as a normalisation of the
//! two observations; any other difference fails the suite. One line per config is printed:
//! `cargo test --test conformance -- --nocapture` shows them.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};
use support::*;

/// The interface both plugins create.
const IFNAME: &str = "net1";
/// A MAC the configs ask for (locally administered).
const ASKED_MAC: &str = "02:00:5e:10:00:42";

/// One config of the table and what is done with it.
struct Case {
    name: &'static str,
    /// The network config; `type` is set per plugin, `dataDir` per run.
    conf: Value,
    /// CNI_ARGS, if any.
    args: Option<&'static str>,
    /// CHECK with the ADD's result as prevResult, after ADD.
    check: bool,
    /// Commands run in each pod between ADD and CHECK (`ip` arguments).
    tamper: &'static [&'static [&'static str]],
    /// The pod has a LAN interface of its own, `lanin` (for linkInContainer).
    master_in_pod: bool,
}

impl Case {
    fn new(name: &'static str, conf: Value) -> Case {
        Case {
            name,
            conf,
            args: None,
            check: false,
            tamper: &[],
            master_in_pod: false,
        }
    }
    fn args(mut self, args: &'static str) -> Case {
        self.args = Some(args);
        self
    }
    fn check(mut self) -> Case {
        self.check = true;
        self
    }
    fn tamper(mut self, cmds: &'static [&'static [&'static str]]) -> Case {
        self.tamper = cmds;
        self.check = true;
        self
    }
    fn master_in_pod(mut self) -> Case {
        self.master_in_pod = true;
        self
    }
    fn version(&self) -> Option<&str> {
        self.conf["cniVersion"].as_str()
    }
    /// Whether the config or the runtime asks for net1's MAC: then it is compared as is.
    fn asks_for_mac(&self) -> bool {
        self.conf.get("mac").is_some()
            || self.conf["runtimeConfig"].get("mac").is_some()
            || self.args.is_some_and(|a| a.contains("MAC="))
    }
}

/// The guide's config at `version` (None: no cniVersion key), with `edit` applied.
fn guide_at(version: Option<&str>, edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "name": "ros-net", "type": "", "master": "lan0", "mode": "bridge",
        "isDefaultgateway": true,
        "ipam": { "type": "host-local",
          "ranges": [[{ "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.160",
                        "rangeEnd": "198.51.100.180", "gateway": "198.51.100.1" }]] }
    });
    if let Some(v) = version {
        c["cniVersion"] = json!(v);
    }
    edit(&mut c);
    c
}

fn guide10(edit: impl FnOnce(&mut Value)) -> Value {
    guide_at(Some("1.0.0"), edit)
}

fn cases() -> Vec<Case> {
    let v6_set = json!([{ "subnet": "2001:db8:1::/64", "rangeStart": "2001:db8:1::100",
                          "rangeEnd": "2001:db8:1::1ff" }]);
    let v4_set = json!([{ "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.160",
                          "rangeEnd": "198.51.100.180", "gateway": "198.51.100.1" }]);
    vec![
        // Every version a runtime may send, and none.
        Case::new("guide, cniVersion absent", guide_at(None, |_| {})),
        Case::new("guide, 0.1.0", guide_at(Some("0.1.0"), |_| {})),
        Case::new("guide, 0.2.0", guide_at(Some("0.2.0"), |_| {})),
        Case::new("guide, 0.3.0", guide_at(Some("0.3.0"), |_| {})),
        Case::new("guide, 0.3.1, CHECK refused", guide_at(Some("0.3.1"), |_| {})).check(),
        Case::new("guide, 0.4.0, CHECK", guide_at(Some("0.4.0"), |_| {})).check(),
        Case::new("guide, 1.0.0, CHECK", guide10(|_| {})).check(),
        Case::new("guide, 1.1.0, CHECK", guide_at(Some("1.1.0"), |_| {})).check(),
        // Modes and link settings.
        Case::new("mode absent", guide10(|c| drop(c.as_object_mut().unwrap().remove("mode")))),
        Case::new("mode private", guide10(|c| c["mode"] = json!("private"))).check(),
        Case::new("mode vepa", guide10(|c| c["mode"] = json!("vepa"))),
        Case::new("mode passthru", guide10(|c| c["mode"] = json!("passthru"))).check(),
        Case::new("mtu 1400", guide10(|c| c["mtu"] = json!(1400))).check(),
        Case::new("mac in the config", guide10(|c| c["mac"] = json!(ASKED_MAC))).check(),
        Case::new(
            "mac in runtimeConfig",
            guide10(|c| c["runtimeConfig"] = json!({ "mac": ASKED_MAC })),
        )
        .check(),
        Case::new("mac in CNI_ARGS", guide10(|_| {}))
            .args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=talker;MAC=02:00:5e:10:00:42"),
        Case::new("CNI_ARGS with unknown keys, no IgnoreUnknown", guide10(|_| {}))
            .args("K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=talker"),
        // Ranges.
        Case::new(
            "range set of two ranges",
            guide10(|c| {
                c["ipam"]["ranges"] = json!([[
                    { "subnet": "198.51.100.0/24", "rangeStart": "198.51.100.10", "rangeEnd": "198.51.100.10" },
                    { "subnet": "203.0.113.0/24", "rangeStart": "203.0.113.200", "rangeEnd": "203.0.113.210" }
                ]])
            }),
        ),
        Case::new(
            "range defaults (subnet only)",
            guide10(|c| c["ipam"]["ranges"] = json!([[{ "subnet": "198.51.100.0/25" }]])),
        )
        .check(),
        Case::new(
            "two IPv4 range sets",
            guide10(|c| {
                c["ipam"]["ranges"] = json!([v4_set.clone(),
                    [{ "subnet": "203.0.113.0/24", "rangeStart": "203.0.113.100", "gateway": "203.0.113.254" }]])
            }),
        )
        .check(),
        Case::new(
            "legacy subnet form",
            guide10(|c| {
                c["ipam"] = json!({ "type": "host-local", "subnet": "198.51.100.0/24",
                    "rangeStart": "198.51.100.160", "rangeEnd": "198.51.100.180", "gateway": "198.51.100.1" })
            }),
        ),
        Case::new(
            "legacy subnet form, 0.2.0, routes",
            guide_at(Some("0.2.0"), |c| {
                c["ipam"] = json!({ "type": "host-local", "subnet": "198.51.100.0/24",
                    "routes": [{ "dst": "203.0.113.0/25" }, { "dst": "203.0.113.128/25", "gw": "198.51.100.9" }] })
            }),
        ),
        // Routes.
        Case::new(
            "route with gw",
            guide10(|c| c["ipam"]["routes"] = json!([{ "dst": "203.0.113.128/25", "gw": "198.51.100.1" }])),
        )
        .check(),
        Case::new(
            "route without gw",
            guide10(|c| c["ipam"]["routes"] = json!([{ "dst": "203.0.113.128/25" }])),
        )
        .check(),
        Case::new(
            "default route with gw",
            guide10(|c| c["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0", "gw": "198.51.100.1" }])),
        )
        .check(),
        Case::new(
            "default route without gw, 0.4.0",
            guide_at(Some("0.4.0"), |c| c["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0" }])),
        )
        .check(),
        Case::new(
            "routes to the LAN's own subnet and a host",
            guide10(|c| {
                c["ipam"]["routes"] = json!([{ "dst": "198.51.100.0/25", "gw": "198.51.100.1" },
                                             { "dst": "203.0.113.7/32" }])
            }),
        ),
        // Dual stack and IPv6.
        Case::new(
            "dual stack",
            guide10(|c| c["ipam"]["ranges"] = json!([v4_set.clone(), v6_set.clone()])),
        )
        .check(),
        Case::new(
            "dual stack with routes and defaults",
            guide_at(Some("1.1.0"), |c| {
                c["ipam"]["ranges"] = json!([v4_set.clone(), v6_set.clone()]);
                c["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0", "gw": "2001:db8:1::1" },
                                             { "dst": "2001:db8:9::/48" }, { "dst": "203.0.113.128/25" }]);
            }),
        )
        .check(),
        Case::new(
            "IPv6 only, 0.3.1",
            guide_at(Some("0.3.1"), |c| c["ipam"]["ranges"] = json!([v6_set.clone()])),
        ),
        // DNS, runtime addresses, linkInContainer.
        Case::new("resolvConf and dns", guide10(|c| {
            c["ipam"]["resolvConf"] = json!("@RESOLV@");
            c["dns"] = json!({ "nameservers": ["198.51.100.53"], "search": ["example.org"] });
        })),
        Case::new(
            "runtimeConfig ips",
            guide10(|c| c["runtimeConfig"] = json!({ "ips": ["198.51.100.170/24"] })),
        )
        .check(),
        Case::new(
            "runtimeConfig ips, dual stack",
            guide10(|c| {
                c["ipam"]["ranges"] = json!([v4_set.clone(), v6_set.clone()]);
                c["runtimeConfig"] = json!({ "ips": ["198.51.100.175/24", "2001:db8:1::1ab/64"] });
            }),
        ),
        Case::new("linkInContainer false", guide10(|c| c["linkInContainer"] = json!(false))),
        Case::new(
            "linkInContainer true",
            guide10(|c| {
                c["linkInContainer"] = json!(true);
                c["master"] = json!("lanin");
            }),
        )
        .master_in_pod(),
        Case::new("no ipam", guide10(|c| drop(c.as_object_mut().unwrap().remove("ipam")))),
        // A CHECK of a pod changed after ADD.
        Case::new("CHECK after eth0 took multicast back", guide10(|_| {}))
            .tamper(&[&["link", "set", "eth0", "multicast", "on"]]),
        Case::new("CHECK after net1's address went", guide10(|_| {}))
            .tamper(&[&["addr", "flush", "dev", "net1"]]),
        // Configs both must refuse.
        Case::new("refused: unknown mode", guide10(|c| c["mode"] = json!("l3"))),
        Case::new("refused: mtu above the master's", guide10(|c| c["mtu"] = json!(9000))),
        Case::new("refused: missing master", guide10(|c| c["master"] = json!("enp9s9"))),
        Case::new(
            "refused: no master and no default route",
            guide10(|c| drop(c.as_object_mut().unwrap().remove("master"))),
        ),
        Case::new("refused: unknown cniVersion", guide_at(Some("0.9.9"), |_| {})),
        Case::new(
            "refused: range outside its subnet",
            guide10(|c| c["ipam"]["ranges"][0][0]["rangeEnd"] = json!("203.0.113.9")),
        ),
        Case::new(
            "refused: runtimeConfig ip outside the ranges",
            guide10(|c| c["runtimeConfig"] = json!({ "ips": ["203.0.113.77/24"] })),
        ),
        Case::new("refused: ipam without type", guide10(|c| c["ipam"] = json!({ "subnet": "198.51.100.0/24" }))),
        Case::new("refused: bad mac", guide10(|c| c["mac"] = json!("02:00:5e:zz:00:42"))),
    ]
}

/// Which plugin a run uses.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Reference,
    Ours,
}

/// What the suite needs for every run: one LAN and node (with `lan0`, and `lanin` for the
/// reference's side of linkInContainer), the node agent, a resolv.conf.
struct Bench {
    node: Node,
    lan: Lan,
    agent: TestAgent,
    files: DataDir,
    /// Ours runs under a node policy that allows what the reference does unasked: passthru
    /// (lan0 carries nothing of the node's here) and the suite's resolv.conf directory
    /// (docs/security.md).
    policy: NodePolicy,
}

impl Bench {
    fn new() -> Bench {
        let lan = Lan::create();
        let node = Node::new(&lan);
        node.plug(&lan, "lanin");
        let files = DataDir::create();
        std::fs::write(
            files.0.join("resolv.conf"),
            "nameserver 198.51.100.53\nsearch example.org lan.example\noptions ndots:2\n",
        )
        .unwrap();
        let policy = NodePolicy::new(Some(json!({
            "modes": ["bridge", "private", "vepa", "passthru"],
            "resolvConfDirs": [files.path()],
        })));
        Bench {
            node,
            lan,
            agent: start_agent(),
            files,
            policy,
        }
    }

    /// The case's input as `side` gets it, and the differences that changed it.
    fn input(&self, case: &Case, side: Side, data: &DataDir) -> (Input, Vec<&'static str>) {
        let mut c = case.conf.clone();
        if c["ipam"].get("type").is_some() {
            c["ipam"]["dataDir"] = json!(data.path());
        }
        if c["ipam"]["resolvConf"] == "@RESOLV@" {
            c["ipam"]["resolvConf"] = json!(self.files.0.join("resolv.conf"));
        }
        let mut input = Input {
            conf: c,
            args: case.args.map(str::to_owned),
        };
        let mut applied = Vec::new();
        match side {
            Side::Reference => {
                input.conf["type"] = json!("macvlan");
                for d in DIFFERENCES {
                    if (d.reference_input)(case, &mut input) {
                        applied.push(d.name);
                    }
                }
            }
            // With a node agent of the suite's own, so the membership is really held and
            // compared (a listed difference) rather than only attempted.
            Side::Ours => {
                input.conf["type"] = json!("ros-macvlan");
                input.conf = with_agent(input.conf, &self.agent);
            }
        }
        (input, applied)
    }

    /// One plugin's whole run of a case in a fresh pod: ADD, (tamper, CHECK,) DEL, DEL.
    fn run(&self, case: &Case, index: usize, side: Side) -> (Value, Vec<&'static str>) {
        let pod = self.node.pod(9);
        if case.master_in_pod {
            // A LAN interface in the pod: a veth from the pod to the switch.
            let port = unique("swp");
            self.lan.switch.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "lanin",
                "netns",
                &pod.ns.name,
            ]);
            self.lan
                .switch
                .ip(&["link", "set", &port, "master", "br0", "up"]);
            pod.ns.ip(&["link", "set", "lanin", "up"]);
        }
        let data = DataDir::create();
        let (input, applied) = self.input(case, side, &data);
        let bin = match side {
            Side::Reference => PathBuf::from(REFERENCE_DIR).join("macvlan"),
            Side::Ours => plugin_bin(),
        };
        let netns = pod.ns.path();
        let container = format!("conformance{index}");
        let policy_file = self.policy.file();
        let call = |verb: &str, conf: &Value| -> Reply {
            let mut env = vec![
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", container.as_str()),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", IFNAME),
                ("CNI_PATH", REFERENCE_DIR),
            ];
            if let Some(a) = &input.args {
                env.push(("CNI_ARGS", a));
            }
            if side == Side::Ours {
                env.push(("ROS_MACVLAN_POLICY_FILE", &policy_file));
            }
            run_in(&self.node.ns.name, &bin, &env, &conf.to_string())
        };
        let conf = &input.conf;
        resume_like_a_used_store(&data, conf);
        let mut out = serde_json::Map::new();
        let added = call("ADD", conf);
        out.insert("add".into(), reply_json(&added));
        out.insert("after add".into(), snapshot(&pod.ns));
        if case.check {
            for cmd in case.tamper {
                pod.ns.ip(cmd);
            }
            let mut c = conf.clone();
            c["prevResult"] = added.json.clone();
            out.insert("check".into(), reply_json(&call("CHECK", &c)));
        }
        out.insert("del".into(), reply_json(&call("DEL", conf)));
        if side == Side::Ours {
            // DEL leaves the removal of the inert link to a detached child.
            pod.ns.link_names_after_removal();
        }
        out.insert("after del".into(), snapshot(&pod.ns));
        out.insert("del again".into(), reply_json(&call("DEL", conf)));
        out.insert("after del again".into(), snapshot(&pod.ns));
        let mut run = Value::Object(out);
        normalise(&mut run, &netns, case.asks_for_mac());
        (run, applied)
    }
}

/// The exit status and what the plugin printed: a result as is, an error by its code.
fn reply_json(r: &Reply) -> Value {
    if r.code == 0 {
        json!({ "exit": 0, "result": r.json })
    } else {
        json!({ "exit": r.code, "error code": r.json["code"], "has message": r.json["msg"].as_str().is_some_and(|m| !m.is_empty()) })
    }
}

/// The pod's state as `ip -j` and /proc show it: links by name; addresses by link and
/// routes (every table, both families) as sets of `key=value` lines, so that a difference
/// shows as what one side has and the other lacks.
fn snapshot(ns: &Ns) -> Value {
    let mut links = serde_json::Map::new();
    for l in ns.ip_json(&["-d", "link", "show"]).as_array().unwrap() {
        links.insert(l["ifname"].as_str().unwrap().to_owned(), l.clone());
    }
    let names: Vec<String> = links.keys().cloned().collect();
    let mut addresses = serde_json::Map::new();
    for l in ns.ip_json(&["addr", "show"]).as_array().unwrap() {
        let set = l["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(line)
            .collect();
        addresses.insert(l["ifname"].as_str().unwrap().to_owned(), lines(set));
    }
    let mut routes: Vec<String> = Vec::new();
    for family in ["-4", "-6"] {
        let table = ns.ip_json(&[family, "route", "show", "table", "all"]);
        routes.extend(table.as_array().unwrap().iter().map(line));
    }
    let igmp: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| {
            let groups = ros_macvlan::plugin::multicast::joined_groups(&ns.handle(), n).unwrap();
            (
                n.clone(),
                lines(groups.iter().map(ToString::to_string).collect()),
            )
        })
        .collect();
    json!({
        "links": links,
        "addresses": addresses,
        "routes": lines(routes),
        "sysctls": sysctls(ns, &names),
        "igmp": igmp,
    })
}

/// An object of `ip -j` as one `key=value ...` line, keys in order.
fn line(v: &Value) -> String {
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| *k != "flags" || v.as_array().is_some_and(|a| !a.is_empty()))
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A set of lines, sorted.
fn lines(mut set: Vec<String>) -> Value {
    set.sort();
    json!(set)
}

/// Every readable per-link IPv4 and IPv6 setting: `ipv4/net1/rp_filter` -> "2".
fn sysctls(ns: &Ns, links: &[String]) -> BTreeMap<String, String> {
    let links = links.to_vec();
    ns.handle()
        .run(move || {
            let mut all = BTreeMap::new();
            for link in &links {
                for family in ["ipv4", "ipv6"] {
                    let dir = format!("/proc/sys/net/{family}/conf/{link}");
                    let Ok(entries) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        // Unreadable ones (stable_secret unset) say nothing.
                        if let Ok(v) = std::fs::read_to_string(e.path()) {
                            all.insert(format!("{family}/{link}/{name}"), v.trim().to_owned());
                        }
                    }
                }
            }
            all
        })
        .unwrap()
}

/// What differs between any two runs by chance, not by plugin: the pod's netns path, and
/// the MACs the kernel picks (with the IPv6 link-local addresses made from them). A MAC the
/// case asks for is kept, so it is compared.
fn normalise(run: &mut Value, netns: &str, keep_asked_mac: bool) {
    let mut macs: BTreeMap<String, String> = BTreeMap::new();
    for snap in ["after add", "after del"] {
        for (name, l) in run[snap]["links"].as_object().cloned().unwrap_or_default() {
            let Some(mac) = l["address"].as_str() else {
                continue;
            };
            let asked = keep_asked_mac && mac == ASKED_MAC;
            if name != "lo" && !asked {
                macs.insert(mac.to_owned(), format!("<mac of {name}>"));
            }
        }
    }
    fn walk(v: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
        match v {
            Value::String(s) => {
                if let Some(n) = f(s) {
                    *s = n;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            Value::Object(o) => o.values_mut().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    for snap in ["after add", "after del", "after del again"] {
        // The peers of the scene's veths (eth0, lanin) are new in each scene.
        for veth in ["eth0", "lanin"] {
            if let Some(link) = run[snap]["links"][veth].as_object_mut() {
                link.remove("link_index");
            }
        }
        // eth0 is as old as the scene: whether its link-local address has finished duplicate
        // address detection (and got its local route) depends on how long the plugin took.
        for line in run[snap]["addresses"]["eth0"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            *line = json!(line.as_str().unwrap().replace(" tentative=true", ""));
        }
        remove_lines(&mut run[snap]["routes"], |l| {
            l.contains("dev=eth0") && l.contains("fe80::") && l.contains("table=local")
        });
    }
    walk(run, &|s| {
        if s == netns {
            Some("<netns>".into())
        } else if let Some(m) = macs.get(s) {
            Some(m.clone())
        } else if s.contains("fe80::") && !s.contains("fe80::/64") {
            // A line naming a link-local address made from a MAC.
            let words = s.split(' ').map(|w| match w.split_once('=') {
                Some((k, v)) if v.starts_with("fe80::") => format!("{k}=<link-local>"),
                _ => w.to_owned(),
            });
            Some(words.collect::<Vec<_>>().join(" "))
        } else {
            None
        }
    });
}

/// What a plugin is run with: the config and CNI_ARGS.
/// Intended difference "first pick of a fresh store": in a store that never allocated,
/// ours starts at a node-derived address (so nodes sharing a range do not walk it in
/// lockstep), the reference at rangeStart. Both stores are therefore given what a used
/// store has, a last_reserved_ip for each range set (one outside every range, from which
/// both plugins start at rangeStart), so the rest of the allocation is compared as it is.
fn resume_like_a_used_store(data: &DataDir, conf: &Value) {
    let Some(network) = conf["name"].as_str() else {
        return;
    };
    if conf["ipam"]["type"] != "host-local" {
        return;
    }
    let store = data.0.join(network);
    std::fs::create_dir_all(&store).unwrap();
    for set in 0..4 {
        std::fs::write(store.join(format!("last_reserved_ip.{set}")), "0.0.0.0").unwrap();
    }
}

struct Input {
    conf: Value,
    args: Option<String>,
}

/// A difference ros-macvlan means to have, and how it is taken out of the comparison: by
/// running the reference with a changed input (where it predates a feature or refuses
/// what ours accepts) and/or by normalising the two observations (ours, the reference's).
/// Each says whether it applied, for the line printed per config.
struct Difference {
    name: &'static str,
    reference_input: fn(&Case, &mut Input) -> bool,
    normalise: fn(&Case, &mut Value, &mut Value) -> bool,
}

fn no_input_change(_: &Case, _: &mut Input) -> bool {
    false
}

fn no_normalisation(_: &Case, _: &mut Value, _: &mut Value) -> bool {
    false
}

/// The intended differences, each with its reason in docs/differences.md (same names, same
/// order). Anything else the suite finds fails it.
const DIFFERENCES: &[Difference] = &[
    // Multicast leaves through net1, not the default route's eth0.
    Difference {
        name: "multicast route",
        reference_input: no_input_change,
        normalise: |_, ours, _| {
            remove_lines(&mut ours["after add"]["routes"], |l| {
                l == "dev=net1 dst=224.0.0.0/4 protocol=static scope=link"
            })
        },
    },
    // The node agent holds 239.255.0.1 on net1 for the attachment's life.
    Difference {
        name: "group membership",
        reference_input: no_input_change,
        normalise: |_, ours, _| {
            remove_lines(&mut ours["after add"]["igmp"][IFNAME], |l| {
                l == "239.255.0.1"
            })
        },
    },
    // The pod's other interfaces lose MULTICAST (so DDS picks net1), noted in their alias.
    Difference {
        name: "eth0 multicast flag",
        reference_input: no_input_change,
        normalise: |_, ours, _| {
            // eth0 only: a mark on any other interface (a master in the pod) is not intended.
            let mut found = false;
            if let Some(link) = ours["after add"]["links"].get_mut("eth0") {
                let alias = link["ifalias"].as_str().unwrap_or_default();
                let previous = alias
                    .strip_prefix("ros-macvlan:multicast-off-for:")
                    .and_then(|a| a.split_once(';'))
                    .map(|(_, p)| p.to_owned());
                if let Some(previous) = previous {
                    let o = link.as_object_mut().unwrap();
                    if previous.is_empty() {
                        o.remove("ifalias");
                    } else {
                        o.insert("ifalias".into(), json!(previous));
                    }
                    o["flags"].as_array_mut().unwrap().push(json!("MULTICAST"));
                    found = true;
                }
            }
            found
        },
    },
    // Loose rp_filter on net1: a strict node default drops discovery from peers.
    Difference {
        name: "rp_filter",
        reference_input: no_input_change,
        normalise: |_, ours, theirs| {
            let key = format!("ipv4/{IFNAME}/rp_filter");
            let differs = ours["after add"]["sysctls"][&key] == "2"
                && theirs["after add"]["sysctls"][&key] != "2";
            if differs {
                ours["after add"]["sysctls"][&key] = theirs["after add"]["sysctls"][&key].clone();
            }
            differs
        },
    },
    // arp_notify on net1 also without IPAM (the reference sets it only with IPAM).
    Difference {
        name: "arp_notify without ipam",
        reference_input: no_input_change,
        normalise: |case, ours, theirs| {
            let key = format!("ipv4/{IFNAME}/arp_notify");
            let differs = case.conf.get("ipam").is_none()
                && ours["after add"]["sysctls"][&key] == "1"
                && theirs["after add"]["sysctls"][&key] == "0";
            if differs {
                ours["after add"]["sysctls"][&key] = json!("0");
            }
            differs
        },
    },
    // net1's txqlen is the kernel's default, unused by a macvlan (noqueue).
    Difference {
        name: "txqlen",
        reference_input: no_input_change,
        normalise: |_, ours, theirs| {
            let differs = theirs["after add"]["links"][IFNAME].get("txqlen").is_none()
                && ours["after add"]["links"][IFNAME].get("txqlen").is_some();
            if differs {
                let link = ours["after add"]["links"][IFNAME].as_object_mut().unwrap();
                link.remove("txqlen");
            }
            differs
        },
    },
    // Refusals carry the code of their kind where the reference says 999 (internal).
    Difference {
        name: "error codes",
        reference_input: no_input_change,
        normalise: |_, ours, theirs| {
            let mut found = false;
            for step in ["add", "check", "del", "del again"] {
                let (o, t) = (&mut ours[step], &theirs[step]);
                if t["error code"] == 999 && o["exit"] == 1 && o["error code"] != 999 {
                    o["error code"] = json!(999);
                    found = true;
                }
            }
            found
        },
    },
    // A failed ADD leaves no net1 (the reference leaves it when its IPAM fails, and when the
    // IPAM config is invalid its DEL leaves it too).
    Difference {
        name: "rollback",
        reference_input: no_input_change,
        normalise: |_, ours, theirs| {
            if ours["add"]["exit"] == 0 || theirs["add"]["exit"] == 0 {
                return false;
            }
            let mut leaked = false;
            for snap in ["after add", "after del", "after del again"] {
                if ours[snap]["links"].get(IFNAME).is_none()
                    && theirs[snap]["links"].get(IFNAME).is_some()
                {
                    forget_link(&mut theirs[snap], IFNAME);
                    leaked = true;
                }
            }
            leaked
        },
    },
    // CHECK also checks the ROS-aware parts: here, eth0 offering multicast again.
    Difference {
        name: "fuller CHECK",
        reference_input: no_input_change,
        normalise: |case, ours, theirs| {
            let found = !case.tamper.is_empty()
                && theirs["check"]["exit"] == 0
                && ours["check"]["error code"] == 104;
            if found {
                ours["check"] = theirs["check"].clone();
            }
            found
        },
    },
    // CHECK of a route without gw passes (the reference's CHECK looks for the route without
    // the gateway its own ADD installed it through, and fails).
    Difference {
        name: "CHECK of routes without gw",
        reference_input: no_input_change,
        normalise: |case, ours, theirs| {
            let gwless = case.conf["ipam"]["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r.get("gw").is_none()));
            let found =
                gwless && ours["check"]["exit"] == 0 && theirs["check"]["error code"] == 999;
            if found {
                theirs["check"] = ours["check"].clone();
            }
            found
        },
    },
    // DEL with nothing to delete succeeds even when the master is missing or smaller than
    // the MTU (the reference re-validates them on DEL and fails, and the runtime retries).
    Difference {
        name: "DEL of a refused config",
        reference_input: no_input_change,
        normalise: |_, ours, theirs| {
            let mut found = false;
            for step in ["del", "del again"] {
                if ours["add"]["exit"] != 0
                    && ours[step]["exit"] == 0
                    && theirs[step]["error code"] == 999
                {
                    theirs[step] = ours[step].clone();
                    found = true;
                }
            }
            found
        },
    },
    // CNI_ARGS keys it does not know are ignored without IgnoreUnknown=1 too.
    Difference {
        name: "unknown CNI_ARGS",
        reference_input: |_, input| {
            let strict = input
                .args
                .as_deref()
                .is_some_and(|a| !a.contains("IgnoreUnknown=1"));
            if strict {
                input.args = input.args.as_ref().map(|a| format!("IgnoreUnknown=1;{a}"));
            }
            strict
        },
        normalise: no_normalisation,
    },
    // An ipam section without "type" is refused (the reference attaches without address).
    Difference {
        name: "ipam without type",
        reference_input: no_input_change,
        normalise: |case, ours, theirs| {
            let found = case.conf["ipam"].is_object()
                && case.conf["ipam"].get("type").is_none()
                && ours["add"]["error code"] == 7
                && theirs["add"]["exit"] == 0;
            if found {
                *theirs = ours.clone();
            }
            found
        },
    },
    // cniVersion 1.1.0: Debian's reference (containernetworking-plugins 1.1.1) speaks up to
    // 1.0.0; it runs the case at 1.0.0, and ours' result loses what only 1.1.0 has.
    Difference {
        name: "cniVersion 1.1.0",
        reference_input: |_, input| {
            let newer = input.conf["cniVersion"] == "1.1.0";
            if newer {
                input.conf["cniVersion"] = json!("1.0.0");
            }
            newer
        },
        normalise: |case, ours, _| {
            if case.version() != Some("1.1.0") || ours["add"]["exit"] != 0 {
                return false;
            }
            let result = &mut ours["add"]["result"];
            result["cniVersion"] = json!("1.0.0");
            for i in result["interfaces"].as_array_mut().into_iter().flatten() {
                i.as_object_mut().unwrap().remove("mtu");
            }
            true
        },
    },
    // linkInContainer: Debian's reference predates it (plugins 1.3.0 added it) and takes the
    // node's interface of the same name; net1's master is then elsewhere.
    Difference {
        name: "linkInContainer",
        reference_input: no_input_change,
        normalise: |case, ours, theirs| {
            if case.conf["linkInContainer"] != true {
                return false;
            }
            for run in [ours, theirs] {
                if let Some(net1) = run["after add"]["links"][IFNAME].as_object_mut() {
                    for key in ["link", "link_index", "link_netnsid"] {
                        net1.remove(key);
                    }
                }
                // A macvlan in bridge mode makes its master promiscuous.
                if let Some(master) = run["after add"]["links"]["lanin"].as_object_mut() {
                    master.remove("promiscuity");
                }
            }
            true
        },
    },
];

/// Removes the lines of a set that `unwanted` picks; says whether there were any.
fn remove_lines(set: &mut Value, unwanted: impl Fn(&str) -> bool) -> bool {
    let Some(a) = set.as_array_mut() else {
        return false;
    };
    let before = a.len();
    a.retain(|l| !unwanted(l.as_str().unwrap_or_default()));
    a.len() != before
}

/// Takes every trace of link `name` out of a snapshot.
fn forget_link(snap: &mut Value, name: &str) {
    for part in ["links", "addresses", "igmp"] {
        snap[part].as_object_mut().unwrap().remove(name);
    }
    snap["sysctls"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k.split('/').nth(1) != Some(name));
    remove_lines(&mut snap["routes"], |l| {
        l.split(' ').any(|w| w == format!("dev={name}"))
    });
}

/// Every place two observations differ, as `path: ours <> reference`.
fn differences(path: &str, ours: &Value, theirs: &Value, out: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                differences(
                    &format!("{path}/{k}"),
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.iter().chain(b).all(Value::is_string) => {
            let only = |x: &Vec<Value>, y: &Vec<Value>| -> Vec<String> {
                x.iter()
                    .filter(|v| !y.contains(v))
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            };
            let (ours_only, theirs_only) = (only(a, b), only(b, a));
            if !ours_only.is_empty() || !theirs_only.is_empty() {
                out.push(format!(
                    "{path}: ours only {ours_only:?}, reference only {theirs_only:?}"
                ));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if ours == theirs => {}
        _ => out.push(format!("{path}: ours {ours} <> reference {theirs}")),
    }
}

#[test]
fn same_config_same_pod_as_the_reference() {
    if !require_root() {
        return;
    }
    let bench = Bench::new();
    let table = cases();
    assert!(table.len() >= 30, "the table has {} configs", table.len());
    let mut failures = Vec::new();
    for (i, case) in table.iter().enumerate() {
        let (mut theirs, mut intended) = bench.run(case, i, Side::Reference);
        let (mut ours, _) = bench.run(case, i, Side::Ours);
        for d in DIFFERENCES {
            if (d.normalise)(case, &mut ours, &mut theirs) && !intended.contains(&d.name) {
                intended.push(d.name);
            }
        }
        let also = if intended.is_empty() {
            String::new()
        } else {
            format!(" (intended: {})", intended.join(", "))
        };
        let mut found = Vec::new();
        differences("", &ours, &theirs, &mut found);
        if found.is_empty() {
            println!("conformance: {}: same{also}", case.name);
        } else {
            println!(
                "conformance: {}: differs: {}{also}",
                case.name,
                found.join("; ")
            );
            failures.push(case.name);
        }
    }
    assert!(
        failures.is_empty(),
        "differences not on the list: {failures:?}"
    );
}
