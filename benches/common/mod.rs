//! Shared helpers for loopwatch's benchmarks: statistics, tables, RSS,
//! runtimes, blocking tasks, fake systemd notify sockets and the seed's
//! in-loop heartbeat.
//!
//! Each bench binary includes this module with `mod common;` and uses only
//! part of it.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// True when the bench runs for real (`cargo bench` passes `--bench`).
/// Without it (`cargo test --benches`), benches run a short smoke version.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench") && std::env::var_os("LOOPWATCH_BENCH_QUICK").is_none()
}

/// `full` in a real run, `quick` in a smoke run.
pub fn pick<T>(full: T, quick: T) -> T {
    if full_run() {
        full
    } else {
        quick
    }
}

/// Where benches may put files: the cargo target directory (a real disk).
pub fn scratch_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // target/release/deps/<bench>-<hash> → target
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("loopwatch-bench");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

// ---------------------------------------------------------------- statistics

/// Summary statistics of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted data, `q` in 0..=1.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Statistics of `v`.
pub fn stats(v: &[f64]) -> Stats {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    Stats {
        n: s.len(),
        min: s.first().copied().unwrap_or(f64::NAN),
        median,
        p99: percentile(&s, 0.99),
        max: s.last().copied().unwrap_or(f64::NAN),
        mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
    }
}

/// A distribution-free 95 % confidence interval of the median of `v`
/// (order statistics: ranks n/2 ∓ 0.98·√n). With fewer than 6 values it is
/// the whole range.
pub fn median_ci95(v: &[f64]) -> (f64, f64) {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = s.len() as f64;
    let k = (n / 2.0 - 0.98 * n.sqrt()).floor().max(1.0) as usize;
    let lo = s[k - 1];
    let hi = s[(s.len() + 1 - k).min(s.len()) - 1];
    (lo, hi)
}

/// Median of `v`.
pub fn median(v: &[f64]) -> f64 {
    stats(v).median
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds of a duration.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Signed difference `a - b` in milliseconds.
pub fn diff_ms(a: Duration, b: Duration) -> f64 {
    ms(a) - ms(b)
}

/// Signed difference between two system times, in milliseconds.
pub fn sys_diff_ms(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

// --------------------------------------------------------------------- tables

/// A plain-text table printed to stdout.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Table {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = (0..cols)
                .map(|i| {
                    let c = r.get(i).map(String::as_str).unwrap_or("");
                    format!("{c:<w$}", w = width[i])
                })
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = String::new();
        out.push_str(&format!("\n### {}\n\n", self.title));
        out.push_str(&line(&self.header));
        out.push('\n');
        let sep: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", sep.join("-|-")));
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
}

/// `value` with `digits` decimals.
pub fn f(value: f64, digits: usize) -> String {
    format!("{value:.digits$}")
}

/// "pass" or "MISS".
pub fn verdict(ok: bool) -> String {
    if ok { "pass" } else { "MISS" }.to_string()
}

// ------------------------------------------------------------------------ RSS

/// Resident set size of this process, in KiB (`/proc/self/statm`).
pub fn rss_kib() -> u64 {
    rss_split_kib().0
}

/// Resident set size and its file-backed (shared) part, in KiB
/// (`/proc/self/statm` fields 2 and 3).
pub fn rss_split_kib() -> (u64, u64) {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let field = |i: usize| -> u64 {
        statm
            .split_whitespace()
            .nth(i)
            .and_then(|p| p.parse().ok())
            .expect("statm field")
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let kib = |pages: u64| pages * (page.max(4096) as u64) / 1024;
    (kib(field(1)), kib(field(2)))
}

/// CPU time (user + system) this process has used so far, all threads.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Field `field` of `/proc/self/task/<tid>/schedstat` (0: ns on CPU, 1: ns
/// waiting on a run queue), summed over this process's threads whose name
/// starts with `prefix`.
fn threads_schedstat_ns(prefix: &str, field: usize) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(field)?.parse::<u64>().ok())
        .sum()
}

/// Time on CPU (ns) of this process's threads whose name starts with `prefix`.
pub fn threads_cpu_ns(prefix: &str) -> u64 {
    threads_schedstat_ns(prefix, 0)
}

