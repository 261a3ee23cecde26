"""The ``llmserve`` command line: serve, plugins, pull, version, and plugins' own commands.

``serve``'s options come from the Config fields (``llmserve.cli_options``); other commands, such
as ``bench`` from the built-in ``bench`` plugin, come through the ``llmserve_cli`` hook.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from llmserve import __version__
from llmserve.cli_options import with_config_options
from llmserve.errors import LLMServeError
from llmserve.sources import transformers_index


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def serve(given: dict[str, Any]) -> None:
    """Serve MODEL over HTTP with the OpenAI, vLLM and other protocol plugins.

    Several models may be served: `llmserve serve chat=smollm2 other=./model-dir`; requests pick
    one by name, the first is the default. Every option can also be set as LLMSERVE_<OPTION>
    (LLMSERVE_MODELS for the models); options win over the environment. Plugins may supply
    settings too (llmserve_serve_settings), between the options and the environment.
    """
    from llmserve.config import build_config
    from llmserve.plugins import load_plugins
    from llmserve.server import check_config, run_server

    try:
        given = {**given, **load_plugins().serve_settings(given)}
        config = build_config(**given)
        plugins = check_config(config, load_plugins(config=config))
    except LLMServeError as exc:
        _fail(exc.message)
    try:
        code = run_server(config, plugins)
    except LLMServeError as exc:
        _fail(exc.message, 1)
    raise typer.Exit(code)


def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the loaded plugins by name: module or distribution, version and what each registered."""
    from llmserve.plugins import load_plugins

    try:
        rows = load_plugins().describe()
    except LLMServeError as exc:
        _fail(exc.message, 1)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['name']}  ({row['module'] or '-'}; {row['distribution']} {row['version']})")
        for item in row["registered"] or ["-"]:
            typer.echo(f"    {item}")


def pull(alias: str = typer.Argument(..., help="Model pack alias, e.g. smollm2 or minilm.")) -> None:
    """Fetch a model pack into the cache (and convert it once), so `serve` starts at once."""
    from llmserve.sources import packs

    try:
        path = packs.ensure_model(alias, progress=True)
    except LLMServeError as exc:
        _fail(exc.message, 1)
    typer.echo(str(path))


def version() -> None:
    """Print the llmserve version."""
    typer.echo(__version__)


def build_app() -> typer.Typer:
    """A new CLI: the core commands plus every plugin's (llmserve_cli hook)."""
    from llmserve.plugins import load_plugins

    app = typer.Typer(add_completion=False, no_args_is_help=True, help="llmserve: LLM inference and serving.")
    serve_command = with_config_options(serve)
    serve_command.__doc__ = serve.__doc__
    app.command("serve")(serve_command)
    app.command()(plugins)
    app.command()(pull)
    app.command()(version)
    try:
        load_plugins().add_cli(app)
    except LLMServeError as exc:
        typer.secho(f"warning: plugins not loaded: {exc.message}", err=True)
    return app


def main() -> None:
    transformers_index.install()  # before anything imports transformers
    sys.exit(build_app()(standalone_mode=True))
