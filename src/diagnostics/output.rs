//! Where the diagnostics' results go: report files (through the report
//! store, pinned when a storm's first), the journal under systemd, and the
//! rewrites of reports that gained coalesced stalls.

use super::*;

impl Diagnostics {
    /// Writes the incident's report; the compact form goes to stderr once
    /// per incident when there is no report file.
    pub(super) fn write(&mut self, stall: &mut ActiveStall) -> Option<PathBuf> {
        let pin = stall.report.coalesced_stalls > 0;
        self.write_report(&mut stall.report, pin)
    }

    pub(super) fn write_report(&mut self, report: &mut StallReport, pin: bool) -> Option<PathBuf> {
        report.times.written = rfc3339(SystemTime::now());
        if let Some(r) = &self.registry {
            report.metrics = Metrics::encode(r);
        }
        let started = std::time::Instant::now();
        let saved = self
            .store
            .save(report, if pin { Pin::Yes } else { Pin::No });
        // Time the monitor waited for the disk (fsync), not for the CPU:
        // it must not look like the monitor being paused.
        self.io_wait += started.elapsed();
        if let Some(m) = &self.metrics {
            match saved {
                Saved::Written(_) => m.report("written"),
                Saved::Failed => m.report("failed"),
                Saved::Dropped => m.report("dropped"),
                Saved::StderrOnly => {}
            }
        }
        self.counters
            .reports_written
            .store(self.store.written(), Ordering::Relaxed);
        self.counters
            .reports_failed
            .store(self.store.failed(), Ordering::Relaxed);
        self.counters
            .reports_dropped
            .store(self.store.dropped(), Ordering::Relaxed);
        saved.path()
    }

    /// Sends `entry` to journald under systemd; a failure is counted and
    /// logged once until sending works again.
    pub(super) fn to_journal(&self, entry: &JournalEntry) {
        let Some(j) = &self.journal else { return };
        match j.send(entry) {
            Ok(()) => {
                self.counters.journal_sent.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.journal_entry("sent");
                }
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.journal_entry("failed");
                }
                let failed = self.counters.journal_failed.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged on the 1st, 2nd, 4th, 8th, ... failure: bounded.
                if failed.is_power_of_two() {
                    tracing::warn!(error = %e, failed, "loopwatch could not send a journal entry; \
                        the report files and log lines are unaffected");
                }
            }
        }
    }

    /// At shutdown: writes every report whose coalesced stalls are not on
    /// disk yet, whatever the throttle.
    pub(crate) fn flush_storms(&mut self, now: u64) {
        for i in 0..self.storms.len() {
            for k in self.storms[i].dirty() {
                self.flush_kept(i, k, now);
            }
        }
    }

    /// Rewrites a kept report that gained occurrences.
    pub(super) fn flush_kept(&mut self, runtime: usize, kept: usize, now: u64) -> Option<PathBuf> {
        let mut report = {
            let k = self.storms[runtime].kept_mut(kept)?;
            k.dirty = false;
            k.written_at = now;
            k.report.take()?
        };
        let path = self.write_report(&mut report, true);
        self.to_journal(&journal::storm_entry(&report, path.as_deref()));
        if let Some(k) = self.storms[runtime].kept_mut(kept) {
            k.report = Some(report);
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Builder;
    use crate::metrics::Metrics;
    use crate::notify::SystemdEnv;
    use crate::report::StallReport;

    fn journal_count(registry: &prometheus::Registry, result: &str) -> String {
        let text = Metrics::encode(registry);
        let series = format!("loopwatch_journal_entries_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .to_string()
    }

    #[test]
    fn journal_entries_sent_and_failed_are_counted_in_the_metrics() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = Builder::new()
            .watch("main", rt.handle().clone())
            .no_stack_capture()
            .no_report_files();
        let settings = b.resolve(SystemdEnv::default()).unwrap();
        let mut diag = Diagnostics::new(settings.clone(), settings.diagnostics.clone(), 1).unwrap();
        let registry = prometheus::Registry::new();
        diag.metrics = Some(Arc::new(
            Metrics::new(&registry, &b.runtimes, Duration::from_secs(1)).unwrap(),
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let journald = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        diag.journal = Some(Journal::at(&path).unwrap());
        let entry = journal::stall_entry(&StallReport::blank(), None);

        diag.to_journal(&entry);
        let mut buf = vec![0u8; 64 * 1024];
        assert!(journald.recv(&mut buf).unwrap() > 0, "journald got it");
        assert_eq!(journal_count(&registry, "sent"), "1");
        assert_eq!(journal_count(&registry, "failed"), "0");

        // journald gone: the send fails, and is counted.
        drop(journald);
        std::fs::remove_file(&path).unwrap();
        diag.to_journal(&entry);
        assert_eq!(journal_count(&registry, "sent"), "1");
        assert_eq!(journal_count(&registry, "failed"), "1");
        assert_eq!(diag.counters.journal_failed.load(Ordering::Relaxed), 1);
    }
}
