//! One look at one thread: whose code its frames are, where the current
//! poll begins, the culprit, and whether a later look finds it in the same
//! call.
//!
//! A [`Reading`] classifies a captured stack with what is known about the
//! application's own code ([`OwnCode`]) and finds, innermost first:
//!
//! * the **poll boundary**: the innermost tokio frame that runs a task or a
//!   `block_on` future. Code outside it is not what the loop is stuck in
//!   (`main` is on every idle worker's stack);
//! * the **culprit**: the innermost own-code frame inside the poll;
//! * the **anchor** from which "still there" is judged: the culprit; or,
//!   without own code, the whole stack when some of it has no names, or
//!   the outermost dependency frame the runtime polls.
//!
//! [`Reading::still_there`] compares the anchor and its callers with a
//! later look by address, so it needs no symbols: a thread churning inside
//! a library under the same own-code call is still in that call.
//! This file decides no verdict ([`super::loop_thread`] does).

use crate::origin::{names, paths, OwnCode};
use crate::stacks::{CaptureOutcome, Frame, Origin, ThreadStack};

/// Frames a capture keeps per thread (`stacks::capture::MAX_FRAMES`): a
/// stack this long was cut.
const FRAME_LIMIT: usize = 256;

/// What the anchor of a reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnchorKind {
    /// The innermost own-code frame (the culprit).
    Own,
    /// A dependency polled by the runtime, with no own code in the poll.
    Dependency,
    /// The stack has frames without names: the whole stack is compared.
    Nameless,
}

/// One thread, read.
#[derive(Debug, Clone)]
pub(crate) struct Reading<'a> {
    /// The captured thread.
    pub thread: &'a ThreadStack,
    /// Its frames with [`Frame::origin`] set, innermost first.
    pub frames: Vec<Frame>,
    /// `frames[..poll_end]` run inside the current poll.
    pub poll_end: usize,
    /// The innermost own-code frame inside the poll.
    pub culprit: Option<usize>,
    /// The frame "still there" is judged from, and what it is.
    pub anchor: Option<(usize, AnchorKind)>,
    /// The stack was cut (copy or frame limit), so its outer end is missing.
    pub cut: bool,
}

impl<'a> Reading<'a> {
    /// Reads `thread` with what `own` knows; `max_stack_bytes` is the copy
    /// limit in force, when known.
    pub(crate) fn new(
        thread: &'a ThreadStack,
        own: &OwnCode,
        max_stack_bytes: Option<usize>,
    ) -> Self {
        let mut frames = thread.frames.clone();
        own.classify(&mut frames);
        let poll_end = frames
            .iter()
            .position(is_poll_boundary)
            .unwrap_or(frames.len());
        let inside = &frames[..poll_end];
        let culprit = inside.iter().position(|f| f.origin == Some(Origin::Own));
        let anchor = match culprit {
            Some(c) => Some((c, AnchorKind::Own)),
            None if inside.iter().any(|f| f.origin.is_none()) => Some((0, AnchorKind::Nameless)),
            None => inside
                .iter()
                .rposition(|f| f.origin == Some(Origin::Dependency))
                .map(|d| (d, AnchorKind::Dependency)),
        };
        let cut = thread.detail.is_some() && thread.outcome == CaptureOutcome::Captured
            || frames.len() >= FRAME_LIMIT
            || max_stack_bytes.is_some_and(|max| thread.stack_bytes >= max);
        Reading {
            thread,
            frames,
            poll_end,
            culprit,
            anchor,
            cut,
        }
    }

    /// The culprit's function, folded to its enclosing named function.
    pub(crate) fn culprit_function(&self) -> Option<String> {
        let f = &self.frames[self.culprit?];
        f.function.as_deref().map(names::enclosing_function)
    }

    /// Own-code frames inside the poll, innermost first (at most `max`).
    pub(crate) fn own_frames(&self, max: usize) -> Vec<Frame> {
        self.frames[..self.poll_end]
            .iter()
            .filter(|f| f.origin == Some(Origin::Own))
            .take(max)
            .cloned()
            .collect()
    }

    /// Where below the culprit the thread really was: the innermost
    /// dependency frame, else the call the culprit made into the runtime
    /// (say `std::thread::sleep`). `None` when the culprit itself was
    /// running: the innermost frame, or only runtime helpers inlined into
    /// it (an iterator's `next`, an integer add) above it.
    pub(crate) fn stuck_in(&self) -> Option<&Frame> {
        let c = self.culprit?;
        let inner = &self.frames[..c];
        if let Some(dependency) = inner.iter().find(|f| f.origin == Some(Origin::Dependency)) {
            return Some(dependency);
        }
        let culprit_ip = self.frames[c].ip;
        inner.iter().rev().find(|f| f.ip != culprit_ip)
    }

    /// The outermost dependency frame below the culprit: the library call
    /// the application made (`serde_json::de::from_str`).
    pub(crate) fn entered_through(&self) -> Option<&Frame> {
        let c = self.culprit?;
        self.frames[..c]
            .iter()
            .rev()
            .find(|f| f.origin == Some(Origin::Dependency))
    }

    /// A short label of where this reading is, for tallies of samples.
    pub(crate) fn label(&self) -> String {
        match self.anchor {
            Some((_, AnchorKind::Own)) => self.culprit_function().unwrap_or_else(|| "?".into()),
            Some((i, AnchorKind::Dependency)) => self.frames[i]
                .function
                .as_deref()
                .map(names::enclosing_function)
                .unwrap_or_else(|| "?".into()),
            Some((_, AnchorKind::Nameless)) => self
                .frames
                .first()
                .map(location)
                .unwrap_or_else(|| "?".into()),
            None => "the runtime's own code".into(),
        }
    }

