"""The built-in ``bench`` plugin: adds ``llmserve bench`` through the ``llmserve_cli`` hook."""

from __future__ import annotations

from llmserve import hookimpl


@hookimpl
def llmserve_cli(app):
    from llmserve.bench.cli import bench_app

    app.add_typer(bench_app, name="bench")
