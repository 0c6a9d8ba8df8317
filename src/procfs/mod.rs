//! Facts about this process and its threads, read from `/proc`.
//!
//! This module owns everything loopwatch learns from procfs for a stall
//! report: the list of threads (`/proc/self/task`), each thread's name,
//! scheduler state, wait channel, current system call and CPU time, and the
//! process-wide facts (pid, resident memory, thread count, uptime,
//! executable path and its GNU build id).
//!
//! For a thread that sleeps in the kernel it also reads the kernel stack
//! (`/proc/self/task/TID/stack`), when the process may.
//!
//! It also owns the kernel's clock-tick rate that `/proc` counts CPU times
//! in, read from the auxiliary vector (`/proc/self/auxv`) rather than with
//! `sysconf`, so this module needs no `unsafe` and no other loopwatch
//! module. It does not capture stacks (the `stacks` module does, and attaches
//! these facts to each thread). Odd or missing `/proc` content never
//! panics: the affected field is `None` or a neutral default, and a thread
//! that exited between listing and reading is simply `None`.

use std::borrow::Cow;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The thread ids (tids) of this process, from `/proc/self/task`, sorted.
///
/// Empty if `/proc` is not mounted. Threads may start or exit right after
/// the directory was read; callers treat the list as a snapshot.
///
/// The kernel ends a listing of `task/` early when the thread it is
/// visiting exits at that moment, so under thread churn one read can miss
/// long-lived threads. The directory is therefore read until a read adds no
/// new thread (at most four times) and the union is returned.
pub fn list_threads() -> Vec<i32> {
    list_threads_in(Path::new("/proc/self/task"))
}

fn list_threads_in(dir: &Path) -> Vec<i32> {
    let mut all = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let before = all.len();
        let Ok(entries) = fs::read_dir(dir) else {
            break;
        };
        all.extend(
            entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
                .filter(|tid| *tid > 0),
        );
        if before > 0 && all.len() == before {
            break;
        }
    }
    all.into_iter().collect()
}

/// What `/proc` says about one thread at the moment it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadFacts {
    /// The kernel thread id.
    pub tid: i32,
    /// The thread's name (`comm`, at most 15 bytes, set with
    /// `pthread_setname_np` or `std::thread::Builder::name`).
    pub name: String,
    /// The scheduler state letter from `/proc/.../stat`: `R`, `S`, `D`, `T`, ...
    pub state: char,
    /// The state spelled out: `"running"`, `"sleeping"`, `"disk sleep"`, ...
    pub state_name: Cow<'static, str>,
    /// The kernel function the thread waits in (`/proc/.../wchan`), when the
    /// kernel discloses it (it shows `0` to unprivileged readers on many
    /// kernels, which is `None` here).
    pub wchan: Option<String>,
    /// The system call the thread is blocked in; `None` while it runs in
    /// user space, or when it is blocked outside a system call.
    pub syscall: Option<SyscallInfo>,
    /// CPU time consumed so far, user plus system.
    #[serde(with = "crate::clock::secs_f64")]
    pub cpu_time: Duration,
}

/// A system call a thread is blocked in, from `/proc/.../syscall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallInfo {
    /// The system call number of this architecture.
    pub number: i64,
    /// Its name, for the calls a stuck thread is commonly found in
    /// (`futex`, `epoll_wait`, `clock_nanosleep`, `read`, ...).
    pub name: Option<Cow<'static, str>>,
    /// The user-space stack pointer and instruction pointer at the system
    /// call (the last two fields of `/proc/.../syscall`): where the
    /// thread's user stack can be read without interrupting it.
    #[serde(default, skip)]
    pub user_regs: Option<(u64, u64)>,
}

/// Reads the facts of thread `tid` of this process.
///
/// `None` if the thread no longer exists (or `/proc` is unreadable). Fields
/// that cannot be read or parsed are `None` or defaults, never a panic.
pub fn read_thread(tid: i32) -> Option<ThreadFacts> {
    if tid <= 0 {
        return None;
    }
    let dir = format!("/proc/self/task/{tid}");
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    let parsed = parse_stat(&stat)?;
    let ticks = clock_ticks_per_second();
    let wchan = fs::read_to_string(format!("{dir}/wchan"))
        .ok()
        .and_then(|s| parse_wchan(&s));
    let syscall = read_syscall(tid);
    Some(ThreadFacts {
        tid,
        name: parsed.comm,
        state: parsed.state,
        state_name: Cow::Borrowed(state_name(parsed.state)),
        wchan,
        syscall,
        cpu_time: ticks_to_duration(parsed.utime.saturating_add(parsed.stime), ticks),
    })
}

/// The system call thread `tid` of this process is in, alone (one file
/// read instead of [`read_thread`]'s three); `None` when it is running,
/// blocked outside a system call, or gone.
pub fn read_syscall(tid: i32) -> Option<SyscallInfo> {
    if tid <= 0 {
        return None;
    }
    fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .ok()
        .and_then(|s| parse_syscall(&s))
}

