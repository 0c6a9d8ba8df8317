//! `RuntimeHooks` from the user's side: installed on a `Builder`, or called
//! from the user's own Builder hooks, it registers the runtime's threads,
//! tells workers from blocking-pool threads, forgets threads that stop,
//! and leaves the runtime working.
//!
//! The stuck-worker detection itself is crate-internal (the monitor drives
//! it); its tests are the unit tests in `src/hooks/tests.rs`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use loopwatch::RuntimeHooks;

/// The calling thread's OS thread id, from `/proc/thread-self`
/// (`<pid>/task/<tid>`).
fn tid() -> i32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/thread-self: {link:?}"))
}

/// Waits until `hooks` knows `n` workers (an idle worker parks soon after
/// the runtime starts, and parking is how a worker makes itself known).
fn wait_for_workers(hooks: &RuntimeHooks, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers = hooks.worker_threads();
        if workers.len() >= n {
            return workers;
        }
        assert!(
            Instant::now() < deadline,
            "only {workers:?} of {n} workers known after 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the user's own hooks counted.
#[derive(Default)]
struct Counts {
    start: AtomicUsize,
    stop: AtomicUsize,
    park: AtomicUsize,
    unpark: AtomicUsize,
    #[cfg(tokio_unstable)]
    before_poll: AtomicUsize,
    #[cfg(tokio_unstable)]
    after_poll: AtomicUsize,
}

/// A Builder with the user's own hooks, each also calling loopwatch's: the
/// composition the `RuntimeHooks` documentation shows.
fn composed(hooks: &RuntimeHooks, counts: &Arc<Counts>, workers: usize) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    builder.on_thread_start({
        let (hooks, counts) = (hooks.clone(), counts.clone());
        move || {
            counts.start.fetch_add(1, Ordering::SeqCst);
            hooks.on_thread_start();
        }
    });
    builder.on_thread_stop({
        let (hooks, counts) = (hooks.clone(), counts.clone());
        move || {
            hooks.on_thread_stop();
            counts.stop.fetch_add(1, Ordering::SeqCst);
        }
    });
    builder.on_thread_park({
        let (hooks, counts) = (hooks.clone(), counts.clone());
        move || {
            counts.park.fetch_add(1, Ordering::SeqCst);
            hooks.on_thread_park();
        }
    });
    builder.on_thread_unpark({
        let (hooks, counts) = (hooks.clone(), counts.clone());
        move || {
            hooks.on_thread_unpark();
            counts.unpark.fetch_add(1, Ordering::SeqCst);
        }
    });
    #[cfg(tokio_unstable)]
    {
        builder.on_before_task_poll({
            let (hooks, counts) = (hooks.clone(), counts.clone());
            move |meta| {
                counts.before_poll.fetch_add(1, Ordering::SeqCst);
                hooks.on_before_task_poll(meta);
            }
        });
        builder.on_after_task_poll({
            let (hooks, counts) = (hooks.clone(), counts.clone());
            move |meta| {
                hooks.on_after_task_poll(meta);
                counts.after_poll.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    builder.build().expect("runtime")
}

#[test]
fn hooks_composed_with_the_users_own_register_every_worker() {
    let hooks = RuntimeHooks::new();
    let counts = Arc::new(Counts::default());
    let rt = composed(&hooks, &counts, 4);

    let workers = wait_for_workers(&hooks, 4);
    assert_eq!(workers.len(), 4, "{workers:?}");
    let distinct: HashSet<i32> = workers.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{workers:?}");

    // The runtime works, and every task runs on a registered worker.
    let results: Vec<(u64, i32)> = rt.block_on(async {
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    (i * i, tid())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(
        results.iter().map(|r| r.0).sum::<u64>(),
        (0..200u64).map(|i| i * i).sum::<u64>()
    );
    let ran_on: HashSet<i32> = results.iter().map(|r| r.1).collect();
    let known: HashSet<i32> = hooks.worker_threads().into_iter().collect();
    assert!(
        ran_on.is_subset(&known),
        "tasks ran on {ran_on:?}, workers known: {known:?}"
    );
    let threads = hooks.threads();
    assert!(known.iter().all(|w| threads.contains(w)), "{threads:?}");

    // The user's own hooks ran too.
    assert!(counts.start.load(Ordering::SeqCst) >= 4);
    assert!(counts.park.load(Ordering::SeqCst) >= 4);
    assert!(counts.unpark.load(Ordering::SeqCst) >= 1);
    #[cfg(tokio_unstable)]
    {
        assert!(counts.before_poll.load(Ordering::SeqCst) >= 200);
        assert!(counts.after_poll.load(Ordering::SeqCst) >= 200);
    }
    assert!(format!("{hooks:?}").contains("workers: 4"), "{hooks:?}");

    // Shutdown: every thread stopped and was forgotten.
    drop(rt);
    assert_eq!(
        counts.start.load(Ordering::SeqCst),
        counts.stop.load(Ordering::SeqCst)
    );
    assert!(hooks.threads().is_empty(), "{:?}", hooks.threads());
    assert!(hooks.worker_threads().is_empty());
}

#[test]
fn blocking_pool_threads_are_registered_but_are_not_workers() {
    let hooks = RuntimeHooks::new();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    let rt = hooks.install(&mut builder).build().expect("runtime");
    wait_for_workers(&hooks, 2);

    let (tx, rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocking = rt.spawn_blocking(move || {
        tx.send(tid()).unwrap();
        release_rx.recv().unwrap();
    });
    let blocking_tid = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        hooks.threads().contains(&blocking_tid),
        "{blocking_tid} not in {:?}",
        hooks.threads()
    );
    assert!(
        !hooks.worker_threads().contains(&blocking_tid),
        "the blocking thread {blocking_tid} counted as a worker: {:?}",
        hooks.worker_threads()
    );
    assert_eq!(hooks.worker_threads().len(), 2);
    release_tx.send(()).unwrap();
    rt.block_on(blocking).unwrap();
    drop(rt);
    assert!(hooks.threads().is_empty());
}

#[test]
fn each_runtime_keeps_its_own_threads() {
    let (a, b) = (RuntimeHooks::new(), RuntimeHooks::new());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    let rt_a = a.install(&mut builder).build().unwrap();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(3);
    let rt_b = b.install(&mut builder).build().unwrap();
    let (wa, wb) = (wait_for_workers(&a, 2), wait_for_workers(&b, 3));
    assert_eq!((wa.len(), wb.len()), (2, 3));
    assert!(wa.iter().all(|t| !b.threads().contains(t)));
    assert!(wb.iter().all(|t| !a.threads().contains(t)));
    // A clone is the same registry.
    assert_eq!(a.clone().worker_threads().len(), 2);
    drop(rt_a);
    assert!(a.threads().is_empty());
    assert_eq!(b.worker_threads().len(), 3);
    drop(rt_b);
    assert!(b.threads().is_empty());
}

#[test]
fn hooks_on_a_current_thread_runtime_are_harmless() {
    let hooks = RuntimeHooks::new();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let rt = hooks.install(builder.enable_all()).build().unwrap();
    let sum = rt.block_on(async {
        let mut sum = 0u64;
        for i in 0..100u64 {
            sum += tokio::spawn(async move { i }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        sum
    });
    assert_eq!(sum, 4950);
    // The thread that calls block_on is the user's, not the runtime's.
    assert!(!hooks.threads().contains(&tid()));
    assert!(hooks.worker_threads().is_empty());
}
