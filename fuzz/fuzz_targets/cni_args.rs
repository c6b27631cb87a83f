//! CNI_ARGS (`K1=V1;K2=V2`, set by the runtime from pod annotations and labels).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ros_macvlan::cni::env::parse_cni_args;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(pairs) = parse_cni_args(&text) {
        for (k, v) in &pairs {
            assert!(
                text.contains(&format!("{k}={v}")),
                "{k:?}={v:?} not in {text:?}"
            );
        }
    }
});
