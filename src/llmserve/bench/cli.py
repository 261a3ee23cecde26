"""``llmserve bench``: throughput (offline engine) and serve (an OpenAI-compatible URL)."""

from __future__ import annotations

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; results go to docs/PERFORMANCE.md by hand.")
