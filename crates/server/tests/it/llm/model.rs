//! The model server's side: streaming, the request Spindle sends, and its failures.

use axum::http::StatusCode;
use std::time::Duration;

use testkit::model::Reply;

use super::*;
use crate::harness::BOUND;

store::on_both_backends!(LlmApp =>
    tokens_stream_as_message_chunks_and_the_answer_is_kept,
    the_model_is_sent_the_system_prompt_the_history_and_the_settings,
    reasoning_is_kept_apart_from_the_answer,
    busy_or_failing_servers_are_retried_before_the_first_token,
    a_failure_after_the_first_token_ends_the_run_with_what_the_server_said,
    a_malformed_stream_or_a_cut_connection_is_a_clear_error,
    cancel_mid_stream_closes_the_upstream_request,
    settings_and_providers_that_do_not_fit_are_refused_with_what_was_expected,
    an_assistant_you_create_configures_its_runs_and_a_run_may_override_it,
    a_model_server_that_never_sends_headers_fails_the_run_instead_of_hanging,
    a_huge_event_that_never_ends_fails_the_run_promptly,
    a_provider_urls_credentials_are_never_shown,
    the_api_key_is_not_echoed_from_the_model_servers_error,
);

/// A fixture of its own: a run timeout of one second.
mod timeout {
    use super::*;

    store::on_each_backend!(the_run_timeout_aborts_the_upstream_request);

    async fn the_run_timeout_aborts_the_upstream_request(backend: store::Backend) {
        let Some(fx) = LlmApp::with_run_timeout(backend, Duration::from_secs(1)).await else {
            return;
        };
        let app = &fx.app;
        let key = app.key("alice").await;
        let t = new_thread(app, &key).await;
        fx.model.push(Reply::Hang);
        let mut body = llm("hi", json!({"model": "m"}));
        body["stream_mode"] = json!(["messages-tuple"]);
        let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
        let (error, message) = error_of(&frames);
        assert_eq!(error, "TimeoutError");
        assert!(message.contains("exceeded 1 s"), "{message}");
        assert!(
            fx.model.wait_for(BOUND, |m| m.abandoned() == 1).await,
            "the upstream stream was closed"
        );
        let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
        assert_eq!(runs[0]["status"], "timeout");
    }
}

