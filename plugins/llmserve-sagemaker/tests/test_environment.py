"""SM_LLMSERVE_* / SM_VLLM_* variables as flags, and the SageMaker port."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from conftest import Server, free_port, sagemaker_free_env
from llmserve_sagemaker.environment import settings

from llmserve.api import ConfigError


def test_outside_sagemaker_nothing_changes():
    assert settings({"LLMSERVE_MAX_NUM_SEQS": "4", "HOME": "/root"}) == {}


def test_variables_become_flags_and_the_port_is_8080():
    env = {
        "SM_VLLM_MODEL": "/opt/ml/model",
        "SM_VLLM_MAX_MODEL_LEN": "2048",
        "SM_VLLM_ENFORCE_EAGER": "",
        "SM_VLLM_ENABLE_PREFIX_CACHING": "false",
        "SM_VLLM_TENSOR_PARALLEL_SIZE": "1",
        "SM_LLMSERVE_MAX_MODEL_LEN": "1024",  # SM_LLMSERVE_ wins over SM_VLLM_
    }
    assert settings(env) == {
        "models": ["/opt/ml/model"], "max_model_len": "1024", "enforce_eager": True,
        "enable_prefix_caching": False, "tensor_parallel_size": "1", "port": 8080,
    }  # fmt: skip
    assert settings({**env, "SM_VLLM_PORT": "9000"})["port"] == "9000"
    assert "port" not in settings({**env, "LLMSERVE_PORT": "9000"})  # the server reads that itself
    assert settings({"SAGEMAKER_BIND_TO_PORT": "8123"}) == {"port": 8123}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SM_VLLM_TRUST_REMOTE_CODE": "true"},
            "SM_VLLM_TRUST_REMOTE_CODE: llmserve serve has no --trust-remote-code",
        ),
        ({"SM_VLLM_MAX_MODEL_LEN": "lots"}, "SM_VLLM_MAX_MODEL_LEN: Input should be a valid integer"),
        (
            {"SM_LLMSERVE_GPU_MEMORY_UTILIZATION": "1.5"},
            "SM_LLMSERVE_GPU_MEMORY_UTILIZATION: Input should be less",
        ),
        ({"SM_VLLM_ENFORCE_EAGER": "maybe"}, "SM_VLLM_ENFORCE_EAGER: expected true or false"),
        ({"SM_VLLM_SEED": ""}, "SM_VLLM_SEED: needs a value"),
        ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT: not a port number"),
    ],
)
def test_a_bad_variable_is_named(env, message):
    with pytest.raises(ConfigError) as err:
        settings(env)
    assert err.value.message.startswith(message)


def test_serve_fails_at_start_naming_the_variable():
    env = {**sagemaker_free_env(), "SM_VLLM_TRUST_REMOTE_CODE": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "llmserve", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "SM_VLLM_TRUST_REMOTE_CODE" in result.stderr


def test_serve_under_sagemaker_takes_the_variables_and_its_port():
    port = free_port()
    env = {
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SM_VLLM_MAX_MODEL_LEN": "256",
        "SM_VLLM_EMBEDDING_MODEL": "none",
    }
    server = Server(env=env, port=port)  # no --port: the environment decides
    try:
        models = httpx.get(server.url + "/v1/models").json()["data"]
        assert [m["max_model_len"] for m in models] == [256]
    finally:
        server.stop()
    # --port still wins over the SageMaker port.
    other = Server(env={**env, "SAGEMAKER_BIND_TO_PORT": str(free_port())})
    try:
        assert httpx.get(other.url + "/ping").status_code == 200
    finally:
        other.stop()
