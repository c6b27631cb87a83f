//! An RTPS datagram as `probe` receives it on the discovery port from anyone on the LAN.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ros_macvlan::tools::rtps::decode_spdp;

fuzz_target!(|data: &[u8]| {
    match decode_spdp(data) {
        Ok(p) => {
            let _ = (p.guid_prefix_hex(), p.vendor());
            for l in p.locators() {
                let _ = l.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
