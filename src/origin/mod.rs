//! Whose code a stack frame is: the application's own, a dependency's, or
//! the runtime's.
//!
//! A stall is the application's bug, but the thread is usually caught deep
//! inside something else: the standard library, tokio, a JSON parser. The
//! verdict blames the innermost frame of the application's *own* code and
//! says where below it the thread really was. This module sorts frames into
//! the three [`Origin`]s:
//!
//! * **runtime** — the Rust standard library (`std`, `core`, `alloc`, ...),
//!   tokio and the crates it runs on ([`RUNTIME_CRATES`]), loopwatch, and
//!   the C runtime (libc, the dynamic loader, the vdso: [`crate::stacks::is_system_module`]);
//! * **dependency** — any other crate: from a registry, a git checkout, or
//!   vendored sources, and C code linked into the binary;
//! * **own** — the application's workspace.
//!
//! What tells them apart, best first: the user's list
//! ([`Builder::own_crates`](crate::Builder::own_crates)); the frame's module
//! (a system library); its source path from debug info (see [`paths`]);
//! the crate prefix of its demangled name (see [`names`]), checked against
//! what [`OwnCode`] learned from the binary: the crates of functions whose
//! sources lie outside the cargo home and the Rust sources, the crate whose
//! `main` the Rust runtime calls, and the executable's name. A frame
//! without any name (a stripped binary) has no origin (`None`).
//!
//! This module does not capture or symbolize stacks (the `stacks` module
//! does) and does not decide verdicts (the `verdict` module does). It
//! defines [`Frame::is_application`], so that `stacks` need not know it.

pub(crate) mod names;
pub(crate) mod paths;

use crate::stacks::{is_system_module, Frame, Origin, ThreadStack};

use paths::SourcePlace;

/// Crates whose frames are runtime plumbing, not the application's: the
/// standard library and its internals, tokio and the crates its scheduler
/// and drivers run on, the lock and future crates it is built from,
/// tracing's dispatch, and loopwatch itself.
pub(crate) const RUNTIME_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "test",
    "std_detect",
    "panic_unwind",
    "panic_abort",
    "unwind",
    "compiler_builtins",
    "hashbrown",
    "tokio",
    "tokio_util",
    "tokio_macros",
    "mio",
    "parking_lot",
    "parking_lot_core",
    "lock_api",
    "futures",
    "futures_core",
    "futures_util",
    "futures_executor",
    "futures_task",
    "tracing",
    "tracing_core",
    "backtrace",
    "loopwatch",
];

/// Entry points of the C runtime found at the root of every stack.
const ENTRY_POINTS: &[&str] = &[
    "main",
    "_start",
    "start_thread",
    "clone",
    "clone3",
    "thread_start",
];

/// The most crates [`OwnCode`] learns from captures (a bound, not a limit
/// a real workspace reaches).
const MAX_LEARNED: usize = 64;

/// What loopwatch knows about the application's own code: the crates the
/// user named, and the crates and source directories learned from the
/// binary.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct OwnCode {
    /// Crates named with `Builder::own_crates` (normalized: `-` as `_`).
    named: Vec<String>,
    /// Crates learned from the binary, each with how it was learned.
    learned: Vec<(String, Learned)>,
}

/// How a crate was learned to be the application's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    /// The executable's file name.
    ExecutableName,
    /// The Rust runtime calls its `main`.
    MainFunction,
    /// Its functions' sources lie in the workspace.
    SourcePath,
}

