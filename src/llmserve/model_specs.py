"""What the user named on the command line, before anything is resolved: the models to serve
(``MODEL`` or ``NAME=MODEL``) and list-valued flags."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model to serve, as the user named it (nothing resolved or loaded yet).

    ``name`` is what clients send (None: the resolved model's own name), ``aliases`` further names
    it answers to. ``kind`` is "embed" for ``--embedding-model``, else "auto" (the architecture
    decides). ``implicit`` marks the default embedding model that is added when none is named:
    the server skips it when another served model already embeds.
    """

    name: str | None
    source: str
    kind: Literal["auto", "embed"] = "auto"
    aliases: tuple[str, ...] = ()
    implicit: bool = False


def parse_model_entry(entry: str, kind: Literal["auto", "embed"] = "auto") -> ModelSpec:
    """``MODEL`` or ``NAME=MODEL``.

    The entry is split at its first ``=`` only when the part before it contains no ``/`` (hub ids
    ``org/name`` and paths do) and the whole entry is not an existing path; otherwise all of it
    is the model. ValueError when a split leaves an empty name or model.
    """
    entry = entry.strip()
    name, sep, source = entry.partition("=")
    if not sep or "/" in name or os.sep in name or Path(entry).expanduser().exists():
        return ModelSpec(None, entry, kind)
    if not name.strip() or not source.strip():
        raise ValueError(f"{entry!r}: NAME=MODEL needs a name and a model")
    return ModelSpec(name.strip(), source.strip(), kind)


def split_list(value: Any) -> list[str] | None:
    """Repeated values, each comma-separated or a JSON list (vLLM's --allowed-origins) -> one list."""
    if value is None:
        return None
    out: list[str] = []
    for item in [value] if isinstance(value, str) else value:
        if not isinstance(item, str):
            out.append(str(item))
            continue
        item = item.strip()
        if item.startswith("["):
            try:
                out.extend(str(v) for v in json.loads(item))
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"not a JSON list: {item}") from None
            continue
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return out