/// How many times thread `tid` of this process has been put on a CPU (the
/// third field of `/proc/<tid>/schedstat`): unchanged between two reads
/// means it did not run in between. `None` when it is gone.
pub fn run_count(tid: i32) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_ascii_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The kernel stack of thread `tid` (`/proc/self/task/TID/stack`), one
/// function per entry, innermost first (`do_wait+0x1a5/0x2d0`).
///
/// Empty when the file cannot be read: the kernel shows it only to a
/// process with `CAP_SYS_ADMIN`. Meant for threads that sleep in the kernel
/// (state `D`) or are stopped; for a running thread it is meaningless.
pub fn kernel_stack(tid: i32) -> Vec<String> {
    if tid <= 0 {
        return Vec::new();
    }
    fs::read_to_string(format!("/proc/self/task/{tid}/stack"))
        .map(|s| parse_kernel_stack(&s))
        .unwrap_or_default()
}

/// `[<0>] do_wait+0x1a5/0x2d0` lines; the address field (zeroed for
/// unprivileged readers anyway) is dropped. At most 64 entries.
fn parse_kernel_stack(s: &str) -> Vec<String> {
    s.lines()
        .filter_map(|l| {
            let l = l.trim();
            let f = match l.split_once("] ") {
                Some((_, f)) => f.trim(),
                None => l,
            };
            (!f.is_empty()).then(|| f.to_string())
        })
        .take(64)
        .collect()
}

/// Facts about the whole process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessFacts {
    /// The process id.
    pub pid: u32,
    /// Resident set size in bytes (`VmRSS`); 0 if unknown.
    pub rss_bytes: u64,
    /// Number of threads; 0 if unknown.
    pub threads: usize,
    /// Time since the process started; zero if unknown.
    #[serde(with = "crate::clock::secs_f64")]
    pub uptime: Duration,
    /// The GNU build id of the executable, in hex, if it has one. It names
    /// the exact binary whose debug info symbolizes the report.
    pub build_id: Option<String>,
    /// The path of the executable (`/proc/self/exe`).
    pub executable: Option<String>,
    /// The host's name (`/proc/sys/kernel/hostname`, the name of the UTS
    /// namespace the process runs in), so reports gathered from many hosts
    /// say where they came from. `None` if unreadable, and in reports
    /// written before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Reads the process-wide facts. The build id is read once and cached.
pub fn process_facts() -> ProcessFacts {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_bytes = status_field(&status, "VmRSS:")
        .and_then(parse_kib)
        .unwrap_or(0);
    let threads = status_field(&status, "Threads:")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or_else(|| list_threads().len());
    let uptime = process_uptime().unwrap_or_default();
    ProcessFacts {
        pid: std::process::id(),
        rss_bytes,
        threads,
        uptime,
        build_id: build_id(),
        executable: fs::read_link("/proc/self/exe")
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        host: fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty()),
    }
}

/// The GNU build id of `/proc/self/exe` in lower-case hex, read once.
pub fn build_id() -> Option<String> {
    static BUILD_ID: OnceLock<Option<String>> = OnceLock::new();
    BUILD_ID
        .get_or_init(|| read_build_id(Path::new("/proc/self/exe")))
        .clone()
}

/// Reads the `NT_GNU_BUILD_ID` note of an ELF file without loading the whole
/// file: `object` reads only the headers and the note through a cache.
fn read_build_id(path: &Path) -> Option<String> {
    use object::Object;
    let file = fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    let id = obj.build_id().ok()??;
    if id.is_empty() {
        return None;
    }
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The fields of `/proc/.../stat` that loopwatch uses.
#[derive(Debug, PartialEq)]
struct Stat {
    comm: String,
    state: char,
    utime: u64,
    stime: u64,
    starttime: u64,
}

/// Parses `/proc/.../stat`. The command name sits between the first `(` and
/// the *last* `)`: it may itself contain spaces and parentheses.
fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = s[open + 1..close].to_string();
    let mut rest = s[close + 1..].split_ascii_whitespace();
    // Fields after the name, numbered as in proc(5): 3 = state, 14 = utime,
    // 15 = stime, 22 = starttime.
    let state = rest.next()?.chars().next()?;
    let mut field = |n: usize| -> Option<u64> {
        // `rest` is positioned at field 4 after reading the state; `n` is
        // the distance from the last consumed field.
        rest.nth(n)?.parse::<u64>().ok()
    };
    let utime = field(10); // fields 4..=13 skipped, 14 read
    let stime = field(0); // 15
    let starttime = field(6); // 16..=21 skipped, 22 read
    Some(Stat {
        comm,
        state,
        utime: utime.unwrap_or(0),
        stime: stime.unwrap_or(0),
        starttime: starttime.unwrap_or(0),
    })
}

/// `wchan` is `0` (or empty) when the thread is runnable or the kernel hides it.
fn parse_wchan(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        None
    } else {
        Some(s.to_string())
    }
}

