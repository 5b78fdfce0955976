//! Typed ids: the one place Spindle mints, formats and parses ids.
//!
//! Every id is a UUID. Each kind of id is its own type ([`ThreadId`], [`RunId`], ...), so a
//! run id passed where a thread id is expected does not compile. Ids that Spindle mints are
//! UUIDv7 (time-ordered, strictly increasing within the process); built-in assistants get
//! the deterministic UUIDv5 the LangGraph server gives them; ids chosen by clients (often
//! UUIDv4) are accepted in any version.
//!
//! The text form is the canonical lowercase hyphenated UUID, on the wire and in logs, and it
//! is the only form [`std::str::FromStr`] accepts. Parse errors name the kind of id expected
//! and what was wrong with the input.
//!
//! **Architecture Invariant:** no other crate calls a `uuid` constructor or parser; the
//! workspace's clippy configuration denies them everywhere but the two functions of
//! [`mint`] and [`parse_canonical`].

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Calls `$m!(Type)` for every id type, so encodings are written once for all of them.
#[cfg(any(feature = "rusqlite", feature = "sqlx"))]
macro_rules! for_each_id {
    ($m:ident) => {
        $m!(UserId);
        $m!(AssistantId);
        $m!(ThreadId);
        $m!(RunId);
        $m!(CheckpointId);
        $m!(MessageId);
        $m!(RequestId);
        $m!(ConnectionId);
        $m!(ApiKeyId);
        $m!(TaskId);
        $m!(InterruptId);
    };
}

#[cfg(feature = "sqlx")]
mod postgres;
#[cfg(feature = "rusqlite")]
mod sqlite;

/// The namespace LangGraph uses to derive an assistant id from a graph name
/// (`uuid5(NAMESPACE, graph_id)`); clients that compute it agree with us.
pub const ASSISTANT_NAMESPACE: Uuid = Uuid::from_u128(0x6ba7b821_9dad_11d1_80b4_00c04fd430c8);

/// The closed set of id kinds, for messages and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    User,
    Assistant,
    Thread,
    Run,
    Checkpoint,
    Message,
    Request,
    Connection,
    ApiKey,
    Task,
    Interrupt,
}

impl IdKind {
    pub const ALL: [IdKind; 11] = [
        IdKind::User,
        IdKind::Assistant,
        IdKind::Thread,
        IdKind::Run,
        IdKind::Checkpoint,
        IdKind::Message,
        IdKind::Request,
        IdKind::Connection,
        IdKind::ApiKey,
        IdKind::Task,
        IdKind::Interrupt,
    ];

    /// The field name clients see, e.g. `thread_id`.
    pub fn field(self) -> &'static str {
        match self {
            IdKind::User => "user_id",
            IdKind::Assistant => "assistant_id",
            IdKind::Thread => "thread_id",
            IdKind::Run => "run_id",
            IdKind::Checkpoint => "checkpoint_id",
            IdKind::Message => "message_id",
            IdKind::Request => "request_id",
            IdKind::Connection => "connection_id",
            IdKind::ApiKey => "key_id",
            IdKind::Task => "task_id",
            IdKind::Interrupt => "interrupt_id",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// The two places a `uuid` constructor is called in the whole workspace.
pub mod mint {
    use super::{ASSISTANT_NAMESPACE, Uuid};

    /// A new UUIDv7. `Uuid::now_v7` shares one counter per process, so every id minted here
    /// sorts after every id minted before it in this process (tested in `tests/ids.rs`).
    #[expect(clippy::disallowed_methods, reason = "the single minting site")]
    pub(crate) fn v7() -> Uuid {
        Uuid::now_v7()
    }

    /// The deterministic id of a named built-in (an assistant's graph name).
    #[expect(clippy::disallowed_methods, reason = "the single deterministic minting site")]
    pub(crate) fn v5(name: &str) -> Uuid {
        Uuid::new_v5(&ASSISTANT_NAMESPACE, name.as_bytes())
    }
}

/// What was wrong with a string that should have been an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseIdErrorReason {
    /// Not 36 characters long.
    Length(usize),
    /// A `-` missing at this byte offset.
    Hyphen(usize),
    /// A character that is not a hex digit at this byte offset.
    NotHex(usize),
    /// An uppercase hex digit at this byte offset: only the lowercase form is accepted.
    Uppercase(usize),
    /// The nil UUID, which is never an id.
    Nil,
}

/// An id that did not parse. Its message names the field and says what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseIdError {
    pub kind: IdKind,
    /// The input, cut to 64 characters so a huge body cannot flood a log line.
    pub input: String,
    pub reason: ParseIdErrorReason,
}

