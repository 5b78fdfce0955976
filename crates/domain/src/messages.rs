//! The chat-state rules: message normalisation and the `messages` reducer (LangGraph's
//! `add_messages`), applied to every state update, by every path that writes a state.

use ids::MessageId;
use serde_json::{Map, Value, json};

/// Message types of the chat convention, and the roles clients may send instead.
fn message_type(message: &Map<String, Value>) -> Option<&'static str> {
    let text = message.get("type").or_else(|| message.get("role"))?.as_str()?;
    match text {
        "human" | "user" => Some("human"),
        "ai" | "assistant" => Some("ai"),
        "system" | "developer" => Some("system"),
        "tool" => Some("tool"),
        _ => None,
    }
}

/// One message in the chat convention: `type`, `content` (a string or a list of parts),
/// `id` (minted when missing), `additional_kwargs`, `response_metadata`; `role` becomes `type`.
pub fn normalize_message(message: Value, at: &str) -> Result<Value, String> {
    let mut m = match message {
        Value::String(text) => {
            let mut m = Map::new();
            m.insert("content".into(), Value::String(text));
            m.insert("type".into(), "human".into());
            m
        }
        Value::Object(m) => m,
        other => return Err(format!("{at}: expected a message object or a string, got {other}")),
    };
    let kind = message_type(&m).ok_or_else(|| {
        format!("{at}: expected `type` human, ai, system or tool (or `role` user, assistant, system or tool)")
    })?;
    m.remove("role");
    m.insert("type".into(), kind.into());
    match m.get("content") {
        None | Some(Value::Null) => {
            m.insert("content".into(), "".into());
        }
        Some(Value::String(_) | Value::Array(_)) => {}
        Some(_) => {
            return Err(format!("{at}.content: expected a string or a list of content parts"));
        }
    }
    if kind == "tool" && !m.get("tool_call_id").is_some_and(Value::is_string) {
        return Err(format!("{at}: a tool message needs a string `tool_call_id`"));
    }
    if m.get("id").and_then(Value::as_str).is_none_or(str::is_empty) {
        m.insert("id".into(), MessageId::new().to_string().into());
    }
    for key in ["additional_kwargs", "response_metadata"] {
        if !m.get(key).is_some_and(Value::is_object) {
            m.insert(key.into(), json!({}));
        }
    }
    Ok(Value::Object(m))
}

/// The `messages` reducer (LangGraph's `add_messages`): a message whose id is already in the
/// list replaces it in place; any other is appended.
fn add_messages(current: Option<Value>, update: Value) -> Result<Value, String> {
    let mut list = match current {
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err("the thread's `messages` is not a list".into()),
    };
    let incoming = match update {
        Value::Array(items) => items,
        single => vec![single],
    };
    // Index the ids once, so an update of n messages costs O(n), not O(n²).
    let mut index: std::collections::HashMap<String, usize> = list
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.get("id").and_then(Value::as_str).map(|id| (id.to_owned(), i)))
        .collect();
    for (i, message) in incoming.into_iter().enumerate() {
        let message = normalize_message(message, &format!("values.messages[{i}]"))?;
        let id = message.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        match index.get(&id) {
            Some(&at) => list[at] = message,
            None => {
                index.insert(id, list.len());
                list.push(message);
            }
        }
    }
    Ok(Value::Array(list))
}

/// Applies a state update to the current values: `messages` through the reducer, every other
/// key replaced. `null` changes nothing.
pub fn apply_update(current: Option<Value>, update: Value) -> Result<Value, String> {
    let mut values = match current {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("the thread's values are not an object".into()),
    };
    let update = match update {
        Value::Null => return Ok(Value::Object(values)),
        Value::Object(update) => update,
        other => return Err(format!("values: expected an object, got {other}")),
    };
    for (key, value) in update {
        if key == "messages" {
            let merged = add_messages(values.remove("messages"), value)?;
            values.insert(key, merged);
        } else {
            values.insert(key, value);
        }
    }
    Ok(Value::Object(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_become_types_and_ids_are_minted() {
        let values = apply_update(
            None,
            json!({"messages": [{"role": "user", "content": "hi"}, "plain", {"type": "ai", "content": [{"type": "text", "text": "yo"}], "id": "m1"}]}),
        )
        .unwrap();
        let messages = values["messages"].as_array().unwrap();
        assert_eq!(messages[0]["type"], "human");
        assert_eq!(messages[0].get("role"), None);
        assert_eq!(messages[0]["additional_kwargs"], json!({}));
        assert!(messages[0]["id"].as_str().unwrap().parse::<MessageId>().is_ok());
        assert_eq!(messages[1]["content"], "plain");
        assert_eq!(messages[2]["id"], "m1");
    }

    #[test]
    fn same_id_replaces_and_other_keys_overwrite() {
        let first = apply_update(
            None,
            json!({"messages": [{"type": "human", "content": "a", "id": "x"}], "k": 1}),
        )
        .unwrap();
        let second = apply_update(
            Some(first),
            json!({"messages": {"type": "human", "content": "b", "id": "x"}, "k": 2}),
        )
        .unwrap();
        assert_eq!(second["messages"].as_array().unwrap().len(), 1);
        assert_eq!(second["messages"][0]["content"], "b");
        assert_eq!(second["k"], 2);
    }

    #[test]
    fn bad_messages_say_where() {
        let err = apply_update(None, json!({"messages": [{"role": "robot", "content": "x"}]}))
            .unwrap_err();
        assert!(err.starts_with("values.messages[0]: expected `type` human"), "{err}");
        let err = apply_update(None, json!({"messages": [{"type": "tool", "content": "x"}]}))
            .unwrap_err();
        assert!(err.contains("tool_call_id"), "{err}");
        assert!(apply_update(None, json!([1])).is_err());
    }
}