/// `/proc/.../syscall` is `running`, `-1 sp pc` (blocked, but not in a
/// system call) or `nr arg1 .. arg6 sp pc`.
fn parse_syscall(s: &str) -> Option<SyscallInfo> {
    let first = s.split_ascii_whitespace().next()?;
    let number = first.parse::<i64>().ok()?;
    if number < 0 {
        return None;
    }
    let fields: Vec<&str> = s.split_ascii_whitespace().collect();
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
    let user_regs = match fields.as_slice() {
        [_, _, _, _, _, _, _, sp, pc] => hex(sp).zip(hex(pc)),
        _ => None,
    };
    Some(SyscallInfo {
        number,
        name: syscall_name(number).map(Cow::Borrowed),
        user_regs,
    })
}

/// Spells out a state letter of proc(5).
fn state_name(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk sleep",
        'T' => "stopped",
        't' => "tracing stop",
        'Z' => "zombie",
        'X' | 'x' => "dead",
        'I' => "idle",
        'P' => "parked",
        'W' => "waking",
        'K' => "wakekill",
        _ => "unknown",
    }
}

/// The names of the system calls a stuck thread is usually found in.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn syscall_name(number: i64) -> Option<&'static str> {
    const NAMES: &[(libc::c_long, &str)] = &[
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_open, "open"),
        (libc::SYS_close, "close"),
        (libc::SYS_poll, "poll"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_pread64, "pread64"),
        (libc::SYS_pwrite64, "pwrite64"),
        (libc::SYS_readv, "readv"),
        (libc::SYS_writev, "writev"),
        (libc::SYS_select, "select"),
        (libc::SYS_sched_yield, "sched_yield"),
        (libc::SYS_pause, "pause"),
        (libc::SYS_nanosleep, "nanosleep"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_accept, "accept"),
        (libc::SYS_sendto, "sendto"),
        (libc::SYS_recvfrom, "recvfrom"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_recvmsg, "recvmsg"),
        (libc::SYS_wait4, "wait4"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_vfork, "vfork"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_flock, "flock"),
        (libc::SYS_fsync, "fsync"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_sync, "sync"),
        (libc::SYS_rt_sigsuspend, "rt_sigsuspend"),
        (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
        (libc::SYS_futex, "futex"),
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_clock_nanosleep, "clock_nanosleep"),
        (libc::SYS_waitid, "waitid"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_pselect6, "pselect6"),
        (libc::SYS_ppoll, "ppoll"),
        (libc::SYS_sync_file_range, "sync_file_range"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_fallocate, "fallocate"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_recvmmsg, "recvmmsg"),
        (libc::SYS_sendmmsg, "sendmmsg"),
        (libc::SYS_getrandom, "getrandom"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_epoll_pwait2, "epoll_pwait2"),
        (libc::SYS_futex_waitv, "futex_waitv"),
    ];
    NAMES
        .iter()
        .find(|(nr, _)| *nr == number)
        .map(|(_, name)| *name)
}

/// Other architectures number their system calls differently; loopwatch
/// names them only on x86_64.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn syscall_name(_number: i64) -> Option<&'static str> {
    None
}

/// The clock-tick rate (`USER_HZ`) `/proc` counts CPU times in, read once.
///
/// It is the `AT_CLKTCK` entry of the auxiliary vector, which is where the
/// C library's `sysconf(_SC_CLK_TCK)` gets it too; 100, Linux's `USER_HZ`
/// on every architecture, if `/proc/self/auxv` cannot be read or lacks it.
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| auxv_value(&auxv, AT_CLKTCK))
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    })
}

/// The auxiliary vector's entry type for the clock-tick rate (`<elf.h>`).
const AT_CLKTCK: u64 = 17;

/// The value of entry `key` in an auxiliary vector: pairs of native-endian
/// words (type, value), ended by type 0 (`AT_NULL`).
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| -> u64 {
        let mut buf = [0u8; WORD];
        buf.copy_from_slice(bytes);
        usize::from_ne_bytes(buf) as u64
    };
    auxv.chunks_exact(2 * WORD)
        .map(|pair| (word(&pair[..WORD]), word(&pair[WORD..])))
        .take_while(|&(kind, _)| kind != 0)
        .find(|&(kind, _)| kind == key)
        .map(|(_, value)| value)
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    let secs = ticks / per_second;
    let rem = ticks % per_second;
    Duration::from_secs(secs) + Duration::from_nanos(rem * 1_000_000_000 / per_second)
}

/// The value after `key` on the line of `/proc/self/status` that starts with it.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(str::trim)
}

/// `"  2188 kB"` → 2188 × 1024 bytes.
fn parse_kib(value: &str) -> Option<u64> {
    let number = value.split_ascii_whitespace().next()?;
    number.parse::<u64>().ok()?.checked_mul(1024)
}

/// Process uptime: system uptime minus the process start time (both since boot).
fn process_uptime() -> Option<Duration> {
    let uptime = fs::read_to_string("/proc/uptime").ok()?;
    let since_boot = parse_uptime(&uptime)?;
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let started = ticks_to_duration(parse_stat(&stat)?.starttime, clock_ticks_per_second());
    Some(since_boot.saturating_sub(started))
}

/// The first field of `/proc/uptime`: seconds since boot, with a fraction.
fn parse_uptime(s: &str) -> Option<Duration> {
    let secs = s.split_ascii_whitespace().next()?.parse::<f64>().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests;
