"""The plugin core: discovery through entry points, registries, errors, and hook coverage."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from quart import Blueprint

from llmserve import hookimpl, hookspecs
from llmserve.backends.base import Backend
from llmserve.config import build_config
from llmserve.errors import PluginError
from llmserve.plugins import DEFAULT_PLUGINS, Plugins, load_plugins
from llmserve.server.app import create_app

DEMO_MODULE = '''
"""A third-party llmserve plugin used by the test suite."""
import os

from quart import Blueprint, jsonify

from llmserve import hookimpl
from llmserve.backends.base import Backend
from llmserve.parsers.base import ReasoningParser, ToolParser

CALLS = os.environ.get("DEMO_CALLS_FILE")


def _called(name):
    if CALLS:
        with open(CALLS, "a") as fh:
            fh.write(name + "\\n")


class DemoBackend(Backend):
    name = "demo"

    def load_model(self, model_dir):
        raise NotImplementedError

    def kv_cache_budget_bytes(self, info):
        return 0

    def allocate_kv_cache(self, num_blocks, block_size):
        pass

    def execute(self, batch):
        return []


class DemoToolParser(ToolParser):
    pass


class DemoReasoningParser(ReasoningParser):
    pass


try:  # the engine's interface, where this build has it
    from llmserve.engine.constraints import LogitsProcessor
except ImportError:
    LogitsProcessor = object


class DemoLogitsProcessor(LogitsProcessor):
    pass


def make_blueprint():
    bp = Blueprint("demo", __name__)

    @bp.get("/demo/ping")
    async def ping():
        return jsonify({"demo": "pong"})

    return bp


@hookimpl
def llmserve_backends(register):
    _called("llmserve_backends")
    register("demo", DemoBackend)


@hookimpl
def llmserve_tool_parsers(register):
    _called("llmserve_tool_parsers")
    register("demo", DemoToolParser)


@hookimpl
def llmserve_reasoning_parsers(register):
    _called("llmserve_reasoning_parsers")
    register("demo", DemoReasoningParser)


@hookimpl
def llmserve_logits_processors(register):
    _called("llmserve_logits_processors")
    register("demo", DemoLogitsProcessor)


@hookimpl
def llmserve_model_architectures(register):
    _called("llmserve_model_architectures")
    register("DemoForCausalLM", "llama", torch="llmserve.backends.torch.llama:LlamaForCausalLM")


@hookimpl
def llmserve_protocols(register):
    _called("llmserve_protocols")
    register("demo", make_blueprint)


@hookimpl
def llmserve_cli(app):
    _called("llmserve_cli")

    @app.command("demo-hello")
    def hello():
        print("hello from demo")


@hookimpl
def llmserve_serve_settings(given):
    _called("llmserve_serve_settings")
    return {"max_num_seqs": "7"}


@hookimpl
def llmserve_startup(context):
    _called("llmserve_startup")


@hookimpl
def llmserve_shutdown(context):
    _called("llmserve_shutdown")
'''

DEMO_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "llmserve-demo-plugin"
version = "0.3.1"

[project.entry-points.llmserve]
demo = "llmserve_demo_plugin"
"""

CHECK_SCRIPT = """
import asyncio, json
from llmserve.server.app import create_app
from llmserve.config import build_config
from llmserve.server import check_config

config = build_config(backend="demo", tool_call_parser="demo", reasoning_parser="demo",
                      enable_auto_tool_choice=True, logits_processors=["demo"])
plugins = check_config(config)
from llmserve.arch.registry import torch_model_class
from llmserve.backends.torch.llama import LlamaForCausalLM
assert torch_model_class("DemoForCausalLM") is LlamaForCausalLM
app = create_app(config, plugins=plugins)

async def main():
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/demo/ping")
        return response.status_code, await response.get_json()

status, body = asyncio.run(main())
settings = plugins.serve_settings({"max_num_seqs": None})
print(json.dumps({"status": status, "body": body, "protocols": sorted(plugins.protocols()),
                  "backends": sorted(plugins.backends()), "settings": settings}))
"""


@pytest.fixture(scope="module")
def demo_plugin(tmp_path_factory):
    """Build and pip-install a throwaway plugin distribution; uninstall afterwards."""
    root = tmp_path_factory.mktemp("demo-plugin")
    (root / "pyproject.toml").write_text(DEMO_PYPROJECT)
    (root / "llmserve_demo_plugin.py").write_text(DEMO_MODULE)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run([*pip, "uninstall", "-q", "-y", "llmserve-demo-plugin"], check=True)


