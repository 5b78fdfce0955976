//! An MCP server over Streamable HTTP, for tests.
