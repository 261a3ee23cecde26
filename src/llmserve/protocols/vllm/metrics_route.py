"""GET /metrics: Prometheus text exposition of every served engine's metrics."""

from __future__ import annotations

from quart import Blueprint, Response

from llmserve.api import context, document

bp = Blueprint("vllm_metrics", __name__)


@bp.get("/metrics")
@document("Prometheus metrics (text exposition format).", tags=["vllm"])
async def metrics() -> Response:
    body, content_type = context().metrics()
    return Response(body, content_type=content_type)
