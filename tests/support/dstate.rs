//! Threads held in uninterruptible sleep (state `D`), for real.
//!
//! Each thread `clone`s a child process with `CLONE_VM | CLONE_VFORK` (what
//! `vfork` does, with a stack of its own for the child): the kernel then
//! keeps the thread waiting, in state `D`, until the child exits. The child
//! only makes raw system calls: it closes its copy of a pipe's write end and
//! reads one byte from the pipe. Dropping [`DStateThreads`] writes one byte
//! per child, so every child exits and every thread returns.
#![allow(dead_code)]

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The pipe's two ends, handed to each child.
#[repr(C)]
struct Fds {
    read: i32,
    write: i32,
}

extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent thread's `Fds`, which stays alive
    // while the parent is suspended in clone(CLONE_VFORK) until we exit;
    // only raw system calls follow (no allocation, no locks, no TLS).
    unsafe {
        let fds = &*(arg as *const Fds);
        libc::syscall(libc::SYS_close, fds.write);
        let mut byte = 0u8;
        libc::syscall(libc::SYS_read, fds.read, &mut byte as *mut u8, 1usize);
        libc::syscall(libc::SYS_exit, 0);
    }
    0
}

/// Runs on each thread: waits in the kernel until its child exits.
fn hold(fds: Fds, tid_tx: mpsc::Sender<i32>) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    tid_tx.send(tid).expect("report tid");
    let mut stack = vec![0u8; 64 * 1024];
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the child runs `child` on its own 64 KiB stack (`stack`, kept
    // alive until clone returns, which CLONE_VFORK makes wait for the
    // child's exit) and only makes raw system calls; SIGCHLD as the exit
    // signal lets waitpid reap it below.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &fds as *const Fds as *mut libc::c_void,
        )
    };
    assert!(pid > 0, "clone failed: {}", std::io::Error::last_os_error());
    // SAFETY: reaps our own child; a null status pointer is allowed.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
    drop(stack);
}

/// `n` threads in uninterruptible sleep until dropped.
pub struct DStateThreads {
    write: i32,
    read: i32,
    n: usize,
    pub tids: Vec<i32>,
    handles: Vec<JoinHandle<()>>,
}

impl DStateThreads {
    /// Starts `n` threads and waits (up to 20 s) until all are in state `D`.
    pub fn start(n: usize) -> Self {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
        let (tx, rx) = mpsc::channel();
        let handles = (0..n)
            .map(|i| {
                let tx = tx.clone();
                let f = Fds {
                    read: fds[0],
                    write: fds[1],
                };
                std::thread::Builder::new()
                    .name(format!("d-state-{i}"))
                    .stack_size(256 * 1024)
                    .spawn(move || hold(f, tx))
                    .expect("spawn D-state thread")
            })
            .collect();
        let tids: Vec<i32> = (0..n).map(|_| rx.recv().expect("tid")).collect();
        let threads = DStateThreads {
            write: fds[1],
            read: fds[0],
            n,
            tids,
            handles,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let in_d = threads
                .tids
                .iter()
                .filter(|t| state(**t) == Some('D'))
                .count();
            if in_d == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {in_d} of {n} threads reached uninterruptible sleep (a vfork parent waits in D)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        threads
    }
}

/// The `/proc` state letter of thread `tid` of this process.
pub fn state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

impl Drop for DStateThreads {
    fn drop(&mut self) {
        let bytes = vec![0u8; self.n];
        // SAFETY: writes `n` bytes from a live buffer to our pipe (one per
        // child, each reads one and exits), then closes both ends.
        unsafe {
            libc::write(self.write, bytes.as_ptr().cast(), bytes.len());
            libc::close(self.write);
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        // SAFETY: closes our read end; every child has exited.
        unsafe { libc::close(self.read) };
    }
}