    /// How many frames have no name outside the system libraries (whose
    /// unnamed frames, in the vdso say, are expected), of how many.
    pub(crate) fn nameless(&self) -> (usize, usize) {
        let n = self.frames.iter().filter(|f| f.origin.is_none()).count();
        (n, self.frames.len())
    }

    /// Whether `later` (a later look at the same thread) is still inside
    /// this reading's anchor call: the anchor's callers have the same
    /// addresses, outermost first, and the anchor itself is at the same
    /// place, in the same function, or was the interrupted frame (whose
    /// address moves while it runs). Cut stacks are compared as far as both
    /// reach.
    pub(crate) fn still_there(&self, later: &Reading<'_>) -> bool {
        let Some((anchor, _)) = self.anchor else {
            return false;
        };
        let a = physical(&self.frames);
        let b = physical(&later.frames);
        let Some(ga) = a.iter().rposition(|p| p.first <= anchor) else {
            return false;
        };
        let callers = &a[ga + 1..];
        // The anchor at the same address; or, when both have names, in the
        // same function; or, without names, anywhere if it was the
        // interrupted frame (its callers' addresses then say it all).
        let anchor_matches = |pb: &Physical<'_>| match (pb.function, a[ga].function) {
            _ if pb.ip == a[ga].ip => true,
            (Some(x), Some(y)) => x == y,
            _ => ga == 0,
        };
        if b.len() > callers.len() {
            let j = b.len() - callers.len() - 1;
            if same_ips(&b[j + 1..], callers) && anchor_matches(&b[j]) {
                return true;
            }
        }
        if !(self.cut || later.cut) {
            return false;
        }
        // Cut: look for the anchor anywhere, with as many callers as both
        // stacks hold (at least a few, or all the anchor has).
        let needed = callers.len().min(4);
        (0..b.len()).any(|j| {
            let k = callers.len().min(b.len() - j - 1);
            k >= needed && same_ips(&b[j + 1..j + 1 + k], &callers[..k]) && anchor_matches(&b[j])
        })
    }
}

impl Reading<'_> {
    /// How many physical frames, from the outermost inwards, `later`
    /// shares with this reading (by address).
    pub(crate) fn shared_outer_frames(&self, later: &Reading<'_>) -> usize {
        let a = physical(&self.frames);
        let b = physical(&later.frames);
        a.iter()
            .rev()
            .zip(b.iter().rev())
            .take_while(|(x, y)| x.ip == y.ip)
            .count()
    }
}

/// One physical frame: an address with the frames inlined at it.
pub(crate) struct Physical<'f> {
    pub ip: u64,
    /// The name of the real (not inlined) function at `ip`.
    pub function: Option<&'f str>,
    /// Index of the group's first (innermost) frame.
    pub first: usize,
}

/// Groups inlined frames with the real frame they were inlined into,
/// innermost first.
pub(crate) fn physical(frames: &[Frame]) -> Vec<Physical<'_>> {
    let mut out = Vec::new();
    let mut first = 0;
    for (i, f) in frames.iter().enumerate() {
        let last_of_group = !f.inlined || frames.get(i + 1).is_none_or(|n| n.ip != f.ip);
        if last_of_group {
            out.push(Physical {
                ip: f.ip,
                function: f.function.as_deref(),
                first,
            });
            first = i + 1;
        }
    }
    out
}

fn same_ips(a: &[Physical<'_>], b: &[Physical<'_>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.ip == y.ip)
}

/// `module+0xoffset`, or the address, for a frame without a name.
pub(crate) fn location(f: &Frame) -> String {
    match (&f.function, &f.module, f.offset) {
        (Some(n), _, _) => n.clone(),
        (None, Some(m), Some(o)) => format!("{m}+{o:#x}"),
        (None, Some(m), None) => format!("{:#x} in {m}", f.ip),
        (None, None, _) => format!("{:#x}", f.ip),
    }
}

/// Tokio frames that run a task's poll or a `block_on` future: code inside
/// them is the current poll, code outside is not (`main`, a worker's loop).
fn is_poll_boundary(f: &Frame) -> bool {
    if f.origin != Some(Origin::Runtime) {
        return false;
    }
    let name = f.function.as_deref().unwrap_or_default();
    let file = f.file.as_deref().unwrap_or_default();
    let tokio_name = names::crate_of(name) == Some("tokio");
    let tokio_file = matches!(
        paths::place_of(file),
        paths::SourcePlace::Registry(k) | paths::SourcePlace::Git(k) | paths::SourcePlace::Vendored(k)
            if k == "tokio"
    );
    if !(tokio_name || tokio_file) {
        return false;
    }
    let in_runtime = name.contains("tokio::runtime::")
        || name.contains("tokio::task::local::")
        || file.contains("/src/runtime/")
        || file.ends_with("/src/task/local.rs");
    // A thread parked inside `block_on` of the park module (a
    // `blocking_lock`, `blocking_recv`) is waiting, not running a poll.
    let parking = name.contains("::park::") || file.ends_with("/src/runtime/park.rs");
    let function = names::elide_generics(&names::enclosing_function(name));
    let last = function
        .rsplit("::")
        .next()
        .unwrap_or_default()
        .trim_end_matches("<…>")
        .trim_end_matches('>');
    in_runtime
        && !parking
        && matches!(
            last,
            "poll"
                | "poll_inner"
                | "poll_future"
                | "run"
                | "run_task"
                | "block_on"
                | "block_in_place"
        )
}
