//! Finding a module's separate debug file, the way GDB does.
//!
//! This module owns the search: first by GNU build id
//! (`<root>/.build-id/xx/yyyy.debug`), then by the name in the module's
//! `.gnu_debuglink`, next to the module, in its `.debug/` directory, and
//! under `<root>/<module's directory>/`, where `<root>` is
//! `/usr/lib/debug`. A candidate found by name is accepted only if its build
//! id matches the module's (when the module has one). It does not read
//! what the file holds ([`super::elf`], [`super::symtab`],
//! [`super::dwarf`] do).

use std::path::{Path, PathBuf};

use super::elf::{hex, ElfFacts};

/// Where distributions install debug files.
pub(crate) const DEBUG_ROOT: &str = "/usr/lib/debug";

/// The separate debug file of the module at `module` (described by
/// `facts`), if one is installed. `None` also when a candidate exists but
/// belongs to another build.
pub(crate) fn find(module: &Path, facts: &ElfFacts) -> Option<PathBuf> {
    find_in(Path::new(DEBUG_ROOT), module, facts)
}

/// [`find`] with another root than `/usr/lib/debug` (for tests).
pub(crate) fn find_in(root: &Path, module: &Path, facts: &ElfFacts) -> Option<PathBuf> {
    candidates(root, module, facts)
        .into_iter()
        .find(|c| c.is_file() && same_build(c, facts))
}

/// Where under `root` the debug file of the build with hex id `id` is
/// (`.build-id/xx/yyyy.debug`, GDB's layout); `None` for an id too short.
pub(crate) fn build_id_path(root: &Path, id: &str) -> Option<PathBuf> {
    let (dir, file) = (id.get(..2)?, id.get(2..).filter(|f| !f.is_empty())?);
    Some(root.join(".build-id").join(dir).join(format!("{file}.debug")))
}

/// Every path searched, in order (what a report tells the user).
pub(crate) fn candidates(root: &Path, module: &Path, facts: &ElfFacts) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = facts
        .build_id
        .as_deref()
        .and_then(|id| build_id_path(root, &hex(id)))
    {
        out.push(path);
    }
    if let Some((name, _crc)) = &facts.debuglink {
        // The name is a file name; anything with a path in it is not trusted.
        if !name.is_empty() && !name.contains('/') && name != "." && name != ".." {
            if let Some(dir) = module.parent() {
                let own = dir.join(name);
                if own != module {
                    out.push(own);
                }
                out.push(dir.join(".debug").join(name));
                let relative = dir.strip_prefix("/").unwrap_or(dir);
                out.push(root.join(relative).join(name));
            }
        }
    }
    out
}

/// Whether `candidate` belongs to the same build as the module.
fn same_build(candidate: &Path, module: &ElfFacts) -> bool {
    match &module.build_id {
        Some(id) => ElfFacts::read(candidate).is_some_and(|c| c.build_id.as_ref() == Some(id)),
        // No build id to compare: trust the name, as GDB does without CRC.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(build_id: Option<&[u8]>, link: Option<&str>) -> ElfFacts {
        ElfFacts {
            build_id: build_id.map(<[u8]>::to_vec),
            debuglink: link.map(|l| (l.to_string(), 0)),
            ..ElfFacts::default()
        }
    }

    #[test]
    fn search_order_is_build_id_then_debuglink_places() {
        let c = candidates(
            Path::new("/usr/lib/debug"),
            Path::new("/opt/app/bin/app"),
            &facts(Some(&[0xab, 0xcd, 0xef]), Some("app.debug")),
        );
        let c: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            c,
            [
                "/usr/lib/debug/.build-id/ab/cdef.debug",
                "/opt/app/bin/app.debug",
                "/opt/app/bin/.debug/app.debug",
                "/usr/lib/debug/opt/app/bin/app.debug",
            ]
        );
    }

    #[test]
    fn a_debuglink_with_a_path_is_ignored() {
        for bad in ["../../etc/passwd", "a/b", "", ".."] {
            let c = candidates(
                Path::new("/r"),
                Path::new("/x/app"),
                &facts(None, Some(bad)),
            );
            assert!(c.is_empty(), "{bad}: {c:?}");
        }
    }

    #[test]
    fn a_candidate_of_another_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // This test binary has a build id; a file named like its debug file
        // but holding another build (here: the test binary itself, checked
        // against a made-up id) is not accepted.
        let exe = std::env::current_exe().unwrap();
        let module = dir.path().join("app");
        std::fs::write(&module, b"not used").unwrap();
        std::fs::copy(&exe, dir.path().join("app.debug")).unwrap();
        let wrong = facts(Some(&[1, 2, 3, 4]), Some("app.debug"));
        assert_eq!(find_in(dir.path(), &module, &wrong), None);
        let right = ElfFacts {
            debuglink: Some(("app.debug".into(), 0)),
            ..ElfFacts::read(&exe).unwrap()
        };
        assert_eq!(
            find_in(dir.path(), &module, &right),
            Some(dir.path().join("app.debug"))
        );
    }
}
