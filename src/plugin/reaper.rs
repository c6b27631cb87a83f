//! What the kernel is slow to tear down, left to a detached child process so that the
//! plugin's call does not wait for it (a runtime waits for the plugin to exit, and exit
//! would wait too):
//! - DEL's last step, removing links. The kernel's removal of a link waits for RCU grace
//!   periods, about 20 ms and most of a DEL, while the link is already inert
//!   (`macvlan::del` took it down and out of the way); with `waitForLinkRemoval` DEL waits
//!   itself.
//! - ADD's ARP socket (duplicate detection): closing a packet socket waits for a grace
//!   period too (packet_release's synchronize_net, 8 to 20 ms here), more than the rest of
//!   an ADD.

use std::os::fd::OwnedFd;

use nix::unistd::{
    close, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, read, setsid, ForkResult,
};

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

/// Closes `fd` in a detached child, after this process closed its copy (so the child's
/// close is the last, the one that waits); here when no child can be made.
pub fn close_detached(fd: OwnedFd) {
    let Ok((parent_open, child_wait)) = pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return drop(fd);
    };
    // SAFETY: the child calls only async-signal-safe functions (setsid, close, read, _exit;
    // no allocation), so it is sound even if the plugin had other threads.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = setsid();
            for stdio in 0..=2 {
                // The runtime reads the plugin's output until every writer is gone.
                let _ = close(stdio);
            }
            drop(parent_open);
            // Returns (end of file) once the parent closed its end, after its copy of `fd`.
            let _ = read(&child_wait, &mut [0u8; 1]);
            drop(fd);
            // SAFETY: as in `delete_links`.
            unsafe { nix::libc::_exit(0) }
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(fd);
            drop(parent_open);
        }
        Err(_) => drop(fd),
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

    /// The child closes the descriptor, and it is the last to: the read end of a pipe whose
    /// write end went to `close_detached` sees its end of file.
    #[test]
    fn a_descriptor_closed_detached_is_closed_by_the_child_last() {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let (reading, writing) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        close_detached(writing);
        let mut fds = [PollFd::new(reading.as_fd(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::from(5000u16)).unwrap(),
            1,
            "closed within 5 s"
        );
        assert_eq!(read(&reading, &mut [0u8; 1]).unwrap(), 0, "end of file");
    }

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
