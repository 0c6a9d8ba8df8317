//! Reading a report back from its JSON, for tools.
//!
//! This file owns [`StallReport::from_json`]: the format-version check and
//! one-line reasons for text that is not a report (truncated, malformed,
//! or JSON of another shape). It does not find report files nor decide
//! what a tool does with a bad one (the `loopwatch` command does).

use serde::Deserialize;

use super::{StallReport, REPORT_FORMAT_VERSION};
use crate::error::Error;

/// The one field read before the rest: a report of a later version may
/// have a shape this loopwatch would misread.
#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default)]
    format_version: u32,
}

impl StallReport {
    /// Reads a report from the JSON that [`StallReport::to_json`] wrote
    /// (the `stall-<id>.json` file).
    ///
    /// Reports of format versions 1 (no `format_version` field; it reads
    /// as 1) up to [`REPORT_FORMAT_VERSION`] are read.
    ///
    /// Errors: [`Error::ReportVersion`] for a report of a later version;
    /// [`Error::InvalidReport`] for text that is not JSON, ends early
    /// (a truncated file), or is JSON but not a stall report, with the line
    /// and column or the field concerned.
    ///
    /// ```no_run
    /// let path = "/var/lib/my-daemon/loopwatch/stall-20261124T215722Z-main-21709-0001.json";
    /// let report = loopwatch::StallReport::from_json(&std::fs::read_to_string(path)?)?;
    /// println!("{}", report.to_text());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_json(text: &str) -> Result<StallReport, Error> {
        // Text that is no JSON object fails here and is judged by the full
        // parse below, whose message says more.
        if let Ok(v) = serde_json::from_str::<VersionOnly>(text) {
            check_version(v.format_version)?;
        }
        // Every JSON object parses as `VersionOnly`: the version is checked.
        let mut report: StallReport = serde_json::from_str(text).map_err(invalid)?;
        report.format_version = report.format_version.max(1);
        Ok(report)
    }
}

fn check_version(found: u32) -> Result<(), Error> {
    if found > REPORT_FORMAT_VERSION {
        return Err(Error::ReportVersion {
            found,
            supported: REPORT_FORMAT_VERSION,
        });
    }
    Ok(())
}

/// One line saying why `text` is not a report.
fn invalid(e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    let reason = match e.classify() {
        Category::Eof => format!("truncated JSON: the text ends early ({at})"),
        Category::Syntax => format!("malformed JSON at {at}: {}", message(&e)),
        Category::Data => format!("JSON, but not a stall report: {}", message(&e)),
        Category::Io => format!("unreadable: {e}"),
    };
    Error::InvalidReport { reason }
}

/// serde_json's message without its trailing " at line L column C".
fn message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_keeps_its_version() {
        let report = StallReport::blank();
        let back = StallReport::from_json(&report.to_json()).expect("reads back");
        assert_eq!(back.format_version, REPORT_FORMAT_VERSION);
        assert_eq!(back.id, report.id);
    }

    #[test]
    fn a_report_without_a_version_is_version_1() {
        let mut v = serde_json::to_value(StallReport::blank()).unwrap();
        v.as_object_mut().unwrap().remove("format_version");
        let back = StallReport::from_json(&v.to_string()).expect("version 1 reads");
        assert_eq!(back.format_version, 1);
    }

    #[test]
    fn bad_text_gets_a_reason_of_its_kind() {
        let json = StallReport::blank().to_json();
        let reason = |text: &str| match StallReport::from_json(text) {
            Err(Error::InvalidReport { reason }) => reason,
            other => panic!("expected InvalidReport for {text:?}, got {other:?}"),
        };
        assert!(reason(&json[..json.len() / 2]).starts_with("truncated JSON"));
        let malformed = reason("{\"id\": nope}");
        assert!(
            malformed.starts_with("malformed JSON at line 1, column "),
            "{malformed}"
        );
        let data = reason("{\"id\": \"x\"}");
        assert!(
            data.starts_with("JSON, but not a stall report: missing field"),
            "{data}"
        );
        let array = reason("[1, 2]");
        assert!(array.starts_with("JSON, but not a stall report"), "{array}");
    }

    #[test]
    fn a_later_version_is_refused_before_its_shape_is_read() {
        let text = format!(
            "{{\"format_version\": {}, \"whatever\": []}}",
            REPORT_FORMAT_VERSION + 1
        );
        match StallReport::from_json(&text) {
            Err(Error::ReportVersion { found, supported }) => {
                assert_eq!(found, REPORT_FORMAT_VERSION + 1);
                assert_eq!(supported, REPORT_FORMAT_VERSION);
            }
            other => panic!("expected ReportVersion, got {other:?}"),
        }
    }
}
