"""The one settings object, built from CLI flags and ``LLMSERVE_*`` environment variables.

CLI flags win over environment variables, which win over defaults. Values are checked here, before
any model is loaded, so a bad value fails fast with a message naming the flag.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmserve.errors import ConfigError

DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float", "bf16", "fp16", "fp32")
_DTYPE_ALIASES = {
    "half": "float16",
    "fp16": "float16",
    "float": "float32",
    "fp32": "float32",
    "bf16": "bfloat16",
}


class Config(BaseSettings):
    """Server and engine settings. Field names match ``llmserve serve`` flags (dashes -> underscores)."""

    model_config = SettingsConfigDict(env_prefix="LLMSERVE_", extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Model to serve: alias, HF directory, .gguf file or hub id.")
    embedding_model: str | None = Field(
        None, description="Embedding model for /v1/embeddings, score and rerank ('none' to disable)."
    )
    served_model_name: list[str] | None = Field(None, description="Name(s) clients use for the model.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    backend: str = Field("auto", description="Model backend: auto, cpu, cuda, jax, tpu or a plugin's.")
    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=1)
    max_num_seqs: int = Field(128, ge=1)
    max_num_batched_tokens: int = Field(2048, ge=1)
    block_size: int = Field(16, ge=1, le=1024)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    kv_cache_space: float = Field(4.0, gt=0.0, description="KV cache budget in GiB on CPU backends.")
    seed: int = Field(0, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    chat_template: str | None = None
    chat_template_content_format: Literal["auto", "string", "openai"] = "auto"
    generation_config: str = "auto"
    enable_prefix_caching: bool = True
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    allowed_origins: list[str] = Field(default_factory=lambda: ["*"])
    enable_request_id_headers: bool = False
    max_request_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_waiting_requests: int = Field(1024, ge=1)
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    trust_request_chat_template: bool = False
    enable_sleep_mode: bool = False
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        value = value.lower()
        if value not in DTYPES:
            raise ValueError(f"must be one of {', '.join(DTYPES)}")
        return _DTYPE_ALIASES.get(value, value)

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
        if self.max_model_len and self.max_num_batched_tokens < 1:
            raise ValueError("--max-num-batched-tokens must be positive")
        return self

    @property
    def model_names(self) -> list[str]:
        """The names the generation model answers to (first is the primary)."""
        return list(self.served_model_name or [])


def build_config(**given: object) -> Config:
    """Build a Config from explicitly given values (None means 'not given'), env vars and defaults."""
    values = {key: value for key, value in given.items() if value is not None}
    try:
        return Config(**values)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part != "__root__"]
        flag = "--" + loc[0].replace("_", "-") if loc else "config"
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        given = err.get("input")
        suffix = f" (got {given!r})" if loc and not isinstance(given, dict) else ""
        lines.append(f"{flag}: {msg}{suffix}" if loc else msg)
    return "invalid configuration: " + "; ".join(lines)
