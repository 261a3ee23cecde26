"""POST /v1/messages, streaming and not, and POST /v1/messages/count_tokens."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from llmserve.api import (
    OutputKind,
    ParserPipeline,
    ProtocolContext,
    ServedModel,
    context,
    json_response,
    parse_body,
    sse_response,
)
from llmserve.protocols.anthropic import convert
from llmserve.protocols.anthropic import schemas as s
from llmserve.protocols.anthropic.errors import anthropic_id
from llmserve.protocols.anthropic.prompt import PreparedPrompt, prepare
from llmserve.protocols.anthropic.response import Answer
from llmserve.protocols.anthropic.signature import key_for
from llmserve.protocols.anthropic.streaming import events


async def count_tokens() -> Any:
    """The rendered prompt's size: what /v1/messages would report as its whole input."""
    req = await parse_body(s.CountTokensRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    return json_response({"input_tokens": len(prepare(ctx, model, req).token_ids)})


async def create_message() -> Any:
    """Generate one assistant turn; ``stream: true`` answers with Anthropic's event stream."""
    req = await parse_body(s.MessagesRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    prepared = prepare(ctx, model, req)
    pipeline = _pipeline(ctx, model, req, prepared)
    params = await _sampling_params(ctx, model, req, prepared, pipeline)
    message_id = anthropic_id("msg")
    kind = OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY
    stream = ctx.generate(
        model, prepared.token_ids, params, request_id=message_id, kind=kind, prompt_param="messages"
    )
    await stream.ready()  # the constraint compiled while the prompt was computed
    answer = Answer(
        message_id, model.answer_name(req.model), len(prepared.token_ids), pipeline, req.stop_sequences,
        signing_key=key_for(ctx.config.api_key, model.name),
    )  # fmt: skip
    if req.stream:
        return sse_response(events(stream, answer))
    try:
        result = await stream.result()
    finally:
        await stream.aclose()
    return json_response(answer.whole(result))


def _pipeline(
    ctx: ProtocolContext, model: ServedModel, req: s.MessagesRequest, prepared: PreparedPrompt
) -> ParserPipeline:
    """Reasoning -> tools for the answer. "auto" uses --tool-call-parser when one is set (else the
    text stays text); forced choices read back the constrained JSON."""
    reasoning = ctx.reasoning_parser(model=model, chat_template_kwargs=convert.template_kwargs(req))
    parser = None
    if prepared.tool_choice == "auto":
        parser = ctx.tool_parser(model=model, tools=prepared.tools)
    return ParserPipeline(
        reasoning,
        parser,
        tool_choice=prepared.tool_choice,
        parallel_tool_calls=convert.parallel_calls(req),
        request_tools=prepared.tools,
    )


async def _sampling_params(
    ctx: ProtocolContext,
    model: ServedModel,
    req: s.MessagesRequest,
    prepared: PreparedPrompt,
    pipeline: ParserPipeline,
):
    spec = convert.constraint_spec(req, prepared.tools, prepared.tool_choice)
    budget = convert.thinking_budget(req)
    overrides: dict[str, Any] = {}
    if spec is not None or budget is not None:
        reasoning = ctx.reasoning_parser(model=model)  # the constraint starts after reasoning ends
        after = reasoning.end_marker if reasoning is not None else None
        if not after:
            budget = None  # no reasoning parser: the model writes no thinking to budget
        if spec is not None:
            overrides["constraint"] = await ctx.compile_constraint(model, spec, after=after, budget=budget)
        elif budget is not None:
            overrides["constraint"] = ctx.reasoning_budget(model, after, budget)
    if pipeline.needs_special_tokens:
        overrides["skip_special_tokens"] = False  # the parsers read special-token markers
    # max_tokens is a ceiling: Claude Code asks for more than a small model's context holds.
    room = max(1, model.max_model_len - len(prepared.token_ids))
    fields = SimpleNamespace(
        max_tokens=min(req.max_tokens, room),
        stop=req.stop_sequences or None,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k if req.top_k else None,
    )
    return ctx.sampling_params(model, fields, len(prepared.token_ids), **overrides)
