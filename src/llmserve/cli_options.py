"""``llmserve serve``'s options, generated from the Config fields (declared once, in config.py).

Per field: ``--field-name`` (``json_schema_extra["aliases"]`` adds short names such as ``-tp``),
the description as help with the default appended, ``json_schema_extra["panel"]`` as the rich help
panel. bool fields are ``--flag/--no-flag`` when the default is True and a plain ``--flag``
otherwise; list fields are repeatable (each value comma-separated or a JSON list); Literal fields
are choices; ``json_schema_extra["argument"]`` makes a field positional (``MODEL...``) and
``json_schema_extra["shown_default"]`` replaces the default shown in the help. Every
option defaults to None, meaning "not given", so environment variables and defaults apply.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import typer
from pydantic.fields import FieldInfo

from llmserve.config import Config

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether it was a list)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrap(args[0])
    if origin is list:
        return str, True
    return annotation, False


def _default_text(info: FieldInfo, extra: dict[str, Any]) -> str | None:
    if "shown_default" in extra:
        return str(extra["shown_default"])
    if info.default_factory is not None:
        value = info.default_factory()
    else:
        value = info.default
    if value is None or value == [] or isinstance(value, bool):
        return None
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _parameter(name: str, info: FieldInfo) -> inspect.Parameter:
    """The typer parameter for one Config field."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    help_text = info.description or ""
    base, is_list = _unwrap(info.annotation)
    if "argument" in extra:
        default = typer.Argument(None, metavar=str(extra["argument"]), help=help_text, show_default=False)
        return inspect.Parameter(name, _KEYWORD, default=default, annotation=list[str] | None)
    flag = "--" + name.replace("_", "-")
    decls = [flag, *extra.get("aliases", [])]
    shown = _default_text(info, extra)
    if shown is not None:
        help_text = f"{help_text} (default {shown})"
    annotation: Any
    if base is bool:
        annotation = bool | None
        if info.default is True:
            decls[0] = f"{flag}/--no-{flag[2:]}"
            help_text += " (default on)"
    elif is_list:
        annotation = list[str] | None
    elif typing.get_origin(base) is typing.Literal:
        # An Enum rather than Literal: every supported typer version turns it into choices.
        choices = enum.Enum(f"{name}_choices", {str(v): str(v) for v in typing.get_args(base)}, type=str)
        annotation = choices | None
    else:
        annotation = base | None
    default = typer.Option(
        None,
        *decls,
        help=help_text,
        show_default=False,
        rich_help_panel=extra.get("panel"),
        case_sensitive=False,
    )
    return inspect.Parameter(name, _KEYWORD, default=default, annotation=annotation)


def with_config_options(run: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    """A command function whose parameters are Config's fields; it calls ``run(given)`` with the
    values the user gave (None for the rest), ready for ``build_config(**given)``."""
    params = [_parameter(name, info) for name, info in Config.model_fields.items()]
    # Arguments first, so typer lists them before the options.
    params.sort(key=lambda p: not isinstance(p.default, typer.models.ArgumentInfo))

    def command(**values: Any) -> None:
        run({name: value.value if isinstance(value, enum.Enum) else value for name, value in values.items()})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return command
