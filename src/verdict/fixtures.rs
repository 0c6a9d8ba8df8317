//! Constructed stacks for tests: frames as the symbolizer makes them (with
//! debug info, with symbol-table names only, without names) and threads
//! with `/proc` facts.

use std::borrow::Cow;
use std::time::Duration;

use crate::procfs::{SyscallInfo, ThreadFacts};
use crate::stacks::{CaptureOutcome, Frame, SymbolSource, ThreadStack};

/// The loop thread's id in tests.
pub(crate) const LOOP: i32 = 100;

/// A registry path of `package` (`serde_json-1.0.140`).
pub(crate) fn registry(package: &str, file: &str) -> String {
    format!("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/{package}/src/{file}")
}

/// A frame with debug info: name, file and line.
pub(crate) fn dwarf(name: &str, file: &str, ip: u64) -> Frame {
    Frame {
        ip,
        function: Some(name.into()),
        file: Some(file.into()),
        line: Some((ip % 1000) as u32 + 1),
        module: Some("myapp".into()),
        offset: Some(ip - 0x1000),
        symbols: SymbolSource::DebugInfo,
        ..Frame::default()
    }
}

/// The same, inlined into the next frame (same address).
pub(crate) fn inlined(name: &str, file: &str, ip: u64) -> Frame {
    Frame {
        inlined: true,
        ..dwarf(name, file, ip)
    }
}

/// A frame named from the symbol table only.
pub(crate) fn sym(name: &str, ip: u64) -> Frame {
    Frame {
        ip,
        function: Some(name.into()),
        module: Some("myapp".into()),
        offset: Some(ip - 0x1000),
        symbols: SymbolSource::SymbolTable,
        ..Frame::default()
    }
}

/// A libc frame (named from its dynamic symbols).
pub(crate) fn libc(name: &str, ip: u64) -> Frame {
    Frame {
        module: Some("libc.so.6".into()),
        ..sym(name, ip)
    }
}

/// A frame without any name (a stripped binary).
pub(crate) fn bare(ip: u64) -> Frame {
    Frame {
        ip,
        module: Some("myapp".into()),
        build_id: Some("abcdef0123456789".into()),
        offset: Some(ip - 0x1000),
        ..Frame::default()
    }
}

/// `/proc` facts: state letter, system call (by name), CPU time.
pub(crate) fn facts(tid: i32, state: char, syscall: Option<&str>, cpu: Duration) -> ThreadFacts {
    ThreadFacts {
        tid,
        name: if tid == LOOP {
            "myapp".into()
        } else {
            format!("worker-{tid}")
        },
        state,
        state_name: Cow::Borrowed(match state {
            'R' => "running",
            'S' => "sleeping",
            'D' => "disk sleep",
            _ => "other",
        }),
        wchan: None,
        syscall: syscall.map(|s| SyscallInfo {
            user_regs: None,
            number: match s {
                "futex" => 202,
                "epoll_wait" => 232,
                _ => 230,
            },
            name: Some(Cow::Owned(s.to_string())),
        }),
        cpu_time: cpu,
    }
}

/// A captured thread.
pub(crate) fn thread(tid: i32, facts: ThreadFacts, frames: Vec<Frame>) -> ThreadStack {
    ThreadStack {
        tid,
        facts: Some(facts),
        outcome: CaptureOutcome::Captured,
        detail: None,
        registers: None,
        stack_bytes: 8192,
        frames,
        not_captured: None,
        kernel_stack: Vec::new(),
        read_asleep: false,
    }
}

/// The runtime's frames below a task's poll, down to `main`, at addresses
/// from `0xa000` (the same in every capture), with debug info.
pub(crate) fn task_poll_and_main() -> Vec<Frame> {
    let tokio = |f: &str| registry("tokio-1.54.1", f);
    let mut frames = vec![
        dwarf(
            "tokio::runtime::task::core::Core<T,S>::poll::{{closure}}",
            &tokio("runtime/task/core.rs"),
            0xa000,
        ),
        dwarf(
            "tokio::runtime::task::harness::Harness<T,S>::poll",
            &tokio("runtime/task/harness.rs"),
            0xa100,
        ),
        dwarf(
            "tokio::runtime::task::raw::poll",
            &tokio("runtime/task/raw.rs"),
            0xa200,
        ),
        dwarf(
            "tokio::runtime::scheduler::current_thread::CoreGuard::block_on::{{closure}}",
            &tokio("runtime/scheduler/current_thread/mod.rs"),
            0xa300,
        ),
        dwarf(
            "tokio::runtime::context::scoped::Scoped<T>::set",
            &tokio("runtime/context/scoped.rs"),
            0xa400,
        ),
    ];
    frames.extend(block_on_and_main());
    frames.extend([
        dwarf(
            "core::ops::function::FnOnce::call_once",
            "/rustc/1159e78c4747b02ef996e55082b704c09b970588/library/core/src/ops/function.rs",
            0xa800,
        ),
        dwarf(
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "/rustc/1159e78c4747b02ef996e55082b704c09b970588/library/std/src/sys/backtrace.rs",
            0xa900,
        ),
        dwarf(
            "std::rt::lang_start::{{closure}}",
            "/rustc/1159e78c4747b02ef996e55082b704c09b970588/library/std/src/rt.rs",
            0xaa00,
        ),
        sym("main", 0xab00),
        libc("__libc_start_call_main", 0xac00),
        libc("__libc_start_main_impl", 0xad00),
        sym("_start", 0xae00),
    ]);
    frames
}

/// The current_thread runtime's `block_on` frames and `myapp::main` below
/// them, at `0xa500`..`0xa700` (the same in every capture), with debug info.
pub(crate) fn block_on_and_main() -> Vec<Frame> {
    let tokio = |f: &str| registry("tokio-1.54.1", f);
    vec![
        dwarf(
            "tokio::runtime::scheduler::current_thread::CoreGuard::block_on",
            &tokio("runtime/scheduler/current_thread/mod.rs"),
            0xa500,
        ),
        dwarf(
            "tokio::runtime::runtime::Runtime::block_on",
            &tokio("runtime/runtime.rs"),
            0xa600,
        ),
        dwarf("myapp::main", "/srv/myapp/src/main.rs", 0xa700),
    ]
}

/// `inner` above the task's poll and `main`.
pub(crate) fn on_loop(inner: Vec<Frame>) -> Vec<Frame> {
    let mut frames = inner;
    frames.extend(task_poll_and_main());
    frames
}
