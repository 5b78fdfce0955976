//! What a run executes. Built in: `echo` (deterministic, no network) and `synthetic` (load
//! tests and demos). Agents emit through a [`Sink`], which the engine implements: this crate
//! depends on neither the store nor the engine, so an agent cannot touch either.

pub mod llm;
pub mod mcp;
mod schema;

pub use llm::Runtime;

use std::future::Future;
use std::time::Duration;

use domain::{CancelAction, EventKind};
use ids::MessageId;
use serde_json::{Value, json};

/// Why an agent stopped before finishing.
#[derive(Debug)]
pub enum Stop {
    Cancelled(CancelAction),
    Failed { error: String, message: String },
}

impl From<domain::Error> for Stop {
    fn from(e: domain::Error) -> Self {
        Stop::Failed { error: "StoreError".into(), message: e.to_string() }
    }
}

/// Where an agent's events go. The engine's sink appends them to the run's thread's event log
/// (numbered there) and publishes them once committed; it answers `Err` once the run is
/// cancelled or out of time, so an agent stops at its next event.
pub trait Sink: Send {
    /// Buffers an event; it is appended with the next flush.
    fn push(&mut self, kind: EventKind, data: Value);

    /// Appends the buffered events in one transaction and publishes them.
    fn flush(&mut self) -> impl Future<Output = Result<(), Stop>> + Send;

    /// Flushes when enough events wait (a long stream goes out in growing batches).
    fn flush_if_full(&mut self) -> impl Future<Output = Result<(), Stop>> + Send;

    /// Resolves when the run is cancelled or out of time (with why); an agent waiting on
    /// something else (a model server, a tool) races it and drops what it waited for.
    fn stopped(&self) -> impl Future<Output = Stop> + Send + 'static;

    /// Waits `delay`, unless the run is cancelled or out of time first.
    fn pause(&mut self, delay: Duration) -> impl Future<Output = Result<(), Stop>> + Send;

    /// An event appended and published at once.
    fn emit(
        &mut self,
        kind: EventKind,
        data: Value,
    ) -> impl Future<Output = Result<(), Stop>> + Send {
        self.push(kind, data);
        self.flush()
    }
}

/// The closed set of built-in agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    Echo,
    Synthetic,
    /// A model on an OpenAI-compatible server, with tools over MCP, configured by its
    /// assistant (`context`, or `config.configurable`).
    Llm,
}

impl Agent {
    pub const ALL: [(Agent, &'static str, &'static str); 3] = [
        (Agent::Echo, "echo", "Replies with the user's last message; deterministic, no network"),
        (
            Agent::Synthetic,
            "synthetic",
            "Streams n custom events or message chunks (input fields n, mode, delay_ms), then echoes; with input field interrupt, first asks a human that value and answers with the resume value",
        ),
        (
            Agent::Llm,
            "llm",
            "A model on an OpenAI-compatible server (the assistant's context: model, provider, system_prompt, temperature, max_tokens, tools over MCP, approve, max_steps)",
        ),
    ];

    pub fn from_graph(graph_id: &str) -> Option<Agent> {
        Agent::ALL.iter().find(|(_, name, _)| *name == graph_id).map(|(agent, ..)| *agent)
    }

    pub fn name(self) -> &'static str {
        match self {
            Agent::Echo => "echo",
            Agent::Synthetic => "synthetic",
            Agent::Llm => "llm",
        }
    }

    /// Whether an input field is one of the agent's options rather than state.
    pub fn is_option(self, field: &str) -> bool {
        self == Agent::Synthetic && matches!(field, "n" | "mode" | "delay_ms" | "interrupt")
    }

    /// The value the agent interrupts its run with, asking a human, before it answers:
    /// `synthetic`'s input field `interrupt` (any JSON but `null`).
    pub fn interrupt_value(self, input: &Value) -> Option<Value> {
        match self {
            Agent::Synthetic => input.get("interrupt").filter(|v| !v.is_null()).cloned(),
            Agent::Echo | Agent::Llm => None,
        }
    }

    /// Runs the agent on the thread's state (the run's input already applied) and returns the
    /// AI message it adds. `resumed`: the value a human answered the agent's interrupt with
    /// (a `command`'s resume); the reply then says it. A resumed `synthetic` streams its
    /// events as any run does, with the resume run's input options.
    pub async fn run(
        self,
        state: &Value,
        input: &Value,
        resumed: Option<&Value>,
        sink: &mut impl Sink,
    ) -> Result<Value, Stop> {
        if self == Agent::Llm {
            return Err(Stop::Failed {
                error: "ValueError".into(),
                message: "the llm agent is not configured on this server".into(),
            });
        }
        let text = last_human_text(state);
        sink.push(
            EventKind::AgentThinking,
            json!({ "node": self.name(), "text": "reading the last message" }),
        );
        if self == Agent::Synthetic {
            synthetic(input, sink).await?;
        }
        let reply = match resumed {
            Some(value) => format!("echo: {text}\nresumed with: {value}"),
            None => format!("echo: {text}"),
        };
        let id = MessageId::new().to_string();
        // Words and the spaces between them as separate chunks, as a model streams tokens.
        for chunk in split_words(&reply) {
            sink.push(
                EventKind::MessageDelta,
                json!({ "node": self.name(), "message_id": id, "delta": chunk }),
            );
        }
        let message = json!({
            "type": "ai",
            "id": id,
            "content": reply,
            "name": self.name(),
            "additional_kwargs": {},
            "response_metadata": {},
            "tool_calls": [],
        });
        // Committed with the step's checkpoint by the executor, in one transaction.
        sink.push(EventKind::MessageCompleted, json!({ "node": self.name(), "message": message }));
        Ok(message)
    }
}

