//! Tests of the `/proc` readers, against this test process and fixed texts.

use super::*;

/// The calling thread's tid, from the name `/proc/thread-self` links
/// to (`<pid>/task/<tid>`).
fn current_tid() -> i32 {
    let link = fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|name| name.to_str()?.parse().ok())
        .expect("tid in /proc/thread-self")
}

#[test]
fn kernel_stack_lines_lose_their_address_field() {
    let text = "[<0>] do_wait+0x1a5/0x2d0\n[<0>] kernel_wait4+0xa6/0x140\n\n[<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e\n";
    assert_eq!(
        parse_kernel_stack(text),
        vec![
            "do_wait+0x1a5/0x2d0",
            "kernel_wait4+0xa6/0x140",
            "entry_SYSCALL_64_after_hwframe+0x76/0x7e"
        ]
    );
    assert!(parse_kernel_stack("").is_empty());
    assert!(kernel_stack(0).is_empty());
    assert!(kernel_stack(-5).is_empty());
}

#[test]
fn clock_ticks_are_sane() {
    let t = clock_ticks_per_second();
    assert!((1..=10_000).contains(&t), "{t}");
}

#[test]
fn auxv_entries_are_found_up_to_the_end_marker() {
    let words = |pairs: &[(usize, usize)]| -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|&(kind, value)| [kind, value])
            .flat_map(usize::to_ne_bytes)
            .collect()
    };
    let auxv = words(&[(6, 4096), (17, 250), (0, 0), (17, 1)]);
    assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(250));
    assert_eq!(auxv_value(&auxv, 6), Some(4096));
    assert_eq!(auxv_value(&words(&[(0, 0), (17, 100)]), AT_CLKTCK), None);
    assert_eq!(auxv_value(&auxv[..7], AT_CLKTCK), None);
    assert_eq!(auxv_value(&[], AT_CLKTCK), None);
}

#[test]
fn stat_with_spaces_and_parentheses_in_the_name() {
    let line = "4242 (we(ird) na)me) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                250 50 0 0 20 0 3 0 12345 1000000 200 18446744073709551615";
    let stat = parse_stat(line).unwrap();
    assert_eq!(stat.comm, "we(ird) na)me");
    assert_eq!(stat.state, 'S');
    assert_eq!(stat.utime, 250);
    assert_eq!(stat.stime, 50);
    assert_eq!(stat.starttime, 12345);
}

#[test]
fn stat_that_is_cut_short_keeps_what_it_has() {
    let stat = parse_stat("1 (x) R 0 1").unwrap();
    assert_eq!(stat.comm, "x");
    assert_eq!(stat.state, 'R');
    assert_eq!((stat.utime, stat.stime, stat.starttime), (0, 0, 0));
    assert_eq!(parse_stat(""), None);
    assert_eq!(parse_stat("1 (x)"), None);
    assert_eq!(parse_stat("1 )x( R"), None);
}

