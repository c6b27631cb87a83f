//! The host-local address store, byte for byte the reference plugin's: under
//! `<dataDir>/<network>/`, one file per claimed address holding `<container id>\r\n<ifname>`,
//! `last_reserved_ip.<range set index>`, and a `lock` file taken with flock by every writer
//! (ours and the reference's), so both plugins can share one store.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::cni::{Error, Result};

const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";
/// Where a claim is written in full before it is linked into place under its address.
const STAGING: &str = ".claim-staging";

/// Beside the reference's files, one record per attachment (in a directory the reference
/// ignores): the addresses it holds, so DEL reads a few files instead of every claim, and what
/// tells whether its pod still exists, so `ros-macvlan gc` can release the claims of pods
/// that vanished without a DEL (reboots, lost DELs).
const RECORD_DIR: &str = ".ros-macvlan";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    /// The pod's netns path when the claim was made; gone means the pod is gone.
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// Who holds a claim, as the claim file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub container_id: String,
    /// Empty for claims in the reference's old format (ID only).
    pub ifname: String,
}

impl Holder {
    fn parse(content: &str) -> Option<Holder> {
        let t = content.trim();
        if t.is_empty() {
            return None;
        }
        let (id, ifname) = t.split_once(LINE_BREAK).unwrap_or((t, ""));
        Some(Holder {
            container_id: id.trim().to_owned(),
            ifname: ifname.trim().to_owned(),
        })
    }

    /// The reference's matching rule: `id\r\nifname`, or an old-format file holding the id alone.
    fn matches(&self, id: &str, ifname: &str) -> bool {
        self.container_id == id && (self.ifname == ifname || self.ifname.is_empty())
    }
}

/// The store of one network, locked for as long as it lives.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("open {}", lock_path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Io(format!("lock {}: {e}", lock_path.display())))?;
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn claim_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
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
        let staging = self.dir.join(STAGING);
        let _ = fs::remove_file(&staging);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&staging)
            .map_err(|e| Error::io(format!("create {}", staging.display()), e))?;
        f.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes())
            .map_err(|e| Error::io(format!("write {}", staging.display()), e))?;
        drop(f);
        let target = self.claim_path(ip);
        let mut linked = fs::hard_link(&staging, &target);
        if matches!(&linked, Err(e) if e.kind() == ErrorKind::AlreadyExists)
            && self.holder_of(ip).is_none()
        {
            let _ = fs::remove_file(&target);
            linked = fs::hard_link(&staging, &target);
        }
        let _ = fs::remove_file(&staging);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io(format!("claim {}", target.display()), e)),
        }
        let last = self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_set}"));
        overwrite(&last, ip.to_string().as_bytes())
            .map_err(|e| Error::io(format!("write {}", last.display()), e))?;
        Ok(true)
    }

    pub fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        let s =
            fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_set}"))).ok()?;
        s.trim().parse().ok()
    }

    /// The holder of one address; `None` when unclaimed or the claim file is empty.
    pub fn holder_of(&self, ip: IpAddr) -> Option<Holder> {
        fs::read_to_string(self.claim_path(ip))
            .ok()
            .and_then(|c| Holder::parse(&c))
    }

    /// Every claim in the store (files named by an address).
    pub fn claims(&self) -> Result<Vec<(IpAddr, Option<Holder>)>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("read {}", self.dir.display()), e))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<IpAddr>().ok())
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
            if self.holder_of(*ip).is_some_and(|h| h.matches(id, ifname)) {
                self.release_ip(*ip)?;
            } else {
                all = false;
            }
        }
        Ok(all)
    }

    fn record_path(&self, id: &str, ifname: &str) -> PathBuf {
        // Container IDs hold no '@', so the name maps back to exactly one attachment.
        self.dir.join(RECORD_DIR).join(format!("{id}@{ifname}"))
    }

    /// Writes the record whole (temporary file, then rename) or not at all.
    pub fn write_record(&self, record: &Record) -> Result<()> {
        let dir = self.dir.join(RECORD_DIR);
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let path = self.record_path(&record.container_id, &record.ifname);
        let temp = dir.join(".staging");
        let body = serde_json::to_vec(record).map_err(|e| Error::Io(e.to_string()))?;
        fs::write(&temp, body)
            .and_then(|_| fs::rename(&temp, &path))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    pub fn read_record(&self, id: &str, ifname: &str) -> Option<Record> {
        let bytes = fs::read(self.record_path(id, ifname)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove_record(&self, id: &str, ifname: &str) {
        let _ = fs::remove_file(self.record_path(id, ifname));
    }

    /// Every readable record of this network.
    pub fn records(&self) -> Vec<Record> {
        fs::read_dir(self.dir.join(RECORD_DIR))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The addresses the attachment's record names that it still holds.
    pub fn recorded_holdings(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.read_record(id, ifname)
            .map(|r| {
                r.ips
                    .into_iter()
                    .filter(|ip| self.holder_of(*ip).is_some_and(|h| h.matches(id, ifname)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn release_ip(&self, ip: IpAddr) -> Result<()> {
        match fs::remove_file(self.claim_path(ip)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(
                format!("release {}", self.claim_path(ip).display()),
                e,
            )),
            _ => Ok(()),
        }
    }
}

/// Replaces a small file's content in place: writing over it and cutting what is left,
/// rather than truncating it first, which makes the filesystem free and reallocate its
/// block (the largest cost of an ADD's file work on ext4). Readers hold the store lock,
/// so none sees it half-written.
fn overwrite(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all_at(content, 0)?;
    if f.metadata()?.len() > content.len() as u64 {
        f.set_len(content.len() as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rmv-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn claim_file_has_reference_format() {
        let d = temp_dir("fmt");
        let s = Store::open(&d, "net").unwrap();
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
        let s = Store::open(&d, "net").unwrap();
        fs::write(d.join("net/198.51.100.7"), b"").unwrap();
        assert!(s
            .reserve("198.51.100.7".parse().unwrap(), "cid", "net1", 0)
            .unwrap());
        fs::write(d.join("net/198.51.100.8"), b"old\n").unwrap();
        assert_eq!(s.release("old", "net1").unwrap().len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
