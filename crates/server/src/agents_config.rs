//! The `llm` agent's runtime from the server's configuration: the default provider
//! (`--llm-base-url`, `SPINDLE_LLM_API_KEY`), MCP servers (`--mcp NAME=URL`) and the
//! operator's file (`--config spindle.toml`). Keys are read from the environment, by name in
//! the file, and never logged.

use std::collections::BTreeMap;
use std::path::Path;

use agents::llm::{DEFAULT_PROVIDER, Models, Provider};
use agents::mcp::{McpServerConfig, McpServers};
use serde::Deserialize;

use crate::config::AgentArgs;

/// The environment variable of the default provider's key.
pub const API_KEY_ENV: &str = "SPINDLE_LLM_API_KEY";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default_provider: Option<String>,
    #[serde(default)]
    providers: BTreeMap<String, ProviderEntry>,
    #[serde(default)]
    mcp: BTreeMap<String, McpEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    base_url: String,
    /// The environment variable holding the key (the file holds no secret).
    api_key_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpEntry {
    url: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// The runtime, or what is wrong with the configuration (the server then does not start).
pub fn runtime(args: &AgentArgs) -> Result<agents::Runtime, String> {
    let file = match &args.config {
        Some(path) => read(path)?,
        None => File::default(),
    };
    let mut providers = BTreeMap::new();
    for (name, entry) in file.providers {
        let key = match &entry.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("providers.{name}.api_key_env: the environment variable {var} is not set")
            })?),
            None => None,
        };
        let provider = Provider::new(&entry.base_url, key)
            .map_err(|e| format!("providers.{name}.base_url: {e}"))?;
        providers.insert(name, provider);
    }
    if let Some(url) = &args.llm_base_url {
        let key = std::env::var(API_KEY_ENV).ok();
        let provider = Provider::new(url, key).map_err(|e| format!("--llm-base-url: {e}"))?;
        providers.insert(DEFAULT_PROVIDER.to_owned(), provider);
    }
    if let Some(default) = &file.default_provider
        && !providers.contains_key(default)
    {
        return Err(format!("default_provider: no provider named `{default}` in the file"));
    }
    let mut mcp = BTreeMap::new();
    for (name, entry) in file.mcp {
        let config = match (entry.url, entry.command) {
            (Some(url), None) => McpServerConfig::Http { url },
            (None, Some(command)) => {
                McpServerConfig::Stdio { command, args: entry.args, env: entry.env }
            }
            _ => return Err(format!("mcp.{name}: give either `url` or `command`")),
        };
        mcp.insert(name, config);
    }
    for entry in &args.mcp {
        let (name, config) =
            McpServerConfig::parse_flag(entry).map_err(|e| format!("--mcp: {e}"))?;
        mcp.insert(name, config);
    }
    for (name, config) in &mcp {
        if let McpServerConfig::Http { url } = config
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!("mcp.{name}: expected an http(s) URL"));
        }
    }
    let models = Models::new(providers, file.default_provider);
    Ok(agents::Runtime { models, mcp: McpServers::new(mcp) })
}

fn read(path: &Path) -> Result<File, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<&Path>, mcp: &[&str]) -> AgentArgs {
        AgentArgs {
            llm_base_url: Some("http://127.0.0.1:11434/v1".into()),
            mcp: mcp.iter().map(|s| s.to_string()).collect(),
            config: config.map(Path::to_path_buf),
        }
    }

    #[test]
    fn flags_and_file_name_providers_and_mcp_servers() {
        let dir = std::env::temp_dir().join(format!("spindle-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spindle.toml");
        std::fs::write(
            &path,
            r#"
default_provider = "local"
[providers.local]
base_url = "http://127.0.0.1:8080/v1/"
[mcp.files]
command = "mcp-files"
args = ["/srv"]
"#,
        )
        .unwrap();
        let runtime = runtime(&args(Some(&path), &["search=http://127.0.0.1:9000/mcp"])).unwrap();
        assert_eq!(runtime.models.names().collect::<Vec<_>>(), ["default", "local"]);
        assert_eq!(runtime.mcp.names().collect::<Vec<_>>(), ["files", "search"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_configuration_is_refused_with_what_was_expected() {
        let e = runtime(&args(None, &["nourl"])).unwrap_err();
        assert!(e.contains("NAME=URL"), "{e}");
        let e = runtime(&args(None, &["x=file:///etc/passwd"])).unwrap_err();
        assert!(e.contains("http://"), "{e}");
        let mut bad = args(None, &[]);
        bad.llm_base_url = Some("not a url".into());
        assert!(runtime(&bad).unwrap_err().contains("--llm-base-url"));
    }
}
