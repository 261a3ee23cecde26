"""Chat template rendering and content-format detection (shared by every protocol plugin).

A chat template sees OpenAI-style messages. Templates differ in what they expect as a message's
``content``: a plain string, or a list of parts (``[{"type": "text", "text": ...}]``). The format
is detected from the template's syntax tree like vLLM does (does it loop over
``message['content']``?) unless ``--chat-template-content-format`` says otherwise.
"""

from __future__ import annotations

import codecs
import json
from collections import deque
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.nodes
import jinja2.sandbox

from llmserve.errors import ConfigError, InvalidRequestError, UnsupportedError

if TYPE_CHECKING:
    from llmserve.config import Config
    from llmserve.server.registry import ServedModel

TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
MEDIA_PARTS = frozenset(
    {"image_url", "input_image", "image_embeds", "image_pil", "audio_url", "input_audio", "video_url", "file"}
)
# apply_chat_template arguments a client must not override through chat_template_kwargs.
_RESERVED_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "return_dict",
        "return_tensors",
        "padding",
        "truncation",
        "max_length",
        "tokenizer_kwargs",
        "return_assistant_tokens_mask",
        "sanitize_control_tokens",
    }
)
_NO_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
    "template if the tokenizer does not define one."
)
_UNTRUSTED = (
    "Chat template is passed with request, but --trust-request-chat-template is not set. "
    "Refused request with untrusted chat template."
)


def load_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a file path, or the template itself (like vLLM: text holding any of
    ``{``, ``}`` or a newline is a template; anything else must be a readable file)."""
    if value is None:
        return None
    try:
        with open(value, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        if not any(c in value for c in "{}\n"):
            raise ConfigError(
                f"--chat-template: the supplied chat template ({value}) looks like a file path, "
                f"but it failed to be opened. Reason: {exc}"
            ) from None
        # Inline on the command line: interpret escapes such as \n.
        return codecs.decode(value, "unicode_escape")


def configured_template(model: ServedModel, config: Config) -> str | None:
    """The server's --chat-template, loaded once per model."""
    key = "chat_template"
    if key not in model.cache:
        model.cache[key] = load_chat_template(config.chat_template)
    return model.cache[key]


def resolve_template(
    model: ServedModel, config: Config, chat_template: str | None = None, tools: Any = None
) -> str:
    """The template text to render with: the request's (only under --trust-request-chat-template),
    the server's, or the tokenizer's."""
    if chat_template is not None and not config.trust_request_chat_template:
        raise InvalidRequestError(_UNTRUSTED, param="chat_template")
    template = chat_template or configured_template(model, config)
    tokenizer = model.tokenizer
    try:
        return tokenizer.get_chat_template(template, tools)
    except ValueError:
        raise InvalidRequestError(_NO_TEMPLATE) from None


# --- content format ---------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def detect_content_format(template: str) -> str:
    """ "openai" when the template iterates over a message's content parts, else "string"."""
    try:
        root = jinja2.sandbox.ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(
            template
        )
    except jinja2.TemplateError:
        return "string"
    message_vars = set(_loop_targets(root, _assigned_names(root, "messages")))
    return "openai" if any(_loop_targets(root, message_vars, key="content")) else "string"


def _accesses(node: jinja2.nodes.Node, names: set[str], key: str | None = None) -> bool:
    """Is ``node`` the variable (``key`` None) or its ``key`` element, through filters/tests/slices?"""
    if isinstance(node, (jinja2.nodes.Filter, jinja2.nodes.Test)):
        return node.node is not None and _accesses(node.node, names, key)
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
        return _accesses(node.node, names, key)
    if key is None:
        return isinstance(node, jinja2.nodes.Name) and node.name in names
    if isinstance(node, jinja2.nodes.Getitem):
        inner, ok = node.node, isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == key
    elif isinstance(node, jinja2.nodes.Getattr):
        inner, ok = node.node, node.attr == key
    else:
        return False
    return ok and isinstance(inner, jinja2.nodes.Name) and inner.name in names


def _assigned_names(root: jinja2.nodes.Template, name: str) -> set[str]:
    """``name`` plus every variable assigned from it (``{% set msgs = messages[1:] %}``)."""
    found, queue = {name}, deque([name])
    while queue:
        current = queue.popleft()
        for assign in root.find_all(jinja2.nodes.Assign):
            target = assign.target
            if isinstance(target, jinja2.nodes.Name) and _accesses(assign.node, {current}):
                if target.name not in found:
                    found.add(target.name)
                    queue.append(target.name)
    return found