async fn tokens_stream_as_message_chunks_and_the_answer_is_kept(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    fx.model.push(Reply::Text("Hello there, Alice".into()));
    let mut body = llm("hi", json!({"model": "test-model"}));
    body["stream_mode"] = json!(["messages-tuple", "values"]);
    let (status, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert_eq!(status, StatusCode::OK);
    let chunks: Vec<&Value> =
        frames.iter().filter(|f| f.event == "messages").map(|f| &f.data[0]).collect();
    let text: String = chunks.iter().filter_map(|c| c["content"].as_str()).collect();
    assert_eq!(text, "Hello there, Alice");
    assert!(chunks.iter().all(|c| c["type"] == "AIMessageChunk"), "{chunks:?}");
    assert!(chunks.len() >= 5, "a chunk per word and space: {chunks:?}");
    let metadata = &frames.iter().find(|f| f.event == "messages").unwrap().data[1];
    assert_eq!(metadata["langgraph_node"], "llm");
    let last = chunks.last().unwrap();
    assert_eq!(last["usage_metadata"]["output_tokens"], 5, "{last}");
    assert_eq!(last["response_metadata"]["finish_reason"], "stop");
    let values = &frames.iter().rev().find(|f| f.event == "values").unwrap().data;
    assert_eq!(texts(values), ["hi", "Hello there, Alice"]);
    let answer = &values["messages"][1];
    assert_eq!(answer["type"], "ai");
    assert_eq!(
        answer["usage_metadata"],
        json!({"input_tokens": 7, "output_tokens": 5, "total_tokens": 12})
    );
    assert_eq!(answer["response_metadata"]["model_name"], "test-model");
    assert_eq!(answer["id"], chunks[0]["id"], "the chunks are the message's");
    // The thread is idle with the answer; the key reached the model server, never the client.
    let th = app.get(&key, &format!("/threads/{t}")).await.ok();
    assert_eq!(th["status"], "idle");
    assert_eq!(fx.model.authorizations(), [Some("Bearer sk-test-secret".to_owned())]);
    assert!(!frames.iter().any(|f| f.data.to_string().contains("sk-test-secret")));
}

async fn the_model_is_sent_the_system_prompt_the_history_and_the_settings(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let context =
        json!({"model": "m1", "system_prompt": "Be brief.", "temperature": 0.2, "max_tokens": 50});
    let first = llm("first question", context.clone());
    app.post(&key, &format!("/threads/{t}/runs/wait"), first).await.ok();
    let image = json!([{"type": "text", "text": "and this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]);
    let second = json!({"assistant_id": "llm", "context": context,
        "input": {"messages": [{"type": "human", "content": image}]}});
    let values = app.post(&key, &format!("/threads/{t}/runs/wait"), second).await.ok();
    assert_eq!(values["messages"].as_array().unwrap().len(), 4);
    let sent = fx.model.requests();
    assert_eq!(sent.len(), 2);
    let request = &sent[1];
    assert_eq!(request["model"], "m1");
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"], json!({"include_usage": true}));
    assert_eq!(request["temperature"], 0.2);
    assert_eq!(request["max_tokens"], 50);
    assert!(request.get("tools").is_none(), "no tools were named");
    let roles: Vec<&str> = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(request["messages"][0]["content"], "Be brief.");
    assert_eq!(request["messages"][1]["content"], "first question");
    assert_eq!(request["messages"][2]["content"], "echo: first question");
    assert_eq!(request["messages"][3]["content"], image, "image parts pass through");
}

async fn reasoning_is_kept_apart_from_the_answer(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    fx.model.push(Reply::Reasoning { thinking: "let me think".into(), answer: "42".into() });
    let mut body = llm("meaning?", json!({"model": "r1"}));
    body["stream_mode"] = json!(["messages-tuple", "values"]);
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let chunks: Vec<&Value> =
        frames.iter().filter(|f| f.event == "messages").map(|f| &f.data[0]).collect();
    let thinking: String = chunks
        .iter()
        .filter_map(|c| c["additional_kwargs"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(thinking, "let me think");
    let text: String = chunks.iter().filter_map(|c| c["content"].as_str()).collect();
    assert_eq!(text, "42");
    let values = &frames.iter().rev().find(|f| f.event == "values").unwrap().data;
    let answer = &values["messages"][1];
    assert_eq!(answer["content"], "42");
    assert_eq!(answer["additional_kwargs"]["reasoning_content"], "let me think");
}

async fn busy_or_failing_servers_are_retried_before_the_first_token(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    fx.model.push(Reply::Status(429, "slow down".into()));
    fx.model.push(Reply::Status(503, "overloaded".into()));
    fx.model.push(Reply::Text("made it".into()));
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("hi", json!({"model": "m"})))
        .await
        .ok();
    assert_eq!(texts(&values), ["hi", "made it"]);
    assert_eq!(fx.model.requests().len(), 3);
    // Past the retries (2 here): the run errors with what the server said, the thread is usable.
    for _ in 0..3 {
        fx.model.push(Reply::Status(500, "the GPU caught fire".into()));
    }
    let mut body = llm("again", json!({"model": "m"}));
    body["stream_mode"] = json!(["values"]);
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ModelError");
    assert!(message.contains("500") && message.contains("the GPU caught fire"), "{message}");
    assert!(message.contains("after 3 attempts"), "{message}");
    // A client error is not retried.
    fx.model.push(Reply::Status(400, "unknown model m".into()));
    let before = fx.model.requests().len();
    let (_, _, frames) = app
        .post_sse(&key, &format!("/threads/{t}/runs/stream"), llm("x", json!({"model": "m"})))
        .await;
    assert!(error_of(&frames).1.contains("unknown model m"));
    assert_eq!(fx.model.requests().len(), before + 1);
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("last", json!({"model": "m"})))
        .await
        .ok();
    // A failed run keeps the human's message (as LangGraph keeps a run's input) and no
    // partial answer.
    assert_eq!(texts(&values), ["hi", "made it", "again", "x", "last", "echo: last"]);
}

async fn a_failure_after_the_first_token_ends_the_run_with_what_the_server_said(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    fx.model.push(Reply::ErrorAfterFirstToken("context length exceeded".into()));
    let mut body = llm("hi", json!({"model": "m"}));
    body["stream_mode"] = json!(["messages-tuple"]);
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert!(frames.iter().any(|f| f.event == "messages"), "the first token was streamed");
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ModelError");
    assert!(message.contains("context length exceeded"), "{message}");
    assert_eq!(fx.model.requests().len(), 1, "no retry after the first token");
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    assert_eq!(runs[0]["status"], "error");
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("again", json!({"model": "m"})))
        .await
        .ok();
    assert_eq!(texts(&values), ["hi", "again", "echo: again"], "no partial answer was kept");
}

async fn a_malformed_stream_or_a_cut_connection_is_a_clear_error(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let cases = [(Reply::Malformed, "not JSON"), (Reply::CutAfterFirstToken, "stream")];
    for (reply, said) in cases {
        fx.model.push(reply);
        let (_, _, frames) = app
            .post_sse(&key, &format!("/threads/{t}/runs/stream"), llm("hi", json!({"model": "m"})))
            .await;
        let (error, message) = error_of(&frames);
        assert_eq!(error, "ModelError");
        assert!(message.contains(said), "{message}");
        let th = app.get(&key, &format!("/threads/{t}")).await.ok();
        assert_eq!(th["status"], "error");
    }
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("fine?", json!({"model": "m"})))
        .await
        .ok();
    assert_eq!(texts(&values), ["hi", "hi", "fine?", "echo: fine?"]);
}

async fn cancel_mid_stream_closes_the_upstream_request(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    fx.model.push(Reply::Hang);
    let run =
        app.post(&key, &format!("/threads/{t}/runs"), llm("hi", json!({"model": "m"}))).await.ok();
    let run_id = run["run_id"].as_str().unwrap();
    assert!(fx.model.wait_for(BOUND, |m| m.requests().len() == 1).await);
    let cancel = format!("/threads/{t}/runs/{run_id}/cancel?wait=true&action=interrupt");
    let reply = app.post(&key, &cancel, json!({})).await;
    assert!(reply.status.is_success(), "{}", reply.body);
    assert!(
        fx.model.wait_for(BOUND, |m| m.abandoned() == 1).await,
        "the upstream stream was closed"
    );
    let ended = app.wait_for_status(&key, &t, run_id, |s| s != "running" && s != "pending").await;
    assert_eq!(ended["status"], "interrupted");
    // The run's time limit stops a stream the same way: covered by the same race in the agent.
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("next", json!({"model": "m"})))
        .await
        .ok();
    assert_eq!(texts(&values).last().unwrap(), "echo: next");
}

async fn settings_and_providers_that_do_not_fit_are_refused_with_what_was_expected(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let cases = [
        (json!({}), "context.model"),
        (json!({"model": 3}), "context.model: expected a string"),
        (json!({"model": "m", "temperature": "hot"}), "context.temperature"),
        (json!({"model": "m", "max_steps": 0}), "context.max_steps"),
        (json!({"model": "m", "provider": "elsewhere"}), "no model provider named `elsewhere`"),
        (json!({"model": "m", "tools": ["nowhere"]}), "no MCP server named `nowhere`"),
        (json!({"model": "m", "tools": "x"}), "context.tools: expected a list of strings"),
    ];
    for (context, said) in cases {
        let (_, _, frames) = app
            .post_sse(&key, &format!("/threads/{t}/runs/stream"), llm("hi", context.clone()))
            .await;
        let (error, message) = error_of(&frames);
        assert_eq!(error, "ValueError", "{context}");
        assert!(message.contains(said), "{context}: {message}");
    }
    assert!(fx.model.requests().is_empty(), "nothing reached the model server");
    // `config.configurable` is read too (older LangGraph clients); both at once is refused,
    // as LangGraph refuses it.
    let body = json!({"assistant_id": "llm", "input": human("hi"),
        "config": {"configurable": {"model": "from-config", "system_prompt": "cfg"}}});
    app.post(&key, &format!("/threads/{t}/runs/wait"), body).await.ok();
    let sent = fx.model.requests();
    assert_eq!(sent[0]["model"], "from-config");
    assert_eq!(sent[0]["messages"][0]["content"], "cfg");
    let both = json!({"assistant_id": "llm", "input": human("hi"),
        "config": {"configurable": {"model": "a"}}, "context": {"model": "b"}});
    let reply = app.post(&key, &format!("/threads/{t}/runs/wait"), both).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.body);
    assert_eq!(fx.model.requests().len(), 1);
}

