//! systemd's notify protocol: where to send, whether to ping, and the sending.
//!
//! The environment systemd gives a `Type=notify` service is read once, at
//! start, into a [`SystemdEnv`]: the socket (`NOTIFY_SOCKET`, an absolute
//! path or an abstract `@name`), the watchdog interval (`WATCHDOG_USEC`) and
//! the process the watchdog is meant for (`WATCHDOG_PID`). Bad values are a
//! typed error at start, never a panic: a socket that is neither an absolute
//! path nor `@name`, a `WATCHDOG_USEC` that is not a positive number or is
//! below [`MIN_WATCHDOG`]. A `WATCHDOG_USEC` above [`MAX_WATCHDOG`]
//! (including systemd's "infinity", `u64::MAX`) is clamped to it with one
//! warning: pinging more often than systemd needs is harmless, and every
//! time computation downstream stays far from overflow. A process whose pid
//! is not `WATCHDOG_PID` (a child that inherited the environment) sends
//! nothing at all, and neither does a forked child of the process that
//! started loopwatch when systemd gave no `WATCHDOG_PID`.
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

/// The shortest `WATCHDOG_USEC` accepted: 100 ms. The default stall
/// threshold is a quarter of it (25 ms, above the threshold's own floor of
/// 10 ms), and a shorter interval leaves no time between detection and
/// systemd's deadline to capture stacks and write a report.
pub(crate) const MIN_WATCHDOG: Duration = Duration::from_millis(100);

/// The longest `WATCHDOG_USEC` taken as given: one day. Longer values are
/// clamped to it (pings then go out every six hours, far more often than
/// systemd needs).
pub(crate) const MAX_WATCHDOG: Duration = Duration::from_secs(24 * 3600);

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
        if let Some(s) = &socket {
            if !matches!(s.as_bytes().first(), Some(b'/' | b'@')) {
                return Err(Error::InvalidNotifySocket {
                    value: s.to_string_lossy().into_owned(),
                });
            }
        }
        let watchdog = match lookup("WATCHDOG_USEC") {
            None => None,
            Some(v) => {
                let text = v.to_string_lossy().into_owned();
                match text.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Some(watchdog_interval(n)?),
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

/// `WATCHDOG_USEC=usec` as an interval: refused below [`MIN_WATCHDOG`],
/// clamped (with one warning) above [`MAX_WATCHDOG`].
fn watchdog_interval(usec: u64) -> Result<Duration> {
    let w = Duration::from_micros(usec);
    if w < MIN_WATCHDOG {
        return Err(Error::WatchdogTooShort {
            value: usec,
            min: MIN_WATCHDOG,
        });
    }
    if w > MAX_WATCHDOG {
        tracing::warn!(
            watchdog_usec = usec,
            clamped_to = ?MAX_WATCHDOG,
            "WATCHDOG_USEC is absurdly large; loopwatch uses {MAX_WATCHDOG:?} instead \
             (it pings more often than systemd needs, which is harmless)"
        );
        return Ok(MAX_WATCHDOG);
    }
    Ok(w)
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
    fn absurd_watchdog_values_are_refused_or_clamped() {
        match env(&[("WATCHDOG_USEC", "1")]) {
            Err(Error::WatchdogTooShort { value: 1, min }) => assert_eq!(min, MIN_WATCHDOG),
            other => panic!("WATCHDOG_USEC=1 gave {other:?}"),
        }
        for huge in ["300000000000000000", "18446744073709551615"] {
            let e = env(&[("WATCHDOG_USEC", huge)]).unwrap();
            assert_eq!(e.watchdog, Some(MAX_WATCHDOG), "WATCHDOG_USEC={huge}");
        }
        let e = env(&[("WATCHDOG_USEC", "100000")]).unwrap();
        assert_eq!(e.watchdog, Some(MIN_WATCHDOG));
    }

    #[test]
    fn a_relative_notify_socket_is_a_typed_error() {
        for bad in ["relative/path", "notify.sock", "./x"] {
            match env(&[("NOTIFY_SOCKET", bad)]) {
                Err(Error::InvalidNotifySocket { value }) => assert_eq!(value, bad),
                other => panic!("NOTIFY_SOCKET={bad:?} gave {other:?}"),
            }
        }
        assert!(env(&[("NOTIFY_SOCKET", "@abstract")]).is_ok());
        assert!(env(&[("NOTIFY_SOCKET", "")]).unwrap().socket.is_none());
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
