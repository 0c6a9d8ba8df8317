//! A real systemd user manager for end-to-end tests, without booting with it.
//!
//! Recipe (see shared/DESIGN.md, "Facts checked on this machine kind"):
//!
//! * `setpriv --pdeathsig KILL unshare -m -p -f --kill-child --propagation
//!   private --mount-proc sh -c SCRIPT`: a private mount namespace and a
//!   private PID namespace whose init is a small shell. Killing `unshare`
//!   kills that shell (`--kill-child`), and the kernel then kills every
//!   process left in the PID namespace: the manager, the units, their
//!   children. `--pdeathsig` does the same if the test thread dies first.
//! * The shell moves itself into a fresh cgroup of its own *before* starting
//!   systemd. This is not optional: a user manager started in the root
//!   cgroup moves every process of that cgroup (PID 1 of the machine
//!   included) into `/init.scope`. Its units get cgroups below that one, so
//!   concurrent managers never share a cgroup, and cleanup removes the tree.
//! * A tmpfs on `/run/systemd` with `/run/systemd/system` in it (so the
//!   tools believe systemd is running), `XDG_RUNTIME_DIR` and
//!   `XDG_CONFIG_HOME` in a fresh temporary directory, then `systemd --user`.
//! * The manager logs to "kmsg", which is a FIFO bind-mounted over
//!   `/dev/kmsg` inside the namespace and copied to `manager.log`
//!   (systemd 252 ratelimits kmsg to 200 lines per 5 s; the level is `info`
//!   unless a test raises it).
//! * `systemctl --user` runs through `nsenter` into both namespaces (the
//!   manager rejects a peer on its private socket whose PID it cannot see)
//!   and talks to `$XDG_RUNTIME_DIR/systemd/private`; no D-Bus is needed
//!   (`dbus.socket` is masked).
//!
//! * With [`Manager::start_with_journald`], a real `systemd-journald` runs
//!   in the same namespaces, started by the namespace's init before the
//!   manager: a tmpfs on `/run/log` (its volatile storage, so the host's
//!   journal is never touched), a drop-in in `/run/systemd/journald.conf.d`
//!   (volatile storage, no kmsg reading — `/dev/kmsg` is the FIFO above —,
//!   no forwarding, no rate limit), its own log in `journald.log`. The
//!   manager starts only once `/run/systemd/journal/socket` exists.
//!   [`Manager::journalctl`] reads that journal from inside the namespaces,
//!   and [`Manager::run_in_namespace`] runs any program there (a sender's
//!   `_PID` must be visible in journald's PID namespace).
//!
//! Nothing here skips: a missing prerequisite is a test failure that says
//! what is missing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the manager may take to come up.
const MANAGER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `systemctl` call may take.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `journalctl` call may take.
const JOURNALCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default polling period of [`Manager::wait_for`].
pub const POLL: Duration = Duration::from_millis(200);

/// The properties [`Manager::show`] asks for.
pub const PROPERTIES: &[&str] = &[
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainStatus",
    "ExecMainCode",
    "ExecMainPID",
    "MainPID",
    "NRestarts",
    "StatusText",
    "NotifyAccess",
    "WatchdogUSec",
    "WatchdogTimestamp",
    "WatchdogTimestampMonotonic",
    "ExecMainStartTimestamp",
    "ExecMainStartTimestampMonotonic",
    "ExecMainExitTimestamp",
    "ExecMainExitTimestampMonotonic",
    "ActiveEnterTimestamp",
    "ActiveEnterTimestampMonotonic",
    "InactiveEnterTimestamp",
    "InactiveEnterTimestampMonotonic",
    "ControlGroup",
];

/// `si_code` values systemd reports as `ExecMainCode`.
pub const CLD_EXITED: u64 = 1;
/// Killed by a signal.
pub const CLD_KILLED: u64 = 2;
/// Killed by a signal, with a core dump.
pub const CLD_DUMPED: u64 = 3;

