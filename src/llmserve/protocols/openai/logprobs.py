"""Engine logprobs -> OpenAI's two shapes (legacy completions and chat) and vLLM's prompt_logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmserve.api import ServedModel, TokenLogprob

Step = tuple[TokenLogprob, list[TokenLogprob]]
_FLOOR = -9999.0  # what OpenAI (and vLLM) send instead of -inf, which JSON cannot carry


def _lp(value: float) -> float:
    return max(value, _FLOOR)


def token_text(model: ServedModel) -> TokenText:
    """The model's TokenText, made once."""
    found = model.cache.get("openai.token_text")
    if found is None:
        found = model.cache["openai.token_text"] = TokenText(model.tokenizer)
    return found


class TokenText:
    """Token id -> its text as a logprob entry shows it (decoded alone, cached per server)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int, as_id: bool = False) -> str:
        if as_id:
            return f"token_id:{token_id}"
        text = self.cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            if len(self.cache) < 200_000:
                self.cache[token_id] = text
        return text


def completion_logprobs(
    steps: Sequence[Step | None],
    token_ids: Sequence[int],
    text: TokenText,
    num_top: int,
    text_offset: int = 0,
    as_ids: bool = False,
) -> dict[str, list]:
    """Legacy shape: tokens, token_logprobs, top_logprobs (the chosen token plus up to ``num_top``
    alternatives), text_offset. A None step (the first echoed prompt token) has no logprob."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for token_id, step in zip(token_ids, steps, strict=False):
        token = text(token_id, as_ids)
        offsets.append(text_offset)
        text_offset += len(token)
        tokens.append(token)
        if step is None:
            token_logprobs.append(None)
            tops.append(None)
            continue
        chosen, alternatives = step
        token_logprobs.append(_lp(chosen.logprob))
        top = {token: _lp(chosen.logprob)}
        for alt in alternatives[:num_top]:
            top.setdefault(text(alt.token_id, as_ids), _lp(alt.logprob))
        tops.append(top)
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": tops}


def merge_completion_logprobs(into: dict[str, list] | None, more: dict[str, list]) -> dict[str, list]:
    if into is None:
        return more
    for key, values in more.items():
        into[key].extend(values)
    return into


def _chat_entry(token_id: int, logprob: float, text: TokenText, as_ids: bool) -> dict[str, Any]:
    token = text(token_id, as_ids)
    return {"token": token, "logprob": _lp(logprob), "bytes": list(token.encode("utf-8", errors="replace"))}


def chat_logprobs(steps: Sequence[Step], text: TokenText, num_top: int, as_ids: bool = False) -> list[dict]:
    """Chat shape: the ``content`` list of {token, logprob, bytes, top_logprobs: [...]}."""
    out = []
    for chosen, alternatives in steps:
        entry = _chat_entry(chosen.token_id, chosen.logprob, text, as_ids)
        entry["top_logprobs"] = [
            _chat_entry(a.token_id, a.logprob, text, as_ids) for a in alternatives[:num_top]
        ]
        out.append(entry)
    return out


def prompt_logprobs(
    steps: Sequence[Step | None] | None, text: TokenText, prompt_len: int | None = None
) -> list[dict | None] | None:
    """vLLM's prompt_logprobs: per prompt position None or {token_id: {logprob, rank, decoded_token}}.
    Pass ``prompt_len`` when they were requested: a one-token prompt has just [None]."""
    if steps is None:
        return [None] if prompt_len == 1 else None
    out: list[dict | None] = []
    for step in steps:
        if step is None:
            out.append(None)
            continue
        chosen, alternatives = step
        entry = {}
        for lp in (chosen, *alternatives):
            entry.setdefault(
                str(lp.token_id),
                {"logprob": _lp(lp.logprob), "rank": lp.rank, "decoded_token": text(lp.token_id)},
            )
        out.append(entry)
    return out
