"""Every hook llmserve calls, grouped by lifecycle.

A plugin is any module or object with functions decorated by ``llmserve.hookimpl`` whose names
match the specs below. Registration hooks receive a ``register`` callback: the core owns the
registries, records which plugin registered each name and rejects duplicates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from llmserve.state import ServerState

hookspec = pluggy.HookspecMarker("llmserve")
hookimpl = pluggy.HookimplMarker("llmserve")


# --- Discovery: called once per plugin manager, in registration order --------------------------


@hookspec
def llmserve_backends(register: Callable[..., None]) -> None:
    """Register model backends.

    Called once at start, when the backend registry is first built. Not firstresult: every
    plugin's implementation runs. Call ``register(name, backend_class)`` for each backend; the
    class must subclass ``llmserve.backends.base.Backend``. ``--backend NAME`` selects one.
    Returns nothing.
    """


@hookspec
def llmserve_tool_parsers(register: Callable[..., None]) -> None:
    """Register tool-call parsers.

    Called once at start. Not firstresult. Call ``register(name, parser_class)`` with a subclass
    of ``llmserve.parsers.base.ToolParser``; ``--tool-call-parser NAME`` selects one.
    Returns nothing.
    """


@hookspec
def llmserve_reasoning_parsers(register: Callable[..., None]) -> None:
    """Register reasoning parsers.

    Called once at start. Not firstresult. Call ``register(name, parser_class)`` with a subclass
    of ``llmserve.parsers.base.ReasoningParser``; ``--reasoning-parser NAME`` selects one.
    Returns nothing.
    """


@hookspec
def llmserve_protocols(register: Callable[..., None]) -> None:
    """Register protocol routers (Quart blueprints).

    Called once per ``create_app``. Not firstresult. Call
    ``register(name, blueprint_factory, capabilities=frozenset())`` where ``blueprint_factory``
    is a ``quart.Blueprint`` or a zero-argument callable returning one, and ``capabilities`` names
    what the routes need from the served models (``"generate"``, ``"embed"``). The app mounts
    a protocol only when every capability it needs is served. Returns nothing.
    """


@hookspec
def llmserve_cli(app: typer.Typer) -> None:
    """Add commands to the ``llmserve`` command line.

    Called once when the CLI is built, before arguments are parsed. Not firstresult. Add
    commands with ``@app.command()``. Returns nothing.
    """


# --- Server lifecycle ----------------------------------------------------------------------------


@hookspec
def llmserve_startup(state: ServerState) -> None:
    """Called once after the models are loaded and before the server accepts requests.

    ``state`` is the server's ``ServerState`` (config, engine, tokenizer, registries). Not
    firstresult; every implementation runs, in registration order. Returns nothing; raise to
    abort start-up.
    """


@hookspec
def llmserve_shutdown(state: ServerState) -> None:
    """Called once when the server stops (SIGINT/SIGTERM or the app shutting down).

    Runs after the server stops accepting requests and before the engine is stopped. Not
    firstresult. Exceptions are logged and do not stop other implementations. Returns nothing.
    """


def hook_names() -> list[str]:
    """The names of all hook specifications, in file order."""
    return [name for name, value in globals().items() if name.startswith("llmserve_") and callable(value)]


__all__ = ["hookimpl", "hookspec", "hook_names"]
