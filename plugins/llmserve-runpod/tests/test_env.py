"""Configuration from worker-vllm's variables; a bad one stops the worker at start, named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from llmserve_runpod.env import EnvError, config_from_env, settings_from_env


def test_variables_map_to_the_serve_flags():
    config = config_from_env({
        "MODEL_NAME": "smollm2", "MAX_MODEL_LEN": "1024", "TENSOR_PARALLEL_SIZE": "1",
        "GPU_MEMORY_UTILIZATION": "0.5", "MAX_NUM_SEQS": "8", "CUSTOM_CHAT_TEMPLATE": "{{ messages }}",
        "ENABLE_AUTO_TOOL_CHOICE": "yes", "TOOL_CALL_PARSER": "hermes", "REASONING_PARSER": "qwen3",
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "a,b", "SERVED_MODEL_NAME": "ignored",
        "ENABLE_PREFIX_CACHING": "off", "DEFAULT_CHAT_TEMPLATE_KWARGS": '{"enable_thinking": false}',
        "ALLOWED_ORIGINS": '["https://x"]', "MAX_NUM_BATCHED_TOKENS": "0", "QUANTIZATION": "",
        "DISABLE_UVICORN_ACCESS_LOG": "1", "LOG_LEVEL": "WARNING",
    })  # fmt: skip
    assert config.models == ["smollm2"] and config.max_model_len == 1024
    assert config.gpu_memory_utilization == 0.5 and config.max_num_seqs == 8
    assert config.chat_template == "{{ messages }}" and config.enable_auto_tool_choice is True
    assert (config.tool_call_parser, config.reasoning_parser) == ("hermes", "qwen3")
    assert config.served_model_name == ["a", "b"] and config.enable_prefix_caching is False
    assert config.chat_template_defaults == {"enable_thinking": False}
    assert config.allowed_origins == ["https://x"] and config.max_num_batched_tokens == 2048
    assert config.disable_access_log is True and config.log_level == "warning"
    assert settings_from_env({}).max_concurrency == 300
    assert settings_from_env({"MAX_CONCURRENCY": "7"}).max_concurrency == 7


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_NUM_SEQS": "lots"}, "MAX_NUM_SEQS"),
        ({"ENABLE_PREFIX_CACHING": "maybe"}, "ENABLE_PREFIX_CACHING"),
        ({"QUANTIZATION": "awq"}, "QUANTIZATION"),
        ({"GPU_MEMORY_UTILIZATION": "2"}, "GPU_MEMORY_UTILIZATION"),
        ({"ENABLE_AUTO_TOOL_CHOICE": "true"}, "TOOL_CALL_PARSER"),
        ({"DEFAULT_CHAT_TEMPLATE_KWARGS": "[1"}, "DEFAULT_CHAT_TEMPLATE_KWARGS"),
    ],
)
def test_bad_values_name_the_variable(env, named):
    with pytest.raises(EnvError, match=named):
        config_from_env(env)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_NUM_SEQS": "lots"}, "MAX_NUM_SEQS"),
        ({"MAX_CONCURRENCY": "0"}, "MAX_CONCURRENCY"),
        ({"TOOL_CALL_PARSER": "no-such-parser"}, "TOOL_CALL_PARSER"),
        ({"CUSTOM_CHAT_TEMPLATE": "/no/such/template.jinja"}, "CUSTOM_CHAT_TEMPLATE"),
        ({"QUANTIZATION": "gptq"}, "QUANTIZATION"),
    ],
)
def test_the_worker_stops_at_start_naming_the_variable(env, named):
    result = subprocess.run([sys.executable, "-m", "llmserve_runpod"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert named in result.stderr and "Starting Serverless Worker" not in result.stdout
