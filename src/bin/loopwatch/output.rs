//! Writing an output file whole.
//!
//! This module owns [`write_whole`]: the bytes go to a temporary file
//! beside the target, are synced, and the temporary file is renamed over
//! the target, so a failed or interrupted run never leaves half a flame
//! graph or half a report. What is written is the caller's business.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `path` whole with what `f` writes; with `mode`, the file gets
/// those permission bits (else the usual ones for a new file). The error is
/// one line naming the file.
pub fn write_whole(
    path: &Path,
    mode: Option<u32>,
    f: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp",
        name.as_deref().unwrap_or("loopwatch-output")
    ));
    let written = fs::File::create(&tmp).and_then(|file| {
        if let Some(mode) = mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        let mut w = io::BufWriter::new(file);
        f(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    written.and_then(|()| fs::rename(&tmp, path)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("{}: cannot write: {e}", path.display())
    })
}
