//! The host-local address store, byte for byte the reference plugin's: under
//! `<dataDir>/<network>/`, one file per claimed address holding `<container id>\r\n<ifname>`,
//! `last_reserved_ip.<range set index>`, and a `lock` file taken with flock by every writer
//! (ours and the reference's), so both plugins can share one store.

use std::cell::OnceCell;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use serde::{Deserialize, Serialize};

use crate::sys::confine::{self, ConfinedPath, Dir};

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's directory could not be reached through its confined path: a symlink or a
    /// non-directory on the way, or the node's I/O trouble.
    #[error(transparent)]
    Confine(#[from] confine::Error),
    /// A file of the store could not be read, written or removed.
    #[error("{what}: {source}")]
    Io {
        /// What was done, to which file.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The store's lock file could not be locked.
    #[error("lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// A record could not be encoded.
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
}

impl Error {
    fn io(what: String, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";
/// Where a claim is written in full before it is linked into place under its address.
const STAGING: &str = ".claim-staging";

/// Beside the reference's files, one record per attachment (in a directory the reference
/// ignores): the addresses it holds, so DEL reads a few files instead of every claim, and what
/// tells whether its pod still exists, so `ros-macvlan gc` can release the claims of pods
/// that vanished without a DEL (reboots, lost DELs).
pub const RECORD_DIR: &str = ".ros-macvlan";
const RECORD_DIR_MODE: u32 = 0o750;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    /// The pod's netns path when the claim was made; gone means the pod is gone.
    pub netns: String,
    /// The pid namespace `/proc` showed at ADD (`netns::proc_pid_ns`), for a netns path of a
    /// process (`/proc/<pid>/ns/net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_pid_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The identity of the config the claim was made under (none in records of older
    /// versions): only GC under that config releases it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// Who holds a claim, as the claim file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHolder {
    pub container_id: String,
    /// Empty for claims in the reference's old format (ID only).
    pub ifname: String,
}

impl ClaimHolder {
    fn parse(content: &str) -> Option<ClaimHolder> {
        let t = content.trim();
        if t.is_empty() {
            return None;
        }
        let (id, ifname) = t.split_once(LINE_BREAK).unwrap_or((t, ""));
        Some(ClaimHolder {
            container_id: id.trim().to_owned(),
            ifname: ifname.trim().to_owned(),
        })
    }

    /// The reference's matching rule: `id\r\nifname`, or an old-format file holding the id alone.
    fn matches(&self, id: &str, ifname: &str) -> bool {
        self.container_id == id && (self.ifname == ifname || self.ifname.is_empty())
    }
}

/// The store of one network, locked for as long as it lives. Every file is opened relative
/// to the network's directory and never through a symlink (see `confine`).
pub struct Store {
    dir: Dir,
    /// The records' directory once opened: ADD reads the record, then writes it.
    records: OnceCell<Dir>,
    _lock: Flock<File>,
}

impl Store {
    /// The store of `network` under `data_dir`, created when missing.
    pub fn open(data_dir: &ConfinedPath, network: &str) -> Result<Store> {
        Store::lock(data_dir.join(network).create_dir()?)
    }

    /// The store of `network` under `data_dir`; `None` when it does not exist.
    pub fn open_existing(data_dir: &ConfinedPath, network: &str) -> Result<Option<Store>> {
        data_dir
            .join(network)
            .open_dir()?
            .map(Store::lock)
            .transpose()
    }

    fn lock(dir: Dir) -> Result<Store> {
        let file = dir
            .open(OsStr::new("lock"), OFlag::O_RDWR | OFlag::O_CREAT)
            .map_err(|e| Error::io(format!("open {}", dir.path().join("lock").display()), e))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| Error::Lock {
                path: dir.path().join("lock"),
                source,
            })?;
        Ok(Store {
            dir,
            records: OnceCell::new(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Claims `ip` for the holder. Returns false when someone else holds it.
    ///
    /// The claim is written to a staging file and hard-linked into place, so a claim file
    /// is never seen empty or half-written, even if the plugin is killed mid-way. An empty
    /// claim file (left by a writer killed between create and write; every writer holds the
    /// lock, so none is being written now) holds nothing and is taken over.
    ///
    /// No fsync, as the reference plugin: a claim only has to outlive its pod, and a power
    /// loss that could lose the write ends every pod of the node with it. (It cost 0.4 ms
    /// of a 2 ms ADD.)
    pub fn reserve(&self, ip: IpAddr, id: &str, ifname: &str, range_set: usize) -> Result<bool> {
        let staging = OsStr::new(STAGING);
        let _ = self.dir.remove(staging);
        let mut f = self
            .dir
            .open(staging, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL)
            .map_err(|e| Error::io(format!("create {}", self.path_of(staging).display()), e))?;
        f.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes())
            .map_err(|e| Error::io(format!("write {}", self.path_of(staging).display()), e))?;
        drop(f);
        let target = ip.to_string();
        let target = OsStr::new(&target);
        let mut linked = self.dir.hard_link(staging, target);
        if matches!(&linked, Err(e) if e.kind() == ErrorKind::AlreadyExists)
            && self.holder_of(ip).is_none()
        {
            let _ = self.dir.remove(target);
            linked = self.dir.hard_link(staging, target);
        }
        let _ = self.dir.remove(staging);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(Error::io(
                    format!("claim {}", self.path_of(target).display()),
                    e,
                ))
            }
        }
        let last = last_reserved_name(range_set);
        if let Err(e) = self.overwrite(OsStr::new(&last), ip.to_string().as_bytes()) {
            // The caller releases only what it was told it claimed.
            let _ = self.dir.remove(target);
            let at = self.path_of(last.as_ref());
            return Err(Error::io(format!("write {}", at.display()), e));
        }
        Ok(true)
    }

    pub fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        let bytes = self
            .dir
            .read(OsStr::new(&last_reserved_name(range_set)))
            .ok()?;
        String::from_utf8(bytes).ok()?.trim().parse().ok()
    }

    /// The holder of one address; `None` when unclaimed or the claim file is empty.
    /// Whether a claim file for `ip` exists (whatever it holds: a half-written one is a
    /// claim too).
    pub fn is_claimed(&self, ip: IpAddr) -> bool {
        self.dir
            .open(OsStr::new(&ip.to_string()), nix::fcntl::OFlag::O_RDONLY)
            .is_ok()
    }

    pub fn holder_of(&self, ip: IpAddr) -> Option<ClaimHolder> {
        let bytes = self.dir.read(OsStr::new(&ip.to_string())).ok()?;
        ClaimHolder::parse(&String::from_utf8(bytes).ok()?)
    }

    /// Every claim in the store (files named by an address).
    pub fn claims(&self) -> Result<Vec<(IpAddr, Option<ClaimHolder>)>> {
        let entries = self
            .dir
            .entries()
            .map_err(|e| Error::io(format!("read {}", self.dir.path().display()), e))?;
        Ok(entries
            .into_iter()
            .filter_map(|(name, _)| name.to_str()?.parse::<IpAddr>().ok())
            .map(|ip| (ip, self.holder_of(ip)))
            .collect())
    }

    /// The addresses held by the attachment.
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .claims()?
            .into_iter()
            .filter(|(_, h)| h.as_ref().is_some_and(|h| h.matches(id, ifname)))
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Releases every address the attachment holds; returns them.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let ips = self.find(id, ifname)?;
        for ip in &ips {
            self.release_ip(*ip)?;
        }
        Ok(ips)
    }

    /// Releases the listed addresses where the attachment holds them, reading only those
    /// claim files. Returns whether it held every one of them.
    pub fn release_listed(&self, ips: &[IpAddr], id: &str, ifname: &str) -> Result<bool> {
        let mut all = true;
        for ip in ips {
            if self.holds(*ip, id, ifname) {
                self.release_ip(*ip)?;
            } else {
                all = false;
            }
        }
        Ok(all)
    }

    /// The directory of the records; created only when `create`.
    fn record_dir(&self, create: bool) -> std::io::Result<&Dir> {
        if let Some(dir) = self.records.get() {
            return Ok(dir);
        }
        let dir = self
            .dir
            .subdir(OsStr::new(RECORD_DIR), create.then_some(RECORD_DIR_MODE))?;
        Ok(self.records.get_or_init(|| dir))
    }

    /// Whether the attachment holds `ip`, as its claim file says (only that file is read).
    fn holds(&self, ip: IpAddr, id: &str, ifname: &str) -> bool {
        self.holder_of(ip).is_some_and(|h| h.matches(id, ifname))
    }

    fn record_name(id: &str, ifname: &str) -> String {
        // Container IDs hold no '@', so the name maps back to exactly one attachment.
        format!("{id}@{ifname}")
    }

    /// Writes the record whole (temporary file, then rename) or not at all.
    pub fn write_record(&self, record: &ClaimRecord) -> Result<()> {
        let name = Store::record_name(&record.container_id, &record.ifname);
        let path = self.dir.path().join(RECORD_DIR).join(&name);
        let body = serde_json::to_vec(record).map_err(Error::Encode)?;
        self.record_dir(true)
            .and_then(|dir| dir.write_whole(OsStr::new(&name), &body))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    pub fn read_record(&self, id: &str, ifname: &str) -> Option<ClaimRecord> {
        let bytes = self
            .record_dir(false)
            .ok()?
            .read(OsStr::new(&Store::record_name(id, ifname)))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove_record(&self, id: &str, ifname: &str) {
        if let Ok(dir) = self.record_dir(false) {
            let _ = dir.remove(OsStr::new(&Store::record_name(id, ifname)));
        }
    }

    /// Every readable record of this network.
    pub fn records(&self) -> Vec<ClaimRecord> {
        let Ok(dir) = self.record_dir(false) else {
            return Vec::new();
        };
        dir.entries()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, _)| dir.read(&name).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// The addresses the attachment's record names that it still holds.
    pub fn recorded_holdings(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.read_record(id, ifname)
            .map(|r| {
                r.ips
                    .into_iter()
                    .filter(|ip| self.holds(*ip, id, ifname))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn release_ip(&self, ip: IpAddr) -> Result<()> {
        let name = ip.to_string();
        match self.dir.remove(OsStr::new(&name)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(
                format!("release {}", self.path_of(name.as_ref()).display()),
                e,
            )),
            _ => Ok(()),
        }
    }

    fn path_of(&self, name: &OsStr) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces a small file's content in place: writing over it and cutting what is left,
    /// rather than truncating it first, which makes the filesystem free and reallocate its
    /// block (the largest cost of an ADD's file work on ext4). Readers hold the store lock,
    /// so none sees it half-written.
    fn overwrite(&self, name: &OsStr, content: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = self.dir.open(name, OFlag::O_WRONLY | OFlag::O_CREAT)?;
        f.write_all_at(content, 0)?;
        if f.metadata()?.len() > content.len() as u64 {
            f.set_len(content.len() as u64)?;
        }
        Ok(())
    }
}

fn last_reserved_name(range_set: usize) -> String {
    format!("{LAST_RESERVED_PREFIX}{range_set}")
}

/// The store's refusals are its confined path's; anything else it meets is I/O (code 5).
impl From<Error> for crate::cni::Error {
    fn from(e: Error) -> crate::cni::Error {
        use crate::cni::{Error as CniError, Kind};
        use Error as Store;
        match e {
            Store::Confine(e) => e.into(),
            Store::Io { .. } | Store::Lock { .. } | Store::Encode(_) => {
                CniError::new(Kind::Io, e.to_string()).with_source(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;

    /// A store behind a symlink is refused with code 7 naming the path; a store the node
    /// cannot write answers 5; each keeps the error it came from (cni::Error from ours).
    #[test]
    fn store_errors_reach_the_runtime_as_before() {
        use crate::cni::Error;
        use crate::sys::confine::ConfinedPath;
        use std::os::unix::fs::symlink;

        struct Scratch(std::path::PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let s = Scratch(std::env::temp_dir().join(format!("rmv-error-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&s.0);
        std::fs::create_dir_all(s.0.join("elsewhere")).unwrap();
        symlink(s.0.join("elsewhere"), s.0.join("linked")).unwrap();
        let data = ConfinedPath::trusted("ipam.dataDir", &s.0, 0o755);
        let e = Error::from(Store::open(&data, "linked").err().unwrap());
        assert_eq!(e.code(), 7);
        assert_eq!(
            e.to_string(),
            format!(
                "ipam.dataDir: {0}/linked is a symbolic link; below {0} links are not followed: \
                 name the real path",
                s.0.display()
            )
        );

        let store = Store::open(&data, "net").unwrap();
        symlink(s.0.join("elsewhere/x"), s.0.join("net/last_reserved_ip.0")).unwrap();
        let e = Error::from(
            store
                .reserve("198.51.100.5".parse().unwrap(), "cid", "net1", 0)
                .unwrap_err(),
        );
        assert_eq!(e.code(), 5);
        assert!(
            e.to_string()
                .starts_with(&format!("write {}/net/last_reserved_ip.0: ", s.0.display())),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rmv-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn data(d: &Path) -> ConfinedPath {
        ConfinedPath::trusted("test dataDir", d, 0o755)
    }

    #[test]
    fn claim_file_has_reference_format() {
        let d = temp_dir("fmt");
        let s = Store::open(&data(&d), "net").unwrap();
        let ip: IpAddr = "198.51.100.5".parse().unwrap();
        assert!(s.reserve(ip, "cid", "net1", 0).unwrap());
        assert_eq!(
            fs::read(d.join("net/198.51.100.5")).unwrap(),
            b"cid\r\nnet1"
        );
        assert_eq!(
            fs::read(d.join("net/last_reserved_ip.0")).unwrap(),
            b"198.51.100.5"
        );
        assert!(d.join("net/lock").exists());
        assert!(!s.reserve(ip, "other", "net1", 0).unwrap());
        assert_eq!(s.release("cid", "net1").unwrap(), vec![ip]);
        assert!(s.find("cid", "net1").unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn empty_claim_is_taken_over_and_old_format_is_matched() {
        let d = temp_dir("empty");
        let s = Store::open(&data(&d), "net").unwrap();
        fs::write(d.join("net/198.51.100.7"), b"").unwrap();
        assert!(s
            .reserve("198.51.100.7".parse().unwrap(), "cid", "net1", 0)
            .unwrap());
        fs::write(d.join("net/198.51.100.8"), b"old\n").unwrap();
        assert_eq!(s.release("old", "net1").unwrap().len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_in_the_store_are_never_followed() {
        use std::os::unix::fs::symlink;
        let d = temp_dir("links");
        let outside = temp_dir("links-outside");
        fs::create_dir_all(&outside).unwrap();
        let target = outside.join("target");
        fs::write(&target, b"untouched").unwrap();

        // The network's directory itself a link: refused as the config's fault.
        fs::create_dir_all(&d).unwrap();
        symlink(&outside, d.join("linked")).unwrap();
        assert!(matches!(
            Store::open(&data(&d), "linked"),
            Err(Error::Confine(confine::Error::Symlink { .. }))
        ));

        // A claim file that is a link holds nothing, and is replaced, not written through.
        let s = Store::open(&data(&d), "net").unwrap();
        symlink(&target, d.join("net/198.51.100.9")).unwrap();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(s.holder_of(ip), None);
        assert!(s.reserve(ip, "cid", "net1", 0).unwrap());
        assert!(!d.join("net/198.51.100.9").is_symlink());

        // last_reserved_ip a link: the claim fails whole and is withdrawn.
        symlink(&target, d.join("net/last_reserved_ip.1")).unwrap();
        let ip2: IpAddr = "198.51.100.10".parse().unwrap();
        assert!(matches!(
            s.reserve(ip2, "cid", "net1", 1),
            Err(Error::Io { .. })
        ));
        assert_eq!(s.holder_of(ip2), None);
        assert_eq!(fs::read(&target).unwrap(), b"untouched");
        fs::remove_dir_all(&d).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