impl OwnCode {
    /// What is known before any capture: the crates the user named and the
    /// executable's name (`/proc/self/exe`).
    pub(crate) fn for_process(named: &[String]) -> Self {
        let exe = std::env::current_exe().ok();
        let exe_name = exe
            .as_deref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str());
        Self::new(named, exe_name)
    }

    /// Knowledge from the user's list and an executable file name (a test
    /// binary's `-<hash>` suffix is dropped).
    pub(crate) fn new(named: &[String], executable: Option<&str>) -> Self {
        let mut own = OwnCode {
            named: named
                .iter()
                .map(|n| paths::normalize(n.trim()))
                .filter(|n| !n.is_empty())
                .collect(),
            ..OwnCode::default()
        };
        if let Some(exe) = executable {
            let name = match exe.rsplit_once('-') {
                Some((n, hash))
                    if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    n
                }
                _ => exe,
            };
            let krate = paths::normalize(name);
            if names::is_crate_name(&krate) && !is_runtime_crate(&krate) {
                own.learn_crate(krate, Learned::ExecutableName);
            }
        }
        own
    }

    /// Learns from captured stacks: the crates of functions whose sources
    /// lie in the workspace, and the crate whose `main` the Rust runtime
    /// calls.
    pub(crate) fn learn(&mut self, threads: &[ThreadStack]) {
        for t in threads {
            for (i, f) in t.frames.iter().enumerate() {
                let Some(name) = f.function.as_deref() else {
                    continue;
                };
                if let Some(file) = f.file.as_deref() {
                    if paths::place_of(file) == SourcePlace::Local && !self.is_system(f) {
                        if let Some(k) = names::crate_of(name).filter(|k| !is_runtime_crate(k)) {
                            self.learn_crate(k.to_string(), Learned::SourcePath);
                        }
                    }
                }
                if let Some(k) = main_crate(name, &t.frames[i + 1..]) {
                    self.learn_crate(k.to_string(), Learned::MainFunction);
                }
            }
        }
    }

    fn learn_crate(&mut self, krate: String, how: Learned) {
        if self.learned.len() >= MAX_LEARNED || self.learned.iter().any(|(k, _)| *k == krate) {
            return;
        }
        self.learned.push((krate, how));
    }

    /// Whether `f` is in a system library (libc, the loader, the vdso).
    pub(crate) fn is_system(&self, f: &Frame) -> bool {
        f.module.as_deref().is_some_and(is_system_module)
    }

    fn is_named(&self, krate: &str) -> bool {
        self.named.iter().any(|n| n == krate)
    }

    fn is_own_crate(&self, krate: &str) -> bool {
        self.is_named(krate) || self.learned.iter().any(|(k, _)| k == krate)
    }

    /// Whose code `f` is; `None` for a frame without any name outside the
    /// system libraries.
    pub(crate) fn origin(&self, f: &Frame) -> Option<Origin> {
        if self.is_system(f) {
            return Some(Origin::Runtime);
        }
        let name = f.function.as_deref().map(str::trim);
        let name_crate = name.and_then(names::crate_of);
        if let Some(k) = name_crate {
            if self.is_named(k) {
                return Some(Origin::Own);
            }
            if is_runtime_crate(k) {
                return Some(Origin::Runtime);
            }
        }
        if let Some(n) = name {
            if n.starts_with("__") || ENTRY_POINTS.contains(&n) {
                return Some(Origin::Runtime);
            }
        }
        if let Some(file) = f.file.as_deref() {
            match paths::place_of(file) {
                SourcePlace::RustLibrary | SourcePlace::Loopwatch => return Some(Origin::Runtime),
                SourcePlace::Registry(k) | SourcePlace::Git(k) | SourcePlace::Vendored(k) => {
                    return Some(if self.is_named(&k) {
                        Origin::Own
                    } else if is_runtime_crate(&k) {
                        Origin::Runtime
                    } else {
                        Origin::Dependency
                    });
                }
                SourcePlace::Local => return Some(Origin::Own),
            }
        }
        match (name, name_crate) {
            (None, _) => None,
            (Some(_), Some(k)) if self.is_own_crate(k) => Some(Origin::Own),
            (Some(_), Some(_)) => Some(Origin::Dependency),
            // A C function linked into the binary (from a `-sys` crate).
            (Some(n), None) if !n.starts_with('{') => Some(Origin::Dependency),
            (Some(_), None) => None,
        }
    }

    /// Sets [`Frame::origin`] on every frame.
    pub(crate) fn classify(&self, frames: &mut [Frame]) {
        for f in frames {
            f.origin = self.origin(f);
        }
    }

    /// One line for a report: which crates count as the application's and
    /// how that was learned.
    pub(crate) fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .named
            .iter()
            .map(|n| format!("{n} (own_crates)"))
            .collect();
        for (k, how) in &self.learned {
            if self.is_named(k) {
                continue;
            }
            let how = match how {
                Learned::ExecutableName => "the executable's name",
                Learned::MainFunction => "its main",
                Learned::SourcePath => "its source paths",
            };
            parts.push(format!("{k} ({how})"));
        }
        if parts.is_empty() {
            "no crate is known to be the application's".into()
        } else {
            format!(
                "crates taken as the application's own: {}",
                parts.join(", ")
            )
        }
    }

    /// Whether only the executable's name says which crate is the
    /// application's (no debug info, no `main` seen, no user list).
    pub(crate) fn only_guessed(&self) -> bool {
        self.named.is_empty()
            && self
                .learned
                .iter()
                .all(|(_, how)| *how == Learned::ExecutableName)
    }
}

