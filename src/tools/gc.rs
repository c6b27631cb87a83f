//! `ros-macvlan gc` (and the agent's periodic gc): one round releases the claims of pods
//! that are gone, naming each. The round returns its report; the CLI prints it, the agent
//! logs it.

use std::path::Path;

/// One round of gc: releases the claims of pods that are gone. The report has a line for
/// each claim kept in doubt, one for each released, and the count; the error says why no
/// round could be made.
pub fn once(data_dir: &Path) -> Result<Vec<String>, String> {
    let sweep =
        crate::plugin::lifecycle::release_orphans(data_dir).map_err(|e| format!("gc: {e}"))?;
    let mut report: Vec<String> = sweep.kept.iter().map(|why| format!("gc: {why}")).collect();
    for o in &sweep.released {
        let r = &o.record;
        report.push(format!(
            "released {:?} of network {} (pod {}/{}, container {}, {}): netns {} is gone",
            r.ips,
            o.network,
            r.pod_namespace.as_deref().unwrap_or("-"),
            r.pod_name.as_deref().unwrap_or("-"),
            r.container_id,
            r.ifname,
            r.netns
        ));
    }
    report.push(format!(
        "gc: {} attachment(s) released under {}",
        sweep.released.len(),
        data_dir.display()
    ));
    Ok(report)
}
