"""What each registration hook accepts: one check per kind of registered object.

A check gets (plugin, name, object, keyword arguments given to ``register``), raises a
PluginError naming the plugin when the object is of the wrong kind, and returns the extras to keep.
Base classes are imported only here, when a registry is built, so loading plugins stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from llmserve.errors import PluginError

Check = Callable[[str, str, Any, dict[str, Any]], dict[str, Any]]


def _fail(plugin: str, kind: str, name: str, why: str) -> PluginError:
    return PluginError(f"plugin {plugin!r} registered {kind} {name!r}: {why}")


def _no_extras(
    plugin: str, kind: str, name: str, extra: dict[str, Any], allowed: tuple[str, ...] = ()
) -> None:
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise _fail(plugin, kind, name, f"unknown keyword(s) {', '.join(unknown)} (accepted: {accepted})")


def _subclass(plugin: str, kind: str, name: str, obj: Any, base: type, where: str) -> None:
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise _fail(plugin, kind, name, f"{obj!r} is not a subclass of {where}")


def check_backend(plugin: str, name: str, obj: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """A Backend subclass; optional ``auto_priority`` (int, higher wins) for ``--backend auto``."""
    from llmserve.backends.base import Backend

    _no_extras(plugin, "backend", name, extra, ("auto_priority",))
    _subclass(plugin, "backend", name, obj, Backend, "llmserve.backends.base.Backend")
    priority = extra.get("auto_priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise _fail(plugin, "backend", name, f"auto_priority must be an int or None, got {priority!r}")
    return {"auto_priority": priority}


def check_tool_parser(plugin: str, name: str, obj: Any, extra: dict[str, Any]) -> dict[str, Any]:
    from llmserve.parsers.base import ToolParser

    _no_extras(plugin, "tool parser", name, extra)
    _subclass(plugin, "tool parser", name, obj, ToolParser, "llmserve.parsers.base.ToolParser")
    return {}


def check_reasoning_parser(plugin: str, name: str, obj: Any, extra: dict[str, Any]) -> dict[str, Any]:
    from llmserve.parsers.base import ReasoningParser

    _no_extras(plugin, "reasoning parser", name, extra)
    _subclass(plugin, "reasoning parser", name, obj, ReasoningParser, "llmserve.parsers.base.ReasoningParser")
    return {}


def check_logits_processor(plugin: str, name: str, obj: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """A class; a subclass of the engine's LogitsProcessor where this build has that interface."""
    _no_extras(plugin, "logits processor", name, extra)
    if not isinstance(obj, type):
        raise _fail(plugin, "logits processor", name, f"{obj!r} is not a class")
    module = "llmserve.engine.constraints"
    base = (
        getattr(importlib.import_module(module), "LogitsProcessor", None)
        if importlib.util.find_spec(module)
        else None
    )
    if base is not None:
        _subclass(plugin, "logits processor", name, obj, base, f"{module}.LogitsProcessor")
    return {}


def check_protocol(plugin: str, name: str, obj: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """A quart Blueprint or a zero-argument factory; ``capabilities`` a set of strings."""
    from quart import Blueprint

    _no_extras(plugin, "protocol", name, extra, ("capabilities",))
    if not (isinstance(obj, Blueprint) or callable(obj)):
        raise _fail(
            plugin, "protocol", name, f"{obj!r} is neither a quart.Blueprint nor a callable returning one"
        )
    caps = extra.get("capabilities", frozenset())
    if isinstance(caps, str) or not all(isinstance(cap, str) for cap in caps):
        raise _fail(plugin, "protocol", name, f"capabilities must be a set of names, got {caps!r}")
    return {"capabilities": frozenset(caps)}


KINDS: dict[str, Check] = {
    "backend": check_backend,
    "tool parser": check_tool_parser,
    "reasoning parser": check_reasoning_parser,
    "logits processor": check_logits_processor,
    "protocol": check_protocol,
}
