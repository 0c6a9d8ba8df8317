//! Getting an encoded entry to journald: one datagram, or a sealed memory
//! file passed with `SCM_RIGHTS` when the entry is too big for a datagram.
//!
//! This file owns the socket, the bounded wait, and the large-entry
//! fallback. What goes into an entry is [`entry`](super::entry)'s job.
//!
//! The socket is an unbound `AF_UNIX` datagram socket kept for the life of
//! the [`Journal`]; every entry is addressed to journald's path, so a
//! journald that restarts is reached again without reconnecting. It has a
//! send timeout of [`SEND_TIMEOUT`]: when journald's receive queue is full
//! (journald busy, stopped or hung) a send fails after that long instead of
//! holding up the thread that sends, which is loopwatch's monitor.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};

use super::entry::JournalEntry;

/// journald's native-protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The longest a send waits for room in journald's receive queue: 50 ms.
/// An entry that cannot be queued by then is not sent, and
/// [`Journal::send`] returns an error of kind
/// [`TimedOut`](io::ErrorKind::TimedOut).
pub const SEND_TIMEOUT: Duration = Duration::from_millis(50);

/// The name the memory file carries (visible in `/proc/<pid>/fd`).
const MEMFD_NAME: &str = "loopwatch-journal-entry";

/// A connection to systemd-journald's native protocol.
///
/// ```no_run
/// use loopwatch::journal::{Journal, JournalEntry, JournalEvent};
///
/// if let Some(journal) = Journal::detect() {
///     let entry = JournalEntry::new(JournalEvent::StallDetected, "event loop \"main\" stalled")
///         .field("LOOPWATCH_RUNTIME", "main");
///     if let Err(e) = journal.send(&entry) {
///         eprintln!("journal entry not sent: {e}");
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// A journal when this process runs under systemd — journald's socket
    /// ([`JOURNAL_SOCKET`]) exists, or `JOURNAL_STREAM` is set — and `None`
    /// otherwise. Also `None` (with a warning logged) in the rare case that
    /// the process cannot make a socket at all (out of file descriptors).
    /// Never panics.
    ///
    /// ```
    /// // Off systemd this is None, and loopwatch sends nothing.
    /// let journal = loopwatch::journal::Journal::detect();
    /// # let _ = journal;
    /// ```
    pub fn detect() -> Option<Journal> {
        let path = Path::new(JOURNAL_SOCKET);
        let stream = std::env::var_os("JOURNAL_STREAM");
        if !under_systemd(path, stream.as_deref()) {
            return None;
        }
        match Journal::at(path) {
            Ok(journal) => Some(journal),
            Err(e) => {
                tracing::warn!(error = %e, "no journal entries: cannot create a socket for journald");
                None
            }
        }
    }

    /// A journal that sends to the datagram socket at `path`.
    pub(crate) fn at(path: &Path) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Journal {
            socket,
            path: path.to_path_buf(),
        })
    }

    /// The socket itself, for tests that tune it.
    #[cfg(test)]
    pub(crate) fn socket_for_tests(&self) -> &UnixDatagram {
        &self.socket
    }

    /// The socket this journal sends to.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Sends `entry` as one journal entry: as a datagram, or, when it is too
    /// large for one (`EMSGSIZE`), in a sealed memory file passed to journald
    /// with `SCM_RIGHTS`. Waits at most [`SEND_TIMEOUT`] for journald's
    /// queue (twice at most, for the memory file). A failure is returned,
    /// never a panic; nothing is retried.
    ///
    /// ```no_run
    /// use loopwatch::journal::{Journal, JournalEntry, JournalEvent};
    /// let journal = Journal::detect().expect("running under systemd");
    /// journal.send(&JournalEntry::new(JournalEvent::StallRecovered, "recovered"))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send(&self, entry: &JournalEntry) -> io::Result<()> {
        let bytes = entry.encode();
        match self.socket.send_to(&bytes, &self.path) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "journald took {n} of {} bytes of a datagram",
                bytes.len()
            ))),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => self.send_in_memfd(&bytes),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// The large-entry path: the entry in a sealed memfd, the descriptor
    /// passed in an otherwise empty datagram.
    fn send_in_memfd(&self, bytes: &[u8]) -> io::Result<()> {
        let fd =
            rustix::fs::memfd_create(MEMFD_NAME, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        // journald maps the file; the seals promise it cannot change under it.
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )?;
        let addr = SocketAddrUnix::new(self.path.as_path())?;
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other(
                "no room for SCM_RIGHTS in the control buffer",
            ));
        }
        let empty: [IoSlice<'_>; 0] = [];
        rustix::net::sendmsg_addr(
            &self.socket,
            &addr,
            &empty,
            &mut control,
            SendFlags::empty(),
        )
        .map(drop)
        .map_err(|e| self.explain(e.into()))
    }

    /// Names the condition behind an error where the OS's words are vague.
    fn explain(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "journald's queue at {} stayed full for {SEND_TIMEOUT:?}",
                    self.path.display()
                ),
            )
        } else {
            io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
        }
    }
}

/// The test behind [`Journal::detect`]: a socket at `socket`, or a
/// `JOURNAL_STREAM` in the environment.
pub(crate) fn under_systemd(socket: &Path, journal_stream: Option<&std::ffi::OsStr>) -> bool {
    let is_socket = socket
        .metadata()
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    is_socket || journal_stream.is_some_and(|s| !s.is_empty())
}
