"""POST /v1/chat/completions, streaming and not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmserve.api import (
    SSE_DONE,
    OutputKind,
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
from llmserve.protocols.openai.serving import check_supported, results, start_requests, stream_flags, usage
from llmserve.protocols.openai.tools import (
    ToolCallStream,
    effective_tool_choice,
    extract_tool_calls,
    tool_constraint,
)


def chat_template_kwargs(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """The request's chat_template_kwargs, with ``reasoning_effort`` added as vLLM does."""
    kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort is not None:
        kwargs.setdefault("reasoning_effort", req.reasoning_effort)
    return kwargs or None


def prepare_chat(
    ctx: ProtocolContext, model: ServedModel, req: ChatCompletionRequest
) -> tuple[str, list[int]]:
    """Everything /v1/chat/completions does before generating: tool_choice checks, the chat
    template, tokenization and truncate_prompt_tokens. Returns (prompt_text, token_ids)."""
    effective_tool_choice(req, ctx.config)
    rendered = ctx.render_chat(
        model,
        req.messages,
        tools=[tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template=req.chat_template,
        chat_template_kwargs=chat_template_kwargs(req),
        documents=req.documents,
        add_special_tokens=req.add_special_tokens,
    )
    token_ids = rendered.token_ids
    if req.truncate_prompt_tokens is not None:
        truncated = ctx.prompts(model, token_ids, truncate_prompt_tokens=req.truncate_prompt_tokens)
        token_ids = truncated[0].token_ids
    return rendered.text, token_ids


async def create_chat_completion() -> Any:
    req = await parse_body(ChatCompletionRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    check_supported(req)
    include_usage, continuous = stream_flags(req)
    tool_choice = effective_tool_choice(req, ctx.config)
    structured = tool_constraint(req, tool_choice) or ctx.structured_outputs(req)
    text, token_ids = prepare_chat(ctx, model, req)
    prompt = Prompt(token_ids, text)
    constraint = None
    if structured is not None:
        reasoning = ctx.reasoning_parser(model=model)  # the grammar starts after its end marker
        after = reasoning.end_marker if reasoning is not None else None
        constraint = await ctx.compile_constraint(model, structured, after=after)
    params = ctx.sampling_params(model, req, len(token_ids), constraint=constraint)
    request_id = random_id("chatcmpl")
    kind = OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY
    streams = start_requests(ctx, model, request_id, [prompt], [params], kind, req.priority)
    view = _View(model, req, request_id, prompt, tool_choice)
    if req.stream:
        return sse_response(view.events(merge_streams(streams), include_usage, continuous))
    return json_response(view.response((await results(streams))[0]))


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
    ) -> None:
        self.req, self.id, self.prompt, self.tool_choice = req, request_id, prompt, tool_choice
        self.model = model.answer_name(req.model)
        self.token_text = token_text(model)
        self.role = "assistant" if req.add_generation_prompt else req.messages[-1].role
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

    # --- non-streaming ---------------------------------------------------------------------------

    def response(self, result: RequestOutput) -> dict[str, Any]:
        choices = []
        for choice in result.outputs:
            content, calls = extract_tool_calls(choice.text, self.tool_choice, self.req.parallel_tool_calls)
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
                "reasoning_content": None,
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
            "usage": usage(len(self.prompt.token_ids), sum(len(c.token_ids) for c in result.outputs)),
            "system_fingerprint": None,
            "prompt_logprobs": prompt_logprobs(result.prompt_logprobs, self.token_text),
        }
        if self.req.return_token_ids:
            body["prompt_token_ids"] = self.prompt.token_ids
        return body

    # --- streaming -------------------------------------------------------------------------------

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
        prompt_tokens = len(self.prompt.token_ids)
        counts = [0] * n
        tools = [ToolCallStream(self.tool_choice) for _ in range(n)]
        called = [False] * n

        def choice_usage(i: int) -> dict | None:
            return usage(prompt_tokens, counts[i]) if continuous else None

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
                for c in out.outputs:
                    i = c.index
                    counts[i] += len(c.token_ids)
                    logprobs = self.logprobs(c.logprobs) if c.logprobs else None
                    if not c.text and not c.finished and logprobs is None:
                        continue
                    delta = tools[i].delta(c.text)
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
                yield self.chunk([], usage(prompt_tokens, sum(counts)))
        except Exception as exc:  # CancelledError (client gone) is not an Exception: it propagates
            yield sse_error(exc)
        finally:
            await source.aclose()
        yield SSE_DONE
