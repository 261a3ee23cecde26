"""Recognising CTranslate2 model directories (the format itself is read by the backends)."""

from __future__ import annotations

import json
from pathlib import Path


def is_whisper_dir(path: str | Path) -> bool:
    """A CTranslate2 Whisper directory: model.bin plus a config.json with Whisper's token lists."""
    path = Path(path)
    if not (path / "model.bin").is_file() or not (path / "config.json").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "suppress_ids" in config and "lang_ids" in config
