//! Users' assistants: versions are immutable and numbered in order, the current one is copied
//! into the assistant, and every function is scoped to its owner.

use ids::AssistantId;
use serde_json::json;
use store::testing::TestDb;
use store::{AssistantPatch, Error, NewAssistant, SystemAssistant};

use crate::rows::*;

store::on_both_backends!(
    versions_are_immutable_and_the_current_one_is_copied,
    create_with_a_taken_id_is_a_conflict_unless_the_caller_owns_it,
    another_users_assistant_is_not_found_everywhere,
    system_assistants_are_listed_with_their_version_but_nobody_changes_them,
    concurrent_patches_number_their_versions_without_gaps,
);

fn new_assistant(name: &str) -> NewAssistant {
    NewAssistant {
        assistant_id: AssistantId::new(),
        graph_id: "llm".into(),
        name: name.into(),
        description: Some("first".into()),
        config: json!({"configurable": {"model": "a"}}),
        context: json!({"model": "a"}),
        metadata: meta(json!({"team": "x"})),
    }
}

async fn versions_are_immutable_and_the_current_one_is_copied(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let new = new_assistant("helper");
    let (created, fresh) = store.create_assistant(owner, &new, false).await.unwrap();
    assert!(fresh);
    assert_eq!((created.version, created.owner_id), (1, Some(owner)));
    let patch = AssistantPatch {
        context: Some(json!({"model": "b"})),
        metadata: Some(meta(json!({"stage": 2}))),
        ..AssistantPatch::default()
    };
    let patched = store.patch_assistant(owner, new.assistant_id, &patch).await.unwrap();
    assert_eq!(patched.version, 2);
    assert_eq!(patched.context, json!({"model": "b"}));
    assert_eq!(patched.config, new.config, "a field not given is kept");
    assert_eq!(patched.metadata, meta(json!({"team": "x", "stage": 2})), "metadata is merged");
    assert_eq!(patched.description.as_deref(), Some("first"));
    assert_eq!(patched.created_at, created.created_at);

    let versions = store.assistant_versions(owner, new.assistant_id).await.unwrap();
    let numbers: Vec<_> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [2, 1], "newest first");
    assert_eq!(versions[1].context, json!({"model": "a"}), "version 1 is unchanged");
    assert_eq!(versions[0].metadata, patched.metadata);

    let pinned = store.set_latest_assistant_version(owner, new.assistant_id, 1).await.unwrap();
    assert_eq!((pinned.version, &pinned.context), (1, &json!({"model": "a"})));
    assert_eq!(pinned.metadata, meta(json!({"team": "x"})));
    assert_eq!(store.get_assistant(owner, new.assistant_id).await.unwrap(), pinned);
    let next = store.patch_assistant(owner, new.assistant_id, &AssistantPatch::default()).await;
    assert_eq!(next.unwrap().version, 3, "a patch after a pin is the newest version");
    assert_not_found(store.set_latest_assistant_version(owner, new.assistant_id, 9).await);
    assert_eq!(store.get_assistant(owner, new.assistant_id).await.unwrap().version, 3);

    store.delete_assistant(owner, new.assistant_id).await.unwrap();
    assert_not_found(store.get_assistant(owner, new.assistant_id).await);
    assert_not_found(store.assistant_versions(owner, new.assistant_id).await);
    assert_not_found(store.delete_assistant(owner, new.assistant_id).await);
}

async fn create_with_a_taken_id_is_a_conflict_unless_the_caller_owns_it(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let new = new_assistant("helper");
    let (created, _) = store.create_assistant(alice, &new, false).await.unwrap();
    let again = NewAssistant { name: "other".into(), ..new.clone() };
    assert!(matches!(store.create_assistant(alice, &again, false).await, Err(Error::Conflict(_))));
    let (existing, fresh) = store.create_assistant(alice, &again, true).await.unwrap();
    assert_eq!((existing, fresh), (created.clone(), false), "do_nothing gives it back unchanged");
    for existing in [false, true] {
        match store.create_assistant(bob, &again, existing).await {
            Err(Error::Conflict(m)) => {
                assert_eq!(m, format!("assistant {} already exists", new.assistant_id))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.assistant_versions(alice, new.assistant_id).await.unwrap().len(), 1);
}

async fn another_users_assistant_is_not_found_everywhere(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let new = new_assistant("private");
    let (created, _) = store.create_assistant(alice, &new, false).await.unwrap();
    let id = new.assistant_id;
    assert_not_found(store.get_assistant(bob, id).await);
    assert_not_found(store.patch_assistant(bob, id, &AssistantPatch::default()).await);
    assert_not_found(store.assistant_versions(bob, id).await);
    assert_not_found(store.set_latest_assistant_version(bob, id, 1).await);
    assert_not_found(store.delete_assistant(bob, id).await);
    assert!(store.list_assistants(bob).await.unwrap().iter().all(|a| a.assistant_id != id));
    assert_eq!(store.get_assistant(alice, id).await.unwrap(), created, "nothing changed");
    assert_eq!(store.list_assistants(alice).await.unwrap(), [created]);
}

async fn system_assistants_are_listed_with_their_version_but_nobody_changes_them(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let spec = SystemAssistant { graph_id: "echo".into(), description: Some("repeats".into()) };
    let echo = store.upsert_system_assistant(&spec).await.unwrap();
    let versions = store.assistant_versions(alice, echo.assistant_id).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!((versions[0].version, versions[0].description.as_deref()), (1, Some("repeats")));
    let id = echo.assistant_id;
    assert_not_found(store.patch_assistant(alice, id, &AssistantPatch::default()).await);
    assert_not_found(store.set_latest_assistant_version(alice, id, 1).await);
    assert_not_found(store.delete_assistant(alice, id).await);
    let refreshed = SystemAssistant { description: Some("echoes".into()), ..spec };
    store.upsert_system_assistant(&refreshed).await.unwrap();
    let versions = store.assistant_versions(alice, id).await.unwrap();
    assert_eq!(versions[0].description.as_deref(), Some("echoes"), "its version follows");
}

async fn concurrent_patches_number_their_versions_without_gaps(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let new = new_assistant("busy");
    store.create_assistant(owner, &new, false).await.unwrap();
    let patches = (0..16).map(|i| {
        let store = store.clone();
        let patch =
            AssistantPatch { metadata: Some(meta(json!({ "i": i }))), ..AssistantPatch::default() };
        tokio::spawn(async move { store.patch_assistant(owner, new.assistant_id, &patch).await })
    });
    let mut numbers: Vec<i64> = Vec::new();
    for patch in patches.collect::<Vec<_>>() {
        numbers.push(patch.await.unwrap().unwrap().version);
    }
    numbers.sort();
    assert_eq!(numbers, (2..=17).collect::<Vec<_>>());
    let current = store.get_assistant(owner, new.assistant_id).await.unwrap();
    assert_eq!(current.version, 17);
    assert_eq!(store.assistant_versions(owner, new.assistant_id).await.unwrap().len(), 17);
}
