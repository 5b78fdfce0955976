//! Small real servers that Spindle's tests and benchmarks talk to over real sockets: an
//! OpenAI-compatible model server (`model`) and an MCP server over Streamable HTTP (`mcp`).
//! Each binds 127.0.0.1 port 0 and stops when dropped. Nothing here links Spindle's code.

pub mod mcp;
pub mod model;
