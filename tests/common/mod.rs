//! Test support: running a scenario in a child process with its own
//! environment, and a fake systemd notify socket that records datagrams.
//!
//! Environment variables are process-wide, and `cargo test` runs tests as
//! threads of one process, so every test that needs `NOTIFY_SOCKET` or
//! `WATCHDOG_*` re-runs its own test binary as a child with
//! `LOOPWATCH_TEST_ROLE` set; the same test function then plays the child.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The role this process plays, when it was started as a child.
pub fn role() -> Option<String> {
    std::env::var("LOOPWATCH_TEST_ROLE").ok()
}

/// Runs the test `test` of the current test binary as a child playing
/// `role`, with `envs` set, and returns its output.
pub fn run_child(test: &str, role: &str, envs: &[(&str, String)]) -> Output {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("LOOPWATCH_TEST_ROLE", role)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn child test process")
}

/// Asserts that a child succeeded, showing its output if not.
pub fn assert_child_ok(out: &Output) {
    assert!(
        out.status.success(),
        "child failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fake `NOTIFY_SOCKET`: a datagram socket that records what arrives.
pub struct NotifyListener {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    sock: UnixDatagram,
    pub start: Instant,
}

/// One datagram, with when it arrived (since the listener was made).
#[derive(Debug, Clone)]
pub struct Datagram {
    pub at: Duration,
    pub text: String,
}

impl Datagram {
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
    pub fn status(&self) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix("STATUS="))
    }
    pub fn marker(&self) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix("X_TEST="))
    }
}

impl NotifyListener {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        NotifyListener {
            _dir: dir,
            path,
            sock,
            start: Instant::now(),
        }
    }

    pub fn env(&self) -> (&'static str, String) {
        ("NOTIFY_SOCKET", self.path.display().to_string())
    }

    /// Runs `f` (which runs the child) on another thread while recording;
    /// returns what `f` returned and every datagram, in order.
    pub fn record<T: Send>(&self, f: impl FnOnce() -> T + Send) -> (T, Vec<Datagram>) {
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let r = f();
                done.store(true, std::sync::atomic::Ordering::Release);
                r
            });
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                match self.sock.recv(&mut buf) {
                    Ok(n) => got.push(Datagram {
                        at: self.start.elapsed(),
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    }),
                    Err(_) if done.load(std::sync::atomic::Ordering::Acquire) => break,
                    Err(_) => {}
                }
            }
            (h.join().expect("child runner"), got)
        })
    }
}

/// Sends a marker datagram `X_TEST=<what>` to the notify socket (from the
/// child), so the parent sees it on the same timeline as loopwatch's messages.
pub fn mark(what: &str) {
    let path = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET in child");
    let s = UnixDatagram::unbound().expect("socket");
    s.send_to(format!("X_TEST={what}\n").as_bytes(), path)
        .expect("send marker");
}

/// Blocks the calling thread (meant to be a runtime worker) for `d`.
#[inline(never)]
pub fn block_for(d: Duration) {
    std::thread::sleep(d);
}

/// The demo daemon built by `cargo test` (examples are built with the tests).
pub fn demo_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current test binary");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/demo
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("test binary lives in target/<profile>/deps");
    let demo = profile_dir.join("examples").join("demo");
    assert!(
        demo.is_file(),
        "the demo example is missing at {}: run the tests with `cargo test` (which builds examples) \
         or `cargo build --example demo` first",
        demo.display()
    );
    demo
}

/// Waits up to `timeout` for `f` to return `Some`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The newest `stall-*.json` report in `dir`, parsed.
pub fn newest_report(dir: &std::path::Path) -> Option<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("stall-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    let text = std::fs::read_to_string(files.last()?).ok()?;
    Some(serde_json::from_str(&text).expect("a report on disk is always complete JSON"))
}

