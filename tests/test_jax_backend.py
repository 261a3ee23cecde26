"""The `jax` and `tpu` backends as users meet them: plugin registration, failing fast without a
TPU, offline generation and HTTP answers equal to the torch CPU backend's (both float32)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest
from conftest import ServerProcess

from llmserve.backends.base import Backend, BackendUnavailable
from llmserve.config import build_config
from llmserve.plugins import load_plugins

pytest.importorskip("jax")

# Small limits keep the warm-up short: decode buckets 1, 2, 4 and prefill tiles 1, 2, 4 (of 32 tokens;
# longer prompts go in chunks).
SMALL = dict(max_num_seqs=4, max_num_batched_tokens=64, kv_cache_space=0.25, max_model_len=1024)
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def test_jax_and_tpu_register_through_the_backend_hook():
    backends = load_plugins().backends()
    for name in ("jax", "tpu"):
        assert backends[name].plugin == "jax"  # the built-in plugin's short name
        assert issubclass(backends[name].obj, Backend)


def test_plugins_load_without_jax_installed():
    blocked = "import sys; sys.modules['jax'] = None; "  # `import jax` now raises ImportError
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked + "sys.argv = ['llmserve', 'plugins']; from llmserve.cli import main; main()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "backend:jax" in listing.stdout and "backend:tpu" in listing.stdout
    check = (
        "from llmserve.plugins import load_plugins; from llmserve.config import build_config\n"
        "load_plugins().backends()['jax'].obj.check_available(build_config(backend='jax'))"
    )
    failed = subprocess.run(
        [sys.executable, "-c", blocked + check], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode != 0
    assert "pip install 'llmserve[jax]'" in failed.stderr


def test_serve_backend_tpu_without_a_tpu_fails_before_loading_a_model(tmp_path):
    missing = str(tmp_path / "no-such-model")
    proc = subprocess.run(
        [sys.executable, "-m", "llmserve", "serve", missing, "--backend", "tpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "no TPU devices found" in out and "--backend jax" in out
    assert "no-such-model" not in out and "Traceback" not in out
    with pytest.raises(BackendUnavailable, match="--backend jax"):
        load_plugins().backends()["tpu"].obj.check_available(build_config(backend="tpu"))


def test_more_tensor_parallel_devices_than_exist_fails_fast():
    jax_backend = load_plugins().backends()["jax"].obj
    with pytest.raises(BackendUnavailable, match="--tensor-parallel-size 64 needs 64 devices"):
        jax_backend.check_available(build_config(backend="jax", tensor_parallel_size=64))


@pytest.fixture(scope="module")
def cpu_llm(smollm2_dir):
    from llmserve import LLM

    return LLM(str(smollm2_dir), backend="cpu", dtype="float32", **SMALL)


@pytest.fixture(scope="module")
def jax_llm(smollm2_dir):
    from llmserve import LLM

    return LLM(str(smollm2_dir), backend="jax", dtype="float32", **SMALL)


def test_offline_greedy_tokens_equal_the_cpu_backend(cpu_llm, jax_llm):
    from llmserve import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=2)
    want = cpu_llm.generate(PROMPTS, params)
    got = jax_llm.generate(PROMPTS, params)
    for w, g in zip(want, got, strict=True):
        assert len(g.outputs[0].token_ids) == 40
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        assert g.outputs[0].text == w.outputs[0].text
        for (wt, walts), (gt, galts) in zip(w.outputs[0].logprobs, g.outputs[0].logprobs, strict=True):
            assert gt.logprob == pytest.approx(wt.logprob, abs=1e-3)
            assert [t.token_id for t in galts] == [t.token_id for t in walts]
    backend = jax_llm.engine.engine.backend
    assert backend.describe().startswith("jax (jax ")
    assert set(backend.runner.warm_keys()) <= set(backend.runner.compiled)


def test_offline_seeded_sampling_is_reproducible(jax_llm):
    from llmserve import SamplingParams

    params = SamplingParams(
        temperature=0.9, top_p=0.95, top_k=40, seed=11, max_tokens=16, n=2, ignore_eos=True
    )
    first = jax_llm.generate(PROMPTS[:1], params)[0]
    again = jax_llm.generate(PROMPTS[:1], params)[0]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert first.outputs[0].token_ids != first.outputs[1].token_ids  # n choices draw differently


def test_http_chat_and_embeddings_equal_the_cpu_backend(cpu_llm, smollm2_dir, minilm_dir):
    from transformers import AutoTokenizer

    from llmserve import SamplingParams
    from llmserve.backends.torch.embedder import TorchEmbedder

    messages = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
    body = {"model": "m", "messages": messages, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    prompt = AutoTokenizer.from_pretrained(smollm2_dir).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    want = cpu_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    proc = ServerProcess("--backend", "jax", "--dtype", "float32", "--served-model-name", "m", *FLAGS)
    try:
        reply = httpx.post(proc.url + "/v1/chat/completions", json=body, timeout=120).json()
        assert reply["usage"]["completion_tokens"] == 32, reply
        texts = ["Paged attention keeps the KV cache in fixed-size blocks.", "hi"]
        emb = httpx.post(
            proc.url + "/v1/embeddings",
            json={"model": "sentence-transformers/all-MiniLM-L6-v2", "input": texts},
            timeout=60,
        ).json()
        got = [d["embedding"] for d in emb["data"]]
    finally:
        assert proc.stop() == 0
    log = proc.output()
    assert "Traceback" not in log
    assert reply["choices"][0]["message"]["content"] == want[0].outputs[0].text
    assert "jax warm-up: 6 step buckets" in log and "backend jax (jax " in log
    embedder = TorchEmbedder(str(minilm_dir))
    tok = embedder_tokens(minilm_dir, texts)
    np.testing.assert_allclose(got, embedder.embed(tok), atol=1e-5)


def embedder_tokens(model_dir, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer(t)["input_ids"] for t in texts]
