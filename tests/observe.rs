//! The operator's tools: `probe` decodes real SPDP (from ddsperf) exactly as tshark's RTPS
//! dissector does; two announcing probes see each other; `doctor` passes a healthy pod and
//! names the broken check on pods broken on purpose.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bg(ns: &Ns, args: &[&str]) -> Bg {
    Bg(Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn"))
}

/// tcpdump on the pod's net1 (without promiscuous mode: only what the pod receives) of the
/// discovery port, into `pcap`.
fn capture_discovery(ns: &Ns, pcap: &std::path::Path) -> Bg {
    bg(
        ns,
        &[
            "tcpdump",
            "-p",
            "-i",
            "net1",
            "-U",
            "-w",
            pcap.to_str().unwrap(),
            "udp",
            "port",
            "7400",
        ],
    )
}

fn tool(args: &[&str]) -> (i32, String) {
    let out = Command::new(plugin_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

struct Scene {
    _lan: Lan,
    _node: Node,
    pods: Vec<Pod>,
    data: DataDir,
    agent: TestAgent,
}

fn scene(n: u8) -> Scene {
    let lan = Lan::create();
    let node = Node::new(&lan);
    let data = DataDir::create();
    let agent = start_agent();
    let conf = with_agent(guide(&data), &agent);
    let pods: Vec<Pod> = (0..n).map(|i| node.pod(11 + i)).collect();
    for p in &pods {
        add(&node, p, &conf).ok();
    }
    Scene {
        _lan: lan,
        _node: node,
        pods,
        data,
        agent,
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn probe_decodes_ddsperf_spdp_like_tshark() {
    if !require_root() {
        return;
    }
    let (Some(_), Some(_)) = (require_tool("tshark"), require_tool("ddsperf")) else {
        return;
    };
    let s = scene(2);
    let pcap = s.data.0.join("spdp.pcap");
    let _capture = capture_discovery(&s.pods[0].ns, &pcap);
    let probe = Command::new(plugin_bin())
        .args([
            "probe",
            "--netns",
            &s.pods[0].ns.path(),
            "--seconds",
            "4",
            "--json",
            // Listen only: the capture must hold ddsperf's announcements, not ours.
            "--silent",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let _talker = bg(&s.pods[1].ns, &["ddsperf", "-D", "3", "pub", "10Hz"]);
    let out = probe.wait_with_output().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(_capture);
    let events = json_lines(&String::from_utf8_lossy(&out.stdout));
    let seen = events
        .iter()
        .find(|e| e["event"] == "new")
        .unwrap_or_else(|| panic!("probe heard nothing: {events:?}"));
    assert_eq!(seen["vendor"], "Eclipse Cyclone DDS");
    assert_eq!(seen["iface"], "net1");

    let fields = sh(&[
        "tshark",
        "-r",
        pcap.to_str().unwrap(),
        "-Y",
        "rtps.sm.wrEntityId == 0x000100c2",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "rtps.guidPrefix.src",
        "-e",
        "rtps.vendorId",
        "-e",
        "rtps.version",
        "-e",
        "rtps.domain_id",
        "-e",
        "rtps.locator.kind",
        "-e",
        "rtps.locator.port",
        "-e",
        "rtps.locator.ipv4",
        "-e",
        "ip.src",
        "-e",
        "rtps.param.participant_guid",
        "-e",
        "rtps.param.ntpTime.sec",
        "-e",
        "rtps.param.ntpTime.fraction",
    ]);
    let line = fields
        .lines()
        .next()
        .unwrap_or_else(|| panic!("tshark decoded no SPDP in the capture"));
    let f: Vec<&str> = line.split('|').collect();
    let first = |s: &str| s.split(',').next().unwrap_or("").to_owned();
    assert_eq!(seen["guidPrefix"], f[0], "GUID prefix");
    assert!(
        f[8].starts_with(f[0]),
        "participant GUID carries the prefix"
    );
    assert_eq!(
        seen["vendorId"].as_str().unwrap().replace('.', ""),
        first(f[1]).trim_start_matches("0x"),
        "vendor id"
    );
    let version = first(f[2]);
    let v = u16::from_str_radix(version.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(
        seen["protocolVersion"],
        format!("{}.{}", v >> 8, v & 0xff),
        "protocol version"
    );
    assert_eq!(seen["domain"].to_string(), f[3], "domain");
    assert_eq!(
        seen["source"].as_str().unwrap().split(':').next(),
        Some(f[7]),
        "source address"
    );
    // Every locator, in packet order on tshark's side; ours are grouped by kind.
    let kinds: Vec<&str> = f[4].split(',').collect();
    let ports: Vec<&str> = f[5].split(',').collect();
    let ips: Vec<&str> = f[6].split(',').collect();
    let mut theirs: Vec<String> = (0..ports.len())
        .filter(|i| kinds.get(*i).is_some_and(|k| k.ends_with('1')))
        .map(|i| format!("udp/{}:{}", ips[i], ports[i]))
        .collect();
    let mut ours: Vec<String> = [
        "defaultUnicast",
        "defaultMulticast",
        "metatrafficUnicast",
        "metatrafficMulticast",
    ]
    .iter()
    .flat_map(|k| {
        seen[*k]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
    })
    .collect();
    theirs.sort();
    ours.sort();
    assert_eq!(ours, theirs, "locators");
    let lease = first(f[9]).parse::<f64>().unwrap()
        + first(f[10]).parse::<f64>().unwrap_or(0.0) / 4_294_967_296.0;
    assert_eq!(
        seen["leaseDuration"].as_f64(),
        Some(lease),
        "lease duration"
    );
}

#[test]
fn two_announcing_probes_see_each_other_and_tshark_reads_them() {
    if !require_root() {
        return;
    }
    let Some(_) = require_tool("tshark") else {
        return;
    };
    let s = scene(2);
    let pcap = s.data.0.join("probe.pcap");
    let _capture = capture_discovery(&s.pods[1].ns, &pcap);
    std::thread::sleep(Duration::from_millis(300));
    let (p0, p1) = (s.pods[0].ns.path(), s.pods[1].ns.path());
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| {
            tool(&[
                "probe",
                "--netns",
                &p0,
                "--seconds",
                "3",
                "--announce",
                "--json",
            ])
        });
        let b = sc.spawn(|| {
            tool(&[
                "probe",
                "--netns",
                &p1,
                "--seconds",
                "3",
                "--announce",
                "--json",
            ])
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    drop(_capture);
    for (who, (code, out)) in [("pod 0", &a), ("pod 1", &b)] {
        assert_eq!(*code, 0, "{who}: {out}");
        let events = json_lines(out);
        let peer = events
            .iter()
            .find(|e| e["event"] == "new")
            .unwrap_or_else(|| panic!("{who} heard no peer: {out}"));
        assert_eq!(peer["name"], "ros-macvlan-probe");
        assert!(peer["source"].as_str().unwrap().starts_with("198.51.100."));
    }
    let names = sh(&[
        "tshark",
        "-r",
        pcap.to_str().unwrap(),
        "-Y",
        "rtps.sm.wrEntityId == 0x000100c2",
        "-T",
        "fields",
        "-e",
        "rtps.param.entityName",
    ]);
    assert!(
        names.contains("ros-macvlan-probe"),
        "tshark did not decode our SPDP: {names}"
    );
}

#[test]
fn doctor_passes_a_healthy_pod_and_names_each_broken_check() {
    if !require_root() {
        return;
    }
    let Some(_) = require_tool("ddsperf") else {
        return;
    };
    let mut s = scene(2);
    let pod = s.pods.remove(0);
    let pod = &pod;
    let netns = pod.ns.path();
    let _peer = bg(&s.pods[0].ns, &["ddsperf", "-D", "30", "pub", "1Hz"]);
    std::thread::sleep(Duration::from_millis(300));
    let doctor = || tool(&["doctor", "--netns", &netns, "--seconds", "2"]);
    let (code, out) = doctor();
    assert_eq!(code, 0, "healthy pod failed:\n{out}");
    for check in [
        "interface",
        "membership",
        "route",
        "rp_filter",
        "interface choice",
        "participants",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("PASS") && l.contains(check)),
            "{check} did not pass:\n{out}"
        );
    }
    assert!(out.contains("Eclipse Cyclone DDS"), "{out}");

    let broken = |what: &str, check: &str, breaks: &[&[&str]], mends: &[&[&str]]| {
        for b in breaks {
            pod.ns.ip(b);
        }
        let (code, out) = doctor();
        assert_eq!(code, 1, "{what}: doctor passed:\n{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAIL") && l.contains(check)),
            "{what}: {check} not named:\n{out}"
        );
        for m in mends {
            pod.ns.ip(m);
        }
    };
    broken(
        "no route",
        "route",
        &[&["route", "del", "224.0.0.0/4", "dev", "net1"]],
        &[&[
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "net1",
            "scope",
            "link",
        ]],
    );
    broken(
        "eth0 multicast",
        "interface choice",
        &[&["link", "set", "eth0", "multicast", "on"]],
        &[&["link", "set", "eth0", "multicast", "off"]],
    );
    // A pod attached by an earlier version: the group as an address (Fast DDS breaks).
    broken(
        "group as an address",
        "group address",
        &[&["addr", "add", "239.255.0.1/32", "dev", "net1", "autojoin"]],
        &[&["addr", "del", "239.255.0.1/32", "dev", "net1"]],
    );
    // No agent holds the membership: a warning with its fix, not a failure (DDS processes
    // in the pod join the group themselves).
    s.agent.kill();
    let (code, out) = doctor();
    assert_eq!(code, 0, "a missing membership alone is a warning:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN") && l.contains("membership")),
        "{out}"
    );
    assert!(
        out.contains("ros-macvlan agent"),
        "the fix names the agent:\n{out}"
    );
    pod.ns.sysctl("net.ipv4.conf.all.rp_filter", "1");
    pod.ns.sysctl("net.ipv4.conf.net1.rp_filter", "1");
    let (code, out) = doctor();
    assert_eq!(code, 1);
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("rp_filter")),
        "{out}"
    );
}

