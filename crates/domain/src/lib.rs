//! Spindle's domain, without IO: the rows and closed sets every layer speaks of, the run and
//! thread lifecycle rules as pure functions, and the one error of Spindle's data. The store
//! persists these types; the engine, the agents and the wire formats use them; nothing here
//! reads a socket or a database.

mod error;
pub mod model;

pub use error::{Error, Result, UnreadableRow};
pub use model::*;
