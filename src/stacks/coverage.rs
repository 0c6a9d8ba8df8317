//! What stall reports will be able to name for the main executable.
//!
//! This module owns the one log line loopwatch writes at start about
//! symbols: whether the executable has a symbol table and DWARF (in the
//! binary or in a separate debug file that is installed), and how to get
//! more. It reads section headers only (a few kilobytes, well under a
//! millisecond) and never loads symbols. It does not symbolize anything
//! ([`super::symtab`] and [`super::dwarf`] do, at a stall).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use super::debugfile;
use super::dwarf::DwarfSource;
use super::elf::ElfFacts;

/// What stall reports can name for one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameCoverage {
    /// The binary.
    pub path: PathBuf,
    /// Its build id in hex.
    pub build_id: Option<String>,
    /// Function names from a symbol table (its own or its debug file's).
    pub symtab: bool,
    /// Where its DWARF is.
    pub dwarf: DwarfSource,
    /// Size of the binary on disk.
    pub binary_bytes: u64,
    /// Size of its DWARF sections (in the binary or the debug file).
    pub dwarf_bytes: u64,
    /// Its DWARF is compressed (not read).
    pub compressed: bool,
}

/// Where the build-id path of a debug file for `id` would be.
fn build_id_path(id: &str) -> String {
    debugfile::build_id_path(std::path::Path::new(debugfile::DEBUG_ROOT), id).map_or_else(
        || format!("{}/.build-id/<id>.debug", debugfile::DEBUG_ROOT),
        |p| p.display().to_string(),
    )
}

impl NameCoverage {
    /// Reads what the binary at `path` offers.
    pub(crate) fn of(path: &Path) -> Option<Self> {
        let elf = ElfFacts::read(path)?;
        let dwarf = DwarfSource::of(path, &elf);
        let (symtab, dwarf_bytes, compressed) = match &dwarf {
            DwarfSource::InModule(_) => (elf.has_symtab, elf.dwarf_bytes, elf.dwarf_compressed),
            DwarfSource::Separate(d) => {
                let f = ElfFacts::read(d).unwrap_or_default();
                (
                    elf.has_symtab || f.has_symtab,
                    f.dwarf_bytes,
                    f.dwarf_compressed,
                )
            }
            DwarfSource::Missing { symtab, .. } => (*symtab, 0, false),
        };
        Some(NameCoverage {
            path: path.to_path_buf(),
            build_id: elf.build_id_hex(),
            symtab,
            dwarf,
            binary_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            dwarf_bytes,
            compressed,
        })
    }

    /// The main executable's coverage.
    pub(crate) fn of_executable() -> Option<Self> {
        let exe = std::fs::read_link("/proc/self/exe").ok()?;
        let exe = PathBuf::from(
            exe.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
        );
        Self::of(&exe).or_else(|| {
            let mut c = Self::of(Path::new("/proc/self/exe"))?;
            c.path = exe;
            Some(c)
        })
    }

    /// The message: what reports will name, and how to get more.
    pub(crate) fn message(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let exe = self.path.display();
        let id = self.build_id.as_deref().unwrap_or("none");
        match &self.dwarf {
            DwarfSource::InModule(p) | DwarfSource::Separate(p) if self.compressed => format!(
                "stall reports will name the functions of {exe} from its symbol table only: its \
                 DWARF in {} is compressed, which loopwatch does not read (a decompressed copy \
                 would cost its full size in memory at every report); decompress it with \
                 `objcopy --decompress-debug-sections` for files, lines and inlined functions",
                p.display()
            ),
            DwarfSource::InModule(_) => format!(
                "stall reports will name functions, files, lines and inlined functions of {exe} \
                 (DWARF in the binary: {:.1} of its {:.1} MiB; read only while a report is written)",
                mib(self.dwarf_bytes),
                mib(self.binary_bytes)
            ),
            DwarfSource::Separate(d) => format!(
                "stall reports will name functions, files, lines and inlined functions of {exe} \
                 from its debug file {} (read only while a report is written)",
                d.display()
            ),
            DwarfSource::Missing { .. } if self.symtab => format!(
                "stall reports will name the functions of {exe} from its symbol table only: no \
                 file or line, and inlined functions (most of a release build's code) are \
                 invisible. For files, lines and inlined functions build with \
                 `debug = \"line-tables-only\"` in [profile.release] ({DEBUG_COST}), or install \
                 a separate debug file (`objcopy --only-keep-debug`) as {}",
                build_id_path(id)
            ),
            DwarfSource::Missing { .. } => format!(
                "{exe} is stripped (no symbol table, no debug info): stall reports will name no \
                 function of it, only its build id {id} and file offsets, which \
                 `loopwatch symbolize <report> --debug-dir <dir>` (the `loopwatch` command, \
                 feature `cli`) or `loopwatch::symbolize_offset` resolve later against the debug \
                 file of that build. To name functions, strip with `strip = \"debuginfo\"` instead of \
                 `strip = true`, or install the debug file as {}",
                build_id_path(id)
            ),
        }
    }
}