/// Time spent runnable but not running (ns) by this process's threads whose
/// name starts with `prefix`.
pub fn threads_wait_ns(prefix: &str) -> u64 {
    threads_schedstat_ns(prefix, 1)
}

/// Threads in this process (`/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ threads

/// Idle threads that sleep in `park()` until dropped.
pub struct IdleThreads {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl IdleThreads {
    pub fn new() -> Self {
        IdleThreads {
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        }
    }

    /// Spawns idle threads until the process has `total` threads.
    pub fn fill_to(&mut self, total: usize) {
        while thread_count() < total {
            let stop = self.stop.clone();
            let h = std::thread::Builder::new()
                .name(format!("idle-{}", self.handles.len()))
                .stack_size(256 * 1024)
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park();
                    }
                })
                .expect("spawn idle thread");
            self.handles.push(h);
            // /proc/self/task shows the thread once it exists in the kernel,
            // which spawn() guarantees.
        }
    }
}

impl Default for IdleThreads {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IdleThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for h in self.handles.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

// ----------------------------------------------------------------- runtimes

/// A current_thread runtime driven by a thread of its own, like a daemon's
/// main loop.
pub struct DrivenRuntime {
    pub handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DrivenRuntime {
    pub fn current_thread(name: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("current_thread runtime");
        let handle = rt.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                rt.block_on(async {
                    let _ = rx.await;
                });
            })
            .expect("spawn runtime thread");
        DrivenRuntime {
            handle,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for DrivenRuntime {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A multi-thread runtime with `workers` workers.
pub fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("multi_thread runtime")
}

/// When a blocking task really started and ended blocking.
#[derive(Clone, Default)]
pub struct BlockTimes {
    inner: Arc<BlockInner>,
}

#[derive(Default)]
struct BlockInner {
    started: AtomicBool,
    ended: AtomicBool,
    times: Mutex<Option<(Instant, SystemTime, Option<Instant>)>>,
    seq: AtomicU64,
}

impl BlockTimes {
    /// When blocking started (Instant and wall clock), once it has.
    pub fn started(&self) -> Option<(Instant, SystemTime)> {
        if !self.inner.started.load(Ordering::Acquire) {
            return None;
        }
        self.inner.times.lock().unwrap().map(|(i, s, _)| (i, s))
    }

    /// Spins (with short sleeps after a while) until blocking started.
    pub fn wait_started(&self) -> (Instant, SystemTime) {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.started() {
                return s;
            }
            if t0.elapsed() > Duration::from_millis(2) {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// True once blocking ended.
    pub fn is_ended(&self) -> bool {
        self.inner.ended.load(Ordering::Acquire)
    }

    /// Waits until blocking ended; returns when.
    pub fn wait_ended(&self) -> Instant {
        loop {
            if self.inner.ended.load(Ordering::Acquire) {
                return self.inner.times.lock().unwrap().unwrap().2.unwrap();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// How a blocking task blocks its worker thread.
#[derive(Clone, Copy, Debug)]
pub enum BlockKind {
    /// `std::thread::sleep`: a blocking system call.
    Sleep,
    /// A busy loop on the clock: CPU-bound.
    Spin,
}

/// Spawns a task on `handle` that blocks its thread for `d`; the returned
/// times say when it really started and ended.
pub fn spawn_block(handle: &tokio::runtime::Handle, d: Duration, kind: BlockKind) -> BlockTimes {
    let times = BlockTimes::default();
    let t = times.clone();
    handle.spawn(async move {
        let start = Instant::now();
        *t.inner.times.lock().unwrap() = Some((start, SystemTime::now(), None));
        t.inner.started.store(true, Ordering::Release);
        match kind {
            BlockKind::Sleep => {
                let end = start + d;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    std::thread::sleep(end - now);
                }
            }
            BlockKind::Spin => {
                while start.elapsed() < d {
                    std::hint::spin_loop();
                }
            }
        }
        let end = Instant::now();
        t.inner.times.lock().unwrap().as_mut().unwrap().2 = Some(end);
        t.inner.seq.fetch_add(1, Ordering::Relaxed);
        t.inner.ended.store(true, Ordering::Release);
    });
    times
}

// -------------------------------------------------------- fake notify socket

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`; a thread
/// records the arrival time of every message.
pub struct NotifySink {
    pub path: PathBuf,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySink {
    pub fn bind(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path).expect("bind fake notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("notify-sink".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !s.load(Ordering::Acquire) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let at = Instant::now();
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        l.lock().unwrap().push((at, text));
                    }
                }
            })
            .expect("spawn notify sink");
        NotifySink {
            path: path.to_path_buf(),
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Arrival times of the `WATCHDOG=1` messages so far.
    pub fn pings(&self) -> Vec<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| *at)
            .collect()
    }
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The seed's heartbeat: a task inside the runtime that sends `WATCHDOG=1`
/// every `every`, the way `sd_notify::notify` does it (a fresh unbound
/// datagram socket per message). Runs until aborted or the runtime shuts
/// down.
pub fn spawn_seed_pinger(
    handle: &tokio::runtime::Handle,
    socket: PathBuf,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    handle.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(s) = UnixDatagram::unbound() {
                let _ = s.send_to(b"WATCHDOG=1\n", &socket);
            }
        }
    })
}

// -------------------------------------------------------------- stderr quiet

/// Sends this process's stderr (fd 2) to a file until dropped: loopwatch
/// prints a compact report on stderr for every stall when no report
/// directory is set, which would drown the bench's tables.
pub struct QuietStderr {
    saved: i32,
}

impl QuietStderr {
    pub fn to(path: &Path) -> Self {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .expect("open stderr log");
        let _ = std::io::stderr().flush();
        // SAFETY: dup/dup2 on valid descriptors; fd 2 is restored in Drop.
        let saved = unsafe { libc::dup(2) };
        // SAFETY: as above.
        unsafe { libc::dup2(file.as_raw_fd(), 2) };
        QuietStderr { saved }
    }
}

impl Drop for QuietStderr {
    fn drop(&mut self) {
        let _ = std::io::stderr().flush();
        if self.saved >= 0 {
            // SAFETY: `saved` is the descriptor dup'ed in `to`.
            unsafe {
                libc::dup2(self.saved, 2);
                libc::close(self.saved);
            }
        }
    }
}

// ------------------------------------------------------------ machine facts

/// One line describing the machine, for the bench's output.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{cpu}, {cores} cores, Linux {kernel}, load average {load}")
}

/// Runs `exe` as a bench child (`LOOPWATCH_BENCH_CHILD=mode`) and returns
/// the numbers on its stdout line that starts with `prefix`; `None` (with
/// the child's stderr printed) when it printed no such line.
pub fn child_numbers(exe: &Path, mode: &str, prefix: &str) -> Option<Vec<f64>> {
    let out = std::process::Command::new(exe)
        .env("LOOPWATCH_BENCH_CHILD", mode)
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|line| {
            line.split_whitespace()
                .map(|x| x.parse::<f64>().unwrap())
                .collect()
        });
    if numbers.is_none() {
        eprintln!(
            "{mode} child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    numbers
}

/// Whether glibc's separate debug file (Debian's `libc6-dbg`) is
/// installed, found by libc's build id under `/usr/lib/debug/.build-id`.
pub fn libc_debug_installed() -> bool {
    let Ok(out) = std::process::Command::new("readelf")
        .args(["-n", "/lib/x86_64-linux-gnu/libc.so.6"])
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(str::trim)
        .filter(|id| id.len() > 2)
        .is_some_and(|id| {
            Path::new(&format!(
                "/usr/lib/debug/.build-id/{}/{}.debug",
                &id[..2],
                &id[2..]
            ))
            .exists()
        })
}

/// Prints the bench's heading.
pub fn heading(name: &str) {
    println!("\n== loopwatch bench: {name} ==");
    println!("machine: {}", machine());
    if !full_run() {
        println!("(smoke run: pass --bench, as `cargo bench` does, for the full measurement)");
    }
}

/// The yield-heavy workload: `tasks` tasks each yielding `yields` times, as
/// one future that ends when all are done and then signals `done`.
pub async fn yield_storm(tasks: usize, yields: usize, done: std::sync::mpsc::Sender<()>) {
    let hs: Vec<_> = (0..tasks)
        .map(|_| {
            tokio::spawn(async move {
                for i in 0..yields {
                    std::hint::black_box(i);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for h in hs {
        h.await.unwrap();
    }
    let _ = done.send(());
}