def test_installed_plugin_is_discovered(demo_plugin, tmp_path):
    calls = tmp_path / "calls.txt"
    env = {"DEMO_CALLS_FILE": str(calls), "PATH": ""}
    listed = subprocess.run(
        [sys.executable, "-m", "llmserve", "plugins", "--json"], capture_output=True, text=True, check=True,
        env={**_env(), **env},
    )  # fmt: skip
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    demo = rows["demo"]
    assert demo["distribution"] == "llmserve-demo-plugin" and demo["version"] == "0.3.1"
    assert set(demo["registered"]) == {
        "backend:demo", "tool parser:demo", "reasoning parser:demo", "protocol:demo",
        "logits processor:demo", "architecture:DemoForCausalLM",
    }  # fmt: skip
    # Built-ins are listed the same way, by short name, in DEFAULT_PLUGINS order and before entry points.
    assert list(rows)[: len(DEFAULT_PLUGINS)] == [name for name, _ in DEFAULT_PLUGINS]
    assert rows["torch"]["module"] == "llmserve.backends.torch.plugin"
    assert {"backend:cpu", "backend:cuda", "architecture:LlamaForCausalLM"} <= set(
        rows["torch"]["registered"]
    )

    checked = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT], capture_output=True, text=True, env={**_env(), **env}
    )
    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["body"] == {"demo": "pong"}
    assert "demo" in result["protocols"] and "demo" in result["backends"]
    assert result["settings"] == {"max_num_seqs": "7"}

    hello = subprocess.run(
        [sys.executable, "-m", "llmserve", "demo-hello"],
        capture_output=True,
        text=True,
        env={**_env(), **env},
    )
    assert hello.returncode == 0 and "hello from demo" in hello.stdout

    # Every hook in hookspecs.py was called on the third-party plugin at least once.
    called = set(calls.read_text().split())
    assert called >= set(hookspecs.hook_names()) - {"llmserve_startup", "llmserve_shutdown"}


def test_blocklist_and_allowlist(demo_plugin):
    blocked = Plugins({"LLMSERVE_DISABLE_PLUGINS": "demo"}).load()
    assert "demo" not in blocked.backends() and "cpu" in blocked.backends()
    only = Plugins({"LLMSERVE_PLUGINS": "demo"}).load()
    assert set(only.backends()) == {"demo"}
    assert not {name for name, _ in DEFAULT_PLUGINS} & set(only.info)
    by_module = Plugins({"LLMSERVE_DISABLE_PLUGINS": "llmserve_demo_plugin"}).load()
    assert "demo" not in by_module.info


@pytest.mark.parametrize("spelling", ["jax", "llmserve.backends.jax.plugin"])
def test_builtins_are_chosen_by_short_name_or_module(spelling):
    without = Plugins({"LLMSERVE_DISABLE_PLUGINS": spelling}).load()
    assert "jax" not in without.info and {"jax", "tpu"}.isdisjoint(without.backends())
    assert {"cpu", "cuda"} <= set(without.backends())
    only = Plugins({"LLMSERVE_PLUGINS": f"{spelling},llmserve.protocols.openai.plugin"}).load()
    assert list(only.info) == ["jax", "openai"]
    assert set(only.backends()) == {"jax", "tpu"}


def test_plugins_load_once_per_process():
    assert load_plugins() is load_plugins()
    fresh = load_plugins(fresh=True)
    assert fresh is not load_plugins() and set(fresh.info) >= {"torch", "jax", "openai", "vllm", "bench"}


class _SomeBackend(Backend):
    def load_model(self, model_dir):
        raise NotImplementedError

    def kv_cache_budget_bytes(self, info):
        return 0

    def allocate_kv_cache(self, num_blocks, block_size):
        pass

    def execute(self, batch):
        return []


class _BackendA:
    @staticmethod
    @hookimpl
    def llmserve_backends(register):
        register("shared-name", _SomeBackend)


class _BackendB:
    @staticmethod
    @hookimpl
    def llmserve_backends(register):
        register("shared-name", _SomeBackend)


def test_duplicate_name_names_both_plugins():
    plugins = Plugins({"LLMSERVE_PLUGINS": "first,second"}).load(
        [("first", _BackendA()), ("second", _BackendB())]
    )
    with pytest.raises(PluginError) as err:
        plugins.backends()
    assert "'first'" in err.value.message and "'second'" in err.value.message
    assert "shared-name" in err.value.message


