"""A model directory's Hugging Face tokenizer, loaded without AutoTokenizer's config import.

``AutoTokenizer.from_pretrained`` builds the model's config class only to read its model type,
and importing the config classes (transformers' rope and weight-conversion modules, which import
torch.distributed.tensor) takes about 2 s, a quarter of a server's start. Where
tokenizer_config.json names the class and the model type is not one AutoTokenizer treats
specially, that named class is what AutoTokenizer returns, so it is loaded directly; anything
else goes through AutoTokenizer.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from llmserve.sources import transformers_index

GENERIC = ("TokenizersBackend", "PreTrainedTokenizerFast", "PythonBackend")
# AutoTokenizer's own special cases, read from transformers (its 5.x tables)
_AUTO_TABLES = (
    "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS",
    "MODEL_IDS_TO_TOKENIZERS_BACKEND",
    "TOKENIZER_MAPPING_NAMES",
)


def load_tokenizer(model_dir: str | Path, **kwargs: Any):
    """The tokenizer ``AutoTokenizer.from_pretrained(model_dir, **kwargs)`` would return."""
    transformers_index.install()
    cls = declared_class(Path(model_dir))
    if cls is None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir), **kwargs)
    return cls.from_pretrained(str(model_dir), **kwargs)


def declared_class(model_dir: Path) -> type | None:
    """The class tokenizer_config.json names, where AutoTokenizer would take it as it is; else None."""
    try:
        declared = json.loads((model_dir / "tokenizer_config.json").read_text())
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name, model_type = declared.get("tokenizer_class"), config.get("model_type")
    if not isinstance(name, str) or not isinstance(model_type, str) or "auto_map" in declared:
        return None
    if not (model_dir / "tokenizer.json").exists() or name.removesuffix("Fast") == "LlamaTokenizer":
        return None  # AutoTokenizer checks a Llama tokenizer's pre-tokenizer first
    from transformers.models.auto import tokenization_auto as auto

    tables = [getattr(auto, n, None) for n in _AUTO_TABLES]
    if any(t is None for t in tables) or getattr(auto, "TokenizersBackend", None) is None:
        return None  # a transformers without these rules: AutoTokenizer decides
    overridden, by_model_id, mapping = tables
    if model_type in overridden:
        return None
    origin = str(config.get("_name_or_path", "")).lower()
    if any(fnmatch.fnmatch(origin, p) for p in by_model_id):
        return None
    registered = (mapping.get(model_type) or "").removesuffix("Fast")
    if registered in GENERIC or registered == "MistralCommonBackend":
        if registered != name.removesuffix("Fast"):
            return None  # AutoTokenizer picks the generic backend or Mistral's own
    if name in GENERIC:
        return auto.TokenizersBackend
    base = name.removesuffix("Fast")
    found = auto.tokenizer_class_from_name(base) or auto.tokenizer_class_from_name(base + "Fast")
    if found is None or found.__name__ == "PythonBackend":
        return auto.TokenizersBackend
    return found
