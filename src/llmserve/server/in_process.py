"""The served models running in this process without the HTTP server, for commands and workers
that call ``ProtocolContext`` directly (``llmserve mcp`` over stdio)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from llmserve.config import Config
from llmserve.server.context import ProtocolContext

log = logging.getLogger("llmserve")


@asynccontextmanager
async def running_models(config: Config) -> AsyncIterator[ProtocolContext]:
    """Check ``config``, load every model it names, start their engines on the running event loop
    and yield the ProtocolContext; on exit stop the engines and release the backends.

    A bad setting raises ConfigError before anything loads. No HTTP app is built, so the
    ``llmserve_startup`` / ``llmserve_shutdown`` hooks are not called and ``context()`` (which
    needs a request) is not available: use the yielded context."""
    from llmserve.plugins import load_plugins
    from llmserve.server.startup import build_context, check_config, release

    plugins = check_config(config, load_plugins(config=config))
    context = build_context(config, plugins)
    started = []
    try:
        for model in context.models:
            if model.engine is not None:
                await model.engine.start()
                started.append(model.engine)
        yield context
    finally:
        for engine in started:
            try:
                await engine.stop()
            except Exception:  # keep releasing the rest
                log.exception("stopping an engine failed")
        release(context)
