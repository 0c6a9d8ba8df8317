//! What the per-worker stuck detector finds: [`WorkerStuck`] and
//! [`WorkerTransition`], which
//! [`WorkerWatch::sample`](super::watch::WorkerWatch::sample) hands the
//! monitor, and the public report sections [`StuckWorker`] and
//! [`StuckTask`] made from them.
//!
//! Plain data, shared by the detector's files. How a worker is found stuck
//! is in [`super::watch`]; what the monitor does with it (callbacks,
//! metrics, reports) is not in this module.

/// A worker of a multi-thread runtime that has made no progress for longer
/// than the stall threshold while the runtime as a whole may still answer
/// the probe: one section of a stall report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StuckWorker {
    /// The worker's index, as in tokio's `RuntimeMetrics::worker_*`.
    pub worker: usize,
    /// OS thread id(s) of the thread running it. One with
    /// `--cfg tokio_unstable`; on stable tokio usually one, possibly more
    /// when the hooks cannot tell which thread runs the worker (the most
    /// likely first). Their stacks are captured first.
    pub tids: Vec<i32>,
    /// The thread's name, when it has one.
    pub thread: Option<String>,
    /// How long it has shown no progress, in seconds, measured at the
    /// monitor's ticks. With `--cfg tokio_unstable` this is the time in the
    /// current poll (a lower bound, within one tick); on stable tokio it
    /// counts from the worker's last published metrics, which may include
    /// the last few short polls before the stuck one.
    pub stuck_for_seconds: f64,
    /// The task it is stuck polling (with `--cfg tokio_unstable` only).
    pub task: Option<StuckTask>,
}

/// The task a stuck worker is polling.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StuckTask {
    /// tokio's task id, as `tokio::task::Id` displays it.
    pub id: String,
    /// Where the task was spawned: `file:line:column`.
    pub spawned_at: String,
}

/// A worker was found stuck.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerStuck {
    /// Worker index.
    pub worker: usize,
    /// OS thread ids, the most likely first (see [`StuckWorker::tids`]).
    pub tids: Vec<i32>,
    /// The first tid's thread name.
    pub thread: Option<String>,
    /// The first tick at which the worker was seen in the state it is
    /// stuck in, µs ([`crate::clock`]).
    pub stuck_since: u64,
    /// When it was declared stuck, µs.
    pub detected_at: u64,
    /// The task it is polling (`tokio_unstable` only).
    pub task: Option<StuckTask>,
}

impl StuckWorker {
    /// The worker's thread ids for a report line: `"1234"`, or
    /// `"1234/1240"` when the worker moved between threads.
    pub(crate) fn tids_label(&self) -> String {
        self.tids
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join("/")
    }
}

impl WorkerStuck {
    /// The report section for this worker as of `now`.
    pub(crate) fn to_report(&self, now: u64) -> StuckWorker {
        StuckWorker {
            worker: self.worker,
            tids: self.tids.clone(),
            thread: self.thread.clone(),
            stuck_for_seconds: now.saturating_sub(self.stuck_since) as f64 / 1e6,
            task: self.task.clone(),
        }
    }
}

/// What one [`WorkerWatch::sample`](super::watch::WorkerWatch::sample) changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WorkerTransition {
    /// A worker became stuck (reported once).
    Stuck(WorkerStuck),
    /// A stuck worker made progress again (or its thread ended).
    Recovered {
        /// The stuck worker as it was reported.
        stuck: WorkerStuck,
        /// How long it was stuck, µs (from `stuck_since` to the tick that
        /// saw it move).
        stuck_for: u64,
        /// The tick that saw it move, µs.
        ended_at: u64,
    },
}

/// A stuck worker's threads (most likely first), the first one's name, and
/// the task it polls.
pub(super) type Found = (Vec<i32>, Option<String>, Option<StuckTask>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_sections_serialize() {
        let stuck = WorkerStuck {
            worker: 2,
            tids: vec![1234],
            thread: Some("tokio-runtime-worker".into()),
            stuck_since: 1_000_000,
            detected_at: 1_400_000,
            task: Some(StuckTask {
                id: "17".into(),
                spawned_at: "src/main.rs:10:5".into(),
            }),
        };
        let report = stuck.to_report(3_500_000);
        assert!((report.stuck_for_seconds - 2.5).abs() < 1e-9);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["worker"], 2);
        assert_eq!(json["tids"][0], 1234);
        assert_eq!(json["task"]["spawned_at"], "src/main.rs:10:5");
    }
}
