"""POST /v1/completions (legacy text completions), streaming and not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmserve.api import (
    SSE_DONE,
    OutputKind,
    Prompt,
    RequestOutput,
    ServedModel,
    UnsupportedError,
    context,
    json_response,
    merge_streams,
    now,
    parse_body,
    random_id,
    sse,
    sse_error,
    sse_response,
)
from llmserve.protocols.openai.logprobs import completion_logprobs, prompt_logprobs, token_text
from llmserve.protocols.openai.schemas import CompletionRequest
from llmserve.protocols.openai.serving import (
    apply_server_defaults,
    check_supported,
    ready,
    results,
    start_requests,
    stream_flags,
    usage,
)


async def create_completion() -> Any:
    req = await parse_body(CompletionRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    if req.suffix is not None:
        raise UnsupportedError("suffix is not currently supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise UnsupportedError(
            f"best_of must equal n (got best_of={req.best_of}, n={req.n})", param="best_of"
        )
    check_supported(req)
    apply_server_defaults(req, ctx.config)
    include_usage, continuous = stream_flags(req, ctx.config)
    if req.echo and req.logprobs is not None and req.prompt_logprobs is None:
        overrides = {"prompt_logprobs": req.logprobs}  # echoed tokens carry logprobs too
    else:
        overrides = {}
    prompts = ctx.prompts(
        model,
        req.prompt,
        add_special_tokens=req.add_special_tokens,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
    )
    constraint = await ctx.structured_constraint(model, req)
    if constraint is not None:
        overrides["constraint"] = constraint
    params = [ctx.sampling_params(model, req, len(p.token_ids), **overrides) for p in prompts]
    request_id = f"cmpl-{req.request_id}" if req.request_id else random_id("cmpl")
    kind = OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY
    streams = await ready(start_requests(ctx, model, request_id, prompts, params, kind, req))
    view = _View(model, req, request_id, prompts, ctx.config.enable_prompt_tokens_details)
    if req.stream:
        return sse_response(view.events(merge_streams(streams), include_usage, continuous))
    return json_response(view.response(await results(streams)))


class _View:
    """Turns engine outputs into the completions wire shape for one request."""

    def __init__(
        self,
        model: ServedModel,
        req: CompletionRequest,
        request_id: str,
        prompts: list[Prompt],
        details: bool,
    ) -> None:
        self.req, self.id, self.prompts, self.details = req, request_id, prompts, details
        self.model = model.answer_name(req.model)
        self.tokenizer = model.tokenizer
        self.token_text = token_text(model)
        self.created = now()

    def prompt_text(self, prompt: Prompt) -> str:
        return prompt.text if prompt.text is not None else self.tokenizer.decode(prompt.token_ids)

    def logprobs(self, steps: list, token_ids: list[int], offset: int) -> dict | None:
        if self.req.logprobs is None:
            return None
        as_ids = bool(self.req.return_tokens_as_token_ids)
        return completion_logprobs(steps, token_ids, self.token_text, self.req.logprobs, offset, as_ids)

    def echo_steps(self, prompt: Prompt, given: list | None) -> list:
        steps = list(given or [])
        return steps + [None] * (len(prompt.token_ids) - len(steps))

    # --- non-streaming ---------------------------------------------------------------------------

    def response(self, outputs: list[RequestOutput]) -> dict[str, Any]:
        choices = []
        completion_tokens = 0
        n = self.req.n
        for i, (prompt, result) in enumerate(zip(self.prompts, outputs, strict=True)):
            echo_text = self.prompt_text(prompt) if self.req.echo else ""
            for choice in result.outputs:
                completion_tokens += len(choice.token_ids)
                steps, ids = list(choice.logprobs or []), choice.token_ids
                if self.req.echo:
                    steps = self.echo_steps(prompt, result.prompt_logprobs) + steps
                    ids = prompt.token_ids + ids
                item = {
                    "index": i * n + choice.index,
                    "text": echo_text + choice.text,
                    "logprobs": self.logprobs(steps, ids, 0),
                    "finish_reason": choice.finish_reason,
                    "stop_reason": choice.stop_reason,
                }
                if self.req.prompt_logprobs is not None:
                    item["prompt_logprobs"] = prompt_logprobs(
                        result.prompt_logprobs, self.token_text, len(prompt.token_ids)
                    )
                if self.req.return_token_ids:
                    item["prompt_token_ids"] = prompt.token_ids
                    item["token_ids"] = choice.token_ids
                choices.append(item)
        prompt_tokens = sum(len(p.token_ids) for p in self.prompts)
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(
                prompt_tokens,
                completion_tokens,
                sum(o.num_cached_tokens for o in outputs) if self.details else None,
            ),
            "system_fingerprint": None,
        }

    # --- streaming -------------------------------------------------------------------------------

    def chunk(self, choices: list[dict], usage_info: dict | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage_info is not None:
            body["usage"] = usage_info
        return sse(body)

    async def events(
        self, source: AsyncIterator, include_usage: bool, continuous: bool
    ) -> AsyncIterator[str]:
        n = self.req.n
        counts = [0] * (len(self.prompts) * n)
        offsets = [0] * len(counts)
        echoed = [False] * len(counts)
        try:
            async for i, out in source:
                prompt = self.prompts[i]
                for c in out.outputs:
                    idx = i * n + c.index
                    counts[idx] += len(c.token_ids)
                    text, steps, ids = c.text, list(c.logprobs or []), c.token_ids
                    if self.req.echo and not echoed[idx]:
                        echoed[idx] = True
                        text = self.prompt_text(prompt) + text
                        steps = self.echo_steps(prompt, out.prompt_logprobs) + steps
                        ids = prompt.token_ids + ids
                    if not text and not c.finished and not (self.req.logprobs is not None and ids):
                        continue
                    logprobs = self.logprobs(steps, ids, offsets[idx])
                    offsets[idx] += len(text)
                    choice = {
                        "index": idx,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                        "stop_reason": c.stop_reason,
                    }
                    if self.req.return_token_ids:
                        choice["token_ids"] = c.token_ids
                    per_choice = usage(len(prompt.token_ids), counts[idx]) if continuous else None
                    yield self.chunk([choice], per_choice)
            if include_usage:
                prompt_tokens = sum(len(p.token_ids) for p in self.prompts)
                yield self.chunk([], usage(prompt_tokens, sum(counts)))
        except Exception as exc:  # CancelledError (disconnect) passes through
            yield sse_error(exc)
        finally:
            await source.aclose()
        yield SSE_DONE
