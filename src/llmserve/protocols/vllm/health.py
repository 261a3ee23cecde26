"""Probes and server state: /health, /ping, /version, /load; and, only with
``--enable-sleep-mode``, /is_sleeping, /sleep and /wake_up (behind the API key like every
non-probe route).

With ``--enable-server-load-tracking``, /load counts requests in flight on the inference routes
(vLLM's ``server_load``): a request is counted from before its handler runs until its response
body has been sent, streams included. Without it /load reports 0, as in vLLM.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

import llmserve
from llmserve.api import (
    GENERATE,
    InvalidRequestError,
    ProtocolContext,
    UnsupportedError,
    context,
    document,
    release_after_body,
)
from llmserve.protocols.vllm import schemas

bp = Blueprint("vllm_health", __name__)
sleep_bp = Blueprint("vllm_sleep", __name__)

# Probes and admin routes are not load.
UNCOUNTED = frozenset(
    {
        "/health",
        "/ping",
        "/version",
        "/load",
        "/metrics",
        "/is_sleeping",
        "/sleep",
        "/wake_up",
        "/docs",
        "/openapi.json",
    }
)


class _LoadSlot:
    """One counted request; released exactly once (body sent, request torn down, or collected)."""

    __slots__ = ("ctx", "done")

    def __init__(self, ctx: ProtocolContext) -> None:
        self.ctx = ctx
        self.done = False
        ctx.server_load += 1

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.ctx.server_load -= 1

    def __del__(self) -> None:  # last resort: a response that was never sent
        self.release()


@bp.before_app_request
async def _count_request() -> None:
    ctx = context()
    if ctx.config.enable_server_load_tracking and request.method in ("POST", "PUT", "DELETE"):
        if request.path not in UNCOUNTED:
            request.vllm_load_slot = _LoadSlot(ctx)  # per request: hypercorn may share ``g``


@bp.after_app_request
async def _defer_release(response: Response) -> Response:
    slot = _take()
    if slot is not None:
        if isinstance(response, Response):
            release_after_body(response, slot.release)
        else:
            slot.release()
    return response


@bp.teardown_app_request
async def _release(_exc: BaseException | None) -> None:
    slot = _take()  # still here when no after_request ran
    if slot is not None:
        slot.release()


def _take() -> _LoadSlot | None:
    current = request._get_current_object()
    slot = getattr(current, "vllm_load_slot", None)
    current.vllm_load_slot = None
    return slot


def _healthy() -> Response:
    return Response("", status=200 if context().is_healthy() else 503)


@bp.get("/health")
@document("Health check: 200 when the server can serve, 503 when an engine died.", tags=["vllm"])
async def health() -> Response:
    return _healthy()


@bp.route("/ping", methods=["GET", "POST"])
@document("Health check (SageMaker-style); same as /health.", tags=["vllm"])
async def ping() -> Response:
    return _healthy()


@bp.get("/version")
@document("Server version.", response=schemas.VersionResponse, tags=["vllm"])
async def version() -> Response:
    return jsonify({"version": llmserve.__version__})


@bp.get("/load")
@document("Requests in flight on the inference routes.", response=schemas.LoadResponse, tags=["vllm"])
async def load() -> Response:
    return jsonify({"server_load": context().server_load})


def _engines() -> list:
    engines = [m.engine for m in context().models if m.supports(GENERATE)]
    if not engines:
        raise UnsupportedError("No generation model is loaded, so there is no engine to sleep or wake.")
    return engines


@sleep_bp.get("/is_sleeping")
@document("Whether the engines sleep.", response=schemas.IsSleepingResponse, tags=["vllm"])
async def is_sleeping() -> Response:
    engines = [m.engine for m in context().models if m.supports(GENERATE)]
    return jsonify({"is_sleeping": bool(engines) and all(e.is_sleeping for e in engines)})


@sleep_bp.post("/sleep")
@document(
    "Put the engines to sleep: level 1 frees the KV cache, level 2 the weights too. Generation "
    "requests get 503 until /wake_up.",
    tags=["vllm"],
    parameters=[
        {"name": "level", "in": "query", "required": False, "schema": {"type": "integer", "enum": [1, 2]}}
    ],
)
async def sleep() -> Response:
    raw = request.args.get("level", "1")
    try:
        level = int(raw)
    except ValueError:
        raise InvalidRequestError(f"level must be 1 or 2, got {raw!r}", param="level") from None
    if level not in (1, 2):
        raise InvalidRequestError(f"level must be 1 or 2, got {level}", param="level")
    for engine in _engines():
        await engine.sleep(level)
    return Response("", status=200)


@sleep_bp.post("/wake_up")
@document("Wake the engines up: restore the weights and the KV cache.", tags=["vllm"])
async def wake_up() -> Response:
    for engine in _engines():
        await engine.wake_up()
    return Response("", status=200)
