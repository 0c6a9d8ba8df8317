//! One journal entry: its event kind, priority, message and fields, the
//! bounds it keeps, and its encoding in the native protocol.
//!
//! This file owns what an entry may hold and how it is laid out on the
//! wire. It does not send anything (that is [`transport`](super::transport))
//! and it knows nothing of stall reports (that is [`stall`](super::stall)).
//!
//! The wire format is systemd's ("Native Journal Protocol"): one
//! `NAME=value\n` line per field, or, for a value that contains a newline,
//! the binary-safe form `NAME\n`, the value's length as a little-endian
//! `u64`, the value's bytes, `\n`.

/// The longest `MESSAGE`, in characters. A longer message is cut and ends
/// with `…`; the structured fields carry the details.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// The most fields an entry carries besides `MESSAGE`, `MESSAGE_ID` and
/// `PRIORITY`. Further fields are dropped and counted
/// ([`JournalEntry::dropped_fields`]); journald itself refuses entries with
/// more than 1024 fields, its own trusted fields included.
pub const MAX_FIELDS: usize = 64;

/// The largest encoded entry: 1 MiB. A field that would make the entry
/// larger is dropped and counted ([`JournalEntry::dropped_fields`]).
///
/// An entry larger than one datagram (about 208 KiB with Linux's default
/// socket buffer) is passed to journald in a sealed memory file, so the
/// cap is not the datagram size: it bounds the memory and time one entry
/// may cost.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// The longest field name journald accepts.
pub const MAX_FIELD_NAME_LEN: usize = 64;

/// The field that says how many fields were dropped (only present when
/// some were).
pub const DROPPED_FIELDS_FIELD: &str = "LOOPWATCH_DROPPED_FIELDS";

/// Room kept free for [`DROPPED_FIELDS_FIELD`] so that it always fits.
const DROPPED_TRAILER_RESERVE: usize = DROPPED_FIELDS_FIELD.len() + 24;

/// The fields an entry sets itself; a field of the same name gets the
/// prefix `X_` ([`sanitize_field_name`]).
const RESERVED_FIELDS: [&str; 3] = ["MESSAGE", "MESSAGE_ID", "PRIORITY"];

/// The kinds of event loopwatch writes to the journal, each with a fixed
/// `MESSAGE_ID` (see the [module documentation](super) for the catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JournalEvent {
    /// An event loop stopped answering its probe for longer than the stall
    /// threshold.
    StallDetected,
    /// A stalled event loop answered again.
    StallRecovered,
    /// Stalls that repeated within a cool-down were coalesced into the
    /// previous report instead of getting full reports of their own.
    StallStormCoalesced,
    /// One worker of a multi-thread runtime was stuck in a poll while the
    /// others still answered.
    WorkerStuck,
    /// Event-loop blocks shorter than a stall ("hiccups") over a period.
    HiccupSummary,
}

impl JournalEvent {
    /// Every event kind, in catalog order.
    pub const ALL: [JournalEvent; 5] = [
        JournalEvent::StallDetected,
        JournalEvent::StallRecovered,
        JournalEvent::StallStormCoalesced,
        JournalEvent::WorkerStuck,
        JournalEvent::HiccupSummary,
    ];

    /// The fixed `MESSAGE_ID` of this kind of event: 128 bits as 32
    /// lowercase hex digits, never changed once published.
    ///
    /// ```
    /// use loopwatch::journal::JournalEvent;
    /// // journalctl MESSAGE_ID=c982a5b17e814d0aa9c31fe32560ac36
    /// assert_eq!(
    ///     JournalEvent::StallDetected.message_id(),
    ///     "c982a5b17e814d0aa9c31fe32560ac36"
    /// );
    /// ```
    pub const fn message_id(self) -> &'static str {
        match self {
            JournalEvent::StallDetected => super::MESSAGE_ID_STALL_DETECTED,
            JournalEvent::StallRecovered => super::MESSAGE_ID_STALL_RECOVERED,
            JournalEvent::StallStormCoalesced => super::MESSAGE_ID_STALL_STORM_COALESCED,
            JournalEvent::WorkerStuck => super::MESSAGE_ID_WORKER_STUCK,
            JournalEvent::HiccupSummary => super::MESSAGE_ID_HICCUP_SUMMARY,
        }
    }

    /// The priority entries of this kind get unless told otherwise.
    pub const fn default_priority(self) -> Priority {
        match self {
            JournalEvent::StallDetected => Priority::Error,
            JournalEvent::StallRecovered => Priority::Notice,
            JournalEvent::StallStormCoalesced => Priority::Warning,
            JournalEvent::WorkerStuck => Priority::Warning,
            JournalEvent::HiccupSummary => Priority::Notice,
        }
    }

    /// A short kebab-case name (`stall-detected`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            JournalEvent::StallDetected => "stall-detected",
            JournalEvent::StallRecovered => "stall-recovered",
            JournalEvent::StallStormCoalesced => "stall-storm-coalesced",
            JournalEvent::WorkerStuck => "worker-stuck",
            JournalEvent::HiccupSummary => "hiccup-summary",
        }
    }
}

