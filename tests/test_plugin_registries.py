"""What plugins register: kinds checked at start, --backend auto by priority, model architectures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from quart import Blueprint

from llmserve import hookimpl
from llmserve.arch.registry import UnsupportedModelError
from llmserve.backends.base import Backend, BackendUnavailable
from llmserve.config import build_config
from llmserve.errors import ConfigError, PluginError
from llmserve.parsers.base import ReasoningParser, ToolParser
from llmserve.plugins import Plugins
from llmserve.server import check_config, resolve_backend_name


class _Backend(Backend):
    def load_model(self, model_dir):
        raise NotImplementedError

    def kv_cache_budget_bytes(self, info):
        return 0

    def allocate_kv_cache(self, num_blocks, block_size):
        pass

    def execute(self, batch):
        return []


class _Registers:
    """A plugin whose registration hook ``hook`` calls ``register(*args, **kwargs)``."""

    def __init__(self, hook: str, *args, **kwargs) -> None:
        def impl(register):
            register(*args, **kwargs)

        setattr(self, hook, hookimpl(impl))


def _load(*plugins: tuple[str, object]) -> Plugins:
    return Plugins({"LLMSERVE_PLUGINS": ",".join(name for name, _ in plugins)}).load(plugins)


WRONG_KINDS = [
    ("llmserve_backends", ("b", object), {}, "not a subclass of llmserve.backends.base.Backend"),
    ("llmserve_backends", ("b", _Backend), {"auto_priority": "high"}, "auto_priority must be an int"),
    ("llmserve_backends", ("b", _Backend), {"priority": 3}, "unknown keyword(s) priority"),
    (
        "llmserve_tool_parsers",
        ("t", ReasoningParser),
        {},
        "not a subclass of llmserve.parsers.base.ToolParser",
    ),
    ("llmserve_reasoning_parsers", ("r", ToolParser), {}, "ReasoningParser"),
    ("llmserve_logits_processors", ("l", object()), {}, "is not a class"),
    ("llmserve_protocols", ("p", 42), {}, "neither a quart.Blueprint nor a callable"),
    ("llmserve_protocols", ("p", Blueprint("p", __name__)), {"capabilities": "generate"}, "set of names"),
    ("llmserve_model_architectures", ("XForCausalLM", ""), {}, "without a family"),
    ("llmserve_model_architectures", ("XForCausalLM", "x"), {"torch": "not a path!"}, "'module:Class'"),
]


@pytest.mark.parametrize(("hook", "args", "kwargs", "message"), WRONG_KINDS)
def test_wrong_kind_is_a_plugin_error_naming_the_plugin(hook, args, kwargs, message):
    plugins = _load(("bad-plugin", _Registers(hook, *args, **kwargs)))
    with pytest.raises(PluginError) as err:
        check_config(build_config(backend="b"), plugins)
    assert "'bad-plugin'" in err.value.message and message in err.value.message


def test_a_plugin_raising_in_a_registration_hook_is_named():
    class Broken:
        @hookimpl
        def llmserve_tool_parsers(self, register):
            raise KeyError("oops")

    with pytest.raises(PluginError, match="plugin 'broken' failed in llmserve_tool_parsers: KeyError"):
        _load(("broken", Broken())).tool_parsers()


def test_builtins_register_before_other_plugins():
    """A third-party plugin reusing a built-in's name is the one reported as the duplicate."""
    plugins = Plugins({"LLMSERVE_PLUGINS": "torch,aaa"}).load(
        [("aaa", _Registers("llmserve_backends", "cpu", _Backend))]
    )
    with pytest.raises(PluginError, match="registered by plugin 'torch' and by plugin 'aaa'"):
        plugins.backends()


# --- --backend auto ------------------------------------------------------------------------------


def _probe(available: bool) -> type[Backend]:
    class Probe(_Backend):
        calls = 0

        @classmethod
        def check_available(cls, config):
            cls.calls += 1
            if not available:
                raise BackendUnavailable("not here")

    return Probe


