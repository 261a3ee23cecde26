"""The one settings object, built from CLI flags and ``LLMSERVE_*`` environment variables.

Every setting is declared once, as a Config field: ``llmserve serve``'s options are generated from
the fields (``llmserve.cli_options``): ``max_num_seqs`` -> ``--max-num-seqs``, the description is
the help, ``json_schema_extra`` gives the help panel and short aliases. CLI flags win over
environment variables (``LLMSERVE_MAX_NUM_SEQS``), which win over defaults. List settings accept
repeated flags, comma-separated values or a JSON list, on the command line and in the environment.
Values are checked here, before any model is loaded, so a bad value fails fast naming its flag.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from llmserve.errors import ConfigError
from llmserve.model_specs import ModelSpec, parse_model_entry, split_list
from llmserve.server_flags import ServerFlags
from llmserve.sources import packs

DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float", "bf16", "fp16", "fp32")
_DTYPE_ALIASES = {
    "half": "float16",
    "fp16": "float16",
    "float": "float32",
    "fp32": "float32",
    "bf16": "bfloat16",
}

# Help panels of `llmserve serve --help`; fields without one are listed under "Options".
SERVER = {"panel": "HTTP server"}
ENGINE = {"panel": "Engine and KV cache"}
CHAT = {"panel": "Chat, tools and reasoning"}
MODELS = {"panel": "Models"}

StrList = Annotated[list[str], NoDecode]  # NoDecode: the validator below parses env strings


class Config(ServerFlags):
    """Server and engine settings. Field names match ``llmserve serve`` flags (dashes -> underscores)."""

    model_config = SettingsConfigDict(env_prefix="LLMSERVE_", extra="forbid", protected_namespaces=())

    models: StrList = Field(
        default_factory=list,
        description="Models to serve, each a pack alias (smollm2), HF directory, .gguf file or HF hub id, "
        "optionally NAME=MODEL; the first is the default. Default: SmolLM2-135M-Instruct.",
        json_schema_extra={"argument": "MODEL"},
    )
    embedding_model: str | None = Field(
        None,
        description="Embedding model for embeddings/score/rerank, served beside the others (NAME=MODEL "
        "allowed; default all-MiniLM-L6-v2 beside a chat model; 'none' to disable).",
        json_schema_extra=MODELS,
    )
    served_model_name: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Name(s) the first model answers to (repeat or comma-separate); the first is reported.",
        json_schema_extra=MODELS,
    )
    host: str = Field("127.0.0.1", description="Address to bind.", json_schema_extra=SERVER)
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.", json_schema_extra=SERVER)
    api_key: str | None = Field(
        None, description="Require 'Authorization: Bearer KEY' on API routes.", json_schema_extra=SERVER
    )
    allowed_origins: StrList = Field(
        default_factory=lambda: ["*"],
        description="CORS origins allowed (JSON list or comma-separated).",
        json_schema_extra=SERVER,
    )
    enable_request_id_headers: bool = Field(
        False, description="Echo X-Request-Id on responses.", json_schema_extra=SERVER
    )
    max_request_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body; larger ones get 413.",
        json_schema_extra={**SERVER, "shown_default": "32 MiB"},
    )
    max_audio_file_mb: float = Field(
        25.0,
        gt=0,
        description="Largest audio file accepted by the transcription routes, in MiB; larger ones get 413.",
        json_schema_extra=SERVER,
    )
    max_waiting_requests: int = Field(
        1024, ge=1, description="Requests that may wait for a slot; more get 503.", json_schema_extra=SERVER
    )
    backend: str = Field(
        "auto",
        description="Model backend: auto (cuda, tpu or cpu, as available), cpu, cuda, jax, tpu, or a plugin's.",
    )
    dtype: str = Field("auto", description="Weights/activations dtype: auto, bfloat16, float16, float32.")
    quantization: Literal["int8", "int4", "gguf"] | None = Field(
        None,
        description="Weight-only quantisation of the linear layers (CPU backend): int8 (one scale per "
        "output channel) or int4 (a scale and minimum per group), quantised at load; gguf serves a GGUF "
        "model's own Q8_0/Q4_0/Q4_1/Q4_K blocks. The LM head and embeddings stay in --dtype.",
        json_schema_extra={"aliases": ["-q"]},
    )
    quantization_group_size: int = Field(
        32,
        ge=32,
        description="Inputs per int4 scale group (a multiple of 32 that divides every layer's inputs).",
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="Context length (prompt + output); default: the model's.",
        json_schema_extra=ENGINE,
    )
    max_num_seqs: int = Field(
        128, ge=1, description="Most sequences in one engine step.", json_schema_extra=ENGINE
    )
    max_num_batched_tokens: int = Field(
        2048,
        ge=1,
        description="Token budget of one engine step; long prompts are prefilled in chunks.",
        json_schema_extra=ENGINE,
    )
    block_size: int = Field(
        16, ge=1, le=1024, description="Tokens per KV cache block, a power of two.", json_schema_extra=ENGINE
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of GPU memory for weights + KV cache.",
        json_schema_extra=ENGINE,
    )
    kv_cache_space: float = Field(
        4.0,
        gt=0.0,
        json_schema_extra=ENGINE,
        description="KV cache budget in GiB on CPU backends, in total: split evenly over the generative "
        "models (vLLM's VLLM_CPU_KVCACHE_SPACE).",
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse KV blocks of shared prefixes.", json_schema_extra=ENGINE
    )
    scheduling_policy: Literal["fcfs", "priority"] = Field(
        "fcfs",
        json_schema_extra=ENGINE,
        description="Which waiting request runs next: fcfs (arrival order) or priority (the request's "
        "'priority', lower first, then arrival).",
    )
    seed: int = Field(0, ge=0, description="Seed for unseeded sampling.", json_schema_extra=ENGINE)
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="Devices/ranks to shard the model over.",
        json_schema_extra={**ENGINE, "aliases": ["-tp"]},
    )
    enforce_eager: bool = Field(False, description="Disable CUDA graphs.", json_schema_extra=ENGINE)
    enable_sleep_mode: bool = Field(
        False,
        json_schema_extra=ENGINE,
        description="Allow /sleep and /wake_up to release and restore the models' device memory.",
    )
    engine_process: bool = Field(
        False,
        json_schema_extra=ENGINE,
        description="Run each generative model's engine core (scheduler, backend) in its own process, "
        "apart from HTTP handling and detokenizing (vLLM v1's engine-core process). The offline LLM "
        "always runs in process.",
    )
    logits_processors: StrList = Field(
        default_factory=list,
        json_schema_extra=ENGINE,
        description="Logits processors to enable, by registered name (repeat or comma-separate; "
        "see `llmserve plugins`).",
    )
    chat_template: str | None = Field(
        None, description="Chat template: a file path or an inline Jinja string.", json_schema_extra=CHAT
    )
    chat_template_content_format: Literal["auto", "string", "openai"] = Field(
        "auto", description="How message content reaches the template.", json_schema_extra=CHAT
    )
    default_chat_template_kwargs: str | None = Field(
        None,
        json_schema_extra=CHAT,
        description="Chat-template kwargs every request gets unless it sets them, as a JSON object "
        "(e.g. '{\"enable_thinking\": false}').",
    )
    exclude_tools_when_tool_choice_none: bool = Field(
        False,
        json_schema_extra=CHAT,
        description="Leave the tools out of the prompt when tool_choice is none.",
    )
    trust_request_chat_template: bool = Field(
        False,
        json_schema_extra=CHAT,
        description="Accept a chat_template sent in a request (otherwise such a request is rejected).",
    )
    generation_config: str = Field(
        "auto",
        json_schema_extra=CHAT,
        description="'auto' applies the model's generation_config.json defaults, 'vllm' ignores them, or a folder.",
    )
    enable_auto_tool_choice: bool = Field(
        False, description="Let the model call tools (tool_choice 'auto').", json_schema_extra=CHAT
    )
    tool_call_parser: str | None = Field(
        None, description="Tool-call parser by name (see `llmserve plugins`).", json_schema_extra=CHAT
    )
    reasoning_parser: str | None = Field(
        None, description="Reasoning parser by name (see `llmserve plugins`).", json_schema_extra=CHAT
    )
    tool_parser_plugin: str | None = Field(
        None,
        json_schema_extra=CHAT,
        description="A Python file that registers tool-call (or reasoning) parsers, loaded as a plugin: "
        "hook implementations, or module-level TOOL_PARSERS / REASONING_PARSERS dicts of name -> class.",
    )
    structured_outputs_backend: Literal["auto", "xgrammar", "guidance"] = Field(
        "auto",
        json_schema_extra=CHAT,
        description="Grammar backend of structured outputs: xgrammar, guidance (llguidance), or auto "
        "(xgrammar, and guidance for what only it supports).",
    )
    structured_outputs_timeout: float = Field(
        10.0,
        gt=0,
        json_schema_extra=CHAT,
        description="Seconds a request's schema or grammar may take to compile before it is refused (400).",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log level."
    )

    @model_validator(mode="before")
    @classmethod
    def _single_model(cls, data: Any) -> Any:
        # ``model=`` (and LLMSERVE_MODEL) from before several models could be served: one entry.
        if isinstance(data, dict):
            data = dict(data)
            single = data.pop("model", None) or (
                None if "models" in data else os.environ.get("LLMSERVE_MODEL")
            )
            if single is not None:
                data["models"] = [single]
        return data

    @field_validator(
        "models",
        "served_model_name",
        "allowed_origins",
        "logits_processors",
        "middleware",
        "open_paths",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("quantization_group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"must be a multiple of 32 (the int4 block), got {value}")
        return value

    @field_validator("default_chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object")
        return value

    @property
    def chat_template_defaults(self) -> dict[str, Any]:
        """--default-chat-template-kwargs as a dict."""
        return json.loads(self.default_chat_template_kwargs) if self.default_chat_template_kwargs else {}

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        value = value.lower()
        if value not in DTYPES:
            raise ValueError(f"must be one of {', '.join(DTYPES)}")
        return _DTYPE_ALIASES.get(value, value)

    @field_validator("tool_parser_plugin")
    @classmethod
    def _plugin_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError("no such file")
        return value

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @field_validator("log_level", "scheduling_policy", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
        try:
            first = parse_model_entry(self.models[0]) if self.models else None
            specs = self.model_specs()
        except ValueError as exc:
            raise ValueError(f"MODEL: {exc}") from None
        if first is not None and first.name and self.served_model_name:
            raise ValueError(
                f"--served-model-name: the first model is already named {first.name!r} by NAME=MODEL; give one"
            )
        seen: set[str] = set()
        for spec in specs:
            for name in (spec.name, *spec.aliases) if spec.name else ():
                if name in seen:
                    raise ValueError(f"MODEL: the name {name!r} is given to more than one model")
                seen.add(name)
        return self

    @property
    def model(self) -> str | None:
        """The first model as given (without its NAME=), or None for the default model."""
        return parse_model_entry(self.models[0]).source if self.models else None

    @property
    def model_names(self) -> list[str]:
        """The names the first (default) model answers to; empty when it keeps its own name."""
        first = self.model_specs()[0]
        return [first.name, *first.aliases] if first.name else []

    @property
    def responses_store_url(self) -> str:
        """``--responses-store``, or the SQLite file under the cache dir when it is not given."""
        return self.responses_store or f"sqlite:///{packs.cache_dir() / 'responses.sqlite'}"

    def model_specs(self) -> list[ModelSpec]:
        """Every model to serve, in order: the positional models (the default one first, named by
        NAME= or ``--served-model-name``, whose further names are its aliases), then
        ``--embedding-model`` as an "embed" spec; without that flag, the default embedding model
        as an implicit one ('none' adds nothing)."""
        specs = [parse_model_entry(entry) for entry in self.models] or [ModelSpec(None, packs.DEFAULT_MODEL)]
        if self.served_model_name and not specs[0].name:
            first, *aliases = self.served_model_name
            specs[0] = replace(specs[0], name=first, aliases=tuple(aliases))
        embedding = self.embedding_model
        if embedding is None:
            specs.append(ModelSpec(None, packs.DEFAULT_EMBEDDING_MODEL, "embed", implicit=True))
        elif embedding.strip().lower() != "none":
            specs.append(parse_model_entry(embedding, "embed"))
        return specs

    def kv_cache_space_per_model(self, generative_models: int) -> float:
        """GiB of KV cache each generative model gets: ``--kv-cache-space`` split evenly."""
        return self.kv_cache_space / max(generative_models, 1)


def flag_name(field: str) -> str:
    """How a Config field is spelled on the command line."""
    if field == "models":
        return "MODEL"
    return "--" + field.replace("_", "-")


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
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        given = err.get("input")
        suffix = f" (got {given!r})" if loc and not isinstance(given, dict) else ""
        lines.append(f"{flag_name(loc[0])}: {msg}{suffix}" if loc else msg)
    return "invalid configuration: " + "; ".join(lines)
