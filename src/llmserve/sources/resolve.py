"""Turn what the user typed as MODEL into a local HF-style directory.

MODEL may be a pack alias (``smollm2``), a local HF directory, a ``.gguf`` file (converted once
into the cache), or an HF hub id (from the local HF cache, or downloaded when the hub is reachable).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from llmserve.errors import ModelNotFoundError
from llmserve.sources import packs


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    name: str  # the name clients use unless --served-model-name says otherwise
    path: Path  # HF directory with config.json
    source: str  # "pack" | "local" | "gguf" | "hub"


def resolve_model(
    spec: str | None, default: str = packs.DEFAULT_MODEL, progress: bool = False
) -> ResolvedModel:
    """Resolve MODEL (or the default pack when None) to a directory, fetching packs when missing."""
    spec = spec or default
    pack = packs.find_pack(spec)
    if pack is not None:
        return ResolvedModel(pack.name, packs.ensure_pack(pack, progress=progress), "pack")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model directory {spec} has no config.json")
        return ResolvedModel(spec, path.resolve(), "local")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {spec} does not exist")
        return ResolvedModel(spec, _converted_gguf(path.resolve()), "gguf")
    if path.exists():
        raise ModelNotFoundError(f"{spec} is neither a model directory nor a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ResolvedModel(spec, _from_hub(spec), "hub")
    known = ", ".join(sorted(packs.PACKS))
    raise ModelNotFoundError(
        f"model {spec!r} not found: not a pack alias ({known}), local directory, .gguf file or hub id"
    )


def _converted_gguf(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = packs.cache_dir() / "gguf" / f"{path.stem}-{key}"
    from llmserve.sources.gguf import SOURCE_FILE, convert_gguf_to_hf, record_source

    if not (target / "config.json").exists():
        convert_gguf_to_hf(path, target)
    elif not (target / SOURCE_FILE).exists():  # converted before sources were recorded
        record_source(target, path)
    return target


def _from_hub(repo_id: str) -> Path:
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: try the hub
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the hub could not be "
            f"reached to download it ({type(exc).__name__}); pass a local directory or .gguf file"
        ) from None