class _Settings:
    def __init__(self, settings):
        self.settings = settings

    @hookimpl
    def llmserve_serve_settings(self, given):
        return self.settings


def test_serve_settings_fill_only_what_the_command_line_left_out():
    plugins = Plugins({"LLMSERVE_PLUGINS": "a,b"}).load(
        [("a", _Settings({"port": "8080", "seed": 1})), ("b", _Settings({"seed": 2}))]
    )
    assert plugins.serve_settings({"port": None, "seed": None}) == {"port": "8080", "seed": 2}
    assert plugins.serve_settings({"port": 9000, "seed": None}) == {"seed": 2}
    config = build_config(**{"port": None, **plugins.serve_settings({"port": None})})
    assert config.port == 8080 and config.seed == 2


def test_serve_settings_with_an_unknown_field_fail():
    plugins = Plugins({"LLMSERVE_PLUGINS": "bad"}).load([("bad", _Settings({"no_such_flag": 1}))])
    with pytest.raises(PluginError, match="'bad'.*no_such_flag"):
        plugins.serve_settings({})


class _Misspelled:
    @staticmethod
    @hookimpl
    def llmserve_backend(register):  # missing the final "s"
        pass


def test_misspelled_hook_is_caught():
    with pytest.raises(PluginError, match="llmserve_backend"):
        Plugins({"LLMSERVE_PLUGINS": "typo"}).load([("typo", _Misspelled())])


def test_every_hook_is_documented():
    names = hookspecs.hook_names()
    assert {
        "llmserve_backends", "llmserve_protocols", "llmserve_startup", "llmserve_shutdown",
        "llmserve_model_architectures", "llmserve_logits_processors", "llmserve_cli",
    } <= set(names)  # fmt: skip
    for name in names:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 80, f"{name} needs a docstring saying when it is called and what it returns"
        assert "called" in doc.lower() and "firstresult" in doc.lower(), name


class _Lifecycle:
    def __init__(self, events: list[str] | None = None) -> None:
        self.events = [] if events is None else events

    @hookimpl
    def llmserve_protocols(self, register):
        bp = Blueprint("lifecycle", __name__)

        @bp.get("/lifecycle")
        async def route():
            return {"ok": True}

        register("lifecycle", bp, capabilities=frozenset())
        register("needs-embed", lambda: Blueprint("never", __name__), capabilities=frozenset({"embed"}))

    @hookimpl
    def llmserve_startup(self, context):
        self.events.append("startup")

    @hookimpl
    def llmserve_shutdown(self, context):
        self.events.append("shutdown")
        raise RuntimeError("a failing shutdown hook must not stop the others")


class _After:
    """Loaded after _Lifecycle: its hooks run after it, even after _Lifecycle's shutdown fails."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    @hookimpl
    def llmserve_startup(self, context):
        self.events.append("after-startup")

    @hookimpl
    def llmserve_shutdown(self, context):
        self.events.append("after-shutdown")


async def test_startup_shutdown_and_capabilities():
    plugin = _Lifecycle()
    plugins = Plugins({"LLMSERVE_PLUGINS": "lifecycle"}).load([("lifecycle", plugin)])
    app = create_app(build_config(), plugins=plugins)
    assert app.extensions["llmserve"].protocols == ["lifecycle"]  # needs-embed not mounted
    async with app.test_app() as test_app:
        assert plugin.events == ["startup"]
        response = await test_app.test_client().get("/lifecycle")
        assert response.status_code == 200
        missing = await test_app.test_client().get("/nothing-here")
        body = await missing.get_json()
        assert missing.status_code == 404 and "message" in body["error"]
    assert plugin.events == ["startup", "shutdown"]


def test_hooks_run_in_load_order_and_a_failing_shutdown_stops_nothing():
    events: list[str] = []
    logged: list[str] = []
    plugins = Plugins({"LLMSERVE_PLUGINS": "zz-lifecycle,aa-after"}).load(
        [("zz-lifecycle", _Lifecycle(events)), ("aa-after", _After(events))]
    )
    plugins.startup(context=None)
    plugins.shutdown(context=None, log=logged.append)
    # Load order (the order passed), not pluggy's last-registered-first nor the names' order.
    assert events == ["startup", "after-startup", "shutdown", "after-shutdown"]
    assert len(logged) == 1 and "'zz-lifecycle'" in logged[0] and "must not stop" in logged[0]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("LLMSERVE_")}