def test_auto_picks_the_available_backend_with_the_highest_priority():
    config = build_config()
    builtins = Plugins({"LLMSERVE_PLUGINS": "torch"}).load()
    assert resolve_backend_name(config, builtins) == "cpu"  # no GPU on the test machine
    fast, missing = _probe(True), _probe(False)
    plugins = Plugins({"LLMSERVE_PLUGINS": "torch,third"}).load(
        [("third", _Registers("llmserve_backends", "fast", fast, auto_priority=100))]
    )
    assert resolve_backend_name(config, plugins) == "fast" and fast.calls == 1
    plugins = Plugins({"LLMSERVE_PLUGINS": "torch,third"}).load(
        [("third", _Registers("llmserve_backends", "missing", missing, auto_priority=100))]
    )
    assert resolve_backend_name(config, plugins) == "cpu" and missing.calls == 1
    # Not opted in (no auto_priority): never asked.
    quiet = _probe(True)
    plugins = Plugins({"LLMSERVE_PLUGINS": "torch,third"}).load(
        [("third", _Registers("llmserve_backends", "q", quiet))]
    )
    assert resolve_backend_name(config, plugins) == "cpu" and quiet.calls == 0
    assert resolve_backend_name(build_config(backend="q"), plugins) == "q"


def test_auto_with_nothing_available_says_so():
    plugins = _load(("third", _Registers("llmserve_backends", "missing", _probe(False), auto_priority=1)))
    with pytest.raises(ConfigError, match="--backend auto: no backend is available here .tried missing"):
        check_config(build_config(), plugins)


# --- model architectures ------------------------------------------------------------------------


def test_architectures_merge_per_framework_and_reject_conflicts():
    from llmserve.backends.torch.llama import LlamaForCausalLM

    plugins = Plugins({"LLMSERVE_PLUGINS": "torch,jax"}).load()
    archs = plugins.architectures()
    assert archs.implementation("Qwen2ForCausalLM", "torch") is LlamaForCausalLM
    assert archs.get("Qwen2ForCausalLM").plugins == {"": "torch", "torch": "torch", "jax": "jax"}
    assert archs.is_encoder("BertModel") and not archs.is_encoder("LlamaForCausalLM")
    with pytest.raises(UnsupportedModelError, match="no mlx implementation .implemented in: jax, torch"):
        archs.implementation("LlamaForCausalLM", "mlx")
    with pytest.raises(UnsupportedModelError, match="'GPT2LMHeadModel' is not supported; supported"):
        archs.get("GPT2LMHeadModel")

    other_family = _Registers(
        "llmserve_model_architectures", "LlamaForCausalLM", "gpt", torch=LlamaForCausalLM
    )
    with pytest.raises(
        PluginError, match="plugin 'torch' registered family 'llama'.*plugin 'x' family 'gpt'"
    ):
        Plugins({"LLMSERVE_PLUGINS": "torch,x"}).load([("x", other_family)]).architectures()
    same_slot = _Registers(
        "llmserve_model_architectures", "LlamaForCausalLM", "llama", torch=LlamaForCausalLM
    )
    with pytest.raises(
        PluginError, match="duplicate torch implementation .* plugin 'torch' and by plugin 'x'"
    ):
        Plugins({"LLMSERVE_PLUGINS": "torch,x"}).load([("x", same_slot)]).architectures()


class _DemoFamily:
    """A plugin adding an architecture name to the torch backend (here: served by the Llama class)."""

    @hookimpl
    def llmserve_model_architectures(self, register):
        register("DemoLlamaForCausalLM", "demo-llama", torch="llmserve.backends.torch.llama:LlamaForCausalLM")


def test_a_plugin_adds_a_model_family_to_the_torch_backend(tmp_path, monkeypatch):
    import torch
    import transformers

    from llmserve import plugins as plugins_module
    from llmserve.backends.torch.runner import TorchModelRunner

    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=128, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "architectures": ["DemoLlamaForCausalLM"]}))

    with pytest.raises(UnsupportedModelError, match="DemoLlamaForCausalLM"):
        TorchModelRunner(str(tmp_path), "float32", "cpu").load()
    # The backends read the process's plugins (load_plugins()); this test swaps them in.
    with_demo = Plugins({"LLMSERVE_PLUGINS": "torch,demo-family"}).load([("demo-family", _DemoFamily())])
    monkeypatch.setattr(plugins_module, "_loaded", with_demo)
    info = TorchModelRunner(str(tmp_path), "float32", "cpu").load()
    assert info.architecture == "DemoLlamaForCausalLM" and info.num_layers == 1 and info.vocab_size == 128


def test_bench_comes_from_the_bench_plugin():
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        import os

        return subprocess.run(
            [sys.executable, "-m", "llmserve", *args], capture_output=True, text=True, timeout=120,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )  # fmt: skip

    assert "throughput" in run("bench", "--help").stdout
    without = run("bench", "--help", env={"LLMSERVE_DISABLE_PLUGINS": "bench"})
    assert without.returncode == 2 and "No such command 'bench'" in without.stderr