/// A short probe finds a participant that is past its first announcements (CycloneDDS then
/// announces every 8 s or more): by default the probe announces itself and peers answer at
/// once. Hearing nobody, it says why and what to try.
#[test]
fn a_short_probe_finds_a_quiet_participant_and_explains_silence() {
    if !require_root() {
        return;
    }
    let Some(_) = require_tool("ddsperf") else {
        return;
    };
    let s = scene(2);
    let netns = s.pods[0].ns.path();
    let _peer = bg(&s.pods[1].ns, &["ddsperf", "-D", "20", "pub", "1Hz"]);
    // Past ddsperf's start-up burst of announcements.
    std::thread::sleep(Duration::from_secs(4));
    let (code, out) = tool(&["probe", "--netns", &netns, "--seconds", "1.5"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Eclipse Cyclone DDS") && out.contains("1 participant(s)"),
        "the default probe did not find ddsperf within 1.5 s:\n{out}"
    );

    let (_, out) = tool(&[
        "probe",
        "--netns",
        &netns,
        "--seconds",
        "1",
        "--domain",
        "7",
    ]);
    assert!(out.contains("0 participant(s)"), "{out}");
    assert!(
        out.contains("No DDS participant of domain 7 answered") && out.contains("doctor"),
        "no explanation of the silence:\n{out}"
    );
    let (_, out) = tool(&[
        "probe",
        "--netns",
        &netns,
        "--seconds",
        "1",
        "--domain",
        "7",
        "--silent",
    ]);
    assert!(
        out.contains("--seconds 30") && out.contains("drop --silent"),
        "no advice for a silent probe:\n{out}"
    );
}

/// The domains whose ports lie in the kernel's ephemeral range (per network namespace) are
/// warned about: with the default range 32768-60999, domains 102 to 214.
#[test]
fn ports_warns_about_domains_in_the_ephemeral_port_range() {
    if !require_root() {
        return;
    }
    let ns = Ns::new("rmports");
    let warns = |domain: &str| {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            plugin_bin().to_str().unwrap(),
            "ports",
            "--domain",
            domain,
        ]);
        out.contains("warning:") && out.contains("ip_local_port_range")
    };
    ns.sysctl("net.ipv4.ip_local_port_range", "32768 60999");
    for (domain, expected) in [
        ("0", false),
        ("101", false),
        ("102", true),
        ("214", true),
        ("215", false),
    ] {
        assert_eq!(warns(domain), expected, "domain {domain}");
    }
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 41000");
    assert!(warns("131"), "7400 + 250 x 131 = 40150 is in 40000-41000");
    assert!(!warns("102"));
}

#[test]
fn ports_follow_the_rtps_mapping() {
    let (code, out) = tool(&["ports", "--domain", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("239.255.0.1:7650"), "{out}");
    assert!(out.contains("239.255.0.1:7651"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "7660", "7661"]),
        "{out}"
    );
    assert_eq!(tool(&["ports", "--domain", "233"]).0, 2);
}