/// What `debug = "line-tables-only"` costs, measured on loopwatch's demo
/// (BENCHMARKS.md, "Binaries as shipped").
const DEBUG_COST: &str = "on loopwatch's demo it grows the binary from 5.1 to 28.8 MiB on disk \
                          and costs no memory until a report reads it";

static LOGGED: AtomicBool = AtomicBool::new(false);

/// Logs, once per process, what stall reports will be able to name for the
/// main executable and how to get more. Reads section headers only.
pub(crate) fn log_executable_coverage() {
    if LOGGED.swap(true, Ordering::Relaxed) {
        return;
    }
    let Some(c) = executable_coverage() else {
        tracing::debug!("cannot read the executable's headers: symbol coverage unknown");
        return;
    };
    let message = c.message();
    match (&c.dwarf, c.symtab) {
        (DwarfSource::Missing { .. }, false) => {
            tracing::warn!(build_id = c.build_id.as_deref(), "loopwatch: {message}")
        }
        _ => tracing::info!(build_id = c.build_id.as_deref(), "loopwatch: {message}"),
    }
}

/// The main executable's coverage, read once per process.
fn executable_coverage() -> Option<&'static NameCoverage> {
    static COVERAGE: OnceLock<Option<NameCoverage>> = OnceLock::new();
    COVERAGE.get_or_init(NameCoverage::of_executable).as_ref()
}

/// Whether the DWARF pass can name files, lines and inlined functions of
/// the main executable: it has uncompressed DWARF, in itself or in a debug
/// file that is installed.
pub(crate) fn executable_has_dwarf() -> bool {
    executable_coverage().is_some_and(|c| {
        !c.compressed && matches!(c.dwarf, DwarfSource::InModule(_) | DwarfSource::Separate(_))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_dwarf() {
        let c = NameCoverage::of_executable().expect("own executable");
        assert!(c.symtab, "{c:?}");
        assert!(matches!(c.dwarf, DwarfSource::InModule(_)), "{c:?}");
        assert!(c.dwarf_bytes > 0 && c.binary_bytes > c.dwarf_bytes, "{c:?}");
        assert!(c.message().contains("files, lines"), "{}", c.message());
        assert_eq!(c.build_id, crate::procfs::build_id());
        // Once per process, and cheap.
        let t = std::time::Instant::now();
        log_executable_coverage();
        log_executable_coverage();
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn messages_say_how_to_get_more() {
        let base = NameCoverage {
            path: "/srv/app".into(),
            build_id: Some("abcdef".into()),
            symtab: true,
            dwarf: DwarfSource::Missing {
                symtab: true,
                searched: vec![],
            },
            binary_bytes: 1,
            dwarf_bytes: 0,
            compressed: false,
        };
        let m = base.message();
        assert!(
            m.contains("line-tables-only") && m.contains("symbol table only"),
            "{m}"
        );
        assert!(m.contains("/usr/lib/debug/.build-id/ab/cdef.debug"), "{m}");
        let stripped = NameCoverage {
            symtab: false,
            ..base
        };
        let m = stripped.message();
        assert!(m.contains("stripped") && m.contains("abcdef"), "{m}");
        assert!(m.contains("strip = \"debuginfo\""), "{m}");
    }
}
