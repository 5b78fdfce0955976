//! `spindle id inspect`: says what an id is — its UUID version and, for a UUIDv7, when it
//! was minted; what it names in the database — and, for a string that is not an id, what it
//! looks like and why Spindle rejects it (uppercase and unhyphenated UUIDs, the nil UUID,
//! ULIDs, and the hand-made `thread_<component>_<millis>_<counter>_<hex>` ids of older systems).
//!
//! Parsing is the ids crate's (the one parser); this module only reads bytes and text.

use std::fmt::Write;
use std::process::ExitCode;

use agents::Agent;
use chrono::{DateTime, SecondsFormat, Utc};
use ids::{AssistantId, ThreadId};
use store::doctor::{AnyId, IdLookup};

use crate::config::DatabaseArgs;

/// What the text alone says about an input.
#[derive(Clone, Debug)]
pub struct Explained {
    /// The input, when it is a valid id.
    pub id: Option<AnyId>,
    /// The id the input probably meant (its canonical form), when it is a UUID written
    /// another way; looked up too, so the operator learns what it would have named.
    pub canonical: Option<AnyId>,
    /// Sentences for the operator.
    pub lines: Vec<String>,
}

/// Explains `input`, looks it up in the database when there is one, and prints it all.
pub async fn run(input: &str, database: &DatabaseArgs) -> Result<ExitCode, String> {
    let explained = explain(input);
    // The text's explanation first: it stands even if the database cannot be reached.
    println!("{}", explained.lines.join("\n"));
    let mut out = String::new();
    if let Some(id) = explained.id.or(explained.canonical) {
        let url = database.url().map_err(|e| e.to_string())?;
        match crate::doctor::open_existing(&url, database).await? {
            None => {
                let _ = writeln!(out, "\nnot looked up: no database at {url}");
            }
            Some(store) => {
                let found = store.admin_inspect_id(&id).await.map_err(|e| e.to_string())?;
                let what = if explained.id.is_some() { "it" } else { "its canonical form" };
                let _ = writeln!(out, "\nin {url}:");
                for line in describe_lookup(&found, what) {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
    }
    print!("{out}");
    Ok(if explained.id.is_some() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What the text of `input` says, without a database.
pub fn explain(input: &str) -> Explained {
    match AnyId::parse(input) {
        Ok(id) => Explained { id: Some(id), canonical: None, lines: explain_valid(input, &id) },
        Err(_) => {
            let mut lines = vec![format!("`{}` is not a Spindle id.", shown(input))];
            let canonical = explain_invalid(input, &mut lines);
            if let Err(e) = input.parse::<ThreadId>() {
                lines.push(format!("Where a thread id is expected, the API answers: {e}"));
            }
            Explained { id: None, canonical, lines }
        }
    }
}

fn explain_valid(input: &str, id: &AnyId) -> Vec<String> {
    let bytes = id.thread.as_bytes();
    let version = bytes[6] >> 4;
    let mut lines = vec![format!(
        "`{input}` is a valid Spindle id: a UUID in the canonical form (lowercase, hyphenated), version {version}."
    )];
    if bytes[8] >> 6 != 0b10 {
        lines.push(
            "Its variant bits are not RFC 9562's (10xx): no standard UUID generator made it. Spindle accepts it because it checks only the form of an id."
                .into(),
        );
    }
    if *bytes == [0xff; 16] {
        lines.push("It is the max UUID (every bit set): a placeholder, never minted.".into());
        return lines;
    }
    match version {
        7 => lines.push(explain_v7(id)),
        5 => lines.push(explain_v5(id.assistant)),
        4 => lines.push(
            "Version 4 is random: Spindle never mints it (it mints UUIDv7), so a client or another system chose it; clients may choose their own thread ids."
                .into(),
        ),
        1 | 6 => lines.push(format!(
            "Version {version} is made from a time and a node (MAC) address: Spindle never mints it, so a client or another system chose it."
        )),
        n => lines.push(format!(
            "Version {n} is not one a UUID generator commonly makes: Spindle never mints it."
        )),
    }
    lines
}

fn explain_v7(id: &AnyId) -> String {
    let Some(ms) = id.thread.minted_at_ms() else {
        return "Version 7, but its time cannot be read.".into();
    };
    let Some(at) = i64::try_from(ms).ok().and_then(DateTime::<Utc>::from_timestamp_millis) else {
        return format!("Version 7 (time-ordered), with an unreadable time ({ms} ms).");
    };
    let when = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let age = Utc::now() - at;
    let ago = if age.num_milliseconds() < 0 {
        "in the future: a clock far off, or not really a UUIDv7".to_owned()
    } else {
        format!("{} ago", human_duration(age.num_seconds()))
    };
    format!(
        "Version 7 (time-ordered): minted at {when} ({ago}). Spindle mints every thread, run, checkpoint, user, message, request, connection and API key id this way (clients may also choose thread ids)."
    )
}

fn explain_v5(id: AssistantId) -> String {
    let graphs: Vec<&str> = Agent::ALL.iter().map(|(_, name, _)| *name).collect();
    match graphs.iter().find(|name| AssistantId::for_graph(name) == id) {
        Some(name) => format!(
            "Version 5 (name-based): the assistant id LangGraph and Spindle give the built-in graph `{name}`."
        ),
        None => format!(
            "Version 5 (name-based): the way LangGraph derives an assistant id from a graph name, but not the id of a built-in graph ({}); perhaps another graph's assistant.",
            graphs.join(", ")
        ),
    }
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The input as shown in a sentence: cut to 80 characters, control characters escaped.
fn shown(input: &str) -> String {
    let cut: String = input.chars().take(80).collect();
    let mut text: String = cut.escape_debug().collect();
    if input.chars().count() > 80 {
        text.push('…');
    }
    text
}

/// Appends what `input` looks like; returns the canonical id it stands for, if any.
fn explain_invalid(input: &str, lines: &mut Vec<String>) -> Option<AnyId> {
    if input.is_empty() {
        lines.push("It is empty.".into());
        return None;
    }
    let trimmed = input.trim();
    if trimmed != input {
        lines.push("It has whitespace around it; the text inside:".into());
        return match AnyId::parse(trimmed) {
            Ok(id) => {
                lines.push(format!("`{trimmed}` is a valid id: send it without the whitespace."));
                Some(id)
            }
            Err(_) => explain_invalid(trimmed, lines),
        };
    }
    for ellipsis in ["…", "..."] {
        if let Some(cut) = input.strip_suffix(ellipsis) {
            lines.push(format!(
                "It ends with `{ellipsis}`: it was cut short (in a log line or a message); find the whole id. What remains:"
            ));
            return explain_invalid(cut, lines);
        }
    }
    if let Some(inner) = input.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        lines.push("It is in braces, Microsoft's GUID form; Spindle's form has none.".into());
        return uuid_like(inner, lines);
    }
    if let Some(inner) = input.strip_prefix("urn:uuid:") {
        lines.push("It is a UUID URN (`urn:uuid:`); Spindle's form has no prefix.".into());
        return uuid_like(inner, lines);
    }
    let before = lines.len();
    if let Some(canonical) = uuid_like(input, lines) {
        return Some(canonical);
    }
    if lines.len() > before {
        return None;
    }
    if let Some(ms) = ulid_millis(input) {
        lines.push(format!(
            "It looks like a ULID: 26 Crockford base32 characters, a 48-bit millisecond time ({}) and 80 random bits. Spindle's ids are UUIDs; a ULID is never converted silently.",
            millis_text(ms)
        ));
        return None;
    }
    if input.contains('_') {
        return explain_hand_made(input, lines);
    }
    if input.bytes().all(|b| b.is_ascii_digit()) {
        let mut line = "It is a bare number, like a database row number".to_owned();
        if let Some(ms) = millis(input) {
            let _ = write!(line, ", or a time in milliseconds ({})", millis_text(ms));
        }
        line.push_str(": Spindle's ids are UUIDs, never numbers.");
        lines.push(line);
        return None;
    }
    lines.push("It is not a UUID (36 characters: lowercase hex digits in groups of 8-4-4-4-12, as in 0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d).".into());
    None
}

/// A UUID written another way: uppercase, without hyphens, or nil. Says so and returns the
/// canonical form; `None` (saying nothing) for anything else.
fn uuid_like(text: &str, lines: &mut Vec<String>) -> Option<AnyId> {
    let lower = text.to_ascii_lowercase();
    let hex: String = match lower.len() {
        36 if [8, 13, 18, 23].iter().all(|&i| lower.as_bytes()[i] == b'-') => {
            lower.replace('-', "")
        }
        32 => lower.clone(),
        _ => return None,
    };
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if hex.bytes().all(|b| b == b'0') {
        lines.push(
            "It is the nil UUID (all zeros): never an id. It is usually a default or unset value in the client that sent it."
                .into(),
        );
        return None;
    }
    let canonical =
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    if text.len() == 32 {
        lines.push(format!(
            "It is a UUID without its hyphens (the \"simple\" form, as Python's uuid.hex prints it). Spindle accepts only the hyphenated form: {canonical}"
        ));
    }
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        lines.push(format!(
            "It has uppercase hex digits. Spindle accepts only the lowercase form, so that one id has one spelling (in URLs, logs and text comparisons): {canonical}"
        ));
    }
    AnyId::parse(&canonical).ok()
}

/// A hand-made id: `<kind>_<component>_<millis>_<counter>_<hex>` and its variations.
fn explain_hand_made(input: &str, lines: &mut Vec<String>) -> Option<AnyId> {
    let tokens: Vec<&str> = input.split('_').collect();
    let first_value = tokens.iter().position(|t| !is_word(t)).unwrap_or(tokens.len());
    let (words, values) = tokens.split_at(first_value);
    let (kind, component) = match words.split_first() {
        Some((first, rest)) if kind_word(first).is_some() => (Some(*first), rest.join("_")),
        _ => (None, words.join("_")),
    };
    lines.push("It is a hand-made id, assembled from parts joined by `_`:".into());
    if let Some(kind) = kind {
        lines.push(format!(
            "  `{kind}`: a prefix naming the kind of id ({})",
            kind_word(kind).unwrap_or_default()
        ));
    }
    if !component.is_empty() {
        lines.push(format!("  `{component}`: the name of the component that minted it"));
    }
    let mut canonical = None;
    let mut only_time = true;
    for token in values {
        let line = if let Some(ms) = millis(token) {
            format!(
                "`{token}`: the time it was minted, in milliseconds since 1970: {}",
                millis_text(ms)
            )
        } else if token.len() == 10 && token.bytes().all(|b| b.is_ascii_digit()) {
            only_time = false;
            format!("`{token}`: a time in seconds since 1970, or a number")
        } else if !token.is_empty() && token.len() <= 6 && token.bytes().all(|b| b.is_ascii_digit())
        {
            only_time = false;
            format!("`{token}`: a counter, per process or per component")
        } else if token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
            only_time = false;
            let mut sub = Vec::new();
            canonical = uuid_like(token, &mut sub).or(canonical);
            match canonical {
                Some(id) => format!(
                    "`{token}`: 32 hex digits, 128 bits: a UUID (version {}) without its hyphens, i.e. {}",
                    id.thread.as_bytes()[6] >> 4,
                    id.thread
                ),
                None => format!("`{token}`: 32 hex digits (128 bits)"),
            }
        } else if !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit()) {
            only_time = false;
            let bits = token.len() * 4;
            format!(
                "`{token}`: {} hex digits, {bits} random bits (two ids collide after about 2^{} of them)",
                token.len(),
                bits / 2
            )
        } else {
            only_time = false;
            format!("`{token}`: a part of unknown meaning")
        };
        lines.push(format!("  {line}"));
    }
    if only_time && !values.is_empty() {
        lines.push("With nothing but a millisecond time to tell them apart, two ids made in the same millisecond are the same id.".into());
    }
    lines.push(
        "Ids like this were minted by hand in several components of older systems (a prefix, the component's name, a millisecond time, a counter, a few random hex digits). Spindle never accepts them: every Spindle id is a UUID minted by its ids crate, and the API rejects any other string with a 4xx. A client that sends one still holds an id from the old system: map it to a Spindle id or start a new thread."
            .into(),
    );
    if matches!(kind, Some("req" | "request")) {
        lines.push("Request ids: Spindle mints its own for every request (a UUIDv7, in the x-request-id header and every log line of the request).".into());
    }
    canonical
}

/// What a leading word of a hand-made id names.
fn kind_word(word: &str) -> Option<&'static str> {
    Some(match word {
        "thread" => "a thread id",
        "run" => "a run id",
        "req" | "request" => "a request id",
        "user" => "a user id",
        "session" => "a session id",
        "conn" | "connection" => "a connection id",
        "msg" | "message" => "a message id",
        "checkpoint" => "a checkpoint id",
        "assistant" | "agent" => "an assistant id",
        "ctx" => "a context id",
        "event" => "an event id",
        "key" => "a key id",
        _ => return None,
    })
}

/// A name part: letters only (a token with digits is a value).
fn is_word(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphabetic())
}