/// syslog priorities, as journald's `PRIORITY=` field takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// 0: the system is unusable.
    Emergency = 0,
    /// 1: action must be taken immediately.
    Alert = 1,
    /// 2: critical conditions.
    Critical = 2,
    /// 3: error conditions.
    Error = 3,
    /// 4: warning conditions.
    Warning = 4,
    /// 5: normal but significant.
    Notice = 5,
    /// 6: informational.
    Info = 6,
    /// 7: debug-level messages.
    Debug = 7,
}

impl Priority {
    /// The number journald stores (`0` to `7`).
    pub const fn as_number(self) -> u8 {
        self as u8
    }
}

/// True when `name` is a field name journald keeps from a client:
/// 1 to 64 characters of `A`–`Z`, `0`–`9` and `_`, not starting with `_`
/// (journald's own trusted fields) nor with a digit. journald drops fields
/// with other names without saying so, which is why loopwatch checks.
///
/// ```
/// use loopwatch::journal::field_name_is_valid;
/// assert!(field_name_is_valid("LOOPWATCH_RUNTIME"));
/// assert!(!field_name_is_valid("runtime"));
/// assert!(!field_name_is_valid("_PID"));
/// ```
pub fn field_name_is_valid(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_FIELD_NAME_LEN
        && !b[0].is_ascii_digit()
        && b[0] != b'_'
        && b.iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// Turns any string into a valid field name that is not one of the names an
/// entry sets itself (`MESSAGE`, `MESSAGE_ID`, `PRIORITY`): lowercase
/// letters are upper-cased, every other character outside `A`–`Z`, `0`–`9`
/// and `_` becomes `_`, a name that is empty, reserved, or starts with a
/// digit or `_` gets the prefix `X_`, and the result is cut to 64
/// characters. A valid, unreserved name is returned unchanged.
///
/// ```
/// use loopwatch::journal::sanitize_field_name;
/// assert_eq!(sanitize_field_name("loopwatch.runtime"), "LOOPWATCH_RUNTIME");
/// assert_eq!(sanitize_field_name("_PID"), "X__PID");
/// assert_eq!(sanitize_field_name("MESSAGE"), "X_MESSAGE");
/// ```
pub fn sanitize_field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    let needs_prefix = out.is_empty()
        || out.starts_with(|c: char| c.is_ascii_digit() || c == '_')
        || RESERVED_FIELDS.contains(&out.as_str());
    if needs_prefix {
        out.insert_str(0, "X_");
    }
    out.truncate(MAX_FIELD_NAME_LEN);
    out
}

