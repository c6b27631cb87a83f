//! The plugin's install into the node's CNI bin dir (the agent's at start, and
//! `ros-macvlan install`'s), and the node policy's mirror from its ConfigMap. Copies this
//! binary into the dir so that a pod start running the plugin at that moment never sees a half-written file
//! (temporary file in the same directory, fsync, rename) and a running plugin never causes
//! "text file busy" (rename replaces the directory entry, not the file being executed).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const BINARY_NAME: &str = "ros-macvlan";

#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The file was written (new, or replacing a different one).
    Written,
    /// The same bytes and mode were already there.
    UpToDate,
}

/// Installs `source` as `<dir>/ros-macvlan`, idempotently.
pub fn install(source: &Path, dir: &Path) -> io::Result<Installed> {
    place(source, dir, BINARY_NAME, 0o755)
}

/// Puts a copy of `source` at `<dir>/<name>` with `mode`: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. Readers see the old file or the new
/// one, whole. The copy is streamed, as is the comparison with what is there: a binary is
/// never whole in memory, which the DaemonSet's memory limit would not allow a debug build.
pub fn place(source: &Path, dir: &Path, name: &str, mode: u32) -> io::Result<Installed> {
    let target = dir.join(name);
    if is_placed(source, &target, mode) {
        return Ok(Installed::UpToDate);
    }
    fs::create_dir_all(dir)?;
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = write_synced(&temp, source, mode).and_then(|_| fs::rename(&temp, &target));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    // The rename is durable once the directory itself is synced.
    File::open(dir)?.sync_all()?;
    Ok(Installed::Written)
}

fn write_synced(path: &Path, source: &Path, mode: u32) -> io::Result<()> {
    let mut from = File::open(source)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    io::copy(&mut from, &mut f)?;
    // The mode requested at creation is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()
}

pub fn is_placed(source: &Path, target: &Path, mode: u32) -> bool {
    let mode_ok = fs::metadata(target).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
    mode_ok && same_contents(source, target).unwrap_or(false)
}

/// Whether two files hold the same bytes, read a chunk at a time.
fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    const CHUNK: u64 = 64 * 1024;
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    loop {
        x.clear();
        y.clear();
        (&mut a).take(CHUNK).read_to_end(&mut x)?;
        (&mut b).take(CHUNK).read_to_end(&mut y)?;
        if x != y {
            return Ok(false);
        }
        if x.is_empty() {
            return Ok(true);
        }
    }
}

fn policy_file_name() -> &'static str {
    Path::new(crate::node::policy::DEFAULT_POLICY_FILE)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("policy.json")
}

/// Where `sync_policy` mirrors the policy into `dir`.
pub fn mirrored_policy(dir: &Path) -> PathBuf {
    dir.join(policy_file_name())
}

/// The node policy follows the ConfigMap: copied when the ConfigMap has one, removed when
/// it has none (then everything is allowed again).
pub fn sync_policy(source: &Path, dir: &Path) -> io::Result<&'static str> {
    let name = policy_file_name();
    match File::open(source) {
        Ok(_) => match place(source, dir, name, 0o644)? {
            Installed::Written => Ok("policy installed"),
            Installed::UpToDate => Ok("policy current"),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::remove_file(dir.join(name)) {
            Ok(()) => Ok("policy removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok("no policy"),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_exact() {
        let dir = std::env::temp_dir().join(format!("rmv-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let src = std::env::temp_dir().join(format!("rmv-install-src-{}", std::process::id()));
        fs::write(&src, b"#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(install(&src, &dir).unwrap(), Installed::Written);
        assert_eq!(install(&src, &dir).unwrap(), Installed::UpToDate);
        let target = dir.join(BINARY_NAME);
        assert_eq!(fs::read(&target).unwrap(), fs::read(&src).unwrap());
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        fs::write(&src, b"#!/bin/sh\nexit 1\n").unwrap();
        assert_eq!(install(&src, &dir).unwrap(), Installed::Written);
        assert_eq!(fs::read(&target).unwrap(), b"#!/bin/sh\nexit 1\n");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from(BINARY_NAME)]);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&src).unwrap();
    }

    /// Larger than one chunk of the streamed comparison, differing only in the last byte
    /// of a later chunk: not the same, and installing replaces it.
    #[test]
    fn a_difference_past_the_first_chunk_is_seen() {
        let base = std::env::temp_dir().join(format!("rmv-install-big-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let (src, dir) = (base.join("src"), base.join("bin"));
        let mut bytes = vec![7u8; 200 * 1024 + 3];
        fs::write(&src, &bytes).unwrap();
        assert_eq!(install(&src, &dir).unwrap(), Installed::Written);
        assert_eq!(install(&src, &dir).unwrap(), Installed::UpToDate);
        *bytes.last_mut().unwrap() = 8;
        fs::write(&src, &bytes).unwrap();
        assert!(!same_contents(&src, &dir.join(BINARY_NAME)).unwrap());
        assert_eq!(install(&src, &dir).unwrap(), Installed::Written);
        assert_eq!(fs::read(dir.join(BINARY_NAME)).unwrap(), bytes);
        fs::remove_dir_all(&base).unwrap();
    }
}
