//! Spindle's domain, without IO: the rows and closed sets every layer speaks of, the run and
//! thread lifecycle rules as pure functions, and the one error of Spindle's data. The store
//! persists these types; the engine, the agents and the wire formats use them; nothing here
//! reads a socket or a database.

mod error;
pub mod graph;
pub mod messages;
pub mod model;
mod pending;
mod run_spec;

pub use error::{Error, Result, UnreadableRow};
pub use messages::{apply_update, normalize_message};
pub use model::*;
pub use pending::{Interrupt, PENDING, Pending};
pub use run_spec::{OnCompletion, OnDisconnect, RunSpec};
