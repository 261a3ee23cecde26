"""The command line and configuration: flags, env vars, fail-fast errors, model resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmserve.config import build_config
from llmserve.errors import ConfigError, ModelNotFoundError
from llmserve.sources.resolve import resolve_model

SERVE_FLAGS = (
    "--host --port --api-key --served-model-name --dtype --max-model-len --max-num-seqs "
    "--max-num-batched-tokens --block-size --gpu-memory-utilization --kv-cache-space --seed "
    "--tensor-parallel-size --chat-template --chat-template-content-format --generation-config "
    "--enable-prefix-caching --enable-auto-tool-choice --tool-call-parser --reasoning-parser "
    "--allowed-origins --enable-request-id-headers --embedding-model --backend --log-level"
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
