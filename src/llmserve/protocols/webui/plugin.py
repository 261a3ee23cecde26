"""The built-in ``webui`` protocol plugin: one page at ``/`` (chat, live dashboard, playground)
and its assets under ``/ui/``, from package data (no CDN: it works air-gapped, like ``/docs``).

The page uses only the server's public routes (``/v1/chat/completions``, ``/v1/models``,
``/v1/status``, ``/metrics``, ``/v1/embeddings``, ``/tokenize``, ``/v1/audio/transcriptions``),
sending the API key the user enters. The page and its assets are reachable without the key; they
hold no data. ``--disable-web-ui`` leaves ``/`` unmounted (404, as before). A client asking for
JSON only (``Accept: application/json``) gets that 404 too, so API clients probing ``/`` see the
same answer as without the UI.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from quart import Blueprint, Response, request
from werkzeug.exceptions import NotFound

from llmserve.api import ProtocolContext, document, hookimpl

ASSETS = "/ui"


@lru_cache(maxsize=1)
def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


async def index() -> Response:
    if request.accept_mimetypes.best_match(["text/html", "application/json"]) != "text/html":
        raise NotFound()  # the server's usual 404 in OpenAI's shape
    base = request.root_path.rstrip("/") + "/"
    body = _page().replace("{{base}}", base)
    response = Response(body, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response


def make_blueprint(ctx: ProtocolContext) -> Blueprint | None:
    """``/`` and ``/ui/<file>``, unless ``--disable-web-ui``."""
    if ctx.config.disable_web_ui:
        return None
    bp = Blueprint("webui", __name__, static_folder="static", static_url_path=ASSETS)
    view = document("The web UI: chat, live dashboard and playground (HTML).", tags=["webui"])(index)
    bp.add_url_rule("/", view_func=view, methods=["GET"])
    ctx.register_open_path("/")
    ctx.register_open_path(ASSETS, subtree=True)
    return bp


@hookimpl
def llmserve_protocols(register) -> None:
    register("webui", make_blueprint, capabilities=frozenset())
