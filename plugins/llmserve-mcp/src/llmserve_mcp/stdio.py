"""``llmserve mcp [MODEL]``: the MCP server over stdio, the models running in this process, for
desktop clients (Claude Desktop, Cursor) that start their servers as commands."""

from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager
from typing import Any

import typer

from llmserve.api import LLMServeError, ProtocolContext, build_config, config_options, running_models
from llmserve_mcp.server import build_server

# Flags of the HTTP server: stdio has no use for them, so they are refused rather than ignored.
HTTP_ONLY = (
    "host", "port", "uds", "api_key", "root_path", "middleware", "allowed_origins", "ssl_keyfile",
    "ssl_certfile", "ssl_ca_certs", "rate_limit", "max_concurrent_requests",
)  # fmt: skip


def serve_stdio(given: dict[str, Any]) -> None:
    """Serve the MCP tools over stdin/stdout with MODEL (default SmolLM2) and the default embedding
    model loaded in this process. Takes `llmserve serve`'s model and engine flags (and LLMSERVE_*
    variables); nothing but MCP messages goes to stdout, logs go to stderr."""
    try:
        for field in HTTP_ONLY:
            if given.get(field) not in (None, []):
                raise LLMServeError(
                    f"--{field.replace('_', '-')}: not used by `llmserve mcp` (stdio has no HTTP server)"
                )
        config = build_config(**given)
    except LLMServeError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        stream=sys.stderr, level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    current: dict[str, ProtocolContext] = {}

    @asynccontextmanager
    async def lifespan(_server):
        async with running_models(config) as ctx:
            current["context"] = ctx
            yield {}

    server = build_server(lambda: current["context"], lifespan=lifespan)
    try:
        server.run("stdio")
    except LLMServeError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def add_command(app: typer.Typer) -> None:
    command = config_options(serve_stdio)
    command.__doc__ = serve_stdio.__doc__
    app.command("mcp")(command)
