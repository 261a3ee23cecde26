"""Helpers shared by the protocol plugins (openai, vllm, ...): body parsing, prompt parsing,
request -> SamplingParams, model-name checks, merging engine streams and SSE encoding.

Nothing here knows a wire format's response shape; that stays in each protocol package.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from llmserve.engine.sampling import SamplingParams
from llmserve.errors import InvalidRequestError, LLMServeError, ModelNotFoundError, UnsupportedError

if TYPE_CHECKING:
    from llmserve.state import ServerState

log = logging.getLogger("llmserve.protocols")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# --- request bodies --------------------------------------------------------------------------------


async def parse_body(model_cls: type[M]) -> M:
    """Read the current Quart request's JSON body into ``model_cls``.

    Malformed JSON, a non-object body and schema violations raise InvalidRequestError (400) whose
    ``param`` names the offending top-level field.
    """
    from quart import request

    raw = await request.get_data(cache=True)
    return parse_json(raw, model_cls)


def parse_json(raw: bytes | str, model_cls: type[M]) -> M:
    """Like ``parse_body`` for bytes already read (also handy in tests)."""
    if not raw or not raw.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"The request body must be a JSON object, got {type(data).__name__}.")
    return validate_model(model_cls, data)


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (and every sampling parameter) does not.
    raise InvalidRequestError(f"The request body is not valid JSON: {name} is not a JSON value")


def validate_model(model_cls: type[M], data: dict[str, Any]) -> M:
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except InvalidRequestError:
        raise
    except (ValueError, TypeError) as exc:  # raised by a validator outside pydantic's wrapping
        raise InvalidRequestError(str(exc)) from None


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """One readable 400 from a pydantic ValidationError; ``param`` is the first bad top-level field."""
    errors = exc.errors(include_url=False)
    parts: list[str] = []
    param = None
    for err in errors:
        loc = [part for part in err.get("loc", ()) if not _is_union_tag(part)]
        path = _format_loc(loc)
        if param is None and loc:
            param = str(loc[0])
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        line = f"{path}: {msg}" if path else msg
        if line not in parts:
            parts.append(line)
    shown = parts[:3]
    if len(parts) > 3:
        shown.append(f"and {len(parts) - 3} more")
    return InvalidRequestError("Invalid request: " + "; ".join(shown), param=param)


def _is_union_tag(part: object) -> bool:
    # pydantic puts the tried union member's type name in ``loc`` ("str", "list[int]", ...).
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool", "dict", "list", "none"} or "-" in part
    )


def _format_loc(loc: Sequence[object]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- models ------------------------------------------------------------------------------------------


def resolve_model(state: ServerState, requested: str | None, capability: str = "generate") -> str:
    """The served name to report for a request's ``model`` field.

    A missing or empty ``model`` means the served model (like vLLM). An unknown name is a 404 with
    vLLM's message; a known name of the other kind (an embedding model on /v1/completions) is a 400.
    """
    default = state.model_name if capability == "generate" else state.embedding_model_name
    if not requested:
        if default is None:
            raise UnsupportedError(f"No model serving {capability} requests is loaded.", param="model")
        return default
    kind = state.aliases.get(requested)
    if kind is None:
        # the primary names count even when the lead's alias map leaves them out
        if requested == state.model_name:
            kind = "generate"
        elif requested == state.embedding_model_name:
            kind = "embed"
    if kind is None:
        raise ModelNotFoundError(f"The model `{requested}` does not exist.", param="model")
    if kind != capability:
        api = "Embeddings API" if capability == "embed" else "generation APIs (completions, chat)"
        raise UnsupportedError(f"The model `{requested}` does not support the {api}.", param="model")
    return requested


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# --- prompts -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Prompt:
    """One prompt as the engine sees it; ``text`` is None when the client sent token ids."""

    token_ids: list[int]
    text: str | None = None


def is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def parse_prompts(
    prompt: object,
    tokenizer: Any,
    *,
    add_special_tokens: bool = True,
    truncate_prompt_tokens: int | None = None,
    max_model_len: int | None = None,
    param: str = "prompt",
) -> list[Prompt]:
    """A string, list of strings, list of token ids or list of token-id lists -> one Prompt each.

    Strings are tokenized with the served tokenizer. ``truncate_prompt_tokens`` keeps the last k
    tokens (-1: the last ``max_model_len``), like vLLM.
    """
    if isinstance(prompt, str):
        items: list[str | list[int]] = [prompt]
    elif is_token_ids(prompt):
        if not prompt:
            raise InvalidRequestError(f"{param} must not be empty", param=param)
        items = [prompt]  # type: ignore[list-item]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_token_ids(p) for p in prompt):
        items = prompt
    elif isinstance(prompt, list) and not prompt:
        raise InvalidRequestError(f"{param} must not be empty", param=param)
    else:
        raise InvalidRequestError(
            f"{param} must be a string, a list of strings, a list of token ids or a list of token id lists",
            param=param,
        )
    texts = [item for item in items if isinstance(item, str)]
    encoded = iter(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"] if texts else [])
    out = []
    for i, item in enumerate(items):
        out.append(Prompt(list(next(encoded)), item) if isinstance(item, str) else Prompt(list(item)))
        if not out[-1].token_ids:
            where = f"{param}[{i}]" if len(items) > 1 else param
            raise InvalidRequestError(f"{where} must not be empty (it has no tokens)", param=param)
    if truncate_prompt_tokens is not None:
        for p in out:
            kept = truncate_tokens(p.token_ids, truncate_prompt_tokens, max_model_len)
            if len(kept) != len(p.token_ids):
                p.token_ids, p.text = kept, None  # the text no longer matches the ids
    return out


def truncate_tokens(token_ids: list[int], keep: int | None, max_model_len: int | None) -> list[int]:
    """vLLM's truncate_prompt_tokens: keep the last ``keep`` tokens; -1 means max_model_len."""
    if keep is None:
        return token_ids
    if keep == -1 and max_model_len is not None:
        keep = max_model_len
    if keep < 1:
        raise InvalidRequestError(
            f"truncate_prompt_tokens must be -1 or at least 1, got {keep}", param="truncate_prompt_tokens"
        )
    if max_model_len is not None and keep > max_model_len:
        raise InvalidRequestError(
            f"truncate_prompt_tokens value ({keep}) is greater than max_model_len ({max_model_len}). "
            "Please, select a smaller truncation size.",
            param="truncate_prompt_tokens",
        )
    return token_ids[-keep:]


