"""GET /metrics: Prometheus text exposition of the served model's EngineMetrics.

With a generation model, the engine's own EngineMetrics (gauges read from ``engine.stats()`` at
scrape time). With only an embedding model, an EngineMetrics with no engine behind it, so that
scrapers still find every metric name.
"""

from __future__ import annotations

from quart import Blueprint, Response

from llmserve.engine.metrics import EngineMetrics
from llmserve.protocols.vllm.openapi import document
from llmserve.state import get_state

bp = Blueprint("vllm_metrics", __name__)


@bp.get("/metrics")
@document("Prometheus metrics (text exposition format).", tags=["vllm"])
async def metrics() -> Response:
    state = get_state()
    engine = state.engine
    if engine is not None and getattr(engine, "metrics", None) is not None:
        body = engine.metrics.render(engine.stats)
    else:
        name = state.model_name or state.embedding_model_name or "none"
        body = state.extras.setdefault("vllm.metrics", EngineMetrics(name)).render()
    return Response(body, content_type=EngineMetrics.content_type)
