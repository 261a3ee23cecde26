"""Iterate the tensors of a safetensors model directory (single file or sharded)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmserve.errors import LLMServeError


class WeightsNotFoundError(LLMServeError):
    """A model directory without readable safetensors weights."""

    status = 400
    type = "weights_not_found"


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The weight files of ``model_dir``, in shard order."""
    path = Path(model_dir)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [path / name for name in dict.fromkeys(weight_map.values())]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        what = f"missing shards {', '.join(missing)}" if missing else "no *.safetensors files"
        raise WeightsNotFoundError(f"cannot load weights from {path}: {what}")
    return files


def iter_weights(model_dir: str | Path, framework: str = "pt") -> Iterator[tuple[str, Any]]:
    """Yield (name, tensor) for every tensor in the directory's safetensors files.

    ``framework`` is passed to ``safetensors.safe_open`` ("pt", "numpy", "flax", ...), so other
    backends can read the same files without torch.
    """
    from safetensors import safe_open

    for file in safetensors_files(model_dir):
        with safe_open(str(file), framework=framework) as reader:
            for name in reader.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, reader.get_tensor(name)
