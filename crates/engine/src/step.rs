//! A run's steps, from its first to its end: the input applied to the thread's state (or a
//! `command` resuming an interrupted one), the agent, and the last step with the run's end.
//! The executor calls [`run_steps`] once per run; the rules of forks, breakpoints, interrupts
//! and resumes live here.

use agents::{Agent, Sink as _, Stop};
use domain::{Pending, RunSpec, apply_update};
use ids::{AssistantId, RunId};
use serde_json::{Map, Value, json};
use store::{EventKind, FirstStep, NewEvent, Run};

use crate::sink::Sink;
use crate::workers::Workers;

/// Executes one run: applies its input to the thread's state (or, for a `command`, resumes
/// the interrupted state), runs the agent, appends the agent's message and ends the run
/// `success` (in one transaction). An agent that stops on an interrupt, or a breakpoint
/// before it (`interrupt_before`), ends the run `success` and leaves the thread
/// `interrupted`. Returns the thread's values after the run (with `__interrupt__` when it
/// stopped on one); on an error the run has not ended yet (the executor's `finish` ends it).
pub(crate) async fn run_steps(
    run: &Run,
    spec: &RunSpec,
    runtime: &agents::Runtime,
    sink: &mut Sink,
    started: Option<Value>,
    workers: Option<&Workers>,
) -> Result<Value, Stop> {
    // A user's LangGraph graph runs on a worker, which applies the input itself.
    if let Some(workers) = workers.filter(|w| w.graph(&spec.graph_id).is_some()) {
        return crate::remote::run_graph(workers, run, spec, sink).await;
    }
    let agent = agent_of(spec)?;
    let input = run.input.clone().unwrap_or(Value::Null);
    let command = spec.command.as_ref().filter(|c| c.is_object());
    let (state, resumed) = match command {
        Some(command) => match resume(run, sink, agent, command).await? {
            Resumed::Run { state, value } => (state, value),
            Resumed::Ended(values) => return Ok(values),
        },
        None => {
            // The first step may have been committed with the run already
            // (`create_run_claiming`).
            let state = match started {
                Some(state) => state,
                None => {
                    let first = first_step(run.run_id, run.assistant_id, spec, run.input.as_ref())?;
                    sink.commit_first(first).await?
                }
            };
            if spec.stops_before(agent.name()) {
                // A static breakpoint: the state's pending task is the agent's.
                sink.push(EventKind::Interrupt, json!({ "node": agent.name(), "interrupts": [] }));
                sink.end_interrupted().await?;
                return Ok(state);
            }
            (state, None)
        }
    };
    if command.is_none()
        && let Some(value) = agent.interrupt_value(&input)
    {
        return sink.interrupt(agent, value).await;
    }
    if agent == Agent::Llm {
        return llm(run, spec, runtime, &state, resumed.as_ref(), sink).await;
    }
    let message = agent.run(&state, &input, resumed.as_ref(), sink).await?;
    let writes = json!({ agent.name(): { "messages": [message.clone()] } });
    let metadata =
        json!({ "source": "loop", "run_id": run.run_id, "writes": writes, "parents": {} });
    // The last step and the run's end, in one transaction.
    sink.commit_final(json!({ "messages": [message] }), metadata).await
}

/// The `llm` agent's run: its settings from the run's (merged) `context` and
/// `config.configurable`, then its answer as the last step, or its approval request as an
/// interrupt with the messages it wrote before asking.
async fn llm(
    run: &Run,
    spec: &RunSpec,
    runtime: &agents::Runtime,
    state: &Value,
    resumed: Option<&Value>,
    sink: &mut Sink,
) -> Result<Value, Stop> {
    let settings = agents::llm::Settings::of(&spec.context, &spec.config["configurable"])
        .map_err(|message| Stop::Failed { error: "ValueError".into(), message })?;
    match agents::llm::run(runtime, &settings, state, resumed, sink).await? {
        agents::llm::Outcome::Answered(messages) => {
            let update = json!({ "messages": messages });
            let writes = json!({ Agent::Llm.name(): update.clone() });
            let metadata =
                json!({ "source": "loop", "run_id": run.run_id, "writes": writes, "parents": {} });
            sink.commit_final(update, metadata).await
        }
        agents::llm::Outcome::Asks { messages, value } => {
            sink.interrupt_with(Agent::Llm, json!({ "messages": messages }), value).await
        }
    }
}

/// How a `command` run goes on.
enum Resumed {
    /// The agent runs on `state`, given the resume `value` when it had asked something (an
    /// interrupt; a breakpoint asks nothing, and the value is not the agent's, as in
    /// LangGraph).
    Run { state: Value, value: Option<Value> },
    /// Nothing more to run (`goto: "__end__"`): the run has ended with these values.
    Ended(Value),
}

