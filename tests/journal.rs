//! End to end with a real systemd-journald (issue 15).
//!
//! The harness (`support/systemd.rs`) starts `systemd-journald` and a
//! `systemd --user` in private mount and PID namespaces, with a tmpfs journal.
//! This test binary is then run again inside those namespaces, playing the
//! sender: it finds journald with `Journal::detect()` and sends entries
//! through `Journal::send`. The test reads them back with
//! `journalctl -o json MESSAGE_ID=…` inside the namespaces and checks every
//! field, journald's own `_PID` and `_TRANSPORT`, a value with newlines, and
//! an entry too large for a datagram (the sealed-memfd path).
//!
//! Needs root, util-linux (`unshare`, `nsenter`, `setpriv`) and systemd
//! (`systemd`, `systemd-journald`, `journalctl`); without them it fails,
//! saying what is missing. It never skips.

mod common;
#[path = "support/systemd.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::demo_bin;
use harness::Manager;
use loopwatch::journal::{
    Journal, JournalEntry, JournalEvent, JOURNAL_SOCKET, MESSAGE_ID_STALL_DETECTED,
    MESSAGE_ID_STALL_RECOVERED,
};

/// The role variable the re-run test binary sees.
const ROLE: &str = "LOOPWATCH_TEST_ROLE";
/// The marker the sender puts in `LOOPWATCH_STALL_ID`.
const MARKER: &str = "LOOPWATCH_E2E_MARKER";
/// The size of the large entry's big field: more than any default datagram.
const BIG_FIELD_BYTES: usize = 600 * 1024;

/// What the sender puts in its large field: numbered lines, so a value cut
/// or reordered anywhere shows.
fn big_value() -> String {
    let mut s = String::with_capacity(BIG_FIELD_BYTES + 32);
    let mut i = 0u32;
    while s.len() < BIG_FIELD_BYTES {
        s.push_str(&format!("frame {i:06} myapp::render::spin\n"));
        i += 1;
    }
    s
}

/// The sender, inside the namespaces.
fn send_entries() {
    let marker = std::env::var(MARKER).expect("the test passes a marker");
    let journal = Journal::detect().expect(
        "Journal::detect() finds journald inside the harness's namespaces \
         (/run/systemd/journal/socket exists there)",
    );
    assert_eq!(journal.socket_path(), Path::new(JOURNAL_SOCKET));
    println!("SENDER_PID={}", std::process::id());

    let stalled = JournalEntry::new(
        JournalEvent::StallDetected,
        "event loop \"main\" stalled for 1.2 s: cpu-bound in myapp::render::spin \
         (src/render.rs:88); report /var/lib/myapp/loopwatch/stall-e2e.txt",
    )
    .field("LOOPWATCH_STALL_ID", &marker)
    .field("LOOPWATCH_RUNTIME", "main")
    .field("LOOPWATCH_VERDICT", "cpu-bound")
    .field("LOOPWATCH_CULPRIT", "myapp::render::spin")
    .field("CODE_FUNC", "myapp::render::spin")
    .field("CODE_FILE", "src/render.rs")
    .field("CODE_LINE", "88")
    .field("LOOPWATCH_STALLED_SECONDS", "1.250")
    .field("LOOPWATCH_REPORT", "/var/lib/myapp/loopwatch/stall-e2e.txt")
    .field("LOOPWATCH_NOTES", "first line\nsecond line")
    .field("loopwatch.lowercase-name", "sanitized");
    journal.send(&stalled).expect("send the stall entry");

    let big = big_value();
    let recovered = JournalEntry::new(
        JournalEvent::StallRecovered,
        "event loop \"main\" recovered after 3.2 s",
    )
    .field("LOOPWATCH_STALL_ID", &marker)
    .field("LOOPWATCH_DURATION_SECONDS", "3.200")
    .field("LOOPWATCH_STACKS", &big);
    assert_eq!(recovered.dropped_fields(), 0);
    let encoded = recovered.encode().len();
    let wmem_default: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .expect("read net.core.wmem_default")
        .trim()
        .parse()
        .expect("a number");
    assert!(
        encoded > wmem_default,
        "the large entry ({encoded} bytes) must exceed the socket's send buffer \
         ({wmem_default} bytes) so that only the memfd path can carry it"
    );
    journal.send(&recovered).expect("send the large entry");

    // What journald does with a field name it does not accept, sent raw:
    // the reason loopwatch sanitizes names.
    let raw = format!(
        "MESSAGE_ID={MESSAGE_ID_STALL_DETECTED}\nMESSAGE=raw\n\
         LOOPWATCH_STALL_ID={marker}-raw\nlowercase=dropped by journald\n"
    );
    std::os::unix::net::UnixDatagram::unbound()
        .expect("socket")
        .send_to(raw.as_bytes(), JOURNAL_SOCKET)
        .expect("send a raw datagram");
}

