//! Paths a NetworkAttachmentDefinition names (`logFile`, host-local's `dataDir`) lead only
//! into directories the node allows. A NAD is written by a namespace admin while the plugin
//! runs as root on the node: unchecked, such a path makes it create or append to any file
//! there.
//!
//! A path is checked twice. By its text first, before anything is opened: absolute, no
//! `..`, below one of the allowed roots. Then, when it is used, every directory below the
//! root is opened relative to its parent with O_NOFOLLOW, and files relative to their
//! directory the same way, so a symbolic link inside an allowed directory never leads out of
//! it, and nothing can swap a component between a check and its use. The roots themselves
//! are the node's own choice and are opened as they are (a root may be a symlink).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};

/// Why a path was refused, or could not be used. Every variant but `Io` is the path's own
/// fault (what the config names); `Io` is the node's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// By its text, the path leads outside the allowed directories.
    #[error(
        "{key} {path:?} {why}; allowed directories: {}; use a path below one of them, or {hint}",
        list(.allowed)
    )]
    Outside {
        /// The config key that named it.
        key: &'static str,
        path: String,
        /// What is wrong with its text.
        why: &'static str,
        allowed: Vec<PathBuf>,
        /// How the node can allow more.
        hint: String,
    },
    /// A file's path that names an allowed directory itself.
    #[error("{key} {path:?} names an allowed directory, not a file in it")]
    NoFileName { key: &'static str, path: String },
    /// A component below the root is a symbolic link.
    #[error(
        "{key}: {at} is a symbolic link; below {root} links are not followed: name the real path"
    )]
    Symlink {
        key: &'static str,
        at: PathBuf,
        root: PathBuf,
    },
    /// A component below the root is not a directory.
    #[error("{key}: {at} is not a directory")]
    NotADirectory { key: &'static str, at: PathBuf },
    /// The file is a directory or a FIFO without a reader, not a regular file.
    #[error("{key}: {at} is not a regular file")]
    NotARegularFile { key: &'static str, at: PathBuf },
    /// A file to read that is neither one the node lists nor below a directory it allows.
    /// The refusal is decided by the text alone, so it says nothing of what exists there.
    #[error(
        "{key} {path:?} is not a file the node allows to be read; use one of {}, a file below {}, or {hint}",
        list(.files),
        if .dirs.is_empty() { "an allowed directory (none on this node)".to_owned() } else { list(.dirs) }
    )]
    NotReadable {
        key: &'static str,
        path: String,
        files: Vec<PathBuf>,
        dirs: Vec<PathBuf>,
        hint: String,
    },
    /// A file to read that is larger than the bound.
    #[error("{key}: {at} is larger than {limit} bytes")]
    TooLarge {
        key: &'static str,
        at: PathBuf,
        limit: u64,
    },
    /// The node's trouble (permissions, a full or read-only disk), not the path's.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn list(dirs: &[PathBuf]) -> String {
    let v: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    v.join(", ")
}

/// The mode of every file the plugin creates below an allowed directory (owned by root, as
/// the plugin runs as root).
pub const FILE_MODE: u32 = 0o640;

/// The directories one kind of NAD path may lead into.
#[derive(Debug, Clone)]
pub struct Roots {
    dirs: Vec<PathBuf>,
    /// The mode of the directories the plugin creates, the roots included.
    dir_mode: u32,
    /// Tells, in a refusal, how the node can allow more (the node policy's key and file).
    widen_hint: String,
}