#[test]
fn syscall_file_forms() {
    assert_eq!(parse_syscall("running\n"), None);
    assert_eq!(parse_syscall("-1 0x7ffd 0x7f00\n"), None);
    assert_eq!(parse_syscall(""), None);
    assert_eq!(parse_syscall("garbage"), None);
    let info = parse_syscall("202 0x1 0x2 0x3 0x4 0x5 0x6 0x7ffd 0x7f00\n").unwrap();
    assert_eq!(info.number, 202);
    assert_eq!(info.name.as_deref(), Some("futex"));
    let unknown = parse_syscall("9999 0x0\n").unwrap();
    assert_eq!(unknown.name, None);
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn x86_64_syscall_numbers() {
    assert_eq!(syscall_name(0), Some("read"));
    assert_eq!(syscall_name(7), Some("poll"));
    assert_eq!(syscall_name(35), Some("nanosleep"));
    assert_eq!(syscall_name(202), Some("futex"));
    assert_eq!(syscall_name(230), Some("clock_nanosleep"));
    assert_eq!(syscall_name(232), Some("epoll_wait"));
    assert_eq!(syscall_name(281), Some("epoll_pwait"));
    assert_eq!(syscall_name(441), Some("epoll_pwait2"));
}

#[test]
fn wchan_zero_is_none() {
    assert_eq!(parse_wchan("0"), None);
    assert_eq!(parse_wchan(""), None);
    assert_eq!(
        parse_wchan("do_epoll_wait\n").as_deref(),
        Some("do_epoll_wait")
    );
}

#[test]
fn small_parsers() {
    assert_eq!(state_name('D'), "disk sleep");
    assert_eq!(state_name('?'), "unknown");
    assert_eq!(parse_kib("  2188 kB"), Some(2188 * 1024));
    assert_eq!(parse_kib("kB"), None);
    assert_eq!(
        status_field("Name:\tx\nThreads:\t7\n", "Threads:"),
        Some("7")
    );
    assert_eq!(
        parse_uptime("600.83 964.14\n"),
        Some(Duration::from_millis(600_830))
    );
    assert_eq!(parse_uptime("nan"), None);
    assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
    assert_eq!(ticks_to_duration(1, 0), Duration::from_secs(1));
}

#[test]
fn lists_and_reads_this_thread() {
    let tids = list_threads();
    assert!(!tids.is_empty());
    let me = current_tid();
    assert!(tids.contains(&me), "{me} not in {tids:?}");
    let facts = read_thread(me).expect("own thread readable");
    assert_eq!(facts.tid, me);
    assert_eq!(facts.state, 'R', "the reading thread is running: {facts:?}");
    // It reads its own syscall file from inside read(2).
    let syscall = facts.syscall.as_ref().and_then(|s| s.name.as_deref());
    assert!(matches!(syscall, None | Some("read")), "{facts:?}");
    assert!(!facts.name.is_empty());
}

#[test]
fn sleeping_thread_facts() {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    use std::sync::Arc;
    let tid = Arc::new(AtomicI32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (tid, stop) = (tid.clone(), stop.clone());
        std::thread::Builder::new()
            .name("facts-sleeper".into())
            .spawn(move || {
                tid.store(current_tid(), Ordering::SeqCst);
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .unwrap()
    };
    while tid.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let tid = tid.load(Ordering::SeqCst);
    // The thread spends nearly all its time in clock_nanosleep; retry a
    // few times in case a read lands in its short running window.
    let mut seen = None;
    let mut alone = None;
    for _ in 0..200 {
        let facts = read_thread(tid).expect("thread alive");
        if facts.state == 'S' && facts.syscall.is_some() {
            alone = read_syscall(tid);
            seen = Some(facts);
            if alone.as_ref().is_some_and(|s| s.user_regs.is_some()) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::SeqCst);
    handle.join().unwrap();
    let facts = seen.expect("sleeping thread seen in state S");
    assert_eq!(facts.name, "facts-sleeper");
    assert_eq!(facts.state_name, "sleeping");
    let name = facts.syscall.unwrap().name.map(String::from);
    assert!(
        matches!(name.as_deref(), Some("clock_nanosleep") | Some("nanosleep")),
        "{name:?}"
    );
    // The system call alone, as the capture re-reads it.
    let alone = alone.expect("read_syscall of a sleeping thread");
    assert!(
        matches!(
            alone.name.as_deref(),
            Some("clock_nanosleep") | Some("nanosleep")
        ),
        "{alone:?}"
    );
    assert!(
        alone.user_regs.is_some_and(|(sp, pc)| sp != 0 && pc != 0),
        "{alone:?}"
    );
    assert!(run_count(current_tid()).is_some_and(|n| n > 0));
    // Gone threads are None.
    let mut exited = None;
    for _ in 0..1000 {
        exited = read_thread(tid);
        if exited.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(exited, None);
    assert_eq!(read_thread(0), None);
    assert_eq!(read_thread(-5), None);
    assert_eq!(read_syscall(tid), None);
    assert_eq!(read_syscall(0), None);
    assert_eq!(run_count(tid), None);
}

#[test]
fn process_facts_are_plausible() {
    let facts = process_facts();
    assert_eq!(facts.pid, std::process::id());
    assert!(facts.rss_bytes > 0);
    assert!(facts.threads >= 1);
    assert!(facts.executable.is_some());
    // Rust test binaries are linked with a build id by default on Linux.
    let id = facts.build_id.expect("test binary has a GNU build id");
    assert!(
        id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(build_id(), Some(id));
    assert!(facts.uptime < Duration::from_secs(24 * 3600));
}

#[test]
fn list_threads_of_missing_dir_is_empty() {
    assert!(list_threads_in(Path::new("/nonexistent/task")).is_empty());
}
