//! rmw_zenoh with no configuration in the pods (issue 24): a network with `"zenoh": true`
//! gives every pod a Zenoh router at its own localhost:7447, relayed by the node agent to a
//! router of the node's given to that pod alone; a node's routers meet through its hub
//! router, and the hubs of the nodes over the LAN (as conf/zenoh-router-daemonset.yaml runs
//! them). Sessions with rmw_zenoh's defaults (connect tcp/localhost:7447, listen
//! tcp/localhost:0, scouting off) in three pods of one node and in pods on two nodes
//! exchange samples, also after the agent restarts; DEL leaves nothing listening and
//! nothing held; without the opt-in nothing listens on 7447; a pod whose 7447 is taken
//! keeps it; a node whose routers all serve pods refuses the next ADD (code 11) and that
//! ADD leaves nothing.

mod support;

use ros_macvlan::agent::client::AgentClient;
use ros_macvlan::agent::records::{RecordDir, RelayRecord};
use serde_json::{json, Value};
use support::*;

/// How long a subscriber waits for its samples; publishers and routers outlive it.
const SUB_SECONDS: &str = "14";
const PUB_SECONDS: &str = "12";
const SAMPLES: &str = "10";

/// The hub's ZENOH_CONFIG_OVERRIDE on rmw_zenohd's defaults, as the DaemonSet gives it: it
/// listens only on the node's loopback (for the pods' routers) and on `$address`, the
/// node's address on the LAN (for the other nodes' hubs), never on every address of the
/// node; the hubs of the nodes find each other by multicast scouting on the LAN and connect.
const HUB_OVERRIDE: &str = r#"listen/endpoints=["tcp/127.0.0.1:7447","tcp/$address:7447"];scouting/multicast/enabled=true;scouting/multicast/autoconnect={router:["router"],peer:["router","peer"]}"#;

/// Node `i`'s address on the LAN, where its hub listens for the other nodes' hubs.
fn hub_address(i: usize) -> String {
    format!("198.51.100.{}", 240 + i)
}

/// `HUB_OVERRIDE` for the hub of a node at `address` on the LAN.
fn hub_override(address: &str) -> String {
    HUB_OVERRIDE.replace("$address", address)
}
/// The first port of the pods' routers (the agent's --zenoh-routers), as in the DaemonSet.
const FIRST_POD_ROUTER: u16 = 7448;
/// Routers outlive every exchange of a scene; the scene stops them.
const ROUTER_SECONDS: &str = "50";

