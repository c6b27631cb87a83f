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

/// What a netns path recorded at ADD says of its pod now. Only `Gone` lets a caller release
/// what the pod held: "cannot see it" is not "it is gone" (a process that does not see the
/// node's mounts, a mount hiding the directory, a permission refused), and releasing a
/// live pod's address hands it out twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// The path names the namespace (the one recorded, when its inode was).
    Here,
    /// Positively gone: the path names another namespace now, or it answers "not found"
    /// while its directory visibly holds the node's namespaces.
    Gone(String),
    /// Neither can be told; why, for the log.
    Unknown(String),
}

/// The inode of the namespace a path names (netns files are nsfs inodes): two paths with
/// the same inode name the same namespace.
pub fn inode_of(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino())
}

/// The pid namespace of the processes `/proc` shows: recorded beside a netns path, it says
/// whether a later `/proc/<pid>` names the same process numbering. It is this process's own
/// (its `ns/pid`, always readable, unlike pid 1's) when `/proc` shows this process under
/// its own pid; any other `/proc` is an error.
pub fn proc_pid_ns() -> std::io::Result<u64> {
    let shown = std::fs::read_link("/proc/self")?;
    if shown.as_os_str() != std::process::id().to_string().as_str() {
        return Err(std::io::Error::other(
            "/proc shows another pid namespace than this process's",
        ));
    }
    inode_of(std::path::Path::new("/proc/self/ns/pid"))
}

/// Judges `path`; `inode` is the namespace's inode as recorded, when it was, and
/// `proc_pid_ns` what `proc_pid_ns()` said when the path was recorded, when it was.
pub fn presence(path: &str, inode: Option<u64>, proc_pid_ns: Option<u64>) -> Presence {
    let p = std::path::Path::new(path);
    if let Some(process) = process_of(p) {
        return process_presence(path, &process, inode, proc_pid_ns);
    }
    match inode_of(p) {
        Ok(now) if inode.is_some_and(|i| i != now) => {
            Presence::Gone(format!("netns {path} names another namespace now"))
        }
        Ok(_) => Presence::Here,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(dir) = p.parent() else {
                return Presence::Unknown(format!("netns {path} has no directory"));
            };
            match shows_namespaces(dir) {
                Ok(true) => Presence::Gone(format!("netns {path} does not exist")),
                Ok(false) => Presence::Unknown(format!(
                    "netns {path} is not found, but {} shows no network namespace here, so it is not the node's netns directory as this process sees it (hidden by another mount, or not mounted in this container)",
                    dir.display()
                )),
                Err(e) => Presence::Unknown(format!(
                    "netns {path} is not found, and {} cannot be listed to tell whether it is the node's netns directory: {e}",
                    dir.display()
                )),
            }
        }
        Err(e) => Presence::Unknown(format!("netns {path} cannot be checked: {e}")),
    }
}

/// A netns path of a process (`/proc/<pid>/ns/net`, `/proc/<pid>/task/<tid>/ns/net`, as
/// some runtimes give): the process's directory, whose going ends the path for good (a pid
/// used again is another process, whose namespace the recorded inode tells apart).
fn process_of(path: &std::path::Path) -> Option<std::path::PathBuf> {
    let parts: Vec<&str> = path
        .strip_prefix("/proc")
        .ok()?
        .iter()
        .map(|c| c.to_str())
        .collect::<Option<_>>()?;
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let dir = match parts.as_slice() {
        [pid, "ns", "net"] if number(pid) => format!("/proc/{pid}"),
        [pid, "task", tid, "ns", "net"] if number(pid) && number(tid) => {
            format!("/proc/{pid}/task/{tid}")
        }
        _ => return None,
    };
    Some(dir.into())
}

/// A process's netns path: there while it names the recorded namespace; gone once it names
/// another, or once the process has exited in the process numbering it was recorded in
/// (`/proc` shows the same pid namespace and no such process). A `/proc` of another pid
/// namespace (an agent without the host's pids) tells nothing.
fn process_presence(
    path: &str,
    process: &std::path::Path,
    inode: Option<u64>,
    recorded_pid_ns: Option<u64>,
) -> Presence {
    match inode_of(std::path::Path::new(path)) {
        Ok(now) if inode.is_some_and(|i| i != now) => {
            return Presence::Gone(format!("netns {path} names another namespace now"))
        }
        Ok(_) => return Presence::Here,
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Presence::Unknown(format!("netns {path} cannot be checked: {e}"))
        }
        Err(_) => {}
    }
    let shown = proc_pid_ns();
    match (recorded_pid_ns, &shown) {
        (Some(recorded), Ok(now)) if recorded == *now => {}
        (None, _) => {
            return Presence::Unknown(format!(
                "netns {path} is not found, and its record does not say which pid namespace its process was in"
            ))
        }
        _ => {
            return Presence::Unknown(format!(
                "netns {path} is not found, but /proc here shows another pid namespace than the one its process was in ({})",
                shown.map_or_else(|e| e.to_string(), |n| format!("pid namespace {n}"))
            ))
        }
    }
    match std::fs::symlink_metadata(process) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Presence::Gone(format!("netns {path}: its process has exited"))
        }
        Ok(_) => Presence::Unknown(format!(
            "netns {path} is not found while {} is there (a process exiting)",
            process.display()
        )),
        Err(e) => Presence::Unknown(format!("netns {path} cannot be checked: {e}")),
    }
}

/// Whether `dir` holds at least one network namespace (a bind mount of nsfs): then it is a
/// netns directory as the node has it, not an empty stand-in. A directory that cannot be
/// listed (or not to its end) is an error, never "no namespace here".
fn shows_namespaces(dir: &std::path::Path) -> std::io::Result<bool> {
    use nix::sys::statfs::{statfs, NSFS_MAGIC};
    for entry in std::fs::read_dir(dir)? {
        if statfs(&entry?.path()).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Takes the thread back to its namespace when dropped.
struct GoBack(File);

impl Drop for GoBack {
    fn drop(&mut self) {
        if setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            // Carrying on in the wrong namespace would change the wrong network.
            log::error!("ros-macvlan: cannot return to the original network namespace; aborting");
            std::process::abort();
        }
    }
}

nix::ioctl_none_bad!(ns_get_nstype, nix::libc::NS_GET_NSTYPE);