/// Whose code a frame of origin `o` is, in words for a report ("your
/// code", "a dependency", "the runtime", or "no symbols" when unknown).
pub(crate) fn whose_code(o: Option<Origin>) -> &'static str {
    match o {
        Some(Origin::Own) => "your code",
        Some(Origin::Dependency) => "a dependency",
        Some(Origin::Runtime) => "the runtime",
        None => "no symbols",
    }
}

/// Whether `krate` is one of [`RUNTIME_CRATES`].
pub(crate) fn is_runtime_crate(krate: &str) -> bool {
    RUNTIME_CRATES.contains(&krate)
}

/// `Some(crate)` when `name` is `crate::main` called (directly or through
/// a few shims) by the Rust runtime's `lang_start`, whose frames follow in
/// `callers`.
fn main_crate<'a>(name: &'a str, callers: &[Frame]) -> Option<&'a str> {
    let function = name.trim();
    let krate = function.strip_suffix("::main")?;
    if !names::is_crate_name(krate) || is_runtime_crate(krate) {
        return None;
    }
    callers
        .iter()
        .take(8)
        .filter_map(|f| f.function.as_deref())
        .any(|n| n.contains("lang_start") || n.contains("__rust_begin_short_backtrace"))
        .then_some(krate)
}

/// The longest directory that every path in `dirs` is in.
pub(crate) fn common_dir<'a>(mut dirs: impl Iterator<Item = &'a str>) -> Option<String> {
    let first = dirs.next()?;
    let mut common: Vec<&str> = first.split('/').collect();
    for d in dirs {
        let parts: Vec<&str> = d.split('/').collect();
        let same = common
            .iter()
            .zip(&parts)
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(same);
    }
    let joined = common.join("/");
    (!joined.is_empty() && joined != "/").then_some(joined)
}

impl Frame {
    /// Whether this frame is the application's own code: not the standard
    /// library, the async runtime, locks, loopwatch or libc (the runtime),
    /// and not a dependency from a registry, a git checkout or vendored
    /// sources.
    ///
    /// The frame's [`origin`](Frame::origin) decides when it is set (stall
    /// reports set it with everything learned from the binary). Otherwise
    /// the frame is classified on the spot: by its module (libc, the
    /// dynamic loader and the vdso are the runtime), its source path (the
    /// Rust sources, `registry/src/…`, `git/checkouts/…` and `vendor/…`
    /// are not the application's; other paths are its workspace), and
    /// else the crate of its name: the executable's own crate is the
    /// application's, `std`, `tokio` and the like are the runtime, others
    /// are dependencies. A frame without a name is not known to be the
    /// application's.
    ///
    /// ```
    /// use loopwatch::Frame;
    ///
    /// let frame = Frame {
    ///     function: Some("serde_json::de::from_str<myapp::Catalog>".into()),
    ///     ..Frame::default()
    /// };
    /// assert!(!frame.is_application());
    /// let frame = Frame {
    ///     function: Some("myapp::import_catalog".into()),
    ///     file: Some("/srv/myapp/src/import.rs".into()),
    ///     ..Frame::default()
    /// };
    /// assert!(frame.is_application());
    /// ```
    pub fn is_application(&self) -> bool {
        let origin = match self.origin {
            Some(o) => Some(o),
            None => OwnCode::for_process(&[]).origin(self),
        };
        origin == Some(Origin::Own)
    }
}

#[cfg(test)]
mod tests;
