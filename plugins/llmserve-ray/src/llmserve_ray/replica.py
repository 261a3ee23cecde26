"""The Serve deployment: each replica builds llmserve's whole app (models, engine, every protocol)
and Serve's ASGI ingress runs its lifespan, so the engines start before the first request and
stop when the replica goes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray
from quart import Blueprint, jsonify
from ray import serve

from llmserve.api import build_config, context, load_app
from llmserve_ray.metrics import MetricsBridge

REPLICA_HEADER = "X-Llmserve-Replica"


@serve.ingress()
class LLMServeReplica:
    """One replica: ``given`` rebuilds the driver's Config here; the app comes from
    ``__serve_build_asgi_app__``, which Serve calls after the constructor."""

    def __init__(self, given: dict[str, Any], metrics_interval_s: float = 5.0) -> None:
        self.config = build_config(**given)
        self.metrics_interval_s = metrics_interval_s
        self.context = None
        self._bridge_task: asyncio.Task | None = None

    async def __serve_build_asgi_app__(self):
        app = load_app(self.config)
        async with app.app_context():
            self.context = context()  # the server's ProtocolContext, for the health check and metrics
        replica = serve.get_replica_context()
        identity = {
            "replica_id": replica.replica_id.unique_id,
            "replica": replica.replica_tag,
            "deployment": replica.deployment,
            "application": replica.app_name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }
        app.register_blueprint(_replica_blueprint(identity))
        bridge = MetricsBridge(self.context)
        self._bridge_task = asyncio.get_running_loop().create_task(bridge.run(self.metrics_interval_s))
        return app

    async def check_health(self) -> None:
        """Serve's health check: fails once an engine died, so Serve replaces the replica."""
        if self.context is None or not self.context.is_healthy():
            raise RuntimeError("llmserve engine is not running")

    def __del__(self) -> None:
        if self._bridge_task is not None:
            self._bridge_task.cancel()


def _replica_blueprint(identity: dict[str, Any]) -> Blueprint:
    """GET /ray/replica names the replica that answered; every answer carries its id in a header."""
    bp = Blueprint("llmserve_ray", __name__)

    @bp.get("/ray/replica")
    async def replica():
        return jsonify(identity)

    @bp.after_app_request
    async def _tag(response):
        response.headers[REPLICA_HEADER] = identity["replica_id"]
        return response

    return bp
