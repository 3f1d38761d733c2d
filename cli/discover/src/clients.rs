//! The table of MCP clients: where each keeps its server lists on Linux and which keys hold them.
//!
//! Why a data table: clients move their files between versions and new clients appear every
//! month. Adding one is adding one [`ClientDef`] entry here (plus a fixture under
//! `tests/fixtures/discovery/`); the reader in `extract` understands the union of the field names
//! the clients use (`command`/`cmd`, `env`/`envs`/`environment`, `url`/`serverUrl`/`httpUrl`/`uri`,
//! ...), so most clients need no code of their own.
//!
//! Path syntax (relative to a home, a project directory or the filesystem root):
//! - `{config}` is the XDG config directory (`$XDG_CONFIG_HOME` for the invoking user's own home,
//!   else `~/.config`);
//! - a path component may contain one `*` (any name, e.g. `profiles/*`, `*.yaml`);
//! - `**` matches any number of directories (bounded depth, no symlinks followed).
//!
//! Facts come from the clients' documentation; see docs/discovery.md for the sources.

use crate::model::Transport;

/// Which keys of a parsed file hold server maps (or lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDef {
    /// Stable id used in the output, e.g. `claude-code`.
    pub id: &'static str,
    /// Human name.
    pub name: &'static str,
    /// Files in each home (user scope).
    pub user_files: &'static [&'static str],
    /// Files inside a project directory (project scope).
    pub project_files: &'static [&'static str],
    /// System-wide files under the filesystem root (managed scope).
    pub managed_files: &'static [&'static str],
    /// Files installed by plugins or extensions, relative to a home (plugin scope).
    pub plugin_files: &'static [&'static str],
    /// Key paths to the server collections, tried in order; every one present is read.
    pub server_keys: &'static [&'static [&'static str]],
    /// Transport of an entry with a bare `url` and no `type`.
    pub bare_url: Transport,
    /// An environment variable that moves the user-scope file(s), honoured for the invoking
    /// user's own home only (other users' environments are unknown).
    pub env_override: Option<EnvOverride>,
    /// Where the client records project directories (to find their project files).
    pub project_records: ProjectRecords,
}

/// `VAR` names a directory (the files are `files` inside it) or the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvOverride {
    pub var: &'static str,
    /// Empty: the variable names the file itself.
    pub files: &'static [&'static str],
}

/// How a client remembers the projects it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectRecords {
    None,
    /// `~/.claude.json`: `projects.<abs path>` (with its own `mcpServers`, local scope).
    ClaudeProjects,
    /// VS Code: `workspaceStorage/*/workspace.json` with `folder: "file:///path"`.
    VsCodeWorkspaces,
    /// Codex: `[projects."<abs path>"]` tables in `config.toml`.
    CodexProjects,
}

const MCP_SERVERS: &[&[&str]] = &[&["mcpServers"]];

/// Defaults for the table: a `mcpServers` map, bare `url` = Streamable HTTP, no project, managed
/// or plugin files, no environment override, no project records.
const BASE: ClientDef = ClientDef {
    id: "",
    name: "",
    user_files: &[],
    project_files: &[],
    managed_files: &[],
    plugin_files: &[],
    server_keys: MCP_SERVERS,
    bare_url: Transport::Http,
    env_override: None,
    project_records: ProjectRecords::None,
};

