//! `/proc/self/maps`: the address ranges the capture needs.
//!
//! Two users: the signal handler needs the readable ranges (to bound its
//! copy of a stack to the mapping that holds the stack pointer), and the
//! unwinder needs the file-backed executable mappings (to find each loaded
//! ELF module and its load bias). Parsing happens on the monitor thread,
//! before any signal is sent; the handler only reads a preallocated array.

use std::fs;

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    /// First address of the range.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r` permission.
    pub readable: bool,
    /// `x` permission.
    pub executable: bool,
    /// Offset of the range in the mapped file.
    pub offset: u64,
    /// The path of the mapped file, or a pseudo name such as `[vdso]`,
    /// `[stack]`, `[heap]`; `None` for anonymous memory.
    pub path: Option<String>,
}

/// Reads and parses `/proc/self/maps`; empty if it cannot be read.
pub(crate) fn read_maps() -> Vec<Mapping> {
    match fs::read_to_string("/proc/self/maps") {
        Ok(text) => parse_maps(&text),
        Err(err) => {
            tracing::warn!(%err, "cannot read /proc/self/maps");
            Vec::new()
        }
    }
}

/// Parses the text of a maps file; lines that do not parse are skipped.
pub(crate) fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// Splits off the next space-separated field.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(' ');
    if s.is_empty() {
        return None;
    }
    let end = s.find(' ').unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// `start-end perms offset dev inode   path` (the path may contain spaces).
fn parse_line(line: &str) -> Option<Mapping> {
    let (range, rest) = next_field(line)?;
    let (perms, rest) = next_field(rest)?;
    let (offset, rest) = next_field(rest)?;
    let (_dev, rest) = next_field(rest)?;
    let (_inode, rest) = next_field(rest)?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    let perms = perms.as_bytes();
    let path = rest.trim_start_matches(' ');
    Some(Mapping {
        start,
        end,
        readable: perms.first() == Some(&b'r'),
        executable: perms.get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
5581d1a00000-5581d1a2e000 r--p 00000000 08:01 123 /usr/bin/my daemon
5581d1a2e000-5581d1b00000 r-xp 0002e000 08:01 123 /usr/bin/my daemon
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f0000021000-7f0004000000 ---p 00000000 00:00 0
7ffc4eeaa000-7ffc4eecb000 rw-p 00000000 00:00 0                          [stack]
7f98d4adc000-7f98d4ade000 r-xp 00000000 00:00 0                          [vdso]
garbage line
7f98d4ade000-7f98d4adc000 r-xp 00000000 00:00 0
";

    #[test]
    fn parses_paths_with_spaces_and_skips_garbage() {
        let maps = parse_maps(SAMPLE);
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[0].path.as_deref(), Some("/usr/bin/my daemon"));
        assert!(maps[0].readable && !maps[0].executable);
        assert!(maps[1].executable);
        assert_eq!(maps[1].offset, 0x2e000);
        assert_eq!(maps[2].path, None);
        assert!(!maps[3].readable);
        assert_eq!(maps[4].path.as_deref(), Some("[stack]"));
        assert_eq!(maps[5].start, 0x7f98d4adc000);
        assert_eq!(maps[5].end, 0x7f98d4ade000);
    }

    #[test]
    fn own_maps_contain_this_function() {
        let here = own_maps_contain_this_function as *const () as usize as u64;
        let maps = read_maps();
        let m = maps
            .iter()
            .find(|m| m.start <= here && here < m.end)
            .expect("code mapped");
        assert!(m.executable && m.readable);
        assert!(m.path.as_deref().is_some_and(|p| p.starts_with('/')));
    }
}
