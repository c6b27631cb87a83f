//! Network namespaces. The only place that calls setns: the calling thread enters a
//! namespace for one short job, such as opening a socket that then keeps working in that
//! namespace, and comes back before anything else runs on it. setns is per thread, so
//! other threads never notice; and no thread is started for it, which would cost more
//! than the job.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};

use crate::cni::{Error, Kind, Result};

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens the namespace at `path` (a bind mount such as /var/run/netns/x, or /proc/PID/ns/net).
    /// A namespace that does not exist is "container unknown" (code 3): there is nothing for
    /// the runtime to clean up.
    pub fn open(path: &str) -> Result<Netns> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::new(
                Kind::ContainerUnknown,
                format!("network namespace {path} does not exist (was the pod sandbox removed?)"),
            ),
            _ => Error::new(
                Kind::Netns,
                format!("cannot open network namespace {path}: {e}"),
            ),
        })?;
        let ns = Netns {
            file,
            path: path.to_owned(),
        };
        ns.verify_is_netns()?;
        Ok(ns)
    }

    /// The namespace the plugin itself runs in.
    pub fn current() -> Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Whether this is the namespace the calling thread is in.
    pub fn is_current(&self) -> Result<bool> {
        let here = Netns::current()?;
        let same = |ns: &Netns| {
            ns.inode().map_err(|e| {
                Error::new(
                    Kind::Netns,
                    format!("cannot stat network namespace {}: {e}", ns.path),
                )
            })
        };
        Ok(same(self)? == same(&here)?)
    }

    /// The namespace's inode: two handles with the same inode are the same namespace.
    pub fn inode(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.ino())
    }

    /// Runs `job` with the current thread inside this namespace, then returns the thread to
    /// the namespace it was in, even if `job` panics.
    pub fn run<T>(&self, job: impl FnOnce() -> T) -> Result<T> {
        let home = File::open("/proc/thread-self/ns/net").map_err(|e| {
            Error::new(
                Kind::Netns,
                format!("cannot open the current network namespace: {e}"),
            )
        })?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            Error::new(
                Kind::Netns,
                format!("cannot enter network namespace {}: {e}", self.path),
            )
        })?;
        let _return = GoBack(home);
        Ok(job())
    }

    /// A file that is not a network namespace (a regular file, another namespace type) is
    /// refused before anything is done with it.
    fn verify_is_netns(&self) -> Result<()> {
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor's namespace type.
        match unsafe { ns_get_nstype(self.file.as_raw_fd()) } {
            Ok(t) if t == CloneFlags::CLONE_NEWNET.bits() => Ok(()),
            Ok(_) => Err(Error::new(
                Kind::Netns,
                format!("{} is not a network namespace", self.path),
            )),
            Err(Errno::ENOTTY) => Err(Error::new(
                Kind::Netns,
                format!("{} is not a namespace file", self.path),
            )),
            Err(e) => Err(Error::new(
                Kind::Netns,
                format!("cannot inspect namespace {}: {e}", self.path),
            )),
        }
    }
}

/// Takes the thread back to its namespace when dropped.
struct GoBack(File);

impl Drop for GoBack {
    fn drop(&mut self) {
        if setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            // Carrying on in the wrong namespace would change the wrong network.
            eprintln!("ros-macvlan: cannot return to the original network namespace; aborting");
            std::process::abort();
        }
    }
}

// NS_GET_NSTYPE is _IO(0xb7, 0x3) (linux/nsfs.h).
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);