/// Every known client. Order is output order for equal files.
pub const CLIENTS: &[ClientDef] = &[
    ClientDef {
        id: "claude-code",
        name: "Claude Code",
        user_files: &[".claude.json", ".claude/.claude.json"],
        project_files: &[".mcp.json"],
        managed_files: &["etc/claude-code/managed-mcp.json"],
        plugin_files: &[".claude/plugins/**/.mcp.json"],
        env_override: Some(EnvOverride {
            var: "CLAUDE_CONFIG_DIR",
            files: &[".claude.json"],
        }),
        project_records: ProjectRecords::ClaudeProjects,
        ..BASE
    },
    ClientDef {
        id: "claude-desktop",
        name: "Claude Desktop",
        user_files: &["{config}/Claude/claude_desktop_config.json"],
        ..BASE
    },
    ClientDef {
        id: "cursor",
        name: "Cursor",
        user_files: &[".cursor/mcp.json"],
        project_files: &[".cursor/mcp.json"],
        ..BASE
    },
    ClientDef {
        id: "vscode",
        name: "VS Code",
        user_files: &[
            "{config}/Code/User/mcp.json",
            "{config}/Code/User/profiles/*/mcp.json",
            "{config}/Code/User/settings.json",
            "{config}/Code - Insiders/User/mcp.json",
            "{config}/VSCodium/User/mcp.json",
        ],
        project_files: &[".vscode/mcp.json", ".vscode/settings.json"],
        server_keys: &[&["servers"], &["mcp", "servers"]],
        project_records: ProjectRecords::VsCodeWorkspaces,
        ..BASE
    },
    ClientDef {
        id: "copilot-cli",
        name: "GitHub Copilot CLI",
        user_files: &[".copilot/mcp-config.json"],
        ..BASE
    },
    ClientDef {
        id: "windsurf",
        name: "Windsurf",
        user_files: &[".codeium/windsurf/mcp_config.json"],
        ..BASE
    },
    ClientDef {
        id: "zed",
        name: "Zed",
        user_files: &["{config}/zed/settings.json"],
        project_files: &[".zed/settings.json"],
        server_keys: &[&["context_servers"]],
        ..BASE
    },
    ClientDef {
        id: "gemini-cli",
        name: "Gemini CLI",
        user_files: &[".gemini/settings.json"],
        project_files: &[".gemini/settings.json"],
        managed_files: &["etc/gemini-cli/settings.json"],
        plugin_files: &[".gemini/extensions/*/gemini-extension.json"],
        // Gemini: `url` is SSE, `httpUrl` is Streamable HTTP (see `extract`).
        bare_url: Transport::Sse,
        ..BASE
    },
    ClientDef {
        id: "codex",
        name: "Codex CLI",
        user_files: &[".codex/config.toml"],
        project_files: &[".codex/config.toml"],
        managed_files: &["etc/codex/config.toml"],
        server_keys: &[&["mcp_servers"]],
        env_override: Some(EnvOverride {
            var: "CODEX_HOME",
            files: &["config.toml"],
        }),
        project_records: ProjectRecords::CodexProjects,
        ..BASE
    },
    ClientDef {
        id: "continue",
        name: "Continue",
        user_files: &[".continue/config.yaml", ".continue/config.json"],
        project_files: &[".continue/mcpServers/*.yaml", ".continue/mcpServers/*.json"],
        bare_url: Transport::Sse,
        ..BASE
    },
    ClientDef {
        id: "cline",
        name: "Cline",
        user_files: &[
            "{config}/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
            "{config}/Cursor/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
            "{config}/Windsurf/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
            "{config}/VSCodium/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
        ],
        server_keys: MCP_SERVERS,
        // Cline: a bare `url` means SSE.
        bare_url: Transport::Sse,
        ..BASE
    },
    ClientDef {
        id: "roo-code",
        name: "Roo Code",
        user_files: &[
            "{config}/Code/User/globalStorage/rooveterinaryinc.roo-cline/settings/mcp_settings.json",
            "{config}/Cursor/User/globalStorage/rooveterinaryinc.roo-cline/settings/mcp_settings.json",
        ],
        project_files: &[".roo/mcp.json"],
        bare_url: Transport::Sse,
        ..BASE
    },
    ClientDef {
        id: "goose",
        name: "goose",
        user_files: &["{config}/goose/config.yaml"],
        server_keys: &[&["extensions"]],
        bare_url: Transport::Sse,
        ..BASE
    },
    ClientDef {
        id: "opencode",
        name: "opencode",
        user_files: &[
            "{config}/opencode/opencode.json",
            "{config}/opencode/opencode.jsonc",
        ],
        project_files: &["opencode.json", "opencode.jsonc"],
        server_keys: &[&["mcp"]],
        env_override: Some(EnvOverride {
            var: "OPENCODE_CONFIG",
            files: &[],
        }),
        ..BASE
    },
    ClientDef {
        id: "amazon-q",
        name: "Amazon Q",
        user_files: &[".aws/amazonq/mcp.json"],
        project_files: &[".amazonq/mcp.json"],
        ..BASE
    },
    ClientDef {
        id: "kiro",
        name: "Kiro",
        user_files: &[".kiro/settings/mcp.json"],
        project_files: &[".kiro/settings/mcp.json"],
        ..BASE
    },
    ClientDef {
        id: "lm-studio",
        name: "LM Studio",
        user_files: &[".lmstudio/mcp.json", ".cache/lm-studio/mcp.json"],
        ..BASE
    },
];

/// The client with this id.
pub fn client(id: &str) -> Option<&'static ClientDef> {
    CLIENTS.iter().find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_client_has_a_user_or_project_file() {
        for (i, c) in CLIENTS.iter().enumerate() {
            assert!(
                CLIENTS[..i].iter().all(|o| o.id != c.id),
                "duplicate {}",
                c.id
            );
            assert!(
                !c.user_files.is_empty() || !c.project_files.is_empty(),
                "{}",
                c.id
            );
            assert!(!c.server_keys.is_empty(), "{}", c.id);
        }
    }
}
