//! The ids crate as the rest of Spindle uses it.

use std::collections::HashSet;

use ids::{AssistantId, IdKind, RunId, ThreadId, UserId};

#[test]
fn minted_ids_are_v7_and_strictly_increasing_across_threads() {
    // Each thread's ids must increase; across threads, all ids must be distinct.
    let per_thread: Vec<Vec<ThreadId>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..50_000).map(|_| ThreadId::new()).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = HashSet::new();
    for ids in &per_thread {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not strictly increasing");
        for id in ids {
            assert_eq!(id.as_uuid().get_version_num(), 7);
            assert!(all.insert(*id), "duplicate id {id}");
        }
    }
}

#[test]
fn text_form_round_trips_and_is_canonical() {
    let id = RunId::new();
    let text = id.to_string();
    assert_eq!(text.len(), 36);
    assert_eq!(text, text.to_lowercase());
    assert_eq!(text.parse::<RunId>().unwrap(), id);
    let mut buf = ids::text_buffer();
    assert_eq!(id.encode(&mut buf), text);
}

#[test]
fn client_chosen_v4_ids_are_accepted() {
    let v4 = "9f8b6a3e-2c1d-4e5f-8a7b-6c5d4e3f2a1b";
    let id: ThreadId = v4.parse().unwrap();
    assert_eq!(id.to_string(), v4);
    assert_eq!(id.minted_at_ms(), None);
}

#[test]
fn minted_at_decodes_the_v7_timestamp() {
    let before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let ms = UserId::new().minted_at_ms().unwrap();
    assert!(ms >= before && ms < before + 60_000, "{ms} vs {before}");
}

#[test]
fn builtin_assistant_ids_match_langgraph() {
    // Values from Python: uuid.uuid5(UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), name).
    for (name, expected) in [
        ("agent", "fe096781-5601-53d2-b2f6-0d3403f7e9ca"),
        ("echo", "046b5dc7-2108-582c-9c6c-31d556d138f0"),
        ("llm", "0b4207bf-1d8e-5def-811c-2f8420b3e270"),
    ] {
        assert_eq!(AssistantId::for_graph(name).to_string(), expected);
    }
}

#[test]
fn serde_uses_the_text_form_and_names_the_kind_on_error() {
    let id = ThreadId::new();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, format!("\"{id}\""));
    assert_eq!(serde_json::from_str::<ThreadId>(&json).unwrap(), id);

    let err = serde_json::from_str::<ThreadId>("\"abc\"").unwrap_err().to_string();
    assert!(err.starts_with("invalid thread_id `abc`: expected a UUID like"), "{err}");
    let err = serde_json::from_str::<ThreadId>("42").unwrap_err().to_string();
    assert!(err.contains("expected a thread_id"), "{err}");
}

#[test]
fn every_kind_has_its_field_name() {
    let fields: Vec<_> = IdKind::ALL.iter().map(|k| k.field()).collect();
    assert_eq!(
        fields,
        [
            "user_id",
            "assistant_id",
            "thread_id",
            "run_id",
            "checkpoint_id",
            "message_id",
            "request_id",
            "connection_id",
            "key_id",
            "task_id",
            "interrupt_id"
        ]
    );
}
