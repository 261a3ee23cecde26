"""``build_app(args)``: the Serve application of llmserve replicas."""

from __future__ import annotations

from typing import Any

from ray import serve

from llmserve_ray.options import deployment_options, parse_args
from llmserve_ray.replica import LLMServeReplica


def build_app(args: dict[str, Any]):
    """A Serve application (``serve.run`` it, or name this as ``import_path``) of llmserve
    replicas configured by ``args`` (see ``llmserve_ray.options``)."""
    options, config, given = parse_args(dict(args))
    deployment = serve.deployment(LLMServeReplica, name="LLMServe")
    return deployment.options(**deployment_options(options, config)).bind(given, options.metrics_interval_s)
