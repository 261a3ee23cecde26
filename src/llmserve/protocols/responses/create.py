"""POST /v1/responses: items -> chat template -> generation -> output items, stored by default."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from llmserve.api import (
    InvalidRequestError,
    OutputKind,
    ParserPipeline,
    ProtocolContext,
    ServedModel,
    context,
    json_response,
    parse_body,
    sse_response,
)
from llmserve.protocols.responses import background
from llmserve.protocols.responses import items as item_rules
from llmserve.protocols.responses import tools as tool_rules
from llmserve.protocols.responses.events import EventWriter
from llmserve.protocols.responses.logprobs import LogprobWriter
from llmserve.protocols.responses.output import ResponseShell, Usage, output_items
from llmserve.protocols.responses.schemas import INCLUDE, ResponseRequest
from llmserve.protocols.responses.store import StoredResponse, current_store


@dataclass(slots=True)
class Prepared:
    """A request ready to generate: its prompt, parameters and how to read the output."""

    model: ServedModel
    shell: ResponseShell
    token_ids: list[int]
    params: Any
    tools: list[dict[str, Any]]
    choice: Any
    input: list[dict[str, Any]]
    context: list[dict[str, Any]]
    reasoning_kwargs: dict[str, Any]
    logprobs: Any = None  # a LogprobWriter when the request includes logprobs

    def pipeline(self, ctx: ProtocolContext) -> ParserPipeline:
        """One generation's reasoning -> tools parsing."""
        reasoning = ctx.reasoning_parser(model=self.model, chat_template_kwargs=self.reasoning_kwargs)
        parser = ctx.tool_parser(model=self.model, tools=self.tools) if self.choice == "auto" else None
        return ParserPipeline(
            reasoning, parser, tool_choice=self.choice,
            parallel_tool_calls=self.shell.req.parallel_tool_calls, request_tools=self.tools,
        )  # fmt: skip


async def prepare(ctx: ProtocolContext, req: ResponseRequest) -> Prepared:
    """Every check and the prompt, before anything generates; bad input is a 400 or 404 here."""
    if req.background and not req.store:
        raise InvalidRequestError("background responses must be stored (store: true)", param="store")
    if req.include and set(req.include) - set(INCLUDE):
        raise InvalidRequestError(f"unsupported include values: {req.include}", param="include")
    model = ctx.model_for(req.model)
    new_items = item_rules.normalize_input(req.input)
    earlier: list[dict[str, Any]] = []
    if req.previous_response_id:
        earlier = current_store().get(req.previous_response_id).conversation()
    tools = tool_rules.function_tools(req)
    choice = tool_rules.tool_choice(req, tools, ctx.config)
    structured = tool_rules.constraint(req, tools, choice)
    effort = req.reasoning.effort if req.reasoning else None
    token_ids = _render(ctx, model, req, [*earlier, *new_items], tools, effort)
    constraint = None
    if structured is not None:
        reasoning = ctx.reasoning_parser(model=model)  # the grammar starts after its end marker
        constraint = await ctx.compile_constraint(
            model, structured, after=reasoning.end_marker if reasoning is not None else None
        )
    shell = ResponseShell(req, model.answer_name(req.model), req.tool_choice or "auto")
    prepared = Prepared(model, shell, token_ids, None, tools, choice, new_items, earlier, {})
    prepared.logprobs = True if "message.output_text.logprobs" in (req.include or ()) else None
    overrides: dict[str, Any] = {"constraint": constraint}
    if prepared.pipeline(ctx).needs_special_tokens:
        overrides["skip_special_tokens"] = False  # the parsers read special-token markers
    if prepared.logprobs is not None:
        prepared.logprobs = LogprobWriter(model, req.top_logprobs or 0)
    fields = SimpleNamespace(
        temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_output_tokens, seed=req.seed,
        logprobs=prepared.logprobs is not None, top_logprobs=req.top_logprobs if prepared.logprobs else None,
    )  # fmt: skip
    prepared.params = ctx.sampling_params(model, fields, len(token_ids), **overrides)
    return prepared


def _render(
    ctx: ProtocolContext,
    model: ServedModel,
    req: ResponseRequest,
    items: list,
    tools: list,
    effort: str | None,
) -> list[int]:
    """The prompt's tokens; with ``truncation: auto`` the oldest items are dropped until it fits."""
    while True:
        messages = item_rules.to_messages(items, req.instructions)
        rendered = ctx.render_chat(model, messages, tools=tools or None, reasoning_effort=effort)
        room = model.max_model_len - (req.max_output_tokens or 1)
        if req.truncation != "auto" or len(rendered.token_ids) <= room or len(items) <= 1:
            return rendered.token_ids
        items = _drop_oldest_turn(items)


def _drop_oldest_turn(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A tool output without its call confuses templates: drop them together.
    rest = items[1:]
    while len(rest) > 1 and rest[0]["type"] in ("function_call_output", "reasoning"):
        rest = rest[1:]
    return rest


async def create_response() -> Any:
    """POST /v1/responses."""
    req = await parse_body(ResponseRequest)
    ctx = context()
    store = current_store()  # now: a streaming body runs outside the app context
    prepared = await prepare(ctx, req)
    kind = OutputKind.DELTA if req.stream or req.background else OutputKind.FINAL_ONLY
    stream = ctx.generate(
        prepared.model, prepared.token_ids, prepared.params, request_id=prepared.shell.id, kind=kind,
        prompt_param="input",
    )  # fmt: skip
    await stream.ready()  # the constraint compiled while the prompt was computed
    if req.stream or req.background:
        writer = EventWriter(
            prepared.shell,
            prepared.pipeline(ctx),
            req.max_tool_calls,
            len(prepared.token_ids),
            prepared.logprobs,
        )

        def events():
            return writer.events(stream, lambda body: _store(store, prepared, body), ctx, prepared.model)

        if not req.background:
            return sse_response(events())
        queued = StoredResponse(prepared.shell.body("queued"), prepared.input, prepared.context)
        log = background.start(queued, events, prepared.shell.body)
        return sse_response(log.follow()) if req.stream else json_response(queued.response)
    body = await _finish(ctx, prepared, stream)
    _store(store, prepared, body)
    return json_response(body)


async def _finish(ctx: ProtocolContext, prepared: Prepared, stream: Any) -> dict[str, Any]:
    """The response object of a whole (not streamed) generation."""
    try:
        result = await stream.result()
    finally:
        await stream.aclose()
    choice = result.outputs[0]
    parsed = prepared.pipeline(ctx).extract(choice.text)
    logprobs = prepared.logprobs(choice.logprobs or []) if prepared.logprobs is not None else None
    output = output_items(
        parsed.reasoning, parsed.content, parsed.tool_calls, prepared.shell.req.max_tool_calls, logprobs
    )
    usage = Usage(
        len(prepared.token_ids), result.num_cached_tokens, len(choice.token_ids),
        reasoning_tokens(ctx, prepared.model, parsed.reasoning),
    )  # fmt: skip
    return prepared.shell.body("completed", output, usage, choice.finish_reason)


def reasoning_tokens(ctx: ProtocolContext, model: ServedModel, text: str | None) -> int:
    """How many of the output tokens were reasoning (re-tokenized: the parser splits text)."""
    return len(ctx.tokenize(model, text, add_special_tokens=False)) if text else 0


def _store(store: Any, prepared: Prepared, body: dict[str, Any]) -> None:
    if prepared.shell.req.store:
        store.put(StoredResponse(body, prepared.input, prepared.context))