/// Kills a child on drop, so a failing test leaves no stray daemon.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.1 GET on loopback: (status code, body). A test client,
/// not a server: one request, `Connection: close`, a read timeout.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The demo running with `--metrics-addr 127.0.0.1:0` and extra `args`;
/// returns the child and the address it serves metrics on.
pub fn demo_with_metrics(args: &[&str], envs: &[(&str, String)]) -> (KillOnDrop, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(demo_bin());
    cmd.args(["--metrics-addr", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start demo");
    let stdout = child.stdout.take().expect("stdout");
    let guard = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("metrics on http://").nth(1) {
                let addr = rest.split('/').next().unwrap_or_default().to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the demo announces its metrics address");
    (guard, addr)
}

/// Blocks the calling thread (meant to be a runtime's thread) until `flag`
/// is set: a stall whose end the test decides.
#[inline(never)]
pub fn block_until(flag: &std::sync::atomic::AtomicBool) {
    // Long sleeps: the thread is almost always in nanosleep when captured,
    // rarely runnable between two sleeps (which a loaded machine stretches).
    while !flag.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A current_thread runtime with I/O and timers: one thread runs every
/// task, so a blocking call anywhere stalls the loop.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a current_thread runtime")
}

impl NotifyListener {
    /// Runs test `test` as a child playing `role` with this socket as its
    /// `NOTIFY_SOCKET` (plus `envs`), recording what it sends meanwhile.
    pub fn run_child(
        &self,
        test: &str,
        role: &str,
        envs: &[(&str, String)],
    ) -> (Output, Vec<Datagram>) {
        let mut all = vec![self.env()];
        all.extend(envs.iter().cloned());
        self.record(|| run_child(test, role, &all))
    }
}

/// A multi_thread runtime of `workers` worker threads, with I/O and timers.
pub fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// A multi_thread runtime of `workers` worker threads, with I/O and timers,
/// whose builder got `hooks` installed (for `watch_with_hooks`).
pub fn hooked_runtime(hooks: &loopwatch::RuntimeHooks, workers: usize) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(workers).enable_all();
    hooks.install(&mut b);
    b.build().unwrap()
}

/// Waits up to `timeout` for the newest report in `dir` to be `ready`, and
/// returns it.
pub fn wait_for_report(
    dir: &std::path::Path,
    timeout: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    wait_for(timeout, || {
        let r = newest_report(dir)?;
        ready(&r).then_some(r)
    })
}

/// Whether a report has had its second capture taken.
pub fn has_two_captures(r: &serde_json::Value) -> bool {
    r["captures"].as_array().is_some_and(|c| c.len() >= 2)
}

/// The content of the (first) `.txt` report in `dir`.
pub fn text_report(dir: &std::path::Path) -> String {
    std::fs::read_to_string(
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "txt"))
            .expect("a text report"),
    )
    .unwrap()
}

/// A demo daemon (`bin`) that stalls in the way `--stall-kind` names, 0.5 s
/// after it starts, for `--stall-for` seconds (or `forever`), with a 300 ms
/// threshold and its reports in a directory of its own; its output is
/// discarded and it is killed on drop.
pub struct DemoStall {
    // Declared first: the demo is killed before its directory is removed.
    _child: KillOnDrop,
    /// Where the demo writes its reports.
    pub dir: tempfile::TempDir,
}

impl DemoStall {
    /// The demo built with the tests ([`demo_bin`]) stalling as `kind`.
    pub fn start(kind: &str, stall_for: &str) -> Self {
        Self::start_bin(&demo_bin(), kind, stall_for)
    }

    /// The demo binary `bin` stalling as `kind`.
    pub fn start_bin(bin: &std::path::Path, kind: &str, stall_for: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args([
                "--stall-after",
                "0.5",
                "--stall-kind",
                kind,
                "--stall-for",
                stall_for,
                "--threshold-ms",
                "300",
                "--report-dir",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start demo");
        DemoStall {
            _child: KillOnDrop(child),
            dir,
        }
    }

    /// Waits up to `timeout` for the demo's newest report to be `ready`.
    pub fn report_when(
        &self,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        wait_for_report(self.dir.path(), timeout, ready)
    }

    /// The demo's newest report now, if any.
    pub fn newest_report(&self) -> Option<serde_json::Value> {
        newest_report(self.dir.path())
    }
}

/// A small tmpfs mounted for the test (it needs root), unmounted on drop.
pub struct SmallTmpfs(pub tempfile::TempDir);

impl SmallTmpfs {
    /// Mounts a tmpfs of `size` (`64k`), mode 0700, on a fresh directory.
    pub fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root (it fills a small tmpfs to test a full disk)"
        );
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
