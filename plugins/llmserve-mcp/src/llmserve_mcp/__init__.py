"""An MCP server for llmserve: tools over the engine, at /mcp and over stdio."""
