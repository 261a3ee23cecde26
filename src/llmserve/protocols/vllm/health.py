"""Probes and server state: /health, /ping, /version, /load, /is_sleeping, /sleep, /wake_up.

/load counts requests in flight on the inference routes (vLLM's ``server_load``): a request is
counted from before its handler runs until its response body has been sent, streams included.
"""

from __future__ import annotations

from quart import Blueprint, Response, g, jsonify, request

import llmserve
from llmserve.errors import InvalidRequestError, UnsupportedError
from llmserve.protocols.vllm import schemas
from llmserve.protocols.vllm.openapi import document
from llmserve.state import get_state

bp = Blueprint("vllm_health", __name__)

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
_LOAD_KEY = "vllm.server_load"


class _LoadSlot:
    """One counted request; released exactly once (body sent, request torn down, or collected)."""

    __slots__ = ("counter", "done")

    def __init__(self, counter: list[int]) -> None:
        self.counter = counter
        self.done = False
        counter[0] += 1

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.counter[0] -= 1

    def __del__(self) -> None:  # last resort: a response that was never sent
        self.release()


class _CountedBody:
    """Wraps a response body so the request stays counted until the body is fully sent."""

    def __init__(self, body, slot: _LoadSlot) -> None:
        self.body = body
        self.slot = slot

    async def __aenter__(self):
        return await self.body.__aenter__()

    async def __aexit__(self, *exc) -> None:
        try:
            await self.body.__aexit__(*exc)
        finally:
            self.slot.release()


def _counter() -> list[int]:
    return get_state().extras.setdefault(_LOAD_KEY, [0])


@bp.before_app_request
async def _count_request() -> None:
    if request.method in ("POST", "PUT", "DELETE") and request.path not in UNCOUNTED:
        g.vllm_load_slot = _LoadSlot(_counter())


@bp.after_app_request
async def _defer_release(response: Response) -> Response:
    slot = g.pop("vllm_load_slot", None)
    if slot is not None:
        if isinstance(response, Response):
            response.response = _CountedBody(response.response, slot)
        else:
            slot.release()
    return response


@bp.teardown_app_request
async def _release(_exc: BaseException | None) -> None:
    slot = g.pop("vllm_load_slot", None)  # still here when no after_request ran
    if slot is not None:
        slot.release()


def _healthy() -> Response:
    engine = get_state().engine
    if engine is not None and getattr(engine, "is_dead", False):
        return Response("", status=503)
    return Response("", status=200)


@bp.get("/health")
@document("Health check: 200 when the server can serve, 503 when the engine died.", tags=["vllm"])
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
    return jsonify({"server_load": _counter()[0]})


def _engine():
    engine = get_state().engine
    if engine is None:
        raise UnsupportedError("No generation model is loaded, so there is no engine to sleep or wake.")
    return engine


@bp.get("/is_sleeping")
@document("Whether the engine sleeps.", response=schemas.IsSleepingResponse, tags=["vllm"])
async def is_sleeping() -> Response:
    engine = get_state().engine
    return jsonify({"is_sleeping": bool(engine is not None and engine.is_sleeping)})


@bp.post("/sleep")
@document(
    "Put the engine to sleep (query parameter `level`, default 1); generation requests get 503 until /wake_up.",
    tags=["vllm"],
    parameters=[
        {"name": "level", "in": "query", "required": False, "schema": {"type": "integer", "default": 1}}
    ],
)
async def sleep() -> Response:
    raw = request.args.get("level", "1")
    try:
        level = int(raw)
    except ValueError:
        raise InvalidRequestError(f"level must be an integer, got {raw!r}", param="level") from None
    await _engine().sleep(level)
    return Response("", status=200)


@bp.post("/wake_up")
@document("Wake the engine up.", tags=["vllm"])
async def wake_up() -> Response:
    await _engine().wake_up()
    return Response("", status=200)