async fn an_assistant_you_create_configures_its_runs_and_a_run_may_override_it(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let created = app
        .post(
            &key,
            "/assistants",
            json!({"graph_id": "llm", "name": "terse",
            "context": {"model": "m-assistant", "system_prompt": "Be terse.", "temperature": 0.5}}),
        )
        .await
        .ok();
    let id = created["assistant_id"].as_str().unwrap().to_owned();
    let t = new_thread(app, &key).await;
    let body = json!({"assistant_id": id, "input": human("hi")});
    app.post(&key, &format!("/threads/{t}/runs/wait"), body).await.ok();
    let body =
        json!({"assistant_id": id, "input": human("again"), "context": {"temperature": 0.9}});
    app.post(&key, &format!("/threads/{t}/runs/wait"), body).await.ok();
    let sent = fx.model.requests();
    assert_eq!(sent[0]["model"], "m-assistant");
    assert_eq!(sent[0]["messages"][0], json!({"role": "system", "content": "Be terse."}));
    assert_eq!(sent[0]["temperature"], 0.5);
    assert_eq!(sent[1]["model"], "m-assistant", "the run overrides one key, not the rest");
    assert_eq!(sent[1]["temperature"], 0.9);
    // A new version changes the next runs; another user cannot run it at all.
    app.call(
        &key,
        axum::http::Method::PATCH,
        &format!("/assistants/{id}"),
        Some(json!({"context": {"model": "m-v2"}})),
    )
    .await
    .ok();
    app.post(
        &key,
        &format!("/threads/{t}/runs/wait"),
        json!({"assistant_id": id, "input": human("v2")}),
    )
    .await
    .ok();
    assert_eq!(fx.model.requests()[2]["model"], "m-v2");
    let bob = app.key("bob").await;
    let bt = new_thread(app, &bob).await;
    let reply = app
        .post(
            &bob,
            &format!("/threads/{bt}/runs/wait"),
            json!({"assistant_id": id, "input": human("x")}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert_eq!(fx.model.requests().len(), 3);
}

async fn a_model_server_that_never_sends_headers_fails_the_run_instead_of_hanging(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // Every attempt (the first and 2 retries) meets a server that accepts and says nothing.
    for _ in 0..3 {
        fx.model.push(Reply::StallBeforeHeaders);
    }
    let body = llm("hi", json!({"model": "m"}));
    let limit = IDLE * 3 + Duration::from_secs(10);
    let run =
        tokio::time::timeout(limit, app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body))
            .await;
    let (_, _, frames) = run.unwrap_or_else(|_| {
        panic!(
            "the run still waits for the model server's headers after {limit:?} (the idle \
             timeout is {IDLE:?}; only the run's own time limit would end it)"
        )
    });
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ModelError");
    assert!(message.contains("nothing") || message.contains("timed out"), "{message}");
    assert!(fx.model.wait_for(BOUND, |m| m.abandoned() == 3).await, "each attempt was closed");
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("next", json!({"model": "m"})))
        .await
        .ok();
    assert_eq!(texts(&values).last().unwrap(), "echo: next");
}

