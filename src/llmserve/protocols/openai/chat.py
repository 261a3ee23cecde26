"""POST /v1/chat/completions, streaming and not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmserve.api import (
    SSE_DONE,
    Config,
    InvalidRequestError,
    OutputKind,
    ParsedDelta,
    ParserPipeline,
    Prompt,
    ProtocolContext,
    RequestOutput,
    ServedModel,
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
from llmserve.protocols.openai.logprobs import chat_logprobs, prompt_logprobs, token_text
from llmserve.protocols.openai.schemas import ChatCompletionRequest
from llmserve.protocols.openai.serving import (
    apply_server_defaults,
    check_supported,
    ready,
    results,
    start_requests,
    stream_flags,
    usage,
)
from llmserve.protocols.openai.tools import (
    effective_tool_choice,
    framed_calls_constraint,
    strict_tools_constraint,
    tool_constraint,
)


def make_pipeline(
    ctx: ProtocolContext, model: ServedModel, req: ChatCompletionRequest, tool_choice: str | dict
) -> ParserPipeline:
    """One choice's reasoning -> tools parsing: the server's parsers, and tool_choice's rules."""
    kwargs = dict(req.chat_template_kwargs or {})
    reasoning = ctx.reasoning_parser(model=model, chat_template_kwargs=kwargs)
    tools = [tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None
    parser = ctx.tool_parser(model=model, tools=tools) if tool_choice == "auto" else None
    return ParserPipeline(
        reasoning, parser, tool_choice=tool_choice, parallel_tool_calls=req.parallel_tool_calls is not False,
        request_tools=tools,
    )  # fmt: skip


def prepare_chat(
    ctx: ProtocolContext, model: ServedModel, req: ChatCompletionRequest
) -> tuple[str, list[int]]:
    """Everything /v1/chat/completions does before generating: tool_choice checks, the chat
    template, tokenization and truncate_prompt_tokens. Returns (prompt_text, token_ids)."""
    tool_choice = effective_tool_choice(req, ctx.config)
    hide_tools = tool_choice == "none" and ctx.config.exclude_tools_when_tool_choice_none
    rendered = ctx.render_chat(
        model,
        req.messages,
        tools=[tool.model_dump(exclude_none=True) for tool in req.tools]
        if req.tools and not hide_tools
        else None,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template=req.chat_template,
        chat_template_kwargs=req.chat_template_kwargs,
        documents=req.documents,
        add_special_tokens=req.add_special_tokens,
        reasoning_effort=req.reasoning_effort,
    )
    token_ids = rendered.token_ids
    if req.truncate_prompt_tokens is not None:
        truncated = ctx.prompts(
            model, token_ids, truncate_prompt_tokens=req.truncate_prompt_tokens, param="messages"
        )
        token_ids = truncated[0].token_ids
    return rendered.text, token_ids


async def create_chat_completion() -> Any:
    req = await parse_body(ChatCompletionRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    check_supported(req)
    apply_server_defaults(req, ctx.config)
    include_usage, continuous = stream_flags(req, ctx.config)
    tool_choice = effective_tool_choice(req, ctx.config)
    text, token_ids = prepare_chat(ctx, model, req)
    prompt = Prompt(token_ids, text)
    structured = tool_constraint(req, tool_choice)
    parsing = tool_choice
    if tool_choice == "required":  # in the tool parser's own format when it has one
        framed = framed_calls_constraint(req, make_pipeline(ctx, model, req, "auto").tool_parser)
        structured, parsing = (framed, "auto") if framed is not None else (structured, tool_choice)
    pipelines = [make_pipeline(ctx, model, req, parsing) for _ in range(req.n)]
    if tool_choice == "auto":
        structured = strict_tools_constraint(req, pipelines[0].tool_parser)
    structured = structured or ctx.structured_outputs(req)
    constraint = await _constraint(ctx, model, req, structured)
    overrides = {"constraint": constraint}
    if pipelines[0].needs_special_tokens and req.skip_special_tokens is None:
        overrides["skip_special_tokens"] = False  # the parsers read special-token markers
    params = ctx.sampling_params(model, req, len(token_ids), **overrides)
    request_id = f"chatcmpl-{req.request_id}" if req.request_id else random_id("chatcmpl")
    kind = OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY
    streams = await ready(start_requests(ctx, model, request_id, [prompt], [params], kind, req, "messages"))
    view = _View(model, req, request_id, prompt, tool_choice, ctx.config, pipelines)
    if req.stream:
        return sse_response(view.events(merge_streams(streams), include_usage, continuous))
    return json_response(view.response((await results(streams))[0]))


async def _constraint(ctx, model: ServedModel, req: ChatCompletionRequest, structured) -> Any:
    """The grammar (from after the reasoning's end marker) and the reasoning budget, or None."""
    budget = req.thinking_token_budget
    if structured is None and budget is None:
        return None
    reasoning = ctx.reasoning_parser(model=model, chat_template_kwargs=req.chat_template_kwargs)
    after = reasoning.end_marker if reasoning is not None else None
    if budget is not None and not after:
        raise InvalidRequestError(
            "thinking_token_budget needs a reasoning parser with an end marker (--reasoning-parser)",
            param="thinking_token_budget",
        )
    if structured is not None:
        return await ctx.compile_constraint(model, structured, after=after, budget=budget)
    return ctx.reasoning_budget(model, after, budget)


def _echo_text(req: ChatCompletionRequest, role: str) -> str:
    """vLLM's chat echo: the last message's content, when it has the role being answered."""
    last = req.messages[-1]
    if not req.echo or last.role != role or last.content is None:
        return ""
    if isinstance(last.content, str):
        return last.content
    return "\n".join(part.get("text", "") for part in last.content if isinstance(part, dict))


class _View:
    """Turns engine outputs into the chat wire shape for one request."""

    def __init__(
        self,
        model: ServedModel,
        req: ChatCompletionRequest,
        request_id: str,
        prompt: Prompt,
        tool_choice: str | dict,
        config: Config,
        pipelines: list[ParserPipeline],
    ) -> None:
        self.req, self.id, self.prompt, self.tool_choice = req, request_id, prompt, tool_choice
        self.pipelines = pipelines
        self.model = model.answer_name(req.model)
        self.token_text = token_text(model)
        self.role = config.response_role if req.add_generation_prompt else req.messages[-1].role
        self.details = config.enable_prompt_tokens_details
        self.cached = 0  # prompt tokens the prefix cache supplied (streaming: from the first output)
        self.echo = _echo_text(req, self.role)
        self.created = now()

    def logprobs(self, steps: list) -> dict | None:
        if not self.req.logprobs:
            return None
        num_top = self.req.top_logprobs or 0
        return {
            "content": chat_logprobs(
                steps, self.token_text, num_top, bool(self.req.return_tokens_as_token_ids)
            )
        }

    def finish_reason(self, reason: str | None, tool_calls: bool) -> str | None:
        # vLLM: "tool_calls" unless the tool was named by the client
        if tool_calls and not isinstance(self.tool_choice, dict) and reason == "stop":
            return "tool_calls"
        return reason

    def reasoning(self, text: str | None) -> dict[str, Any]:
        """Both names clients read: ``reasoning`` (vLLM) and ``reasoning_content``."""
        text = text if self.req.include_reasoning else None
        return {"reasoning": text, "reasoning_content": text}

    # --- non-streaming ---------------------------------------------------------------------------

    def response(self, result: RequestOutput) -> dict[str, Any]:
        choices = []
        for choice in result.outputs:
            parsed = self.pipelines[choice.index].extract(choice.text)
            calls = [call.to_dict() for call in parsed.tool_calls]
            content = parsed.content if parsed.content is not None or calls else ""
            if self.echo:
                content = self.echo + (content or "")
            message = {
                "role": self.role,
                "content": content,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": calls,
                **self.reasoning(parsed.reasoning),
            }
            item = {
                "index": choice.index,
                "message": message,
                "logprobs": self.logprobs(choice.logprobs or []),
                "finish_reason": self.finish_reason(choice.finish_reason, bool(calls)),
                "stop_reason": choice.stop_reason,
            }
            if self.req.return_token_ids:
                item["token_ids"] = choice.token_ids
            choices.append(item)
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(sum(len(c.token_ids) for c in result.outputs), result.num_cached_tokens),
            "system_fingerprint": None,
            "prompt_logprobs": prompt_logprobs(result.prompt_logprobs, self.token_text),
        }
        if self.req.return_token_ids:
            body["prompt_token_ids"] = self.prompt.token_ids
        return body

    def usage(self, completion_tokens: int, cached: int) -> dict[str, Any]:
        return usage(len(self.prompt.token_ids), completion_tokens, cached if self.details else None)

    # --- streaming -------------------------------------------------------------------------------

    def delta(self, parsed: ParsedDelta) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if parsed.reasoning and self.req.include_reasoning:
            delta.update(reasoning=parsed.reasoning, reasoning_content=parsed.reasoning)
        if parsed.content:
            delta["content"] = parsed.content
        if parsed.tool_calls:
            delta["tool_calls"] = [d.to_dict() for d in parsed.tool_calls]
        return delta

    def chunk(self, choices: list[dict], usage_info: dict | None = None, **extra: Any) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage_info is not None:
            body["usage"] = usage_info
        body.update(extra)
        return sse(body)

    async def events(
        self, source: AsyncIterator, include_usage: bool, continuous: bool
    ) -> AsyncIterator[str]:
        n = self.req.n
        counts = [0] * n
        called = [False] * n

        def choice_usage(i: int) -> dict | None:
            return self.usage(counts[i], self.cached) if continuous else None

        try:
            first_extra = {"prompt_token_ids": self.prompt.token_ids} if self.req.return_token_ids else {}
            for i in range(n):
                delta = {"role": self.role, "content": ""}
                choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
                yield self.chunk([choice], choice_usage(i), **first_extra)
                if self.echo:
                    choice = {
                        "index": i,
                        "delta": {"content": self.echo},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    yield self.chunk([choice], choice_usage(i))
            async for _, out in source:
                self.cached = max(self.cached, out.num_cached_tokens)
                for c in out.outputs:
                    i = c.index
                    counts[i] += len(c.token_ids)
                    logprobs = self.logprobs(c.logprobs) if c.logprobs else None
                    if not c.text and not c.finished and logprobs is None:
                        continue
                    pipeline = self.pipelines[i]
                    parsed = pipeline.feed(c.text)
                    if c.finished:
                        parsed.add(pipeline.finish())
                    delta = self.delta(parsed)
                    if not delta and not c.finished and logprobs is None:
                        continue  # the parsers hold this text back (a possible tag)
                    called[i] = called[i] or "tool_calls" in delta
                    choice = {
                        "index": i,
                        "delta": delta,
                        "logprobs": logprobs,
                        "finish_reason": self.finish_reason(c.finish_reason, called[i]),
                    }
                    if c.finished:
                        choice["stop_reason"] = c.stop_reason
                    if self.req.return_token_ids:
                        choice["token_ids"] = c.token_ids
                    yield self.chunk([choice], choice_usage(i))
            if include_usage:
                yield self.chunk([], self.usage(sum(counts), self.cached))
        except Exception as exc:  # CancelledError (client gone) is not an Exception: it propagates
            yield sse_error(exc)
        finally:
            await source.aclose()
        yield SSE_DONE