impl Roots {
    pub fn new(dirs: Vec<PathBuf>, dir_mode: u32, widen_hint: impl Into<String>) -> Roots {
        Roots {
            dirs,
            dir_mode,
            widen_hint: widen_hint.into(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Checks the directory `path`, the value of config key `key`, by its text alone: it
    /// must be absolute, hold no `..`, and lie in (or be) one of the roots.
    pub fn confine(&self, key: &'static str, path: &str) -> Result<ConfinedPath> {
        let p = Path::new(path);
        let refuse = |why| Error::Outside {
            key,
            path: path.to_owned(),
            why,
            allowed: self.dirs.clone(),
            hint: self.widen_hint.clone(),
        };
        if !p.is_absolute() {
            return Err(refuse("is not an absolute path"));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("contains '..'"));
        }
        // The deepest root that holds it: a root the node lists is trusted as it is, also
        // when it lies below another one through a symlink.
        let root = self
            .dirs
            .iter()
            .filter(|r| p.starts_with(r))
            .max_by_key(|r| r.components().count())
            .ok_or_else(|| refuse("is outside the allowed directories"))?;
        let below = p
            .strip_prefix(root)
            .expect("starts with the root")
            .iter()
            .map(OsStr::to_owned)
            .collect();
        Ok(ConfinedPath {
            key,
            root: root.clone(),
            below,
            dir_mode: self.dir_mode,
        })
    }

    /// As `confine`, for a file: the directory holding it and its name.
    pub fn confine_file(&self, key: &'static str, path: &str) -> Result<(ConfinedPath, OsString)> {
        let mut dir = self.confine(key, path)?;
        let name = dir.below.pop().ok_or_else(|| Error::NoFileName {
            key,
            path: path.to_owned(),
        })?;
        Ok((dir, name))
    }
}

/// A directory that passed `Roots::confine`: an allowed root and the names below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfinedPath {
    /// The config key it came from, for messages.
    key: &'static str,
    root: PathBuf,
    below: Vec<OsString>,
    dir_mode: u32,
}

impl ConfinedPath {
    /// A directory the operator names on the command line: trusted as it is, and the
    /// names below it confined to it.
    pub fn trusted(key: &'static str, dir: &Path, dir_mode: u32) -> ConfinedPath {
        ConfinedPath {
            key,
            root: dir.to_owned(),
            below: Vec::new(),
            dir_mode,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.below.iter().fold(self.root.clone(), |p, n| p.join(n))
    }

    /// The directory `name` inside this one.
    pub fn join(&self, name: &str) -> ConfinedPath {
        let mut p = self.clone();
        p.below.push(name.into());
        p
    }

    /// Opens the directory, creating what is missing (the root too).
    pub fn create_dir(&self) -> Result<Dir> {
        self.walk(true).map(|d| d.expect("created when missing"))
    }

    /// Opens the directory; `None` when it (or a directory above it) does not exist.
    pub fn open_dir(&self) -> Result<Option<Dir>> {
        self.walk(false)
    }

    fn walk(&self, create: bool) -> Result<Option<Dir>> {
        let create_mode = create.then_some(self.dir_mode);
        let mut dir = match Dir::open_root(&self.root, create_mode) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("{} {}", self.key, self.root.display()),
                    source,
                })
            }
        };
        for name in &self.below {
            dir = match dir.subdir(name, create_mode) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.refusal(&dir, name, e)),
            };
        }
        Ok(Some(dir))
    }

    /// A symlink or a non-directory on the way is the path's fault; anything else is the
    /// node's (`Io`).
    fn refusal(&self, parent: &Dir, name: &OsStr, e: io::Error) -> Error {
        let key = self.key;
        let at = parent.path.join(name);
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
        if !matches!(errno, Errno::ELOOP | Errno::ENOTDIR) {
            return Error::Io {
                what: format!("{key} {}", at.display()),
                source: e,
            };
        }
        // With O_NOFOLLOW and O_DIRECTORY, Linux answers ENOTDIR for a symlink.
        if errno == Errno::ELOOP || parent.is_a(name, SFlag::S_IFLNK) {
            Error::Symlink {
                key,
                at,
                root: self.root.clone(),
            }
        } else {
            Error::NotADirectory { key, at }
        }
    }

    /// Opens the file `name` in this directory for appending, creating it (and the
    /// directories) when missing. A symlink in its place is the path's fault.
    pub fn append_file(&self, name: &OsStr) -> Result<File> {
        let dir = self.create_dir()?;
        // O_NONBLOCK: a FIFO in its place must not hang the plugin (it does nothing to a
        // regular file).
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NONBLOCK;
        dir.open(name, flags)
            .map_err(|e| match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                Errno::EISDIR | Errno::ENXIO => Error::NotARegularFile {
                    key: self.key,
                    at: dir.path.join(name),
                },
                _ => self.refusal(&dir, name, e),
            })
    }
}

