//! Where reports go: the report directory, atomic writes, retention, and the
//! stderr fallback.
//!
//! Each report is two files, `stall-<id>.json` and `stall-<id>.txt`, each
//! written atomically: a temporary file in the same directory (mode 0600,
//! from `tempfile`), `fsync`, `rename` over the final name, `fsync` of the
//! directory. A reader therefore sees either the previous complete version
//! or the new complete version, never a partial file; a failed write leaves
//! nothing behind. The directory is created with mode 0700. Only the newest
//! N reports are kept.
//!
//! When a write fails (directory gone or unwritable, disk full) the compact
//! text report goes to stderr, which systemd puts in the journal, the failure
//! is counted, and it is logged once, not on every retry.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::report::StallReport;

/// Default number of reports kept.
pub const DEFAULT_KEEP_REPORTS: usize = 20;

/// Where the builder was told to put reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ReportDirSetting {
    /// `$STATE_DIRECTORY` or `$RUNTIME_DIRECTORY` when systemd provides one, else none.
    #[default]
    Default,
    /// This directory.
    Dir(PathBuf),
    /// No files.
    Disabled,
}

impl ReportDirSetting {
    /// The directory this setting resolves to in the current environment.
    pub(crate) fn resolve(&self) -> Option<PathBuf> {
        match self {
            ReportDirSetting::Dir(p) => Some(p.clone()),
            ReportDirSetting::Disabled => None,
            ReportDirSetting::Default => {
                ["STATE_DIRECTORY", "RUNTIME_DIRECTORY"]
                    .iter()
                    .find_map(|v| {
                        let val = std::env::var_os(v)?;
                        // systemd separates several directories with ':'.
                        let first = val.to_string_lossy().split(':').next()?.to_string();
                        (!first.is_empty()).then(|| PathBuf::from(first).join("loopwatch"))
                    })
            }
        }
    }
}

/// Writes reports and remembers failures.
#[derive(Debug)]
pub(crate) struct ReportStore {
    dir: Option<PathBuf>,
    keep: usize,
    /// Reports written.
    pub written: u64,
    /// Reports that could not be written.
    pub failed: u64,
    failure_logged: bool,
}

impl ReportStore {
    /// A store for `dir` (None: no files, stderr only) keeping `keep` reports.
    pub(crate) fn new(dir: Option<PathBuf>, keep: usize) -> Self {
        if let Some(d) = &dir {
            if let Err(e) = ensure_dir(d) {
                tracing::warn!(dir = %d.display(), error = %e,
                    "loopwatch report directory is not usable now; will retry when a stall happens");
            }
        }
        ReportStore {
            dir,
            keep: keep.max(1),
            written: 0,
            failed: 0,
            failure_logged: false,
        }
    }

    /// The directory, if reports go to files.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Writes (or rewrites) `report`. Returns the text file's path when the
    /// report is on disk; on failure prints the compact report on stderr.
    pub(crate) fn save(&mut self, report: &StallReport) -> Option<PathBuf> {
        let Some(dir) = self.dir.clone() else {
            eprint!("{}", report.to_compact_text());
            return None;
        };
        match self.write(&dir, report) {
            Ok(path) => {
                self.written += 1;
                if self.failure_logged {
                    self.failure_logged = false;
                    tracing::info!(dir = %dir.display(), "loopwatch can write reports again");
                }
                Some(path)
            }
            Err(e) => {
                self.failed += 1;
                if !self.failure_logged {
                    self.failure_logged = true;
                    tracing::error!(
                        dir = %dir.display(), error = %e, failures = self.failed,
                        "loopwatch could not write a stall report; the compact report goes to stderr"
                    );
                }
                eprintln!(
                    "loopwatch: could not write stall report to {}: {e}",
                    dir.display()
                );
                eprint!("{}", report.to_compact_text_for(Some(&dir)));
                None
            }
        }
    }

    fn write(&self, dir: &Path, report: &StallReport) -> io::Result<PathBuf> {
        ensure_dir(dir)?;
        let base = format!("stall-{}", report.id);
        let json = dir.join(format!("{base}.json"));
        let txt = dir.join(format!("{base}.txt"));
        write_atomic(dir, &json, report.to_json().as_bytes())?;
        write_atomic(dir, &txt, report.to_text().as_bytes())?;
        sync_dir(dir)?;
        if let Err(e) = prune(dir, self.keep) {
            tracing::debug!(error = %e, "loopwatch could not prune old reports");
        }
        Ok(txt)
    }
}

/// Creates `dir` (mode 0700) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // The mode given to mkdir is filtered by the umask; make it exact.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".stall-")
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Keeps the newest `keep` reports (by id, which starts with the UTC time).
fn prune(dir: &Path, keep: usize) -> io::Result<()> {
    let mut ids: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("stall-")?;
            let id = id
                .strip_suffix(".json")
                .or_else(|| id.strip_suffix(".txt"))?;
            Some(id.to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    if ids.len() <= keep {
        return Ok(());
    }
    let old = ids.len() - keep;
    for id in &ids[..old] {
        for ext in ["json", "txt"] {
            let p = dir.join(format!("stall-{id}.{ext}"));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_is_created_0700_and_pruning_keeps_the_newest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        ensure_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for i in 0..5 {
            for ext in ["json", "txt"] {
                write_atomic(&dir, &dir.join(format!("stall-2026-{i}.{ext}")), b"x").unwrap();
            }
        }
        let mode = fs::metadata(dir.join("stall-2026-0.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        prune(&dir, 2).unwrap();
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "stall-2026-3.json",
                "stall-2026-3.txt",
                "stall-2026-4.json",
                "stall-2026-4.txt"
            ]
        );
    }
}
