//! An ARP frame as duplicate detection reads it from any host of the LAN (the agent's watch
//! and ADD's own probe): a malformed or hostile frame is no claim, never a panic; a claim
//! names only what the frame's sender fields say.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ros_macvlan::node::duplicate::claim_of;

fuzz_target!(|data: &[u8]| {
    if let Some(c) = claim_of(data) {
        // Ethernet/IPv4 ARP: hardware type 1, protocol 0x0800, lengths 6 and 4.
        assert!(data.len() >= 28, "a claim from {} bytes", data.len());
        assert_eq!(&data[8..14], &c.mac, "the claim's MAC is the sender's");
        let sender = &data[14..18];
        let target = &data[24..28];
        assert_eq!(c.probe, sender == [0, 0, 0, 0]);
        let ip = if c.probe { target } else { sender };
        assert_eq!(ip, &c.ip.octets(), "the claimed address is the sender's, or a probe's target");
    }
});