def _loop_targets(root: jinja2.nodes.Template, names: set[str], key: str | None = None) -> Iterator[str]:
    for loop in root.find_all(jinja2.nodes.For):
        if isinstance(loop.target, jinja2.nodes.Name) and _accesses(loop.iter, names, key):
            yield loop.target.name


def content_format(config: Config, template: str) -> str:
    configured = config.chat_template_content_format
    return detect_content_format(template) if configured == "auto" else configured


# --- messages ---------------------------------------------------------------------------------------


def normalize_messages(messages: Sequence[Any], fmt: str) -> list[dict[str, Any]]:
    """OpenAI messages (dicts or pydantic models) -> what the template sees, in ``fmt``.

    Text parts are joined with newlines for "string" templates and kept as text parts for "openai"
    ones. Media parts are refused (no multimodal model is served). Tool-call arguments are parsed
    from JSON so templates can iterate over them.
    """
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    out = []
    for i, message in enumerate(messages):
        msg = message.model_dump(exclude_none=True) if hasattr(message, "model_dump") else dict(message)
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(f"messages[{i}].role must be a non-empty string", param="messages")
        texts = _texts(msg.get("content"), i)
        if fmt == "openai":
            msg["content"] = [{"type": "text", "text": text} for text in texts]
        else:
            msg["content"] = "\n".join(texts)
        if msg.get("tool_calls"):
            msg["tool_calls"] = [_parse_arguments(call) for call in msg["tool_calls"]]
        out.append(msg)
    return out


def _texts(content: Any, i: int) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"messages[{i}].content must be a string or a list of content parts", param="messages"
        )
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):  # a list or an object is no part type (and unhashable)
            raise InvalidRequestError(
                f"messages[{i}].content: each part needs a string `type`, got {kind!r}"[:300],
                param="messages",
            )
        if kind in TEXT_PARTS:
            value = part.get(kind if kind == "refusal" else "text")
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"messages[{i}].content: a {kind} part needs a string", param="messages"
                )
            texts.append(value)
        elif kind in MEDIA_PARTS:
            raise UnsupportedError(
                f"messages[{i}].content: '{kind}' parts are not supported: the served model is not "
                "multimodal and accepts text only.",
                param="messages",
            )
        else:
            raise InvalidRequestError(f"messages[{i}].content: unknown part type {kind!r}", param="messages")
    return texts


def _parse_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        try:
            function = {**function, "arguments": json.loads(function["arguments"])}
        except json.JSONDecodeError:
            return call  # leave it as the client sent it
        return {**call, "function": function}
    return call


# --- rendering --------------------------------------------------------------------------------------


def render_chat(
    model: ServedModel,
    config: Config,
    messages: Sequence[Any],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template: str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    documents: list[dict[str, Any]] | None = None,
    add_special_tokens: bool = False,
    reasoning_effort: str | None = None,
) -> tuple[str, list[int]]:
    """Render ``messages`` with the chat template and tokenize the result.

    Returns ``(prompt_text, token_ids)``. Every client mistake (empty messages, media parts, a
    template that raises for this conversation) is an InvalidRequestError.
    """
    if continue_final_message and add_generation_prompt:
        raise InvalidRequestError(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            param="continue_final_message",
        )
    tools = [t.model_dump(exclude_none=True) if hasattr(t, "model_dump") else t for t in tools or []] or None
    template = resolve_template(model, config, chat_template, tools)
    conversation = normalize_messages(messages, content_format(config, template))
    extra = {k: v for k, v in (chat_template_kwargs or {}).items() if k not in _RESERVED_KWARGS}
    if reasoning_effort is not None:  # vLLM passes it to the template as a kwarg
        extra.setdefault("reasoning_effort", reasoning_effort)
    tokenizer = model.tokenizer
    try:
        text = tokenizer.apply_chat_template(
            conversation,
            tools=tools,
            documents=documents,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **extra,
        )
    except jinja2.TemplateError as exc:
        raise InvalidRequestError(f"The chat template raised an error: {exc}", param="messages") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise InvalidRequestError(
            f"The chat template could not render these messages: {type(exc).__name__}: {exc}",
            param="messages",
        ) from None
    from llmserve.protocols.shared.prompts import check_text_fits

    check_text_fits(tokenizer, text, model.max_model_len, "messages")
    token_ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return text, list(token_ids)
