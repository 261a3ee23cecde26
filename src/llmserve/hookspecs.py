"""Every hook llmserve calls, grouped by lifecycle.

A plugin is any module or object with functions decorated by ``llmserve.hookimpl`` whose names
match the specs below. Registration hooks receive a ``register`` callback: the core owns the
registries, records which plugin registered each name, checks the kind of every registered
object and rejects duplicates (a ``PluginError`` naming the plugins).

Order: the core calls each hook once per plugin, in load order: built-ins in ``DEFAULT_PLUGINS``
order, then entry-point plugins sorted by name, then plugins passed to ``Plugins.load``. (It does
not use pluggy's last-registered-first order, so a built-in always registers before a plugin.)
No hook is firstresult.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from llmserve.server.context import ProtocolContext

hookspec = pluggy.HookspecMarker("llmserve")
hookimpl = pluggy.HookimplMarker("llmserve")


# --- Discovery: each called once per plugin manager, when its registry is first needed --------


@hookspec
def llmserve_backends(register: Callable[..., None]) -> None:
    """Register model backends.

    Called once per plugin manager, when the backend registry is first built (at start, by
    ``check_config``). Not firstresult: every plugin's implementation runs. Call
    ``register(name, backend_class, auto_priority=None)`` for each backend; the class must
    subclass ``llmserve.backends.base.Backend``. ``--backend NAME`` selects one; ``--backend auto``
    picks, among backends registered with an integer ``auto_priority``, the available one
    (``Backend.is_available``) with the highest priority (built-ins: cuda 30, tpu 20, cpu 10).
    Returns nothing.
    """


@hookspec
def llmserve_model_architectures(register: Callable[..., None]) -> None:
    """Register model architectures and the classes that implement them.

    Called once per plugin manager, when the architecture registry is first built (at start, or
    when a backend first loads a model). Not firstresult. Call
    ``register(architecture, family, encoder=False, torch="module:Class", jax=...)`` where
    ``architecture`` is the name in a config.json's ``architectures`` list, ``family`` groups
    architectures sharing one implementation, ``encoder`` marks embedding (pooling) models, and
    each further keyword names a framework and gives its implementation: an import path
    (``"module:Class"`` or ``"module"``, imported only when used) or the object itself. The torch
    backends load ``torch=`` classes (built like ``llmserve.backends.torch.llama``). Several plugins
    may register one architecture when they agree on its family; each framework once.
    Returns nothing.
    """


@hookspec
def llmserve_tool_parsers(register: Callable[..., None]) -> None:
    """Register tool-call parsers.

    Called once per plugin manager, at start. Not firstresult. Call
    ``register(name, parser_class)`` with a subclass of ``llmserve.parsers.base.ToolParser``;
    ``--tool-call-parser NAME`` selects one, built per response choice as
    ``parser_class(tokenizer, tools=request_tools)``. ``--tool-parser-plugin PATH`` adds a file's
    parsers. Returns nothing.
    """


@hookspec
def llmserve_reasoning_parsers(register: Callable[..., None]) -> None:
    """Register reasoning parsers.

    Called once per plugin manager, at start. Not firstresult. Call
    ``register(name, parser_class)`` with a subclass of ``llmserve.parsers.base.ReasoningParser``;
    ``--reasoning-parser NAME`` selects one, built per response choice as
    ``parser_class(tokenizer, chat_template_kwargs=...)``. Returns nothing.
    """


@hookspec
def llmserve_logits_processors(register: Callable[..., None]) -> None:
    """Register logits processors that ``--logits-processors NAME,...`` can enable.

    Called once per plugin manager, at start. Not firstresult. Call ``register(name, cls)`` with
    ``cls`` a subclass of ``llmserve.engine.constraints.LogitsProcessor`` (the engine makes one per
    request and asks it for token masks each step). Unknown names in ``--logits-processors`` fail
    at start. Returns nothing.
    """


@hookspec
def llmserve_protocols(register: Callable[..., None]) -> None:
    """Register protocol routers (Quart blueprints).

    Called once per plugin manager, at start, before the app is assembled. Not firstresult. Call
    ``register(name, blueprint_factory, capabilities=frozenset())`` where ``blueprint_factory``
    is a ``quart.Blueprint`` or a zero-argument callable returning one, and ``capabilities`` names
    what the routes need from the served models (``"generate"``, ``"embed"``). The app mounts
    a protocol only when every capability it needs is served. Returns nothing.
    """


@hookspec
def llmserve_cli(app: typer.Typer) -> None:
    """Add commands to the ``llmserve`` command line.

    Called once when the CLI is built, before arguments are parsed. Not firstresult. Add
    commands with ``@app.command()`` or sub-apps with ``app.add_typer`` (the built-in ``bench``
    plugin adds ``llmserve bench`` so). Returns nothing.
    """


@hookspec
def llmserve_serve_settings(given: dict[str, Any]) -> dict[str, Any] | None:
    """Settings of ``llmserve serve`` that come from somewhere other than its flags.

    Called once by ``llmserve serve``, before its Config is built, with ``given``: Config field
    name -> the value the command line gave (None where it gave none). Not firstresult: every
    implementation runs, in load order. Return a dict of field name -> value (strings are parsed
    as flag values are), or None. Each value applies only where the command line gave nothing,
    as if it were a flag, so it wins over ``LLMSERVE_*`` variables and defaults; for a field two
    plugins set, the later one wins. Raise ``ConfigError`` to stop with a message (the SageMaker
    pack turns ``SM_LLMSERVE_*`` variables into settings so). An unknown field name fails start-up.
    """


# --- Server lifecycle ----------------------------------------------------------------------------


@hookspec
def llmserve_startup(context: ProtocolContext) -> None:
    """Called once after the models are loaded and before the server accepts requests.

    ``context`` is the server's ``ProtocolContext`` (config, served models, plugins). Not
    firstresult; every implementation runs, in load order. Returns nothing; raise to abort
    start-up.
    """


@hookspec
def llmserve_shutdown(context: ProtocolContext) -> None:
    """Called once when the server stops (SIGINT/SIGTERM or the app shutting down).

    Runs after the server stops accepting requests and before the engines are stopped. Not
    firstresult; every implementation runs, in load order. An exception is logged with the
    plugin's name and does not stop the others. Returns nothing.
    """


def hook_names() -> list[str]:
    """The names of all hook specifications, in file order."""
    return [name for name, value in globals().items() if name.startswith("llmserve_") and callable(value)]


__all__ = ["hookimpl", "hookspec", "hook_names"]
