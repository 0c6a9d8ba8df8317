//! Unit tests: the wire format against a real datagram socket that plays
//! journald, field names, bounds, the memfd fallback, the send timeout, the
//! catalog's ids, and a stall entry on the wire. The mapping of a stall
//! report itself is tested next to it, in `stall.rs`.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::SealFlags;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::entry::one_line;
use super::transport::under_systemd;
use super::*;

/// A fake journald: a datagram socket bound in a temporary directory.
struct FakeJournald {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: UnixDatagram,
}

/// One datagram as journald would see it.
struct Received {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl FakeJournald {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let sock = UnixDatagram::bind(&path).expect("bind the fake journald socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        FakeJournald {
            _dir: dir,
            path,
            sock,
        }
    }

    fn journal(&self) -> Journal {
        Journal::at(&self.path).expect("a journal for the fake socket")
    }

    fn recv(&self) -> Received {
        let mut buf = vec![0u8; 2 << 20];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = rustix::net::recvmsg(
            self.sock.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .expect("a datagram within 5 s");
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        buf.truncate(msg.bytes);
        Received { payload: buf, fds }
    }
}

/// Decodes the native protocol (both forms); panics on malformed input.
fn decode(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b
            .iter()
            .position(|&c| c == b'\n')
            .expect("field ends in \\n");
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            let name = String::from_utf8(line[..eq].to_vec()).expect("ascii name");
            out.push((name, line[eq + 1..].to_vec()));
            b = &b[nl + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).expect("ascii name");
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            let value = rest[8..8 + len].to_vec();
            assert_eq!(rest[8 + len], b'\n', "binary field {name} ends in \\n");
            out.push((name, value));
            b = &rest[8 + len + 1..];
        }
    }
    out
}

fn value<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

// ------------------------------------------------------------ wire format

#[test]
fn a_small_entry_is_one_datagram_of_name_value_lines() {
    let fake = FakeJournald::new();
    let entry = JournalEntry::new(JournalEvent::StallDetected, "loop stalled")
        .field("LOOPWATCH_RUNTIME", "main")
        .field("CODE_LINE", "42");
    fake.journal().send(&entry).expect("send");
    let got = fake.recv();
    assert!(got.fds.is_empty(), "no descriptor for a small entry");
    assert_eq!(
        got.payload,
        b"MESSAGE_ID=c982a5b17e814d0aa9c31fe32560ac36\nPRIORITY=3\nMESSAGE=loop stalled\n\
          LOOPWATCH_RUNTIME=main\nCODE_LINE=42\n"
            .to_vec()
    );
    assert_eq!(got.payload, entry.encode());
}

#[test]
fn values_with_newlines_use_the_binary_safe_form() {
    let fake = FakeJournald::new();
    let binary: Vec<u8> = vec![b'a', b'\n', 0, 0xff, b'=', b'\n'];
    let entry = JournalEntry::new(JournalEvent::StallRecovered, "recovered")
        .field("LOOPWATCH_NOTES", "line one\nline two")
        .field("LOOPWATCH_BLOB", &binary)
        .field("LOOPWATCH_NUL", b"a\0b=c")
        .field("LOOPWATCH_EMPTY", "");
    fake.journal().send(&entry).expect("send");
    let got = fake.recv();

    let mut expected = b"LOOPWATCH_NOTES\n".to_vec();
    expected.extend_from_slice(&17u64.to_le_bytes());
    expected.extend_from_slice(b"line one\nline two\n");
    let notes_at = got
        .payload
        .windows(expected.len())
        .position(|w| w == expected.as_slice());
    assert!(notes_at.is_some(), "binary-safe framing of LOOPWATCH_NOTES");

    let fields = decode(&got.payload);
    assert_eq!(value(&fields, "PRIORITY"), Some(&b"5"[..]));
    assert_eq!(
        value(&fields, "MESSAGE_ID"),
        Some(MESSAGE_ID_STALL_RECOVERED.as_bytes())
    );
    assert_eq!(
        value(&fields, "LOOPWATCH_NOTES"),
        Some(&b"line one\nline two"[..])
    );
    assert_eq!(value(&fields, "LOOPWATCH_BLOB"), Some(binary.as_slice()));
    // No newline: the simple form carries NUL and '=' as they are.
    let simple = b"\nLOOPWATCH_NUL=a\0b=c\n";
    assert!(got.payload.windows(simple.len()).any(|w| w == simple));
    assert_eq!(value(&fields, "LOOPWATCH_NUL"), Some(&b"a\0b=c"[..]));
    assert_eq!(value(&fields, "LOOPWATCH_EMPTY"), Some(&b""[..]));
}

