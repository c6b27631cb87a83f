//! `--pod NAMESPACE/NAME` of `probe` and `doctor`: the pod's netns and interface, found in
//! the membership records ADD writes beside the node agent's socket (each names its pod as
//! the runtime's CNI_ARGS said: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`). An operator knows a
//! pod by its name; the runtime's netns path (`/var/run/netns/cni-<uuid>`) is nowhere in
//! `kubectl`'s view.

use std::path::{Path, PathBuf};

use crate::agent::records::{MembershipRecord, RecordDir, RelayRecord};

/// The pod's attachment that probe and doctor look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub netns: String,
    pub ifname: String,
}

/// `NAMESPACE/NAME`, as kubectl writes it: both parts present, one '/'.
pub fn parse_name(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_owned())
        }
        _ => Err("takes NAMESPACE/NAME (as in `kubectl get pod -n NAMESPACE NAME`)".into()),
    }
}

/// The attachment of `pod` (on `ifname` when given) among the records beside
/// `agent_socket`; an error that says which pods are known when none or several match.
pub fn find(agent_socket: &Path, pod: &str, ifname: Option<&str>) -> Result<Found, String> {
    let all = recorded(agent_socket)?;
    let found = choose(&all, pod, ifname)?;
    // The path must still name the namespace ADD saw: a reused path is another pod.
    found.open_netns().map_err(|e| {
        format!(
            "pod {pod}'s netns {} is not there any more ({e}); is the pod still running?",
            found.netns
        )
    })?;
    Ok(Found {
        netns: found.netns.clone(),
        ifname: found.ifname.clone(),
    })
}

/// Every attachment the agent's records name: the memberships', and the Zenoh relays' of
/// networks that join no group. A listing that fails is an error, never fewer pods.
fn recorded(agent_socket: &Path) -> Result<Vec<MembershipRecord>, String> {
    let cannot = |place: PathBuf, e: std::io::Error| {
        format!(
            "cannot read the node agent's records in {}: {e}",
            place.display()
        )
    };
    let memberships = RecordDir::beside(agent_socket);
    let mut all = memberships
        .list()
        .map_err(|e| cannot(memberships.path(), e))?;
    let relays = RecordDir::<RelayRecord>::kept_beside(agent_socket);
    for relay in relays.list().map_err(|e| cannot(relays.path(), e))? {
        if !all.iter().any(|m| m.key() == relay.attachment.key()) {
            all.push(relay.attachment);
        }
    }
    Ok(all)
}

/// The one record of `pod` (on `ifname` when given), or why there is not exactly one.
fn choose<'a>(
    all: &'a [MembershipRecord],
    pod: &str,
    ifname: Option<&str>,
) -> Result<&'a MembershipRecord, String> {
    let matching: Vec<&MembershipRecord> = all
        .iter()
        .filter(|r| r.lan.pod.as_deref() == Some(pod))
        .filter(|r| ifname.is_none_or(|i| r.ifname == i))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no attachment of pod {pod}{} on this node; known pods: {} (a network that joins no group and relays no Zenoh leaves no record: use --netns)",
            ifname.map(|i| format!(" on {i}")).unwrap_or_default(),
            known(all)
        )),
        several => Err(format!(
            "pod {pod} has {} attachments on this node ({}): name one with --iface, or use --netns",
            several.len(),
            several
                .iter()
                .map(|r| format!("{} in {} (network {})", r.ifname, r.netns, r.network))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The pods the records name, each once, sorted; "none" when there are none.
fn known(all: &[MembershipRecord]) -> String {
    let mut pods: Vec<String> = all
        .iter()
        .map(|r| match &r.lan.pod {
            Some(p) => format!("{p} ({})", r.ifname),
            None => format!("(unnamed, container {}) ({})", r.container_id, r.ifname),
        })
        .collect();
    pods.sort();
    pods.dedup();
    if pods.is_empty() {
        "none".into()
    } else {
        pods.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::records::tests::record;

    fn of(pod: &str, ifname: &str, netns: &str) -> MembershipRecord {
        let mut r = record();
        r.lan.pod = Some(pod.into());
        r.ifname = ifname.into();
        r.netns = netns.into();
        r
    }

    #[test]
    fn names_are_namespace_slash_name() {
        assert!(parse_name("default/t1").is_ok());
        for bad in ["t1", "/t1", "default/", "a/b/c", ""] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_attachment_is_found_and_others_are_named() {
        let all = [
            of("default/t1", "net1", "/run/netns/a"),
            of("default/t2", "net1", "/run/netns/b"),
            of("robots/t1", "net1", "/run/netns/c"),
        ];
        assert_eq!(
            choose(&all, "robots/t1", None).unwrap().netns,
            "/run/netns/c"
        );
        let e = choose(&all, "default/nope", None).unwrap_err();
        assert!(e.contains("no attachment of pod default/nope"), "{e}");
        assert!(
            e.contains("default/t1 (net1), default/t2 (net1), robots/t1 (net1)"),
            "{e}"
        );
        assert!(choose(&[], "a/b", None)
            .unwrap_err()
            .contains("known pods: none"));
    }

    #[test]
    fn several_attachments_need_an_interface() {
        let all = [
            of("default/t1", "net1", "/run/netns/a"),
            of("default/t1", "net2", "/run/netns/a"),
        ];
        let e = choose(&all, "default/t1", None).unwrap_err();
        assert!(e.contains("2 attachments") && e.contains("--iface"), "{e}");
        assert_eq!(
            choose(&all, "default/t1", Some("net2")).unwrap().ifname,
            "net2"
        );
    }
}