# --- sampling ----------------------------------------------------------------------------------------

_SPECIAL = {"max_tokens", "stop", "logprobs", "logit_bias", "constraint", "detokenize"}
_SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams) if f.name not in _SPECIAL)


def to_sampling_params(
    req: Any, defaults: dict[str, Any] | None, max_model_len: int, prompt_len: int, **overrides: Any
) -> SamplingParams:
    """Build SamplingParams from any request object with OpenAI / vLLM field names.

    Each SamplingParams field is taken from the request when set (not None), else from
    ``defaults`` (the model's generation_config), else SamplingParams' own default.
    ``max_completion_tokens`` wins over ``max_tokens``; when neither is set the completion may
    fill the context (capped by a generation_config ``max_tokens``). Chat's ``logprobs: bool`` +
    ``top_logprobs`` and completions' ``logprobs: int`` are both understood. ``overrides`` are
    applied last. Bad values raise InvalidRequestError naming the field.
    """
    defaults = defaults or {}
    kwargs: dict[str, Any] = {}
    for name in _SAMPLING_FIELDS:
        value = getattr(req, name, None)
        if value is None:
            value = defaults.get(name)
        if value is not None:
            kwargs[name] = value

    max_tokens = getattr(req, "max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = getattr(req, "max_tokens", None)
    if max_tokens is None:
        room = max(1, max_model_len - prompt_len)
        default_max = defaults.get("max_tokens")
        max_tokens = min(room, default_max) if default_max else room
    kwargs["max_tokens"] = max_tokens

    stop = getattr(req, "stop", None)
    if stop is not None:
        kwargs["stop"] = [stop] if isinstance(stop, str) else list(stop)

    logprobs = getattr(req, "logprobs", None)
    if isinstance(logprobs, bool):  # chat: a flag plus top_logprobs
        top = getattr(req, "top_logprobs", None)
        if top and not logprobs:
            raise InvalidRequestError(
                "when using `top_logprobs`, `logprobs` must be set to true.", param="top_logprobs"
            )
        kwargs["logprobs"] = (top or 0) if logprobs else None
    elif logprobs is not None:
        kwargs["logprobs"] = logprobs

    bias = getattr(req, "logit_bias", None)
    if bias:
        try:
            kwargs["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise InvalidRequestError(
                "logit_bias keys must be token ids (integers)", param="logit_bias"
            ) from None

    kwargs.update(overrides)
    for name, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(f"{name} must be a finite number, got {value}", param=name)
    try:
        return SamplingParams(**kwargs)
    except InvalidRequestError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"Invalid sampling parameters: {exc}") from None


