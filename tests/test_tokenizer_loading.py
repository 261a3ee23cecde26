"""load_tokenizer returns what AutoTokenizer would, for every model the project serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmserve.sources import packs
from llmserve.sources.tokenizer import declared_class, load_tokenizer

TEXT = "Hello <|im_start|> wörld 123 [SEP] <|endoftext|>\n\tdef f(x): return x"


@pytest.mark.parametrize(
    "name, direct",
    [("smollm2", True), ("minilm", True), ("qwen2.5-coder-0.5b", False), ("whisper-tiny.en", False)],
)
def test_the_same_tokenizer_as_auto_tokenizer(name, direct):
    model_dir = packs.ensure_model(name)
    ours, auto = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert (declared_class(model_dir) is not None) == direct  # qwen2 and whisper go through AutoTokenizer
    assert type(ours) is type(auto)
    assert ours(TEXT).input_ids == auto(TEXT).input_ids
    assert ours.all_special_tokens == auto.all_special_tokens
    assert ours.decode(auto(TEXT).input_ids) == auto.decode(auto(TEXT).input_ids)


def test_a_model_type_auto_tokenizer_overrides_is_left_to_it(tmp_path, smollm2_dir):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((smollm2_dir / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    assert declared_class(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert declared_class(tmp_path).__name__ == "TokenizersBackend"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "X", "auto_map": {}}))
    assert declared_class(tmp_path) is None


def test_a_transformers_without_the_rules_leaves_it_to_auto_tokenizer(monkeypatch, smollm2_dir):
    from transformers.models.auto import tokenization_auto

    monkeypatch.delattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS")
    assert declared_class(smollm2_dir) is None
    assert type(load_tokenizer(smollm2_dir)) is type(AutoTokenizer.from_pretrained(smollm2_dir))


INDEX_PROBE = """
import json, sys
from llmserve.sources import transformers_index
if sys.argv[1] == "cached":
    transformers_index.install()
import transformers.utils.import_utils as iu
from transformers import GPT2Tokenizer  # through the lazy table
fn = iu.create_import_structure_from_path
table = iu.define_import_structure(iu.__file__.rsplit("/utils/", 1)[0] + "/models")
print(json.dumps({"wrapped": fn.__module__ == "llmserve.sources.transformers_index", "class": GPT2Tokenizer.__name__,
                  "table": sorted((sorted(k), sorted((m, sorted(v)) for m, v in d.items())) for k, d in table.items())}))
"""


def _probe(mode: str, cache: Path) -> dict:
    env = {**os.environ, "LLMSERVE_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", INDEX_PROBE, mode], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_the_transformers_index_from_the_cache_is_the_one_transformers_builds(tmp_path):
    plain = _probe("plain", tmp_path)
    first = _probe("cached", tmp_path)  # builds the index
    stored = {f: f.stat().st_mtime_ns for f in (tmp_path / "transformers-index").glob("*.pickle")}
    second = _probe("cached", tmp_path)  # reads it
    assert stored and stored == {
        f: f.stat().st_mtime_ns for f in (tmp_path / "transformers-index").glob("*.pickle")
    }
    assert not plain["wrapped"] and first["wrapped"] and second["wrapped"]
    assert plain["table"] == first["table"] == second["table"]
    assert plain["class"] == second["class"] == "GPT2Tokenizer"


def test_a_changed_source_file_gets_a_new_index_key(tmp_path):
    from llmserve.sources import transformers_index

    pkg = tmp_path / "models" / "m"
    pkg.mkdir(parents=True)
    (pkg / "modeling_m.py").write_text("__all__ = ['M']\n")
    before = transformers_index._cache_file(str(tmp_path / "models"))
    os.utime(pkg / "modeling_m.py", ns=(1, 10**18))
    assert transformers_index._cache_file(str(tmp_path / "models")) != before