/// An open directory. Everything below it is opened relative to it, never through a
/// symbolic link; it keeps its path for messages only.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens a root, following symlinks (the node chose it), creating it and its parents
    /// with `create` mode when given and missing.
    fn open_root(path: &Path, create: Option<u32>) -> io::Result<Dir> {
        let flags = dir_flags() - OFlag::O_NOFOLLOW;
        let open = || {
            nix::fcntl::open(path, flags, Mode::empty()).map(|fd| Dir {
                fd,
                path: path.to_owned(),
            })
        };
        match (open(), create) {
            (Err(Errno::ENOENT), Some(mode)) => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(path)?;
                let dir = open()?;
                // The umask must not widen or narrow what the node asked for.
                fchmod(&dir.fd, Mode::from_bits_truncate(mode))?;
                Ok(dir)
            }
            (r, _) => Ok(r?),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory `name` in this one, never a symlink; created with `create` mode when
    /// given and missing.
    pub fn subdir(&self, name: &OsStr, create: Option<u32>) -> io::Result<Dir> {
        check_name(name)?;
        let open = || openat(&self.fd, name, dir_flags(), Mode::empty());
        let fd = match (open(), create) {
            (Err(Errno::ENOENT), Some(mode)) => {
                let made = match mkdirat(&self.fd, name, Mode::from_bits_truncate(mode)) {
                    Ok(()) => true,
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(e.into()),
                };
                let fd = open()?;
                if made {
                    fchmod(&fd, Mode::from_bits_truncate(mode))?;
                }
                fd
            }
            (r, _) => r?,
        };
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Opens the file `name` in this directory with `flags`, never through a symlink;
    /// created with FILE_MODE when `flags` say O_CREAT.
    pub fn open(&self, name: &OsStr, flags: OFlag) -> io::Result<File> {
        check_name(name)?;
        let fd = openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(FILE_MODE),
        )?;
        Ok(File::from(fd))
    }

    /// Writes the file `name` whole or not at all: the bytes go to a temporary file beside
    /// it (named for this process), which is then renamed into place, so a reader never sees
    /// half of it. The one writer of the plugin's records (the store's, the memberships',
    /// the agent's LAN state).
    pub fn write_whole(&self, name: &OsStr, bytes: &[u8]) -> io::Result<()> {
        let temp = OsString::from(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let written = self
            .open(&temp, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC)
            .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
            .and_then(|_| self.rename(&temp, name));
        if written.is_err() {
            let _ = self.remove(&temp);
        }
        written
    }

    pub fn read(&self, name: &OsStr) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open(name, OFlag::O_RDONLY)?.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Removes the file `name` (a symlink itself, never its target).
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        check_name(name)?;
        Ok(unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)?)
    }

    /// Makes `to` a second name of the file `from` (a symlink itself is linked, not
    /// followed).
    pub fn hard_link(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        Ok(linkat(&self.fd, from, &self.fd, to, AtFlags::empty())?)
    }

    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        Ok(renameat(&self.fd, from, &self.fd, to)?)
    }

    /// The names in this directory, each with whether it is a directory itself (a symlink
    /// to one is not).
    pub fn entries(&self) -> io::Result<Vec<(OsString, bool)>> {
        let fd = openat(&self.fd, ".", dir_flags(), Mode::empty())?;
        let mut listing = nix::dir::Dir::from_fd(fd)?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                Some(t) => t == nix::dir::Type::Directory,
                // Filesystems that do not say: ask without following.
                None => self.is_a(name, SFlag::S_IFDIR),
            };
            names.push((name.to_owned(), is_dir));
        }
        Ok(names)
    }

    /// Whether `name` in this directory is of file type `kind` (not following a symlink).
    fn is_a(&self, name: &OsStr, kind: SFlag) -> bool {
        fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == kind)
    }
}