/// A 13-digit number read as milliseconds since 1970 (2001 to 2286).
fn millis(token: &str) -> Option<i64> {
    if token.len() != 13 || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn millis_text(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map_or_else(|| format!("{ms} ms"), |t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The time of a ULID: 26 Crockford base32 characters, the first ten a 48-bit time.
fn ulid_millis(text: &str) -> Option<i64> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if text.len() != 26 {
        return None;
    }
    let mut ms: i64 = 0;
    for (i, c) in text.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase())?;
        if i < 10 {
            ms = ms * 32 + digit as i64;
        }
    }
    // The time has 48 bits: the first character is at most 7.
    (text.as_bytes()[0] <= b'7').then_some(ms)
}

/// Sentences for what the database holds under an id.
pub fn describe_lookup(found: &IdLookup, what: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let subject = |s: &Option<String>| s.clone().unwrap_or_else(|| "a missing user".into());
    if let Some(f) = &found.thread {
        let t = &f.thread;
        lines.push(format!(
            "a thread of user {} ({}), status {}, created {}, updated {}",
            t.owner_id,
            subject(&f.owner_subject),
            t.status,
            time(t.created_at),
            time(t.updated_at)
        ));
        lines.push(format!(
            "  {} run(s) ({} pending or running), {} checkpoint(s), {} event(s), last event seq {}",
            f.runs, f.active_runs, f.checkpoints, f.events, t.last_seq
        ));
        if let Some(r) = &f.last_run {
            lines.push(format!(
                "  newest run {}: {}, created {}",
                r.run_id,
                r.status,
                time(r.created_at)
            ));
        }
    }
    if let Some(f) = &found.run {
        let r = &f.run;
        lines.push(format!(
            "a run of thread {} (user {}, {}), status {}, assistant {}, created {}, updated {}, {} event(s)",
            r.thread_id,
            r.owner_id,
            subject(&f.owner_subject),
            r.status,
            r.assistant_id,
            time(r.created_at),
            time(r.updated_at),
            f.events
        ));
        if let Some(error) = &r.error {
            lines.push(format!("  error: {error}"));
        }
    }
    if let Some(a) = &found.assistant {
        let owner = a.owner_id.map_or_else(|| "built in".to_owned(), |o| format!("of user {o}"));
        lines.push(format!(
            "an assistant ({owner}): graph {}, name {}, version {}, created {}",
            a.graph_id,
            a.name,
            a.version,
            time(a.created_at)
        ));
    }
    if let Some(c) = &found.checkpoint {
        let run = c.run_id.map_or_else(|| "no run".to_owned(), |r| format!("run {r}"));
        let parent = c
            .parent_checkpoint_id
            .map_or_else(|| "no parent".to_owned(), |p| format!("parent {p}"));
        let step = c.metadata.get("step").map_or_else(|| "?".to_owned(), ToString::to_string);
        let source = c.metadata.get("source").and_then(|v| v.as_str()).unwrap_or("?");
        lines.push(format!(
            "a checkpoint of thread {}, {run}, {parent}, step {step}, source {source}, created {}",
            c.thread_id,
            time(c.created_at)
        ));
        if let Some(f) = &found.checkpoint_facts {
            let head = if f.newest {
                "the thread's newest checkpoint (its current state)"
            } else {
                "not the thread's newest"
            };
            let chain = if f.chain_whole {
                format!("{} checkpoint(s) back to the thread's first", f.depth)
            } else {
                format!(
                    "its chain of parents breaks after {} checkpoint(s) (see spindle doctor: checkpoint_parent_missing)",
                    f.depth
                )
            };
            let children = match f.children.len() {
                0 => "no children (a branch's end)".to_owned(),
                1 => format!("1 child: {}", f.children[0]),
                n => format!(
                    "{n} children, a fork point (branches start at {})",
                    f.children.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
            };
            lines.push(format!("  {head}; {chain}; {children}"));
        }
    }
    if let Some(u) = &found.user {
        lines.push(format!(
            "a user: subject {}, created {}, {} thread(s), {} API key(s)",
            u.user.subject,
            time(u.user.created_at),
            u.threads,
            u.api_keys
        ));
    }
    if let Some(k) = &found.api_key {
        let revoked =
            k.revoked_at.map_or_else(|| "active".to_owned(), |t| format!("revoked {}", time(t)));
        lines.push(format!(
            "an API key of user {} ({}), prefix {}, created {}, {revoked}",
            k.user_id,
            k.subject,
            k.prefix,
            time(k.created_at)
        ));
    }
    for (thread, owner) in &found.message_threads {
        lines.push(format!("a message in the current state of thread {thread} (user {owner})"));
    }
    if lines.is_empty() {
        lines.push(format!(
            "{what} is not in the database: no thread, run, assistant, checkpoint, user, API key, or message in a thread's current state has it. Request and connection ids are never stored: search the logs for request_id or connection_id."
        ));
    } else {
        lines.insert(0, format!("{what} is:"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_told_from_other_base32() {
        assert_eq!(ulid_millis("01ARZ3NDEKTSV4RRFFQ69G5FAV"), Some(1_469_922_850_259));
        assert_eq!(ulid_millis("81ARZ3NDEKTSV4RRFFQ69G5FAV"), None);
        assert_eq!(ulid_millis("01ARZ3NDEKTSV4RRFFQ69G5FAU"), None, "U is not Crockford");
    }
}
