//! Writing one report's pair of files, all or nothing.
//!
//! Both temporary files (`.stall-<id>.<ext>.<pid>-<n>.tmp`, created with
//! `O_EXCL | O_NOFOLLOW`, mode exactly 0600) are written completely and
//! fsync'd before either is renamed over its final name; then the JSON is
//! renamed, then the text, then the directory is fsync'd. A failure before
//! the renames removes both temporary files and leaves the previous
//! version of the report (if any) untouched. If the second rename fails,
//! the first final file is removed again together with the previous text
//! file, so no half pair is left. Every call takes the directory's
//! descriptor: nothing here resolves a path.
//!
//! Choosing the directory, counting and retention are the store's job.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::names::{final_name, temp_name};

/// Mode of every report file.
const FILE_MODE: u32 = 0o600;
/// Attempts at a temporary name that does not exist yet.
const TEMP_NAME_TRIES: u64 = 8;

/// A temporary file in the report directory, removed on drop unless renamed.
struct TempFile<'d> {
    dir: BorrowedFd<'d>,
    name: String,
    renamed: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = rustix::fs::unlinkat(self.dir, self.name.as_str(), AtFlags::empty());
        }
    }
}

/// Names the temporary files of this process.
#[derive(Debug, Default)]
pub(super) struct TempNames {
    next: u64,
}

impl TempNames {
    /// Creates a temporary file for `ext` of report `id`, writes `bytes`
    /// and fsyncs it.
    fn write<'d>(
        &mut self,
        dir: BorrowedFd<'d>,
        id: &str,
        ext: &str,
        bytes: &[u8],
    ) -> io::Result<TempFile<'d>> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut last = io::Error::from(Errno::EXIST);
        for _ in 0..TEMP_NAME_TRIES {
            self.next = self.next.wrapping_add(1);
            let name = temp_name(id, ext, std::process::id(), self.next);
            let fd =
                match rustix::fs::openat(dir, name.as_str(), flags, Mode::from_raw_mode(FILE_MODE))
                {
                    Ok(fd) => fd,
                    // A leftover of a killed writer with our pid: the sweep removes it later.
                    Err(Errno::EXIST) => continue,
                    Err(e) => {
                        last = e.into();
                        break;
                    }
                };
            let tmp = TempFile {
                dir,
                name,
                renamed: false,
            };
            // The umask may have removed bits; it cannot have added any.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE))?;
            let mut file = std::fs::File::from(fd);
            file.write_all(bytes)?;
            file.sync_all()?;
            return Ok(tmp);
        }
        Err(last)
    }
}

/// Writes report `id` as `stall-<id>.json` and `stall-<id>.txt` in `dir`:
/// both or neither.
pub(super) fn write_pair(
    dir: BorrowedFd<'_>,
    names: &mut TempNames,
    id: &str,
    json: &[u8],
    txt: &[u8],
) -> io::Result<()> {
    let mut tmp_json = names.write(dir, id, "json", json)?;
    let mut tmp_txt = names.write(dir, id, "txt", txt)?;
    let final_json = final_name(id, "json");
    let final_txt = final_name(id, "txt");
    rustix::fs::renameat(dir, tmp_json.name.as_str(), dir, final_json.as_str())?;
    tmp_json.renamed = true;
    if let Err(e) = rustix::fs::renameat(dir, tmp_txt.name.as_str(), dir, final_txt.as_str()) {
        // The new JSON is in place but its text is not: remove both final
        // names (the text may be a previous version's) so no half pair is left.
        for name in [&final_json, &final_txt] {
            let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
        }
        return Err(e.into());
    }
    tmp_txt.renamed = true;
    rustix::fs::fsync(dir.as_fd())?;
    Ok(())
}
