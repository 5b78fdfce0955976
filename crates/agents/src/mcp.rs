//! MCP servers (placeholder until the client lands): none are configured.

use serde_json::Value;

#[derive(Clone, Debug, Default)]
pub struct McpServers {
    names: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Value,
}

#[derive(Clone, Debug)]
pub struct ToolResult {
    pub content: String,
    pub is_error: bool,
}

#[derive(Debug)]
pub struct McpError(String);

impl std::fmt::Display for McpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug)]
pub enum McpServerConfig {
    Http { url: String },
    Stdio { command: String, args: Vec<String>, env: std::collections::BTreeMap<String, String> },
}

impl McpServers {
    pub fn new(servers: std::collections::BTreeMap<String, McpServerConfig>) -> McpServers {
        McpServers { names: servers.into_keys().collect() }
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
    pub fn contains(&self, _name: &str) -> bool {
        false
    }
    pub async fn list_tools(&self, server: &str) -> Result<Vec<ToolSpec>, McpError> {
        Err(McpError(format!("no MCP server {server}")))
    }
    pub async fn call_tool(
        &self,
        server: &str,
        _tool: &str,
        _arguments: Value,
    ) -> Result<ToolResult, McpError> {
        Err(McpError(format!("no MCP server {server}")))
    }
}