#[test]
fn priority_can_be_overridden() {
    let entry = JournalEntry::new(JournalEvent::HiccupSummary, "x").priority(Priority::Debug);
    let fields = decode(&entry.encode());
    assert_eq!(value(&fields, "PRIORITY"), Some(&b"7"[..]));
    assert_eq!(entry.priority_level(), Priority::Debug);
}

// ------------------------------------------------------------ field names

#[test]
fn field_names_are_validated_like_journald_does() {
    for ok in [
        "A",
        "MESSAGE",
        "CODE_LINE",
        "LOOPWATCH_RUNTIME",
        "X9_",
        &"A".repeat(64),
    ] {
        assert!(field_name_is_valid(ok), "{ok:?} is valid");
    }
    for bad in [
        "",
        "_PID",
        "__CURSOR",
        "9LIVES",
        "lower",
        "WITH-DASH",
        "WITH SPACE",
        "WITH=EQUALS",
        "NEW\nLINE",
        "ÜBER",
        &"A".repeat(65),
    ] {
        assert!(!field_name_is_valid(bad), "{bad:?} is invalid");
    }
}

#[test]
fn invalid_field_names_are_sanitized_not_dropped() {
    let cases = [
        ("LOOPWATCH_RUNTIME", "LOOPWATCH_RUNTIME"),
        ("loopwatch.runtime", "LOOPWATCH_RUNTIME"),
        ("culprit-file", "CULPRIT_FILE"),
        ("_PID", "X__PID"),
        ("9lives", "X_9LIVES"),
        ("", "X_"),
        ("ÜBER", "X__BER"),
        ("MESSAGE", "X_MESSAGE"),
        ("message_id", "X_MESSAGE_ID"),
        ("PRIORITY", "X_PRIORITY"),
        ("a\nb=c", "A_B_C"),
    ];
    for (raw, want) in cases {
        let got = sanitize_field_name(raw);
        assert_eq!(got, want, "sanitize({raw:?})");
        assert!(field_name_is_valid(&got), "{got:?} is valid");
    }
    let long = sanitize_field_name(&"_x".repeat(100));
    assert_eq!(long.len(), MAX_FIELD_NAME_LEN);
    assert!(field_name_is_valid(&long));

    let entry = JournalEntry::new(JournalEvent::StallDetected, "m")
        .field("runtime", "main")
        .field("MESSAGE", "not a second message");
    let fields = decode(&entry.encode());
    assert_eq!(value(&fields, "RUNTIME"), Some(&b"main"[..]));
    assert_eq!(
        value(&fields, "X_MESSAGE"),
        Some(&b"not a second message"[..])
    );
    assert_eq!(
        fields.iter().filter(|(n, _)| n == "MESSAGE").count(),
        1,
        "one MESSAGE"
    );
    for (name, _) in &fields {
        assert!(field_name_is_valid(name), "{name:?} on the wire is valid");
    }
}

// ------------------------------------------------------------ bounds

#[test]
fn the_message_is_one_line_and_capped() {
    assert_eq!(one_line("  a\nb\r\nc\td  "), "a b  c d");
    let long = "é".repeat(MAX_MESSAGE_CHARS + 100);
    let cut = one_line(&long);
    assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS);
    assert!(cut.ends_with('…'));
    let exact = "x".repeat(MAX_MESSAGE_CHARS);
    assert_eq!(one_line(&exact), exact);

    let entry = JournalEntry::new(JournalEvent::StallDetected, &format!("{long}\nsecond line"));
    let fields = decode(&entry.encode());
    let message = std::str::from_utf8(value(&fields, "MESSAGE").expect("MESSAGE")).expect("utf-8");
    assert!(!message.contains('\n'));
    assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
}

