"""Operations settings of the HTTP server (limits, timeouts, TLS, logging, response defaults).

A base of ``llmserve.config.Config``: each field is a ``llmserve serve`` flag like every other
Config field. Names follow vLLM's server flags, and vllm-mlx's for what vLLM lacks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode

OPS = {"panel": "Operations"}
DEFAULTS = {"panel": "Sampling defaults"}
RESPONSES = {"panel": "Chat, tools and reasoning"}  # the panel of config.CHAT


class ServerFlags(BaseSettings):
    """Limits, timeouts, TLS, logging and response options of the server."""

    rate_limit: int | None = Field(
        None, ge=1, json_schema_extra=OPS,
        description="Requests per minute per client on every generating route; more get 429.",
    )  # fmt: skip
    rate_limit_by: Literal["auto", "key", "address"] = Field(
        "auto", json_schema_extra=OPS,
        description="Who a client is: the API key (auto, when --api-key is set) or the remote address.",
    )  # fmt: skip
    max_concurrent_requests: int | None = Field(
        None, ge=1, json_schema_extra=OPS,
        description="Generating requests one client may have in flight; more get 429.",
    )  # fmt: skip
    timeout: float = Field(
        300.0, gt=0, json_schema_extra=OPS,
        description="Seconds a request may take in total (a request's own `timeout` may lower it); then 504.",
    )  # fmt: skip
    stream_interval: int = Field(
        1,
        ge=1,
        json_schema_extra=OPS,
        description="Tokens per streamed chunk (a request's own may override).",
    )
    enable_force_include_usage: bool = Field(
        False, json_schema_extra=OPS, description="Send usage in every stream, as if include_usage were set."
    )
    root_path: str | None = Field(
        None, json_schema_extra=OPS, description="Path prefix the server is mounted under behind a proxy."
    )
    uds: str | None = Field(None, json_schema_extra=OPS, description="Listen on this Unix domain socket.")
    ssl_keyfile: str | None = Field(None, json_schema_extra=OPS, description="TLS private key file.")
    ssl_certfile: str | None = Field(None, json_schema_extra=OPS, description="TLS certificate file.")
    ssl_ca_certs: str | None = Field(None, json_schema_extra=OPS, description="CA certificates file.")
    ssl_cert_reqs: int = Field(
        0, ge=0, le=2, json_schema_extra=OPS,
        description="Client certificates: 0 none, 1 optional, 2 required (Python's ssl.CERT_*).",
    )  # fmt: skip
    middleware: Annotated[list[str], NoDecode] = Field(
        default_factory=list, json_schema_extra=OPS,
        description="ASGI middleware to wrap the app in, by import path (module.Class; repeatable).",
    )  # fmt: skip
    max_logprobs: int = Field(
        20, ge=0, json_schema_extra=OPS,
        description="Most logprobs (and prompt_logprobs, top_logprobs) a request may ask for; more get 400.",
    )  # fmt: skip
    max_n: int = Field(
        128, ge=1, json_schema_extra=OPS,
        description="Most choices (n) one request may ask for; more get 400.",
    )  # fmt: skip
    max_stop: int = Field(
        64, ge=0, json_schema_extra=OPS,
        description="Most stop strings (and stop_token_ids) one request may give; more get 400.",
    )  # fmt: skip
    shutdown_timeout: float = Field(
        30.0, ge=0, json_schema_extra=OPS,
        description="Seconds requests in flight may take to finish after SIGTERM/SIGINT before they are cut.",
    )  # fmt: skip
    open_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/health", "/ping", "/version", "/metrics", "/docs", "/openapi.json"],
        json_schema_extra=OPS,
        description="Paths answered without --api-key (comma-separated; '' for none).",
    )  # fmt: skip
    disable_fastapi_docs: bool = Field(
        False, json_schema_extra=OPS, description="Do not serve /docs and /openapi.json (vLLM's flag name)."
    )
    enable_log_requests: bool = Field(False, json_schema_extra=OPS, description="Log every request's body.")
    max_log_len: int | None = Field(
        None, ge=0, json_schema_extra=OPS, description="Characters of a logged request body (default: all)."
    )
    disable_access_log: bool = Field(
        False, json_schema_extra={**OPS, "aliases": ["--disable-uvicorn-access-log"]},
        description="Do not log one line per request.",
    )  # fmt: skip
    log_format: Literal["text", "json"] = Field("text", json_schema_extra=OPS, description="Log line format.")
    enable_server_load_tracking: bool = Field(
        False, json_schema_extra=OPS, description="Count requests in flight for /load."
    )
    disable_web_ui: bool = Field(
        False,
        json_schema_extra=OPS,
        description="Do not serve the web UI (chat, dashboard, playground) at /.",
    )
    response_role: str = Field(
        "assistant", json_schema_extra=OPS, description="Role of chat answers (add_generation_prompt)."
    )
    return_tokens_as_token_ids: bool = Field(
        False,
        json_schema_extra=OPS,
        description="Logprob tokens as 'token_id:N' unless a request says otherwise.",
    )
    enable_prompt_tokens_details: bool = Field(
        False, json_schema_extra=OPS, description="Report usage.prompt_tokens_details.cached_tokens."
    )
    default_temperature: float | None = Field(
        None, ge=0, json_schema_extra=DEFAULTS, description="temperature where a request gives none."
    )
    default_top_p: float | None = Field(
        None, gt=0, le=1, json_schema_extra=DEFAULTS, description="top_p where a request gives none."
    )
    default_top_k: int | None = Field(
        None, ge=-1, json_schema_extra=DEFAULTS, description="top_k where a request gives none."
    )
    default_min_p: float | None = Field(
        None, ge=0, le=1, json_schema_extra=DEFAULTS, description="min_p where a request gives none."
    )
    default_max_tokens: int | None = Field(
        None, ge=1, json_schema_extra=DEFAULTS, description="max_tokens where a request gives none."
    )

    def sampling_defaults(self) -> dict[str, Any]:
        """The --default-* values given, by SamplingParams field name."""
        given = {
            "temperature": self.default_temperature,
            "top_p": self.default_top_p,
            "top_k": self.default_top_k,
            "min_p": self.default_min_p,
            "max_tokens": self.default_max_tokens,
        }
        return {key: value for key, value in given.items() if value is not None}

    responses_store: str | None = Field(
        None,
        json_schema_extra=RESPONSES,
        description="Where /v1/responses keeps stored responses: sqlite:///PATH (shared by every server "
        "using it; add ?journal_mode=delete for a file on storage shared by several hosts), or 'memory' "
        "(lost at exit); default: responses.sqlite under the cache dir.",
    )
    responses_max_stored: int = Field(
        10000,
        ge=1,
        json_schema_extra=RESPONSES,
        description="Most responses kept by the /v1/responses store; the oldest are deleted first.",
    )

    @field_validator("responses_store")
    @classmethod
    def _responses_store(cls, value: str | None) -> str | None:
        if value is not None and value != "memory" and not value.startswith("sqlite:///"):
            raise ValueError("must be sqlite:///PATH or memory")
        query = (value or "").partition("?")[2]
        if query and query.lower() not in {f"journal_mode={m}" for m in ("wal", "delete", "truncate")}:
            raise ValueError("the one option of sqlite:///PATH is ?journal_mode=wal|delete|truncate")
        return value