/// A `command` run (`{resume, update, goto}`): the thread's newest checkpoint must be waiting
/// (on an interrupt or a breakpoint) when a `resume` is given: a resume queued behind a run
/// that answered the interrupt finds nothing to resume and fails. `update` is applied first,
/// as a step of its own; `goto: "__end__"` ends the run without running the agent.
async fn resume(
    run: &Run,
    sink: &mut Sink,
    agent: Agent,
    command: &Value,
) -> Result<Resumed, Stop> {
    let (owner, thread) = (run.owner_id, run.thread_id);
    let head = sink.store.list_checkpoints(owner, thread, 1, None).await?.into_iter().next();
    let pending = head.as_ref().and_then(|c| Pending::of(&c.metadata)).unwrap_or_default();
    let waiting = pending.next.iter().any(|n| n == agent.name());
    let asked = !pending.interrupts.is_empty();
    let value = match command.get("resume") {
        None => None,
        Some(_) if !waiting => {
            return Err(Stop::Failed {
                error: "InvalidUpdateError".into(),
                message: format!("thread {thread} is not interrupted: nothing to resume"),
            });
        }
        Some(value) => {
            let value = resume_value(value, &pending)
                .map_err(|message| Stop::Failed { error: "InvalidUpdateError".into(), message })?;
            asked.then_some(value)
        }
    };
    sink.push(EventKind::AgentStarted, started_event(agent, run.assistant_id));
    let mut state = head.map(|c| c.values).unwrap_or_else(|| json!({}));
    let update = command.get("update").filter(|u| !u.is_null()).cloned();
    if update.is_none() {
        // As LangGraph's resume stream starts: the interrupted state, without the interrupt
        // (clients clear the interrupt they show at a new run's first `values`).
        sink.push(EventKind::Values, state.clone());
    }
    if let Some(update) = update {
        let mut metadata = json!({ "source": "update", "run_id": run.run_id, "writes": { "__input__": update.clone() }, "parents": {} });
        if waiting && let Some(map) = metadata.as_object_mut() {
            // Still waiting for the agent (now with the update applied).
            Pending::next(agent.name()).into_metadata(map);
        }
        state = sink.commit_update(update, metadata).await?;
    }
    // `goto: "__end__"`, or an update alone on a thread that waits for nothing: nothing to run.
    let run_agent = match goto(command) {
        Some(node) => node != "__end__",
        None => waiting || command.get("resume").is_some(),
    };
    if run_agent {
        return Ok(Resumed::Run { state, value });
    }
    // Answered without running the agent: a state that waits for nothing.
    let metadata = json!({ "source": "update", "run_id": run.run_id, "writes": {}, "parents": {} });
    Ok(Resumed::Ended(sink.commit_final(json!({}), metadata).await?))
}

/// The node a command's `goto` names (a name, or a list of one).
pub fn goto(command: &Value) -> Option<&str> {
    match command.get("goto")? {
        Value::String(node) => Some(node),
        Value::Array(nodes) => nodes.first().and_then(Value::as_str),
        _ => None,
    }
}

/// The value a `resume` gives the pending interrupt: a map of interrupt ids (every key 32 hex
/// digits, as LangGraph tells a map from a value) gives the value of the pending one's id;
/// any other value is the value. A map naming an interrupt that is not pending is refused.
pub fn resume_value(resume: &Value, pending: &Pending) -> Result<Value, String> {
    let Some(map) = resume
        .as_object()
        .filter(|m| !m.is_empty() && m.keys().all(|k| ids::InterruptId::is_simple_form(k)))
    else {
        return Ok(resume.clone());
    };
    let ids: Vec<&str> = pending.interrupts.iter().map(|i| i.id.as_str()).collect();
    if let Some(unknown) = map.keys().find(|k| !ids.contains(&k.as_str())) {
        return Err(format!("interrupt {unknown} is not pending; pending: [{}]", ids.join(", ")));
    }
    Ok(ids.iter().find_map(|id| map.get(*id)).cloned().unwrap_or(Value::Null))
}

fn started_event(agent: Agent, assistant: AssistantId) -> Value {
    json!({ "node": agent.name(), "assistant_id": assistant, "graph_id": agent.name() })
}

/// The agent a run's `graph_id` names.
fn agent_of(spec: &RunSpec) -> Result<Agent, Stop> {
    let graph_id = &spec.graph_id;
    Agent::from_graph(graph_id).ok_or_else(|| Stop::Failed {
        error: "ValueError".into(),
        message: format!("no agent named {graph_id}"),
    })
}

/// A run's first step: `agent_started`, and its input applied to the thread's state as a
/// checkpoint (committed by the executor, or with the run by `create_run_claiming`) whose
/// pending task is the agent's. On a thread without a checkpoint, the state before the input
/// (`{"messages": []}`, waiting for `__start__`) is written first, as LangGraph's step −1:
/// the first message then has a parent to fork from. A run from an older checkpoint
/// (`RunSpec::checkpoint_id`) forks there; without input it copies that checkpoint
/// (`source: "fork"`) and the agent answers again (regenerate).
pub fn first_step(
    run: RunId,
    assistant: AssistantId,
    spec: &RunSpec,
    input: Option<&Value>,
) -> Result<FirstStep, Stop> {
    let agent = agent_of(spec)?;
    let started = NewEvent {
        run_id: Some(run),
        kind: EventKind::AgentStarted,
        data: started_event(agent, assistant),
    };
    let state_input = match input {
        Some(Value::Object(fields)) => {
            // The agent's own options (synthetic's n, mode, delay_ms, interrupt) are not state.
            let state: Map<String, Value> = fields
                .iter()
                .filter(|(k, _)| !agent.is_option(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(state)
        }
        _ => Value::Null,
    };
    let from = spec.checkpoint_id;
    let source = if from.is_some() && state_input.is_null() { "fork" } else { "loop" };
    let mut metadata = json!({ "source": source, "run_id": run, "parents": {} })
        .as_object()
        .cloned()
        .unwrap_or_default();
    Pending::next(agent.name()).into_metadata(&mut metadata);
    let mut before = json!({ "source": "input", "run_id": run, "parents": {} })
        .as_object()
        .cloned()
        .unwrap_or_default();
    Pending::next("__start__").into_metadata(&mut before);
    Ok(FirstStep {
        events: vec![started],
        update: Box::new(move |current| apply_update(current, state_input.clone())),
        metadata,
        from,
        initial: Some((json!({ "messages": [] }), before)),
    })
}
