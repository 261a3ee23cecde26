"""With the pack installed, the HTTP server also answers under ``/openai/v1/...``, the path of
RunPod's OpenAI-compatible endpoint (``https://.../v2/ENDPOINT_ID/openai/v1``), so a client
configured for a RunPod endpoint works against a plain ``llmserve serve`` too.

The protocol mounts no routes of its own: its blueprint puts a layer in front of the app that
serves ``/openai/v1/X`` as ``/v1/X``, so every route, error shape and the API-key check are the
ones of ``/v1/X`` itself.
"""

from __future__ import annotations

from quart import Blueprint

from llmserve.api import hookimpl

PREFIX = "/openai"


class OpenAIPrefix:
    """ASGI layer: ``/openai/v1/...`` -> ``/v1/...`` (under the root path, when there is one)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            root = scope.get("root_path", "")
            path = scope["path"]
            rest = path[len(root) :] if root and path.startswith(root) else path
            if rest == PREFIX + "/v1" or rest.startswith(PREFIX + "/v1/"):
                path = path[: len(path) - len(rest)] + rest[len(PREFIX) :]
                scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def make_blueprint() -> Blueprint:
    bp = Blueprint("runpod", __name__)

    @bp.record_once
    def _wrap(state) -> None:
        state.app.asgi_app = OpenAIPrefix(state.app.asgi_app)

    return bp


@hookimpl
def llmserve_protocols(register):
    register("runpod", make_blueprint, capabilities=frozenset())
