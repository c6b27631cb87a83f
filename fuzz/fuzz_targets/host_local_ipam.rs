//! host-local's `ipam` object: ranges with the reference plugin's defaults, routes, dataDir.
//! An accepted config must also be usable: its candidates are computed (the range arithmetic
//! that overflowed on `::/0`, issue 16) from the start and from a given last address.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use ros_macvlan::ipam::host_local::HostLocalConf;
use ros_macvlan::node::policy::AllowedDirs;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(ipam) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The node's default allowed data directories (parsing opens nothing).
    let allowed = AllowedDirs::new(None);
    let Ok(conf) = HostLocalConf::parse(&ipam, &allowed.data, &allowed.resolv_conf) else {
        return;
    };
    // A "last reserved" address as the store would hold it, from the input.
    let last: Option<IpAddr> = ipam
        .get("fuzzLastReserved")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    for set in &conf.range_sets {
        // Also where a node's fresh store would start (any seed from the input).
        let spread =
            set.spread_resume_point((data.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for from in [None, last, set.0.last().map(|r| r.end), spread] {
            for (ip, range) in set.candidates(from).take(4) {
                assert!(range.contains(ip), "{ip} outside {range:?}");
                assert!(!range.is_reserved(ip), "{ip} is reserved in {range:?}");
                assert!(range.subnet.contains(ip), "{ip} outside {}", range.subnet);
            }
        }
    }
});
