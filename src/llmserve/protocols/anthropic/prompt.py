"""Rendering an Anthropic conversation with the model's chat template, for /v1/messages and
/v1/messages/count_tokens alike (so a count is exactly the prompt a request runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmserve.api import InvalidRequestError, ProtocolContext, ServedModel
from llmserve.protocols.anthropic import convert
from llmserve.protocols.anthropic import schemas as s
from llmserve.protocols.anthropic.signature import key_for, verify


@dataclass(slots=True)
class PreparedPrompt:
    """A rendered conversation and the tool facts generation needs."""

    text: str
    token_ids: list[int]
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any]


def check_signatures(req: s.CountTokensRequest, key: bytes) -> None:
    """A thinking block passed back with a signature must be the one this server signed."""
    for i, msg in enumerate(req.messages):
        for j, block in enumerate(msg.content if isinstance(msg.content, list) else ()):
            if isinstance(block, s.ThinkingBlock) and block.signature:
                if not verify(key, block.thinking, block.signature):
                    raise InvalidRequestError(
                        f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block "
                        "(thinking blocks must be passed back unmodified)",
                        param="messages",
                    )


def prepare(ctx: ProtocolContext, model: ServedModel, req: s.CountTokensRequest) -> PreparedPrompt:
    """Convert and render ``req``; every client mistake is a 400."""
    check_signatures(req, key_for(ctx.config.api_key, model.name))
    tools = convert.openai_tools(req)
    choice = convert.tool_choice(req, tools)
    messages = convert.openai_messages(req)
    prefill = messages[-1]["role"] == "assistant"  # the answer continues the client's last turn
    rendered = ctx.render_chat(
        model,
        messages,
        tools=tools,
        add_generation_prompt=not prefill,
        continue_final_message=prefill,
        chat_template_kwargs=convert.template_kwargs(req),
        reasoning_effort=convert.reasoning_effort(req),
    )
    return PreparedPrompt(rendered.text, rendered.token_ids, tools, choice)
