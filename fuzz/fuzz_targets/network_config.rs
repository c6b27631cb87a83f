//! The network config on stdin (a NetworkAttachmentDefinition's `config`, written by any
//! namespace admin): decode and validate, as every verb does first.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ros_macvlan::plugin::config::MacvlanConf;

fuzz_target!(|data: &[u8]| {
    match MacvlanConf::parse(data) {
        Ok(conf) => {
            let _ = conf.ipam_type();
        }
        Err(e) => {
            assert!(e.code() > 0 && !e.to_string().is_empty(), "{e:?}");
        }
    }
});