#[test]
fn fields_beyond_the_count_cap_are_dropped_and_counted() {
    let mut entry = JournalEntry::new(JournalEvent::StallDetected, "m");
    for i in 0..MAX_FIELDS + 3 {
        entry = entry.field(&format!("F{i}"), "v");
    }
    assert_eq!(entry.fields().count(), MAX_FIELDS);
    assert_eq!(entry.dropped_fields(), 3);
    let fields = decode(&entry.encode());
    assert_eq!(value(&fields, DROPPED_FIELDS_FIELD), Some(&b"3"[..]));
    assert_eq!(
        value(&fields, &format!("F{}", MAX_FIELDS - 1)),
        Some(&b"v"[..])
    );
    assert_eq!(value(&fields, &format!("F{MAX_FIELDS}")), None);
}

#[test]
fn fields_beyond_the_size_cap_are_dropped_and_counted() {
    let big = vec![b'x'; MAX_ENTRY_BYTES / 2];
    let entry = JournalEntry::new(JournalEvent::StallDetected, "m")
        .field("BIG1", &big)
        .field("BIG2", &big)
        .field("SMALL", "still fits");
    assert_eq!(
        entry.dropped_fields(),
        1,
        "the second half-MiB field does not fit"
    );
    let encoded = entry.encode();
    assert!(encoded.len() <= MAX_ENTRY_BYTES, "{} bytes", encoded.len());
    let fields = decode(&encoded);
    assert!(value(&fields, "BIG1").is_some());
    assert!(value(&fields, "BIG2").is_none());
    assert_eq!(value(&fields, "SMALL"), Some(&b"still fits"[..]));
    assert_eq!(value(&fields, DROPPED_FIELDS_FIELD), Some(&b"1"[..]));

    // Filled to the brim, the trailer still fits.
    let mut full = JournalEntry::new(JournalEvent::StallDetected, "m");
    for _ in 0..40 {
        full = full.field("CHUNK", vec![b'y'; 40 * 1024]);
    }
    assert!(full.dropped_fields() > 0);
    assert!(full.encode().len() <= MAX_ENTRY_BYTES);
}

// ------------------------------------------------------------ the large-entry path

#[test]
fn an_entry_too_big_for_a_datagram_goes_in_a_sealed_memfd() {
    let fake = FakeJournald::new();
    let journal = fake.journal();
    // Pin the send buffer so the datagram limit does not depend on the
    // host's net.core.wmem_default: the kernel doubles it to 128 KiB.
    rustix::net::sockopt::set_socket_send_buffer_size(journal.socket_for_tests(), 64 * 1024)
        .expect("SO_SNDBUF");
    let mut text = Vec::new();
    for i in 0..30_000u32 {
        text.extend_from_slice(format!("frame {i:05}\n").as_bytes());
    }
    assert!(text.len() > 250 * 1024, "a {} byte field", text.len());
    let entry = JournalEntry::new(JournalEvent::StallDetected, "a large entry")
        .field("LOOPWATCH_RUNTIME", "main")
        .field("LOOPWATCH_STACKS", &text);
    journal.send(&entry).expect("send a large entry");

    let got = fake.recv();
    assert!(got.payload.is_empty(), "the datagram itself is empty");
    assert_eq!(got.fds.len(), 1, "exactly one descriptor");
    let fd = &got.fds[0];
    let seals = rustix::fs::fcntl_get_seals(fd).expect("the descriptor is a memfd with seals");
    for s in [
        SealFlags::SHRINK,
        SealFlags::GROW,
        SealFlags::WRITE,
        SealFlags::SEAL,
    ] {
        assert!(seals.contains(s), "seal {s:?} in {seals:?}");
    }
    let file = std::fs::File::from(fd.try_clone().expect("dup"));
    let len = file.metadata().expect("fstat").len() as usize;
    let mut content = vec![0u8; len];
    file.read_exact_at(&mut content, 0).expect("read the memfd");
    assert_eq!(content, entry.encode());
    let fields = decode(&content);
    assert_eq!(value(&fields, "LOOPWATCH_STACKS"), Some(text.as_slice()));
    assert_eq!(value(&fields, "MESSAGE"), Some(&b"a large entry"[..]));
    // Sealed: the receiver cannot change it either.
    assert!(
        file.write_at(b"x", 0).is_err(),
        "a sealed memfd refuses writes"
    );
}

// ------------------------------------------------------------ failures

