//! The last step of DEL: removing links. The kernel's removal of a link waits for RCU grace
//! periods, about 20 ms and most of a DEL, while the link is already inert (`macvlan::del`
//! took it down and out of the way). So by default a child process, detached from the
//! runtime's pipes, waits for that, and DEL returns at once; with `waitForLinkRemoval`
//! DEL waits itself.

use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, setsid, ForkResult};

use crate::cni::Result;
use crate::sys::netlink::{Op, Rtnl};

/// Deletes `links` (of `nl`'s namespace): here when `wait`, else in a detached child.
pub fn delete_links(nl: &dyn Rtnl, links: &[u32], wait: bool) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let ops: Vec<Op> = links.iter().map(|i| Op::del_link(*i)).collect();
    if wait {
        return Ok(nl.apply(ops)?);
    }
    // SAFETY: the plugin is single-threaded (its runtime is a current-thread one, with no
    // worker threads), so the child starts with every lock free; it talks to the kernel on
    // a runtime of its own and then _exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            detach();
            let deleted = nl.child_connection().and_then(|child| child.apply(ops));
            let code = i32::from(deleted.is_err());
            // SAFETY: _exit(2) has no preconditions; it is unsafe only as a foreign function,
            // and nix has no wrapper for it. It (unlike std::process::exit) skips the parent's
            // atexit work and buffered output, which are the parent's to finish.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { .. }) => Ok(()),
        // No process to hand it to: wait here after all.
        Err(_) => Ok(nl.apply(ops)?),
    }
}

/// Leaves the runtime's session and pipes: the runtime waits for the plugin's output to
/// close, and must not wait for this child.
fn detach() {
    let _ = setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = dup2_stdin(&null);
        let _ = dup2_stdout(&null);
        let _ = dup2_stderr(&null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testing::{Fake, Request};
    use netlink_packet_route::link::{InfoKind, LinkFlags};

    #[test]
    fn waiting_deletes_every_link_in_one_exchange_and_nothing_asks_nothing() {
        let nl = Fake::new();
        let a = nl.with_link(
            "rmv00000000aaaa",
            Some(InfoKind::MacVlan),
            LinkFlags::empty(),
        );
        let b = nl.with_link(
            "rmv00000000bbbb",
            Some(InfoKind::MacVlan),
            LinkFlags::empty(),
        );
        let kept = nl.with_link("eth0", Some(InfoKind::Veth), LinkFlags::Up);
        delete_links(&nl, &[], false).unwrap();
        assert_eq!(nl.requests(), vec![], "no links: no child, no request");

        delete_links(&nl, &[a, b], true).unwrap();
        assert_eq!(
            nl.requests(),
            vec![Request::Op(Op::del_link(a)), Request::Op(Op::del_link(b))]
        );
        let left: Vec<u32> = nl.links().unwrap().iter().map(|l| l.index).collect();
        assert_eq!(left, vec![kept]);
        // A link gone already (an earlier DEL's reaper finished) is no failure.
        delete_links(&nl, &[a], true).unwrap();
    }
}
