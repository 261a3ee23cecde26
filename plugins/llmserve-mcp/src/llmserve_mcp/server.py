"""The MCP server (the SDK's MCPServer) with the five tools, and who may reach it over HTTP."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

import llmserve
from llmserve.api import ConfigError, ProtocolContext
from llmserve_mcp.tools import Tools

ALLOW_REMOTE = "LLMSERVE_MCP_ALLOW_REMOTE"
INSTRUCTIONS = (
    "Tools of an llmserve inference server: generate text (generate_completion, chat), embed texts "
    "(get_embeddings), see what it serves (list_models) and how busy it is (monitor_metrics)."
)
LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]", "127.0.0.1:*", "localhost:*", "[::1]:*"]
LOCAL_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def build_server(get_context: Callable[[], ProtocolContext], **options) -> MCPServer:
    """An MCPServer whose tools run on the context ``get_context`` returns."""
    server = MCPServer(
        "llmserve", instructions=INSTRUCTIONS, version=llmserve.__version__, log_level="WARNING", **options
    )
    for tool in Tools(get_context).all():
        server.add_tool(tool)
    return server


def allow_remote(environ: Mapping[str, str]) -> bool:
    """``LLMSERVE_MCP_ALLOW_REMOTE``: true lets clients on other machines in."""
    value = environ.get(ALLOW_REMOTE, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{ALLOW_REMOTE}: expected true or false (got {environ[ALLOW_REMOTE]!r})")


def transport_security(remote: bool) -> TransportSecuritySettings:
    """Host / Origin checks against DNS rebinding: localhost names only, unless remote clients are
    allowed (then the API key is what guards the tools)."""
    if remote:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=LOCAL_HOSTS, allowed_origins=LOCAL_ORIGINS
    )


def is_local(address: str | None) -> bool:
    """A loopback client address (a Unix socket's peer has none)."""
    if not address:
        return True
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False
