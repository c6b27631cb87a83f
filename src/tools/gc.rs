//! `ros-macvlan gc` (and the agent's periodic gc): one round releases the claims of pods
//! that are gone, naming each.

use std::path::Path;

/// One round of gc: releases the claims of pods that are gone, naming each.
pub fn once(data_dir: &Path) -> i32 {
    match crate::plugin::lifecycle::release_orphans(data_dir) {
        Ok(sweep) => {
            for why in &sweep.kept {
                println!("gc: {why}");
            }
            let released = sweep.released;
            for o in &released {
                let r = &o.record;
                println!(
                    "released {:?} of network {} (pod {}/{}, container {}, {}): netns {} is gone",
                    r.ips,
                    o.network,
                    r.pod_namespace.as_deref().unwrap_or("-"),
                    r.pod_name.as_deref().unwrap_or("-"),
                    r.container_id,
                    r.ifname,
                    r.netns
                );
            }
            println!(
                "gc: {} attachment(s) released under {}",
                released.len(),
                data_dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!("gc: {e}");
            1
        }
    }
}
