"""``python -m llmcore.agents.multi_agent``: the book's tools as an MCP server on stdin/stdout."""

from llmcore.agents.multi_agent.tools import serve_mcp

serve_mcp()
