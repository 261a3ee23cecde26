"""Prompts as the engine sees them: text or token ids, tokenized and truncated."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llmserve.errors import InvalidRequestError


@dataclass(slots=True)
class Prompt:
    """One prompt as the engine sees it; ``text`` is None when the client sent token ids."""

    token_ids: list[int]
    text: str | None = None


_SPACE = re.compile(r"\s+")
_LONGEST: dict[int, int] = {}  # id(tokenizer) -> characters in its longest token


# The JSON schema of the prompt forms parse_prompts takes (text, texts, token ids, lists of
# token ids); parse_prompts checks them itself, so its errors name the field in plain words.
PROMPT_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        {
            "type": "array",
            "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            "minItems": 1,
        },
    ]
}


def _chars_per_token(tokenizer: Any) -> int:
    """At most how many non-space characters one token covers: the longest token string, twice
    over for normalizers that fold characters."""
    longest = _LONGEST.get(id(tokenizer))
    if longest is None:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        longest = _LONGEST[id(tokenizer)] = max(map(len, vocab), default=0) or 64
    return 2 * longest


def most_tokens(tokenizer: Any, max_model_len: int | None) -> int | None:
    """How many token ids /detokenize decodes at most: twice the non-space characters
    ``check_text_fits`` lets through; None without a context length."""
    return None if max_model_len is None else 2 * _chars_per_token(tokenizer) * max_model_len


def check_text_fits(tokenizer: Any, text: str, max_model_len: int | None, param: str = "prompt") -> None:
    """Refuse (400 naming ``param``), without tokenizing, a text that cannot fit in
    ``max_model_len`` tokens: one token covers at most ``_chars_per_token`` non-space
    characters. Keeps a 10 MB prompt from holding the event loop for the seconds its
    tokenization takes."""
    if max_model_len is None or len(text) <= max_model_len:
        return
    limit = _chars_per_token(tokenizer) * max_model_len
    if len(text) > limit and len(_SPACE.sub("", text)) > limit:
        raise InvalidRequestError(
            f"{param} is {len(text)} characters: more than this model's context of {max_model_len} "
            "tokens can hold. Please shorten it.",
            param=param,
        )


# Tokens tokenized past the ones kept, so that the kept ones do not depend on where the text was cut.
_MARGIN = 64


def bounded_text(tokenizer: Any, text: str, tokens: int, keep: str = "end") -> str:
    """The end (``keep="end"``) or start of ``text`` that surely holds more than ``tokens``
    tokens, or ``text`` when it is not that long: tokenizing it and keeping its last (first)
    ``tokens`` ids gives the ids of the whole text's end (start), at a bounded cost. For
    truncating requests, whose text may be far longer than the context."""
    need = _chars_per_token(tokenizer) * (tokens + _MARGIN)  # non-space characters
    size = need
    while size < len(text):
        part = text[-size:] if keep == "end" else text[:size]
        if len(_SPACE.sub("", part)) >= need:
            return part
        size *= 2  # mostly spaces: take more
    return text


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
    if truncate_prompt_tokens is None:
        for text in texts:
            check_text_fits(tokenizer, text, max_model_len, param)
    else:  # only the kept end is tokenized
        keep = kept_tokens(truncate_prompt_tokens, max_model_len)
        texts = [bounded_text(tokenizer, text, keep) for text in texts]
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


def kept_tokens(keep: int, max_model_len: int | None) -> int:
    """How many tokens vLLM's truncate_prompt_tokens keeps (-1: max_model_len); 400 when out of range."""
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
    return keep


def truncate_tokens(token_ids: list[int], keep: int | None, max_model_len: int | None) -> list[int]:
    """vLLM's truncate_prompt_tokens: keep the last ``keep`` tokens; -1 means max_model_len."""
    if keep is None:
        return token_ids
    return token_ids[-kept_tokens(keep, max_model_len) :]
