"""GET /openapi.json (built from the app's routes and their pydantic models) and GET /docs, a
self-contained page (no CDN, works offline) that renders the spec and can send requests."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from quart import Blueprint, Response, current_app, jsonify

from llmserve.server.openapi import build_spec, document
from llmserve.server.openapi_limits import apply_limits

bp = Blueprint("llmserve_docs", __name__)


@lru_cache(maxsize=1)
def _page() -> str:
    return resources.files("llmserve.server").joinpath("static/docs.html").read_text(encoding="utf-8")


@bp.get("/openapi.json")
@document("This API's OpenAPI document.", tags=["docs"])
async def openapi_json() -> Response:
    spec = current_app.extensions.get("llmserve.openapi")
    if spec is None:  # routes are fixed once the app serves: build once
        ctx = current_app.extensions["llmserve"]
        lengths = [m.max_model_len for m in ctx.models if m.engine is not None]
        names = [name for m in ctx.models for name in m.names]
        dims = sorted({m.embedder.dim for m in ctx.models if m.embedder is not None})
        spec = apply_limits(build_spec(current_app), ctx.config, max(lengths, default=None), names, dims)
        current_app.extensions["llmserve.openapi"] = spec
    return jsonify(spec)


@bp.get("/docs")
@document("Interactive API documentation (offline).", tags=["docs"])
async def docs() -> Response:
    return Response(_page(), content_type="text/html; charset=utf-8")
