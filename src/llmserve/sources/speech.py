"""Recognising Whisper model directories: CTranslate2's layout and transformers' (the formats
themselves are read by the backends)."""

from __future__ import annotations

import json
from pathlib import Path


def _config(path: Path) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def is_ct2_whisper_dir(path: str | Path) -> bool:
    """CTranslate2: model.bin plus a config.json with Whisper's token lists."""
    path = Path(path)
    config = _config(path)
    return (path / "model.bin").is_file() and "suppress_ids" in config and "lang_ids" in config


def is_hf_whisper_dir(path: str | Path) -> bool:
    """transformers: config.json with ``model_type`` whisper, and safetensors weights."""
    path = Path(path)
    return _config(path).get("model_type") == "whisper" and any(path.glob("*.safetensors"))


def is_whisper_dir(path: str | Path) -> bool:
    """A Whisper directory in either layout."""
    return is_ct2_whisper_dir(path) or is_hf_whisper_dir(path)