#[test]
fn a_full_journald_queue_fails_the_send_after_the_timeout() {
    let fake = FakeJournald::new(); // never reads
    let journal = fake.journal();
    // On another thread: a send that blocks for good fails the test
    // instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let entry = JournalEntry::new(JournalEvent::StallDetected, "flood");
        let mut sent = 0usize;
        let outcome = loop {
            let t0 = Instant::now();
            match journal.send(&entry) {
                Ok(()) => sent += 1,
                Err(e) => break Some((e, t0.elapsed())),
            }
            if sent >= 100_000 {
                break None;
            }
        };
        let _ = tx.send((sent, outcome));
    });
    let (sent, outcome) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a send to a full queue returns instead of blocking");
    let (e, took) = outcome.expect("the queue of a reader that never reads fills up");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(
        e.to_string().contains("stayed full"),
        "the error says why: {e}"
    );
    assert!(took >= SEND_TIMEOUT / 2, "waited {took:?} before failing");
    assert!(
        took < Duration::from_secs(5),
        "waited {took:?}: not bounded"
    );
    assert!(sent >= 1, "some entries were queued before it filled");
    drop(fake);
}

#[test]
fn no_journald_is_an_error_naming_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent");
    let journal = Journal::at(&path).expect("a socket");
    let e = journal
        .send(&JournalEntry::new(JournalEvent::StallDetected, "m"))
        .expect_err("nobody listens");
    assert!(e.to_string().contains("absent"), "{e}");

    // A socket file nobody listens on any more.
    let stale = dir.path().join("stale");
    drop(UnixDatagram::bind(&stale).expect("bind"));
    let e = Journal::at(&stale)
        .expect("a socket")
        .send(&JournalEntry::new(JournalEvent::StallDetected, "m"))
        .expect_err("the listener is gone");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn detection_needs_the_socket_or_journal_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("socket");
    let _listener = UnixDatagram::bind(&sock).expect("bind");
    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("write");
    let missing = dir.path().join("missing");
    let stream = std::ffi::OsStr::new("8:42");
    let empty = std::ffi::OsStr::new("");

    assert!(under_systemd(&sock, None));
    assert!(!under_systemd(&missing, None));
    assert!(
        !under_systemd(&file, None),
        "a regular file is not journald"
    );
    assert!(under_systemd(&missing, Some(stream)));
    assert!(!under_systemd(&missing, Some(empty)));
    assert_eq!(
        Path::new(JOURNAL_SOCKET),
        Path::new("/run/systemd/journal/socket")
    );
}

// ------------------------------------------------------------ the catalog

#[test]
fn message_ids_are_fixed_distinct_128_bit_lowercase_hex() {
    // These values are published: changing one breaks every saved query.
    let pinned = [
        (
            JournalEvent::StallDetected,
            "c982a5b17e814d0aa9c31fe32560ac36",
        ),
        (
            JournalEvent::StallRecovered,
            "c99bca98b5e04badb90b4db1cada91ce",
        ),
        (
            JournalEvent::StallStormCoalesced,
            "ef88eb614843406b983e5f0cb50f50ca",
        ),
        (
            JournalEvent::WorkerStuck,
            "3ebb4b83f5764ba7a61e5bc03735dbe6",
        ),
        (
            JournalEvent::HiccupSummary,
            "85a4305524654e18ae03f40edb3901af",
        ),
    ];
    assert_eq!(pinned.len(), JournalEvent::ALL.len());
    let mut seen = std::collections::HashSet::new();
    for (event, id) in pinned {
        assert_eq!(event.message_id(), id, "{event:?}");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert!(seen.insert(id), "{id} used twice");
        assert!(
            include_str!("mod.rs").contains(&format!("## `{id}`")),
            "{id} has a catalog entry in the module docs"
        );
    }
}

// ------------------------------------------------------------ stall reports

#[test]
fn a_stall_entry_reaches_the_socket_intact() {
    let fake = FakeJournald::new();
    let entry = stall_entry(
        &super::stall::tests::sample_report(),
        Some(Path::new("/tmp/stall-x.txt")),
    );
    fake.journal().send(&entry).expect("send");
    let fields = decode(&fake.recv().payload);
    assert_eq!(value(&fields, "MESSAGE"), Some(entry.message().as_bytes()));
    assert_eq!(value(&fields, "CODE_LINE"), Some(&b"88"[..]));
    assert_eq!(
        value(&fields, "LOOPWATCH_REPORT"),
        Some(&b"/tmp/stall-x.txt"[..])
    );
}
