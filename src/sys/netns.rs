//! Network namespaces. The only place that calls setns: the calling thread enters a
//! namespace for one short job, such as opening a socket that then keeps working in that
//! namespace, and comes back before anything else runs on it. setns is per thread, so
//! other threads never notice; and no thread is started for it, which would cost more
//! than the job.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};

/// What can go wrong with a namespace; the plugin maps it to CNI codes (cni::error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path names nothing: the pod sandbox is gone.
    #[error("network namespace {path} does not exist (was the pod sandbox removed?)")]
    Missing { path: String },
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotANetns { path: String },
    #[error("cannot inspect namespace {path}: {source}")]
    Inspect { path: String, source: Errno },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: String, source: Errno },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The calling thread's own namespace.
const CURRENT: &str = "/proc/thread-self/ns/net";

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens the namespace at `path` (a bind mount such as /var/run/netns/x, or /proc/PID/ns/net).
    pub fn open(path: &str) -> Result<Netns> {
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::Missing { path: path.into() },
            _ => Error::Open {
                path: path.into(),
                source,
            },
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
        Netns::open(CURRENT)
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
        let inode = |ns: &Netns| {
            ns.inode().map_err(|source| Error::Open {
                path: ns.path.clone(),
                source,
            })
        };
        Ok(inode(self)? == inode(&here)?)
    }

    /// The namespace's inode: two handles with the same inode are the same namespace.
    pub fn inode(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.ino())
    }

    /// Runs `job` with the current thread inside this namespace, then returns the thread to
    /// the namespace it was in, even if `job` panics.
    pub fn run<T>(&self, job: impl FnOnce() -> T) -> Result<T> {
        let home = File::open(CURRENT).map_err(|source| Error::Open {
            path: CURRENT.into(),
            source,
        })?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
            path: self.path.clone(),
            source,
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
            // Another namespace type, or (ENOTTY) not a namespace file at all.
            Ok(_) | Err(Errno::ENOTTY) => Err(Error::NotANetns {
                path: self.path.clone(),
            }),
            Err(source) => Err(Error::Inspect {
                path: self.path.clone(),
                source,
            }),
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

nix::ioctl_none_bad!(ns_get_nstype, nix::libc::NS_GET_NSTYPE);
