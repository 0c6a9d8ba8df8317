//! Reusing one capture's DWARF names for another capture of the same stall.
//!
//! This module owns [`carry_names`]: a stall's second capture is written to
//! the report before its own DWARF pass, and a report that compares a
//! DWARF-named first capture with a symbol-table-named second one would see
//! every frame as moved. Frames at the same place in the same build (build
//! id, offset, and whether the address is a return address) are the same
//! code, so the first capture's DWARF frames are copied over, without
//! reading any debug information. It does not symbolize
//! ([`super::dwarf`] does).

use std::collections::HashMap;

use super::capture::ThreadStack;
use super::frame::{Frame, SymbolSource};

/// (build id, offset, is a return address) of a physical frame.
type Place = (Option<String>, u64, bool);

/// The physical frames of `frames` (innermost first) with the frames that
/// describe each (its inlined functions first, itself last).
fn groups(frames: &[Frame]) -> Vec<(Place, &[Frame])> {
    let mut out = Vec::new();
    let (mut start, mut physical) = (0, 0usize);
    for (i, f) in frames.iter().enumerate() {
        if f.inlined {
            continue;
        }
        if let Some(offset) = f.offset {
            let place = (f.build_id.clone(), offset, physical > 0);
            out.push((place, &frames[start..=i]));
        }
        physical += 1;
        start = i + 1;
    }
    out
}

/// Gives frames of `to` the DWARF names their twins in `from` have (same
/// build id, offset and kind of address). Frames `from` does not have keep
/// what they have.
pub(crate) fn carry_names(from: &[ThreadStack], to: &mut [ThreadStack]) {
    let mut known: HashMap<Place, Vec<Frame>> = HashMap::new();
    for t in from {
        for (place, group) in groups(&t.frames) {
            if group.iter().all(|f| f.symbols == SymbolSource::DebugInfo) {
                known.entry(place).or_insert_with(|| group.to_vec());
            }
        }
    }
    if known.is_empty() {
        return;
    }
    for t in to.iter_mut() {
        let mut changed = false;
        let mut out = Vec::with_capacity(t.frames.len());
        let mut physical = 0usize;
        for f in &t.frames {
            if f.inlined
                || f.symbols != SymbolSource::SymbolTable && f.symbols != SymbolSource::None
            {
                out.push(f.clone());
                if !f.inlined {
                    physical += 1;
                }
                continue;
            }
            let place = f.offset.map(|o| (f.build_id.clone(), o, physical > 0));
            physical += 1;
            match place.and_then(|p| known.get(&p)) {
                Some(group) => {
                    changed = true;
                    out.extend(group.iter().map(|g| Frame {
                        ip: f.ip,
                        ..g.clone()
                    }));
                }
                None => out.push(f.clone()),
            }
        }
        if changed {
            t.frames = out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::capture::NotCaptured;

    fn frame(offset: u64, name: &str, symbols: SymbolSource, inlined: bool) -> Frame {
        Frame {
            ip: offset + 0x1000,
            function: Some(name.into()),
            inlined,
            build_id: Some("ab".into()),
            offset: Some(offset),
            symbols,
            ..Frame::default()
        }
    }

    fn thread(frames: Vec<Frame>) -> ThreadStack {
        let mut t = ThreadStack::not_captured(1, None, NotCaptured::Failed);
        t.frames = frames;
        t
    }

    #[test]
    fn dwarf_frames_are_copied_to_the_same_places_only() {
        use SymbolSource::*;
        let first = vec![thread(vec![
            frame(0x10, "inner_inlined", DebugInfo, true),
            frame(0x10, "a::leaf", DebugInfo, false),
            frame(0x20, "a::caller", DebugInfo, false),
        ])];
        let mut second = vec![thread(vec![
            frame(0x10, "a::leaf", SymbolTable, false),
            frame(0x20, "a::caller", SymbolTable, false),
            frame(0x30, "a::root", SymbolTable, false),
        ])];
        carry_names(&first, &mut second);
        let names: Vec<_> = second[0]
            .frames
            .iter()
            .map(|f| (f.function.clone().unwrap(), f.symbols, f.inlined))
            .collect();
        assert_eq!(
            names,
            vec![
                ("inner_inlined".into(), DebugInfo, true),
                ("a::leaf".into(), DebugInfo, false),
                ("a::caller".into(), DebugInfo, false),
                ("a::root".into(), SymbolTable, false),
            ]
        );
        // The innermost frame is an exact address, the others return
        // addresses: the same offset in another position is not the same.
        let mut shifted = vec![thread(vec![
            frame(0x05, "a::other", SymbolTable, false),
            frame(0x10, "a::leaf", SymbolTable, false),
        ])];
        carry_names(&first, &mut shifted);
        assert!(shifted[0]
            .frames
            .iter()
            .all(|f| f.symbols == SymbolTable && !f.inlined));
    }
}
