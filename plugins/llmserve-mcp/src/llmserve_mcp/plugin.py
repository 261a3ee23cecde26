"""Mounts the MCP server at /mcp of ``llmserve serve`` and adds ``llmserve mcp`` (stdio)."""

from __future__ import annotations

import logging
import os

from quart import Blueprint, jsonify, request

from llmserve.api import ProtocolContext, document, hookimpl
from llmserve_mcp.asgi_mount import AsgiMount
from llmserve_mcp.server import ALLOW_REMOTE, allow_remote, build_server, is_local, transport_security

PATH = "/mcp"
log = logging.getLogger("llmserve.mcp")


def _jsonrpc_error(status: int, message: str):
    """The MCP transport's own error shape (a JSON-RPC error without an id)."""
    response = jsonify({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="llmserve"'
    return response


def make_blueprint(ctx: ProtocolContext) -> Blueprint:
    """/mcp (GET, POST, DELETE): the SDK's streamable HTTP app, its session manager run from the
    server's start to its stop."""
    remote = allow_remote(os.environ)
    if remote and not ctx.config.api_key:
        log.warning(
            "%s is on without --api-key: anyone who can reach the server can use the MCP tools", ALLOW_REMOTE
        )
    server = build_server(lambda: ctx)
    app = server.streamable_http_app(streamable_http_path=PATH, transport_security=transport_security(remote))
    mount = AsgiMount(app)
    bp = Blueprint("mcp", __name__)
    bp.before_app_serving(mount.startup)
    bp.after_app_serving(mount.shutdown)
    ctx.register_error_renderer(PATH, _jsonrpc_error)

    @document(
        "Model Context Protocol (streamable HTTP): tools generate_completion, chat, get_embeddings, "
        "list_models and monitor_metrics. Local clients only unless LLMSERVE_MCP_ALLOW_REMOTE is set.",
        tags=["mcp"],
    )
    async def mcp():
        if not remote and not is_local(request.remote_addr):
            return _jsonrpc_error(
                403, f"MCP is served to local clients only (set {ALLOW_REMOTE}=true to allow others)."
            )
        return await mount.handle()

    bp.add_url_rule(PATH, view_func=mcp, methods=["GET", "POST", "DELETE"])
    return bp


@hookimpl
def llmserve_protocols(register):
    register("mcp", make_blueprint, capabilities=frozenset())


@hookimpl
def llmserve_cli(app):
    from llmserve_mcp.stdio import add_command

    add_command(app)