/// Absolute paths of the programs the harness needs.
#[derive(Debug, Clone)]
struct Tools {
    systemd: PathBuf,
    systemctl: PathBuf,
    unshare: PathBuf,
    nsenter: PathBuf,
    setpriv: PathBuf,
    sh: PathBuf,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Checks everything the manager needs; `Err` says what is missing.
fn tools() -> Result<Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let mut missing = Vec::new();
            match effective_uid() {
                Some(0) => {}
                Some(uid) => missing.push(format!(
                    "root (running as uid {uid}; mount and PID namespaces and cgroups need root)"
                )),
                None => missing.push("a readable /proc/self/status".to_string()),
            }
            let mut find = |name: &str, hint: &str| {
                let found = find_in_path(name);
                if found.is_none() {
                    missing.push(format!("`{name}` ({hint})"));
                }
                found.unwrap_or_default()
            };
            let systemctl = find("systemctl", "Debian package systemd");
            let unshare = find("unshare", "Debian package util-linux");
            let nsenter = find("nsenter", "Debian package util-linux");
            let setpriv = find("setpriv", "Debian package util-linux");
            let sh = find("sh", "a POSIX shell");
            let systemd = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .or_else(|| find_in_path("systemd"));
            if systemd.is_none() {
                missing.push("the systemd binary (Debian package systemd)".to_string());
            }
            if cgroup_hierarchies().is_empty() {
                missing.push(
                    "a writable cgroup hierarchy under /sys/fs/cgroup (cgroup v2, or the hybrid layout with `unified` and `systemd`)"
                        .to_string(),
                );
            }
            if missing.is_empty() {
                Ok(Tools {
                    systemd: systemd.unwrap_or_default(),
                    systemctl,
                    unshare,
                    nsenter,
                    setpriv,
                    sh,
                })
            } else {
                Err(format!(
                    "cannot start a systemd user manager for the end-to-end tests; missing: {}",
                    missing.join("; ")
                ))
            }
        })
        .clone()
}

/// Absolute paths of the journald programs [`Manager::start_with_journald`] needs.
#[derive(Debug, Clone)]
struct JournaldTools {
    journald: PathBuf,
    journalctl: PathBuf,
}

/// Checks for systemd-journald and journalctl; `Err` says what is missing.
fn journald_tools() -> Result<JournaldTools, String> {
    let journald = [
        "/usr/lib/systemd/systemd-journald",
        "/lib/systemd/systemd-journald",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    let journalctl = find_in_path("journalctl");
    let mut missing = Vec::new();
    if journald.is_none() {
        missing.push("/usr/lib/systemd/systemd-journald (Debian package systemd)");
    }
    if journalctl.is_none() {
        missing.push("`journalctl` (Debian package systemd)");
    }
    if !Path::new("/etc/machine-id").is_file() {
        missing.push(
            "/etc/machine-id (journald names its journal directory after it; \
             `systemd-machine-id-setup` makes one)",
        );
    }
    match (journald, journalctl) {
        (Some(journald), Some(journalctl)) if missing.is_empty() => Ok(JournaldTools {
            journald,
            journalctl,
        }),
        _ => Err(format!(
            "cannot run systemd-journald for the end-to-end tests; missing: {}",
            missing.join("; ")
        )),
    }
}

/// The cgroup hierarchies systemd tracks processes in: the unified (v2) one
/// and, in the hybrid layout, the named v1 `systemd` one.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let mut dirs = Vec::new();
    for h in ["unified", "systemd"] {
        let d = root.join(h);
        if d.join("cgroup.procs").exists() {
            dirs.push(d);
        }
    }
    dirs
}

/// Every cgroup hierarchy mounted under /sys/fs/cgroup (systemd may create
/// the manager's subtree in controller hierarchies too).
fn all_cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("cgroup.procs").exists() {
                dirs.push(p);
            }
        }
    }
    dirs
}

