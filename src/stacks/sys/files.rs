//! The `unsafe` calls of stack capture that are not about the signal:
//! read-only views of files, giving free heap back to the OS, reading
//! the vdso image, and the calling thread's CPU clock.
//!
//! This is part of [`super`], the one place with `unsafe` in loopwatch;
//! each block has its `// SAFETY:` comment.

/// A read-only, private view of `len` bytes of `file` from `offset` (any
/// offset: the mapping is page-aligned underneath). Nothing is read until a
/// page is touched, and touched pages are the page cache's, not the heap's:
/// dropping the view gives them back at once.
pub(crate) fn map_file_range(
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private, and loopwatch never
    // writes the files it maps: ELF modules this process has loaded and
    // their debug files, all opened read-only. The remaining hazard is
    // another process truncating such a file while it is mapped, which
    // would fault on access (SIGBUS); the dynamic loader's own mappings of
    // the same files carry that hazard already, for the code that runs.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)
    }
}

/// A read-only, private view of the whole of `file` (see
/// [`map_file_range`]).
pub(crate) fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: as in `map_file_range`: read-only, private, of a file
    // loopwatch never writes.
    unsafe { memmap2::Mmap::map(file) }
}

/// Returns the heap's free pages to the OS (glibc's `malloc_trim(0)`):
/// after a report, the memory symbolization used goes back at once instead
/// of staying in the allocator's free lists. A no-op on other C libraries.
pub(crate) fn return_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the allocator's own locks, is thread-safe
    // and only releases memory that is free; it is never called from the
    // signal handler.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A copy of the vdso image, which lives only in memory. `start..end` must
/// be the `[vdso]` range of `/proc/self/maps`; it is checked against the
/// auxiliary vector before any byte is read.
pub(crate) fn read_vdso(start: u64, end: u64) -> Option<Vec<u8>> {
    // SAFETY: getauxval has no preconditions; 0 means "not present".
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as u64;
    if base == 0 || base != start || end <= start || end - start > 64 * 1024 * 1024 {
        return None;
    }
    let len = (end - start) as usize;
    // SAFETY: the kernel maps the vdso readable at AT_SYSINFO_EHDR for the
    // life of the process and never unmaps it; `len` is the size of its
    // mapping as listed in /proc/self/maps.
    let image = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
    Some(image.to_vec())
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; the clock id
    // is a constant every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
