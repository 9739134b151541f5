"""Where the model's tools come from: the built-in ones (`builtin`) and MCP servers
(`mcp_source`). Each is a `botservice.core.tools.ToolSource`; `botservice.app` builds
them from the settings and hands them to the core. Imports the core only."""