/// The text of the newest human message (its text parts joined), or "" if there is none.
fn last_human_text(state: &Value) -> String {
    let messages = state.get("messages").and_then(Value::as_array);
    let Some(last) = messages.and_then(|m| m.iter().rev().find(|m| m["type"] == "human")) else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn split_words(text: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' {
            if start < i {
                chunks.push(&text[start..i]);
            }
            chunks.push(&text[i..i + 1]);
            start = i + 1;
        }
    }
    if start < text.len() {
        chunks.push(&text[start..]);
    }
    chunks
}

/// Most events one `synthetic` run makes (input `n`).
pub const SYNTHETIC_MAX_EVENTS: u64 = 100_000;
/// Longest pause between two of its events (input `delay_ms`).
pub const SYNTHETIC_MAX_DELAY_MS: u64 = 1_000;
/// Most time one `synthetic` run spends pausing in all; its remaining events come at once.
pub const SYNTHETIC_MAX_PAUSE: Duration = Duration::from_secs(120);

/// `synthetic`'s extra work: a tool call, then `n` custom events or about `n` message chunks.
async fn synthetic(input: &Value, sink: &mut impl Sink) -> Result<(), Stop> {
    let n = input.get("n").and_then(Value::as_u64).unwrap_or(1000).min(SYNTHETIC_MAX_EVENTS);
    let mode = input.get("mode").and_then(Value::as_str).unwrap_or("custom");
    let delay = Duration::from_millis(
        input.get("delay_ms").and_then(Value::as_u64).unwrap_or(0).min(SYNTHETIC_MAX_DELAY_MS),
    );
    // Pauses stop once they add up to SYNTHETIC_MAX_PAUSE: the agent is a test and load tool,
    // not a way to hold a run's place for the whole run timeout.
    let mut paused = Duration::ZERO;
    sink.emit(
        EventKind::ToolExecuting,
        json!({ "node": "synthetic", "tool": "generate", "input": { "n": n, "mode": mode } }),
    )
    .await?;
    sink.emit(
        EventKind::ToolCompleted,
        json!({ "node": "synthetic", "tool": "generate", "output": { "events": n } }),
    )
    .await?;
    let id = MessageId::new().to_string();
    for i in 0..n {
        match mode {
            "tokens" if i % 2 == 1 => sink.push(
                EventKind::MessageDelta,
                json!({ "node": "synthetic", "message_id": id, "delta": " " }),
            ),
            "tokens" => sink.push(
                EventKind::MessageDelta,
                json!({ "node": "synthetic", "message_id": id, "delta": format!("t{}", i / 2) }),
            ),
            _ => sink.push(
                EventKind::Custom,
                json!({ "node": "synthetic", "payload": { "i": i, "n": n } }),
            ),
        }
        if !delay.is_zero() && paused < SYNTHETIC_MAX_PAUSE {
            sink.flush().await?;
            sink.pause(delay).await?;
            paused += delay;
        } else {
            // Bounded memory: a long run's events go out as they are made.
            sink.flush_if_full().await?;
        }
    }
    if mode == "tokens" {
        let text: Vec<String> = (0..n.div_ceil(2)).map(|i| format!("t{i}")).collect();
        let message = json!({ "type": "ai", "id": id, "content": text.join(" "), "name": "synthetic", "additional_kwargs": {}, "response_metadata": {} });
        sink.push(
            EventKind::MessageCompleted,
            json!({ "node": "synthetic", "message": message, "transient": true }),
        );
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_spaces_are_separate_chunks() {
        assert_eq!(split_words("echo: hi there"), ["echo:", " ", "hi", " ", "there"]);
        assert_eq!(split_words("a  b"), ["a", " ", " ", "b"]);
        assert_eq!(split_words(""), Vec::<&str>::new());
    }

    #[test]
    fn the_last_human_message_is_read_from_text_parts() {
        let state = json!({"messages": [
            {"type": "human", "content": "first"},
            {"type": "human", "content": [{"type": "text", "text": "hi "}, {"type": "image_url"}, {"type": "text", "text": "there"}]},
            {"type": "ai", "content": "x"},
        ]});
        assert_eq!(last_human_text(&state), "hi there");
        assert_eq!(last_human_text(&json!({})), "");
    }
}
