"""llmserve on Ray Serve: each replica runs llmserve's whole app and engine.

``build_app`` is the Serve application builder (``serve run llmserve_ray:build_app model=smollm2
num_replicas=2``, or ``import_path: llmserve_ray:build_app`` in a Serve config file). Ray is
imported only when it is called, so loading the plugin for ``llmserve plugins`` stays cheap.
"""

from __future__ import annotations

from typing import Any


def build_app(args: dict[str, Any]):
    """The Serve application for ``args``: ``llmserve serve`` options by field name (``model``,
    ``max_model_len``...) plus the deployment's (``num_replicas``, ``autoscaling``, ``num_cpus``...;
    see ``llmserve_ray.options``)."""
    from llmserve_ray.app import build_app as build

    return build(args)


__all__ = ["build_app"]