/// A pod's router's ZENOH_CONFIG_OVERRIDE on rmw_zenohd's defaults, as the DaemonSet gives
/// it: the node's loopback only, on its own port, connected to the node's hub.
fn pod_router_override(port: u16) -> String {
    format!(r#"listen/endpoints=["tcp/127.0.0.1:{port}"];connect/endpoints=["tcp/127.0.0.1:7447"]"#)
}

fn judges() -> Option<PyJudges> {
    if !require_root() {
        return None;
    }
    PyJudges::find()
}

/// A cluster whose network opts in (`"zenoh": true`), each node's agent running in the
/// node's namespace (as the DaemonSet's, host network) with `routers` routers for pods
/// (--zenoh-routers 127.0.0.1:7448-...).
fn zenoh_cluster(pods_per_node: &[u8], routers: u16) -> Cluster {
    let pool = format!(
        "127.0.0.1:{FIRST_POD_ROUTER}-{}",
        FIRST_POD_ROUTER + routers - 1
    );
    Cluster::with(
        Plugin::RosMacvlan,
        pods_per_node,
        |node| TestAgent::start_in(Some(&node.ns.name), &["--zenoh-routers", &pool]),
        |conf| conf["zenoh"] = json!(true),
    )
}

/// The node's routers: a hub and `routers` routers for pods, rmw_zenohd's defaults with
/// the DaemonSet's overrides, on every node; each node gets an address on the LAN for its
/// hub (`hub_address`).
fn routers(j: &PyJudges, scene: &Cluster, routers: u16) -> Vec<(String, Spawned)> {
    let mut spawned = Vec::new();
    for (i, n) in scene.nodes.iter().enumerate() {
        let addr = format!("{}/24", hub_address(i));
        n.node.ns.ip(&["addr", "add", &addr, "dev", "lan0"]);
        spawned.push((
            format!("hub on node {i}"),
            j.rmw_router(&n.node.ns, ROUTER_SECONDS, &hub_override(&hub_address(i))),
        ));
        for port in (FIRST_POD_ROUTER..).take(routers.into()) {
            spawned.push((
                format!("router {port} on node {i}"),
                j.rmw_router(&n.node.ns, ROUTER_SECONDS, &pod_router_override(port)),
            ));
        }
    }
    for n in &scene.nodes {
        for port in (7447..).take(usize::from(routers) + 1) {
            wait_listening(&n.node.ns, port);
        }
    }
    spawned
}

/// rmw_zenoh's session defaults, nothing else: a publisher in pod 0, a subscriber in every
/// other pod. Whether each subscriber got SAMPLES of the publisher, and the logs.
fn exchange(j: &PyJudges, scene: &Cluster, tag: &str) -> (Vec<bool>, String) {
    let session = ["--base", "rmw-session"];
    let subs: Vec<Spawned> = (1..scene.pods.len())
        .map(|i| {
            let mut args = vec!["sub", "--expect", tag, "--samples", SAMPLES];
            args.extend(["--seconds", SUB_SECONDS]);
            args.extend(session);
            j.start(&scene.pod(i).ns, "zenoh_peer.py", &args)
        })
        .collect();
    let mut args = vec!["pub", tag, "--seconds", PUB_SECONDS];
    args.extend(session);
    let publisher = j.start(&scene.pod(0).ns, "zenoh_peer.py", &args);
    let mut log = String::new();
    let mut oks = Vec::new();
    for (i, sub) in subs.into_iter().enumerate() {
        let (ok, out) = sub.wait();
        oks.push(ok);
        log += &format!("--- subscriber in pod {} (ok: {ok}):\n{out}", i + 1);
    }
    publisher.terminate();
    log += &format!("--- publisher in pod 0:\n{}", publisher.wait().1);
    (oks, log)
}

/// Every relay the agents of `scene` hold, and every record they keep.
fn relays_held(scene: &Cluster) -> (usize, usize) {
    let held: usize = routers_given(scene).iter().map(Vec::len).sum();
    let kept = scene.nodes.iter().fold(0, |kept, n| {
        let records: RecordDir<RelayRecord> = RecordDir::kept_beside(&n.agent.borrow().socket());
        kept + records.list().unwrap().len()
    });
    (held, kept)
}

/// The router each relay of each node's agent was given.
fn routers_given(scene: &Cluster) -> Vec<Vec<Option<std::net::SocketAddr>>> {
    scene
        .nodes
        .iter()
        .map(|n| {
            let client = AgentClient::new(&n.agent.borrow().socket());
            let held = client.relays().unwrap();
            held.iter().map(|r| r.router).collect()
        })
        .collect()
}

/// Every relay of a node has a router of the pool, none another relay's.
fn assert_a_router_each(scene: &Cluster) {
    for given in routers_given(scene) {
        let distinct: std::collections::HashSet<_> = given.iter().collect();
        assert_eq!(distinct.len(), given.len(), "{given:?}");
        assert!(given.iter().all(|r| r.is_some()), "{given:?}");
    }
}

fn assert_nothing_listens(scene: &Cluster) {
    for (_, pod) in &scene.pods {
        let l = tcp_listeners(&pod.ns, 7447);
        assert!(
            l.trim().is_empty(),
            "{} still listens on 7447: {l}",
            pod.ns.name
        );
    }
}

fn agent_logs(scene: &Cluster) -> String {
    scene
        .nodes
        .iter()
        .map(|n| n.agent.borrow().log())
        .collect::<Vec<_>>()
        .join("--- next agent\n")
}

/// Runs the exchange in `pods_per_node` (a publisher in the first pod), then again after
/// every agent was killed and restarted (the relays re-opened from their records), then
/// DELs: nothing listens in the pods, the agents hold and keep nothing.
fn relay_scene(pods_per_node: &[u8]) {
    let Some(j) = judges() else { return };
    let pool = u16::from(*pods_per_node.iter().max().unwrap_or(&1));
    let scene = zenoh_cluster(pods_per_node, pool);
    let attached = scene.attach_all();
    let routers = routers(&j, &scene, pool);
    for (_, pod) in &scene.pods {
        wait_listening(&pod.ns, 7447);
    }
    assert_eq!(relays_held(&scene), (scene.pods.len(), scene.pods.len()));
    assert_a_router_each(&scene);
    let (oks, log) = exchange(&j, &scene, "a");
    assert!(
        oks.iter().all(|ok| *ok),
        "rmw_zenoh defaults through the relay: {oks:?}\n{log}\n{}",
        agent_logs(&scene)
    );

    for n in &scene.nodes {
        n.agent.borrow_mut().kill();
    }
    assert_nothing_listens(&scene);
    for n in &scene.nodes {
        n.agent.borrow_mut().restart();
    }
    for (_, pod) in &scene.pods {
        wait_listening(&pod.ns, 7447);
    }
    assert_a_router_each(&scene);
    let (oks, log) = exchange(&j, &scene, "b");
    assert!(
        oks.iter().all(|ok| *ok),
        "after the agents' restart: {oks:?}\n{log}\n{}",
        agent_logs(&scene)
    );

    drop(attached);
    assert_nothing_listens(&scene);
    assert_eq!(relays_held(&scene), (0, 0), "{}", agent_logs(&scene));
    stop(routers);
}

/// Stops the routers and waits for them.
fn stop(routers: Vec<(String, Spawned)>) {
    for (_, r) in &routers {
        r.terminate();
    }
    for (_, r) in routers {
        let _ = r.wait();
    }
}

/// A publisher on one node, subscribers in two pods of another: every session reaches its
/// own router through its pod's localhost, and the routers route between them (pod router,
/// hub, the other node's hub, pod router).
#[test]
fn rmw_zenoh_defaults_through_the_relay_two_nodes() {
    relay_scene(&[1, 2]);
}

/// Three pods of ONE node: a publisher and two subscribers, each session on a router of
/// its own, the three routers meeting through the node's hub. (Through one shared Zenoh
/// 1.10 router, measured: no sample crosses, since a router routes nothing between the
/// peers of its own south region; `agent::relays` explains.)
#[test]
fn rmw_zenoh_defaults_in_three_pods_of_one_node() {
    relay_scene(&[3]);
}

/// The control: the reference macvlan has no relay, so the same three pods with the same
/// node routers running find no router at their localhost and exchange nothing.
#[test]
fn reference_macvlan_has_no_relay_and_rmw_zenoh_defaults_find_nobody() {
    let Some(j) = judges() else { return };
    let scene = Cluster::new(Plugin::Reference, &[3]);
    let attached = scene.attach_all();
    let routers = routers(&j, &scene, 3);
    assert_nothing_listens(&scene);
    let (oks, log) = exchange(&j, &scene, "r");
    assert!(oks.iter().all(|ok| !*ok), "{oks:?}\n{log}");
    drop(attached);
    stop(routers);
}

/// A node whose routers all serve a pod refuses the next pod's ADD with code 11 (two pods
/// on one router would never meet): no net1, no claim, nothing listening, nothing held or
/// kept for it. Once a pod goes, its router serves the next.
#[test]
fn a_node_with_every_router_taken_refuses_the_next_add_and_it_leaves_nothing() {
    if !require_root() {
        return;
    }
    let scene = zenoh_cluster(&[2], 1);
    let n = &scene.nodes[0];
    let (first, second) = (scene.pod(0), scene.pod(1));
    assert_eq!(add(&n.node, first, &n.conf).code, 0);
    let reply = add(&n.node, second, &n.conf);
    assert_eq!(reply.json["code"], 11, "{reply:?}");
    let msg = reply.json["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("127.0.0.1:7448") && msg.contains("--zenoh-routers"),
        "{reply:?}"
    );
    assert!(!second.ns.link_names().contains(&"net1".to_owned()));
    assert!(tcp_listeners(&second.ns, 7447).trim().is_empty());
    assert_eq!(relays_held(&scene), (1, 1), "{}", agent_logs(&scene));
    assert_eq!(del(&n.node, first, &n.conf).code, 0);
    assert_eq!(relays_held(&scene), (0, 0));
    assert_eq!(add(&n.node, second, &n.conf).code, 0);
    assert_eq!(
        routers_given(&scene),
        vec![vec![Some("127.0.0.1:7448".parse().unwrap())]]
    );
    assert_eq!(del(&n.node, second, &n.conf).code, 0);
    assert_eq!(
        del(&n.node, second, &n.conf).code,
        0,
        "DEL again is a no-op"
    );
}

/// The router DaemonSet runs the routers as these scenes do: the hub and the pods' routers
/// from 7448 on, as many as the agent's default --zenoh-routers names.
#[test]
fn the_router_daemonset_has_the_scenes_settings() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/zenoh-router-daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(&format!("'{HUB_OVERRIDE}'")), "{text}");
    let pod_router = pod_router_override(FIRST_POD_ROUTER).replace("7448", "$port");
    assert!(text.contains(&pod_router), "{pod_router}\n{text}");
    assert!(
        text.contains(&format!("seq {FIRST_POD_ROUTER} 7463")),
        "{text}"
    );
    assert_eq!(
        ros_macvlan::agent::relays::DEFAULT_ROUTERS,
        format!("127.0.0.1:{FIRST_POD_ROUTER}-7463")
    );
    assert!(text.contains("hostNetwork: true") && text.contains("rmw_zenohd"));
}