/// Makes `message` one line of at most [`MAX_MESSAGE_CHARS`] characters:
/// control characters (newlines included) become spaces, surrounding
/// whitespace is trimmed, and a longer message is cut and ends with `…`.
pub(crate) fn one_line(message: &str) -> String {
    let flat: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() <= MAX_MESSAGE_CHARS {
        return flat.to_string();
    }
    let mut cut: String = flat.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// Appends one field in the native protocol's encoding.
fn encode_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The encoded size of one field.
fn encoded_len(name: &str, value: &[u8]) -> usize {
    let framing = if value.contains(&b'\n') { 1 + 8 + 1 } else { 2 };
    name.len() + value.len() + framing
}

/// One structured journal entry: `MESSAGE_ID`, `PRIORITY`, a one-line
/// `MESSAGE` and up to [`MAX_FIELDS`] more fields whose values are
/// arbitrary bytes, the whole at most [`MAX_ENTRY_BYTES`] encoded.
///
/// Building never fails: field names are made valid
/// ([`sanitize_field_name`]), and a field beyond the bounds is dropped,
/// counted in [`dropped_fields`](Self::dropped_fields) and reported in the
/// entry itself as `LOOPWATCH_DROPPED_FIELDS=<n>`. Adding a name twice
/// gives the field two values, as journald allows.
///
/// ```
/// use loopwatch::journal::{JournalEntry, JournalEvent, Priority};
///
/// let entry = JournalEntry::new(JournalEvent::StallDetected, "event loop \"main\" stalled")
///     .priority(Priority::Critical)
///     .field("LOOPWATCH_RUNTIME", "main")
///     .field("CODE_LINE", "42")
///     .field("LOOPWATCH_NOTES", "two\nlines");
/// assert_eq!(entry.message(), "event loop \"main\" stalled");
/// assert_eq!(entry.fields().count(), 3);
/// assert_eq!(entry.dropped_fields(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    event: JournalEvent,
    priority: Priority,
    message: String,
    fields: Vec<(String, Vec<u8>)>,
    /// Encoded size of everything above.
    encoded: usize,
    dropped: usize,
}

impl JournalEntry {
    /// An entry for `event` with its default priority and `message` made one
    /// line of at most [`MAX_MESSAGE_CHARS`] characters.
    pub fn new(event: JournalEvent, message: &str) -> Self {
        let message = one_line(message);
        let priority = event.default_priority();
        let encoded = encoded_len("MESSAGE_ID", event.message_id().as_bytes())
            + encoded_len("PRIORITY", b"0")
            + encoded_len("MESSAGE", message.as_bytes());
        JournalEntry {
            event,
            priority,
            message,
            fields: Vec::new(),
            encoded,
            dropped: 0,
        }
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Adds a field. `name` is made a valid field name
    /// ([`sanitize_field_name`]); `value` may hold any bytes. Dropped and
    /// counted when the entry already has [`MAX_FIELDS`] fields or would
    /// exceed [`MAX_ENTRY_BYTES`].
    pub fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.push_field(name, value.as_ref());
        self
    }

    /// Adds a field when `value` is `Some`.
    pub fn field_opt(self, name: &str, value: Option<impl AsRef<[u8]>>) -> Self {
        match value {
            Some(v) => self.field(name, v),
            None => self,
        }
    }

    fn push_field(&mut self, name: &str, value: &[u8]) {
        let name = sanitize_field_name(name);
        let len = encoded_len(&name, value);
        let fits = self.fields.len() < MAX_FIELDS
            && self.encoded + len + DROPPED_TRAILER_RESERVE <= MAX_ENTRY_BYTES;
        if fits {
            self.encoded += len;
            self.fields.push((name, value.to_vec()));
        } else {
            self.dropped += 1;
        }
    }

    /// The kind of event.
    pub fn event(&self) -> JournalEvent {
        self.event
    }

    /// The `MESSAGE_ID` (the event kind's).
    pub fn message_id(&self) -> &'static str {
        self.event.message_id()
    }

    /// The `PRIORITY`.
    pub fn priority_level(&self) -> Priority {
        self.priority
    }

    /// The one-line `MESSAGE`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The fields besides `MESSAGE`, `MESSAGE_ID` and `PRIORITY`, in the
    /// order they were added, with their sanitized names.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The first value of field `name`, if the entry has it.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// How many fields were dropped because of [`MAX_FIELDS`] or
    /// [`MAX_ENTRY_BYTES`].
    pub fn dropped_fields(&self) -> usize {
        self.dropped
    }

    /// The entry in the native protocol's encoding, as one datagram (or
    /// memory file) carries it. Never longer than [`MAX_ENTRY_BYTES`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded + DROPPED_TRAILER_RESERVE);
        encode_field(&mut out, "MESSAGE_ID", self.message_id().as_bytes());
        let priority = [b'0' + self.priority.as_number()];
        encode_field(&mut out, "PRIORITY", &priority);
        encode_field(&mut out, "MESSAGE", self.message.as_bytes());
        for (name, value) in &self.fields {
            encode_field(&mut out, name, value);
        }
        if self.dropped > 0 {
            encode_field(
                &mut out,
                DROPPED_FIELDS_FIELD,
                self.dropped.to_string().as_bytes(),
            );
        }
        out
    }
}
