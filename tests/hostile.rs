//! Hostile input: randomly mutated configs, CNI_ARGS and prevResults never panic the
//! parsers, and 1 MB inputs are refused in bounded time.

mod support;

use std::time::{Duration, Instant};

use ros_macvlan::cni::env::parse_cni_args;
use ros_macvlan::cni::result::CniResult;
use ros_macvlan::ipam::host_local::HostLocalConf;
use ros_macvlan::node::policy::AllowedDirs;
use ros_macvlan::plugin::config::MacvlanConf;
use support::*;

/// xorshift64*: reproducible mutations without a fuzzing crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"cniVersion":"1.0.0","name":"ros-net","type":"ros-macvlan","master":"eth0","mode":"bridge","mtu":1500,"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:02","ips":["198.51.100.9/24"]},"multicast":{"groups":["239.255.0.1"],"routes":["224.0.0.0/4"],"bcQueueLen":100},"ipam":{"type":"host-local","dataDir":"/var/lib/cni/networks","resolvConf":"/etc/resolv.conf","ranges":[[{"subnet":"198.51.100.0/24","rangeStart":"198.51.100.160","rangeEnd":"198.51.100.180","gateway":"198.51.100.1"}],[{"subnet":"2001:db8::/64"}]],"routes":[{"dst":"0.0.0.0/0","gw":"198.51.100.1"}]},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"net1","mac":"02:00:00:00:00:01","sandbox":"/x"}],"ips":[{"address":"198.51.100.160/24","gateway":"198.51.100.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["198.51.100.53"]}}}"#,
    r#"{"cniVersion":"0.2.0","name":"n","subnet":"x","ipam":{"type":"host-local","subnet":"203.0.113.0/24","rangeStart":"203.0.113.10"},"prevResult":{"ip4":{"ip":"203.0.113.10/24","gateway":"203.0.113.1","routes":[{"dst":"0.0.0.0/0"}]}}}"#,
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "-1",
    "1e999",
    "\\u0000",
    "../",
    "/",
    "999999999999999999999",
    "\"\"",
    "true",
    "255.255.255.255/33",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.next() as u8;
            }
            1 => v
                .splice(at..at, TOKENS[rng.below(TOKENS.len())].bytes())
                .for_each(drop),
            2 if !v.is_empty() => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let from = rng.below(v.len());
                let chunk: Vec<u8> = v[from..(from + rng.below(40)).min(v.len())].to_vec();
                v.splice(at..at, chunk);
            }
            _ => v.insert(at, b"0123456789abcdef.:/{}[]\""[rng.below(24)]),
        }
    }
    v
}

#[test]
fn mutated_configs_and_results_never_panic() {
    let allowed = AllowedDirs::new(None);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut accepted = 0;
    for i in 0..30_000 {
        let input = mutate(&mut rng, SEEDS[i % SEEDS.len()].as_bytes());
        if let Ok(conf) = MacvlanConf::parse(&input) {
            accepted += 1;
            let _ = HostLocalConf::parse(&conf.ipam, &allowed.data, &allowed.resolv_conf);
            if let Some(prev) = &conf.prev_result {
                let _ = CniResult::from_json(prev);
            }
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&input) {
            let _ = CniResult::from_json(&v);
            if let Some(p) = v.get("prevResult") {
                let _ = CniResult::from_json(p);
            }
        }
        let _ = parse_cni_args(&String::from_utf8_lossy(&input));
    }
    // The mutations must reach past the JSON decoder, or this test shows nothing.
    assert!(accepted > 1000, "only {accepted} mutated configs parsed");
}

#[test]
fn megabyte_inputs_are_refused_quickly() {
    let big_name = format!(
        r#"{{"cniVersion":"1.0.0","name":"{}"}}"#,
        "a".repeat(1 << 20)
    );
    let deep = format!(
        r#"{{"cniVersion":"1.0.0","name":"n","ipam":{}{}}}"#,
        "[".repeat(1 << 20),
        "]".repeat(1 << 20)
    );
    let many_args = "K=V;".repeat(1 << 18);
    let many_ranges = format!(
        r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"type":"host-local","ranges":[{}]}}}}"#,
        vec![r#"[{"subnet":"198.51.100.0/24"}]"#; 40_000].join(",")
    );
    // One range set of many ranges: the overlap check must not be quadratic.
    let one_set = format!(
        r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"type":"host-local","ranges":[[{}]]}}}}"#,
        (0..40_000u32)
            .map(|i| format!(
                r#"{{"subnet":"2001:db8:{:x}:{:x}::/64"}}"#,
                i >> 16,
                i & 0xffff
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (what, input) in [
        ("long name", big_name.as_str()),
        ("deep nesting", deep.as_str()),
        ("many ranges", many_ranges.as_str()),
        ("one huge range set", one_set.as_str()),
    ] {
        assert!(
            input.len() >= 1 << 20,
            "{what} is only {} bytes",
            input.len()
        );
        let start = Instant::now();
        if let Ok(conf) = MacvlanConf::parse(input.as_bytes()) {
            let allowed = AllowedDirs::new(None);
            let _ = HostLocalConf::parse(&conf.ipam, &allowed.data, &allowed.resolv_conf);
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{what} took {:?}",
            start.elapsed()
        );
    }
    let start = Instant::now();
    assert_eq!(parse_cni_args(&many_args).unwrap().len(), 1 << 18);
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// Through the binary: a megabyte of garbage on stdin is a decode error, not a crash.
#[test]
fn the_binary_answers_garbage_with_an_error() {
    let garbage: String = (0..(1 << 20))
        .map(|i| if i % 7 == 0 { '{' } else { 'x' })
        .collect();
    let r = invoke(
        std::process::Command::new(plugin_bin()),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/nonexistent"),
        ],
        &garbage,
    );
    assert_eq!(r.json["code"], 6, "{}", r.json);
    assert_eq!(r.code, 1);
    assert!(!r.stderr.contains("panicked"));
}
