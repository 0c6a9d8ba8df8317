//! The report directory as an open descriptor that loopwatch has checked.
//!
//! [`ReportDir`] opens the configured path with
//! `O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC`, so a symbolic link in its last
//! component is refused, never followed (links in the parent path are the
//! administrator's and are followed). It creates the directory mode 0700
//! when missing (exactly: the mode is set on the descriptor after `mkdir`,
//! whatever the umask), tightens an existing directory of ours that grants
//! group or other access to 0700 (logged once per store), and refuses a
//! directory owned by another user than the effective one.
//!
//! Before each use it checks that the descriptor still is the directory at
//! the path (same device and inode, not removed) and re-opens it otherwise,
//! so a directory deleted or replaced while the daemon runs is recreated or
//! checked again. Everything else the store does goes through the
//! descriptor this module hands out (`openat`, `renameat`, `unlinkat`,
//! `fstatat`, `fsync`); this module does not write, name or remove files.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

/// The only mode loopwatch leaves on its report directory.
const DIR_MODE: u32 = 0o700;

/// Why the directory cannot be used.
#[derive(Debug)]
pub(super) enum DirError {
    /// The directory is not one loopwatch trusts (a symbolic link, not a
    /// directory, another user's). It stays refused until it is fixed.
    Refused(io::Error),
    /// It could not be opened or created now (missing parent that cannot
    /// be created, no permission, read-only file system).
    Unusable(io::Error),
}

impl DirError {
    /// The OS error or the reason for the refusal.
    pub(super) fn into_io(self) -> io::Error {
        match self {
            DirError::Refused(e) | DirError::Unusable(e) => e,
        }
    }
}

impl std::fmt::Display for DirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirError::Refused(e) | DirError::Unusable(e) => e.fmt(f),
        }
    }
}

/// An open, checked report directory.
struct Opened {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
}

/// The report directory: its path and, once opened, its descriptor.
#[derive(Debug)]
pub(super) struct ReportDir {
    path: PathBuf,
    open: Option<Opened>,
    tightening_logged: bool,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened(dev {} ino {})", self.dev, self.ino)
    }
}

impl ReportDir {
    /// The directory at `path`, not opened yet.
    pub(super) fn new(path: PathBuf) -> Self {
        ReportDir {
            path,
            open: None,
            tightening_logged: false,
        }
    }

    /// The configured path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's descriptor, checked now: re-opened (and created)
    /// when the directory was removed or replaced, its owner checked and
    /// its mode tightened to 0700.
    pub(super) fn fd(&mut self) -> Result<BorrowedFd<'_>, DirError> {
        let opened = match self.open.take() {
            Some(o) if still_at_path(&o, &self.path) => {
                // Owner and mode may have changed since it was opened.
                check(o.fd.as_fd(), &self.path, false, &mut self.tightening_logged)?;
                o
            }
            _ => self.open_checked()?,
        };
        Ok(self.open.insert(opened).fd.as_fd())
    }

    fn open_checked(&mut self) -> Result<Opened, DirError> {
        let (fd, created) = open_nofollow(&self.path)?;
        let st = check(fd.as_fd(), &self.path, created, &mut self.tightening_logged)?;
        let (dev, ino) = identity(&st);
        Ok(Opened { fd, dev, ino })
    }
}

/// True when `o` still is the directory at `path`: not removed, and the
/// path (not followed) names the same inode.
fn still_at_path(o: &Opened, path: &Path) -> bool {
    let Ok(own) = rustix::fs::fstat(&o.fd) else {
        return false;
    };
    if own.st_nlink == 0 {
        return false;
    }
    match rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => identity(&st) == (o.dev, o.ino),
        Err(_) => false,
    }
}

/// Device and inode: what makes two opened directories the same one.
// The field types differ between architectures (u32 or u64).
#[allow(clippy::useless_conversion)]
fn identity(st: &rustix::fs::Stat) -> (u64, u64) {
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

/// Opens `path` as a directory without following a symbolic link in its
/// last component, creating it (and missing parents) mode 0700 if needed.
/// Returns the descriptor and whether this call created the directory.
fn open_nofollow(path: &Path) -> Result<(OwnedFd, bool), DirError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Some(name) = path.file_name() else {
        // "/" or a path ending in "..": nothing to create; open as is.
        return rustix::fs::openat(CWD, path, flags, Mode::empty())
            .map(|fd| (fd, false))
            .map_err(|e| classify_open_error(CWD, path, e));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_fd = open_parent(parent).map_err(DirError::Unusable)?;
    let created = match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(DirError::Unusable(e.into())),
    };
    match rustix::fs::openat(&parent_fd, name, flags, Mode::empty()) {
        Ok(fd) => Ok((fd, created)),
        Err(e) => Err(classify_open_error(parent_fd.as_fd(), Path::new(name), e)),
    }
}

/// Opens (creating if missing, like `mkdir -p` with mode 0700) the parent
/// directory. Links in the parent path are followed: they are the
/// administrator's layout (`/var/run` → `/run`).
fn open_parent(parent: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match rustix::fs::openat(CWD, parent, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)?;
            Ok(rustix::fs::openat(CWD, parent, flags, Mode::empty())?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Turns a failed `openat(O_DIRECTORY | O_NOFOLLOW)` into a refusal when
/// the name is a symbolic link or not a directory.
fn classify_open_error<Fd: AsFd>(at: Fd, name: &Path, e: Errno) -> DirError {
    if e != Errno::NOTDIR && e != Errno::LOOP {
        return DirError::Unusable(e.into());
    }
    match rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            DirError::Refused(io::Error::other(
                "is a symbolic link; loopwatch does not follow one for its report directory \
                 (point report_dir at the real directory)",
            ))
        }
        Ok(_) => DirError::Refused(io::Error::new(
            io::ErrorKind::NotADirectory,
            "exists and is not a directory",
        )),
        Err(_) => DirError::Unusable(e.into()),
    }
}

/// Checks the owner of the open directory and leaves its mode at 0700.
fn check(
    fd: BorrowedFd<'_>,
    path: &Path,
    created: bool,
    tightening_logged: &mut bool,
) -> Result<rustix::fs::Stat, DirError> {
    let st = rustix::fs::fstat(fd).map_err(|e| DirError::Unusable(e.into()))?;
    let euid = rustix::process::geteuid().as_raw();
    if st.st_uid != euid {
        return Err(DirError::Refused(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "is owned by uid {} but loopwatch runs as uid {euid}; it writes reports only \
                 into a directory of its own user",
                st.st_uid
            ),
        )));
    }
    let mode = st.st_mode & 0o7777;
    if mode != DIR_MODE {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(DIR_MODE))
            .map_err(|e| DirError::Unusable(e.into()))?;
        // A directory just created only lost bits to the umask: not news.
        if !created && mode & 0o077 != 0 {
            if *tightening_logged {
                tracing::debug!(dir = %path.display(), old_mode = format!("{mode:04o}"),
                    "loopwatch tightened its report directory to 0700 again");
            } else {
                *tightening_logged = true;
                tracing::warn!(dir = %path.display(), old_mode = format!("{mode:04o}"),
                    "loopwatch report directory granted group/other access; tightened to 0700");
            }
        }
    }
    Ok(st)
}