async fn a_huge_event_that_never_ends_fails_the_run_promptly(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // One content delta of 32 MiB whose event never ends (no blank line), then the body ends.
    let mut parts = vec![br#"data: {"choices":[{"index":0,"delta":{"content":""#.to_vec()];
    parts.extend(std::iter::repeat_n(vec![b'a'; 16 * 1024], 2048));
    fx.model.push(Reply::Raw(parts));
    let limit = Duration::from_secs(30);
    let run = tokio::time::timeout(
        limit,
        app.post_sse(&key, &format!("/threads/{t}/runs/stream"), llm("hi", json!({"model": "m"}))),
    )
    .await;
    let (_, _, frames) = run.unwrap_or_else(|_| {
        panic!("the run was still reading a 32 MiB event after {limit:?} (each piece rescans it)")
    });
    let (error, _) = error_of(&frames);
    assert_eq!(error, "ModelError");
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("next", json!({"model": "m"})))
        .await
        .ok();
    assert_eq!(texts(&values).last().unwrap(), "echo: next");
}

async fn a_provider_urls_credentials_are_never_shown(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // The operator's `leaky` provider has a password and a key in its URL; nothing listens.
    let body = llm("hi", json!({"model": "m", "provider": "leaky"}));
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ModelError");
    assert!(message.contains("could not reach"), "{message}");
    assert!(!message.contains(URL_SECRET), "the run's error shows the URL's secret: {message}");
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    assert!(!runs.to_string().contains(URL_SECRET), "{runs}");
    let url = format!("https://user:{URL_SECRET}@models.internal/v1?api-key={URL_SECRET}");
    let provider = Provider::new(&url, None).unwrap();
    assert!(!format!("{provider:?}").contains(URL_SECRET), "{provider:?}");
}

async fn the_api_key_is_not_echoed_from_the_model_servers_error(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // Some OpenAI-compatible servers and proxies quote the key they refused.
    fx.model.push(Reply::Status(401, "Incorrect API key provided: sk-test-secret".into()));
    let body = llm("hi", json!({"model": "m"}));
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ModelError");
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains("sk-test-secret"), "the server's key reached a client: {message}");
}