# --- engine streams ----------------------------------------------------------------------------------


async def merge_streams(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterators, yielding ``(stream_index, item)`` as items arrive.

    Closing this generator (client gone, error) cancels and closes every stream, so each engine
    request is aborted at once.
    """
    if len(streams) == 1:
        stream = streams[0]
        try:
            async for item in stream:
                yield 0, item
        finally:
            await _aclose(stream)
        return
    pending: dict[asyncio.Task, int] = {}
    try:
        for i, stream in enumerate(streams):
            pending[asyncio.ensure_future(_anext(stream))] = i
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                i = pending.pop(task)
                item = task.result()  # re-raises the stream's error
                if item is _END:
                    continue
                pending[asyncio.ensure_future(_anext(streams[i]))] = i
                yield i, item
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                await task
            except BaseException:  # noqa: BLE001 - each stream's own cancellation/errors are done with
                pass
        for stream in streams:
            await _aclose(stream)


_END = object()


async def _anext(stream: AsyncIterator[T]) -> T | object:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


async def _aclose(stream: object) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except RuntimeError:  # "aclose(): asynchronous generator is already running" in odd races
            pass


async def prefetch(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """Wait for the first item now, so that errors raised at the start of a request (validation,
    overload) surface as a plain HTTP error rather than inside an SSE stream."""
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        await _aclose(stream)
        return _empty()
    except BaseException:
        await _aclose(stream)
        raise

    async def chained() -> AsyncIterator[T]:
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await _aclose(stream)

    return chained()


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


# --- SSE -----------------------------------------------------------------------------------------------


def sse(data: dict[str, Any] | BaseModel) -> str:
    """One server-sent event carrying ``data`` as compact JSON."""
    if isinstance(data, BaseModel):
        payload = data.model_dump_json()
    else:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


def error_body(exc: BaseException) -> dict[str, Any]:
    """OpenAI's error object for an exception; unexpected errors are logged and reported as 500."""
    if isinstance(exc, LLMServeError):
        code = exc.code if exc.code is not None else exc.status
        return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": code}}
    log.error("unexpected error while streaming", exc_info=exc)
    return {
        "error": {
            "message": f"Internal server error: {type(exc).__name__}",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }


def sse_error(exc: BaseException) -> str:
    """The event sent when a stream fails after it started (followed by ``SSE_DONE``)."""
    return sse(error_body(exc))


def json_response(data: dict[str, Any], status: int = 200) -> Any:
    """A JSON response keeping the fields in the order they were built (vLLM's order), unsorted."""
    from quart import Response

    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status=status, mimetype="application/json")


def sse_response(events: AsyncIterator[str]) -> Any:
    """A Quart streaming response for ``events``; no response timeout (streams can be long).

    When the client disconnects, Quart cancels the iteration: CancelledError reaches the
    generator's await point and its ``finally`` blocks close the engine streams.
    """
    from quart import Response

    response = Response(events, mimetype="text/event-stream", headers=SSE_HEADERS)
    response.timeout = None
    return response