/// Without the opt-in (the guide's config), ADD opens nothing on 7447 and the agent relays
/// nothing.
#[test]
fn without_the_opt_in_nothing_listens_on_7447() {
    if !require_root() {
        return;
    }
    let scene = Cluster::with(
        Plugin::RosMacvlan,
        &[1],
        |node| TestAgent::start_in(Some(&node.ns.name), &[]),
        |_| {},
    );
    let attached = scene.attach_all();
    assert!(scene.pod(0).ns.link_names().contains(&"net1".to_owned()));
    assert_nothing_listens(&scene);
    assert_eq!(relays_held(&scene), (0, 0));
    drop(attached);
}

/// A pod that has its own listener on 127.0.0.1:7447 at ADD keeps it: the ADD succeeds,
/// says so in its log line, and nothing is relayed for it.
#[test]
fn a_port_taken_in_the_pod_is_left_to_the_pod() {
    if !require_root() {
        return;
    }
    let scene = zenoh_cluster(&[1], 1);
    let pod = scene.pod(0);
    let own = pod
        .ns
        .handle()
        .run(|| std::net::TcpListener::bind("127.0.0.1:7447"))
        .unwrap()
        .unwrap();
    let n = &scene.nodes[0];
    let reply = add(&n.node, pod, &n.conf);
    assert_eq!(reply.code, 0, "{reply:?}");
    assert!(
        reply
            .stderr
            .contains("no Zenoh relay: 127.0.0.1:7447 is taken in the pod already"),
        "{}",
        reply.stderr
    );
    assert_eq!(relays_held(&scene), (0, 0));
    assert_eq!(own.local_addr().unwrap().port(), 7447);
    assert_eq!(del(&n.node, pod, &n.conf).code, 0);
}

