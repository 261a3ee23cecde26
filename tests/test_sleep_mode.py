"""Sleep mode: the engine frees the KV cache (level 1) and the weights (level 2) and wakes up to
the same greedy tokens. Torch CPU on the real SmolLM2; JAX on a tiny random Llama."""

from __future__ import annotations

import gc
import weakref

import pytest

from llmserve.backends.base import Backend
from llmserve.backends.torch.backend import CpuBackend
from llmserve.config import build_config
from llmserve.engine.engine import LLMEngine
from llmserve.engine.sampling import SamplingParams
from llmserve.errors import InvalidRequestError, OverloadedError, UnsupportedError

PROMPTS = [[1, 504, 345, 314, 260, 28, 7, 99, 400, 12, 5, 8, 3, 70, 71, 72, 73, 74], [9, 8, 7]]


def greedy(engine: LLMEngine) -> list[list[int]]:
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, params)
    out: list[list[int]] = [[] for _ in PROMPTS]
    while engine.has_work():
        for event in engine.step():
            if event.token_id is not None:
                out[int(event.request_id[1:])].append(event.token_id)
    return out


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    config = build_config(
        model=str(smollm2_dir), backend="cpu", dtype="float32", max_model_len=128, block_size=16,
        kv_cache_space=0.01,
    )  # fmt: skip
    return LLMEngine(CpuBackend(config), str(smollm2_dir), config)


def test_torch_sleep_levels_free_memory_and_wake_to_the_same_tokens(engine):
    runner = engine.backend.runner
    before = greedy(engine)
    assert engine.blocks.num_cached_blocks > 0  # the 18-token prompt filled a block
    num_blocks, cache = runner.kv_caches[0].shape[0], weakref.ref(runner.kv_caches[0])

    engine.sleep(1)
    gc.collect()
    assert engine.is_sleeping and runner.kv_caches == [] and cache() is None
    assert runner.model is not None  # level 1 keeps the weights
    assert engine.blocks.num_cached_blocks == 0  # the prefix cache went with the KV contents
    with pytest.raises(OverloadedError, match="sleeping"):
        engine.add_request("late", PROMPTS[0], SamplingParams())
    assert engine.step() == []
    engine.sleep(1)  # again: nothing to do
    engine.wake_up()
    assert not engine.is_sleeping and len(runner.kv_caches) == runner.cfg.num_layers
    assert runner.kv_caches[0].shape[0] == num_blocks
    assert greedy(engine) == before

    weight = weakref.ref(next(runner.model.parameters()))
    engine.sleep(2)
    gc.collect()
    assert runner.model is None and runner.kv_caches == [] and weight() is None
    engine.wake_up()
    assert greedy(engine) == before
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks == num_blocks


def test_sleep_is_refused_while_requests_run(engine):
    engine.add_request("busy", PROMPTS[0], SamplingParams(max_tokens=4, temperature=0.0))
    engine.step()
    with pytest.raises(InvalidRequestError, match="1 running"):
        engine.sleep(1)
    with pytest.raises(InvalidRequestError, match="level"):
        engine.sleep(3)
    engine.abort("busy")
    engine.sleep(1)
    engine.wake_up()
    engine.wake_up()  # awake already: nothing to do


def test_backends_without_sleep_mode_say_so():
    class Minimal(Backend):
        name = "minimal"
        load_model = kv_cache_budget_bytes = allocate_kv_cache = execute = None

    backend = Minimal(build_config())
    with pytest.raises(UnsupportedError, match="sleep mode is not supported by the 'minimal' backend"):
        backend.sleep(1)
    with pytest.raises(UnsupportedError, match="not supported"):
        backend.wake_up()


def test_jax_sleep_levels_wake_to_the_same_tokens(tmp_path, smollm2_dir):
    pytest.importorskip("jax")
    from test_jax_tp import tiny_model

    from llmserve.backends.jax.backend import JaxBackend

    model_dir = tiny_model(tmp_path / "tiny", smollm2_dir, num_attention_heads=4, num_key_value_heads=2)
    config = build_config(
        model=model_dir, backend="jax", dtype="float32", max_num_seqs=4, max_num_batched_tokens=64,
        kv_cache_space=0.01, max_model_len=128, enforce_eager=True,
    )  # fmt: skip
    engine = LLMEngine(JaxBackend(config), model_dir, config)
    runner = engine.backend.runner
    before = greedy(engine)
    compiled = dict(runner.compiled)
    for level in (1, 2):
        engine.sleep(level)
        assert runner.caches == ()
        assert (runner.params is None) is (level == 2)
        engine.wake_up()
        assert greedy(engine) == before
    assert runner.compiled == compiled  # same shapes: nothing recompiled