/// Polls `journalctl` until an entry matches, for up to 20 s.
fn wait_entry(m: &Manager, matches: &[&str]) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let mut found = m.journal_entries(matches);
        if let Some(e) = found.pop() {
            assert!(found.is_empty(), "one entry matches {matches:?}");
            return e;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let all = m.journalctl(&["-o", "short-precise"]);
            panic!(
                "no journal entry matches {matches:?} after 20 s; the journal holds:\n{}\n{}",
                String::from_utf8_lossy(&all.stdout),
                m.diagnostics(None)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn field<'a>(entry: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    entry
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from the entry: {entry:#?}"))
}

#[test]
fn journald_receives_structured_entries_from_journal_send() {
    if std::env::var(ROLE).as_deref() == Ok("journal-sender") {
        send_entries();
        return;
    }
    let m = Manager::start_with_journald("journal");
    let marker = format!(
        "e2e-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let exe = std::env::current_exe().expect("path of this test binary");
    let out = m.run_in_namespace(
        &exe,
        &[
            "journald_receives_structured_entries_from_journal_send",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ],
        &[
            (ROLE, "journal-sender".to_string()),
            (MARKER, marker.clone()),
            ("RUST_BACKTRACE", "1".to_string()),
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the sender failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        m.diagnostics(None)
    );
    // libtest prints the test's name on the same line, before the pid.
    let sender_pid: String = stdout
        .split("SENDER_PID=")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_else(|| {
            panic!(
                "the sender printed no pid:\n--- stdout\n{stdout}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });

    // The stall entry: every field as sent, and journald's trusted fields.
    let stall_id = format!("LOOPWATCH_STALL_ID={marker}");
    let e = wait_entry(
        &m,
        &[
            &format!("MESSAGE_ID={MESSAGE_ID_STALL_DETECTED}"),
            &stall_id,
        ],
    );
    for (name, want) in [
        (
            "MESSAGE",
            "event loop \"main\" stalled for 1.2 s: cpu-bound in myapp::render::spin \
             (src/render.rs:88); report /var/lib/myapp/loopwatch/stall-e2e.txt",
        ),
        ("MESSAGE_ID", MESSAGE_ID_STALL_DETECTED),
        ("PRIORITY", "3"),
        ("LOOPWATCH_RUNTIME", "main"),
        ("LOOPWATCH_VERDICT", "cpu-bound"),
        ("LOOPWATCH_CULPRIT", "myapp::render::spin"),
        ("CODE_FUNC", "myapp::render::spin"),
        ("CODE_FILE", "src/render.rs"),
        ("CODE_LINE", "88"),
        ("LOOPWATCH_STALLED_SECONDS", "1.250"),
        ("LOOPWATCH_REPORT", "/var/lib/myapp/loopwatch/stall-e2e.txt"),
        ("LOOPWATCH_NOTES", "first line\nsecond line"),
        ("LOOPWATCH_LOWERCASE_NAME", "sanitized"),
        ("_TRANSPORT", "journal"),
        ("_PID", sender_pid.as_str()),
    ] {
        assert_eq!(field(&e, name), want, "{name} in {e:#?}");
    }

    // The large entry came through the sealed memfd, whole.
    let e = wait_entry(
        &m,
        &[
            &format!("MESSAGE_ID={MESSAGE_ID_STALL_RECOVERED}"),
            &stall_id,
        ],
    );
    assert_eq!(field(&e, "PRIORITY"), "5");
    assert_eq!(field(&e, "LOOPWATCH_DURATION_SECONDS"), "3.200");
    assert_eq!(field(&e, "_PID"), sender_pid);
    let stacks = field(&e, "LOOPWATCH_STACKS");
    assert_eq!(stacks.len(), big_value().len(), "the large field's size");
    assert!(stacks == big_value(), "the large field arrived intact");

    // journald drops a field name it does not accept, without a word.
    let raw = wait_entry(
        &m,
        &[
            &format!("MESSAGE_ID={MESSAGE_ID_STALL_DETECTED}"),
            &format!("LOOPWATCH_STALL_ID={marker}-raw"),
        ],
    );
    assert_eq!(field(&raw, "MESSAGE"), "raw");
    assert!(
        !raw.keys().any(|k| k.eq_ignore_ascii_case("lowercase")),
        "journald kept an invalid field name: {raw:#?}"
    );
}

#[test]
fn a_real_stall_of_the_demo_reaches_the_journal() {
    let m = Manager::start_with_journald("journal-stall");
    let reports = tempfile::tempdir().expect("report dir");
    let out = m.run_in_namespace(
        &demo_bin(),
        &[
            "--stall-after",
            "0.5",
            "--stall-kind",
            "sleep",
            "--stall-for",
            "1.2",
            "--threshold-ms",
            "300",
            "--exit-after",
            "3",
            "--report-dir",
            &reports.path().display().to_string(),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "the demo failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let e = wait_entry(
        &m,
        &[
            &format!("MESSAGE_ID={MESSAGE_ID_STALL_DETECTED}"),
            "LOOPWATCH_RUNTIME=main",
        ],
    );
    assert_eq!(field(&e, "PRIORITY"), "3");
    assert_eq!(field(&e, "LOOPWATCH_VERDICT"), "blocked-syscall", "{e:#?}");
    assert!(
        field(&e, "LOOPWATCH_CULPRIT").ends_with("stall_sleep"),
        "{e:#?}"
    );
    assert_eq!(field(&e, "CODE_FUNC"), field(&e, "LOOPWATCH_CULPRIT"));
    assert!(field(&e, "MESSAGE").contains("stalled"), "{e:#?}");
    let report = field(&e, "LOOPWATCH_REPORT");
    assert!(
        report.starts_with(&reports.path().display().to_string()) && Path::new(report).exists(),
        "the entry names the report on disk: {report}"
    );
    let id = field(&e, "LOOPWATCH_STALL_ID").to_string();
    let r = wait_entry(
        &m,
        &[
            &format!("MESSAGE_ID={MESSAGE_ID_STALL_RECOVERED}"),
            &format!("LOOPWATCH_STALL_ID={id}"),
        ],
    );
    let d: f64 = field(&r, "LOOPWATCH_DURATION_SECONDS").parse().unwrap();
    assert!(
        (0.9..=1.8).contains(&d),
        "a 1.2 s stall lasted {d} s: {r:#?}"
    );
    assert!(field(&r, "LOOPWATCH_END").ends_with('Z'), "{r:#?}");
}
