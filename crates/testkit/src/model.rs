//! An OpenAI-compatible model server (`POST /v1/chat/completions`), for tests.
