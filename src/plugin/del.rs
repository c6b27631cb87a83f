//! DEL: the attachment's links made inert at once and removed after, the membership let
//! go, the multicast routes handed over, the address released. Nothing left to do is success.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cni::env::CniEnv;
use crate::cni::{Error, Kind, Result};
use crate::plugin::attachment::{open_pod_netns, Attachment};
use crate::plugin::{membership, multicast, zenoh_relay};
use crate::sys::netlink::{Link, LinkChange, Netlink, Op, Rtnl};
use crate::sys::stable_hash::stable_hash;

/// The name a deleted attachment's link takes while the kernel finishes removing it (see
/// `del`): a prefix fixed per attachment (so a later DEL of the same attachment finds a link
/// whose removal never finished) and a random tail (so two such links never collide).
fn retired_name(env: &CniEnv) -> String {
    let tail = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default();
    format!("{}{:04x}", retired_prefix(env), tail & 0xffff)
}

/// How every retired link's name starts.
pub const RETIRED_PREFIX: &str = "rmv";

fn retired_prefix(env: &CniEnv) -> String {
    let id = format!("{}/{}", env.container_id, env.ifname);
    format!("{RETIRED_PREFIX}{:08x}", stable_hash(id.as_bytes()) as u32)
}

/// DEL. The kernel's removal of a link waits for RCU grace periods (about 20 ms, most of
/// a DEL), and so does taking a link down; so DEL makes the link inert at once and leaves
/// the removal to a detached process (`reaper`): the agent lets go of its memberships (the
/// IGMP leave goes out), the link loses its addresses and routes (it answers for no address and carries no
/// traffic of the pod's), and takes a name of its own, so `CNI_IFNAME` is free for the
/// next ADD. Only then is the address released, so no other pod can get it while this link
/// could still use it. Nothing left to do is success; a namespace that is gone has taken
/// its links with it. A failing step does not stop the others: DEL does all it can and
/// reports every failure at once, so the runtime's retry has only those left.
pub fn del(at: &Attachment<'_>) -> Result<()> {
    let pod_ns = match open_pod_netns(&at.env.netns) {
        Ok(ns) => Some(ns),
        // Gone (or never given): its links went with it; the address is still released.
        Err(e) if e.kind() == Kind::ContainerUnknown => None,
        Err(e) => return Err(e),
    };
    // The heirs of the multicast routes are read from the records before ours goes; with no
    // routes to hand over, or no namespace left, there is nothing to read them for.
    let heirs = if pod_ns.is_some() && !at.conf.multicast.routes.is_empty() {
        membership::other_members(at.conf, at.env, at.agent)?
    } else {
        Vec::new()
    };
    // The agent lets go of the membership and the pod's listeners close, the agent holds
    // nothing for it; a record that cannot be removed is reported with the rest.
    let mut released = Vec::new();
    if let Err(e) = membership::release(at.conf, at.env, at.agent) {
        released.push(e.context("letting go of the membership failed"));
    }
    if let Err(e) = zenoh_relay::release(at.conf, at.env, at.agent) {
        released.push(e.context("closing the Zenoh relay failed"));
    }
    let rest = match pod_ns {
        Some(pod_ns) => Netlink::connect(&pod_ns)
            .map_err(Error::from)
            .and_then(|nl| del_in_pod(at, &nl, &heirs)),
        None => at.ipam.del(at.conf, at.env),
    };
    if let Err(e) = rest {
        released.push(e);
    }
    Error::all(released)
}

/// DEL's part in the pod's namespace once its heirs are known: the links retired, the
/// address released, the links removed (by the reaper, or here with `waitForLinkRemoval`
/// or when a link could not be made inert); every failure met, at once.
fn del_in_pod(at: &Attachment<'_>, nl: &dyn Rtnl, heirs: &[String]) -> Result<()> {
    let Retired {
        doomed,
        inert,
        mut failures,
    } = retire(at, nl, heirs)?;
    // A link that could not be made inert is removed here and now, not left to a child.
    let wait = at.conf.wait_for_link_removal || !inert;
    if let Err(e) = crate::plugin::reaper::delete_links(nl, &doomed, wait) {
        failures.push(e);
    }
    Error::all(failures)
}

