"""The public plugin API: everything a plugin author needs, and nothing else.

Built-in plugins and third-party packs import from here (and ``llmserve``) only. Four kinds of
plugin build on it, each registered through a hook of ``llmserve.hookspecs``:

- model backends: subclass ``Backend`` (``llmserve_backends``);
- tool-call and reasoning parsers: subclass ``ToolParser`` / ``ReasoningParser``
  (``llmserve_tool_parsers``, ``llmserve_reasoning_parsers``); a tool parser names its
  ``start_markers`` and returns ``Section``s of ``PartialCall``s from ``parse_section``, helped by
  ``JsonScan``, ``call_sequence``, ``arguments_at``, ``close_after`` and ``locate``; a route runs
  them for one choice through a ``ParserPipeline`` (``ParsedDelta`` / ``ToolCallDelta`` while
  streaming, ``ParsedOutput`` / ``ToolCall`` for a whole output);
- logits processors and per-request constraints: ``LogitsProcessor`` (``llmserve_logits_processors``)
  and ``Constraint`` / ``ConstraintSpec`` set on ``SamplingParams.constraint``;
- protocols: Quart blueprints (``llmserve_protocols``) whose routes use ``context()``, a
  ``ProtocolContext``, to find models and generate, and ``document`` to declare their OpenAPI
  (``request_models`` reads a route's declaration back).

Commands and workers that run the models without the HTTP server build a ``Config`` with
``build_config`` (``config_options`` gives a typer command every ``llmserve serve`` flag) and
enter ``running_models(config)`` for a ProtocolContext.

A host that runs the whole server in its own process, without a listening socket (a serverless
worker), builds the app with ``load_app(config)`` and calls it as an ASGI application.

Anything else under ``llmserve`` is internal and may change without notice.
"""

from __future__ import annotations

from llmserve import hookimpl
from llmserve.backends.base import (
    Backend,
    BackendUnavailable,
    Batch,
    BatchItem,
    Embedder,
    ModelInfo,
    SampleResult,
    TokenLogprob,
)
from llmserve.cli_options import with_config_options as config_options
from llmserve.config import Config, build_config
from llmserve.engine.constraints import (
    Constraint,
    ConstraintSpec,
    LogitsProcessor,
    LogitsRow,
    bitmask_words,
    set_allowed_tokens,
)
from llmserve.engine.outputs import CompletionOutput, RequestOutput
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.stream import GenerationStream, OutputKind
from llmserve.errors import (
    ConfigError,
    EngineDeadError,
    InvalidRequestError,
    LLMServeError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PluginError,
    UnauthorizedError,
    UnsupportedError,
)
from llmserve.parsers.base import (
    ParsedDelta,
    PartialCall,
    ReasoningParser,
    Section,
    ToolCall,
    ToolCallDelta,
    ToolParser,
)
from llmserve.parsers.json_calls import arguments_at, call_sequence, close_after
from llmserve.parsers.json_scan import JsonScan
from llmserve.parsers.markers import locate
from llmserve.parsers.pipeline import ParsedOutput, ParserPipeline
from llmserve.protocols.shared.ids import now, random_id
from llmserve.protocols.shared.parsing import parse_body, parse_json, validate_model
from llmserve.protocols.shared.prompts import PROMPT_SCHEMA, Prompt, bounded_text, check_text_fits
from llmserve.protocols.shared.sse import (
    SSE_DONE,
    error_body,
    json_response,
    release_after_body,
    sse,
    sse_error,
    sse_response,
)
from llmserve.protocols.shared.streams import merge_streams
from llmserve.server.app import error_response
from llmserve.server.context import ProtocolContext, RenderedChat
from llmserve.server.in_process import running_models
from llmserve.server.openapi import document, request_models
from llmserve.server.registry import EMBED, GENERATE, TRANSCRIBE, ServedModel
from llmserve.server.startup import load_app
from llmserve.structured import StructuredOutputs
from llmserve.structured.calls import calls_schema


def context() -> ProtocolContext:
    """The ProtocolContext of the server handling the current request (inside a route)."""
    from quart import current_app

    return current_app.extensions["llmserve"]


__all__ = [
    "PROMPT_SCHEMA",
    "EMBED",
    "GENERATE",
    "SSE_DONE",
    "TRANSCRIBE",
    "Backend",
    "BackendUnavailable",
    "Batch",
    "BatchItem",
    "CompletionOutput",
    "Config",
    "ConfigError",
    "Constraint",
    "ConstraintSpec",
    "Embedder",
    "EngineDeadError",
    "GenerationStream",
    "InvalidRequestError",
    "JsonScan",
    "LLMServeError",
    "LogitsProcessor",
    "LogitsRow",
    "ModelInfo",
    "ModelNotFoundError",
    "OutputKind",
    "OverloadedError",
    "ParsedDelta",
    "ParsedOutput",
    "ParserPipeline",
    "PartialCall",
    "PayloadTooLargeError",
    "PluginError",
    "Prompt",
    "ProtocolContext",
    "ReasoningParser",
    "RenderedChat",
    "RequestOutput",
    "SampleResult",
    "SamplingParams",
    "Section",
    "ServedModel",
    "StructuredOutputs",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "ToolParser",
    "UnauthorizedError",
    "UnsupportedError",
    "build_config",
    "config_options",
    "context",
    "document",
    "arguments_at",
    "bitmask_words",
    "bounded_text",
    "calls_schema",
    "call_sequence",
    "check_text_fits",
    "close_after",
    "error_body",
    "error_response",
    "hookimpl",
    "json_response",
    "load_app",
    "locate",
    "merge_streams",
    "now",
    "parse_body",
    "parse_json",
    "random_id",
    "release_after_body",
    "request_models",
    "running_models",
    "sse",
    "sse_error",
    "set_allowed_tokens",
    "sse_response",
    "validate_model",
]
