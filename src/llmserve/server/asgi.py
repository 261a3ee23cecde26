"""ASGI layers around the Quart app: path clean-up, --root-path, and --middleware classes."""

from __future__ import annotations

import importlib
import re

from llmserve.errors import ConfigError

_SLASHES = re.compile(r"/{2,}")


class CleanPaths:
    """``//v1/models`` -> ``/v1/models`` and a trailing slash dropped (clients such as Open WebUI
    send both); with a root path, requests under it are served with the prefix removed, so the
    server answers behind a proxy that keeps the prefix as well as one that strips it."""

    def __init__(self, app, root_path: str | None = None) -> None:
        self.app = app
        self.root_path = "/" + root_path.strip("/") if root_path and root_path.strip("/") else ""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = _SLASHES.sub("/", scope["path"])
            if len(path) > 1 and path.endswith("/"):
                path = path.rstrip("/") or "/"
            root = self.root_path
            if root:  # Quart wants the prefix in ``path`` and strips ``root_path`` itself
                if not (path == root or path.startswith(root + "/")):
                    path = root + path
                if path == root:
                    path = root + "/"
            if path != scope["path"] or root:
                scope = {**scope, "path": path, "raw_path": path.encode(), "root_path": root}
        await self.app(scope, receive, send)


def load_middleware(path: str):
    """The ASGI middleware named ``module.Name``: a class (or factory) called with the app."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"--middleware: {path!r} is not an import path (module.Name)")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--middleware: cannot import {path!r}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"--middleware: {path!r} is not a class or factory taking the ASGI app")
    return obj


def wrap(app, config) -> None:
    """Put the configured layers around ``app.asgi_app`` (first --middleware outermost)."""
    inner = app.asgi_app
    for path in reversed(config.middleware):
        inner = load_middleware(path)(inner)
    app.asgi_app = CleanPaths(inner, config.root_path)