/// What DEL did in the pod's namespace: the links left to delete, and every failure met.
#[derive(Debug)]
struct Retired {
    doomed: Vec<u32>,
    /// The links lost their addresses and routes and their name (else they are removed
    /// at once, and the address stays claimed).
    inert: bool,
    failures: Vec<Error>,
}

/// DEL in the pod's namespace, up to the links' removal: every link of the attachment
/// made inert and renamed out of the way, eth0's mark given back, the multicast routes
/// handed to `heirs` (the attachments left in the pod), the address released. Returns the
/// links to delete and what failed; only a namespace whose links cannot be listed fails
/// the whole.
fn retire(at: &Attachment<'_>, nl: &dyn Rtnl, heirs: &[String]) -> Result<Retired> {
    let Attachment {
        conf, env, ipam, ..
    } = *at;
    let prefix = retired_prefix(env);
    let (ours, others) = links_of_attachment(nl.links()?, &env.ifname, &prefix);
    let addresses = if ours.is_empty() {
        Vec::new()
    } else {
        nl.addresses(None)?
    };
    let mut ops = Vec::new();
    for link in &ours {
        // Routes first: the kernel flushes a link's routes itself when its last IPv4
        // address goes, but not on a link that had none.
        ops.extend(multicast::route_removal_ops(link.index, &conf.multicast));
        // Every address, also a group joined as an address by an earlier version, whose
        // membership the kernel would otherwise keep after the link is gone.
        ops.extend(
            addresses
                .iter()
                .filter(|(index, _)| *index == link.index)
                .map(|(_, addr)| Op::del_address(link.index, *addr)),
        );
        if !link.name.starts_with(&prefix) {
            ops.push(LinkChange::of(link.index).name(&retired_name(env)).op());
        }
    }
    // eth0's mark in the same exchange.
    ops.extend(multicast::restore_ops(&others, &env.ifname));
    let mut failures = Vec::new();
    let inert = match nl.apply(ops) {
        Ok(()) => true,
        Err(e) => {
            failures.push(Error::from(e).context("retire"));
            false
        }
    };
    if let Err(e) = multicast::hand_over_routes(nl, &others, heirs, &conf.multicast) {
        failures.push(e.context("hand over the multicast routes"));
    }
    // The address stays claimed while a link that may still answer for it is not inert;
    // the runtime's retry releases it.
    if inert {
        if let Err(e) = ipam.del(conf, env) {
            failures.push(e);
        }
    }
    Ok(Retired {
        doomed: ours.iter().map(|l| l.index).collect(),
        inert,
        failures,
    })
}
/// DEL's choice: the attachment's macvlan (named `ifname`) and the retired ones an earlier
/// DEL of the same attachment left (named `retired_prefix`...) whose removal did not
/// finish; then every other link. Never another attachment's macvlan, nor a link that is
/// not a macvlan.
fn links_of_attachment(
    links: Vec<Link>,
    ifname: &str,
    retired_prefix: &str,
) -> (Vec<Link>, Vec<Link>) {
    links
        .into_iter()
        .partition(|l| l.is_macvlan() && (l.name == ifname || l.name.starts_with(retired_prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Ipam;
    use crate::plugin::attachment::test_support::{agent, env, names, with_fake_agent};
    use crate::plugin::config::{MacvlanConf, MulticastConf};
    use crate::sys::netlink::testing::Fake;
    use netlink_packet_route::link::{InfoKind, LinkFlags};

    #[test]
    fn del_picks_the_attachment_and_its_retired_links_only() {
        let ours = env("ctr-a", "net1");
        let prefix = retired_prefix(&ours);
        let theirs = retired_prefix(&env("ctr-a", "net2"));
        assert_ne!(
            prefix, theirs,
            "each attachment retires under a name of its own"
        );
        assert_eq!(prefix, retired_prefix(&env("ctr-a", "net1")), "stable");
        assert!(retired_name(&ours).starts_with(&prefix));

        let nl = Fake::new();
        let up = LinkFlags::Up | LinkFlags::Multicast;
        nl.with_link("lo", None, LinkFlags::Up | LinkFlags::Loopback);
        nl.with_link("eth0", Some(InfoKind::Veth), up);
        nl.with_link("net1", Some(InfoKind::MacVlan), up);
        nl.with_link(&format!("{prefix}0a0b"), Some(InfoKind::MacVlan), up);
        nl.with_link(&format!("{theirs}0c0d"), Some(InfoKind::MacVlan), up);
        nl.with_link("net2", Some(InfoKind::MacVlan), up);
        // Our prefix on something that is not a macvlan is not ours to delete.
        nl.with_link(&format!("{prefix}veth"), Some(InfoKind::Veth), up);

        let (chosen, rest) = links_of_attachment(nl.links().unwrap(), "net1", &prefix);
        assert_eq!(names(&chosen), vec!["net1", &format!("{prefix}0a0b")]);
        assert_eq!(
            names(&rest),
            vec![
                "lo",
                "eth0",
                &format!("{theirs}0c0d"),
                "net2",
                &format!("{prefix}veth")
            ]
        );
    }

    #[test]
    fn del_of_a_link_already_gone_chooses_nothing() {
        let nl = Fake::new();
        nl.with_link("eth0", Some(InfoKind::Veth), LinkFlags::Up);
        nl.with_link("net2", Some(InfoKind::MacVlan), LinkFlags::Up);
        let (chosen, rest) = links_of_attachment(nl.links().unwrap(), "net1", "rmv00000000");
        assert!(chosen.is_empty());
        assert_eq!(names(&rest), vec!["eth0", "net2"]);
    }

    #[test]
    fn del_after_add_gives_the_pod_back_and_the_addresses_free() {
        use crate::plugin::attachment::test_support::{conf_with, data_dir, Call, Scene, Snapshot};

        let dir = data_dir("del-round-trip");
        let conf = || conf_with(&dir, ("198.51.100.10", "198.51.100.11"));
        let (first, second) = (
            Call::new(conf(), env("ctr-del", "net1")),
            Call::new(conf(), env("ctr-del", "net2")),
        );
        let s = Scene::new();
        let before = Snapshot::of(&s);
        for call in [&first, &second] {
            crate::plugin::add::add(&call.at(), &s.namespaces(), Ok(None)).unwrap();
        }
        let (net1, net2) = (
            s.pod.link_by_name("net1").unwrap().unwrap().index,
            s.pod.link_by_name("net2").unwrap().unwrap().index,
        );
        // A retired link an earlier DEL of net1 left behind.
        let prefix = retired_prefix(&first.env);
        let left = s.pod.with_link(
            &format!("{prefix}0a0b"),
            Some(InfoKind::MacVlan),
            LinkFlags::Multicast,
        );
        let multicast = |index| {
            s.pod
                .all_routes()
                .iter()
                .any(|r| r.oif == Some(index) && r.dst.to_string() == "224.0.0.0/4")
        };
        assert!(
            multicast(net1) && !multicast(net2),
            "the first carries the routes"
        );

        s.pod.clear_requests();
        del_in_pod(&first.at(), &s.pod, &["net2".to_owned()]).unwrap();
        let deleted: Vec<u32> = s
            .pod
            .ops()
            .iter()
            .filter_map(|op| match op {
                Op::DelLink(index) => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            vec![net1, left],
            "net1 and its retired link, nothing else"
        );
        assert!(multicast(net2), "the multicast route handed over to net2");
        assert!(
            !s.pod.link(s.eth0).unwrap().is_multicast(),
            "eth0 stays marked for net2"
        );
        let hl = |call: &Call| match &call.ipam {
            Ipam::HostLocal(hl) => hl.held("seam", "ctr-del", &call.env.ifname).unwrap(),
            _ => panic!("host-local"),
        };
        assert!(hl(&first).is_empty(), "net1's address released");
        assert_eq!(hl(&second).len(), 1, "net2's kept");

        // The last attachment: no heir, eth0 given back, the pod as before ADD.
        del_in_pod(&second.at(), &s.pod, &[]).unwrap();
        before.still(&s, "after both DELs");
        assert!(hl(&second).is_empty());

        // A DEL again finds nothing of its own and removes nothing.
        s.pod.clear_requests();
        del_in_pod(&second.at(), &s.pod, &[]).unwrap();
        before.still(&s, "after a repeated DEL");
        assert_eq!(s.pod.requests(), vec![]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A DEL the kernel refuses a step of goes on: the multicast route still goes to the
    /// heir, the link is removed at once rather than left to a child, the address stays
    /// claimed while the link could answer for it, and the one error names the refusal. The
    /// runtime's retry then finds the rest. (Mutations tried: stopping at the refusal; the
    /// child left to remove the link; releasing the address anyway.)
    #[test]
    fn del_past_a_refused_step_does_the_rest_and_reports_it() {
        use crate::plugin::attachment::test_support::{conf_with, data_dir, Call, Scene};

        let dir = data_dir("del-refused");
        let conf = || {
            let mut c = conf_with(&dir, ("198.51.100.20", "198.51.100.21"));
            c.wait_for_link_removal = false;
            c
        };
        let (first, second) = (
            Call::new(conf(), env("ctr-ref", "net1")),
            Call::new(conf(), env("ctr-ref", "net2")),
        );
        let s = Scene::new();
        for call in [&first, &second] {
            crate::plugin::add::add(&call.at(), &s.namespaces(), Ok(None)).unwrap();
        }
        let net1 = s.pod.link_by_name("net1").unwrap().unwrap().index;
        let net2 = s.pod.link_by_name("net2").unwrap().unwrap().index;
        let held = |call: &Call| match &call.ipam {
            Ipam::HostLocal(hl) => hl.held("seam", "ctr-ref", &call.env.ifname).unwrap(),
            _ => panic!("host-local"),
        };

        s.pod.refuse(nix::errno::Errno::EBUSY, |r| {
            matches!(r.op(), Some(Op::DelAddress { .. }))
        });
        let e = del_in_pod(&first.at(), &s.pod, &["net2".to_owned()]).unwrap_err();
        assert_eq!(e.code(), 101, "{e}");
        assert!(e.to_string().starts_with("retire: "), "{e}");
        assert!(
            s.pod
                .all_routes()
                .iter()
                .any(|r| r.oif == Some(net2) && r.dst.to_string() == "224.0.0.0/4"),
            "the route went to the heir all the same"
        );
        assert!(
            s.pod.ops().contains(&Op::del_link(net1)),
            "the link not made inert is removed at once, here"
        );
        assert_eq!(
            held(&first).len(),
            1,
            "its address stays claimed for the retry"
        );

        s.pod.refuse_nothing();
        del_in_pod(&first.at(), &s.pod, &["net2".to_owned()]).unwrap();
        assert!(held(&first).is_empty(), "the retry releases it");
        assert_eq!(held(&second).len(), 1, "net2's kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// DEL of a pod whose netns is gone: the relay's record goes and the agent is asked to
    /// close it, and a membership record that cannot be removed is DEL's failure (code 5),
    /// reported with the rest instead of swallowed (the runtime retries).
    #[test]
    fn del_reports_a_record_it_cannot_remove_and_does_the_rest() {
        use crate::agent::client::fake::FakeAgent;
        use crate::agent::records::{key_of, RecordDir, RelayRecord};
        let fake = FakeAgent::default();
        let (conf, agent) = with_fake_agent(
            "del-records",
            MacvlanConf::parse(br#"{"cniVersion":"1.0.0","name":"del","type":"ros-macvlan"}"#)
                .unwrap(),
            &fake,
        );
        let env = env("ctr-del", "net1");
        let key = key_of("del", "ctr-del", "net1");
        let memberships: RecordDir = agent.records();
        std::fs::create_dir_all(memberships.path().join(format!("{key}.json/inside"))).unwrap();
        let relays: RecordDir<RelayRecord> = agent.records();
        std::fs::create_dir_all(relays.path()).unwrap();
        std::fs::write(relays.path().join(format!("{key}.json")), b"{}").unwrap();
        let at = Attachment {
            conf: &conf,
            env: &env,
            ipam: &Ipam::None,
            agent: &agent,
        };
        let e = del(&at).unwrap_err();
        assert_eq!(e.code(), 5, "{e}");
        assert!(e.to_string().contains("membership"), "{e}");
        assert!(!relays.path().join(format!("{key}.json")).exists());
        assert_eq!(
            fake.calls(),
            [format!("drop {key}"), format!("dropRelay {key}")]
        );
        let _ = std::fs::remove_dir_all(agent.records::<RelayRecord>().path().parent().unwrap());
    }

    #[test]
    fn retire_makes_the_attachment_inert_and_hands_the_multicast_route_over() {
        let conf = MacvlanConf::parse(
            br#"{"cniVersion":"1.0.0","name":"del","type":"ros-macvlan","multicast":{"groups":[]},"agentSocket":"/tmp/ros-macvlan-unit/agent.sock"}"#,
        )
        .unwrap();
        let env = env("ctr-del", "net1");
        let nl = Fake::new();
        let up = LinkFlags::Up | LinkFlags::Multicast;
        let eth0 = nl.with_link("eth0", Some(InfoKind::Veth), up);
        let net1 = nl.with_link("net1", Some(InfoKind::MacVlan), up);
        let net2 = nl.with_link("net2", Some(InfoKind::MacVlan), up);
        let mut ops = vec![Op::add_address(net1, "198.51.100.9/24".parse().unwrap())];
        ops.extend(multicast::route_ops(net1, &MulticastConf::default()));
        nl.apply(ops).unwrap();
        multicast::mark_other_interfaces(&nl, "net1", None).unwrap();
        nl.clear_requests();

        let at = Attachment {
            conf: &conf,
            env: &env,
            ipam: &Ipam::None,
            agent: &agent(&conf),
        };
        let retired = retire(&at, &nl, &["net2".to_owned()]).unwrap();
        assert!(retired.failures.is_empty(), "{:?}", retired.failures);
        assert_eq!(
            retired.doomed,
            vec![net1],
            "only our link is left to delete"
        );
        let ours = nl.link(net1).unwrap();
        assert!(
            ours.name.starts_with(&retired_prefix(&env)),
            "{}",
            ours.name
        );
        assert_eq!(nl.addresses(Some(net1)).unwrap(), vec![]);
        let routes = nl.all_routes();
        assert!(routes.iter().all(|r| r.oif != Some(net1)), "{routes:?}");
        assert!(
            routes
                .iter()
                .any(|r| r.oif == Some(net2) && r.dst.to_string() == "224.0.0.0/4"),
            "the multicast route moved to the heir: {routes:?}"
        );
        assert!(
            nl.link(eth0).unwrap().is_multicast(),
            "eth0's mark given back"
        );

        // Without an heir the route goes with the link and nobody gets it.
        let nl2 = Fake::new();
        let a = nl2.with_link("net1", Some(InfoKind::MacVlan), up);
        let b = nl2.with_link("net2", Some(InfoKind::MacVlan), up);
        nl2.apply(multicast::route_ops(a, &MulticastConf::default()))
            .unwrap();
        assert_eq!(retire(&at, &nl2, &[]).unwrap().doomed, vec![a]);
        assert!(nl2.all_routes().iter().all(|r| r.oif != Some(b)));
    }
}
