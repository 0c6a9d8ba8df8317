//! systemd's notify protocol: where to send, whether to ping, and the sending.
//!
//! The environment systemd gives a `Type=notify` service is read once, at
//! start, into a [`SystemdEnv`]: the socket (`NOTIFY_SOCKET`, a path or an
//! abstract `@name`), the watchdog interval (`WATCHDOG_USEC`) and the process
//! the watchdog is meant for (`WATCHDOG_PID`). Bad values are a typed error at
//! start, never a panic. A process whose pid is not `WATCHDOG_PID` (a child
//! that inherited the environment) sends nothing at all.
//!
//! Messages are formatted with the `sd-notify` crate's [`NotifyState`] and
//! sent from one unbound datagram socket kept for the life of the monitor.
//! The crate's own sender reads the environment on every call and cannot
//! reach abstract sockets, so the sending is done here.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub use sd_notify::NotifyState;

use crate::error::{Error, Result};

/// What systemd told this process through its environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SystemdEnv {
    /// `NOTIFY_SOCKET`, if set and non-empty.
    pub socket: Option<OsString>,
    /// `WATCHDOG_USEC` as a duration, if set.
    pub watchdog: Option<Duration>,
    /// `WATCHDOG_PID`, if set.
    pub watchdog_pid: Option<u32>,
}

impl SystemdEnv {
    /// Reads the process environment.
    pub(crate) fn from_process() -> Result<Self> {
        Self::from_lookup(|k| std::env::var_os(k))
    }

    /// Reads the three variables through `lookup`, validating them.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let socket = lookup("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let watchdog = match lookup("WATCHDOG_USEC") {
            None => None,
            Some(v) => {
                let text = v.to_string_lossy().into_owned();
                match text.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Some(Duration::from_micros(n)),
                    _ => return Err(Error::InvalidWatchdogUsec { value: text }),
                }
            }
        };
        let watchdog_pid = match lookup("WATCHDOG_PID") {
            None => None,
            Some(v) => {
                let text = v.to_string_lossy().into_owned();
                match text.trim().parse::<u32>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => return Err(Error::InvalidWatchdogPid { value: text }),
                }
            }
        };
        Ok(SystemdEnv {
            socket,
            watchdog,
            watchdog_pid,
        })
    }

    /// True when `WATCHDOG_PID` names another process: this process is not
    /// the service's main process (typically a forked child) and must not
    /// speak for it.
    pub(crate) fn is_foreign(&self, my_pid: u32) -> bool {
        self.watchdog_pid.is_some_and(|p| p != my_pid)
    }

    /// The watchdog interval that applies to this process.
    pub(crate) fn watchdog_for(&self, my_pid: u32) -> Option<Duration> {
        if self.is_foreign(my_pid) {
            None
        } else {
            self.watchdog
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(OsString),
    Abstract(Vec<u8>),
}

/// Sends notify messages to one socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Target,
    socket: UnixDatagram,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`'s value.
    pub(crate) fn new(socket: &OsString) -> io::Result<Self> {
        let bytes = socket.as_bytes();
        let target = match bytes.first() {
            Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
            Some(b'/') => Target::Path(socket.clone()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET={socket:?} is neither an absolute path nor @abstract"),
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier { target, socket })
    }

    /// Sends one datagram carrying `states`, one per line.
    pub(crate) fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let msg = format_message(states);
        let sent = match &self.target {
            Target::Path(p) => self.socket.send_to(msg.as_bytes(), p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name)?;
                self.socket.send_to_addr(msg.as_bytes(), &addr)?
            }
        };
        if sent != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notify datagram truncated",
            ));
        }
        Ok(())
    }
}

/// The datagram text for `states`. Newlines inside a `STATUS=` would start a
/// new assignment, so they are replaced.
pub(crate) fn format_message(states: &[NotifyState<'_>]) -> String {
    let mut msg = String::new();
    for s in states {
        let line = s.to_string().replace('\n', " ");
        msg.push_str(&line);
        msg.push('\n');
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<SystemdEnv> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        SystemdEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn parses_systemd_environment() {
        let e = env(&[
            ("NOTIFY_SOCKET", "/run/x"),
            ("WATCHDOG_USEC", "3000000"),
            ("WATCHDOG_PID", "42"),
        ])
        .unwrap();
        assert_eq!(e.watchdog, Some(Duration::from_secs(3)));
        assert_eq!(e.watchdog_for(42), Some(Duration::from_secs(3)));
        assert_eq!(e.watchdog_for(43), None);
        assert!(e.is_foreign(43));
        assert_eq!(env(&[]).unwrap(), SystemdEnv::default());
    }

    #[test]
    fn bad_watchdog_values_are_typed_errors() {
        for bad in ["abc", "0", "-5", ""] {
            match env(&[("WATCHDOG_USEC", bad)]) {
                Err(Error::InvalidWatchdogUsec { value }) => assert_eq!(value, bad),
                other => panic!("WATCHDOG_USEC={bad:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            env(&[("WATCHDOG_PID", "me")]),
            Err(Error::InvalidWatchdogPid { .. })
        ));
    }

    #[test]
    fn message_has_one_assignment_per_line() {
        let m = format_message(&[NotifyState::Watchdog, NotifyState::Status("a\nb")]);
        assert_eq!(m, "WATCHDOG=1\nSTATUS=a b\n");
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(&path.clone().into_os_string()).unwrap();
        n.send(&[NotifyState::Ready]).unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("loopwatch-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(&OsString::from(format!("@{name}"))).unwrap();
        n.send(&[NotifyState::Stopping]).unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\n");

        assert!(Notifier::new(&OsString::from("relative")).is_err());
    }
}
