"""The command line and configuration: flags, env vars, fail-fast errors, model resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmserve import hookimpl
from llmserve.config import ModelSpec, build_config, parse_model_entry
from llmserve.errors import ConfigError, ModelNotFoundError
from llmserve.sources.resolve import resolve_model

SERVE_FLAGS = (
    "--host --port --api-key --served-model-name --dtype --max-model-len --max-num-seqs "
    "--max-num-batched-tokens --block-size --gpu-memory-utilization --kv-cache-space --seed "
    "--tensor-parallel-size --chat-template --chat-template-content-format --generation-config "
    "--enable-prefix-caching --enable-auto-tool-choice --tool-call-parser --reasoning-parser "
    "--allowed-origins --enable-request-id-headers --embedding-model --backend --log-level "
    "--enforce-eager --no-enable-prefix-caching -tp --max-request-body-bytes --max-waiting-requests "
    "--trust-request-chat-template --scheduling-policy --enable-sleep-mode --logits-processors --engine-process"
).split()


def llmserve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "llmserve", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def test_serve_help_explains_every_flag():
    result = llmserve("serve", "--help")
    assert result.returncode == 0
    for flag in SERVE_FLAGS:
        assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port"),
        (["--dtype", "float8"], "--dtype"),
        (["--block-size", "12"], "power of two"),
        (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
        (["--max-num-seqs", "0"], "--max-num-seqs"),
        (["--backend", "nope"], "unknown backend 'nope'"),
        (["--backend", "cuda"], "no CUDA device found; use --backend cpu"),
        (["--tool-call-parser", "nope"], "unknown parser 'nope'"),
        (["--enable-auto-tool-choice"], "requires --tool-call-parser"),
        (["--chat-template", "missing.jinja"], "--chat-template"),
        (["--chat-template-content-format", "xml"], "--chat-template-content-format"),
        (["--generation-config", "/no/such/dir"], "--generation-config"),
    ],
)
def test_invalid_values_fail_fast(args, message):
    result = llmserve("serve", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_env_vars_and_flags():
    config = build_config(port=9001)
    assert config.port == 9001
    import os

    os.environ["LLMSERVE_MAX_NUM_SEQS"] = "7"
    try:
        assert build_config().max_num_seqs == 7
        assert build_config(max_num_seqs=3).max_num_seqs == 3  # flags win
    finally:
        del os.environ["LLMSERVE_MAX_NUM_SEQS"]
    with pytest.raises(ConfigError, match="--max-model-len"):
        build_config(max_model_len=-1)


def test_env_var_errors_name_the_flag():
    result = llmserve("serve", env={"LLMSERVE_PORT": "not-a-port"})
    assert result.returncode != 0 and "--port" in result.stderr


def test_resolve_local_dir_and_pack(smollm2_dir, tmp_path):
    resolved = resolve_model(str(smollm2_dir))
    assert resolved.path == smollm2_dir.resolve() and resolved.source == "local"
    pack = resolve_model("smollm2")
    assert pack.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and (pack.path / "config.json").exists()
    assert resolve_model(None).path == pack.path  # the default model


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model("no-such-alias")


def test_hub_id_offline_names_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="some-org/some-model"):
        resolve_model("some-org/some-model")


def test_pull_prints_the_cached_dir(smollm2_dir):
    result = llmserve("pull", "smollm2")
    assert result.returncode == 0 and result.stdout.strip() == str(smollm2_dir)
    bad = llmserve("pull", "nope")
    assert bad.returncode != 0 and "unknown model pack" in bad.stderr


# --- `llmserve serve` parsed in process, up to the server start ---------------------------------

try:  # the engine's interface, where this build has it
    from llmserve.engine.constraints import LogitsProcessor
except ImportError:
    LogitsProcessor = object


class _NoDigits(LogitsProcessor):
    pass


class _Processors:
    @hookimpl
    def llmserve_logits_processors(self, register):
        register("no-digits", _NoDigits)


@pytest.fixture
def serve(monkeypatch):
    """``serve(*args, env=...)`` -> (exit code, output, the Config run_server would get)."""
    from typer.testing import CliRunner

    from llmserve import plugins, server
    from llmserve.cli import build_app

    seen = {}

    def run_server(config, plugins):
        seen["config"] = config
        return 0

    monkeypatch.setattr(server, "run_server", run_server)
    loaded = plugins.Plugins({"LLMSERVE_PLUGINS": "torch,openai,processors"})
    monkeypatch.setattr(plugins, "_loaded", loaded.load([("processors", _Processors())]))
    for key in [key for key in __import__("os").environ if key.startswith("LLMSERVE_")]:
        monkeypatch.delenv(key)

    def invoke(*args: str, env: dict[str, str] | None = None):
        seen.clear()
        result = CliRunner().invoke(build_app(), ["serve", *args], env=env)
        return result.exit_code, result.output, seen.get("config")

    return invoke


def test_defaults_of_the_new_flags(serve):
    code, output, config = serve()
    assert code == 0, output
    assert config.models == [] and config.model is None and config.model_names == []
    assert not config.trust_request_chat_template and not config.enable_sleep_mode
    assert config.scheduling_policy == "fcfs" and config.logits_processors == []
    assert config.enable_prefix_caching and config.tensor_parallel_size == 1


def test_flags_set_config_fields(serve):
    code, output, config = serve(
        "--trust-request-chat-template", "--enable-sleep-mode", "--scheduling-policy", "PRIORITY",
        "--logits-processors", "no-digits", "--no-enable-prefix-caching", "-tp", "2", "--enforce-eager",
        "--allowed-origins", '["http://a", "http://b"]', "--allowed-origins", "http://c,http://d",
        "--log-level", "DEBUG", "--max-waiting-requests", "5",
    )  # fmt: skip
    assert code == 0, output
    assert config.trust_request_chat_template and config.enable_sleep_mode and config.enforce_eager
    assert config.scheduling_policy == "priority" and config.log_level == "debug"
    assert config.logits_processors == ["no-digits"] and not config.enable_prefix_caching
    assert config.tensor_parallel_size == 2 and config.max_waiting_requests == 5
    assert config.allowed_origins == ["http://a", "http://b", "http://c", "http://d"]


def test_flags_win_over_env_vars(serve):
    env = {"LLMSERVE_SCHEDULING_POLICY": "priority", "LLMSERVE_LOGITS_PROCESSORS": "no-digits"}
    code, output, config = serve(env=env)
    assert code == 0, output
    assert config.scheduling_policy == "priority" and config.logits_processors == ["no-digits"]
    code, output, config = serve("--scheduling-policy", "fcfs", env=env)
    assert code == 0 and config.scheduling_policy == "fcfs"


def test_several_models(serve):
    code, output, config = serve("chat=smollm2", "org/model", "--embedding-model", "emb=minilm")
    assert code == 0, output
    assert config.model_specs() == [
        ModelSpec("chat", "smollm2"), ModelSpec(None, "org/model"), ModelSpec("emb", "minilm", "embed"),
    ]  # fmt: skip
    assert config.model == "smollm2" and config.model_names == ["chat"]  # the first is the default

    code, output, config = serve("smollm2", "--served-model-name", "main,alias")
    assert code == 0, output
    first, embedding = config.model_specs()
    assert first == ModelSpec("main", "smollm2", aliases=("alias",)) and config.model_names == [
        "main",
        "alias",
    ]
    assert embedding.kind == "embed" and embedding.implicit  # the default embedding model, as before

    code, output, config = serve("--embedding-model", "none")
    assert code == 0 and [spec.kind for spec in config.model_specs()] == ["auto"]
    assert config.kv_cache_space_per_model(2) == config.kv_cache_space / 2


def test_name_equals_model_rule(tmp_path, monkeypatch):
    assert parse_model_entry("chat=org/model") == ModelSpec("chat", "org/model")
    assert parse_model_entry("./dir=x") == ModelSpec(None, "./dir=x")  # a "/" before the "=": a path
    (tmp_path / "a=b").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_model_entry("a=b") == ModelSpec(None, "a=b")  # an existing path stays whole
    assert parse_model_entry("minilm", "embed") == ModelSpec(None, "minilm", "embed")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--scheduling-policy", "lifo"], None, "--scheduling-policy"),
        ([], {"LLMSERVE_SCHEDULING_POLICY": "lifo"}, "--scheduling-policy"),
        (["--trust-request-chat-template=yes"], None, "--trust-request-chat-template"),
        ([], {"LLMSERVE_ENABLE_SLEEP_MODE": "maybe"}, "--enable-sleep-mode"),
        (
            ["--logits-processors", "no-digits,nope"],
            None,
            "--logits-processors: unknown logits processor 'nope'",
        ),
        (["--allowed-origins", "[oops"], None, "--allowed-origins: not a JSON list"),
        (["=smollm2"], None, "MODEL: '=smollm2': NAME=MODEL needs a name"),
        (["a=smollm2", "a=minilm"], None, "MODEL: the name 'a' is given to more than one model"),
        (
            ["a=smollm2", "--served-model-name", "b"],
            None,
            "--served-model-name: the first model is already named",
        ),
        (
            ["smollm2", "m=minilm", "--served-model-name", "m"],
            None,
            "MODEL: the name 'm'",
        ),
    ],
)
def test_bad_values_exit_2_naming_the_flag(serve, args, env, message):
    code, output, config = serve(*args, env=env)
    assert code == 2 and config is None
    assert message in " ".join(output.split()), output
