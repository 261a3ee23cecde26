"""Adds ``llmserve ray serve`` through llmserve's ``llmserve_cli`` hook (Ray is imported only when
the command runs)."""

from __future__ import annotations

from llmserve.api import hookimpl


@hookimpl
def llmserve_cli(app):
    from llmserve_ray.cli import ray_app

    app.add_typer(ray_app, name="ray")