/// The files a config may name for the plugin to read (host-local's `resolvConf`): the
/// node's own files, listed by path (a listed file may be a symlink: it is the node's own,
/// as /etc/resolv.conf often is), and any file below the `dirs` roots, opened there as every
/// confined path is. Whatever is named is opened without blocking, must be a regular file
/// and is read up to a bound: a FIFO or a device (/dev/zero) can neither hang nor exhaust
/// the plugin.
#[derive(Debug, Clone)]
pub struct Readable {
    files: Vec<PathBuf>,
    dirs: Roots,
}

impl Readable {
    pub fn new(files: Vec<PathBuf>, dirs: Roots) -> Readable {
        Readable { files, dirs }
    }

    /// Reads the file `path`, the value of config key `key`, if the node allows it: at most
    /// `limit` bytes (more is refused).
    pub fn read(&self, key: &'static str, path: &str, limit: u64) -> Result<Vec<u8>> {
        let listed = Path::new(path);
        let open = |file: io::Result<File>, at: &Path| -> Result<Vec<u8>> {
            let io_error = |source| Error::Io {
                what: format!("{key} {}", at.display()),
                source,
            };
            let file = file.map_err(io_error)?;
            if !file.metadata().map_err(io_error)?.is_file() {
                return Err(Error::NotARegularFile {
                    key,
                    at: at.to_owned(),
                });
            }
            let mut bytes = Vec::new();
            file.take(limit + 1)
                .read_to_end(&mut bytes)
                .map_err(io_error)?;
            if bytes.len() as u64 > limit {
                return Err(Error::TooLarge {
                    key,
                    at: at.to_owned(),
                    limit,
                });
            }
            Ok(bytes)
        };
        if self.files.iter().any(|f| f == listed) {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
                .open(listed);
            return open(file, listed);
        }
        let refuse = || Error::NotReadable {
            key,
            path: path.to_owned(),
            files: self.files.clone(),
            dirs: self.dirs.dirs.clone(),
            hint: self.dirs.widen_hint.clone(),
        };
        let (dir, name) = self.dirs.confine_file(key, path).map_err(|_| refuse())?;
        let at = dir.path().join(&name);
        let opened = match dir.open_dir()? {
            Some(d) => d.open(&name, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        open(opened, &at)
    }
}

/// For operations this module does not model (a unix socket bound below the directory, say):
/// use the descriptor with the *at calls, never the path.
impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Names below a directory are single components: no `/`, no `.` or `..`.
fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("rmv-confine-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn roots(dirs: &[&Path]) -> Roots {
        Roots::new(
            dirs.iter().map(|d| d.to_path_buf()).collect(),
            0o750,
            "ask for more",
        )
    }

    #[test]
    fn text_outside_the_roots_is_refused_naming_them() {
        let r = roots(&[Path::new("/var/lib/cni"), Path::new("/run/cni")]);
        for bad in [
            "/etc",
            "relative/dir",
            "/var/lib/cni/../../etc",
            "/var/lib/cnix",
            "/var/lib",
        ] {
            let e = r.confine("ipam.dataDir", bad).unwrap_err();
            assert!(matches!(e, Error::Outside { .. }), "{bad}: {e:?}");
            let m = e.to_string();
            assert!(
                m.contains("ipam.dataDir")
                    && m.contains("/var/lib/cni, /run/cni")
                    && m.contains("ask for more"),
                "{m}"
            );
        }
        let ok = r
            .confine("ipam.dataDir", "/var/lib/cni/./networks/")
            .unwrap();
        assert_eq!(ok.path(), Path::new("/var/lib/cni/networks"));
        assert_eq!(
            r.confine("k", "/run/cni").unwrap().path(),
            Path::new("/run/cni")
        );
        assert!(matches!(
            r.confine_file("logFile", "/run/cni"),
            Err(Error::NoFileName { .. })
        ));
        let (dir, name) = r.confine_file("logFile", "/run/cni/a/x.log").unwrap();
        assert_eq!(
            (dir.path(), name),
            (PathBuf::from("/run/cni/a"), "x.log".into())
        );
    }

    #[test]
    fn directories_are_created_with_the_mode_and_symlinks_are_not_followed() {
        let s = Scratch::new("walk");
        let outside = s.0.join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = s.0.join("root");
        let r = roots(&[&root]);
        let dir = r.confine("k", root.join("a/b").to_str().unwrap()).unwrap();
        assert!(
            dir.open_dir().unwrap().is_none(),
            "open_dir creates nothing"
        );
        assert!(!root.exists());
        dir.create_dir().unwrap();
        for d in [&root, &root.join("a"), &root.join("a/b")] {
            assert_eq!(
                std::fs::metadata(d).unwrap().mode() & 0o7777,
                0o750,
                "{d:?}"
            );
        }
        let f = dir.append_file("x.log".as_ref()).unwrap();
        let mode = f.metadata().unwrap().mode() & 0o7777;
        assert!(mode & !FILE_MODE == 0 && mode & 0o600 == 0o600, "{mode:o}");

        symlink(&outside, root.join("link")).unwrap();
        let through = r
            .confine("k", root.join("link/sub").to_str().unwrap())
            .unwrap();
        let e = through.create_dir().unwrap_err();
        assert!(matches!(e, Error::Symlink { .. }), "{e:?}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        symlink(outside.join("target.log"), root.join("a/b/evil.log")).unwrap();
        assert!(matches!(
            dir.append_file("evil.log".as_ref()),
            Err(Error::Symlink { .. })
        ));
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing was created through the links"
        );
    }

    #[test]
    fn a_root_may_be_a_symlink() {
        let s = Scratch::new("rootlink");
        std::fs::create_dir(s.0.join("real")).unwrap();
        symlink(s.0.join("real"), s.0.join("root")).unwrap();
        let r = roots(&[&s.0.join("root")]);
        let dir = r
            .confine("k", s.0.join("root/a").to_str().unwrap())
            .unwrap();
        dir.create_dir().unwrap();
        assert!(s.0.join("real/a").is_dir());
    }

    #[test]
    fn files_below_a_dir_stay_in_it() {
        let s = Scratch::new("files");
        let d = ConfinedPath::trusted("k", &s.0, 0o755)
            .create_dir()
            .unwrap();
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(d.open(bad.as_ref(), OFlag::O_RDONLY).is_err(), "{bad:?}");
        }
        std::fs::write(s.0.join("f"), b"x").unwrap();
        d.hard_link("f".as_ref(), "g".as_ref()).unwrap();
        d.rename("g".as_ref(), "h".as_ref()).unwrap();
        std::fs::create_dir(s.0.join("sub")).unwrap();
        symlink(s.0.join("sub"), s.0.join("link")).unwrap();
        let mut e = d.entries().unwrap();
        e.sort();
        assert_eq!(
            e,
            [
                ("f".into(), false),
                ("h".into(), false),
                ("link".into(), false),
                ("sub".into(), true)
            ]
        );
        assert_eq!(d.read("h".as_ref()).unwrap(), b"x");
        d.remove("link".as_ref()).unwrap();
        assert!(
            s.0.join("sub").is_dir(),
            "removing a link leaves its target"
        );
    }
}