/// A NAD that names a router, or a bad port, is refused with code 7 before any change: no
/// net1, no claim, nothing listening, nothing held.
#[test]
fn a_bad_zenoh_key_is_refused_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let scene = zenoh_cluster(&[1], 1);
    let n = &scene.nodes[0];
    let pod = scene.pod(0);
    for bad in [
        json!({"router": "tcp/127.0.0.1:2379"}),
        json!({"port": 0}),
        json!("yes"),
    ] {
        let mut conf: Value = n.conf.clone();
        conf["zenoh"] = bad.clone();
        let reply = add(&n.node, pod, &conf);
        assert_ne!(reply.code, 0, "{bad}: {reply:?}");
        assert_eq!(reply.json["code"], 7, "{bad}: {reply:?}");
        assert!(
            reply.json["msg"].as_str().unwrap().contains("zenoh"),
            "{reply:?}"
        );
        assert!(!pod.ns.link_names().contains(&"net1".to_owned()));
        assert_nothing_listens(&scene);
        assert_eq!(relays_held(&scene), (0, 0));
    }
}

/// doctor on a pod of a `zenoh` network: its localhost:7447 answers while the node's router
/// runs, and the check fails (naming the router) once it stops.
#[test]
fn doctor_checks_the_pods_localhost_router() {
    let Some(j) = judges() else { return };
    let scene = zenoh_cluster(&[1], 1);
    let _attached = scene.attach_all();
    let socket = scene.nodes[0].agent.borrow().socket();
    let doctor = || {
        let out = std::process::Command::new(plugin_bin())
            .args([
                "doctor",
                "--netns",
                &scene.pod(0).ns.path(),
                "--seconds",
                "1",
            ])
            .arg("--agent-socket")
            .arg(&socket)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let router = routers(&j, &scene, 1);
    let out = doctor();
    let line = out
        .lines()
        .find(|l| l.contains("zenoh router"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("127.0.0.1:7447") && line.contains("answers"),
        "{out}"
    );
    stop(router);
    let out = doctor();
    let line = out
        .lines()
        .find(|l| l.contains("zenoh router"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("no router answers the relay"), "{out}");
}
