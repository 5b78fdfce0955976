//! The store's tests, one binary (each test binary links the whole store): its guarantees,
//! the doctor and `id inspect`'s lookup, and JSON that reads back exactly, each checked on
//! SQLite and on PostgreSQL with a fresh database.

mod assistants;
mod doctor;
mod first_steps;
mod graph_checkpoints;
mod json;
mod rows;
mod runs;
mod status_rules;
mod threads;
mod two_processes;
