//! What each built-in agent looks like from outside: the JSON schemas of its input, output,
//! state and context (`GET /assistants/{id}/schemas`) and its graph of nodes and edges
//! (`GET /assistants/{id}/graph`), in the shapes LangGraph's server gives them. The node is
//! named like the agent, as the engine names it in streams, breakpoints and `goto`.

use serde_json::{Value, json};

use crate::Agent;

impl Agent {
    /// `{graph_id, input_schema, output_schema, state_schema, config_schema, context_schema}`.
    /// The context is also what `config.configurable` may carry, so the two schemas are one.
    pub fn schemas(self) -> Value {
        let context = self.context_schema();
        json!({
            "graph_id": self.name(),
            "input_schema": self.input_schema(),
            "output_schema": state("Output"),
            "state_schema": state("State"),
            "config_schema": context,
            "context_schema": context,
        })
    }

    /// `{nodes, edges}`: `__start__`, the agent's one node, `__end__`. There are no subgraphs,
    /// so every `xray` depth gives this.
    pub fn graph(self) -> Value {
        let node = |id: &str| json!({"id": id, "type": "runnable", "data": {"name": id}});
        json!({
            "nodes": [node("__start__"), node(self.name()), {"id": "__end__"}],
            "edges": [
                {"source": "__start__", "target": self.name()},
                {"source": self.name(), "target": "__end__"},
            ],
        })
    }

    fn input_schema(self) -> Value {
        let mut input = state("Input");
        if self == Agent::Synthetic {
            input["properties"]["n"] = json!({
                "type": "integer", "title": "N", "minimum": 0,
                "description": "how many custom events or message chunks to stream"
            });
            input["properties"]["mode"] = json!({
                "type": "string", "title": "Mode", "enum": ["custom", "messages"],
                "description": "what to stream"
            });
            input["properties"]["delay_ms"] = json!({
                "type": "integer", "title": "Delay Ms", "minimum": 0,
                "description": "the pause between two events"
            });
            input["properties"]["interrupt"] = json!({
                "title": "Interrupt",
                "description": "a value to ask a human first; the answer is the resume value"
            });
        }
        input
    }

    fn context_schema(self) -> Value {
        match self {
            Agent::Echo | Agent::Synthetic => {
                json!({"type": "object", "title": "Context", "properties": {}})
            }
            Agent::Llm => llm_context(),
        }
    }
}

/// The chat state every built-in agent keeps: `{messages: [...]}`.
fn state(title: &str) -> Value {
    json!({
        "type": "object",
        "title": title,
        "properties": {
            "messages": {"type": "array", "title": "Messages", "items": {}},
        },
    })
}

fn llm_context() -> Value {
    let strings = |title: &str, description: &str| json!({"type": "array", "title": title, "items": {"type": "string"}, "description": description});
    json!({
        "type": "object",
        "title": "Context",
        "properties": {
            "model": {"type": "string", "title": "Model", "description": "the model's name on its server"},
            "provider": {"type": "string", "title": "Provider", "description": "the OpenAI-compatible server the model is on"},
            "system_prompt": {"type": "string", "title": "System Prompt"},
            "temperature": {"type": "number", "title": "Temperature"},
            "max_tokens": {"type": "integer", "title": "Max Tokens"},
            "tools": strings("Tools", "MCP server names (all their tools) or `server/tool`"),
            "approve": strings("Approve", "tool names that need a human's approval before they run"),
            "max_steps": {"type": "integer", "title": "Max Steps", "default": 8, "minimum": 1},
        },
        "required": ["model"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_nodes_are_the_engines_node_names() {
        for (agent, name, _) in Agent::ALL {
            let graph = agent.graph();
            let ids: Vec<_> = graph["nodes"].as_array().unwrap().iter().map(|n| &n["id"]).collect();
            assert_eq!(ids, [&json!("__start__"), &json!(name), &json!("__end__")]);
            assert_eq!(agent.schemas()["graph_id"], name);
        }
    }

    #[test]
    fn only_llm_has_context_fields() {
        assert_eq!(Agent::Echo.schemas()["context_schema"]["properties"], json!({}));
        let llm = Agent::Llm.schemas();
        assert_eq!(llm["context_schema"]["required"], json!(["model"]));
        assert_eq!(llm["context_schema"]["properties"]["max_steps"]["default"], 8);
        assert_eq!(llm["config_schema"], llm["context_schema"]);
    }
}
