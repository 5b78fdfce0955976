//! `Store`'s methods, one module per resource: the same modules as each backend's
//! (`crate::sqlite`, `crate::postgres`). Each method matches on the backend (`dispatch!`) and
//! calls the backend's function of the same name, or is built on other methods.

mod admin;
mod assistants;
mod events;
mod graph;
mod keys;
mod runs;
mod state;
mod threads;