/// The shell that runs as PID 1 of the new PID namespace.
/// `$1` = systemd binary, `$2` = work directory, `$3...` = cgroup dirs.
const INIT_SCRIPT: &str = r#"
set -eu
systemd_bin=$1; dir=$2; shift 2
for cg in "$@"; do
  if ! echo 0 > "$cg/cgroup.procs"; then
    echo "loopwatch-e2e: cannot move into cgroup $cg; refusing to start systemd in a shared cgroup" >&2
    exit 11
  fi
done
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/systemd/system
mkfifo "$dir/kmsg.fifo"
# Opened read-write, so the copy never sees end-of-file when systemd
# closes and reopens its log.
cat 0<>"$dir/kmsg.fifo" >>"$dir/manager.log" &
mount --bind "$dir/kmsg.fifo" /dev/kmsg
if [ -n "${LOOPWATCH_E2E_JOURNALD:-}" ]; then
  mount -t tmpfs -o mode=0755 tmpfs /run/log
  mkdir -p /run/systemd/journald.conf.d
  printf '%s\n' '[Journal]' Storage=volatile ReadKMsg=no ForwardToSyslog=no \
    ForwardToKMsg=no ForwardToConsole=no ForwardToWall=no RateLimitBurst=0 \
    >/run/systemd/journald.conf.d/loopwatch-e2e.conf
  SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=info "$LOOPWATCH_E2E_JOURNALD" </dev/null >>"$dir/journald.log" 2>&1 &
  journald=$!
  tries=0
  while [ ! -S /run/systemd/journal/socket ]; do
    if ! kill -0 "$journald" 2>/dev/null; then
      echo "loopwatch-e2e: systemd-journald exited before creating /run/systemd/journal/socket (see journald.log)" >&2
      exit 12
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 200 ]; then
      echo "loopwatch-e2e: systemd-journald did not create /run/systemd/journal/socket within 10 s" >&2
      exit 12
    fi
    sleep 0.05
  done
  echo "loopwatch-e2e: systemd-journald started (pid $journald)" >&2
fi
"$systemd_bin" --user --log-target=kmsg --log-level=info </dev/null >>"$dir/manager.log" 2>&1 &
manager=$!
echo "loopwatch-e2e: systemd --user started" >&2
set +e
wait "$manager"
status=$?
echo "loopwatch-e2e: systemd --user exited with status $status" >&2
exit "$status"
"#;

/// A `systemd --user` in its own mount and PID namespaces and cgroup.
/// Dropping it kills the manager, every unit and the namespaces, and
/// removes its cgroups.
pub struct Manager {
    label: String,
    tools: Tools,
    child: Child,
    unshare_pid: u32,
    dir: tempfile::TempDir,
    runtime_dir: PathBuf,
    config_dir: PathBuf,
    cgroups: Vec<PathBuf>,
    journald: Option<JournaldTools>,
}

impl Manager {
    /// Starts a manager; fails the test with what is missing if it cannot.
    pub fn start(label: &str) -> Manager {
        Manager::start_inner(label, None)
    }

    /// Starts a manager with a real systemd-journald in its namespaces
    /// (see the module docs); fails the test with what is missing if it
    /// cannot, or if journald does not come up.
    pub fn start_with_journald(label: &str) -> Manager {
        match journald_tools() {
            Ok(j) => Manager::start_inner(label, Some(j)),
            Err(e) => panic!("{e}"),
        }
    }