const EXAMPLE: &str = "0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d";

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} `{}`: expected a UUID like {EXAMPLE} (36 characters, lowercase hex in groups of 8-4-4-4-12), ",
            self.kind, self.input
        )?;
        match self.reason {
            ParseIdErrorReason::Length(n) => write!(f, "got {n} characters"),
            ParseIdErrorReason::Hyphen(at) => write!(f, "missing `-` at position {at}"),
            ParseIdErrorReason::NotHex(at) => write!(f, "not a hex digit at position {at}"),
            ParseIdErrorReason::Uppercase(at) => {
                write!(f, "uppercase hex digit at position {at}")
            }
            ParseIdErrorReason::Nil => write!(f, "got the nil UUID"),
        }
    }
}

impl std::error::Error for ParseIdError {}

fn truncated(input: &str) -> String {
    input.chars().take(64).collect()
}

/// Parses the canonical text form: 36 bytes, lowercase hex, hyphens at 8, 13, 18 and 23.
/// The fast path is branch-light (a table lookup per digit); only a failed parse walks the
/// input again to say what was wrong.
pub fn parse_canonical(kind: IdKind, input: &str) -> Result<Uuid, ParseIdError> {
    let s = input.as_bytes();
    if s.len() == 36 && s[8] == b'-' && s[13] == b'-' && s[18] == b'-' && s[23] == b'-' {
        let mut bytes = [0u8; 16];
        let mut bad = 0u8;
        for (out, &at) in bytes.iter_mut().zip(DIGIT_PAIRS.iter()) {
            let hi = HEX[usize::from(s[at])];
            let lo = HEX[usize::from(s[at + 1])];
            bad |= (hi | lo) & 0xF0;
            *out = (hi << 4) | (lo & 0x0F);
        }
        if bad == 0 && bytes != [0; 16] {
            return Ok(Uuid::from_bytes(bytes));
        }
    }
    Err(ParseIdError { kind, input: truncated(input), reason: diagnose(input) })
}

/// Where each byte's two hex digits start in the canonical form.
const DIGIT_PAIRS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// Hex digit values; `0xF0` marks a byte that is not a lowercase hex digit.
const HEX: [u8; 256] = {
    let mut table = [0xF0u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Why `input` is not a canonical id (called only after the fast path failed).
fn diagnose(input: &str) -> ParseIdErrorReason {
    let s = input.as_bytes();
    if s.len() != 36 {
        return ParseIdErrorReason::Length(input.chars().count());
    }
    for (i, &c) in s.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return ParseIdErrorReason::Hyphen(i);
            }
        } else if c.is_ascii_uppercase() && c.is_ascii_hexdigit() {
            return ParseIdErrorReason::Uppercase(i);
        } else if HEX[usize::from(c)] & 0xF0 != 0 {
            return ParseIdErrorReason::NotHex(i);
        }
    }
    ParseIdErrorReason::Nil
}

/// The canonical text form of any id, on the stack.
pub type IdText = [u8; uuid::fmt::Hyphenated::LENGTH];

/// A buffer for [`ThreadId::encode`] and friends.
pub const fn text_buffer() -> IdText {
    [0; uuid::fmt::Hyphenated::LENGTH]
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            pub const KIND: IdKind = $kind;

            /// Mints a new id (UUIDv7, strictly increasing within this process).
            #[allow(clippy::new_without_default, reason = "a default id would be a fresh one; say so")]
            pub fn new() -> Self {
                Self(mint::v7())
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// When a UUIDv7 was minted, in milliseconds since the Unix epoch; `None` for ids
            /// of other versions (clients may choose their own ids).
            pub fn minted_at_ms(&self) -> Option<u64> {
                uuid_v7_millis(&self.0)
            }

            /// The canonical lowercase hyphenated text, without allocating.
            pub fn encode<'b>(&self, buf: &'b mut IdText) -> &'b str {
                self.0.hyphenated().encode_lower(buf)
            }

            #[cfg_attr(not(any(feature = "rusqlite", feature = "sqlx")), allow(dead_code))]
            pub(crate) fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_canonical($kind, s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buf = text_buffer();
                s.serialize_str(self.encode(&mut buf))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(IdVisitor($kind)).map(Self)
            }
        }
    };
}

struct IdVisitor(IdKind);

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = Uuid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} (a UUID like {EXAMPLE})", self.0)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Uuid, E> {
        parse_canonical(self.0, v).map_err(E::custom)
    }
}

