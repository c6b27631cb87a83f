//! The agent's Prometheus metrics (issue 33): scraped in a scene whose content is known (two
//! named pods, one with a Zenoh relay carrying a connection, one whose address a LAN host
//! claims), the values match it and Prometheus' own parser (`promtool check metrics`)
//! accepts the text; a pod's series go with its DEL; by default the endpoint answers on the
//! node's loopback only, never on its LAN address.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// The agent's metrics, fetched with curl from inside the node's namespace.
fn scrape(node: &Node, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.ns.name,
            "curl",
            "-sf",
            "-m",
            "5",
            url,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the sample `series` (name and labels as written), if there is one.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `promtool check metrics` on `text`: Ok, or what it found wrong. Debian's promtool (2.42)
/// reads the Prometheus text format, of which OpenMetrics (what prometheus-client writes
/// and Prometheus scrapes) is a superset in one respect it lints: a counter's samples are
/// `NAME_total` under `# TYPE NAME counter`, which it takes for a family without help. A
/// parse error (exit 1) or any other lint fails.
fn promtool(promtool: &std::path::Path, text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let openmetrics_counter = |line: &str| {
        line.strip_suffix("_total no help text")
            .is_some_and(|name| text.contains(&format!("# TYPE {name} counter\n")))
    };
    match out.status.code() {
        Some(0) => Ok(()),
        // 3: lint findings only (the text parsed).
        Some(3)
            if said
                .lines()
                .filter(|l| !l.trim().is_empty())
                .all(openmetrics_counter) =>
        {
            Ok(())
        }
        code => Err(format!("promtool check metrics exited {code:?}:\n{said}")),
    }
}

/// A router for pods that accepts and keeps every connection open until stopped.
fn serve_hold(listener: TcpListener, stop: &Arc<AtomicBool>) {
    let mut held = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => held.push(s),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// ADD or DEL of `pod` with its Kubernetes name in CNI_ARGS, as Multus passes it.
fn cni_named(verb: &str, s: &WatchedLan, pod: &Pod, conf: &Value, name: &str) -> Reply {
    let (namespace, pod_name) = name.split_once('/').unwrap();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod_name}");
    cni_with(verb, &s.node, pod, conf, &[("CNI_ARGS", &args)])
}

const ROUTER: u16 = 7448;
/// The node's address on the LAN (the master's).
const NODE_ADDRESS: &str = "198.51.100.240";
const METRICS: &str = "http://127.0.0.1:9470/metrics";

#[test]
fn the_metrics_show_the_scene_and_promtool_reads_them() {
    if !require_root() {
        return;
    }
    let (Some(promtool_bin), Some(_)) = (require_tool("promtool"), require_tool("curl")) else {
        return;
    };
    let s = WatchedLan::with_agent(&["--zenoh-routers", &format!("127.0.0.1:{ROUTER}")]);
    let _router = StandInRouters::start(&s.node.ns, ROUTER..=ROUTER, serve_hold);
    let mut zenoh = with_agent(
        guide_config(
            Some("1.0.0"),
            "lan0",
            &s.data,
            "198.51.100.200",
            "198.51.100.210",
        ),
        &s.agent,
    );
    zenoh["name"] = json!("ros-zenoh");
    zenoh["zenoh"] = json!(true);

    let (t1, t2) = (s.node.pod(41), s.node.pod(42));
    let added = cni_named("ADD", &s, &t1, &s.conf, "default/t1");
    let t1_addr = net1_addr(added.ok());
    cni_named("ADD", &s, &t2, &zenoh, "robots/t2").ok();

    // One relayed connection: t2's rmw_zenoh would open it to its localhost:7447.
    let mut conn = t2
        .ns
        .handle()
        .run(|| {
            TcpStream::connect_timeout(&"127.0.0.1:7447".parse().unwrap(), Duration::from_secs(2))
        })
        .unwrap()
        .expect("t2's relay accepts");
    conn.write_all(b"hello").unwrap();

    // A LAN host claims t1's address: the agent's watch finds the conflict.
    let squatter = s.lan_host_with(t1_addr);
    // Until the agent's watch has the pod (it syncs with the records every few seconds)
    // and ARP crosses the fresh veth, an announcement may go unheard: one every 0.5 s.
    let mut text = String::new();
    let mut settled = false;
    for _ in 0..20 {
        announce_from(&squatter, t1_addr, 1, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(500));
        text = scrape(&s.node, METRICS).unwrap_or_default();
        settled = value(
            &text,
            r#"ros_macvlan_address_conflicts{namespace="default",pod="t1"}"#,
        ) == Some(1.0)
            && value(
                &text,
                r#"ros_macvlan_zenoh_relayed_connections{namespace="robots",pod="t2"}"#,
            ) == Some(1.0)
            && value(&text, "ros_macvlan_sweeps_total").is_some_and(|v| v >= 1.0);
        if settled {
            break;
        }
    }
    assert!(
        settled,
        "the scene never showed:\n{text}\n{}",
        s.agent.log()
    );
    let expect = |series: &str, want: f64| {
        assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
    };
    for (ns, pod) in [("default", "t1"), ("robots", "t2")] {
        let labels = format!(r#"{{namespace="{ns}",pod="{pod}"}}"#);
        expect(&format!("ros_macvlan_attachments{labels}"), 1.0);
        expect(&format!("ros_macvlan_memberships_held{labels}"), 1.0);
    }
    expect(
        r#"ros_macvlan_zenoh_relays{namespace="robots",pod="t2"}"#,
        1.0,
    );
    assert_eq!(
        value(
            &text,
            r#"ros_macvlan_zenoh_relays{namespace="default",pod="t1"}"#
        ),
        None,
        "{text}"
    );
    expect(r#"ros_macvlan_records{kind="memberships"}"#, 2.0);
    expect(r#"ros_macvlan_records{kind="zenoh-relays"}"#, 1.0);
    expect(r#"ros_macvlan_records{kind="conflicts"}"#, 1.0);
    expect("ros_macvlan_address_conflicts_found_total", 1.0);
    expect(
        r#"ros_macvlan_record_listing_failures_total{kind="memberships"}"#,
        0.0,
    );
    expect(
        r#"ros_macvlan_cni_calls_total{network="ros-net",verb="ADD"}"#,
        1.0,
    );
    expect(
        r#"ros_macvlan_cni_calls_total{network="ros-zenoh",verb="ADD"}"#,
        1.0,
    );
    expect(
        r#"ros_macvlan_cni_call_duration_seconds_count{network="ros-net",verb="ADD"}"#,
        1.0,
    );
    // The agent probed ahead and re-checked: it counts what it broadcast.
    assert!(
        value(&text, r#"ros_macvlan_arp_frames_sent_total{by="agent"}"#).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(value(&text, r#"ros_macvlan_arp_frames_sent_total{by="add"}"#).is_some());
    let fds = value(&text, "ros_macvlan_agent_open_fds").unwrap();
    let limit = value(&text, "ros_macvlan_agent_fd_limit").unwrap();
    assert!(fds > 0.0 && fds < limit, "{text}");
    let rss = value(&text, "ros_macvlan_agent_resident_memory_bytes").unwrap();
    let budget = value(&text, "ros_macvlan_agent_memory_limit_bytes").unwrap();
    assert!(rss > 0.0 && rss < budget, "{text}");

    if let Err(e) = promtool(&promtool_bin, &text) {
        panic!("{e}\n{text}");
    }
    // And the check itself rejects what is not the format.
    assert!(promtool(&promtool_bin, "ros_macvlan_x{a=} 1\n").is_err());

    // DEL: t1's series go (its attachment, membership and conflict), DEL is counted.
    drop(conn);
    cni_named("DEL", &s, &t1, &s.conf, "default/t1").ok();
    let text = scrape(&s.node, METRICS).unwrap();
    assert!(!text.contains(r#"pod="t1""#), "{text}");
    assert_eq!(
        value(
            &text,
            r#"ros_macvlan_cni_calls_total{network="ros-net",verb="DEL"}"#
        ),
        Some(1.0),
        "{text}"
    );
    cni_named("DEL", &s, &t2, &zenoh, "robots/t2").ok();
    let text = scrape(&s.node, METRICS).unwrap();
    assert!(!text.contains("pod=\""), "{text}");
}

#[test]
fn the_endpoint_is_not_on_the_lan_by_default() {
    if !require_root() {
        return;
    }
    let Some(_) = require_tool("curl") else {
        return;
    };
    let s = WatchedLan::new();
    s.node
        .ns
        .ip(&["addr", "add", &format!("{NODE_ADDRESS}/24"), "dev", "lan0"]);
    assert!(
        within(Duration::from_secs(5), || scrape(&s.node, METRICS)
            .is_some()),
        "no metrics on the node's loopback: {}",
        s.agent.log()
    );
    let listening = tcp_listeners(&s.node.ns, 9470);
    assert!(
        listening.contains("127.0.0.1:9470") && listening.lines().count() == 1,
        "{listening}"
    );
    // From the node itself and from another host of the LAN: the master's address refuses.
    let lan_url = format!("http://{NODE_ADDRESS}:9470/metrics");
    assert_eq!(scrape(&s.node, &lan_url), None);
    let neighbour = Node::new(&s.lan);
    neighbour
        .ns
        .ip(&["addr", "add", "198.51.100.241/24", "dev", "lan0"]);
    // A fresh veth needs about a second before ARP crosses it.
    assert!(
        within(Duration::from_secs(5), || pings(
            &neighbour.ns,
            NODE_ADDRESS
        )),
        "the LAN does not work"
    );
    let refused = neighbour
        .ns
        .handle()
        .run(|| {
            TcpStream::connect_timeout(
                &format!("{NODE_ADDRESS}:9470").parse().unwrap(),
                Duration::from_secs(2),
            )
        })
        .unwrap();
    assert!(refused.is_err(), "the LAN reaches the agent's metrics");

    // Anything but GET /metrics is not served.
    let mut other = s
        .node
        .ns
        .handle()
        .run(|| TcpStream::connect("127.0.0.1:9470"))
        .unwrap()
        .unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = other.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