    fn start_inner(label: &str, journald: Option<JournaldTools>) -> Manager {
        let tools = match tools() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        sweep_stale_cgroups();
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let cg_name = format!("loopwatch-e2e-{}-{}-{}", std::process::id(), seq, label);

        let dir = tempfile::Builder::new()
            .prefix(&format!("loopwatch-e2e-{label}-"))
            .tempdir()
            .expect("create a temporary directory");
        let runtime_dir = dir.path().join("runtime");
        let config_dir = dir.path().join("config");
        let home = dir.path().join("home");
        for d in [&runtime_dir, &config_dir, &home] {
            fs::create_dir_all(d).expect("create manager directories");
        }
        fs::set_permissions(&runtime_dir, fs::Permissions::from_mode(0o700))
            .expect("chmod runtime dir");
        let unit_dir = config_dir.join("systemd/user");
        fs::create_dir_all(&unit_dir).expect("create unit dir");
        // No session bus here: keep the manager from socket-activating one.
        for masked in ["dbus.socket", "dbus.service"] {
            std::os::unix::fs::symlink("/dev/null", unit_dir.join(masked)).expect("mask a unit");
        }
        fs::write(dir.path().join("manager.log"), "").expect("create manager.log");

        let mut cgroups = Vec::new();
        for h in cgroup_hierarchies() {
            let cg = h.join(&cg_name);
            if let Err(e) = fs::create_dir(&cg) {
                for c in &cgroups {
                    let _ = fs::remove_dir(c);
                }
                panic!(
                    "cannot create cgroup {} for the systemd user manager: {e}",
                    cg.display()
                );
            }
            cgroups.push(cg);
        }

        let init_log = fs::File::create(dir.path().join("init.log")).expect("create init.log");
        let mut cmd = Command::new(&tools.setpriv);
        cmd.arg("--pdeathsig")
            .arg("KILL")
            .arg(&tools.unshare)
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "--mount-proc",
            ])
            .arg(&tools.sh)
            .arg("-c")
            .arg(INIT_SCRIPT)
            .arg("loopwatch-e2e-init")
            .arg(&tools.systemd)
            .arg(dir.path())
            .args(&cgroups)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", &home)
            .env("LANG", "C.UTF-8")
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("XDG_CONFIG_HOME", &config_dir)
            .env(
                "LOOPWATCH_E2E_JOURNALD",
                journald
                    .as_ref()
                    .map(|j| j.journald.as_os_str())
                    .unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(init_log.try_clone().expect("dup init.log"))
            .stderr(init_log);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                for c in &cgroups {
                    let _ = fs::remove_dir(c);
                }
                panic!("cannot spawn {} (unshare): {e}", tools.setpriv.display());
            }
        };
        let unshare_pid = child.id();
        let mut m = Manager {
            label: label.to_string(),
            tools,
            child,
            unshare_pid,
            dir,
            runtime_dir,
            config_dir,
            cgroups,
            journald,
        };
        m.wait_running();
        if m.journald.is_some() && !m.journal_socket().exists() {
            panic!(
                "the manager is up but journald's socket {} is missing.\n{}",
                m.journal_socket().display(),
                m.diagnostics(None)
            );
        }
        m
    }

    fn wait_running(&mut self) {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the systemd user manager's namespace exited early ({status}) before the manager answered.\n{}",
                    self.diagnostics(None)
                );
            }
            if self.runtime_dir.join("systemd/private").exists() {
                let out = self.systemctl(&["is-system-running"]);
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                if last == "running" || last == "degraded" {
                    return;
                }
            }
            if start.elapsed() > MANAGER_START_TIMEOUT {
                panic!(
                    "the systemd user manager did not come up within {MANAGER_START_TIMEOUT:?} (last `is-system-running`: {last:?}).\n{}",
                    self.diagnostics(None)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The test's temporary directory (unit output files, reports, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` into the manager's unit directory (no reload).
    pub fn write_unit(&self, name: &str, text: &str) {
        let path = self.config_dir.join("systemd/user").join(name);
        fs::write(&path, text).expect("write unit file");
    }

    /// Writes `name` into the manager's unit directory and reloads.
    pub fn install_unit(&self, name: &str, text: &str) {
        self.write_unit(name, text);
        self.systemctl_ok(&["daemon-reload"]);
    }

    /// A command that runs `program` inside the manager's mount and PID
    /// namespaces (through `nsenter`), with a clean environment (`PATH`,
    /// `LANG`, `SYSTEMD_COLORS=0`, `XDG_RUNTIME_DIR`) and piped output.
    pub fn in_namespace(&self, program: &Path) -> Command {
        let pidns = format!("--pid=/proc/{}/ns/pid_for_children", self.unshare_pid);
        let mut cmd = Command::new(&self.tools.nsenter);
        cmd.arg("-t")
            .arg(self.unshare_pid.to_string())
            .arg("-m")
            .arg(pidns)
            .arg("--")
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `cmd` to completion, reading its output as it comes (a pipe
    /// that fills would stall it); fails the test if it does not finish
    /// within `timeout`.
    pub fn output_within(&self, mut cmd: Command, timeout: Duration, what: &str) -> Output {
        use std::io::Read;
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nsenter for `{what}`: {e}"));
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("`{what}` did not finish within {timeout:?}");
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for `{what}`: {e}"),
            }
        };
        Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// Runs `systemctl --user ARGS` inside the manager's namespaces.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.in_namespace(&self.tools.systemctl);
        cmd.args([
            "--user",
            "--no-pager",
            "--no-ask-password",
            "--timestamp=us+utc",
        ])
        .args(args);
        let what = format!("systemctl --user {}", args.join(" "));
        self.output_within(cmd, SYSTEMCTL_TIMEOUT, &what)
    }

    /// Runs `program ARGS` inside the manager's namespaces, with `envs`
    /// added to the clean environment of [`Manager::in_namespace`]; fails
    /// the test if it does not finish within `timeout`.
    pub fn run_in_namespace(
        &self,
        program: &Path,
        args: &[&str],
        envs: &[(&str, String)],
        timeout: Duration,
    ) -> Output {
        let mut cmd = self.in_namespace(program);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let what = format!("{} {}", program.display(), args.join(" "));
        self.output_within(cmd, timeout, &what)
    }

    /// journald's socket, seen from outside the namespaces.
    pub fn journal_socket(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/run/systemd/journal/socket",
            self.unshare_pid
        ))
    }

    /// Runs `journalctl --no-pager ARGS` inside the manager's namespaces,
    /// where it reads the journal of the journald that
    /// [`Manager::start_with_journald`] started. Fails the test on a
    /// manager without journald.
    pub fn journalctl(&self, args: &[&str]) -> Output {
        let Some(j) = &self.journald else {
            panic!("journalctl needs a manager started with Manager::start_with_journald");
        };
        let mut cmd = self.in_namespace(&j.journalctl);
        cmd.arg("--no-pager").args(args);
        let what = format!("journalctl {}", args.join(" "));
        self.output_within(cmd, JOURNALCTL_TIMEOUT, &what)
    }

    /// The entries `journalctl -o json --all MATCHES` shows, each as a
    /// field → value map (see [`journal_json_value`]). Fails the test if
    /// journalctl fails.
    pub fn journal_entries(&self, matches: &[&str]) -> Vec<BTreeMap<String, String>> {
        let mut args = vec!["-o", "json", "--all"];
        args.extend_from_slice(matches);
        let out = self.journalctl(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            panic!(
                "`journalctl {}` failed ({}): {}{stdout}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics(None)
            );
        }
        stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("journalctl printed invalid JSON ({e}): {l}"));
                let obj = v.as_object().expect("a JSON object per entry");
                obj.iter()
                    .map(|(k, v)| (k.clone(), journal_json_value(v)))
                    .collect()
            })
            .collect()
    }

    /// Like [`Manager::systemctl`], failing the test on a non-zero exit.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        if !out.status.success() {
            panic!(
                "`systemctl --user {}` failed ({}): {}{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics(None)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What systemd says about `unit` ([`PROPERTIES`]).
    pub fn show(&self, unit: &str) -> UnitState {
        let props = PROPERTIES.join(",");
        let text = self.systemctl_ok(&["show", "-p", &props, unit]);
        UnitState::parse(&text)
    }

    /// Polls [`Manager::show`] until `pred` holds; fails the test with
    /// `what` and the diagnostics after `timeout`. `each` sees every sample.
    pub fn wait_for(
        &self,
        unit: &str,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&UnitState) -> bool,
    ) -> UnitState {
        let start = Instant::now();
        loop {
            let st = self.show(unit);
            if pred(&st) {
                return st;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{unit}: timed out after {timeout:?} waiting for {what}; last state: {}\n{}",
                    st.summary(),
                    self.diagnostics(Some(unit))
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Switches the manager's log level (`info`, `debug`, ...).
    pub fn set_log_level(&self, level: &str) {
        self.systemctl_ok(&["log-level", level]);
    }

    /// The manager's own log so far.
    pub fn manager_log(&self) -> String {
        fs::read_to_string(self.dir().join("manager.log")).unwrap_or_default()
    }

    /// Lines of the manager's log in which it reports a notification
    /// datagram, as `(pid, payload)`.
    pub fn notifications(&self, unit: &str) -> Vec<(u32, String)> {
        let prefix = format!("{unit}: Got notification message from PID ");
        self.manager_log()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find(&prefix)? + prefix.len()..];
                let (pid, payload) = rest.split_once(' ')?;
                Some((pid.parse().ok()?, payload.to_string()))
            })
            .collect()
    }

    /// Number of processes in the unit's cgroup right now.
    pub fn cgroup_process_count(&self, control_group: &str) -> Option<usize> {
        if control_group.is_empty() {
            return None;
        }
        let rel = control_group.trim_start_matches('/');
        cgroup_hierarchies().iter().find_map(|h| {
            let procs = fs::read_to_string(h.join(rel).join("cgroup.procs")).ok()?;
            Some(procs.lines().filter(|l| !l.trim().is_empty()).count())
        })
    }

    /// Everything useful for a failure message: status, unit output,
    /// manager log, the files in the test directory.
    pub fn diagnostics(&self, unit: Option<&str>) -> String {
        let mut s = String::new();
        let tail = |text: &str, n: usize| -> String {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let _ = writeln!(
            s,
            "---- diagnostics for manager {:?} ({})",
            self.label,
            self.dir().display()
        );
        if let Some(unit) = unit {
            if self.runtime_dir.join("systemd/private").exists() {
                let out = self.systemctl(&["status", "--lines=0", unit]);
                let _ = writeln!(
                    s,
                    "---- systemctl --user status {unit}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let out =
                fs::read_to_string(self.dir().join(format!("{unit}.out"))).unwrap_or_default();
            let _ = writeln!(
                s,
                "---- {unit} stdout/stderr (last 60 lines)\n{}",
                tail(&out, 60)
            );
        }
        let init = fs::read_to_string(self.dir().join("init.log")).unwrap_or_default();
        let _ = writeln!(s, "---- namespace init\n{}", tail(&init, 20));
        if self.journald.is_some() {
            let log = fs::read_to_string(self.dir().join("journald.log")).unwrap_or_default();
            let _ = writeln!(
                s,
                "---- systemd-journald's own log (last 30 lines)\n{}",
                tail(&log, 30)
            );
        }
        let _ = writeln!(
            s,
            "---- manager log (last 60 lines)\n{}",
            tail(&self.manager_log(), 60)
        );
        let _ = writeln!(s, "---- files");
        for e in walk(self.dir()) {
            if let Ok(md) = e.metadata() {
                let _ = writeln!(
                    s,
                    "{} {:o} {} bytes",
                    e.display(),
                    md.permissions().mode() & 0o7777,
                    md.len()
                );
            }
        }
        s
    }
}

/// One field of `journalctl -o json`, as text: a string as it is; an array
/// of bytes (what journalctl prints for binary or non-UTF-8 data) decoded
/// lossily; for a field with several values (an array of those), the
/// first.
pub fn journal_json_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) if items.iter().all(|i| i.is_u64()) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|i| i.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        serde_json::Value::Array(items) => {
            items.first().map(journal_json_value).unwrap_or_default()
        }
        other => other.to_string(),
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                if p.file_name()
                    .is_some_and(|n| n == "runtime" || n == "config")
                {
                    continue;
                }
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn cgroup_tree_procs(dir: &Path) -> usize {
    let mut n = fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                n += cgroup_tree_procs(&e.path());
            }
        }
    }
    n
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Removes the empty cgroups of managers whose test process died without
/// cleaning up (killed by SIGKILL, say: the namespace dies with it, but its
/// cgroup directories stay).
fn sweep_stale_cgroups() {
    for h in all_cgroup_hierarchies() {
        for e in fs::read_dir(&h).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("loopwatch-e2e-") else {
                continue;
            };
            let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let Some(owner) = owner else { continue };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            if cgroup_tree_procs(&e.path()) == 0 {
                remove_cgroup_tree(&e.path());
            }
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // SIGKILL to unshare; --kill-child then kills the namespace's init,
        // and with it every process of the PID namespace.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let name = self
            .cgroups
            .first()
            .and_then(|c| c.file_name().map(|n| n.to_owned()));
        let Some(name) = name else { return };
        let trees: Vec<PathBuf> = all_cgroup_hierarchies()
            .into_iter()
            .map(|h| h.join(&name))
            .filter(|p| p.exists())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while trees.iter().map(|t| cgroup_tree_procs(t)).sum::<usize>() > 0 {
            if Instant::now() > deadline {
                eprintln!(
                    "loopwatch-e2e: processes still alive in cgroup {:?} 10 s after killing the manager's namespace",
                    name
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in &trees {
            remove_cgroup_tree(t);
        }
    }
}

/// The properties of one unit, as `systemctl show` printed them.
#[derive(Debug, Clone, Default)]
pub struct UnitState {
    /// Property name → value.
    pub props: BTreeMap<String, String>,
    /// When the sample was taken.
    pub at: Option<SystemTime>,
}

impl UnitState {
    fn parse(text: &str) -> UnitState {
        let props = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        UnitState {
            props,
            at: Some(SystemTime::now()),
        }
    }

    /// A property's text ("" when absent).
    pub fn get(&self, key: &str) -> &str {
        self.props.get(key).map(String::as_str).unwrap_or("")
    }

    /// A numeric property (`None` when absent or not a number).
    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key).parse().ok()
    }

    /// A realtime timestamp property (`--timestamp=us+utc`), `None` when unset.
    pub fn time(&self, key: &str) -> Option<SystemTime> {
        parse_timestamp(self.get(key))
    }

    /// `ActiveState/SubState`.
    pub fn state(&self) -> String {
        format!("{}/{}", self.get("ActiveState"), self.get("SubState"))
    }

    /// The properties that matter in a failure message.
    pub fn summary(&self) -> String {
        [
            "ActiveState",
            "SubState",
            "Result",
            "ExecMainCode",
            "ExecMainStatus",
            "ExecMainPID",
            "MainPID",
            "NRestarts",
            "WatchdogTimestamp",
            "StatusText",
        ]
        .iter()
        .map(|k| format!("{k}={}", self.get(k)))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// Parses `Tue 2026-11-24 21:19:22.123456 UTC` (systemctl `--timestamp=us+utc`).
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let mut it = s.split_whitespace();
    let _weekday = it.next()?;
    let date = it.next()?;
    let time = it.next()?;
    if it.next()? != "UTC" {
        return None;
    }
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    let days = days_from_civil(y, mo, da);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Signed difference `a - b` in seconds.
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[test]
fn timestamps_parse() {
    let t = parse_timestamp("Tue 2026-11-24 21:19:22.123456 UTC").expect("parses");
    let d = t.duration_since(UNIX_EPOCH).expect("after epoch");
    assert_eq!(d.as_secs(), 1_795_555_162);
    assert_eq!(d.subsec_micros(), 123_456);
    assert_eq!(parse_timestamp(""), None);
    assert_eq!(parse_timestamp("n/a"), None);
}