fn uuid_v7_millis(uuid: &Uuid) -> Option<u64> {
    if uuid.get_version_num() != 7 {
        return None;
    }
    let b = uuid.as_bytes();
    Some(b[..6].iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

id_type!(
    /// A user: the internal id behind an authenticated subject.
    UserId,
    IdKind::User
);
id_type!(
    /// An assistant (a configured agent). Built-ins get [`AssistantId::for_graph`].
    AssistantId,
    IdKind::Assistant
);
id_type!(
    /// A thread (a conversation).
    ThreadId,
    IdKind::Thread
);
id_type!(
    /// A run: one agent execution in a thread.
    RunId,
    IdKind::Run
);
id_type!(
    /// A checkpoint: one snapshot of a thread's state.
    CheckpointId,
    IdKind::Checkpoint
);
id_type!(
    /// A message in a thread's values.
    MessageId,
    IdKind::Message
);
id_type!(
    /// One HTTP request or WebSocket message context.
    RequestId,
    IdKind::Request
);
id_type!(
    /// One WebSocket connection.
    ConnectionId,
    IdKind::Connection
);

id_type!(
    /// An API key (the id, never the secret).
    ApiKeyId,
    IdKind::ApiKey
);

id_type!(
    /// A pending task of a checkpoint (an agent's node waiting to run, or interrupted).
    TaskId,
    IdKind::Task
);

id_type!(
    /// One interrupt: a value an agent asks a human about. On the wire it is written as 32
    /// lowercase hex digits without hyphens ([`InterruptId::simple`]), as LangGraph writes
    /// interrupt ids: clients tell a resume map (`{interrupt id: value}`) from a plain value
    /// by that form.
    InterruptId,
    IdKind::Interrupt
);

impl TaskId {
    /// The task pending at a checkpoint: Spindle's agents have one node, so a checkpoint has
    /// at most one pending task, named by the checkpoint's id (nothing to mint or store).
    pub fn of(checkpoint: CheckpointId) -> TaskId {
        TaskId(checkpoint.0)
    }
}

impl InterruptId {
    /// The 32 lowercase hex digits clients see.
    pub fn simple(&self) -> String {
        self.0.simple().to_string()
    }

    /// Whether `text` has the form of an interrupt id as clients see it (32 lowercase hex
    /// digits), which is how a resume map's keys are told from a value's.
    pub fn is_simple_form(text: &str) -> bool {
        text.len() == 32 && text.bytes().all(|b| HEX[usize::from(b)] & 0xF0 == 0)
    }
}

impl AssistantId {
    /// The id LangGraph gives the assistant of a graph: `uuid5(ASSISTANT_NAMESPACE, name)`.
    pub fn for_graph(graph_id: &str) -> Self {
        Self(mint::v5(graph_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_err(input: &str, expected: &str) {
        let err = input.parse::<ThreadId>().unwrap_err();
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn parse_errors_name_the_kind_and_the_fault() {
        let prefix = "expected a UUID like 0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d (36 characters, lowercase hex in groups of 8-4-4-4-12)";
        check_err("abc", &format!("invalid thread_id `abc`: {prefix}, got 3 characters"));
        check_err(
            "0192f1c4x7d3e-7a8b-9c0d-1e2f3a4b5c6d",
            &format!(
                "invalid thread_id `0192f1c4x7d3e-7a8b-9c0d-1e2f3a4b5c6d`: {prefix}, missing `-` at position 8"
            ),
        );
        check_err(
            "0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6g",
            &format!(
                "invalid thread_id `0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6g`: {prefix}, not a hex digit at position 35"
            ),
        );
        check_err(
            "0192F1C4-7d3e-7a8b-9c0d-1e2f3a4b5c6d",
            &format!(
                "invalid thread_id `0192F1C4-7d3e-7a8b-9c0d-1e2f3a4b5c6d`: {prefix}, uppercase hex digit at position 4"
            ),
        );
        check_err(
            "00000000-0000-0000-0000-000000000000",
            &format!(
                "invalid thread_id `00000000-0000-0000-0000-000000000000`: {prefix}, got the nil UUID"
            ),
        );
    }

    #[test]
    fn other_uuid_forms_are_rejected() {
        for input in [
            "0192f1c47d3e7a8b9c0d1e2f3a4b5c6d",
            "{0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d}",
            "urn:uuid:0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d",
            " 0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d",
            "thread_websocket_factory_1757361062151_7_90c65fe4",
            "req_73708c2b",
            "",
            "é192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6",
        ] {
            assert!(input.parse::<RunId>().is_err(), "{input} parsed");
        }
    }

    #[test]
    fn long_inputs_are_cut_in_errors() {
        let long = "x".repeat(10_000);
        let err = long.parse::<UserId>().unwrap_err();
        assert_eq!(err.input.len(), 64);
        assert!(err.to_string().contains("got 10000 characters"));
    }
}
